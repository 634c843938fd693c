"""Step 2 of a call, in one place: which engine, and which route inside it.

Read this file to know what runs for a given (device, n, dtype). Each
threshold names the benchmark that set it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._config import config
from ._device import DeviceRequest, require_cuda
from .kernels import KERNEL_MAX_N

if TYPE_CHECKING:
    from ._normalize import Operand

__all__ = [
    "cpu_route",
    "cuda_route",
    "select_engine",
    "CPU_CLOSED_FORM_MAX_N",
    "CUDA_CUSOLVER_MIN_N",
]

# Closed forms beat LAPACK's per-matrix calls by 5-30x for n <= 4 and keep its
# accuracy (with the guard in engines/_closed_form.py); at n = 5 the 5x5
# adjugate would cost more than LAPACK (benchmarks/bench_cpu.py).
CPU_CLOSED_FORM_MAX_N = 4


def cpu_route(n: int) -> str:
    """The CPU engine's route for order n: "closed_form" or "lapack"."""
    return "closed_form" if n <= CPU_CLOSED_FORM_MAX_N else "lapack"


# Provisional until measured on hardware: cuBLAS's batched getrf runs one
# matrix per thread block and stops paying once a matrix no longer fits a
# block's shared memory and registers; from there cuSOLVER's blocked getrf +
# getrs against the identity, one matrix at a time, should win.
# benchmarks/gpu_check.py (the "route_threshold" section of its results)
# times both routes at n = 32..512, float32 and float64, and names the faster.
CUDA_CUSOLVER_MIN_N = 256


def cuda_route(n: int, dtype: Any) -> str:
    """The CUDA engine's route for order n and compute dtype.

    * ``"kernel"``: our own kernels (gpuinv/kernels) for
      ``n <= KERNEL_MAX_N[dtype]``; provisional until benchmarks/gpu_check.py
      measures the crossover with cuBLAS (see KERNEL_MAX_N for what the
      bound rests on now);
    * ``"cusolver"``: getrf + getrs per matrix for ``n >= CUDA_CUSOLVER_MIN_N``;
    * ``"cublas"``: batched getrf + getri in between.
    """
    if 1 <= n <= KERNEL_MAX_N.get(np.dtype(dtype), 0):
        return "kernel"
    return "cusolver" if n >= CUDA_CUSOLVER_MIN_N else "cublas"


def select_engine(op: Operand, request: DeviceRequest):
    """Pick the engine for an operand.

    * CuPy input runs on the GPU that holds it (``device="cpu"`` moves it to
      the host and back; a different CUDA ordinal is an error).
    * NumPy input runs on the GPU when asked to, or with ``device="auto"``
      when a GPU is usable and the stack has at least
      ``gpuinv.config.cuda_min_bytes`` bytes; otherwise on the CPU.
    """
    from .engines import cpu_engine, cuda_engine

    if request.kind == "cpu":
        return cpu_engine()
    if op.backend == "cupy":
        held = op.array.device.id
        if request.index is not None and request.index != held:
            raise ValueError(
                f"the CuPy array lives on CUDA device {held} but device=cuda:{request.index} "
                "was requested; move it with cupy.asarray under that device first"
            )
        return cuda_engine(held)
    if request.kind == "cuda":
        require_cuda(request.index)
        return cuda_engine(request.index)
    # auto, NumPy input: the size test comes first so that small stacks never
    # import CuPy at all.
    if op.nbytes >= config.cuda_min_bytes and _cuda_usable():
        return cuda_engine(None)
    return cpu_engine()


def _cuda_usable() -> bool:
    from ._device import cuda_unavailable_reason

    return cuda_unavailable_reason() is None
