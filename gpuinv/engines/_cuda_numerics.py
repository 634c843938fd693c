"""Structure, rcond and solve on the CUDA engine (issue 10).

Every route here is a :class:`gpuinv.engines.cuda.ChunkWork` run by
:meth:`CudaEngine.run_chunks`, the machinery of the engine's own inverse:
the stack is walked in chunks (views of the caller's arrays, ``a`` and
``b`` with the same chunk index, so a broadcast ``b`` follows ``a``'s
batch), each chunk sized against the device's free memory, a chunk that
runs out of memory is retried with half as many matrices, and NumPy input
streams through the pinned host<->device pipeline (three slots, each on its
own stream). Results, ``info`` and ``rcond`` are written into each chunk's
slice of the whole batch, so the batch indices of a singular report are
global. Within a chunk nothing waits for the device: every step is a CuPy
array operation or a cuBLAS/cuSOLVER call enqueued on the current stream,
and ``info`` and ``rcond`` stay on the device (CuPy input never syncs; NumPy
input waits for each chunk's download, as the inverse does).

The routes, per chunk, and why:

* rcond: where the inverse runs on our own kernels (the general,
  symmetric and Hermitian inverse at ``n <= KERNEL_MAX_N``, and the
  positive definite one at ``n <= CHOL_MAX_N``), their rcond variant writes
  it in the same launch, from the A and X each thread or lane group already
  holds (gpuinv/kernels, ``KernelSpec.rcond``): no extra pass over the
  stack. Elsewhere, the two 1-norms of
  :func:`gpuinv._numerics.rcond_from_inverse` as CuPy reductions over the
  chunk of input (cast to the compute dtype) and its inverse.
* general inverse: the engine's own chunk inverse
  (:func:`gpuinv.engines.cuda._invert_chunk`, the route of
  :func:`gpuinv._dispatch.cuda_route`); without rcond, :meth:`CudaEngine.invert`.
* symmetric / Hermitian: the general chunk inverse of the matrix mirrored
  from the triangle read, the inverse mirrored back so it is exactly symmetric.
* diagonal: for ``n <= DIAG_MAX_N[dtype]`` gpuinv's own kernel
  (:mod:`gpuinv.engines._cuda_tri`), one launch; above it elementwise
  ``1 / d`` and info from the diagonal, in CuPy passes.
* triangular: for ``n <= TRI_MAX_N[dtype]`` gpuinv's own kernel
  (:mod:`gpuinv.engines._cuda_tri`: trtri's algorithm, one launch, trtri's
  info); above it the general chunk inverse of the triangle read (for an
  upper triangular matrix getrf exchanges no rows; a lower one is inverted
  as the transpose of its upper transpose), masked back to the triangle.
  info is the first zero on the diagonal, computed on the device from the
  diagonal itself, as LAPACK ``trtri`` reports it.
* positive definite: for ``n <= CHOL_MAX_N[dtype]`` gpuinv's own Cholesky
  kernel (:mod:`gpuinv.engines._cuda_chol`), one launch; above it cuSOLVER ``<t>potrfBatched`` (CuPy 14 wraps it:
  ``potrfBatched(handle, uplo, n, Aarray, lda, infoArray, batchSize)``), its
  info is potrf's; then ``<t>potrsBatched`` against the identity. CuPy 14's
  ``potrsBatched`` takes ``nrhs`` but cuSOLVER accepts only ``nrhs = 1``,
  so the identity is solved one column at a time: n calls, each over the
  whole chunk. Cholesky halves the factorization's work against LU and the
  result is mirrored to be exactly Hermitian.
* solve, general (and symmetric, Hermitian, triangular, on the matrix
  :func:`gpuinv._numerics.structured_matrix` built): for
  ``n <= SOLVE_MAX_N[dtype]`` (:func:`solve_route`) gpuinv's own LU solve
  kernel (``solve_thread``, :func:`gpuinv.kernels.solve_small`): one launch
  over the chunk, b in place of the identity of the LU inverse kernel (the
  same pivots and info codes; x all NaN where info != 0). Above it cuBLAS
  ``<t>getrfBatched`` + ``<t>getrsBatched`` (CuPy 14: ``getrsBatched(handle,
  trans, n, nrhs, Aarray, lda, devIpiv, Barray, ldb, info, batchSize)``, where
  ``info`` is a *host* pointer that reports argument errors only, written
  when the call is made: reading it is no device sync); per-matrix cuSOLVER
  ``getrs`` with nrhs = k for large n is not wired up yet.
* solve, positive definite: potrfBatched + potrsBatched, one call per
  right-hand side column.

Device scratch per matrix of a chunk is estimated by :func:`scratch_bytes`
from the temporaries the code below allocates; the estimate sizes the first
chunk, and the out-of-memory retry covers what it misses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import kernels
from .._errors import INFO_NONFINITE
from .._normalize import Operand
from .._numerics import rcond_from_inverse, structured_matrix
from ..kernels import SOLVE_MAX_N
from . import _cuda_chol, _cuda_tri
from . import cuda as _cuda
from .cuda import _TYPE_LETTER, CUBLAS_MAX_BATCH, ChunkWork, _pointer_array, batch_calls

__all__ = ["cuda_invert_ex", "cuda_solve_ex", "first_zero_step", "scratch_bytes", "solve_route"]

# cuSOLVER / cuBLAS fill modes
_LOWER = 0  # CUBLAS_FILL_MODE_LOWER

_INT32 = np.dtype(np.int32)

#: Matrix-sized (``s n^2``) device temporaries per matrix of a chunk, counted
#: from the code below (see :func:`scratch_bytes`).
#: structured_matrix: the cast, the (conjugated) transpose and two wheres.
_STRUCTURED_TEMPS = 4
#: Per structure, the inverse's own temporaries beyond the engine's chunk
#: inverse: mirrors (a conjugate and two wheres), diagonal's wheres, the
#: triangular route's LU output and mask, Cholesky's copy, identity and mirror.
_INVERSE_TEMPS = {"general": 0, "symmetric": 3, "hermitian": 3, "diagonal": 3,
                  "upper triangular": 2, "lower triangular": 2, "positive definite": 5}
#: rcond: the input chunk cast and reshaped, and |A|, |X| for the norms.
_RCOND_TEMPS = 3
#: Right-hand-side-sized (``s n k``) temporaries of a solve: the cast, the
#: column-major copy the library writes, its conjugate, and the NaN mask's result
#: (the kernel route: the cast or contiguous copy, x, and the NaN mask's result).
_SOLVE_RHS_TEMPS = 4


def solve_route(n: int, dtype: Any) -> str:
    """The LU solve's route: ``"kernel"`` for ``1 <= n <= SOLVE_MAX_N[dtype]``, else ``"cublas"``.

    Provisional as the inverse kernels' bound: no GPU has yet timed the
    kernel against getrfBatched + getrsBatched (benchmarks/gpu_check.py should).
    """
    return "kernel" if 1 <= n <= SOLVE_MAX_N.get(np.dtype(dtype), 0) else "cublas"


def _real(dtype: np.dtype) -> np.dtype:
    return np.dtype(dtype).type(0).real.dtype


def _uses_lu_inverse(structure: str) -> bool:
    return structure in ("general", "symmetric", "hermitian", "upper triangular",
                         "lower triangular")


def scratch_bytes(n: int, k: int, itemsize: int, structure: str, route: str, *,
                  rcond: bool, solve: bool) -> int:
    """Estimated device scratch bytes per matrix of one chunk.

    ``k`` is the number of right-hand sides of a solve (ignored otherwise),
    ``route`` the engine's route for the LU inverses
    (:func:`gpuinv._dispatch.cuda_route`). Counted from the temporaries the
    routes allocate: see the module's constants.
    """
    matrix = itemsize * n * n
    structured = 0 if structure == "general" else _STRUCTURED_TEMPS * matrix

    def inverse() -> int:
        lu = _cuda.scratch_bytes_per_matrix(n, itemsize, route) if _uses_lu_inverse(structure) else 0
        small = n * n + 4 * n + 64  # masks, pivots, pointers, info
        return structured + _INVERSE_TEMPS[structure] * matrix + lu + small

    if not solve:
        return inverse() + (_RCOND_TEMPS * matrix if rcond else 0)
    # The factor's copy, the NaN mask, pivots, pointers and info, and b's temporaries.
    total = structured + matrix + n * n + 4 * n + 64 + _SOLVE_RHS_TEMPS * itemsize * n * k
    if rcond:  # the inverse of the chunk, its info, and the norms
        total += matrix + 4 + inverse() + _RCOND_TEMPS * matrix
    return total


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


def _nan_where_failed(out: Any, info: Any) -> None:
    """NaN in every matrix of ``out`` (m, ...) whose info is not 0 (a mask, no host sync)."""
    import cupy

    cupy.copyto(out, out.dtype.type(np.nan), where=(info != 0)[:, None, None])


def _aligned(view: Any) -> Any:
    """``view``, or an aligned copy where it starts off its element size (see
    :func:`gpuinv.engines.cuda._realigned`): CuPy's own kernels, which read
    it here before the engine's chunk inverse would, fault on such loads."""
    if _cuda._is_aligned(view):
        return view
    return _cuda._realigned(view)


