"""The Cholesky kernel's per-matrix math, compiled for the host from the header the GPU runs.

g++ compiles gpuinv/kernels/cholesky.cuh (after inverse.cuh, unchanged)
into a shared library called through ctypes. For every dtype and every n
up to 8 (the dispatched ones, ``CHOL_MAX_N``, and those ``--check --all``
reports) it is checked against NumPy/SciPy (LAPACK ``potrf``/``potri``) and
the CPU engine's ``assume_a="positive definite"``: accuracy on random and
graded ill-conditioned Hermitian positive definite matrices (within a
factor of LAPACK's backward error, never its rounded digits), an exactly
Hermitian result, only the lower triangle read, potrf's info on indefinite
and singular matrices, -1 and NaN for non-finite input.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from _kernel_cases import (
    DTYPES,
    GXX,
    backward_error,
    build_chol_host_lib,
    eps,
    host_chol_invert,
    indefinite_at,
    spd_matrices,
)

import gpuinv
import gpuinv.kernels as kernels

pytestmark = pytest.mark.skipif(GXX is None, reason="g++ is not installed")

CASES = [(np.dtype(dt), n) for dt in DTYPES for n in range(1, 9)]


def case_id(case):
    dt, n = case
    dispatched = n <= kernels.CHOL_MAX_N[dt]
    return f"{dt.name}-n{n}" + ("" if dispatched else "-notdispatched")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return build_chol_host_lib(tmp_path_factory.mktemp("chol_host"))


def garbage_upper(rng, a):
    """``a`` with its strict upper triangle replaced by random values and NaN: the
    kernel must not read it."""
    n = a.shape[-1]
    junk = a.copy()
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    noise = rng.standard_normal(a.shape) * 1e3
    noise[..., 0, -1] = np.nan
    junk[:, upper] = noise[:, upper].astype(a.dtype)
    if a.dtype.kind == "c":  # and the diagonal's imaginary part: potrf ignores it
        idx = np.arange(n)
        junk.imag[:, idx, idx] = rng.standard_normal((len(a), n))
        junk.imag[:, 0, 0] = np.nan
    return junk


def assert_exactly_hermitian(x):
    np.testing.assert_array_equal(x, np.conj(np.swapaxes(x, -1, -2)))
    if x.dtype.kind == "c":
        d = np.diagonal(x, axis1=-2, axis2=-1)
        assert np.all(d.imag == 0)


def lapack_inverse(a):
    """SciPy's positive definite inverse (potrf + potri, lower triangle), per matrix."""
    return np.stack([scipy.linalg.inv(x, assume_a="pos", lower=True) for x in a])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_random_spd_accuracy_hermitian_and_lower_only(lib, case):
    dt, n = case
    rng = np.random.default_rng(100 + 10 * n + dt.num)
    a = spd_matrices(rng, 200, n, dt)
    x, info = host_chol_invert(lib, a)
    np.testing.assert_array_equal(info, 0)
    assert_exactly_hermitian(x)
    ours = backward_error(a, x)
    theirs = backward_error(a, lapack_inverse(a).astype(dt))
    assert np.all(ours <= 10 * np.maximum(theirs, eps(dt))), (ours.max(), theirs.max())
    # Forward error against the inverse in the wide type.
    wide = np.complex128 if dt.kind == "c" else np.float64
    exact = np.linalg.inv(a.astype(wide))
    cond = np.linalg.cond(a.astype(wide), 1)
    err = np.linalg.norm(x - exact, 1, axis=(-2, -1)) / np.linalg.norm(exact, 1, axis=(-2, -1))
    assert np.all(err <= 10 * n * cond * eps(dt))
    # Only the lower triangle (and the diagonal's real part) is read.
    junk, junk_info = host_chol_invert(lib, garbage_upper(rng, a))
    np.testing.assert_array_equal(junk_info, 0)
    np.testing.assert_array_equal(junk, x)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_graded_ill_conditioned(lib, case):
    dt, n = case
    rng = np.random.default_rng(200 + 10 * n + dt.num)
    # 1e8 is past what float32 Cholesky takes (about 1 / eps): 1e5 there.
    cond = 1e5 if dt in (np.dtype(np.float32), np.dtype(np.complex64)) else 1e8
    a = spd_matrices(rng, 200, n, dt, cond=cond if n > 1 else None)
    x, info = host_chol_invert(lib, a)
    np.testing.assert_array_equal(info, 0)
    assert_exactly_hermitian(x)
    ours = backward_error(a, x)
    theirs = backward_error(a, lapack_inverse(a).astype(dt))
    assert np.all(ours <= 10 * np.maximum(theirs, eps(dt))), (ours.max(), theirs.max())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_indefinite_and_singular_give_potrf_info_and_nan(lib, case):
    dt, n = case
    rng = np.random.default_rng(300 + 10 * n + dt.num)
    bad, steps = indefinite_at(rng, 40, n, dt)
    good = spd_matrices(rng, 10, n, dt)
    zero = np.zeros((1, n, n), dtype=dt)
    negative = -spd_matrices(rng, 1, n, dt)  # fails at once
    a = np.concatenate([bad, good, zero, negative])
    expected = np.concatenate([steps, np.zeros(len(good), np.int32), [1], [1]]).astype(np.int32)
    x, info = host_chol_invert(lib, a)
    np.testing.assert_array_equal(info, expected)
    assert np.all(np.isnan(x[info != 0]))
    # The same codes as the CPU engine's assume_a="positive definite" (potrf's),
    # and the same NaN output.
    cpu = gpuinv.inv_ex(a, assume_a="positive definite", lower=True, device="cpu")
    np.testing.assert_array_equal(np.asarray(cpu.info), expected)
    assert np.all(np.isnan(np.asarray(cpu.inverse)[expected != 0]))
    # ...and SciPy's verdict: LinAlgError for exactly the failing ones.
    for i in range(len(a)):
        if expected[i]:
            with pytest.raises(np.linalg.LinAlgError):
                scipy.linalg.cholesky(a[i], lower=True)
    # Good matrices are unaffected by their neighbours.
    alone, alone_info = host_chol_invert(lib, good)
    np.testing.assert_array_equal(alone_info, 0)
    np.testing.assert_array_equal(x[info == 0], alone)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_nonfinite_in_the_part_read(lib, case):
    dt, n = case
    rng = np.random.default_rng(400 + 10 * n + dt.num)
    a = spd_matrices(rng, 4, n, dt)
    for k, value in enumerate((np.nan, np.inf, -np.inf)):
        i = int(rng.integers(n))
        j = int(rng.integers(i + 1))  # on or below the diagonal
        a[k, i, j] = value
        a[k, j, i] = np.conj(a[k, i, j])
    if dt.kind == "c":  # a NaN imaginary part below the diagonal
        a[3, n - 1, 0] = complex(1.0, np.nan) if n > 1 else complex(np.nan, 0.0)
    else:
        a[3, n - 1, 0] = np.nan
    x, info = host_chol_invert(lib, a)
    np.testing.assert_array_equal(info, -1)
    assert np.all(np.isnan(x))
    cpu = gpuinv.inv_ex(a, assume_a="positive definite", lower=True, device="cpu")
    np.testing.assert_array_equal(np.asarray(cpu.info), -1)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_the_cpu_engine(lib, case):
    # Same problem, two implementations: the results agree to within the
    # accuracy both are held to, and info agrees exactly.
    dt, n = case
    rng = np.random.default_rng(500 + 10 * n + dt.num)
    a = spd_matrices(rng, 100, n, dt, cond=1e3 if n > 1 else None)
    x, info = host_chol_invert(lib, a)
    cpu = gpuinv.inv_ex(a, assume_a="positive definite", lower=True, device="cpu")
    np.testing.assert_array_equal(np.asarray(cpu.info), info)
    ref = np.asarray(cpu.inverse)
    rel = np.linalg.norm(x - ref, 1, axis=(-2, -1)) / np.linalg.norm(ref, 1, axis=(-2, -1))
    assert np.all(rel <= 20 * n * 1e3 * eps(dt))


