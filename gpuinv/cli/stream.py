"""The chunk loop that ``invert`` and ``solve`` share.

A stack is read, computed and written one chunk at a time, so a file larger
than memory streams through: each chunk goes through the public API
(``gpuinv.inv_ex`` or ``gpuinv.solve_ex``), and its results, codes and rcond
go into the memory-mapped result files.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .failures import Tally
from .files import ResultFiles
from .progress import make_progress

__all__ = ["Compute", "stream", "rate"]

#: One chunk's computation: batch index -> (results, info, rcond or None).
Compute = Callable[[Any], tuple[np.ndarray, Any, Any]]


def stream(
    compute: Compute,
    files: ResultFiles,
    tally: Tally,
    *,
    batch_shape: tuple[int, ...],
    per_chunk: int,
    on_singular: str,
    quiet: bool,
) -> float:
    """Compute and write every chunk of the batch; return the seconds it took.

    ``files`` must be open. Results whose info is not 0 are set to NaN
    unless ``on_singular`` is ``"ignore"``. Progress goes to stderr.
    """
    from .._chunks import plan_chunks

    progress = make_progress(math.prod(batch_shape), quiet, sys.stderr)
    start = time.perf_counter()
    with files.writing(progress):
        for chunk in plan_chunks(batch_shape, per_chunk):
            result, info, rcond = compute(chunk.index)
            info = np.asarray(info)
            if on_singular != "ignore" and info.size and (info != 0).any():
                # Under "raise" too: a file never carries a garbage result
                # that looks valid; info says which ones failed.
                result[info != 0] = np.nan
            rc = None if rcond is None else np.asarray(rcond)
            files.write(chunk.index, result, info, rc)
            tally.add(info, rc, chunk.start)
            progress.update(chunk.count)
    files.commit()
    return time.perf_counter() - start


def rate(total: int, elapsed: float, unit: str) -> str:
    """``, 1.23e+04 matrices/s`` for the summary line, or nothing when not measurable."""
    return f", {total / elapsed:.3g} {unit}/s" if elapsed > 0 and total else ""
