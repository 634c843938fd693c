"""The one call path: request -> adapt -> normalize -> choose -> compute -> report -> wrap.

Every public function (:mod:`gpuinv._api`, :mod:`gpuinv._solve`) builds a
:class:`gpuinv._request.Request` and calls :func:`run`; nothing here calls
back up into them.

1. adapt: torch and JAX arrays are viewed as NumPy/CuPy arrays through
   DLPack (:mod:`gpuinv._adapters`); dask arrays go to :mod:`gpuinv._dask`,
   which maps the lower step over blocks, lazily;
2-5. the lower step, :func:`gpuinv._compute.compute`: normalize, choose the
   engine, compute, apply the policy and the conditioning warning;
6. wrap: the result as the kind of array the input was (an ndarray
   subclass through its ``__array_wrap__``, a tensor through DLPack), a
   1-D ``b``'s solution as a vector.

The cheapest request (a general inverse, no rcond, no check) takes this
same path and does less: benchmarks/bench_path.py times it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ._adapters import foreign_library, import_array
from ._compute import compute
from ._normalize import wrap_like_input
from ._request import Request

__all__ = ["run"]


def run(request: Request, a: Any, b: Any = None) -> tuple[Any, Any, Any]:
    """Run ``request`` on ``a`` (and ``b`` for a solve): ``(result, info, rcond)``.

    ``result`` is the kind of array the input was; ``info`` and ``rcond``
    (None unless the request computes it) too, for the ``_ex`` functions.
    """
    library = foreign_library(a)
    if library is None and b is not None:
        library = foreign_library(b)
    if library is None:
        result, info, rc, vector = compute(request, a, b)
        if vector:
            result = result[..., 0]
        # An ndarray subclass comes back as its class, as numpy.linalg does:
        # the inverse takes a's, the solution b's (numpy.linalg.solve).
        return wrap_like_input(a if b is None else b, result), info, rc
    if library == "dask":
        from ._dask import run_dask

        return run_dask(request, a, b)
    return _run_foreign(request, a, b)


def _run_foreign(request: Request, a: Any, b: Any) -> tuple[Any, Any, Any]:
    """A torch tensor or JAX array (as ``a``, ``b`` or both): viewed as NumPy or
    CuPy, computed on the device that holds it, handed back to its library.

    A SingularMatrixError propagates as is: its indices are the tensor's own
    batch indices.
    """
    ia = import_array(a, foreign_library(a)) if foreign_library(a) else None
    ib = import_array(b, foreign_library(b)) if b is not None and foreign_library(b) else None
    lead = ia or ib
    assert lead is not None
    aa = ia.array if ia is not None else a
    bb = ib.array if ib is not None else b
    with _cuda_device(lead.device_id):
        result, info, rc, vector = compute(request, aa, bb)
        if vector:
            result = result[..., 0]
        if not request.returns_info:
            return lead.export(result), None, None
        return (lead.export(result), lead.export(info),
                None if rc is None else lead.export(rc))


def _cuda_device(device_id: int | None) -> Any:
    if device_id is None:
        return contextlib.nullcontext()
    import cupy

    return cupy.cuda.Device(device_id)
