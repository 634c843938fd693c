"""Issue 10's benchmark: what rcond costs, what Cholesky buys, what solve buys.

Three tables, all on the CPU engine (``device="cpu"``), float64, stacks of
about ``--mib`` MiB, each time the median of ``--repeats`` runs after a
warm-up run, the contenders interleaved round by round. The machine this
was written on is a shared 2-core VM under other load: the tables show the
minimum over the rounds of the CPU seconds the process spent (all threads),
the stable measure of cost there; wall times are recorded in the JSON:

1. ``rcond``: ``inv_ex(a)`` against ``inv_ex(a, rcond=True)``, and
   ``inv(a, check_cond=False)`` against ``inv(a)`` (the default check).
   Target: at most 10% at n <= 4.
2. ``pos``: ``inv_ex(a, assume_a="positive definite")`` against
   ``inv_ex(a)`` on the same SPD stack. Target: at least 1.5x at n >= 16.
3. ``solve``: ``solve(a, b)`` with b of shape (..., n, 1) against
   ``inv(a, check_cond=False) @ b`` and ``numpy.linalg.solve(a, b)``.
   Target: at least 1.5x over ``inv(a) @ b`` at every n.

    python3 benchmarks/bench_numerics.py --json out.json > out.txt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import gpuinv  # noqa: E402


def compare(fns: dict, repeats: int) -> dict:
    """Seconds per call of each function over ``repeats`` rounds, the functions
    interleaved within each round: the minimum and median of the process's
    CPU time (all its threads) and of the wall time.

    On a shared machine (other jobs kept the load at 6-10 on 2 cores while
    this was written) wall time measures the neighbours as much as the code;
    the CPU seconds this process spends are the stable measure of what a
    call costs, so ratios are taken of the CPU-time minima. Wall times are
    kept in the JSON.
    """
    for fn in fns.values():
        fn()  # warm-up: thread pool, page faults, caches
    cpu: dict = {name: [] for name in fns}
    wall: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    return {name: {"min": min(cpu[name]), "median": statistics.median(cpu[name]),
                   "wall_min": min(wall[name]), "wall_median": statistics.median(wall[name])}
            for name in fns}


def stack(n: int, mib: float, rng: np.random.Generator, spd: bool = False) -> np.ndarray:
    count = max(16, int(mib * 2**20 // (8 * n * n)))
    g = rng.standard_normal((count, n, n))
    if spd:
        return g @ g.transpose(0, 2, 1) + n * np.eye(n)
    return g + n * np.eye(n)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=float, default=32.0, help="stack size in MiB (default 32)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--rcond-n", type=int, nargs="+", default=[1, 2, 3, 4, 8, 16, 64])
    p.add_argument("--pos-n", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64, 128])
    p.add_argument("--solve-n", type=int, nargs="+",
                   default=[1, 2, 3, 4, 5, 8, 16, 32, 64, 128])
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    r = args.repeats
    results: dict = {
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "numpy": np.__version__,
                    "gpuinv": gpuinv.__version__, "python": platform.python_version()},
        "settings": {"mib": args.mib, "repeats": r, "dtype": "float64", "device": "cpu"},
        "rcond": [], "pos": [], "solve": [],
    }
    print(f"bench_numerics: float64, ~{args.mib:g} MiB stacks, {r} interleaved rounds "
          f"(CPU seconds, minimum), {cpu_name()}, {os.cpu_count()} CPUs, device=cpu")

    print("\n1. rcond overhead (CPU ms per stack, minimum; overhead = with / without - 1)")
    print(f"{'n':>4} {'batch':>8} {'inv_ex':>9} {'+rcond':>9} {'overhead':>9} "
          f"{'inv(off)':>9} {'inv(on)':>9} {'overhead':>9} {'rc(wall)':>9}")
    for n in args.rcond_n:
        a = stack(n, args.mib, rng)
        t = compare({
            "inv_ex": lambda: gpuinv.inv_ex(a, device="cpu"),
            "inv_ex_rcond": lambda: gpuinv.inv_ex(a, rcond=True, device="cpu"),
            "inv_check_off": lambda: gpuinv.inv(a, check_cond=False, device="cpu"),
            "inv_check_on": lambda: gpuinv.inv(a, device="cpu"),
        }, r)
        m = {k: v["min"] for k, v in t.items()}
        row = {"n": n, "batch": len(a), "seconds": t,
               "rcond_overhead_wall": t["inv_ex_rcond"]["wall_min"] / t["inv_ex"]["wall_min"] - 1,
               "rcond_overhead": m["inv_ex_rcond"] / m["inv_ex"] - 1,
               "check_overhead": m["inv_check_on"] / m["inv_check_off"] - 1}
        results["rcond"].append(row)
        print(f"{n:>4} {len(a):>8} {1e3 * m['inv_ex']:>9.2f} {1e3 * m['inv_ex_rcond']:>9.2f} "
              f"{row['rcond_overhead']:>8.1%} {1e3 * m['inv_check_off']:>9.2f} "
              f"{1e3 * m['inv_check_on']:>9.2f} {row['check_overhead']:>8.1%} "
              f"{row['rcond_overhead_wall']:>8.1%}")

    print("\n2. positive definite (Cholesky) against general (LU), same SPD stack (CPU ms, minimum)")
    print(f"{'n':>4} {'batch':>8} {'general':>9} {'pos':>9} {'speedup':>8} {'(wall)':>8}")
    for n in args.pos_n:
        a = stack(n, args.mib, rng, spd=True)
        t = compare({
            "general": lambda: gpuinv.inv_ex(a, device="cpu"),
            "pos": lambda: gpuinv.inv_ex(a, assume_a="positive definite", device="cpu"),
        }, r)
        tg, tp = t["general"]["min"], t["pos"]["min"]
        wall = t["general"]["wall_min"] / t["pos"]["wall_min"]
        row = {"n": n, "batch": len(a), "seconds": t, "speedup": tg / tp, "speedup_wall": wall}
        results["pos"].append(row)
        print(f"{n:>4} {len(a):>8} {1e3 * tg:>9.2f} {1e3 * tp:>9.2f} {tg / tp:>7.2f}x {wall:>7.2f}x")

    print("\n3. solve, k = 1: solve(a, b) against inv(a) @ b and numpy.linalg.solve (CPU ms, minimum;"
          " bwd: median backward error)")
    print(f"{'n':>4} {'batch':>8} {'solve':>9} {'inv@b':>9} {'np.solve':>9} "
          f"{'vs inv@b':>9} {'(wall)':>8} {'vs numpy':>9} {'bwd solve':>10} {'bwd inv@b':>10}")
    for n in args.solve_n:
        a = stack(n, args.mib, rng)
        b = rng.standard_normal((len(a), n, 1))
        t = compare({
            "solve": lambda: gpuinv.solve(a, b, device="cpu"),
            "inv_matmul": lambda: gpuinv.inv(a, check_cond=False, device="cpu") @ b,
            "numpy_solve": lambda: np.linalg.solve(a, b),
        }, r)
        ts, ti, tn = (t[k]["min"] for k in ("solve", "inv_matmul", "numpy_solve"))
        # Accuracy on the same stack: the median normwise backward error
        # |a x - b| / (|a| |x| + |b|) (infinity norms), per matrix.
        x = gpuinv.solve(a, b, device="cpu")
        y = gpuinv.inv(a, check_cond=False, device="cpu") @ b

        def backward(z):
            res = np.abs(a @ z - b).max(axis=(1, 2))
            scale = np.abs(a).sum(axis=2).max(axis=1) * np.abs(z).max(axis=(1, 2))
            return float(np.median(res / (scale + np.abs(b).max(axis=(1, 2)))))

        wall = t["inv_matmul"]["wall_min"] / t["solve"]["wall_min"]
        row = {"n": n, "batch": len(a), "seconds": t,
               "speedup_vs_inv_matmul": ti / ts, "speedup_vs_inv_matmul_wall": wall,
               "speedup_vs_numpy": tn / ts,
               "backward_error_solve": backward(x), "backward_error_inv_matmul": backward(y)}
        results["solve"].append(row)
        print(f"{n:>4} {len(a):>8} {1e3 * ts:>9.2f} {1e3 * ti:>9.2f} {1e3 * tn:>9.2f} "
              f"{ti / ts:>8.2f}x {wall:>7.2f}x {tn / ts:>8.2f}x {row['backward_error_solve']:>10.2e} "
              f"{row['backward_error_inv_matmul']:>10.2e}")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
