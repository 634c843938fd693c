"""Step 2 of a call: turn any array-like into a validated :class:`Operand`.

Every shape and dtype error is raised here, before any engine runs. Nothing
is copied: the operand holds the caller's array (or a plain view of it), and
the engines read it chunk by chunk. A solve's ``b`` is checked and broadcast
against ``a`` here too (:func:`normalize_solve`), with the shape rules that
the dask adapter applies to whole dask arrays (:func:`solve_shapes`).
Also the last step's helper: :func:`wrap_like_input`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._dtypes import result_dtype

__all__ = [
    "Operand",
    "normalize",
    "normalize_solve",
    "solve_shapes",
    "solve_dtype",
    "array_backend",
    "check_stack_shape",
    "wrap_like_input",
]


def array_backend(a: Any) -> str:
    """Name the array library that owns ``a`` without importing any.

    Returns ``"cupy"`` for a CuPy ndarray and ``"numpy"`` for everything
    else (NumPy arrays, lists, scalars and other array-likes are converted
    with :func:`numpy.asarray`).
    """
    module = type(a).__module__
    if module.startswith("cupy") and hasattr(a, "__cuda_array_interface__"):
        return "cupy"
    return "numpy"


@dataclass(frozen=True)
class Operand:
    """A validated input stack.

    Attributes
    ----------
    array
        The caller's data as a ``numpy.ndarray`` or ``cupy.ndarray`` of
        shape ``batch_shape + (n, n)``, never copied or written to. Its
        dtype and byte order may differ from ``dtype``; engines convert it
        chunk by chunk.
    backend
        ``"numpy"`` or ``"cupy"``: the kind of array the result is returned as.
    batch_shape
        The leading axes.
    n
        The order of every matrix.
    dtype
        The dtype computed in and returned (see :mod:`gpuinv._dtypes`).
    """

    array: Any
    backend: str
    batch_shape: tuple[int, ...]
    n: int
    dtype: np.dtype

    @property
    def count(self) -> int:
        """Number of matrices in the stack."""
        return math.prod(self.batch_shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the stack in the compute dtype (the size of the result)."""
        return self.count * self.n * self.n * self.dtype.itemsize

    @property
    def empty(self) -> bool:
        return self.count == 0 or self.n == 0


def normalize(a: Any) -> Operand:
    """Validate ``a`` and describe it as an :class:`Operand`.

    Raises
    ------
    numpy.linalg.LinAlgError
        If ``a`` has fewer than two dimensions or its last two are not
        square (NumPy's own wording).
    TypeError
        For masked arrays and for dtypes without an inverse.
    """
    backend = array_backend(a)
    if backend == "numpy":
        if isinstance(a, np.ma.MaskedArray):
            raise TypeError(
                "masked arrays are not supported by gpuinv.inv: the mask would be "
                "silently ignored; pass a.filled(value) or a.data explicitly"
            )
        # asarray keeps the data in place: memmaps and ndarray subclasses
        # become plain views (the result takes the subclass back at the end,
        # wrap_like_input), lists and scalars become new arrays.
        a = np.asarray(a)
    check_stack_shape(a.shape)
    dtype = result_dtype(a.dtype)
    return Operand(array=a, backend=backend, batch_shape=tuple(a.shape[:-2]), n=a.shape[-1], dtype=dtype)


def solve_dtype(a_dtype: np.dtype, b_dtype: np.dtype) -> np.dtype:
    """The compute dtype of a solve: gpuinv's rules on NumPy 2's common type."""
    try:
        common = np.result_type(a_dtype, b_dtype)
    except TypeError:
        common = np.dtype(object)
    dtype = result_dtype(common)
    if np.dtype(b_dtype).kind not in "biufc":
        result_dtype(b_dtype)  # raises the TypeError naming b's dtype
    return np.dtype(dtype)


