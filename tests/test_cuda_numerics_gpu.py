"""Issue 10 on a real GPU: rcond, assume_a and solve for CuPy input, against the CPU engine.

Carries the ``gpu`` marker and skips where CuPy is missing or no device is
usable. These check the real cuBLAS/cuSOLVER calls (getrsBatched,
potrfBatched, potrsBatched) that tests/test_cuda_numerics_fake.py can only
check against its stand-in.
"""

from __future__ import annotations


import _helpers
import numpy as np
import pytest

import gpuinv
from gpuinv._numerics import STRUCTURES
from gpuinv.engines import cuda as cuda_mod

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


# --- chunks, out-of-memory retry and the pipeline, on the device ---------------------------

STRUCTURED = sorted(set(STRUCTURES.values()))


@pytest.fixture(autouse=True)
def _no_pool_limit():
    yield
    cupy.get_default_memory_pool().set_limit(size=0)


def _spy_chunks(monkeypatch, fail_first=False):
    oom = cupy.cuda.memory.OutOfMemoryError if fail_first else None
    return _helpers.chunk_spy().spy_chunks(monkeypatch, cuda_mod.engine, oom)


def _chunk_matrices(monkeypatch, count, elements, itemsize=8):
    monkeypatch.setattr(gpuinv.config, "cuda_chunk_bytes", count * elements * itemsize)
    monkeypatch.setattr(cuda_mod.planning, "PIPELINE_CHUNK_BYTES", count * elements * itemsize)


def _hostile(rng, batch, n, dtype=np.float64):
    a = spd(rng, batch, n, dtype)
    flat = a.reshape(-1, n, n)
    flat[1, n - 1, n - 1] = 0  # singular for diagonal/triangular
    flat[4, 0, 0] = -5  # not positive definite at step 1
    flat[5] = 0  # singular for every structure
    flat[9, n - 1, 0] = np.nan
    flat[10, 0, n - 1] = np.inf
    return a


def _to_host(x):
    return cupy.asnumpy(x) if isinstance(x, cupy.ndarray) else x


@pytest.mark.parametrize("backend", ["cupy", "numpy"])
@pytest.mark.parametrize("structure", STRUCTURED)
@pytest.mark.parametrize("n", [4, 40])
def test_chunked_equals_unchunked(rng, monkeypatch, backend, structure, n):
    a = _hostile(rng, (6, 7), n)
    b = rng.standard_normal((6, 7, n, 2))
    ia = cupy.asarray(a) if backend == "cupy" else a
    ib = cupy.asarray(b) if backend == "cupy" else b
    inv_want = gpuinv.inv_ex(ia, assume_a=structure, rcond=True, device="cuda")
    sol_want = gpuinv.solve_ex(ia, ib, assume_a=structure, rcond=True, device="cuda")
    sizes = _spy_chunks(monkeypatch)
    _chunk_matrices(monkeypatch, 5, n * n)
    inv = gpuinv.inv_ex(ia, assume_a=structure, rcond=True, device="cuda")
    assert len(sizes) > 10 and max(sizes) <= 5 and sum(sizes) == 42, sizes
    sizes.clear()
    _chunk_matrices(monkeypatch, 5, n * n + 2 * n)  # a solve also reads b
    sol = gpuinv.solve_ex(ia, ib, assume_a=structure, rcond=True, device="cuda")
    assert len(sizes) > 10 and max(sizes) <= 5 and sum(sizes) == 42, sizes
    for got, want in ((inv, inv_want), (sol, sol_want)):
        np.testing.assert_array_equal(_to_host(got.info), _to_host(want.info))
        close(got[0], _to_host(want[0]), np.float64)
        close(got.rcond, _to_host(want.rcond), np.float64)
    np.testing.assert_array_equal(_to_host(ia), a)  # the input is never written
    np.testing.assert_array_equal(_to_host(ib), b)
    cpu = gpuinv.inv_ex(a, assume_a=structure, rcond=True, device="cpu")
    np.testing.assert_array_equal(_to_host(inv.info), cpu.info)


@pytest.mark.parametrize("backend", ["cupy", "numpy"])
@pytest.mark.parametrize("structure", ["general", "positive definite", "lower triangular"])
def test_singular_report_names_global_indices_across_seams(rng, monkeypatch, backend, structure):
    n = 6
    a = spd(rng, (4, 5), n, np.float64)
    failing = [(0, 4), (1, 0), (2, 2), (3, 4)]
    for i in failing:
        a[i][:, :] = 0
    b = rng.standard_normal((4, 5, n, 1))
    ia = cupy.asarray(a) if backend == "cupy" else a
    ib = cupy.asarray(b) if backend == "cupy" else b
    _chunk_matrices(monkeypatch, 3, n * n + n)
    with pytest.raises(gpuinv.SingularMatrixError) as err:
        gpuinv.inv(ia, assume_a=structure, device="cuda")
    assert err.value.indices == failing
    with pytest.raises(gpuinv.SingularMatrixError) as err:
        gpuinv.solve(ia, ib, assume_a=structure, device="cuda")
    assert err.value.indices == failing


