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
    res = gpuinv.inv_ex(a, device="cpu")
    assert (res.info == 0).all()
    ref = np.linalg.inv(a)
    np.testing.assert_allclose(res.inverse, ref, rtol=1e-10, atol=0)


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
    recursive one) meets the same zero pivot.
    """
    out = [(np.zeros((n, n), dtype=dtype), 1)]
    for c in range(n):
        a = random_stack(1, n, dtype, seed=int(rng.integers(1 << 30)))[0]
        a[:, c] = 0
        out.append((a, None))  # the step comes from LAPACK: c + 1 unless an earlier pivot is zero
    for _ in range(3 * n):
        u = np.triu(random_stack(1, n, dtype, seed=int(rng.integers(1 << 30)))[0])
        zeros = rng.random(n) < 0.4
        u[np.diag_indices(n)] *= ~zeros
        p = rng.permutation(n)
        step = int(np.argmax(zeros)) + 1 if zeros.any() else 0
        out.append((u[p], step))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", list(range(1, 11)) + [16, 33])
def test_info_equals_lapack_getrf(dtype, n):
    rng = np.random.default_rng(n)
    cases = exactly_singular(n, dtype, rng)
    a = np.stack([m for m, _ in cases])
    res = gpuinv.inv_ex(a, device="cpu")
    for i, (m, step) in enumerate(cases):
        ref = GETRF[np.dtype(dtype)](m)[2]
        if step is not None:
            assert ref == step  # the construction is what we think it is
        assert res.info[i] == ref, (i, m)
        if ref > 0:
            assert np.isnan(res.inverse[i]).all()
        else:
            np.testing.assert_allclose(
                res.inverse[i] @ m.astype(wide(dtype)), np.eye(n), atol=1e4 * eps(dtype) * n
            )


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("n", range(2, 10))
def test_singular_in_exact_arithmetic_only(dtype, n):
    # arange(n*n) is singular in exact arithmetic for n >= 3; rounding in the
    # factorization may leave a tiny non-zero pivot. gpuinv reports what its
    # factorization sees, as LAPACK does:
    # * k > 0 and a NaN inverse when an exactly zero pivot is met;
    # * info 0 and a finite inverse (with a small backward error for the
    #   floating-point matrix) otherwise.
    # For these matrices the verdict equals LAPACK's own (OpenBLAS dgetrf/
    # zgetrf); the step may differ, because which pivot rounds to exactly
    # zero depends on the order of the updates.
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
        ref = GETRF[np.dtype(dtype)](m)[2]
        assert (res.info[i] == 0) == (ref == 0), (i, res.info[i], ref)
        if res.info[i] > 0:
            assert np.isnan(res.inverse[i]).all()
        else:
            x = res.inverse[i]
            assert np.isfinite(x).all()
            backward = np.linalg.norm(m @ x - np.eye(n), 1) / (np.linalg.norm(m, 1) * np.linalg.norm(x, 1))
            assert backward <= 100 * n * eps(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128])
@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("scale", [0.1, 1 / 3, 1.7])
def test_closed_forms_take_lapacks_verdict_on_rank_deficient(dtype, n, scale):
    # Regression: the closed forms used to trust a rounded, tiny but non-zero
    # determinant, returning info 0 where LAPACK meets an exact zero pivot
    # (up to 8% of these matrices). Numerically singular matrices now go to
    # the pivoting route and get LAPACK's verdict.
    rng = np.random.default_rng(n)
    rank = rng.integers(1, n, size=300)
    mats = np.stack(
        [rng.integers(-4, 5, (n, r)) @ rng.integers(-4, 5, (r, n)) for r in rank]
    ) * scale
    mats = mats.astype(dtype)
    info = gpuinv.inv_ex(mats, device="cpu").info
    ref = np.array([GETRF[np.dtype(dtype)](m)[2] for m in mats])
    np.testing.assert_array_equal(info != 0, ref != 0)


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
