"""Conditioning and structure, in one place: ``rcond``, ``LinAlgWarning`` and ``assume_a``.

Everything here works on NumPy and CuPy arrays alike (``xp`` is the array
module), so that the CPU and CUDA engines compute the same numbers and the
GPU never waits for the host.

rcond
    The reciprocal condition number in the 1-norm, computed exactly from the
    computed inverse: ``rcond = 1 / (||A||_1 * ||X||_1)`` with ``||M||_1`` the
    largest column sum of ``|M|`` (``|z|`` the modulus for complex entries),
    as ``1 / numpy.linalg.cond(a, 1)``. It costs O(n^2) per matrix once X is
    known. It is not LAPACK ``gecon``'s estimate: it is the exact value for
    the computed X, which matches the true one to about ``rcond / eps``
    relative accuracy. Per matrix: ``0`` when info > 0 (singular) or when the
    inverse overflowed, ``NaN`` when info is -1 (NaN or Inf in the input).
    ``A`` is the matrix as ``assume_a`` reads it (one triangle, the diagonal).

LinAlgWarning
    gpuinv's own class, a subclass of ``RuntimeWarning``. It is not SciPy's
    ``scipy.linalg.LinAlgWarning`` (also a ``RuntimeWarning`` subclass):
    gpuinv never imports SciPy, and a class whose identity depended on
    whether SciPy happened to be imported first would make warning filters
    unpredictable. ``warnings.filterwarnings("error", category=RuntimeWarning)``
    catches both.

assume_a
    SciPy 1.17's names for matrix structure, see :data:`STRUCTURES`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._errors import INFO_NONFINITE, MAX_LISTED, _format_indices

__all__ = [
    "LinAlgWarning",
    "STRUCTURES",
    "canonical_structure",
    "parse_structure",
    "structured_matrix",
    "rcond_from_inverse",
    "ill_conditioned_message",
]


class LinAlgWarning(RuntimeWarning):
    """Warned by :func:`gpuinv.inv` and :func:`gpuinv.solve` for ill-conditioned matrices.

    Issued when some matrix was inverted (info 0) but its reciprocal
    condition number ``rcond`` is below the machine epsilon of the compute
    dtype: its inverse (or solution) may have no correct digits. A subclass
    of ``RuntimeWarning``; not SciPy's class of the same name (gpuinv does
    not import SciPy). Attributes ``indices`` (batch indices of every such
    matrix) and ``rcond`` (host array of the batch shape) are set on the
    warning instance.
    """

    indices: list[tuple[int, ...]]
    rcond: np.ndarray


#: Every accepted spelling of ``assume_a`` and the structure it names
#: (SciPy 1.17: ``scipy.linalg.solve`` and ``scipy.linalg.inv`` together).
STRUCTURES = {
    "general": "general",
    "gen": "general",
    "diagonal": "diagonal",
    "upper triangular": "upper triangular",
    "lower triangular": "lower triangular",
    "positive definite": "positive definite",
    "pos": "positive definite",
    "symmetric": "symmetric",
    "sym": "symmetric",
    "hermitian": "hermitian",
    "her": "hermitian",
}


def canonical_structure(assume_a: str | None) -> str:
    """The canonical structure that ``assume_a`` names, whatever the dtype.

    ``None`` means ``"general"``: unlike SciPy, gpuinv does not inspect the
    matrices to guess a structure (that would read every matrix once more and,
    on the GPU, wait for the device).
    """
    if assume_a is None:
        return "general"
    if not isinstance(assume_a, str) or assume_a not in STRUCTURES:
        names = ", ".join(repr(k) for k in STRUCTURES)
        raise ValueError(f"{assume_a!r} is not a recognized matrix structure; use one of {names}")
    return STRUCTURES[assume_a]


def parse_structure(assume_a: str | None, dtype: np.dtype) -> str:
    """The canonical structure for ``assume_a`` and the compute dtype.

    As :func:`canonical_structure`, and ``"hermitian"`` on real input is
    ``"symmetric"``, as in SciPy.
    """
    structure = canonical_structure(assume_a)
    if structure == "hermitian" and np.dtype(dtype).kind != "c":
        return "symmetric"
    return structure


def _module(x: Any) -> Any:
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def structured_matrix(x: Any, structure: str, lower: bool) -> Any:
    """The full matrices that ``structure`` reads from ``x`` (..., n, n).

    Only the referenced entries are read: the diagonal for ``"diagonal"``,
    one triangle for the triangular structures, and for ``"symmetric"``,
    ``"hermitian"`` and ``"positive definite"`` the triangle that ``lower``
    names (the upper one by default, as in SciPy), mirrored (conjugated for
    Hermitian and complex positive definite matrices, whose diagonal's
    imaginary part is ignored, as LAPACK ``potrf`` does). Entries outside the
    referenced part may hold anything, NaN included. Returns ``x`` itself for
    ``"general"``, else a new array.
    """
    if structure == "general":
        return x
    xp = _module(x)
    n = x.shape[-1]
    rows = xp.arange(n)[:, None]
    cols = xp.arange(n)[None, :]
    zero = xp.zeros((), dtype=x.dtype)
    if structure == "diagonal":
        return xp.where(rows == cols, x, zero)
    if structure == "upper triangular":
        return xp.where(rows <= cols, x, zero)
    if structure == "lower triangular":
        return xp.where(rows >= cols, x, zero)
    keep = (rows > cols) if lower else (rows < cols)
    other = x.swapaxes(-1, -2)
    conjugate = structure == "hermitian" or (structure == "positive definite" and x.dtype.kind == "c")
    if conjugate:
        other = other.conj()
    full = xp.where(keep, x, other)
    if conjugate:
        full = xp.where(rows == cols, full.real.astype(x.dtype), full)
    return full


def one_norm(x: Any) -> Any:
    """``||x||_1`` of every matrix of ``x`` (..., n, n): the largest column sum of ``|x|``."""
    if isinstance(x, np.ndarray) and type(x).__module__ == "numpy":
        # NumPy's sum over the middle axis of a stack runs short inner loops;
        # einsum's summation is 1.3-2x faster for n = 3..64 (bench_numerics).
        return np.einsum("...ij->...j", np.abs(x)).max(axis=-1)
    return abs(x).sum(axis=-2).max(axis=-1)


def rcond_from_inverse(a: Any, x: Any, info: Any) -> Any:
    """``1 / (||a||_1 ||x||_1)`` per matrix, 0 for info > 0, NaN for info -1.

    ``a`` is the matrix as read (see :func:`structured_matrix`), ``x`` its
    computed inverse, ``info`` the codes; all the same kind of array. The
    result has the real dtype of ``x``. An inverse that overflowed gives 0.
    Only array methods, ``where``, ``isfinite``, ``zeros`` and ``asarray``
    are used, so the same code runs on the device for CuPy arrays.
    """
    xp = _module(x)
    real = np.dtype(x.dtype).type(0).real.dtype
    zero = xp.zeros((), dtype=real)
    if x.shape[-1] == 0:
        return xp.zeros(info.shape, dtype=real) + 1
    with np.errstate(all="ignore"):
        prod = one_norm(a).astype(real) * one_norm(x).astype(real)
        rc = (1 / prod).astype(real)
    rc = xp.where(xp.isfinite(rc), rc, zero)  # Inf or NaN norm: the inverse overflowed
    rc = xp.where(info > 0, zero, rc)
    return xp.where(info == INFO_NONFINITE, xp.asarray(np.nan, dtype=real), rc)


def ill_conditioned_message(bad: np.ndarray, rcond: np.ndarray, eps: float,
                           offset: tuple[int, ...] | None = None) -> str:
    """The warning's text for the boolean mask ``bad`` of a batch shape.

    ``offset`` (one entry per batch axis) is added to every listed index,
    for ``bad`` of one block of a larger batch.
    """
    where = np.argwhere(bad)
    total = bad.size
    noun = "matrix" if total == 1 else "matrices"
    if bad.ndim == 0:
        return (f"Ill-conditioned matrix (rcond={float(rcond):.3g} < eps={eps:.3g}): "
                "the result may be inaccurate")
    listed = _format_indices(where[:MAX_LISTED], bad.ndim, offset)
    more = f", ... ({len(where) - MAX_LISTED} more)" if len(where) > MAX_LISTED else ""
    return (f"{len(where)} of {total} {noun} ill-conditioned (rcond < eps={eps:.3g}), "
            f"the results may be inaccurate: batch indices [{listed}{more}]")
