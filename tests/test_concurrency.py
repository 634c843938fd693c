"""Concurrency and faults: many callers at once, and failures between chunks.

* 8 threads call ``inv`` and ``inv_ex`` at once with different shapes,
  dtypes and singular matrices, sharing the CPU engine and its thread pool;
  every result is checked against a serial run.
* An exception or a KeyboardInterrupt in the middle of a batch propagates to
  the caller, leaves no chunk running, and the next call works.
* GPU versions (``gpu`` marker): 8 threads with CuPy arrays, each on its own
  ``cupy.cuda.Stream``, and all on the default stream.
"""

from __future__ import annotations

import _thread
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import gpuinv
from gpuinv.engines import cpu as cpu_module
from gpuinv.engines import cpu_engine

THREADS = 8
ROUNDS = 4


def workload(seed):
    """A mix of shapes, dtypes and failures; returns a list of arrays."""
    rng = np.random.default_rng(seed)
    out = []
    for n, count, dtype in [
        (2, 3000, np.float64),
        (3, 2000, np.float32),
        (4, 1500, np.complex128),
        (6, 500, np.float64),
        (9, 300, np.complex64),
        (1, 50, np.float64),
        (3, 0, np.float64),
    ]:
        a = rng.standard_normal((count, n, n)) + 2 * n * np.eye(n)
        if np.dtype(dtype).kind == "c":
            a = a + 1j * rng.standard_normal((count, n, n))
        a = a.astype(dtype)
        if count:
            k = rng.integers(count, size=3)
            a[k[0]] = 0
            a[k[1], 0, 0] = np.nan
            a[k[2], :, n - 1] = 0
        out.append(a)
    return out


@pytest.fixture
def small_chunks(monkeypatch):
    # Many chunks per call, on a pool with more workers than cores, so that
    # callers really interleave on the shared pool.
    monkeypatch.setattr(gpuinv.config, "cpu_chunk_bytes", 4096)
    monkeypatch.setattr(gpuinv.config, "cpu_threads", 4)


