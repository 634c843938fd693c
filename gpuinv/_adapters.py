"""torch and JAX arrays at the boundary of ``inv`` / ``inv_ex``, through DLPack.

A tensor is turned into a NumPy array (CPU) or a CuPy array (CUDA) that
views the same memory, the call runs on that, and the results are handed
back to the tensor's own library on the tensor's own device, again through
DLPack. The engines never see a tensor.

Copies happen only where the memory cannot be shared:

* torch bfloat16 / JAX bfloat16 have no NumPy dtype: they are widened to
  float32 by their own library first (the float16 rule of
  :mod:`gpuinv._dtypes`, which computes float16 in float32);
* a torch tensor with its lazy conjugate or negative bit set is resolved
  first, as DLPack cannot carry those bits;
* JAX on the CPU only adopts 64-byte-aligned host buffers and copies the
  results otherwise (JAX arrays are immutable, so that copy is JAX's own
  choice); JAX also narrows float64 results to float32 unless
  ``jax_enable_x64`` is on, as it does for any array it receives.

On the GPU no copy is made in either direction: CuPy's allocations are
256-byte aligned. Nothing here imports torch or JAX unless one of their
arrays arrived: detection goes by ``type(a).__module__``, as
:func:`gpuinv._normalize.array_backend` does for CuPy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Imported", "foreign_library", "import_array"]


def foreign_library(a: Any) -> str | None:
    """Return ``"torch"``, ``"jax"`` or ``"dask"`` for such arrays, else None.

    Only the type's module name is read: none of these libraries is imported.
    """
    module = type(a).__module__
    root = module.partition(".")[0]
    if root == "torch" and hasattr(a, "__dlpack__"):
        return "torch"
    if root in ("jax", "jaxlib"):
        return "jax"
    if root == "dask" and hasattr(a, "dask") and hasattr(a, "chunks"):
        return "dask"
    return None


@dataclass(frozen=True)
class Imported:
    """A foreign array seen as NumPy or CuPy, and the way back.

    Attributes
    ----------
    array
        A ``numpy.ndarray`` or ``cupy.ndarray`` sharing memory with the
        caller's tensor (or with its widened copy, see the module notes).
    export
        Turns a NumPy/CuPy result into the caller's library, on the
        caller's device.
    device_id
        The CUDA ordinal the tensor lives on, or None for host memory.
    """

    array: Any
    export: Callable[[Any], Any]
    device_id: int | None


def import_array(a: Any, library: str) -> Imported:
    """View a torch tensor or JAX array as a NumPy or CuPy array.

    Raises
    ------
    TypeError
        For tensors that need gradients, JAX tracers (inside ``jax.jit``),
        arrays sharded over several devices, devices other than CPU and
        CUDA, and dtypes DLPack cannot describe to NumPy/CuPy.
    """
    if library == "torch":
        return _import_torch(a)
    if library == "jax":
        return _import_jax(a)
    raise AssertionError(f"unknown library {library!r}")


def _from_dlpack(x: Any, on_cuda: bool, what: str) -> Any:
    try:
        if on_cuda:
            import cupy

            return cupy.from_dlpack(x)
        return np.from_dlpack(x)
    except ImportError:
        raise TypeError(
            f"{what} is on a CUDA device but CuPy is not installed: "
            "pip install 'gpuinv[cuda12]' or 'gpuinv[cuda13]'"
        ) from None
    except (BufferError, RuntimeError, TypeError, ValueError) as exc:
        raise TypeError(f"{what} cannot be shared with gpuinv through DLPack: {exc}") from None


def _import_torch(t: Any) -> Imported:
    import torch

    if t.requires_grad:
        # Refused rather than detached: a silently cut graph is a wrong
        # gradient later. torch.linalg.inv is differentiable.
        raise TypeError(
            "gpuinv does not track gradients: pass tensor.detach(), or use "
            "torch.linalg.inv where the inverse must be differentiated"
        )
    device = t.device
    if device.type not in ("cpu", "cuda"):
        raise TypeError(f"torch tensors on device {device.type!r} are unsupported: use cpu or cuda")
    if t.dtype == torch.bfloat16:
        t = t.to(torch.float32)
    # DLPack cannot carry torch's lazy conjugate/negative bits; resolving is
    # free for tensors that have none set.
    t = t.resolve_conj().resolve_neg()
    on_cuda = device.type == "cuda"
    array = _from_dlpack(t, on_cuda, f"a torch {t.dtype} tensor")

    def export(x: Any) -> Any:
        return torch.from_dlpack(x)

    return Imported(array, export, device.index if on_cuda else None)


def _import_jax(a: Any) -> Imported:
    import jax

    if isinstance(a, jax.core.Tracer):
        raise TypeError(
            "gpuinv.inv cannot run inside jax.jit, vmap or grad (it got a traced value): "
            "call it on concrete arrays, or use jax.numpy.linalg.inv in traced code"
        )
    if not isinstance(a, jax.Array):
        raise TypeError(f"unsupported JAX object {type(a).__name__}: pass a jax.Array")
    devices = a.devices()
    if len(devices) != 1:
        raise TypeError(
            f"the JAX array is sharded over {len(devices)} devices: gather it on one device "
            "(jax.device_put) or split it into per-device pieces first"
        )
    (device,) = devices
    if device.platform not in ("cpu", "gpu", "cuda"):
        raise TypeError(
            f"JAX arrays on platform {device.platform!r} are unsupported: use cpu or gpu"
        )
    if a.dtype == jax.numpy.bfloat16:
        a = a.astype(jax.numpy.float32)
    on_cuda = device.platform != "cpu"
    array = _from_dlpack(a, on_cuda, f"a JAX {a.dtype} array")

    def export(x: Any) -> Any:
        # The device comes from the DLPack capsule itself: the GPU the
        # CuPy result lives on, or the host.
        return jax.dlpack.from_dlpack(x)

    return Imported(array, export, device.local_hardware_id if on_cuda else None)