def _as_stack(x: Any, dtype: np.dtype, m: int) -> Any:
    """``x`` (batch..., r, c) as an (m, r, c) stack of ``dtype`` (a copy only where needed)."""
    return x.astype(dtype, copy=False).reshape((m,) + tuple(x.shape[-2:]))


def _write_rcond(full: Any, inverse: Any, info: Any, rc: Any) -> None:
    import cupy

    a = _as_stack(full, inverse.dtype, inverse.shape[0])
    cupy.copyto(rc, rcond_from_inverse(a, inverse, info))


# --- inverses -----------------------------------------------------------------------


def _inverse_chunk(view: Any, out: Any, info: Any, structure: str, lower: bool,
                   route: str, rc: Any = None) -> tuple[Any, bool]:
    """Write one chunk's inverses ``out`` (m, n, n) and ``info`` (m,); return the
    matrices as read (the chunk's batch shape + (n, n)), for rcond, and
    whether ``rc`` (m,), when given, was written already (by one of our
    kernels' rcond variants, which compute it from the A and X they hold).

    The engine's chunk inverse is never told that it owns its input, even
    where it does: rcond reads the matrices afterwards.
    """
    import cupy

    m, n = out.shape[0], out.shape[-1]
    dtype = out.dtype
    view = _aligned(view)
    if structure == "general":
        return view, _cuda._invert_chunk(view, out, info, route, rcond=rc)
    full = structured_matrix(view.astype(dtype, copy=False), structure, lower).reshape(m, n, n)
    if structure in ("symmetric", "hermitian"):
        # The mirrored matrix is what was read, so the kernel's rcond is its rcond.
        written = _cuda._invert_chunk(full, out, info, route, rcond=rc)  # NaN for failed matrices
        cupy.copyto(out, _mirror_lower(out, conjugate=structure == "hermitian"))
        return full, written
    if _cuda_tri.structured_route(n, dtype, structure) == "kernel":  # our kernels for the small n
        _cuda_tri.kernel_structured_inverse_into(full, out, info, structure, rcond=rc)
        return full, rc is not None
    if structure == "diagonal":
        _diagonal_inverse(full, out, info)
    elif structure in ("upper triangular", "lower triangular"):
        _triangular_inverse(full, out, info, structure == "lower triangular", route)
    elif structure == "positive definite":
        if _cuda_chol.chol_route(n, dtype) == "kernel":  # our kernel for the small n
            # rcond from the kernel where it has an rcond variant (not all do: registers).
            rc_kernel = rc if rc is not None and kernels.has_rcond_variant(n, dtype, "chol") else None
            _cuda_chol.kernel_cholesky_inverse_into(full, out, info, rcond=rc_kernel)
            return full, rc_kernel is not None
        _cholesky_inverse(full, out, info)
    else:
        raise ValueError(f"unknown structure {structure!r}")
    return full, False


