"""Step 0 of a call: the one request that every public function builds.

``inv``, ``inv_ex``, ``solve`` and ``solve_ex`` only validate their keywords
here, once, and hand the resulting :class:`Request` to the call path
(:mod:`gpuinv._path`). Nothing downstream re-reads a keyword: each step
takes what it needs from the request.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

from ._device import DeviceLike, DeviceRequest, parse_device
from ._numerics import canonical_structure
from ._policy import check_policy

__all__ = ["Request", "make_request", "check_flag", "for_dtype"]


class Request(NamedTuple):
    """What a call asks for, validated.

    Attributes
    ----------
    operation : {"inverse", "solve"}
    structure : str
        A canonical structure name of :data:`gpuinv._numerics.STRUCTURES`
        (``"hermitian"`` becomes ``"symmetric"`` for real input once the
        dtype is known: :func:`for_dtype`).
    lower : bool
        Which triangle the symmetric, Hermitian and positive definite
        structures read.
    rcond : bool
        Whether the engine computes rcond (``rcond=True`` of the ``_ex``
        functions, or ``check_cond=True`` of ``inv``/``solve``).
    on_singular : {"raise", "nan", "ignore"} or None
        The policy on info; None for the ``_ex`` functions, which return
        ``info`` (and ``rcond`` when asked) instead of applying one.
    check_cond : bool
        Whether to warn :class:`gpuinv.LinAlgWarning` for ill-conditioned
        matrices.
    device : DeviceRequest
        Where the caller asked to compute.
    """

    operation: str
    structure: str
    lower: bool
    rcond: bool
    on_singular: str | None
    check_cond: bool
    device: DeviceRequest

    @property
    def returns_info(self) -> bool:
        """The ``_ex`` functions return ``(result, info[, rcond])``; the others the result."""
        return self.on_singular is None


def check_flag(name: str, value: Any) -> None:
    """Raise TypeError unless ``value`` is a Python or NumPy bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _build(operation: str, assume_a: Any, lower: Any, rcond: Any, on_singular: str | None,
           check_cond: Any, device: Any) -> Request:
    if on_singular is not None:
        check_policy(on_singular)
    check_flag("lower", lower)
    check_flag("rcond", rcond)
    check_flag("check_cond", check_cond)
    structure = canonical_structure(assume_a)
    return Request(operation, structure, bool(lower), bool(rcond or check_cond), on_singular,
                   bool(check_cond), parse_device(device))


# The same few keyword combinations come back on every call: validated once,
# then a dictionary lookup (the cheapest request must cost what the old
# plain fork did, benchmarks/bench_path.py). Only successes are cached, so a
# bad keyword raises every time. typed=True keeps 1 apart from True, which
# check_flag refuses.
_build_cached = functools.lru_cache(maxsize=256, typed=True)(_build)


def make_request(operation: str, *, assume_a: Any = "general", lower: Any = False,
                 rcond: Any = False, on_singular: str | None = None, check_cond: Any = False,
                 device: DeviceLike = "auto") -> Request:
    """Validate the keywords of a public function and build its :class:`Request`.

    Raises
    ------
    TypeError
        For a flag that is not a bool, or a device of the wrong type.
    ValueError
        For an unknown ``on_singular``, ``assume_a`` or ``device``.
    """
    try:
        return _build_cached(operation, assume_a, lower, rcond, on_singular, check_cond, device)
    except TypeError as exc:
        if "unhashable" not in str(exc):
            raise
    return _build(operation, assume_a, lower, rcond, on_singular, check_cond, device)


def for_dtype(request: Request, dtype: np.dtype) -> Request:
    """``request`` with its structure resolved for the compute dtype:
    ``"hermitian"`` on real input is ``"symmetric"``, as in SciPy."""
    if request.structure == "hermitian" and dtype.kind != "c":
        return request._replace(structure="symmetric")
    return request
