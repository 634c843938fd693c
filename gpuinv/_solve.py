"""The public functions ``solve`` and ``solve_ex``: batched ``a @ x = b``."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._adapters import foreign_library
from ._device import DeviceLike, parse_device
from ._dispatch import select_engine
from ._dtypes import result_dtype
from ._normalize import Operand, array_backend, normalize, wrap_like_input
from ._numerics import parse_structure, warn_ill_conditioned
from ._policy import apply_policy, check_policy

__all__ = ["solve", "solve_ex", "SolveResult", "SolveRcondResult"]


class SolveResult(NamedTuple):
    """What :func:`solve_ex` returns.

    Attributes
    ----------
    solution : array, shape (..., n) or (..., n, k)
        ``x`` with ``a @ x = b``, as the same kind of array as ``a``. NaN for
        matrices with a non-zero info code.
    info : int32 array, shape (...)
        The info code of ``a`` per matrix, as :func:`gpuinv.inv_ex` reports
        it for the same ``assume_a``.
    """

    solution: Any
    info: Any


class SolveRcondResult(NamedTuple):
    """What :func:`solve_ex` returns with ``rcond=True``: :class:`SolveResult` plus ``rcond``.

    ``rcond`` is the reciprocal condition number of ``a`` (see
    :class:`gpuinv.InvRcondResult`).
    """

    solution: Any
    info: Any
    rcond: Any


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _prepare(a: Any, b: Any) -> tuple[Operand, Any, bool]:
    """Validate ``a`` and ``b``, broadcast them, and pick the dtype (NumPy 2 rules).

    ``b`` is a vector only when it is 1-D (shape (n,)); otherwise it is a
    stack of (n, k) matrices whose batch axes broadcast against ``a``'s.
    Returns the broadcast operand, ``b`` broadcast to (batch..., n, k), and
    whether ``b`` was a vector.
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
        raise ValueError("b must be at least one-dimensional: (n,) or (..., n, k)")
    try:
        common = np.result_type(op.array.dtype, b.dtype)
    except TypeError:
        common = np.dtype(object)
    dtype = result_dtype(common)
    if b.dtype.kind not in "biufc":
        result_dtype(b.dtype)  # raises the TypeError naming b's dtype
    vector = b.ndim == 1
    if vector:
        b = b[:, None]
    n = op.n
    if b.shape[-2] != n:
        raise ValueError(
            f"solve: b has {b.shape[-2]} rows but a is {n}x{n} "
            f"(a: {tuple(op.array.shape)}, b: {tuple(b.shape) if not vector else (b.shape[0],)})"
        )
    batch = np.broadcast_shapes(op.batch_shape, tuple(b.shape[:-2]))
    xp = np if backend == "numpy" else _cupy()
    a_b = xp.broadcast_to(op.array, batch + (n, n))
    b_b = xp.broadcast_to(b, batch + (n, b.shape[-1]))
    return Operand(a_b, backend, batch, n, np.dtype(dtype)), b_b, vector


def _cupy() -> Any:
    import cupy

    return cupy


def _run_solve(a: Any, b: Any, device: DeviceLike, assume_a: str | None, lower: bool,
               rcond: bool) -> tuple[Operand, Any, Any, Any, bool]:
    request = parse_device(device)
    op, b, vector = _prepare(a, b)
    structure = parse_structure(assume_a, op.dtype)
    engine = select_engine(op, request)
    if engine.name == "cpu":
        if op.backend == "cupy":
            import cupy

            with op.array.device:
                host = Operand(cupy.asnumpy(op.array), "numpy", op.batch_shape, op.n, op.dtype)
                x, info, rc = engine.solve_ex(host, cupy.asnumpy(b), structure=structure,
                                              lower=lower, rcond=rcond)
                return (op, cupy.asarray(x), cupy.asarray(info),
                        None if rc is None else cupy.asarray(rc), vector)
        x, info, rc = engine.solve_ex(op, b, structure=structure, lower=lower, rcond=rcond)
        return op, x, info, rc, vector
    from .engines._cuda_numerics import cuda_solve_ex

    x, info, rc = cuda_solve_ex(engine, op, b, structure=structure, lower=lower, rcond=rcond)
    return op, x, info, rc, vector


