"""The CUDA engine's positive definite inverse on gpuinv's own Cholesky kernel.

For ``assume_a="positive definite"`` with ``n <= CHOL_MAX_N[dtype]`` the CUDA
engine inverts with ``inv_chol_thread`` (gpuinv/kernels, docs/kernels.md):
one launch over the whole stack, in place of cuSOLVER's ``potrfBatched``
plus n ``potrsBatched`` calls (CuPy 14's potrsBatched takes one right-hand
side at a time). The kernel reads the lower triangle of the matrices as
:func:`gpuinv._numerics.structured_matrix` built them (so ``lower=False``
input has already been mirrored), writes an exactly Hermitian inverse,
potrf's info codes (-1 for NaN or Inf) and NaN where info != 0, without a
host synchronization. Larger n keep the cuSOLVER route.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels import CHOL_MAX_N

__all__ = ["chol_route", "kernel_cholesky_inverse", "kernel_cholesky_inverse_into"]


def chol_route(n: int, dtype: Any) -> str:
    """``"kernel"`` for ``1 <= n <= CHOL_MAX_N[dtype]``, else ``"cusolver"``.

    Provisional as the LU kernels' bound: no GPU has yet timed the kernel
    against potrfBatched + potrsBatched (benchmarks/gpu_check.py should).
    """
    return "kernel" if 1 <= n <= CHOL_MAX_N.get(np.dtype(dtype), 0) else "cusolver"


def kernel_cholesky_inverse(full: Any) -> tuple[Any, Any]:
    """``(inverse, info)`` of the CuPy stack ``full`` (batch..., n, n) with the Cholesky kernel.

    Runs on the current device and stream; ``full`` is not written.
    """
    import cupy

    n = full.shape[-1]
    batch = full.shape[:-2]
    m = int(np.prod(batch, dtype=np.int64))
    out = cupy.empty((m, n, n), dtype=full.dtype)
    info = cupy.empty(m, dtype=np.int32)
    kernel_cholesky_inverse_into(full.reshape(m, n, n), out, info)
    return out.reshape(batch + (n, n)), info.reshape(batch)


def kernel_cholesky_inverse_into(full: Any, out: Any, info: Any, rcond: Any = None) -> None:
    """Write the inverses of the CuPy stack ``full`` (m, n, n) to ``out`` (m, n, n) and
    potrf's info codes to ``info`` (m,): one chunk of the CUDA engine's route.

    With ``rcond`` (m,), the kernel's rcond variant also writes each matrix's
    reciprocal condition number there (:func:`gpuinv.kernels.invert_small_chol`).
    Runs on the current device and stream; ``full`` is not written. The
    outputs may be views: the kernel writes through temporaries where they
    are not C-contiguous.
    """
    import cupy

    from .. import kernels  # by attribute, so that the tests' stand-in is found
    from .cuda import _launch_into

    m = full.shape[0]
    if not m:
        return
    a = cupy.ascontiguousarray(full)
    _launch_into(lambda dst, codes, rc: kernels.invert_small_chol(a, dst, codes, rcond=rc), out, info, rcond)
