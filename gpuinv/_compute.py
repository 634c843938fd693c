"""Steps 2-5 of a call on NumPy or CuPy arrays: normalize, choose, compute, report.

:func:`compute` is the shared lower step: the call path (:mod:`gpuinv._path`)
runs it once on the caller's (adapted) arrays, and the dask adapter
(:mod:`gpuinv._dask`) maps it over blocks. It never calls the public
functions.

1. normalize: :func:`gpuinv._normalize.normalize` (``normalize_solve`` for
   a solve), and the request's structure resolved for the dtype;
2. choose: :func:`gpuinv._dispatch.select_engine`; the engine picks its own
   route inside;
3. compute: ``engine.inverse(request, operand)`` or ``engine.solve(request,
   operand, b)``, each ``(result, info, rcond or None)``. CuPy input on an
   engine that computes in host memory (``device="cpu"``) is copied to the
   host and the results back, here and nowhere else;
4. report: :mod:`gpuinv._policy` (``on_singular``, then the conditioning
   warning), with global batch indices for a dask block.
"""

from __future__ import annotations

from typing import Any

from ._dispatch import select_engine
from ._normalize import Operand, normalize, normalize_solve
from ._policy import Block, apply_policy, warn_ill_conditioned
from ._request import Request, for_dtype

__all__ = ["compute"]


def compute(request: Request, a: Any, b: Any = None,
            block: Block | None = None) -> tuple[Any, Any, Any, bool]:
    """Run ``request`` on ``a`` (and ``b`` for a solve): ``(result, info, rcond, vector)``.

    ``a`` and ``b`` are NumPy or CuPy arrays or array-likes (foreign arrays
    were adapted before). ``result`` is the inverses, or the solutions with
    ``b``'s columns (a 1-D ``b`` as one column: ``vector`` says so);
    ``rcond`` is None unless the request computes it. The policy has been
    applied (it may raise) and the warning issued.
    """
    if request.operation == "inverse":
        op = normalize(a)
        rhs = None
        vector = False
    else:
        op, rhs, vector = normalize_solve(a, b)
    if request.structure == "hermitian":
        request = for_dtype(request, op.dtype)
    engine = select_engine(op, request.device)
    if op.backend == "cupy" and engine.memory == "host":
        result, info, rc = _through_host(engine, request, op, rhs)
    elif rhs is None:
        result, info, rc = engine.inverse(request, op)
    else:
        result, info, rc = engine.solve(request, op, rhs)
    if request.on_singular is not None:
        result = apply_policy(result, info, request.on_singular, block)
    if request.check_cond:
        warn_ill_conditioned(rc, info, op.dtype, block)
    return result, info, rc, vector


def _through_host(engine: Any, request: Request, op: Operand, rhs: Any) -> tuple[Any, Any, Any]:
    """CuPy input on a host engine (``device="cpu"``): copy in, compute, copy the results back
    to the device that held the input."""
    import cupy

    with op.array.device:
        host = Operand(cupy.asnumpy(op.array), "numpy", op.batch_shape, op.n, op.dtype)
        if rhs is None:
            results = engine.inverse(request, host)
        else:
            results = engine.solve(request, host, cupy.asnumpy(rhs))
        return tuple(None if x is None else cupy.asarray(x) for x in results)
