"""Parsing the ``device`` argument, and finding out whether CUDA is usable.

Nothing here imports CuPy until a caller actually asks about CUDA.
"""

from __future__ import annotations

import operator
from typing import NamedTuple, Union

__all__ = ["DeviceRequest", "parse_device", "cuda_unavailable_reason", "CudaUnavailableError"]

DeviceLike = Union[str, int]


class CudaUnavailableError(RuntimeError):
    """The GPU was asked for but cannot be used; the message says why."""


class DeviceRequest(NamedTuple):
    """What the caller asked for: ``kind`` is "auto", "cpu" or "cuda";
    ``index`` is a CUDA device ordinal, or None for the current device."""

    kind: str
    index: int | None = None


_CUDA_INSTALL_HINT = "pip install 'gpuinv[cuda12]' or 'gpuinv[cuda13]'"


def parse_device(device: DeviceLike) -> DeviceRequest:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``N`` into a request."""
    if isinstance(device, str):
        text = device.strip().lower()
        if text in ("auto", "cpu", "cuda"):
            return DeviceRequest(text)
        if text.startswith("cuda:"):
            ordinal = text[5:]
            if ordinal.isdigit():
                return DeviceRequest("cuda", int(ordinal))
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a device index, got {device!r}"
        )
    if isinstance(device, bool):
        raise TypeError("device must be a string or an int, got bool")
    try:
        index = operator.index(device)
    except TypeError:
        raise TypeError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or an int, got {type(device).__name__}"
        ) from None
    if index < 0:
        raise ValueError(f"device index must be non-negative, got {index}")
    return DeviceRequest("cuda", index)


def cuda_unavailable_reason(index: int | None = None) -> str | None:
    """Return why CUDA device ``index`` (None: any) cannot be used, or None if it can.

    The three causes are told apart: CuPy missing, no driver or no device,
    and an ordinal past the devices present.
    """
    try:
        import cupy
    except ImportError as exc:
        return f"CuPy is not installed ({_CUDA_INSTALL_HINT}): {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, or a missing libcudart
        return f"no usable CUDA driver or device: {exc}"
    if count == 0:
        return "no CUDA device found"
    if index is not None and index >= count:
        plural = "device" if count == 1 else "devices"
        return f"no CUDA device {index}: {count} {plural} found (ordinals 0 to {count - 1})"
    return None


def require_cuda(index: int | None = None) -> None:
    """Raise :class:`CudaUnavailableError` naming the cause if CUDA cannot be used."""
    reason = cuda_unavailable_reason(index)
    if reason is not None:
        raise CudaUnavailableError(f"a CUDA device was requested but {reason}")
