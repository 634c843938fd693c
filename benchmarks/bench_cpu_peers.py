"""Issue 19's CPU table: ``gpuinv.inv`` with its defaults against the CPU peers.

For every n (default 1-8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384,
512) and dtype (float32, float64), one stack of about ``--mib`` MiB of
well-conditioned matrices (``N(0, 1) + n I``) is inverted by

* ``gpuinv.inv(a, device="cpu")``: every other default on (the condition
  check included), as a user calls it;
* ``numpy.linalg.inv``, ``scipy.linalg.inv``, ``torch.linalg.inv`` (CPU,
  ``torch.get_num_threads()`` threads) and ``jax.numpy.linalg.inv`` (CPU,
  jitted, x64 enabled for float64); a peer that is not importable is skipped
  with a note in the table and the JSON.

The contenders run interleaved, round by round, on the same stack in the same
process, and every ratio is taken in that run: above 1 gpuinv is faster.
Conversions (``torch.from_numpy``, ``jax.device_put``) are outside the timed
call; JAX's result is waited for (``block_until_ready``). Each round records
wall time and the process's CPU time; the table uses ``--clock`` (``wall``,
the default, is what a user sees on an idle machine; ``cpu`` is the stable
measure on a shared one, and charges threaded peers for every core). Both
are in the JSON, with the median and the minimum over the rounds.

    PYTHONPATH=. python benchmarks/bench_cpu_peers.py --json cpu_peers.json --plot cpu_peers.png
    PYTHONPATH=. python benchmarks/bench_cpu_peers.py --quick          # a few n, small stacks
    PYTHONPATH=. python benchmarks/bench_cpu_peers.py --pos --n 2 3 4 6 8 16 32 64   # positive definite

``--routes`` times instead the CPU engine's two LAPACK routes for one
matrix at a time (NumPy's gufunc, getrf + getrs against the identity, and
SciPy's getrf + getri), one core each, the measurement behind
``gpuinv.engines.cpu_routes.GETRI_MIN_N``. ``--threads`` times ``inv`` with the
engine's thread policy (one call at a time from n = 128, OpenBLAS threading
each call) against a pool of ``gpuinv.config.cpu_threads`` workers at every
n (one matrix per worker at a time); run it on an idle machine.

Run it on an idle machine for the record; the README's CPU numbers come from
its JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import gpuinv  # noqa: E402

FULL_N = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
QUICK_N = [2, 5, 32, 128]
PEERS = ["numpy", "scipy", "torch", "jax"]
COLORS = {"gpuinv": "C0", "numpy": "C1", "scipy": "C2", "torch": "C3", "jax": "C4"}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def stack(n: int, dtype: str, mib: float, rng: np.random.Generator) -> np.ndarray:
    """About ``mib`` MiB of N(0, 1) + n I matrices (well-conditioned: no warning, no failure)."""
    count = max(1, int(mib * 2**20 // (np.dtype(dtype).itemsize * n * n)))
    a = rng.standard_normal((count, n, n)) + n * np.eye(n)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.standard_normal((count, n, n))
    return a.astype(dtype)


def spd_stack(n: int, dtype: str, mib: float, rng: np.random.Generator) -> np.ndarray:
    """About ``mib`` MiB of Hermitian positive definite matrices, ``g g^H / n + I``."""
    count = max(1, int(mib * 2**20 // (np.dtype(dtype).itemsize * n * n)))
    g = rng.standard_normal((count, n, n))
    if np.dtype(dtype).kind == "c":
        g = g + 1j * rng.standard_normal((count, n, n))
    return (g @ np.conj(np.swapaxes(g, 1, 2)) / n + np.eye(n)).astype(dtype)


def make_peers(names: list[str], pos: bool = False
               ) -> tuple[dict[str, Callable[[np.ndarray], Callable[[], Any]]], dict[str, str]]:
    """``{name: prepare}`` for the importable peers, and ``{name: why}`` for the others.

    ``prepare(a)`` converts ``a`` once and returns the timed call. ``pos``:
    torch's positive definite inverse (``cholesky_inverse(cholesky(a))``);
    NumPy, SciPy and JAX have no batched one, so their general inverse.
    """
    ready: dict[str, Callable[[np.ndarray], Callable[[], Any]]] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            if name == "numpy":
                ready[name] = lambda a: (lambda: np.linalg.inv(a))
            elif name == "scipy":
                import scipy.linalg

                ready[name] = lambda a, f=scipy.linalg.inv: (lambda: f(a))
            elif name == "torch":
                import torch

                def prep_torch(a: np.ndarray, torch: Any = torch) -> Callable[[], Any]:
                    t = torch.from_numpy(a)
                    if pos:
                        return lambda: torch.cholesky_inverse(torch.linalg.cholesky(t))
                    return lambda: torch.linalg.inv(t)

                ready[name] = prep_torch
            elif name == "jax":
                os.environ.setdefault("JAX_PLATFORMS", "cpu")
                import jax

                jax.config.update("jax_enable_x64", True)
                cpu = jax.devices("cpu")[0]
                inv = jax.jit(jax.numpy.linalg.inv)

                def prep_jax(a: np.ndarray, jax: Any = jax, cpu: Any = cpu,
                             inv: Any = inv) -> Callable[[], Any]:
                    x = jax.device_put(a, cpu)
                    return lambda: inv(x).block_until_ready()

                ready[name] = prep_jax
            else:
                skipped[name] = "unknown peer"
        except Exception as exc:  # ImportError, or a broken install: a note, not a failure
            skipped[name] = f"not importable: {type(exc).__name__}: {exc}"
    return ready, skipped


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, float]]:
    """Seconds per call of each function, interleaved round by round after a
    warm-up call each: median and minimum of wall and CPU time."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    return {k: {"wall_median": statistics.median(wall[k]), "wall_min": min(wall[k]),
                "cpu_median": statistics.median(cpu[k]), "cpu_min": min(cpu[k])} for k in fns}


