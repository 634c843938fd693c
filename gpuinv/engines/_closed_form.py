"""Batch-vectorized closed forms for n <= 4, used by the CPU engine.

NumPy's ``inv`` calls LAPACK once per matrix, which costs far more than the
arithmetic for tiny n. Here each matrix entry is one contiguous vector over a
chunk of matrices ("structure of arrays"), so every operation is a SIMD loop
over thousands of matrices.

Accuracy contract (the same bar as LAPACK, to within 10x):

* each matrix is first scaled by a power of two so that its largest entry
  lies in [0.5, 1): the determinant cannot over- or underflow for any matrix
  whose inverse is representable, and the scaling is exact;
* the 2x2 adjugate holds the input's own entries, so its backward error is a
  few ulps whatever the conditioning;
* for n = 3 and 4 the cofactors are computed with cancellation, which loses
  accuracy when the adjugate is small against ``max|a|**(n-1)`` (matrices
  close to rank n-2). Those matrices, and any whose determinant is zero or
  whose reciprocal is not finite, are flagged and handed back to the caller
  for the pivoting (LAPACK) route. See ``GUARD`` for where the bound comes
  from.

The same machinery serves ``solve`` (:func:`closed_form_solve`: the adjugate
applied to b, never the inverse formed) and positive definite matrices
(:func:`closed_form_pos_inverse`: potrf's verdict from the signs of the
leading minors). The solve's contract is the inverse's: like any explicit
inverse or Cramer's rule it is not backward stable when ``a`` is
ill-conditioned and ``b`` lies in its range (measured up to about 800 eps
on Gaussian 3x3 matrices with such b, where gesv stays below 1 eps and
``inv(a) @ b`` reaches 400 eps; tests/test_accuracy.py bounds it by
``inv(a) @ b``'s, and the guard hands matrices near rank n-2 to gesv).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_N", "SOLVE_MAX_N", "closed_form_inverse", "closed_form_pos_inverse",
           "closed_form_solve"]

MAX_N = 4

# A matrix takes the closed form only if max|adj(a)| * GUARD[n] >= max|a|**(n-1).
# The computed cofactors carry an absolute error of about eps * max|a|**(n-1),
# so the backward error of the result is about eps * max|a|**(n-1) / max|adj|,
# i.e. at most about GUARD[n] ulps. Checked by tests/test_accuracy.py on
# matrices near rank n - 2 (the guard's worst case), all four dtypes: the
# closed forms' worst backward error is 0.9-3.8 eps, 2-4x LAPACK's worst at
# n = 3 and below it at n = 4 (the bar is 10x). The guard keeps 99.86%
# of random Gaussian matrices on the fast path at n = 3 and 97.1% at n = 4;
# raising GUARD[4] to 16 (99.6% kept) made no measurable difference to n = 4
# throughput (1e6 matrices, 2 cores), so the values stay.
GUARD = {3: 8.0, 4: 8.0}

# A matrix whose |det| (after scaling) is at most NEAR_SINGULAR * n * eps *
# max|a|**n goes to the pivoting route: there the rounded determinant says
# nothing about whether LAPACK's elimination meets an exact zero pivot.
# Random Gaussian matrices never come near it; rank-deficient integer
# matrices scaled by 0.1 or 1/3 (tests/test_extreme.py) all do.
NEAR_SINGULAR = 4.0


def _entry_max(rows: np.ndarray) -> np.ndarray:
    """max over axis 0 of |re| and |im| for rows (k, m): one value per matrix.

    Reducing over the leading axis keeps every pass a contiguous SIMD loop;
    for complex input max(|re|, |im|) bounds |z| to within sqrt(2).
    """
    if rows.dtype.kind == "c":
        both = np.abs(rows.view(rows.real.dtype)).max(axis=0)
        return np.maximum(both[0::2], both[1::2])
    return np.abs(rows).max(axis=0)


def closed_form_inverse(x: np.ndarray, out: np.ndarray,
                        rcond: np.ndarray | None = None) -> np.ndarray | None:
    """Invert every matrix of ``x`` (m, n, n) with n <= 4 into ``out``.

    ``x`` is read only. Returns None when every matrix was handled, else a
    boolean mask of the matrices whose entries in ``out`` are not valid and
    must be recomputed by a pivoting route.

    With ``rcond`` (m,), also writes ``1 / (||a||_1 ||inv(a)||_1)`` for the
    matrices handled, as ``|det t| / (||t||_1 ||adj t||_1)`` on the scaled
    copy t (the power-of-two scale cancels). For real input the column sums
    reuse the ``|t|`` and ``|adj t|`` that the scaling and the guard take
    anyway, so rcond adds two reductions over data already in cache.
    """
    m, n, _ = x.shape
    if n > MAX_N:
        raise ValueError(f"closed forms cover n <= {MAX_N}, got {n}")
    # Structure of arrays: t[i, j] is entry (i, j) of every matrix, contiguous.
    # Always a copy (x.transpose(...).copy() is C-ordered): t is scaled in
    # place below, and for m == 1 or n == 1 the transpose is already
    # contiguous, so ascontiguousarray would hand back the caller's memory.
    t = x.transpose(1, 2, 0).copy()
    o, ok, _, _ = _closed_form_soa(t, rcond)
    out[...] = o.transpose(2, 0, 1)
    if ok.all():
        return None
    return ~ok


def _closed_form_soa(t: np.ndarray, rcond: np.ndarray | None = None, hermitian: bool = False,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The closed-form inverse of a structure-of-arrays block t (n, n, m).

    ``t`` is overwritten with ``s * t`` (the power-of-two scaling). Returns
    ``(o, ok, det, big)``: the inverses in the same layout, whether each is
    valid (see :func:`closed_form_inverse`), ``det(s * t)`` and the largest
    entry of ``s * t`` (measured as :func:`_entry_max` does).

    ``hermitian``: t is Hermitian (symmetric). Only the cofactors on and
    below the diagonal are computed (6 of 9 at n = 3, 10 of 16 at n = 4),
    the others are their conjugates, and det is taken real, so that o is
    exactly Hermitian. ``det`` is then the list of the leading principal
    minors of ``s * t``, the last being the determinant (all real).
    """
    n, _, m = t.shape
    real = t.dtype.kind != "c"
    # |t| is kept for real input: the largest entry and, with rcond, the
    # column sums come from the same array (one pass of abs, not two).
    at = np.abs(t) if real else None
    big = at.reshape(n * n, m).max(axis=0) if at is not None else _entry_max(t.reshape(n * n, m))
    norm_t = None
    if rcond is not None and at is not None and n > 1:
        # ||t||_1 before scaling; ||s t||_1 = s ||t||_1 exactly. For n = 2
        # ||adj t||_1 is ||t||_inf (adj permutes the entries of t).
        norm_t = _max_col_sum(at)
        norm_o = _max_col_sum(at.swapaxes(0, 1)) if n == 2 else None
    # Power-of-two factors s with max|s * a| in [0.5, 1). The exponent is
    # clipped to keep s finite; a matrix still outside the safe range after
    # that ends with a zero or non-finite determinant and is flagged.
    _, exponent = np.frexp(big)
    limit = np.finfo(big.dtype).maxexp - 4
    np.clip(exponent, -limit, limit, out=exponent)
    s = np.ldexp(np.ones(m, dtype=big.dtype), -exponent)
    t *= s
    big *= s
    o = np.empty_like(t)
    with np.errstate(all="ignore"):
        if n == 1:
            det = t[0, 0]
            o[0, 0] = 1
        elif n == 2:
            det = _adj2(t, o)
        elif hermitian:
            det = (_adj3_hermitian if n == 3 else _adj4_hermitian)(t, o)
        elif n == 3:
            det = _adj3(t, o)
        else:
            det = _adj4(t, o)
        if hermitian:
            if n == 1:
                minors = [t[0, 0].real]
            else:
                det = det.real
                # d_1, d_2, ...: t00, the 2x2 leading minor (o[2, 2] at n = 3),
                # the 3x3 one (o[3, 3] at n = 4), det.
                minors = [t[0, 0].real]
                if n == 3:
                    minors.append(o[2, 2].real.copy())
                elif n == 4:
                    minors.append((t[0, 0] * t[1, 1] - t[0, 1] * t[1, 0]).real)
                    minors.append(o[3, 3].real.copy())
                minors.append(det)
            if t.dtype.kind == "c":
                det = det.astype(t.dtype)
        r = s / det  # inv(a) = s * inv(s * a) = s * adj(s * a) / det(s * a)
        ok = np.isfinite(r)
        two_step = None
        if not ok.all():
            # s / det can overflow where s * (adj / det) does not: a matrix
            # of subnormals has s near the top of the range and det(s * a)
            # below 1. Those few apply 1/det and s one at a time.
            two_step = np.flatnonzero(~ok & np.isfinite(1 / det))
            r[two_step] = 1 / det[two_step]
            ok[two_step] = True
        if n in GUARD:
            bound = big * big if n == 3 else big * big * big
            if real:
                ao = np.abs(o)
                ok &= ao.reshape(n * n, m).max(axis=0) * GUARD[n] >= bound
                if norm_t is not None:
                    norm_o = _max_col_sum(ao)
                del ao
            else:
                ok &= _entry_max(o.reshape(n * n, m)) * GUARD[n] >= bound
        if n > 1:
            # Numerically singular (condition past about 1 / eps): whether a
            # pivot rounds to exactly zero is the factorization's call, so
            # such matrices get LAPACK's verdict and info code, not ours.
            adet = np.abs(det)
            ok &= adet > (NEAR_SINGULAR * n * np.finfo(big.dtype).eps) * big**n
        if rcond is not None:
            if n == 1:  # |a| * |1 / a| is 1 (to within an ulp)
                rcond[...] = 1
            elif norm_t is not None:
                # |det(s a)| / (s ||a||_1 ||adj(s a)||_1); for n = 2 the
                # second norm was taken before scaling, so s twice.
                np.multiply(norm_t, s, out=norm_t)
                if n == 2:
                    np.multiply(norm_o, s, out=norm_o)
                np.multiply(norm_t, norm_o, out=norm_t)
                np.divide(adet, norm_t, out=rcond)
            else:
                rcond[...] = adet / (_one_norm_soa(t) * _one_norm_soa(o))
        o *= r
        if two_step is not None and two_step.size:
            o[..., two_step] *= s[two_step]
            # An inverse that is not representable goes to LAPACK, which
            # reports it (info 0, non-finite entries) as it does for n > 4.
            ok[two_step] &= np.isfinite(o[..., two_step]).all(axis=(0, 1))
    return o, ok, (minors if hermitian else det), big


