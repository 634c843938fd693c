"""What the call path costs: the cheapest request (general, no rcond, no check).

Issue 18 folds ``inv``'s and ``inv_ex``'s separate "plain" fork into the one
request path; the cheapest request must still cost what the fork did. This
script times it on the CPU engine (``device="cpu"``), float64, at n = 2, 4,
8 and 64, in two regimes:

* ``call``: one matrix per call, the path's fixed cost (adapting,
  normalizing, choosing the engine, the policy, wrapping), in microseconds;
* ``stack``: a stack of about ``--mib`` MiB, in matrices per second.

Each contender runs ``--repeats`` rounds, interleaved, after a warm-up; the
table shows the minimum of the process's CPU time per call (the stable
measure on a shared machine), the JSON keeps wall times too. Run it on the
commit before a change and after it, on the same machine, and compare the
two JSON files (``--compare before.json``)::

    python3 benchmarks/bench_path.py --label after --json after.json --compare before.json
"""

from __future__ import annotations

import argparse
import json
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

SIZES = (2, 4, 8, 64)


def timed(fn, repeats: int, inner: int) -> dict:
    """CPU and wall seconds per call of ``fn`` (``inner`` calls a sample)."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(inner):
            fn()
        cpu.append((time.process_time() - c0) / inner)
        wall.append((time.perf_counter() - w0) / inner)
    return {"cpu_min": min(cpu), "cpu_median": statistics.median(cpu),
            "wall_min": min(wall), "wall_median": statistics.median(wall)}


def run(mib: float, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    rows = []
    for n in SIZES:
        one = rng.standard_normal((1, n, n)) + n * np.eye(n)
        count = max(16, int(mib * 2**20 // (8 * n * n)))
        big = rng.standard_normal((count, n, n)) + n * np.eye(n)
        for regime, a, inner in (("call", one, 200), ("stack", big, 1)):
            contenders = {
                "inv_ex": lambda a=a: gpuinv.inv_ex(a, device="cpu"),
                "inv_nocheck": lambda a=a: gpuinv.inv(a, check_cond=False, device="cpu"),
            }
            for name, fn in contenders.items():
                t = timed(fn, repeats, inner)
                rows.append({"n": n, "regime": regime, "batch": a.shape[0], "call": name, **t})
    return {"machine": {"cpu": platform.processor() or platform.machine(),
                        "python": platform.python_version(), "numpy": np.__version__},
            "rows": rows}


def key(row: dict) -> tuple:
    return row["n"], row["regime"], row["call"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=float, default=8.0)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--label", default="")
    p.add_argument("--json", type=Path)
    p.add_argument("--compare", type=Path, help="a JSON of an earlier run: print the ratios")
    args = p.parse_args(argv)
    result = run(args.mib, args.repeats)
    result["label"] = args.label
    before = {}
    if args.compare:
        before = {key(r): r for r in json.loads(args.compare.read_text())["rows"]}
    print(f"gpuinv call path ({args.label or 'this tree'}): float64, device='cpu', "
          f"min CPU time of {args.repeats} rounds")
    head = f"{'n':>3} {'regime':>6} {'call':>12} {'batch':>8} {'per call':>12} {'per matrix':>12}"
    print(head + ("  vs before" if before else ""))
    for r in result["rows"]:
        line = (f"{r['n']:>3} {r['regime']:>6} {r['call']:>12} {r['batch']:>8} "
                f"{r['cpu_min'] * 1e6:>10.1f}us {r['cpu_min'] / r['batch'] * 1e9:>10.1f}ns")
        old = before.get(key(r))
        if old:
            line += f"  {r['cpu_min'] / old['cpu_min']:>8.3f}x"
        print(line)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
