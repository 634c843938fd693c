"""Device-array helpers that the CUDA engine's routes share.

Alignment (a view may start off its element size), matrix pointer arrays
for the batched libraries, the NaN/Inf and zero-pivot masks, the mirror of
a triangle, and the launch of a kernel into non-contiguous outputs. All of
them are CuPy array operations on the current device and stream, without a
host synchronization.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "TYPE_LETTER",
    "aligned",
    "as_stack",
    "first_zero_step",
    "is_aligned",
    "launch_into",
    "mirror_lower",
    "nan_where_failed",
    "nonfinite",
    "pointer_array",
    "realigned",
]

#: The BLAS/LAPACK type letter of each compute dtype's char.
TYPE_LETTER = {"f": "s", "d": "d", "F": "c", "D": "z"}


def launch_into(launch: Callable[..., None], *outputs: Any) -> None:
    """Call ``launch(*outputs)``, handing a kernel C-contiguous arrays: an output
    that is not (a chunk's view) is written through a temporary and copied back.
    ``None`` (an output not asked for) passes through."""
    import cupy

    direct = [x if x is None or x.flags.c_contiguous else cupy.empty(x.shape, dtype=x.dtype) for x in outputs]
    launch(*direct)
    for target, written in zip(outputs, direct):
        if written is not target:
            cupy.copyto(target, written)


def is_aligned(view: Any) -> bool:
    """Whether every element of ``view`` starts at a multiple of its size."""
    itemsize = view.dtype.itemsize
    return all(v % itemsize == 0 for v in (view.data.ptr, *view.strides))


def realigned(view: Any) -> Any:
    """A C-contiguous, aligned copy of ``view`` (same dtype and shape).

    A view may start off its element size's alignment, e.g. a complex128
    view of a float64 array at an 8-byte offset. Any kernel that loads its
    elements, ours or CuPy's own copy, would fault with a misaligned-address
    error that kills the CUDA context. So the bytes are copied as the widest
    unsigned words that the address and the strides are aligned to, which
    any kernel may load, and reinterpreted in an aligned buffer. Costs one
    chunk of input-sized scratch, for such rare input only.
    """
    import cupy

    itemsize = view.dtype.itemsize
    unit = min(itemsize, 8)
    for v in (view.data.ptr, *view.strides):
        while v % unit:
            unit //= 2
    word = np.dtype(f"u{unit}")
    per_item = itemsize // unit
    src = cupy.ndarray(view.shape + (per_item,), dtype=word, memptr=view.data,
                       strides=view.strides + (unit,))
    dst = cupy.empty(view.shape, dtype=view.dtype)
    cupy.copyto(dst.view(word).reshape(src.shape), src)
    return dst


def pointer_array(x: Any) -> Any:
    """Device array of the addresses of x[0], x[1], ... (uint64)."""
    import cupy

    step = x.shape[1] * x.shape[2] * x.itemsize
    start = x.data.ptr
    return cupy.arange(start, start + step * x.shape[0], step, dtype=cupy.uint64)


def first_zero_step(x: Any) -> Any:
    """1-based index of the first zero on the diagonal of each matrix of ``x``; 0 if none."""
    d = x.diagonal(axis1=-2, axis2=-1)
    zero = (d == 0).astype(np.int8)  # argmax over int8: bool reductions vary across versions
    return (zero.max(axis=-1) * (zero.argmax(axis=-1) + 1)).astype(np.int32)


def mirror_lower(x: Any, conjugate: bool) -> Any:
    """x with its strict upper triangle replaced by the (conjugate) transpose of the lower one."""
    import cupy

    n = x.shape[-1]
    rows = cupy.arange(n)[:, None]
    cols = cupy.arange(n)[None, :]
    other = x.swapaxes(-1, -2)
    if conjugate:
        other = other.conj()
    full = cupy.where(rows < cols, other, x)
    if conjugate:
        full = cupy.where(rows == cols, full.real.astype(x.dtype), full)
    return full


def nonfinite(x: Any) -> Any:
    import cupy

    return ~cupy.isfinite(x).all(axis=(-2, -1))


def nan_where_failed(out: Any, info: Any) -> None:
    """NaN in every matrix of ``out`` (m, ...) whose info is not 0 (a mask, no host sync)."""
    import cupy

    cupy.copyto(out, out.dtype.type(np.nan), where=(info != 0)[:, None, None])


def aligned(view: Any) -> Any:
    """``view``, or an aligned copy where it starts off its element size (see
    :func:`realigned`): CuPy's own kernels fault on misaligned loads."""
    if is_aligned(view):
        return view
    return realigned(view)


def as_stack(x: Any, dtype: np.dtype, m: int) -> Any:
    """``x`` (batch..., r, c) as an (m, r, c) stack of ``dtype`` (a copy only where needed)."""
    return x.astype(dtype, copy=False).reshape((m,) + tuple(x.shape[-2:]))
