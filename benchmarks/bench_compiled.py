"""The CPU engine's compiled (Numba) route against its LAPACK route and the peers.

Sets the thresholds in gpuinv/engines/cpu_routes.py (COMPILED_*) and
gpuinv/engines/_compiled.py (SPECIALIZE_MAX_N); the tables are in
docs/cpu-compiled.md.

Every contender runs in the same process, interleaved round by round, and
each cell is the best of the rounds, by CPU time (``time.process_time``,
all threads) and by wall time: on a shared machine the ratios are what
carry over, not the absolute rates.

    PYTHONPATH=$PWD python benchmarks/bench_compiled.py inv --dtypes float64,float32 --ns 2,4,5,8
    PYTHONPATH=$PWD python benchmarks/bench_compiled.py solve --ns 2,3,4,8
    PYTHONPATH=$PWD python benchmarks/bench_compiled.py specialize --ns 5,8,16
    PYTHONPATH=$PWD python benchmarks/bench_compiled.py first-call   # in a fresh NUMBA_CACHE_DIR
    PYTHONPATH=$PWD python benchmarks/bench_compiled.py block --ns 16,24,32,48,64   # one chunk, one thread
    PYTHONPATH=$PWD python benchmarks/bench_compiled.py unrolled --ns 2,3,4,5,6,7,8  # written out vs loop
    PYTHONPATH=$PWD python benchmarks/bench_compiled.py inv-accuracy --ns 2,3,4,5,8,16,32 --dtypes float64,float32
    PYTHONPATH=$PWD python benchmarks/bench_compiled.py posdef --ns 1,2,4,8,16,32,64,128  # positive definite
    PYTHONPATH=$PWD python benchmarks/bench_compiled.py structured-accuracy --ns 3,4,8,16,32 --dtypes float64,float32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import gpuinv
from gpuinv.engines import cpu, cpu_routes


def stack(n: int, dtype: np.dtype, nbytes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = max(64, nbytes // (n * n * dtype.itemsize))
    a = rng.standard_normal((m, n, n))
    if dtype.kind == "c":
        a = a + 1j * rng.standard_normal((m, n, n))
    return (a + np.sqrt(n) * np.eye(n)).astype(dtype)


def race(contenders: dict, rounds: int) -> dict:
    best = {k: [np.inf, np.inf] for k in contenders}
    for f in contenders.values():
        f()  # compile / warm up
    for _ in range(rounds):
        for k, f in contenders.items():
            c0, w0 = time.process_time(), time.perf_counter()
            f()
            c1, w1 = time.process_time(), time.perf_counter()
            best[k][0] = min(best[k][0], c1 - c0)
            best[k][1] = min(best[k][1], w1 - w0)
    return best


def with_compiled(on: bool, f):
    def run():
        old = gpuinv.config.cpu_compiled
        gpuinv.config.cpu_compiled = on
        try:
            return f()
        finally:
            gpuinv.config.cpu_compiled = old
    return run


def peers(a: np.ndarray, names: list[str]) -> dict:
    out = {"numpy": lambda: np.linalg.inv(a)}
    if "torch" in names:
        try:
            import torch

            t = torch.from_numpy(a)
            out["torch"] = lambda: torch.linalg.inv(t)
        except ImportError:
            pass
    if "scipy" in names:
        try:
            import scipy.linalg

            out["scipy"] = lambda: scipy.linalg.inv(a)
        except ImportError:
            pass
    return out


def bench_inv(args) -> list[dict]:
    rows = []
    for dt in args.dtypes:
        for n in args.ns:
            a = stack(n, np.dtype(dt), args.bytes)
            c = {"compiled": with_compiled(True, lambda: gpuinv.inv(a, device="cpu")),
                 "lapack/closed": with_compiled(False, lambda: gpuinv.inv(a, device="cpu"))}
            if n <= 4:
                # The compiled kernel forced at n <= 4 against the closed forms.
                saved = cpu_routes.COMPILED_INV_MIN_N
                def forced(a=a):
                    cpu_routes.COMPILED_INV_MIN_N = dict.fromkeys("dfDF", 1)
                    try:
                        return gpuinv.inv(a, device="cpu")
                    finally:
                        cpu_routes.COMPILED_INV_MIN_N = saved
                c["compiled"] = forced
                def closed(a=a):
                    cpu_routes.COMPILED_INV_MIN_N = dict.fromkeys("dfDF", 5)
                    try:
                        return gpuinv.inv(a, device="cpu")
                    finally:
                        cpu_routes.COMPILED_INV_MIN_N = saved
                c["lapack/closed"] = closed
            c.update(peers(a, args.peers))
            best = race(c, args.rounds)
            row = {"op": "inv", "dtype": dt, "n": n, "m": len(a),
                   **{k: {"cpu_s": v[0], "wall_s": v[1]} for k, v in best.items()}}
            rows.append(row)
            rates = "  ".join(f"{k}={len(a) / v[1] / 1e6:.3f}/{len(a) / v[0] / 1e6:.3f}"
                              for k, v in best.items())
            print(f"inv {dt:10s} n={n:3d}  M/s wall/cpu: {rates}", flush=True)
    return rows


def backward_error(a, x, b):
    r = np.abs(a @ x - b).max(axis=(1, 2))
    na = np.abs(a).sum(axis=2).max(axis=1)
    return r / (na * np.abs(x).max(axis=(1, 2)) + np.abs(b).max(axis=(1, 2)))


def conditioned(n, cond, count, rng):
    """a = U diag(s) V^T at condition ``cond``, b = a x, x ~ N(0, 1) (issue 19's measure)."""
    u, _ = np.linalg.qr(rng.standard_normal((count, n, n)))
    v, _ = np.linalg.qr(rng.standard_normal((count, n, n)))
    s = np.logspace(0, -np.log10(cond), n)
    a = (u * s[None, None, :]) @ v.swapaxes(1, 2)
    b = a @ rng.standard_normal((count, n, 1))
    return a, b


def bench_inv_accuracy(args) -> list[dict]:
    """Issue 19 item 2's accuracy target: p99 of the inverse's backward error
    ||a x - I||_inf / (||a||_inf ||x||_inf), in eps, gpuinv.inv with its
    defaults (each route: compiled, and without Numba) against
    numpy.linalg.inv, on a = U diag(s) V^T at cond 1e2, 1e8, 1e12."""
    rows = []
    rng = np.random.default_rng(2)
    for dt in args.dtypes:
        dtype = np.dtype(dt)
        if dtype.kind == "c":
            continue
        eps = np.finfo(dtype).eps
        for n in args.ns:
            for cond in (1e2, 1e8, 1e12):
                if dtype == np.float32 and cond > 1e6:
                    continue  # beyond 1 / eps: no correct digit for anyone
                a, _ = conditioned(n, cond, 20000, rng)
                a = a.astype(dtype)
                eye = np.broadcast_to(np.eye(n, dtype=dtype), a.shape)
                wide = a.astype(np.float64 if dtype == np.float32 else np.longdouble)

                def err(x):
                    r = np.abs(wide @ x.astype(wide.dtype) - eye).max(axis=(1, 2))
                    na = np.abs(wide).sum(axis=2).max(axis=1)
                    return (r / (na * np.abs(x).max(axis=(1, 2)))).astype(np.float64)

                import warnings
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    xs = {"gpuinv": gpuinv.inv(a, device="cpu"),
                          "gpuinv-nonumba": with_compiled(False, lambda: gpuinv.inv(a, device="cpu"))(),
                          "numpy": np.linalg.inv(a)}
                p99 = {k: float(np.percentile(err(v), 99) / eps) for k, v in xs.items()}
                ratio = p99["gpuinv"] / p99["numpy"]
                print(f"inv {dt} n={n} cond={cond:.0e} p99 backward error / eps: "
                      + "  ".join(f"{k}={v:.3g}" for k, v in p99.items())
                      + f"  gpuinv/numpy {ratio:.2f}", flush=True)
                rows.append({"op": "inv-accuracy", "dtype": dt, "n": n, "cond": cond,
                             "p99_eps": p99, "ratio_to_numpy": ratio})
    return rows


def bench_structured_accuracy(args) -> list[dict]:
    """The residual backward error ||a x - I||_inf / (||a||_inf ||x||_inf), in eps,
    max over 500 matrices, of the structured inverses on ill-conditioned
    symmetric input a = Q diag(s) Q^T (s from 1 to 1 / cond; alternate signs:
    indefinite, for "symmetric"; positive for "positive definite"), each
    route, against numpy.linalg.inv and gpuinv's general inverse of the same
    matrices. Real dtypes; cond 1e8 (float64), 1e5 (float32)."""
    rows = []
    rng = np.random.default_rng(3)
    for dt in args.dtypes:
        dtype = np.dtype(dt)
        if dtype.kind == "c":
            continue
        eps = np.finfo(dtype).eps
        cond = 1e8 if dtype == np.float64 else 1e5
        for n in args.ns:
            if n < 2:
                continue
            q, _ = np.linalg.qr(rng.standard_normal((500, n, n)))
            s = np.logspace(0, -np.log10(cond), n)
            for structure, signs in (("symmetric", np.where(np.arange(n) % 2, -1.0, 1.0)),
                                     ("positive definite", np.ones(n))):
                a = ((q * (s * signs)[None, None, :]) @ q.swapaxes(1, 2)).astype(dtype)
                a = np.ascontiguousarray(np.triu(a) + np.triu(a, 1).swapaxes(1, 2))  # exactly symmetric
                wide = a.astype(np.float64 if dtype == np.float32 else np.longdouble)
                eye = np.eye(n)

                def err(x):
                    r = np.abs(wide @ x.astype(wide.dtype) - eye).max(axis=(1, 2))
                    na = np.abs(wide).sum(axis=2).max(axis=1)
                    return float((r / (na * np.abs(x).max(axis=(1, 2)))).max() / eps)

                options = {"device": "cpu", "check_cond": False}
                e = {"structured": err(gpuinv.inv(a, assume_a=structure, **options)),
                     "structured-nonumba": err(with_compiled(
                         False, lambda: gpuinv.inv(a, assume_a=structure, **options))()),
                     "general": err(gpuinv.inv(a, **options)),
                     "numpy": err(np.linalg.inv(a))}
                print(f"{structure:17s} {dt} n={n:3d} cond={cond:.0e} max backward error / eps: "
                      + "  ".join(f"{k}={v:.3g}" for k, v in e.items()), flush=True)
                rows.append({"op": "structured-accuracy", "structure": structure, "dtype": dt,
                             "n": n, "cond": cond, "max_eps": e})
    return rows


def bench_solve(args) -> list[dict]:
    rows = []
    rng = np.random.default_rng(1)
    for n in args.ns:
        for cond in (1e2, 1e8, 1e12) if args.accuracy else ():
            a, b = conditioned(n, cond, 20000, rng)
            eps = np.finfo(np.float64).eps
            errs = {"gpuinv": backward_error(a, gpuinv.solve(a, b, device="cpu", check_cond=False), b),
                    "gpuinv-nonumba": backward_error(a, with_compiled(False, lambda: gpuinv.solve(
                        a, b, device="cpu", check_cond=False))(), b),
                    "numpy": backward_error(a, np.linalg.solve(a, b), b),
                    "inv@b": backward_error(a, np.linalg.inv(a) @ b, b)}
            p99 = {k: float(np.percentile(v, 99) / eps) for k, v in errs.items()}
            print(f"solve n={n} cond={cond:.0e} p99 backward error / eps: "
                  + "  ".join(f"{k}={v:.3g}" for k, v in p99.items()), flush=True)
            rows.append({"op": "solve-accuracy", "n": n, "cond": cond, "p99_eps": p99})
        a = stack(n, np.dtype(np.float64), args.bytes)
        b = np.ones(a.shape[:-1] + (1,))
        # "nocheck": check_cond=False on both sides (the solve alone); the
        # defaults add the exact rcond, which needs the inverse on both.
        c = {"solve": with_compiled(True, lambda: gpuinv.solve(a, b, device="cpu")),
             "inv@b": with_compiled(True, lambda: gpuinv.inv(a, device="cpu") @ b),
             "solve-nocheck": with_compiled(True, lambda: gpuinv.solve(
                 a, b, device="cpu", check_cond=False)),
             "inv@b-nocheck": with_compiled(True, lambda: gpuinv.inv(
                 a, device="cpu", check_cond=False) @ b),
             "solve-nonumba-nocheck": with_compiled(False, lambda: gpuinv.solve(
                 a, b, device="cpu", check_cond=False)),
             "inv@b-nonumba-nocheck": with_compiled(False, lambda: gpuinv.inv(
                 a, device="cpu", check_cond=False) @ b),
             "numpy.solve": lambda: np.linalg.solve(a, b)}
        best = race(c, args.rounds)
        rates = "  ".join(f"{k}={len(a) / v[1] / 1e6:.3f}/{len(a) / v[0] / 1e6:.3f}"
                          for k, v in best.items())
        print(f"solve float64 n={n:3d} k=1  M/s wall/cpu: {rates}", flush=True)
        rows.append({"op": "solve", "n": n, "m": len(a),
                     **{k: {"cpu_s": v[0], "wall_s": v[1]} for k, v in best.items()}})
    return rows


def bench_specialize(args) -> list[dict]:
    from gpuinv.engines import _compiled

    rows = []
    for dt in args.dtypes:
        for n in args.ns:
            a = stack(n, np.dtype(dt), args.bytes)
            out = np.empty_like(a)
            info = np.zeros(len(a), np.int32)
            rc = np.empty(len(a), a.real.dtype)
            x = _compiled._read_only(a)
            spec = _compiled._kernel("invert-rcond", n, a.dtype)
            gen = _compiled._kernel("invert-rcond", 0, a.dtype)
            best = race({"specialized": lambda: spec(x, out, info, rc, 0, len(x)),
                         "run-time n": lambda: gen(x, out, info, rc, 0, len(x))},
                        args.rounds)
            ratio = best["run-time n"][0] / best["specialized"][0]
            print(f"{dt} n={n}: specialized / run-time-n speed {ratio:.2f}", flush=True)
            rows.append({"op": "specialize", "dtype": dt, "n": n, "speedup": ratio})
    return rows


FIRST_CALL = """
import time, numpy as np
t0 = time.perf_counter()
import gpuinv
from gpuinv.engines.cpu import warm_up
t1 = time.perf_counter()
took = warm_up([{dt!r}], [{n}], kinds=["invert"])
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def bench_first_call(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for dt in args.dtypes:
            for n in args.ns:
                times = []
                for _ in range(2):  # cold (compile), then warm (disk cache)
                    out = subprocess.run([sys.executable, "-c", FIRST_CALL.format(dt=dt, n=n)],
                                         env=env, capture_output=True, text=True, check=True)
                    times.append(float(out.stdout.split()[1]))
                print(f"first call {dt} n={n}: compile {times[0]:.2f} s, from the disk cache "
                      f"{times[1]:.3f} s", flush=True)
                rows.append({"op": "first-call", "dtype": dt, "n": n, "cold_s": times[0],
                             "cached_s": times[1]})
    return rows


def bench_unrolled(args) -> list[dict]:
    """The kernel written out for one n (engines/_unrolled.py) against the loop
    kernel, one 1 MiB block on one thread, rcond off and on, process time; both
    give the same bits (tests/test_cpu_unrolled.py), so only the speed is timed."""
    from gpuinv.engines import _compiled, _unrolled

    rows = []
    for dt in args.dtypes:
        for n in args.ns:
            if not 2 <= n <= _unrolled.MAX_N:
                continue
            a = stack(n, np.dtype(dt), 1 << 20)
            x = _compiled._read_only(a)
            out = np.empty_like(a)
            info = np.zeros(len(a), np.int32)
            rc = np.empty(len(a), a.real.dtype)
            loop = _compiled._kernel("invert", 0, a.dtype)
            loop_rc = _compiled._kernel("invert-rcond", 0, a.dtype)
            t0 = time.perf_counter()
            unrolled = _unrolled.kernel(n, a.dtype)
            unrolled(x, out, info, None, 0, 1)
            compile_s = time.perf_counter() - t0
            best = race({"loop": lambda: loop(x, out, info, rc, 0, len(x)),
                         "unrolled": lambda: unrolled(x, out, info, None, 0, len(x)),
                         "loop rcond": lambda: loop_rc(x, out, info, rc, 0, len(x)),
                         "unrolled rcond": lambda: unrolled(x, out, info, rc, 0, len(x))},
                        args.rounds)
            plain = best["loop"][0] / best["unrolled"][0]
            with_rc = best["loop rcond"][0] / best["unrolled rcond"][0]
            ns_per = best["unrolled rcond"][0] / len(a) * 1e9
            print(f"{dt} n={n}: unrolled / loop speed {plain:.2f} (rcond off), {with_rc:.2f} "
                  f"(rcond on, {ns_per:.0f} ns per matrix); first call {compile_s:.2f} s",
                  flush=True)
            rows.append({"op": "unrolled", "dtype": dt, "n": n, "speedup": plain,
                         "speedup_rcond": with_rc, "ns_per_matrix_rcond": ns_per,
                         "first_call_s": compile_s})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["inv", "solve", "specialize", "first-call", "block",
                                          "solve-block", "threads", "unrolled", "inv-accuracy", "posdef",
                                          "structured-accuracy"])
    p.add_argument("--dtypes", default="float64,float32,complex128,complex64")
    p.add_argument("--ns", default="2,3,4,5,6,8,12,16,24,32,48,64")
    p.add_argument("--peers", default="torch")
    p.add_argument("--bytes", type=int, default=8 << 20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="append the rows to this JSON file")
    p.add_argument("--no-accuracy", dest="accuracy", action="store_false",
                   help="solve: the timings only")
    args = p.parse_args()
    args.dtypes = args.dtypes.split(",")
    args.ns = [int(v) for v in args.ns.split(",")]
    args.peers = args.peers.split(",") if args.peers else []
    rows = {"inv": bench_inv, "solve": bench_solve, "specialize": bench_specialize,
            "first-call": bench_first_call, "block": bench_block,
            "solve-block": bench_solve_block, "threads": bench_threads,
            "unrolled": bench_unrolled, "inv-accuracy": bench_inv_accuracy,
            "posdef": bench_posdef, "structured-accuracy": bench_structured_accuracy}[args.what](args)
    if args.json:
        old = json.load(open(args.json)) if os.path.exists(args.json) else []
        json.dump(old + rows, open(args.json, "w"), indent=1)



def bench_block(args) -> list[dict]:
    """One chunk (1 MiB, the engine's default) on one thread: the compiled kernel
    against the LAPACK route's block function, rcond on (inv's defaults), process time."""
    import threading  # noqa: F401  (one thread: this is the per-core cost)

    rows = []
    for dt in args.dtypes:
        for n in args.ns:
            a = stack(n, np.dtype(dt), 1 << 20)
            out = np.empty_like(a)
            info = np.zeros(len(a), np.int32)
            rc = np.empty(len(a), a.real.dtype)

            def block(on):
                # The compiled kernel forced at every n (below COMPILED_INV_MIN_N
                # against the closed forms, above COMPILED_INV_MAX_N against
                # LAPACK: where the crossovers are).
                def run():
                    gpuinv.config.cpu_compiled = on
                    saved = cpu_routes.COMPILED_INV_MIN_N, cpu_routes.COMPILED_INV_MAX_N
                    cpu_routes.COMPILED_INV_MIN_N = dict.fromkeys("dfDF", 1)
                    cpu_routes.COMPILED_INV_MAX_N = dict.fromkeys("dfDF", 1 << 20)
                    try:
                        cpu.invert_block_ex(a, out, info, rc, "general", False)
                    finally:
                        gpuinv.config.cpu_compiled = True
                        cpu_routes.COMPILED_INV_MIN_N, cpu_routes.COMPILED_INV_MAX_N = saved
                return run

            best = race({"compiled": block(True), "lapack": block(False),
                         "numpy.linalg.inv": lambda: np.linalg.inv(a)}, args.rounds)
            ratio = best["lapack"][0] / best["compiled"][0]
            print(f"block {dt:10s} n={n:3d}: compiled {len(a) / best['compiled'][0] / 1e6:.3f}, "
                  f"LAPACK route {len(a) / best['lapack'][0] / 1e6:.3f}, numpy.linalg.inv "
                  f"{len(a) / best['numpy.linalg.inv'][0] / 1e6:.3f} M/s; compiled / LAPACK "
                  f"{ratio:.2f}", flush=True)
            rows.append({"op": "block", "dtype": dt, "n": n, "compiled_over_lapack": ratio})
    return rows



def bench_solve_block(args) -> list[dict]:
    """One chunk on one thread: the compiled solve against gesv (the LAPACK route), k = 1."""
    rows = []
    for dt in args.dtypes:
        for n in args.ns:
            a = stack(n, np.dtype(dt), 1 << 20)
            b = np.ones(a.shape[:-1] + (1,), dtype=a.dtype)
            y = np.empty_like(b)
            info = np.zeros(len(a), np.int32)

            def block(on):
                # The compiled solve forced past COMPILED_SOLVE_MAX_N (to find it).
                def run():
                    gpuinv.config.cpu_compiled = on
                    saved = cpu_routes.COMPILED_SOLVE_MAX_N
                    cpu_routes.COMPILED_SOLVE_MAX_N = dict.fromkeys("dfDF", 1 << 20)
                    try:
                        cpu.solve_block(a, b, y, info, None, "general", False)
                    finally:
                        gpuinv.config.cpu_compiled = True
                        cpu_routes.COMPILED_SOLVE_MAX_N = saved
                return run

            best = race({"compiled": block(True), "lapack": block(False)}, args.rounds)
            ratio = best["lapack"][0] / best["compiled"][0]
            print(f"solve block {dt:10s} n={n:3d}: compiled / gesv route {ratio:.2f}", flush=True)
            rows.append({"op": "solve-block", "dtype": dt, "n": n, "compiled_over_lapack": ratio})
    return rows



def spd_stack(n: int, dtype: np.dtype, nbytes: int, seed: int = 0) -> np.ndarray:
    """Hermitian positive definite matrices, condition numbers of a few units to a few hundred."""
    rng = np.random.default_rng(seed)
    m = max(64, nbytes // (n * n * dtype.itemsize))
    g = rng.standard_normal((m, n, n))
    if dtype.kind == "c":
        g = g + 1j * rng.standard_normal((m, n, n))
    return (g @ np.conj(np.swapaxes(g, -1, -2)) / n + 0.1 * np.eye(n)).astype(dtype)


def bench_posdef(args) -> list[dict]:
    """One chunk (1 MiB) on one thread, positive definite: the compiled kernels
    (cpu_routes.posdef_method's, forced at every n: the crossovers) against the
    LAPACK route's (closed forms up to n = 4, NumPy's Cholesky gufunc above)
    and against the general compiled LU on the same matrices; inverse with
    rcond (inv's defaults) and solve (k = 1), process time. Then the two
    loop methods against each other (elimination / Cholesky speed)."""
    from gpuinv.engines import _compiled

    rows = []
    for dt in args.dtypes:
        for n in args.ns:
            a = spd_stack(n, np.dtype(dt), 1 << 20)
            out = np.empty_like(a)
            info = np.zeros(len(a), np.int32)
            rc = np.empty(len(a), a.real.dtype)
            b = np.ones(a.shape[:-1] + (1,), dtype=a.dtype)
            y = np.empty_like(b)

            def run(structure, compiled, solve=False):
                def go():
                    names = ("COMPILED_POSDEF_MAX_N", "COMPILED_POSDEF_SOLVE_MAX_N",
                             "COMPILED_INV_MAX_N", "COMPILED_SOLVE_MAX_N", "COMPILED_POSDEF_MIN_N")
                    saved = [getattr(cpu_routes, k) for k in names]
                    big = dict.fromkeys("dfDF", 1 << 20)
                    off = dict.fromkeys("dfDF", 0)
                    for k in names[:4]:
                        setattr(cpu_routes, k, big if compiled or "POSDEF" not in k else off)
                    cpu_routes.COMPILED_POSDEF_MIN_N = dict.fromkeys("dfDF", 1)
                    try:
                        if solve:
                            cpu.solve_block(a, b, y, info, None, structure, False)
                        else:
                            cpu.invert_block_ex(a, out, info, rc, structure, False)
                    finally:
                        for k, v in zip(names, saved):
                            setattr(cpu_routes, k, v)
                return go

            def method(name, solve=False):
                if solve:
                    return lambda: _compiled.solve_posdef(a, b, y, info, name)
                return lambda: _compiled.invert_posdef(a, out, info, rc, name)

            best = race({"compiled": run("positive definite", True),
                         "lapack": run("positive definite", False),
                         "lu": run("general", True),
                         "compiled solve": run("positive definite", True, True),
                         "lapack solve": run("positive definite", False, True),
                         "lu solve": run("general", True, True),
                         "elimination": method("elimination"), "cholesky": method("cholesky"),
                         "elimination solve": method("elimination", True),
                         "cholesky solve": method("cholesky", True)}, args.rounds)
            r = {"method": cpu_routes.posdef_method(n, dt),
                 "inv_vs_lapack": best["lapack"][0] / best["compiled"][0],
                 "inv_vs_lu": best["lu"][0] / best["compiled"][0],
                 "solve_vs_lapack": best["lapack solve"][0] / best["compiled solve"][0],
                 "solve_vs_lu": best["lu solve"][0] / best["compiled solve"][0],
                 "elimination_over_cholesky": best["cholesky"][0] / best["elimination"][0],
                 "elimination_over_cholesky_solve": best["cholesky solve"][0] / best["elimination solve"][0],
                 "ns_per_inverse": best["compiled"][0] / len(a) * 1e9}
            print(f"posdef {dt:10s} n={n:3d} ({r['method']:11s}) compiled / LAPACK route: inverse "
                  f"{r['inv_vs_lapack']:5.2f}, solve {r['solve_vs_lapack']:5.2f}; / general LU: inverse "
                  f"{r['inv_vs_lu']:5.2f}, solve {r['solve_vs_lu']:5.2f}; elimination / Cholesky: "
                  f"{r['elimination_over_cholesky']:5.2f}, solve {r['elimination_over_cholesky_solve']:5.2f}; "
                  f"{r['ns_per_inverse']:.0f} ns per inverse", flush=True)
            rows.append({"op": "posdef", "dtype": dt, "n": n, "m": len(a), **r})
    return rows


def bench_threads(args) -> list[dict]:
    """Threads: the engine's pool (one compiled call per chunk, Numba's
    parallelism off) against one call with Numba's prange over
    config.cpu_threads slices (numba.set_num_threads), wall time, rcond on."""
    import numba

    from gpuinv.engines import _compiled

    threads = gpuinv.config.cpu_threads
    numba.set_num_threads(threads)
    rows = []
    for dt in args.dtypes:
        for n in args.ns:
            a = stack(n, np.dtype(dt), args.bytes)
            out = np.empty_like(a)
            info = np.zeros(len(a), np.int32)
            rc = np.empty(len(a), a.real.dtype)
            par = _compiled._kernel("invert-prange", 0, a.dtype)
            x = _compiled._read_only(a)
            best = race({"pool": lambda: gpuinv.inv_ex(a, rcond=True, device="cpu"),
                         "prange": lambda: par(x, out, info, rc, threads)}, args.rounds)
            ratio = best["prange"][1] / best["pool"][1]
            print(f"threads={threads} {dt} n={n}: pool / prange speed (wall) {ratio:.2f}", flush=True)
            rows.append({"op": "threads", "dtype": dt, "n": n, "threads": threads,
                         "pool_over_prange": ratio})
    return rows


if __name__ == "__main__":
    main()
