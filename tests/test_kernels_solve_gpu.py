"""The LU solve kernel (``solve_thread``) on a real GPU: every instantiation against
NumPy (LAPACK) and the LU inverse kernel, and the CUDA engine's solve route.

Skipped where CuPy is missing or no CUDA device is usable. The GPU's rounding
(FMA contraction) differs from the host build's, so results are held to
LAPACK's accuracy, not compared bit for bit; info codes are exact on the
matrices of tests/_kernel_cases.py, whose verdicts rounding cannot move.
"""

from __future__ import annotations

import numpy as np
import pytest
from _kernel_cases import eps, exact_singular, random_matrices, solve_backward_error

import gpuinv
import gpuinv.kernels as kernels
from gpuinv.engines.cuda import routes as cuda_routes

cupy = pytest.importorskip("cupy")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cupy.cuda.is_available(), reason="no usable CUDA device"),
]

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
CASES = [(np.dtype(dt), n) for dt in DTYPES for n in range(1, kernels.SOLVE_MAX_N[np.dtype(dt)] + 1)]


def case_id(case):
    return f"{case[0].name}-n{case[1]}"


def run_kernel(a_host, b_host, **kwargs):
    a = cupy.asarray(a_host)
    b = cupy.asarray(b_host)
    x = cupy.empty_like(b)
    info = cupy.empty(a.shape[0], dtype=np.int32)
    kernels.solve_small(a, b, x, info, **kwargs)
    np.testing.assert_array_equal(a.get(), a_host)  # the inputs are never written
    np.testing.assert_array_equal(b.get(), b_host)
    return x.get(), info.get()


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("k", [1, 2, "n+1"])
def test_kernel_accuracy_info_and_capped_grids(case, k):
    dtype, n = case
    k = n + 1 if k == "n+1" else k
    spec = kernels.kernel_spec(n, dtype, "solve")
    rng = np.random.default_rng(n + 10 * k)
    good = random_matrices(rng, 3 * spec.per_block + 5, n, dtype)  # not a multiple of the block
    bad, steps = exact_singular(rng, 7, n, dtype)
    a = np.concatenate([good, bad])
    a[5, n - 1, 0] = np.nan
    b = random_matrices(rng, len(a), max(n, k), dtype)[:, :n, :k].copy()
    expected = np.concatenate([np.zeros(len(good), np.int32), steps])
    expected[5] = -1
    x, info = run_kernel(a, b)
    np.testing.assert_array_equal(info, expected)
    assert np.all(np.isnan(x[info != 0]))
    ok = info == 0
    ours = solve_backward_error(a[ok], x[ok], b[ok])
    lapack = solve_backward_error(a[ok], np.linalg.solve(a[ok], b[ok]), b[ok])
    assert np.all(ours <= 10 * np.maximum(lapack, eps(dtype)))
    # The info codes are the LU inverse kernel's.
    inv = cupy.empty(a.shape, dtype=dtype)
    inv_info = cupy.empty(len(a), dtype=np.int32)
    kernels.invert_small(cupy.asarray(a), inv, inv_info)
    np.testing.assert_array_equal(inv_info.get(), info)
    for cap in (1, 2, 3):
        capped, capped_info = run_kernel(a, b, max_blocks=cap)
        np.testing.assert_array_equal(capped_info, info)
        np.testing.assert_array_equal(capped[ok], x[ok])


def test_engine_route_matches_the_cpu_engine():
    rng = np.random.default_rng(5)
    for dtype in DTYPES:
        top = kernels.SOLVE_MAX_N[np.dtype(dtype)]
        for n in (1, 3, top, top + 1):
            assert cuda_routes.solve_route(n, dtype) == ("kernel" if n <= top else "cublas")
            a = random_matrices(rng, 50, n, dtype)
            a[3] = 0
            for b in (random_matrices(rng, 50, n, dtype)[:, :, 0], random_matrices(rng, 50, n, dtype)):
                for structure in ("general", "upper triangular", "symmetric"):
                    got = gpuinv.solve_ex(cupy.asarray(a), cupy.asarray(b), assume_a=structure)
                    want = gpuinv.solve_ex(a, b, assume_a=structure, device="cpu")
                    np.testing.assert_array_equal(got.info.get(), want.info)
                    x = got.solution.get()
                    ok = want.info == 0
                    assert np.all(np.isnan(x[~ok]))
                    np.testing.assert_allclose(x[ok], want.solution[ok], rtol=1e3 * n * eps(dtype),
                                               atol=1e3 * n * eps(dtype) * np.abs(want.solution[ok]).max())


def test_subnormal_pivot_is_not_flushed():
    x, info = run_kernel(np.array([[[5e-39]]], dtype=np.float32), np.array([[[1e-38]]], dtype=np.float32))
    assert info[0] == 0 and abs(x[0, 0, 0] - 2) <= 4 * eps(np.float32) * 2


def test_argument_errors():
    a = cupy.zeros((2, 3, 3))
    b = cupy.zeros((2, 3, 2))
    x = cupy.empty_like(b)
    info = cupy.empty(2, dtype=np.int32)
    with pytest.raises(ValueError, match="b must have shape"):
        kernels.solve_small(a, b[:, :2], x, info)
    with pytest.raises(ValueError, match="x must have shape"):
        kernels.solve_small(a, b, x[:, :, :1], info)
    with pytest.raises(ValueError, match="b must have dtype"):
        kernels.solve_small(a, b.astype(np.float32), x, info)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.solve_small(a, cupy.zeros((2, 2, 3)).swapaxes(1, 2), x, info)
    big = kernels.SOLVE_MAX_N[np.dtype(np.complex128)] + 1
    z = cupy.zeros((1, big, big), dtype=np.complex128)
    zb = cupy.zeros((1, big, 1), dtype=np.complex128)
    with pytest.raises(ValueError, match="solve kernel takes"):
        kernels.solve_small(z, zb, cupy.empty_like(zb), cupy.empty(1, dtype=np.int32))
