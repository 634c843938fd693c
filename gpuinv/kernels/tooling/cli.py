"""``python -m gpuinv.kernels``'s logic: compile every kernel through NVRTC, no GPU needed.

``--check`` reports registers and spills; ``--model`` adds the cost model read
from the SASS (needs nvdisasm: the ``[sass]`` extra); ``--budget`` compares
the model with the committed baseline. Any combination compiles once.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import _OPS as OPS
from .check import ARCHS, NvrtcCompileError, collect_reports, nvrtc_version, run_check

#: The committed baseline, in a source checkout (benchmarks/ is not installed).
DEFAULT_BUDGET = Path(__file__).resolve().parents[3] / "benchmarks" / "kernel_budget.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpuinv.kernels",
        description="Compile gpuinv's small-matrix kernels with NVRTC; report registers, spills and a cost model.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="compile every instantiation dispatch can select; exit 1 on a compile error or a spill",
    )
    parser.add_argument(
        "--model",
        action="store_true",
        help="disassemble every instantiation and print the cost model (needs nvdisasm: pip install "
        "nvidia-cuda-nvdisasm)",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="with --model: write the model as JSON; '{arch}' in PATH becomes sm80 or sm90, one file each",
    )
    parser.add_argument(
        "--budget",
        nargs="?",
        const=str(DEFAULT_BUDGET),
        metavar="PATH",
        help="compare the model with a baseline (default: benchmarks/kernel_budget.json); exit 1 if any "
        "number of a dispatched kernel is more than 5%% worse",
    )
    parser.add_argument(
        "--update-budget",
        metavar="REASON",
        help="rewrite the baseline (the --budget PATH) from this compile, with a one-line reason",
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
        help="also report the one-thread shape just above THREAD_MAX_N and the structured kernels just above "
        "their bounds, up to n = 8 (not dispatched; spills allowed)",
    )
    parser.add_argument(
        "--op",
        action="append",
        choices=OPS,
        help="only the kernels of this operation (repeatable; default: all): inv (LU), chol, tril, triu, diag, solve; "
        "not with --budget or --update-budget, which cover every kernel",
    )
    args = parser.parse_args(argv)
    if not (args.check or args.model or args.budget or args.update_budget):
        parser.print_help()
        return 2
    archs = tuple(args.arch or ARCHS)
    if args.json and len(archs) > 1 and "{arch}" not in args.json:
        parser.error("--json needs '{arch}' in PATH when more than one --arch is modelled")
    need_model = bool(args.model or args.budget or args.update_budget or args.json)
    budget_path = Path(args.budget or DEFAULT_BUDGET)
    if args.update_budget and set(archs) != set(ARCHS):
        parser.error("--update-budget rewrites every architecture: leave out --arch")
    if args.op and (args.budget or args.update_budget):
        parser.error("--budget and --update-budget cover every kernel: leave out --op")
    try:
        start = time.perf_counter()
        reports = collect_reports(archs, include_non_default=args.all, keep_code=need_model,
                                  ops=tuple(args.op) if args.op else None)
        print(f"# {len(reports)} kernels compiled for {', '.join(archs)} in {time.perf_counter() - start:.0f} s")
        status = 0
        if args.check:
            status |= run_check(archs, include_non_default=args.all, reports=reports)
        if not need_model:
            return status
        from .model import check_budget, format_table, model_reports, update_budget, write_json

        start = time.perf_counter()
        records = model_reports(reports)
        version = nvrtc_version()
        print(f"# {len(records)} kernels disassembled and modelled in {time.perf_counter() - start:.0f} s (NVRTC {version})")
        if args.model:
            for line in format_table(records):
                print(line)
        if args.json:
            for arch in archs:
                path = Path(args.json.replace("{arch}", arch.replace("_", "")))
                write_json(records, path, arch, version)
                print(f"# wrote {path}")
        if args.update_budget and status:
            # A baseline must not record a kernel that spills: --check failed above.
            print(f"# not written: {budget_path} (fix the --check failure first)", file=sys.stderr)
        elif args.update_budget:
            update_budget(records, budget_path, args.update_budget, version)
            print(f"# wrote {budget_path}")
        elif args.budget:
            if not budget_path.exists():
                print(f"error: no budget at {budget_path} (create it with --update-budget REASON)", file=sys.stderr)
                return 2
            ok, lines = check_budget(records, budget_path, version)
            for line in lines:
                print(line)
            if not ok:
                status |= 1
        return status
    except ImportError as exc:
        print(f"error: the NVRTC check needs CuPy and libnvrtc: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NvrtcCompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

