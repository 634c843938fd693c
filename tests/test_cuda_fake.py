"""The CUDA engine's own code, run on the CPU against a stand-in for CuPy.

See tests/_fake_cupy.py: device arrays are NumPy arrays, device pointers
are host addresses, cuBLAS/cuSOLVER are a LAPACK-style getf2 that reads
and writes through those addresses, and our kernels are a stand-in with
their contract. What this checks, on all three routes (kernel, cublas,
cusolver): the engine's pointer arithmetic, the column-major transposes,
info (0 / k / -1, the CPU engine's steps, whichever zero pivot the library
names), NaN for every failed matrix over stale pool memory, non-finite
isolation, chunk seams, cuBLAS batch splitting, the host pipeline's buffers,
copy directions and streams, devices, alignment, the planning bound, the
out-of-memory retry and errors. The real CuPy calls are checked by
tests/test_cuda_gpu.py on a GPU, and their signatures by
tests/test_cupy_signatures.py.
"""

from __future__ import annotations

import gc

import _helpers
import numpy as np
import pytest
from _helpers import invert

import gpuinv
import gpuinv.kernels
from gpuinv._normalize import normalize
from gpuinv.engines import cuda as cuda_mod
from gpuinv.engines.cuda import CudaEngine


_fake_cupy = _helpers.fake_cupy()


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


@pytest.fixture
def fake(monkeypatch):
    # Dispatch is the real one: small n takes the kernel route, on the
    # fake's kernel stand-in (the kernels' own math is tested on the host in
    # test_kernels_host.py).
    from gpuinv.engines import cuda_engine

    # The public API's engines are cached per device with their pinned
    # staging: none may carry one fake's memory into the next test.
    cuda_engine.cache_clear()
    with _fake_cupy.installed(monkeypatch) as module:
        module.install_kernel_stand_in(monkeypatch)
        yield module
    cuda_engine.cache_clear()


ROUTES = ["kernel", "cublas", "cusolver"]


