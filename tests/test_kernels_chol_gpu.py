"""The Cholesky kernel (``inv_chol_thread``) on a real GPU: every instantiation against
LAPACK (SciPy) and the CPU engine, and the CUDA engine's positive definite route.

Skipped where CuPy is missing or no CUDA device is usable. The GPU's rounding
(FMA contraction) differs from the host build's, so results are held to
LAPACK's accuracy, not compared bit for bit; info codes are exact on the
matrices of tests/_kernel_cases.py, whose verdicts rounding cannot move.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from _kernel_cases import backward_error, eps, indefinite_at, spd_matrices

import gpuinv
import gpuinv.kernels as kernels

cupy = pytest.importorskip("cupy")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cupy.cuda.is_available(), reason="no usable CUDA device"),
]

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
CASES = [(np.dtype(dt), n) for dt in DTYPES for n in range(1, kernels.CHOL_MAX_N[np.dtype(dt)] + 1)]


def case_id(case):
    return f"{case[0].name}-n{case[1]}"


def run_kernel(a_host, **kwargs):
    a = cupy.asarray(a_host)
    out = cupy.empty_like(a)
    info = cupy.empty(a.shape[0], dtype=np.int32)
    kernels.invert_small_chol(a, out, info, **kwargs)
    np.testing.assert_array_equal(a.get(), a_host)  # the input is never written
    return out.get(), info.get()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kernel_accuracy_info_and_capped_grids(case):
    dtype, n = case
    spec = kernels.kernel_spec(n, dtype, "chol")
    rng = np.random.default_rng(n)
    good = spd_matrices(rng, 3 * spec.per_block + 5, n, dtype)  # not a multiple of the block
    bad, steps = indefinite_at(rng, 7, n, dtype)
    a = np.concatenate([good, bad])
    a[5, n - 1, 0] = np.nan
    expected = np.concatenate([np.zeros(len(good), np.int32), steps])
    expected[5] = -1
    x, info = run_kernel(a)
    np.testing.assert_array_equal(info, expected)
    assert np.all(np.isnan(x[info != 0]))
    np.testing.assert_array_equal(x, np.conj(np.swapaxes(x, -1, -2)))  # exactly Hermitian
    ok = info == 0
    lapack = np.stack([scipy.linalg.inv(m, assume_a="pos", lower=True) for m in a[ok]]).astype(dtype)
    assert np.all(backward_error(a[ok], x[ok]) <= 10 * np.maximum(backward_error(a[ok], lapack), eps(dtype)))
    for cap in (1, 2, 3):
        capped, capped_info = run_kernel(a, max_blocks=cap)
        np.testing.assert_array_equal(capped_info, info)
        np.testing.assert_array_equal(capped[ok], x[ok])


def test_engine_route_matches_the_cpu_engine():
    rng = np.random.default_rng(5)
    for dtype in DTYPES:
        for n in (1, 4, kernels.CHOL_MAX_N[np.dtype(dtype)], kernels.CHOL_MAX_N[np.dtype(dtype)] + 1):
            a = spd_matrices(rng, 50, n, dtype)
            for lower in (False, True):
                got = gpuinv.inv_ex(cupy.asarray(a), assume_a="positive definite", lower=lower)
                want = gpuinv.inv_ex(a, assume_a="positive definite", lower=lower, device="cpu")
                np.testing.assert_array_equal(got.info.get(), want.info)
                x = got.inverse.get()
                assert np.all(backward_error(a, x) <= 100 * n * eps(dtype))


def test_subnormal_pivot_is_not_flushed():
    x, info = run_kernel(np.array([[[5e-39]]], dtype=np.float32))
    assert info[0] == 0 and abs(x[0, 0, 0] - 2e38) <= 4 * eps(np.float32) * 2e38


def test_argument_errors():
    a = cupy.zeros((2, 3, 3))
    out = cupy.empty_like(a)
    info = cupy.empty(2, dtype=np.int32)
    with pytest.raises(ValueError, match="shape"):
        kernels.invert_small_chol(a[:, :2], out, info)
    with pytest.raises(ValueError, match="info must"):
        kernels.invert_small_chol(a, out, info.astype(np.int64))
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.invert_small_chol(a.swapaxes(1, 2), out, info)
    big = kernels.CHOL_MAX_N[np.dtype(np.complex128)] + 1
    z = cupy.zeros((1, big, big), dtype=np.complex128)
    with pytest.raises(ValueError, match="Cholesky kernel takes"):
        kernels.invert_small_chol(z, cupy.empty_like(z), cupy.empty(1, dtype=np.int32))