def test_one_by_one_is_the_reciprocal(lib):
    for dt in DTYPES:
        a = np.array([[[4.0]], [[0.25]], [[3.0]], [[0.0]], [[-2.0]]], dtype=dt)
        x, info = host_chol_invert(lib, a)
        np.testing.assert_array_equal(info, [0, 0, 0, 1, 1])
        np.testing.assert_array_equal(x[:2, 0, 0], np.array([0.25, 4.0], dtype=dt))
        assert abs(x[2, 0, 0] - 1 / 3) <= 2 * eps(dt)
        assert np.all(np.isnan(x[3:]))


def test_subnormal_diagonal_is_inverted(lib):
    # A subnormal float32 pivot is positive, not zero: [[5e-39]] inverts to
    # 2e38, as on the CPU engine (the device keeps subnormals: -ftz=false).
    for dt in (np.float32, np.complex64):
        a = np.array([[[5e-39]]], dtype=dt)
        x, info = host_chol_invert(lib, a)
        np.testing.assert_array_equal(info, [0])
        assert abs(x[0, 0, 0] - 2e38) <= 4 * eps(np.float32) * 2e38


def test_kernel_spec_for_the_cholesky_kernel():
    for dt, max_n in kernels.CHOL_MAX_N.items():
        spec = kernels.kernel_spec(max_n, dt, "chol")
        assert spec.op == "chol" and spec.shape == "thread" and spec.kind == "chol-thread"
        assert spec.name_expression == f"gpuinv::inv_chol_thread<{kernels._CXX_TYPES[dt]}, {max_n}, {spec.block}>"
        assert spec.shared_bytes == max_n * max_n * (spec.block + 1) * dt.itemsize <= 48 * 1024
        assert spec != kernels.kernel_spec(max_n, dt)  # the LU kernel's spec differs
        with pytest.raises(ValueError, match="Cholesky kernel takes 1 <= n <= "):
            kernels.kernel_spec(max_n + 1, dt, "chol")
        with pytest.raises(ValueError, match="Cholesky kernel"):
            kernels.kernel_spec(0, dt, "chol")
    with pytest.raises(ValueError, match="op must be"):
        kernels.kernel_spec(2, np.float64, "lu")
    with pytest.raises(TypeError):
        kernels.kernel_spec(2, np.float16, "chol")
    # The NVRTC source pastes both headers in.
    source = kernels.kernel_source()
    assert "#include" not in source.split("namespace gpuinv", 1)[1]
    assert "chol_invert_in_place" in source and "invert_in_place" in source
