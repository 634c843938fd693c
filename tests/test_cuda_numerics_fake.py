"""Issue 10's CUDA routes (rcond, assume_a, solve) run on the CPU against the CuPy stand-in.

tests/_fake_cupy.py plus tests/_fake_cupy_numerics.py: device arrays are
NumPy arrays, cuBLAS getrf/getrs and cuSOLVER potrf/potrs batched read and
write through the pointers the engine computes. Every result is compared
with the CPU engine on the same input, and every call is made with every
host synchronization (``.get()``, ``asnumpy``, ``bool``, ``item``) turned
into an error, except where the public function is documented to sync
(``inv`` and ``solve`` reading info).
"""

from __future__ import annotations

from contextlib import contextmanager

import _helpers
import numpy as np
import pytest

import gpuinv
import gpuinv.kernels
from gpuinv._numerics import STRUCTURES
from gpuinv.engines import cuda as cuda_mod


_fake_cupy = _helpers.fake_cupy()
_extra = _helpers.fake_cupy_numerics()
_spy = _helpers.chunk_spy()


@pytest.fixture
def fake(monkeypatch):
    from gpuinv.engines import cuda as cuda_module
    from gpuinv.engines import cuda_engine

    def without_kernels(n, dtype):  # the stand-in has no NVRTC (see test_cuda_fake.py)
        return "cusolver" if n >= cuda_module.routes.CUDA_CUSOLVER_MIN_N else "cublas"

    monkeypatch.setattr(cuda_module.routes, "cuda_route", without_kernels)
    # The public API's engines cache pinned staging per device: none may
    # carry one fake's memory into the next test.
    cuda_engine.cache_clear()
    # The positive definite route on cuSOLVER here; the Cholesky kernel's
    # route has its own tests below (fixture fake_kernels).
    monkeypatch.setattr(cuda_mod.routes, "chol_route", lambda n, dtype: "cusolver")
    # The LU solve on cuBLAS here; the solve kernel's route: fixture fake_kernels.
    monkeypatch.setattr(cuda_mod.routes, "solve_route", lambda n, dtype: "cublas")
    # Likewise the triangular and diagonal inverses on their CuPy/cuBLAS
    # routes; their kernels' route is tested below (fixture fake_kernels).
    monkeypatch.setattr(cuda_mod.routes, "structured_route", lambda n, dtype, structure: "cupy")
    with _fake_cupy.installed(monkeypatch) as module:
        calls: list = []
        _extra.install(module, monkeypatch, calls)
        module.extra_calls = calls
        yield module
    cuda_engine.cache_clear()


@contextmanager
def no_host_sync(fake, monkeypatch):
    """Any read of device data by the host raises inside the block."""

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronization")

    with monkeypatch.context() as m:
        m.setattr(fake.ndarray, "get", refuse)
        m.setattr(fake.ndarray, "__bool__", refuse)
        m.setattr(fake.ndarray, "item", refuse)
        m.setattr(fake.ndarray, "tolist", refuse)
        m.setattr(fake, "asnumpy", refuse)
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(31)


def dev(fake, x):
    return fake.asarray(x)


def spd(rng, batch, n, dtype=np.float64):
    g = rng.standard_normal(batch + (n, n))
    if np.dtype(dtype).kind == "c":
        g = g + 1j * rng.standard_normal(batch + (n, n))
    return (g @ np.conj(np.swapaxes(g, -1, -2)) + n * np.eye(n)).astype(dtype)


def host(x):
    return np.asarray(x.view(np.ndarray) if hasattr(x, "view") else x)


DTYPES = [np.float32, np.float64, np.complex64, np.complex128]


def close(got, want, dtype):
    tol = 1e-3 if np.dtype(dtype).itemsize <= 8 and np.dtype(dtype) != np.float64 else 1e-10
    got, want = host(got), host(want)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=tol, atol=tol * max(1, np.abs(want[ok]).max(
        initial=0)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 3, 6])
def test_rcond_on_device(fake, monkeypatch, rng, dtype, n):
    a = rng.standard_normal((7, n, n)).astype(dtype) + 2 * np.eye(n, dtype=dtype)
    a[1] = 0
    a[4, 0, 0] = np.nan
    d = dev(fake, a)
    with no_host_sync(fake, monkeypatch):
        res = gpuinv.inv_ex(d, rcond=True)
    assert type(res.rcond).__module__ == "cupy" and type(res.info).__module__ == "cupy"
    want = gpuinv.inv_ex(a, rcond=True, device="cpu")
    np.testing.assert_array_equal(host(res.info), want.info)
    close(res.rcond, want.rcond, dtype)
    assert host(res.rcond).dtype == want.rcond.dtype


@pytest.mark.parametrize("structure", sorted(set(STRUCTURES.values()) - {"general"}))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("lower", [False, True])
def test_structures_match_cpu(fake, monkeypatch, rng, structure, dtype, n, lower):
    a = spd(rng, (2, 3), n, dtype)
    a[0, 1, n - 1, n - 1] = 0  # singular for diagonal/triangular
    a[1, 0, 0, 0] = -5  # not positive definite at step 1
    a[1, 2, n - 1, 0] = np.nan  # lower triangle only
    d = dev(fake, a)
    with no_host_sync(fake, monkeypatch):
        res = gpuinv.inv_ex(d, assume_a=structure, lower=lower, rcond=True)
    want = gpuinv.inv_ex(a, assume_a=structure, lower=lower, rcond=True, device="cpu")
    np.testing.assert_array_equal(host(res.info), want.info)
    ok = want.info == 0
    close(host(res.inverse)[ok], want.inverse[ok], dtype)
    if structure not in ("symmetric", "hermitian"):  # those take the LU route's singular output
        assert np.isnan(host(res.inverse)[~ok]).all()
    close(res.rcond, want.rcond, dtype)
    if structure in ("positive definite", "symmetric", "hermitian"):
        x = host(res.inverse)
        t = np.swapaxes(x, -1, -2)
        if structure != "symmetric" and np.dtype(dtype).kind == "c":
            t = t.conj()
        np.testing.assert_array_equal(x, t)