def check(name: str, got: Any, want: np.ndarray) -> None:
    got = np.asarray(got)
    tol = 1e-3 if want.dtype in (np.float32, np.complex64) else 1e-9
    if not np.allclose(got, want, rtol=tol, atol=tol):
        raise AssertionError(f"{name} disagrees with numpy.linalg.inv")


def run_table(args: argparse.Namespace) -> dict:
    ready, skipped = make_peers(args.peers, pos=args.pos)
    key = f"{args.clock}_median"
    rng = np.random.default_rng(0)
    rows = []
    options = {"assume_a": "positive definite"} if args.pos else {}
    for dtype in args.dtype:
        print(f"\n{dtype}: gpuinv.inv (defaults, device='cpu'"
              f"{', assume_a=positive definite' if args.pos else ''}) against each peer, "
              f"ratio = gpuinv's matrices/s over the peer's ({args.clock} time, median of "
              f"{args.repeats}); above 1 gpuinv is faster")
        head = f"{'n':>4} {'batch':>9} {'gpuinv mat/s':>12}" + "".join(f" {p:>8}" for p in args.peers)
        print(head)
        for n in args.n:
            a = (spd_stack if args.pos else stack)(n, dtype, args.mib, rng)
            want = np.linalg.inv(a[:4])
            fns: dict[str, Callable[[], Any]] = {"gpuinv": lambda a=a: gpuinv.inv(a, device="cpu", **options)}
            check("gpuinv", fns["gpuinv"]()[:4], want)
            for p, prepare in ready.items():
                fns[p] = prepare(a)
                check(p, np.asarray(fns[p]())[:4], want)
            t = interleaved(fns, args.repeats)
            rate = len(a) / t["gpuinv"][key]
            ratios = {p: t[p][key] / t["gpuinv"][key] for p in ready}
            rows.append({"n": n, "dtype": dtype, "batch": len(a), "seconds": t,
                         "gpuinv_matrices_per_s": rate, "ratio": ratios,
                         "ratio_cpu_min": {p: t[p]["cpu_min"] / t["gpuinv"]["cpu_min"]
                                           for p in ready},
                         "ratio_wall_min": {p: t[p]["wall_min"] / t["gpuinv"]["wall_min"]
                                            for p in ready}})
            cells = "".join(f" {ratios[p]:8.2f}" if p in ratios else f" {'-':>8}" for p in args.peers)
            print(f"{n:4d} {len(a):9d} {rate:12.3g}{cells}", flush=True)
    for p, why in skipped.items():
        print(f"note: {p} skipped ({why})")
    return {"rows": rows, "skipped": skipped}


