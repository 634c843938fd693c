"""Compiled per-matrix LU kernels for the CPU engine (Numba, optional).

Imported only when the CPU engine takes the compiled route (see
``gpuinv.engines.cpu.compiled_kernels``): ``import gpuinv`` never imports
Numba. Without Numba, or with ``gpuinv.config.cpu_compiled = False``
(``GPUINV_CPU_COMPILED=0``), the engine uses its NumPy/LAPACK route.

Why: LAPACK through NumPy's gufunc costs a microsecond or more of call
overhead per matrix, more than the arithmetic of a 5x5 or 8x8 inverse
(issue 19). A compiled loop over the batch removes it.

Algorithm, per matrix, the one of our CUDA kernels (gpuinv/kernels/inverse.cuh):

* one pass over the input checks that every entry is finite (else info -1
  and an all-NaN result), takes the largest |re|, |im| and, when rcond is
  asked for, the column sums of ``|a|`` (``||a||_1``, before anything
  overwrites the matrix);
* a matrix whose largest entry lies outside ``[2**-(maxexp/2), 2**(maxexp/2)]``
  is scaled by a power of two first (exact): ``inv(a) = s inv(s a)``,
  ``a y = b`` is ``(s a) y = s b``, as the LAPACK route does for tiny
  matrices (OpenBLAS loses all accuracy on subnormals) and so that the
  reciprocal of a huge pivot stays normal;
* LU with partial pivoting with getf2's rule and arithmetic: the pivot is
  the first entry of largest ``|re| + |im|`` on or below the diagonal,
  multipliers are ``a_ik * (1 / pivot)``. The first exactly zero pivot
  stops the matrix: info is its 1-based step and the result is all NaN,
  as on the LAPACK route;
* the inverse: the forward substitution ``L^-1 P`` applied to the identity
  as the elimination goes, then back substitution (``X = U^-1 L^-1 P``);
  the solve: the same elimination applied to b, then back substitution.
  ``||X||_1`` is summed as X is written. An inverse that overflows keeps
  info 0, as LAPACK's does, and gets rcond 0. rcond is a compile-time
  constant: "invert" has no rcond code at all, "invert-rcond" takes the
  norms and leaves the reciprocals to one loop at the end of the block.

For Hermitian positive definite matrices (``assume_a="positive
definite"``) the same kernels run without pivoting (``posdef=True``: on
such a matrix the pivot of step k is potrf's squared, so its sign gives
potrf's info), and :func:`_make_chol` is a Cholesky inverse and solve, the
faster for complex types from n = 12 (:func:`invert_posdef`,
:func:`solve_posdef`; docs/cpu-compiled.md, "Positive definite").

:func:`one_norms` serves the LAPACK route: the column sums of ``|x|`` per
matrix of a real block in one pass, the bits of NumPy's.

Kernels are built per (function, n, dtype) by :func:`kernel`, with n and the
dtype's constants frozen into the closure so that LLVM unrolls the short
loops, and cached on disk (``cache=True``: a later process loads them in
milliseconds). ``nogil=True``: the engine runs one call per chunk on its own
thread pool, so the batch is split across threads without Numba's threading
layer and without nesting it inside our pool.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from functools import cache, lru_cache
from typing import Any

import numba
import numpy as np

__all__ = ["kernel", "invert", "invert_posdef", "solve", "solve_posdef", "one_norms", "warm_up", "MAX_N"]

#: The largest order the routes send to the loop kernel (any n works; cpu_routes decides).
MAX_N = 384


def _jit(**options: Any) -> Any:
    """``numba.njit(cache=True, **options)``, without the disk cache where Numba has none.

    Numba raises at decoration time when neither the package's
    ``__pycache__`` nor a user-wide cache directory is writable (a read-only
    install without a home directory): the kernels then compile per process.
    """
    def decorate(fn: Any) -> Any:
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:
            return numba.njit(cache=False, **options)(fn)
    return decorate


@_jit(inline="always")
def _modulus(v, lo, hi):  # pragma: no cover - compiled
    """|v| for complex v: sqrt(re^2 + im^2) where that cannot over- or underflow.

    Numba's abs(complex) calls hypot, which made rcond cost 3.5x the whole
    complex128 inverse at n = 4 (/tmp bench in the issue 19 report).
    """
    re = abs(v.real)
    im = abs(v.imag)
    big = max(re, im)
    if big > lo and big < hi:
        return np.sqrt(re * re + im * im)
    return abs(v)


@_jit(inline="always")
def _pivot_row(a, k, n, complex_):  # pragma: no cover - compiled
    """getf2's pivot for column k: the first row from k down with the largest
    ``|re| + |im|`` (``|a|`` for real), and that key. Inlined into both kernels."""
    p = k
    piv = a[k, k]
    best = abs(piv.real) + abs(piv.imag) if complex_ else abs(piv)
    for i in range(k + 1, n):
        w = a[i, k]
        key = abs(w.real) + abs(w.imag) if complex_ else abs(w)
        if key > best:
            best = key
            p = i
    return p, best


@_jit(inline="always")
def _step(a, k, n, first, last, posdef, complex_, one, rzero, rone):  # pragma: no cover - compiled
    """Step k's pivot: ``(nonzero, p, 1 / pivot)``, rows k and p of ``a``
    (columns first..last - 1) interchanged.

    LU (getf2's rule, :func:`_pivot_row`): nonzero unless the column is
    exactly zero. ``posdef``, a Hermitian matrix without pivoting (p = k):
    the pivot d is potrf's squared (leading minors k over k - 1; potrf stops
    where it is not positive or is NaN), and row k is scaled by 1 / sqrt(d),
    which returns as the reciprocal. The scaling makes the step Cholesky's:
    R (potrf's factor) in the upper part, R^-H built in the lower one, both
    as well scaled as A. Unit-diagonal elimination has multipliers up to
    sqrt(cond): its inverse lost up to cond * eps (1e5 eps at cond 1e8).
    """
    if posdef:
        d = a[k, k].real
        if not (d > rzero):
            return False, k, one
        inv = one * (rone / np.sqrt(d))
        for j in range(first, last):
            a[k, j] = a[k, j] * inv
        return True, k, inv
    p, best = _pivot_row(a, k, n, complex_)
    if best == rzero:
        return False, p, one
    if p != k:
        for j in range(first, last):
            t = a[k, j]
            a[k, j] = a[p, j]
            a[p, j] = t
    return True, p, one / a[k, k]


@_jit(inline="always")
def _load_hermitian(x, b, a, n, complex_, rzero):  # pragma: no cover - compiled
    """The upper triangle of x[b] into the full Hermitian ``a`` (n, n), mirrored
    (conjugated); a complex diagonal's imaginary part is not read (potrf).
    Returns whether every entry read is finite, and the largest |re|, |im|."""
    finite = True
    big = rzero
    for i in range(n):
        re = abs(x[b, i, i].real)
        a[i, i] = x[b, i, i].real
        if not (re - re == rzero):
            finite = False
        big = max(big, re)
        for j in range(i + 1, n):
            v = x[b, i, j]
            a[i, j] = v
            a[j, i] = v.conjugate() if complex_ else v
            re = abs(v.real)
            im = abs(v.imag) if complex_ else rzero
            if not (re - re == rzero and im - im == rzero):
                finite = False
            big = max(big, re, im)
    return finite, big


@_jit(inline="always")
def _one_norm(m, colsum, complex_, rzero, lo, hi, safe_lo, safe_hi):  # pragma: no cover - compiled
    """||m||_1 of a square array m (n, n), its rows added in order (the
    kernels' rule: a complex modulus as sqrt(re^2 + im^2), summed again with
    _modulus where the norm lies outside [safe_lo, safe_hi])."""
    n = m.shape[0]
    for j in range(n):
        colsum[j] = rzero
    for i in range(n):
        for j in range(n):
            v = m[i, j]
            if complex_:
                colsum[j] += np.sqrt(v.real * v.real + v.imag * v.imag)
            else:
                colsum[j] += abs(v)
    norm = rzero
    for j in range(n):
        norm = max(norm, colsum[j])
    if complex_ and not (norm >= safe_lo and norm <= safe_hi):
        norm = _careful_norm(m, colsum, rzero, lo, hi)
    return norm


@_jit(inline="always")
def _careful_norm(m, colsum, rzero, lo, hi):  # pragma: no cover - compiled
    """||m||_1 of a complex square array with _modulus: the kernels' fallback
    where the branch-free sqrt(re^2 + im^2) could over- or underflow."""
    n = m.shape[0]
    for j in range(n):
        colsum[j] = rzero
    for i in range(n):
        for j in range(n):
            colsum[j] += _modulus(m[i, j], lo, hi)
    norm = rzero
    for j in range(n):
        norm = max(norm, colsum[j])
    return norm


@_jit(inline="always")
def _rcond_reciprocals(rc, info, lo, hi, rzero, rone):  # pragma: no cover - compiled
    """rc[b] held ||A||_1 ||X||_1: its reciprocal where info is 0; an overflowed
    inverse (Inf or NaN norm) gets 0, as rcond_from_inverse."""
    for b in range(lo, hi):
        if info[b] == 0:
            r = rone / rc[b]
            rc[b] = r if r - r == rzero else rzero


def _real_type(dtype: np.dtype) -> Any:
    return np.dtype(dtype).type(0).real.dtype.type


#: Kernels may be specialized (n frozen in, loops unrolled) up to this order;
#: above it one kernel per dtype reads n at run time. Each specialization
#: costs a compile of 1-2 s (once per machine, then Numba's disk cache). With
#: the branch-free contiguous inner loops the run-time-n kernel is as fast:
#: specialized / run-time-n speed 1.17, 1.01, 0.84, 0.74 at n = 4, 5, 6, 8
#: (float64), 1.02-0.79 (float32), 1.10-1.16 (complex128)
#: (benchmarks/bench_compiled.py specialize), so none is specialized: one
#: compile per (kind, dtype).
SPECIALIZE_MAX_N = {"invert": 0, "solve": 0, "chol": 0, "chol-solve": 0}


def kernel(name: str, n: int, dtype: Any) -> Any:
    """The compiled ``name`` for order ``n`` and ``dtype``.

    ``name`` is "invert" (``block(x, out, info, rc, lo, hi)``, rc unused),
    "invert-rcond" (the same, rcond per matrix into ``rc``), "solve"
    (``run(x, rhs, y, info)``), their variants for Hermitian positive
    definite matrices without pivoting, "posdef", "posdef-rcond" and
    "posdef-solve", or the Cholesky kernels "chol", "chol-rcond" and
    "chol-solve" (``block(x, rhs, out, info, rc, lo, hi)``). Compiled on
    first use (or loaded from Numba's disk cache); orders above
    ``SPECIALIZE_MAX_N`` share the run-time-n kernel.
    """
    base = {"invert-rcond": "invert", "chol-rcond": "chol", "posdef": "invert",
            "posdef-rcond": "invert", "posdef-solve": "solve"}.get(name, name)
    if base not in SPECIALIZE_MAX_N:
        raise ValueError(f"unknown compiled kernel {name!r}")
    return _kernel(name, n if n <= SPECIALIZE_MAX_N[base] else 0, np.dtype(dtype))


@lru_cache(maxsize=None)
def _kernel(name: str, n: int, dtype: np.dtype) -> Any:
    if name == "invert":
        return _make_invert(n, dtype)
    if name == "invert-rcond":
        return _make_invert(n, dtype, rcond=True)
    if name == "invert-prange":
        return _make_invert(n, dtype, parallel=True, rcond=True)
    if name == "posdef-solve":
        return _make_solve(n, dtype, posdef=True)
    if name == "posdef":
        return _make_invert(n, dtype, posdef=True)
    if name == "posdef-rcond":
        return _make_invert(n, dtype, rcond=True, posdef=True)
    if name == "chol":
        return _make_chol(n, dtype, "inverse")
    if name == "chol-rcond":
        return _make_chol(n, dtype, "inverse-rcond")
    if name == "chol-solve":
        return _make_chol(n, dtype, "solve")
    return _make_solve(n, dtype)


def _constants(n: int, dtype: np.dtype) -> tuple[Any, ...]:
    t = dtype.type
    rt = _real_type(dtype)
    maxexp = np.finfo(rt).maxexp
    return (t(1), t(0), t(np.nan), rt(0), rt(1), rt(np.nan),
            rt(np.ldexp(1.0, -(maxexp // 2))), rt(np.ldexp(1.0, maxexp // 2)), maxexp - 4)


def _make_invert(n: int, dtype: np.dtype, parallel: bool = False, rcond: bool = False,
                 posdef: bool = False) -> Any:
    ONE, ZERO, NAN, RZERO, RONE, RNAN, LO, HI, LIMIT = _constants(n, dtype)
    NFIX = n  # 0: the order is read from the array at run time
    COMPLEX = dtype.kind == "c"
    RT = _real_type(dtype)
    # rcond is frozen into the kernel, not a run-time flag: the kernel
    # without it carries no branch in its loops (check_cond=False 1-3% faster
    # at n = 5..16 than with the run-time flag; /tmp bench in the issue 19
    # perf19 report, docs/cpu-compiled.md).
    RC = rcond
    PD = posdef
    # A complex modulus is summed as sqrt(re^2 + im^2), branch-free (5-10%
    # of the complex inverse cheaper than _modulus at n = 5..16); a norm in
    # [SAFE_LO, SAFE_HI] proves that no square over- or underflowed enough
    # to matter: every |re|, |im| <= the norm keeps re^2 + im^2 finite, and an
    # underflowed square errs by at most sqrt(smallest subnormal), far below
    # eps * SAFE_LO. Any other norm is summed again with _modulus.
    SAFE_LO = RT(np.ldexp(1.0, -(np.finfo(RT).maxexp // 4)))
    SAFE_HI = RT(np.ldexp(1.0, np.finfo(RT).maxexp // 2 - 1))

    @_jit(nogil=True, error_model="numpy", boundscheck=False)
    def block(x, out, info, rc, lo, hi):  # pragma: no cover - compiled
        N = NFIX if NFIX > 0 else x.shape[1]
        a = np.empty((N, N), dtype=x.dtype)
        col = np.empty(N, dtype=np.int64)
        u = np.empty(N, dtype=x.dtype)
        colsum = np.empty(N, dtype=RT)
        for b in range(lo, hi):
            # Load, check, largest entry and the column sums of |a|, in one pass.
            finite = True
            big = RZERO
            if RC:
                for j in range(N):
                    colsum[j] = RZERO
            if PD:
                finite, big = _load_hermitian(x, b, a, N, COMPLEX, RZERO)
            else:
                for i in range(N):
                    for j in range(N):
                        v = x[b, i, j]
                        a[i, j] = v
                        re = abs(v.real)
                        if COMPLEX:
                            im = abs(v.imag)
                            if not (re - re == RZERO and im - im == RZERO):
                                finite = False
                            big = max(big, re, im)
                            if RC:
                                colsum[j] += np.sqrt(re * re + im * im)
                        else:
                            if not (re - re == RZERO):
                                finite = False
                            big = max(big, re)
                            if RC:
                                colsum[j] += re
            if not finite:
                info[b] = -1
                for i in range(N):
                    for j in range(N):
                        out[b, i, j] = NAN
                if RC:
                    rc[b] = RNAN
                continue
            norm_a = RZERO
            if RC and PD:
                norm_a = _one_norm(a, colsum, COMPLEX, RZERO, LO, HI, SAFE_LO, SAFE_HI)
            elif RC:
                for j in range(N):
                    norm_a = max(norm_a, colsum[j])
                if COMPLEX and not (norm_a >= SAFE_LO and norm_a <= SAFE_HI):
                    norm_a = _careful_norm(x[b], colsum, RZERO, LO, HI)
            s = RONE
            if big > RZERO and (big < LO or big > HI):
                e = math.frexp(big)[1]
                e = min(max(e, -LIMIT), LIMIT)
                s = RT(math.ldexp(1.0, -e))
                for i in range(N):
                    for j in range(N):
                        a[i, j] = a[i, j] * s
            # LU with partial pivoting, L^-1 P I built in place (inverse.cuh).
            code = 0
            for i in range(N):
                col[i] = i
            for k in range(N):
                nonzero, p, inv = _step(a, k, N, 0, N, PD, COMPLEX, ONE, RZERO, RONE)
                if not nonzero:
                    code = k + 1
                    break
                if p != k:
                    tc = col[k]
                    col[k] = col[p]
                    col[p] = tc
                # One branch-free contiguous loop over the whole row (j < k:
                # L^-1 P so far; j > k: the active part), which LLVM
                # vectorizes; column k gets a value nobody reads, then -l
                # (positive definite: -l / r_kk, R^-H's entry).
                for i in range(k + 1, N):
                    l = a[i, k] * inv
                    for j in range(N):
                        a[i, j] = a[i, j] - l * a[k, j]
                    # +0, not -0, where l is 0 (as LAPACK prints)
                    a[i, k] = ZERO - (l * inv if PD else l)
                a[k, k] = inv
            info[b] = code
            if code != 0:
                for i in range(N):
                    for j in range(N):
                        out[b, i, j] = NAN
                if RC:
                    rc[b] = RZERO
                continue
            # Back substitution, bottom row first: X = U^-1 (L^-1 P), row k
            # as y_k - sum_{j>k} u_kj x_j (increasing j, as inverse.cuh),
            # times 1 / u_kk: whole-row updates, contiguous and vectorized.
            for k in range(N - 1, -1, -1):
                for j in range(k + 1, N):
                    u[j] = a[k, j]
                    a[k, j] = ZERO
                inv_ukk = a[k, k]
                # The diagonal of L^-1 P (1), or of R^-H (1 / r_kk).
                a[k, k] = inv_ukk if PD else ONE
                # Four rows j per pass over row k: each a[k, c] gets the same
                # subtractions in the same order (the same bits) with a
                # quarter of the loads and stores of row k (the inverse 5-8%
                # faster at n = 12..64, float64, one thread).
                j = k + 1
                while j + 3 < N:
                    u0 = u[j]
                    u1 = u[j + 1]
                    u2 = u[j + 2]
                    u3 = u[j + 3]
                    for c in range(N):
                        a[k, c] = (((a[k, c] - u0 * a[j, c]) - u1 * a[j + 1, c])
                                   - u2 * a[j + 2, c]) - u3 * a[j + 3, c]
                    j += 4
                while j < N:
                    uj = u[j]
                    for c in range(N):
                        a[k, c] = a[k, c] - uj * a[j, c]
                    j += 1
                for c in range(N):
                    a[k, c] = a[k, c] * inv_ukk
            # Store with the column permutation and the scale, the column
            # sums of |X| (unscaled; the permutation only reorders them) on
            # the way.
            if RC:
                for c in range(N):
                    colsum[c] = RZERO
            if PD:  # the lower triangle, mirrored: exactly Hermitian
                for i in range(N):
                    a[i, i] = a[i, i].real + ZERO
                    for c in range(i + 1, N):
                        a[i, c] = a[c, i].conjugate() if COMPLEX else a[c, i]
            for i in range(N):
                for c in range(N):
                    v = a[i, c]
                    out[b, i, col[c]] = v * s
                    if RC:
                        if COMPLEX:
                            colsum[c] += np.sqrt(v.real * v.real + v.imag * v.imag)
                        else:
                            colsum[c] += abs(v)
            if RC:
                norm_x = RZERO
                for c in range(N):
                    norm_x = max(norm_x, colsum[c])
                if COMPLEX and not (norm_x >= SAFE_LO and norm_x <= SAFE_HI):
                    norm_x = _careful_norm(a, colsum, RZERO, LO, HI)
                # ||X||_1 = s ||a||_1, s a power of two. The product waits in
                # rc for the reciprocal below (1-2% cheaper than dividing here).
                rc[b] = norm_a * (norm_x * s)
        if RC:
            _rcond_reciprocals(rc, info, lo, hi, RZERO, RONE)

    if parallel:
        # Measurement only (benchmarks/bench_compiled.py threads): Numba's
        # prange over `parts` slices, against the engine's own thread pool.
        @numba.njit(nogil=True, parallel=True, error_model="numpy")
        def prange_run(x, out, info, rc, parts):  # pragma: no cover - compiled
            m = x.shape[0]
            for t in numba.prange(parts):
                block(x, out, info, rc, t * m // parts, (t + 1) * m // parts)

        return prange_run

    # The kernel itself, with its range of matrices (lo, hi) as arguments: a
    # wrapper calling it would hold it in its closure, and Numba's cache key
    # for such a wrapper changes from process to process (it never hits).
    return block


def _make_solve(n: int, dtype: np.dtype, posdef: bool = False) -> Any:
    ONE, ZERO, NAN, RZERO, RONE, RNAN, LO, HI, LIMIT = _constants(n, dtype)
    NFIX = n  # 0: the order is read from the array at run time
    COMPLEX = dtype.kind == "c"
    RT = _real_type(dtype)
    PD = posdef  # as in _make_invert: the upper triangle mirrored, Cholesky's steps, potrf's info

    @_jit(nogil=True, error_model="numpy", boundscheck=False)
    def run(x, rhs, y, info):  # pragma: no cover - compiled
        m = x.shape[0]
        N = NFIX if NFIX > 0 else x.shape[1]
        K = rhs.shape[2]
        # The augmented matrix [A | B]: one contiguous row update of length
        # N - k + K per eliminated entry instead of two loops.
        a = np.empty((N, N + K), dtype=x.dtype)
        for b in range(m):
            finite = True
            big = RZERO
            if PD:
                finite, big = _load_hermitian(x, b, a, N, COMPLEX, RZERO)
            else:
                for i in range(N):
                    for j in range(N):
                        v = x[b, i, j]
                        a[i, j] = v
                        re = abs(v.real)
                        if COMPLEX:
                            im = abs(v.imag)
                            if not (re - re == RZERO and im - im == RZERO):
                                finite = False
                            big = max(big, re, im)
                        else:
                            if not (re - re == RZERO):
                                finite = False
                            big = max(big, re)
            if not finite:
                info[b] = -1
                for i in range(N):
                    for c in range(K):
                        y[b, i, c] = NAN
                continue
            s = RONE
            if big > RZERO and (big < LO or big > HI):
                e = math.frexp(big)[1]
                e = min(max(e, -LIMIT), LIMIT)
                s = RT(math.ldexp(1.0, -e))
                for i in range(N):
                    for j in range(N):
                        a[i, j] = a[i, j] * s
            for i in range(N):
                for c in range(K):
                    a[i, N + c] = rhs[b, i, c] * s
            code = 0
            for k in range(N):
                # Columns k.. of [A | B] (those < k are never read again).
                nonzero, p, inv = _step(a, k, N, k, N + K, PD, COMPLEX, ONE, RZERO, RONE)
                if not nonzero:
                    code = k + 1
                    break
                # The whole row in one loop (columns <= k get values nobody
                # reads again): twice the multiply-adds on A's part, but one
                # long loop that LLVM vectorizes, against a short unaligned
                # one: 1.3-1.6x the solve at n = 12..32 (float64, one thread).
                # Two rows per pass share the loads of row k and the loop's
                # set-up (each element: the same operation, the same bits).
                i = k + 1
                while i + 1 < N:
                    l0 = a[i, k] * inv
                    l1 = a[i + 1, k] * inv
                    for j in range(N + K):
                        akj = a[k, j]
                        a[i, j] = a[i, j] - l0 * akj
                        a[i + 1, j] = a[i + 1, j] - l1 * akj
                    i += 2
                if i < N:
                    l = a[i, k] * inv
                    for j in range(N + K):
                        a[i, j] = a[i, j] - l * a[k, j]
                a[k, k] = inv
            info[b] = code
            if code != 0:
                for i in range(N):
                    for c in range(K):
                        y[b, i, c] = NAN
                continue
            for k in range(N - 1, -1, -1):
                inv_ukk = a[k, k]
                for c in range(N, N + K):
                    t = a[k, c]
                    for j in range(k + 1, N):
                        t = t - a[k, j] * a[j, c]
                    t = t * inv_ukk
                    a[k, c] = t
                    y[b, k, c - N] = t

    return run


def _make_chol(n: int, dtype: np.dtype, mode: str) -> Any:
    """The Cholesky kernels for Hermitian positive definite matrices.

    ``mode``: "inverse", "inverse-rcond" or "solve", one body whose other
    parts are compiled out (frozen constants). Per matrix:

    * the upper triangle of A is read (a complex diagonal's imaginary part
      is not, as ``potrf``), checked finite (else info
      -1, all NaN, rcond NaN) and scaled by a power of two as the LU kernel
      (``inv(a) = s inv(s a)``, ``(s a) y = s b``);
    * ``A = U^H U``, right-looking by rows (``potrf``'s info: k when the
      pivot of step k is not positive or is NaN; then all NaN, rcond 0);
    * the inverse: ``Z = U^-H`` (lower triangular) by forward substitution,
      then the upper triangle of ``X = Z^H Z`` as a sum of rank-one updates,
      mirrored (conjugated) into the lower one, so X is exactly Hermitian
      with a real diagonal: n^3 / 2 multiply-adds in all, against n^3 for
      the LU inverse; rcond from the 1-norms of the full A and X;
    * the solve: ``U^H t = b``, then ``U y = t``.

    Every inner loop runs along a row, contiguous. n^3 / 2 multiply-adds
    against n^3 for elimination (the ``posdef`` variant of the LU kernels),
    but in triangular loops: for complex types, where the arithmetic
    dominates, it is the faster from n = 12 (cpu_routes.POSDEF_CHOLESKY_MIN_N);
    for real ones elimination's whole-row loops vectorize better and win at
    every n (benchmarks/bench_compiled.py posdef).
    """
    ONE, ZERO, NAN, RZERO, RONE, RNAN, LO, HI, LIMIT = _constants(n, dtype)
    NFIX = n  # 0: the order is read from the array at run time
    COMPLEX = dtype.kind == "c"
    RT = _real_type(dtype)
    SOLVE = mode == "solve"
    RC = mode == "inverse-rcond"
    SAFE_LO = RT(np.ldexp(1.0, -(np.finfo(RT).maxexp // 4)))
    SAFE_HI = RT(np.ldexp(1.0, np.finfo(RT).maxexp // 2 - 1))

    @_jit(nogil=True, error_model="numpy", boundscheck=False)
    def block(x, rhs, out, info, rc, lo, hi):  # pragma: no cover - compiled
        N = NFIX if NFIX > 0 else x.shape[1]
        K = rhs.shape[2]
        u = np.empty((N, N), dtype=x.dtype)  # A (full), then U in its upper triangle, then X
        z = np.empty((N, N), dtype=x.dtype)
        w = np.empty((N, K), dtype=x.dtype)
        colsum = np.empty(N, dtype=RT)
        for b in range(lo, hi):
            finite, big = _load_hermitian(x, b, u, N, COMPLEX, RZERO)
            if not finite:
                info[b] = -1
                for i in range(N):
                    for j in range(out.shape[2]):
                        out[b, i, j] = NAN
                if RC:
                    rc[b] = RNAN
                continue
            norm_a = _one_norm(u, colsum, COMPLEX, RZERO, LO, HI, SAFE_LO, SAFE_HI) if RC else RZERO
            s = RONE
            if big > RZERO and (big < LO or big > HI):
                e = math.frexp(big)[1]
                e = min(max(e, -LIMIT), LIMIT)
                s = RT(math.ldexp(1.0, -e))
                for i in range(N):
                    for j in range(i, N):
                        u[i, j] = u[i, j] * s
            # A = U^H U, right-looking: row k scaled, then the rows below it.
            code = 0
            for k in range(N):
                d = u[k, k].real
                if not (d > RZERO):
                    code = k + 1
                    break
                r = np.sqrt(d)
                u[k, k] = r
                inv = RONE / r
                for j in range(k + 1, N):
                    u[k, j] = u[k, j] * inv
                for i in range(k + 1, N):
                    l = u[k, i].conjugate() if COMPLEX else u[k, i]
                    for j in range(i, N):
                        u[i, j] = u[i, j] - l * u[k, j]
            info[b] = code
            if code != 0:
                for i in range(N):
                    for j in range(out.shape[2]):
                        out[b, i, j] = NAN
                if RC:
                    rc[b] = RZERO
                continue
            if SOLVE:
                for i in range(N):
                    for c in range(K):
                        w[i, c] = rhs[b, i, c] * s
                for i in range(N):  # U^H t = s b
                    for m in range(i):
                        l = u[m, i].conjugate() if COMPLEX else u[m, i]
                        for c in range(K):
                            w[i, c] = w[i, c] - l * w[m, c]
                    d = RONE / u[i, i].real
                    for c in range(K):
                        w[i, c] = w[i, c] * d
                for i in range(N - 1, -1, -1):  # U y = t
                    for m in range(i + 1, N):
                        l = u[i, m]
                        for c in range(K):
                            w[i, c] = w[i, c] - l * w[m, c]
                    d = RONE / u[i, i].real
                    for c in range(K):
                        t = w[i, c] * d
                        w[i, c] = t
                        out[b, i, c] = t
                continue
            # Z = U^-H, row i from the rows above it (nonzero up to column m).
            for i in range(N):
                for j in range(i):
                    z[i, j] = ZERO
                for m in range(i):
                    l = u[m, i].conjugate() if COMPLEX else u[m, i]
                    for j in range(m + 1):
                        z[i, j] = z[i, j] - l * z[m, j]
                d = RONE / u[i, i].real
                for j in range(i):
                    z[i, j] = z[i, j] * d
                z[i, i] = d
            # The upper triangle of X = Z^H Z into u, one row of Z at a time.
            for i in range(N):
                for j in range(i, N):
                    u[i, j] = ZERO
            for k in range(N):
                for i in range(k + 1):
                    l = z[k, i].conjugate() if COMPLEX else z[k, i]
                    for j in range(i, k + 1):
                        u[i, j] = u[i, j] + l * z[k, j]
            # Store s X, mirrored from the upper triangle, with a real diagonal.
            for i in range(N):
                for j in range(N):
                    if i < j:
                        v = u[i, j]
                    elif i == j:
                        v = u[i, i].real + ZERO
                    else:
                        v = u[j, i].conjugate() if COMPLEX else u[j, i]
                    out[b, i, j] = v * s
            if RC:  # ||s X||_1 = s ||X||_1 (s a power of two)
                rc[b] = norm_a * _one_norm(out[b], colsum, COMPLEX, RZERO, LO, HI, SAFE_LO, SAFE_HI)
        if RC:
            _rcond_reciprocals(rc, info, lo, hi, RZERO, RONE)

    return block


def invert(x: np.ndarray, out: np.ndarray, info: np.ndarray, rc: np.ndarray | None,
           unrolled: bool = False) -> None:
    """Invert the C-contiguous block ``x`` (m, n, n) into ``out``; info (and rcond) per matrix.

    ``unrolled``: run the kernel written out for this n (engines/_unrolled.py:
    the same arithmetic and bits, faster at small n; the caller decides,
    from ``cpu_routes.unrolled_for``).
    """
    n = x.shape[-1]
    x = _read_only(x)
    if unrolled:
        from . import _unrolled
        _unrolled.kernel(n, x.dtype)(x, out, info, rc, 0, len(x))
        return
    if rc is None:
        kernel("invert", n, x.dtype)(x, out, info, np.empty(0, dtype=_real_type(x.dtype)),
                                     0, len(x))
    else:
        kernel("invert-rcond", n, x.dtype)(x, out, info, rc, 0, len(x))


def solve(a: np.ndarray, b: np.ndarray, y: np.ndarray, info: np.ndarray,
          unrolled: bool = False) -> None:
    """Solve ``a @ y = b`` for C-contiguous blocks a (m, n, n), b (m, n, k).

    ``unrolled``: the solve written out for this n (engines/_unrolled.py, the
    same bits; the caller decides, from ``cpu_routes.unrolled_for``).
    """
    if unrolled:
        from . import _unrolled
        _unrolled.solve_kernel(a.shape[-1], a.dtype)(_read_only(a), _read_only(b), y, info)
        return
    kernel("solve", a.shape[-1], a.dtype)(_read_only(a), _read_only(b), y, info)


def invert_posdef(x: np.ndarray, out: np.ndarray, info: np.ndarray, rc: np.ndarray | None,
                  method: str) -> None:
    """Invert Hermitian positive definite matrices, the upper triangle of the
    C-contiguous block ``x`` (m, n, n) read, into ``out``; potrf's info (and rcond).

    ``method`` (the caller's, from ``cpu_routes.posdef_method``): "unrolled"
    (engines/_unrolled.py), "elimination" (the LU loop kernel without
    pivoting) or "cholesky" (:func:`_make_chol`).
    """
    n = x.shape[-1]
    x = _read_only(x)
    empty = np.empty(0, dtype=_real_type(x.dtype))
    if method == "unrolled":
        from . import _unrolled
        _unrolled.kernel(n, x.dtype, posdef=True)(x, out, info, rc, 0, len(x))
    elif method == "cholesky":
        no_rhs = _read_only(np.empty((1, 1, 1), dtype=x.dtype))
        kernel("chol" if rc is None else "chol-rcond", n, x.dtype)(
            x, no_rhs, out, info, empty if rc is None else rc, 0, len(x))
    elif method == "elimination":
        kernel("posdef" if rc is None else "posdef-rcond", n, x.dtype)(
            x, out, info, empty if rc is None else rc, 0, len(x))
    else:
        raise ValueError(f"unknown positive definite method {method!r}")


def solve_posdef(a: np.ndarray, b: np.ndarray, y: np.ndarray, info: np.ndarray, method: str) -> None:
    """Solve ``a @ y = b`` for Hermitian positive definite ``a`` (m, n, n), its upper
    triangle read, b (m, n, k); potrf's info. ``method`` as :func:`invert_posdef`."""
    n = a.shape[-1]
    a, b = _read_only(a), _read_only(b)
    if method == "unrolled":
        from . import _unrolled
        _unrolled.solve_kernel(n, a.dtype, posdef=True)(a, b, y, info)
    elif method == "cholesky":
        kernel("chol-solve", n, a.dtype)(a, b, y, info, np.empty(0, dtype=_real_type(a.dtype)), 0, len(a))
    elif method == "elimination":
        kernel("posdef-solve", n, a.dtype)(a, b, y, info)
    else:
        raise ValueError(f"unknown positive definite method {method!r}")


@cache
def _one_norms_kernel(dtype: np.dtype) -> Any:
    RZERO = dtype.type(0)

    @_jit(nogil=True, error_model="numpy", boundscheck=False)
    def run(x, res):  # pragma: no cover - compiled
        N = x.shape[1]
        colsum = np.empty(N, dtype=x.dtype)
        for b in range(x.shape[0]):
            for j in range(N):
                colsum[j] = RZERO
            # Rows in order, each added to the running column sums: the
            # additions of NumPy's einsum("...ij->...j"), so the same bits.
            for i in range(N):
                for j in range(N):
                    colsum[j] += abs(x[b, i, j])
            best = colsum[0]
            for j in range(1, N):
                v = colsum[j]
                # np.maximum: the first NaN wins, else the larger.
                if not math.isnan(best) and (v > best or math.isnan(v)):
                    best = v
            res[b] = best

    return run


def one_norms(x: np.ndarray) -> np.ndarray:
    """``||x||_1`` of every matrix of a real C-contiguous block x (m, n, n), n >= 1.

    The bits of :func:`gpuinv._numerics.one_norm` in one pass over x, with
    no temporary the size of x: 2-4x faster than NumPy's ``abs`` + ``einsum``
    for float64 and float32 at n = 16..256 (docs/cpu-compiled.md). Complex
    blocks stay on NumPy: Numba's ``abs`` is ``hypot``, 7-13x slower than
    NumPy's and not always the same bits.
    """
    res = np.empty(x.shape[0], dtype=x.dtype)
    if x.shape[0]:
        _one_norms_kernel(np.dtype(x.dtype))(_read_only(x), res)
    return res


def _read_only(x: np.ndarray) -> np.ndarray:
    """A read-only, C-contiguous view of x (a copy only if x is not contiguous).

    Numba types writeable and read-only arrays apart: always passing the
    read-only kind compiles one specialization, whatever the caller's flags.
    """
    view = np.ascontiguousarray(x).view()
    view.flags.writeable = False
    return view


def warm_up(dtypes: Iterable[Any], ns: Iterable[int],
            kinds: Iterable[str] = ("invert", "solve"),
            unrolled: Any = None, posdef: Any = None) -> dict[tuple[str, int, str], float]:
    """Compile (or load from the disk cache) the kernels for every dtype and n.

    ``unrolled(n, dtype)``, when given, says where the inverse runs the
    unrolled kernel (``cpu_routes.unrolled_for``); ``posdef(n, dtype)`` the
    positive definite kernels' method (``cpu_routes.posdef_method``, needed
    for the kinds "posdef" and "posdef-solve"). Returns the seconds each
    ``(kind, n, dtype name)`` took.
    """
    took: dict[tuple[str, int, str], float] = {}
    for dt in dtypes:
        dt = np.dtype(dt)
        for n in ns:
            x = np.eye(n, dtype=dt)[None]
            for kind in kinds:
                start = time.perf_counter()
                if kind == "invert":
                    flat = bool(unrolled and unrolled(n, dt))
                    invert(x, np.empty_like(x), np.zeros(1, np.int32), None, flat)
                    invert(x, np.empty_like(x), np.zeros(1, np.int32),
                           np.empty(1, dtype=_real_type(dt)), flat)
                elif kind == "solve":
                    solve(x, x, np.empty_like(x), np.zeros(1, np.int32),
                          bool(unrolled and unrolled(n, dt)))
                elif kind == "posdef":
                    invert_posdef(x, np.empty_like(x), np.zeros(1, np.int32), None, posdef(n, dt))
                    invert_posdef(x, np.empty_like(x), np.zeros(1, np.int32),
                                  np.empty(1, dtype=_real_type(dt)), posdef(n, dt))
                elif kind == "posdef-solve":
                    solve_posdef(x, x, np.empty_like(x), np.zeros(1, np.int32), posdef(n, dt))
                else:
                    raise ValueError(f"unknown compiled kernel {kind!r}")
                took[(kind, n, dt.name)] = time.perf_counter() - start
    return took
