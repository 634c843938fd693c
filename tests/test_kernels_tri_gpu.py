"""The triangular and diagonal kernels (``inv_tri_thread``, ``inv_diag_thread``) on a real
GPU: every dispatched instantiation against LAPACK ``trtri`` (SciPy) and the CPU engine,
and the CUDA engine's triangular and diagonal routes.

Skipped where CuPy is missing or no CUDA device is usable. The GPU's rounding
(FMA contraction) differs from the host build's, so triangular results are
held to an accuracy bound, not compared bit for bit; info codes are exact
(they depend on exact zeros only), and so are the zeros outside the structure.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg.lapack
from _kernel_cases import eps, triangular_matrices

import gpuinv
import gpuinv.kernels as kernels

cupy = pytest.importorskip("cupy")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cupy.cuda.is_available(), reason="no usable CUDA device"),
]

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
STRUCTURE = {"tril": "lower triangular", "triu": "upper triangular", "diag": "diagonal"}
BOUNDS = {"tril": kernels.TRI_MAX_N, "triu": kernels.TRI_MAX_N, "diag": kernels.DIAG_MAX_N}
CASES = [(op, np.dtype(dt), n) for op in STRUCTURE for dt in DTYPES for n in range(1, BOUNDS[op][np.dtype(dt)] + 1)]


def case_id(case):
    return f"{case[0]}-{case[1].name}-n{case[2]}"


def run_kernel(a_host, structure, **kwargs):
    a = cupy.asarray(a_host)
    out = cupy.empty_like(a)
    info = cupy.empty(a.shape[0], dtype=np.int32)
    kernels.invert_small_structured(a, out, info, structure, **kwargs)
    np.testing.assert_array_equal(a.get(), a_host)  # the input is never written
    return out.get(), info.get()


def outside(n, op):
    if op == "diag":
        return ~np.eye(n, dtype=bool)
    return np.triu(np.ones((n, n), dtype=bool), 1) if op == "tril" else np.tril(np.ones((n, n), dtype=bool), -1)


def wide(a):
    return a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kernel_accuracy_info_and_capped_grids(case):
    op, dtype, n = case
    spec = kernels.kernel_spec(n, dtype, op)
    rng = np.random.default_rng(n + 10 * len(op))
    a = triangular_matrices(rng, 3 * spec.per_block + 5, n, dtype, lower=op != "triu")  # not a multiple of the block
    if op == "diag":
        a = a * np.eye(n, dtype=dtype)
    clean = a.copy()
    noise = rng.standard_normal(a.shape).astype(dtype)
    noise[::3] = np.nan
    a[:, outside(n, op)] = noise[:, outside(n, op)]  # never read
    expected = np.zeros(len(a), np.int32)
    a[7, n - 1, n - 1] = 0
    expected[7] = n
    a[9, 0, 0] = np.nan
    expected[9] = -1
    x, info = run_kernel(a, STRUCTURE[op])
    np.testing.assert_array_equal(info, expected)
    assert np.all(np.isnan(x[info != 0]))
    ok = info == 0
    np.testing.assert_array_equal(x[ok][:, outside(n, op)], 0)
    if op == "diag":
        d = np.diagonal(clean[ok], axis1=1, axis2=2)
        got = np.diagonal(x[ok], axis1=1, axis2=2)
        if np.dtype(dtype).kind == "f":
            np.testing.assert_array_equal(got, 1 / d)
        else:
            assert np.all(np.abs(got - 1 / d) <= 4 * eps(dtype) * np.abs(1 / d))
    else:
        (trtri,) = scipy.linalg.lapack.get_lapack_funcs(("trtri",), (clean,))
        ref = np.stack([trtri(m, lower=int(op == "tril"))[0] for m in clean[ok]])
        cond = np.linalg.cond(wide(clean[ok]), 1)
        err = np.linalg.norm(wide(x[ok]) - wide(ref), 1, axis=(-2, -1)) / np.linalg.norm(wide(ref), 1, axis=(-2, -1))
        assert np.all(err <= 20 * n * cond * eps(dtype))
    for cap in (1, 2, 3):
        capped, capped_info = run_kernel(a, STRUCTURE[op], max_blocks=cap)
        np.testing.assert_array_equal(capped_info, info)
        np.testing.assert_array_equal(capped[ok], x[ok])


def test_engine_route_matches_the_cpu_engine():
    rng = np.random.default_rng(5)
    for op, structure in STRUCTURE.items():
        for dtype in DTYPES:
            top = BOUNDS[op][np.dtype(dtype)]
            for n in (1, 4, top, top + 1):  # top + 1: the CuPy/cuBLAS route
                a = triangular_matrices(rng, 50, n, dtype, lower=op != "triu")
                a[3, n - 1, n - 1] = 0
                got = gpuinv.inv_ex(cupy.asarray(a), assume_a=structure)
                want = gpuinv.inv_ex(a, assume_a=structure, device="cpu")
                np.testing.assert_array_equal(got.info.get(), want.info)
                x, ref = got.inverse.get(), np.asarray(want.inverse)
                np.testing.assert_array_equal(np.isnan(x), np.isnan(ref))
                ok = want.info == 0
                np.testing.assert_allclose(x[ok], ref[ok], rtol=1e3 * n * eps(dtype), atol=1e3 * n * eps(dtype))


def test_argument_errors():
    a = cupy.zeros((2, 3, 3))
    out = cupy.empty_like(a)
    info = cupy.empty(2, dtype=np.int32)
    with pytest.raises(ValueError, match="structure must be"):
        kernels.invert_small_structured(a, out, info, "symmetric")
    with pytest.raises(ValueError, match="shape"):
        kernels.invert_small_structured(a[:, :2], out, info, "diagonal")
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.invert_small_structured(a.swapaxes(1, 2), out, info, "lower triangular")
    big = kernels.TRI_MAX_N[np.dtype(np.complex128)] + 1
    z = cupy.zeros((1, big, big), dtype=np.complex128)
    with pytest.raises(ValueError, match="triangular kernel takes"):
        kernels.invert_small_structured(z, cupy.empty_like(z), cupy.empty(1, dtype=np.int32), "upper triangular")
