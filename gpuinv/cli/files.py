"""Reading the input files and writing the results of ``invert`` and ``solve``.

Inputs are ``.npy`` files (memory-mapped) or one array of a ``.npz``
(memory-mapped when stored uncompressed), told apart by their magic bytes.
Results are ``.npy`` files written chunk by chunk through memory maps, under
``.partial`` names that are renamed only when every chunk is in.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CliError

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "open_input",
    "check_stack",
    "chunk_length",
    "one_line",
    "info_path_for",
    "rcond_path_for",
    "ResultFiles",
]

# Bytes of input per streamed chunk when --chunk is not given. Provisional,
# not measured: big enough that the per-call cost vanishes (the CPU engine
# splits a chunk into its own 1 MiB work items and threads them), small
# enough to bound memory at a few times this and to move the progress bar.
# benchmarks/ will measure it with `gpuinv bench`-sized stacks on CPU and GPU.
DEFAULT_CHUNK_BYTES = 64 << 20


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
            raise CliError(f"{path} is not a valid .npy file: {one_line(exc)}") from None
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
            raise CliError(f"{path} is not a valid .npz file: {one_line(exc)}") from None
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


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, for a one-line error."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_stack(a: np.ndarray, path: str) -> np.dtype:
    """Check that ``a`` is a stack of square matrices; return its result dtype."""
    from .._dtypes import result_dtype

    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise CliError(
            f"{path} holds an array of shape {a.shape}: expected a stack of square "
            "matrices of shape (..., n, n)"
        )
    try:
        return result_dtype(a.dtype)
    except TypeError as exc:
        raise CliError(f"{path}: {exc}") from None


def chunk_length(chunk: int | None, item_bytes: int) -> int:
    """Matrices (or systems) per chunk: ``--chunk``, else about DEFAULT_CHUNK_BYTES of input."""
    return chunk or max(1, DEFAULT_CHUNK_BYTES // max(1, item_bytes))


def info_path_for(out: Path) -> Path:
    """``result.npy`` -> ``result.info.npy``."""
    return out.with_name(out.name[: -len(".npy")] + ".info.npy")


def rcond_path_for(out: Path) -> Path:
    """``result.npy`` -> ``result.rcond.npy``."""
    return out.with_name(out.name[: -len(".npy")] + ".rcond.npy")


def _discard(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except OSError:
            pass


class ResultFiles:
    """OUT, its info codes (OUT's stem + ``.info.npy``) and, with ``--rcond``,
    its reciprocal condition numbers (``.rcond.npy``), written chunk by chunk.

    They are written under ``.partial`` names and renamed at the end, so an
    interrupted run never leaves a complete-looking result behind. Raises
    :class:`CliError` when OUT would overwrite one of ``inputs``.
    """

    def __init__(self, output: str, inputs: Sequence[str], rcond: bool) -> None:
        target = Path(output)
        if target.suffix != ".npy":
            target = target.with_name(target.name + ".npy")  # as numpy.save names it
        self.target = target
        self.info_target = info_path_for(target)
        self.rcond_target = rcond_path_for(target) if rcond else None
        outputs = {p.resolve() for p in self.finals}
        for given in inputs:
            if Path(given).resolve() in outputs:
                raise CliError(f"the output {target} would overwrite the input {given}")
        self.temporaries = [p.with_name(p.name + ".partial") for p in self.finals]
        self._maps: list[Any] = []

    @property
    def finals(self) -> list[Path]:
        """The files as named once the run is complete: OUT, info, then rcond if asked."""
        return [p for p in (self.target, self.info_target, self.rcond_target) if p is not None]

    def open(self, shape: tuple[int, ...], dtype: np.dtype, batch_shape: tuple[int, ...]) -> None:
        """Create the memory-mapped temporaries: results of ``shape`` and ``dtype``, codes
        (int32) and rcond (``dtype``'s real type) of ``batch_shape``."""
        real = np.dtype(dtype).type(0).real.dtype
        specs = [(shape, dtype), (batch_shape, np.int32), (batch_shape, real)]
        try:
            for path, (s, d) in zip(self.temporaries, specs):
                self._maps.append(np.lib.format.open_memmap(path, mode="w+", dtype=d, shape=s))
        except OSError as exc:
            self._maps.clear()
            _discard(*self.temporaries)
            raise CliError(f"cannot write {self.target}: {exc.strerror or exc}") from None

    def write(
        self, index: Any, result: np.ndarray, info: np.ndarray, rcond: np.ndarray | None
    ) -> None:
        """Store one chunk's results, codes and (if the file is written) rcond at ``index``."""
        self._maps[0][index] = result
        self._maps[1][index] = info
        if len(self._maps) > 2:
            self._maps[2][index] = rcond

    @contextlib.contextmanager
    def writing(self, progress: Any) -> Iterator[None]:
        """Stream results into the temporaries, then flush them.

        On any error they are removed (a device that cannot be used and an
        output that cannot be written become :class:`CliError`), and the
        progress bar closes either way.
        """
        from .. import CudaUnavailableError

        try:
            yield
            for m in self._maps:
                m.flush()
        except CudaUnavailableError as exc:
            self._drop()
            raise CliError(str(exc)) from None
        except OSError as exc:
            self._drop()
            raise CliError(f"cannot write {self.target}: {exc.strerror or exc}") from None
        except BaseException:
            self._drop()
            raise
        finally:
            progress.close()

    def _drop(self) -> None:
        self._maps.clear()
        _discard(*self.temporaries)

    def commit(self) -> None:
        """Close the maps and rename the temporaries to their final names."""
        self._maps.clear()
        for tmp, final in zip(self.temporaries, self.finals):
            os.replace(tmp, final)
