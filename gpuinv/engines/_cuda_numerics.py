"""Structure, rcond and solve on the CUDA engine (issue 10), with CuPy array operations.

Nothing here waits for the device: every step is a CuPy array operation or a
cuBLAS/cuSOLVER call enqueued on the current stream, and ``info`` and
``rcond`` stay on the device. The routes, and why:

* rcond: the two 1-norms of :func:`gpuinv._numerics.rcond_from_inverse` as
  CuPy reductions over the input (cast to the compute dtype) and the
  inverse. Our kernels could produce it for free while they hold A and X;
  that is left to the kernels' owner (a kernel change needs the CPU
  emulation harness first).
* general inverse: the existing engine routes (:meth:`CudaEngine.invert`).
* symmetric / Hermitian: the general route on the matrix mirrored from the
  triangle read, the inverse mirrored back so it is exactly symmetric.
* diagonal: elementwise ``1 / d``; info from the diagonal.
* triangular: the general LU route on the triangle read (for an upper
  triangular matrix getrf exchanges no rows; a lower one is inverted as the
  transpose of its upper transpose), masked back to the triangle. info is
  the first zero on the diagonal, computed on the device from the diagonal
  itself, as LAPACK ``trtri`` reports it.
* positive definite: for ``n <= CHOL_MAX_N[dtype]`` gpuinv's own Cholesky
  kernel (:mod:`gpuinv.engines._cuda_chol`), one launch; above it cuSOLVER ``<t>potrfBatched`` (CuPy 14 wraps it:
  ``potrfBatched(handle, uplo, n, Aarray, lda, infoArray, batchSize)``), its
  info is potrf's; then ``<t>potrsBatched`` against the identity. CuPy 14's
  ``potrsBatched`` takes ``nrhs`` but cuSOLVER accepts only ``nrhs = 1``,
  so the identity is solved one column at a time: n calls, each over the
  whole batch. Cholesky halves the factorization's work against LU and the
  result is mirrored to be exactly Hermitian.
* solve, general: cuBLAS ``<t>getrfBatched`` + ``<t>getrsBatched`` (CuPy 14:
  ``getrsBatched(handle, trans, n, nrhs, Aarray, lda, devIpiv, Barray, ldb,
  info, batchSize)``, where ``info`` is a *host* pointer that reports
  argument errors only). All n use this route for now: per-matrix cuSOLVER
  ``getrs`` with nrhs = k for large n is not wired up yet.
* solve, positive definite: potrfBatched + potrsBatched, one call per
  right-hand side column.

NumPy input on the CUDA engine: the general inverse goes through the engine's
host<->device pipeline (rcond is then computed on the host from the result);
everything else uploads the whole stack, computes, and downloads. These
routes work on one chunk (the whole stack): they do not have the general
route's out-of-memory retry.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import INFO_NONFINITE
from .._normalize import Operand
from .._numerics import rcond_from_inverse, structured_matrix
from . import _cuda_chol
from .cuda import _TYPE_LETTER, CUBLAS_MAX_BATCH, _pointer_array, batch_calls

__all__ = ["cuda_invert_ex", "cuda_solve_ex", "first_zero_step"]

# cuSOLVER / cuBLAS fill modes
_LOWER = 0  # CUBLAS_FILL_MODE_LOWER


def _real(dtype: np.dtype) -> np.dtype:
    return np.dtype(dtype).type(0).real.dtype


def first_zero_step(x: Any) -> Any:
    """1-based index of the first zero on the diagonal of each matrix of ``x``; 0 if none."""
    d = x.diagonal(axis1=-2, axis2=-1)
    zero = (d == 0).astype(np.int8)  # argmax over int8: bool reductions vary across versions
    return (zero.max(axis=-1) * (zero.argmax(axis=-1) + 1)).astype(np.int32)


def _mirror_lower(x: Any, conjugate: bool) -> Any:
    """x with its strict upper triangle replaced by the (conjugate) transpose of the lower one."""
    import cupy

    n = x.shape[-1]
    rows = cupy.arange(n)[:, None]
    cols = cupy.arange(n)[None, :]
    other = x.swapaxes(-1, -2)
    if conjugate:
        other = other.conj()
    full = cupy.where(rows < cols, other, x)
    if conjugate:
        full = cupy.where(rows == cols, full.real.astype(x.dtype), full)
    return full


def _nonfinite(x: Any) -> Any:
    import cupy

    return ~cupy.isfinite(x).all(axis=(-2, -1))


def _upload(op: Operand) -> Operand:
    import cupy

    return Operand(cupy.asarray(op.array), "cupy", op.batch_shape, op.n, op.dtype)


def _host_rcond(op: Operand, inverse: np.ndarray, info: np.ndarray) -> np.ndarray:
    """rcond on the host for a NumPy stack the GPU inverted, chunk by chunk
    (the norms' temporaries stay at a chunk, whatever the stack's size)."""
    from .._chunks import plan_chunks
    from .._config import config

    rc = np.empty(op.batch_shape, dtype=_real(op.dtype))
    if op.empty:
        rc[...] = 1
        return rc
    n = op.n
    per_chunk = max(1, config.cpu_chunk_bytes // (n * n * op.dtype.itemsize))
    flat_rc = rc.reshape(-1)
    flat_x = inverse.reshape(-1, n, n)
    flat_info = info.reshape(-1)
    for chunk in plan_chunks(op.batch_shape, per_chunk):
        block = np.asarray(op.array[chunk.index], dtype=op.dtype).reshape(-1, n, n)
        part = slice(chunk.start, chunk.stop)
        flat_rc[part] = rcond_from_inverse(block, flat_x[part], flat_info[part])
    return rc


def cuda_invert_ex(engine: Any, op: Operand, *, structure: str, lower: bool,
                   rcond: bool) -> tuple[Any, Any, Any]:
    """``(inverse, info, rcond or None)`` on the CUDA engine; see the module docstring."""
    if op.backend == "numpy":
        if structure == "general":
            inverse, info = engine.invert(op)
            rc = _host_rcond(op, inverse, info) if rcond else None
            return inverse, info, rc
        import cupy

        device = cupy.cuda.Device(engine.index) if engine.index is not None else cupy.cuda.Device()
        with device:
            inverse, info, rc = cuda_invert_ex(engine, _upload(op), structure=structure,
                                               lower=lower, rcond=rcond)
            return inverse.get(), info.get(), None if rc is None else rc.get()

    import cupy

    with op.array.device:
        a = op.array.astype(op.dtype, copy=False)
        full = structured_matrix(a, structure, lower)
        n = op.n
        if op.empty:
            inverse = cupy.empty(op.batch_shape + (n, n), dtype=op.dtype)
            info = cupy.zeros(op.batch_shape, dtype=np.int32)
            rc = cupy.ones(op.batch_shape, dtype=_real(op.dtype)) if rcond else None
            return inverse, info, rc
        if structure == "general":
            inverse, info = engine.invert(op)
        elif structure in ("symmetric", "hermitian"):
            inverse, info = engine.invert(Operand(full, "cupy", op.batch_shape, n, op.dtype))
            inverse = _mirror_lower(inverse, conjugate=structure == "hermitian")
        elif structure == "diagonal":
            inverse, info = _diagonal_inverse(full)
        elif structure in ("upper triangular", "lower triangular"):
            inverse, info = _triangular_inverse(engine, full, structure == "lower triangular")
        elif structure == "positive definite":
            if _cuda_chol.chol_route(n, op.dtype) == "kernel":  # our kernel for the small n
                inverse, info = _cuda_chol.kernel_cholesky_inverse(full)
            else:
                inverse, info = _cholesky_inverse(full)
        else:
            raise ValueError(f"unknown structure {structure!r}")
        rc = rcond_from_inverse(full, inverse, info) if rcond else None
        return inverse, info, rc


def _diagonal_inverse(full: Any) -> tuple[Any, Any]:
    import cupy

    n = full.shape[-1]
    d = full.diagonal(axis1=-2, axis2=-1)
    info = first_zero_step(full)
    info = cupy.where(_nonfinite(d[..., None]), np.int32(INFO_NONFINITE), info).astype(np.int32)
    eye = cupy.eye(n, dtype=bool)
    with np.errstate(all="ignore"):
        inverse = cupy.where(eye, (1 / d)[..., None, :], cupy.zeros((), dtype=full.dtype))
    inverse = cupy.where((info != 0)[..., None, None], cupy.asarray(np.nan, dtype=full.dtype),
                         inverse).astype(full.dtype)
    return inverse, info


def _triangular_inverse(engine: Any, full: Any, lower: bool) -> tuple[Any, Any]:
    import cupy

    n = full.shape[-1]
    upper = full.swapaxes(-1, -2) if lower else full
    batch = full.shape[:-2]
    x, lu_info = engine.invert(Operand(cupy.ascontiguousarray(upper), "cupy", batch, n,
                                       full.dtype))
    if lower:
        x = x.swapaxes(-1, -2)
    rows = cupy.arange(n)[:, None]
    cols = cupy.arange(n)[None, :]
    mask = rows >= cols if lower else rows <= cols
    x = cupy.where(mask, x, cupy.zeros((), dtype=full.dtype))
    info = cupy.where(lu_info == INFO_NONFINITE, np.int32(INFO_NONFINITE),
                      first_zero_step(full)).astype(np.int32)
    x = cupy.where((info != 0)[..., None, None], cupy.asarray(np.nan, dtype=full.dtype), x)
    return cupy.ascontiguousarray(x), info


def _cholesky_prepare(full: Any) -> tuple[Any, Any, Any]:
    """Column-major copy for cuSOLVER (NaN/Inf matrices replaced by I), the
    non-finite mask and potrfBatched's info, all on the device."""
    import cupy
    from cupy.cuda import cusolver

    n = full.shape[-1]
    m = int(np.prod(full.shape[:-2], dtype=np.int64))
    # A Hermitian matrix read column-major is A^T = conj(A): the same
    # leading minors (the same info), so cuSOLVER factors conj(A).
    x = full.reshape(m, n, n).copy(order="C")  # potrf writes it
    bad = _nonfinite(x)
    cupy.copyto(x, cupy.eye(n, dtype=x.dtype), where=bad[:, None, None])
    info = cupy.empty(m, dtype=np.int32)
    letter = _TYPE_LETTER[x.dtype.char]
    potrf = getattr(cusolver, letter + "potrfBatched")
    handle = cupy.cuda.device.get_cusolver_handle()
    cusolver.setStream(handle, cupy.cuda.get_current_stream().ptr)
    ptrs = _pointer_array(x)
    for lo, hi in batch_calls(m, CUBLAS_MAX_BATCH):
        potrf(handle, _LOWER, n, ptrs.data.ptr + 8 * lo, n, info.data.ptr + 4 * lo, hi - lo)
    info = cupy.where(bad, np.int32(INFO_NONFINITE), info).astype(np.int32)
    return x, ptrs, info