def stack(rng, batch, n, dtype=np.float64, failures=True):
    a = rng.standard_normal(batch + (n, n))
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.standard_normal(batch + (n, n))
    a = (a + n * np.eye(n)).astype(dtype)
    if failures:
        flat = a.reshape(-1, n, n)
        k = len(flat)
        flat[1 % k, :, n // 2] = 0  # zero column: step n // 2 + 1
        flat[3 % k, n - 1] = 0  # zero row: last step
        flat[5 % k, 0, n - 1] = np.nan
        flat[6 % k, n - 1, 0] = -np.inf
    return a


def check(x, info, a):
    want = gpuinv.inv_ex(a, device="cpu")
    x, info = np.asarray(x), np.asarray(info)
    np.testing.assert_array_equal(info, want.info)
    assert np.isnan(x[info != 0]).all()  # singular too: NaN, never stale pool memory
    ok = info == 0
    # The kernel route computes independently of the CPU engine (real kernels
    # on the emulation): agreement to a few ulps of the well-conditioned stacks.
    tol = 1e-4 if x.dtype in (np.float32, np.complex64) else 1e-6
    np.testing.assert_allclose(x[ok], want.inverse[ok], rtol=tol, atol=tol)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_device_input_matches_cpu_engine(fake, rng, route, dtype, n):
    a = stack(rng, (3, 4), n, dtype)
    d = fake.asarray(a)
    x, info = invert(CudaEngine(None), normalize(d), route=route)
    assert type(x).__module__ == "cupy" and x.dtype == dtype and info.dtype == np.int32
    assert x.shape == a.shape and info.shape == (3, 4)
    check(x, info, a)
    np.testing.assert_array_equal(np.asarray(d), a, strict=False)  # input untouched


@pytest.mark.parametrize("route", ROUTES)
def test_host_input_pipeline_matches_cpu_engine(fake, rng, monkeypatch, route):
    a = stack(rng, (5, 9), 4)
    for per_chunk in (1, 2, 7, 100):
        monkeypatch.setattr(cuda_mod.planning, "PIPELINE_CHUNK_BYTES", per_chunk * 16 * 8)
        x, info = invert(CudaEngine(None), normalize(a), route=route)
        assert type(x) is np.ndarray and type(info) is np.ndarray
        check(x, info, a)


def test_public_api_routes_to_the_engine(fake, rng):
    a = stack(rng, (20,), 3)
    res = gpuinv.inv_ex(fake.asarray(a))
    assert type(res.inverse).__module__ == "cupy"
    check(res.inverse, res.info, a)
    res = gpuinv.inv_ex(a, device="cuda")
    assert type(res.inverse) is np.ndarray
    check(res.inverse, res.info, a)
    with pytest.raises(gpuinv.SingularMatrixError) as err:
        gpuinv.inv(fake.asarray(a))
    assert err.value.indices == [(1,), (3,), (5,), (6,)]
    y = gpuinv.inv(a, on_singular="nan", device="cuda")
    assert np.isnan(y[[1, 3, 5, 6]]).all()


def test_odd_strides_and_dtypes(fake, rng):
    base = stack(rng, (12,), 4, failures=False)
    views = [base[::-2], base.swapaxes(-1, -2), np.asfortranarray(base),
             np.broadcast_to(base[2], (3, 5, 4, 4)), base.astype(">f4"), (base * 3).astype(np.int16)]
    for v in views:
        for inp in (v, fake.asarray(np.ascontiguousarray(v))[...] if v.dtype.isnative else None):
            if inp is None:
                continue
            x, info = invert(CudaEngine(None), normalize(inp), route="cublas")
            check(x, info, np.asarray(v))


@pytest.mark.parametrize("route", ROUTES)
def test_strided_device_views(fake, rng, route):
    d = fake.asarray(stack(rng, (8,), 3, failures=False))
    for v in (d[::-3], d.swapaxes(-1, -2), d[:, ::-1], d.reshape(2, 4, 3, 3).transpose(1, 0, 2, 3)):
        x, info = invert(CudaEngine(None), normalize(v), route=route)
        check(x, info, np.asarray(v))


def test_cublas_calls_stay_below_the_batch_limit(fake, rng, monkeypatch):
    monkeypatch.setattr(cuda_mod.planning, "CUBLAS_MAX_BATCH", 4)
    a = stack(rng, (11,), 3)
    x, info = invert(CudaEngine(None), normalize(fake.asarray(a)), route="cublas")
    check(x, info, a)
    assert [b for name, b in _fake_cupy.calls] == [4, 4, 3]


def test_chunk_seams_with_tiny_chunks(fake, rng, monkeypatch):
    a = stack(rng, (3, 7), 5)
    for per_chunk in (1, 2, 3, 4, 6):
        monkeypatch.setattr(gpuinv.config, "cuda_chunk_bytes", per_chunk * 25 * 8)
        x, info = invert(CudaEngine(None), normalize(fake.asarray(a)), route="cublas")
        check(x, info, a)


def _spy_chunks(monkeypatch):
    sizes = []
    real = cuda_mod.general.invert_chunk

    def spy(view, out, *args, **kw):
        sizes.append(out.shape[0])
        real(view, out, *args, **kw)

    monkeypatch.setattr(cuda_mod.general, "invert_chunk", spy)
    return sizes


def _plentiful_planner(monkeypatch):
    # The planner believes memory is plentiful; the pool's limit says otherwise.
    monkeypatch.setattr(cuda_mod.planning, "available_bytes", lambda: 1 << 40)


@pytest.mark.parametrize("route", ROUTES)
def test_out_of_memory_retry_keeps_finished_chunks(fake, rng, monkeypatch, route):
    # Every route allocates scratch for non-contiguous input (the kernel
    # route gathers it): a pool limit that holds the result but not a full
    # chunk's scratch makes each route halve its chunk.
    n = 4
    base = stack(rng, (64,), n)
    d = fake.asarray(base[::-1].copy())[::-1]  # a negative stride: gathered on every route
    a = np.asarray(d)
    sizes = _spy_chunks(monkeypatch)
    _plentiful_planner(monkeypatch)
    per_matrix = cuda_mod.planning.scratch_bytes_per_matrix(n, 8, route)
    result = a.nbytes + 4 * 64
    fake.get_default_memory_pool().set_limit(size=fake.state.used[0] + result + 20 * per_matrix
                                             + 8 * 512)
    x, info = invert(CudaEngine(None), normalize(d), route=route)
    check(x, info, a)
    assert sizes[0] == 64 and min(sizes) < 64 and fake.state.oom_count > 0, sizes
    assert sum(sizes[sizes.index(min(sizes)):]) <= 64  # finished chunks are not redone


def test_zero_copy_kernel_route_allocates_no_scratch(fake, rng, monkeypatch):
    # Why an out-of-memory test on the kernel route must force a gather:
    # C-contiguous input of the compute dtype is read in place, so a limit
    # that holds just the result is enough and nothing ever halves.
    a = stack(rng, (64,), 4)
    d = fake.asarray(a)
    sizes = _spy_chunks(monkeypatch)
    _plentiful_planner(monkeypatch)
    fake.get_default_memory_pool().set_limit(size=fake.state.used[0] + a.nbytes + 4 * 64 + 1024)
    check(*invert(CudaEngine(None), normalize(d), route="kernel"), a)
    assert sizes == [64] and fake.state.oom_count == 0


@pytest.mark.parametrize("route", ROUTES)
def test_out_of_memory_retry_in_the_pipeline(fake, rng, monkeypatch, route):
    n = 4
    a = stack(rng, (64,), n)
    sizes = _spy_chunks(monkeypatch)
    _plentiful_planner(monkeypatch)
    per_matrix = cuda_mod.planning.pipeline_bytes_per_matrix(n, 8, route)
    fake.get_default_memory_pool().set_limit(size=10 * per_matrix)
    x, info = invert(CudaEngine(None), normalize(a), route=route)
    check(x, info, a)
    assert sizes[0] > min(sizes) and fake.state.oom_count > 0, sizes


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("backend", ["cupy", "numpy"])
def test_planning_bound_end_to_end(fake, rng, monkeypatch, route, backend):
    # memGetInfo and the pool limit feed the planner through the real
    # _available_bytes: chunks are sized so that nothing runs out of memory.
    n = 5
    a = stack(rng, (200,), n)
    inp = fake.asarray(a)[::-1] if backend == "cupy" else a[::-1]  # strided: gathered
    sizes = _spy_chunks(monkeypatch)
    used = fake.state.used.get(0, 0)  # the input's
    result = a.nbytes + 4 * 200 if backend == "cupy" else 0
    room = 40 * cuda_mod.planning.scratch_bytes_per_matrix(n, 8, route) + 64 * 512
    if backend == "numpy":
        room = 3 * 40 * cuda_mod.planning.pipeline_bytes_per_matrix(n, 8, route) + 64 * 512
    fake.state.device_bytes = used + result + room
    check(*invert(CudaEngine(None), normalize(inp), route=route), a[::-1])
    assert fake.state.oom_count == 0  # the plan fitted: no retry was needed
    assert max(sizes) < 200 and len(sizes) > 1, sizes  # the bound did split the stack
    fake.state.device_bytes = 1 << 40
    fake.get_default_memory_pool().set_limit(size=used + result + room)  # the same through the limit
    sizes.clear()
    check(*invert(CudaEngine(None), normalize(inp), route=route), a[::-1])
    assert fake.state.oom_count == 0 and max(sizes) < 200


def test_memory_error_when_one_matrix_does_not_fit(fake, rng):
    a = stack(rng, (4,), 6)
    d = fake.asarray(a)
    attempts = []
    real = cuda_mod.general.invert_chunk

    def spy(view, out, *args, **kw):
        attempts.append(out.shape[0])
        real(view, out, *args, **kw)

    cuda_mod.general.invert_chunk, saved = spy, real
    try:
        _fake_cupy.state.fail_after = len(_fake_cupy.state.allocations) + 2  # result and info only
        with pytest.raises(MemoryError, match=r"inverting one 6x6 float64 matrix needs \d+ bytes"):
            invert(CudaEngine(None), normalize(d), route="cublas")
    finally:
        cuda_mod.general.invert_chunk = saved
    assert attempts == [4, 2, 1]  # halved down to one matrix, then gave up
    _fake_cupy.state.fail_after = None
    _fake_cupy.state.fail_above = 10
    with pytest.raises(MemoryError, match=f"the result needs {a.nbytes + 16} bytes"):
        invert(CudaEngine(None), normalize(d), route="cublas")


def test_planner_sees_little_free_memory(fake, rng):
    a = stack(rng, (4,), 6)
    _fake_cupy.state.device_bytes = 10
    with pytest.raises(MemoryError, match=r"needs \d+ bytes"):
        invert(CudaEngine(None), normalize(a), route="cublas")
    _fake_cupy.state.device_bytes = 1 << 30
    check(*invert(CudaEngine(None), normalize(a), route="cublas"), a)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_error_mid_pipeline_then_next_call_works(fake, rng, monkeypatch, exc):
    a = stack(rng, (40,), 3)
    monkeypatch.setattr(cuda_mod.planning, "PIPELINE_CHUNK_BYTES", 4 * 9 * 8)  # 10 chunks
    engine = CudaEngine(None)
    real = cuda_mod.pipeline.host_copy
    count = [0]

    def flaky(dst, src):
        count[0] += 1
        if count[0] == 5:
            raise exc("stop")
        real(dst, src)

    monkeypatch.setattr(cuda_mod.pipeline, "host_copy", flaky)
    with pytest.raises(exc):
        invert(engine, normalize(a), route="cublas")
    monkeypatch.setattr(cuda_mod.pipeline, "host_copy", real)
    assert len(engine._staging) == 1  # the idle pinned set went back to the cache
    staging = engine._staging[0]
    check(*invert(engine, normalize(a), route="cublas"), a)
    assert engine._staging[0] is staging  # reused, not reallocated
    engine.clear_cache()
    assert not engine._staging


def test_kernel_route_calls_invert_small(fake, rng, monkeypatch):
    seen = []

    def invert_small(x, out, info):
        seen.append((x.shape, x.flags.c_contiguous, x.dtype))
        res = gpuinv.inv_ex(np.asarray(x), device="cpu")
        out[...] = res.inverse
        info[...] = res.info

    monkeypatch.setattr(gpuinv.kernels, "invert_small", invert_small)
    a = stack(rng, (2, 3), 4)
    check(*invert(CudaEngine(None), normalize(fake.asarray(a)), route="kernel"), a)
    check(*invert(CudaEngine(None), normalize(a), route="kernel"), a)
    assert seen and all(s[1] and s[0][1:] == (4, 4) and s[2] == np.float64 for s in seen)


def test_empty_stacks(fake):
    for shape in [(0, 3, 3), (4, 0, 0), (2, 0, 5, 5)]:
        for inp in (np.zeros(shape), fake.zeros(shape)):
            x, info = invert(CudaEngine(None), normalize(inp))
            assert x.shape == shape and info.shape == shape[:-2]
            assert not np.asarray(info).any()


@pytest.mark.parametrize("read_only", [False, True])
def test_kernel_route_gathers_unless_input_is_read_only(fake, rng, monkeypatch, read_only):
    pointers = []

    def invert_small(x, out, info):
        pointers.append(x.data.ptr)
        res = gpuinv.inv_ex(np.asarray(x), device="cpu")
        out[...] = res.inverse
        info[...] = res.info

    monkeypatch.setattr(gpuinv.kernels, "invert_small", invert_small)
    monkeypatch.setattr(gpuinv.kernels, "INPUT_READ_ONLY", read_only)
    a = stack(rng, (6,), 3)
    d = fake.asarray(a)
    check(*invert(CudaEngine(None), normalize(d), route="kernel"), a)
    assert (pointers == [d.data.ptr]) is read_only
    pointers.clear()
    check(*invert(CudaEngine(None), normalize(d[::-1]), route="kernel"), a[::-1])
    assert pointers != [d.data.ptr]  # a strided view is always gathered


@pytest.mark.parametrize("route", ["cublas", "cusolver"])
def test_info_is_the_step_of_a_not_of_its_transpose(fake, route):
    # A = [[0, 0], [1, 1]]: LU of A meets the zero pivot at step 2, LU of A^T
    # at step 1. LAPACK, NumPy and the CPU engine say 2.
    a = np.array([[[0.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    _, info = invert(CudaEngine(None), normalize(fake.asarray(a)), route=route)
    np.testing.assert_array_equal(np.asarray(info), [2, 1])
    np.testing.assert_array_equal(gpuinv.inv_ex(a, device="cpu").info, [2, 1])


# --- issue 11, items 8 to 12 ----------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("backend", ["cupy", "numpy"])
def test_singular_inverse_is_nan_not_stale_memory(fake, route, backend):
    # The fake's fresh allocations hold a finite stale pattern, getri skips
    # a matrix whose factorization failed, and the kernel stand-in leaves
    # garbage for info > 0: only the engine's own mask makes these NaN.
    a = np.array([np.eye(3), np.zeros((3, 3)), [[1.0, 2, 3], [2, 4, 6], [0, 0, 1]], 2 * np.eye(3)])
    inp = fake.asarray(a) if backend == "cupy" else a
    x, info = invert(CudaEngine(None), normalize(inp), route=route)
    x, info = np.asarray(x), np.asarray(info)
    np.testing.assert_array_equal(info, gpuinv.inv_ex(a, device="cpu").info)
    assert (info[[1, 2]] > 0).all()
    assert np.isnan(x[[1, 2]]).all()
    np.testing.assert_array_equal(x[[0, 3]], [np.eye(3), 0.5 * np.eye(3)])
    res = gpuinv.inv_ex(inp)  # and through the public API, whatever route it picks
    assert np.isnan(np.asarray(res.inverse)[[1, 2]]).all()


@pytest.mark.parametrize("route", ["cublas", "cusolver"])
@pytest.mark.parametrize("report", ["first", "last"])
def test_info_is_the_first_zero_pivot_whatever_the_library_reports(fake, route, report):
    # Matrices with several exactly zero pivots: LAPACK (and the CPU engine)
    # name the first; a library that names the last must not change info.
    a = np.array([np.zeros((4, 4)),  # every step: first 1, last 4
                  np.diag([1.0, 0.0, 2.0, 0.0]),  # steps 2 and 4
                  [[0.0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]],  # steps 1 and 3
                  np.eye(4)])
    fake.state.pivot_report = report
    _, info = invert(CudaEngine(None), normalize(fake.asarray(a)), route=route)
    np.testing.assert_array_equal(np.asarray(info), gpuinv.inv_ex(a, device="cpu").info)
    np.testing.assert_array_equal(np.asarray(info), [1, 2, 1, 0])


def test_the_fake_does_report_the_last_zero_pivot(fake):
    # The knob above is real: the stand-in's getrf then names step 4.
    m = np.zeros((4, 4))
    fake.state.pivot_report = "last"
    assert _fake_cupy._getf2(m.copy())[1] == 4
    fake.state.pivot_report = "first"
    assert _fake_cupy._getf2(m.copy())[1] == 1


@pytest.mark.parametrize("n", [1, 3])
def test_zero_size_cusolver_workspace(fake, rng, n):
    # getrf_bufferSize may answer 0; an empty CuPy array's pointer is NULL,
    # which the stand-in's getrf rejects as the library may.
    fake.state.getrf_work_size = 0
    a = stack(rng, (5,), n)
    check(*invert(CudaEngine(None), normalize(fake.asarray(a)), route="cusolver"), a)
    assert fake.empty(0).data.ptr == 0  # as CuPy


def _misaligned(fake, a):
    """``a`` on the device, starting half an element into an allocation (for
    example a complex128 view of a float64 array at an 8-byte offset)."""
    itemsize = a.dtype.itemsize
    raw = fake.zeros(a.nbytes + itemsize, dtype=np.uint8)
    half = itemsize // 2
    raw[half : half + a.nbytes] = a.reshape(-1).view(np.uint8)
    view = raw[half : half + a.nbytes].view(a.dtype).reshape(a.shape)
    assert view.flags.c_contiguous and view.data.ptr % itemsize == half
    return view


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", [np.complex128, np.complex64, np.float64])
def test_misaligned_input_is_realigned_before_any_kernel(fake, rng, route, dtype):
    # C-contiguous and of the compute dtype, but not aligned to the element
    # size: our kernels, and CuPy's own copy, would fault on it (the fake's
    # copyto and kernel stand-in raise as the GPU would).
    dtype = np.dtype(dtype)
    a = stack(rng, (4,), 3, dtype)
    view = _misaligned(fake, a)
    pointers = []
    real = _fake_cupy.invert_small

    def spy(x, out, info, **kw):
        pointers.append(x.data.ptr)
        real(x, out, info, **kw)

    gpuinv.kernels.invert_small = spy  # restored by the fixture's monkeypatch
    check(*invert(CudaEngine(None), normalize(view), route=route), a)
    for v in (view[::-1], view.swapaxes(-1, -2)):  # misaligned and strided
        check(*invert(CudaEngine(None), normalize(v), route=route), np.asarray(v))
    assert all(p % dtype.itemsize == 0 for p in pointers)
    assert bool(pointers) == (route == "kernel")
    with pytest.raises(_fake_cupy.FakeCudaError, match="misaligned"):  # what the GPU would do
        real(view, fake.empty(a.shape, dtype), fake.empty(4, np.int32))
    with pytest.raises(_fake_cupy.FakeCudaError, match="misaligned"):
        fake.copyto(fake.empty(a.shape, dtype), view)


@pytest.mark.parametrize("route", ROUTES)
def test_misaligned_input_that_is_also_cast(fake, rng, route):
    # int16 at a 1-byte offset, cast to float64 on the way in.
    a = (3 * stack(rng, (5,), 4, failures=False)).astype(np.int16)
    check(*invert(CudaEngine(None), normalize(_misaligned(fake, a)), route=route), a)


def test_aligned_contiguous_input_is_still_read_in_place(fake, rng):
    a = stack(rng, (4,), 3, np.complex128, failures=False)
    d = fake.asarray(a)
    before = len(fake.state.allocations)
    check(*invert(CudaEngine(None), normalize(d), route="kernel"), a)
    assert fake.state.allocations[before:before + 2] == [a.nbytes, 4 * 4]  # result and info only
    assert len(fake.state.allocations) == before + 2


def test_staging_sets_are_never_freed_through_free_host(fake, rng, monkeypatch):
    # cudaFreeHost synchronizes the whole device: replacing the cached set
    # by a larger one, a second engine's set, a busy cache and clear_cache
    # must all give pinned memory back to CuPy's pool instead.
    engine = CudaEngine(None)
    monkeypatch.setattr(cuda_mod.planning, "PIPELINE_CHUNK_BYTES", 4 * 9 * 8)  # 4 matrices per chunk
    small, large = stack(rng, (3,), 3), stack(rng, (40,), 3)
    check(*invert(engine, normalize(small)), small)
    first = engine._staging[0]
    check(*invert(engine, normalize(large)), large)  # the smaller set is replaced
    assert engine._staging[0] is not first
    del first
    real = cuda_mod.general.invert_chunk
    nested = []

    def busy(*args, **kw):  # while this call's set is out, other calls come and go
        if not nested:
            nested.append(True)
            check(*invert(engine, normalize(small)), small)  # finds the cache empty: own set
            check(*invert(CudaEngine(None), normalize(large)), large)
            engine.clear_cache()
        real(*args, **kw)

    monkeypatch.setattr(cuda_mod.general, "invert_chunk", busy)
    check(*invert(engine, normalize(large)), large)
    engine.clear_cache()
    import gc

    gc.collect()
    assert nested and fake.state.host_frees == []
    assert fake.get_default_pinned_memory_pool().n_free_blocks() > 0  # back in the pool
    # Reused, not allocated again: the pool's blocks serve the next set.
    blocks = fake.get_default_pinned_memory_pool().n_free_blocks()
    check(*invert(engine, normalize(small)), small)
    assert fake.get_default_pinned_memory_pool().n_free_blocks() < blocks


def test_pinned_memory_stays_bounded_as_calls_grow(fake, rng, monkeypatch):
    # CuPy's pinned pool reuses a block only for a request of its size and
    # never frees it: staging sizes come in power-of-two classes, so calls
    # of ever larger stacks leave a bounded amount of pinned memory behind.
    monkeypatch.setattr(cuda_mod.planning, "PIPELINE_CHUNK_BYTES", 1 << 20)
    engine = CudaEngine(None)
    n = 8
    largest = 0
    for count in range(200, 4200, 200):  # 20 calls, each larger than the last
        a = stack(rng, (count,), n, failures=False)
        check(*invert(engine, normalize(a)), a)
        largest = max(largest, engine._staging[0].nbytes)
    pool = fake.get_default_pinned_memory_pool()
    assert fake.state.host_frees == []
    assert pool.allocated <= 2 * largest, (pool.allocated, largest)
    assert cuda_mod.pipeline.staging_size(1) == cuda_mod.pipeline._MIN_STAGING_BYTES
    assert cuda_mod.pipeline.staging_size(3 << 20) == 4 << 20
    assert cuda_mod.pipeline.staging_size(4 << 20) == 4 << 20


def test_the_fake_records_direct_pinned_frees(fake):
    # What the test above guards against is visible to the fake.
    import gc

    mem = fake.cuda.PinnedMemory(64)
    ptr = mem.ptr
    del mem
    gc.collect()
    assert fake.state.host_frees == [ptr]


# --- the fake's own checks: copy direction, streams, devices ---------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_pipeline_copies_and_compute_share_each_slot_stream(fake, rng, monkeypatch, route):
    monkeypatch.setattr(cuda_mod.planning, "PIPELINE_CHUNK_BYTES", 2 * 9 * 8)  # 2 matrices per chunk
    a = stack(rng, (11,), 3)
    check(*invert(CudaEngine(None), normalize(a), route=route), a)
    log = fake.state.log
    compute = {"kernel": "invert_small", "cublas": "getrfBatched", "cusolver": "getrf"}[route]
    uploads = [e for e in log if e[0] == "memcpyAsync" and e[3] == fake.memcpyHostToDevice]
    downloads = [e for e in log if e[0] == "memcpyAsync" and e[3] == fake.memcpyDeviceToHost]
    assert len(uploads) == 6 and len(downloads) == 12  # 6 chunks: data up; data and info down
    streams = [e[1] for e in uploads]
    assert 0 not in streams and len(set(streams)) == cuda_mod.planning.PIPELINE_SLOTS
    # Per chunk, in order on one stream: upload, compute, two downloads, event.
    per_chunk = []
    for entry in log:
        if entry[0] == "memcpyAsync" and entry[3] == fake.memcpyHostToDevice:
            per_chunk.append([entry])
        elif per_chunk and entry[0] in ("memcpyAsync", compute, "record"):
            per_chunk[-1].append(entry)
    for entries in per_chunk:
        names = [e[0] if e[0] != "memcpyAsync" else ("up" if e[3] == 1 else "down")
                 for e in entries]
        assert names[0] == "up" and names[-3:] == ["down", "down", "record"], names
        assert compute in names
        assert len({e[1] for e in entries}) == 1  # all on the slot's stream


@pytest.mark.parametrize("route", ROUTES)
def test_device_input_runs_on_the_current_stream(fake, rng, route):
    a = stack(rng, (9,), 4)
    stream = fake.cuda.Stream(non_blocking=True)
    with stream:
        check(*invert(CudaEngine(None), normalize(fake.asarray(a)), route=route), a)
    enqueued = [e for e in fake.state.log if e[0] != "record"]
    assert enqueued and {e[1] for e in enqueued} == {stream.ptr}
    assert not any(e[0] == "memcpyAsync" for e in enqueued)  # CuPy input never leaves the device


def test_the_fake_rejects_a_wrong_copy_direction(fake):
    dev = fake.empty(16, np.uint8)
    host = fake.cuda.alloc_pinned_memory(16)
    stream = fake.cuda.Stream()
    rt = fake.cuda.runtime
    rt.memcpyAsync(dev.data.ptr, host.ptr, 16, rt.memcpyHostToDevice, stream.ptr)
    with pytest.raises(_fake_cupy.FakeCudaError, match="dst is pinned memory, not device"):
        rt.memcpyAsync(host.ptr, dev.data.ptr, 16, rt.memcpyHostToDevice, stream.ptr)
    with pytest.raises(_fake_cupy.FakeCudaError, match="not pinned"):
        rt.memcpyAsync(np.zeros(16, np.uint8).ctypes.data, dev.data.ptr, 16,
                       rt.memcpyDeviceToHost, stream.ptr)
    with fake.cuda.Device(1):
        with pytest.raises(_fake_cupy.FakeCudaError, match="device 0"):
            rt.memcpyAsync(dev.data.ptr, host.ptr, 16, rt.memcpyHostToDevice, 0)
        with pytest.raises(_fake_cupy.FakeCudaError, match="stream of device 0"):
            rt.memcpyAsync(fake.empty(16, np.uint8).data.ptr, host.ptr, 16,
                           rt.memcpyHostToDevice, stream.ptr)


@pytest.mark.parametrize("route", ROUTES)
def test_device_input_runs_on_its_own_device(fake, rng, route):
    a = stack(rng, (6,), 3)
    with fake.cuda.Device(1):
        d = fake.asarray(a)
    assert d.device.id == 1 and fake.cuda.Device().id == 0
    used0 = fake.state.used.get(0, 0)
    x, info = invert(CudaEngine(1), normalize(d), route=route)
    check(x, info, a)
    assert x.device.id == 1 and info.device.id == 1
    assert {e[2] for e in fake.state.log} == {1}  # every enqueue ran on device 1
    assert fake.state.used.get(0, 0) == used0  # nothing was allocated on device 0
    res = gpuinv.inv_ex(d)  # the public API picks the array's device
    assert res.inverse.device.id == 1
    check(res.inverse, res.info, a)


@pytest.mark.parametrize("route", ROUTES)
def test_host_input_runs_on_the_engines_device(fake, rng, route):
    a = stack(rng, (6,), 3)
    check(*invert(CudaEngine(1), normalize(a), route=route), a)
    log = fake.state.log
    assert log and {e[2] for e in log} == {1}
    check(*gpuinv.inv_ex(a, device="cuda:1"), a)
    assert {e[2] for e in fake.state.log} == {1}


def test_the_fake_rejects_memory_of_another_device(fake, rng):
    a = stack(rng, (2,), 3, failures=False)
    with fake.cuda.Device(1):
        x = fake.asarray(a.transpose(0, 2, 1))
        ptrs = fake.arange(x.data.ptr, x.data.ptr + 2 * 72, 72, dtype=np.uint64)
        piv = fake.empty((2, 3), np.int32)
        info = fake.empty(2, np.int32)
    cublas = fake.cuda.cublas
    handle = fake.cuda.device.get_cublas_handle()  # device 0's
    with pytest.raises(_fake_cupy.FakeCudaError, match="device 1 used on device 0"):
        cublas.dgetrfBatched(handle, 3, ptrs.data.ptr, 3, piv.data.ptr, info.data.ptr, 2)


def test_results_of_operations_are_device_memory_of_the_current_device(fake):
    # CuPy allocates what arithmetic, astype and copy return from the current
    # device's pool; library calls on them must pass the device-memory checks.
    used0 = fake.state.used.get(0, 0)
    with fake.cuda.Device(1):
        a = fake.zeros((2, 3, 3))
        used = fake.state.used.get(1, 0)
        results = [a + 1, 2 * a, a.astype(np.float32), a.copy(), a + fake.eye(3)]
        for r in results:
            assert fake._where_memory(r.data.ptr, r.nbytes) == ("device", 1)
            assert r.device.id == 1
        grown = fake.state.used[1]
        assert grown >= used + sum(r.nbytes for r in results)
        views = [results[0][1], results[1].reshape(-1), results[2].transpose(0, 2, 1)]
        assert fake.state.used[1] == grown  # views are not new memory
        assert fake._where_memory(views[0].data.ptr, views[0].nbytes) == ("device", 1)
    assert fake.state.used.get(0, 0) == used0
    del results, views, r
    gc.collect()
    assert fake.state.used[1] == used