def closed_form_pos_inverse(x: np.ndarray, lower: bool, rcond: np.ndarray | None = None
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Inverse of Hermitian positive definite matrices of order n <= 4, finite.

    ``x`` (m, n, n) is read only in the triangle ``lower`` names (the other
    is its mirror; the imaginary part of the diagonal is ignored, as potrf
    does). The closed-form inverse of the full matrix, mirrored from its
    lower triangle so that it is exactly Hermitian; potrf's verdict from the
    signs of the leading principal minors, which the closed forms compute
    anyway (a Cholesky pivot k is ``d_k / d_(k-1)``, so potrf's info is the
    first k with ``d_k <= 0``).

    Returns ``(inverse (m, n, n), ok, info, sure)``: ``ok`` as in
    :func:`closed_form_inverse`; ``info`` potrf's code where ``sure``; a
    matrix with a leading minor within rounding of zero is not ``sure``
    (the caller asks the Cholesky itself). ``info`` and ``sure`` are None
    when every matrix is clearly positive definite (the common case).
    ``rcond`` (m,) is written where ``ok``.
    """
    m, n, _ = x.shape
    if n > MAX_N:
        raise ValueError(f"closed forms cover n <= {MAX_N}, got {n}")
    t = x.transpose(1, 2, 0).copy()
    conj = t.dtype.kind == "c"
    for i in range(n):
        for j in range(i + 1, n):
            # Entry (i, j) of the upper triangle, or (j, i) of the lower one, is read.
            src, dst = (t[j, i], t[i, j]) if lower else (t[i, j], t[j, i])
            if conj:
                np.conjugate(src, out=dst)
            else:
                dst[...] = src
        if conj:
            t[i, i].imag = 0
    o, ok, minors, big = _closed_form_soa(t, rcond, hermitian=True)
    with np.errstate(all="ignore"):
        # Leading minors d_k of the scaled matrix (entries below 1 in
        # magnitude): each is computed with an error of a few eps * big**k,
        # so beyond 64 k eps * big**k its sign is certain.
        eps = np.finfo(big.dtype).eps
        # The scaling leaves big < 1 (unless its exponent was clipped), so
        # big**k < 1 and a scalar threshold suffices for the common case:
        # one comparison per minor instead of three operations.
        clear_pos = minors[0] > 64 * eps
        for k, d in enumerate(minors[1:], start=2):
            clear_pos &= d > 64 * k * eps
        info = sure = None
        if not clear_pos.all() or not big.max() < 1:
            info = np.zeros(m, dtype=np.int32)
            sure = np.ones(m, dtype=bool)
            # Some matrix is not clearly positive definite: its first clearly
            # negative minor is potrf's step, unless an earlier one is within
            # rounding of zero (then it is not sure).
            undecided = np.ones(m, dtype=bool)
            power = np.ones_like(big)
            for k, d in enumerate(minors, start=1):
                power = power * big
                clear = np.abs(d) > (64 * k * eps) * power
                sure[undecided & ~clear] = False
                undecided &= clear
                fail = undecided & (d < 0)
                info[fail] = k
                undecided &= ~fail
    return o.transpose(2, 0, 1), ok, info, sure


#: The orders that :func:`closed_form_solve` covers: all those of the
#: closed-form inverse. n <= 2 by Cramer's rule; n = 3 and 4 as
#: ``adj(a) b / det(a)`` with the inverse's own guard, without ever forming
#: the inverse (benchmarks/bench_numerics.py, solve table).
SOLVE_MAX_N = MAX_N


def closed_form_solve(x: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray | None:
    """Solve ``x @ y = b`` for x (m, n, n) with n <= 4 and b (m, n, k) into ``out``.

    n = 1: ``b / a``, correctly rounded. n = 2: Cramer's rule on the matrix
    scaled by a power of two (as :func:`closed_form_inverse`), which for 2x2
    systems is as accurate as elimination (each entry is one 2x2
    determinant of input entries). n = 3, 4: ``y = adj(s a) b * (s / det(s
    a))``, with the adjugate, the scaling and the guard of
    :func:`closed_form_inverse`, so the same matrices are accepted and the
    rest handed back; the n x n adjugate is applied to b in the batch-major
    layout instead of being scaled and written out as an inverse.

    Returns None, or the mask of matrices that must go to a pivoting route
    (numerically singular, badly conditioned for the closed forms, or an
    unrepresentable intermediate).
    """
    m, n, _ = x.shape
    if n > SOLVE_MAX_N:
        raise ValueError(f"closed-form solve covers n <= {SOLVE_MAX_N}, got {n}")
    with np.errstate(all="ignore"):
        if n == 1:
            a = x[:, 0, 0]
            np.divide(b, a[:, None, None], out=out)
            ok = (a != 0) & np.isfinite(1 / a)
        elif n == 2:
            t = x.transpose(1, 2, 0).copy()
            big = _entry_max(t.reshape(4, m))
            _, exponent = np.frexp(big)
            limit = np.finfo(big.dtype).maxexp - 4
            np.clip(exponent, -limit, limit, out=exponent)
            s = np.ldexp(np.ones(m, dtype=big.dtype), -exponent)
            t *= s
            big *= s
            (a00, a01), (a10, a11) = t
            det = a00 * a11 - a01 * a10
            r = 1 / det
            # x = adj(s a) (s b) / det(s a); s b is exact unless it overflows
            # (then the check below hands the matrix back). (2, k, m):
            # contiguous over the batch.
            sb = b.transpose(1, 2, 0) * s
            y = np.empty_like(sb)
            np.multiply(a11 * sb[0] - a01 * sb[1], r, out=y[0])
            np.multiply(a00 * sb[1] - a10 * sb[0], r, out=y[1])
            out[...] = y.transpose(2, 0, 1)
            ok = np.isfinite(r) & (np.abs(det) > (NEAR_SINGULAR * 2 * np.finfo(big.dtype).eps)
                                   * big * big)
            _hand_back_overflow(y, sb, ok)
        else:
            ok = _adjugate_solve(x, b, out)
    if ok.all():
        return None
    return ~ok


def _adjugate_solve(x: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = inv(x) @ b`` as ``adj(s x) b * (s / det(s x))`` for n = 3, 4; the ok mask.

    Accepts exactly the matrices :func:`closed_form_inverse` accepts (the same
    scaling, guard and near-singularity test), so the solution carries the
    closed-form inverse's error bound; b is not scaled (s cancels in
    ``s / det``).
    """
    m, n, _ = x.shape
    k = b.shape[-1]
    t = x.transpose(1, 2, 0).copy()
    big = _entry_max(t.reshape(n * n, m))
    _, exponent = np.frexp(big)
    limit = np.finfo(big.dtype).maxexp - 4
    np.clip(exponent, -limit, limit, out=exponent)
    s = np.ldexp(np.ones(m, dtype=big.dtype), -exponent)
    t *= s
    big *= s
    o = np.empty_like(t)
    det = _adj3(t, o) if n == 3 else _adj4(t, o)
    r = s / det
    ok = np.isfinite(r)
    bound = big * big if n == 3 else big * big * big
    ok &= _entry_max(o.reshape(n * n, m)) * GUARD[n] >= bound
    ok &= np.abs(det) > (NEAR_SINGULAR * n * np.finfo(big.dtype).eps) * big**n
    # (n, k, m): every right-hand side entry contiguous over the batch.
    bt = b.transpose(1, 2, 0).copy()
    y = np.empty((n, k, m), dtype=np.result_type(t, bt))
    term = np.empty((k, m), dtype=y.dtype)
    for i in range(n):
        np.multiply(o[i, 0], bt[0], out=y[i])
        for j in range(1, n):
            np.multiply(o[i, j], bt[j], out=term)
            y[i] += term
    y *= r
    out[...] = y.transpose(2, 0, 1)
    _hand_back_overflow(y, bt, ok)
    return ok


def _hand_back_overflow(y: np.ndarray, rhs: np.ndarray, ok: np.ndarray) -> None:
    """Clear ``ok`` for solutions y (n, k, m) that overflowed on the way (not
    from NaN or Inf in the right-hand sides ``rhs`` themselves): LAPACK redoes them.

    One contiguous pass in the common case; the per-matrix reductions over
    the leading axes (several times slower) only when something is not finite.
    """
    if np.isfinite(y).all():
        return
    finite = np.isfinite(y).all(axis=(0, 1))
    ok &= finite | ~np.isfinite(rhs).all(axis=(0, 1))


def _max_col_sum(a: np.ndarray) -> np.ndarray:
    """max_j sum_i a[i, j] for a block of magnitudes a (n, n, m): ||.||_1 per matrix.

    One vector operation per entry over the batch: NumPy's reductions over
    the leading axes of a 3-d block ran at half that speed (n = 2..4).
    """
    n = a.shape[0]
    if n == 1:
        return a[0, 0].copy()
    best = np.add(a[0, 0], a[1, 0])
    for i in range(2, n):
        best += a[i, 0]
    col = np.empty_like(best)
    for j in range(1, n):
        np.add(a[0, j], a[1, j], out=col)
        for i in range(2, n):
            col += a[i, j]
        np.maximum(best, col, out=best)
    return best


def _one_norm_soa(t: np.ndarray) -> np.ndarray:
    """||.||_1 of every matrix of a structure-of-arrays block t (n, n, m)."""
    return np.abs(t).sum(axis=0).max(axis=0)


def _adj2(t: np.ndarray, o: np.ndarray) -> np.ndarray:
    a, b = t[0]
    c, d = t[1]
    o[0, 0] = d
    np.subtract(0, b, out=o[0, 1])  # 0 - b: +0.0 for b = 0, unlike -b
    np.subtract(0, c, out=o[1, 0])
    o[1, 1] = a
    return a * d - b * c


def _adj3(t: np.ndarray, o: np.ndarray) -> np.ndarray:
    (a00, a01, a02), (a10, a11, a12), (a20, a21, a22) = t
    # o[j, i] is the cofactor of a[i, j]: o = adj(a).
    o[0, 0] = a11 * a22 - a12 * a21
    o[1, 0] = a12 * a20 - a10 * a22
    o[2, 0] = a10 * a21 - a11 * a20
    o[0, 1] = a02 * a21 - a01 * a22
    o[1, 1] = a00 * a22 - a02 * a20
    o[2, 1] = a01 * a20 - a00 * a21
    o[0, 2] = a01 * a12 - a02 * a11
    o[1, 2] = a02 * a10 - a00 * a12
    o[2, 2] = a00 * a11 - a01 * a10
    return a00 * o[0, 0] + a01 * o[1, 0] + a02 * o[2, 0]


def _mirror_soa(o: np.ndarray) -> None:
    """o[i, j] = conj(o[j, i]) above the diagonal; a real diagonal."""
    n = o.shape[0]
    for i in range(n):
        for j in range(i + 1, n):
            if o.dtype.kind == "c":
                np.conjugate(o[j, i], out=o[i, j])
            else:
                o[i, j] = o[j, i]
        if o.dtype.kind == "c":
            o[i, i].imag = 0


def _adj3_hermitian(t: np.ndarray, o: np.ndarray) -> np.ndarray:
    """_adj3 for Hermitian t: the cofactors on and below the diagonal, mirrored."""
    (a00, a01, a02), (a10, a11, a12), (a20, a21, a22) = t
    o[0, 0] = a11 * a22 - a12 * a21
    o[1, 0] = a12 * a20 - a10 * a22
    o[2, 0] = a10 * a21 - a11 * a20
    o[1, 1] = a00 * a22 - a02 * a20
    o[2, 1] = a01 * a20 - a00 * a21
    o[2, 2] = a00 * a11 - a01 * a10
    det = a00 * o[0, 0] + a01 * o[1, 0] + a02 * o[2, 0]
    _mirror_soa(o)
    return det


def _adj4_hermitian(t: np.ndarray, o: np.ndarray) -> np.ndarray:
    """_adj4 for Hermitian t: the cofactors on and below the diagonal, mirrored."""
    (a00, a01, a02, a03), (a10, a11, a12, a13), (a20, a21, a22, a23), (a30, a31, a32, a33) = t
    s0 = a00 * a11 - a10 * a01
    s1 = a00 * a12 - a10 * a02
    s2 = a00 * a13 - a10 * a03
    s3 = a01 * a12 - a11 * a02
    s4 = a01 * a13 - a11 * a03
    s5 = a02 * a13 - a12 * a03
    c5 = a22 * a33 - a32 * a23
    c4 = a21 * a33 - a31 * a23
    c3 = a21 * a32 - a31 * a22
    c2 = a20 * a33 - a30 * a23
    c1 = a20 * a32 - a30 * a22
    c0 = a20 * a31 - a30 * a21
    o[0, 0] = a11 * c5 - a12 * c4 + a13 * c3
    o[1, 0] = a12 * c2 - a10 * c5 - a13 * c1
    o[2, 0] = a10 * c4 - a11 * c2 + a13 * c0
    o[3, 0] = a11 * c1 - a10 * c3 - a12 * c0
    o[1, 1] = a00 * c5 - a02 * c2 + a03 * c1
    o[2, 1] = a01 * c2 - a00 * c4 - a03 * c0
    o[3, 1] = a00 * c3 - a01 * c1 + a02 * c0
    o[2, 2] = a30 * s4 - a31 * s2 + a33 * s0
    o[3, 2] = a31 * s1 - a30 * s3 - a32 * s0
    o[3, 3] = a20 * s3 - a21 * s1 + a22 * s0
    _mirror_soa(o)
    return s0 * c5 - s1 * c4 + s2 * c3 + s3 * c2 - s4 * c1 + s5 * c0


def _adj4(t: np.ndarray, o: np.ndarray) -> np.ndarray:
    (a00, a01, a02, a03), (a10, a11, a12, a13), (a20, a21, a22, a23), (a30, a31, a32, a33) = t
    # Laplace expansion along the first two rows: the 2x2 minors of rows 0-1
    # (s*) and of rows 2-3 (c*) are shared by all sixteen cofactors.
    s0 = a00 * a11 - a10 * a01
    s1 = a00 * a12 - a10 * a02
    s2 = a00 * a13 - a10 * a03
    s3 = a01 * a12 - a11 * a02
    s4 = a01 * a13 - a11 * a03
    s5 = a02 * a13 - a12 * a03
    c5 = a22 * a33 - a32 * a23
    c4 = a21 * a33 - a31 * a23
    c3 = a21 * a32 - a31 * a22
    c2 = a20 * a33 - a30 * a23
    c1 = a20 * a32 - a30 * a22
    c0 = a20 * a31 - a30 * a21
    o[0, 0] = a11 * c5 - a12 * c4 + a13 * c3
    o[0, 1] = a02 * c4 - a01 * c5 - a03 * c3
    o[0, 2] = a31 * s5 - a32 * s4 + a33 * s3
    o[0, 3] = a22 * s4 - a21 * s5 - a23 * s3
    o[1, 0] = a12 * c2 - a10 * c5 - a13 * c1
    o[1, 1] = a00 * c5 - a02 * c2 + a03 * c1
    o[1, 2] = a32 * s2 - a30 * s5 - a33 * s1
    o[1, 3] = a20 * s5 - a22 * s2 + a23 * s1
    o[2, 0] = a10 * c4 - a11 * c2 + a13 * c0
    o[2, 1] = a01 * c2 - a00 * c4 - a03 * c0
    o[2, 2] = a30 * s4 - a31 * s2 + a33 * s0
    o[2, 3] = a21 * s2 - a20 * s4 - a23 * s0
    o[3, 0] = a11 * c1 - a10 * c3 - a12 * c0
    o[3, 1] = a00 * c3 - a01 * c1 + a02 * c0
    o[3, 2] = a31 * s1 - a30 * s3 - a32 * s0
    o[3, 3] = a20 * s3 - a21 * s1 + a22 * s0
    return s0 * c5 - s1 * c4 + s2 * c3 + s3 * c2 - s4 * c1 + s5 * c0
