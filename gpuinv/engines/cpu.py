"""The CPU engine: the embedded default where there is no GPU.

Per chunk of the batch (a view of the caller's array, never the whole stack):

1. gather the chunk into a contiguous block of the compute dtype;
2. mark matrices holding NaN or Inf (info -1, inverse NaN);
3. invert the rest by the route of :mod:`.cpu_routes` for n: batch-vectorized
   closed forms for n <= 4 (matrices they cannot do accurately go to step 4),
   LAPACK's getrf/getrs through NumPy's own gufunc above that, and from
   ``GETRI_MIN_N`` getrf + getri through SciPy's wrappers where SciPy is
   importable; with rcond (``inv``'s default check) the norms of A and of
   its inverse are taken on the chunk here, while it is in cache;
4. for matrices LAPACK could not invert, find the zero pivot's step with a
   vectorized partial-pivoting LU, so every matrix gets its own info code.

Chunks run on a shared thread pool: NumPy's inner loops release the GIL, and
``numpy.linalg.inv`` itself inverts one matrix at a time on one core.

Peak extra memory: the output and info arrays, plus per worker thread about
``GPUINV_CPU_CHUNK_BYTES`` times a small constant (the gathered chunk and the
closed forms' temporaries), whatever the size of the stack. The condition
check of the LAPACK route keeps one chunk-sized scratch array per thread
between calls (one matrix when a matrix is larger than a chunk).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from .._chunks import Chunk, plan_chunks
from .._config import config
from .._dtypes import real_dtype
from .._errors import INFO_NONFINITE
from .._normalize import Operand
from .._numerics import last_axis_max, rcond_from_inverse, structured_matrix
from .._request import Request
from ._closed_form import (
    SOLVE_MAX_N,
    closed_form_inverse,
    closed_form_pos_inverse,
    closed_form_solve,
)
from ._structured import (
    cholesky_inverse,
    diagonal_inverse,
    mirror_lower,
    positive_definite_inverse,
    positive_definite_solve,
    small_potrf_info,
    triangular_inverse,
    triangular_solve,
)
from .cpu_routes import (
    COMPILED_INV_MAX_N,
    COMPILED_SOLVE_MAX_N,
    GETRI_MIN_N,
    compiled_for,
    compiled_kernels,
    cpu_route,
    posdef_method,
    threads_for,
    unrolled_for,
)

try:  # NumPy's batched inverse gufunc without the raise-on-first-failure wrapper
    from numpy.linalg import _umath_linalg

    _gufunc_inv: Any = _umath_linalg.inv
    _gufunc_solve: Any = _umath_linalg.solve
except (ImportError, AttributeError):  # pragma: no cover - future NumPy layouts
    _gufunc_inv = None
    _gufunc_solve = None

__all__ = ["CpuEngine", "compiled_kernels", "invert_block_ex", "lu_pivot_info", "solve_block",
           "warm_up"]

# The closed-form solve (engines/_closed_form.py) is Cramer's rule in
# disguise: not backward stable for ill-conditioned a (issue 19 item 3). Off:
# every n takes LU with partial pivoting (compiled, or LAPACK's gesv).
CLOSED_FORM_SOLVE = False

_SIGNATURES = {
    np.dtype(np.float32): "f->f",
    np.dtype(np.float64): "d->d",
    np.dtype(np.complex64): "F->F",
    np.dtype(np.complex128): "D->D",
}


class CpuEngine:
    """Inverts and solves NumPy stacks on the host. Stateless apart from a shared thread pool."""

    name = "cpu"
    #: Computes in host memory: CuPy input is copied in and out by the call
    #: path (gpuinv._compute), never here.
    memory = "host"

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            # A forked child (multiprocessing's default on Linux) inherits
            # the pool object but none of its threads: work submitted there
            # would wait forever. The child starts a fresh pool instead.
            os.register_at_fork(after_in_child=self._forget_pool)

    def _forget_pool(self) -> None:
        self._pool = None
        self._pool_size = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "CpuEngine()"

    def inverse(self, request: Request, op: Operand
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(inverse, info, rcond or None)`` for a validated NumPy operand.

        Chunked (views of the caller's array, never the whole stack) and
        threaded. The general inverse without rcond, the cheapest request,
        runs :func:`invert_block` per chunk; anything else
        :func:`invert_block_ex`, which computes rcond per chunk while the
        chunk is hot.
        """
        n, dtype = op.n, op.dtype
        out = np.empty(op.batch_shape + (n, n), dtype=dtype)
        info = np.zeros(op.batch_shape, dtype=np.int32)
        rc = None
        if request.rcond:
            # Every route writes every rcond, so only an empty stack needs the
            # fill (n = 0: rcond 1). np.empty saves a pass over the output.
            rc = (np.ones if op.empty else np.empty)(op.batch_shape, dtype=real_dtype(dtype))
        if op.empty:
            return out, info, rc
        a = op.array
        out3 = out.reshape(-1, n, n)
        info1 = info.reshape(-1)
        structure, lower = request.structure, request.lower

        if structure == "general" and rc is None:
            def task(chunk: Chunk) -> None:
                block = np.ascontiguousarray(a[chunk.index], dtype=dtype).reshape(-1, n, n)
                invert_block(block, out3[chunk.start : chunk.stop], info1[chunk.start : chunk.stop])
        else:
            rc1 = rc.reshape(-1) if rc is not None else None

            def task(chunk: Chunk) -> None:
                block = np.ascontiguousarray(a[chunk.index], dtype=dtype).reshape(-1, n, n)
                part = rc1[chunk.start : chunk.stop] if rc1 is not None else None
                invert_block_ex(block, out3[chunk.start : chunk.stop],
                                info1[chunk.start : chunk.stop], part, structure, lower)

        per_chunk = max(1, config.cpu_chunk_bytes // (n * n * dtype.itemsize))
        threads = (threads_for(n, dtype, "posdef") if structure == "positive definite" else
                   threads_for(n, dtype if structure in ("general", "symmetric", "hermitian") else None))
        self._run(task, plan_chunks(op.batch_shape, per_chunk), threads=threads)
        return out, info, rc

    def solve(self, request: Request, op: Operand, b: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(x, info, rcond or None)`` with ``a @ x = b`` for every matrix.

        ``op.array`` and ``b`` (batch + (n, k)) are already broadcast to the
        same batch shape (``op.batch_shape``); broadcast views are read chunk
        by chunk, never materialized.
        """
        n, dtype = op.n, op.dtype
        k = b.shape[-1]
        x = np.empty(op.batch_shape + (n, k), dtype=dtype)
        info = np.zeros(op.batch_shape, dtype=np.int32)
        rc = np.ones(op.batch_shape, dtype=real_dtype(dtype)) if request.rcond else None
        if op.empty or k == 0:
            if request.rcond and not op.empty:
                _, info, rc = self.inverse(request, op)
            return x, info, rc
        a = op.array
        x3 = x.reshape(-1, n, k)
        info1 = info.reshape(-1)
        rc1 = rc.reshape(-1) if rc is not None else None
        structure, lower = request.structure, request.lower

        def task(chunk: Chunk) -> None:
            block = np.ascontiguousarray(a[chunk.index], dtype=dtype).reshape(-1, n, n)
            rhs = np.ascontiguousarray(b[chunk.index], dtype=dtype).reshape(-1, n, k)
            part = rc1[chunk.start : chunk.stop] if rc1 is not None else None
            solve_block(block, rhs, x3[chunk.start : chunk.stop], info1[chunk.start : chunk.stop],
                        part, structure, lower)

        per_chunk = max(1, config.cpu_chunk_bytes // ((n * n + n * k) * dtype.itemsize))
        self._run(task, plan_chunks(op.batch_shape, per_chunk), threads=threads_for(n))
        return x, info, rc

    def _executor(self, threads: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pool_size != threads:
                # The old pool is dropped, not shut down: calls in other
                # threads may still be submitting chunks to it. Its workers
                # exit once the last such call lets go of it (they hold only
                # a weak reference to their executor).
                self._pool = ThreadPoolExecutor(threads, thread_name_prefix="gpuinv-cpu")
                self._pool_size = threads
            return self._pool

    def _run(self, task: Callable[[Chunk], None], chunks: Iterable[Chunk], threads: int) -> None:
        """Run ``task`` over ``chunks``, with at most 2 * threads in flight.

        Bounded submission keeps memory flat for billions of matrices; an
        exception (or KeyboardInterrupt) stops submission, cancels what has
        not started and re-raises once the running chunks have finished.
        """
        it = iter(chunks)
        first = next(it, None)
        if first is None:
            return
        second = next(it, None)
        if second is None or threads <= 1:
            task(first)
            if second is not None:
                task(second)
                for chunk in it:
                    task(chunk)
            return
        pool = self._executor(threads)
        pending: set[Future[None]] = {pool.submit(task, first), pool.submit(task, second)}
        try:
            for chunk in it:
                if len(pending) >= 2 * threads:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        f.result()
                pending.add(pool.submit(task, chunk))
            for f in pending:
                f.result()
        except BaseException:
            for f in pending:
                f.cancel()
            wait(pending)
            raise


def invert_block(x: np.ndarray, out: np.ndarray, info: np.ndarray) -> None:
    """Invert a contiguous block ``x`` (m, n, n) into ``out``, codes into ``info``.

    ``x`` may be the caller's own memory: it is only read.
    """
    compiled = compiled_for("invert", x.shape[-1], x.dtype)
    if compiled is not None:
        compiled.invert(x, out, info, None, unrolled_for(x.shape[-1], x.dtype))
        return
    with np.errstate(all="ignore"):
        all_finite = np.isfinite(x.sum())  # cheap; an overflow just takes the exact check
    if all_finite:
        _invert_finite(x, out, info)
        return
    finite = np.isfinite(x).all(axis=(1, 2))
    info[~finite] = INFO_NONFINITE
    out[~finite] = np.nan
    keep = np.flatnonzero(finite)
    if keep.size == 0:
        return
    if keep.size == len(x):
        _invert_finite(x, out, info)
        return
    sub_out = np.empty((keep.size,) + x.shape[1:], dtype=out.dtype)
    sub_info = np.zeros(keep.size, dtype=np.int32)
    _invert_finite(x[keep], sub_out, sub_info)
    out[keep] = sub_out
    info[keep] = sub_info


def _invert_finite(x: np.ndarray, out: np.ndarray, info: np.ndarray) -> None:
    compiled = compiled_for("invert", x.shape[-1], x.dtype)
    if compiled is not None:
        compiled.invert(np.ascontiguousarray(x), out, info, None, unrolled_for(x.shape[-1], x.dtype))
        return
    if cpu_route(x.shape[-1]) == "closed_form":
        redo = closed_form_inverse(x, out)
        if redo is None:
            return
        idx = np.flatnonzero(redo)
        sub_out = np.empty((idx.size,) + x.shape[1:], dtype=out.dtype)
        sub_info = np.zeros(idx.size, dtype=np.int32)
        _lapack_inverse(x[idx], sub_out, sub_info)
        out[idx] = sub_out
        info[idx] = sub_info
    else:
        _lapack_inverse(x, out, info)


def _tiny_matrix_scales(x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Powers of two for the matrices of ``x`` whose largest entry is tiny.

    OpenBLAS's getrf/getrs lose all accuracy on matrices of subnormals (30%
    error on ``(3I + J) * 2**-1024``, tests/test_extreme.py); scaled by a
    power of two, which is exact, LAPACK inverts them to full accuracy.
    Returns ``(indices, scales)`` of the matrices whose largest entry is
    below ``2**-(maxexp/2)``, or None.
    """
    real = x.view(x.real.dtype) if x.dtype.kind == "c" else x
    big = np.abs(real).max(axis=(1, 2))
    half = np.finfo(real.dtype).maxexp // 2
    idx = np.flatnonzero((big < np.ldexp(1.0, -half)) & (big > 0))
    if idx.size == 0:
        return None
    _, exponent = np.frexp(big[idx])
    limit = np.finfo(real.dtype).maxexp - 1  # 2**limit is finite
    np.clip(exponent, -limit, limit, out=exponent)
    return idx, np.ldexp(np.ones(idx.size, dtype=real.dtype), -exponent)


def _has_huge_entries(out: np.ndarray) -> bool:
    """Whether some inverse has an entry past 2**(maxexp/4), or NaN.

    A matrix whose largest entry is below 2**-(maxexp/2) has an inverse
    with an entry of at least 2**(maxexp/2) / n**2, so this cheap global test
    (two contiguous reductions, under 1% of the LAPACK call at n = 5) finds
    every chunk that may hold one.
    """
    real = out.view(out.real.dtype) if out.dtype.kind == "c" else out
    top = np.ldexp(1.0, np.finfo(real.dtype).maxexp // 4)
    return not (real.max() <= top and -real.min() <= top)


def _lapack_inverse(x: np.ndarray, out: np.ndarray, info: np.ndarray) -> None:
    """LAPACK getrf + getrs against the identity, per matrix, with info codes."""
    with np.errstate(all="ignore"):
        _gufunc(x, out)
        if not _has_huge_entries(out):
            return  # every entry finite and moderate: the common case, two reductions
    _lapack_repair(x, out, info)


def _lapack_repair(x: np.ndarray, out: np.ndarray, info: np.ndarray) -> None:
    """The rare half of :func:`_lapack_inverse`, once some entry of ``out`` is huge or NaN.

    Re-inverts matrices of tiny entries scaled by a power of two, then gives
    every matrix whose inverse is still not finite its LU info code.
    """
    with np.errstate(all="ignore"):
        scales = _tiny_matrix_scales(x)
        if scales is not None:  # inv(a) = s * inv(s * a), exactly for powers of two
            idx, s = scales
            sub = np.empty((idx.size,) + x.shape[1:], dtype=out.dtype)
            _gufunc(x[idx] * s[:, None, None], sub)
            out[idx] = sub * s[:, None, None]
        if np.isfinite(out.sum()):
            return
    bad = np.flatnonzero(~np.isfinite(out).all(axis=(1, 2)))
    zero_step, smallest_step = lu_pivot_info(x[bad])
    # LAPACK marks a matrix it could not factor by filling it with NaN. If our
    # LU found no exactly zero pivot where LAPACK did (a different rounding
    # order), report LAPACK's verdict at our smallest pivot's step. A finite
    # factorization whose inverse overflowed keeps info 0, as in LAPACK.
    lapack_failed = np.isnan(out[bad]).all(axis=(1, 2))
    code = np.where(zero_step > 0, zero_step, np.where(lapack_failed, smallest_step, 0))
    info[bad] = code
    out[bad[code > 0]] = np.nan


_GETRI: dict[np.dtype, tuple[Any, Any, Any] | None] = {}


def _getri_funcs(dtype: np.dtype) -> tuple[Any, Any, Any] | None:
    """SciPy's ``(getrf, getri, getri_lwork)`` for ``dtype``, or None without SciPy.

    SciPy is imported here, at the first call that needs it, never by
    ``import gpuinv``.
    """
    if dtype not in _GETRI:
        try:
            from scipy.linalg import lapack
        except ImportError:
            _GETRI[dtype] = None
        else:
            _GETRI[dtype] = lapack.get_lapack_funcs(("getrf", "getri", "getri_lwork"),
                                                    dtype=dtype)
    return _GETRI[dtype]


def _gufunc(x: np.ndarray, out: np.ndarray) -> None:
    """LAPACK's inverse of every matrix of x into out; a matrix getrf cannot factor is all NaN."""
    if x.shape[-1] >= GETRI_MIN_N:
        funcs = _getri_funcs(x.dtype)
        if funcs is not None:
            _getri_loop(x, out, funcs)
            return
    if _gufunc_inv is not None:
        _gufunc_inv(x, signature=_SIGNATURES[x.dtype], out=out)
    else:  # pragma: no cover - exercised only if NumPy moves its gufunc
        _loop_inverse(x, out)


def _getri_loop(x: np.ndarray, out: np.ndarray, funcs: tuple[Any, Any, Any]) -> None:
    """getrf + getri per matrix, as NumPy's gufunc does it: A itself is factored
    (a Fortran-ordered copy, so pivots and zero pivots are those of gesv on A),
    and a matrix getrf cannot factor is filled with NaN, as the gufunc fills it.
    The wrappers release the GIL, so chunks still run in parallel.
    """
    getrf, getri, getri_lwork = funcs
    n = x.shape[-1]
    lwork = max(1, int(getri_lwork(n)[0].real))
    work = np.empty((n, n), dtype=x.dtype, order="F")
    for i in range(len(x)):
        _copy_across_orders(work, x[i])
        lu, piv, code = getrf(work, overwrite_a=True)
        if code == 0:
            inverse, code = getri(lu, piv, lwork=lwork, overwrite_lu=True)
        if code == 0:
            _copy_across_orders(out[i], inverse)
        else:
            out[i] = np.nan


def _copy_across_orders(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` between C and Fortran order, 32 rows at a time from n = 128.

    NumPy's one-call copy walks one operand with a stride of a whole row;
    in blocks of 32 rows it ran 1.8-2x faster at n = 128..512 (147 against
    77 us at n = 256, where two such copies per matrix were 7% of getrf +
    getri on one core).
    """
    n = src.shape[0]
    if n < 128:
        dst[...] = src
        return
    for r in range(0, n, 32):
        dst[r : r + 32] = src[r : r + 32]


def _loop_inverse(x: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    for i in range(len(x)):
        try:
            out[i] = np.linalg.inv(x[i])
        except np.linalg.LinAlgError:
            out[i] = np.nan


def _cabs1(z: np.ndarray) -> np.ndarray:
    """|re| + |im|: the magnitude LAPACK's i?amax pivots on."""
    if z.dtype.kind == "c":
        return np.abs(z.real) + np.abs(z.imag)
    return np.abs(z)


def lu_pivot_info(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Partial-pivoting LU of every matrix in ``x`` (m, n, n), vectorized over m.

    Follows LAPACK's getf2: at step k the pivot is the first entry of largest
    |re| + |im| in column k on or below the diagonal. Returns two int32
    arrays: the 1-based step of the first exactly zero pivot (0 if none), and
    the 1-based step of the smallest pivot in magnitude.
    """
    a = np.array(x, copy=True)
    m, n, _ = a.shape
    rows = np.arange(m)
    zero_step = np.zeros(m, dtype=np.int32)
    smallest = np.full(m, np.inf)
    smallest_step = np.ones(m, dtype=np.int32)
    with np.errstate(all="ignore"):
        for k in range(n):
            p = k + _cabs1(a[:, k:, k]).argmax(axis=1)
            pivot_row = a[rows, p].copy()
            a[rows, p] = a[:, k]
            a[:, k] = pivot_row
            pivot = a[:, k, k]
            size = _cabs1(pivot)
            zero = size == 0
            zero_step[(zero_step == 0) & zero] = k + 1
            better = size < smallest
            smallest[better] = size[better]
            smallest_step[better] = k + 1
            if k + 1 < n:
                # A zero pivot means the whole column below it is zero: skip.
                mult = a[:, k + 1 :, k] / np.where(zero, 1, pivot)[:, None]
                a[:, k + 1 :, k + 1 :] -= mult[:, :, None] * a[:, k, None, k + 1 :]
    return zero_step, smallest_step


# --- structure, rcond and solve (issue 10) ------------------------------------


def _all_finite(x: np.ndarray) -> bool:
    with np.errstate(all="ignore"):
        return bool(np.isfinite(x.sum()))  # cheap; an overflow just takes the exact check


def _split_nonfinite(a: np.ndarray, out: np.ndarray, info: np.ndarray) -> np.ndarray | None:
    """Mark matrices of ``a`` holding NaN or Inf (info -1, ``out`` NaN).

    Returns None when every matrix is finite, else the indices of the finite ones.
    """
    with np.errstate(all="ignore"):
        if np.isfinite(a.sum()):
            return None
    finite = np.isfinite(a).all(axis=(1, 2))
    if finite.all():  # the sum overflowed, the entries are finite
        return None
    info[~finite] = INFO_NONFINITE
    out[~finite] = np.nan
    return np.flatnonzero(finite)


def _on_finite(a: np.ndarray, out: np.ndarray, info: np.ndarray,
               work: Callable[[np.ndarray, np.ndarray, np.ndarray], None]) -> None:
    """Run ``work(a, out, info)`` on the finite matrices of ``a`` only."""
    keep = _split_nonfinite(a, out, info)
    if keep is None:
        work(a, out, info)
        return
    if keep.size == 0:
        return
    sub_out = np.empty((keep.size,) + out.shape[1:], dtype=out.dtype)
    sub_info = np.zeros(keep.size, dtype=np.int32)
    work(a[keep], sub_out, sub_info)
    out[keep] = sub_out
    info[keep] = sub_info


def _invert_structured(a: np.ndarray, out: np.ndarray, info: np.ndarray, structure: str) -> None:
    def work(x: np.ndarray, o: np.ndarray, i: np.ndarray) -> None:
        if structure in ("symmetric", "hermitian"):
            # LU of the mirrored matrix (SciPy uses Bunch-Kaufman sytrf here;
            # NumPy has no batched one): info is the LU code of that matrix,
            # and the inverse is mirrored so that it is exactly symmetric.
            _invert_finite(x, o, i)
            mirror_lower(o, conjugate=structure == "hermitian")
        elif structure == "diagonal":
            diagonal_inverse(x, o, i)
        elif structure in ("upper triangular", "lower triangular"):
            triangular_inverse(x, o, i, lower=structure == "lower triangular")
        elif structure == "positive definite":
            positive_definite_inverse(x, o, i)
        else:
            raise ValueError(f"unknown structure {structure!r}")

    _on_finite(a, out, info, work)


def invert_block_ex(x: np.ndarray, out: np.ndarray, info: np.ndarray, rc: np.ndarray | None,
                    structure: str, lower: bool) -> None:
    """Invert a contiguous block ``x`` (m, n, n) as ``structure`` reads it; rcond into ``rc``."""
    if structure == "positive definite":
        compiled = compiled_for("posdef", x.shape[-1], x.dtype)
        if compiled is not None:  # potrf's info, rcond and the non-finite check inside the kernel
            compiled.invert_posdef(_upper_read(x, lower), out, info, rc,
                                   posdef_method(x.shape[-1], x.dtype))
            return
    if structure == "general":
        compiled = compiled_for("invert", x.shape[-1], x.dtype)
        if compiled is not None:  # rcond inside the kernel, while the matrix is in registers
            compiled.invert(x, out, info, rc, unrolled_for(x.shape[-1], x.dtype))
            return
    if structure == "general" and rc is not None and cpu_route(x.shape[-1]) == "closed_form":
        _invert_closed_form_rcond(x, out, info, rc)
        return
    if structure == "positive definite" and x.shape[-1] <= 4:
        _invert_pos_closed_form(x, out, info, rc, lower)
        return
    if structure == "general" and rc is not None:
        _invert_general_rcond(x, out, info, rc)
        return
    if structure == "general":
        a = x
        invert_block(x, out, info)
    elif structure == "positive definite" and rc is None and x.shape[-1] > 4 and _all_finite(x):
        # The common case, without building the full matrix: the Cholesky
        # gufunc reads only the lower triangle, and above n = 4 nothing else
        # reads the input. The upper triangle is the lower one of x^H.
        source = x if lower else x.swapaxes(1, 2)
        if not lower and x.dtype.kind == "c":
            source = source.conj()
        positive_definite_inverse(source, out, info)
    else:
        a = structured_matrix(x, structure, lower)
        _invert_structured(a, out, info, structure)
    if rc is not None:
        rc[...] = rcond_from_inverse(a, out, info)


def _upper_read(x: np.ndarray, lower: bool) -> np.ndarray:
    """The block whose upper triangle is the triangle that ``lower`` names of
    ``x`` (the conjugate transpose of x for the lower one): the compiled
    positive definite kernels read the upper one."""
    if not lower:
        return x
    t = x.swapaxes(1, 2)
    return np.ascontiguousarray(t.conj() if x.dtype.kind == "c" else t)


_LOCAL = threading.local()


def _thread_scratch(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialized array for this thread's current chunk, reused chunk after chunk.

    A fresh chunk-sized array per chunk came from mmap at large n (one
    matrix of 2 MiB per chunk at n = 512), and its page faults cost 8% of
    inv against 0.3% for the norms themselves (benchmarks/bench_numerics.py,
    rcond, OPENBLAS_NUM_THREADS=1). Each thread keeps the largest it has
    needed: at most one chunk, or one matrix when a matrix is larger.
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    buf = getattr(_LOCAL, "buf", None)
    if buf is None or buf.nbytes < size:
        buf = np.empty(max(size, 1), dtype=np.uint8)
        _LOCAL.buf = buf
    return buf[:size].view(dtype).reshape(shape)


def _one_norms(x: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """``||x||_1`` of every matrix of a block x (m, n, n), |x| written into ``scratch``.

    The same sums and maximum as :func:`gpuinv._numerics.one_norm` (so the
    same bits), with a per-chunk scratch for |x|. Real blocks take the
    compiled one-pass sum where Numba is on (``_compiled.one_norms``, 2-4x
    cheaper at n >= 16); complex ones and every block without Numba take
    NumPy's ``abs`` and ``einsum``.
    """
    if x.dtype.kind == "f" and x.shape[-1] > 0:
        compiled = compiled_kernels()
        if compiled is not None:
            return compiled.one_norms(x)
    np.abs(x, out=scratch)
    return last_axis_max(np.einsum("...ij->...j", scratch))


def _invert_general_rcond(x: np.ndarray, out: np.ndarray, info: np.ndarray,
                          rc: np.ndarray) -> None:
    """invert_block and rcond for the LAPACK route (n > 4), the norms taken while hot.

    ``||A||_1`` is taken before LAPACK runs and ``||X||_1`` right after, on
    the chunk in cache; together they replace invert_block's own checks
    (finite norms mean finite entries, and ``max |x_ij| <= ||X||_1``), so
    the condition check costs two passes over data in cache, not four over
    memory. Anything unusual (non-finite input, a huge or NaN inverse) takes
    the exact route of :func:`invert_block` and
    :func:`gpuinv._numerics.rcond_from_inverse`, so rcond and info are those.
    """
    scratch = _thread_scratch(x.shape, rc.dtype)
    with np.errstate(all="ignore"):
        norm_a = _one_norms(x, scratch)
        if norm_a.max() < np.inf:  # all finite (NaN fails the test too)
            _gufunc(x, out)
            norm_x = _one_norms(out, scratch)
            # _has_huge_entries's bound: below it no repair applies.
            top = np.ldexp(1.0, np.finfo(rc.dtype).maxexp // 4)
            if norm_x.max() <= top:
                np.multiply(norm_a, norm_x, out=norm_x)
                np.divide(1, norm_x, out=rc)
                if not rc.max() < np.inf:  # 1 / a subnormal product: rcond's convention is 0
                    rc[~np.isfinite(rc)] = 0
                return
            _lapack_repair(x, out, info)
            rc[...] = rcond_from_inverse(x, out, info)
            return
    invert_block(x, out, info)
    rc[...] = rcond_from_inverse(x, out, info)


def _invert_closed_form_rcond(x: np.ndarray, out: np.ndarray, info: np.ndarray,
                              rc: np.ndarray) -> None:
    """invert_block for n <= 4 with rcond computed inside the closed forms."""
    keep = _split_nonfinite(x, out, info)
    if keep is not None:
        rc[...] = np.where(info == INFO_NONFINITE, np.nan, 0)
        if keep.size == 0:
            return
        sub_out = np.empty((keep.size,) + out.shape[1:], dtype=out.dtype)
        sub_info = np.zeros(keep.size, dtype=np.int32)
        sub_rc = np.empty(keep.size, dtype=rc.dtype)
        _invert_closed_form_rcond(x[keep], sub_out, sub_info, sub_rc)
        out[keep] = sub_out
        info[keep] = sub_info
        rc[keep] = sub_rc
        return
    redo = closed_form_inverse(x, out, rcond=rc)
    if redo is None:
        return
    idx = np.flatnonzero(redo)
    sub = np.ascontiguousarray(x[idx])
    sub_out = np.empty_like(sub)
    sub_info = np.zeros(idx.size, dtype=np.int32)
    _lapack_inverse(sub, sub_out, sub_info)
    out[idx] = sub_out
    info[idx] = sub_info
    rc[idx] = rcond_from_inverse(sub, sub_out, sub_info)


def _invert_pos_closed_form(x: np.ndarray, out: np.ndarray, info: np.ndarray,
                            rc: np.ndarray | None, lower: bool) -> None:
    """invert_block_ex for positive definite matrices of order n <= 4.

    The closed forms invert and their leading minors give potrf's verdict
    (``closed_form_pos_inverse``), in one pass over the block: no Cholesky,
    and no full matrix built from the triangle read. Matrices the closed
    forms hand back take the general route on the mirrored matrix (potrf
    decides first where a minor is within rounding of zero), so every
    matrix gets the same info, inverse and rcond as the Cholesky route.
    """
    with np.errstate(all="ignore"):
        finite = None if np.isfinite(x.sum()) else np.isfinite(
            structured_matrix(x, "positive definite", lower)).all(axis=(1, 2))
    if finite is not None and not finite.all():
        info[~finite] = INFO_NONFINITE
        out[~finite] = np.nan
        if rc is not None:
            rc[~finite] = np.nan
        keep = np.flatnonzero(finite)
        if keep.size:
            sub_out = np.empty((keep.size,) + out.shape[1:], dtype=out.dtype)
            sub_info = np.zeros(keep.size, dtype=np.int32)
            sub_rc = None if rc is None else np.empty(keep.size, dtype=rc.dtype)
            _invert_pos_closed_form(np.ascontiguousarray(x[keep]), sub_out, sub_info, sub_rc, lower)
            out[keep] = sub_out
            info[keep] = sub_info
            if rc is not None:
                rc[keep] = sub_rc
        return
    inverse, ok, code, sure = closed_form_pos_inverse(x, lower, rcond=rc)
    out[...] = inverse
    if code is None and ok.all():  # all clearly positive definite, all inverted
        return
    if code is not None:
        info[...] = code
    if sure is not None and not sure.all():
        unsure = np.flatnonzero(~sure)
        info[unsure] = small_potrf_info(structured_matrix(x[unsure], "positive definite", lower))
    failed = info != 0
    redo = ~ok & ~failed
    if failed.any():
        out[failed] = np.nan
        if rc is not None:
            rc[failed] = 0
    if redo.any():
        idx = np.flatnonzero(redo)
        full = np.ascontiguousarray(structured_matrix(x[idx], "positive definite", lower))
        sub_out = np.empty_like(full)
        sub_info = np.zeros(idx.size, dtype=np.int32)
        # Cholesky, not LU: an LU inverse mirrored into a Hermitian one is
        # not backward stable (cholesky_inverse).
        cholesky_inverse(full, sub_out, sub_info)
        out[idx] = sub_out
        info[idx] = sub_info  # the factorization's verdict, where rounding decides
        if rc is not None:
            rc[idx] = rcond_from_inverse(full, sub_out, sub_info)


def _general_solve(a: np.ndarray, b: np.ndarray, y: np.ndarray, info: np.ndarray) -> None:
    """LAPACK gesv per matrix (NumPy's gufunc), with LU info codes for the failures.

    With the compiled kernels, their LU with partial pivoting instead.
    Without them, n <= SOLVE_MAX_N took the closed forms first; they are
    not backward stable (issue 19 item 3: 7.7e10 eps at n = 2, cond 1e12),
    so every n now takes gesv (CLOSED_FORM_SOLVE stays off).
    """
    compiled = compiled_for("solve", a.shape[-1], a.dtype)
    if compiled is not None:
        compiled.solve(np.ascontiguousarray(a), np.ascontiguousarray(b), y, info,
                       unrolled_for(a.shape[-1], a.dtype))
        return
    if CLOSED_FORM_SOLVE and a.shape[-1] <= SOLVE_MAX_N:
        redo = closed_form_solve(a, b, y)
        if redo is None:
            return
        idx = np.flatnonzero(redo)
        sub_y = np.empty((idx.size,) + y.shape[1:], dtype=y.dtype)
        sub_info = np.zeros(idx.size, dtype=np.int32)
        _lapack_solve(np.ascontiguousarray(a[idx]), np.ascontiguousarray(b[idx]), sub_y, sub_info)
        y[idx] = sub_y
        info[idx] = sub_info
        return
    _lapack_solve(a, b, y, info)


def _has_tiny_entries(x: np.ndarray) -> bool:
    real = x.view(x.real.dtype) if x.dtype.kind == "c" else x
    size = np.abs(real)
    threshold = np.ldexp(1.0, -(np.finfo(real.dtype).maxexp // 2))
    return bool(((size < threshold) & (size > 0)).any())


def _lapack_solve(a: np.ndarray, b: np.ndarray, y: np.ndarray, info: np.ndarray) -> None:
    # Matrices of tiny entries are scaled by a power of two first (exact):
    # OpenBLAS's getrf loses all accuracy on subnormals (see
    # _tiny_matrix_scales); a x = b is (s a) x = s b. An invertible matrix
    # of tiny entries has a first row with an entry in (0, 2**-(maxexp/2)),
    # so that row alone is tested first: 1/n of the data (the per-matrix
    # maxima of every entry cost 25% of gesv at n = 8).
    scales = _tiny_matrix_scales(a) if _has_tiny_entries(a[:, 0, :]) else None
    if scales is not None:
        idx, s = scales
        a = a.copy()
        b = b.copy()
        with np.errstate(all="ignore"):
            a[idx] *= s[:, None, None]
            b[idx] *= s[:, None, None]
    _lapack_solve_scaled(a, b, y, info)


def _lapack_solve_scaled(a: np.ndarray, b: np.ndarray, y: np.ndarray, info: np.ndarray) -> None:
    with np.errstate(all="ignore"):
        if _gufunc_solve is not None:
            _gufunc_solve(a, b, signature=_SIGNATURES[a.dtype][0] * 2 + "->" + _SIGNATURES[a.dtype][0],
                          out=y)
        else:  # pragma: no cover - only if NumPy moves its gufunc
            for i in range(len(a)):
                try:
                    y[i] = np.linalg.solve(a[i], b[i])
                except np.linalg.LinAlgError:
                    y[i] = np.nan
        if np.isfinite(y.sum()):
            return
    bad = np.flatnonzero(~np.isfinite(y).all(axis=(1, 2)))
    zero_step, smallest_step = lu_pivot_info(a[bad])
    # gesv fills a solution with NaN when getrf met a zero pivot; NaN in b
    # alone gives NaN too, so only a finite b makes an all-NaN y a failure.
    lapack_failed = np.isnan(y[bad]).all(axis=(1, 2)) & np.isfinite(b[bad]).all(axis=(1, 2))
    code = np.where(zero_step > 0, zero_step, np.where(lapack_failed, smallest_step, 0))
    info[bad] = code
    y[bad[code > 0]] = np.nan


def solve_block(a: np.ndarray, b: np.ndarray, y: np.ndarray, info: np.ndarray,
                rc: np.ndarray | None, structure: str, lower: bool) -> None:
    """Solve ``a @ y = b`` for a contiguous block (m, n, n), b (m, n, k).

    Only ``a`` decides ``info`` (NaN or Inf in ``b`` just propagates into y).
    ``rc`` (when given) needs the inverse as well, which costs an extra
    inversion: exact rcond is defined from it.
    """
    original = a
    if structure == "positive definite":
        compiled = compiled_for("posdef-solve", a.shape[-1], a.dtype)
        if compiled is not None:  # potrf's info and the non-finite check inside the kernel
            compiled.solve_posdef(_upper_read(a, lower), b, y, info, posdef_method(a.shape[-1], a.dtype))
            if rc is not None:
                _solve_rcond(original, a, info, rc, structure, lower)
            return
    if structure != "general":
        a = structured_matrix(a, structure, lower)
    compiled = (compiled_for("solve", a.shape[-1], a.dtype)
                if structure in ("general", "symmetric", "hermitian") else None)
    if compiled is not None:
        # Non-finite matrices get info -1 and NaN inside the kernel: no split.
        compiled.solve(np.ascontiguousarray(a), b, y, info, unrolled_for(a.shape[-1], a.dtype))
        if rc is not None:
            _solve_rcond(original, a, info, rc, structure, lower)
        return

    def work(x: np.ndarray, o: np.ndarray, i: np.ndarray) -> None:
        rows = b if len(x) == len(b) else b[keep_rows[0]]
        if structure in ("general", "symmetric", "hermitian"):
            _general_solve(x, rows, o, i)
        elif structure == "diagonal":
            d = np.diagonal(x, axis1=1, axis2=2)
            i[...] = np.where((d == 0).any(axis=1), (d == 0).argmax(axis=1) + 1, 0)
            with np.errstate(all="ignore"):
                o[...] = rows / d[:, :, None]
            o[i > 0] = np.nan
        elif structure in ("upper triangular", "lower triangular"):
            d = np.diagonal(x, axis1=1, axis2=2)
            i[...] = np.where((d == 0).any(axis=1), (d == 0).argmax(axis=1) + 1, 0)
            o[...] = triangular_solve(x, rows, lower=structure == "lower triangular")
            o[i > 0] = np.nan
        elif structure == "positive definite":
            o[...], i[...] = positive_definite_solve(x, rows)
        else:
            raise ValueError(f"unknown structure {structure!r}")

    keep_rows: list[Any] = [slice(None)]
    keep = _split_nonfinite(a, y, info)
    if keep is None:
        work(a, y, info)
    elif keep.size:
        keep_rows[0] = keep
        sub_y = np.empty((keep.size,) + y.shape[1:], dtype=y.dtype)
        sub_info = np.zeros(keep.size, dtype=np.int32)
        work(a[keep], sub_y, sub_info)
        y[keep] = sub_y
        info[keep] = sub_info
    if rc is not None:
        _solve_rcond(original, a, info, rc, structure, lower)


def _solve_rcond(original: np.ndarray, a: np.ndarray, info: np.ndarray, rc: np.ndarray,
                 structure: str, lower: bool) -> None:
    # The same code as inv_ex(rcond=True), so that both give the same rcond.
    inverse = np.empty_like(a)
    inv_info = np.zeros(len(a), dtype=np.int32)
    invert_block_ex(original, inverse, inv_info, rc, structure, lower)
    # A matrix solve found singular (or inv did, by a different rounding)
    # gets rcond 0, as info says.
    rc[(info > 0) | (inv_info > 0)] = 0


def warm_up(dtypes: Iterable[Any] = (np.float32, np.float64, np.complex64, np.complex128),
            ns: Iterable[int] | None = None,
            kinds: Iterable[str] = ("invert", "solve", "posdef", "posdef-solve")
            ) -> dict[tuple[str, int, str], float]:
    """Compile the CPU engine's Numba kernels ahead of the first call.

    Each kernel is compiled once per (kind, n, dtype), on its first call, and
    cached on disk (Numba's ``cache=True``), so only a process that finds no
    cache pays the compile: about 1-2 s per kernel (docs/cpu-compiled.md).
    Call this at start-up to move that cost out of the first timed call.

    Parameters
    ----------
    dtypes : iterable of dtype-like, optional
        Compute dtypes (float32, float64, complex64, complex128); all four
        by default.
    ns : iterable of int, optional
        Matrix orders; by default every order the compiled route takes.
    kinds : iterable of str, optional
        ``"invert"`` (``inv``, ``inv_ex``, rcond included), ``"solve"``, and
        for ``assume_a="positive definite"`` ``"posdef"`` and ``"posdef-solve"``.

    Returns
    -------
    dict
        Seconds per ``(kind, n, dtype name)``, for the kernels the compiled
        route takes; empty when it is off (Numba not installed, or
        ``gpuinv.config.cpu_compiled`` False).

    Examples
    --------
    >>> from gpuinv.engines.cpu import warm_up
    >>> took = warm_up(["float64"], [5, 8])  # doctest: +SKIP
    """
    compiled = compiled_kernels()
    if compiled is None:
        return {}
    took: dict[tuple[str, int, str], float] = {}
    top = max(*COMPILED_INV_MAX_N.values(), *COMPILED_SOLVE_MAX_N.values())
    orders = list(range(1, top + 1)) if ns is None else list(ns)
    for kind in kinds:
        if kind not in ("invert", "solve", "posdef", "posdef-solve"):
            raise ValueError(f"kinds must hold 'invert', 'solve', 'posdef' or 'posdef-solve', got {kind!r}")
        for dt in dtypes:
            wanted = [n for n in orders if compiled_for(kind, n, dt) is not None]
            took.update(compiled.warm_up([dt], wanted, kinds=(kind,), unrolled=unrolled_for,
                                         posdef=posdef_method))
    return took
