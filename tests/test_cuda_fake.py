"""The CUDA engine's own code, run on the CPU against a stand-in for CuPy.

See tests/_fake_cupy.py: device arrays are NumPy arrays, device pointers
are host addresses, and cuBLAS/cuSOLVER are a LAPACK-style getf2 that reads
and writes through those addresses. What this checks: the engine's pointer
arithmetic, the column-major transposes, info folding (0 / k / -1) with the
same steps as the CPU engine, non-finite isolation, chunk seams, cuBLAS batch
splitting, the host pipeline's buffers, the out-of-memory retry and errors.
The real CuPy calls are checked by tests/test_cuda_gpu.py on a GPU.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import gpuinv
import gpuinv.kernels
from gpuinv._normalize import normalize
from gpuinv.engines import cuda as cuda_mod
from gpuinv.engines.cuda import CudaEngine


def _load_fake():
    # By path, so the tests folder needs no __init__.py.
    name = "gpuinv_tests_fake_cupy"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_fake_cupy.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_fake_cupy = _load_fake()


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


@pytest.fixture
def fake(monkeypatch):
    # The stand-in has cuBLAS and cuSOLVER but no NVRTC: small n, which
    # dispatch sends to our kernels, takes the cuBLAS route here instead
    # (the kernels' own math is tested on the host in test_kernels_host.py).
    from gpuinv import _dispatch
    from gpuinv.engines import cuda as cuda_module

    def without_kernels(n, dtype):
        return "cusolver" if n >= _dispatch.CUDA_CUSOLVER_MIN_N else "cublas"

    monkeypatch.setattr(cuda_module, "cuda_route", without_kernels)
    with _fake_cupy.installed(monkeypatch) as module:
        yield module


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
    assert np.isnan(x[info == -1]).all()
    ok = info == 0
    np.testing.assert_allclose(x[ok], want.inverse[ok], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("route", ["cublas", "cusolver"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_device_input_matches_cpu_engine(fake, rng, route, dtype, n):
    a = stack(rng, (3, 4), n, dtype)
    d = fake.asarray(a)
    x, info = CudaEngine(None).invert(normalize(d), route=route)
    assert type(x).__module__ == "cupy" and x.dtype == dtype and info.dtype == np.int32
    assert x.shape == a.shape and info.shape == (3, 4)
    check(x, info, a)
    np.testing.assert_array_equal(np.asarray(d), a, strict=False)  # input untouched


@pytest.mark.parametrize("route", ["cublas", "cusolver"])
def test_host_input_pipeline_matches_cpu_engine(fake, rng, monkeypatch, route):
    a = stack(rng, (5, 9), 4)
    for per_chunk in (1, 2, 7, 100):
        monkeypatch.setattr(cuda_mod, "PIPELINE_CHUNK_BYTES", per_chunk * 16 * 8)
        x, info = CudaEngine(None).invert(normalize(a), route=route)
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
            x, info = CudaEngine(None).invert(normalize(inp), route="cublas")
            check(x, info, np.asarray(v))


def test_strided_device_views(fake, rng):
    d = fake.asarray(stack(rng, (8,), 3, failures=False))
    for v in (d[::-3], d.swapaxes(-1, -2), d[:, ::-1], d.reshape(2, 4, 3, 3).transpose(1, 0, 2, 3)):
        x, info = CudaEngine(None).invert(normalize(v), route="cublas")
        check(x, info, np.asarray(v))


def test_cublas_calls_stay_below_the_batch_limit(fake, rng, monkeypatch):
    monkeypatch.setattr(cuda_mod, "CUBLAS_MAX_BATCH", 4)
    a = stack(rng, (11,), 3)
    x, info = CudaEngine(None).invert(normalize(fake.asarray(a)), route="cublas")
    check(x, info, a)
    assert [b for name, b in _fake_cupy.calls] == [4, 4, 3]


def test_chunk_seams_with_tiny_chunks(fake, rng, monkeypatch):
    a = stack(rng, (3, 7), 5)
    for per_chunk in (1, 2, 3, 4, 6):
        monkeypatch.setattr(gpuinv.config, "cuda_chunk_bytes", per_chunk * 25 * 8)
        x, info = CudaEngine(None).invert(normalize(fake.asarray(a)), route="cublas")
        check(x, info, a)


def test_out_of_memory_retry_keeps_finished_chunks(fake, rng):
    a = stack(rng, (64,), 4)
    result = a.nbytes
    # Scratch of more than 8 matrices fails; the result itself fits.
    _fake_cupy.state.fail_above = max(result, 8 * 16 * 8)
    x, info = CudaEngine(None).invert(normalize(fake.asarray(a)), route="cublas")
    check(x, info, a)


def test_out_of_memory_retry_in_the_pipeline(fake, rng):
    a = stack(rng, (64,), 4)
    _fake_cupy.state.fail_above = 5 * 16 * 8
    x, info = CudaEngine(None).invert(normalize(a), route="cusolver")
    check(x, info, a)


def test_memory_error_when_one_matrix_does_not_fit(fake, rng):
    a = stack(rng, (4,), 6)
    d = fake.asarray(a)
    attempts = []
    real = cuda_mod._invert_chunk

    def spy(view, out, *args, **kw):
        attempts.append(out.shape[0])
        real(view, out, *args, **kw)

    cuda_mod._invert_chunk, saved = spy, real
    try:
        _fake_cupy.state.fail_after = len(_fake_cupy.state.allocations) + 2  # result and info only
        with pytest.raises(MemoryError, match=r"inverting one 6x6 float64 matrix needs \d+ bytes"):
            CudaEngine(None).invert(normalize(d), route="cublas")
    finally:
        cuda_mod._invert_chunk = saved
    assert attempts == [4, 2, 1]  # halved down to one matrix, then gave up
    _fake_cupy.state.fail_after = None
    _fake_cupy.state.fail_above = 10
    with pytest.raises(MemoryError, match=f"the result needs {a.nbytes + 16} bytes"):
        CudaEngine(None).invert(normalize(d), route="cublas")


def test_planner_sees_little_free_memory(fake, rng):
    a = stack(rng, (4,), 6)
    _fake_cupy.state.free_bytes = 10
    with pytest.raises(MemoryError, match=r"needs \d+ bytes"):
        CudaEngine(None).invert(normalize(a), route="cublas")
    _fake_cupy.state.free_bytes = 1 << 30
    check(*CudaEngine(None).invert(normalize(a), route="cublas"), a)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_error_mid_pipeline_then_next_call_works(fake, rng, monkeypatch, exc):
    a = stack(rng, (40,), 3)
    monkeypatch.setattr(cuda_mod, "PIPELINE_CHUNK_BYTES", 4 * 9 * 8)  # 10 chunks
    engine = CudaEngine(None)
    real = cuda_mod._host_copy
    count = [0]

    def flaky(dst, src):
        count[0] += 1
        if count[0] == 5:
            raise exc("stop")
        real(dst, src)

    monkeypatch.setattr(cuda_mod, "_host_copy", flaky)
    with pytest.raises(exc):
        engine.invert(normalize(a), route="cublas")
    monkeypatch.setattr(cuda_mod, "_host_copy", real)
    assert len(engine._staging) == 1  # the idle pinned set went back to the cache
    staging = engine._staging[0]
    check(*engine.invert(normalize(a), route="cublas"), a)
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
    check(*CudaEngine(None).invert(normalize(fake.asarray(a)), route="kernel"), a)
    check(*CudaEngine(None).invert(normalize(a), route="kernel"), a)
    assert seen and all(s[1] and s[0][1:] == (4, 4) and s[2] == np.float64 for s in seen)


def test_empty_stacks(fake):
    for shape in [(0, 3, 3), (4, 0, 0), (2, 0, 5, 5)]:
        for inp in (np.zeros(shape), fake.zeros(shape)):
            x, info = CudaEngine(None).invert(normalize(inp))
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
    check(*CudaEngine(None).invert(normalize(d), route="kernel"), a)
    assert (pointers == [d.data.ptr]) is read_only
    pointers.clear()
    check(*CudaEngine(None).invert(normalize(d[::-1]), route="kernel"), a[::-1])
    assert pointers != [d.data.ptr]  # a strided view is always gathered


@pytest.mark.parametrize("route", ["cublas", "cusolver"])
def test_info_is_the_step_of_a_not_of_its_transpose(fake, route):
    # A = [[0, 0], [1, 1]]: LU of A meets the zero pivot at step 2, LU of A^T
    # at step 1. LAPACK, NumPy and the CPU engine say 2.
    a = np.array([[[0.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    _, info = CudaEngine(None).invert(normalize(fake.asarray(a)), route=route)
    np.testing.assert_array_equal(np.asarray(info), [2, 1])
    np.testing.assert_array_equal(gpuinv.inv_ex(a, device="cpu").info, [2, 1])
