"""The LU solve kernel's per-system math, compiled for the host from the same header the GPU runs.

g++ compiles gpuinv/kernels/inverse.cuh (``lu_factor``, ``solve_column``,
``solve_matrix``) into a small shared library (tests/_kernel_cases.py), which
ctypes calls on NumPy arrays. Every dtype and every n up to 8 (the dispatched
ones and those ``--check --all`` compiles above ``SOLVE_MAX_N``) is checked
against ``numpy.linalg.solve`` on random, ill-conditioned, exactly singular
and non-finite systems, with one and several right-hand sides; accuracy is
compared as backward error (OpenBLAS's bits differ per CPU), and the info
codes and the solutions against the host build of the LU inverse, which the
solve shares its pivots and U with.
"""

from __future__ import annotations

import numpy as np
import pytest
from _kernel_cases import (
    DTYPES,
    GXX,
    build_host_lib,
    build_solve_host_lib,
    conditioned,
    eps,
    exact_singular,
    getf2_zero_step,
    host_invert,
    host_solve,
    random_matrices,
    solve_backward_error,
)

import gpuinv.kernels as kernels

pytestmark = pytest.mark.skipif(GXX is None, reason="g++ is not installed")

CASES = [(np.dtype(dt), n) for dt in DTYPES for n in range(1, 9)]


def case_id(case):
    dt, n = case
    dispatched = "" if n <= kernels.SOLVE_MAX_N[dt] else "-above"
    return f"{dt.name}-n{n}{dispatched}"


@pytest.fixture(scope="module")
def solve_lib(tmp_path_factory):
    return build_solve_host_lib(tmp_path_factory.mktemp("solve_host"))


@pytest.fixture(scope="module")
def inv_lib(tmp_path_factory):
    return build_host_lib(tmp_path_factory.mktemp("solve_host_inv"))


def rhs(rng, m, n, k, dtype):
    return random_matrices(rng, m, max(n, k), dtype)[:, :n, :k].copy()


def lapack_solve(a, b):
    return np.linalg.solve(a, b)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("k", [1, 3, "n+1"])
