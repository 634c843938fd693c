"""Accuracy: gpuinv's backward error stays within 10x of LAPACK's.

The backward error of a computed inverse X of A is
``||A X - I||_1 / (||A||_1 ||X||_1)``, evaluated in extended precision
(long double where the platform has it). The reference is LAPACK getrf +
getri in the same precision, called per matrix through SciPy: for float32
input ``numpy.linalg.inv`` computes in float64, so it is no float32
reference.

Matrix classes: random Gaussian, graded (rows and columns scaled over eight
orders of magnitude), and ill-conditioned (condition number about 1e8 in double
and 1e5 in single precision, built from random orthogonal factors). n runs over 1..16 and a few larger orders;
the closed forms cover n <= 4, LAPACK the rest.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuinv
from gpuinv.engines import _closed_form

lapack = pytest.importorskip("scipy.linalg.lapack")

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
NS = list(range(1, 17)) + [24, 33, 64]
COUNT = 120  # matrices per (class, dtype, n)
FACTOR = 10  # the bar: within 10x of LAPACK
# Condition numbers of the ill-conditioned class: 1e8 in double precision
# (the issue's), 1e5 in single, where 1e8 is past 1/eps and rounding the
# matrix to float32 may make it exactly singular for LAPACK too.
ILL_COND = {"d": 1e8, "f": 1e5}

_ROUTINES = {
    np.dtype(np.float32): (lapack.sgetrf, lapack.sgetri),
    np.dtype(np.float64): (lapack.dgetrf, lapack.dgetri),
    np.dtype(np.complex64): (lapack.cgetrf, lapack.cgetri),
    np.dtype(np.complex128): (lapack.zgetrf, lapack.zgetri),
}


def eps(dtype):
    return float(np.finfo(dtype).eps)


def backward_error(a, x):
    """||A X - I||_1 / (||A||_1 ||X||_1) per matrix, in extended precision."""
    wide = np.clongdouble if a.dtype.kind == "c" else np.longdouble
    A = a.astype(wide)
    X = x.astype(wide)
    n = a.shape[-1]
    r = np.abs(A @ X - np.eye(n, dtype=wide)).sum(axis=-2).max(axis=-1)
    na = np.abs(A).sum(axis=-2).max(axis=-1)
    nx = np.abs(X).sum(axis=-2).max(axis=-1)
    return (r / (na * nx)).astype(np.float64)


def lapack_inverse(a):
    getrf, getri = _ROUTINES[a.dtype]
    out = np.empty_like(a)
    for i in range(len(a)):
        lu, piv, info = getrf(a[i])
        assert info == 0
        inv, info = getri(lu, piv)
        assert info == 0
        out[i] = inv
    return out


def _orthogonal(rng, count, n, complex_):
    g = rng.standard_normal((count, n, n))
    if complex_:
        g = g + 1j * rng.standard_normal((count, n, n))
    q, _ = np.linalg.qr(g)
    return q


def make(kind, count, n, dtype, seed):
    rng = np.random.default_rng(seed)
    complex_ = np.dtype(dtype).kind == "c"
    g = rng.standard_normal((count, n, n))
    if complex_:
        g = g + 1j * rng.standard_normal((count, n, n))
    if kind == "random":
        a = g
    elif kind == "graded":
        d = np.logspace(-4, 4, n)
        a = d[:, None] * g * d[::-1][None, :]
    elif kind == "illcond":
        if n == 1:
            a = g
        else:
            s = np.logspace(0, -np.log10(ILL_COND[np.dtype(dtype).char.lower()]), n)
            a = _orthogonal(rng, count, n, complex_) * s[None, None, :] @ _orthogonal(rng, count, n, complex_)
    else:
        raise ValueError(kind)
    return np.ascontiguousarray(a.astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "graded", "illcond"])
@pytest.mark.parametrize("n", NS)
def test_backward_error_within_10x_of_lapack(n, kind, dtype):
    a = make(kind, COUNT if n <= 16 else COUNT // 4, n, dtype, seed=n * 7 + len(kind))
    res = gpuinv.inv_ex(a, device="cpu")
    # The factorization may legitimately see a zero pivot only for exactly
    # singular input, which these classes never produce.
    assert (res.info == 0).all()
    ours = backward_error(a, res.inverse)
    ref = backward_error(a, lapack_inverse(a))
    floor = eps(dtype)  # LAPACK can be lucky on one matrix; compare against at least one ulp
    assert ours.max() <= FACTOR * max(ref.max(), floor), (ours.max() / eps(dtype), ref.max() / eps(dtype))
    # And matrix by matrix, for all but the rare lucky LAPACK result.
    per_matrix = ours <= FACTOR * np.maximum(ref, n * floor)
    assert per_matrix.mean() >= 0.99


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "illcond"])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 12, 16, 33, 64])
def test_positive_definite_backward_error_within_10x_of_lapack(n, kind, dtype):
    # assume_a="positive definite" (compiled: elimination without pivoting,
    # written out, or Cholesky, by n and dtype; else NumPy's Cholesky) on
    # positive definite matrices with condition numbers up to ILL_COND:
    # within 10x of LAPACK's general inverse, as the general route.
    g = make(kind, COUNT // 2 if n <= 16 else COUNT // 8, n, dtype, seed=n * 11 + len(kind))
    if kind == "illcond" and n > 1:
        # q diag(s) q^H with s from 1 down to 1 / ILL_COND: positive definite.
        rng = np.random.default_rng(n)
        q = _orthogonal(rng, len(g), n, np.dtype(dtype).kind == "c")
        s = np.logspace(0, -np.log10(ILL_COND[np.dtype(dtype).char.lower()]), n)
        a = (q * s[None, None, :]) @ np.conj(np.swapaxes(q, 1, 2))
    else:
        a = g @ np.conj(np.swapaxes(g, 1, 2)) + np.eye(n)
    a = np.ascontiguousarray(a.astype(dtype))
    res = gpuinv.inv_ex(a, device="cpu", assume_a="positive definite")
    assert (res.info == 0).all()
    full = np.triu(a) + np.conj(np.swapaxes(np.triu(a, 1), 1, 2))  # the matrix read
    ours = backward_error(full, res.inverse)
    ref = backward_error(full, lapack_inverse(full))
    floor = eps(dtype)
    assert ours.max() <= FACTOR * max(ref.max(), floor), (ours.max() / eps(dtype), ref.max() / eps(dtype))
    per_matrix = ours <= FACTOR * np.maximum(ref, n * floor)
    assert per_matrix.mean() >= 0.99


# --------------------------------------------------------------------------
# The closed forms' guard (n = 3, 4)
# --------------------------------------------------------------------------


def near_rank_deficient(count, n, dtype, seed):
    """Matrices close to rank n - 2: small adjugate against max|a|**(n-1).

    A rank-(n-2) product plus a perturbation of relative size 1e-8..1 (1e-4..1
    in single precision): the ratio max|a|**(n-1) / max|adj(a)| sweeps from
    about 1 to 1e9, across the guard's threshold.
    """
    rng = np.random.default_rng(seed)
    lo = -4 if np.finfo(dtype).eps > 1e-10 else -8
    left = rng.standard_normal((count, n, n - 2))
    right = rng.standard_normal((count, n - 2, n))
    delta = 10.0 ** rng.uniform(lo, 0, count)
    a = left @ right + delta[:, None, None] * rng.standard_normal((count, n, n))
    if np.dtype(dtype).kind == "c":
        a = a + 1j * (left @ right[:, ::-1] + delta[:, None, None] * rng.standard_normal((count, n, n)))
    return a.astype(dtype)


def adjugate_ratio(a):
    """max|a|**(n-1) / max|adj(a)|, the quantity GUARD bounds (in float64/complex128)."""
    n = a.shape[-1]
    wide = a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)
    adj = np.linalg.inv(wide) * np.linalg.det(wide)[:, None, None]
    return np.abs(wide).max(axis=(1, 2)) ** (n - 1) / np.abs(adj).max(axis=(1, 2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [3, 4])
def test_guard_keeps_closed_forms_within_10x(n, dtype):
    a = near_rank_deficient(4000, n, dtype, seed=n)
    out = np.empty_like(a)
    redo = _closed_form.closed_form_inverse(a, out)
    accepted = np.ones(len(a), bool) if redo is None else ~redo
    ratio = adjugate_ratio(a)
    # The guard is the ratio test, up to rounding, and for complex up to
    # measuring entries by max(|re|, |im|), within sqrt(2) of |z|: a factor
    # sqrt(2)**n on max|a|**(n-1) / max|adj|.
    slack = 2 ** (n / 2) if a.dtype.kind == "c" else 1.01
    assert (ratio[accepted] <= _closed_form.GUARD[n] * slack).all()
    assert accepted[ratio <= _closed_form.GUARD[n] / slack].all()
    # Everything the closed form keeps is within 10x of LAPACK's worst
    # backward error on the same family; the rest goes to LAPACK.
    ours = backward_error(a[accepted], out[accepted])
    ref = backward_error(a, lapack_inverse(a))
    assert ours.max() <= FACTOR * max(ref.max(), eps(dtype))
    # Through the public API the flagged ones come back at LAPACK accuracy.
    full = backward_error(a, gpuinv.inv(a, device="cpu"))
    assert full.max() <= FACTOR * max(ref.max(), eps(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, kept", [(3, 0.995), (4, 0.95)])
def test_guard_keeps_most_random_matrices_on_the_fast_path(n, kept, dtype):
    # Measured with 2e4 Gaussian matrices: GUARD = 8 keeps 99.9% at n = 3
    # and 97.2% at n = 4 on the closed form (the rest go to LAPACK).
    a = np.random.default_rng(n).standard_normal((20000, n, n)).astype(dtype)
    out = np.empty_like(a)
    redo = _closed_form.closed_form_inverse(a, out)
    fraction = 1.0 if redo is None else 1 - redo.mean()
    assert fraction >= kept


# --------------------------------------------------------------------------
# The closed-form solve (n = 3, 4: adj(a) b / det(a) with the inverse's guard)
# --------------------------------------------------------------------------

_GESV = {
    np.dtype(np.float32): lapack.sgesv,
    np.dtype(np.float64): lapack.dgesv,
    np.dtype(np.complex64): lapack.cgesv,
    np.dtype(np.complex128): lapack.zgesv,
}


def solve_backward_error(a, x, b):
    """||A x - b||_inf / (||A||_inf ||x||_inf + ||b||_inf) per system, in extended precision."""
    wide = np.clongdouble if a.dtype.kind == "c" else np.longdouble
    A, X, B = a.astype(wide), x.astype(wide), b.astype(wide)
    r = np.abs(A @ X - B).max(axis=(1, 2))
    scale = np.abs(A).sum(axis=2).max(axis=1) * np.abs(X).max(axis=(1, 2)) + np.abs(B).max(axis=(1, 2))
    return (r / scale).astype(np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["random", "graded", "illcond", "near rank n-2"])
@pytest.mark.parametrize("n", [3, 4])
def test_closed_form_solve_accuracy(n, kind, dtype):
    # The closed-form solve accepts what the closed-form inverse accepts
    # (the guard, the near-singularity test) and hands the rest to gesv.
    # Random right-hand sides: within 10x of gesv's worst (at least n ulps).
    # Right-hand sides in the range of a (b = a y): no worse than 10x
    # LAPACK's inv(a) @ b, and within 10x of gesv in the median. (Like any
    # explicit-inverse or Cramer method it is not backward stable for
    # ill-conditioned a with such b; the guard bounds how far that goes.)
    if kind == "near rank n-2":
        a = near_rank_deficient(600, n, dtype, seed=n + 40)
    else:
        a = make(kind, 300, n, dtype, seed=n * 11 + len(kind))
    rng = np.random.default_rng(n)
    y = rng.standard_normal((len(a), n, 1))
    if a.dtype.kind == "c":
        y = y + 1j * rng.standard_normal(y.shape)
    gesv = _GESV[a.dtype]
    floor = eps(dtype)
    for b in (y.astype(dtype), (a @ y.astype(dtype)).astype(dtype)):
        res = gpuinv.solve_ex(a, b, device="cpu")
        assert (res.info == 0).all()
        ours = solve_backward_error(a, res.solution, b)
        ref = solve_backward_error(a, np.stack([gesv(a[i], b[i])[2] for i in range(len(a))]), b)
        inv_b = solve_backward_error(a, lapack_inverse(a) @ b, b)
        if np.array_equal(b, y.astype(dtype)):
            assert ours.max() <= FACTOR * max(ref.max(), n * floor), (ours.max() / floor, ref.max() / floor)
        else:
            assert ours.max() <= FACTOR * max(inv_b.max(), n * floor), (ours.max() / floor,
                                                                       inv_b.max() / floor)
            assert np.median(ours) <= FACTOR * max(np.median(ref), floor)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [3, 4])
def test_closed_form_solve_hands_back_what_the_inverse_does(n, dtype):
    a = near_rank_deficient(2000, n, dtype, seed=n + 7)
    b = np.random.default_rng(n).standard_normal((len(a), n, 2)).astype(dtype)
    out = np.empty(b.shape, dtype=a.dtype)
    redo_solve = _closed_form.closed_form_solve(a, b, out)
    redo_inv = _closed_form.closed_form_inverse(a, np.empty_like(a))
    none = np.zeros(len(a), bool)
    np.testing.assert_array_equal(none if redo_solve is None else redo_solve,
                                  none if redo_inv is None else redo_inv)
    ok = ~redo_solve if redo_solve is not None else ~none
    assert 0 < ok.mean() < 1  # the family straddles the guard
    # Through the public API every system is solved, the flagged ones by gesv.
    x = gpuinv.solve(a, b, device="cpu")
    ref = np.stack([_GESV[a.dtype](a[i], b[i])[2] for i in range(len(a))])
    assert solve_backward_error(a[~ok], x[~ok], b[~ok]).max() <= FACTOR * max(
        solve_backward_error(a[~ok], ref[~ok], b[~ok]).max(), n * eps(dtype))


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "lapack"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
@pytest.mark.parametrize("cond", [1e2, 1e8, 1e12])
@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_solve_backward_stable_at_every_n(n, cond, dtype, compiled, monkeypatch):
    # Issue 19 item 3: the closed-form solve at n <= 4 was inv(a) @ b in
    # disguise, p99 backward error 7.7e10 eps at n = 2, cond 1e12, where
    # gesv gives 0.4 eps (a Kalman filter's 2x2 innovation solve). The
    # measure is the issue's: a = U diag(s) V^H at condition `cond`,
    # b = a x, x ~ N(0, 1), backward error ||a x - b|| / (||a|| ||x|| + ||b||)
    # in the infinity norm. Bound: 2x gesv's p99 in the same process, with
    # a floor of 2 eps (both are near 0.4 eps on every OpenBLAS kernel; the
    # old closed forms exceeded it by 1e3 at cond 1e8 and 1e12, and by 4x
    # at cond 1e2). float32 stops at cond 1e6 (past 1/eps the matrix may
    # round to singular).
    monkeypatch.setattr(gpuinv.config, "cpu_compiled", compiled)
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        cond = min(cond, 1e6)
    rng = np.random.default_rng(int(np.log10(cond)) * 10 + n)
    count = 1000
    u = _orthogonal(rng, count, n, dtype.kind == "c")
    v = _orthogonal(rng, count, n, dtype.kind == "c")
    s = np.logspace(0, -np.log10(cond), n)
    a = ((u * s[None, None, :]) @ v.conj().swapaxes(1, 2)).astype(dtype)
    x = rng.standard_normal((count, n, 1))
    b = (a.astype(np.complex128 if dtype.kind == "c" else np.float64) @ x).astype(dtype)
    res = gpuinv.solve_ex(a, b, device="cpu")
    assert (res.info == 0).all()
    ours = np.percentile(solve_backward_error(a, res.solution, b), 99)
    gesv = _GESV[dtype]
    ref = np.percentile(solve_backward_error(
        a, np.stack([gesv(a[i], b[i])[2] for i in range(count)]), b), 99)
    assert ours <= 2 * max(ref, eps(dtype)), (ours / eps(dtype), ref / eps(dtype))
