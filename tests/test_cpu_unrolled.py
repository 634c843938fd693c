"""The CPU engine's unrolled kernels (engines/_unrolled.py) against the loop kernel.

The unrolled kernel for order n (inverse and solve) is the loop kernel's
arithmetic written out, so the two must give the same bits: every inverse element (its sign
of zero included; a NaN as a NaN, whatever its payload), every info code
and every rcond, on hostile input. That is checked here for every order
and dtype the routes send to them; tests/test_cpu_compiled.py checks the
compiled route (these kernels included, at n = 5 and 8) against NumPy and
the LAPACK route.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuinv
from gpuinv.engines import cpu_routes

from test_extreme import mixed_batch

pytest.importorskip("numba")

from gpuinv.engines import _compiled, _unrolled  # noqa: E402  (needs Numba)

CASES = [(np.dtype(dt), n) for dt in (np.float64, np.float32, np.complex128, np.complex64)
         for n in range(2, cpu_routes.UNROLLED_MAX_N[np.dtype(dt).char] + 1)]


def hostile(n: int, dtype: np.dtype, seed: int = 5) -> np.ndarray:
    """Random matrices with, planted: zero matrices, zero pivots at the first and
    last step, equal rows, NaN, Inf, tiny and huge scales, columns 40 decades apart,
    tied pivot keys, a subnormal pivot."""
    rng = np.random.default_rng(seed + n)
    m = 64
    a = rng.standard_normal((m, n, n))
    if dtype.kind == "c":
        a = a + 1j * rng.standard_normal((m, n, n))
    a = a.astype(dtype)
    tiny, huge, sub = (1e-300, 1e300, 1e-310) if a.real.dtype == np.float64 else (1e-40, 1e37, 1e-42)
    a[1] = 0
    a[2, :, 0] = 0
    a[3, 1] = a[3, 0]
    a[4, 0, 0] = np.nan
    a[5, -1, -1] = np.inf
    a[6] *= tiny
    a[7] *= huge
    a[8] = np.eye(n)
    a[9] = np.triu(a[9])
    a[10, :, -1] = 0
    a[11] *= np.logspace(-20, 20, n)
    a[12:20] = np.round(a[12:20])
    a[20, 0, 0] = sub
    if dtype.kind == "c":
        a[21, 1, 1] = complex(0, np.inf)
        a[22, 0, 1] = complex(np.nan, 0)
    return a


def same(u: np.ndarray, v: np.ndarray) -> bool:
    """Equal bits, a NaN matching any NaN (its payload depends on operand order)."""
    if u.dtype.kind == "c":
        return same(u.real.copy(), v.real.copy()) and same(u.imag.copy(), v.imag.copy())
    both_nan = np.isnan(u) & np.isnan(v)
    bits = u.view(f"u{u.itemsize}") == v.view(f"u{v.itemsize}")
    return bool((both_nan | bits).all())


@pytest.mark.parametrize("dtype, n", CASES, ids=[f"{d.name}-n{n}" for d, n in CASES])
@pytest.mark.parametrize("rcond", [False, True], ids=["plain", "rcond"])
def test_unrolled_kernel_gives_the_loop_kernels_bits(dtype, n, rcond):
    a = hostile(n, dtype)
    x = _compiled._read_only(a)
    m = len(a)
    rt = a.real.dtype
    out_loop, out_unrolled = np.empty_like(a), np.empty_like(a)
    info_loop, info_unrolled = np.empty(m, np.int32), np.empty(m, np.int32)
    rc_loop, rc_unrolled = np.empty(m, rt), np.empty(m, rt)
    loop = _compiled._kernel("invert-rcond" if rcond else "invert", 0, dtype)
    loop(x, out_loop, info_loop, rc_loop, 0, m)
    _unrolled.kernel(n, dtype)(x, out_unrolled, info_unrolled, rc_unrolled if rcond else None, 0, m)
    np.testing.assert_array_equal(info_unrolled, info_loop)
    assert (info_loop[[1, 2]] > 0).all() and (info_loop[[4, 5]] == -1).all()
    assert same(out_unrolled, out_loop)
    if rcond:
        assert same(rc_unrolled, rc_loop)
    # The input is only read, and a block slice (lo, hi) leaves the rest alone.
    np.testing.assert_array_equal(np.isnan(a), np.isnan(hostile(n, dtype)))
    part = np.full_like(a, 7)
    part_info = np.full(m, 9, np.int32)
    _unrolled.kernel(n, dtype)(x, part, part_info, None, 10, 20)
    assert (part[:10] == 7).all() and (part[20:] == 7).all() and (part_info[20:] == 9).all()
    assert same(part[10:20], out_loop[10:20])


@pytest.mark.parametrize("dtype, n", CASES, ids=[f"{d.name}-n{n}" for d, n in CASES])
@pytest.mark.parametrize("k", [1, 3])
def test_unrolled_solve_gives_the_loop_solves_bits(dtype, n, k):
    # The solve replays A's elimination on each column of b: the same
    # operations on every entry as the loop kernel's [A | B] elimination.
    a = hostile(n, dtype)
    m = len(a)
    b = np.random.default_rng(n).standard_normal((m, n, k)).astype(dtype)
    b[30] = np.inf  # a non-finite b is solved through (only A is checked, as LAPACK)
    x, rhs = _compiled._read_only(a), _compiled._read_only(b)
    y_loop, y_unrolled = np.empty_like(b), np.empty_like(b)
    info_loop, info_unrolled = np.empty(m, np.int32), np.empty(m, np.int32)
    _compiled.kernel("solve", n, dtype)(x, rhs, y_loop, info_loop)
    _unrolled.solve_kernel(n, dtype)(x, rhs, y_unrolled, info_unrolled)
    np.testing.assert_array_equal(info_unrolled, info_loop)
    assert (info_loop[[1, 2]] > 0).all() and (info_loop[[4, 5]] == -1).all()
    assert same(y_unrolled, y_loop)
    # Through the API (compiled route, unrolled where cpu_routes says so).
    assert cpu_routes.unrolled_for(n, dtype)
    res = gpuinv.solve_ex(a[40:], b[40:], device="cpu")
    assert same(res.solution, y_loop[40:])


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
def test_small_n_route_agrees_with_the_lapack_route_on_hostile_batches(dtype, n):
    # From n = 2 the compiled route takes these orders (cpu_routes.COMPILED_INV_MIN_N):
    # info codes and NaN placement equal the route without Numba's.
    assert cpu_routes.compiled_for("invert", n, dtype) is not None
    a, expected = mixed_batch(n, dtype, seed=n)
    old = gpuinv.config.cpu_compiled
    try:
        comp = gpuinv.inv_ex(a, device="cpu", rcond=True)
        gpuinv.config.cpu_compiled = False
        lap = gpuinv.inv_ex(a, device="cpu", rcond=True)
    finally:
        gpuinv.config.cpu_compiled = old
    np.testing.assert_array_equal(comp.info, expected)
    np.testing.assert_array_equal(lap.info, expected)
    np.testing.assert_array_equal(np.isnan(comp.inverse), np.isnan(lap.inverse))
    ok = expected == 0
    tol = 200 * n * float(np.finfo(np.dtype(dtype)).eps)
    np.testing.assert_allclose(comp.inverse[ok], lap.inverse[ok], rtol=tol, atol=tol)
    np.testing.assert_allclose(comp.rcond[ok], lap.rcond[ok], rtol=0.5)


def test_the_routes_thresholds():
    assert cpu_routes.compiled_for("invert", 1, np.float64) is None  # n = 1: the reciprocal
    assert cpu_routes.compiled_for("invert", 2, np.complex64) is None  # the closed form wins
    assert cpu_routes.compiled_for("invert", 4, np.complex64) is not None
    with pytest.raises(ValueError, match="2..8"):
        _unrolled.kernel(9, np.float64)


def test_source_is_written_once_and_imported_from_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUINV_CACHE_DIR", str(tmp_path))
    _unrolled._module.cache_clear()
    try:
        module = _unrolled._module()
        files = list(tmp_path.glob("gpuinv_unrolled_*.py"))
        assert len(files) == 1 and files[0].read_text() == _unrolled.source()
        assert module.__file__ == str(files[0])
        stamp = files[0].stat().st_mtime_ns
        _unrolled._module.cache_clear()
        _unrolled._module()
        assert files[0].stat().st_mtime_ns == stamp  # not rewritten
    finally:
        _unrolled._module.cache_clear()


def test_without_a_writable_dir_the_kernels_compile_in_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    # A regular file where the directory should be: makedirs fails for each.
    monkeypatch.setattr(_unrolled, "_cache_dirs", lambda: [str(blocker / "sub")])
    _unrolled._module.cache_clear()
    try:
        a = np.array([[[4.0, 7.0], [2.0, 6.0]]])
        out = np.empty_like(a)
        info = np.empty(1, np.int32)
        _unrolled.kernel(2, np.float64)(a, out, info, None, 0, 1)
        np.testing.assert_allclose(out[0], np.linalg.inv(a[0]), rtol=1e-15)
        assert info[0] == 0
    finally:
        _unrolled._module.cache_clear()


def hostile_posdef(n: int, dtype: np.dtype, seed: int = 7) -> np.ndarray:
    """Hermitian positive definite matrices (the upper triangle is what is read) with,
    planted: a zero matrix, a negative pivot at the first and at the last step, a
    semidefinite matrix, NaN and Inf in the triangle read, NaN in the one not read
    and (complex) in the diagonal's imaginary part, tiny and huge scales, the identity."""
    rng = np.random.default_rng(seed + n)
    m = 48
    g = rng.standard_normal((m, n, n))
    if dtype.kind == "c":
        g = g + 1j * rng.standard_normal((m, n, n))
    a = (g @ np.conj(np.swapaxes(g, -1, -2)) / n + 0.1 * np.eye(n)).astype(dtype)
    tiny, huge = (1e-300, 1e300) if a.real.dtype == np.float64 else (1e-40, 1e37)
    a[1] = 0
    a[2, 0, 0] = -1
    a[3, -1, -1] = -4 * np.abs(a[3]).sum()
    a[4] = np.outer(g[4, 0], np.conj(g[4, 0]))  # rank one
    a[5, 0, -1] = np.nan
    a[6, -1, -1] = np.inf
    a[7, -1, 0] = np.nan  # not read (n > 1)
    a[8] *= tiny
    a[9] *= huge
    a[10] = np.eye(n)
    if dtype.kind == "c":
        a[11].imag[np.diag_indices(n)] = np.nan  # not read
    return a


