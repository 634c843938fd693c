"""Host-side logic of the CUDA engine, tested without a GPU.

Runs with CuPy absent, and with CuPy installed but no driver: device
selection and its messages, chunk planning at its boundaries (without
allocating), the pipeline's schedule, and the host copies.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gpuinv
from gpuinv import CudaUnavailableError, _dispatch
from gpuinv._chunks import plan_chunks
from gpuinv._device import cuda_unavailable_reason, parse_device
from gpuinv._normalize import normalize
from gpuinv.engines.cuda.pipeline import run_pipeline, schedule
from gpuinv.engines import cuda as cuda_mod
from gpuinv.engines import cuda_engine
from gpuinv.engines.cuda import routes as cuda_routes
from gpuinv.engines.cuda.planning import (
    CUBLAS_MAX_BATCH,
    MAX_CHUNK_ELEMENTS,
    MEMORY_HEADROOM,
    available_device_bytes,
    batch_calls,
    max_chunk_count,
    pipeline_bytes_per_matrix,
    scratch_bytes_per_matrix,
)


def _cupy_or_skip():
    return pytest.importorskip("cupy")


# --- device selection ----------------------------------------------------------


def test_cupy_missing_names_the_cause(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    reason = cuda_unavailable_reason()
    assert reason is not None and "CuPy is not installed" in reason
    with pytest.raises(CudaUnavailableError, match="CuPy is not installed"):
        gpuinv.inv(np.eye(2), device="cuda")
    with pytest.raises(CudaUnavailableError, match="CuPy is not installed"):
        gpuinv.inv_ex(np.eye(2), device=0)


def test_cupy_missing_auto_runs_on_cpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(gpuinv.config, "cuda_min_bytes", 1)
    a = np.array([[[2.0, 0.0], [0.0, 4.0]]])
    np.testing.assert_allclose(gpuinv.inv(a), [[[0.5, 0.0], [0.0, 0.25]]])


def test_no_driver_names_the_cause(monkeypatch):
    cupy = _cupy_or_skip()

    def no_driver():
        raise cupy.cuda.runtime.CUDARuntimeError(35)  # cudaErrorInsufficientDriver

    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", no_driver)
    with pytest.raises(CudaUnavailableError, match="no usable CUDA driver or device"):
        gpuinv.inv(np.eye(2), device="cuda")


def test_real_environment_without_gpu_raises_clearly():
    cupy = _cupy_or_skip()
    if cupy.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(CudaUnavailableError, match="a CUDA device was requested but"):
        gpuinv.inv(np.eye(2), device="cuda:0")


def test_no_device_found(monkeypatch):
    cupy = _cupy_or_skip()
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 0)
    with pytest.raises(CudaUnavailableError, match="no CUDA device found"):
        gpuinv.inv(np.eye(2), device="cuda")


def test_bad_ordinal_names_the_devices(monkeypatch):
    cupy = _cupy_or_skip()
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 2)
    with pytest.raises(CudaUnavailableError, match=r"no CUDA device 5: 2 devices found \(ordinals 0 to 1\)"):
        gpuinv.inv(np.eye(2), device="cuda:5")
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    with pytest.raises(CudaUnavailableError, match=r"no CUDA device 1: 1 device found"):
        gpuinv.inv(np.eye(2), device=1)


def test_auto_small_numpy_stack_never_imports_cupy():
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import gpuinv
        a = np.random.default_rng(0).standard_normal((10, 3, 3)) + 3 * np.eye(3)
        x = gpuinv.inv(a)
        assert np.allclose(x @ a, np.eye(3)), "wrong inverse"
        gpuinv.inv_ex(a, device="auto")
        bad = [m for m in ("cupy", "torch", "jax", "dask") if m in sys.modules]
        assert not bad, bad
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_large_numpy_stack_picks_gpu_when_usable(monkeypatch):
    op = normalize(np.zeros((1000, 4, 4)))
    monkeypatch.setattr(gpuinv.config, "cuda_min_bytes", 1)
    monkeypatch.setattr(_dispatch, "_cuda_usable", lambda: True)
    engine = _dispatch.select_engine(op, parse_device("auto"))
    assert engine.name == "cuda" and engine.index is None
    monkeypatch.setattr(_dispatch, "_cuda_usable", lambda: False)
    assert _dispatch.select_engine(op, parse_device("auto")).name == "cpu"
    monkeypatch.setattr(_dispatch, "_cuda_usable", lambda: True)
    monkeypatch.setattr(gpuinv.config, "cuda_min_bytes", op.nbytes + 1)
    assert _dispatch.select_engine(op, parse_device("auto")).name == "cpu"


def test_explicit_cuda_request_picks_that_device(monkeypatch):
    monkeypatch.setattr(_dispatch, "require_cuda", lambda index: None)
    op = normalize(np.zeros((2, 3, 3)))
    engine = _dispatch.select_engine(op, parse_device("cuda:1"))
    assert engine.name == "cuda" and engine.index == 1
    assert _dispatch.select_engine(op, parse_device(1)) is engine  # cached per device
    assert _dispatch.select_engine(op, parse_device("cpu")).name == "cpu"


def test_cuda_engine_is_cached_per_index_and_lazy():
    assert cuda_engine(0) is cuda_engine(0)
    assert cuda_engine(0) is not cuda_engine(1)
    assert cuda_engine(None).index is None
    assert cuda_engine(3).name == "cuda"


def test_engine_module_does_not_import_cupy():
    code = "import sys, gpuinv.engines.cuda, gpuinv.engines.cuda.pipeline; assert 'cupy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cuda_route():
    assert cuda_routes.cuda_route(4, np.float64) == "kernel"
    assert cuda_routes.cuda_route(40, np.float64) == "cublas"
    n0 = cuda_routes.CUDA_CUSOLVER_MIN_N
    assert cuda_routes.cuda_route(n0 - 1, np.float32) == "cublas"
    assert cuda_routes.cuda_route(n0, np.complex128) == "cusolver"


# --- chunk planning at its boundaries, nothing allocated ---------------------


@pytest.mark.parametrize(
    "count, calls",
    [
        (0, []),
        (1, [(0, 1)]),
        (65535, [(0, 65535)]),
        (65536, [(0, 65535), (65535, 65536)]),
        (131070, [(0, 65535), (65535, 131070)]),
        (131071, [(0, 65535), (65535, 131070), (131070, 131071)]),
    ],
)
def test_batch_calls_stay_below_65536(count, calls):
    assert batch_calls(count) == calls
    assert CUBLAS_MAX_BATCH == 65535


def test_batch_calls_cover_huge_chunks():
    calls = batch_calls(3 * 2**31 + 7)
    assert all(0 < hi - lo <= CUBLAS_MAX_BATCH for lo, hi in calls)
    assert calls[0][0] == 0 and calls[-1][1] == 3 * 2**31 + 7
    assert all(a[1] == b[0] for a, b in itertools.pairwise(calls))
    with pytest.raises(ValueError, match="at least 1"):
        batch_calls(5, cap=0)


def test_chunk_bounded_by_chunk_bytes():
    big = 1 << 60
    per = scratch_bytes_per_matrix(4, 8, "cublas")
    assert max_chunk_count(4, 8, per, big, 256 << 20) == (256 << 20) // 128
    # A chunk always holds at least one matrix, even when one matrix is
    # larger than the chunk size.
    assert max_chunk_count(512, 16, scratch_bytes_per_matrix(512, 16, "cusolver"), big, 1) == 1


@pytest.mark.parametrize("n", [1, 2, 64, 128, 1000, 46340])
def test_chunk_stays_below_2_31_elements(n):
    count = max_chunk_count(n, 4, 1, 1 << 62, 1 << 62)
    assert count * n * n <= MAX_CHUNK_ELEMENTS < (count + 1) * n * n
    assert MAX_CHUNK_ELEMENTS == 2**31 - 1


def test_chunk_bounded_by_free_memory():
    n, s = 8, 8
    per = scratch_bytes_per_matrix(n, s, "cublas")
    free = 10 * per
    count = max_chunk_count(n, s, per, free, 1 << 40)
    assert count == int(free * MEMORY_HEADROOM) // per
    assert count * per <= free
    assert max_chunk_count(n, s, per, per, 1 << 40) == 0  # one matrix does not fit
    assert max_chunk_count(n, s, per, 0, 1 << 40) == 0


def test_scratch_estimates():
    # gathered copy + inverse + NaN mask + pivots + pointers and codes
    assert scratch_bytes_per_matrix(4, 8, "cublas") == 2 * 8 * 16 + 16 + 16 + 64
    assert scratch_bytes_per_matrix(4, 8, "cusolver") == scratch_bytes_per_matrix(4, 8, "cublas")
    assert scratch_bytes_per_matrix(4, 8, "kernel") == 8 * 16 + 16
    assert pipeline_bytes_per_matrix(4, 8, "cublas", slots=3) == 3 * (2 * 128 + 4 + 352)


def test_available_device_bytes():
    assert available_device_bytes(100, 20, 50, 0) == 120  # no pool limit
    assert available_device_bytes(100, 20, 50, 90) == 40  # limit - used
    assert available_device_bytes(100, 20, 50, 1000) == 120
    assert available_device_bytes(100, 20, 95, 90) == 0


@pytest.mark.parametrize(
    "batch_shape, n",
    [((2**31 + 5,), 1), ((70000,), 2), ((3, 2**20, 2**11), 2), ((2**16, 2**16 + 1), 4)],
)
def test_plans_past_2_31_elements_and_batch_65535(batch_shape, n):
    # The engine's plan for a huge stack on a big GPU: every chunk within
    # the bounds, and the chunks tile the flat batch exactly.
    per = scratch_bytes_per_matrix(n, 8, "cublas")
    count = max_chunk_count(n, 8, per, 80 << 30, 256 << 20)
    total = math.prod(batch_shape)
    expected_start = 0
    chunks = plan_chunks(batch_shape, count)
    for i, chunk in enumerate(chunks):
        assert chunk.start == expected_start
        assert 0 < chunk.count <= count
        assert chunk.count * n * n <= MAX_CHUNK_ELEMENTS
        assert all(hi - lo <= CUBLAS_MAX_BATCH for lo, hi in batch_calls(chunk.count))
        expected_start = chunk.stop
        if i == 50:  # walk only the head of the plan, then jump to its end
            break
    from gpuinv._chunks import chunk_count

    assert chunk_count(batch_shape, count) >= total // count
    if total > 2**31:
        assert count < total


def test_memory_error_names_bytes():
    err = cuda_mod.planning.memory_error("inverting one 4x4 float64 matrix", 352, 100, 0)
    assert isinstance(err, MemoryError)
    assert "352 bytes" in str(err) and "CUDA device 0" in str(err)


# --- the pipeline's schedule -------------------------------------------------


@pytest.mark.parametrize("chunks", [0, 1, 2, 3, 5, 10])
@pytest.mark.parametrize("slots", [1, 2, 3, 4])
def test_schedule_rules(chunks, slots):
    steps = list(schedule(chunks, slots))
    fills = [s for s in steps if s.kind == "fill"]
    drains = [s for s in steps if s.kind == "drain"]
    # 1. each chunk filled once and drained once, both in order, fill first
    assert [s.chunk for s in fills] == list(range(chunks))
    assert [s.chunk for s in drains] == list(range(chunks))
    pos = {(s.kind, s.chunk): i for i, s in enumerate(steps)}
    assert all(pos["fill", c] < pos["drain", c] for c in range(chunks))
    # chunk i always uses slot i % slots
    assert all(s.slot == s.chunk % slots for s in steps)
    # 2. a slot is refilled only after its previous chunk was drained
    # 3. at most `slots` chunks in flight
    busy: dict[int, int] = {}
    peak = 0
    for s in steps:
        if s.kind == "fill":
            assert s.slot not in busy, f"slot {s.slot} refilled before its drain"
            busy[s.slot] = s.chunk
        else:
            assert busy.pop(s.slot) == s.chunk
        peak = max(peak, len(busy))
    assert not busy
    assert peak == min(chunks, slots)


def test_schedule_overlaps_three_stages():
    # With three slots, chunk i+1 is filled (uploaded) while chunks i and i-1
    # are still in flight (computing, downloading): no drain in between.
    steps = [tuple(s) for s in schedule(6, 3)]
    assert steps[:4] == [("fill", 0, 0), ("fill", 1, 1), ("fill", 2, 2), ("drain", 0, 0)]
    assert steps[4] == ("fill", 3, 0)


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="slots"):
        list(schedule(3, 0))
    with pytest.raises(ValueError, match="chunks"):
        list(schedule(-1, 2))


def _recording_pipeline(chunks, slots, fail_at=None, exc=RuntimeError):
    log = []

    def fill(c, s):
        if fail_at == ("fill", c):
            raise exc("boom")
        log.append(("fill", c, s))

    def drain(c, s):
        if fail_at == ("drain", c):
            raise exc("boom")
        log.append(("drain", c, s))

    def abandon(s):
        log.append(("abandon", s))

    return log, fill, drain, abandon


def test_run_pipeline_follows_the_schedule():
    log, fill, drain, abandon = _recording_pipeline(7, 3)
    run_pipeline(7, 3, fill, drain, abandon)
    assert log == [tuple(s) for s in schedule(7, 3)]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt, MemoryError])
def test_run_pipeline_waits_for_in_flight_slots_on_error(exc):
    log, fill, drain, abandon = _recording_pipeline(8, 3, fail_at=("fill", 4), exc=exc)
    with pytest.raises(exc, match="boom"):
        run_pipeline(8, 3, fill, drain, abandon)
    # When fill 4 (slot 1) failed, chunks 2 and 3 (slots 2, 0) were in
    # flight, and slot 1 had been handed to chunk 4: all three are waited for.
    abandoned = sorted(s for kind, *rest in log if kind == "abandon" for s in rest)
    assert abandoned == [0, 1, 2]
    assert log.index(("abandon", 0)) > log.index(("drain", 1, 1))


def test_run_pipeline_error_in_drain():
    log, fill, drain, abandon = _recording_pipeline(5, 2, fail_at=("drain", 1))
    with pytest.raises(RuntimeError):
        run_pipeline(5, 2, fill, drain, abandon)
    assert sorted(e[1] for e in log if e[0] == "abandon") == [0, 1]


def test_run_pipeline_first_error_wins():
    def fill(c, s):
        raise ValueError("first")

    def abandon(s):
        raise RuntimeError("second")

    with pytest.raises(ValueError, match="first"):
        run_pipeline(3, 2, fill, lambda c, s: None, abandon)


# --- host copies into and out of the staging buffers --------------------------


@pytest.mark.parametrize("dtype_in, dtype_out", [("f8", "f8"), (">f4", "f4"), ("i2", "f8"), ("c8", "c8")])
def test_host_copy_threads_any_strides(monkeypatch, dtype_in, dtype_out):
    monkeypatch.setattr(cuda_mod.pipeline, "_HOST_COPY_SPLIT_BYTES", 1)
    monkeypatch.setattr(cuda_mod.pipeline, "_HOST_COPY_THREADS", 3)
    rng = np.random.default_rng(1)
    base = (rng.standard_normal((7, 11, 5, 5)) * 10).astype(dtype_in)
    src = base[::-2, 1::3].transpose(1, 0, 3, 2)  # negative, gapped and transposed strides
    dst = np.empty(src.shape, dtype=dtype_out)
    cuda_mod.pipeline.host_copy(dst, src)
    np.testing.assert_array_equal(dst, src.astype(dtype_out))
