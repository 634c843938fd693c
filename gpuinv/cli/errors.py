"""Exit codes of the ``gpuinv`` command, and the error it reports in one line."""

from __future__ import annotations

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED", "CliError"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: Ctrl-C, as a shell reports a process killed by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A user-facing error: printed on one line, exit code 2."""
