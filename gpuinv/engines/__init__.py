"""Engines: each turns a validated operand into ``(inverse, info)``.

An engine has a ``name`` and one method, ``invert(op) -> (inverse, info)``:
``inverse`` has shape ``op.batch_shape + (n, n)`` and dtype ``op.dtype``,
``info`` is int32 of shape ``op.batch_shape`` with the codes of
:mod:`gpuinv._errors`. Both are arrays of the engine's own kind (NumPy for
the CPU engine; for the CUDA engine, CuPy for CuPy input and NumPy for NumPy
input). Engines never raise for singular input: policy is applied after.
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