def _potrs_columns(x: Any, ptrs: Any, rhs: Any) -> None:
    """Solve with the factors in ``x`` for every column of ``rhs`` (m, k, n):
    rhs[i, j] is column j of matrix i's right-hand side (column-major)."""
    import cupy
    from cupy.cuda import cusolver

    m, k, n = rhs.shape
    letter = _TYPE_LETTER[x.dtype.char]
    potrs = getattr(cusolver, letter + "potrsBatched")
    handle = cupy.cuda.device.get_cusolver_handle()
    cusolver.setStream(handle, cupy.cuda.get_current_stream().ptr)
    b_ptrs = _pointer_array(rhs)  # address of rhs[i, 0]
    dev_info = cupy.empty(1, dtype=np.int32)  # argument errors only
    column = n * rhs.itemsize
    for j in range(k):  # cuSOLVER's potrsBatched accepts nrhs = 1 only
        col_ptrs = b_ptrs + np.uint64(j * column)
        for lo, hi in batch_calls(m, CUBLAS_MAX_BATCH):
            potrs(handle, _LOWER, n, 1, ptrs.data.ptr + 8 * lo, n, col_ptrs.data.ptr + 8 * lo, n,
                  dev_info.data.ptr, hi - lo)


def _cholesky_inverse(full: Any) -> tuple[Any, Any]:
    import cupy

    n = full.shape[-1]
    batch = full.shape[:-2]
    x, ptrs, info = _cholesky_prepare(full)
    m = x.shape[0]
    c = cupy.empty((m, n, n), dtype=x.dtype)
    cupy.copyto(c, cupy.eye(n, dtype=x.dtype))
    _potrs_columns(x, ptrs, c)
    # c[i] column-major is inv(conj(A_i)); read in C order it is
    # inv(conj(A_i))^T = inv(A_i^H) = inv(A_i).
    inverse = _mirror_lower(c, conjugate=x.dtype.kind == "c")
    inverse = cupy.where((info != 0)[:, None, None], cupy.asarray(np.nan, dtype=x.dtype), inverse)
    return cupy.ascontiguousarray(inverse).reshape(batch + (n, n)), info.reshape(batch)


