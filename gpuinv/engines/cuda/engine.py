"""The CUDA engine: the seam (``inverse``, ``solve``) and the chunk loop.

:class:`CudaEngine` turns a request into a :class:`.planning.ChunkWork`
(inputs, results, and the math of one chunk, :func:`_invert_compute`,
:func:`_inverse_compute` or :func:`_solve_compute`) and runs it over the
whole batch with :meth:`CudaEngine.run_chunks`: CuPy input chunk by chunk
on the device that holds it, NumPy input through the pinned pipeline
(:mod:`.pipeline`). Results, ``info`` and ``rcond`` are written into each
chunk's slice of the whole batch, so the batch indices of a singular report
are global. Within a chunk nothing waits for the device.

rcond: where the inverse runs on our own kernels (the general, symmetric
and Hermitian inverse at ``n <= KERNEL_MAX_N``, and the positive definite
one at ``n <= CHOL_MAX_N``), their rcond variant writes it in the same
launch, from the A and X each thread or lane group already holds: no extra
pass over the stack. Elsewhere, the two 1-norms of
:func:`gpuinv._numerics.rcond_from_inverse` as CuPy reductions over the
chunk of input (cast to the compute dtype) and its inverse. A solve's rcond
needs the inverse of ``a``, on the same route as ``inv_ex``'s.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..._chunks import plan_chunks
from ..._config import config
from ..._errors import INFO_NONFINITE
from ..._normalize import Operand
from ..._numerics import rcond_from_inverse
from ..._request import Request
from . import arrays, general, pipeline, planning, routes, structured
from .pipeline import Staging, staging_size
from .planning import ChunkWork

__all__ = ["CudaEngine"]

_INT32 = np.dtype(np.int32)


def _real(dtype: np.dtype) -> np.dtype:
    return np.dtype(dtype).type(0).real.dtype


def _invert_compute(route: str) -> Callable[[list[Any], list[Any], bool], None]:
    """The cheapest request's chunk: the general inverse, no rcond."""
    def compute(ins: list[Any], outs: list[Any], owned: bool) -> None:
        # Looked up at call time: tests wrap general.invert_chunk.
        general.invert_chunk(ins[0], outs[0], outs[1], route, owned=owned)

    return compute


def _write_rcond(full: Any, inverse: Any, info: Any, rc: Any) -> None:
    import cupy

    a = arrays.as_stack(full, inverse.dtype, inverse.shape[0])
    cupy.copyto(rc, rcond_from_inverse(a, inverse, info))


def _inverse_compute(structure: str, lower: bool, route: str,
                     rcond: bool) -> Callable[[list[Any], list[Any], bool], None]:
    def compute(ins: list[Any], outs: list[Any], owned: bool) -> None:
        rc = outs[2] if rcond else None
        full, written = structured.inverse_chunk(ins[0], outs[0], outs[1], structure, lower, route, rc)
        if rcond and not written:
            _write_rcond(full, outs[0], outs[1], rc)

    return compute


def _solve_compute(structure: str, lower: bool, route: str,
                   rcond: bool) -> Callable[[list[Any], list[Any], bool], None]:
    def compute(ins: list[Any], outs: list[Any], owned: bool) -> None:
        import cupy

        out, info = outs[0], outs[1]
        full = structured.solve_chunk(ins[0], ins[1], out, info, structure, lower)
        m, n = out.shape[0], out.shape[1]
        dtype = out.dtype
        if rcond:  # the condition of a: its inverse, on the same route as inv_ex's
            inverse = cupy.empty((m, n, n), dtype=dtype)
            inverse_info = cupy.empty(m, dtype=np.int32)
            rc = cupy.empty(m, dtype=outs[2].dtype)
            read, written = structured.inverse_chunk(full, inverse, inverse_info, structure, lower, route, rc)
            if not written:
                _write_rcond(read, inverse, info, rc)
            else:  # the kernel's rcond follows its own info; the solve's is the one reported
                real = rc.dtype.type
                rc = cupy.where(info > 0, real(0), rc)
                rc = cupy.where(info == INFO_NONFINITE, real(np.nan), rc)
            cupy.copyto(outs[2], rc)

    return compute


def _outputs(tail: tuple[int, ...], dtype: np.dtype,
             rcond: bool) -> tuple[tuple[tuple[int, ...], np.dtype], ...]:
    outputs = ((tail, dtype), ((), _INT32))
    return outputs + (((), _real(dtype)),) if rcond else outputs


