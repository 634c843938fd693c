"""The CPU engine's compiled Cholesky kernels (``assume_a="positive definite"``).

engines/_compiled.py, ``_make_chol``: the inverse (with and without rcond)
and the solve, one kernel per dtype for every n. Each test runs through the
public functions on both routes (``gpuinv.config.cpu_compiled`` on and off:
the compiled kernels, and NumPy's Cholesky gufunc with the closed forms),
and compares with NumPy on the full matrix that the triangle read defines
(``structured_matrix``), with tolerances; info codes only where the failing
step is fixed by construction, never by rounding.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuinv
from gpuinv._numerics import rcond_from_inverse, structured_matrix
from gpuinv.engines import cpu_routes

from test_extreme import wide

pytest.importorskip("numba")

from test_cpu_compiled import DTYPES, eps, route  # noqa: E402,F401  (route: the fixture of both routes)

NS = [1, 2, 3, 4, 5, 8, 13, 32]
PD = "positive definite"


def spd(m, n, dtype, seed=0):
    """Hermitian positive definite, condition numbers of a few units to a few hundred;
    the triangle not read is garbage (NaN in it must not matter)."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((m, n, n))
    if np.dtype(dtype).kind == "c":
        g = g + 1j * rng.standard_normal((m, n, n))
    a = g @ np.conj(np.swapaxes(g, -1, -2)) / n + 0.5 * np.eye(n)
    return a.astype(dtype)


def with_garbage(a, lower):
    """a with NaN in the triangle that ``lower`` does not read, and (complex) in the
    diagonal's imaginary part, which potrf does not read either."""
    a = a.copy()
    n = a.shape[-1]
    rows, cols = np.indices((n, n))
    a[..., (rows < cols) if lower else (rows > cols)] = np.nan
    if a.dtype.kind == "c":
        a.imag[..., rows == cols] = np.nan
    return a


def test_the_route_is_taken(monkeypatch):
    monkeypatch.setattr(gpuinv.config, "cpu_compiled", True)
    for dtype in DTYPES:
        low = cpu_routes.COMPILED_POSDEF_MIN_N[np.dtype(dtype).char]
        for n in NS:
            assert (cpu_routes.compiled_for("posdef", n, dtype) is not None) == (n >= low)
            assert cpu_routes.compiled_for("posdef-solve", n, dtype) is not None
        # Past the bound, the LAPACK route.
        assert cpu_routes.compiled_for("posdef", 1000, dtype) is None
    gpuinv.config.cpu_compiled = False
    assert cpu_routes.compiled_for("posdef", 5, np.float64) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("lower", [False, True])
def test_inverse_rcond_and_solve_match_numpy(dtype, n, lower, route):
    a = with_garbage(spd(40, n, dtype, seed=n), lower)
    before = a.copy()
    full = structured_matrix(a, PD, lower)
    ref = np.linalg.inv(full.astype(wide(dtype)))
    res = gpuinv.inv_ex(a, device="cpu", assume_a=PD, lower=lower, rcond=True)
    np.testing.assert_array_equal(a, before)  # the input is never written
    assert (res.info == 0).all()
    tol = 200 * n * eps(dtype)
    scale = np.abs(ref).max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(res.inverse, ref, rtol=0, atol=tol * scale.max())
    # Exactly Hermitian, with a real diagonal.
    np.testing.assert_array_equal(res.inverse, np.conj(np.swapaxes(res.inverse, -1, -2)))
    expected_rc = rcond_from_inverse(full.astype(wide(dtype)), ref, res.info)
    np.testing.assert_allclose(res.rcond, expected_rc, rtol=tol)
    assert res.rcond.dtype == np.dtype(dtype).type(0).real.dtype
    # Without rcond: the same inverse.
    np.testing.assert_array_equal(
        gpuinv.inv_ex(a, device="cpu", assume_a=PD, lower=lower).inverse, res.inverse)
    rng = np.random.default_rng(1)
    b = rng.standard_normal((40, n, 3)).astype(dtype)
    sol = gpuinv.solve_ex(a, b, device="cpu", assume_a=PD, lower=lower)
    assert (sol.info == 0).all()
    want = ref @ b.astype(wide(dtype))
    np.testing.assert_allclose(sol.solution, want, rtol=0,
                               atol=tol * np.abs(want).max() * max(1.0, float(scale.max())))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 3, 5, 13])