def solve_ex(
    a: Any,
    b: Any,
    /,
    *,
    assume_a: str | None = "general",
    lower: bool = False,
    rcond: bool = False,
    device: DeviceLike = "auto",
) -> SolveResult | SolveRcondResult:
    """Solve ``a @ x = b`` for every matrix of a stack; never raises for singular ``a``.

    Parameters
    ----------
    a : (..., n, n) array_like
        The matrices; NumPy or CuPy array, torch tensor, JAX array, or
        anything ``numpy.asarray`` accepts.
    b : (n,) or (..., n, k) array_like
        The right-hand sides, with NumPy 2's rules: ``b`` is one vector
        only when it is 1-D; otherwise it is a stack of (n, k) matrices whose
        batch axes broadcast against those of ``a`` (a stack of vectors is
        written ``b[..., None]``).
    assume_a : str, optional
        The structure of ``a``; see :func:`gpuinv.inv_ex`.
    lower : bool, optional
        Read the lower triangle of ``a`` for the positive definite,
        symmetric and Hermitian structures.
    rcond : bool, optional
        Also return the reciprocal condition number of every ``a``. This
        needs the inverse of ``a`` (exact rcond is defined from it), so it
        costs about one inversion more than the solve.
    device : {"auto", "cpu", "cuda", "cuda:N"} or int, optional
        Where to compute; see :func:`gpuinv.inv_ex`.

    Returns
    -------
    SolveResult or SolveRcondResult
        ``(solution, info)`` or ``(solution, info, rcond)``; ``solution``
        has the broadcast batch shape and ``b``'s trailing shape, in the
        common dtype of ``a`` and ``b`` under gpuinv's dtype rules. The info
        codes are those of :func:`gpuinv.inv_ex` for ``a``; NaN or Inf in
        ``b`` only propagates into the solution.

    Raises
    ------
    numpy.linalg.LinAlgError
        If ``a`` is not a stack of square matrices.
    ValueError
        If ``b`` does not fit ``a`` or the batch shapes do not broadcast.
    TypeError
        If a dtype has no inverse.

    Examples
    --------
    >>> import numpy as np, gpuinv
    >>> a = np.array([[[2.0, 0.0], [0.0, 4.0]], [[1.0, 2.0], [2.0, 4.0]]])
    >>> b = np.array([[[2.0], [4.0]], [[1.0], [1.0]]])
    >>> res = gpuinv.solve_ex(a, b, device="cpu")
    >>> res.info
    array([0, 2], dtype=int32)
    >>> res.solution[0]
    array([[1.],
           [1.]])
    """
    _flag("lower", lower)
    _flag("rcond", rcond)
    library = foreign_library(a) or foreign_library(b)
    if library is not None:
        return _foreign_solve(a, b, library, device, assume_a, lower, rcond, None, False)
    _, x, info, rc, vector = _run_solve(a, b, device, assume_a, lower, rcond)
    if vector:
        x = x[..., 0]
    x = wrap_like_input(b, x)  # an ndarray subclass b gives its class back, as numpy.linalg.solve does
    if rcond:
        return SolveRcondResult(x, info, rc)
    return SolveResult(x, info)


