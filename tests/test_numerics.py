"""rcond, LinAlgWarning and assume_a on the CPU engine (issue 10).

Nothing here asserts a rounding-dependent LAPACK result: rcond is compared
with numpy.linalg.cond within a tolerance that scales with the condition,
and warnings are checked only on matrices far from the eps threshold.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gpuinv
from gpuinv._numerics import STRUCTURES, parse_structure, structured_matrix
from gpuinv.engines import _structured

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
EPS = {np.dtype(t): np.finfo(t).eps for t in DTYPES}


@pytest.fixture
def rng():
    return np.random.default_rng(1010)


def graded(rng, count, n, conds, dtype=np.float64):
    """Matrices U diag(s) V^T with singular values from 1 down to 1/cond."""
    out = []
    for c in conds:
        u, _ = np.linalg.qr(rng.standard_normal((n, n)))
        v, _ = np.linalg.qr(rng.standard_normal((n, n)))
        s = np.logspace(0, -np.log10(c), n)
        out.append((u * s) @ v.T)
    return np.array(out).astype(dtype)


def cond_tolerance(cond, dtype):
    # Both the computed rcond and numpy's cond carry a relative error of
    # about cond * eps (the computed inverses do), plus the norms' rounding.
    return np.minimum(0.9, 64 * n_eps(dtype) * cond + 1e-5 * (np.dtype(dtype).itemsize < 8))


def n_eps(dtype):
    return float(np.finfo(np.dtype(dtype)).eps)


# --- rcond -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 17])
def test_rcond_matches_numpy_cond_random(rng, dtype, n):
    a = rng.standard_normal((40, n, n))
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.standard_normal((40, n, n))
    a = a.astype(dtype)
    res = gpuinv.inv_ex(a, rcond=True, device="cpu")
    assert isinstance(res, gpuinv.InvRcondResult)
    assert res.rcond.dtype == np.dtype(dtype).type(0).real.dtype
    assert res.rcond.shape == (40,)
    want = 1 / np.linalg.cond(a.astype(np.complex128 if np.dtype(dtype).kind == "c" else np.float64), 1)
    ok = res.info == 0
    assert ok.all()
    tol = cond_tolerance(1 / want, dtype)
    assert (np.abs(res.rcond - want) <= tol * want).all()


@pytest.mark.parametrize("n", [2, 3, 4, 6, 12])
def test_rcond_graded(rng, n):
    conds = np.logspace(2, 15, 14)
    a = graded(rng, len(conds), n, conds)
    res = gpuinv.inv_ex(a, rcond=True, device="cpu")
    finite = res.info == 0
    want = 1 / np.linalg.cond(a, 1)
    tol = cond_tolerance(1 / want, np.float64)
    assert (np.abs(res.rcond[finite] - want[finite]) <= tol[finite] * want[finite]).all()
    # The graded conditions span 13 decades and rcond follows them.
    assert res.rcond[0] > 1e4 * res.rcond[-1]


def test_rcond_singular_nonfinite_and_empty(rng):
    a = rng.standard_normal((6, 3, 3)) + 3 * np.eye(3)
    a[1] = 0
    a[2, :, 1] = 0
    a[3, 0, 0] = np.nan
    a[4, 2, 1] = -np.inf
    res = gpuinv.inv_ex(a, rcond=True, device="cpu")
    assert list(res.info) == [0, 1, 2, -1, -1, 0]
    assert res.rcond[1] == 0 and res.rcond[2] == 0
    assert np.isnan(res.rcond[3]) and np.isnan(res.rcond[4])
    assert 0 < res.rcond[0] <= 1 and 0 < res.rcond[5] <= 1
    empty = gpuinv.inv_ex(np.zeros((0, 3, 3)), rcond=True, device="cpu")
    assert empty.rcond.shape == (0,)
    zero_order = gpuinv.inv_ex(np.zeros((4, 0, 0)), rcond=True, device="cpu")
    assert zero_order.rcond.shape == (4,)
    assert (zero_order.rcond == 1).all()


def test_rcond_of_an_overflowing_inverse_is_zero():
    tiny = np.diag([1.0, 1e-310])  # inverse 1e310 overflows
    res = gpuinv.inv_ex(tiny, rcond=True, device="cpu")
    assert res.info == 0
    assert res.rcond == 0


def test_rcond_scalar_batch_and_batch_shape(rng):
    a = rng.standard_normal((2, 3, 4, 4))
    res = gpuinv.inv_ex(a, rcond=True, device="cpu")
    assert res.rcond.shape == (2, 3)
    one = gpuinv.inv_ex(a[0, 0], rcond=True, device="cpu")
    assert one.rcond.shape == ()
    assert one.rcond == res.rcond[0, 0]


def test_inv_ex_unpacks_as_two_unless_rcond(rng):
    a = rng.standard_normal((3, 2, 2))
    inverse, info = gpuinv.inv_ex(a, device="cpu")
    assert inverse.shape == (3, 2, 2) and info.shape == (3,)
    inverse, info, rc = gpuinv.inv_ex(a, rcond=True, device="cpu")
    assert rc.shape == (3,)
    plain = gpuinv.inv_ex(a, rcond=False, device="cpu")
    assert type(plain) is gpuinv.InvResult


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_flags_must_be_bool(bad):
    with pytest.raises(TypeError, match="rcond must be True or False"):
        gpuinv.inv_ex(np.eye(2), rcond=bad)
    with pytest.raises(TypeError, match="check_cond must be True or False"):
        gpuinv.inv(np.eye(2), check_cond=bad)


def test_rcond_chunks_and_threads_agree(rng, monkeypatch):
    from gpuinv import config

    a = rng.standard_normal((3000, 3, 3))
    whole = gpuinv.inv_ex(a, rcond=True, device="cpu").rcond
    monkeypatch.setattr(config, "cpu_chunk_bytes", 3 * 3 * 8 * 7)
    chunked = gpuinv.inv_ex(a, rcond=True, device="cpu").rcond
    np.testing.assert_array_equal(whole, chunked)


# --- warnings ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 9])
def test_warning_names_exactly_the_ill_conditioned(rng, n):
    # Conditions far on either side of 1/eps (4.5e15): 1e3 or 1e19.
    conds = np.where(rng.random(30) < 0.3, 1e19, 1e3)
    a = graded(rng, 30, n, conds)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gpuinv.inv(a, on_singular="ignore", device="cpu")
    res = gpuinv.inv_ex(a, rcond=True, device="cpu")
    expected = [(int(i),) for i in np.flatnonzero((res.info == 0) & (conds > 1e10))]
    ours = [w for w in caught if issubclass(w.category, gpuinv.LinAlgWarning)]
    if not expected:
        assert ours == []
        return
    assert len(ours) == 1
    w = ours[0].message
    assert w.indices == expected
    assert f"{len(expected)} of 30 matrices ill-conditioned" in str(w)
    listed = ", ".join(str(i[0]) for i in expected[:10])
    assert f"batch indices [{listed}" in str(w)
    assert ours[0].filename == __file__  # points at the caller


def test_no_warning_with_check_off_or_well_conditioned(rng):
    a = graded(rng, 5, 4, [1e19] * 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpuinv.inv(a, on_singular="ignore", check_cond=False, device="cpu")
        gpuinv.inv(rng.standard_normal((10, 3, 3)) + 5 * np.eye(3), device="cpu")


def test_warning_is_a_runtime_warning_and_lists_ten_at_most(rng):
    assert issubclass(gpuinv.LinAlgWarning, RuntimeWarning)
    a = np.tile(np.diag([1.0, 1e-20]), (4, 5, 1, 1))
    with pytest.warns(gpuinv.LinAlgWarning) as rec:
        gpuinv.inv(a, device="cpu")
    msg = str(rec[0].message)
    assert "20 of 20 matrices" in msg
    assert "(0, 0), (0, 1)" in msg and "(10 more)" in msg
    assert rec[0].message.rcond.shape == (4, 5)


def test_singular_matrices_are_not_warned_about(rng):
    a = np.stack([np.ones((2, 2)), np.eye(2)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = gpuinv.inv(a, on_singular="nan", device="cpu")
    assert np.isnan(x[0]).all()


def test_scipy_ill_cond_case():
    # SciPy's TestInv.test_ill_cond, in our words: one matrix, then a stack.
    with pytest.warns(gpuinv.LinAlgWarning, match="rcond"):
        gpuinv.inv(np.diag([1.0, 1e-20]), device="cpu")
    a2 = np.stack([np.diag([1.0, 1e-20]), np.diag([1.0, 1.0]), np.diag([1.0, 1e-20])])
    with pytest.warns(gpuinv.LinAlgWarning) as rec:
        gpuinv.inv(a2, device="cpu")
    assert rec[0].message.indices == [(0,), (2,)]


def test_solve_warns_only_when_asked(rng):
    a = np.stack([np.diag([1.0, 1e-20]), np.eye(2)])
    b = np.ones((2, 2, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpuinv.solve(a, b, device="cpu")
    with pytest.warns(gpuinv.LinAlgWarning) as rec:
        gpuinv.solve(a, b, check_cond=True, device="cpu")
    assert rec[0].message.indices == [(0,)]


# --- assume_a ---------------------------------------------------------------------------


def test_structure_names():
    for name, canonical in STRUCTURES.items():
        assert parse_structure(name, np.complex128) == canonical
    assert parse_structure("hermitian", np.float64) == "symmetric"
    assert parse_structure(None, np.float64) == "general"
    with pytest.raises(ValueError, match="not a recognized matrix structure"):
        gpuinv.inv(np.eye(2), assume_a="kaboom")
    with pytest.raises(ValueError, match="not a recognized matrix structure"):
        gpuinv.inv_ex(np.eye(2), assume_a="tridiagonal")
    with pytest.raises(ValueError, match="not a recognized matrix structure"):
        gpuinv.solve(np.eye(2), np.ones(2), assume_a="banded")


def spd(rng, batch, n, dtype=np.float64):
    g = rng.standard_normal(batch + (n, n))
    if np.dtype(dtype).kind == "c":
        g = g + 1j * rng.standard_normal(batch + (n, n))
    return (g @ np.conj(np.swapaxes(g, -1, -2)) + n * np.eye(n)).astype(dtype)


def garbage(rng, a, keep):
    """a with NaN (and huge values) wherever ``keep`` is False."""
    out = a.copy()
    junk = np.where(rng.random(a.shape) < 0.5, np.nan, 1e30).astype(a.dtype)
    out[..., ~keep] = junk[..., ~keep]
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 16, 33])
@pytest.mark.parametrize("lower", [False, True])
def test_positive_definite_matches_general_and_reads_one_triangle(rng, dtype, n, lower):
    a = spd(rng, (6,), n, dtype)
    keep = np.tri(n, dtype=bool) if lower else np.tri(n, dtype=bool).T
    messy = garbage(rng, a, keep)
    res = gpuinv.inv_ex(messy, assume_a="positive definite", lower=lower, rcond=True, device="cpu")
    assert (res.info == 0).all()
    ref = np.linalg.inv(a.astype(np.complex128 if np.dtype(dtype).kind == "c" else np.float64))
    scale = np.abs(ref).max()
    assert np.abs(res.inverse - ref).max() <= 200 * n_eps(dtype) * n * scale
    # exactly symmetric (Hermitian)
    np.testing.assert_array_equal(res.inverse, np.conj(np.swapaxes(res.inverse, -1, -2)))
    want = 1 / np.linalg.cond(ref, 1)
    assert np.allclose(res.rcond, want, rtol=cond_tolerance(1 / want.min(), dtype))


def test_scipy_posdef_cases():
    # SciPy's TestInv.test_posdef in our words: pos agrees with the general
    # inverse, and the triangle not named is never read (NaN there).
    x = np.arange(25, dtype=float).reshape(5, 5)
    y = x + x.T + 21 * np.eye(5)
    general = gpuinv.inv(y, device="cpu")
    np.testing.assert_allclose(gpuinv.inv(y, assume_a="pos", device="cpu"), general, atol=1e-15)
    mask = np.where(1 - np.tri(5, 5, -1) == 0, np.nan, 1)
    np.testing.assert_allclose(
        gpuinv.inv(y * mask, assume_a="pos", lower=False, device="cpu"), general, atol=1e-15)
    np.testing.assert_allclose(
        gpuinv.inv(y * mask.T, assume_a="pos", lower=True, device="cpu"), general, atol=1e-15)


@pytest.mark.parametrize("complex_", [False, True])
def test_scipy_posdef_not_posdef(complex_):
    a = np.arange(9).reshape(3, 3)
    b = a + a.T + np.eye(3)
    if complex_:
        b = b + 1j * b
    b_inv = gpuinv.inv(b, device="cpu")
    np.testing.assert_allclose(b_inv @ b, np.eye(3), atol=3e-15)
    with pytest.raises(gpuinv.SingularMatrixError):
        gpuinv.inv(b, assume_a="pos", device="cpu")
    if complex_:
        h = a + 1j * a
        h = h + h.T.conj() + np.eye(3)
        np.testing.assert_allclose(gpuinv.inv(h, assume_a="her", device="cpu") @ h, np.eye(3),
                                   atol=3e-15)


def test_scipy_pos_fails_sym_complex():
    # Complex symmetric, not Hermitian: "sym" agrees with the general
    # inverse; "pos" reads the upper triangle as a Hermitian matrix (as
    # LAPACK zpotrf does), gives a different answer, and solve agrees with it.
    a = np.asarray([[182.56985285 - 64.28859483j, -177.24879835 + 11.0780499j],
                    [-177.24879835 + 11.0780499j, 177.24879835 - 11.0780499j]])
    ainv = gpuinv.inv(a, device="cpu")
    np.testing.assert_allclose(ainv @ a, np.eye(2), atol=1e-14)
    np.testing.assert_allclose(gpuinv.inv(a, assume_a="sym", device="cpu"), ainv, atol=1e-14)
    chol = gpuinv.inv(a, assume_a="pos", device="cpu")
    assert not np.allclose(chol, ainv, atol=1e-14)
    np.testing.assert_allclose(gpuinv.solve(a, np.eye(2), assume_a="pos", device="cpu"), chol,
                               atol=1e-14)
    for m in (np.eye(4) + np.ones(4), -np.eye(4) + np.ones(4),
              (np.eye(4) * 1j + np.ones(4)).astype(complex)):
        np.testing.assert_allclose(gpuinv.inv(m, device="cpu") @ m, np.eye(4), atol=1e-14)
        np.testing.assert_allclose(gpuinv.inv(m, assume_a="sym", device="cpu") @ m, np.eye(4),
                                   atol=1e-14)


def test_positive_definite_info_is_potrf(rng):
    n = 6
    a = spd(rng, (8,), n)
    # Leading minor of order k fails: make pivot k clearly negative by
    # subtracting a lot from a[k-1, k-1].
    for i, k in enumerate([1, 3, 6, 2]):
        a[i, k - 1, k - 1] -= 1e3
    res = gpuinv.inv_ex(a, assume_a="pos", device="cpu")
    assert list(res.info) == [1, 3, 6, 2, 0, 0, 0, 0]
    assert np.isnan(res.inverse[:4]).all()
    swap = gpuinv.inv_ex(np.array([[0.0, 1.0], [1.0, 0.0]]), assume_a="pos", device="cpu")
    assert swap.info == 1  # invertible, but not positive definite
    nan = a[5].copy()
    nan[0, 3] = np.nan  # upper triangle: read by default
    assert gpuinv.inv_ex(nan, assume_a="pos", device="cpu").info == -1
    assert gpuinv.inv_ex(nan, assume_a="pos", lower=True, device="cpu").info == 0


def test_potrf_info_matches_lapack(rng):
    from scipy.linalg import lapack

    n = 7
    a = spd(rng, (40,), n)
    k = rng.integers(1, n + 1, size=40)
    for i in range(40):
        if i % 4:
            a[i, k[i] - 1, k[i] - 1] -= 1e4
    ours = _structured.potrf_info(a)
    theirs = [lapack.dpotrf(m, lower=1)[1] for m in a]
    np.testing.assert_array_equal(ours, theirs)


def test_cholesky_without_numpy_gufunc(rng, monkeypatch):
    # The fallback used if NumPy ever moves its private gufunc.
    a = spd(rng, (5,), 6)
    a[2, 0, 0] = -1
    want = gpuinv.inv_ex(a, assume_a="pos", device="cpu")
    monkeypatch.setattr(_structured, "_gufunc_cholesky", None)
    got = gpuinv.inv_ex(a, assume_a="pos", device="cpu")
    np.testing.assert_array_equal(got.info, want.info)
    np.testing.assert_allclose(got.inverse[got.info == 0], want.inverse[want.info == 0],
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 19])
@pytest.mark.parametrize("which", ["upper triangular", "lower triangular"])
def test_triangular(rng, dtype, n, which):
    lower = which.startswith("lower")
    keep = np.tri(n, dtype=bool) if lower else np.tri(n, dtype=bool).T
    base = rng.standard_normal((5, n, n)) + 4 * np.eye(n)
    if np.dtype(dtype).kind == "c":
        base = base + 1j * rng.standard_normal((5, n, n))
    base = np.where(keep, base, 0).astype(dtype)
    base[1, n // 2, n // 2] = 0  # info n // 2 + 1
    messy = garbage(rng, base, keep)
    res = gpuinv.inv_ex(messy, assume_a=which, rcond=True, device="cpu")
    assert res.info[1] == n // 2 + 1 and np.isnan(res.inverse[1]).all() and res.rcond[1] == 0
    ok = np.array([0, 2, 3, 4])
    assert (res.info[ok] == 0).all()
    ref = np.linalg.inv(base[ok].astype(np.complex128))
    tol = 100 * n_eps(dtype) * n * np.abs(ref).max()
    assert np.abs(res.inverse[ok] - ref).max() <= tol
    assert (res.inverse[ok][..., ~keep] == 0).all()  # exactly triangular
    scipy_linalg = pytest.importorskip("scipy.linalg")
    np.testing.assert_allclose(res.inverse[ok], scipy_linalg.inv(base[ok], assume_a=which),
                               rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_diagonal(rng, dtype):
    n = 5
    d = (rng.standard_normal((4, n)) + 3).astype(dtype)
    d[2, 3] = 0
    a = np.zeros((4, n, n), dtype=dtype)
    np.einsum("mii->mi", a)[...] = d
    messy = garbage(rng, a, np.eye(n, dtype=bool))
    res = gpuinv.inv_ex(messy, assume_a="diagonal", rcond=True, device="cpu")
    assert list(res.info) == [0, 0, 4, 0]
    ok = [0, 1, 3]
    np.testing.assert_array_equal(np.einsum("mii->mi", res.inverse[ok]), 1 / d[ok])
    assert (res.inverse[ok][:, ~np.eye(n, dtype=bool)] == 0).all()
    want = np.abs(d[ok]).min(axis=1) / np.abs(d[ok]).max(axis=1)
    np.testing.assert_allclose(res.rcond[ok], want, rtol=4 * n_eps(dtype))
    nan_diag = a[0].copy()
    nan_diag[1, 1] = np.inf
    assert gpuinv.inv_ex(nan_diag, assume_a="diagonal", device="cpu").info == -1


@pytest.mark.parametrize("which", ["symmetric", "hermitian"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [2, 4, 6])
def test_symmetric_hermitian(rng, which, dtype, n):
    a = rng.standard_normal((5, n, n))
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.standard_normal((5, n, n))
    a = a.astype(dtype)
    full = structured_matrix(a, parse_structure(which, np.dtype(dtype)), lower=True)
    keep = np.tri(n, dtype=bool)
    res = gpuinv.inv_ex(garbage(rng, a, keep), assume_a=which, lower=True, device="cpu")
    assert (res.info == 0).all()
    ref = np.linalg.inv(full.astype(np.complex128))
    assert np.abs(res.inverse - ref).max() <= 1e3 * n_eps(dtype) * np.abs(ref).max()
    t = np.swapaxes(res.inverse, -1, -2)
    if which == "hermitian" and np.dtype(dtype).kind == "c":
        t = t.conj()
    np.testing.assert_array_equal(res.inverse, t)


def test_structured_inv_raises_and_nan_policies(rng):
    a = np.stack([np.eye(3), np.diag([1.0, 0.0, 2.0])])
    with pytest.raises(gpuinv.SingularMatrixError) as err:
        gpuinv.inv(a, assume_a="diagonal", device="cpu")
    assert err.value.indices == [(1,)]
    x = gpuinv.inv(a, assume_a="upper triangular", on_singular="nan", device="cpu")
    assert np.isnan(x[1]).all() and (x[0] == np.eye(3)).all()


def test_structured_inputs_left_unchanged(rng):
    a = spd(rng, (3,), 5)
    a[..., 0, 4] = np.nan
    before = a.copy()
    for s in STRUCTURES:
        gpuinv.inv_ex(a, assume_a=s, rcond=True, device="cpu")
        gpuinv.solve_ex(a, np.ones((5, 2)), assume_a=s, rcond=True, device="cpu")
    np.testing.assert_array_equal(a, before)


def test_docstring_examples_of_solve():
    import doctest

    import gpuinv._solve

    result = doctest.testmod(gpuinv._solve, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_readme_conditioning_example():
    # The README's "Conditioning" example, run as written there.
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Conditioning"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert list(namespace["suspect"]) == [12, 345]
    with pytest.warns(gpuinv.LinAlgWarning) as rec:
        gpuinv.inv(namespace["a"], device="cpu")
    assert rec[0].message.indices == [(12,), (345,)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_small_potrf_info_agrees_with_the_general_one(rng, dtype, n):
    a = spd(rng, (300,), n, dtype)
    k = rng.integers(1, n + 1, size=300)
    for i in range(300):
        if i % 3:
            a[i, k[i] - 1, k[i] - 1] -= 1e3
    np.testing.assert_array_equal(_structured.small_potrf_info(a), _structured.potrf_info(a))


def test_dask_input_takes_the_new_keywords():
    # Was test_dask_input_refuses_the_new_keywords_clearly: dask input now
    # shares the call path, so rcond, assume_a and solve work lazily
    # (tests/test_dask.py tests them in depth).
    da = pytest.importorskip("dask.array")
    eye = np.tile(np.eye(3), (4, 1, 1))
    a = da.from_array(eye, chunks=(2, 3, 3))
    res = gpuinv.inv_ex(a, rcond=True)
    assert isinstance(res.rcond, da.Array)
    np.testing.assert_array_equal(res.rcond.compute(), np.ones(4))
    np.testing.assert_array_equal(gpuinv.inv(a, assume_a="pos").compute(), eye)
    x = gpuinv.solve(a, np.ones(3))
    assert isinstance(x, da.Array)
    np.testing.assert_array_equal(x.compute(), np.ones((4, 3)))
    # The plain calls still work lazily.
    np.testing.assert_array_equal(gpuinv.inv(a).compute(), eye)


@pytest.mark.parametrize("n", [2, 3, 6])
def test_entries_whose_sum_overflows_are_finite(n):
    # The quick finiteness test sums the block; an overflowing sum of finite
    # entries must take the exact test and be inverted normally.
    a = np.stack([np.eye(n) * 1e308, np.eye(n) * 1e308])
    res = gpuinv.inv_ex(a, rcond=True, device="cpu")
    assert (res.info == 0).all()
    np.testing.assert_allclose(res.rcond, 1.0)
    x = gpuinv.solve(a, np.ones((2, n, 1)) * 1e308, device="cpu")
    np.testing.assert_allclose(x, 1.0)
    for s in ("pos", "diagonal", "upper triangular", "sym"):
        assert (gpuinv.inv_ex(a, assume_a=s, device="cpu").info == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("lower", [False, True])
def test_small_positive_definite_closed_forms(rng, dtype, n, lower):
    # n <= 4 takes the closed forms, with potrf's verdict from the signs of
    # the leading minors. Against LAPACK potrf on matrices failing at every
    # k (clearly and by a hair: a minor within rounding of zero), NaN in
    # the triangle not read and in the one read, and rcond against NumPy.
    sl = pytest.importorskip("scipy.linalg.lapack")
    potrf = {"f": sl.spotrf, "d": sl.dpotrf, "F": sl.cpotrf, "D": sl.zpotrf}[np.dtype(dtype).char]
    count = 240
    a = spd(rng, (count,), n, np.complex128 if np.dtype(dtype).kind == "c" else np.float64)
    k = rng.integers(1, n + 1, size=count)
    for i in range(count):
        if i % 4 == 1:  # clearly not positive definite at step k
            a[i, k[i] - 1, k[i] - 1] -= 1e3
        elif i % 4 == 2:  # positive semidefinite: minor k exactly zero in exact arithmetic
            v = rng.standard_normal((n, k[i] - 1)) if k[i] > 1 else np.zeros((n, 0))
            head = np.zeros((n, n))
            head[: k[i], : k[i] - 1] = v[: k[i]]
            a[i] = head @ head.T
            a[i, k[i]:, k[i]:] += np.eye(n - k[i]) * n
    a = a.astype(dtype)
    keep = np.tri(n, dtype=bool) if lower else np.tri(n, dtype=bool).T
    messy = garbage(rng, a, keep)
    res = gpuinv.inv_ex(messy, assume_a="pos", lower=lower, rcond=True, device="cpu")
    want = np.array([potrf(m, lower=1)[1] for m in a])
    clear = np.arange(count) % 4 != 2
    np.testing.assert_array_equal(res.info[clear], want[clear])
    # By a hair: potrf's code where it is decided by rounding is either a
    # failure at the same step or later, or a success; never a wrong step.
    hair = ~clear
    assert ((res.info[hair] == 0) | (res.info[hair] >= k[hair])).all()
    bad = res.info != 0
    assert np.isnan(res.inverse[bad]).all() and (res.rcond[bad] == 0).all()
    good = ~bad & clear
    wide = a[good].astype(np.complex128 if np.dtype(dtype).kind == "c" else np.float64)
    ref = np.linalg.inv(wide)
    tol = 200 * n_eps(dtype) * n * np.abs(ref).max(axis=(1, 2))
    assert (np.abs(res.inverse[good] - ref).max(axis=(1, 2)) <= tol).all()
    np.testing.assert_array_equal(res.inverse, np.conj(np.swapaxes(res.inverse, -1, -2)))
    rc = 1 / np.linalg.cond(ref, 1)
    assert np.allclose(res.rcond[good], rc, rtol=cond_tolerance(1 / rc.min(), dtype))
    # NaN in the triangle that is read: info -1, rcond NaN, the rest untouched.
    poisoned = messy.copy()
    i, j = (n - 1, 0) if lower else (0, n - 1)
    poisoned[0, i, j] = np.nan
    again = gpuinv.inv_ex(poisoned, assume_a="pos", lower=lower, rcond=True, device="cpu")
    assert again.info[0] == -1 and np.isnan(again.rcond[0]) and np.isnan(again.inverse[0]).all()
    np.testing.assert_array_equal(again.info[1:], res.info[1:])
    # Without rcond, the same inverse and info.
    plain = gpuinv.inv_ex(messy, assume_a="pos", lower=lower, device="cpu")
    np.testing.assert_array_equal(plain.info, res.info)
    np.testing.assert_array_equal(plain.inverse, res.inverse)
