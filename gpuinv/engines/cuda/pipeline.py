"""The CUDA engine's host<->device pipeline for NumPy input: schedule, pinned staging, host copies.

The schedule (:func:`schedule`, :func:`run_pipeline`) is free of CUDA, so
that CPU tests check it; :func:`run_numpy` runs a :class:`.planning.ChunkWork`
through it.

A NumPy stack on the GPU flows through ``slots`` staging slots. Each slot owns
a pinned input buffer, a pinned output buffer, device buffers and one CUDA
stream. Chunk ``i`` uses slot ``i % slots``:

* **fill** ``i``: copy chunk ``i`` from the caller's array into the slot's
  pinned input (host work), then *enqueue* on the slot's stream the upload,
  the compute and the download into the slot's pinned output, and record an
  event. Nothing waits for the device here.
* **drain** ``i``: wait for that event, then copy the slot's pinned output
  into the result (host work). After this the slot is free again.

The schedule fills up to ``slots`` chunks ahead before it drains the oldest
one, so while the host fills chunk ``i + 1`` the device is still uploading,
computing or downloading chunks ``i``, ``i - 1``, ...: with three slots the
upload of one chunk, the compute of the next older and the download of the
one before run on three streams at once (two copy engines and the SMs).

Rules that :func:`schedule` guarantees and ``tests/test_cuda_host.py`` checks:

1. every chunk is filled once and drained once, fills and drains each in
   chunk order, and a chunk's drain comes after its fill;
2. a slot is filled again only after the drain of its previous chunk (the
   pinned buffers are reused, never overwritten while the device reads them);
3. at most ``slots`` chunks are in flight (filled but not drained).

:func:`run_pipeline` executes a schedule with callbacks and, if any step
raises (including ``KeyboardInterrupt``), waits for every in-flight slot
before re-raising: the device must stop using the pinned buffers before they
can be reused or freed.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np

from ..._chunks import Chunk, chunk_count, plan_chunks
from ..._config import config
from . import planning
from .planning import ChunkWork

__all__ = ["Staging", "Step", "host_copy", "run_numpy", "run_pipeline", "schedule", "staging_size"]

#: Host copies (user array <-> pinned staging) larger than this are split
#: over threads: one core copies at 5-10 GB/s, well below PCIe 5's ~50 GB/s.
_HOST_COPY_SPLIT_BYTES = 4 << 20
_HOST_COPY_THREADS = max(1, min(8, (os.cpu_count() or 1)))

#: The smallest pinned staging buffer; see :func:`staging_size`.
_MIN_STAGING_BYTES = 64 << 10



def staging_size(nbytes: int) -> int:
    """The pinned buffer size for ``nbytes``: a power of two, at least
    :data:`_MIN_STAGING_BYTES`.

    CuPy's pinned pool reuses a freed block only for a request of the same
    size, and never frees it by itself; with a few size classes the blocks of
    a dropped set serve a later set, and the pool stays within about twice
    the largest set per concurrent call.
    """
    return max(_MIN_STAGING_BYTES, 1 << (max(nbytes, 1) - 1).bit_length())


class Step(NamedTuple):
    """One host action: ``kind`` is ``"fill"`` or ``"drain"``."""

    kind: str
    chunk: int
    slot: int


def schedule(chunks: int, slots: int) -> Iterator[Step]:
    """Yield the fill and drain steps for ``chunks`` chunks over ``slots`` slots.

    Parameters
    ----------
    chunks : int
        Number of chunks (0 or more).
    slots : int
        Number of staging slots (at least 1). One slot serializes the
        pipeline; two overlap the host copies with the device; three also
        overlap upload, compute and download with each other.

    Examples
    --------
    >>> [tuple(s) for s in schedule(3, 2)]
    [('fill', 0, 0), ('fill', 1, 1), ('drain', 0, 0), ('fill', 2, 0), ('drain', 1, 1), ('drain', 2, 0)]
    """
    if slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    if chunks < 0:
        raise ValueError(f"chunks must be non-negative, got {chunks}")
    for i in range(chunks):
        if i >= slots:
            yield Step("drain", i - slots, (i - slots) % slots)
        yield Step("fill", i, i % slots)
    for i in range(max(0, chunks - slots), chunks):
        yield Step("drain", i, i % slots)


def run_pipeline(
    chunks: int,
    slots: int,
    fill: Callable[[int, int], None],
    drain: Callable[[int, int], None],
    abandon: Callable[[int], None],
) -> None:
    """Run :func:`schedule` with callbacks ``fill(chunk, slot)`` and ``drain(chunk, slot)``.

    If a callback raises (or the run is interrupted), ``abandon(slot)`` is
    called once for every slot that has work in flight (filled, not drained,
    including the slot whose fill raised), so that the caller can wait for
    that slot's stream; then the exception propagates. Errors raised by
    ``abandon`` itself are suppressed so that the first error is the one seen.
    """
    in_flight: dict[int, int] = {}  # slot -> chunk
    try:
        for step in schedule(chunks, slots):
            if step.kind == "fill":
                in_flight[step.slot] = step.chunk
                fill(step.chunk, step.slot)
            else:
                drain(step.chunk, step.slot)
                del in_flight[step.slot]
    except BaseException:
        for slot in sorted(in_flight):
            try:
                abandon(slot)
            except BaseException:  # noqa: BLE001, S110 - the first error wins
                pass
        raise


# --- host copies -------------------------------------------------------------

_copy_pool: ThreadPoolExecutor | None = None
_copy_pool_lock = threading.Lock()


def host_copy(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` (casting), over several threads for large copies.

    Each thread copies a block of whole matrices; the blocks are views of
    both arrays whatever their strides (see :mod:`gpuinv._chunks`).
    """
    global _copy_pool
    if dst.nbytes < _HOST_COPY_SPLIT_BYTES or _HOST_COPY_THREADS == 1 or dst.ndim < 3:
        np.copyto(dst, src, casting="unsafe")
        return
    batch = dst.shape[:-2]
    per = max(1, math.prod(batch) // _HOST_COPY_THREADS + 1)
    with _copy_pool_lock:
        if _copy_pool is None:
            _copy_pool = ThreadPoolExecutor(_HOST_COPY_THREADS, thread_name_prefix="gpuinv-copy")
        pool = _copy_pool
    futures = [
        pool.submit(np.copyto, dst[c.index], src[c.index], casting="unsafe")
        for c in plan_chunks(batch, per)
    ]
    for f in futures:
        f.result()


# --- pinned staging ----------------------------------------------------------


class Staging:
    """Pinned host buffers, streams and events of the pipeline's slots.

    Each slot holds one pinned buffer per size of ``sizes`` (the inputs and
    the results of a chunk, in any order: :meth:`assign` maps a request's
    buffers onto them). One set is cached per engine and reused across
    chunks and calls; a call that finds it busy (another thread) or unfit
    allocates its own.

    The buffers come from CuPy's pinned memory pool
    (``cupy.cuda.alloc_pinned_memory``): dropping a set (a smaller one
    replaced, a busy cache, ``clear_cache``) gives its blocks back to the
    pool instead of calling ``cudaFreeHost``, which would synchronize the
    whole device and stall other threads' streams in the middle of their
    work. A set is dropped only when idle, so a block the pool hands out
    again has no transfer in flight.
    """

    def __init__(self, slots: int, sizes: tuple[int, ...]) -> None:
        import cupy

        self.slots = slots
        self.sizes = tuple(sizes)
        self._memory: list[Any] = []
        self.buffers = [[self._pinned(size) for size in self.sizes] for _ in range(slots)]
        self.streams = [cupy.cuda.Stream(non_blocking=True) for _ in range(slots)]
        self.events: list[Any] = [None] * slots

    def _pinned(self, nbytes: int) -> tuple[int, np.ndarray]:
        import cupy

        mem = cupy.cuda.alloc_pinned_memory(max(nbytes, 1))
        self._memory.append(mem)
        buf = np.frombuffer(mem, dtype=np.uint8, count=nbytes)
        return mem.ptr, buf

    def assign(self, slots: int, sizes: tuple[int, ...]) -> list[int] | None:
        """The buffer that serves each of ``sizes`` (distinct buffers), or None if the set cannot.

        The largest request takes the largest buffer, and so on down: if
        that pairing fails, no pairing fits.
        """
        if self.slots < slots or len(self.sizes) < len(sizes):
            return None
        wanted = sorted(range(len(sizes)), key=lambda j: -sizes[j])
        held = sorted(range(len(self.sizes)), key=lambda j: -self.sizes[j])
        mapping = [0] * len(sizes)
        for w, h in zip(wanted, held):
            if self.sizes[h] < sizes[w]:
                return None
            mapping[w] = h
        return mapping

    @property
    def nbytes(self) -> int:
        return self.slots * sum(self.sizes)


# --- one pass of NumPy input --------------------------------------------------


def run_numpy(engine: Any, work: ChunkWork) -> list[np.ndarray]:
    """Run ``work`` on NumPy inputs through the pinned pipeline on ``engine``'s
    device; NumPy results. Chunks of at most ``PIPELINE_CHUNK_BYTES`` of input."""
    import cupy

    results = [np.empty(work.batch_shape + tail, dtype=dt) for tail, dt in work.outputs]
    device = cupy.cuda.Device(engine.index) if engine.index is not None else cupy.cuda.Device()
    with device:
        chunk_bytes = min(config.cuda_chunk_bytes, planning.PIPELINE_CHUNK_BYTES)
        progress = [0]  # matrices finished, in C order

        def run(count: int) -> None:
            _pipeline(engine, work, results, count, progress, device.id)

        planning.with_retry(run, work, work.pipeline_bytes(planning.PIPELINE_SLOTS), chunk_bytes,
                            device.id)
    return results


def _pipeline(engine: Any, work: ChunkWork, results: list[np.ndarray], count: int,
              progress: list[int], device: int) -> None:
    import cupy
    from cupy.cuda import runtime

    dtype = work.dtype
    nb = len(work.batch_shape)
    in_tails = [tuple(x.shape[nb:]) for x in work.inputs]
    in_bytes = [math.prod(t) * dtype.itemsize for t in in_tails]  # per matrix
    out_bytes = [math.prod(t) * np.dtype(dt).itemsize for t, dt in work.outputs]
    flat = [r.reshape((-1,) + tail) for r, (tail, _) in zip(results, work.outputs)]
    done = progress[0]

    def remaining() -> Any:  # chunks not finished before an out-of-memory retry
        return (c for c in plan_chunks(work.batch_shape, count) if c.stop > done)

    total = (chunk_count(work.batch_shape, count) if done == 0
             else sum(1 for _ in remaining()))
    chunks = remaining()
    slots = min(planning.PIPELINE_SLOTS, total)
    staging, mapping = engine.acquire_staging(
        device, slots, tuple(count * b for b in in_bytes + out_bytes))
    n_in = len(work.inputs)
    d_in: list[list[Any]] = []  # per slot, per input
    d_out: list[list[Any]] = []  # per slot, per result
    slot_chunk: list[Chunk | None] = [None] * slots

    def fill(i: int, slot: int) -> None:
        chunk = next(chunks)
        slot_chunk[slot] = chunk
        m = chunk.count
        stream = staging.streams[slot]
        buffers = staging.buffers[slot]
        if len(d_in) <= slot:  # device buffers: once per call, on the slot's stream
            with stream:
                d_in.append([cupy.empty((count,) + t, dtype=dtype) for t in in_tails])
                d_out.append([cupy.empty((count,) + t, dtype=dt) for t, dt in work.outputs])
        for j, x in enumerate(work.inputs):
            view = x[chunk.index]
            buf = buffers[mapping[j]][1]
            host_copy(buf[: m * in_bytes[j]].view(dtype).reshape(view.shape), view)
        with stream:
            for j in range(n_in):
                runtime.memcpyAsync(d_in[slot][j].data.ptr, buffers[mapping[j]][0],
                                    m * in_bytes[j], runtime.memcpyHostToDevice, stream.ptr)
            work.compute([d[:m] for d in d_in[slot]], [d[:m] for d in d_out[slot]], True)
            for j, d in enumerate(d_out[slot]):
                runtime.memcpyAsync(buffers[mapping[n_in + j]][0], d.data.ptr,
                                    m * out_bytes[j], runtime.memcpyDeviceToHost, stream.ptr)
            staging.events[slot] = stream.record()

    def drain(i: int, slot: int) -> None:
        staging.events[slot].synchronize()
        chunk = slot_chunk[slot]
        assert chunk is not None
        m = chunk.count
        buffers = staging.buffers[slot]
        for j, (tail, dt) in enumerate(work.outputs):
            buf = buffers[mapping[n_in + j]][1][: m * out_bytes[j]]
            host_copy(flat[j][chunk.start : chunk.stop], buf.view(dt).reshape((m,) + tail))
        progress[0] = chunk.stop

    def abandon(slot: int) -> None:
        staging.streams[slot].synchronize()

    try:
        run_pipeline(total, slots, fill, drain, abandon)
    except BaseException:
        # run_pipeline waited for the slots in flight; wait for every
        # stream once more in case that wait itself was interrupted, so
        # that no transfer into the pinned buffers outlives this call.
        for stream in staging.streams:
            try:
                stream.synchronize()
            except Exception:  # noqa: BLE001, S110 - the original error matters
                pass
        raise
    finally:
        # On success every slot was drained; on an error run_pipeline has
        # waited for the slots in flight. The buffers can go, and the
        # pinned set is idle and can be cached for the next call.
        d_in.clear()
        d_out.clear()
        engine.release_staging(device, staging)
