"""The public functions: ``inv`` and ``inv_ex``."""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

from ._adapters import foreign_library
from ._device import DeviceLike, parse_device
from ._dispatch import select_engine
from ._normalize import Operand, normalize, wrap_like_input
from ._policy import apply_policy, check_policy

__all__ = ["inv", "inv_ex", "InvResult"]


class InvResult(NamedTuple):
    """What :func:`inv_ex` returns.

    Attributes
    ----------
    inverse : array, shape (..., n, n)
        The inverses, as the same kind of array as the input. Entries of
        matrices with a non-zero info code are NaN (non-finite input) or
        whatever the engine produced (singular input).
    info : int32 array, shape (...)
        Per matrix: 0 inverted; k > 0 exactly singular, zero pivot at step k
        (1-based); -1 NaN or Inf in the input.
    """

    inverse: Any
    info: Any


def _run(a: Any, device: DeviceLike) -> tuple[Operand, Any, Any]:
    request = parse_device(device)
    op = normalize(a)
    engine = select_engine(op, request)
    if op.backend == "cupy" and engine.name == "cpu":
        import cupy

        with op.array.device:
            host = Operand(cupy.asnumpy(op.array), "numpy", op.batch_shape, op.n, op.dtype)
            inverse, info = engine.invert(host)
            return op, cupy.asarray(inverse), cupy.asarray(info)
    inverse, info = engine.invert(op)
    return op, inverse, info


def inv_ex(a: Any, /, *, device: DeviceLike = "auto") -> InvResult:
    """Invert every matrix of a stack and report each one's status; never raises for singular input.

    Parameters
    ----------
    a : (..., n, n) array_like
        NumPy or CuPy array, torch tensor, JAX array, dask array, or anything
        ``numpy.asarray`` accepts.
    device : {"auto", "cpu", "cuda", "cuda:N"} or int, optional
        Where to compute. ``"auto"`` (default) runs CuPy input on the GPU
        that holds it, and NumPy input on the GPU when one is usable and the
        stack is large enough to win, otherwise on the CPU.

    Returns
    -------
    InvResult
        ``(inverse, info)``, both the same kind of array as ``a``, on the
        same device; for an ndarray subclass the inverse is that subclass
        (as :func:`numpy.linalg.inv` returns it) and ``info`` a plain
        ndarray. For CuPy input (and CUDA tensors) nothing is
        synchronized with the host: ``info`` stays on the device. For dask
        input both are lazy dask arrays.

    Raises
    ------
    numpy.linalg.LinAlgError
        If ``a`` is not a stack of square matrices.
    TypeError
        If the dtype has no inverse (object, string, datetime, ...).

    Examples
    --------
    >>> import numpy as np, gpuinv
    >>> a = np.array([[[2.0, 0.0], [0.0, 4.0]], [[1.0, 2.0], [2.0, 4.0]]])
    >>> res = gpuinv.inv_ex(a, device="cpu")
    >>> res.info
    array([0, 2], dtype=int32)
    >>> res.inverse[0]
    array([[0.5 , 0.  ],
           [0.  , 0.25]])
    """
    library = foreign_library(a)
    if library is not None:
        return _foreign(a, library, device, None)
    _, inverse, info = _run(a, device)
    return InvResult(wrap_like_input(a, inverse), info)


def inv(a: Any, /, *, on_singular: str = "raise", device: DeviceLike = "auto") -> Any:
    """Compute the inverse of every matrix in a stack.

    Parameters
    ----------
    a : (..., n, n) array_like
        NumPy or CuPy array, torch tensor, JAX array, dask array, or
        anything ``numpy.asarray`` accepts. It is never modified. bool and
        integer input computes in float64, float16 in float32; float32,
        float64, complex64 and complex128 keep their dtype.
    on_singular : {"raise", "nan", "ignore"}, optional
        What to do with matrices that cannot be inverted (exactly singular,
        or holding NaN or Inf). ``"raise"`` (default) raises
        :class:`SingularMatrixError` naming their batch indices; ``"nan"``
        fills exactly those inverses with NaN; ``"ignore"`` returns what the
        computation produced.
    device : {"auto", "cpu", "cuda", "cuda:N"} or int, optional
        Where to compute; see :func:`inv_ex`.

    Returns
    -------
    ndarray, shape (..., n, n)
        The inverses, the same kind of array as ``a`` on the same device
        (an ndarray subclass through its ``__array_wrap__``, as
        :func:`numpy.linalg.inv` does, so ``np.matrix`` gives ``np.matrix``;
        torch and JAX through DLPack, without copies where the memory
        allows; dask lazily, see ``docs/dask.md``).

    Raises
    ------
    SingularMatrixError
        With ``on_singular="raise"``, if any matrix is singular or non-finite.
        A subclass of ``numpy.linalg.LinAlgError`` with ``.info`` and
        ``.indices``.
    numpy.linalg.LinAlgError
        If ``a`` is not a stack of square matrices.
    TypeError
        If the dtype has no inverse.

    Notes
    -----
    For CuPy input, ``inv`` synchronizes with the device once, to read
    whether any matrix failed; ``inv_ex`` never does. For dask input the
    error is raised when the failing block is computed, and names global
    batch indices.

    Examples
    --------
    >>> import numpy as np, gpuinv
    >>> a = np.array([[[4.0, 7.0], [2.0, 6.0]], [[1.0, 0.0], [0.0, 2.0]]])
    >>> gpuinv.inv(a, device="cpu")
    array([[[ 0.6, -0.7],
            [-0.2,  0.4]],
    <BLANKLINE>
           [[ 1. ,  0. ],
            [ 0. ,  0.5]]])
    """
    check_policy(on_singular)
    library = foreign_library(a)
    if library is not None:
        return _foreign(a, library, device, on_singular)
    _, inverse, info = _run(a, device)
    return wrap_like_input(a, apply_policy(inverse, info, on_singular))


def _foreign(a: Any, library: str, device: DeviceLike, on_singular: str | None) -> Any:
    """Run ``inv`` (``on_singular`` given) or ``inv_ex`` (None) on a dask
    array, torch tensor or JAX array; their modules load only here."""
    if library == "dask":
        from ._dask import dask_inv, dask_inv_ex

        if on_singular is None:
            return dask_inv_ex(a, device=device)
        return dask_inv(a, on_singular=on_singular, device=device)

    from ._adapters import import_array

    imported = import_array(a, library)
    with _cuda_device(imported.device_id):
        if on_singular is None:
            inverse, info = inv_ex(imported.array, device=device)
            return InvResult(imported.export(inverse), imported.export(info))
        # A SingularMatrixError propagates as is: its indices are the
        # tensor's own batch indices.
        return imported.export(inv(imported.array, on_singular=on_singular, device=device))


def _cuda_device(device_id: int | None) -> Any:
    if device_id is None:
        return contextlib.nullcontext()
    import cupy

    return cupy.cuda.Device(device_id)
