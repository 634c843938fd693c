"""Compile the kernels with NVRTC directly, with our options, and cache the binaries.

Why not ``cupy.RawModule``: CuPy 14 appends ``-ftz=true`` to every NVRTC
compile (``cupy/cuda/compiler.py``, ``_compile_with_cache_cuda``), RawModule
included. Flushing subnormals to zero would make float32 and complex64
kernels report a subnormal pivot as exactly zero (``[[5e-39]]`` would get
info 1 instead of its inverse 2e38, which the CPU engine and cuBLAS give).
So we call NVRTC ourselves with :data:`gpuinv.kernels.NVRTC_OPTIONS` plus
``-arch=sm_XX`` for the device, and load the cubin with CuPy's
``cupy.cuda.function.Module`` under the lowered (mangled) name NVRTC reports.

Binaries are cached twice: in this process (per cache key), and on disk in
``$GPUINV_KERNEL_CACHE_DIR`` (default ``$XDG_CACHE_HOME/gpuinv/kernels``, or
``~/.cache/gpuinv/kernels``; set it to an empty string to disable). The key
is a SHA-256 of the source, the name expression, the options (the
architecture included) and NVRTC's version, so a changed kernel, option or
compiler never loads a stale binary. A file that is unreadable, truncated or
from another format version is ignored and rewritten. Nothing here needs a
GPU: only loading a binary does (in :mod:`gpuinv.kernels`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# No fast math: the kernels rely on IEEE NaN and Inf (finiteness checks), on
# correctly rounded division and reciprocals for LAPACK-level accuracy, and on
# subnormals being kept: with flush-to-zero a float32 pivot of 5e-39 would
# count as an exact zero (info 1) where the CPU engine and cuBLAS invert it.
# These are NVRTC's defaults, spelled out because CuPy's own compile path
# appends -ftz=true (so we call NVRTC directly, gpuinv/kernels/_nvrtc.py).
# -fmad=true lets ptxas contract a*b+c into one correctly rounded FMA, as
# cuBLAS and LAPACK builds do. `--check` compiles with the same options.
NVRTC_OPTIONS = ("-std=c++17", "-ftz=false", "-prec-div=true", "-prec-sqrt=true", "-fmad=true")

__all__ = [
    "Binary",
    "arch_option",
    "cache_dir",
    "cache_key",
    "compile_options",
    "compiled",
    "load_nvrtc",
    "nvrtc_compile",
]

# The disk format: a magic line, one JSON header line, then the binary.
_MAGIC = b"gpuinv-nvrtc-binary 1\n"


@dataclass(frozen=True)
class Binary:
    """One compiled program: ``cubin`` (SASS) or ``ptx`` bytes, and its lowered names.

    Attributes
    ----------
    kind : str
        ``"cubin"`` or ``"ptx"``.
    data : bytes
        What ``cuModuleLoadData`` takes.
    names : dict
        Name expression (``gpuinv::inv_thread<float, 2, 128>``) to the
        mangled name of the kernel in ``data``.
    options : tuple of str
        The options NVRTC compiled it with.
    """

    kind: str
    data: bytes
    names: dict[str, str]
    options: tuple[str, ...]


def load_nvrtc() -> Any:
    """CuPy's NVRTC binding, or ImportError saying why it cannot be used."""
    from cupy.cuda import nvrtc  # noqa: PLC0415 - optional dependency

    try:
        nvrtc.getVersion()  # loads libnvrtc
    except Exception as exc:  # CuPy reports a missing library in several ways
        raise ImportError(
            f"libnvrtc cannot be loaded ({exc}); pip install nvidia-cuda-nvrtc-cu12 "
            "(or nvidia-cuda-nvrtc for CUDA 13)"
        ) from exc
    return nvrtc


@functools.lru_cache(maxsize=1)
def _supported_archs() -> tuple[int, ...]:
    return tuple(int(a) for a in load_nvrtc().getSupportedArchs())


@functools.lru_cache(maxsize=1)
def _version() -> tuple[int, ...]:
    return tuple(load_nvrtc().getVersion())


def arch_option(compute_capability: str | int, supported: tuple[int, ...] | None = None) -> tuple[str, str]:
    """The ``-arch`` option and the output kind for a device's compute capability.

    A cubin (``-arch=sm_XX``) where this NVRTC knows the architecture;
    otherwise PTX for the newest architecture it knows below the device's,
    which the driver compiles on load (the way CuPy handles a GPU newer than
    its NVRTC). ``supported`` defaults to ``nvrtcGetSupportedArchs``.

    Raises
    ------
    ValueError
        If the device is older than every architecture NVRTC supports.
    """
    cc = int(str(compute_capability).removeprefix("sm_").removeprefix("compute_"))
    if supported is None:
        supported = _supported_archs()
    if cc in supported:
        return f"-arch=sm_{cc}", "cubin"
    older = [a for a in supported if a < cc]
    if not older:
        raise ValueError(f"NVRTC cannot compile for compute capability {cc}; it supports {sorted(supported)}")
    return f"-arch=compute_{max(older)}", "ptx"


