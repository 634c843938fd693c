"""The ``gpuinv`` command: ``info``, ``invert``, ``solve`` and ``bench``.

One module per command (:mod:`.info`, :mod:`.invert`, :mod:`.solve`,
:mod:`.bench`), each declaring its ``COMMAND`` (name, help, arguments and
``run(args, out)``, see :class:`.options.Command`); they
share the options (:mod:`.options`), reading and writing the files
(:mod:`.files`), the chunk loop (:mod:`.stream`), the progress bar
(:mod:`.progress`) and the failure summary (:mod:`.failures`). ``bench``
times with :mod:`.harness`. ``import gpuinv`` does not import this package.

Exit codes (also in ``docs/cli.md``):

* ``0``: success (with ``--on-singular nan`` or ``ignore`` also when some
  matrices could not be inverted: the summary and the info file say which);
* ``1``: ``invert --on-singular raise`` (the default) met matrices that could
  not be inverted; the whole file was still processed and written;
* ``2``: usage or input error (bad arguments, a missing, corrupt or
  wrongly shaped input, an output that cannot be written, a device that
  cannot be used), reported in one line without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import bench, info, invert, options, solve
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE"]

#: The subcommands, in the order ``--help`` lists them.
COMMANDS = (info.COMMAND, invert.COMMAND, solve.COMMAND, bench.COMMAND)


def build_parser() -> argparse.ArgumentParser:
    """The ``gpuinv`` parser, with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="gpuinv",
        description="Invert stacks of small square matrices on NVIDIA GPUs or the CPU.",
        epilog=options.exit_codes(),
    )
    sub = parser.add_subparsers(dest="command", metavar="{info,invert,solve,bench}")
    for command in COMMANDS:
        p = sub.add_parser(
            command.name, help=command.help, description=command.description,
            epilog=command.epilog,
        )
        if command.add_arguments is not None:
            command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``gpuinv`` command line; return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args, sys.stdout)
    except CliError as exc:
        print(f"gpuinv {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"gpuinv {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`gpuinv info | head`): stop quietly, as Unix
        # tools do, and keep Python from complaining again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
