"""Step 4 of a call: apply the ``on_singular`` policy to ``(inverse, info)``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._errors import SingularMatrixError, failure_message

__all__ = ["POLICIES", "check_policy", "apply_policy"]

POLICIES = ("raise", "nan", "ignore")


def check_policy(on_singular: str) -> None:
    if on_singular not in POLICIES:
        raise ValueError(
            f"on_singular must be one of 'raise', 'nan' or 'ignore', got {on_singular!r}"
        )


def _to_host(x: Any) -> np.ndarray:
    get = getattr(x, "get", None)  # CuPy arrays; NumPy arrays have no .get
    return np.asarray(get() if callable(get) else x)


def apply_policy(inverse: Any, info: Any, on_singular: str) -> Any:
    """Return ``inverse`` after applying the policy; may raise SingularMatrixError.

    Works on NumPy and CuPy arrays alike. ``"raise"`` reads one boolean back
    from the device (the one synchronization of ``inv``) and fetches ``info``
    only when something failed. ``"nan"`` stays on the device.
    """
    if on_singular == "ignore" or info.size == 0:
        return inverse
    failed = info != 0
    if on_singular == "nan":
        # copyto with where= is elementwise on either library: no host round trip.
        xp = _array_module(inverse)
        xp.copyto(inverse, xp.asarray(np.nan, dtype=inverse.dtype), where=failed[..., None, None])
        return inverse
    if bool(failed.any()):
        host_info = _to_host(info)
        indices = [tuple(int(j) for j in i) for i in np.argwhere(host_info != 0)]
        raise SingularMatrixError(failure_message(host_info), host_info, indices)
    return inverse


def _array_module(x: Any):
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np