def _inverse_compute(structure: str, lower: bool, route: str,
                     rcond: bool) -> Callable[[list[Any], list[Any], bool], None]:
    def compute(ins: list[Any], outs: list[Any], owned: bool) -> None:
        rc = outs[2] if rcond else None
        full, written = _inverse_chunk(ins[0], outs[0], outs[1], structure, lower, route, rc)
        if rcond and not written:
            _write_rcond(full, outs[0], outs[1], rc)

    return compute


def _outputs(tail: tuple[int, ...], dtype: np.dtype,
             rcond: bool) -> tuple[tuple[tuple[int, ...], np.dtype], ...]:
    outputs = ((tail, dtype), ((), _INT32))
    return outputs + (((), _real(dtype)),) if rcond else outputs


def cuda_invert_ex(engine: Any, op: Operand, *, structure: str, lower: bool,
                   rcond: bool) -> tuple[Any, Any, Any]:
    """``(inverse, info, rcond or None)`` on the CUDA engine; see the module docstring.

    NumPy input returns NumPy arrays, CuPy input CuPy arrays on its device.
    """
    n, dtype = op.n, op.dtype
    outputs = _outputs((n, n), dtype, rcond)
    if op.empty:
        results = engine.empty_results(op.backend, op.array, op.batch_shape, list(outputs))
        if rcond:
            results[2][...] = 1
        return results[0], results[1], results[2] if rcond else None
    if structure == "general" and not rcond:
        inverse, info = engine.invert(op)
        return inverse, info, None
    route = _cuda.cuda_route(n, dtype)
    work = ChunkWork(op.batch_shape, dtype, (op.array,), outputs,
                     _inverse_compute(structure, lower, route, rcond),
                     scratch_bytes(n, 0, dtype.itemsize, structure, route, rcond=rcond,
                                   solve=False),
                     f"inverting one {n}x{n} {dtype} matrix (assume_a={structure!r})")
    results = engine.run_chunks(work)
    return results[0], results[1], results[2] if rcond else None


