"""Engines: step 4 of a call, the only step that differs between engines.

Every engine implements the whole seam, two methods:

* ``inverse(request, operand) -> (inverse, info, rcond or None)``;
* ``solve(request, operand, b) -> (x, info, rcond or None)``, with
  ``operand.array`` and ``b`` (batch..., n, k) already broadcast to
  ``operand.batch_shape``.

``request`` is a :class:`gpuinv._request.Request` (structure, ``lower``,
whether to compute rcond); ``operand`` a :class:`gpuinv._normalize.Operand`.
``inverse`` has shape ``batch_shape + (n, n)`` and dtype ``operand.dtype``,
``info`` is int32 of shape ``batch_shape`` with the codes of
:mod:`gpuinv._errors`, ``rcond`` the real dtype of shape ``batch_shape``
(None unless ``request.rcond``). All are arrays of the engine's own kind:
NumPy for the CPU engine; for the CUDA engine, CuPy for CuPy input and
NumPy for NumPy input. Engines never raise for singular input: the policy
is applied after (:mod:`gpuinv._policy`).

An engine also has a ``name`` (for messages and the CLI) and ``memory``:
``"host"`` for an engine that reads NumPy arrays only (the call path copies
CuPy input to the host and back, :mod:`gpuinv._compute`), ``"device"`` for
one that takes both. Each engine picks its own route inside, in one place:
:mod:`.cpu_routes` and :mod:`.cuda.routes`.

* :mod:`.cpu`: the CPU engine (closed forms, compiled Numba kernels in
  :mod:`._compiled`, NumPy/SciPy LAPACK);
* :mod:`.cuda`: the CUDA engine, a package (engine, routes, chunk planning,
  pinned pipeline, one module per route).
"""

from __future__ import annotations

import functools

__all__ = ["cpu_engine", "cuda_engine"]


@functools.lru_cache(maxsize=None)
def cpu_engine():
    from .cpu import CpuEngine

    return CpuEngine()


@functools.lru_cache(maxsize=None)
def cuda_engine(index: int | None):
    """The CUDA engine for device ``index`` (None: CuPy's current device at call time).

    Cached per index, so each device's pinned staging buffers are reused
    across calls. Importing the engine does not import CuPy.
    """
    from .cuda import CudaEngine

    return CudaEngine(index)
