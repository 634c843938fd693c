"""Extreme values: huge and tiny scales, subnormals, near-singular and mixed batches.

The closed forms (n <= 4) rescale every matrix by a power of two before
forming the determinant; these tests check that the rescaling is exact and
that nothing over- or underflows, and that every failure in a batch gets its
own info code without disturbing its neighbours.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuinv
from gpuinv.engines import _closed_form, cpu_routes
from gpuinv.engines.cpu import _lapack_inverse

lapack = pytest.importorskip("scipy.linalg.lapack")

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
NS = list(range(1, 9)) + [12, 33]
GETRF = {
    np.dtype(np.float32): lapack.sgetrf,
    np.dtype(np.float64): lapack.dgetrf,
    np.dtype(np.complex64): lapack.cgetrf,
    np.dtype(np.complex128): lapack.zgetrf,
}
# Scales whose inverses stay normal numbers for the matrices below (entries
# of size about n, inverses of size about 1/n).
SCALES = {
    "f": (1e-300, 1e300, 1e-200, 1e200, 2.0**-1000, 2.0**1000),
    "s": (1e-35, 1e35, 1e-30, 1e30, 2.0**-120, 2.0**120),
}


def wide(dtype):
    return np.complex128 if np.dtype(dtype).kind == "c" else np.float64


def eps(dtype):
    return float(np.finfo(dtype).eps)


def random_stack(count, n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((count, n, n))
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.standard_normal((count, n, n))
    return (a + 2 * n * np.eye(n)).astype(dtype)


def single(dtype):
    return np.dtype(dtype).itemsize // (2 if np.dtype(dtype).kind == "c" else 1) == 4


def scales_for(dtype):
    return SCALES["s" if single(dtype) else "f"]


# --------------------------------------------------------------------------
# inv(s * A) == inv(A) / s
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", NS)
def test_scaled_matrices(dtype, n):
    a = random_stack(64, n, dtype, seed=n)
    x = gpuinv.inv(a, device="cpu")
    for s in scales_for(dtype):
        scaled = (a.astype(wide(dtype)) * s).astype(dtype)
        y = gpuinv.inv(scaled, device="cpu")  # raises if any matrix was flagged
        assert np.isfinite(y).all()
        expected = x.astype(wide(dtype)) / s
        err = np.abs(y - expected).max(axis=(1, 2)) / np.abs(expected).max(axis=(1, 2))
        # s * A rounds each entry once (exact for powers of two): a few eps
        # times the condition number (about 3 for these matrices).
        assert err.max() <= 200 * eps(dtype), (s, err.max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_power_of_two_scaling_is_exact_in_closed_forms(dtype, n):
    # The closed forms normalise every matrix by a power of two: s * A and A
    # normalise to the same matrix, so inv(s * A) is inv(A) / s bit for bit.
    a = random_stack(256, n, dtype, seed=10 + n)
    x = gpuinv.inv(a, device="cpu")
    # Keep every scaled entry normal: a subnormal s * A would round.
    big = 100 if single(dtype) else 1000
    for k in (-big, -77, -1, 1, 33, big):
        s = 2.0**k
        y = gpuinv.inv((a * s).astype(dtype), device="cpu")
        np.testing.assert_array_equal(y, (x / s).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", NS)
def test_mixed_scales_in_one_batch(dtype, n):
    # Each matrix has its own scale: the closed forms normalise per matrix.
    a = random_stack(len(scales_for(dtype)) * 4, n, dtype, seed=20 + n)
    s = np.resize(np.array(scales_for(dtype) + (1.0,)), len(a))
    scaled = (a.astype(wide(dtype)) * s[:, None, None]).astype(dtype)
    res = gpuinv.inv_ex(scaled, device="cpu")
    assert (res.info == 0).all()
    expected = gpuinv.inv(a, device="cpu").astype(wide(dtype)) / s[:, None, None]
    err = np.abs(res.inverse - expected).max(axis=(1, 2)) / np.abs(expected).max(axis=(1, 2))
    assert err.max() <= 200 * eps(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_graded_extremes(dtype, n):
    # Entries from 1e-150 to 1e150 in one matrix: the determinant of the
    # normalised matrix underflows, so the closed form must hand it to LAPACK.
    d = np.logspace(-150, 150, n)
    rng = np.random.default_rng(n)
    q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    a = (np.diag(d) + np.triu(rng.standard_normal((n, n)), 1) * d[None, :] * 0.1).astype(dtype)
    a = np.stack([a, a.T, q @ q.T])
    ref = np.linalg.inv(a)
    for compiled in (False, True):
        old = gpuinv.config.cpu_compiled
        gpuinv.config.cpu_compiled = compiled
        try:
            res = gpuinv.inv_ex(a, device="cpu")
            closed_forms = n <= 4 and cpu_routes.compiled_for("invert", n, dtype) is None
        finally:
            gpuinv.config.cpu_compiled = old
        assert (res.info == 0).all()
        if closed_forms:
            # The closed forms (with the guard's handover to LAPACK).
            np.testing.assert_allclose(res.inverse, ref, rtol=1e-10, atol=0)
            continue
        _check_graded_lu(a, res, ref, dtype)


def _check_graded_lu(a, res, ref, dtype):
    # n = 6, and n <= 4 on the compiled route (the compiled LU, or LAPACK):
    # a.T's inverse has entries from 1e-300 to 1e150, and its tiny ones carry rounding errors far above themselves
    # for every LU (LAPACK's elementwise error there measured 1e74, the
    # compiled kernel's 5e13): entrywise agreement with LAPACK held only while
    # LAPACK was compared with itself. a and q q^T keep the entrywise check;
    # a.T is checked against its exact inverse, normwise, within 10x of
    # LAPACK's own error (both were near 1e-15 of the largest entry).
    for i in (0, 2):
        np.testing.assert_allclose(res.inverse[i], ref[i], rtol=1e-10, atol=0)
    exact = _exact_inverse(a[1])
    top = np.abs(exact).max()
    ours = np.abs(res.inverse[1] - exact).max() / top
    lapacks = np.abs(ref[1] - exact).max() / top
    assert ours <= 10 * max(lapacks, eps(dtype)), (ours, lapacks)


def _exact_inverse(m):
    """The inverse of a real or complex matrix, in exact rational arithmetic, rounded."""
    from fractions import Fraction

    n = len(m)
    parts = [m.real] + ([m.imag] if np.iscomplexobj(m) else [])
    if len(parts) == 2 and not parts[1].any():
        parts = parts[:1]
    if len(parts) == 2:  # [[A, -B], [B, A]] is the real form of A + iB
        big = np.block([[parts[0], -parts[1]], [parts[1], parts[0]]])
        inv = _exact_inverse(big)
        return inv[:n, :n] + 1j * inv[n:, :n]
    rows = [[Fraction(float(v)) for v in row] + [Fraction(int(i == j)) for j in range(n)]
            for i, row in enumerate(parts[0])]
    for k in range(n):
        p = next(i for i in range(k, n) if rows[i][k] != 0)
        rows[k], rows[p] = rows[p], rows[k]
        pivot = rows[k][k]
        rows[k] = [v / pivot for v in rows[k]]
        for i in range(n):
            if i != k and rows[i][k] != 0:
                f = rows[i][k]
                rows[i] = [v - f * w for v, w in zip(rows[i], rows[k])]
    return np.array([[float(v) for v in row[n:]] for row in rows])


def test_huge_finite_entries_are_not_mistaken_for_inf():
    # The block's sum overflows to inf; the engine must then check each
    # matrix and find them all finite.
    m = np.finfo(np.float64).max / 2
    a = np.array([[[m, m], [0.0, m]], [[m, 0.0], [0.0, m]], [[1.0, 2.0], [3.0, 4.0]]])
    res = gpuinv.inv_ex(a, device="cpu")
    np.testing.assert_array_equal(res.info, [0, 0, 0])
    np.testing.assert_allclose(res.inverse, np.linalg.inv(a), rtol=1e-15)


# --------------------------------------------------------------------------
# Subnormals
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
def test_all_entries_subnormal(dtype, n):
    # Small integer matrices times 2**(emin - 2): every non-zero entry (at
    # most 3 * 2**(emin - 2)) is subnormal and exact; the inverse (entries
    # below 0.35 before scaling by 2**(2 - emin)) is representable.
    emin = np.finfo(dtype).minexp  # -126 or -1022
    s = 2.0 ** (emin - 2)
    base = 3 * np.eye(n) + np.eye(n, k=1) - np.eye(n, k=-1)
    a = (base * s).astype(dtype)
    assert np.all((a == 0) | (np.abs(a) < np.finfo(dtype).tiny))
    res = gpuinv.inv_ex(a[None], device="cpu")
    assert res.info[0] == 0
    expected = np.linalg.inv(base) / s
    np.testing.assert_allclose(res.inverse[0], expected.astype(dtype), rtol=10 * eps(dtype), atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 12])
def test_subnormal_matrices_among_normal_ones(dtype, n):
    # Regression: LAPACK (OpenBLAS getrf/getrs) returned 30% errors for
    # matrices of subnormals, and the closed forms sent them there because
    # s / det overflowed. Each such matrix is now scaled on its own.
    emin = np.finfo(dtype).minexp
    base = 3 * np.eye(n) + np.eye(n, k=1) - np.eye(n, k=-1)
    a = random_stack(9, n, dtype, seed=n)
    for i, k in ((1, emin - 2), (4, emin - 1), (7, emin + 3)):
        a[i] = base * 2.0**k
    res = gpuinv.inv_ex(a, device="cpu")
    assert (res.info == 0).all()
    expected = np.linalg.inv(a.astype(wide(dtype)))
    for i, k in ((1, emin - 2), (4, emin - 1), (7, emin + 3)):
        expected[i] = np.ldexp(np.linalg.inv(base), -k)
    err = np.abs(res.inverse - expected).max(axis=(1, 2)) / np.abs(expected).max(axis=(1, 2))
    assert err.max() <= 100 * eps(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [2, 3, 4, 5, 8])
def test_subnormal_off_diagonal_entries(dtype, n):
    tiny = np.finfo(dtype).smallest_subnormal
    a = random_stack(16, n, dtype, seed=n)
    a[:, 0, -1] = tiny * 3
    a[:, -1, 0] = -tiny
    res = gpuinv.inv_ex(a, device="cpu")
    assert (res.info == 0).all()
    ref = np.linalg.inv(a.astype(wide(dtype)))
    np.testing.assert_allclose(res.inverse, ref, rtol=100 * eps(dtype), atol=100 * eps(dtype))


def test_inverse_that_overflows_is_reported_as_lapack_does():
    # Finite and non-singular, but 1/1e-320 is not a float64: LAPACK's
    # factorization succeeds (info 0) and its solve produces inf and NaN.
    # gpuinv reports the same: info 0, the non-finite entries LAPACK gives.
    a = np.diag([1.0, 1e-320])
    res = gpuinv.inv_ex(a, device="cpu")
    assert res.info == 0
    assert res.inverse[1, 1] == np.inf
    expected = np.linalg.inv(a)
    np.testing.assert_array_equal(res.inverse, expected)


# --------------------------------------------------------------------------
# Singular matrices: info codes against LAPACK's getrf
# --------------------------------------------------------------------------


def exactly_singular(n, dtype, rng):
    """Matrices whose first zero pivot does not depend on rounding.

    Returns a list of (matrix, step): a zero matrix, a zero column, and row
    permutations of triangular matrices with zeros on the diagonal. Every
    elimination multiplier below a zero is exactly zero, so any partial
    pivoting LU (LAPACK's left-looking getf2, a right-looking one, a
    recursive one) meets the same zero pivot, whatever the order of its
    floating-point updates.
    """
    out = [(np.zeros((n, n), dtype=dtype), 1)]
    for c in range(n):
        a = random_stack(1, n, dtype, seed=int(rng.integers(1 << 30)))[0]
        a[:, c] = 0
        # The columns before c are those of a diagonally dominant matrix, so
        # their pivots are far from zero; column c stays exactly zero under
        # every update (each subtracts a multiple of a zero).
        out.append((a, c + 1))
    for _ in range(3 * n):
        u = np.triu(random_stack(1, n, dtype, seed=int(rng.integers(1 << 30)))[0])
        zeros = rng.random(n) < 0.4
        u[np.diag_indices(n)] *= ~zeros
        p = rng.permutation(n)
        step = int(np.argmax(zeros)) + 1 if zeros.any() else 0
        out.append((u[p], step))
    return out


def backward_error(a, x):
    """||A X - I||_1 / (||A||_1 ||X||_1), evaluated in extended precision."""
    w = np.clongdouble if a.dtype.kind == "c" else np.longdouble
    a, x = a.astype(w), x.astype(w)
    residual = np.abs(a @ x - np.eye(a.shape[-1], dtype=w)).sum(axis=-2).max(axis=-1)
    norms = np.abs(a).sum(axis=-2).max(axis=-1) * np.abs(x).sum(axis=-2).max(axis=-1)
    return float(residual / norms)


def assert_a_correct_answer(m, inverse, info, first_step=1):
    """``(inverse, info)`` is an answer a correct LU inverse can give for ``m``.

    For a matrix that is singular in exact arithmetic, or within rounding of
    singular, whether a pivot rounds to exactly zero depends on the order of
    the floating-point updates: OpenBLAS's SkylakeX, Haswell and Nehalem
    kernels, and SciPy's and NumPy's copies of OpenBLAS, give different
    verdicts and steps for the same matrix. So either answer passes:

    * info k > 0, with ``first_step <= k <= n`` (the steps before
      ``first_step`` have pivots far from zero) and an all-NaN inverse;
    * info 0, with a finite inverse of small backward error (LAPACK's bound
      for getrf + getrs is a small multiple of n * eps; the largest measured
      here, under the SkylakeX, Haswell, Sandybridge and Nehalem kernels, is
      0.18 n eps, so 10 n eps holds with a wide margin).
    """
    n = m.shape[-1]
    if info > 0:
        assert first_step <= info <= n, (info, first_step)
        assert np.isnan(inverse).all()
    else:
        assert info == 0
        assert np.isfinite(inverse).all()
        assert backward_error(m, inverse) <= 10 * n * eps(m.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", list(range(1, 11)) + [16, 33])
def test_info_equals_lapack_getrf(dtype, n):
    # Only matrices whose zero pivot is determined: the step is compared
    # exactly, with the construction and with LAPACK.
    rng = np.random.default_rng(n)
    cases = exactly_singular(n, dtype, rng)
    a = np.stack([m for m, _ in cases])
    res = gpuinv.inv_ex(a, device="cpu")
    for i, (m, step) in enumerate(cases):
        assert GETRF[np.dtype(dtype)](m)[2] == step  # the construction is what we think it is
        assert res.info[i] == step, (i, m)
        if step > 0:
            assert np.isnan(res.inverse[i]).all()
        else:
            np.testing.assert_allclose(
                res.inverse[i] @ m.astype(wide(dtype)), np.eye(n), atol=1e4 * eps(dtype) * n
            )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", range(2, 13))
def test_singular_in_exact_arithmetic_only(dtype, n):
    # Rank 2 in exact arithmetic for n >= 3 (and non-singular at n = 2);
    # rounding in the factorization may leave a tiny non-zero pivot. gpuinv
    # reports what its factorization sees, as LAPACK does, so both answers
    # are correct and which one comes depends on the OpenBLAS kernel:
    # * k > 0 and a NaN inverse when an exactly zero pivot is met;
    # * info 0 and a finite inverse with a small backward error otherwise.
    # The first two pivots are of the size of the entries, so k >= 3.
    mats = np.stack(
        [
            np.arange(n * n, dtype=float).reshape(n, n),
            np.arange(1, n * n + 1, dtype=float).reshape(n, n),
            0.1 * np.arange(n * n, dtype=float).reshape(n, n),
            np.add.outer(np.arange(n), np.arange(n)).astype(float),  # Hankel, rank 2
        ]
    ).astype(dtype)
    res = gpuinv.inv_ex(mats, device="cpu")
    for i, m in enumerate(mats):
        if n == 2:
            assert res.info[i] == 0  # well-conditioned: determined
        assert_a_correct_answer(m, res.inverse[i], res.info[i], first_step=3)


def rank_deficient(n, dtype, scale, count=300):
    """Products of small integer matrices of rank 1 .. n-1, times ``scale``.

    Rounding ``scale`` times an integer makes them non-singular by about eps:
    condition numbers near 1 / eps.
    """
    rng = np.random.default_rng(n)
    rank = rng.integers(1, n, size=count)
    mats = np.stack([rng.integers(-4, 5, (n, r)) @ rng.integers(-4, 5, (r, n)) for r in rank]) * scale
    return mats.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("scale", [0.1, 1 / 3, 1.7])
def test_closed_forms_take_lapacks_verdict_on_rank_deficient(dtype, n, scale, monkeypatch):
    # Regression: the closed forms used to trust a rounded, tiny but non-zero
    # determinant, returning info 0 where LAPACK meets an exact zero pivot
    # (up to 8% of these matrices). Numerically singular matrices now go to
    # the pivoting route and get LAPACK's verdict.
    mats = rank_deficient(n, dtype, scale)
    # The closed forms hand every one of them over (their arithmetic is
    # elementwise NumPy, the same on every CPU).
    redo = _closed_form.closed_form_inverse(mats, np.empty_like(mats))
    assert redo is not None and redo.all()
    # Through the API's closed-form route (the route without Numba: with it,
    # the compiled LU takes n = 2..4 since issue 19, and its verdict is its
    # own, bit for bit the loop kernel's: tests/test_cpu_unrolled.py) they get
    # exactly what the LAPACK route gives them in this process (the same calls
    # on the same matrices: determined, whatever the OpenBLAS kernel).
    monkeypatch.setattr(gpuinv.config, "cpu_compiled", False)
    res = gpuinv.inv_ex(mats, device="cpu")
    lapack_out = np.empty_like(mats)
    lapack_info = np.zeros(len(mats), dtype=np.int32)
    _lapack_inverse(mats, lapack_out, lapack_info)
    np.testing.assert_array_equal(res.info, lapack_info)
    np.testing.assert_array_equal(res.inverse, lapack_out)
    # Which verdict that is depends on the kernel; each is a correct answer,
    # the compiled route's too.
    monkeypatch.setattr(gpuinv.config, "cpu_compiled", True)
    compiled = gpuinv.inv_ex(mats, device="cpu")
    for res in (res, compiled):
        for m, x, k in zip(mats, res.inverse, res.info):
            assert_a_correct_answer(m, x, k)


# --------------------------------------------------------------------------
# NaN, Inf and singular matrices mixed in one batch
# --------------------------------------------------------------------------


def mixed_batch(n, dtype, count=40, seed=0):
    """A well-conditioned batch with failures planted at known positions.

    Returns (a, expected_info).
    """
    rng = np.random.default_rng(seed)
    a = random_stack(count, n, dtype, seed=seed)
    info = np.zeros(count, dtype=np.int32)
    positions = rng.permutation(count)[:8]
    i, j = rng.integers(n, size=2)
    complex_kind = np.dtype(dtype).kind == "c"
    a[positions[0], i, j] = np.nan
    a[positions[1], i, j] = np.inf
    a[positions[2], j, i] = -np.inf
    a[positions[3]] = np.nan
    if complex_kind:
        a[positions[4], i, j] = complex(1.0, np.nan)  # NaN in the imaginary part only
    else:
        a[positions[4], i, j] = np.nan
    info[positions[:5]] = -1
    a[positions[5]] = 0
    info[positions[5]] = 1
    c = int(rng.integers(n))
    a[positions[6], :, c] = 0  # the other columns stay diagonally dominant
    info[positions[6]] = c + 1
    a[positions[7], :, c] = np.inf
    if n > 1:
        a[positions[7], :, (c + 1) % n] = 0  # non-finite wins over singular
    info[positions[7]] = -1
    return a, info


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("chunk_bytes", [None, 200])
def test_mixed_failures_each_reported(dtype, n, chunk_bytes, monkeypatch):
    if chunk_bytes is not None:
        monkeypatch.setattr(gpuinv.config, "cpu_chunk_bytes", chunk_bytes)
    a, expected = mixed_batch(n, dtype, seed=n)
    original = a.copy()
    res = gpuinv.inv_ex(a, device="cpu")
    np.testing.assert_array_equal(a, original)
    np.testing.assert_array_equal(res.info, expected)
    failed = expected != 0
    assert np.isnan(res.inverse[failed]).all()
    ok = ~failed
    ref = np.linalg.inv(a[ok].astype(wide(dtype)))
    tol = 100 * eps(dtype)
    np.testing.assert_allclose(res.inverse[ok], ref, rtol=tol, atol=tol)

    # The policies see exactly these failures.
    y = gpuinv.inv(a, device="cpu", on_singular="nan")
    assert np.isnan(y[failed]).all()
    np.testing.assert_array_equal(y[ok], res.inverse[ok])
    with pytest.raises(gpuinv.SingularMatrixError) as e:
        gpuinv.inv(a, device="cpu")
    assert e.value.indices == [(int(i),) for i in np.flatnonzero(failed)]
    np.testing.assert_array_equal(e.value.info, expected)
    assert str(e.value).startswith(f"{failed.sum()} of {len(a)} matrices could not be inverted: ")


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_matrix_failing(dtype):
    a = np.full((5, 3, 3), np.nan, dtype=dtype)
    a[1] = 0
    res = gpuinv.inv_ex(a, device="cpu")
    np.testing.assert_array_equal(res.info, [-1, 1, -1, -1, -1])
    assert np.isnan(res.inverse).all()
