"""The kernel route: gpuinv's own NVRTC kernels (gpuinv/kernels, docs/kernels.md).

One launch per chunk for the small n where they win (the bounds and their
benchmarks: :mod:`.routes`):

* :func:`invert`: the LU inverse, ``invert_small`` (and its rcond variant,
  which writes each matrix's rcond from the A and X it holds);
* :func:`cholesky_inverse_into`: the positive definite inverse,
  ``inv_chol_thread``, in place of cuSOLVER's potrfBatched plus n
  potrsBatched calls. It reads the lower triangle of the matrices as
  :func:`gpuinv._numerics.structured_matrix` built them, writes an exactly
  Hermitian inverse, potrf's info codes;
* :func:`structured_inverse_into`: the triangular and diagonal inverses,
  ``inv_tri_thread`` and ``inv_diag_thread``: trtri's algorithm and info,
  exact zeros outside the structure;
* :func:`solve`: the LU solve, ``solve_thread``: b in place of the identity
  of the LU inverse kernel (the same pivots and info codes).

Every kernel writes info -1 for NaN or Inf and NaN where info != 0, without
a host synchronization. ``gpuinv.kernels`` is used by attribute, so that the
tests' stand-in is found.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ... import kernels
from . import arrays

__all__ = ["cholesky_inverse", "cholesky_inverse_into", "invert", "solve",
           "structured_inverse_into"]


def invert(view: Any, out: Any, info: Any, owned: bool, rcond: Any = None) -> bool:
    """Invert ``view`` (the chunk's batch shape + (n, n), aligned, any strides and
    dtype) into ``out`` (m, n, n) and ``info`` (m,), C-contiguous.

    ``view`` is read only, unless ``owned``. With ``rcond`` (m,) and an
    rcond variant of the kernel at (n, dtype)
    (:func:`gpuinv.kernels.has_rcond_variant`), rcond is written there too.
    Returns whether it was.
    """
    import cupy

    m, n = out.shape[0], out.shape[1]
    dtype = out.dtype
    # Small n is bound by memory traffic: skip the gather when the chunk
    # is already a C-contiguous stack of the compute dtype and either we
    # own it or the kernels promise to only read their input (it is
    # aligned to its element size now, see arrays.realigned).
    may_read = owned or getattr(kernels, "INPUT_READ_ONLY", False)
    if may_read and view.dtype == dtype and view.flags.c_contiguous:
        x = view.reshape(m, n, n)
    else:
        x = cupy.empty((m, n, n), dtype=dtype)
        cupy.copyto(x.reshape(view.shape), view, casting="unsafe")
    rc = rcond if rcond is not None and kernels.has_rcond_variant(n, dtype) else None
    if rc is None:
        kernels.invert_small(x, out, info)
    else:
        arrays.launch_into(lambda r: kernels.invert_small(x, out, info, rcond=r), rc)
    # The kernels leave a singular matrix's inverse unspecified: NaN, as
    # the CPU engine and the other routes give (a mask, no host sync).
    cupy.copyto(out, dtype.type(np.nan), where=(info != 0)[:, None, None])
    return rc is not None


def solve(a: Any, b: Any) -> tuple[Any, Any]:
    """gpuinv's LU solve kernel for ``a`` (batch..., n, n), ``b`` (m, n, k): ``(x, info)``.

    ``a`` may have any strides and dtype (it is gathered, cast to ``b``'s
    dtype, only where it is not already a C-contiguous stack of it); ``x``
    is (m, n, k), NaN where info != 0. One launch, no host synchronization.
    """
    import cupy

    m, n, k = b.shape
    stack = cupy.ascontiguousarray(a.astype(b.dtype, copy=False)).reshape(m, n, n)
    rhs = cupy.ascontiguousarray(b)
    x = cupy.empty((m, n, k), dtype=b.dtype)
    info = cupy.empty(m, dtype=np.int32)
    kernels.solve_small(stack, rhs, x, info)
    return x, info


def cholesky_inverse(full: Any) -> tuple[Any, Any]:
    """``(inverse, info)`` of the CuPy stack ``full`` (batch..., n, n) with the Cholesky kernel.

    Runs on the current device and stream; ``full`` is not written.
    """
    import cupy

    n = full.shape[-1]
    batch = full.shape[:-2]
    m = int(np.prod(batch, dtype=np.int64))
    out = cupy.empty((m, n, n), dtype=full.dtype)
    info = cupy.empty(m, dtype=np.int32)
    cholesky_inverse_into(full.reshape(m, n, n), out, info)
    return out.reshape(batch + (n, n)), info.reshape(batch)


def cholesky_inverse_into(full: Any, out: Any, info: Any, rcond: Any = None) -> None:
    """Write the inverses of the CuPy stack ``full`` (m, n, n) to ``out`` (m, n, n) and
    potrf's info codes to ``info`` (m,): one chunk of the CUDA engine's route.

    With ``rcond`` (m,), the kernel's rcond variant also writes each matrix's
    reciprocal condition number there (:func:`gpuinv.kernels.invert_small_chol`).
    Runs on the current device and stream; ``full`` is not written. The
    outputs may be views: the kernel writes through temporaries where they
    are not C-contiguous.
    """
    import cupy

    m = full.shape[0]
    if not m:
        return
    a = cupy.ascontiguousarray(full)
    arrays.launch_into(lambda dst, codes, rc: kernels.invert_small_chol(a, dst, codes, rcond=rc),
                       out, info, rcond)


def structured_inverse_into(full: Any, out: Any, info: Any, structure: str,
                            rcond: Any = None) -> None:
    """Write the inverses of the CuPy stack ``full`` (m, n, n) of triangular or diagonal
    matrices to ``out`` (m, n, n) and trtri's info codes to ``info`` (m,): one
    chunk of the CUDA engine's route.

    With ``rcond`` (m,), the kernel's rcond variant also writes each matrix's
    reciprocal condition number there. Runs on the current device and
    stream; ``full`` is not written. The outputs may be views: the kernel
    writes through temporaries where they are not C-contiguous.
    """
    import cupy

    m = full.shape[0]
    if not m:
        return
    a = cupy.ascontiguousarray(full)
    arrays.launch_into(
        lambda dst, codes, rc: kernels.invert_small_structured(a, dst, codes, structure, rcond=rc),
        out, info, rcond)