def test_positive_definite_uses_potrf_and_single_rhs_potrs(fake, monkeypatch, rng):
    a = spd(rng, (4,), 5)
    with no_host_sync(fake, monkeypatch):
        gpuinv.inv_ex(dev(fake, a), assume_a="pos")
    kinds = [c[0] for c in fake.extra_calls]
    assert kinds.count("potrfBatched") == 1
    assert kinds.count("potrsBatched") == 5  # one per column of the identity


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,vector", [(1, 1, False), (3, 2, False), (4, 1, True), (7, 3, False)])
def test_solve_matches_cpu(fake, monkeypatch, rng, dtype, n, k, vector):
    a = rng.standard_normal((6, n, n)).astype(dtype) + 2 * n * np.eye(n, dtype=dtype)
    a[2, :, n // 2] = 0
    a[4, n - 1, 0] = np.inf
    b = rng.standard_normal((n,) if vector else (6, n, k)).astype(dtype)
    with no_host_sync(fake, monkeypatch):
        res = gpuinv.solve_ex(dev(fake, a), dev(fake, b), rcond=True)
    want = gpuinv.solve_ex(a, b, rcond=True, device="cpu")
    assert host(res.solution).shape == want.solution.shape
    np.testing.assert_array_equal(host(res.info), want.info)
    close(res.solution, want.solution, dtype)
    close(res.rcond, want.rcond, dtype)
    assert ("getrsBatched", 6, k) in fake.extra_calls


@pytest.mark.parametrize("structure", sorted(set(STRUCTURES.values()) - {"general"}))
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_structured_solve_matches_cpu(fake, monkeypatch, rng, structure, dtype):
    n = 4
    a = spd(rng, (5,), n, dtype)
    a[1, 2, 2] = 0
    a[3, 0, 0] = -1
    b = rng.standard_normal((5, n, 2)).astype(dtype)
    with no_host_sync(fake, monkeypatch):
        res = gpuinv.solve_ex(dev(fake, a), dev(fake, b), assume_a=structure)
    want = gpuinv.solve_ex(a, b, assume_a=structure, device="cpu")
    np.testing.assert_array_equal(host(res.info), want.info)
    close(res.solution, want.solution, dtype)


def test_broadcast_solve_and_policies(fake, rng):
    a = rng.standard_normal((3, 1, 3, 3)) + 6 * np.eye(3)
    b = rng.standard_normal((4, 3, 2))
    x = gpuinv.solve(dev(fake, a), dev(fake, b))
    np.testing.assert_allclose(host(x), np.linalg.solve(a, b), rtol=1e-10)
    a[1, 0] = 0
    with pytest.raises(gpuinv.SingularMatrixError) as err:
        gpuinv.solve(dev(fake, a), dev(fake, b))
    assert err.value.indices[0] == (1, 0)
    x = gpuinv.solve(dev(fake, a), dev(fake, b), on_singular="nan")
    assert np.isnan(host(x)[1]).all()


def test_inv_warns_for_cupy_input(fake, rng):
    a = np.stack([np.diag([1.0, 1e-20]), np.eye(2)])
    with pytest.warns(gpuinv.LinAlgWarning) as rec:
        gpuinv.inv(dev(fake, a))
    assert rec[0].message.indices == [(0,)]


def test_numpy_input_on_the_cuda_engine(fake, rng):
    a = spd(rng, (5,), 4)
    b = rng.standard_normal((5, 4, 1))
    res = gpuinv.inv_ex(a, rcond=True, device="cuda")
    want = gpuinv.inv_ex(a, rcond=True, device="cpu")
    assert type(res.inverse) is np.ndarray and type(res.rcond) is np.ndarray
    close(res.rcond, want.rcond, np.float64)
    pos = gpuinv.inv_ex(a, assume_a="pos", rcond=True, device="cuda")
    assert type(pos.inverse) is np.ndarray
    close(pos.inverse, want.inverse, np.float64)
    x = gpuinv.solve(a, b, device="cuda")
    assert type(x) is np.ndarray
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-10)


def test_cupy_input_on_cpu_device(fake, rng):
    a = spd(rng, (3,), 3)
    res = gpuinv.inv_ex(dev(fake, a), assume_a="pos", rcond=True, device="cpu")
    assert type(res.rcond).__module__ == "cupy"
    x = gpuinv.solve(dev(fake, a), dev(fake, np.ones(3)), device="cpu")
    assert type(x).__module__ == "cupy"
    np.testing.assert_allclose(host(x), np.linalg.solve(a, np.ones(3)), rtol=1e-12)


def test_empty_stacks(fake):
    res = gpuinv.inv_ex(dev(fake, np.zeros((0, 3, 3))), assume_a="pos", rcond=True)
    assert host(res.rcond).shape == (0,)
    sol = gpuinv.solve_ex(dev(fake, np.eye(3)[None]), dev(fake, np.zeros((1, 3, 0))))
    assert host(sol.solution).shape == (1, 3, 0)


# --- chunks, out-of-memory retry and the pipeline (the engine's machinery) ---------------

STRUCTURED = sorted(set(STRUCTURES.values()))


def _spy_chunks(monkeypatch, fail_first=None):
    return _spy.spy_chunks(monkeypatch, cuda_mod.engine, fail_first)


def _chunk_matrices(monkeypatch, backend, count, elements):
    """Chunks of at most ``count`` float64 matrices of ``elements`` input elements each."""
    if backend == "cupy":
        monkeypatch.setattr(gpuinv.config, "cuda_chunk_bytes", count * elements * 8)
    else:
        monkeypatch.setattr(cuda_mod.planning, "PIPELINE_CHUNK_BYTES", count * elements * 8)


def _inp(fake, backend, x):
    return dev(fake, x) if backend == "cupy" else x


def _same(got, want):
    got, want = host(got), host(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-13, atol=0)


def _hostile_stack(rng, batch, n, dtype=np.float64):
    """Positive definite matrices with failures of every kind, at flat indices
    1, 4, 5, 9, 10 (across the seams of chunks of 2, 3 and 4)."""
    a = spd(rng, batch, n, dtype)
    flat = a.reshape(-1, n, n)
    flat[1, n - 1, n - 1] = 0  # singular for diagonal/triangular
    flat[4, 0, 0] = -5  # not positive definite at step 1
    flat[5, :, :] = 0  # singular for every structure
    flat[9, n - 1, 0] = np.nan  # lower triangle only
    flat[10, 0, n - 1] = np.inf  # upper triangle only
    return a


