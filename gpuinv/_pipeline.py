"""The host<->device pipeline's schedule, free of CUDA so that CPU tests check it.

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

from collections.abc import Callable, Iterator
from typing import NamedTuple

__all__ = ["Step", "run_pipeline", "schedule"]


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