class CudaEngine:
    """Inverts and solves stacks on CUDA device ``index`` (None: CuPy's current device at call time).

    CuPy input always runs on the device that holds it.
    """

    name = "cuda"
    #: Computes in device memory; takes NumPy input through its own pipeline.
    memory = "device"

    def __init__(self, index: int | None = None) -> None:
        self.index = index
        self._lock = threading.Lock()
        self._staging: dict[int, Staging] = {}  # device id -> cached staging set

    def __repr__(self) -> str:
        return f"CudaEngine({self.index!r})"

    def clear_cache(self) -> None:
        """Release the cached pinned staging buffers and streams."""
        with self._lock:
            self._staging.clear()

    # -- the seam ------------------------------------------------------------

    def inverse(self, request: Request, op: Operand, *,
                route: str | None = None) -> tuple[Any, Any, Any]:
        """``(inverse, info, rcond or None)`` for a validated operand.

        NumPy input returns NumPy arrays, CuPy input CuPy arrays on its
        device. ``route`` overrides :func:`.routes.cuda_route` for the LU
        inverses (tests and benchmarks).
        """
        n, dtype = op.n, op.dtype
        structure, rcond = request.structure, request.rcond
        outputs = _outputs((n, n), dtype, rcond)
        if op.empty:
            results = self.empty_results(op.backend, op.array, op.batch_shape, list(outputs))
            if rcond:
                results[2][...] = 1
            return results[0], results[1], results[2] if rcond else None
        route = route or routes.cuda_route(n, dtype)
        if structure == "general" and not rcond:
            work = ChunkWork(op.batch_shape, dtype, (op.array,), outputs, _invert_compute(route),
                             planning.scratch_bytes_per_matrix(n, dtype.itemsize, route),
                             f"inverting one {n}x{n} {dtype} matrix")
            inverse, info = self.run_chunks(work)
            return inverse, info, None
        work = ChunkWork(op.batch_shape, dtype, (op.array,), outputs,
                         _inverse_compute(structure, request.lower, route, rcond),
                         planning.scratch_bytes(n, 0, dtype.itemsize, structure, route,
                                                rcond=rcond, solve=False),
                         f"inverting one {n}x{n} {dtype} matrix (assume_a={structure!r})")
        results = self.run_chunks(work)
        return results[0], results[1], results[2] if rcond else None

    def solve(self, request: Request, op: Operand, b: Any) -> tuple[Any, Any, Any]:
        """``(x, info, rcond or None)`` with ``a @ x = b``.

        ``op.array`` and ``b`` are broadcast to the batch ``op.batch_shape``;
        ``b`` is (batch..., n, k). Both are chunked with the same chunk index,
        so each chunk of ``b`` is the right-hand sides of that chunk of ``a``.
        """
        n, k = op.n, b.shape[-1]
        dtype = op.dtype
        structure, rcond = request.structure, request.rcond
        outputs = _outputs((n, k), dtype, rcond)
        if op.empty or k == 0:
            results = self.empty_results(op.backend, op.array, op.batch_shape, list(outputs))
            rc = None
            if rcond:
                if op.empty:
                    results[2][...] = 1
                    rc = results[2]
                else:
                    rc = self.inverse(request, op)[2]
            return results[0], results[1], rc
        route = routes.cuda_route(n, dtype)
        work = ChunkWork(op.batch_shape, dtype, (op.array, b), outputs,
                         _solve_compute(structure, request.lower, route, rcond),
                         planning.scratch_bytes(n, k, dtype.itemsize, structure, route,
                                                rcond=rcond, solve=True),
                         f"solving one {n}x{n} {dtype} system with {k} right-hand sides "
                         f"(assume_a={structure!r})")
        results = self.run_chunks(work)
        return results[0], results[1], results[2] if rcond else None

    # -- the chunk loop --------------------------------------------------------

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
        return pipeline.run_numpy(self, work)

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
                raise planning.memory_error("the result", needed, planning.available_bytes(),
                                            device) from None
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
                planning.with_retry(run, work, work.scratch_bytes, config.cuda_chunk_bytes, device)
            except BaseException:
                # The traceback keeps this frame alive (a notebook keeps the
                # last one for good): drop the results so their memory goes now.
                results.clear()
                flat.clear()
                raise
            return results

    # -- pinned staging, cached per device ---------------------------------------

    def acquire_staging(self, device: int, slots: int,
                        sizes: tuple[int, ...]) -> tuple[Staging, list[int]]:
        """A pinned staging set for ``slots`` slots of buffers of ``sizes``: the
        cached one where it fits and is idle, else a new one; and which of its
        buffers serves each size."""
        sizes = tuple(staging_size(s) for s in sizes)
        with self._lock:
            cached = self._staging.pop(device, None)
        if cached is not None:
            mapping = cached.assign(slots, sizes)
            if mapping is not None:
                return cached, mapping
        staging = Staging(slots, sizes)
        return staging, list(range(len(sizes)))

    def release_staging(self, device: int, staging: Staging) -> None:
        """Give an idle staging set back: cached if it is the largest seen."""
        with self._lock:
            current = self._staging.get(device)
            # Bounded: one set per device, the largest seen; its size is
            # capped by PIPELINE_SLOTS * PIPELINE_CHUNK_BYTES per buffer kind.
            if current is None or current.nbytes < staging.nbytes:
                self._staging[device] = staging
