"""The CUDA engine: stacks of matrices inverted on an NVIDIA GPU through CuPy.

Routes (picked per chunk by :func:`gpuinv._dispatch.cuda_route`):

* ``"cublas"``: cuBLAS ``<t>getrfBatched`` in place on a scratch copy, then
  out-of-place ``<t>getriBatched``, with device arrays of matrix pointers;
  at most :data:`CUBLAS_MAX_BATCH` matrices per cuBLAS call.
* ``"cusolver"`` (large n): cuSOLVER ``<t>getrf`` then ``<t>getrs`` against
  the identity, one matrix at a time, all enqueued without a host wait.
* ``"kernel"`` (small n, when :mod:`gpuinv.kernels` is present): our own
  kernels, ``invert_small(a, out, info)``.

The cuBLAS and cuSOLVER routes factor each matrix A itself, not its
transpose: the gather that every chunk needs anyway (the input is never
written, and may have any strides and dtype) stores each matrix
column-major, and the column-major inverse is transposed back on the way
out. Reading the C-ordered stack as column-major would save that transpose
(inv(A^T) = inv(A)^T), but would factor A^T, whose zero-pivot step differs
from A's; factoring A keeps ``info`` equal to LAPACK's, the CPU engine's and
``torch.linalg.inv_ex``'s codes. NaN/Inf matrices are found on the device,
replaced by the identity in the scratch (so they cannot disturb anything),
and reported as info -1. ``info`` k > 0 is read from the factors (the first
zero on U's diagonal), not from the libraries' info codes, whose choice
between the first and the last zero pivot is undocumented. Every failed
matrix (info != 0) gets a NaN inverse on every route, as on the CPU: getri
may skip a singular matrix and leave pool memory in its place, and our
kernels leave it unspecified. All of this is masks on the device, without a
host sync.

Synchronization: CuPy input is computed on the device that holds it, on the
current CuPy stream, and never waits for the device (``inv`` syncs once later,
in :func:`gpuinv._policy.apply_policy`). The cuBLAS/cuSOLVER handles are the
ones CuPy caches per device; the current stream is set on them before each use.

Chunks and peak device memory. With s the itemsize of the compute dtype, a
chunk of m matrices of order n needs about m * (2 s n^2 + n^2 + 4 n + 64)
bytes of scratch (:func:`scratch_bytes_per_matrix`: the gathered copy, the
getri output, the NaN mask, pivots, pointers and info). A chunk holds at most
``gpuinv.config.cuda_chunk_bytes`` of input, fewer than 2^31 elements, and no
more than :data:`MEMORY_HEADROOM` of the free device memory (driver free
memory plus the CuPy pool's cached free bytes, within the pool's limit). So:

* CuPy input: peak = the result (n^2 s per matrix, plus 4 bytes of info)
  + one chunk's scratch, i.e. at most about 2.1 to 3 times
  ``cuda_chunk_bytes`` on top of the result.
* NumPy input: peak = :data:`PIPELINE_SLOTS` x (input, output and info device
  buffers + one chunk's scratch), each chunk at most
  ``min(cuda_chunk_bytes, PIPELINE_CHUNK_BYTES)`` of input: about 4 to 5
  times ``PIPELINE_SLOTS * PIPELINE_CHUNK_BYTES`` (about 250 MiB by default)
  for a stack of any size. Pinned host memory: ``PIPELINE_SLOTS`` x (input + output
  + info) staging buffers of one chunk, cached once per engine and reused,
  drawn from CuPy's pinned memory pool (never freed mid-work).

Out of memory: a chunk that hits ``cupy.cuda.memory.OutOfMemoryError`` is
retried with half as many matrices (chunks already finished are kept); if a
single matrix does not fit, :class:`MemoryError` names the bytes it needs.
Every scratch buffer is a CuPy array owned by the call, so nothing stays
allocated after an error.

All of this is one piece of machinery, :meth:`CudaEngine.run_chunks`, which
runs a :class:`ChunkWork` (inputs, results, and the math of one chunk): the
inverse here and the structure, rcond and solve routes of
:mod:`gpuinv.engines._cuda_numerics` alike.

NumPy input goes through the host<->device pipeline of :mod:`gpuinv._pipeline`:
each chunk is copied (and cast) by host threads into a pinned buffer, uploaded,
inverted and downloaded on its slot's own stream, so that the upload of one
chunk, the compute of another and the download of a third overlap.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np

from .._chunks import Chunk, chunk_count, plan_chunks
from .._config import config
from .._dispatch import cuda_route
from .._errors import INFO_NONFINITE
from .._normalize import Operand
from .._pipeline import run_pipeline

__all__ = [
    "CUBLAS_MAX_BATCH",
    "MAX_CHUNK_ELEMENTS",
    "MEMORY_HEADROOM",
    "PIPELINE_CHUNK_BYTES",
    "PIPELINE_SLOTS",
    "ChunkWork",
    "CudaEngine",
    "available_device_bytes",
    "batch_calls",
    "max_chunk_count",
    "pipeline_bytes_per_matrix",
    "scratch_bytes_per_matrix",
]

#: The most matrices one cuBLAS batched call gets. Batched getri fails from
#: a batch of 65536 on (MAGMA issue 10 on Bitbucket; PyTorch has worked
#: around the same limit in cuBLAS), so calls stay at 2**16 - 1.
CUBLAS_MAX_BATCH = 65535

#: The most elements one chunk holds: kernels that index with 32-bit ints
#: (in cuBLAS, cuSOLVER or CuPy's own fast paths) stay in range.
MAX_CHUNK_ELEMENTS = 2**31 - 1

#: The fraction of the available device memory one call plans to use; the
#: rest covers the cuBLAS/cuSOLVER workspaces and pool fragmentation.
MEMORY_HEADROOM = 0.75

#: Staging slots (streams) of the host pipeline: three let an upload, a
#: compute and a download run at once (two copy engines plus the SMs).
PIPELINE_SLOTS = 3

#: Provisional until measured on hardware: the most input bytes per pipeline
#: chunk. Small enough that a 256 MB stack flows through many chunks (the
#: overlap needs several), large enough that per-chunk costs (launches, host
#: threads) stay small. benchmarks/gpu_check.py measures NumPy-input
#: throughput against the pinned-copy floor with this value.
PIPELINE_CHUNK_BYTES = 16 << 20

#: Host copies (user array <-> pinned staging) larger than this are split
#: over threads: one core copies at 5-10 GB/s, well below PCIe 5's ~50 GB/s.
_HOST_COPY_SPLIT_BYTES = 4 << 20
_HOST_COPY_THREADS = max(1, min(8, (os.cpu_count() or 1)))

#: The smallest pinned staging buffer; see :func:`_staging_size`.
_MIN_STAGING_BYTES = 64 << 10

_TYPE_LETTER = {"f": "s", "d": "d", "F": "c", "D": "z"}


# --- chunk planning: pure integer arithmetic, tested on CPU -----------------


def batch_calls(count: int, cap: int = CUBLAS_MAX_BATCH) -> list[tuple[int, int]]:
    """Split ``count`` matrices into ``(start, stop)`` ranges of at most ``cap``.

    >>> batch_calls(65536)
    [(0, 65535), (65535, 65536)]
    """
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    return [(lo, min(lo + cap, count)) for lo in range(0, count, cap)]


def scratch_bytes_per_matrix(n: int, itemsize: int, route: str) -> int:
    """Device scratch bytes per matrix of one chunk on ``route``.

    cuBLAS/cuSOLVER: the gathered copy and the inverse (``2 s n^2``), the
    NaN/Inf test's boolean temporary (``n^2``), pivots (``4 n``), and
    pointers, info codes and masks (64, rounded up). Our kernels: the
    gathered copy only.
    """
    if route == "kernel":
        return itemsize * n * n + 16
    return 2 * itemsize * n * n + n * n + 4 * n + 64


def pipeline_bytes_per_matrix(n: int, itemsize: int, route: str, slots: int = PIPELINE_SLOTS) -> int:
    """Device bytes per matrix of one pipeline chunk, over all ``slots``:
    each slot holds its input, output and info buffers plus a chunk's scratch."""
    return slots * (2 * itemsize * n * n + 4 + scratch_bytes_per_matrix(n, itemsize, route))


