"""Tunables, read once from the environment and changeable at run time.

>>> import gpuinv
>>> gpuinv.config.cpu_threads = 4          # doctest: +SKIP

Each default says where it came from. Environment variables (read at import):

* ``GPUINV_CPU_THREADS``: worker threads of the CPU engine;
* ``GPUINV_CPU_CHUNK_BYTES``: bytes of input per CPU work item;
* ``GPUINV_CPU_COMPILED``: ``0`` turns the CPU engine's compiled (Numba)
  kernels off, ``1`` (the default) uses them where Numba is installed;
* ``GPUINV_CUDA_MIN_BYTES``: with ``device="auto"``, the smallest NumPy stack
  (in bytes) that is sent to the GPU; smaller stacks stay on the CPU;
* ``GPUINV_CUDA_CHUNK_BYTES``: the most bytes of input one GPU chunk holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Config", "config"]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"environment variable {name} must be at least 1, got {value}")
    return value


def _env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"environment variable {name} must be 0 or 1, got {raw!r}")


def _usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Config:
    # All cores this process may use: numpy.linalg.inv runs one matrix at a
    # time on one core, so threads over chunks are free speed on every n
    # (benchmarks/bench_cpu.py, the "threads" column).
    cpu_threads: int = field(default_factory=lambda: _env_int("GPUINV_CPU_THREADS", _usable_cpus()))
    # 1 MiB of input per work item keeps the closed forms' temporaries
    # (about 20 arrays of one chunk's elements) inside a 2 MiB L2 and still
    # amortizes Python's per-call cost; benchmarks/bench_cpu.py --sweep-chunk.
    cpu_chunk_bytes: int = field(default_factory=lambda: _env_int("GPUINV_CPU_CHUNK_BYTES", 1 << 20))
    # Use the compiled LU kernels (gpuinv.engines._compiled, Numba, the
    # gpuinv[cpu] extra) where Numba is importable: 2-4x numpy.linalg.inv at
    # n = 4..32 (benchmarks/bench_compiled.py). False: NumPy/LAPACK only.
    cpu_compiled: bool = field(default_factory=lambda: _env_flag("GPUINV_CPU_COMPILED", True))
    # Provisional until measured on hardware: below 4 MiB a host stack is
    # dominated by the GPU round trip's fixed cost (context, allocations,
    # two transfers, launch). benchmarks/gpu_check.py measures the crossover.
    cuda_min_bytes: int = field(default_factory=lambda: _env_int("GPUINV_CUDA_MIN_BYTES", 4 << 20))
    # The cap on one GPU chunk's input; the CUDA engine also bounds chunks by
    # free device memory and by cuBLAS's batch limits.
    cuda_chunk_bytes: int = field(default_factory=lambda: _env_int("GPUINV_CUDA_CHUNK_BYTES", 256 << 20))

    def __setattr__(self, name: str, value: object) -> None:
        if name not in type(self).__dataclass_fields__:
            raise AttributeError(f"gpuinv.config has no option {name!r}")
        if name == "cpu_compiled":
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"gpuinv.config.{name} must be True or False, got {value!r}")
            object.__setattr__(self, name, bool(value))
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"gpuinv.config.{name} must be a positive integer, got {value!r}")
        object.__setattr__(self, name, value)


config = Config()