@pytest.mark.parametrize("backend", ["cupy", "numpy"])
@pytest.mark.parametrize("structure", STRUCTURED)
def test_chunked_inverse_equals_unchunked(fake, monkeypatch, rng, backend, structure):
    n = 4
    a = _hostile_stack(rng, (3, 5), n)
    a_before = a.copy()
    inp = _inp(fake, backend, a)
    want = gpuinv.inv_ex(inp, assume_a=structure, rcond=True, device="cuda")
    sizes = _spy_chunks(monkeypatch)
    for per_chunk in (1, 2, 4, 7):
        sizes.clear()
        _chunk_matrices(monkeypatch, backend, per_chunk, n * n)
        if backend == "cupy":
            with no_host_sync(fake, monkeypatch):
                got = gpuinv.inv_ex(inp, assume_a=structure, rcond=True)
        else:
            got = gpuinv.inv_ex(inp, assume_a=structure, rcond=True, device="cuda")
        # Chunks split the batch (3, 5) within its rows: several, none too large.
        assert max(sizes) <= per_chunk and len(sizes) >= 3 and sum(sizes) == 15, sizes
        np.testing.assert_array_equal(host(got.info), host(want.info))
        _same(got.inverse, want.inverse)
        _same(got.rcond, want.rcond)
    np.testing.assert_array_equal(host(inp), a_before)  # the input is never written
    cpu = gpuinv.inv_ex(a, assume_a=structure, rcond=True, device="cpu")
    np.testing.assert_array_equal(host(want.info), cpu.info)


@pytest.mark.parametrize("backend", ["cupy", "numpy"])
@pytest.mark.parametrize("structure", STRUCTURED)
def test_chunked_solve_equals_unchunked(fake, monkeypatch, rng, backend, structure):
    n, k = 4, 3
    a = _hostile_stack(rng, (12,), n)
    b = rng.standard_normal((12, n, k))
    a_before, b_before = a.copy(), b.copy()
    ia, ib = _inp(fake, backend, a), _inp(fake, backend, b)
    want = gpuinv.solve_ex(ia, ib, assume_a=structure, rcond=True, device="cuda")
    sizes = _spy_chunks(monkeypatch)
    for per_chunk in (1, 3, 5):
        sizes.clear()
        _chunk_matrices(monkeypatch, backend, per_chunk, n * n + n * k)
        if backend == "cupy":
            with no_host_sync(fake, monkeypatch):
                got = gpuinv.solve_ex(ia, ib, assume_a=structure, rcond=True)
        else:
            got = gpuinv.solve_ex(ia, ib, assume_a=structure, rcond=True, device="cuda")
        assert sizes == [per_chunk] * (12 // per_chunk) + ([12 % per_chunk] if 12 % per_chunk
                                                            else []), sizes
        np.testing.assert_array_equal(host(got.info), host(want.info))
        _same(got.solution, want.solution)
        _same(got.rcond, want.rcond)
    np.testing.assert_array_equal(host(ia), a_before)
    np.testing.assert_array_equal(host(ib), b_before)
    cpu = gpuinv.solve_ex(a, b, assume_a=structure, rcond=True, device="cpu")
    np.testing.assert_array_equal(host(want.info), cpu.info)
    close(want.solution, cpu.solution, np.float64)


@pytest.mark.parametrize("backend", ["cupy", "numpy"])
@pytest.mark.parametrize("vector", [False, True])
@pytest.mark.parametrize("structure", ["general", "positive definite", "diagonal"])
def test_broadcast_b_across_chunk_seams(fake, monkeypatch, rng, backend, vector, structure):
    # a (3, 1, n, n) and b (4, n, k): the batch (3, 4) is split inside its
    # last axis and across its first; every chunk of b must be the
    # right-hand sides of the same chunk of a.
    n, k = 3, 2
    a = spd(rng, (3, 1), n)
    a[1, 0, 0, 0] = -4  # fails: the whole row (1, :) of the batch
    b = rng.standard_normal((n,) if vector else (4, n, k))
    ia, ib = _inp(fake, backend, a), _inp(fake, backend, b)
    want = gpuinv.solve_ex(a, b, assume_a=structure, device="cpu")
    sizes = _spy_chunks(monkeypatch)
    for per_chunk in (1, 3, 5, 12):
        sizes.clear()
        _chunk_matrices(monkeypatch, backend, per_chunk, n * n + n * (1 if vector else k))
        got = gpuinv.solve_ex(ia, ib, assume_a=structure, device="cuda")
        assert max(sizes) <= per_chunk and sum(sizes) == (3 if vector else 12), sizes
        assert host(got.solution).shape == want.solution.shape
        np.testing.assert_array_equal(host(got.info), want.info)
        close(got.solution, want.solution, np.float64)
    np.testing.assert_array_equal(host(ia), a)
    np.testing.assert_array_equal(host(ib), b)


@pytest.mark.parametrize("backend", ["cupy", "numpy"])
@pytest.mark.parametrize("solve", [False, True])
@pytest.mark.parametrize("structure", ["general", "positive definite", "lower triangular"])
def test_singular_report_names_global_indices_across_seams(fake, monkeypatch, rng, backend,
                                                           solve, structure):
    n = 3
    a = spd(rng, (4, 5), n)
    failing = [(0, 4), (1, 0), (2, 2), (3, 4)]  # the last of a chunk, the first of the next, ...
    for i in failing:
        a[i][:, :] = 0
    b = rng.standard_normal((4, 5, n, 1))
    inp, ib = _inp(fake, backend, a), _inp(fake, backend, b)
    _chunk_matrices(monkeypatch, backend, 3, n * n + (n if solve else 0))
    sizes = _spy_chunks(monkeypatch)
    with pytest.raises(gpuinv.SingularMatrixError) as err:
        if solve:
            gpuinv.solve(inp, ib, assume_a=structure, device="cuda")
        else:
            gpuinv.inv(inp, assume_a=structure, device="cuda")
    assert len(sizes) > 4  # many chunks
    assert err.value.indices == failing
    ex = (gpuinv.solve_ex(inp, ib, assume_a=structure, device="cuda") if solve
          else gpuinv.inv_ex(inp, assume_a=structure, rcond=True, device="cuda"))
    assert [tuple(int(j) for j in i) for i in np.argwhere(host(ex.info) != 0)] == failing