def test_failures_and_their_neighbours(dtype, n, route):
    # In one batch: a matrix whose step k pivot is negative by construction
    # (leading minor of order k below zero, those above positive), a NaN and
    # an Inf in the triangle read, NaN only in the triangle not read, a zero
    # matrix, and good matrices around them: each gets its own code, and the
    # good ones the results they get alone.
    a = spd(12, n, dtype, seed=7)
    expected = np.zeros(12, np.int32)
    k = n  # the last step fails: A[n-1, n-1] far below what it needs
    a[2, n - 1, n - 1] = -4 * np.abs(a[2]).sum()
    expected[2] = k
    a[4, 0, 0] = -1.0  # step 1
    expected[4] = 1
    a[5, 0, n - 1] = np.nan  # read (upper triangle: the default)
    expected[5] = -1
    a[6, n - 1, 0] = np.inf if n > 1 else np.nan  # read when n == 1 only (the diagonal)
    expected[6] = -1 if n == 1 else 0
    a[8] = 0
    expected[8] = 1
    res = gpuinv.inv_ex(a, device="cpu", assume_a=PD, rcond=True)
    np.testing.assert_array_equal(res.info, expected)
    assert np.isnan(res.inverse[expected != 0]).all()
    assert np.isfinite(res.inverse[expected == 0]).all()
    np.testing.assert_array_equal(np.isnan(res.rcond), expected == -1)
    assert (res.rcond[expected > 0] == 0).all() and (res.rcond[expected == 0] > 0).all()
    good = np.flatnonzero(expected == 0)
    alone = gpuinv.inv_ex(np.ascontiguousarray(a[good]), device="cpu", assume_a=PD, rcond=True)
    np.testing.assert_array_equal(res.inverse[good], alone.inverse)
    np.testing.assert_array_equal(res.rcond[good], alone.rcond)
    b = np.ones(a.shape[:-1] + (2,), dtype=dtype)
    b[9, 0, 0] = np.nan  # NaN in b alone: info 0, NaN propagated
    sol = gpuinv.solve_ex(a, b, device="cpu", assume_a=PD)
    np.testing.assert_array_equal(sol.info, expected)
    assert np.isnan(sol.solution[expected != 0]).all()
    assert np.isnan(sol.solution[9]).any()
    assert np.isfinite(sol.solution[np.setdiff1d(good, [9])]).all()
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite|singular"):
        gpuinv.inv(a[:5], device="cpu", assume_a=PD)