def run_routes(args: argparse.Namespace) -> dict:
    """NumPy's gufunc against getrf + getri per matrix, one core, CPU time."""
    from gpuinv.engines import cpu as engine

    rng = np.random.default_rng(0)
    rows = []
    print("\nLAPACK routes of the CPU engine, one chunk (1 MiB) on one thread, CPU time "
          f"(minimum of {args.repeats}); ratio = gufunc / getri, above 1 getri is faster")
    print(f"{'dtype':>10} {'n':>4} {'batch':>6} {'gufunc ms':>10} {'getri ms':>9} {'ratio':>6}")
    for dtype in args.dtype:
        funcs = engine._getri_funcs(np.dtype(dtype))
        if funcs is None:
            print(f"{dtype}: SciPy not importable, nothing to compare")
            continue
        for n in args.n:
            a = stack(n, dtype, 1.0, rng)
            out = np.empty_like(a)
            fns = {"gufunc": lambda: engine._gufunc_inv(a, signature=engine._SIGNATURES[a.dtype],
                                                        out=out),
                   "getri": lambda: engine._getri_loop(a, out, funcs)}
            t = interleaved(fns, args.repeats)
            g, r = t["gufunc"]["cpu_min"], t["getri"]["cpu_min"]
            rows.append({"n": n, "dtype": dtype, "batch": len(a), "seconds": t, "ratio": g / r})
            print(f"{dtype:>10} {n:4d} {len(a):6d} {g * 1e3:10.2f} {r * 1e3:9.2f} {g / r:6.2f}",
                  flush=True)
    return {"routes": rows}


def blas_thread_setters() -> list[Any]:
    """Setters of the thread count of every OpenBLAS loaded in this process.

    NumPy and SciPy each bundle their own (``scipy_openblas_set_num_threads64_``
    and ``scipy_openblas_set_num_threads``). threadpoolctl does this where it
    is installed; without it, ctypes on the libraries mapped into the process
    (Linux). Empty where neither finds one: the "pool, BLAS 1" column is left out.
    """
    try:
        import threadpoolctl

        ctl = threadpoolctl.ThreadpoolController()
        return [lambda k: ctl.select(internal_api="openblas").limit(limits=k)]
    except ImportError:
        pass
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1]})
    except OSError:
        return []
    setters = []
    for path in paths:
        lib = ctypes.CDLL(path)
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                    "openblas_set_num_threads"):
            if hasattr(lib, sym):
                setters.append(getattr(lib, sym))
                break
    return setters