def solve(
    a: Any,
    b: Any,
    /,
    *,
    on_singular: str = "raise",
    assume_a: str | None = "general",
    lower: bool = False,
    check_cond: bool = False,
    device: DeviceLike = "auto",
) -> Any:
    """Solve ``a @ x = b`` for every matrix of a stack.

    Faster than ``inv(a) @ b`` (benchmarks/bench_numerics.py measures it).
    On the CPU, n <= 4 uses the closed forms (``adj(a) b / det(a)`` with the
    closed-form inverse's scaling and guard, never forming the inverse), so
    its accuracy there is that of the closed-form inverse, which ``inv``
    uses too; larger n uses LAPACK ``gesv``/``potrs``, backward stable and
    more accurate than ``inv(a) @ b``. On the GPU: cuBLAS ``getrfBatched`` +
    ``getrsBatched`` or cuSOLVER ``potrsBatched``.

    Parameters
    ----------
    a : (..., n, n) array_like
        The matrices; never modified.
    b : (n,) or (..., n, k) array_like
        The right-hand sides (NumPy 2 rules, see :func:`solve_ex`).
    on_singular : {"raise", "nan", "ignore"}, optional
        As in :func:`gpuinv.inv`: raise :class:`gpuinv.SingularMatrixError`
        naming the failed matrices (default), fill their solutions with NaN,
        or return what the computation produced.
    assume_a : str, optional
        The structure of ``a``; see :func:`gpuinv.inv_ex`.
    lower : bool, optional
        Read the lower triangle for positive definite, symmetric and
        Hermitian ``a``.
    check_cond : bool, optional
        Warn :class:`gpuinv.LinAlgWarning` for matrices with rcond below the
        epsilon of the dtype. Default False, unlike :func:`gpuinv.inv`: the
        exact rcond needs the inverse of ``a``, which would cost more than
        the solve itself; turn it on, or use ``solve_ex(a, b, rcond=True)``,
        when the conditioning matters.
    device : {"auto", "cpu", "cuda", "cuda:N"} or int, optional
        Where to compute; see :func:`gpuinv.inv_ex`.

    Returns
    -------
    ndarray
        ``x``, shape ``broadcast(a.shape[:-2], b.shape[:-2]) + b.shape[-2:]``
        (or ``a.shape[:-1]`` for 1-D ``b``), the same kind of array as ``a``.

    Raises
    ------
    SingularMatrixError
        With ``on_singular="raise"``, if any ``a`` is singular or non-finite.

    Warns
    -----
    LinAlgWarning
        With ``check_cond=True``, for ill-conditioned matrices.

    Examples
    --------
    >>> import numpy as np, gpuinv
    >>> a = np.array([[3.0, 1.0], [1.0, 2.0]])
    >>> gpuinv.solve(a, np.array([9.0, 8.0]), device="cpu")
    array([2., 3.])
    """
    check_policy(on_singular)
    _flag("lower", lower)
    _flag("check_cond", check_cond)
    library = foreign_library(a) or foreign_library(b)
    if library is not None:
        return _foreign_solve(a, b, library, device, assume_a, lower, False, on_singular,
                              check_cond)
    op, x, info, rc, vector = _run_solve(a, b, device, assume_a, lower, check_cond)
    x = apply_policy(x, info, on_singular)
    if check_cond:
        warn_ill_conditioned(rc, info, op.dtype, stacklevel=2)
    return wrap_like_input(b, x[..., 0] if vector else x)


def _foreign_solve(a: Any, b: Any, library: str, device: DeviceLike, assume_a: str | None,
                   lower: bool, rcond: bool, on_singular: str | None, check_cond: bool) -> Any:
    if library == "dask":
        raise NotImplementedError("gpuinv.solve does not support dask arrays yet")
    from ._adapters import import_array
    from ._api import _cuda_device

    ia = import_array(a, library) if foreign_library(a) else None
    ib = import_array(b, library) if foreign_library(b) else None
    lead = ia or ib
    assert lead is not None
    aa = ia.array if ia is not None else a
    bb = ib.array if ib is not None else b
    with _cuda_device(lead.device_id):
        if on_singular is None:
            result = solve_ex(aa, bb, assume_a=assume_a, lower=lower, rcond=rcond, device=device)
            return type(result)(*(lead.export(x) for x in result))
        return lead.export(solve(aa, bb, on_singular=on_singular, assume_a=assume_a, lower=lower,
                                 check_cond=check_cond, device=device))
