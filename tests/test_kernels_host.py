"""The kernels' per-matrix math, compiled for the host from the same header the GPU runs.

g++ compiles gpuinv/kernels/inverse.cuh (unchanged: its GPUINV_HD macro is
empty outside CUDA) into a small shared library, which ctypes calls on NumPy
arrays. Every dtype and every n that dispatch sends to the kernels is
checked against NumPy/LAPACK on random, ill-conditioned, exactly singular and
non-finite matrices.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from _kernel_cases import (
    DTYPES,
    GXX,
    MAX_N,
    backward_error,
    build_host_lib,
    conditioned,
    eps,
    exact_singular,
    getf2_zero_step,
    host_invert,
    random_matrices,
)

import gpuinv.kernels as kernels
from gpuinv.engines.cpu import lu_pivot_info

pytestmark = pytest.mark.skipif(GXX is None, reason="g++ is not installed")


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    return build_host_lib(tmp_path_factory.mktemp("kernels_host"))


def dispatched_cases():
    return [(np.dtype(dt), n) for dt in DTYPES for n in range(1, kernels.KERNEL_MAX_N[np.dtype(dt)] + 1)]


def case_id(case):
    dt, n = case
    return f"{dt.name}-n{n}"


CASES = dispatched_cases()


def test_complex_layout_matches_numpy(host_lib):
    # cplx<R> must be laid out as NumPy's complex: two R's, real first, no padding.
    host_lib.gpuinv_sizeof_cplx.restype = ctypes.c_int
    assert host_lib.gpuinv_sizeof_cplx(2) == np.dtype(np.complex64).itemsize
    assert host_lib.gpuinv_sizeof_cplx(3) == np.dtype(np.complex128).itemsize


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_random_matches_lapack(host_lib, case):
    dtype, n = case
    rng = np.random.default_rng(1000 + n)
    a = random_matrices(rng, 24, n, dtype)
    a_before = a.copy()
    x, info = host_invert(host_lib, a)
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(info, 0)
    ours = backward_error(a, x)
    lapack = backward_error(a, np.linalg.inv(a))
    floor = eps(dtype)
    assert np.all(ours <= 10 * np.maximum(lapack, floor)), (ours.max(), lapack.max())
    # Forward error: within a modest multiple of cond * eps of LAPACK's inverse.
    ref = np.linalg.inv(a.astype(np.complex128 if dtype.kind == "c" else np.float64))
    cond = np.linalg.cond(a.astype(ref.dtype), 1)
    err = np.linalg.norm(x - ref, 1, axis=(-2, -1)) / np.linalg.norm(ref, 1, axis=(-2, -1))
    assert np.all(err <= 10 * n * cond * floor), (err / (cond * floor)).max()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_ill_conditioned_backward_error_within_10x_of_lapack(host_lib, case):
    dtype, n = case
    if n == 1:
        pytest.skip("a 1x1 matrix has condition number 1")
    rng = np.random.default_rng(2000 + n)
    # cond ~1e8 in double precision; in single precision 1e8 is past 1/eps
    # (the matrices are numerically singular), so use 1e5 there.
    cond = 1e8 if eps(dtype) < 1e-10 else 1e5
    a = conditioned(rng, 16, n, dtype, cond)
    x, info = host_invert(host_lib, a)
    np.testing.assert_array_equal(info, 0)
    ours = backward_error(a, x)
    lapack = backward_error(a, np.linalg.inv(a))
    ratio = ours / np.maximum(lapack, eps(dtype))
    assert np.all(ratio <= 10), f"worst ratio to LAPACK {ratio.max():.2f}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_exactly_singular_info_matches_partial_pivoting(host_lib, case):
    dtype, n = case
    rng = np.random.default_rng(3000 + n)
    structured, structured_steps = exact_singular(rng, 12, n, dtype)
    # A zero column c stays zero under elimination: the first zero pivot is
    # at step c + 1. A zero row is never a pivot until it is the last row.
    rand = random_matrices(rng, 2 * n + 1, n, dtype)
    rand_steps = np.empty(len(rand), dtype=np.int32)
    for c in range(n):
        rand[c, :, c] = 0
        rand_steps[c] = c + 1
        rand[n + c, c, :] = 0
        rand_steps[n + c] = n
    rand[2 * n] = 0
    rand_steps[2 * n] = 1
    # The structured matrices with their rows shuffled: pivoting now swaps
    # rows and the arithmetic is no longer exact, so whether a pivot is
    # exactly zero depends on rounding; it must match the reference's.
    shuffled = structured[:, rng.permutation(n)]
    exact = np.concatenate([structured, rand])
    x, info = host_invert(host_lib, np.concatenate([exact, shuffled]))
    exact_info, shuffled_info = info[: len(exact)], info[len(exact) :]
    np.testing.assert_array_equal(exact_info, np.concatenate([structured_steps, rand_steps]))
    # Where no rounding happens, any partial-pivoting LU agrees: the CPU
    # engine's (which divides by the pivot) is the reference.
    np.testing.assert_array_equal(exact_info, lu_pivot_info(exact)[0])
    # Where rounding decides, the reference must round as getf2 does.
    np.testing.assert_array_equal(shuffled_info, getf2_zero_step(shuffled))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_nonfinite_input_gives_nan_and_leaves_neighbours_alone(host_lib, case):
    dtype, n = case
    rng = np.random.default_rng(4000 + n)
    a = random_matrices(rng, 9, n, dtype)
    bad = [1, 4, 5, 8]
    for k, value in zip(bad, [np.nan, np.inf, -np.inf, np.nan]):
        i, j = rng.integers(n, size=2)
        a[k, i, j] = value
    if dtype.kind == "c":  # a NaN in the imaginary part only
        a[8, 0, 0] = complex(1.0, np.nan)
    x, info = host_invert(host_lib, a)
    good = [k for k in range(len(a)) if k not in bad]
    np.testing.assert_array_equal(info[bad], -1)
    np.testing.assert_array_equal(info[good], 0)
    assert np.all(np.isnan(x[bad]))
    alone, _ = host_invert(host_lib, a[good])
    np.testing.assert_array_equal(x[good], alone)


def test_shared_library_rejects_unknown_n(host_lib):
    # The dispatch switch in the shim covers exactly 1..MAX_N.
    a = np.zeros((1, MAX_N + 1, MAX_N + 1))
    out = np.empty_like(a)
    info = np.empty(1, dtype=np.int32)
    status = host_lib.gpuinv_host_invert(1, MAX_N + 1, a.ctypes.data, out.ctypes.data, info.ctypes.data, 1, 0)
    assert status == -1
