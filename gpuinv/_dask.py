"""``inv`` and ``inv_ex`` on dask arrays: one lazy task per block.

Each block of the batch axes is inverted by :func:`gpuinv.inv_ex` where the
block lives (a NumPy block on the worker's CPU or GPU, as ``device`` says; a
CuPy block on the worker's GPU), so a ``dask_cuda.LocalCUDACluster`` with one
worker per GPU spreads a stack over every GPU, and a multi-machine cluster
over every machine, with no scheduler of our own.

The graph is built from shapes and ``meta`` alone: nothing runs before
``compute``. With ``on_singular="raise"`` the block that meets a failed
matrix raises :class:`gpuinv.SingularMatrixError` when it is computed,
naming global batch indices (the block's offset is added), so blocks keep
streaming through memory instead of waiting for a global check.

This module is imported only when a dask array reaches ``inv``/``inv_ex``.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array

from ._device import DeviceLike, parse_device
from ._dtypes import result_dtype
from ._errors import SingularMatrixError, failure_message
from ._normalize import check_stack_shape
from ._policy import check_policy

__all__ = ["dask_inv", "dask_inv_ex"]


def _prepare(a: da.Array) -> tuple[da.Array, np.dtype]:
    """Validate like :func:`gpuinv._normalize.normalize` and merge the matrix axes."""
    if a.ndim >= 2 and any(math.isnan(c) for c in a.shape):
        raise ValueError(
            "dask array with unknown chunk sizes: call a.compute_chunk_sizes() first, "
            "so that global batch indices and the matrix order are known"
        )
    check_stack_shape(a.shape)
    dtype = result_dtype(a.dtype)
    last = (a.ndim - 2, a.ndim - 1)
    if any(len(a.chunks[ax]) > 1 for ax in last):
        # A matrix must sit whole in one block. The batch chunks are kept as
        # the caller chose them: they set the parallelism and block memory.
        a = a.rechunk({ax: -1 for ax in last})
    return a, dtype


def _offset(block_info: dict | None, batch_ndim: int) -> tuple[int, ...]:
    if not block_info:  # called outside a graph (dask passes it for every block)
        return (0,) * batch_ndim
    location = block_info[0]["array-location"]
    return tuple(start for start, _ in location[:batch_ndim])


def _raise_global(info: np.ndarray, offset: tuple[int, ...], shape: tuple[int, ...]) -> None:
    local = np.argwhere(info != 0)
    indices = [tuple(int(i) + o for i, o in zip(idx, offset)) for idx in local]
    stop = tuple(o + s for o, s in zip(offset, info.shape))
    where = ", ".join(f"{o}:{s}" for o, s in zip(offset, stop))
    message = failure_message(info, offset=offset)
    raise SingularMatrixError(
        f"{message} (in the block [{where}] of a batch of shape {shape})", info, indices
    )


def _inv_block(
    block: Any, on_singular: str, device: DeviceLike, shape: tuple[int, ...], block_info=None
) -> Any:
    from ._api import inv_ex
    from ._policy import apply_policy

    inverse, info = inv_ex(block, device=device)
    if on_singular == "raise":
        host = info.get() if hasattr(info, "get") else np.asarray(info)
        if host.size and (host != 0).any():
            _raise_global(host, _offset(block_info, host.ndim), shape)
        return inverse
    return apply_policy(inverse, info, on_singular)


def _inv_ex_block(block: Any, device: DeviceLike) -> tuple[Any, Any]:
    from ._api import inv_ex

    inverse, info = inv_ex(block, device=device)
    return inverse, info


def dask_inv(a: da.Array, *, on_singular: str = "raise", device: DeviceLike = "auto") -> da.Array:
    """Lazy :func:`gpuinv.inv` of a dask array; see that function."""
    check_policy(on_singular)
    parse_device(device)  # a bad device is an error now, not at compute time
    a, dtype = _prepare(a)
    return a.map_blocks(
        _inv_block,
        on_singular,
        device,
        tuple(a.shape[:-2]),
        dtype=dtype,
        meta=meta_from_array(a._meta, ndim=a.ndim, dtype=dtype),
        token="gpuinv-inv",
    )


def dask_inv_ex(a: da.Array, *, device: DeviceLike = "auto"):
    """Lazy :func:`gpuinv.inv_ex` of a dask array: ``InvResult`` of two dask arrays.

    One task per block computes both outputs; ``inverse`` and ``info`` pick
    their half of it, so computing them together runs each block once.
    """
    from ._api import InvResult

    parse_device(device)
    a, dtype = _prepare(a)
    # Blocks of this intermediate are (inverse, info) tuples. It is never
    # computed on its own; its meta only keeps dask from calling the function.
    pairs = a.map_blocks(
        _inv_ex_block,
        device,
        dtype=object,
        meta=np.empty((0,) * a.ndim, dtype=object),
        token="gpuinv-inv-ex",
    )
    inverse = pairs.map_blocks(
        operator.itemgetter(0),
        dtype=dtype,
        meta=meta_from_array(a._meta, ndim=a.ndim, dtype=dtype),
        token="gpuinv-inverse",
    )
    # info keeps two length-1 axes in the blockwise step and drops them by
    # indexing: dropping axes inside map_blocks would have dask concatenate
    # the (inverse, info) tuples as if they were nested blocks.
    info = pairs.map_blocks(
        _info_of_pair,
        dtype=np.int32,
        chunks=a.chunks[:-2] + ((1,), (1,)),
        meta=meta_from_array(a._meta, ndim=a.ndim, dtype=np.int32),
        token="gpuinv-info",
    )[..., 0, 0]
    return InvResult(inverse, info)


def _info_of_pair(pair: tuple[Any, Any]) -> Any:
    return pair[1][..., None, None]
