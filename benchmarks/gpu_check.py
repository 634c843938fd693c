#!/usr/bin/env python3
"""The GPU check: one command that tests and measures gpuinv on a machine with a GPU.

    PYTHONPATH=$PWD python3 benchmarks/gpu_check.py --out results-folder [--quick]

It writes into ``--out`` (see docs/cuda.md and ../shared/GPU.md):

* ``machine.json``: nvidia-smi, GPU, driver, CuPy/CUDA/NumPy/torch/JAX
  versions, the git commit measured;
* ``pytest-gpu.log``: ``python3 -m pytest -q -m gpu tests``;
* ``results.json``: every raw timing (seconds, one entry per repeat), rewritten
  after each case so that a run cut short still leaves its data;
* ``results.md``: per case, matrices/s, the fraction of the measured floor,
  and the ratio to each peer (peer time / gpuinv time: above 1, gpuinv wins).

Floors: a device-to-device copy (bytes read plus written) for CuPy input,
since inverting a small matrix reads it once and writes it once; pinned
host-to-device and device-to-host copies for NumPy input. Timing: CUDA events
on the current stream (wall clock for JAX and NumPy), after a warm-up that
compiles kernels and creates handles, median of several runs, on random
well-conditioned matrices (Gaussian plus n on the diagonal) in batches of
about 256 MB, far past the L2 cache.

The whole check keeps within ``--budget`` seconds (default 520, under the
10-minute limit of one command): every case checks the clock first and is
recorded as skipped when time is short.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SIZES = [2, 3, 4, 5, 8, 16, 32, 64, 128, 256, 512]
COMPLEX_SIZES = [4, 32, 256]
BATCH_BYTES = 256 << 20
NUMPY_BATCH_BYTES = 16 << 20  # NumPy is timed on a smaller stack, reported per matrix
PEERS = ["cupy", "torch", "jax", "numpy"]
CROSSOVER_SIZES = [16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
CROSSOVER_N = (2, 4, 8, 32)
ROUTE_N = (32, 64, 128, 192, 256, 384, 512)
ROUTE_BATCH_BYTES = 64 << 20
KERNEL_N = (2, 4, 8, 12, 16, 24, 32)


# --- pure helpers (tested on CPU) ------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Run the GPU tests and benchmarks of gpuinv; write everything to --out."
    )
    p.add_argument("--out", required=True, type=Path, help="folder for the logs and results")
    p.add_argument("--quick", action="store_true",
                   help="fewer sizes and repeats, smaller batches (about 4 minutes)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole check (default 520, or 240 with --quick)")
    p.add_argument("--skip-tests", action="store_true", help="do not run the pytest GPU tests")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per case (median)")
    args = p.parse_args(argv)
    if args.budget is None:
        args.budget = 240.0 if args.quick else 520.0
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    return args


def batch_count(n: int, itemsize: int, nbytes: int = BATCH_BYTES) -> int:
    """Matrices in a stack of about ``nbytes``."""
    return max(1, nbytes // (n * n * itemsize))


def summarize(times: list[float]) -> float | None:
    return statistics.median(times) if times else None


def _fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def case_row(case: dict[str, Any]) -> dict[str, Any]:
    """Derived numbers of one case: matrices/s, fraction of floor, peer ratios."""
    t = summarize(case["times"].get("gpuinv", []))
    count = case["count"]
    row: dict[str, Any] = {"rate": count / t if t else None}
    floor = case.get("floor_s")
    row["floor_fraction"] = floor / t if (t and floor) else None
    for peer in PEERS:
        pt = summarize(case["times"].get(peer, []))
        pcount = case.get("peer_count", {}).get(peer, count)
        row[peer] = (pt / pcount) / (t / count) if (t and pt) else None
    return row


def format_table(cases: list[dict[str, Any]]) -> str:
    """Markdown table of the benchmark cases."""
    lines = [
        "| input | dtype | n | batch | gpuinv matrices/s | fraction of floor | "
        + " | ".join(f"vs {p}" for p in PEERS)
        + " |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * len(PEERS),
    ]
    for case in cases:
        row = case_row(case)
        frac = "-" if row["floor_fraction"] is None else f"{100 * row['floor_fraction']:.1f}%"
        lines.append(
            f"| {case['input']} | {case['dtype']} | {case['n']} | {case['count']} | "
            f"{_fmt_rate(row['rate'])} | {frac} | "
            + " | ".join(_fmt_ratio(row[p]) for p in PEERS)
            + " |"
        )
    lines.append("")
    lines.append("Ratios are peer time / gpuinv time per matrix (above 1: gpuinv is faster). "
                 "The floor is a device-to-device copy of the input and output bytes for CuPy "
                 "input, and the pinned upload plus download (overlapped) for NumPy input.")
    return "\n".join(lines)


def crossover(sizes: list[int], cpu_times: list[float], gpu_times: list[float]) -> int | None:
    """The smallest size from which the GPU is faster at every larger size."""
    best = None
    for size, c, g in reversed(list(zip(sizes, cpu_times, gpu_times))):
        if g < c:
            best = size
        else:
            break
    return best


# --- recording --------------------------------------------------------------------


class Recorder:
    """Holds every result and rewrites results.json / results.md after each case."""

    def __init__(self, out: Path, deadline: float) -> None:
        self.out = out
        self.deadline = deadline
        self.data: dict[str, Any] = {"cases": [], "floors": {}, "skipped": [], "errors": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.out / "results.json")
        md = ["# gpuinv GPU check", ""]
        machine = self.data.get("machine", {})
        md.append(f"GPU: {machine.get('gpu', '?')}; CuPy {machine.get('cupy', '?')}, "
                  f"CUDA runtime {machine.get('cuda_runtime', '?')}, commit {machine.get('commit', '?')}")
        md.append("")
        floors = self.data["floors"]
        if floors:
            md.append("Floors (GB/s): " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in floors.items()
                                                    if isinstance(v, (int, float))))
            md.append("")
        if "tests" in self.data:
            md.append(f"GPU tests: {self.data['tests'].get('summary', '?')}")
            md.append("")
        md.append(format_table(self.data["cases"]))
        for key in ("crossover", "route_threshold"):
            if key in self.data:
                md.append("")
                md.append(f"## {key}")
                md.append("```")
                md.append(json.dumps(self.data[key], indent=1, default=str))
                md.append("```")
        if self.data["skipped"]:
            md.append("")
            md.append("Skipped for time: " + ", ".join(self.data["skipped"]))
        if self.data["errors"]:
            md.append("")
            md.append("Errors: " + "; ".join(self.data["errors"]))
        (self.out / "results.md").write_text("\n".join(md) + "\n")


# --- machine info and tests ---------------------------------------------------------


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    import cupy

    info: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__,
                            "cupy": cupy.__version__, "host": platform.node()}
    for dist in ("torch", "jax", "jaxlib", "scipy"):
        info[dist] = _version(dist)
    rt = cupy.cuda.runtime
    info["cuda_runtime"] = rt.runtimeGetVersion()
    info["cuda_driver"] = rt.driverGetVersion()
    props = rt.getDeviceProperties(0)
    name = props["name"]
    info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
    info["gpu_memory_bytes"] = props.get("totalGlobalMem")
    info["device_count"] = rt.getDeviceCount()
    for key, cmd in (("commit", ["git", "rev-parse", "HEAD"]),
                     ("git_status", ["git", "status", "--short"]),
                     ("nvidia_smi", ["nvidia-smi"])):
        try:
            info[key] = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                                       timeout=30, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info[key] = f"unavailable: {exc}"
    return info


def run_tests(rec: Recorder, timeout: float) -> None:
    log = rec.out / "pytest-gpu.log"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"]
    start = time.monotonic()
    with log.open("w") as fh:
        try:
            proc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout, check=False)
            rc: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            rc = f"timed out after {timeout:.0f} s"
    tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
    rec.data["tests"] = {"rc": rc, "seconds": time.monotonic() - start, "summary": tail[0]}
    rec.save()


# --- timing -----------------------------------------------------------------------


def time_events(fn: Callable[[], Any], repeats: int, max_seconds: float) -> list[float]:
    """CUDA-event times of ``fn`` on the current stream, after one warm-up call."""
    import cupy

    fn()
    cupy.cuda.get_current_stream().synchronize()
    times: list[float] = []
    spent = time.monotonic()
    for _ in range(repeats):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
        if time.monotonic() - spent > max_seconds:
            break
    return times


def time_wall(fn: Callable[[], Any], repeats: int, max_seconds: float,
              sync: Callable[[Any], Any] = lambda r: r) -> list[float]:
    sync(fn())
    times: list[float] = []
    spent = time.monotonic()
    for _ in range(repeats):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
        if time.monotonic() - spent > max_seconds:
            break
    return times


def measure_floors(rec: Recorder, repeats: int, quick: bool) -> None:
    import cupy

    size = (256 if quick else 1024) << 20
    rec.data["floors"]["d2d_bytes_per_s"] = 2 * size / _time_d2d(size, repeats)  # read + write
    hsize = 256 << 20
    up, down = _time_pinned(hsize, repeats)
    rec.data["floors"]["h2d_pinned_bytes_per_s"] = hsize / up
    rec.data["floors"]["d2h_pinned_bytes_per_s"] = hsize / down
    cupy.get_default_memory_pool().free_all_blocks()
    rec.save()


def _time_d2d(size: int, repeats: int) -> float:
    import cupy

    src = cupy.empty(size, dtype=np.uint8)
    dst = cupy.empty_like(src)
    src.fill(1)
    return summarize(time_events(lambda: dst.__setitem__(Ellipsis, src), repeats, 10))


def _time_pinned(hsize: int, repeats: int) -> tuple[float, float]:
    import cupy

    mem = cupy.cuda.alloc_pinned_memory(hsize)
    host = np.frombuffer(mem, dtype=np.uint8, count=hsize)
    host[:] = 1
    dev = cupy.empty(hsize, dtype=np.uint8)
    stream = cupy.cuda.get_current_stream()
    rt = cupy.cuda.runtime
    up = summarize(time_events(lambda: rt.memcpyAsync(dev.data.ptr, host.ctypes.data, hsize,
                                                      rt.memcpyHostToDevice, stream.ptr),
                               repeats, 10))
    down = summarize(time_events(lambda: rt.memcpyAsync(host.ctypes.data, dev.data.ptr, hsize,
                                                        rt.memcpyDeviceToHost, stream.ptr),
                                 repeats, 10))
    return up, down


# --- peers ------------------------------------------------------------------------------


def _load_peers() -> dict[str, Any]:
    peers: dict[str, Any] = {}
    try:
        import torch

        if torch.cuda.is_available():
            peers["torch"] = torch
    except Exception:  # noqa: BLE001, S110 - any failure means "not installed here"
        pass
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        if any(d.platform == "gpu" for d in jax.devices()):
            peers["jax"] = jax
    except Exception:  # noqa: BLE001, S110
        pass
    return peers


def random_device_stack(count: int, n: int, dtype: Any, seed: int = 0) -> Any:
    import cupy

    rs = cupy.random.RandomState(seed)
    real = np.dtype(dtype).kind == "f"
    base = np.float32 if np.dtype(dtype) in (np.float32, np.complex64) else np.float64
    a = rs.standard_normal((count, n, n), dtype=base)
    if not real:
        a = a + 1j * rs.standard_normal((count, n, n), dtype=base)
    a += n * cupy.eye(n, dtype=base)
    return a.astype(dtype)


def bench_case(rec: Recorder, peers: dict[str, Any], n: int, dtype: Any, repeats: int,
               batch_bytes: int, per_case: float) -> None:
    """One (n, dtype): CuPy input against the peers, then NumPy input."""
    import cupy

    dt = np.dtype(dtype)
    count = batch_count(n, dt.itemsize, batch_bytes)
    cap = per_case / 6
    host, numpy_times = _bench_device_input(rec, peers, n, dt, count, repeats, cap)
    _bench_host_input(rec, peers, n, dt, host, numpy_times, repeats, cap)
    cupy.get_default_memory_pool().free_all_blocks()


def _bench_device_input(rec: Recorder, peers: dict[str, Any], n: int, dt: np.dtype, count: int,
                        repeats: int, cap: float) -> tuple[np.ndarray, list[float]]:
    """CuPy input; returns the stack on the host and NumPy's times."""
    import cupy

    import gpuinv

    d2d = rec.data["floors"].get("d2d_bytes_per_s")
    moved = 2 * count * n * n * dt.itemsize
    a = random_device_stack(count, n, dt)
    case: dict[str, Any] = {"input": "cupy", "dtype": dt.name, "n": n, "count": count,
                            "times": {}, "peer_count": {},
                            "floor_s": moved / d2d if d2d else None}
    rec.data["cases"].append(case)
    case["times"]["gpuinv"] = time_events(lambda: gpuinv.inv_ex(a), repeats, cap)
    case["times"]["gpuinv_inv_raise"] = time_events(lambda: gpuinv.inv(a), repeats, cap)
    rec.save()
    try:
        case["times"]["cupy"] = time_events(lambda: cupy.linalg.inv(a), repeats, cap)
    except Exception as exc:  # noqa: BLE001 - record and go on
        rec.data["errors"].append(f"cupy n={n} {dt.name}: {exc!r}")
    if "torch" in peers:
        torch = peers["torch"]
        t = torch.from_dlpack(a)
        case["times"]["torch"] = time_events(lambda: torch.linalg.inv_ex(t), repeats, cap)
    if "jax" in peers and rec.left() > 60:
        jax = peers["jax"]
        try:
            x = jax.device_put(cupy.asnumpy(a))
            f = jax.jit(jax.numpy.linalg.inv)
            case["times"]["jax"] = time_wall(lambda: f(x), repeats, cap,
                                             sync=lambda r: r.block_until_ready())
        except Exception as exc:  # noqa: BLE001
            rec.data["errors"].append(f"jax n={n} {dt.name}: {exc!r}")
    host = cupy.asnumpy(a)
    small = host[: batch_count(n, dt.itemsize, NUMPY_BATCH_BYTES)]
    case["peer_count"]["numpy"] = len(small)
    case["times"]["numpy"] = time_wall(lambda: np.linalg.inv(small), max(1, repeats // 2), cap)
    rec.save()
    return host, case["times"]["numpy"]


def _bench_host_input(rec: Recorder, peers: dict[str, Any], n: int, dt: np.dtype,
                      full: np.ndarray, numpy_times: list[float], repeats: int,
                      cap: float) -> None:
    """NumPy input: the host pipeline, against the pinned copy floor."""
    import cupy

    import gpuinv

    h2d = rec.data["floors"].get("h2d_pinned_bytes_per_s")
    d2h = rec.data["floors"].get("d2h_pinned_bytes_per_s")
    nbytes = full.nbytes
    small = batch_count(n, dt.itemsize, NUMPY_BATCH_BYTES)
    case: dict[str, Any] = {"input": "numpy", "dtype": dt.name, "n": n, "count": len(full),
                            "times": {}, "peer_count": {"numpy": min(small, len(full))},
                            "floor_s": max(nbytes / h2d, nbytes / d2h) if h2d and d2h else None,
                            "serial_floor_s": nbytes / h2d + nbytes / d2h if h2d and d2h else None}
    rec.data["cases"].append(case)
    case["times"]["gpuinv"] = time_wall(lambda: gpuinv.inv_ex(full, device="cuda"), repeats, cap)
    case["times"]["numpy"] = numpy_times
    if "torch" in peers:  # torch's own round trip: upload, inv_ex, download
        torch = peers["torch"]
        th = torch.from_numpy(full)
        case["times"]["torch"] = time_wall(
            lambda: [r.cpu() for r in torch.linalg.inv_ex(th.cuda())], repeats, cap)
    case["times"]["cupy"] = time_wall(lambda: cupy.asnumpy(cupy.linalg.inv(cupy.asarray(full))),
                                      repeats, cap)
    rec.save()


def measure_crossover(rec: Recorder, repeats: int) -> None:
    """config.cuda_min_bytes: NumPy stacks on the CPU engine vs through the GPU."""
    import gpuinv

    result: dict[str, Any] = {}
    sizes = CROSSOVER_SIZES
    for n in CROSSOVER_N:
        rng = np.random.default_rng(n)
        cpu, gpu = [], []
        for nbytes in sizes:
            count = batch_count(n, 8, nbytes)
            a = rng.standard_normal((count, n, n)) + n * np.eye(n)
            for where, times in (("cpu", cpu), ("cuda", gpu)):
                run = lambda a=a, where=where: gpuinv.inv_ex(a, device=where)
                times.append(summarize(time_wall(run, repeats, 5)))
        result[f"n={n} float64"] = {"bytes": sizes, "cpu_s": cpu, "gpu_s": gpu,
                                    "crossover_bytes": crossover(sizes, cpu, gpu)}
        rec.data["crossover"] = result
        rec.save()
        if rec.left() < 30:
            break


def _compare_routes(rec: Recorder, key: str, routes: tuple[str, ...], sizes: tuple[int, ...],
                    repeats: int) -> None:
    """Time the CUDA engine's routes against each other on CuPy input, per n and dtype."""
    from gpuinv import kernels
    from gpuinv._normalize import normalize
    from gpuinv.engines import cuda_engine

    engine = cuda_engine(None)
    result: dict[str, Any] = {}
    for dtype in (np.float64, np.float32):
        for n in sizes:
            usable = [r for r in routes
                      if r != "kernel" or n <= kernels.KERNEL_MAX_N[np.dtype(dtype)]]
            if len(usable) < 2:
                continue
            count = batch_count(n, np.dtype(dtype).itemsize, ROUTE_BATCH_BYTES)
            op = normalize(random_device_stack(count, n, dtype))
            row = {}
            for route in usable:
                run = lambda op=op, route=route: engine.invert(op, route=route)
                t = summarize(time_events(run, repeats, 8))
                row[route] = count / t
            result[f"{np.dtype(dtype).name} n={n}"] = {"count": count, "matrices_per_s": row,
                                                       "faster": max(row, key=row.get)}
            rec.data[key] = result
            rec.save()
            if rec.left() < 20:
                return


def measure_route_threshold(rec: Recorder, repeats: int) -> None:
    """CUDA_CUSOLVER_MIN_N: batched cuBLAS vs per-matrix cuSOLVER."""
    _compare_routes(rec, "route_threshold", ("cublas", "cusolver"), ROUTE_N, repeats)


def measure_kernel_threshold(rec: Recorder, repeats: int) -> None:
    """KERNEL_MAX_N: our small-n kernels vs cuBLAS getrf/getri."""
    _compare_routes(rec, "kernel_threshold", ("kernel", "cublas"), KERNEL_N, repeats)


# --- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    rec = Recorder(args.out, start + args.budget)
    sys.path.insert(0, str(REPO))
    import cupy

    if not cupy.cuda.is_available():
        print("gpu_check: no usable CUDA device", file=sys.stderr)
        return 2
    rec.data["machine"] = machine_info()
    rec.data["args"] = {k: str(v) for k, v in vars(args).items()}
    (args.out / "machine.json").write_text(json.dumps(rec.data["machine"], indent=1, default=str))
    rec.save()

    if not args.skip_tests:
        run_tests(rec, timeout=min(240.0, 0.45 * args.budget))
        print(f"tests: {rec.data['tests']}", flush=True)
    measure_floors(rec, args.repeats, args.quick)
    print(f"floors: {rec.data['floors']}", flush=True)

    peers = _load_peers()
    rec.data["peers"] = sorted(peers) + ["cupy", "numpy"]
    sizes = [2, 4, 8, 32, 128, 512] if args.quick else SIZES
    batch_bytes = (64 << 20) if args.quick else BATCH_BYTES
    plan = [(n, np.float64) for n in sizes] + [(n, np.float32) for n in sizes]
    plan += [(n, dt) for n in COMPLEX_SIZES for dt in (np.complex64, np.complex128)]
    reserve = 90.0  # for the crossover and the two route thresholds
    for i, (n, dtype) in enumerate(plan):
        left = rec.left() - reserve
        per_case = left / (len(plan) - i)
        if per_case < 3:
            rec.data["skipped"].append(f"n={n} {np.dtype(dtype).name}")
            continue
        try:
            bench_case(rec, peers, n, dtype, args.repeats, batch_bytes, per_case)
        except Exception as exc:  # noqa: BLE001 - a failing case must not lose the others
            rec.data["errors"].append(f"case n={n} {np.dtype(dtype).name}: {exc!r}")
            rec.save()
        print(f"[{time.monotonic() - start:.0f}s] n={n} {np.dtype(dtype).name}", flush=True)
    measurements = (("crossover", measure_crossover), ("kernel_threshold", measure_kernel_threshold),
                    ("route_threshold", measure_route_threshold))
    for name, fn in measurements:
        if rec.left() < 15:
            rec.data["skipped"].append(name)
            continue
        try:
            fn(rec, max(2, args.repeats // 2))
        except Exception as exc:  # noqa: BLE001
            rec.data["errors"].append(f"{name}: {exc!r}")
    rec.data["seconds"] = time.monotonic() - start
    rec.save()
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
