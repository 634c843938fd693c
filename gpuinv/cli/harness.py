"""A small benchmark harness: median-of-repeats timing and the peers to compare with.

Used by ``gpuinv bench`` (so it ships with the package; ``benchmarks/`` is
not installed). Reusable on its own:

>>> from gpuinv.cli.harness import time_call
>>> t = time_call(lambda: sum(range(100)), repeats=3)   # doctest: +SKIP
>>> t.median                                             # seconds per call

Every peer is looked up with :func:`importlib.util.find_spec` and imported
only when the benchmark runs. Device work is synchronized inside the timed
call, so a GPU row is the time to a finished result.
"""

from __future__ import annotations

import importlib.util
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["Timing", "time_call", "Peer", "available_peers", "batch_for", "run_bench", "BenchRow"]


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median and the minimum over ``repeats``
    measurements, each the mean of ``number`` back-to-back calls."""

    median: float
    best: float
    repeats: int
    number: int


def time_call(
    fn: Callable[[], Any],
    *,
    repeats: int = 5,
    min_time: float = 0.05,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time ``fn()``: median of ``repeats`` repeats of ``number`` calls each.

    ``number`` is calibrated so one repeat lasts at least ``min_time``
    seconds, which keeps the clock's resolution and per-repeat noise small
    for calls of a few microseconds.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    number = 1
    while True:
        start = clock()
        for _ in range(number):
            fn()
        elapsed = clock() - start
        if elapsed >= min_time or number >= 1 << 20:
            break
        # Grow toward min_time in one or two steps rather than doubling.
        number = max(number * 2, math.ceil(number * min_time / max(elapsed, 1e-9) * 1.1))
    samples = [elapsed / number]
    for _ in range(repeats - 1):
        start = clock()
        for _ in range(number):
            fn()
        samples.append((clock() - start) / number)
    return Timing(statistics.median(samples), min(samples), repeats, number)


@dataclass(frozen=True)
class Peer:
    """A library to compare with: ``prepare(a)`` returns the zero-argument
    call to time on host stack ``a`` (it may move ``a`` to a device first)."""

    name: str
    module: str
    prepare: Callable[[np.ndarray], Callable[[], Any]]


def _cuda_ready() -> bool:
    from .._device import cuda_unavailable_reason

    return cuda_unavailable_reason() is None


def _numpy(a: np.ndarray) -> Callable[[], Any]:
    return lambda: np.linalg.inv(a)


def _scipy(a: np.ndarray) -> Callable[[], Any]:
    import scipy.linalg

    if a.ndim > 2:
        scipy.linalg.inv(a[:1])  # SciPy < 1.15 has no batches: fail here, not in the timer
    return lambda: scipy.linalg.inv(a, check_finite=False)


def _cupy(a: np.ndarray) -> Callable[[], Any]:
    import cupy

    d = cupy.asarray(a)
    sync = cupy.cuda.get_current_stream().synchronize
    return lambda: (cupy.linalg.inv(d), sync())


def _torch(a: np.ndarray) -> Callable[[], Any]:
    import torch

    if torch.cuda.is_available():
        t = torch.from_numpy(a).cuda()
        return lambda: (torch.linalg.inv_ex(t), torch.cuda.synchronize())
    t = torch.from_numpy(a)
    return lambda: torch.linalg.inv_ex(t)


def _jax(a: np.ndarray) -> Callable[[], Any]:
    import jax

    if a.dtype in (np.float64, np.complex128):
        # JAX narrows float64 to float32 unless x64 is on; compare like with like.
        jax.config.update("jax_enable_x64", True)
    f = jax.jit(jax.numpy.linalg.inv)
    x = jax.device_put(a)
    f(x).block_until_ready()  # compile outside the timer
    return lambda: f(x).block_until_ready()


PEERS = (
    Peer("numpy", "numpy", _numpy),
    Peer("scipy", "scipy", _scipy),
    Peer("cupy", "cupy", _cupy),
    Peer("torch", "torch", _torch),
    Peer("jax", "jax", _jax),
)


def available_peers(names: list[str] | None = None) -> list[Peer]:
    """Peers whose package is installed (CuPy only with a usable GPU), without importing them."""
    out = []
    for peer in PEERS:
        if names is not None and peer.name not in names:
            continue
        if importlib.util.find_spec(peer.module) is None:
            continue
        if peer.name == "cupy" and not _cuda_ready():
            continue
        out.append(peer)
    return out


def batch_for(n: int, dtype: np.dtype, target_bytes: int, max_batch: int = 1 << 24) -> int:
    """How many n x n matrices make a stack of about ``target_bytes``."""
    return int(max(1, min(max_batch, target_bytes // (n * n * np.dtype(dtype).itemsize))))


@dataclass
class BenchRow:
    """One order n: seconds per call and matrices/s for gpuinv and each peer."""

    n: int
    batch: int
    dtype: str
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    floor_seconds: float | None = None

    def rate(self, name: str) -> float:
        return self.batch / self.seconds[name]

    @property
    def floor_rate(self) -> float | None:
        return None if self.floor_seconds is None else self.batch / self.floor_seconds

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["matrices_per_s"] = {k: self.rate(k) for k in self.seconds}
        d["floor_matrices_per_s"] = self.floor_rate
        return d


def _test_stack(n: int, batch: int, dtype: np.dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((batch, n, n)).astype(dtype)
    a += n * np.eye(n, dtype=dtype)  # well conditioned: every library inverts all of them
    return a


def _gpuinv_on_device(a: np.ndarray) -> Callable[[], Any]:
    import cupy

    from .. import inv

    d = cupy.asarray(a)
    sync = cupy.cuda.get_current_stream().synchronize
    return lambda: (inv(d), sync())


def _copy_floor(a: np.ndarray, device: str, repeats: int, min_time: float) -> tuple[float, str]:
    """Time one copy of the stack: reading and writing each matrix once is the
    least any inverse must do. On the GPU the stack is copied device to device."""
    if device != "cpu" and _cuda_ready():
        import cupy

        d = cupy.asarray(a)
        out = cupy.empty_like(d)
        sync = cupy.cuda.get_current_stream().synchronize
        t = time_call(
            lambda: (out.__setitem__(Ellipsis, d), sync()), repeats=repeats, min_time=min_time
        )
        return t.median, "device copy"
    out = np.empty_like(a)
    t = time_call(lambda: np.copyto(out, a), repeats=repeats, min_time=min_time)
    return t.median, "host copy"


def run_bench(
    sizes: list[int],
    *,
    dtype: Any = np.float64,
    target_bytes: int = 32 << 20,
    device: str = "auto",
    peers: list[Peer] | None = None,
    repeats: int = 5,
    min_time: float = 0.05,
    floor: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[BenchRow], dict[str, Any]]:
    """Benchmark gpuinv against the peers for every n in ``sizes``.

    Returns the rows and a description of the run (versions, hardware,
    settings) for the JSON output. A peer that fails on some n records the
    error in that row instead of stopping the run.
    """
    from .. import __version__, inv

    dtype = np.dtype(dtype)
    peers = available_peers() if peers is None else peers
    floor_kind = None
    rows = []
    for n in sizes:
        batch = batch_for(n, dtype, target_bytes)
        a = _test_stack(n, batch, dtype)
        row = BenchRow(n=n, batch=batch, dtype=dtype.name)
        # (name, prepare): prepare(a) returns the zero-argument call to time.
        calls: list[tuple[str, Callable[[np.ndarray], Callable[[], Any]]]] = [
            ("gpuinv", lambda x: lambda: inv(x, device=device))
        ]
        if device != "cpu" and _cuda_ready():
            # Device-resident input, the like-for-like row against cupy/torch/jax on the GPU.
            calls.append(("gpuinv-cupy", _gpuinv_on_device))
        calls += [(p.name, p.prepare) for p in peers]
        for name, prepare in calls:
            if progress:
                progress(f"n={n} batch={batch} {name}")
            try:
                row.seconds[name] = time_call(prepare(a), repeats=repeats, min_time=min_time).median
            except Exception as exc:  # a peer's own limitation: record, keep going
                row.errors[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if floor:
            row.floor_seconds, floor_kind = _copy_floor(a, device, repeats, min_time)
        rows.append(row)
    meta = {
        "gpuinv": __version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": _cpu_count(),
        "gpu": _gpu_name() if device != "cpu" else None,
        "device": device,
        "dtype": dtype.name,
        "target_bytes": target_bytes,
        "repeats": repeats,
        "floor": floor_kind,
        "peers": [p.name for p in peers],
    }
    return rows, meta


def _cpu_model() -> str:
    """The CPU's marketing name where the OS tells it (Linux), else its architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_count() -> int:
    from .._config import _usable_cpus

    return _usable_cpus()


def _gpu_name() -> str | None:
    if not _cuda_ready():
        return None
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)
