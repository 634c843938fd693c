"""``gpuinv bench``: gpuinv against NumPy, SciPy, CuPy, PyTorch and JAX; a table, JSON, a plot.

The timing itself is :mod:`gpuinv.cli.harness`; this module reads the
options, prints the table and draws the plot.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import options
from .errors import EXIT_OK, CliError
from .info import human_bytes

__all__ = ["COMMAND", "run", "print_table", "plot_rows"]

QUICK_SIZES = [2, 4, 8, 16]
DEFAULT_SIZES = [2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``bench``'s own arguments."""
    p.add_argument("--n", type=int, nargs="+", metavar="N", help="matrix orders to time")
    p.add_argument(
        "--dtype", default="float64", help="float32, float64 (default), complex64, complex128"
    )
    options.add_device(p, help="gpuinv's device= (default auto)")
    p.add_argument("--peers", help="comma-separated subset of numpy,scipy,cupy,torch,jax")
    p.add_argument("--mib", type=float, help="stack size in MiB per n (default 32; --quick 1)")
    p.add_argument("--repeats", type=int, help="timed repeats, the median is reported (default 5)")
    p.add_argument("--no-floor", action="store_true", help="skip the copy-bandwidth floor")
    p.add_argument("--json", metavar="FILE", help="write the raw numbers as JSON")
    p.add_argument(
        "--plot", metavar="FILE.png", help="draw matrices/s against n (needs matplotlib)"
    )
    p.add_argument("--quick", action="store_true", help="few small sizes and short runs")
    options.add_quiet(p, help="no per-measurement status lines")


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Time every n, print the table, and write the JSON and plot if asked; return 0."""
    from . import harness

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CliError("--plot needs matplotlib: pip install matplotlib") from None
    try:
        dtype = np.dtype(args.dtype)
    except TypeError:
        raise CliError(f"unknown dtype {args.dtype!r}") from None
    if dtype.name not in ("float32", "float64", "complex64", "complex128"):
        raise CliError(f"--dtype must be float32, float64, complex64 or complex128, got {dtype}")
    sizes = args.n or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if any(n < 1 for n in sizes):
        raise CliError("every --n must be at least 1")
    names = args.peers.split(",") if args.peers else None
    peers = harness.available_peers(names)
    repeats = args.repeats or (3 if args.quick else 5)
    target = int((args.mib if args.mib else (1 if args.quick else 32)) * 2**20)
    min_time = 0.005 if args.quick else 0.05
    status = sys.stderr if not args.quiet else None

    def progress(text: str) -> None:
        if status is not None:
            status.write(f"  timing {text}\n")
            status.flush()

    rows, meta = harness.run_bench(
        sizes,
        dtype=dtype,
        target_bytes=target,
        device=args.device,
        peers=peers,
        repeats=repeats,
        min_time=min_time,
        floor=not args.no_floor,
        progress=progress,
    )
    print_table(rows, meta, out)
    if args.json:
        try:
            Path(args.json).write_text(
                json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows]}, indent=2) + "\n"
            )
        except OSError as exc:
            raise CliError(f"cannot write {args.json}: {exc.strerror or exc}") from None
        print(f"wrote {args.json}", file=out)
    if args.plot:
        plot_rows(rows, meta, args.plot)
        print(f"wrote {args.plot}", file=out)
    return EXIT_OK


def _libraries(rows: list[Any]) -> list[str]:
    names: list[str] = []
    for r in rows:
        for k in list(r.seconds) + list(r.errors):
            if k not in names:
                names.append(k)
    return names


def print_table(rows: list[Any], meta: dict[str, Any], out: TextIO) -> None:
    """Matrices/s per library and n, gpuinv's ratio to each peer, and the copy floor."""
    libs = _libraries(rows)
    hw = meta["gpu"] or f"{meta['processor']}, {meta['cpu_count']} CPUs"
    print(
        f"gpuinv bench: {meta['dtype']}, stacks of ~{human_bytes(meta['target_bytes'])}, "
        f"device={meta['device']}, median of {meta['repeats']}, on {hw}",
        file=out,
    )
    print("matrices/s (higher is better)", file=out)
    floor_col = f"floor ({meta['floor']})" if meta.get("floor") else None
    # gpuinv's speed-up over each peer in the same run (> 1: gpuinv is faster).
    peers = [lib for lib in libs if not lib.startswith("gpuinv")]
    head = ["n", "batch"] + libs + [f"vs {p}" for p in peers]
    head += [floor_col] if floor_col else []
    table = []
    for r in rows:
        line = [str(r.n), str(r.batch)]
        for lib in libs:
            line.append(f"{r.rate(lib):.3g}" if lib in r.seconds else "error")
        for peer in peers:
            both = "gpuinv" in r.seconds and peer in r.seconds
            line.append(f"{r.seconds[peer] / r.seconds['gpuinv']:.2f}x" if both else "-")
        if floor_col:
            line.append(f"{r.floor_rate:.3g}" if r.floor_rate else "-")
        table.append(line)
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]
    print("  ".join(h.rjust(w) for h, w in zip(head, widths)), file=out)
    for t in table:
        print("  ".join(c.rjust(w) for c, w in zip(t, widths)), file=out)
    for r in rows:
        for lib, err in r.errors.items():
            print(f"  n={r.n} {lib}: {err}", file=out)


def plot_rows(rows: list[Any], meta: dict[str, Any], path: str) -> None:
    """Log-log matrices/s against n, one line per library, the floor dashed."""
    # The object API with the Agg canvas: no pyplot, so no global backend
    # switch in a process that already uses matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for lib in _libraries(rows):
        pts = [(r.n, r.rate(lib)) for r in rows if lib in r.seconds]
        if pts:
            xs, ys = zip(*pts)
            width = 2.5 if lib.startswith("gpuinv") else 1.2
            ax.plot(xs, ys, marker="o", linewidth=width, label=lib)
    floor = [(r.n, r.floor_rate) for r in rows if r.floor_rate]
    if floor:
        xs, ys = zip(*floor)
        ax.plot(xs, ys, "k--", linewidth=1, label=f"bandwidth floor ({meta['floor']})")
    ax.set_xscale("log", base=2)
    sizes = sorted({r.n for r in rows})
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_yscale("log")
    ax.set_xlabel("n (matrix order)")
    ax.set_ylabel("matrices / s")
    hw = meta["gpu"] or f"{meta['processor']}, {meta['cpu_count']} CPUs"
    ax.set_title(f"inverse of a stack of n x n {meta['dtype']} matrices ({hw})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None


COMMAND = options.Command(
    "bench",
    run=run,
    add_arguments=add_arguments,
    help="benchmark against numpy, scipy, cupy, torch and jax",
    description="Time gpuinv.inv and each installed peer on stacks of n x n matrices and "
    "print matrices/s (median of repeats).",
)
