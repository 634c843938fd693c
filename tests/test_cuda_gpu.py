"""The CUDA engine on a real GPU, compared with NumPy.

Every test carries the ``gpu`` marker and the module skips cleanly where
CuPy is missing or no device is usable (CuPy imports without a driver, so
``cupy.cuda.is_available()`` decides).
"""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
from _helpers import invert

import gpuinv
from gpuinv import SingularMatrixError
from gpuinv._normalize import normalize
from gpuinv.engines import cuda as cuda_mod
from gpuinv.engines import cuda_engine

cupy = pytest.importorskip("cupy")
if not cupy.cuda.is_available():
    pytest.skip("no usable CUDA device", allow_module_level=True)

pytestmark = pytest.mark.gpu

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
SIZES = list(range(1, 65)) + [128, 256, 512]
TOL = {np.float32: 2e-3, np.complex64: 2e-3, np.float64: 1e-10, np.complex128: 1e-10}


def random_stack(rng, batch, n, dtype):
    """Well-conditioned random matrices: Gaussian plus n on the diagonal."""
    a = rng.standard_normal(batch + (n, n))
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.standard_normal(batch + (n, n))
    a = a + n * np.eye(n)
    return a.astype(dtype)


def reference(a):
    wide = np.complex128 if np.iscomplexobj(a) else np.float64
    return np.linalg.inv(np.asarray(a, dtype=wide))


def assert_inverse(x, a, dtype):
    tol = TOL[np.dtype(dtype).type]
    np.testing.assert_allclose(np.asarray(x), reference(a), rtol=tol, atol=tol)