@pytest.mark.parametrize("dtype", DTYPES)
def test_both_routes_give_the_same_codes(dtype):
    # Indefinite and semidefinite by construction, at several steps: the
    # compiled kernel and NumPy's gufunc name the same step.
    n = 6
    a = spd(n + 1, n, dtype, seed=3)
    for k in range(1, n + 1):  # matrix k fails at step k: its k-th pivot is negative
        a[k, k - 1, k - 1] -= 10 * np.abs(a[k]).sum()
    comp, lap = [None, None]
    old = gpuinv.config.cpu_compiled
    try:
        gpuinv.config.cpu_compiled = True
        comp = gpuinv.inv_ex(a, device="cpu", assume_a=PD)
        gpuinv.config.cpu_compiled = False
        lap = gpuinv.inv_ex(a, device="cpu", assume_a=PD)
    finally:
        gpuinv.config.cpu_compiled = old
    np.testing.assert_array_equal(comp.info, np.arange(n + 1))
    np.testing.assert_array_equal(lap.info, comp.info)
    tol = 100 * n * eps(dtype)
    np.testing.assert_allclose(comp.inverse[0], lap.inverse[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", ["tiny", "huge"])
def test_extreme_magnitudes(dtype, scale, route):
    # Entries near 2**-(maxexp - 10) and 2**(maxexp - 10): the power-of-two
    # scaling keeps the inverse (and rcond, which a scale does not change).
    real = np.dtype(dtype).type(0).real.dtype
    maxexp = np.finfo(real).maxexp
    s = np.ldexp(real.type(1), {"tiny": -(maxexp - 10), "huge": maxexp - 10}[scale])
    n = 7
    a = spd(10, n, dtype, seed=5)
    scaled = (a * s).astype(dtype)
    res = gpuinv.inv_ex(scaled, device="cpu", assume_a=PD, rcond=True)
    assert (res.info == 0).all()
    ref = np.linalg.inv(a.astype(wide(dtype)))
    tol = 200 * n * eps(dtype)
    np.testing.assert_allclose(res.inverse.astype(wide(dtype)) * s, ref, rtol=0,
                               atol=tol * np.abs(ref).max())
    plain = gpuinv.inv_ex(a, device="cpu", assume_a=PD, rcond=True)
    np.testing.assert_allclose(res.rcond, plain.rcond, rtol=tol)
    y = gpuinv.solve(scaled, np.ones((10, n, 1), dtype), device="cpu", assume_a=PD, check_cond=False)
    np.testing.assert_allclose(y.astype(wide(dtype)) * s, ref.sum(axis=-1, keepdims=True), rtol=0,
                               atol=tol * np.abs(ref).max() * n)


def test_large_stack_in_chunks_and_threads(monkeypatch):
    # Small chunks on the engine's pool: every chunk's matrices land where they belong.
    monkeypatch.setattr(gpuinv.config, "cpu_chunk_bytes", 4096)
    a = spd(600, 9, np.float64, seed=11)
    a[317, 0, 0] = -1
    res = gpuinv.inv_ex(a, device="cpu", assume_a=PD)
    assert res.info[317] == 1 and (np.delete(res.info, 317) == 0).all()
    ref = np.linalg.inv(np.delete(a, 317, axis=0))
    np.testing.assert_allclose(np.delete(res.inverse, 317, axis=0), ref, rtol=0,
                               atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 5, 13])
def test_every_method_on_every_dtype(dtype, n):
    # The routes take one method per (n, dtype) (cpu_routes.posdef_method);
    # each method is checked here on every dtype, against NumPy, with the
    # same info codes: written out (n <= UNROLLED_MAX_N), elimination without
    # pivoting, Cholesky.
    from gpuinv.engines import _compiled

    a = spd(30, n, dtype, seed=n + 1)
    expected = np.zeros(30, np.int32)
    a[3, 0, 0] = -1
    expected[3] = 1
    a[5, 0, n - 1] = np.nan
    expected[5] = -1
    full = structured_matrix(a, PD, False)
    ok = expected == 0
    ref = np.linalg.inv(full[ok].astype(wide(dtype)))
    b = np.random.default_rng(2).standard_normal((30, n, 2)).astype(dtype)
    tol = 200 * n * eps(dtype) * np.abs(ref).max()
    methods = ["elimination", "cholesky"] + (["unrolled"] if cpu_routes.unrolled_for(n, dtype) else [])
    for method in methods:
        out = np.empty_like(a)
        info = np.full(30, 9, np.int32)
        rc = np.empty(30, np.dtype(dtype).type(0).real.dtype)
        _compiled.invert_posdef(a, out, info, rc, method)
        np.testing.assert_array_equal(info, expected, err_msg=method)
        np.testing.assert_allclose(out[ok], ref, rtol=0, atol=tol, err_msg=method)
        assert np.isnan(out[~ok]).all() and np.isnan(rc[5]) and rc[3] == 0
        np.testing.assert_allclose(rc[ok], rcond_from_inverse(full[ok].astype(wide(dtype)), ref, info[ok]),
                                   rtol=200 * n * eps(dtype), err_msg=method)
        y = np.empty_like(b)
        _compiled.solve_posdef(a, b, y, info, method)
        np.testing.assert_array_equal(info, expected, err_msg=method)
        np.testing.assert_allclose(y[ok], ref @ b[ok].astype(wide(dtype)), rtol=0,
                                   atol=tol * np.abs(b).max() * n, err_msg=method)
    with pytest.raises(ValueError, match="unknown positive definite method"):
        _compiled.invert_posdef(a, np.empty_like(a), np.zeros(30, np.int32), None, "lu")
