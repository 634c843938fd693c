"""``python -m gpuinv.kernels --check``: compile every kernel through NVRTC, no GPU needed."""

from __future__ import annotations

import argparse
import sys

from ._check import ARCHS, NvrtcCompileError, run_check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpuinv.kernels",
        description="Compile gpuinv's small-matrix kernels with NVRTC and report registers and spills.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="compile every instantiation dispatch can select; exit 1 on a compile error or a spill",
    )
    parser.add_argument(
        "--arch",
        action="append",
        choices=ARCHS,
        help="architecture to compile for (repeatable; default: all of %s)" % ", ".join(ARCHS),
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="also report the one-thread shape just above THREAD_MAX_N (not dispatched; spills allowed)",
    )
    args = parser.parse_args(argv)
    if not args.check:
        parser.print_help()
        return 2
    try:
        return run_check(tuple(args.arch or ARCHS), include_non_default=args.all)
    except ImportError as exc:
        print(f"error: the NVRTC check needs CuPy and libnvrtc: {exc}", file=sys.stderr)
        return 2
    except NvrtcCompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
