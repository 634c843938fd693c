"""Step 3 of a call: which engine computes.

The engine is chosen by where the operand lives and what the caller asked
for (see :func:`select_engine`); the route inside the engine is the
engine's own choice, made where its thresholds live:
:mod:`gpuinv.engines.cpu_routes` and :mod:`gpuinv.engines.cuda.routes`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._config import config
from ._device import DeviceRequest, require_cuda
from .engines import cpu_engine, cuda_engine

if TYPE_CHECKING:
    from ._normalize import Operand

__all__ = ["select_engine"]


def select_engine(op: Operand, request: DeviceRequest) -> Any:
    """Pick the engine for an operand.

    * CuPy input runs on the GPU that holds it (``device="cpu"`` moves it to
      the host and back; a different CUDA ordinal is an error).
    * NumPy input runs on the GPU when asked to, or with ``device="auto"``
      when a GPU is usable and the stack has at least
      ``gpuinv.config.cuda_min_bytes`` bytes; otherwise on the CPU.
    """
    if request.kind == "cpu":
        return cpu_engine()
    if op.backend == "cupy":
        held = op.array.device.id
        if request.index is not None and request.index != held:
            raise ValueError(
                f"the CuPy array lives on CUDA device {held} but device=cuda:{request.index} "
                "was requested; move it with cupy.asarray under that device first"
            )
        return cuda_engine(held)
    if request.kind == "cuda":
        require_cuda(request.index)
        return cuda_engine(request.index)
    # auto, NumPy input: the size test comes first so that small stacks never
    # import CuPy at all.
    if op.nbytes >= config.cuda_min_bytes and _cuda_usable():
        return cuda_engine(None)
    return cpu_engine()


def _cuda_usable() -> bool:
    from ._device import cuda_unavailable_reason

    return cuda_unavailable_reason() is None
