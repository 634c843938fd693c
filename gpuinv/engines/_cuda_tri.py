"""The CUDA engine's triangular and diagonal inverses on gpuinv's own kernels.

For ``assume_a="lower triangular"`` and ``"upper triangular"`` with
``n <= TRI_MAX_N[dtype]``, and ``assume_a="diagonal"`` with
``n <= DIAG_MAX_N[dtype]``, the CUDA engine inverts with ``inv_tri_thread``
and ``inv_diag_thread`` (gpuinv/kernels, docs/kernels.md): one launch over
the whole chunk, in place of the LU route (getrf + getri on the triangle,
masked, and info from the diagonal in separate passes) or the diagonal's
elementwise passes. The kernels read only the triangle or the diagonal of
the matrices (as :func:`gpuinv._numerics.structured_matrix` built them),
write trtri's info codes (-1 for NaN or Inf) and NaN where info != 0, and
exact zeros outside the structure, without a host synchronization. Larger
n keep the CuPy/cuBLAS routes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels import DIAG_MAX_N, TRI_MAX_N

__all__ = ["structured_route", "kernel_structured_inverse_into"]

_BOUNDS = {"lower triangular": TRI_MAX_N, "upper triangular": TRI_MAX_N, "diagonal": DIAG_MAX_N}


def structured_route(n: int, dtype: Any, structure: str) -> str:
    """``"kernel"`` where our kernel takes ``structure`` at (n, dtype), else ``"cupy"``.

    ``structure`` is one of ``"lower triangular"``, ``"upper triangular"``
    and ``"diagonal"`` (anything else: ``"cupy"``). Provisional as the other
    kernels' bounds: no GPU has yet timed the kernels against the CuPy and
    cuBLAS routes (benchmarks/gpu_check.py should).
    """
    bounds = _BOUNDS.get(structure)
    if bounds is None:
        return "cupy"
    return "kernel" if 1 <= n <= bounds.get(np.dtype(dtype), 0) else "cupy"


def kernel_structured_inverse_into(full: Any, out: Any, info: Any, structure: str,
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

    from .. import kernels  # by attribute, so that the tests' stand-in is found
    from .cuda import _launch_into

    m = full.shape[0]
    if not m:
        return
    a = cupy.ascontiguousarray(full)
    _launch_into(lambda dst, codes, rc: kernels.invert_small_structured(a, dst, codes, structure, rcond=rc),
                 out, info, rcond)
