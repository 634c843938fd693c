"""``gpuinv solve A B -o OUT``: solve ``a @ x = b`` for every matrix of a file, chunk by chunk."""

from __future__ import annotations

import argparse
import math
from typing import Any, TextIO

import numpy as np

from . import options
from .errors import CliError
from .failures import Tally, report
from .files import ResultFiles, check_stack, chunk_length, one_line, open_input
from .stream import rate, stream

__all__ = ["COMMAND", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``solve``'s own arguments."""
    p.add_argument("a", metavar="A", help="a .npy or .npz file holding the (..., n, n) matrices")
    p.add_argument("b", metavar="B", help="a .npy or .npz file holding (n,) or (..., n, k)")
    options.add_output(p)
    p.add_argument("--key-a", help="which array of A if it is a .npz file")
    p.add_argument("--key-b", help="which array of B if it is a .npz file")
    options.add_streaming(p, item="system", items="systems", result="solution")


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Solve A x = B into OUT; return the exit code."""
    from .. import solve_ex
    from .._dtypes import result_dtype

    options.check_streaming(args)
    a = open_input(args.a, args.key_a)
    b = open_input(args.b, args.key_b)
    check_stack(a, args.a)
    if b.ndim == 0:
        raise CliError(f"{args.b} holds a scalar; b must be (n,) or (..., n, k)")
    try:
        dtype = result_dtype(np.result_type(a.dtype, b.dtype))
    except TypeError as exc:
        raise CliError(one_line(exc)) from None
    assume_a = options.check_assume_a(args.assume_a, dtype)
    n = a.shape[-1]
    vector = b.ndim == 1
    b2 = b[:, None] if vector else b
    if b2.shape[-2] != n:
        raise CliError(f"{args.b} has {b2.shape[-2]} rows but the matrices of {args.a} are {n}x{n}")
    try:
        batch = np.broadcast_shapes(a.shape[:-2], b2.shape[:-2])
    except ValueError:
        raise CliError(f"the batch shapes {a.shape[:-2]} of {args.a} and {b2.shape[:-2]} of "
                       f"{args.b} do not broadcast") from None
    k = b2.shape[-1]
    a_b = np.broadcast_to(a, batch + (n, n))
    b_b = np.broadcast_to(b2, batch + (n, k))
    files = ResultFiles(args.output, [args.a, args.b], args.rcond)
    total = math.prod(batch)
    per_chunk = chunk_length(args.chunk, (n * n + n * k) * dtype.itemsize)
    files.open(batch + ((n,) if vector else (n, k)), dtype, batch)
    tally = Tally(batch, assume_a, dtype, args.rcond)

    def compute(index: Any) -> tuple[np.ndarray, Any, Any]:
        res = solve_ex(a_b[index], b_b[index], assume_a=assume_a, lower=args.lower,
                       rcond=args.rcond, device=args.device)
        x = np.asarray(res.solution)
        return x[..., 0] if vector else x, res.info, res.rcond if args.rcond else None

    elapsed = stream(compute, files, tally, batch_shape=batch, per_chunk=per_chunk,
                     on_singular=args.on_singular, quiet=args.quiet)
    plural = "" if k == 1 else "s"
    return report(
        out, tally, quiet=args.quiet, on_singular=args.on_singular,
        summary=f"solved {total - tally.failures.total} of {total} systems ({n}x{n}, {k} "
        f"right-hand side{plural}, {dtype}) in {elapsed:.2f} s{rate(total, elapsed, 'systems')}, "
        f"device {args.device}",
        wrote="wrote " + ", ".join(str(p) for p in files.finals),
        error=f"gpuinv solve: error: {tally.failures.total} of {total} systems could not be "
        f"solved (their solutions are NaN in {files.target}; codes in {files.info_target})",
    )


COMMAND = options.Command(
    "solve",
    run=run,
    add_arguments=add_arguments,
    help="solve a @ x = b for every matrix of two .npy/.npz files",
    description="Solve a @ x = b for a stack A (..., n, n) and right-hand sides B ((n,) or "
    "(..., n, k), batch axes broadcast as in numpy.linalg.solve) into OUT (.npy), chunk by "
    "chunk, and write the info codes to OUT's stem + .info.npy.",
    epilog=options.exit_codes("systems", "solutions"),
)
