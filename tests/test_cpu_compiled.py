"""The CPU engine's compiled (Numba) route against its NumPy/LAPACK route.

Both routes run in every test where they can (``gpuinv.config.cpu_compiled``
on and off), so the suite covers the path taken with and without the
``gpuinv[cpu]`` extra. Nothing here asserts a rounding-dependent LAPACK
result: inverses are compared with tolerances, info codes only on matrices
whose zero pivot is determined by construction.

The orders are chosen to compile few kernels (each compile costs 1-2 s on a
fresh machine, then comes from Numba's disk cache): n = 5 and 8 are
specialized kernels, 13 and 24 share the run-time-n one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpuinv
from gpuinv._numerics import rcond_from_inverse
from gpuinv.engines import cpu, cpu_routes

from test_extreme import exactly_singular, mixed_batch, random_stack, wide

pytest.importorskip("numba")

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
NS = [5, 8, 13, 24]


def eps(dtype):
    return float(np.finfo(np.dtype(dtype)).eps)


@pytest.fixture(params=[True, False], ids=["compiled", "lapack"])
def route(request, monkeypatch):
    monkeypatch.setattr(gpuinv.config, "cpu_compiled", request.param)
    return request.param


def run_both(f):
    """f() under each route: (compiled result, LAPACK-route result)."""
    old = gpuinv.config.cpu_compiled
    try:
        gpuinv.config.cpu_compiled = True
        a = f()
        gpuinv.config.cpu_compiled = False
        b = f()
    finally:
        gpuinv.config.cpu_compiled = old
    return a, b


def test_the_route_is_taken(monkeypatch):
    monkeypatch.setattr(gpuinv.config, "cpu_compiled", True)
    assert cpu_routes.compiled_kernels() is not None
    for n in NS:
        assert cpu_routes.compiled_for("invert", n, np.float64) is not None
    gpuinv.config.cpu_compiled = False
    try:
        assert cpu_routes.compiled_kernels() is None
        assert cpu_routes.compiled_for("invert", 5, np.float64) is None
    finally:
        gpuinv.config.cpu_compiled = True


def test_config_switch_validates():
    with pytest.raises(ValueError, match="True or False"):
        gpuinv.config.cpu_compiled = 1


@pytest.mark.parametrize("value, expected", [("0", "False"), ("1", "True"), ("", "True")])
def test_environment_switch(value, expected):
    code = "import gpuinv; print(gpuinv.config.cpu_compiled)"
    env = dict(os.environ, GPUINV_CPU_COMPILED=value)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", NS)
def test_inverse_and_rcond_match_numpy(dtype, n, route):
    a = random_stack(40, n, dtype, seed=n)
    original = a.copy()
    res = gpuinv.inv_ex(a, device="cpu", rcond=True)
    np.testing.assert_array_equal(a, original)
    assert (res.info == 0).all()
    ref = np.linalg.inv(a.astype(wide(dtype)))
    tol = 100 * n * eps(dtype)
    np.testing.assert_allclose(res.inverse, ref, rtol=tol, atol=tol)
    # rcond as defined in _numerics, on the inverse this route computed.
    expected = rcond_from_inverse(a, res.inverse, res.info)
    np.testing.assert_allclose(res.rcond, expected, rtol=10 * n * eps(dtype))
    assert res.rcond.dtype == expected.dtype
    # inv_ex without rcond gives the same inverse.
    np.testing.assert_array_equal(gpuinv.inv_ex(a, device="cpu").inverse, res.inverse)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", NS)
def test_hostile_batch_info_and_nan_placement_equal_lapack_routes(dtype, n):
    # NaN, Inf (in the real and imaginary parts), zero matrices, zero columns
    # and non-finite-beats-singular, planted among good matrices, in small
    # chunks too: the two routes agree code for code.
    a, expected = mixed_batch(n, dtype, seed=n)
    comp, lap = run_both(lambda: gpuinv.inv_ex(a, device="cpu", rcond=True))
    np.testing.assert_array_equal(comp.info, expected)
    np.testing.assert_array_equal(lap.info, expected)
    np.testing.assert_array_equal(np.isnan(comp.inverse), np.isnan(lap.inverse))
    np.testing.assert_array_equal(np.isnan(comp.rcond), expected == -1)
    assert (comp.rcond[expected > 0] == 0).all()
    ok = expected == 0
    tol = 100 * n * eps(dtype)
    np.testing.assert_allclose(comp.inverse[ok], lap.inverse[ok], rtol=tol, atol=tol)
    np.testing.assert_allclose(comp.rcond[ok], lap.rcond[ok], rtol=10 * n * eps(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [5, 8, 13])
def test_exactly_singular_steps_equal_lapack_routes(dtype, n):
    rng = np.random.default_rng(n)
    cases = exactly_singular(n, dtype, rng)
    a = np.stack([m for m, _ in cases])
    steps = np.array([s for _, s in cases])
    comp, lap = run_both(lambda: gpuinv.inv_ex(a, device="cpu"))
    np.testing.assert_array_equal(comp.info, steps)
    np.testing.assert_array_equal(lap.info, steps)
    assert np.isnan(comp.inverse[steps > 0]).all()
    assert np.isfinite(comp.inverse[steps == 0]).all()
    # solve reports the same codes, with NaN solutions.
    b = np.ones(a.shape[:-1] + (2,), dtype=dtype)
    s_comp, s_lap = run_both(lambda: gpuinv.solve_ex(a, b, device="cpu"))
    np.testing.assert_array_equal(s_comp.info, steps)
    np.testing.assert_array_equal(s_lap.info, steps)
    assert np.isnan(s_comp.solution[steps > 0]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [5, 13])
@pytest.mark.parametrize("scale", ["tiny", "huge"])
def test_extreme_magnitudes(dtype, n, scale, route):
    # inv(s a) = inv(a) / s for a power of two s: compare with the inverse of
    # the unscaled matrices. Entries near 2**-(maxexp - 10) and 2**(maxexp - 10)
    # take the kernels' power-of-two scaling (matrices of subnormals:
    # tests/test_extreme.py, which runs on both routes in CI).
    real = np.dtype(dtype).type(0).real.dtype
    maxexp = np.finfo(real).maxexp
    shift = {"tiny": -(maxexp - 10), "huge": maxexp - 10}[scale]
    a = random_stack(16, n, dtype, seed=3)
    s = np.ldexp(real.type(1), shift)
    scaled = (a * s).astype(dtype)
    res = gpuinv.inv_ex(scaled, device="cpu", rcond=True)
    assert (res.info == 0).all()
    ref = np.linalg.inv(a.astype(wide(dtype)))
    got = res.inverse.astype(wide(dtype)) * s
    tol = 100 * n * eps(dtype)
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())
    assert np.isfinite(res.rcond).all() and (res.rcond > 0).all()
    # rcond does not change under a power-of-two scale; the norms here lie
    # outside the compiled kernel's fast complex-modulus range (its fallback).
    plain = gpuinv.inv_ex(a, device="cpu", rcond=True)
    np.testing.assert_allclose(res.rcond, plain.rcond, rtol=10 * n * eps(dtype))
    b = np.ones(a.shape[:-1] + (1,), dtype=dtype)
    x = gpuinv.solve(scaled, b, device="cpu", check_cond=False)
    np.testing.assert_allclose(x.astype(wide(dtype)) * s, ref.sum(axis=-1, keepdims=True),
                               rtol=tol, atol=tol * np.abs(ref).max() * n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 13])
def test_solve_matches_numpy(dtype, n, route):
    rng = np.random.default_rng(n)
    a = random_stack(30, n, dtype, seed=n)
    b = rng.standard_normal((30, n, 3)).astype(dtype)
    a[7] = np.nan
    b[9, 0, 0] = np.nan  # NaN in b only: info 0, NaN propagated
    res = gpuinv.solve_ex(a, b, device="cpu")
    expected = np.zeros(30, np.int32)
    expected[7] = -1
    np.testing.assert_array_equal(res.info, expected)
    assert np.isnan(res.solution[7]).all()
    assert np.isnan(res.solution[9]).any()
    keep = np.setdiff1d(np.arange(30), [7, 9])
    ref = np.linalg.solve(a[keep].astype(wide(dtype)), b[keep].astype(wide(dtype)))
    tol = 100 * n * eps(dtype)
    np.testing.assert_allclose(res.solution[keep], ref, rtol=tol, atol=tol)


def test_read_only_and_strided_input(route):
    a = random_stack(20, 8, np.float64, seed=1)
    view = a[::2, :, :]
    view.flags.writeable = False
    res = gpuinv.inv_ex(view, device="cpu", rcond=True)
    np.testing.assert_allclose(res.inverse, np.linalg.inv(view), rtol=1e-12, atol=1e-12)


def test_warm_up_reports_each_kernel(monkeypatch):
    monkeypatch.setattr(gpuinv.config, "cpu_compiled", True)
    took = cpu.warm_up([np.float64], [5, 13], kinds=["invert"])
    assert set(took) == {("invert", 5, "float64"), ("invert", 13, "float64")}
    assert all(t >= 0 for t in took.values())
    # Orders the compiled route does not take are skipped (n = 1: the
    # reciprocal; complex64 n = 2: the closed form, cpu_routes.COMPILED_INV_MIN_N).
    assert cpu.warm_up([np.float64], [1], kinds=["invert"]) == {}
    assert cpu.warm_up([np.complex64], [2], kinds=["invert"]) == {}
    with pytest.raises(ValueError, match="kinds"):
        cpu.warm_up([np.float64], [5], kinds=["lu"])
    gpuinv.config.cpu_compiled = False
    try:
        assert cpu.warm_up([np.float64], [5]) == {}
    finally:
        gpuinv.config.cpu_compiled = True


def test_no_numba_means_the_lapack_route():
    # With Numba not importable, the engine falls back without a word.
    code = (
        "import sys\n"
        "sys.modules['numba'] = None\n"
        "import numpy as np, gpuinv\n"
        "from gpuinv.engines import cpu_routes\n"
        "a = np.eye(6)[None].repeat(3, 0)\n"
        "print(cpu_routes.compiled_kernels(), gpuinv.inv(a).sum())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["None", "18.0"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 5, 40])
def test_compiled_one_norms_are_the_bits_of_one_norm(dtype, n):
    # The LAPACK route's per-chunk norms (cpu._one_norms) take the compiled
    # sum for real blocks: the same bits as _numerics.one_norm, NaN and Inf
    # propagating as there, for any scale.
    from gpuinv._numerics import one_norm
    from gpuinv.engines import _compiled

    rng = np.random.default_rng(n)
    x = rng.standard_normal((12, n, n)) * np.exp(rng.uniform(-30, 30, (12, 1, 1)))
    x = x.astype(dtype)
    x[3, 0, 0] = np.nan
    x[4, -1, -1] = np.inf
    x[5] = 0
    x[6, 0, -1] = -np.inf
    x[6, -1, 0] = np.nan
    x[7, :, 0] = np.nan
    got = _compiled.one_norms(x)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, one_norm(x))
    scratch = np.empty(x.shape, dtype=dtype)
    compiled, numpy_route = run_both(lambda: cpu._one_norms(x, scratch).copy())
    np.testing.assert_array_equal(compiled, one_norm(x))
    np.testing.assert_array_equal(numpy_route, one_norm(x))
    assert _compiled.one_norms(x[:0]).shape == (0,)