@pytest.mark.parametrize("backend", ["cupy", "numpy"])
@pytest.mark.parametrize("solve", [False, True])
@pytest.mark.parametrize("structure", STRUCTURED)
def test_out_of_memory_at_the_first_try_retries_smaller(fake, monkeypatch, rng, backend, solve,
                                                        structure):
    n = 4
    a = _hostile_stack(rng, (16,), n)
    b = rng.standard_normal((16, n, 2))
    ia, ib = _inp(fake, backend, a), _inp(fake, backend, b)

    def call():
        if solve:
            res = gpuinv.solve_ex(ia, ib, assume_a=structure, rcond=True, device="cuda")
            return res.solution, res.info, res.rcond
        res = gpuinv.inv_ex(ia, assume_a=structure, rcond=True, device="cuda")
        return res.inverse, res.info, res.rcond

    want = call()
    sizes = _spy_chunks(monkeypatch, fail_first=fake.cuda.memory.OutOfMemoryError)
    got = call()
    assert sizes == [16, 8, 8], sizes  # the whole batch, then half at a time
    for g, w in zip(got, want):
        _same(g, w)
    np.testing.assert_array_equal(host(ia), a)
    np.testing.assert_array_equal(host(ib), b)


def _plentiful_planner(monkeypatch):
    # The planner believes memory is plentiful; the pool's limit says otherwise.
    monkeypatch.setattr(cuda_mod.planning, "available_bytes", lambda: 1 << 40)


@pytest.mark.parametrize("solve", [False, True])
@pytest.mark.parametrize("structure", ["general", "symmetric", "positive definite",
                                       "upper triangular"])
