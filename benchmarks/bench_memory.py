"""Peak extra memory of the CPU engine on large stacks.

For each configuration (order n, dtype, worker threads, chunk size) a fresh
subprocess builds a stack of about ``--gb`` gigabytes, calls
``gpuinv.inv_ex(a, device="cpu")`` once, and reports two measurements:

* ``tracemalloc``: NumPy reports every array allocation to tracemalloc, so
  the traced peak during the call, minus what was traced before it, is the
  extra memory gpuinv's own arrays took (output, info and temporaries);
* ``ru_maxrss``: the process's peak resident size grows by at most the same
  plus whatever OpenBLAS and the worker threads allocate outside NumPy.

The claim checked (and documented in docs/reliability.md): beyond the output
and info arrays, the CPU engine holds at most ``BOUND`` chunks of
``gpuinv.config.cpu_chunk_bytes`` per worker thread, whatever the stack's
size. The table shows the measured multiple ``K = (extra - output - info) /
(chunk_bytes * threads)``.

Usage::

    python benchmarks/bench_memory.py                 # ~1 GB stacks
    python benchmarks/bench_memory.py --gb 2 --json memory.json
    python benchmarks/bench_memory.py --quick          # 64 MB stacks, for CI smoke runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

# The documented bound on K (docs/reliability.md). Measured: 3-4 on ordinary
# stacks, 6 with 0.1% non-finite matrices, 7.5 in the worst adversarial batch
# found (every matrix singular, n = 2: the closed form, then LAPACK, then the
# pivot search each hold a copy). tests/test_memory.py checks the same bound
# on small adversarial stacks, this benchmark on large ones.
BOUND = 12

CONFIGS = [
    # (n, dtype, threads, chunk_bytes)
    (2, "float64", 1, 1 << 20),
    (3, "float64", 2, 1 << 20),
    (4, "float64", 2, 1 << 20),
    (4, "complex128", 2, 1 << 20),
    (3, "float32", 2, 1 << 20),
    (3, "int32", 2, 1 << 20),  # converted to float64 chunk by chunk
    (3, "float64", 2, 16 << 20),
    (8, "float64", 1, 1 << 20),
    (32, "float64", 2, 1 << 20),
    (32, "float64", 2, 8 << 20),
]

_CHILD = r"""
import json, math, resource, sys, tracemalloc
import numpy as np
sys.path.insert(0, {root!r})
import gpuinv

n, dtype, threads, chunk, nbytes, nonfinite = {n}, {dtype!r}, {threads}, {chunk}, {nbytes}, {nonfinite}
gpuinv.config.cpu_threads = threads
gpuinv.config.cpu_chunk_bytes = chunk
itemsize = np.dtype(dtype).itemsize
count = max(1, nbytes // (n * n * itemsize))
# Build the stack in place, a slice at a time, so that building it leaves no
# temporaries in the peak resident size measured below.
a = np.empty((count, n, n), dtype=dtype)
rng = np.random.default_rng(0)
step = max(1, (8 << 20) // (n * n * 8))
eye = (2 * n) * np.eye(n)
for s in range(0, count, step):
    part = rng.standard_normal((min(step, count - s), n, n)) + eye
    if np.dtype(dtype).kind == "i":
        part = np.round(part * 10)
    a[s : s + step] = part
    if np.dtype(dtype).kind == "c":
        a[s : s + step].imag = part
if nonfinite and count > 10:
    a[:: max(1, count // 1000), 0, 0] = np.nan  # 0.1% non-finite: the slow path
del part
gpuinv.inv_ex(np.eye(n)[None].repeat(64, 0), device="cpu")  # start the pool outside the measurement
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
before, _ = tracemalloc.get_traced_memory()
res = gpuinv.inv_ex(a, device="cpu")
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
print(json.dumps(dict(
    count=count, input_bytes=a.nbytes, output_bytes=res.inverse.nbytes, info_bytes=res.info.nbytes,
    traced_extra=peak - before, rss_extra=(rss1 - rss0) * scale,
)))
"""


def run(root, n, dtype, threads, chunk, nbytes, nonfinite):
    code = _CHILD.format(root=root, n=n, dtype=dtype, threads=threads, chunk=chunk, nbytes=nbytes, nonfinite=nonfinite)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    beyond = row["traced_extra"] - row["output_bytes"] - row["info_bytes"]
    row.update(
        n=n, dtype=dtype, threads=threads, chunk_bytes=chunk, nonfinite=nonfinite,
        beyond_output=beyond, k=beyond / (chunk * threads),
        extra_over_output=row["traced_extra"] / row["output_bytes"],
    )
    row["ok"] = row["k"] <= BOUND
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gb", type=float, default=1.0, help="input stack size in GB (default 1)")
    p.add_argument("--quick", action="store_true", help="64 MB stacks (smoke run)")
    p.add_argument("--json", default="bench_memory.json", help="where to write the results")
    p.add_argument("--only-n", type=int, nargs="*", help="run only these orders n")
    args = p.parse_args(argv)
    nbytes = (64 << 20) if args.quick else int(args.gb * 1e9)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = []
    header = (
        f"{'n':>3} {'dtype':>10} {'thr':>3} {'chunk':>6} {'nf':>2} {'input':>8} {'output':>8} "
        f"{'traced+':>8} {'rss+':>8} {'beyond':>8} {'K':>5} {'extra/out':>9}"
    )
    print(f"CPU engine peak extra memory, stacks of {nbytes / 1e9:.2f} GB; bound: output + info + {BOUND} x chunk x threads")
    print(header)
    mb = lambda b: f"{b / 2**20:7.1f}M"  # noqa: E731
    configs = [c + (False,) for c in CONFIGS] + [(3, "float64", 2, 1 << 20, True), (8, "float64", 1, 1 << 20, True)]
    if args.only_n:
        configs = [c for c in configs if c[0] in args.only_n]
    for n, dtype, threads, chunk, nonfinite in configs:
        r = run(root, n, dtype, threads, chunk, nbytes, nonfinite)
        rows.append(r)
        print(
            f"{n:>3} {dtype:>10} {threads:>3} {chunk >> 20:>5}M {'y' if nonfinite else '':>2} {mb(r['input_bytes'])} "
            f"{mb(r['output_bytes'])} {mb(r['traced_extra'])} {mb(r['rss_extra'])} {mb(r['beyond_output'])} "
            f"{r['k']:5.2f} {r['extra_over_output']:9.3f}" + ("" if r["ok"] else "  OVER BOUND")
        )
    result = dict(
        benchmark="bench_memory",
        bound_k=BOUND,
        python=sys.version.split()[0],
        machine=platform.machine(),
        cpus=os.cpu_count(),
        stack_bytes=nbytes,
        rows=rows,
    )
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.json}")
    worst = max(r["k"] for r in rows)
    print(f"worst K = {worst:.2f} (bound {BOUND})")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