@pytest.mark.parametrize("backend", ["cupy", "numpy"])
@pytest.mark.parametrize("structure", ["general", "positive definite", "diagonal"])
def test_broadcast_b_across_seams(rng, monkeypatch, backend, structure):
    n, k = 5, 3
    a = spd(rng, (3, 1), n, np.float64)
    a[1, 0, 0, 0] = -4
    b = rng.standard_normal((4, n, k))
    ia = cupy.asarray(a) if backend == "cupy" else a
    ib = cupy.asarray(b) if backend == "cupy" else b
    want = gpuinv.solve_ex(a, b, assume_a=structure, device="cpu")
    sizes = _spy_chunks(monkeypatch)
    for per_chunk in (1, 3, 5):
        sizes.clear()
        _chunk_matrices(monkeypatch, per_chunk, n * n + n * k)
        got = gpuinv.solve_ex(ia, ib, assume_a=structure, device="cuda")
        assert max(sizes) <= per_chunk and sum(sizes) == 12, sizes
        np.testing.assert_array_equal(_to_host(got.info), want.info)
        close(got.solution, want.solution, np.float64)
    np.testing.assert_array_equal(_to_host(ia), a)
    np.testing.assert_array_equal(_to_host(ib), b)


@pytest.mark.parametrize("backend", ["cupy", "numpy"])
@pytest.mark.parametrize("solve", [False, True])
@pytest.mark.parametrize("structure", ["general", "symmetric", "positive definite",
                                       "upper triangular", "diagonal"])
def test_injected_out_of_memory_retries_smaller(rng, monkeypatch, backend, solve, structure):
    n = 8
    a = _hostile(rng, (16,), n)
    b = rng.standard_normal((16, n, 2))
    ia = cupy.asarray(a) if backend == "cupy" else a
    ib = cupy.asarray(b) if backend == "cupy" else b

    def call():
        if solve:
            return gpuinv.solve_ex(ia, ib, assume_a=structure, rcond=True, device="cuda")
        return gpuinv.inv_ex(ia, assume_a=structure, rcond=True, device="cuda")

    want = call()
    sizes = _spy_chunks(monkeypatch, fail_first=True)
    got = call()
    assert sizes == [16, 8, 8], sizes
    np.testing.assert_array_equal(_to_host(got.info), _to_host(want.info))
    close(got[0], _to_host(want[0]), np.float64)
    close(got.rcond, _to_host(want.rcond), np.float64)


@pytest.mark.parametrize("solve", [False, True])
@pytest.mark.parametrize("structure", ["general", "positive definite", "upper triangular"])
def test_out_of_memory_under_a_pool_limit(rng, monkeypatch, solve, structure):
    # The planner believes memory is plentiful; the pool's limit holds the
    # results and about an eighth of the scratch: the real allocations run
    # out, the chunks halve, and the results match the unlimited call.
    n, k, m = 16, 2, 4096
    a = spd(rng, (m,), n, np.float64)
    b = rng.standard_normal((m, n, k))
    ia, ib = cupy.asarray(a), cupy.asarray(b)

    def call():
        if solve:
            return gpuinv.solve_ex(ia, ib, assume_a=structure, rcond=True)
        return gpuinv.inv_ex(ia, assume_a=structure, rcond=True)

    want = call()
    cupy.cuda.Device().synchronize()
    del want  # recomputed below, after the limited call: the limit must not count it
    sizes = _spy_chunks(monkeypatch)
    monkeypatch.setattr(cuda_mod.planning, "available_bytes", lambda: 1 << 40)
    route = cuda_mod.routes.cuda_route(n, np.dtype(np.float64))
    per = cuda_mod.planning.scratch_bytes(n, k, 8, structure, route, rcond=True, solve=solve)
    result = m * (8 * n * (k if solve else n) + 12)
    pool = cupy.get_default_memory_pool()
    pool.set_limit(size=pool.used_bytes() + result + per * m // 8)
    got = call()
    pool.set_limit(size=0)
    assert sizes[0] == m and min(sizes) < m, sizes
    want = call()
    np.testing.assert_array_equal(cupy.asnumpy(got.info), cupy.asnumpy(want.info))
    close(got[0], cupy.asnumpy(want[0]), np.float64)
    close(got.rcond, cupy.asnumpy(want.rcond), np.float64)


def test_host_input_larger_than_a_pipeline_chunk(rng, monkeypatch):
    # NumPy input streams through the pinned pipeline: many chunks, three
    # slots, the results equal to the CPU engine's.
    n, k = 12, 2
    a = spd(rng, (3000,), n, np.float64)
    b = rng.standard_normal((3000, n, k))
    monkeypatch.setattr(cuda_mod.planning, "PIPELINE_CHUNK_BYTES", 100 * (n * n + n * k) * 8)
    sizes = _spy_chunks(monkeypatch)
    got = gpuinv.solve_ex(a, b, assume_a="pos", rcond=True, device="cuda")
    assert type(got.solution) is np.ndarray and len(sizes) == 30
    want = gpuinv.solve_ex(a, b, assume_a="pos", rcond=True, device="cpu")
    np.testing.assert_array_equal(got.info, want.info)
    close(got.solution, want.solution, np.float64)
    close(got.rcond, want.rcond, np.float64)
