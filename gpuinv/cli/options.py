"""The options that several commands share, each declared once.

``invert`` and ``solve`` take the same output, device, policy, chunk,
numerics and quiet options, worded for what each computes (matrices and
inverses, or systems and solutions); ``bench`` shares ``--device`` and
``--quiet`` with its own help texts.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from .errors import CliError

__all__ = [
    "Command",
    "exit_codes",
    "add_output",
    "add_device",
    "add_quiet",
    "add_streaming",
    "check_streaming",
    "check_assume_a",
]

DEVICE_HELP = "auto (default), cpu, cuda or cuda:N"


@dataclass(frozen=True)
class Command:
    """One subcommand: its name and help texts, its own arguments, and its body.

    ``run(args, out)`` returns the exit code; ``main`` builds every
    subparser from these.
    """

    name: str
    help: str
    run: Callable[[argparse.Namespace, TextIO], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    description: str | None = None
    epilog: str | None = None


def exit_codes(items: str = "matrices", results: str | None = None) -> str:
    """The exit-code epilog of a parser; with ``results``, that of a streaming command."""
    if results is None:
        failed = f"1 {items} failed under --on-singular raise"
    else:
        failed = (f"1 {items} failed under --on-singular raise (the whole file is still "
                  f"written, failed {results} as NaN)")
    return f"exit codes: 0 success; {failed}; 2 usage or input error"


def add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the .npy file to write")


def add_device(p: argparse.ArgumentParser, help: str = DEVICE_HELP) -> None:
    p.add_argument("--device", default="auto", help=help)


def add_quiet(p: argparse.ArgumentParser, help: str = "no progress and no summary") -> None:
    p.add_argument("-q", "--quiet", action="store_true", help=help)


def add_streaming(p: argparse.ArgumentParser, *, item: str, items: str, result: str) -> None:
    """``--device``, ``--on-singular``, ``--chunk``, the numerics options and ``--quiet``.

    ``item``/``items``/``result`` word the help: "matrix", "matrices",
    "inverse" for ``invert``; "system", "systems", "solution" for ``solve``.
    """
    add_device(p)
    p.add_argument(
        "--on-singular",
        choices=("raise", "nan", "ignore"),
        default="raise",
        help=f"raise (default): exit 1 if any {item} failed, its {result} NaN; nan: NaN, exit 0; "
        "ignore: keep what the computation produced, exit 0",
    )
    p.add_argument("--chunk", type=int, metavar="N", help=f"{items} per chunk (default: ~64 MiB)")
    p.add_argument("--rcond", action="store_true",
                   help="also write each matrix's reciprocal condition number (1-norm) to OUT's "
                   "stem + .rcond.npy and count the ill-conditioned ones (rcond < eps)")
    p.add_argument("--assume-a", default="general", metavar="STRUCTURE",
                   help="matrix structure, SciPy's names: general (default), diagonal, "
                   "'upper triangular', 'lower triangular', 'positive definite' (pos), "
                   "symmetric (sym), hermitian (her)")
    p.add_argument("--lower", action="store_true",
                   help="read the lower triangle for positive definite, symmetric and "
                   "hermitian matrices (default: the upper one)")
    add_quiet(p)


def check_streaming(args: argparse.Namespace) -> None:
    """Check ``--device`` and ``--chunk`` before any file is opened."""
    from .._device import parse_device

    try:
        parse_device(args.device)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    if args.chunk is not None and args.chunk < 1:
        raise CliError(f"--chunk must be at least 1, got {args.chunk}")


def check_assume_a(assume_a: str, dtype: np.dtype) -> str:
    """Check that ``--assume-a`` names a structure; return it as given."""
    from .._numerics import parse_structure

    try:
        parse_structure(assume_a, dtype)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return assume_a
