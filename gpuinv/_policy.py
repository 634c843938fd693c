"""Step 5 of a call: the policy on ``info`` and the conditioning warning.

``on_singular`` (raise / nan / ignore) and ``check_cond`` act here, on the
engine's results, the same way for every engine and for every block of a
dask array (whose errors and warnings name global batch indices: see
:class:`Block`).
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, NamedTuple

import numpy as np

from ._errors import SingularMatrixError, failure_message
from ._numerics import LinAlgWarning, ill_conditioned_message

__all__ = ["POLICIES", "Block", "check_policy", "apply_policy", "warn_ill_conditioned"]

POLICIES = ("raise", "nan", "ignore")


class Block(NamedTuple):
    """Where one block of a larger batch sits (a dask block).

    ``offset`` is the block's first batch index, one entry per batch axis;
    ``batch_shape`` the whole batch's shape. Errors and warnings add the
    offset to every index they name, and say which block they come from.
    """

    offset: tuple[int, ...]
    batch_shape: tuple[int, ...]

    def describe(self, local_shape: tuple[int, ...]) -> str:
        stop = tuple(o + s for o, s in zip(self.offset, local_shape))
        where = ", ".join(f"{o}:{s}" for o, s in zip(self.offset, stop))
        return f" (in the block [{where}] of a batch of shape {self.batch_shape})"

    def shift(self, local: np.ndarray) -> list[tuple[int, ...]]:
        """Global batch indices of the local indices ``local`` (k, ndim)."""
        return [tuple(int(i) + o for i, o in zip(idx, self.offset)) for idx in local]


def check_policy(on_singular: str) -> None:
    if on_singular not in POLICIES:
        raise ValueError(
            f"on_singular must be one of 'raise', 'nan' or 'ignore', got {on_singular!r}"
        )


def _to_host(x: Any) -> np.ndarray:
    get = getattr(x, "get", None)  # CuPy arrays; NumPy arrays have no .get
    return np.asarray(get() if callable(get) else x)


def apply_policy(result: Any, info: Any, on_singular: str, block: Block | None = None) -> Any:
    """Return ``result`` after applying the policy; may raise SingularMatrixError.

    ``result`` is the inverses (..., n, n) or the solutions (..., n, k).
    Works on NumPy and CuPy arrays alike. ``"raise"`` reads one boolean back
    from the device (the one synchronization of ``inv``) and fetches ``info``
    only when something failed. ``"nan"`` stays on the device.
    """
    if on_singular == "ignore" or info.size == 0:
        return result
    failed = info != 0
    if on_singular == "nan":
        # copyto with where= is elementwise on either library: no host round trip.
        xp = _array_module(result)
        xp.copyto(result, xp.asarray(np.nan, dtype=result.dtype), where=failed[..., None, None])
        return result
    if bool(failed.any()):
        host_info = _to_host(info)
        local = np.argwhere(host_info != 0)
        if block is None:
            indices = [tuple(int(j) for j in i) for i in local]
            raise SingularMatrixError(failure_message(host_info), host_info, indices)
        message = failure_message(host_info, offset=block.offset) + block.describe(host_info.shape)
        raise SingularMatrixError(message, host_info, block.shift(local))
    return result


def warn_ill_conditioned(rcond: Any, info: Any, dtype: np.dtype, block: Block | None = None) -> None:
    """Warn :class:`LinAlgWarning` for matrices with info 0 and rcond < eps of ``dtype``.

    Matrices with a non-zero info are left to ``on_singular``. For CuPy
    arrays this reads one boolean back from the device, and the rcond array
    only when something is ill-conditioned. The warning points at the first
    caller outside gpuinv. For a dask block, ``indices`` are global and
    ``rcond`` is the block's.
    """
    if info.size == 0:
        return
    eps = float(np.finfo(np.dtype(dtype)).eps)
    if isinstance(rcond, np.ndarray) and rcond.min() >= eps:
        # The common case in one reduction without temporaries: no rcond
        # below eps (NaN, for info -1, makes the test fail: the full check).
        return
    bad = (info == 0) & (rcond < eps)
    if not bool(bad.any()):
        return
    host_rcond = _to_host(rcond)
    host_bad = _to_host(bad)
    where = np.argwhere(host_bad)
    if block is None:
        message = ill_conditioned_message(host_bad, host_rcond, eps)
        indices = [tuple(int(j) for j in i) for i in where]
    else:
        message = (ill_conditioned_message(host_bad, host_rcond, eps, offset=block.offset)
                   + block.describe(host_bad.shape))
        indices = block.shift(where)
    warning = LinAlgWarning(message)
    warning.indices = indices
    warning.rcond = host_rcond
    warnings.warn(warning, stacklevel=_outside_gpuinv())


def _outside_gpuinv() -> int:
    """The ``stacklevel`` of the first frame outside gpuinv, seen from the caller.

    The path's depth differs by input kind (a torch tensor takes one step
    more than a NumPy array), so the level is counted, not fixed. Runs only
    when a warning is issued.
    """
    level = 2
    frame = sys._getframe(2)  # the function that called warnings.warn's caller
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "gpuinv":
        frame = frame.f_back
        level += 1
    return level


def _array_module(x: Any):
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np