def _diagonal_inverse(full: Any, out: Any, info: Any) -> None:
    import cupy

    n = full.shape[-1]
    d = full.diagonal(axis1=-2, axis2=-1)
    code = first_zero_step(full)
    cupy.copyto(info, cupy.where(_nonfinite(d[..., None]), np.int32(INFO_NONFINITE), code),
                casting="unsafe")
    eye = cupy.eye(n, dtype=bool)
    with np.errstate(all="ignore"):
        cupy.copyto(out, cupy.where(eye, (1 / d)[..., None, :], cupy.zeros((), dtype=full.dtype)),
                    casting="unsafe")
    _nan_where_failed(out, info)


def _triangular_inverse(full: Any, out: Any, info: Any, lower: bool, route: str) -> None:
    import cupy

    m, n = out.shape[0], out.shape[-1]
    upper = full.swapaxes(-1, -2) if lower else full
    x = cupy.empty((m, n, n), dtype=out.dtype)
    lu_info = cupy.empty(m, dtype=np.int32)
    _cuda._invert_chunk(upper, x, lu_info, route)
    if lower:
        x = x.swapaxes(-1, -2)
    rows = cupy.arange(n)[:, None]
    cols = cupy.arange(n)[None, :]
    mask = rows >= cols if lower else rows <= cols
    cupy.copyto(out, cupy.where(mask, x, cupy.zeros((), dtype=out.dtype)))
    cupy.copyto(info, cupy.where(lu_info == INFO_NONFINITE, np.int32(INFO_NONFINITE),
                                 first_zero_step(full)), casting="unsafe")
    _nan_where_failed(out, info)


def _cholesky_prepare(full: Any) -> tuple[Any, Any, Any]:
    """Column-major copy for cuSOLVER (NaN/Inf matrices replaced by I), the
    matrix pointers and potrfBatched's info (-1 for NaN/Inf), all on the device."""
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


def _cholesky_inverse(full: Any, out: Any, info: Any) -> None:
    import cupy

    n = full.shape[-1]
    x, ptrs, code = _cholesky_prepare(full)
    c = cupy.empty_like(x)
    cupy.copyto(c, cupy.eye(n, dtype=x.dtype))
    _potrs_columns(x, ptrs, c)
    # c[i] column-major is inv(conj(A_i)); read in C order it is
    # inv(conj(A_i))^T = inv(A_i^H) = inv(A_i).
    cupy.copyto(out, _mirror_lower(c, conjugate=x.dtype.kind == "c"))
    cupy.copyto(info, code)
    _nan_where_failed(out, info)


# --- solve --------------------------------------------------------------------------