def cuda_solve_ex(engine: Any, op: Operand, b: Any, *, structure: str, lower: bool,
                  rcond: bool) -> tuple[Any, Any, Any]:
    """``(x, info, rcond or None)`` with ``a @ x = b`` on the CUDA engine.

    ``op.array`` and ``b`` are broadcast to the batch ``op.batch_shape``;
    ``b`` is (batch..., n, k).
    """
    if op.backend == "numpy":
        import cupy

        device = cupy.cuda.Device(engine.index) if engine.index is not None else cupy.cuda.Device()
        with device:
            x, info, rc = cuda_solve_ex(engine, _upload(op), cupy.asarray(b), structure=structure,
                                        lower=lower, rcond=rcond)
            return x.get(), info.get(), None if rc is None else rc.get()

    import cupy

    with op.array.device:
        n, k = op.n, b.shape[-1]
        batch = op.batch_shape
        m = op.count
        a = op.array.astype(op.dtype, copy=False)
        full = structured_matrix(a, structure, lower)
        if op.empty or k == 0:
            x = cupy.empty(batch + (n, k), dtype=op.dtype)
            info = cupy.zeros(batch, dtype=np.int32)
            rc = None
            if rcond:
                rc = (cupy.ones(batch, dtype=_real(op.dtype)) if op.empty else
                      cuda_invert_ex(engine, op, structure=structure, lower=lower, rcond=True)[2])
            return x, info, rc
        rhs = cupy.ascontiguousarray(cupy.broadcast_to(b, batch + (n, k)).astype(op.dtype))
        if structure == "diagonal":
            d = full.diagonal(axis1=-2, axis2=-1)
            info = first_zero_step(full)
            info = cupy.where(_nonfinite(d[..., None]), np.int32(INFO_NONFINITE), info)
            with np.errstate(all="ignore"):
                x = rhs / d[..., :, None]
        elif structure == "positive definite":
            f, ptrs, info = _cholesky_prepare(full)
            cols = cupy.ascontiguousarray(rhs.reshape(m, n, k).swapaxes(1, 2))  # column-major
            cols = cols.conj() if f.dtype.kind == "c" else cols
            _potrs_columns(f, ptrs, cols)
            # The factors are of conj(A): conj(A) y = conj(b) gives y = conj(x).
            x = (cols.conj() if f.dtype.kind == "c" else cols).swapaxes(1, 2).reshape(batch + (n, k))
            info = info.reshape(batch)
        else:
            x, info = _lu_solve(full.reshape(m, n, n), rhs.reshape(m, n, k))
            x = x.reshape(batch + (n, k))
            info = info.reshape(batch)
            if structure in ("upper triangular", "lower triangular"):
                info = cupy.where(info == INFO_NONFINITE, info, first_zero_step(full))
        info = info.astype(np.int32)
        x = cupy.where((info != 0)[..., None, None], cupy.asarray(np.nan, dtype=op.dtype), x)
        x = cupy.ascontiguousarray(x.astype(op.dtype))
        rc = None
        if rcond:
            inv_op = Operand(a, "cupy", batch, n, op.dtype)
            inverse, _, _ = cuda_invert_ex(engine, inv_op, structure=structure, lower=lower,
                                           rcond=False)
            rc = rcond_from_inverse(full, inverse, info)
        return x, info, rc


