"""The CPU engine's structured routes (``assume_a``), vectorized over the batch.

Every function takes a contiguous block ``x`` (m, n, n) that already holds
the full matrices as :func:`gpuinv._numerics.structured_matrix` reads them,
all finite (the caller marks non-finite matrices first), and writes the
inverse (or solution) and the info codes of the m matrices.

* diagonal: ``1 / d`` elementwise; info k > 0: ``d[k-1]`` is the first zero.
* triangular: a blocked inverse (the diagonal blocks inverted recursively,
  ``X21 = -X22 A21 X11``, as LAPACK's blocked ``trtri``), each level one
  batched ``matmul`` over the whole block; info k > 0: the first zero on the
  diagonal, as ``trtri``.
* positive definite: NumPy's batched Cholesky gufunc (LAPACK ``potrf``),
  then ``inv(A) = inv(L)^H inv(L)`` (as ``potri``) with the triangular inverse
  above; the result is mirrored from its lower triangle, so it is exactly
  symmetric (Hermitian). For n <= 4 the CPU engine does not come here: the
  closed forms invert and take potrf's verdict from the signs of the leading
  minors (``_closed_form.closed_form_pos_inverse``); :func:`small_potrf_info`
  decides the matrices with a minor within rounding of zero. info
  follows ``potrf``: k > 0 when the leading minor of order k is not positive
  definite; :func:`potrf_info` finds k for the matrices the gufunc rejected.

NumPy alone suffices: SciPy is not used at run time. Its batched
``scipy.linalg.inv(assume_a="pos")`` measured slower than NumPy's general
inverse at n = 4..64 (it also runs gecon per slice), and a Python loop over
``scipy.linalg.lapack.dpotrf``/``dpotri`` costs 3-4.5x NumPy's general
inverse gufunc at n = 16..64 (134 / 87 / 87 ms against 30 / 26 / 28 ms for
8 MiB stacks, one thread, 2026-11-29; f2py's per-call cost dominates).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._closed_form import closed_form_inverse

try:  # NumPy's batched LAPACK gufuncs, without the raise-on-failure wrappers
    from numpy.linalg import _umath_linalg

    _gufunc_cholesky: Any = _umath_linalg.cholesky_lo
except (ImportError, AttributeError):  # pragma: no cover - future NumPy layouts
    _gufunc_cholesky = None

__all__ = [
    "cholesky_factor",
    "diagonal_inverse",
    "mirror_lower",
    "potrf_info",
    "cholesky_inverse",
    "positive_definite_inverse",
    "positive_definite_solve",
    "triangular_inverse",
    "triangular_solve",
    "lower_triangular_inverse",
]

_SIG = {np.dtype(t): c + "->" + c for t, c in
        ((np.float32, "f"), (np.float64, "d"), (np.complex64, "F"), (np.complex128, "D"))}


def _first_zero_step(d: np.ndarray) -> np.ndarray:
    """1-based index of the first zero of each row of ``d`` (m, n); 0 if none."""
    zero = d == 0
    return np.where(zero.any(axis=1), zero.argmax(axis=1) + 1, 0).astype(np.int32)


def diagonal_inverse(x: np.ndarray, out: np.ndarray, info: np.ndarray) -> None:
    """Inverse of diagonal matrices: ``1 / d`` on the diagonal, zeros elsewhere."""
    d = np.diagonal(x, axis1=1, axis2=2)
    info[...] = _first_zero_step(d)
    out[...] = 0
    with np.errstate(all="ignore"):
        np.einsum("mii->mi", out)[...] = 1 / d
    out[info > 0] = np.nan


def _small_lower_inverse(x: np.ndarray) -> np.ndarray:
    """Inverse of lower triangular matrices of order n <= 4 by substitution,
    one matrix entry per contiguous vector over the batch ("structure of
    arrays", as the closed forms do)."""
    m, n, _ = x.shape
    t = x.transpose(1, 2, 0).copy()  # t[i, j] is entry (i, j) of every matrix
    o = np.zeros_like(t)
    d = 1 / t[np.arange(n), np.arange(n)]  # (n, m)
    for i in range(n):
        o[i, i] = d[i]
        for j in range(i):
            acc = t[i, j] * o[j, j]
            for k in range(j + 1, i):
                acc += t[i, k] * o[k, j]
            np.multiply(acc, -d[i], out=o[i, j])
    # Contiguous: the blocked caller multiplies with it, and NumPy's matmul
    # takes BLAS only for contiguous operands (the strided view ran its
    # generic loop: lower_triangular_inverse 1.4x slower at n = 16..64).
    return np.ascontiguousarray(o.transpose(2, 0, 1))


def lower_triangular_inverse(x: np.ndarray) -> np.ndarray:
    """Inverse of lower triangular matrices with a non-zero diagonal (m, n, n).

    Blocked as LAPACK's trtri: the two diagonal blocks are inverted
    recursively and ``X21 = -X22 A21 X11`` is two batched products; blocks of
    order 4 or less are done by substitution over the whole batch at once.
    Only the lower triangle of ``x`` is read.

    The recursion's leaves (all diagonal blocks of order <= 4) are inverted
    first, all leaves of one order in one batch, and the off-diagonal blocks
    are then filled bottom-up in one preallocated output: at n = 16..64 the
    per-leaf calls and per-level copies had cost as much as the products.
    """
    m, n, _ = x.shape
    if n <= 4:
        return _small_lower_inverse(x)
    out = np.zeros_like(x)
    leaves: list[tuple[int, int]] = []
    _leaves(0, n, leaves)
    by_order: dict[int, list[int]] = {}
    for start, stop in leaves:
        by_order.setdefault(stop - start, []).append(start)
    for order, starts in by_order.items():
        if len(starts) == 1:
            i = starts[0]
            out[:, i : i + order, i : i + order] = _small_lower_inverse(x[:, i : i + order, i : i + order])
            continue
        blocks = np.stack([x[:, i : i + order, i : i + order] for i in starts])
        inverse = _small_lower_inverse(blocks.reshape(-1, order, order))
        inverse = inverse.reshape(len(starts), m, order, order)
        for j, i in enumerate(starts):
            out[:, i : i + order, i : i + order] = inverse[j]
    _merge_lower(x, out, 0, n)
    return out


def _leaves(start: int, stop: int, acc: list[tuple[int, int]]) -> None:
    if stop - start <= 4:
        acc.append((start, stop))
        return
    k = (stop - start) // 2
    _leaves(start, start + k, acc)
    _leaves(start + k, stop, acc)


def _merge_lower(x: np.ndarray, out: np.ndarray, start: int, stop: int) -> None:
    """Fill ``out``'s off-diagonal blocks of [start, stop): ``X21 = -X22 A21 X11``."""
    if stop - start <= 4:
        return
    mid = start + (stop - start) // 2
    _merge_lower(x, out, start, mid)
    _merge_lower(x, out, mid, stop)
    part = np.matmul(x[:, mid:stop, start:mid], out[:, start:mid, start:mid])
    target = out[:, mid:stop, start:mid]
    np.matmul(out[:, mid:stop, mid:stop], part, out=target)
    np.negative(target, out=target)


def triangular_inverse(x: np.ndarray, out: np.ndarray, info: np.ndarray, lower: bool) -> None:
    """Inverse of triangular matrices (``trtri``); info: first zero on the diagonal."""
    info[...] = _first_zero_step(np.diagonal(x, axis1=1, axis2=2))
    with np.errstate(all="ignore"):
        if lower:
            out[...] = lower_triangular_inverse(x)
        else:  # inv(U) = inv(U^T)^T
            out[...] = lower_triangular_inverse(x.swapaxes(1, 2)).swapaxes(1, 2)
    out[info > 0] = np.nan


def triangular_solve(x: np.ndarray, b: np.ndarray, lower: bool) -> np.ndarray:
    """Solve ``x @ y = b`` by substitution for triangular ``x`` (m, n, n), b (m, n, k).

    Row by row, each step one batched product over the whole block: backward
    stable like LAPACK ``trsv``/``trsm``. Zero diagonals give Inf/NaN.
    """
    n = x.shape[-1]
    y = np.empty(b.shape, dtype=np.result_type(x, b))
    order = range(n) if lower else range(n - 1, -1, -1)
    with np.errstate(all="ignore"):
        for i in order:
            if lower:
                acc = b[:, i, :] - np.matmul(x[:, i : i + 1, :i], y[:, :i, :])[:, 0, :] if i else b[:, i, :]
            else:
                acc = (b[:, i, :] - np.matmul(x[:, i : i + 1, i + 1 :], y[:, i + 1 :, :])[:, 0, :]
                       if i < n - 1 else b[:, i, :])
            y[:, i, :] = acc / x[:, i, i, None]
    return y


def mirror_lower(out: np.ndarray, conjugate: bool) -> None:
    """Make every matrix of ``out`` exactly symmetric (Hermitian) from its lower triangle."""
    n = out.shape[-1]
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    other = out.swapaxes(1, 2)
    if conjugate:
        other = other.conj()
    np.copyto(out, other.copy(), where=upper)
    if conjugate:
        diag = np.einsum("mii->mi", out)
        diag.imag = 0


def potrf_info(x: np.ndarray) -> np.ndarray:
    """LAPACK ``potrf``'s info for every matrix of ``x`` (m, n, n), Hermitian, finite.

    A right-looking Cholesky vectorized over m, reading the lower triangle:
    k > 0 when the pivot of step k (the leading minor of order k divided by
    that of order k - 1) is not positive or is NaN; 0 when all are positive.
    """
    a = np.array(x, copy=True)
    m, n, _ = a.shape
    info = np.zeros(m, dtype=np.int32)
    with np.errstate(all="ignore"):
        for k in range(n):
            d = a[:, k, k].real.copy()
            fail = ~(d > 0)
            info[(info == 0) & fail] = k + 1
            d[fail] = 1  # keep the others going; the failed ones are already decided
            root = np.sqrt(d)
            col = a[:, k + 1 :, k] / root[:, None]
            a[:, k + 1 :, k + 1 :] -= col[:, :, None] * col.conj()[:, None, :]
    return info


def small_potrf_info(x: np.ndarray) -> np.ndarray:
    """potrf's info for Hermitian matrices of order n <= 4 (m, n, n), finite.

    The same right-looking Cholesky as :func:`potrf_info`, but with one
    matrix entry per contiguous vector over the batch: a few dozen vector
    operations instead of one LAPACK call per matrix.
    """
    m, n, _ = x.shape
    c = x.transpose(1, 2, 0).copy()  # c[i, j] is entry (i, j) of every matrix
    info = np.zeros(m, dtype=np.int32)
    with np.errstate(all="ignore"):
        for k in range(n):
            d = c[k, k].real.copy()
            fail = ~(d > 0)
            if fail.any():
                info[(info == 0) & fail] = k + 1
                d[fail] = 1
            root = np.sqrt(d)
            for i in range(k + 1, n):
                c[i, k] /= root
            for j in range(k + 1, n):
                cj = np.conj(c[j, k]) if c.dtype.kind == "c" else c[j, k]
                for i in range(j, n):
                    c[i, j] -= c[i, k] * cj
    return info


def cholesky_factor(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower Cholesky factors of ``x`` (m, n, n) and potrf info codes.

    The factors of matrices that are not positive definite are NaN.
    """
    with np.errstate(all="ignore"):
        if _gufunc_cholesky is not None:
            factor = _gufunc_cholesky(x, signature=_SIG[x.dtype])
        else:  # pragma: no cover - only if NumPy moves its gufunc
            factor = _loop_cholesky(x)
    info = np.zeros(len(x), dtype=np.int32)
    with np.errstate(all="ignore"):
        if np.isfinite(factor.sum()):  # the common case: one contiguous reduction
            return factor, info
    failed = np.flatnonzero(np.isnan(factor[:, -1, -1]) | ~np.isfinite(factor.sum(axis=(1, 2))))
    if failed.size:
        code = potrf_info(x[failed])
        # The gufunc's verdict wins where our rounding differs: a NaN factor
        # means LAPACK found a non-positive pivot, so report at least step n.
        code = np.where(code > 0, code, x.shape[-1]).astype(np.int32)
        info[failed] = code
    return factor, info


def _loop_cholesky(x: np.ndarray) -> np.ndarray:  # pragma: no cover - fallback
    out = np.empty_like(x)
    for i in range(len(x)):
        try:
            out[i] = np.linalg.cholesky(x[i])
        except np.linalg.LinAlgError:
            out[i] = np.nan
    return out


def cholesky_inverse(x: np.ndarray, out: np.ndarray, info: np.ndarray) -> None:
    """``inv(L)^H inv(L)`` from the Cholesky factor L of the lower triangle of each
    matrix of ``x`` (m, n, n), finite; potrf's info, NaN where it is not 0.

    Exactly Hermitian (mirrored from its lower triangle). Backward stable as
    LAPACK's potri: an LU inverse mirrored into a Hermitian one is not (its
    residual grows as cond * eps, 1e5 eps at cond 1e8).
    """
    factor, info[...] = cholesky_factor(x)
    ok = np.flatnonzero(info == 0)
    out[info != 0] = np.nan
    if ok.size == 0:
        return
    every = ok.size == len(x)
    sub_out = out if every else np.empty((ok.size,) + out.shape[1:], dtype=out.dtype)
    with np.errstate(all="ignore"):
        linv = lower_triangular_inverse(factor if every else factor[ok])
        np.matmul(linv.swapaxes(1, 2).conj(), linv, out=sub_out)
    mirror_lower(sub_out, conjugate=x.dtype.kind == "c")
    if not every:
        out[ok] = sub_out


def positive_definite_inverse(x: np.ndarray, out: np.ndarray, info: np.ndarray) -> None:
    """Inverse of Hermitian positive definite matrices, potrf info codes.

    n <= 4: the closed forms, potrf's verdict from a Cholesky vectorized
    over the batch; the matrices the closed forms hand back (positive
    definite, only badly scaled or conditioned) take :func:`cholesky_inverse`.
    """
    n = x.shape[-1]
    if n > 4:
        cholesky_inverse(x, out, info)
        return
    info[...] = small_potrf_info(x)
    ok = np.flatnonzero(info == 0)
    out[info != 0] = np.nan
    if ok.size == 0:
        return
    every = ok.size == len(x)
    sub = x if every else x[ok]
    sub_out = out if every else np.empty_like(sub)
    redo = closed_form_inverse(sub, sub_out)
    mirror_lower(sub_out, conjugate=x.dtype.kind == "c")
    if redo is not None:
        idx = np.flatnonzero(redo)
        again = np.empty_like(sub[idx])
        again_info = np.zeros(idx.size, dtype=np.int32)
        cholesky_inverse(np.ascontiguousarray(sub[idx]), again, again_info)
        sub_out[idx] = again
        if again_info.any():  # the factorization's verdict, where rounding decides
            sub_info = info[ok]
            sub_info[idx] = again_info
            info[ok] = sub_info
    if not every:
        out[ok] = sub_out


def positive_definite_solve(x: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``x @ y = b`` for Hermitian positive definite ``x``: Cholesky, then two
    substitutions (as ``potrs``). Returns ``(y, info)``; y is NaN where info > 0."""
    factor, info = cholesky_factor(x)
    with np.errstate(all="ignore"):
        z = triangular_solve(factor, b, lower=True)
        y = triangular_solve(factor.swapaxes(1, 2).conj(), z, lower=False)
    y[info != 0] = np.nan
    return y, info