def test_random_matches_lapack(solve_lib, case, k):
    dtype, n = case
    k = n + 1 if k == "n+1" else k
    rng = np.random.default_rng(2000 + 10 * n + k)
    a = random_matrices(rng, 24, n, dtype)
    b = rhs(rng, 24, n, k, dtype)
    a_before, b_before = a.copy(), b.copy()
    x, info = host_solve(solve_lib, a, b)
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(b, b_before)
    np.testing.assert_array_equal(info, 0)
    assert x.shape == b.shape and x.dtype == dtype
    ours = solve_backward_error(a, x, b)
    lapack = solve_backward_error(a, lapack_solve(a, b), b)
    floor = eps(dtype)
    assert np.all(ours <= 10 * np.maximum(lapack, floor)), (ours.max(), lapack.max())
    # Forward error: within a modest multiple of cond * eps of a wide solve.
    wide = np.complex128 if dtype.kind == "c" else np.float64
    ref = np.linalg.solve(a.astype(wide), b.astype(wide))
    cond = np.linalg.cond(a.astype(wide), 1)
    err = np.abs(x - ref).sum(axis=-2).max(axis=-1) / np.abs(ref).sum(axis=-2).max(axis=-1)
    assert np.all(err <= 10 * n * cond * floor), (err / (cond * floor)).max()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_ill_conditioned_backward_error_within_10x_of_lapack(solve_lib, case):
    dtype, n = case
    if n == 1:
        pytest.skip("a 1x1 matrix has condition 1")
    rng = np.random.default_rng(3000 + n)
    cond = 1e3 if dtype in (np.float32, np.complex64) else 1e10
    a = conditioned(rng, 16, n, dtype, cond)
    b = rhs(rng, 16, n, 2, dtype)
    x, info = host_solve(solve_lib, a, b)
    np.testing.assert_array_equal(info, 0)
    ours = solve_backward_error(a, x, b)
    lapack = solve_backward_error(a, lapack_solve(a, b), b)
    assert np.all(ours <= 10 * np.maximum(lapack, eps(dtype))), (ours.max(), lapack.max())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_info_and_solution_match_the_lu_inverse(solve_lib, inv_lib, case):
    # lu_factor is lu_in_place without the identity: the same pivots, U and
    # info. A solve with B = I is then the inverse column by column: the
    # same arithmetic in the same order (a zero may differ in sign, which
    # == ignores).
    dtype, n = case
    rng = np.random.default_rng(4000 + n)
    good = random_matrices(rng, 12, n, dtype)
    singular, _ = exact_singular(rng, 6, n, dtype)
    bad = random_matrices(rng, 4, n, dtype)
    bad[0, 0, n - 1] = np.nan
    bad[1, n - 1, 0] = np.inf
    bad[2, n // 2, n // 2] = -np.inf
    with np.errstate(all="ignore"):
        bad[3, 0, 0] = dtype.type(complex(0, np.nan) if dtype.kind == "c" else np.nan)
    a = np.concatenate([good, singular, bad])
    eye = np.broadcast_to(np.eye(n, dtype=dtype), a.shape).copy()
    inverse, inv_info = host_invert(inv_lib, a)
    x, info = host_solve(solve_lib, a, eye)
    np.testing.assert_array_equal(info, inv_info)
    ok = info == 0
    assert ok.sum() >= 12
    np.testing.assert_array_equal(x[ok], inverse[ok])
    assert np.all(np.isnan(x[~ok]))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_exactly_singular_info_and_nan(solve_lib, case):
    dtype, n = case
    rng = np.random.default_rng(5000 + n)
    a, steps = exact_singular(rng, 12, n, dtype)
    zero_col = random_matrices(rng, n, n, dtype)
    for c in range(n):
        zero_col[c, :, c] = 0  # stays zero under elimination: the first zero pivot is at step c + 1
    # The same matrices with rows shuffled: the arithmetic is no longer
    # exact, so whether a pivot is exactly zero depends on rounding; it must
    # match getf2's.
    shuffled = a[:, rng.permutation(n)]
    both = np.concatenate([a, zero_col, shuffled])
    b = rhs(rng, len(both), n, 2, dtype)
    x, info = host_solve(solve_lib, both, b)
    np.testing.assert_array_equal(info[:12], steps)
    np.testing.assert_array_equal(info[12 : 12 + n], np.arange(1, n + 1))
    np.testing.assert_array_equal(info, getf2_zero_step(both))
    assert np.all(np.isnan(x[info != 0]))
    assert not np.isnan(x[info == 0]).all(axis=(1, 2)).any()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_nonfinite_a_gives_nan_and_leaves_neighbours_alone(solve_lib, case):
    dtype, n = case
    rng = np.random.default_rng(6000 + n)
    a = random_matrices(rng, 6, n, dtype)
    a[1, n - 1, 0] = np.nan
    a[4, 0, n - 1] = -np.inf
    b = rhs(rng, 6, n, 3, dtype)
    x, info = host_solve(solve_lib, a, b)
    np.testing.assert_array_equal(info, [0, -1, 0, 0, -1, 0])
    assert np.all(np.isnan(x[[1, 4]]))
    good = [0, 2, 3, 5]
    alone, _ = host_solve(solve_lib, a[good], b[good])
    np.testing.assert_array_equal(x[good], alone)


@pytest.mark.parametrize("case", [(np.dtype(dt), n) for dt in DTYPES for n in (1, 3, 5)], ids=case_id)
def test_nonfinite_b_only_propagates(solve_lib, case):
    # As the CPU engine and LAPACK: info comes from A alone; NaN or Inf in a
    # column of B reaches that column of X and no other.
    dtype, n = case
    rng = np.random.default_rng(7000 + n)
    a = random_matrices(rng, 3, n, dtype)
    b = rhs(rng, 3, n, 3, dtype)
    b[0, 0, 1] = np.nan
    b[2, n - 1, 0] = np.inf
    x, info = host_solve(solve_lib, a, b)
    np.testing.assert_array_equal(info, 0)
    assert not np.isfinite(x[0, :, 1]).all() and np.isfinite(x[0][:, [0, 2]]).all()
    assert not np.isfinite(x[2, :, 0]).all() and np.isfinite(x[2][:, 1:]).all()
    assert np.isfinite(x[1]).all()


def test_one_by_one_is_b_times_the_reciprocal(solve_lib):
    a = np.array([[[4.0]], [[-0.5]], [[0.0]]])
    b = np.array([[[2.0, 1.0]], [[3.0, -1.0]], [[1.0, 1.0]]])
    x, info = host_solve(solve_lib, a, b)
    np.testing.assert_array_equal(info, [0, 0, 1])
    np.testing.assert_array_equal(x[:2], [[[0.5, 0.25]], [[-6.0, 2.0]]])
    assert np.all(np.isnan(x[2]))


def test_shared_library_rejects_unknown_n(solve_lib):
    a = np.zeros((1, 9, 9))
    b = np.zeros((1, 9, 1))
    x = np.zeros_like(b)
    info = np.zeros(1, dtype=np.int32)
    status = solve_lib.gpuinv_host_solve(1, 9, a.ctypes.data, b.ctypes.data, x.ctypes.data, info.ctypes.data, 1, 1)
    assert status == -1