def _solve_compute(structure: str, lower: bool, route: str,
                   rcond: bool) -> Callable[[list[Any], list[Any], bool], None]:
    def compute(ins: list[Any], outs: list[Any], owned: bool) -> None:
        import cupy

        a, b = _aligned(ins[0]), _aligned(ins[1])  # read only: rcond reads a afterwards
        out, info = outs[0], outs[1]
        m, n, _ = out.shape
        dtype = out.dtype
        if structure == "general":
            full = a  # _lu_solve gathers it
        else:
            full = structured_matrix(a.astype(dtype, copy=False), structure, lower)
            full = full.reshape(m, n, n)
        rhs = _as_stack(b, dtype, m)
        if structure == "diagonal":
            d = full.diagonal(axis1=-2, axis2=-1)
            code = cupy.where(_nonfinite(d[..., None]), np.int32(INFO_NONFINITE),
                              first_zero_step(full))
            with np.errstate(all="ignore"):
                x = rhs / d[..., :, None]
        elif structure == "positive definite":
            f, ptrs, code = _cholesky_prepare(full)
            complex_ = f.dtype.kind == "c"
            cols = cupy.ascontiguousarray(rhs.swapaxes(1, 2))  # column-major
            cols = cols.conj() if complex_ else cols
            _potrs_columns(f, ptrs, cols)
            # The factors are of conj(A): conj(A) y = conj(b) gives y = conj(x).
            x = (cols.conj() if complex_ else cols).swapaxes(1, 2)
        elif solve_route(n, dtype) == "kernel":
            x, code = _kernel_solve(full, rhs)
            if structure in ("upper triangular", "lower triangular"):
                code = cupy.where(code == INFO_NONFINITE, code, first_zero_step(full))
        else:
            x, code = _lu_solve(full, rhs)
            if structure in ("upper triangular", "lower triangular"):
                code = cupy.where(code == INFO_NONFINITE, code, first_zero_step(full))
        cupy.copyto(info, code, casting="unsafe")
        cupy.copyto(out, x, casting="unsafe")
        _nan_where_failed(out, info)
        if rcond:  # the condition of a: its inverse, on the same route as inv_ex's
            inverse = cupy.empty((m, n, n), dtype=dtype)
            inverse_info = cupy.empty(m, dtype=np.int32)
            rc = cupy.empty(m, dtype=outs[2].dtype)
            read, written = _inverse_chunk(full, inverse, inverse_info, structure, lower, route, rc)
            if not written:
                _write_rcond(read, inverse, info, rc)
            else:  # the kernel's rcond follows its own info; the solve's is the one reported
                real = rc.dtype.type
                rc = cupy.where(info > 0, real(0), rc)
                rc = cupy.where(info == INFO_NONFINITE, real(np.nan), rc)
            cupy.copyto(outs[2], rc)

    return compute


def cuda_solve_ex(engine: Any, op: Operand, b: Any, *, structure: str, lower: bool,
                  rcond: bool) -> tuple[Any, Any, Any]:
    """``(x, info, rcond or None)`` with ``a @ x = b`` on the CUDA engine.

    ``op.array`` and ``b`` are broadcast to the batch ``op.batch_shape``;
    ``b`` is (batch..., n, k). Both are chunked with the same chunk index,
    so each chunk of ``b`` is the right-hand sides of that chunk of ``a``.
    """
    n, k = op.n, b.shape[-1]
    dtype = op.dtype
    outputs = _outputs((n, k), dtype, rcond)
    if op.empty or k == 0:
        results = engine.empty_results(op.backend, op.array, op.batch_shape, list(outputs))
        rc = None
        if rcond:
            if op.empty:
                results[2][...] = 1
                rc = results[2]
            else:
                rc = cuda_invert_ex(engine, op, structure=structure, lower=lower, rcond=True)[2]
        return results[0], results[1], rc
    route = _cuda.cuda_route(n, dtype)
    work = ChunkWork(op.batch_shape, dtype, (op.array, b), outputs,
                     _solve_compute(structure, lower, route, rcond),
                     scratch_bytes(n, k, dtype.itemsize, structure, route, rcond=rcond,
                                   solve=True),
                     f"solving one {n}x{n} {dtype} system with {k} right-hand sides "
                     f"(assume_a={structure!r})")
    results = engine.run_chunks(work)
    return results[0], results[1], results[2] if rcond else None


def _kernel_solve(a: Any, b: Any) -> tuple[Any, Any]:
    """gpuinv's LU solve kernel for ``a`` (batch..., n, n), ``b`` (m, n, k): ``(x, info)``.

    ``a`` may have any strides and dtype (it is gathered, cast to ``b``'s
    dtype, only where it is not already a C-contiguous stack of it); ``x``
    is (m, n, k), NaN where info != 0. One launch, no host synchronization.
    """
    import cupy

    from .. import kernels  # by attribute, so that the tests' stand-in is found

    m, n, k = b.shape
    stack = cupy.ascontiguousarray(a.astype(b.dtype, copy=False)).reshape(m, n, n)
    rhs = cupy.ascontiguousarray(b)
    x = cupy.empty((m, n, k), dtype=b.dtype)
    info = cupy.empty(m, dtype=np.int32)
    kernels.solve_small(stack, rhs, x, info)
    return x, info


def _lu_solve(a: Any, b: Any) -> tuple[Any, Any]:
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
