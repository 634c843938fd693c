"""The CUDA engine: stacks of matrices inverted and solved on an NVIDIA GPU through CuPy.

The package, one module per job:

==================  ==========================================================
module              owns
==================  ==========================================================
``engine``          :class:`CudaEngine`: the seam (``inverse``, ``solve``),
                    the chunk loop over CuPy input, the pinned staging cache
``routes``          the route choice for (n, dtype, structure), with every
                    threshold and the benchmark that sets it
``planning``        chunk sizes against free device memory, scratch
                    estimates, the out-of-memory retry, :class:`ChunkWork`
``pipeline``        NumPy input: the pinned host<->device pipeline (schedule,
                    staging buffers, threaded host copies)
``general``         the LU inverse of one chunk: gather, route, info, NaN
``structured``      ``assume_a`` for the inverse and the solve of one chunk
``kernel_route``    gpuinv's own NVRTC kernels (gpuinv/kernels)
``cublas``          batched getrf + getri / getrs
``cusolver``        per-matrix getrf + getrs, batched potrf + potrs
``arrays``          device-array helpers the routes share
==================  ==========================================================

Nothing here imports CuPy until a call runs on the GPU.

Synchronization: CuPy input is computed on the device that holds it, on the
current CuPy stream, and never waits for the device (``inv`` syncs once later,
in :func:`gpuinv._policy.apply_policy`). The cuBLAS/cuSOLVER handles are the
ones CuPy caches per device; the current stream is set on them before each use.

Chunks and peak device memory. With s the itemsize of the compute dtype, a
chunk of m matrices of order n needs about m * (2 s n^2 + n^2 + 4 n + 64)
bytes of scratch (:func:`.planning.scratch_bytes_per_matrix`: the gathered copy, the
getri output, the NaN mask, pivots, pointers and info). A chunk holds at most
``gpuinv.config.cuda_chunk_bytes`` of input, fewer than 2^31 elements, and no
more than :data:`.planning.MEMORY_HEADROOM` of the free device memory (driver free
memory plus the CuPy pool's cached free bytes, within the pool's limit). So:

* CuPy input: peak = the result (n^2 s per matrix, plus 4 bytes of info)
  + one chunk's scratch, i.e. at most about 2.1 to 3 times
  ``cuda_chunk_bytes`` on top of the result.
* NumPy input: peak = :data:`.planning.PIPELINE_SLOTS` x (input, output and info device
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
"""

from __future__ import annotations

from .engine import CudaEngine

__all__ = ["CudaEngine"]
