"""The dask adapter: every request on dask arrays, one lazy task per block.

Each block of the batch axes runs the shared lower step,
:func:`gpuinv._compute.compute` (normalize, choose the engine, compute, the
policy and the conditioning warning), where the block lives: a NumPy block
on the worker's CPU or GPU, as ``device`` says; a CuPy block on the worker's
GPU. So a ``dask_cuda.LocalCUDACluster`` with one worker per GPU spreads a
stack over every GPU, and a multi-machine cluster over every machine, with
no scheduler of our own. The public functions are never called back.

The graph is built from shapes and ``meta`` alone: nothing runs before
``compute``. Shape, dtype and keyword errors are raised at graph build time.
With ``on_singular="raise"`` the block that meets a failed matrix raises
:class:`gpuinv.SingularMatrixError` when it is computed, naming global batch
indices (the block's offset is added), so blocks keep streaming through
memory instead of waiting for a global check. ``check_cond`` warns the same
way, per block, with global indices, where the block is computed.

A solve's ``a`` and ``b`` may be dask arrays or one of them a NumPy (CuPy)
array or array-like (made a one-block dask array). ``b`` is broadcast
against ``a``'s batch (a 1-D ``b`` as one column, dropped again at the
end), then both are rechunked to the same batch chunks: on each batch axis
the chunks of the operand that has the axis (``a``'s where both do), so
a ``b`` shared by every matrix is not copied per block beyond its
broadcast view.

This module is imported only when a dask array reaches the call path.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array

from ._compute import compute
from ._dtypes import result_dtype
from ._normalize import check_stack_shape, solve_dtype, solve_shapes
from ._policy import Block
from ._request import Request

__all__ = ["run_dask"]


def _known(x: da.Array) -> None:
    if any(math.isnan(c) for c in x.shape):
        raise ValueError(
            "dask array with unknown chunk sizes: call a.compute_chunk_sizes() first, "
            "so that global batch indices and the matrix order are known"
        )


def _whole_matrices(x: da.Array, batch_chunks: tuple[tuple[int, ...], ...]) -> da.Array:
    """``x`` with whole matrices per block and the given batch chunks.

    A matrix must sit whole in one block. The batch chunks are the caller's
    (they set the parallelism and block memory), except where a solve's
    operands must agree.
    """
    chunks = batch_chunks + ((x.shape[-2],), (x.shape[-1],))
    return x if x.chunks == chunks else x.rechunk(chunks)


def _prepare_inverse(a: da.Array) -> tuple[da.Array, np.dtype]:
    """Validate like :func:`gpuinv._normalize.normalize` and merge the matrix axes."""
    if a.ndim >= 2:
        _known(a)
    check_stack_shape(a.shape)
    dtype = result_dtype(a.dtype)
    return _whole_matrices(a, a.chunks[:-2]), dtype


def _as_dask(x: Any) -> da.Array:
    if isinstance(x, da.Array):
        return x
    return da.asarray(x)  # one block; a NumPy or CuPy array keeps its kind


def _prepare_solve(a: Any, b: Any) -> tuple[da.Array, da.Array, bool, np.dtype]:
    """Validate like :func:`gpuinv._normalize.normalize_solve`; broadcast and align the blocks."""
    a, b = _as_dask(a), _as_dask(b)
    if a.ndim >= 2:
        _known(a)
    _known(b)
    check_stack_shape(a.shape)
    result_dtype(a.dtype)  # a's dtype is named first, as normalize_solve does
    if b.ndim == 0:
        solve_shapes(tuple(a.shape), ())  # raises the ValueError
    dtype = solve_dtype(a.dtype, b.dtype)
    batch, n, k, vector = solve_shapes(tuple(a.shape), tuple(b.shape))
    if vector:
        b = b[:, None]
    nb = len(batch)
    # On each batch axis, the chunks of the operand that really has it.
    a_batch, b_batch = a.ndim - 2, b.ndim - 2
    chunks = []
    for axis in range(nb):
        ia, ib = axis - (nb - a_batch), axis - (nb - b_batch)
        if ia >= 0 and a.shape[ia] == batch[axis]:
            chunks.append(a.chunks[ia])
        elif ib >= 0 and b.shape[ib] == batch[axis]:
            chunks.append(b.chunks[ib])
        else:
            chunks.append((batch[axis],))
    a = da.broadcast_to(a, batch + (n, n))
    b = da.broadcast_to(b, batch + (n, k))
    return _whole_matrices(a, tuple(chunks)), _whole_matrices(b, tuple(chunks)), vector, dtype


def _offset(block_info: dict | None, batch_ndim: int) -> tuple[int, ...]:
    if not block_info:  # called outside a graph (dask passes it for every block)
        return (0,) * batch_ndim
    location = block_info[0]["array-location"]
    return tuple(start for start, _ in location[:batch_ndim])


def _block(*blocks: Any, request: Request, batch_shape: tuple[int, ...],
           block_info: dict | None = None) -> Any:
    """The lower step on one block: the result alone, or ``(result, info, rcond)``."""
    where = Block(_offset(block_info, len(batch_shape)), batch_shape)
    b = blocks[1] if len(blocks) > 1 else None
    result, info, rc, _ = compute(request, blocks[0], b, block=where)
    if request.returns_info:
        return result, info, rc
    return result


def run_dask(request: Request, a: Any, b: Any = None) -> tuple[Any, Any, Any]:
    """Lazy ``(result, info, rcond)`` of ``request`` on dask arrays (info, rcond
    None unless the request returns them); see the module docstring."""
    if request.operation == "inverse":
        a, dtype = _prepare_inverse(a)
        operands: tuple[da.Array, ...] = (a,)
        vector = False
        out_chunks = a.chunks
    else:
        a, b, vector, dtype = _prepare_solve(a, b)
        operands = (a, b)
        out_chunks = b.chunks
    batch_shape = tuple(a.shape[:-2])
    ndim = a.ndim
    meta = a._meta
    options = dict(request=request, batch_shape=batch_shape)
    if not request.returns_info:
        result = da.map_blocks(
            _block, *operands, **options, dtype=dtype, chunks=out_chunks,
            meta=meta_from_array(meta, ndim=ndim, dtype=dtype), token=f"gpuinv-{request.operation}",
        )
        return (result[..., 0] if vector else result), None, None
    # Blocks of this intermediate are (result, info, rcond) tuples. It is
    # never computed on its own; its meta only keeps dask from calling the
    # function. One task per block computes every output; the outputs pick
    # their part of it, so computing them together runs each block once.
    triples = da.map_blocks(
        _block, *operands, **options, dtype=object, chunks=out_chunks,
        meta=np.empty((0,) * ndim, dtype=object), token=f"gpuinv-{request.operation}-ex",
    )
    result = triples.map_blocks(
        operator.itemgetter(0), dtype=dtype, chunks=out_chunks,
        meta=meta_from_array(meta, ndim=ndim, dtype=dtype), token="gpuinv-result",
    )
    if vector:
        result = result[..., 0]
    # info and rcond keep two length-1 axes in the blockwise step and drop
    # them by indexing: dropping axes inside map_blocks would have dask
    # concatenate the tuples as if they were nested blocks.
    per_matrix = a.chunks[:-2] + ((1,), (1,))
    info = triples.map_blocks(
        _per_matrix, 1, dtype=np.int32, chunks=per_matrix,
        meta=meta_from_array(meta, ndim=ndim, dtype=np.int32), token="gpuinv-info",
    )[..., 0, 0]
    rc = None
    if request.rcond:
        real = np.dtype(dtype).type(0).real.dtype
        rc = triples.map_blocks(
            _per_matrix, 2, dtype=real, chunks=per_matrix,
            meta=meta_from_array(meta, ndim=ndim, dtype=real), token="gpuinv-rcond",
        )[..., 0, 0]
    return result, info, rc


def _per_matrix(triple: tuple[Any, Any, Any], which: int) -> Any:
    return triple[which][..., None, None]
