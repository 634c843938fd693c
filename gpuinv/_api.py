"""The public functions: ``inv`` and ``inv_ex``."""

from __future__ import annotations

from typing import Any, NamedTuple

from ._device import DeviceLike
from ._path import run
from ._request import make_request

__all__ = ["inv", "inv_ex", "InvResult", "InvRcondResult"]


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


class InvRcondResult(NamedTuple):
    """What :func:`inv_ex` returns with ``rcond=True``: :class:`InvResult` plus ``rcond``.

    Attributes
    ----------
    inverse, info
        As in :class:`InvResult`.
    rcond : array, shape (...)
        Per matrix, ``1 / (||A||_1 ||X||_1)`` in the real dtype of the
        inverse: exact for the computed inverse X, not an estimate. 0 for
        info > 0 (and for an inverse that overflowed), NaN for info -1.
    """

    inverse: Any
    info: Any
    rcond: Any


def inv_ex(
    a: Any,
    /,
    *,
    assume_a: str | None = "general",
    lower: bool = False,
    rcond: bool = False,
    device: DeviceLike = "auto",
) -> InvResult | InvRcondResult:
    """Invert every matrix of a stack and report each one's status; never raises for singular input.

    Parameters
    ----------
    a : (..., n, n) array_like
        NumPy or CuPy array, torch tensor, JAX array, dask array, or anything
        ``numpy.asarray`` accepts.
    assume_a : str, optional
        The structure of the matrices, with SciPy 1.17's names:
        ``"general"`` (``"gen"``, default; also ``None``), ``"diagonal"``,
        ``"upper triangular"``, ``"lower triangular"``, ``"positive
        definite"`` (``"pos"``), ``"symmetric"`` (``"sym"``) and
        ``"hermitian"`` (``"her"``). Only the entries the structure needs
        are read (see Notes).
    lower : bool, optional
        For ``"positive definite"``, ``"symmetric"`` and ``"hermitian"``:
        read the lower triangle instead of the upper one (SciPy's default).
    rcond : bool, optional
        Also return the reciprocal condition number of every matrix (see
        Returns). Default False: the result then unpacks as two values,
        as it always has.
    device : {"auto", "cpu", "cuda", "cuda:N"} or int, optional
        Where to compute. ``"auto"`` (default) runs CuPy input on the GPU
        that holds it, and NumPy input on the GPU when one is usable and the
        stack is large enough to win, otherwise on the CPU.

    Returns
    -------
    InvResult or InvRcondResult
        ``(inverse, info)``, or with ``rcond=True`` ``(inverse, info,
        rcond)``, all the same kind of array as ``a``, on the same device; for an
        ndarray subclass the inverse is that subclass (as
        :func:`numpy.linalg.inv` returns it) and ``info`` and ``rcond``
        plain ndarrays.
        ``rcond`` is ``1 / (||A||_1 ||X||_1)`` per matrix, exact for the
        computed inverse X (``1 / numpy.linalg.cond(a, 1)`` up to rounding),
        in the real dtype of the inverse; 0 where info > 0 or the inverse
        overflowed, NaN where info is -1. For CuPy input (and CUDA tensors)
        nothing is synchronized with the host: ``info`` and ``rcond`` stay
        on the device. For dask input all are lazy dask arrays.

    Raises
    ------
    numpy.linalg.LinAlgError
        If ``a`` is not a stack of square matrices.
    TypeError
        If the dtype has no inverse (object, string, datetime, ...).
    ValueError
        If ``assume_a`` is not a known structure.

    Notes
    -----
    Why a separate result type for ``rcond``: ``inverse, info =
    gpuinv.inv_ex(a)`` is how existing code (and ``torch.linalg.inv_ex``)
    unpacks the result, and a named tuple with a third field would break
    it. ``rcond=True`` returns :class:`InvRcondResult`, which unpacks as
    three values and also has ``.inverse`` and ``.info``.

    The info codes depend on ``assume_a``:

    * general, symmetric, Hermitian: LU's (k > 0: zero pivot at step k);
      symmetric and Hermitian matrices are mirrored from the triangle read
      and inverted by LU, and the inverse is mirrored to be exactly
      symmetric (Hermitian);
    * positive definite: LAPACK ``potrf``'s, a different meaning: k > 0 when
      the leading minor of order k is not positive definite (the matrix may
      well be invertible, e.g. ``[[0, 1], [1, 0]]`` has info 1); the inverse
      comes from the Cholesky factor and is exactly symmetric (Hermitian);
    * diagonal, triangular: k > 0 when the k-th diagonal entry is the first
      zero (LAPACK ``trtri``'s);
    * -1 everywhere for NaN or Inf among the entries read.

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
    >>> gpuinv.inv_ex(a, rcond=True, device="cpu").rcond
    array([0.5, 0. ])
    """
    request = make_request("inverse", assume_a=assume_a, lower=lower, rcond=rcond,
                           device=device)
    inverse, info, rc = run(request, a)
    if request.rcond:
        return InvRcondResult(inverse, info, rc)
    return InvResult(inverse, info)


def inv(
    a: Any,
    /,
    *,
    on_singular: str = "raise",
    assume_a: str | None = "general",
    lower: bool = False,
    check_cond: bool = True,
    device: DeviceLike = "auto",
) -> Any:
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
    assume_a : str, optional
        The structure of the matrices; see :func:`inv_ex` (SciPy 1.17's
        names; ``"positive definite"`` uses Cholesky and its info codes).
    lower : bool, optional
        Read the lower triangle for the positive definite, symmetric and
        Hermitian structures; see :func:`inv_ex`.
    check_cond : bool, optional
        Warn :class:`LinAlgWarning` when some inverted matrix has a
        reciprocal condition number below the epsilon of the compute dtype
        (default True, as SciPy does: a nearly singular matrix returns a
        finite inverse with no correct digits, and nothing else says so).
        The check costs two 1-norms per matrix (O(n^2) against the inverse's
        O(n^3); benchmarks/bench_numerics.py measures it) and, for CuPy
        input, one read of a boolean from the device. ``False`` makes ``inv``
        cost exactly what it did before the check existed. Dask input is
        checked block by block, where each block is computed (see Notes).
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

    Warns
    -----
    LinAlgWarning
        With ``check_cond=True``, naming how many matrices are
        ill-conditioned and the batch indices of the first ones.

    Notes
    -----
    For CuPy input, ``inv`` synchronizes with the device once, to read
    whether any matrix failed (or is ill-conditioned); ``inv_ex`` never does.
    For dask input the error is raised when the failing block is computed,
    and names global batch indices; so does the warning, which is issued
    where the block is computed: in the calling process under dask's local
    schedulers, in the worker (and its log) on a distributed cluster.

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
    request = make_request("inverse", assume_a=assume_a, lower=lower, on_singular=on_singular,
                           check_cond=check_cond, device=device)
    return run(request, a)[0]
