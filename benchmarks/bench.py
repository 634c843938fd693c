"""Throughput of gpuinv against NumPy, SciPy and the other peers installed.

Times ``gpuinv.inv`` (on the best device present: ``device="auto"``) and, on
the same stack in the same run, ``numpy.linalg.inv``, ``scipy.linalg.inv``
and, where importable, ``torch.linalg.inv_ex`` and ``jax.numpy.linalg.inv``
on host arrays, and ``cupy.linalg.inv`` host to host where a GPU is usable
(``benchmarks/gpu_check.py`` measures device-resident input). Every case is the median of ``--repeat`` timed runs after a
warm-up, on random well-conditioned float64 (or ``--dtype``) matrices, with a
stack of about ``--batch-mb`` megabytes.

Prints a table of matrices/s with the ratio gpuinv / peer, and writes every
raw number to JSON.

    python3 benchmarks/bench.py --json benchmarks/results/cpu.json

For a fair NumPy baseline run it without the OPENBLAS_CORETYPE override that
some machines set (see README, "Measured numbers").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import gpuinv  # noqa: E402

DEFAULT_NS = [2, 3, 4, 8, 16, 32, 64, 128, 256, 512]


def stack(n: int, count: int, dtype: np.dtype, seed: int = 0) -> np.ndarray:
    """Random matrices with a dominant diagonal (condition ~ a few units)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((count, n, n), dtype=np.float64)
    a += 2 * np.sqrt(n) * np.eye(n)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.standard_normal((count, n, n))
    return a.astype(dtype)


def median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up: imports, thread pools, JIT
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peers() -> dict:
    """Peer inverses on host arrays, for the libraries importable here."""
    found = {"numpy": np.linalg.inv}
    try:
        import scipy.linalg

        found["scipy"] = scipy.linalg.inv
    except ImportError:
        pass
    try:
        import cupy

        if cupy.cuda.is_available():
            # Host in, host out, like gpuinv.inv on a NumPy stack.
            found["cupy"] = lambda a: cupy.linalg.inv(cupy.asarray(a)).get()
    except ImportError:
        pass
    try:
        import torch

        found["torch"] = lambda a: torch.linalg.inv_ex(torch.from_numpy(a)).inverse
    except ImportError:
        pass
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        found["jax"] = lambda a: jnp.linalg.inv(jnp.asarray(a)).block_until_ready()
    except ImportError:
        pass
    return found


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus_usable": gpuinv.config.cpu_threads,
        "numpy": np.__version__,
        "gpuinv": gpuinv.__version__,
        "openblas_env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")},
    }
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = None
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = threadpool_info()
    except ImportError:
        pass
    return info


def _cpu_is_best() -> bool:
    from gpuinv._device import cuda_unavailable_reason

    return cuda_unavailable_reason() is not None


def run(ns, dtype, batch_mb, repeat, device) -> list[dict]:
    rows = []
    found = peers()
    for n in ns:
        itemsize = np.dtype(dtype).itemsize
        count = max(1, int(batch_mb * 2**20) // (n * n * itemsize))
        a = stack(n, count, dtype)
        row = {"n": n, "dtype": str(np.dtype(dtype)), "batch": count, "bytes": a.nbytes}
        row["gpuinv"] = count / median_seconds(lambda: gpuinv.inv(a, device=device), repeat)
        threads = gpuinv.config.cpu_threads
        on_cpu = device == "cpu" or (device == "auto" and _cpu_is_best())
        if threads > 1 and on_cpu:
            gpuinv.config.cpu_threads = 1
            try:
                row["gpuinv_1thread"] = count / median_seconds(lambda: gpuinv.inv(a, device="cpu"), repeat)
            finally:
                gpuinv.config.cpu_threads = threads
        for name, fn in found.items():
            row[name] = count / median_seconds(lambda: fn(a), repeat)
        rows.append(row)
        print(format_row(row, list(found)), flush=True)
        del a
    return rows


def format_header(peer_names) -> str:
    cols = ["n", "batch", "gpuinv/s", "1-thread/s"] + [f"{p}/s" for p in peer_names]
    cols += [f"vs {p}" for p in peer_names]
    return " ".join(f"{c:>12}" for c in cols)


def format_row(row, peer_names) -> str:
    cells = [str(row["n"]), str(row["batch"]), f"{row['gpuinv']:.3g}", f"{row.get('gpuinv_1thread', float('nan')):.3g}"]
    cells += [f"{row[p]:.3g}" for p in peer_names]
    cells += [f"{row['gpuinv'] / row[p]:.2f}x" for p in peer_names]
    return " ".join(f"{c:>12}" for c in cells)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=DEFAULT_NS, help="matrix orders")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--batch-mb", type=float, default=256.0, help="size of each stack in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument("--device", default="auto", help="gpuinv's device argument")
    parser.add_argument("--quick", action="store_true", help="16 MiB stacks, 2 repeats")
    parser.add_argument("--json", type=Path, help="write raw numbers here")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_mb, args.repeat = min(args.batch_mb, 16.0), min(args.repeat, 2)

    info = machine()
    print(f"gpuinv {info['gpuinv']}  numpy {info['numpy']}  threads {info['cpus_usable']}  "
          f"device={args.device}  dtype={args.dtype}  ~{args.batch_mb:g} MiB per stack")
    print(format_header(list(peers())))
    rows = run(args.n, args.dtype, args.batch_mb, args.repeat, args.device)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
