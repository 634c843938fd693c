"""The cuBLAS routes: batched LU inverse and solve, with device arrays of matrix pointers.

* inverse (:func:`getrf_getri`): ``<t>getrfBatched`` in place on a scratch
  copy, then out-of-place ``<t>getriBatched``;
* solve (:func:`lu_solve`): ``<t>getrfBatched`` + ``<t>getrsBatched`` (CuPy
  14: ``getrsBatched(handle, trans, n, nrhs, Aarray, lda, devIpiv, Barray,
  ldb, info, batchSize)``, where ``info`` is a *host* pointer that reports
  argument errors only, written when the call is made: reading it is no
  device sync).

At most :data:`.planning.CUBLAS_MAX_BATCH` matrices per call. Each call
factors A itself, not A^T (the gather stores A column-major), so that info
is LAPACK's. The handle is the one CuPy caches per device; the current
stream is set on it before each use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..._errors import INFO_NONFINITE
from . import arrays, planning

__all__ = ["getrf_getri", "lu_solve"]


def getrf_getri(x: Any, c: Any, pivots: Any, library_info: Any) -> None:
    import cupy
    from cupy.cuda import cublas

    m, n = x.shape[0], x.shape[1]
    letter = arrays.TYPE_LETTER[x.dtype.char]
    getrf = getattr(cublas, letter + "getrfBatched")
    getri = getattr(cublas, letter + "getriBatched")
    handle = cupy.cuda.device.get_cublas_handle()
    # CuPy's wrappers set the current stream on its shared handle themselves
    # (cupy_backends/cuda/libs/cublas.pyx, _setStream); setting it here too
    # keeps that true whatever the CuPy version.
    cublas.setStream(handle, cupy.cuda.get_current_stream().ptr)
    a_ptrs = arrays.pointer_array(x)
    c_ptrs = arrays.pointer_array(c)
    for lo, hi in planning.batch_calls(m, planning.CUBLAS_MAX_BATCH):
        k = hi - lo
        getrf(handle, n, a_ptrs.data.ptr + 8 * lo, n, pivots.data.ptr + 4 * n * lo,
              library_info.data.ptr + 4 * lo, k)
        getri(handle, n, a_ptrs.data.ptr + 8 * lo, n, pivots.data.ptr + 4 * n * lo,
              c_ptrs.data.ptr + 8 * lo, n, library_info.data.ptr + 4 * lo, k)


def lu_solve(a: Any, b: Any) -> tuple[Any, Any]:
    """cuBLAS getrfBatched + getrsBatched for ``a`` (batch..., n, n), ``b`` (m, n, k): ``(x, info)``.

    ``a`` may have any strides and dtype (it is gathered); ``x`` is (m, n, k).
    """
    import cupy
    from cupy.cuda import cublas

    m, n, k = b.shape
    # x[i] = A_i^T in C order: A_i column-major, so cuBLAS factors A_i itself
    # (the same info as LAPACK and the CPU engine). Always a copy: getrf writes it.
    x = cupy.empty((m, n, n), dtype=b.dtype)
    cupy.copyto(x.reshape(a.shape), a.swapaxes(-1, -2), casting="unsafe")
    bad = arrays.nonfinite(x)
    cupy.copyto(x, cupy.eye(n, dtype=x.dtype), where=bad[:, None, None])
    rhs = b.swapaxes(1, 2).copy(order="C")  # (m, k, n): B_i column-major; getrs writes it
    pivots = cupy.empty((m, n), dtype=np.int32)
    info = cupy.empty(m, dtype=np.int32)
    host_info = np.zeros(1, dtype=np.int32)  # getrsBatched's info is a host pointer
    letter = arrays.TYPE_LETTER[x.dtype.char]
    getrf = getattr(cublas, letter + "getrfBatched")
    getrs = getattr(cublas, letter + "getrsBatched")
    handle = cupy.cuda.device.get_cublas_handle()
    cublas.setStream(handle, cupy.cuda.get_current_stream().ptr)
    a_ptrs = arrays.pointer_array(x)
    b_ptrs = arrays.pointer_array(rhs)
    for lo, hi in planning.batch_calls(m, planning.CUBLAS_MAX_BATCH):
        getrf(handle, n, a_ptrs.data.ptr + 8 * lo, n, pivots.data.ptr + 4 * n * lo,
              info.data.ptr + 4 * lo, hi - lo)
        getrs(handle, cublas.CUBLAS_OP_N, n, k, a_ptrs.data.ptr + 8 * lo, n,
              pivots.data.ptr + 4 * n * lo, b_ptrs.data.ptr + 8 * lo, n,
              host_info.ctypes.data, hi - lo)
    if host_info[0] != 0:  # an argument error, known at call time (no device wait)
        raise RuntimeError(f"cuBLAS getrsBatched rejected argument {-int(host_info[0])}")
    info = cupy.where(bad, np.int32(INFO_NONFINITE), info).astype(np.int32)
    return rhs.swapaxes(1, 2), info
