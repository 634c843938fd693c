"""``gpuinv invert IN -o OUT``: invert every matrix of a file, chunk by chunk."""

from __future__ import annotations

import argparse
import math
from typing import Any, TextIO

import numpy as np

from . import options
from .failures import Tally, report
from .files import ResultFiles, check_stack, chunk_length, open_input
from .stream import rate, stream

__all__ = ["COMMAND", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``invert``'s own arguments."""
    p.add_argument("input", metavar="IN", help="a .npy or .npz file holding a (..., n, n) array")
    options.add_output(p)
    p.add_argument("--key", help="which array of a .npz file (default: its only array)")
    options.add_streaming(p, item="matrix", items="matrices", result="inverse")


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Invert IN into OUT; return the exit code."""
    # Looked up at call time, through the public name (tests spy on it there).
    from .. import inv_ex

    options.check_streaming(args)
    a = open_input(args.input, args.key)
    dtype = check_stack(a, args.input)
    files = ResultFiles(args.output, [args.input], args.rcond)
    assume_a = options.check_assume_a(args.assume_a, dtype)

    batch_shape, n = tuple(a.shape[:-2]), a.shape[-1]
    total = math.prod(batch_shape)
    per_chunk = chunk_length(args.chunk, n * n * dtype.itemsize)
    files.open(a.shape, dtype, batch_shape)
    tally = Tally(batch_shape, assume_a, dtype, args.rcond)

    def compute(index: Any) -> tuple[np.ndarray, Any, Any]:
        res = inv_ex(a[index], assume_a=assume_a, lower=args.lower, rcond=args.rcond,
                     device=args.device)
        return res.inverse, res.info, res.rcond if args.rcond else None

    elapsed = stream(compute, files, tally, batch_shape=batch_shape, per_chunk=per_chunk,
                     on_singular=args.on_singular, quiet=args.quiet)
    target, info_target = files.target, files.info_target
    if files.rcond_target is not None:
        wrote = f"wrote {target}, {info_target} and {files.rcond_target}"
    else:
        wrote = f"wrote {target} and {info_target}"
    return report(
        out, tally, quiet=args.quiet, on_singular=args.on_singular,
        summary=f"inverted {total - tally.failures.total} of {total} matrices ({n}x{n}, "
        f"{a.dtype} -> {dtype}) in {elapsed:.2f} s{rate(total, elapsed, 'matrices')}, "
        f"device {args.device}",
        wrote=wrote,
        error=f"gpuinv invert: error: {tally.failures.total} of {total} matrices could not be "
        f"inverted (their inverses are NaN in {target}; codes in {info_target})",
    )


COMMAND = options.Command(
    "invert",
    run=run,
    add_arguments=add_arguments,
    help="invert every matrix of a .npy/.npz file into a .npy file",
    description="Invert a stack (..., n, n) read from IN (.npy memory-mapped, or .npz) "
    "into OUT (.npy), chunk by chunk, and write the info codes to OUT's stem + .info.npy.",
    epilog=options.exit_codes("matrices", "inverses"),
)