def _lu_solve(a: Any, b: Any) -> tuple[Any, Any]:
    """cuBLAS getrfBatched + getrsBatched for a (m, n, n), b (m, n, k): ``(x, info)``."""
    import cupy
    from cupy.cuda import cublas

    m, n, _ = a.shape
    k = b.shape[-1]
    # x[i] = A_i^T in C order: A_i column-major, so cuBLAS factors A_i itself
    # (the same info as LAPACK and the CPU engine).
    # Always copies (getrf writes it; a C-contiguous view could be the caller's memory).
    x = a.swapaxes(1, 2).copy(order="C")
    bad = _nonfinite(x)
    cupy.copyto(x, cupy.eye(n, dtype=x.dtype), where=bad[:, None, None])
    rhs = b.swapaxes(1, 2).copy(order="C")  # (m, k, n): B_i column-major; getrs writes it
    pivots = cupy.empty((m, n), dtype=np.int32)
    info = cupy.empty(m, dtype=np.int32)
    host_info = np.zeros(1, dtype=np.int32)  # getrsBatched's info is a host pointer
    letter = _TYPE_LETTER[x.dtype.char]
    getrf = getattr(cublas, letter + "getrfBatched")
    getrs = getattr(cublas, letter + "getrsBatched")
    handle = cupy.cuda.device.get_cublas_handle()
    cublas.setStream(handle, cupy.cuda.get_current_stream().ptr)
    a_ptrs = _pointer_array(x)
    b_ptrs = _pointer_array(rhs)
    for lo, hi in batch_calls(m, CUBLAS_MAX_BATCH):
        getrf(handle, n, a_ptrs.data.ptr + 8 * lo, n, pivots.data.ptr + 4 * n * lo,
              info.data.ptr + 4 * lo, hi - lo)
        getrs(handle, cublas.CUBLAS_OP_N, n, k, a_ptrs.data.ptr + 8 * lo, n,
              pivots.data.ptr + 4 * n * lo, b_ptrs.data.ptr + 8 * lo, n,
              host_info.ctypes.data, hi - lo)
    if host_info[0] != 0:  # an argument error, known at call time (no device wait)
        raise RuntimeError(f"cuBLAS getrsBatched rejected argument {-int(host_info[0])}")
    info = cupy.where(bad, np.int32(INFO_NONFINITE), info).astype(np.int32)
    return rhs.swapaxes(1, 2), info
