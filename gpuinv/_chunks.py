"""Chunk planning: split a batch into pieces that are views of the input.

Every engine walks a stack chunk by chunk, to bound its scratch memory (the
CPU engine's cache-sized blocks, the GPU's free memory, cuBLAS's batch
limits) and to overlap work. A chunk must be a *view* of the caller's array,
whatever its strides (broadcast, negative, Fortran-ordered), so that no full
copy of the input is ever made, and it must map to one contiguous range of
the C-ordered output.

Both hold for a block that fixes the leading batch axes to single indices,
slices one axis, and takes the trailing batch axes whole. The planner picks
the slicing axis so that a chunk holds at most ``max_count`` matrices.

Everything here is integer arithmetic on shapes: it is tested with batches
far past 2**31 elements without allocating them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

__all__ = ["Chunk", "plan_chunks", "chunk_count"]


class Chunk(NamedTuple):
    """One piece of a batch.

    ``index`` selects the piece from the input (``a[chunk.index]`` has shape
    ``(..., n, n)``) and ``start:stop`` is the same piece in the flattened
    C-ordered batch.
    """

    index: tuple[int | slice, ...]
    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start


def _split(batch_shape: tuple[int, ...], max_count: int) -> tuple[int, int, int]:
    """Return (axis, inner, step): slice ``axis`` by ``step``; ``inner`` is
    the number of matrices per unit of that axis."""
    if max_count < 1:
        raise ValueError(f"max_count must be at least 1, got {max_count}")
    for axis in range(len(batch_shape)):
        inner = math.prod(batch_shape[axis + 1 :])
        if inner <= max_count:
            return axis, inner, max(1, max_count // inner)
    raise AssertionError("unreachable: the last axis has inner size 1")


def chunk_count(batch_shape: tuple[int, ...], max_count: int) -> int:
    """Number of chunks :func:`plan_chunks` yields, without iterating."""
    if math.prod(batch_shape) == 0:
        return 0
    if not batch_shape:
        return 1
    axis, _, step = _split(batch_shape, max_count)
    return math.prod(batch_shape[:axis]) * -(-batch_shape[axis] // step)


def plan_chunks(batch_shape: tuple[int, ...], max_count: int) -> Iterator[Chunk]:
    """Yield chunks of at most ``max_count`` matrices covering the batch in C order.

    Parameters
    ----------
    batch_shape : tuple of int
        The leading axes of a stack of shape ``batch_shape + (n, n)``.
    max_count : int
        The most matrices one chunk may hold (at least 1).

    Examples
    --------
    >>> [tuple(c) for c in plan_chunks((5,), 2)]
    [((slice(0, 2, None),), 0, 2), ((slice(2, 4, None),), 2, 4), ((slice(4, 5, None),), 4, 5)]
    """
    total = math.prod(batch_shape)
    if total == 0:
        return
    if not batch_shape:
        yield Chunk((), 0, 1)
        return
    axis, inner, step = _split(batch_shape, max_count)
    length = batch_shape[axis]
    per_prefix = length * inner
    prefixes = math.prod(batch_shape[:axis])
    for p in range(prefixes):
        prefix = _unravel(p, batch_shape[:axis])
        base = p * per_prefix
        for r0 in range(0, length, step):
            r1 = min(r0 + step, length)
            yield Chunk(prefix + (slice(r0, r1),), base + r0 * inner, base + r1 * inner)


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    # Python ints: exact for any size, unlike np.unravel_index's intp.
    out = []
    for dim in reversed(shape):
        flat, r = divmod(flat, dim)
        out.append(r)
    return tuple(reversed(out))
