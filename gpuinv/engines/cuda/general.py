"""The general (LU) inverse of one chunk: the gather, then the route that :mod:`.routes` picks.

The cuBLAS and cuSOLVER routes factor each matrix A itself, not its
transpose: the gather that every chunk needs anyway (the input is never
written, and may have any strides and dtype) stores each matrix
column-major, and the column-major inverse is transposed back on the way
out. Reading the C-ordered stack as column-major would save that transpose
(inv(A^T) = inv(A)^T), but would factor A^T, whose zero-pivot step differs
from A's; factoring A keeps ``info`` equal to LAPACK's, the CPU engine's and
``torch.linalg.inv_ex``'s codes. NaN/Inf matrices are found on the device,
replaced by the identity in the scratch (so they cannot disturb anything),
and reported as info -1. ``info`` k > 0 is read from the factors (the first
zero on U's diagonal), not from the libraries' info codes, whose choice
between the first and the last zero pivot is undocumented. Every failed
matrix (info != 0) gets a NaN inverse on every route, as on the CPU: getri
may skip a singular matrix and leave pool memory in its place, and our
kernels leave it unspecified. All of this is masks on the device, without a
host sync.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..._errors import INFO_NONFINITE
from . import arrays, cublas, cusolver, kernel_route

__all__ = ["invert_chunk"]


def invert_chunk(view: Any, out: Any, info: Any, route: str, owned: bool = False,
                  rcond: Any = None) -> bool:
    """Invert ``view`` (any batch shape + (n, n), any strides and dtype, read
    only unless ``owned``) into ``out`` (m, n, n) and ``info`` (m,), both
    C-contiguous, on the current device and stream. Never waits for the host.

    With ``rcond`` (m,) given and the ``"kernel"`` route, the kernel's rcond
    variant (where it has one: :func:`gpuinv.kernels.has_rcond_variant`)
    also writes each matrix's rcond there, while it holds A and X. Returns
    whether ``rcond`` was written; otherwise it is left to the caller.
    """
    import cupy

    m, n = out.shape[0], out.shape[1]
    dtype = out.dtype
    if not arrays.is_aligned(view):
        view = arrays.realigned(view)
        owned = True
    if route == "kernel":
        return kernel_route.invert(view, out, info, owned, rcond)

    # x[i] = A_i^T in C order, i.e. A_i in column-major order: cuBLAS and
    # cuSOLVER factor A_i itself (see the module docstring).
    x = cupy.empty((m, n, n), dtype=dtype)
    cupy.copyto(x.reshape(view.shape), view.swapaxes(-1, -2), casting="unsafe")
    bad = ~cupy.isfinite(x).all(axis=(1, 2))
    eye = cupy.eye(n, dtype=dtype)
    cupy.copyto(x, eye, where=bad[:, None, None])  # NaN/Inf matrices -> identity
    c = cupy.empty_like(x)
    pivots = cupy.empty((m, n), dtype=np.int32)
    # The libraries' own info codes are written but not used (see below).
    library_info = cupy.empty(m, dtype=np.int32)
    if route == "cublas":
        cublas.getrf_getri(x, c, pivots, library_info)
    elif route == "cusolver":
        cupy.copyto(c, eye)
        cusolver.getrf_getrs(x, c, pivots, library_info)
    else:
        raise ValueError(f"unknown CUDA route {route!r}")
    # info from the factors themselves: the first step k with U[k, k] == 0,
    # which is LAPACK's code. Neither cuBLAS nor cuSOLVER documents whether
    # its info names the first or the last zero pivot; U's diagonal does not
    # depend on that (and is the same in either storage order).
    steps = cupy.arange(1, n + 1, dtype=np.int32)
    first = cupy.where(x.diagonal(axis1=1, axis2=2) == 0, steps, np.int32(n + 1)).min(axis=1)
    code = cupy.where(first <= n, first, np.int32(0))
    cupy.copyto(info, cupy.where(bad, np.int32(INFO_NONFINITE), code), casting="same_kind")
    cupy.copyto(out, c.swapaxes(1, 2))  # column-major inverse -> C order
    # NaN for every failed matrix: getri may skip a matrix whose factorization
    # failed, leaving another call's data from the pool in c.
    cupy.copyto(out, dtype.type(np.nan), where=(info != 0)[:, None, None])
    return False
