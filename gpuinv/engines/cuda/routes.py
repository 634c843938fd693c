"""The CUDA engine's route choice, in one place: which code runs for (n, dtype, structure).

Read this file to know what the CUDA engine runs. Each bound names the
benchmark that set it (or that should: most GPU bounds are provisional
until benchmarks/gpu_check.py times them on hardware). The engine and its
route modules look the routes up here, by attribute, at call time.

=====================  =====================================  ================================
what                   route                                  where
=====================  =====================================  ================================
LU inverse             ``"kernel"`` n <= KERNEL_MAX_N[dtype]  :mod:`.kernel_route`
                       ``"cublas"`` below CUDA_CUSOLVER_MIN_N :mod:`.cublas`
                       ``"cusolver"`` from it                 :mod:`.cusolver`
LU solve               ``"kernel"`` n <= SOLVE_MAX_N[dtype]   :mod:`.kernel_route`
                       ``"cublas"`` above                     :mod:`.cublas`
positive definite      ``"kernel"`` n <= CHOL_MAX_N[dtype]    :mod:`.kernel_route`
                       ``"cusolver"`` above                   :mod:`.cusolver`
triangular, diagonal   ``"kernel"`` n <= TRI_MAX_N / DIAG..   :mod:`.kernel_route`
                       ``"cupy"`` above                       :mod:`.structured`
=====================  =====================================  ================================
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...kernels import CHOL_MAX_N, DIAG_MAX_N, KERNEL_MAX_N, SOLVE_MAX_N, TRI_MAX_N

__all__ = ["CUDA_CUSOLVER_MIN_N", "cuda_route", "solve_route", "chol_route", "structured_route"]

# Provisional until measured on hardware: cuBLAS's batched getrf runs one
# matrix per thread block and stops paying once a matrix no longer fits a
# block's shared memory and registers; from there cuSOLVER's blocked getrf +
# getrs against the identity, one matrix at a time, should win.
# benchmarks/gpu_check.py (the "route_threshold" section of its results)
# times both routes at n = 32..512, float32 and float64, and names the faster.
CUDA_CUSOLVER_MIN_N = 256


def cuda_route(n: int, dtype: Any) -> str:
    """The route of the LU inverse for order n and compute dtype.

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


def solve_route(n: int, dtype: Any) -> str:
    """The LU solve's route: ``"kernel"`` for ``1 <= n <= SOLVE_MAX_N[dtype]``, else ``"cublas"``.

    Provisional as the inverse kernels' bound: no GPU has yet timed the
    kernel against getrfBatched + getrsBatched (benchmarks/gpu_check.py should).
    """
    return "kernel" if 1 <= n <= SOLVE_MAX_N.get(np.dtype(dtype), 0) else "cublas"


def chol_route(n: int, dtype: Any) -> str:
    """The positive definite inverse's route: ``"kernel"`` for ``1 <= n <= CHOL_MAX_N[dtype]``,
    else ``"cusolver"``.

    Provisional as the LU kernels' bound: no GPU has yet timed the kernel
    against potrfBatched + potrsBatched (benchmarks/gpu_check.py should).
    """
    return "kernel" if 1 <= n <= CHOL_MAX_N.get(np.dtype(dtype), 0) else "cusolver"


_STRUCTURED_BOUNDS = {"lower triangular": TRI_MAX_N, "upper triangular": TRI_MAX_N,
                      "diagonal": DIAG_MAX_N}


def structured_route(n: int, dtype: Any, structure: str) -> str:
    """``"kernel"`` where our kernel takes ``structure`` at (n, dtype), else ``"cupy"``.

    ``structure`` is one of ``"lower triangular"``, ``"upper triangular"``
    and ``"diagonal"`` (anything else: ``"cupy"``). Provisional as the other
    kernels' bounds: no GPU has yet timed the kernels against the CuPy and
    cuBLAS routes (benchmarks/gpu_check.py should).
    """
    bounds = _STRUCTURED_BOUNDS.get(structure)
    if bounds is None:
        return "cupy"
    return "kernel" if 1 <= n <= bounds.get(np.dtype(dtype), 0) else "cupy"
