"""Issue 10's benchmark: what rcond costs, what Cholesky buys, what solve buys.

Three tables, all on the CPU engine (``device="cpu"``), float64, stacks of
about ``--mib`` MiB, each time the median of ``--repeats`` runs after a
warm-up run (the machine this was written on is a shared 2-core VM: medians
of several runs, and honest ratios rather than absolute numbers):

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


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: thread pool, page faults, caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
    p.add_argument("--repeats", type=int, default=7)
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
    print(f"bench_numerics: float64, ~{args.mib:g} MiB stacks, median of {r}, "
          f"{cpu_name()}, {os.cpu_count()} CPUs, device=cpu")

    print("\n1. rcond overhead (seconds per stack; overhead = with / without - 1)")
    print(f"{'n':>4} {'batch':>8} {'inv_ex':>10} {'+rcond':>10} {'overhead':>9} "
          f"{'inv(off)':>10} {'inv(on)':>10} {'overhead':>9}")
    for n in args.rcond_n:
        a = stack(n, args.mib, rng)
        t0 = timed(lambda: gpuinv.inv_ex(a, device="cpu"), r)
        t1 = timed(lambda: gpuinv.inv_ex(a, rcond=True, device="cpu"), r)
        t2 = timed(lambda: gpuinv.inv(a, check_cond=False, device="cpu"), r)
        t3 = timed(lambda: gpuinv.inv(a, device="cpu"), r)
        row = {"n": n, "batch": len(a), "inv_ex": t0, "inv_ex_rcond": t1,
               "rcond_overhead": t1 / t0 - 1, "inv_check_off": t2, "inv_check_on": t3,
               "check_overhead": t3 / t2 - 1}
        results["rcond"].append(row)
        print(f"{n:>4} {len(a):>8} {t0:>10.4f} {t1:>10.4f} {row['rcond_overhead']:>8.1%} "
              f"{t2:>10.4f} {t3:>10.4f} {row['check_overhead']:>8.1%}")

    print("\n2. positive definite (Cholesky) against general (LU), same SPD stack")
    print(f"{'n':>4} {'batch':>8} {'general':>10} {'pos':>10} {'speedup':>8}")
    for n in args.pos_n:
        a = stack(n, args.mib, rng, spd=True)
        tg = timed(lambda: gpuinv.inv_ex(a, device="cpu"), r)
        tp = timed(lambda: gpuinv.inv_ex(a, assume_a="positive definite", device="cpu"), r)
        row = {"n": n, "batch": len(a), "general": tg, "pos": tp, "speedup": tg / tp}
        results["pos"].append(row)
        print(f"{n:>4} {len(a):>8} {tg:>10.4f} {tp:>10.4f} {tg / tp:>7.2f}x")

    print("\n3. solve, k = 1: solve(a, b) against inv(a) @ b and numpy.linalg.solve")
    print(f"{'n':>4} {'batch':>8} {'solve':>10} {'inv@b':>10} {'np.solve':>10} "
          f"{'vs inv@b':>9} {'vs numpy':>9} {'bwd solve':>10} {'bwd inv@b':>10}")
    for n in args.solve_n:
        a = stack(n, args.mib, rng)
        b = rng.standard_normal((len(a), n, 1))
        ts = timed(lambda: gpuinv.solve(a, b, device="cpu"), r)
        ti = timed(lambda: gpuinv.inv(a, check_cond=False, device="cpu") @ b, r)
        tn = timed(lambda: np.linalg.solve(a, b), r)
        # Accuracy on the same stack: the median normwise backward error
        # |a x - b| / (|a| |x| + |b|) (infinity norms), per matrix.
        x = gpuinv.solve(a, b, device="cpu")
        y = gpuinv.inv(a, check_cond=False, device="cpu") @ b

        def backward(z):
            res = np.abs(a @ z - b).max(axis=(1, 2))
            scale = np.abs(a).sum(axis=2).max(axis=1) * np.abs(z).max(axis=(1, 2))
            return float(np.median(res / (scale + np.abs(b).max(axis=(1, 2)))))

        row = {"n": n, "batch": len(a), "solve": ts, "inv_matmul": ti, "numpy_solve": tn,
               "speedup_vs_inv_matmul": ti / ts, "speedup_vs_numpy": tn / ts,
               "backward_error_solve": backward(x), "backward_error_inv_matmul": backward(y)}
        results["solve"].append(row)
        print(f"{n:>4} {len(a):>8} {ts:>10.4f} {ti:>10.4f} {tn:>10.4f} {ti / ts:>8.2f}x "
              f"{tn / ts:>8.2f}x {row['backward_error_solve']:>10.2e} "
              f"{row['backward_error_inv_matmul']:>10.2e}")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