def run_threads(args: argparse.Namespace) -> dict:
    """``inv`` with the engine's thread policy against a pool of ``config.cpu_threads``
    workers at every n (``threads_for`` lifted), interleaved: the measurement for
    ``gpuinv.engines.cpu_routes.threads_for``'s n >= 128 rule, which leaves those orders
    to one call at a time and OpenBLAS's own threads."""
    from gpuinv.engines import cpu as engine

    policy = engine.threads_for
    pool = gpuinv.config.cpu_threads
    rng = np.random.default_rng(0)
    rows = []
    # The third contender: the pool with every OpenBLAS at one thread, so the
    # workers do not oversubscribe the cores (what threadpoolctl would give the
    # engine); restored to `pool` threads after each call.
    try:
        import scipy.linalg  # noqa: F401  (its OpenBLAS is mapped only once imported)
    except ImportError:
        pass
    setters = blas_thread_setters()
    print(f"\nthreads: inv (defaults) with the engine's policy against a pool of {pool} workers "
          f"at every n, {args.clock} time, median of {args.repeats}; ratio = policy / pool, "
          "above 1 the pool is faster; pool,blas1: the pool with OpenBLAS at 1 thread"
          + ("" if setters else " (no OpenBLAS setter found: left out)"))
    print(f"{'dtype':>8} {'n':>4} {'batch':>6} {'policy':>8} {'pool':>8} {'ratio':>6}"
          + (f" {'pool,blas1':>10} {'ratio':>6}" if setters else ""))
    for dtype in args.dtype:
        for n in args.n:
            a = stack(n, dtype, args.mib, rng)

            def with_pool(a: np.ndarray = a) -> Any:
                engine.threads_for = lambda n, dtype=None: pool
                try:
                    return gpuinv.inv(a, device="cpu")
                finally:
                    engine.threads_for = policy

            def with_pool_blas1(a: np.ndarray = a) -> Any:
                for f in setters:
                    f(1)
                try:
                    return with_pool(a)
                finally:
                    for f in setters:
                        f(pool)

            contenders = {"policy": lambda a=a: gpuinv.inv(a, device="cpu"), "pool": with_pool}
            if setters:
                contenders["pool_blas1"] = with_pool_blas1
            t = interleaved(contenders, args.repeats)
            key = f"{args.clock}_median"
            ratio = t["policy"][key] / t["pool"][key]
            row = {"n": n, "dtype": dtype, "batch": len(a), "seconds": t,
                   "policy_threads": policy(n), "pool_threads": pool, "ratio": ratio}
            line = (f"{dtype:>8} {n:4d} {len(a):6d} {t['policy'][key] * 1e3:8.2f} "
                    f"{t['pool'][key] * 1e3:8.2f} {ratio:6.2f}")
            if setters:
                row["ratio_pool_blas1"] = t["policy"][key] / t["pool_blas1"][key]
                line += f" {t['pool_blas1'][key] * 1e3:10.2f} {row['ratio_pool_blas1']:6.2f}"
            rows.append(row)
            print(line, flush=True)
    return {"threads": rows}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    dtypes = sorted({r["dtype"] for r in rows})
    fig, axes = plt.subplots(2, len(dtypes), figsize=(6 * len(dtypes), 8), squeeze=False)
    key = f"{results['settings']['clock']}_median"
    for col, dtype in enumerate(dtypes):
        mine = [r for r in rows if r["dtype"] == dtype]
        ns = [r["n"] for r in mine]
        top, bottom = axes[0][col], axes[1][col]
        for name in ["gpuinv", *results["settings"]["peers"]]:
            if name not in mine[0]["seconds"]:
                continue
            rate = [r["batch"] / r["seconds"][name][key] for r in mine]
            color = COLORS.get(name)
            top.plot(ns, rate, marker="o", label=name, color=color,
                     linewidth=2.5 if name == "gpuinv" else 1.2)
            if name != "gpuinv":
                bottom.plot(ns, [r["ratio"][name] for r in mine], marker="o", color=color,
                            label=f"vs {name}")
        top.set(xscale="log", yscale="log", title=f"{dtype}: matrices/s ({results['settings']['clock']})",
                xlabel="n")
        bottom.axhline(1.0, color="black", linewidth=0.8)
        bottom.set(xscale="log", yscale="log", title=f"{dtype}: gpuinv / peer (above 1: gpuinv faster)",
                   xlabel="n")
        top.legend()
        bottom.legend()
    fig.suptitle(f"gpuinv.inv (defaults, CPU) against peers, {results['machine']['cpu']}, "
                 f"{results['settings']['mib']:g} MiB stacks")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", help=f"orders (default {FULL_N})")
    p.add_argument("--dtype", nargs="+", default=["float32", "float64"],
                   choices=["float32", "float64", "complex64", "complex128"])
    p.add_argument("--mib", type=float, help="stack size in MiB (default 32; 4 with --quick)")
    p.add_argument("--repeats", type=int, help="interleaved rounds (default 7; 3 with --quick)")
    p.add_argument("--peers", nargs="+", default=PEERS, choices=PEERS)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="the time the table's ratios use (both are in the JSON)")
    p.add_argument("--quick", action="store_true",
                   help=f"n = {QUICK_N}, 4 MiB stacks, 3 rounds: a check that it runs")
    p.add_argument("--routes", action="store_true",
                   help="time the engine's LAPACK routes (gufunc, getri) instead of the peers")
    p.add_argument("--threads", action="store_true",
                   help="time the engine's thread policy against a full pool at every n")
    p.add_argument("--pos", action="store_true",
                   help="positive definite stacks, gpuinv with assume_a='positive definite', "
                        "torch with cholesky_inverse(cholesky(a)) (the others: their general inverse)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--plot", type=Path, help="write a plot here (needs matplotlib)")
    args = p.parse_args(argv)
    if args.n is None:
        args.n = (QUICK_N if args.quick else
                  [16, 24, 32, 48, 64, 128, 256] if args.routes else
                  [64, 96, 128, 192, 256, 384, 512] if args.threads else FULL_N)
    if args.mib is None:
        args.mib = 4.0 if args.quick else 32.0
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    machine = {"cpu": cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "numpy": np.__version__, "gpuinv": gpuinv.__version__,
               "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
               "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
               "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
               "gpuinv_cpu_threads": gpuinv.config.cpu_threads}
    for mod in ("scipy", "torch", "jax"):
        try:
            module = __import__(mod)
            machine[mod] = module.__version__
            if mod == "torch":
                machine["torch_threads"] = module.get_num_threads()
        except Exception:
            machine[mod] = None
    print(f"bench_cpu_peers: {machine['cpu']}, {machine['cpus']} CPUs, load {machine['load_average']}, "
          f"~{args.mib:g} MiB stacks, {args.repeats} interleaved rounds")
    results: dict = {"machine": machine,
                     "settings": {"n": args.n, "dtype": args.dtype, "mib": args.mib,
                                  "repeats": args.repeats, "peers": args.peers,
                                  "clock": args.clock, "quick": args.quick,
                                  "routes": args.routes, "threads": args.threads,
                                  "pos": args.pos, "device": "cpu"}}
    results.update(run_routes(args) if args.routes else
                   run_threads(args) if args.threads else run_table(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"results written to {args.json}")
    if args.plot and not (args.routes or args.threads):
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
