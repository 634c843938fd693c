"""The public functions ``solve`` and ``solve_ex``: batched ``a @ x = b``."""

from __future__ import annotations

from typing import Any, NamedTuple

from ._device import DeviceLike
from ._path import run
from ._request import make_request

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
        The matrices; NumPy or CuPy array, torch tensor, JAX array, dask
        array (lazy: see ``docs/dask.md``), or
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
    request = make_request("solve", assume_a=assume_a, lower=lower, rcond=rcond, device=device)
    x, info, rc = run(request, a, b)
    if request.rcond:
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
    request = make_request("solve", assume_a=assume_a, lower=lower, on_singular=on_singular,
                           check_cond=check_cond, device=device)
    return run(request, a, b)[0]
