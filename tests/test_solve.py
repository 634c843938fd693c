"""Batched ``solve`` / ``solve_ex`` on the CPU engine (issue 10).

NumPy's own TestSolve cases (numpy/linalg/tests/test_linalg.py) in our
words, NumPy 2's broadcasting rules for ``b``, dtypes, info codes, policies,
structure and hostile input in the style of tests/test_hostile.py.
Solutions are compared through residuals or against NumPy within
tolerances, never bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuinv

DEVICES = ["cpu", "auto"]
DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
RTOL = {np.dtype(np.float32): 2e-4, np.dtype(np.complex64): 2e-4,
        np.dtype(np.float64): 1e-11, np.dtype(np.complex128): 1e-11}


@pytest.fixture
def rng():
    return np.random.default_rng(77)


def well(rng, shape, dtype=np.float64):
    n = shape[-1]
    a = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.standard_normal(shape)
    return (a + 2 * n * np.eye(n)).astype(dtype)


def rhs(rng, shape, dtype=np.float64):
    b = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        b = b + 1j * rng.standard_normal(shape)
    return b.astype(dtype)


# --- NumPy's TestSolve, in our words ------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_types(device, dtype):
    x = np.array([[1, 0.5], [0.5, 1]], dtype=dtype)
    assert gpuinv.solve(x, x, device=device).dtype == dtype


def test_1_d():
    a = np.arange(8).reshape(2, 2, 2)
    assert gpuinv.solve(a, np.arange(2)).shape == (2, 2)
    # Anything but 1-D is a stack of matrices.
    assert gpuinv.solve(a, np.arange(4).reshape(2, 2)).shape == (2, 2, 2)
    with pytest.raises(ValueError):
        gpuinv.solve(a, np.arange(2).reshape(1, 2))


def test_0_size():
    a = np.arange(8).reshape(2, 2, 2)
    b = np.arange(6).reshape(1, 2, 3)
    expected = np.linalg.solve(a, b)[:, 0:0, :]
    result = gpuinv.solve(a[:, 0:0, 0:0], b[:, 0:0, :])
    np.testing.assert_array_equal(result, expected)
    assert result.shape == expected.shape
    with pytest.raises(np.linalg.LinAlgError):
        gpuinv.solve(a[:, 0:0, 0:1], b)
    with pytest.raises(ValueError):
        gpuinv.solve(a, b[:, 0:0, :])
    bad = np.arange(6).reshape(1, 3, 2)
    with pytest.raises(ValueError):
        gpuinv.solve(a, bad)
    with pytest.raises(ValueError):
        gpuinv.solve(a[0:0], bad[0:0])
    expected = np.linalg.solve(a, np.arange(2))[:, 0:0]
    result = gpuinv.solve(a[:, 0:0, 0:0], np.arange(2)[0:0])
    np.testing.assert_array_equal(result, expected)
    b3 = np.arange(3).reshape(1, 3)
    for args in ((a, b3), (a[0:0], b3[0:0]), (a[:, 0:0, 0:0], b3)):
        with pytest.raises(ValueError):
            gpuinv.solve(*args)


def test_0_size_k():
    a = np.arange(4).reshape(1, 2, 2)
    b = np.arange(6).reshape(3, 2, 1)
    expected = np.linalg.solve(a, b)[:, :, 0:0]
    result = gpuinv.solve(a, b[:, :, 0:0])
    np.testing.assert_array_equal(result, expected)
    assert result.shape == (3, 2, 0)
    expected = np.linalg.solve(a, b)[:, 0:0, 0:0]
    result = gpuinv.solve(a[:, 0:0, 0:0], b[:, 0:0, 0:0])
    assert result.shape == expected.shape


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 17, 40])
@pytest.mark.parametrize("k", [None, 1, 3])
def test_matches_numpy(rng, dtype, n, k):
    a = well(rng, (6, n, n), dtype)
    b = rhs(rng, (n,) if k is None else (6, n, k), dtype)
    x = gpuinv.solve(a, b, device="cpu")
    want = np.linalg.solve(a, b)
    assert x.shape == want.shape and x.dtype == want.dtype
    np.testing.assert_allclose(x, want, rtol=RTOL[np.dtype(dtype)], atol=RTOL[np.dtype(dtype)])
    # residual, in the style of NumPy's SolveCases.do
    ax = a @ (x[..., None] if k is None else x)
    np.testing.assert_allclose(ax if k else ax[..., 0], np.broadcast_to(b, ax.shape if k else
                               ax.shape[:-1]), rtol=RTOL[np.dtype(dtype)] * n,
                               atol=RTOL[np.dtype(dtype)] * n)


@pytest.mark.parametrize("a_shape,b_shape,out", [
    ((3, 3), (3,), (3,)),
    ((3, 3), (3, 2), (3, 2)),
    ((5, 3, 3), (3,), (5, 3)),
    ((5, 3, 3), (3, 1), (5, 3, 1)),
    ((5, 3, 3), (5, 3, 2), (5, 3, 2)),
    ((1, 3, 3), (4, 3, 2), (4, 3, 2)),
    ((2, 1, 3, 3), (4, 3, 2), (2, 4, 3, 2)),
    ((4, 1, 3, 3), (1, 5, 3, 1), (4, 5, 3, 1)),
    ((3, 3), (7, 2, 3, 4), (7, 2, 3, 4)),
])
def test_broadcasting(rng, a_shape, b_shape, out):
    a = well(rng, a_shape)
    b = rhs(rng, b_shape)
    x = gpuinv.solve(a, b, device="cpu")
    want = np.linalg.solve(a, b)
    assert x.shape == want.shape == out
    np.testing.assert_allclose(x, want, rtol=1e-11, atol=1e-12)
    res = gpuinv.solve_ex(a, b, device="cpu")
    assert res.info.shape == out[:-1] if len(b_shape) == 1 else res.info.shape == out[:-2]


def test_broadcast_views_are_not_copied_whole(rng, monkeypatch):
    # a broadcast a (stride 0) and b of a huge batch solve chunk by chunk.
    from gpuinv import config

    monkeypatch.setattr(config, "cpu_chunk_bytes", 4096)
    a = np.broadcast_to(well(rng, (3, 3)), (500, 3, 3))
    b = rhs(rng, (500, 3, 2))
    np.testing.assert_allclose(gpuinv.solve(a, b), np.linalg.solve(a, b), rtol=1e-11)


@pytest.mark.parametrize("a_dt,b_dt,want", [
    (np.float32, np.float32, np.float32),
    (np.float32, np.float64, np.float64),
    (np.float16, np.float16, np.float32),
    (np.int64, np.int32, np.float64),
    (np.bool_, np.float32, np.float32),
    (np.float32, np.complex64, np.complex64),
    (np.float64, np.complex64, np.complex128),
    (np.int8, np.float16, np.float32),
])
def test_dtype_rules(a_dt, b_dt, want):
    a = (np.eye(3) * 2).astype(a_dt)
    b = np.ones((3, 1)).astype(b_dt)
    x = gpuinv.solve(a, b, device="cpu")
    assert x.dtype == want
    np.testing.assert_allclose(x, 0.5 if a_dt is not np.bool_ else 1.0)


@pytest.mark.parametrize("bad", [np.array(["a", "b"]), np.array([1, 2], dtype=object),
                                 np.array([1, 2], dtype="datetime64[s]")])
def test_bad_b_dtype(bad):
    with pytest.raises(TypeError):
        gpuinv.solve(np.eye(2), bad)


def test_hostile_inputs(rng):
    with pytest.raises(np.linalg.LinAlgError, match="square"):
        gpuinv.solve(np.ones((2, 3)), np.ones(2))
    with pytest.raises(np.linalg.LinAlgError, match="at least two-dimensional"):
        gpuinv.solve(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="at least one-dimensional"):
        gpuinv.solve(np.eye(2), 1.0)
    with pytest.raises(ValueError, match="rows"):
        gpuinv.solve(np.eye(3), np.ones(2))
    with pytest.raises(ValueError):
        gpuinv.solve(np.ones((2, 3, 3)), np.ones((4, 3, 1)))
    with pytest.raises(TypeError, match="masked"):
        gpuinv.solve(np.eye(2), np.ma.masked_array(np.ones(2)))
    with pytest.raises(ValueError, match="on_singular"):
        gpuinv.solve(np.eye(2), np.ones(2), on_singular="loud")
    with pytest.raises(TypeError, match="lower"):
        gpuinv.solve(np.eye(2), np.ones(2), lower="yes")
    # lists, read-only, negative strides, Fortran order, big-endian
    a = well(rng, (4, 3, 3))
    b = rhs(rng, (4, 3, 2))
    want = np.linalg.solve(a, b)
    ro = a.copy()
    ro.setflags(write=False)
    for aa, bb in [(a.tolist(), b.tolist()), (ro, b), (a[::-1][::-1], b), (np.asfortranarray(a), b),
                   (a.astype(">f8"), b.astype(">f8")), (a, np.asfortranarray(b)),
                   (a[:, ::-1, ::-1][:, ::-1, ::-1], b[:, ::-1][:, ::-1])]:
        x = gpuinv.solve(aa, bb, device="cpu")
        assert x.dtype == np.float64 and x.dtype.isnative and x.flags.c_contiguous
        np.testing.assert_allclose(x, want, rtol=1e-12)


def test_inputs_left_unchanged(rng):
    a = well(rng, (4, 5, 5))
    b = rhs(rng, (4, 5, 3))
    a0, b0 = a.copy(), b.copy()
    gpuinv.solve_ex(a, b, rcond=True, device="cpu")
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


# --- info, policies, rcond ------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 6, 9])
def test_info_codes_match_inv_ex(rng, n):
    a = well(rng, (8, n, n))
    a[1, :, n // 2] = 0
    a[3, n - 1] = 0
    a[5, 0, n - 1] = np.nan
    a[6, 1 % n, 0] = np.inf
    b = rhs(rng, (8, n, 2))
    res = gpuinv.solve_ex(a, b, device="cpu")
    inv_info = gpuinv.inv_ex(a, device="cpu").info
    np.testing.assert_array_equal(res.info, inv_info)
    assert list(res.info[[1, 3, 5, 6]]) == [n // 2 + 1, n, -1, -1]
    failed = res.info != 0
    assert np.isnan(res.solution[failed]).all()
    np.testing.assert_allclose(res.solution[~failed], np.linalg.solve(a[~failed], b[~failed]),
                               rtol=1e-11)


def test_nan_in_b_is_not_a_failure(rng):
    a = well(rng, (3, 4, 4))
    b = rhs(rng, (3, 4, 1))
    b[1, 2, 0] = np.nan
    res = gpuinv.solve_ex(a, b, device="cpu")
    assert (res.info == 0).all()
    assert np.isnan(res.solution[1]).all() and np.isfinite(res.solution[[0, 2]]).all()


def test_policies(rng):
    a = np.stack([np.eye(2), np.ones((2, 2))])
    b = np.ones((2, 2, 1))
    with pytest.raises(gpuinv.SingularMatrixError) as err:
        gpuinv.solve(a, b, device="cpu")
    assert err.value.indices == [(1,)]
    x = gpuinv.solve(a, b, on_singular="nan", device="cpu")
    assert np.isnan(x[1]).all() and (x[0] == 1).all()
    x = gpuinv.solve(a, np.ones(2), on_singular="ignore", device="cpu")
    assert x.shape == (2, 2)


def test_solve_rcond_equals_inv_rcond(rng):
    a = well(rng, (5, 4, 4))
    a[2, 3] = 0
    res = gpuinv.solve_ex(a, rhs(rng, (4,)), rcond=True, device="cpu")
    assert isinstance(res, gpuinv.SolveRcondResult)
    want = gpuinv.inv_ex(a, rcond=True, device="cpu").rcond
    np.testing.assert_array_equal(res.rcond, want)
    x, info = gpuinv.solve_ex(a, rhs(rng, (4,)), device="cpu")
    assert x.shape == (5, 4)


def test_solve_is_more_accurate_than_inv_times_b(rng):
    # Backward error of solve (gesv) against inv(a) @ b on ill-conditioned
    # matrices at n = 40, for b = a @ x with x of moderate size (b far from
    # the directions the inverse amplifies): gesv's residual stays at the eps
    # level, inv @ b's grows with the condition (about 1e12 here). Compared
    # in aggregate (medians) over 30 matrices, with a margin of 1e3.
    from test_numerics import graded

    n = 40
    a = graded(rng, 30, n, [1e12] * 30)
    b = a @ rhs(rng, (30, n, 1))
    x = gpuinv.solve(a, b, device="cpu")
    y = gpuinv.inv(a, check_cond=False, device="cpu") @ b

    def backward(z):
        r = np.abs(a @ z - b).max(axis=(1, 2))
        return r / (np.abs(a).sum(axis=2).max(axis=1) * np.abs(z).max(axis=(1, 2)))

    assert np.median(backward(x)) * 1e3 < np.median(backward(y))


# --- structure -------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["diagonal", "upper triangular", "lower triangular",
                                   "positive definite", "symmetric", "hermitian"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 3, 4, 7, 20])
def test_structured_solve_matches_scipy(rng, which, dtype, n):
    sl = pytest.importorskip("scipy.linalg")
    g = rng.standard_normal((4, n, n))
    if np.dtype(dtype).kind == "c":
        g = g + 1j * rng.standard_normal((4, n, n))
    a = (g @ np.conj(np.swapaxes(g, 1, 2)) + n * np.eye(n)).astype(dtype)
    if which == "symmetric" and np.dtype(dtype).kind == "c":
        a = (g + np.swapaxes(g, 1, 2) + 3 * n * np.eye(n)).astype(dtype)
    b = rhs(rng, (4, n, 2), dtype)
    res = gpuinv.solve_ex(a, b, assume_a=which, device="cpu")
    assert (res.info == 0).all()
    want = np.stack([sl.solve(a[i], b[i], assume_a=which) for i in range(4)])
    tol = RTOL[np.dtype(dtype)] * 10 * n
    np.testing.assert_allclose(res.solution, want, rtol=tol, atol=tol * np.abs(want).max())


def test_structured_solve_info(rng):
    n = 4
    a = np.tile(np.eye(n), (3, 1, 1))
    a[1, 2, 2] = 0
    a[2, 0, 0] = -1
    b = np.ones((3, n, 1))
    tri = gpuinv.solve_ex(a, b, assume_a="upper triangular", device="cpu")
    assert list(tri.info) == [0, 3, 0]
    diag = gpuinv.solve_ex(a, b, assume_a="diagonal", device="cpu")
    assert list(diag.info) == [0, 3, 0]
    pos = gpuinv.solve_ex(a, b, assume_a="pos", device="cpu")
    assert list(pos.info) == [0, 3, 1]
    assert np.isnan(pos.solution[1:]).all()
    np.testing.assert_array_equal(diag.solution[2], [[-1], [1], [1], [1]])


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("scale", [2.0**-1060, 2.0**-1000, 1e-200, 1e200, 2.0**1000])
def test_extreme_scales(n, scale):
    # The closed forms (n <= 4) scale by powers of two; gesv takes what they
    # hand back (here the subnormal matrices, whose s / det overflows).
    base = 3 * np.eye(n) + np.ones((n, n))
    a = np.stack([base * scale, base])
    # b scaled as a (exactly: powers of two, or no subnormals), so x is not.
    b = np.stack([np.arange(1.0, n + 1)[:, None] * scale, np.arange(1.0, n + 1)[:, None]])
    res = gpuinv.solve_ex(a, b, device="cpu")
    want = np.linalg.solve(base, b[1])
    assert res.info[1] == 0
    # want has an exact zero at n = 3: a few ulps of |x| there, not of 0.
    np.testing.assert_allclose(res.solution[1], want, rtol=1e-14, atol=1e-15 * np.abs(want).max())
    assert res.info[0] == 0
    np.testing.assert_allclose(res.solution[0], want, rtol=1e-12,
                               atol=1e-12 * np.abs(want).max())
