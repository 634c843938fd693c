"""The ``gpuinv`` command: ``info``, ``invert``, ``solve`` and ``bench``.

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
import contextlib
import json
import math
import os
import struct
import sys
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator, TextIO

import numpy as np

__all__ = ["main", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# Bytes of input per streamed chunk when --chunk is not given. Provisional,
# not measured: big enough that the per-call cost vanishes (the CPU engine
# splits a chunk into its own 1 MiB work items and threads them), small
# enough to bound memory at a few times this and to move the progress bar.
# benchmarks/ will measure it with `gpuinv bench`-sized stacks on CPU and GPU.
DEFAULT_CHUNK_BYTES = 64 << 20

#: How many failing indices the summary lists per kind.
LISTED = 10


class CliError(Exception):
    """A user-facing error: printed on one line, exit code 2."""


# --------------------------------------------------------------------- info


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cuda_lines() -> list[str]:
    from ._device import cuda_unavailable_reason

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


#: Example stacks for "which engine would auto pick".
EXAMPLE_SHAPES = (
    ((100, 3, 3), "float64"),
    ((1_000_000, 4, 4), "float64"),
    ((100_000, 16, 16), "float32"),
    ((10_000, 64, 64), "complex64"),
    ((1_000, 256, 256), "float64"),
)


def auto_engine_for(shape: tuple[int, ...], dtype: str) -> str:
    """Which engine ``device="auto"`` picks for a NumPy stack of this shape.

    The operand views one zero-strided element, so no memory of the stack's
    size is allocated.
    """
    from ._device import parse_device
    from ._dispatch import select_engine
    from .engines.cpu_routes import cpu_route
    from ._normalize import normalize

    op = normalize(np.broadcast_to(np.zeros((), dtype=dtype), shape))
    try:
        engine = select_engine(op, parse_device("auto"))
    except Exception as exc:
        return f"error: {exc}"
    if engine.name == "cpu":
        return f"cpu ({cpu_route(op.n).replace('_', ' ')})"
    return engine.name


def cmd_info(args: argparse.Namespace, out: TextIO) -> int:
    from . import __version__, config

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
        label = f"{shape} {dtype} ({_human_bytes(size)})"
        print(f"  {label:<44} -> {auto_engine_for(shape, dtype)}", file=out)
    print(
        f"config: cpu_threads={config.cpu_threads} cpu_chunk_bytes={config.cpu_chunk_bytes} "
        f"cuda_min_bytes={config.cuda_min_bytes} cuda_chunk_bytes={config.cuda_chunk_bytes}",
        file=out,
    )
    return EXIT_OK


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ------------------------------------------------------------------- invert


def open_input(path: str, key: str | None) -> np.ndarray:
    """Open a ``.npy`` (memory-mapped) or one array of a ``.npz``.

    The format is told by the file's magic bytes, not its name. Raises
    :class:`CliError` for a missing, unreadable or corrupt file.
    """
    p = Path(path)
    if not p.exists():
        raise CliError(f"no such file: {path}")
    if p.is_dir():
        raise CliError(f"{path} is a directory, not a .npy or .npz file")
    try:
        with open(p, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    if magic == b"\x93NUMPY":
        try:
            # Memory-mapped: a file larger than RAM streams through in chunks.
            return np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise CliError(f"{path} is not a valid .npy file: {_one_line(exc)}") from None
    if magic[:4] == b"PK\x03\x04":
        try:
            archive = np.load(p, allow_pickle=False)
            names = list(archive.files)
            if key is None:
                if len(names) != 1:
                    listed = ", ".join(names) or "none"
                    raise CliError(
                        f"{path} holds {len(names)} arrays ({listed}): pick one with --key"
                    )
                key = names[0]
            elif key not in names:
                raise CliError(f"{path} has no array {key!r}; it holds: {', '.join(names)}")
            mapped = _map_stored_member(p, key)
            # np.savez stores members uncompressed: those are memory-mapped in
            # place. Compressed members (np.savez_compressed) are read whole.
            return mapped if mapped is not None else archive[key]
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise CliError(f"{path} is not a valid .npz file: {_one_line(exc)}") from None
    raise CliError(f"{path} is neither a .npy nor a .npz file (unknown format)")


def _map_stored_member(path: Path, key: str) -> np.ndarray | None:
    """Memory-map the array ``key`` of a .npz when it is stored uncompressed.

    Returns None when it cannot be (compressed, an unknown .npy header
    version, Python objects), so that the caller reads it whole instead.
    """
    fmt = np.lib.format
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(key + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as f:
        # The local file header: 30 bytes, then the name and an extra field
        # whose lengths it gives (they may differ from the central directory's).
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ValueError(f"bad local header for member {key!r}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            return None
        offset = f.tell()
    if dtype.hasobject:
        return None
    return np.memmap(
        path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_stack(a: np.ndarray, path: str) -> np.dtype:
    from ._dtypes import result_dtype

    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise CliError(
            f"{path} holds an array of shape {a.shape}: expected a stack of square "
            "matrices of shape (..., n, n)"
        )
    try:
        return result_dtype(a.dtype)
    except TypeError as exc:
        raise CliError(f"{path}: {exc}") from None


def info_path_for(out: Path) -> Path:
    """``result.npy`` -> ``result.info.npy``."""
    return out.with_name(out.name[: -len(".npy")] + ".info.npy")


def rcond_path_for(out: Path) -> Path:
    """``result.npy`` -> ``result.rcond.npy``."""
    return out.with_name(out.name[: -len(".npy")] + ".rcond.npy")


class _IllConditioned:
    """Count and first batch indices of matrices with info 0 and rcond < eps."""

    def __init__(self, batch_shape: tuple[int, ...], eps: float) -> None:
        self.failures = _Failures(batch_shape)
        self.eps = eps

    def add(self, info: np.ndarray, rcond: np.ndarray, start: int) -> None:
        bad = ((info == 0) & (rcond < self.eps)).astype(np.int32)
        self.failures.add(bad, start)  # counted as "singular" (code > 0)

    def line(self) -> str:
        c = self.failures.count["singular"]
        head = f"ill-conditioned (rcond < eps = {self.eps:.3g}): {c}"
        if c == 0:
            return head
        first = self.failures.first["singular"]
        listed = ", ".join(str(i) for i in first)
        more = ", ..." if c > len(first) else ""
        return f"{head}, {'first at' if more else 'at'} batch indices [{listed}{more}]"


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


class _Failures:
    """Counts and first batch indices of singular and non-finite matrices."""

    def __init__(self, batch_shape: tuple[int, ...], singular: str = "singular") -> None:
        self.batch_shape = batch_shape
        self.singular = singular  # how codes > 0 read: "not positive definite" for Cholesky
        self.count = {"singular": 0, "non-finite": 0}
        self.first: dict[str, list[Any]] = {"singular": [], "non-finite": []}

    def add(self, info: np.ndarray, start: int) -> None:
        flat = info.reshape(-1)
        for kind, mask in (("singular", flat > 0), ("non-finite", flat < 0)):
            where = np.flatnonzero(mask)
            self.count[kind] += where.size
            room = LISTED - len(self.first[kind])
            for f in where[:room]:
                self.first[kind].append(self._index(start + int(f)))

    def _index(self, flat: int) -> Any:
        if len(self.batch_shape) == 1:
            return flat
        if not self.batch_shape:
            return ()
        return tuple(int(i) for i in np.unravel_index(flat, self.batch_shape))

    @property
    def total(self) -> int:
        return sum(self.count.values())

    def lines(self) -> list[str]:
        out = []
        for kind in ("singular", "non-finite"):
            c = self.count[kind]
            name = self.singular if kind == "singular" else kind
            if c == 0:
                out.append(f"{name}: 0")
                continue
            listed = ", ".join(str(i) for i in self.first[kind])
            more = ", ..." if c > len(self.first[kind]) else ""
            first = "first at" if c > len(self.first[kind]) else "at"
            out.append(f"{name}: {c}, {first} batch indices [{listed}{more}]")
        return out


def cmd_invert(args: argparse.Namespace, out: TextIO) -> int:
    from . import inv_ex
    from ._chunks import plan_chunks
    from ._device import parse_device

    try:
        parse_device(args.device)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    if args.chunk is not None and args.chunk < 1:
        raise CliError(f"--chunk must be at least 1, got {args.chunk}")
    a = open_input(args.input, args.key)
    dtype = _check_stack(a, args.input)
    target = Path(args.output)
    if target.suffix != ".npy":
        target = target.with_name(target.name + ".npy")  # as numpy.save names it
    info_target = info_path_for(target)
    rcond_target = rcond_path_for(target) if args.rcond else None
    source = Path(args.input).resolve()
    outputs = [target.resolve(), info_target.resolve()]
    if rcond_target is not None:
        outputs.append(rcond_target.resolve())
    if source in outputs:
        raise CliError(f"the output {target} would overwrite the input {args.input}")
    assume_a = _check_assume_a(args.assume_a, dtype)

    batch_shape, n = tuple(a.shape[:-2]), a.shape[-1]
    total = math.prod(batch_shape)
    per_chunk = args.chunk or max(1, DEFAULT_CHUNK_BYTES // max(1, n * n * dtype.itemsize))
    # Written under temporary names and renamed at the end, so an interrupted
    # run never leaves a complete-looking result behind.
    tmp, info_tmp = (p.with_name(p.name + ".partial") for p in (target, info_target))
    rcond_tmp = rcond_target.with_name(rcond_target.name + ".partial") if rcond_target else None
    real = np.dtype(dtype).type(0).real.dtype
    try:
        result = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=a.shape)
        info_out = np.lib.format.open_memmap(info_tmp, mode="w+", dtype=np.int32, shape=batch_shape)
        rcond_out = (np.lib.format.open_memmap(rcond_tmp, mode="w+", dtype=real, shape=batch_shape)
                     if rcond_tmp is not None else None)
    except OSError as exc:
        _discard(*(p for p in (tmp, info_tmp, rcond_tmp) if p is not None))
        raise CliError(f"cannot write {target}: {exc.strerror or exc}") from None

    failures = _Failures(batch_shape, _singular_name(assume_a))
    ill = _IllConditioned(batch_shape, float(np.finfo(real).eps))
    progress = make_progress(total, args.quiet, sys.stderr)
    start = time.perf_counter()
    temporaries = [p for p in (tmp, info_tmp, rcond_tmp) if p is not None]
    with _writing(target, temporaries, progress):
        for chunk in plan_chunks(batch_shape, per_chunk):
            res = inv_ex(a[chunk.index], assume_a=assume_a, lower=args.lower,
                         rcond=rcond_out is not None, device=args.device)
            info = np.asarray(res.info)
            if args.on_singular != "ignore" and info.size and (info != 0).any():
                # Under "raise" too: a file never carries a garbage inverse
                # that looks valid; info says which ones failed.
                res.inverse[info != 0] = np.nan
            result[chunk.index] = res.inverse
            info_out[chunk.index] = info
            if rcond_out is not None:
                rc = np.asarray(res.rcond)
                rcond_out[chunk.index] = rc
                ill.add(info, rc, chunk.start)
            failures.add(info, chunk.start)
            progress.update(chunk.count)
        result.flush()
        info_out.flush()
        if rcond_out is not None:
            rcond_out.flush()
    del result, info_out, rcond_out
    os.replace(tmp, target)
    os.replace(info_tmp, info_target)
    if rcond_tmp is not None and rcond_target is not None:
        os.replace(rcond_tmp, rcond_target)
    elapsed = time.perf_counter() - start

    if not args.quiet:
        ok = total - failures.total
        rate = f", {total / elapsed:.3g} matrices/s" if elapsed > 0 and total else ""
        print(
            f"inverted {ok} of {total} matrices ({n}x{n}, {a.dtype} -> {dtype}) "
            f"in {elapsed:.2f} s{rate}, device {args.device}",
            file=out,
        )
        for line in failures.lines():
            print(line, file=out)
        if rcond_target is not None:
            print(ill.line(), file=out)
            print(f"wrote {target}, {info_target} and {rcond_target}", file=out)
        else:
            print(f"wrote {target} and {info_target}", file=out)
    if failures.total and args.on_singular == "raise":
        print(
            f"gpuinv invert: error: {failures.total} of {total} matrices could not be inverted "
            f"(their inverses are NaN in {target}; codes in {info_target})",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def _check_assume_a(assume_a: str, dtype: np.dtype) -> str:
    from ._numerics import parse_structure

    try:
        parse_structure(assume_a, dtype)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return assume_a


def _singular_name(assume_a: str) -> str:
    from ._numerics import STRUCTURES

    return "not positive definite" if STRUCTURES.get(assume_a) == "positive definite" else "singular"


# -------------------------------------------------------------------- solve


def cmd_solve(args: argparse.Namespace, out: TextIO) -> int:
    """``gpuinv solve A B -o X``: a @ x = b for every matrix, chunk by chunk."""
    from . import solve_ex
    from ._chunks import plan_chunks
    from ._device import parse_device
    from ._dtypes import result_dtype

    try:
        parse_device(args.device)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    if args.chunk is not None and args.chunk < 1:
        raise CliError(f"--chunk must be at least 1, got {args.chunk}")
    a = open_input(args.a, args.key_a)
    b = open_input(args.b, args.key_b)
    _check_stack(a, args.a)
    if b.ndim == 0:
        raise CliError(f"{args.b} holds a scalar; b must be (n,) or (..., n, k)")
    try:
        dtype = result_dtype(np.result_type(a.dtype, b.dtype))
    except TypeError as exc:
        raise CliError(_one_line(exc)) from None
    assume_a = _check_assume_a(args.assume_a, dtype)
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
    target = Path(args.output)
    if target.suffix != ".npy":
        target = target.with_name(target.name + ".npy")
    info_target = info_path_for(target)
    rcond_target = rcond_path_for(target) if args.rcond else None
    outputs = {p.resolve() for p in (target, info_target, rcond_target) if p is not None}
    for given in (args.a, args.b):
        if Path(given).resolve() in outputs:
            raise CliError(f"the output {target} would overwrite the input {given}")
    total = math.prod(batch)
    per_chunk = args.chunk or max(1, DEFAULT_CHUNK_BYTES // max(1, (n * n + n * k)
                                                                * dtype.itemsize))
    shape = batch + ((n,) if vector else (n, k))
    real = np.dtype(dtype).type(0).real.dtype
    temporaries = [p.with_name(p.name + ".partial")
                   for p in (target, info_target, rcond_target) if p is not None]
    try:
        x_out = np.lib.format.open_memmap(temporaries[0], mode="w+", dtype=dtype, shape=shape)
        info_out = np.lib.format.open_memmap(temporaries[1], mode="w+", dtype=np.int32,
                                             shape=batch)
        rcond_out = (np.lib.format.open_memmap(temporaries[2], mode="w+", dtype=real, shape=batch)
                     if rcond_target is not None else None)
    except OSError as exc:
        _discard(*temporaries)
        raise CliError(f"cannot write {target}: {exc.strerror or exc}") from None
    failures = _Failures(batch, _singular_name(assume_a))
    ill = _IllConditioned(batch, float(np.finfo(real).eps))
    progress = make_progress(total, args.quiet, sys.stderr)
    start = time.perf_counter()
    with _writing(target, temporaries, progress):
        for chunk in plan_chunks(batch, per_chunk):
            res = solve_ex(a_b[chunk.index], b_b[chunk.index], assume_a=assume_a,
                           lower=args.lower, rcond=rcond_out is not None, device=args.device)
            info = np.asarray(res.info)
            x = np.asarray(res.solution)
            if args.on_singular != "ignore" and info.size and (info != 0).any():
                x[info != 0] = np.nan
            x_out[chunk.index] = x[..., 0] if vector else x
            info_out[chunk.index] = info
            if rcond_out is not None:
                rc = np.asarray(res.rcond)
                rcond_out[chunk.index] = rc
                ill.add(info, rc, chunk.start)
            failures.add(info, chunk.start)
            progress.update(chunk.count)
        x_out.flush()
        info_out.flush()
        if rcond_out is not None:
            rcond_out.flush()
    del x_out, info_out, rcond_out
    finals = [p for p in (target, info_target, rcond_target) if p is not None]
    for tmp, final in zip(temporaries, finals):
        os.replace(tmp, final)
    elapsed = time.perf_counter() - start
    if not args.quiet:
        ok = total - failures.total
        rate = f", {total / elapsed:.3g} systems/s" if elapsed > 0 and total else ""
        print(f"solved {ok} of {total} systems ({n}x{n}, {k} right-hand side"
              f"{'' if k == 1 else 's'}, {dtype}) in {elapsed:.2f} s{rate}, device {args.device}",
              file=out)
        for line in failures.lines():
            print(line, file=out)
        if rcond_target is not None:
            print(ill.line(), file=out)
        print("wrote " + ", ".join(str(p) for p in finals), file=out)
    if failures.total and args.on_singular == "raise":
        print(f"gpuinv solve: error: {failures.total} of {total} systems could not be solved "
              f"(their solutions are NaN in {target}; codes in {info_target})", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


@contextlib.contextmanager
def _writing(target: Path, temporaries: list[Path], progress: Any) -> Iterator[None]:
    """Stream results into ``temporaries``: on any error they are removed, and the progress bar closes."""
    from ._device import CudaUnavailableError

    try:
        yield
    except CudaUnavailableError as exc:
        _discard(*temporaries)
        raise CliError(str(exc)) from None
    except OSError as exc:
        _discard(*temporaries)
        raise CliError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        _discard(*temporaries)
        raise
    finally:
        progress.close()


def _discard(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except OSError:
            pass


# -------------------------------------------------------------------- bench


QUICK_SIZES = [2, 4, 8, 16]
DEFAULT_SIZES = [2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128]


def cmd_bench(args: argparse.Namespace, out: TextIO) -> int:
    from . import _bench

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
    peers = _bench.available_peers(names)
    repeats = args.repeats or (3 if args.quick else 5)
    target = int((args.mib if args.mib else (1 if args.quick else 32)) * 2**20)
    min_time = 0.005 if args.quick else 0.05
    status = sys.stderr if not args.quiet else None

    def progress(text: str) -> None:
        if status is not None:
            status.write(f"  timing {text}\n")
            status.flush()

    rows, meta = _bench.run_bench(
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
        f"gpuinv bench: {meta['dtype']}, stacks of ~{_human_bytes(meta['target_bytes'])}, "
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


# --------------------------------------------------------------------- main


def _numerics_options(p: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuinv",
        description="Invert stacks of small square matrices on NVIDIA GPUs or the CPU.",
        epilog="exit codes: 0 success; 1 matrices failed under --on-singular raise; "
        "2 usage or input error",
    )
    sub = parser.add_subparsers(dest="command", metavar="{info,invert,solve,bench}")

    p = sub.add_parser("info", help="versions, CUDA devices, and the engine auto picks")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "invert",
        help="invert every matrix of a .npy/.npz file into a .npy file",
        description="Invert a stack (..., n, n) read from IN (.npy memory-mapped, or .npz) "
        "into OUT (.npy), chunk by chunk, and write the info codes to OUT's stem + .info.npy.",
        epilog="exit codes: 0 success; 1 matrices failed under --on-singular raise (the whole "
        "file is still written, failed inverses as NaN); 2 usage or input error",
    )
    p.add_argument("input", metavar="IN", help="a .npy or .npz file holding a (..., n, n) array")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the .npy file to write")
    p.add_argument("--key", help="which array of a .npz file (default: its only array)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--on-singular",
        choices=("raise", "nan", "ignore"),
        default="raise",
        help="raise (default): exit 1 if any matrix failed, its inverse NaN; nan: NaN, exit 0; "
        "ignore: keep what the computation produced, exit 0",
    )
    p.add_argument("--chunk", type=int, metavar="N", help="matrices per chunk (default: ~64 MiB)")
    _numerics_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary")
    p.set_defaults(func=cmd_invert)

    p = sub.add_parser(
        "solve",
        help="solve a @ x = b for every matrix of two .npy/.npz files",
        description="Solve a @ x = b for a stack A (..., n, n) and right-hand sides B ((n,) or "
        "(..., n, k), batch axes broadcast as in numpy.linalg.solve) into OUT (.npy), chunk by "
        "chunk, and write the info codes to OUT's stem + .info.npy.",
        epilog="exit codes: 0 success; 1 systems failed under --on-singular raise (the whole "
        "file is still written, failed solutions as NaN); 2 usage or input error",
    )
    p.add_argument("a", metavar="A", help="a .npy or .npz file holding the (..., n, n) matrices")
    p.add_argument("b", metavar="B", help="a .npy or .npz file holding (n,) or (..., n, k)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the .npy file to write")
    p.add_argument("--key-a", help="which array of A if it is a .npz file")
    p.add_argument("--key-b", help="which array of B if it is a .npz file")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--on-singular",
        choices=("raise", "nan", "ignore"),
        default="raise",
        help="raise (default): exit 1 if any system failed, its solution NaN; nan: NaN, exit 0; "
        "ignore: keep what the computation produced, exit 0",
    )
    p.add_argument("--chunk", type=int, metavar="N", help="systems per chunk (default: ~64 MiB)")
    _numerics_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary")
    p.set_defaults(func=cmd_solve)

    p = sub.add_parser(
        "bench",
        help="benchmark against numpy, scipy, cupy, torch and jax",
        description="Time gpuinv.inv and each installed peer on stacks of n x n matrices and "
        "print matrices/s (median of repeats).",
    )
    p.add_argument("--n", type=int, nargs="+", metavar="N", help="matrix orders to time")
    p.add_argument(
        "--dtype", default="float64", help="float32, float64 (default), complex64, complex128"
    )
    p.add_argument("--device", default="auto", help="gpuinv's device= (default auto)")
    p.add_argument("--peers", help="comma-separated subset of numpy,scipy,cupy,torch,jax")
    p.add_argument("--mib", type=float, help="stack size in MiB per n (default 32; --quick 1)")
    p.add_argument("--repeats", type=int, help="timed repeats, the median is reported (default 5)")
    p.add_argument("--no-floor", action="store_true", help="skip the copy-bandwidth floor")
    p.add_argument("--json", metavar="FILE", help="write the raw numbers as JSON")
    p.add_argument(
        "--plot", metavar="FILE.png", help="draw matrices/s against n (needs matplotlib)"
    )
    p.add_argument("--quick", action="store_true", help="few small sizes and short runs")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-measurement status lines")
    p.set_defaults(func=cmd_bench)
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
        return 130
    except BrokenPipeError:
        # The reader went away (`gpuinv info | head`): stop quietly, as Unix
        # tools do, and keep Python from complaining again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
