"""Chunk planning for the CUDA engine: pure integer arithmetic, tested on the CPU.

How many matrices one chunk may hold (the device's free memory, the chunk
byte cap, 32-bit element counts, cuBLAS's batch limit), how much device
scratch a chunk of each request needs, and the out-of-memory retry that
halves a chunk. :class:`ChunkWork` describes one call's work for the
engine's chunk loop (:meth:`gpuinv.engines.cuda.CudaEngine.run_chunks`).
The chunks themselves are views of the caller's arrays, planned by
:func:`gpuinv._chunks.plan_chunks`, which the CPU engine shares.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "CUBLAS_MAX_BATCH",
    "MAX_CHUNK_ELEMENTS",
    "MEMORY_HEADROOM",
    "PIPELINE_CHUNK_BYTES",
    "PIPELINE_SLOTS",
    "ChunkWork",
    "available_bytes",
    "available_device_bytes",
    "batch_calls",
    "max_chunk_count",
    "memory_error",
    "pipeline_bytes_per_matrix",
    "scratch_bytes",
    "scratch_bytes_per_matrix",
    "with_retry",
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


def memory_error(what: str, needed: int, available: int, device: int) -> MemoryError:
    return MemoryError(
        f"out of GPU memory on CUDA device {device}: {what} needs {needed} bytes "
        f"({needed / 2**20:.1f} MiB) but about {available} bytes are available; "
        "free device memory, or use device='cpu'"
    )


def available_bytes() -> int:
    """Available bytes on the current device (see :func:`available_device_bytes`)."""
    import cupy

    free, _total = cupy.cuda.runtime.memGetInfo()
    pool = cupy.get_default_memory_pool()
    return available_device_bytes(free, pool.free_bytes(), pool.used_bytes(), pool.get_limit())



class ChunkWork(NamedTuple):
    """What one call computes, chunk by chunk, for :meth:`gpuinv.engines.cuda.CudaEngine.run_chunks`.

    The engine owns the chunking (views of the inputs, planned against the
    device's free memory), the out-of-memory retry with fewer matrices, and
    for NumPy input the pinned host<->device pipeline; ``compute`` owns the
    math of one chunk. Every request of the engine (the inverse, structure,
    rcond and solve) goes through it.

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



def with_retry(run: Callable[[int], None], work: ChunkWork, per_matrix: int, chunk_bytes: int,
               device: int) -> None:
    """Call ``run(count)``, halving ``count`` after each out-of-memory error.

    No chunk holds more than the batch, so halving starts from there.
    """
    import cupy

    itemsize, elements = work.dtype.itemsize, work.input_elements()

    def plan() -> int:
        return max_chunk_count(1, itemsize, per_matrix, available_bytes(), chunk_bytes,
                               elements=elements)

    count = min(plan(), work.count)
    while True:
        if count < 1:
            raise memory_error(work.what, per_matrix, available_bytes(), device)
        try:
            run(count)
            return
        except cupy.cuda.memory.OutOfMemoryError:
            failed = count == 1
        # Outside the except block, so the error's traceback (and the
        # scratch arrays its frames hold) is released before retrying.
        if failed:
            raise memory_error(work.what, per_matrix, available_bytes(), device)
        count = max(1, min(count // 2, plan()))


# --- scratch of the structure, rcond and solve requests ------------------------

#: Matrix-sized (``s n^2``) device temporaries per matrix of a chunk, counted
#: from the code below (see :func:`scratch_bytes`).
#: structured_matrix: the cast, the (conjugated) transpose and two wheres.
_STRUCTURED_TEMPS = 4
#: Per structure, the inverse's own temporaries beyond the engine's chunk
#: inverse: mirrors (a conjugate and two wheres), diagonal's wheres, the
#: triangular route's LU output and mask, Cholesky's copy, identity and mirror.
_INVERSE_TEMPS = {"general": 0, "symmetric": 3, "hermitian": 3, "diagonal": 3,
                  "upper triangular": 2, "lower triangular": 2, "positive definite": 5}
#: rcond: the input chunk cast and reshaped, and |A|, |X| for the norms.
_RCOND_TEMPS = 3
#: Right-hand-side-sized (``s n k``) temporaries of a solve: the cast, the
#: column-major copy the library writes, its conjugate, and the NaN mask's result
#: (the kernel route: the cast or contiguous copy, x, and the NaN mask's result).
_SOLVE_RHS_TEMPS = 4


def _uses_lu_inverse(structure: str) -> bool:
    return structure in ("general", "symmetric", "hermitian", "upper triangular",
                         "lower triangular")


def scratch_bytes(n: int, k: int, itemsize: int, structure: str, route: str, *,
                  rcond: bool, solve: bool) -> int:
    """Estimated device scratch bytes per matrix of one chunk.

    ``k`` is the number of right-hand sides of a solve (ignored otherwise),
    ``route`` the engine's route for the LU inverses
    (:func:`.routes.cuda_route`). Counted from the temporaries the
    routes allocate: see the module's constants.
    """
    matrix = itemsize * n * n
    structured = 0 if structure == "general" else _STRUCTURED_TEMPS * matrix

    def inverse() -> int:
        lu = scratch_bytes_per_matrix(n, itemsize, route) if _uses_lu_inverse(structure) else 0
        small = n * n + 4 * n + 64  # masks, pivots, pointers, info
        return structured + _INVERSE_TEMPS[structure] * matrix + lu + small

    if not solve:
        return inverse() + (_RCOND_TEMPS * matrix if rcond else 0)
    # The factor's copy, the NaN mask, pivots, pointers and info, and b's temporaries.
    total = structured + matrix + n * n + 4 * n + 64 + _SOLVE_RHS_TEMPS * itemsize * n * k
    if rcond:  # the inverse of the chunk, its info, and the norms
        total += matrix + 4 + inverse() + _RCOND_TEMPS * matrix
    return total


