"""Issue 10 on a real GPU: rcond, assume_a and solve for CuPy input, against the CPU engine.

Carries the ``gpu`` marker and skips where CuPy is missing or no device is
usable. These check the real cuBLAS/cuSOLVER calls (getrsBatched,
potrfBatched, potrsBatched) that tests/test_cuda_numerics_fake.py can only
check against its stand-in.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuinv
from gpuinv._numerics import STRUCTURES

cupy = pytest.importorskip("cupy")
if not cupy.cuda.is_available():
    pytest.skip("no usable CUDA device", allow_module_level=True)

pytestmark = pytest.mark.gpu

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
TOL = {np.float32: 2e-3, np.complex64: 2e-3, np.float64: 1e-9, np.complex128: 1e-9}


def spd(rng, batch, n, dtype):
    g = rng.standard_normal(batch + (n, n))
    if np.dtype(dtype).kind == "c":
        g = g + 1j * rng.standard_normal(batch + (n, n))
    return (g @ np.conj(np.swapaxes(g, -1, -2)) + n * np.eye(n)).astype(dtype)


def close(got, want, dtype):
    tol = TOL[np.dtype(dtype).type]
    got = cupy.asnumpy(got)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=tol,
                               atol=tol * max(1.0, float(np.abs(want[ok]).max(initial=0))))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 16, 33, 64])
def test_rcond(rng, dtype, n):
    a = spd(rng, (50,), n, dtype)
    a[3] = 0
    a[7, 0, 0] = np.nan
    res = gpuinv.inv_ex(cupy.asarray(a), rcond=True)
    want = gpuinv.inv_ex(a, rcond=True, device="cpu")
    assert isinstance(res.rcond, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(res.info), want.info)
    close(res.rcond, want.rcond, dtype)


@pytest.mark.parametrize("structure", sorted(set(STRUCTURES.values())))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 3, 8, 40])
@pytest.mark.parametrize("lower", [False, True])
def test_structures(rng, structure, dtype, n, lower):
    a = spd(rng, (20,), n, dtype)
    a[2, n - 1, n - 1] = 0
    a[5, 0, 0] = -3
    res = gpuinv.inv_ex(cupy.asarray(a), assume_a=structure, lower=lower, rcond=True)
    want = gpuinv.inv_ex(a, assume_a=structure, lower=lower, rcond=True, device="cpu")
    np.testing.assert_array_equal(cupy.asnumpy(res.info), want.info)
    ok = want.info == 0
    close(res.inverse[cupy.asarray(ok)], want.inverse[ok], dtype)
    close(res.rcond, want.rcond, dtype)


@pytest.mark.parametrize("structure", sorted(set(STRUCTURES.values())))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(1, 1), (4, 1), (7, 3), (32, 2), (100, 1)])
def test_solve(rng, structure, dtype, n, k):
    a = spd(rng, (30,), n, dtype)
    a[4, n - 1, n - 1] = 0
    b = rng.standard_normal((30, n, k)).astype(dtype)
    res = gpuinv.solve_ex(cupy.asarray(a), cupy.asarray(b), assume_a=structure, rcond=True)
    want = gpuinv.solve_ex(a, b, assume_a=structure, rcond=True, device="cpu")
    np.testing.assert_array_equal(cupy.asnumpy(res.info), want.info)
    ok = want.info == 0
    close(res.solution[cupy.asarray(ok)], want.solution[ok], dtype)
    close(res.rcond, want.rcond, dtype)


def test_broadcast_and_vector(rng):
    a = spd(rng, (3, 1), 5, np.float64)
    b = rng.standard_normal((4, 5, 2))
    x = gpuinv.solve(cupy.asarray(a), cupy.asarray(b))
    np.testing.assert_allclose(cupy.asnumpy(x), np.linalg.solve(a, b), rtol=1e-9)
    v = gpuinv.solve(cupy.asarray(a), cupy.ones(5))
    np.testing.assert_allclose(cupy.asnumpy(v), np.linalg.solve(a, np.ones(5)), rtol=1e-9)


def test_warning_names_the_ill_conditioned(rng):
    a = np.stack([np.diag([1.0, 1e-20]), np.eye(2)])
    with pytest.warns(gpuinv.LinAlgWarning) as rec:
        gpuinv.inv(cupy.asarray(a))
    assert rec[0].message.indices == [(0,)]
