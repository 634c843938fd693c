"""Info codes and the exception that reports failed matrices.

One meaning of ``info`` everywhere (every engine and kernel agrees):

* ``0``: the matrix was inverted;
* ``k > 0``: exactly singular, the elimination met a zero pivot at step ``k``
  (1-based, as LAPACK, cuBLAS and ``torch.linalg.inv_ex`` report it);
* ``-1``: the matrix held NaN or Inf; its inverse is NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["INFO_OK", "INFO_NONFINITE", "SingularMatrixError", "failure_message"]

INFO_OK = 0
INFO_NONFINITE = -1

#: How many failing batch indices an error message lists.
MAX_LISTED = 10


class SingularMatrixError(np.linalg.LinAlgError):
    """Raised by :func:`gpuinv.inv` when matrices could not be inverted.

    Attributes
    ----------
    info : numpy.ndarray
        int32 array of the batch shape with the info code of every matrix
        (0 inverted, k > 0 zero pivot at step k, -1 NaN or Inf in the input).
    indices : list of tuple of int
        The batch index of every failed matrix, in C order. Each one can
        index the input directly: ``a[err.indices[0]]``.
    """

    def __init__(self, message: str, info: np.ndarray, indices: list[tuple[int, ...]]):
        super().__init__(message)
        self.info = info
        self.indices = indices

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the attributes across pickling (multiprocessing, dask workers).
        return (type(self), (str(self), self.info, self.indices))


def _format_indices(indices: np.ndarray, ndim: int, offset: tuple[int, ...] | None = None) -> str:
    if offset is not None:  # a block of a larger batch: name global indices
        indices = indices + np.asarray(offset, dtype=np.int64)
    if ndim == 1:
        return ", ".join(str(int(i[0])) for i in indices)
    return ", ".join(str(tuple(int(j) for j in i)) for i in indices)


def failure_message(info: np.ndarray, offset: tuple[int, ...] | None = None) -> str:
    """Describe the failed matrices of a host ``info`` array in one message.

    The message says how many of how many matrices failed, tells singular
    from non-finite apart, and lists the batch indices of the first
    ``MAX_LISTED`` of each kind. ``offset`` (one entry per batch axis) is
    added to every listed index, for ``info`` of one block of a larger batch.
    """
    total = info.size
    singular = np.argwhere(info > 0)
    nonfinite = np.argwhere(info == INFO_NONFINITE)
    failed = len(singular) + len(nonfinite)
    if info.ndim == 0:
        if int(info) == INFO_NONFINITE:
            return "Matrix holds NaN or Inf and cannot be inverted"
        return f"Singular matrix (zero pivot at step {int(info)})"
    parts = []
    for name, where in (("singular", singular), ("non-finite (NaN or Inf)", nonfinite)):
        if len(where):
            listed = _format_indices(where[:MAX_LISTED], info.ndim, offset)
            more = f", ... ({len(where) - MAX_LISTED} more)" if len(where) > MAX_LISTED else ""
            parts.append(f"{len(where)} {name} at batch indices [{listed}{more}]")
    noun = "matrix" if total == 1 else "matrices"
    return f"{failed} of {total} {noun} could not be inverted: " + "; ".join(parts)