def test_out_of_memory_under_a_pool_limit(fake, monkeypatch, rng, solve, structure):
    # A pool limit that holds the inputs and the results but not the scratch
    # of the whole batch: the routes run out of memory where they really
    # allocate, halve their chunks and keep the chunks already finished.
    n, k, m = 4, 2, 64
    a = _hostile_stack(rng, (m,), n)
    b = rng.standard_normal((m, n, k))
    ia, ib = dev(fake, a), dev(fake, b)
    want = (gpuinv.solve_ex(ia, ib, assume_a=structure, rcond=True) if solve
            else gpuinv.inv_ex(ia, assume_a=structure, rcond=True))
    sizes = _spy_chunks(monkeypatch)
    _plentiful_planner(monkeypatch)
    route = cuda_mod.routes.cuda_route(n, np.dtype(np.float64))
    per = cuda_mod.planning.scratch_bytes(n, k, 8, structure, route, rcond=True, solve=solve)
    result = m * (8 * n * (k if solve else n) + 4 + 8)
    fake.get_default_memory_pool().set_limit(size=fake.state.used[0] + result + per * m // 8)
    got = (gpuinv.solve_ex(ia, ib, assume_a=structure, rcond=True) if solve
           else gpuinv.inv_ex(ia, assume_a=structure, rcond=True))
    assert sizes[0] == m and min(sizes) < m and fake.state.oom_count > 0, sizes
    assert sum(sizes[sizes.index(min(sizes)):]) <= m  # finished chunks are not redone
    for g, w in zip(got, want):
        _same(g, w)
    np.testing.assert_array_equal(host(ia), a)


@pytest.mark.parametrize("backend", ["cupy", "numpy"])
@pytest.mark.parametrize("solve", [False, True])
def test_planner_splits_to_fit_device_memory(fake, monkeypatch, rng, backend, solve):
    # memGetInfo feeds the planner through the real _available_bytes: a
    # device with room for about 20 matrices' scratch gets several chunks
    # and never runs out of memory.
    n, k, m = 5, 2, 100
    a = spd(rng, (m,), n)
    b = rng.standard_normal((m, n, k))
    ia, ib = _inp(fake, backend, a), _inp(fake, backend, b)
    structure = "positive definite"
    want = (gpuinv.solve_ex(a, b, assume_a=structure, rcond=True, device="cpu") if solve
            else gpuinv.inv_ex(a, assume_a=structure, rcond=True, device="cpu"))
    sizes = _spy_chunks(monkeypatch)
    per = cuda_mod.planning.scratch_bytes(n, k, 8, structure, "cublas", rcond=True, solve=solve)
    used = fake.state.used.get(0, 0)
    if backend == "cupy":
        room = m * (8 * n * (k if solve else n) + 12) + 20 * per
    else:
        room = 3 * 20 * (per + 8 * (n * n + (n * k if solve else 0))
                         + 8 * n * (k if solve else n) + 12)
    fake.state.device_bytes = used + room + 64 * 512
    got = (gpuinv.solve_ex(ia, ib, assume_a=structure, rcond=True, device="cuda") if solve
           else gpuinv.inv_ex(ia, assume_a=structure, rcond=True, device="cuda"))
    assert fake.state.oom_count == 0 and len(sizes) > 2 and max(sizes) < m, sizes
    np.testing.assert_array_equal(host(got.info), want.info)
    close(got[0], want[0], np.float64)
    close(got.rcond, want.rcond, np.float64)


def test_one_matrix_that_does_not_fit_names_the_work(fake, monkeypatch, rng):
    a, b = dev(fake, spd(rng, (4,), 6)), dev(fake, np.ones((4, 6, 1)))
    sizes = _spy_chunks(monkeypatch)
    fake.state.fail_after = len(fake.state.allocations) + 3  # the three results only
    with pytest.raises(MemoryError, match=r"solving one 6x6 float64 system with 1 right-hand "
                                          r"sides \(assume_a='positive definite'\) needs \d+ bytes"):
        gpuinv.solve_ex(a, b, assume_a="pos", rcond=True)
    assert sizes == [4, 2, 1]  # halved down to one matrix, then gave up
    fake.state.fail_after = None
    fake.state.fail_above = 10
    with pytest.raises(MemoryError, match=f"the result needs {4 * (6 * 8 + 4 + 8)} bytes"):
        gpuinv.solve_ex(a, b, assume_a="pos", rcond=True)


def test_host_input_streams_through_the_pipeline(fake, monkeypatch, rng):
    # NumPy input: per chunk, a and b are uploaded, the solve and rcond run
    # and x, info and rcond are downloaded, all on the slot's own stream.
    n, k = 3, 2
    a = spd(rng, (11,), n)
    b = rng.standard_normal((11, n, k))
    monkeypatch.setattr(cuda_mod.planning, "PIPELINE_CHUNK_BYTES", 2 * (n * n + n * k) * 8)  # 2 a chunk
    res = gpuinv.solve_ex(a, b, assume_a="pos", rcond=True, device="cuda")
    assert type(res.solution) is np.ndarray and type(res.rcond) is np.ndarray
    want = gpuinv.solve_ex(a, b, assume_a="pos", rcond=True, device="cpu")
    close(res.solution, want.solution, np.float64)
    close(res.rcond, want.rcond, np.float64)
    log = fake.state.log
    per_chunk = []
    for entry in log:
        if entry[0] == "memcpyAsync" and entry[3] == fake.memcpyHostToDevice and (
                not per_chunk or per_chunk[-1][-1][0] == "record"):
            per_chunk.append([entry])
        elif per_chunk:
            per_chunk[-1].append(entry)
    assert len(per_chunk) == 6  # 11 matrices, 2 a chunk
    factored = [c[1] for c in fake.extra_calls if c[0] == "potrfBatched"]
    assert max(factored) <= 2 and sum(factored) >= 11  # per chunk, on the device
    for entries in per_chunk:
        names = [e[0] if e[0] != "memcpyAsync" else ("up" if e[3] == 1 else "down")
                 for e in entries]
        assert names == ["up", "up", "down", "down", "down", "record"], names
        assert len({e[1] for e in entries}) == 1 and entries[0][1] != 0  # the slot's stream
    # The pinned set the solve cached (two inputs, three results) serves an
    # inverse after it, and nothing is freed through cudaFreeHost.
    engine = gpuinv.engines.cuda_engine(None)
    staging = engine._staging[0]
    gpuinv.inv_ex(a, assume_a="pos", rcond=True, device="cuda")
    assert engine._staging[0] is staging and fake.state.host_frees == []


@pytest.mark.parametrize("structure", STRUCTURED)
def test_misaligned_input_is_realigned_before_any_operation(fake, monkeypatch, rng, structure):
    # A complex128 view 8 bytes into an allocation: CuPy's own kernels (the
    # structured copy, the casts, the norms) would fault on it on a GPU, so
    # every operation of the routes must see an aligned copy.
    n = 3
    a = spd(rng, (5,), n, np.complex128)
    raw = fake.zeros(a.nbytes + 16, dtype=np.uint8)
    raw[8 : 8 + a.nbytes] = a.reshape(-1).view(np.uint8)
    view = raw[8 : 8 + a.nbytes].view(np.complex128).reshape(a.shape)
    assert view.data.ptr % 16 == 8
    seen = []
    for module, name in ((cuda_mod.structured, "structured_matrix"),
                         (cuda_mod.engine, "rcond_from_inverse"), (cuda_mod.cublas, "lu_solve"),
                         (cuda_mod.cusolver, "cholesky_prepare")):
        real = getattr(module, name)

        def spy(x, *args, real=real, **kw):
            seen.append(x.data.ptr % x.itemsize)
            return real(x, *args, **kw)

        monkeypatch.setattr(module, name, spy)
    b = dev(fake, rng.standard_normal((5, n, 2)).astype(np.complex128))
    with no_host_sync(fake, monkeypatch):
        res = gpuinv.inv_ex(view, assume_a=structure, rcond=True)
        sol = gpuinv.solve_ex(view, b, assume_a=structure, rcond=True)
    assert seen and not any(seen), seen
    want = gpuinv.inv_ex(a, assume_a=structure, rcond=True, device="cpu")
    np.testing.assert_array_equal(host(res.info), want.info)
    close(res.inverse, want.inverse, np.complex128)
    close(res.rcond, want.rcond, np.complex128)
    want = gpuinv.solve_ex(a, host(b), assume_a=structure, device="cpu")
    close(sol.solution, want.solution, np.complex128)
# --- positive definite, small n: gpuinv's Cholesky kernel (inv_chol_thread) ------------


@pytest.fixture
def fake_kernels(monkeypatch):
    """The fake CuPy with the real dispatch, and the kernels on the CPU emulation of CUDA
    (tests/_cuda_emu.py; the CPU engine stands in where g++ cannot build it)."""
    from gpuinv.engines import cuda_engine

    cuda_engine.cache_clear()
    with _fake_cupy.installed(monkeypatch) as module:
        calls: list = []
        _extra.install(module, monkeypatch, calls)
        module.extra_calls = calls
        module.install_kernel_stand_in(monkeypatch)
        yield module
    cuda_engine.cache_clear()


def chol_launches(fake):
    return [entry for entry in fake.state.log if entry[0] == "invert_small_chol"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lower", [False, True])
def test_positive_definite_small_n_runs_the_cholesky_kernel(fake_kernels, monkeypatch, rng, dtype, lower):
    fake = fake_kernels
    n = gpuinv.kernels.CHOL_MAX_N[np.dtype(dtype)]
    for size in sorted({1, 3, n}):
        assert cuda_mod.routes.chol_route(size, dtype) == "kernel"
        a = spd(rng, (2, 5), size, dtype)
        a[0, 1, size - 1, size - 1] = -1 if size > 1 else 0  # the leading minor of order n fails
        a[1, 3, 0, 0] = -2  # order 1
        a[1, 4, size - 1, 0] = np.nan if lower else a[1, 4, size - 1, 0]  # only where it is read
        a[1, 4, 0, size - 1] = a[1, 4, 0, size - 1] if lower else np.nan
        # What is not read may hold anything.
        junk = a.copy()
        if size > 1:
            rows, cols = np.triu_indices(size, 1) if lower else np.tril_indices(size, -1)
            junk[..., rows, cols] = np.inf
        before = len(chol_launches(fake))
        with no_host_sync(fake, monkeypatch):
            res = gpuinv.inv_ex(dev(fake, junk), assume_a="positive definite", lower=lower, rcond=True)
        assert len(chol_launches(fake)) == before + 1  # one launch for the whole stack
        want = gpuinv.inv_ex(a, assume_a="positive definite", lower=lower, rcond=True, device="cpu")
        np.testing.assert_array_equal(host(res.info), want.info)
        assert host(res.info)[0, 1] == size and host(res.info)[1, 3] == 1
        assert host(res.info)[1, 4] == -1
        close(res.inverse, want.inverse, dtype)
        close(res.rcond, want.rcond, dtype)
        x = host(res.inverse)
        np.testing.assert_array_equal(x, np.conj(np.swapaxes(x, -1, -2)))  # exactly Hermitian
    assert not [c for c in fake.extra_calls if c[0] in ("potrfBatched", "potrsBatched")]


def test_positive_definite_above_chol_max_n_stays_on_cusolver(fake_kernels, rng):
    fake = fake_kernels
    n = gpuinv.kernels.CHOL_MAX_N[np.dtype(np.complex128)] + 1
    assert cuda_mod.routes.chol_route(n, np.complex128) == "cusolver"
    a = spd(rng, (3,), n, np.complex128)
    res = gpuinv.inv_ex(dev(fake, a), assume_a="pos")
    close(res.inverse, gpuinv.inv_ex(a, assume_a="pos", device="cpu").inverse, np.complex128)
    assert not chol_launches(fake)
    assert [c[0] for c in fake.extra_calls].count("potrfBatched") == 1


def test_positive_definite_numpy_input_and_solve_rcond_use_the_kernel(fake_kernels, rng):
    fake = fake_kernels
    a = spd(rng, (4,), 4, np.float64)
    got = gpuinv.inv_ex(a, assume_a="pos", device="cuda")
    want = gpuinv.inv_ex(a, assume_a="pos", device="cpu")
    assert isinstance(got.inverse, np.ndarray)
    close(got.inverse, want.inverse, np.float64)
    np.testing.assert_array_equal(got.info, want.info)
    b = rng.standard_normal((4, 4, 2))
    sol = gpuinv.solve_ex(dev(fake, a), dev(fake, b), assume_a="pos", rcond=True)
    close(sol.rcond, gpuinv.inv_ex(a, assume_a="pos", rcond=True, device="cpu").rcond, np.float64)
    assert len(chol_launches(fake)) == 2


def rcond_launches(fake, op):
    """Launches of the rcond variants of ``op`` (a ``KernelSpec.op``) on the CPU emulation."""
    return sum(len(k.launches) for spec, k in _fake_cupy.emulated_kernels.items()
               if spec.rcond and spec.op == op)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rcond_from_the_kernels_in_the_same_launch(fake_kernels, monkeypatch, rng, dtype):
    # On the kernel route rcond comes from the kernel's rcond variant: one
    # launch writes the inverse, info and rcond, with no reduction after it.
    fake = fake_kernels
    dt = np.dtype(dtype)
    emulated = _fake_cupy._use_emulation
    for n in sorted({1, 3, gpuinv.kernels.THREAD_MAX_N[dt] + 1, 12}):
        assert cuda_mod.routes.cuda_route(n, dt) == "kernel"
        a = rng.standard_normal((2, 4, n, n)).astype(dt)
        a[0, 1] = 0  # singular: rcond 0
        a[1, 2, 0, n - 1] = np.inf  # non-finite: rcond NaN
        a[1, 3] *= np.logspace(0, -8, n).astype(a.real.dtype)  # graded: small rcond
        before = rcond_launches(fake, "inv")
        with no_host_sync(fake, monkeypatch):
            res = gpuinv.inv_ex(dev(fake, a), rcond=True)
            sym = gpuinv.inv_ex(dev(fake, a), assume_a="sym", rcond=True)
        if emulated:
            assert rcond_launches(fake, "inv") == before + 2
        want = gpuinv.inv_ex(a, rcond=True, device="cpu")
        np.testing.assert_array_equal(host(res.info), want.info)
        close(res.rcond, want.rcond, dtype)
        assert host(res.rcond).dtype == want.rcond.dtype
        assert host(res.rcond)[0, 1] == 0 and np.isnan(host(res.rcond)[1, 2])
        close(sym.rcond, gpuinv.inv_ex(a, assume_a="sym", rcond=True, device="cpu").rcond, dtype)
        # Without rcond the plain kernel runs: no rcond launch.
        gpuinv.inv_ex(dev(fake, a))
        if emulated:
            assert rcond_launches(fake, "inv") == before + 2


def test_cholesky_rcond_from_the_kernel(fake_kernels, monkeypatch, rng):
    fake = fake_kernels
    a = spd(rng, (5,), 4, np.complex64)
    a[2] = -a[2]  # not positive definite: rcond 0
    before = rcond_launches(fake, "chol")
    with no_host_sync(fake, monkeypatch):
        res = gpuinv.inv_ex(dev(fake, a), assume_a="pos", rcond=True)
    if _fake_cupy._use_emulation:
        assert rcond_launches(fake, "chol") == before + 1
    want = gpuinv.inv_ex(a, assume_a="pos", rcond=True, device="cpu")
    np.testing.assert_array_equal(host(res.info), want.info)
    close(res.rcond, want.rcond, np.complex64)
    assert host(res.rcond)[2] == 0


def test_solve_rcond_from_the_kernel_with_the_solve_info(fake_kernels, monkeypatch, rng):
    # solve_ex's rcond is a's, from the inverse kernel's rcond variant, with
    # the solve's own info codes (0 where singular, NaN where non-finite).
    fake = fake_kernels
    a = rng.standard_normal((6, 3, 3))
    a[1] = 0
    a[4, 2, 2] = np.nan
    b = rng.standard_normal((6, 3, 2))
    before = rcond_launches(fake, "inv")
    with no_host_sync(fake, monkeypatch):
        res = gpuinv.solve_ex(dev(fake, a), dev(fake, b), rcond=True)
    if _fake_cupy._use_emulation:
        assert rcond_launches(fake, "inv") == before + 1
    want = gpuinv.solve_ex(a, b, rcond=True, device="cpu")
    np.testing.assert_array_equal(host(res.info), want.info)
    close(res.rcond, want.rcond, np.float64)
    close(res.solution, want.solution, np.float64)


# --- triangular and diagonal, small n: gpuinv's kernels (inv_tri_thread, inv_diag_thread) ---


def structured_launches(fake):
    return [entry for entry in fake.state.log if entry[0] == "invert_small_structured"]


def structured(rng, batch, n, dtype, structure):
    """Invertible matrices of ``structure`` with random values (NaN included) outside it."""
    x = rng.uniform(-0.5, 0.5, batch + (n, n)) + 2 * np.eye(n)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.uniform(-0.5, 0.5, batch + (n, n))
    rows, cols = np.indices((n, n))
    unread = {"lower triangular": rows < cols, "upper triangular": rows > cols, "diagonal": rows != cols}[structure]
    x[..., unread] = rng.standard_normal(batch + (int(unread.sum()),)) * 1e3
    if unread.any():
        x[(0,) * len(batch)][unread] = np.nan
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("structure", ["lower triangular", "upper triangular", "diagonal"])
def test_triangular_and_diagonal_small_n_run_the_kernels(fake_kernels, monkeypatch, rng, dtype, structure):
    fake = fake_kernels
    bounds = gpuinv.kernels.DIAG_MAX_N if structure == "diagonal" else gpuinv.kernels.TRI_MAX_N
    top = bounds[np.dtype(dtype)]
    for size in sorted({1, 3, top}):
        assert cuda_mod.routes.structured_route(size, dtype, structure) == "kernel"
        a = structured(rng, (2, 5), size, dtype, structure)
        a[0, 1, size - 1, size - 1] = 0  # a zero on the diagonal: info n
        a[1, 3, 0, 0] = np.inf  # non-finite where it is read: -1
        before = len(structured_launches(fake))
        with no_host_sync(fake, monkeypatch):
            res = gpuinv.inv_ex(dev(fake, a), assume_a=structure, rcond=True)
        assert len(structured_launches(fake)) == before + 1  # one launch for the whole stack
        want = gpuinv.inv_ex(a, assume_a=structure, rcond=True, device="cpu")
        np.testing.assert_array_equal(host(res.info), want.info)
        assert host(res.info)[0, 1] == size and host(res.info)[1, 3] == -1
        close(res.inverse, want.inverse, dtype)
        close(res.rcond, want.rcond, dtype)
        # Exact zeros outside the structure, as the CPU engine writes.
        x, ok = host(res.inverse), want.info == 0
        np.testing.assert_array_equal(x[ok] == 0, np.asarray(want.inverse)[ok] == 0)
    # Neither the LU route nor its info pass ran.
    assert not [c for c in fake.extra_calls if c[0] in ("getrfBatched", "getriBatched")]


def test_structured_above_the_kernel_bounds_stay_on_cupy(fake_kernels, rng):
    fake = fake_kernels
    for structure, bounds in (("lower triangular", gpuinv.kernels.TRI_MAX_N),
                              ("upper triangular", gpuinv.kernels.TRI_MAX_N),
                              ("diagonal", gpuinv.kernels.DIAG_MAX_N)):
        n = bounds[np.dtype(np.complex128)] + 1
        assert cuda_mod.routes.structured_route(n, np.complex128, structure) == "cupy"
        a = structured(rng, (3,), n, np.complex128, structure)
        res = gpuinv.inv_ex(dev(fake, a), assume_a=structure)
        close(res.inverse, gpuinv.inv_ex(a, assume_a=structure, device="cpu").inverse, np.complex128)
    assert not structured_launches(fake)
    assert cuda_mod.routes.structured_route(3, np.float64, "symmetric") == "cupy"


def test_structured_numpy_input_and_solve_rcond_use_the_kernel(fake_kernels, rng):
    fake = fake_kernels
    a = structured(rng, (4,), 4, np.float64, "upper triangular")
    got = gpuinv.inv_ex(a, assume_a="upper triangular", device="cuda")
    want = gpuinv.inv_ex(a, assume_a="upper triangular", device="cpu")
    assert isinstance(got.inverse, np.ndarray)
    close(got.inverse, want.inverse, np.float64)
    np.testing.assert_array_equal(got.info, want.info)
    b = rng.standard_normal((4, 4, 2))
    sol = gpuinv.solve_ex(dev(fake, a), dev(fake, b), assume_a="upper triangular", rcond=True)
    close(sol.rcond, gpuinv.inv_ex(a, assume_a="upper triangular", rcond=True, device="cpu").rcond, np.float64)
    assert len(structured_launches(fake)) == 2


@pytest.mark.parametrize("structure", ["lower triangular", "upper triangular", "diagonal"])
def test_structured_rcond_from_the_kernel(fake_kernels, monkeypatch, rng, structure):
    fake = fake_kernels
    a = rng.standard_normal((6, 4, 4)).astype(np.complex128) + 4 * np.eye(4)
    a[1, 2, 2] = 0  # trtri's info 3: rcond 0
    a[3] *= np.logspace(0, -9, 4)[None, :]  # graded columns: a small rcond
    before = rcond_launches(fake, {"lower triangular": "tril", "upper triangular": "triu",
                                   "diagonal": "diag"}[structure])
    with no_host_sync(fake, monkeypatch):
        res = gpuinv.inv_ex(dev(fake, a), assume_a=structure, rcond=True)
    if _fake_cupy._use_emulation:
        assert rcond_launches(fake, {"lower triangular": "tril", "upper triangular": "triu",
                                     "diagonal": "diag"}[structure]) == before + 1
    want = gpuinv.inv_ex(a, assume_a=structure, rcond=True, device="cpu")
    np.testing.assert_array_equal(host(res.info), want.info)
    close(res.rcond, want.rcond, np.complex128)
    assert host(res.rcond)[1] == 0


# --- the LU solve kernel's route (n <= SOLVE_MAX_N) ---------------------------------


def solve_launches(fake):
    return [entry for entry in fake.state.log if entry[0] == "solve_small"]


def cublas_solves(fake):
    return [c for c in fake.extra_calls if c[0] in ("getrfBatched", "getrsBatched")]


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_n_solve_runs_the_solve_kernel(fake_kernels, monkeypatch, rng, dtype):
    fake = fake_kernels
    top = gpuinv.kernels.SOLVE_MAX_N[np.dtype(dtype)]
    for n in sorted({1, 3, top}):
        assert cuda_mod.routes.solve_route(n, dtype) == "kernel"
        a = rng.standard_normal((2, 5, n, n)).astype(dtype) + 2 * n * np.eye(n, dtype=dtype)
        a[0, 1, :, n // 2] = 0  # singular: info n // 2 + 1
        a[1, 3, n - 1, 0] = np.nan  # info -1
        for b in (rng.standard_normal(n).astype(dtype), rng.standard_normal((2, 5, n, n + 1)).astype(dtype)):
            before = len(solve_launches(fake))
            with no_host_sync(fake, monkeypatch):
                res = gpuinv.solve_ex(dev(fake, a), dev(fake, b))
            assert len(solve_launches(fake)) == before + 1  # one launch for the whole stack
            want = gpuinv.solve_ex(a, b, device="cpu")
            assert host(res.solution).shape == want.solution.shape
            np.testing.assert_array_equal(host(res.info), want.info)
            assert host(res.info)[0, 1] == n // 2 + 1 and host(res.info)[1, 3] == -1
            close(res.solution, want.solution, dtype)
    assert not cublas_solves(fake)


@pytest.mark.parametrize("structure", ["symmetric", "hermitian", "upper triangular", "lower triangular"])
@pytest.mark.parametrize("lower", [False, True])
def test_structured_small_n_solve_runs_the_solve_kernel(fake_kernels, monkeypatch, rng, structure, lower):
    fake = fake_kernels
    n, dtype = 4, np.complex128
    a = spd(rng, (5,), n, dtype)
    a[1, 2, 2] = 0
    a[3, 0, 0] = -1
    # Inf only in the triangle read (triangular structures name theirs; `lower` is for the others).
    reads_lower = structure == "lower triangular" or (lower and "triangular" not in structure)
    a[4, 3, 0] = np.inf if reads_lower else a[4, 3, 0]
    a[4, 0, 3] = a[4, 0, 3] if reads_lower else np.inf
    b = rng.standard_normal((5, n, 2)).astype(dtype)
    with no_host_sync(fake, monkeypatch):
        res = gpuinv.solve_ex(dev(fake, a), dev(fake, b), assume_a=structure, lower=lower, rcond=True)
    want = gpuinv.solve_ex(a, b, assume_a=structure, lower=lower, rcond=True, device="cpu")
    np.testing.assert_array_equal(host(res.info), want.info)
    assert host(res.info)[4] == -1
    close(res.solution, want.solution, dtype)
    close(res.rcond, want.rcond, dtype)
    assert len(solve_launches(fake)) == 1 and not cublas_solves(fake)


def test_solve_above_solve_max_n_stays_on_cublas(fake_kernels, rng):
    fake = fake_kernels
    n = gpuinv.kernels.SOLVE_MAX_N[np.dtype(np.float64)] + 1
    assert cuda_mod.routes.solve_route(n, np.float64) == "cublas"
    a = rng.standard_normal((3, n, n)) + 2 * n * np.eye(n)
    b = rng.standard_normal((3, n, 2))
    res = gpuinv.solve_ex(dev(fake, a), dev(fake, b))
    close(res.solution, gpuinv.solve_ex(a, b, device="cpu").solution, np.float64)
    assert not solve_launches(fake)
    assert ("getrsBatched", 3, 2) in fake.extra_calls


def test_solve_kernel_route_with_numpy_input_and_strided_cast_a(fake_kernels, rng):
    # NumPy input streams through the pipeline; a transposed int view is
    # gathered and cast before the kernel, which needs C-contiguous stacks.
    fake = fake_kernels
    a = rng.integers(-4, 5, (6, 3, 3)) + 12 * np.eye(3, dtype=np.int64)
    b = rng.standard_normal((6, 3))
    got = gpuinv.solve_ex(a, b[..., None], device="cuda")
    want = gpuinv.solve_ex(a, b[..., None], device="cpu")
    assert isinstance(got.solution, np.ndarray)
    close(got.solution, want.solution, np.float64)
    view = dev(fake, a).swapaxes(-1, -2)
    got = gpuinv.solve_ex(view, dev(fake, b[..., None]))
    close(got.solution, gpuinv.solve_ex(np.swapaxes(a, -1, -2), b[..., None], device="cpu").solution,
          np.float64)
    assert len(solve_launches(fake)) == 2


def test_solve_kernel_route_broadcasts_a_and_b(fake_kernels, rng):
    fake = fake_kernels
    a = rng.standard_normal((1, 4, 4)) + 8 * np.eye(4)
    b = rng.standard_normal((3, 2, 4, 2))
    got = gpuinv.solve_ex(dev(fake, a), dev(fake, b))
    want = gpuinv.solve_ex(a, b, device="cpu")
    assert host(got.solution).shape == want.solution.shape == (3, 2, 4, 2)
    close(got.solution, want.solution, np.float64)
    vec = rng.standard_normal(4)
    many = rng.standard_normal((5, 4, 4)) + 8 * np.eye(4)
    got = gpuinv.solve_ex(dev(fake, many), dev(fake, vec))
    close(got.solution, gpuinv.solve_ex(many, vec, device="cpu").solution, np.float64)
    assert len(solve_launches(fake)) == 2


def test_rcond_where_the_kernel_has_no_rcond_variant(fake_kernels, monkeypatch, rng):
    # float64 n = 7 (one thread per matrix, near the register limit): the
    # plain kernel inverts and rcond comes from the CuPy norms.
    fake = fake_kernels
    assert not gpuinv.kernels.has_rcond_variant(7, np.float64)
    a = rng.standard_normal((5, 7, 7))
    a[2] = 0
    before = rcond_launches(fake, "inv")
    with no_host_sync(fake, monkeypatch):
        res = gpuinv.inv_ex(dev(fake, a), rcond=True)
    assert rcond_launches(fake, "inv") == before
    want = gpuinv.inv_ex(a, rcond=True, device="cpu")
    np.testing.assert_array_equal(host(res.info), want.info)
    close(res.rcond, want.rcond, np.float64)
    assert host(res.rcond)[2] == 0
