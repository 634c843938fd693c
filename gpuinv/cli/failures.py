"""Counting and reporting the matrices that could not be inverted (or solved).

The summary names the first :data:`LISTED` batch indices of each kind, so a
file of millions of matrices still reports in a few lines; the info file
written beside the result holds every code.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import numpy as np

from .errors import EXIT_FAILED, EXIT_OK

__all__ = ["LISTED", "Failures", "IllConditioned", "Tally", "singular_name", "report"]

#: How many failing indices the summary lists per kind.
LISTED = 10


def _at(count: int, first: list[Any]) -> str:
    """``at batch indices [...]``, or ``first at ...`` when more than those listed failed."""
    listed = ", ".join(str(i) for i in first)
    more = ", ..." if count > len(first) else ""
    return f"{'first at' if more else 'at'} batch indices [{listed}{more}]"


class Failures:
    """Counts and first batch indices of singular and non-finite matrices."""

    def __init__(self, batch_shape: tuple[int, ...], singular: str = "singular") -> None:
        self.batch_shape = batch_shape
        self.singular = singular  # how codes > 0 read: "not positive definite" for Cholesky
        self.count = {"singular": 0, "non-finite": 0}
        self.first: dict[str, list[Any]] = {"singular": [], "non-finite": []}

    def add(self, info: np.ndarray, start: int) -> None:
        """Count the info codes of one chunk whose first matrix is flat index ``start``."""
        flat = info.reshape(-1)
        for kind, mask in (("singular", flat > 0), ("non-finite", flat < 0)):
            where = np.flatnonzero(mask)
            self.count[kind] += where.size
            room = LISTED - len(self.first[kind])
            for f in where[:room]:
                self.first[kind].append(self._index(start + int(f)))

    def _index(self, flat: int) -> Any:
        if len(self.batch_shape) == 1:
            return flat
        if not self.batch_shape:
            return ()
        return tuple(int(i) for i in np.unravel_index(flat, self.batch_shape))

    @property
    def total(self) -> int:
        return sum(self.count.values())

    def lines(self) -> list[str]:
        out = []
        for kind in ("singular", "non-finite"):
            c = self.count[kind]
            name = self.singular if kind == "singular" else kind
            out.append(f"{name}: {c}, {_at(c, self.first[kind])}" if c else f"{name}: 0")
        return out


class IllConditioned:
    """Count and first batch indices of matrices with info 0 and rcond < eps."""

    def __init__(self, batch_shape: tuple[int, ...], eps: float) -> None:
        self.failures = Failures(batch_shape)
        self.eps = eps

    def add(self, info: np.ndarray, rcond: np.ndarray, start: int) -> None:
        bad = ((info == 0) & (rcond < self.eps)).astype(np.int32)
        self.failures.add(bad, start)  # counted as "singular" (code > 0)

    def line(self) -> str:
        c = self.failures.count["singular"]
        head = f"ill-conditioned (rcond < eps = {self.eps:.3g}): {c}"
        return f"{head}, {_at(c, self.failures.first['singular'])}" if c else head


def singular_name(assume_a: str) -> str:
    """How the summary names info > 0: a Cholesky route fails on "not positive definite"."""
    from .._numerics import STRUCTURES

    return "not positive definite" if STRUCTURES.get(assume_a) == "positive definite" else "singular"


class Tally:
    """What a streamed run found: the failures and, with ``--rcond``, the ill-conditioned."""

    def __init__(
        self, batch_shape: tuple[int, ...], assume_a: str, dtype: np.dtype, rcond: bool
    ) -> None:
        self.failures = Failures(batch_shape, singular_name(assume_a))
        # eps of the result's real type: rcond is real even for complex matrices
        eps = float(np.finfo(np.dtype(dtype).type(0).real.dtype).eps)
        self.ill = IllConditioned(batch_shape, eps) if rcond else None

    def add(self, info: np.ndarray, rcond: np.ndarray | None, start: int) -> None:
        if self.ill is not None and rcond is not None:
            self.ill.add(info, rcond, start)
        self.failures.add(info, start)

    def lines(self) -> list[str]:
        return self.failures.lines() + ([self.ill.line()] if self.ill is not None else [])


def report(
    out: TextIO, tally: Tally, *, quiet: bool, on_singular: str, summary: str, wrote: str,
    error: str,
) -> int:
    """Print the summary, the failures and the files written; return the exit code.

    Under ``--on-singular raise`` a run with failures prints ``error`` on
    stderr (even with ``--quiet``) and exits 1; the files are written anyway.
    """
    if not quiet:
        print(summary, file=out)
        for line in tally.lines():
            print(line, file=out)
        print(wrote, file=out)
    if tally.failures.total and on_singular == "raise":
        print(error, file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
