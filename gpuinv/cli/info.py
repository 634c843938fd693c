"""``gpuinv info``: versions, the CUDA devices seen, and the engine ``device="auto"`` picks."""

from __future__ import annotations

import argparse
import math
import sys
from typing import TextIO

import numpy as np

from . import options
from .errors import EXIT_OK

__all__ = ["COMMAND", "run", "auto_engine_for", "human_bytes"]

#: Example stacks for "which engine would auto pick".
EXAMPLE_SHAPES = (
    ((100, 3, 3), "float64"),
    ((1_000_000, 4, 4), "float64"),
    ((100_000, 16, 16), "float32"),
    ((10_000, 64, 64), "complex64"),
    ((1_000, 256, 256), "float64"),
)


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cuda_lines() -> list[str]:
    from .._device import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    lines = []
    try:
        import cupy
    except ImportError:
        return [f"CUDA: not usable: {reason}"]
    lines.append(f"cupy: {cupy.__version__}")
    for what, getter in (
        ("CUDA runtime", cupy.cuda.runtime.runtimeGetVersion),
        ("CUDA driver", cupy.cuda.runtime.driverGetVersion),
    ):
        try:
            v = getter()
            # driverGetVersion answers 0 when no driver is installed
            text = f"{v // 1000}.{v % 1000 // 10}" if v else "none found"
            lines.append(f"{what}: {text}")
        except Exception as exc:  # no driver, or no libcudart
            lines.append(f"{what}: unavailable ({str(exc).splitlines()[0]})")
    if reason is not None:
        lines.append(f"CUDA devices: none usable: {reason}")
        return lines
    count = cupy.cuda.runtime.getDeviceCount()
    lines.append(f"CUDA devices: {count}")
    for i in range(count):
        p = cupy.cuda.runtime.getDeviceProperties(i)
        name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
        gib = p["totalGlobalMem"] / 2**30
        lines.append(f"  {i}: {name}, {gib:.1f} GiB, sm_{p['major']}{p['minor']}")
    return lines


def auto_engine_for(shape: tuple[int, ...], dtype: str) -> str:
    """Which engine ``device="auto"`` picks for a NumPy stack of this shape.

    The operand views one zero-strided element, so no memory of the stack's
    size is allocated.
    """
    # The public API has no "which engine would run this" question, so this
    # asks the dispatcher directly: the CLI's only use of gpuinv's internals
    # below the public layer (_normalize, _dispatch, and the CPU engine's
    # route table).
    from .._device import parse_device
    from .._dispatch import select_engine
    from .._normalize import normalize
    from ..engines.cpu_routes import cpu_route

    op = normalize(np.broadcast_to(np.zeros((), dtype=dtype), shape))
    try:
        engine = select_engine(op, parse_device("auto"))
    except Exception as exc:
        return f"error: {exc}"
    if engine.name == "cpu":
        return f"cpu ({cpu_route(op.n).replace('_', ' ')})"
    return engine.name


def human_bytes(n: float) -> str:
    """``1.5 MiB``: a size for people, in binary units."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Print the versions, the CUDA devices and the engine auto picks; return 0."""
    from .. import __version__, config

    print(f"gpuinv: {__version__}", file=out)
    print(f"python: {sys.version.split()[0]} ({sys.platform})", file=out)
    print(f"numpy: {np.__version__}", file=out)
    for name in ("scipy", "dask", "distributed", "torch", "jax", "tqdm", "matplotlib"):
        print(f"{name}: {_dist_version(name) or 'not installed'}", file=out)
    for line in _cuda_lines():
        print(line, file=out)
    print('engine picked by device="auto" for NumPy input:', file=out)
    for shape, dtype in EXAMPLE_SHAPES:
        size = math.prod(shape) * np.dtype(dtype).itemsize
        label = f"{shape} {dtype} ({human_bytes(size)})"
        print(f"  {label:<44} -> {auto_engine_for(shape, dtype)}", file=out)
    print(
        f"config: cpu_threads={config.cpu_threads} cpu_chunk_bytes={config.cpu_chunk_bytes} "
        f"cuda_min_bytes={config.cuda_min_bytes} cuda_chunk_bytes={config.cuda_chunk_bytes}",
        file=out,
    )
    return EXIT_OK


COMMAND = options.Command(
    "info", run=run, help="versions, CUDA devices, and the engine auto picks"
)