@pytest.mark.parametrize("dtype, n", CASES, ids=[f"{d.name}-n{n}" for d, n in CASES])
@pytest.mark.parametrize("rcond", [False, True], ids=["plain", "rcond"])
def test_unrolled_posdef_kernels_give_the_loop_kernels_bits(dtype, n, rcond):
    # Positive definite: the loop kernels' variant without pivoting and its
    # written-out form, inverse and solve: the same bits, potrf's info.
    a = hostile_posdef(n, dtype)
    m = len(a)
    rt = a.real.dtype
    x = _compiled._read_only(a)
    out_loop, out_unrolled = np.empty_like(a), np.empty_like(a)
    info_loop, info_unrolled = np.empty(m, np.int32), np.empty(m, np.int32)
    rc_loop, rc_unrolled = np.empty(m, rt), np.empty(m, rt)
    _compiled.invert_posdef(x, out_loop, info_loop, rc_loop if rcond else None, "elimination")
    _compiled.invert_posdef(x, out_unrolled, info_unrolled, rc_unrolled if rcond else None, "unrolled")
    np.testing.assert_array_equal(info_unrolled, info_loop)
    expected = {1: 1, 2: 1, 3: n, 5: -1, 6: -1, 7: 0, 8: 0, 9: 0, 10: 0}
    assert {i: int(info_loop[i]) for i in expected} == expected
    assert same(out_unrolled, out_loop)
    # Exactly Hermitian, a real diagonal.
    np.testing.assert_array_equal(np.isnan(out_loop), np.isnan(np.conj(np.swapaxes(out_loop, 1, 2))))
    good = info_loop == 0
    np.testing.assert_array_equal(out_loop[good], np.conj(np.swapaxes(out_loop[good], 1, 2)))
    assert (out_loop[good].imag[:, np.arange(n), np.arange(n)] == 0).all()
    if rcond:
        assert same(rc_unrolled, rc_loop)
    b = np.random.default_rng(n).standard_normal((m, n, 2)).astype(dtype)
    b[20] = np.inf  # solved through: only A is checked
    rhs = _compiled._read_only(b)
    y_loop, y_unrolled = np.empty_like(b), np.empty_like(b)
    _compiled.solve_posdef(x, rhs, y_loop, info_loop, "elimination")
    _compiled.solve_posdef(x, rhs, y_unrolled, info_unrolled, "unrolled")
    np.testing.assert_array_equal(info_unrolled, info_loop)
    assert {i: int(info_loop[i]) for i in expected} == expected
    assert same(y_unrolled, y_loop)
    # The input is only read.
    np.testing.assert_array_equal(np.isnan(a), np.isnan(hostile_posdef(n, dtype)))
