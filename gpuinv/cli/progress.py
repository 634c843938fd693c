"""Progress of a streamed ``invert`` or ``solve``, on stderr.

tqdm on a terminal when it is installed, a built-in bar on a terminal
without it, plain lines (one per tenth) for logs and pipes, and nothing
under ``--quiet``.
"""

from __future__ import annotations

import time
from typing import TextIO

__all__ = ["make_progress"]


class _Progress:
    """Progress of ``total`` matrices; subclasses draw it."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.start = time.perf_counter()

    def update(self, k: int) -> None:
        self.done += k

    def close(self) -> None:
        pass


class _TqdmProgress(_Progress):
    def __init__(self, total: int, stream: TextIO) -> None:
        super().__init__(total, stream)
        from tqdm import tqdm

        # k/M suffixes only where counts are large enough to need them
        self.bar = tqdm(
            total=total, unit="mat", unit_scale=total >= 10_000, file=stream, desc="inverting"
        )

    def update(self, k: int) -> None:
        super().update(k)
        self.bar.update(k)

    def close(self) -> None:
        self.bar.close()


class _BarProgress(_Progress):
    """A one-line bar redrawn with carriage returns, for terminals without tqdm."""

    width = 30

    def update(self, k: int) -> None:
        super().update(k)
        frac = self.done / self.total if self.total else 1.0
        filled = int(frac * self.width)
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        self.stream.write(
            f"\rinverting [{'#' * filled}{'.' * (self.width - filled)}] {frac:6.1%} "
            f"{self.done}/{self.total} matrices, {rate:.3g}/s"
        )
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


class _LineProgress(_Progress):
    """Plain lines for logs and pipes: one per tenth of the work."""

    def __init__(self, total: int, stream: TextIO) -> None:
        super().__init__(total, stream)
        self.next_tenth = 1

    def update(self, k: int) -> None:
        super().update(k)
        tenth = self.done * 10 // self.total if self.total else 10
        if tenth >= self.next_tenth:
            self.next_tenth = tenth + 1
            self.stream.write(f"inverted {self.done} of {self.total} matrices ({tenth * 10}%)\n")
            self.stream.flush()


def make_progress(total: int, quiet: bool, stream: TextIO) -> _Progress:
    """tqdm on a terminal when installed, else a built-in bar; lines when not a TTY."""
    if quiet:
        return _Progress(total, stream)
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        try:
            return _TqdmProgress(total, stream)
        except ImportError:
            return _BarProgress(total, stream)
    return _LineProgress(total, stream)