def run_threads(target, count=THREADS):
    errors = []
    barrier = threading.Barrier(count)

    def wrapper(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # reported below, with the thread's index
            errors.append((i, exc))

    threads = [threading.Thread(target=wrapper, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise AssertionError(f"{len(errors)} threads failed; first: thread {errors[0][0]}") from errors[0][1]


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_eight_threads_on_the_cpu_engine(small_chunks, device):
    jobs = [workload(seed) for seed in range(THREADS)]
    expected = [[gpuinv.inv_ex(a, device="cpu") for a in job] for job in jobs]
    originals = [[a.copy() for a in job] for job in jobs]

    def target(i):
        for r in range(ROUNDS):
            # Each round starts at a different job, so threads overlap on
            # different shapes and dtypes.
            k = (i + r) % len(jobs[i])
            for a, exp in zip(jobs[i][k:] + jobs[i][:k], expected[i][k:] + expected[i][:k]):
                res = gpuinv.inv_ex(a, device=device)
                np.testing.assert_array_equal(res.info, exp.info)
                np.testing.assert_array_equal(res.inverse, exp.inverse)
                x = gpuinv.inv(a, device=device, on_singular="nan")
                np.testing.assert_array_equal(x, exp.inverse)
                if (exp.info != 0).any():
                    with pytest.raises(gpuinv.SingularMatrixError) as e:
                        gpuinv.inv(a, device=device)
                    assert e.value.indices == [(int(j),) for j in np.flatnonzero(exp.info)]

    run_threads(target)
    for job, orig in zip(jobs, originals):
        for a, o in zip(job, orig):
            np.testing.assert_array_equal(a, o)


def test_results_do_not_depend_on_chunking_or_threads(monkeypatch):
    # The same stack, serial and pooled, small and large chunks: bitwise equal.
    a = workload(99)[0]
    ref = gpuinv.inv_ex(a, device="cpu")
    for threads, chunk in [(1, 1 << 20), (4, 64), (3, 1000), (8, 4096)]:
        monkeypatch.setattr(gpuinv.config, "cpu_threads", threads)
        monkeypatch.setattr(gpuinv.config, "cpu_chunk_bytes", chunk)
        res = gpuinv.inv_ex(a, device="cpu")
        np.testing.assert_array_equal(res.inverse, ref.inverse)
        np.testing.assert_array_equal(res.info, ref.info)


def test_changing_cpu_threads_while_other_calls_run(small_chunks):
    # Regression: resizing the shared pool shut the old one down while other
    # callers were still submitting chunks to it ("cannot schedule new
    # futures after shutdown").
    a = workload(5)[0]
    expected = gpuinv.inv_ex(a, device="cpu")

    def target(i):
        for r in range(6):
            if i == 0:
                gpuinv.config.cpu_threads = 2 + (r % 3)
            res = gpuinv.inv_ex(a, device="cpu")
            np.testing.assert_array_equal(res.inverse, expected.inverse)
            np.testing.assert_array_equal(res.info, expected.info)

    run_threads(target)


# --------------------------------------------------------------------------
# Faults between chunks
# --------------------------------------------------------------------------


class Faulty:
    """Wraps a per-chunk function (invert_block, invert_block_ex): counts calls
    and running tasks, fails on call k."""

    def __init__(self, real, fail_at, exc):
        self.real = real
        self.fail_at = fail_at
        self.exc = exc
        self.calls = 0
        self.running = 0
        self.lock = threading.Lock()

    def __call__(self, *args):
        with self.lock:
            self.calls += 1
            call = self.calls
            self.running += 1
        try:
            if call == self.fail_at:
                if self.exc is _thread.interrupt_main:
                    _thread.interrupt_main()  # a Ctrl-C arriving in the caller's thread
                else:
                    raise self.exc
            self.real(*args)
        finally:
            with self.lock:
                self.running -= 1


def _stack():
    rng = np.random.default_rng(3)
    return rng.standard_normal((20000, 3, 3)) + 6 * np.eye(3)


# The per-chunk function each kind of call runs: plain inv (check_cond=False)
# runs invert_block; inv with its default conditioning check runs
# invert_block_ex (issue 10).
ROUTES = [("invert_block", {"check_cond": False}), ("invert_block_ex", {})]


@pytest.mark.parametrize("route,kwargs", ROUTES, ids=[r[0] for r in ROUTES])
@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize(
    "exc",
    [RuntimeError("chunk failed"), MemoryError("no memory"), KeyboardInterrupt()],
    ids=["RuntimeError", "MemoryError", "KeyboardInterrupt-in-worker"],
)
def test_exception_mid_batch_leaves_engine_usable(monkeypatch, threads, exc, route, kwargs):
    monkeypatch.setattr(gpuinv.config, "cpu_chunk_bytes", 2048)
    monkeypatch.setattr(gpuinv.config, "cpu_threads", threads)
    a = _stack()
    before = a.copy()
    expected = gpuinv.inv(a, device="cpu", **kwargs)
    faulty = Faulty(getattr(cpu_module, route), fail_at=7, exc=exc)
    monkeypatch.setattr(cpu_module, route, faulty)
    with pytest.raises(type(exc)):
        gpuinv.inv(a, device="cpu", **kwargs)
    # Nothing is still running once the call has raised, and submission
    # stopped: far fewer chunks ran than the batch has.
    assert faulty.running == 0
    assert faulty.calls < 20000 * 72 // 2048
    np.testing.assert_array_equal(a, before)
    # The next call works, through the same engine and pool.
    monkeypatch.setattr(cpu_module, route, faulty.real)
    np.testing.assert_array_equal(gpuinv.inv(a, device="cpu", **kwargs), expected)
    np.testing.assert_array_equal(gpuinv.inv(a[:5], device="cpu", **kwargs), expected[:5])


@pytest.mark.parametrize("route,kwargs", ROUTES, ids=[r[0] for r in ROUTES])
@pytest.mark.parametrize("threads", [1, 4])
def test_keyboard_interrupt_in_main_thread_leaves_engine_usable(monkeypatch, threads, route,
                                                                 kwargs):
    # _thread.interrupt_main raises KeyboardInterrupt in the main thread,
    # wherever it is: inside CpuEngine._run's wait, or in a task it runs inline.
    if threading.current_thread() is not threading.main_thread():  # pragma: no cover
        pytest.skip("needs the main thread")
    monkeypatch.setattr(gpuinv.config, "cpu_chunk_bytes", 2048)
    monkeypatch.setattr(gpuinv.config, "cpu_threads", threads)
    a = _stack()
    expected = gpuinv.inv(a, device="cpu", **kwargs)
    faulty = Faulty(getattr(cpu_module, route), fail_at=5, exc=_thread.interrupt_main)
    monkeypatch.setattr(cpu_module, route, faulty)
    with pytest.raises(KeyboardInterrupt):
        gpuinv.inv(a, device="cpu", **kwargs)
        # The interrupt may land just after the last chunk: wait for it here.
        for _ in range(10**6):
            pass
    assert faulty.running == 0
    monkeypatch.setattr(cpu_module, route, faulty.real)
    np.testing.assert_array_equal(gpuinv.inv(a, device="cpu", **kwargs), expected)


def test_engine_run_directly_after_interrupt(monkeypatch):
    # CpuEngine._run itself: a task raising KeyboardInterrupt stops
    # submission, waits for running tasks, and the engine runs the next job.
    engine = cpu_engine()
    monkeypatch.setattr(gpuinv.config, "cpu_threads", 4)
    done = []
    lock = threading.Lock()

    def task(chunk):
        if chunk.start == 40:
            raise KeyboardInterrupt
        with lock:
            done.append(chunk.start)

    from gpuinv._chunks import plan_chunks

    with pytest.raises(KeyboardInterrupt):
        engine._run(task, plan_chunks((100000,), 10), threads=4)
    assert len(done) < 100  # stopped early: at most 2 * threads in flight
    seen = []
    engine._run(lambda c: seen.append(c.start), plan_chunks((1000,), 10), threads=4)
    assert sorted(seen) == list(range(0, 1000, 10))


# --------------------------------------------------------------------------
# GPU: CuPy arrays from 8 threads
# --------------------------------------------------------------------------


def _cupy():
    cupy = pytest.importorskip("cupy")
    if not cupy.cuda.is_available():
        pytest.skip("no usable CUDA device")
    return cupy


@pytest.mark.gpu
@pytest.mark.parametrize("streams", ["own", "default"])
def test_eight_threads_with_cupy(streams):
    cupy = _cupy()
    jobs = [workload(seed) for seed in range(THREADS)]
    expected = [[gpuinv.inv_ex(a, device="cpu") for a in job] for job in jobs]
    tol = {np.dtype(np.float32): 1e-4, np.dtype(np.complex64): 1e-4}

    def target(i):
        stream = cupy.cuda.Stream(non_blocking=True) if streams == "own" else cupy.cuda.Stream.null
        with stream:
            for _ in range(ROUNDS):
                for a, exp in zip(jobs[i], expected[i]):
                    d = cupy.asarray(a)
                    res = gpuinv.inv_ex(d)
                    assert isinstance(res.inverse, cupy.ndarray) and isinstance(res.info, cupy.ndarray)
                    stream.synchronize()
                    info = cupy.asnumpy(res.info)
                    np.testing.assert_array_equal(info, exp.info)
                    ok = info == 0
                    rtol = tol.get(a.dtype, 1e-10)
                    np.testing.assert_allclose(cupy.asnumpy(res.inverse)[ok], exp.inverse[ok], rtol=rtol, atol=rtol)
                    if (info != 0).any():
                        with pytest.raises(gpuinv.SingularMatrixError) as e:
                            gpuinv.inv(d)
                        assert e.value.indices == [(int(j),) for j in np.flatnonzero(exp.info)]
                    np.testing.assert_array_equal(cupy.asnumpy(d), a)  # input untouched

    run_threads(target)
    cupy.cuda.Device().synchronize()


_FORK_SCRIPT = """
import multiprocessing, numpy as np, gpuinv
gpuinv.config.cpu_threads = 2
gpuinv.config.cpu_chunk_bytes = 1 << 16

def child(queue):
    a = np.tile(np.eye(3), (50_000, 1, 1)) * 2.0
    queue.put(float(gpuinv.inv(a, device="cpu")[123, 1, 1]))

if __name__ == "__main__":
    gpuinv.inv(np.tile(np.eye(3), (50_000, 1, 1)), device="cpu")  # the pool now has live threads
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=child, args=(queue,))
    p.start()
    p.join(timeout=30)
    if p.is_alive():
        p.kill()
        raise SystemExit("the forked child hung")
    assert p.exitcode == 0, p.exitcode
    print(queue.get(timeout=5))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_gets_a_working_pool(tmp_path):
    # Regression: a child forked after the parent used the thread pool
    # inherited the pool without its threads and hung on the first call.
    # A fresh interpreter, so that no other library's threads (JAX, torch)
    # are alive at the fork.
    script = tmp_path / "fork_child.py"
    script.write_text(_FORK_SCRIPT)
    root = Path(gpuinv.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0.5"