def compile_options(arch: str) -> tuple[str, ...]:
    """Every option passed to NVRTC: :data:`NVRTC_OPTIONS` and ``arch`` (an ``-arch=`` option)."""
    return (*NVRTC_OPTIONS, arch)


class NvrtcError(RuntimeError):
    """NVRTC rejected the kernel source; the message holds its log."""


def nvrtc_compile(source: str, name_expressions: list[str], options: tuple[str, ...], kind: str) -> Binary:
    """Compile ``source`` with exactly ``options``; return the binary and lowered names.

    Raises
    ------
    NvrtcError
        With NVRTC's log, if the source does not compile.
    """
    nvrtc = load_nvrtc()
    prog = nvrtc.createProgram(source, "gpuinv_kernels.cu", [], [])
    try:
        for name in name_expressions:
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, list(options))
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog).rstrip("\x00")
            raise NvrtcError(f"NVRTC failed ({' '.join(options)}): {exc}\n{log}") from None
        names = {name: nvrtc.getLoweredName(prog, name) for name in name_expressions}
        data = nvrtc.getCUBIN(prog) if kind == "cubin" else nvrtc.getPTX(prog)
        return Binary(kind=kind, data=bytes(data), names=names, options=tuple(options))
    finally:
        nvrtc.destroyProgram(prog)


def cache_dir() -> Path | None:
    """The disk cache's folder, or None where it is disabled."""
    env = os.environ.get("GPUINV_KERNEL_CACHE_DIR")
    if env is not None:
        return Path(env).expanduser() if env.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpuinv" / "kernels"


def cache_key(source: str, name_expression: str, options: tuple[str, ...], version: tuple[int, ...],
              kind: str) -> str:
    """SHA-256 over everything that decides the binary."""
    h = hashlib.sha256()
    for part in (source, name_expression, "\0".join(options), ".".join(map(str, version)), kind):
        h.update(part.encode("utf-8"))
        h.update(b"\0\1")
    return h.hexdigest()


def _read(path: Path, options: tuple[str, ...]) -> Binary | None:
    try:
        raw = path.read_bytes()
        if not raw.startswith(_MAGIC):
            return None
        header_line, _, data = raw[len(_MAGIC):].partition(b"\n")
        header = json.loads(header_line)
        if header.get("size") != len(data) or header.get("sha256") != hashlib.sha256(data).hexdigest():
            return None  # truncated or corrupted: compile again
        return Binary(kind=header["kind"], data=data, names=dict(header["names"]), options=options)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(path: Path, binary: Binary) -> None:
    header = {"kind": binary.kind, "names": binary.names, "options": list(binary.options),
              "size": len(binary.data), "sha256": hashlib.sha256(binary.data).hexdigest()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: readers in other processes (warm_up's workers,
        # another program) see either no file or a whole one.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".bin")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(_MAGIC + json.dumps(header).encode("utf-8") + b"\n" + binary.data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass  # a read-only or full disk only costs a compile next time


def cached(source: str, name_expression: str, compute_capability: str | int) -> tuple[Binary, str] | None:
    """The binary from this process's cache or the disk cache, or None: never compiles."""
    arch, kind = arch_option(compute_capability)
    options = compile_options(arch)
    key = cache_key(source, name_expression, options, _version(), kind)
    if (hit := _memory.get(key)) is not None:
        return hit, "memory"
    folder = cache_dir()
    if folder is None:
        return None
    binary = _read(folder / f"{key}.bin", options)
    if binary is None or name_expression not in binary.names:
        return None
    _memory[key] = binary
    return binary, "disk"


_memory: dict[str, Binary] = {}
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def compiled(source: str, name_expression: str, compute_capability: str | int) -> tuple[Binary, str]:
    """The binary of one kernel for a device, and where it came from.

    Looks in this process's cache, then on disk, and compiles (then stores
    on disk) only on a miss. The second value is ``"memory"``, ``"disk"`` or
    ``"compiled"``. Threads asking for the same kernel compile it once.
    """
    arch, kind = arch_option(compute_capability)
    options = compile_options(arch)
    key = cache_key(source, name_expression, options, _version(), kind)
    if (hit := _memory.get(key)) is not None:
        return hit, "memory"
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        if (hit := _memory.get(key)) is not None:
            return hit, "memory"
        folder = cache_dir()
        path = folder / f"{key}.bin" if folder is not None else None
        binary = _read(path, options) if path is not None else None
        origin = "disk"
        if binary is None or name_expression not in binary.names:
            binary = nvrtc_compile(source, [name_expression], options, kind)
            origin = "compiled"
            if path is not None:
                _write(path, binary)
        _memory[key] = binary
        return binary, origin


def remember(source: str, name_expression: str, compute_capability: str | int, binary: Binary) -> None:
    """Put a binary compiled elsewhere (a warm-up worker) into this process's cache."""
    arch, kind = arch_option(compute_capability)
    options = compile_options(arch)
    if binary.options != options or binary.kind != kind or name_expression not in binary.names:
        raise ValueError("the binary was compiled with other options than this process would use")
    key = cache_key(source, name_expression, options, _version(), kind)
    _memory.setdefault(key, binary)