def available_device_bytes(driver_free: int, pool_free: int, pool_used: int, pool_limit: int) -> int:
    """Bytes a call may still allocate through CuPy's memory pool.

    The driver's free memory plus the pool's cached free blocks, capped by
    the pool's limit (``set_limit``; 0 means none) minus what is in use.
    """
    available = driver_free + pool_free
    if pool_limit > 0:
        available = min(available, max(0, pool_limit - pool_used))
    return available


def max_chunk_count(
    n: int,
    itemsize: int,
    per_matrix_bytes: int,
    available_bytes: int,
    chunk_bytes: int,
    elements: int | None = None,
) -> int:
    """The most matrices one chunk may hold; 0 if not even one fits in memory.

    Bounded by ``chunk_bytes`` of input (at least one matrix), by
    :data:`MAX_CHUNK_ELEMENTS` elements, and by :data:`MEMORY_HEADROOM` of
    ``available_bytes`` at ``per_matrix_bytes`` each. ``elements`` is the
    number of input elements per matrix: ``n * n`` unless given (a solve
    also reads its ``n x k`` right-hand side).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    elements = n * n if elements is None else max(1, elements)
    by_size = max(1, chunk_bytes // (itemsize * elements))
    by_elements = max(1, MAX_CHUNK_ELEMENTS // elements)
    by_memory = int(available_bytes * MEMORY_HEADROOM) // per_matrix_bytes
    return min(by_size, by_elements, by_memory)


def _memory_error(what: str, needed: int, available: int, device: int) -> MemoryError:
    return MemoryError(
        f"out of GPU memory on CUDA device {device}: {what} needs {needed} bytes "
        f"({needed / 2**20:.1f} MiB) but about {available} bytes are available; "
        "free device memory, or use device='cpu'"
    )


# --- device work -------------------------------------------------------------


def _available_bytes() -> int:
    """Available bytes on the current device (see :func:`available_device_bytes`)."""
    import cupy

    free, _total = cupy.cuda.runtime.memGetInfo()
    pool = cupy.get_default_memory_pool()
    return available_device_bytes(free, pool.free_bytes(), pool.used_bytes(), pool.get_limit())


def _launch_into(launch: Callable[..., None], *outputs: Any) -> None:
    """Call ``launch(*outputs)``, handing a kernel C-contiguous arrays: an output
    that is not (a chunk's view) is written through a temporary and copied back.
    ``None`` (an output not asked for) passes through."""
    import cupy

    direct = [x if x is None or x.flags.c_contiguous else cupy.empty(x.shape, dtype=x.dtype) for x in outputs]
    launch(*direct)
    for target, written in zip(outputs, direct):
        if written is not target:
            cupy.copyto(target, written)


def _invert_chunk(view: Any, out: Any, info: Any, route: str, owned: bool = False,
                  rcond: Any = None) -> bool:
    """Invert ``view`` (any batch shape + (n, n), any strides and dtype, read
    only unless ``owned``) into ``out`` (m, n, n) and ``info`` (m,), both
    C-contiguous, on the current device and stream. Never waits for the host.

    With ``rcond`` (m,) given and the ``"kernel"`` route, the kernel's rcond
    variant (where it has one: :func:`gpuinv.kernels.has_rcond_variant`)
    also writes each matrix's rcond there, while it holds A and X. Returns
    whether ``rcond`` was written; otherwise it is left to the caller.
    """
    import cupy

    m, n = out.shape[0], out.shape[1]
    dtype = out.dtype
    if not _is_aligned(view):
        view = _realigned(view)
        owned = True
    if route == "kernel":
        from .. import kernels

        # Small n is bound by memory traffic: skip the gather when the chunk
        # is already a C-contiguous stack of the compute dtype and either we
        # own it or the kernels promise to only read their input (it is
        # aligned to its element size now, see _realigned).
        may_read = owned or getattr(kernels, "INPUT_READ_ONLY", False)
        if may_read and view.dtype == dtype and view.flags.c_contiguous:
            x = view.reshape(m, n, n)
        else:
            x = cupy.empty((m, n, n), dtype=dtype)
            cupy.copyto(x.reshape(view.shape), view, casting="unsafe")
        rc = rcond if rcond is not None and kernels.has_rcond_variant(n, dtype) else None
        if rc is None:
            kernels.invert_small(x, out, info)
        else:
            _launch_into(lambda r: kernels.invert_small(x, out, info, rcond=r), rc)
        # The kernels leave a singular matrix's inverse unspecified: NaN, as
        # the CPU engine and the other routes give (a mask, no host sync).
        cupy.copyto(out, dtype.type(np.nan), where=(info != 0)[:, None, None])
        return rc is not None

    # x[i] = A_i^T in C order, i.e. A_i in column-major order: cuBLAS and
    # cuSOLVER factor A_i itself (see the module docstring).
    x = cupy.empty((m, n, n), dtype=dtype)
    cupy.copyto(x.reshape(view.shape), view.swapaxes(-1, -2), casting="unsafe")
    bad = ~cupy.isfinite(x).all(axis=(1, 2))
    eye = cupy.eye(n, dtype=dtype)
    cupy.copyto(x, eye, where=bad[:, None, None])  # NaN/Inf matrices -> identity
    c = cupy.empty_like(x)
    pivots = cupy.empty((m, n), dtype=np.int32)
    # The libraries' own info codes are written but not used (see below).
    library_info = cupy.empty(m, dtype=np.int32)
    if route == "cublas":
        _cublas_getrf_getri(x, c, pivots, library_info)
    elif route == "cusolver":
        cupy.copyto(c, eye)
        _cusolver_getrf_getrs(x, c, pivots, library_info)
    else:
        raise ValueError(f"unknown CUDA route {route!r}")
    # info from the factors themselves: the first step k with U[k, k] == 0,
    # which is LAPACK's code. Neither cuBLAS nor cuSOLVER documents whether
    # its info names the first or the last zero pivot; U's diagonal does not
    # depend on that (and is the same in either storage order).
    steps = cupy.arange(1, n + 1, dtype=np.int32)
    first = cupy.where(x.diagonal(axis1=1, axis2=2) == 0, steps, np.int32(n + 1)).min(axis=1)
    code = cupy.where(first <= n, first, np.int32(0))
    cupy.copyto(info, cupy.where(bad, np.int32(INFO_NONFINITE), code), casting="same_kind")
    cupy.copyto(out, c.swapaxes(1, 2))  # column-major inverse -> C order
    # NaN for every failed matrix: getri may skip a matrix whose factorization
    # failed, leaving another call's data from the pool in c.
    cupy.copyto(out, dtype.type(np.nan), where=(info != 0)[:, None, None])
    return False


def _is_aligned(view: Any) -> bool:
    """Whether every element of ``view`` starts at a multiple of its size."""
    itemsize = view.dtype.itemsize
    return all(v % itemsize == 0 for v in (view.data.ptr, *view.strides))


def _realigned(view: Any) -> Any:
    """A C-contiguous, aligned copy of ``view`` (same dtype and shape).

    A view may start off its element size's alignment, e.g. a complex128
    view of a float64 array at an 8-byte offset. Any kernel that loads its
    elements, ours or CuPy's own copy, would fault with a misaligned-address
    error that kills the CUDA context. So the bytes are copied as the widest
    unsigned words that the address and the strides are aligned to, which
    any kernel may load, and reinterpreted in an aligned buffer. Costs one
    chunk of input-sized scratch, for such rare input only.
    """
    import cupy

    itemsize = view.dtype.itemsize
    unit = min(itemsize, 8)
    for v in (view.data.ptr, *view.strides):
        while v % unit:
            unit //= 2
    word = np.dtype(f"u{unit}")
    per_item = itemsize // unit
    src = cupy.ndarray(view.shape + (per_item,), dtype=word, memptr=view.data,
                       strides=view.strides + (unit,))
    dst = cupy.empty(view.shape, dtype=view.dtype)
    cupy.copyto(dst.view(word).reshape(src.shape), src)
    return dst


def _pointer_array(x: Any) -> Any:
    """Device array of the addresses of x[0], x[1], ... (uint64)."""
    import cupy

    step = x.shape[1] * x.shape[2] * x.itemsize
    start = x.data.ptr
    return cupy.arange(start, start + step * x.shape[0], step, dtype=cupy.uint64)


def _cublas_getrf_getri(x: Any, c: Any, pivots: Any, library_info: Any) -> None:
    import cupy
    from cupy.cuda import cublas

    m, n = x.shape[0], x.shape[1]
    letter = _TYPE_LETTER[x.dtype.char]
    getrf = getattr(cublas, letter + "getrfBatched")
    getri = getattr(cublas, letter + "getriBatched")
    handle = cupy.cuda.device.get_cublas_handle()
    # CuPy's wrappers set the current stream on its shared handle themselves
    # (cupy_backends/cuda/libs/cublas.pyx, _setStream); setting it here too
    # keeps that true whatever the CuPy version.
    cublas.setStream(handle, cupy.cuda.get_current_stream().ptr)
    a_ptrs = _pointer_array(x)
    c_ptrs = _pointer_array(c)
    for lo, hi in batch_calls(m, CUBLAS_MAX_BATCH):
        k = hi - lo
        getrf(handle, n, a_ptrs.data.ptr + 8 * lo, n, pivots.data.ptr + 4 * n * lo,
              library_info.data.ptr + 4 * lo, k)
        getri(handle, n, a_ptrs.data.ptr + 8 * lo, n, pivots.data.ptr + 4 * n * lo,
              c_ptrs.data.ptr + 8 * lo, n, library_info.data.ptr + 4 * lo, k)


def _cusolver_getrf_getrs(x: Any, c: Any, pivots: Any, library_info: Any) -> None:
    """Per matrix: getrf in place on x[i], then getrs on c[i] (the identity)."""
    import cupy
    from cupy.cuda import cublas, cusolver

    m, n = x.shape[0], x.shape[1]
    letter = _TYPE_LETTER[x.dtype.char]
    getrf = getattr(cusolver, letter + "getrf")
    getrs = getattr(cusolver, letter + "getrs")
    buffer_size = getattr(cusolver, letter + "getrf_bufferSize")
    handle = cupy.cuda.device.get_cusolver_handle()
    cusolver.setStream(handle, cupy.cuda.get_current_stream().ptr)
    step = n * n * x.itemsize
    # At least one element: bufferSize may answer 0 (n = 1), and an empty
    # CuPy array's pointer is NULL, which getrf may reject.
    work = cupy.empty(max(1, buffer_size(handle, n, n, x.data.ptr, n)), dtype=x.dtype)
    solve_info = cupy.empty(1, dtype=np.int32)  # getrs reports argument errors only
    for i in range(m):
        a_ptr = x.data.ptr + i * step
        piv = pivots.data.ptr + 4 * n * i
        getrf(handle, n, n, a_ptr, n, work.data.ptr, piv, library_info.data.ptr + 4 * i)
        getrs(handle, cublas.CUBLAS_OP_N, n, n, a_ptr, n, piv, c.data.ptr + i * step, n,
              solve_info.data.ptr)


# --- host copies -------------------------------------------------------------

_copy_pool: ThreadPoolExecutor | None = None
_copy_pool_lock = threading.Lock()


def _host_copy(dst: np.ndarray, src: np.ndarray) -> None:
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


class _Staging:
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


def _staging_size(nbytes: int) -> int:
    """The pinned buffer size for ``nbytes``: a power of two, at least
    :data:`_MIN_STAGING_BYTES`.

    CuPy's pinned pool reuses a freed block only for a request of the same
    size, and never frees it by itself; with a few size classes the blocks of
    a dropped set serve a later set, and the pool stays within about twice
    the largest set per concurrent call.
    """
    return max(_MIN_STAGING_BYTES, 1 << (max(nbytes, 1) - 1).bit_length())


# --- one pass over a stack, chunk by chunk --------------------------------------


class ChunkWork(NamedTuple):
    """What one call computes, chunk by chunk, for :meth:`CudaEngine.run_chunks`.

    The engine owns the chunking (views of the inputs, planned against the
    device's free memory), the out-of-memory retry with fewer matrices, and
    for NumPy input the pinned host<->device pipeline; ``compute`` owns the
    math of one chunk. Every route of the engine (the inverse here, and
    structure, rcond and solve in :mod:`gpuinv.engines._cuda_numerics`)
    goes through it.

    Attributes
    ----------
    batch_shape : tuple of int
        The batch every input has (broadcast views are fine). Not empty.
    dtype : numpy.dtype
        The compute dtype: NumPy inputs are cast to it on the host, into
        the pinned buffers.
    inputs : tuple of arrays
        All NumPy or all CuPy, each ``batch_shape + tail`` with any strides
        and dtype; never written.
    outputs : tuple of (tail, dtype)
        The results, each allocated as ``batch_shape + tail`` in C order.
    compute : callable
        ``compute(ins, outs, owned)`` on the current device and stream,
        without waiting for the host: ``ins`` are one chunk of each input
        (CuPy input: ``a[chunk.index]``, the chunk's batch axes + tail, any
        strides and dtype; NumPy input: C-contiguous ``(m,) + tail`` device
        buffers of the compute dtype), ``outs`` the chunk's C-contiguous
        ``(m,) + tail`` slices of the results, and ``owned`` whether the
        inputs are scratch of the call (which ``compute`` may overwrite).
        It must write every element of ``outs``: a chunk that ran out of
        memory is computed again, smaller.
    scratch_bytes : int
        Device scratch per matrix that ``compute`` allocates: the planner's
        estimate (an out-of-memory error is retried anyway).
    what : str
        One matrix's work, for :class:`MemoryError`: "inverting one 4x4
        float64 matrix".
    """

    batch_shape: tuple[int, ...]
    dtype: np.dtype
    inputs: tuple[Any, ...]
    outputs: tuple[tuple[tuple[int, ...], np.dtype], ...]
    compute: Callable[[list[Any], list[Any], bool], None]
    scratch_bytes: int
    what: str

    @property
    def count(self) -> int:
        return math.prod(self.batch_shape)

    def input_elements(self) -> int:
        """Input elements per matrix (all inputs)."""
        return sum(math.prod(x.shape[len(self.batch_shape):]) for x in self.inputs)

    def output_bytes(self) -> int:
        """Result bytes per matrix (all results)."""
        return sum(math.prod(tail) * np.dtype(dt).itemsize for tail, dt in self.outputs)

    def pipeline_bytes(self, slots: int = PIPELINE_SLOTS) -> int:
        """Device bytes per matrix of one pipeline chunk, over all ``slots``:
        each slot holds its input and result buffers plus a chunk's scratch."""
        inputs = self.input_elements() * self.dtype.itemsize
        return slots * (inputs + self.output_bytes() + self.scratch_bytes)


def _invert_compute(route: str) -> Callable[[list[Any], list[Any], bool], None]:
    def compute(ins: list[Any], outs: list[Any], owned: bool) -> None:
        # Looked up at call time: tests wrap the module's _invert_chunk.
        _invert_chunk(ins[0], outs[0], outs[1], route, owned=owned)

    return compute


class CudaEngine:
    """Inverts stacks on CUDA device ``index`` (None: CuPy's current device at call time).

    CuPy input always runs on the device that holds it.
    """

    name = "cuda"

    def __init__(self, index: int | None = None) -> None:
        self.index = index
        self._lock = threading.Lock()
        self._staging: dict[int, _Staging] = {}  # device id -> cached staging set

    def __repr__(self) -> str:
        return f"CudaEngine({self.index!r})"

    def clear_cache(self) -> None:
        """Release the cached pinned staging buffers and streams."""
        with self._lock:
            self._staging.clear()

    def invert(self, op: Operand, *, route: str | None = None) -> tuple[Any, Any]:
        """Return ``(inverse, info)`` for a validated operand.

        ``route`` overrides :func:`gpuinv._dispatch.cuda_route` (for tests
        and benchmarks).
        """
        route = route or cuda_route(op.n, op.dtype)
        n, dtype = op.n, op.dtype
        if op.empty:
            return self.empty_results(op.backend, op.array, op.batch_shape,
                                      [((n, n), dtype), ((), np.dtype(np.int32))])
        work = ChunkWork(op.batch_shape, dtype, (op.array,),
                         (((n, n), dtype), ((), np.dtype(np.int32))), _invert_compute(route),
                         scratch_bytes_per_matrix(n, dtype.itemsize, route),
                         f"inverting one {n}x{n} {dtype} matrix")
        out, info = self.run_chunks(work)
        return out, info

    def empty_results(self, backend: str, like: Any, batch_shape: tuple[int, ...],
                      outputs: list[tuple[tuple[int, ...], np.dtype]]) -> list[Any]:
        """Results of an empty stack, zero-filled (info 0), as NumPy or on ``like``'s device."""
        if backend == "numpy":
            return [np.zeros(batch_shape + tail, dtype=dt) for tail, dt in outputs]
        import cupy

        with like.device:
            return [cupy.zeros(batch_shape + tail, dtype=dt) for tail, dt in outputs]

    def run_chunks(self, work: ChunkWork) -> list[Any]:
        """Run ``work`` over its whole batch; return its results.

        CuPy inputs: on the device that holds them, on the current stream,
        without any host wait. NumPy inputs: through the pinned pipeline on
        this engine's device; NumPy results.
        """
        if type(work.inputs[0]).__module__.startswith("cupy"):
            return self._run_cupy(work)
        return self._run_numpy(work)

    # -- CuPy input --------------------------------------------------------

    def _run_cupy(self, work: ChunkWork) -> list[Any]:
        import cupy

        with work.inputs[0].device:
            device = work.inputs[0].device.id
            results: list[Any] = []
            try:
                for tail, dt in work.outputs:
                    results.append(cupy.empty(work.batch_shape + tail, dtype=dt))
            except cupy.cuda.memory.OutOfMemoryError:
                results.clear()
                needed = work.count * work.output_bytes()
                raise _memory_error("the result", needed, _available_bytes(), device) from None
            flat = [r.reshape((-1,) + tail) for r, (tail, _) in zip(results, work.outputs)]
            done = 0

            def run(count: int) -> None:
                nonlocal done
                for chunk in plan_chunks(work.batch_shape, count):
                    if chunk.stop <= done:
                        continue  # finished before an out-of-memory retry
                    part = slice(chunk.start, chunk.stop)
                    work.compute([x[chunk.index] for x in work.inputs],
                                 [f[part] for f in flat], False)
                    done = chunk.stop

            try:
                self._with_retry(run, work, work.scratch_bytes, config.cuda_chunk_bytes, device)
            except BaseException:
                # The traceback keeps this frame alive (a notebook keeps the
                # last one for good): drop the results so their memory goes now.
                results.clear()
                flat.clear()
                raise
            return results

    @staticmethod
    def _with_retry(run: Any, work: ChunkWork, per_matrix: int, chunk_bytes: int,
                    device: int) -> None:
        """Call ``run(count)``, halving ``count`` after each out-of-memory error.

        No chunk holds more than the batch, so halving starts from there.
        """
        import cupy

        itemsize, elements = work.dtype.itemsize, work.input_elements()

        def plan() -> int:
            return max_chunk_count(1, itemsize, per_matrix, _available_bytes(), chunk_bytes,
                                   elements=elements)

        count = min(plan(), work.count)
        while True:
            if count < 1:
                raise _memory_error(work.what, per_matrix, _available_bytes(), device)
            try:
                run(count)
                return
            except cupy.cuda.memory.OutOfMemoryError:
                failed = count == 1
            # Outside the except block, so the error's traceback (and the
            # scratch arrays its frames hold) is released before retrying.
            if failed:
                raise _memory_error(work.what, per_matrix, _available_bytes(), device)
            count = max(1, min(count // 2, plan()))

    # -- NumPy input: the host<->device pipeline -----------------------------

    def _run_numpy(self, work: ChunkWork) -> list[np.ndarray]:
        import cupy

        results = [np.empty(work.batch_shape + tail, dtype=dt) for tail, dt in work.outputs]
        device = cupy.cuda.Device(self.index) if self.index is not None else cupy.cuda.Device()
        with device:
            chunk_bytes = min(config.cuda_chunk_bytes, PIPELINE_CHUNK_BYTES)
            progress = [0]  # matrices finished, in C order

            def run(count: int) -> None:
                self._pipeline(work, results, count, progress, device.id)

            self._with_retry(run, work, work.pipeline_bytes(), chunk_bytes, device.id)
        return results

    def _acquire_staging(self, device: int, slots: int,
                         sizes: tuple[int, ...]) -> tuple[_Staging, list[int]]:
        sizes = tuple(_staging_size(s) for s in sizes)
        with self._lock:
            cached = self._staging.pop(device, None)
        if cached is not None:
            mapping = cached.assign(slots, sizes)
            if mapping is not None:
                return cached, mapping
        staging = _Staging(slots, sizes)
        return staging, list(range(len(sizes)))

    def _release_staging(self, device: int, staging: _Staging) -> None:
        with self._lock:
            current = self._staging.get(device)
            # Bounded: one set per device, the largest seen; its size is
            # capped by PIPELINE_SLOTS * PIPELINE_CHUNK_BYTES per buffer kind.
            if current is None or current.nbytes < staging.nbytes:
                self._staging[device] = staging

    def _pipeline(self, work: ChunkWork, results: list[np.ndarray], count: int,
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
        slots = min(PIPELINE_SLOTS, total)
        staging, mapping = self._acquire_staging(
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
                _host_copy(buf[: m * in_bytes[j]].view(dtype).reshape(view.shape), view)
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
                _host_copy(flat[j][chunk.start : chunk.stop], buf.view(dt).reshape((m,) + tail))
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
            self._release_staging(device, staging)