def batch_for(n):
    return (max(2, min(300, 40000 // (n * n))),)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def _no_pool_limit():
    yield
    cupy.get_default_memory_pool().set_limit(size=0)


# --- correctness against NumPy ------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_cupy_input_matches_numpy(rng, n, dtype):
    a = random_stack(rng, batch_for(n), n, dtype)
    d = cupy.asarray(a)
    x, info = gpuinv.inv_ex(d)
    assert isinstance(x, cupy.ndarray) and isinstance(info, cupy.ndarray)
    assert x.dtype == dtype and info.dtype == np.int32 and x.shape == a.shape
    assert_inverse(x.get(), a, dtype)
    assert not info.get().any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_numpy_input_matches_numpy(rng, n, dtype):
    a = random_stack(rng, batch_for(n), n, dtype)
    x, info = gpuinv.inv_ex(a, device="cuda")
    assert isinstance(x, np.ndarray) and isinstance(info, np.ndarray)
    assert x.dtype == dtype
    assert_inverse(x, a, dtype)
    assert not info.any()


@pytest.mark.parametrize("route", ["cublas", "cusolver"])
@pytest.mark.parametrize("n", [1, 2, 3, 17, 33, 64, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_both_routes_at_any_n(rng, route, n, dtype):
    # Whatever the threshold, each route is right on its own.
    a = random_stack(rng, (5,), n, dtype)
    engine = cuda_engine(None)
    for kind in ("cupy", "numpy"):
        op = normalize(cupy.asarray(a) if kind == "cupy" else a)
        x, info = invert(engine, op, route=route)
        assert_inverse(cupy.asnumpy(x), a, dtype)
        assert not cupy.asnumpy(info).any()


@pytest.mark.parametrize("src", ["bool", "int8", "uint64", "float16"])
def test_converted_dtypes(rng, src):
    a = (rng.integers(0, 4, size=(50, 4, 4)) + 9 * np.eye(4)).astype(src)
    if src == "bool":
        a = np.broadcast_to(np.eye(4, dtype=bool), (50, 4, 4))
    want = np.float32 if src == "float16" else np.float64
    for inp in (cupy.asarray(a), a):
        x = gpuinv.inv(inp, device="cuda")
        assert x.dtype == want
        np.testing.assert_allclose(cupy.asnumpy(x), reference(a.astype(np.float64)), rtol=1e-3, atol=1e-3)


# --- odd layouts, chunk seams, big batches -------------------------------------


def _odd_views(xp, a):
    return {
        "negative": a[::-1, :, ::-1],
        "fortran": xp.asfortranarray(a),
        "transposed_batch": a.reshape(6, 5, *a.shape[1:]).transpose(1, 0, 2, 3)[:, ::2],
        "gapped": a[::3, ::-1],
        "swapped": a.swapaxes(-1, -2),
        "broadcast": xp.broadcast_to(a[3], (4, 7) + a.shape[1:]),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
@pytest.mark.parametrize("n", [2, 5, 16])
@pytest.mark.parametrize("backend", ["cupy", "numpy"])
def test_odd_strides(rng, backend, n, dtype):
    a = random_stack(rng, (30,), n, dtype)
    xp = cupy if backend == "cupy" else np
    for name, view in _odd_views(xp, xp.asarray(a)).items():
        x = gpuinv.inv(view, device="cuda")
        assert type(x) is type(view), name
        host = cupy.asnumpy(view)
        assert_inverse(cupy.asnumpy(x), host, dtype)


@pytest.mark.parametrize("backend", ["cupy", "numpy"])
@pytest.mark.parametrize("n", [3, 40, 256])
def test_tiny_chunks_have_clean_seams(rng, monkeypatch, backend, n):
    a = random_stack(rng, (4, 7), n, np.float64)
    a[1, 3, 0, 0] = np.nan
    a[2, 5, :, 1] = 0  # singular
    want = gpuinv.inv_ex(a, device="cpu")
    matrix = n * n * 8
    for per_chunk in (1, 2, 3, 5):
        monkeypatch.setattr(gpuinv.config, "cuda_chunk_bytes", per_chunk * matrix)
        monkeypatch.setattr(cuda_mod.planning, "PIPELINE_CHUNK_BYTES", per_chunk * matrix)
        inp = cupy.asarray(a) if backend == "cupy" else a
        x, info = gpuinv.inv_ex(inp, device="cuda")
        x, info = cupy.asnumpy(x), cupy.asnumpy(info)
        np.testing.assert_array_equal(info, want.info)
        ok = info == 0
        np.testing.assert_allclose(x[ok], want.inverse[ok], rtol=1e-10, atol=1e-12)
        assert np.isnan(x[1, 3]).all()


@pytest.mark.parametrize("backend", ["cupy", "numpy"])
def test_batch_past_65535(rng, backend):
    a = random_stack(rng, (70001,), 2, np.float64)
    a[65535, 0] = 0  # singular, first matrix of the second cuBLAS call
    a[65534, 1, 1] = np.inf  # last of the first call
    engine = cuda_engine(None)
    inp = cupy.asarray(a) if backend == "cupy" else a
    x, info = invert(engine, normalize(inp), route="cublas")
    x, info = cupy.asnumpy(x), cupy.asnumpy(info)
    assert info[65535] > 0 and info[65534] == -1
    ok = np.ones(len(a), bool)
    ok[[65534, 65535]] = False
    assert not info[ok].any()
    np.testing.assert_allclose(x[ok], reference(a[ok]), rtol=1e-10, atol=1e-12)
    # and through the public API, whatever route it picks
    y = gpuinv.inv(inp, on_singular="nan", device="cuda")
    np.testing.assert_allclose(cupy.asnumpy(y)[ok], reference(a[ok]), rtol=1e-10, atol=1e-12)


# --- failures: singular and non-finite at random positions ----------------------


def _with_failures(rng, batch, n, dtype):
    a = random_stack(rng, batch, n, dtype)
    flat = a.reshape(-1, n, n)
    picks = rng.choice(len(flat), size=min(len(flat), 12), replace=False)
    # Structural zeros stay exactly zero through elimination, so every
    # factorization meets the same exactly zero pivot: a zero column j at
    # step j + 1, a zero row at the last step.
    kinds = ["zero_col", "zero_row", "zero", "nan", "inf", "neg_inf"]
    for k, i in enumerate(picks):
        kind = kinds[k % len(kinds)]
        if kind == "zero_col":
            flat[i, :, rng.integers(n)] = 0
        elif kind == "zero_row":
            flat[i, rng.integers(n)] = 0
        elif kind == "zero":
            flat[i] = 0
        elif kind == "nan":
            flat[i, rng.integers(n), rng.integers(n)] = np.nan
        elif kind == "inf":
            flat[i, rng.integers(n), rng.integers(n)] = np.inf
        else:
            flat[i, -1, 0] = -np.inf
    return a


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 32, 64, 256])
@pytest.mark.parametrize("backend", ["cupy", "numpy"])
def test_failures_are_reported_like_the_cpu_engine(rng, backend, n, dtype):
    a = _with_failures(rng, (6, 9), n, dtype)
    want = gpuinv.inv_ex(a, device="cpu")
    inp = cupy.asarray(a) if backend == "cupy" else a
    x, info = gpuinv.inv_ex(inp, device="cuda")
    x, info = cupy.asnumpy(x), cupy.asnumpy(info)
    np.testing.assert_array_equal(info, want.info)  # same codes, same steps
    assert np.isnan(x[info == -1]).all()
    ok = info == 0
    assert_inverse(x[ok], a[ok], dtype)
    with pytest.raises(SingularMatrixError) as err:
        gpuinv.inv(inp, device="cuda")
    assert err.value.indices == [tuple(int(j) for j in i) for i in np.argwhere(want.info != 0)]
    y = gpuinv.inv(inp, on_singular="nan", device="cuda")
    assert np.isnan(cupy.asnumpy(y)[~ok]).all()


def test_input_is_never_modified(rng):
    a = _with_failures(rng, (40,), 6, np.float64)
    for inp in (cupy.asarray(a), a.copy(), cupy.asarray(a.astype(np.float32))):
        before = cupy.asnumpy(inp).copy()
        gpuinv.inv_ex(inp, device="cuda")
        gpuinv.inv(inp, on_singular="nan", device="cuda")
        np.testing.assert_array_equal(cupy.asnumpy(inp), before)


# --- streams and synchronization --------------------------------------------------

_SPIN = r"""
extern "C" __global__ void gpuinv_test_spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


def _busy(stream, cycles=2_000_000_000):
    """Occupy ``stream`` for about a second, without the host waiting."""
    kernel = cupy.RawKernel(_SPIN, "gpuinv_test_spin")
    with stream:
        kernel((1,), (1,), (np.int64(cycles),))


def test_non_default_stream(rng):
    a = random_stack(rng, (500,), 7, np.float64)
    d = cupy.asarray(a)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        x, info = gpuinv.inv_ex(d)
        y = x @ d  # same stream: ordered after the inversion
    stream.synchronize()
    np.testing.assert_allclose(y.get(), np.broadcast_to(np.eye(7), y.shape), atol=1e-10)
    assert not info.get().any()


def test_inv_ex_never_waits_for_the_device(rng):
    a = cupy.asarray(random_stack(rng, (1000,), 5, np.float64))
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:  # warm-up: compile kernels, create handles, fill the pool
        gpuinv.inv_ex(a)
        gpuinv.inv(a, on_singular="nan")
    _busy(stream, cycles=1000)
    stream.synchronize()
    _busy(stream)
    with stream:
        x, info = gpuinv.inv_ex(a)
        # the policy "nan" also stays on the device
        z = gpuinv.inv(a, on_singular="nan")
    # Had gpuinv waited for the stream, the spinning kernel before it would
    # have finished: a state check, not a clock.
    still_running = not stream.done
    stream.synchronize()
    assert still_running, "inv_ex synchronized with the device"
    assert isinstance(x, cupy.ndarray) and isinstance(info, cupy.ndarray)
    assert_inverse(x.get(), a.get(), np.float64)
    assert_inverse(z.get(), a.get(), np.float64)


def test_threads_with_their_own_streams(rng):
    stacks = [random_stack(np.random.default_rng(i), (200,), 1 + i % 9, np.float64) for i in range(8)]
    results: list = [None] * 8
    errors: list = []

    def work(i):
        try:
            stream = cupy.cuda.Stream(non_blocking=True) if i % 2 else cupy.cuda.Stream.null
            with stream:
                d = cupy.asarray(stacks[i])
                for _ in range(5):
                    x = gpuinv.inv(d)
                    h = gpuinv.inv(stacks[i], device="cuda")
                results[i] = (x.get(), h)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for a, (x, h) in zip(stacks, results):
        assert_inverse(x, a, np.float64)
        assert_inverse(h, a, np.float64)


# --- memory: out-of-memory retry, MemoryError, no leaks ---------------------------


def _spy_chunk_sizes(monkeypatch):
    sizes = []
    real = cuda_mod.general.invert_chunk

    def spy(view, out, info, route, owned=False):
        sizes.append(out.shape[0])
        real(view, out, info, route, owned)

    monkeypatch.setattr(cuda_mod.general, "invert_chunk", spy)
    # The planner believes memory is plentiful; the pool limit says otherwise.
    monkeypatch.setattr(cuda_mod.planning, "available_bytes", lambda: 1 << 40)
    return sizes


@pytest.mark.parametrize("route", ["kernel", "cublas", "cusolver"])
def test_out_of_memory_retries_with_smaller_chunks(rng, monkeypatch, route):
    # Every route, the kernel route included: the input is a strided view,
    # so each route must allocate a gathered copy per chunk (C-contiguous
    # input of the compute dtype would be read in place on the kernel route,
    # and nothing would run out of memory; see the next test).
    pool = cupy.get_default_memory_pool()
    d = cupy.asarray(random_stack(rng, (4096,), 16, np.float64))  # 8 MiB
    view = d[::-1]
    want = reference(view.get())
    pool.free_all_blocks()
    sizes = _spy_chunk_sizes(monkeypatch)
    result_bytes = d.nbytes + 4 * 4096
    pool.set_limit(size=pool.used_bytes() + result_bytes + (6 << 20))
    x, info = invert(cuda_engine(None), normalize(view), route=route)
    pool.set_limit(size=0)
    assert sizes[0] == 4096 and min(sizes) < 4096, sizes
    assert not info.get().any()
    np.testing.assert_allclose(x.get(), want, rtol=1e-10, atol=1e-12)


def test_zero_copy_kernel_route_needs_no_scratch(rng, monkeypatch):
    # Why the test above passes a strided view: contiguous float64 input is
    # read in place on the kernel route, so the same limit holds one chunk.
    pool = cupy.get_default_memory_pool()
    d = cupy.asarray(random_stack(rng, (4096,), 16, np.float64))
    pool.free_all_blocks()
    sizes = _spy_chunk_sizes(monkeypatch)
    pool.set_limit(size=pool.used_bytes() + d.nbytes + 4 * 4096 + (6 << 20))
    x, info = invert(cuda_engine(None), normalize(d), route="kernel")
    pool.set_limit(size=0)
    assert sizes == [4096]
    assert_inverse(x.get(), d.get(), np.float64)


@pytest.mark.parametrize("backend", ["cupy", "numpy"])
@pytest.mark.parametrize("believe_free", [False, True])
def test_memory_error_names_the_bytes(rng, monkeypatch, backend, believe_free):
    pool = cupy.get_default_memory_pool()
    a = random_stack(rng, (3,), 512, np.complex128)  # 4 MiB per matrix
    inp = cupy.asarray(a) if backend == "cupy" else a
    pool.free_all_blocks()
    baseline = pool.used_bytes()
    if believe_free:  # the error comes from the pool at a one-matrix chunk
        monkeypatch.setattr(cuda_mod.planning, "available_bytes", lambda: 1 << 40)
    result = a.nbytes + 12 if backend == "cupy" else 0
    pool.set_limit(size=baseline + result + (1 << 20))
    with pytest.raises(MemoryError, match=r"needs \d+ bytes"):
        gpuinv.inv_ex(inp, device="cuda")
    pool.set_limit(size=0)
    gc.collect()
    assert pool.used_bytes() == baseline  # nothing left allocated
    x = gpuinv.inv(inp, device="cuda")  # and the next call works
    assert_inverse(cupy.asnumpy(x), a, np.complex128)


def test_result_that_cannot_fit_raises_memory_error(rng):
    pool = cupy.get_default_memory_pool()
    a = cupy.asarray(random_stack(rng, (64,), 64, np.float64))  # 2 MiB
    pool.set_limit(size=pool.used_bytes() + (1 << 20))
    with pytest.raises(MemoryError, match=f"the result needs {a.nbytes + 4 * 64} bytes"):
        gpuinv.inv_ex(a)


def test_no_leaks_across_calls(rng):
    pool = cupy.get_default_memory_pool()
    a = random_stack(rng, (3000,), 8, np.float64)
    d = cupy.asarray(a)
    gpuinv.inv(d)
    gpuinv.inv(a, device="cuda")
    cupy.cuda.Device().synchronize()
    used = pool.used_bytes()
    engine = cuda_engine(None)
    for _ in range(20):
        x, info = gpuinv.inv_ex(d)
        y = gpuinv.inv(a, device="cuda")
        del x, info, y
    cupy.cuda.Device().synchronize()
    assert pool.used_bytes() == used
    assert len(engine._staging) <= 1  # one cached pinned set per device


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_error_between_chunks_leaks_nothing(rng, monkeypatch, exc):
    pool = cupy.get_default_memory_pool()
    a = random_stack(rng, (4000,), 8, np.float64)
    monkeypatch.setattr(cuda_mod.planning, "PIPELINE_CHUNK_BYTES", 200 * 8 * 64)  # 20 chunks
    gpuinv.inv(a, device="cuda")
    cupy.cuda.Device().synchronize()
    used = pool.used_bytes()
    real = cuda_mod.pipeline.host_copy
    calls = [0]

    def flaky(dst, src):
        calls[0] += 1
        if calls[0] == 7:
            raise exc("interrupted mid-batch")
        real(dst, src)

    monkeypatch.setattr(cuda_mod.pipeline, "host_copy", flaky)
    with pytest.raises(exc, match="mid-batch"):
        gpuinv.inv(a, device="cuda")
    monkeypatch.setattr(cuda_mod.pipeline, "host_copy", real)
    gc.collect()
    assert pool.used_bytes() == used
    for stream in cuda_engine(None)._staging[cupy.cuda.Device().id].streams:
        assert stream.done  # nothing still running into the pinned buffers
    assert_inverse(gpuinv.inv(a, device="cuda"), a, np.float64)


# --- multi-device -------------------------------------------------------------------


def test_result_lives_on_the_input_device(rng):
    count = cupy.cuda.runtime.getDeviceCount()
    a = random_stack(rng, (10,), 3, np.float64)
    for dev in range(count):
        with cupy.cuda.Device(dev):
            d = cupy.asarray(a)
        x, info = gpuinv.inv_ex(d)
        assert x.device.id == dev and info.device.id == dev
        assert_inverse(x.get(), a, np.float64)
    if count == 1:
        with pytest.raises(ValueError, match="lives on CUDA device 0"):
            gpuinv.inv(cupy.asarray(a), device="cuda:1")


# --- issue 11: failed matrices, misaligned input, pinned staging ----------------------------


def _dirty_pool(nbytes):
    """Leave ``nbytes`` of finite garbage in CuPy's pool, for the next allocations."""
    junk = cupy.full(nbytes // 8, 1.25e300, dtype=np.float64)
    cupy.cuda.Device().synchronize()
    del junk


@pytest.mark.parametrize("route", ["kernel", "cublas", "cusolver"])
@pytest.mark.parametrize("backend", ["cupy", "numpy"])
def test_failed_matrices_are_nan_on_every_route(rng, route, backend):
    # getri may skip a matrix whose factorization failed, and our kernels
    # leave it unspecified: the engine must write NaN, never pool leftovers.
    n = 6
    a = random_stack(rng, (64,), n, np.float64)
    a[5] = 0  # every pivot zero: first 1, last n
    a[9, :, 2] = 0  # zero column: step 3
    a[10, 1] = 0  # zero row
    a[11] = np.diag([1.0, 0, 1, 0, 1, 0])  # zero pivots at steps 2, 4 and 6
    a[12, 0, 0] = np.nan
    want = gpuinv.inv_ex(a, device="cpu")
    _dirty_pool(64 << 20)
    inp = cupy.asarray(a) if backend == "cupy" else a
    x, info = invert(cuda_engine(None), normalize(inp), route=route)
    x, info = cupy.asnumpy(x), cupy.asnumpy(info)
    np.testing.assert_array_equal(info, want.info)  # the first zero pivot, whatever the library says
    assert (info[[5, 9, 10, 11]] > 0).all() and info[12] == -1
    assert np.isnan(x[info != 0]).all()
    ok = info == 0
    assert_inverse(x[ok], a[ok], np.float64)


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
@pytest.mark.parametrize("n", [2, 4, 16])
def test_misaligned_complex_view(rng, dtype, n):
    # A complex view at half an element's offset (complex128 at 8 bytes):
    # C-contiguous and of the compute dtype, but not aligned for the
    # kernels' loads; it must be gathered, not read in place.
    real_dtype = np.float64 if dtype == np.complex128 else np.float32
    a = random_stack(rng, (50,), n, dtype)
    flat = cupy.zeros(2 * a.size + 2, dtype=real_dtype)
    # Written through the aligned real view: CuPy's own complex stores would
    # fault on the misaligned one.
    flat[1 : 1 + 2 * a.size] = cupy.asarray(a.view(real_dtype).reshape(-1))
    view = flat[1 : 1 + 2 * a.size].view(dtype).reshape(a.shape)
    assert view.flags.c_contiguous and view.data.ptr % np.dtype(dtype).itemsize != 0
    x, info = gpuinv.inv_ex(view)
    cupy.cuda.Device().synchronize()  # a misaligned access would fault here
    assert not info.get().any()
    assert_inverse(x.get(), a, dtype)
    for route in ("kernel", "cublas", "cusolver"):
        y, info = invert(cuda_engine(None), normalize(view[::-1]), route=route)
        assert not info.get().any()
        assert_inverse(y.get(), a[::-1], dtype)


def test_dropped_staging_goes_back_to_the_pinned_pool(rng, monkeypatch):
    # cudaFreeHost would synchronize the device: the engine's pinned buffers
    # come from CuPy's pinned pool, so dropping them keeps the blocks there.
    pinned = cupy.get_default_pinned_memory_pool()
    engine = cuda_mod.CudaEngine(None)
    monkeypatch.setattr(cuda_mod.planning, "PIPELINE_CHUNK_BYTES", 8 * 8 * 64)
    small, large = random_stack(rng, (4,), 8, np.float64), random_stack(rng, (400,), 8, np.float64)
    invert(engine, normalize(small))
    before = pinned.n_free_blocks()
    invert(engine, normalize(large))  # replaces the smaller set
    engine.clear_cache()
    gc.collect()
    assert pinned.n_free_blocks() > before
    x, info = invert(engine, normalize(large))
    assert_inverse(x, large, np.float64)