def solve_shapes(a_shape: tuple[int, ...], b_shape: tuple[int, ...]
                 ) -> tuple[tuple[int, ...], int, int, bool]:
    """``(batch, n, k, vector)`` of a solve, with NumPy 2's rules for ``b``.

    ``b`` is a vector only when it is 1-D (shape (n,)); otherwise it is a
    stack of (n, k) matrices whose batch axes broadcast against ``a``'s.
    ``a_shape`` must already be a stack of square matrices.

    Raises
    ------
    ValueError
        If ``b`` is 0-D, does not have n rows, or the batches do not broadcast.
    """
    if len(b_shape) == 0:
        raise ValueError("b must be at least one-dimensional: (n,) or (..., n, k)")
    n = a_shape[-1]
    vector = len(b_shape) == 1
    rows = b_shape[0] if vector else b_shape[-2]
    if rows != n:
        raise ValueError(
            f"solve: b has {rows} rows but a is {n}x{n} "
            f"(a: {tuple(a_shape)}, b: {tuple(b_shape)})"
        )
    k = 1 if vector else b_shape[-1]
    batch = np.broadcast_shapes(tuple(a_shape[:-2]), () if vector else tuple(b_shape[:-2]))
    return batch, n, k, vector


def normalize_solve(a: Any, b: Any) -> tuple[Operand, Any, bool]:
    """Validate ``a`` and ``b`` of a solve, broadcast them, and pick the dtype.

    Returns the operand (``a`` broadcast to the common batch, the common
    dtype), ``b`` broadcast to (batch..., n, k) (a 1-D ``b`` as one column),
    and whether ``b`` was a vector. Broadcasting makes views: nothing is
    copied.
    """
    op = normalize(a)
    backend = op.backend
    if array_backend(b) != backend:
        if backend == "cupy":
            import cupy

            b = cupy.asarray(b)
        else:
            raise TypeError(
                "b is a CuPy array but a is not: pass both as NumPy or both as CuPy arrays"
            )
    elif backend == "numpy":
        if isinstance(b, np.ma.MaskedArray):
            raise TypeError("masked arrays are not supported by gpuinv.solve: the mask would be "
                            "silently ignored; pass b.filled(value) or b.data explicitly")
        b = np.asarray(b)
    if b.ndim == 0:
        solve_shapes(op.array.shape, ())  # raises
    dtype = solve_dtype(op.array.dtype, b.dtype)
    batch, n, k, vector = solve_shapes(tuple(op.array.shape), tuple(b.shape))
    if vector:
        b = b[:, None]
    xp = np if backend == "numpy" else _cupy()
    a_b = xp.broadcast_to(op.array, batch + (n, n))
    b_b = xp.broadcast_to(b, batch + (n, k))
    return Operand(a_b, backend, batch, n, dtype), b_b, vector


def _cupy() -> Any:
    import cupy

    return cupy


def check_stack_shape(shape: tuple) -> None:
    """Raise NumPy's LinAlgError unless ``shape`` is ``(..., n, n)``."""
    if len(shape) < 2:
        raise np.linalg.LinAlgError(
            f"{len(shape)}-dimensional array given. Array must be at least two-dimensional"
        )
    if shape[-1] != shape[-2]:
        raise np.linalg.LinAlgError("Last 2 dimensions of the array must be square")


def wrap_like_input(a: Any, result: Any) -> Any:
    """Return ``result`` as the kind of array ``numpy.linalg.inv(a)`` returns.

    ``numpy.linalg.inv`` hands its result to the input's ``__array_wrap__``
    (``_makearray`` in ``numpy/linalg/_linalg.py``), so an ndarray subclass
    comes back as that subclass, a view of the same memory: ``np.matrix`` in,
    ``np.matrix`` out. ``np.memmap``'s own wrap gives a plain ndarray (an
    inverse is not backed by the input's file); a subclass of ``np.memmap``
    gets its class, with no file behind it. Plain ndarrays, lists and other
    array-likes, and CuPy arrays, are returned unchanged.
    """
    if isinstance(a, np.ndarray) and type(a) is not np.ndarray:
        return a.__array_wrap__(result)
    return result
