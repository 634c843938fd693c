"""Index safety of the chunk planner past 2**31 elements and past 65535 (issue 5).

Nothing here allocates a large stack: the planner is integer arithmetic on
shapes, and the views it indexes are zero-stride broadcasts of one matrix.
Every chunk is checked to be the contiguous C-order range ``start:stop`` of
the flat batch that ``a[chunk.index]`` selects.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from gpuinv._chunks import Chunk, _unravel, chunk_count, plan_chunks
from gpuinv._normalize import normalize

BIG_SHAPES = [
    (2**33,),
    (70000, 40000),
    (3, 2**31 + 7),
    (65536, 65537),
    (2**31 + 1, 1, 3),
    (1, 2**40),
    (5, 7, 65535, 65535),
    (2**20, 2**20, 3),
]
MAX_COUNTS = [1, 7, 65535, 65536, 2**20, 2**31 - 1, 2**31 + 5, 2**45]


def ravel(index, shape):
    """C-order flat position of a multi-index, in Python ints (exact)."""
    flat = 0
    for i, d in zip(index, shape):
        flat = flat * d + i
    return flat


def check_chunk(chunk: Chunk, shape, max_count):
    """The chunk's index selects exactly the flat range start:stop."""
    assert isinstance(chunk.start, int) and isinstance(chunk.stop, int)
    assert 1 <= chunk.count <= max_count
    index = chunk.index
    ints = [i for i in index if not isinstance(i, slice)]
    slices = [i for i in index if isinstance(i, slice)]
    # Leading axes fixed to ints, then one slice, then the trailing axes whole.
    assert len(slices) == (1 if shape else 0)
    assert all(isinstance(i, int) for i in ints)
    if not shape:
        assert (chunk.start, chunk.stop) == (0, 1)
        return
    axis = len(ints)
    assert index[axis] is slices[0] and len(index) == axis + 1
    s = slices[0]
    assert s.step is None and 0 <= s.start < s.stop <= shape[axis]
    for i, d in zip(ints, shape):
        assert 0 <= i < d
    trailing = shape[axis + 1 :]
    first = ravel(tuple(ints) + (s.start,) + (0,) * len(trailing), shape)
    last = ravel(tuple(ints) + (s.stop - 1,) + tuple(d - 1 for d in trailing), shape)
    assert first == chunk.start
    assert last + 1 == chunk.stop
    assert chunk.count == (s.stop - s.start) * math.prod(trailing)


@pytest.mark.parametrize("shape", BIG_SHAPES, ids=str)
@pytest.mark.parametrize("max_count", MAX_COUNTS)
def test_big_batches(shape, max_count):
    total = math.prod(shape)
    expected_chunks = chunk_count(shape, max_count)
    assert expected_chunks >= -(-total // max_count)  # at least enough to hold everything
    chunks = plan_chunks(shape, max_count)
    # The first chunks: contiguous from 0.
    head = list(itertools.islice(chunks, 2000))
    assert head[0].start == 0
    for c in head:
        check_chunk(c, shape, max_count)
    for a, b in zip(head, head[1:]):
        assert a.stop == b.start
    if expected_chunks <= 200000:
        # Walk them all: coverage up to the last element, count as promised.
        stop, seen = head[-1].stop, len(head)
        rng = np.random.default_rng(seen)
        sample = set(rng.integers(seen, max(expected_chunks, seen + 1), 200).tolist())
        for k, c in enumerate(chunks, start=seen):
            assert c.start == stop
            stop = c.stop
            if k in sample:
                check_chunk(c, shape, max_count)
            seen += 1
        assert stop == total
        assert seen == expected_chunks
    else:
        assert len(head) == 2000


@pytest.mark.parametrize("shape", BIG_SHAPES, ids=str)
def test_chunks_index_a_zero_stride_view(shape):
    # A real ndarray of the big shape, backed by one 2x2 matrix.
    a = np.broadcast_to(np.eye(2), shape + (2, 2))
    op = normalize(a)
    assert op.count == math.prod(shape)
    assert op.nbytes == math.prod(shape) * 4 * 8
    assert op.batch_shape == shape
    for max_count in (3, 65535, 2**31 + 5):
        for c in itertools.islice(plan_chunks(shape, max_count), 50):
            view = a[c.index]
            assert view.shape[-2:] == (2, 2)
            assert math.prod(view.shape[:-2]) == c.count


def test_unravel_is_exact_past_int64():
    shape = (2**40, 3, 2**31 + 7, 65537)
    total = math.prod(shape)
    assert total > 2**63  # past numpy's intp
    for flat in (0, 1, 2**31, 2**32 + 5, total // 3, total - 1):
        idx = _unravel(flat, shape)
        assert ravel(idx, shape) == flat
        assert all(0 <= i < d for i, d in zip(idx, shape))
    small = (3, 4, 5)
    for flat in range(60):
        assert _unravel(flat, small) == tuple(int(i) for i in np.unravel_index(flat, small))


@pytest.mark.parametrize(
    "shape", [(), (0,), (5, 0, 3), (1,), (7,), (2, 5), (7, 1, 3), (4, 4, 4, 4)], ids=str
)
@pytest.mark.parametrize("max_count", [1, 2, 3, 5, 16, 1000])
def test_small_batches_exhaustively(shape, max_count):
    total = math.prod(shape)
    chunks = list(plan_chunks(shape, max_count))
    assert len(chunks) == chunk_count(shape, max_count)
    if total == 0:
        assert chunks == []
        return
    covered = []
    for c in chunks:
        check_chunk(c, shape, max_count)
        covered.extend(range(c.start, c.stop))
    assert covered == list(range(total))
    # And against real arrays: the view holds exactly those matrices.
    a = np.arange(total * 4, dtype=float).reshape(shape + (2, 2))
    flat = a.reshape(-1, 2, 2)
    for c in chunks:
        np.testing.assert_array_equal(a[c.index].reshape(-1, 2, 2), flat[c.start : c.stop])


def test_max_count_must_be_positive():
    with pytest.raises(ValueError, match="max_count must be at least 1, got 0"):
        list(plan_chunks((3,), 0))
