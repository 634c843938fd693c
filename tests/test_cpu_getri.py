"""The CPU engine's two LAPACK routes give the same verdicts (issue 19, item 4).

From ``GETRI_MIN_N`` up, where SciPy is importable, the engine inverts with
getrf + getri per matrix (SciPy's wrappers) instead of NumPy's gufunc
(getrf + getrs against the identity). Both factor A itself, so info codes,
NaN placement and the handling of non-finite, tiny and huge matrices must be
the same; the inverses agree to rounding.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

import gpuinv
from gpuinv.engines import cpu

pytest.importorskip("scipy.linalg.lapack")

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]


@pytest.fixture
def numpy_route(monkeypatch):
    """Switch the engine to NumPy's gufunc at every n, as without SciPy."""
    def use_numpy() -> None:
        monkeypatch.setattr(cpu, "_getri_funcs", lambda dtype: None)
    return use_numpy


def hostile(n, dtype, seed=0):
    """Random, singular, rank-deficient, tiny, huge and non-finite matrices of order n."""
    rng = np.random.default_rng(seed)
    real = np.finfo(np.dtype(dtype).type(0).real.dtype)
    mats = [rng.standard_normal((n, n)) + n * np.eye(n) for _ in range(6)]
    zero_col = rng.standard_normal((n, n))
    zero_col[:, n // 2] = 0
    zero_row = rng.standard_normal((n, n))
    zero_row[n // 3] = 0
    dup = rng.standard_normal((n, n))
    dup[n - 1] = dup[0]
    mats += [np.zeros((n, n)), zero_col, zero_row, dup]
    for scale in (0.1, 1 / 3, 1.7):  # integer rank 1..n-1 times scale: cond near 1/eps
        for r in (1, n // 2, n - 1):
            mats.append(rng.integers(-4, 5, (n, r)) @ rng.integers(-4, 5, (r, n)) * scale)
    mats.append(np.arange(n * n, dtype=float).reshape(n, n))          # rank 2
    mats.append(np.eye(n) * real.tiny * 8)                              # subnormal-ish inverse path
    mats.append((rng.standard_normal((n, n)) + n * np.eye(n)) * real.tiny)
    mats.append((rng.standard_normal((n, n)) + n * np.eye(n)) * (real.max / (4 * n * n)))
    overflow = np.eye(n)
    overflow[0, 0] = real.tiny / 4                                      # inverse entry overflows
    mats.append(overflow)
    nan = rng.standard_normal((n, n))
    nan[1, 2] = np.nan
    inf = rng.standard_normal((n, n))
    inf[0, n - 1] = -np.inf
    mats += [nan, inf]
    a = np.stack(mats)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * np.where(np.isfinite(a), rng.standard_normal(a.shape), 0) * (a != 0)
    with np.errstate(all="ignore"):
        return a.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [32, 33, 48, 64])
@pytest.mark.parametrize("rcond", [False, True])
def test_getri_route_gives_the_gufunc_routes_verdicts(dtype, n, rcond, numpy_route):
    assert n >= cpu.GETRI_MIN_N
    a = hostile(n, dtype)
    before = a.copy()
    ours = gpuinv.inv_ex(a, rcond=rcond, device="cpu")
    assert cpu._getri_funcs(np.dtype(dtype)) is not None  # the getri route ran
    numpy_route()
    theirs = gpuinv.inv_ex(a, rcond=rcond, device="cpu")
    np.testing.assert_array_equal(a, before)  # input untouched
    np.testing.assert_array_equal(ours.info, theirs.info)
    # NaN placement, matrix by matrix: all-NaN, finite, or with overflowed entries.
    np.testing.assert_array_equal(np.isnan(ours.inverse).all(axis=(1, 2)),
                                  np.isnan(theirs.inverse).all(axis=(1, 2)))
    np.testing.assert_array_equal(np.isfinite(ours.inverse).all(axis=(1, 2)),
                                  np.isfinite(theirs.inverse).all(axis=(1, 2)))
    # Well-conditioned matrices: the same inverse to rounding.
    tol = 200 * n * np.finfo(np.dtype(dtype)).eps
    for i in range(6):
        np.testing.assert_allclose(ours.inverse[i], theirs.inverse[i],
                                   rtol=tol, atol=tol * np.abs(theirs.inverse[i]).max())
    if rcond:
        both = np.isfinite(theirs.rcond) & (theirs.rcond > 0)
        np.testing.assert_array_equal(np.isnan(ours.rcond), np.isnan(theirs.rcond))
        np.testing.assert_array_equal(ours.rcond == 0, theirs.rcond == 0)
        np.testing.assert_allclose(ours.rcond[:6], theirs.rcond[:6], rtol=1e-2)
        assert both[:6].all()
    assert (ours.info[-2:] == -1).all() and np.isnan(ours.inverse[-2:]).all()
    assert ours.info[6] > 0 and ours.info[7] > 0 and ours.info[8] > 0


def test_getri_route_on_views_and_raises_like_numpy():
    rng = np.random.default_rng(3)
    n = cpu.GETRI_MIN_N + 5
    big = rng.standard_normal((5, 2 * n, 2 * n)) + 2 * n * np.eye(2 * n)
    view = big[:, ::2, 1::2]  # not contiguous
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = gpuinv.inv(view, device="cpu")
    np.testing.assert_allclose(got, np.linalg.inv(view), rtol=1e-10, atol=1e-12)
    bad = np.stack([np.eye(n), np.zeros((n, n))])
    with pytest.raises(np.linalg.LinAlgError):
        gpuinv.inv(bad, device="cpu")


def test_without_scipy_the_numpy_route_runs(monkeypatch):
    # SciPy not importable: _getri_funcs says so and the gufunc inverts.
    monkeypatch.setattr(cpu, "_GETRI", {})
    monkeypatch.setitem(sys.modules, "scipy.linalg.lapack", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "scipy.linalg", None)
    assert cpu._getri_funcs(np.dtype(np.float64)) is None
    n = cpu.GETRI_MIN_N
    a = np.random.default_rng(4).standard_normal((3, n, n)) + n * np.eye(n)
    np.testing.assert_allclose(gpuinv.inv(a, device="cpu"), np.linalg.inv(a), rtol=1e-12)
