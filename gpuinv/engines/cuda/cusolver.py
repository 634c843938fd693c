"""The cuSOLVER routes: the LU inverse for large n, and the Cholesky inverse and solve.

* LU inverse (:func:`getrf_getrs`, large n): ``<t>getrf`` then ``<t>getrs``
  against the identity, one matrix at a time, all enqueued without a host wait.
* positive definite (:func:`cholesky_inverse`, and the solve's factors,
  :func:`cholesky_prepare` + :func:`potrs_columns`): ``<t>potrfBatched``
  (CuPy 14 wraps it: ``potrfBatched(handle, uplo, n, Aarray, lda, infoArray,
  batchSize)``), whose info is potrf's; then ``<t>potrsBatched`` against the
  identity or the right-hand sides. CuPy 14's ``potrsBatched`` takes
  ``nrhs`` but cuSOLVER accepts only ``nrhs = 1``, so each column is solved
  on its own: one call per column, each over the whole chunk. Cholesky
  halves the factorization's work against LU and the result is mirrored to
  be exactly Hermitian.

The handle is the one CuPy caches per device; the current stream is set on
it before each use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..._errors import INFO_NONFINITE
from . import arrays, planning

__all__ = ["cholesky_inverse", "cholesky_prepare", "getrf_getrs", "potrs_columns"]

# cuSOLVER / cuBLAS fill modes
_LOWER = 0  # CUBLAS_FILL_MODE_LOWER


def getrf_getrs(x: Any, c: Any, pivots: Any, library_info: Any) -> None:
    """Per matrix: getrf in place on x[i], then getrs on c[i] (the identity)."""
    import cupy
    from cupy.cuda import cublas, cusolver

    m, n = x.shape[0], x.shape[1]
    letter = arrays.TYPE_LETTER[x.dtype.char]
    getrf = getattr(cusolver, letter + "getrf")
    getrs = getattr(cusolver, letter + "getrs")
    buffer_size = getattr(cusolver, letter + "getrf_bufferSize")
    handle = cupy.cuda.device.get_cusolver_handle()
    cusolver.setStream(handle, cupy.cuda.get_current_stream().ptr)
    step = n * n * x.itemsize
    # At least one element: bufferSize may answer 0 (n = 1), and an empty
    # CuPy array's pointer is NULL, which getrf may reject.
    work = cupy.empty(max(1, buffer_size(handle, n, n, x.data.ptr, n)), dtype=x.dtype)
    solve_info = cupy.empty(1, dtype=np.int32)  # getrs reports argument errors only
    for i in range(m):
        a_ptr = x.data.ptr + i * step
        piv = pivots.data.ptr + 4 * n * i
        getrf(handle, n, n, a_ptr, n, work.data.ptr, piv, library_info.data.ptr + 4 * i)
        getrs(handle, cublas.CUBLAS_OP_N, n, n, a_ptr, n, piv, c.data.ptr + i * step, n,
              solve_info.data.ptr)


def cholesky_prepare(full: Any) -> tuple[Any, Any, Any]:
    """Column-major copy for cuSOLVER (NaN/Inf matrices replaced by I), the
    matrix pointers and potrfBatched's info (-1 for NaN/Inf), all on the device."""
    import cupy
    from cupy.cuda import cusolver

    n = full.shape[-1]
    m = int(np.prod(full.shape[:-2], dtype=np.int64))
    # A Hermitian matrix read column-major is A^T = conj(A): the same
    # leading minors (the same info), so cuSOLVER factors conj(A).
    x = full.reshape(m, n, n).copy(order="C")  # potrf writes it
    bad = arrays.nonfinite(x)
    cupy.copyto(x, cupy.eye(n, dtype=x.dtype), where=bad[:, None, None])
    info = cupy.empty(m, dtype=np.int32)
    letter = arrays.TYPE_LETTER[x.dtype.char]
    potrf = getattr(cusolver, letter + "potrfBatched")
    handle = cupy.cuda.device.get_cusolver_handle()
    cusolver.setStream(handle, cupy.cuda.get_current_stream().ptr)
    ptrs = arrays.pointer_array(x)
    for lo, hi in planning.batch_calls(m, planning.CUBLAS_MAX_BATCH):
        potrf(handle, _LOWER, n, ptrs.data.ptr + 8 * lo, n, info.data.ptr + 4 * lo, hi - lo)
    info = cupy.where(bad, np.int32(INFO_NONFINITE), info).astype(np.int32)
    return x, ptrs, info


def potrs_columns(x: Any, ptrs: Any, rhs: Any) -> None:
    """Solve with the factors in ``x`` for every column of ``rhs`` (m, k, n):
    rhs[i, j] is column j of matrix i's right-hand side (column-major)."""
    import cupy
    from cupy.cuda import cusolver

    m, k, n = rhs.shape
    letter = arrays.TYPE_LETTER[x.dtype.char]
    potrs = getattr(cusolver, letter + "potrsBatched")
    handle = cupy.cuda.device.get_cusolver_handle()
    cusolver.setStream(handle, cupy.cuda.get_current_stream().ptr)
    b_ptrs = arrays.pointer_array(rhs)  # address of rhs[i, 0]
    dev_info = cupy.empty(1, dtype=np.int32)  # argument errors only
    column = n * rhs.itemsize
    for j in range(k):  # cuSOLVER's potrsBatched accepts nrhs = 1 only
        col_ptrs = b_ptrs + np.uint64(j * column)
        for lo, hi in planning.batch_calls(m, planning.CUBLAS_MAX_BATCH):
            potrs(handle, _LOWER, n, 1, ptrs.data.ptr + 8 * lo, n, col_ptrs.data.ptr + 8 * lo, n,
                  dev_info.data.ptr, hi - lo)


def cholesky_inverse(full: Any, out: Any, info: Any) -> None:
    import cupy

    n = full.shape[-1]
    x, ptrs, code = cholesky_prepare(full)
    c = cupy.empty_like(x)
    cupy.copyto(c, cupy.eye(n, dtype=x.dtype))
    potrs_columns(x, ptrs, c)
    # c[i] column-major is inv(conj(A_i)); read in C order it is
    # inv(conj(A_i))^T = inv(A_i^H) = inv(A_i).
    cupy.copyto(out, arrays.mirror_lower(c, conjugate=x.dtype.kind == "c"))
    cupy.copyto(info, code)
    arrays.nan_where_failed(out, info)
