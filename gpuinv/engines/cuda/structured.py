"""The structured requests of one chunk: ``assume_a`` for the inverse and the solve.

Per chunk, and why:

* general inverse: the chunk's LU inverse (:func:`.general.invert_chunk`,
  the route of :func:`.routes.cuda_route`);
* symmetric / Hermitian: the LU inverse of the matrix mirrored from the
  triangle read, the inverse mirrored back so it is exactly symmetric;
* diagonal: for ``n <= DIAG_MAX_N[dtype]`` our kernel
  (:func:`.kernel_route.structured_inverse_into`), one launch; above it
  elementwise ``1 / d`` and info from the diagonal, in CuPy passes;
* triangular: for ``n <= TRI_MAX_N[dtype]`` our kernel (trtri's algorithm,
  one launch, trtri's info); above it the LU inverse of the triangle read
  (for an upper triangular matrix getrf exchanges no rows; a lower one is
  inverted as the transpose of its upper transpose), masked back to the
  triangle, info the first zero on the diagonal, as LAPACK ``trtri``
  reports it;
* positive definite: for ``n <= CHOL_MAX_N[dtype]`` our Cholesky kernel;
  above it cuSOLVER (:func:`.cusolver.cholesky_inverse`);
* solve, general (and symmetric, Hermitian, triangular, on the matrix
  :func:`gpuinv._numerics.structured_matrix` built): for
  ``n <= SOLVE_MAX_N[dtype]`` our LU solve kernel
  (:func:`.kernel_route.solve`); above it cuBLAS getrfBatched + getrsBatched
  (:func:`.cublas.lu_solve`); per-matrix cuSOLVER ``getrs`` with nrhs = k
  for large n is not wired up yet;
* solve, diagonal: ``b / d``; positive definite: potrfBatched +
  potrsBatched, one call per right-hand side column.

Every function here writes into the chunk's slices and never waits for the
device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ... import kernels
from ..._errors import INFO_NONFINITE
from ..._numerics import structured_matrix
from . import arrays, cublas, cusolver, general, kernel_route, routes

__all__ = ["inverse_chunk", "solve_chunk"]


def inverse_chunk(view: Any, out: Any, info: Any, structure: str, lower: bool,
                   route: str, rc: Any = None) -> tuple[Any, bool]:
    """Write one chunk's inverses ``out`` (m, n, n) and ``info`` (m,); return the
    matrices as read (the chunk's batch shape + (n, n)), for rcond, and
    whether ``rc`` (m,), when given, was written already (by one of our
    kernels' rcond variants, which compute it from the A and X they hold).

    The engine's chunk inverse is never told that it owns its input, even
    where it does: rcond reads the matrices afterwards.
    """
    import cupy

    m, n = out.shape[0], out.shape[-1]
    dtype = out.dtype
    view = arrays.aligned(view)
    if structure == "general":
        return view, general.invert_chunk(view, out, info, route, rcond=rc)
    full = structured_matrix(view.astype(dtype, copy=False), structure, lower).reshape(m, n, n)
    if structure in ("symmetric", "hermitian"):
        # The mirrored matrix is what was read, so the kernel's rcond is its rcond.
        written = general.invert_chunk(full, out, info, route, rcond=rc)  # NaN for failed matrices
        cupy.copyto(out, arrays.mirror_lower(out, conjugate=structure == "hermitian"))
        return full, written
    if routes.structured_route(n, dtype, structure) == "kernel":  # our kernels for the small n
        kernel_route.structured_inverse_into(full, out, info, structure, rcond=rc)
        return full, rc is not None
    if structure == "diagonal":
        _diagonal_inverse(full, out, info)
    elif structure in ("upper triangular", "lower triangular"):
        _triangular_inverse(full, out, info, structure == "lower triangular", route)
    elif structure == "positive definite":
        if routes.chol_route(n, dtype) == "kernel":  # our kernel for the small n
            # rcond from the kernel where it has an rcond variant (not all do: registers).
            rc_kernel = rc if rc is not None and kernels.has_rcond_variant(n, dtype, "chol") else None
            kernel_route.cholesky_inverse_into(full, out, info, rcond=rc_kernel)
            return full, rc_kernel is not None
        cusolver.cholesky_inverse(full, out, info)
    else:
        raise ValueError(f"unknown structure {structure!r}")
    return full, False


def _diagonal_inverse(full: Any, out: Any, info: Any) -> None:
    import cupy

    n = full.shape[-1]
    d = full.diagonal(axis1=-2, axis2=-1)
    code = arrays.first_zero_step(full)
    cupy.copyto(info, cupy.where(arrays.nonfinite(d[..., None]), np.int32(INFO_NONFINITE), code),
                casting="unsafe")
    eye = cupy.eye(n, dtype=bool)
    with np.errstate(all="ignore"):
        cupy.copyto(out, cupy.where(eye, (1 / d)[..., None, :], cupy.zeros((), dtype=full.dtype)),
                    casting="unsafe")
    arrays.nan_where_failed(out, info)


def _triangular_inverse(full: Any, out: Any, info: Any, lower: bool, route: str) -> None:
    import cupy

    m, n = out.shape[0], out.shape[-1]
    upper = full.swapaxes(-1, -2) if lower else full
    x = cupy.empty((m, n, n), dtype=out.dtype)
    lu_info = cupy.empty(m, dtype=np.int32)
    general.invert_chunk(upper, x, lu_info, route)
    if lower:
        x = x.swapaxes(-1, -2)
    rows = cupy.arange(n)[:, None]
    cols = cupy.arange(n)[None, :]
    mask = rows >= cols if lower else rows <= cols
    cupy.copyto(out, cupy.where(mask, x, cupy.zeros((), dtype=out.dtype)))
    cupy.copyto(info, cupy.where(lu_info == INFO_NONFINITE, np.int32(INFO_NONFINITE),
                                 arrays.first_zero_step(full)), casting="unsafe")
    arrays.nan_where_failed(out, info)


def solve_chunk(a: Any, b: Any, out: Any, info: Any, structure: str, lower: bool) -> Any:
    """Write one chunk's solutions ``out`` (m, n, k) and the info of ``a`` to
    ``info`` (m,); return the matrices as read (for rcond).

    ``a`` and ``b`` are the chunk's views (any strides and dtype), read only.
    """
    import cupy

    a, b = arrays.aligned(a), arrays.aligned(b)  # read only: rcond reads a afterwards
    m, n, _ = out.shape
    dtype = out.dtype
    if structure == "general":
        full = a  # the solve routes gather it
    else:
        full = structured_matrix(a.astype(dtype, copy=False), structure, lower)
        full = full.reshape(m, n, n)
    rhs = arrays.as_stack(b, dtype, m)
    if structure == "diagonal":
        d = full.diagonal(axis1=-2, axis2=-1)
        code = cupy.where(arrays.nonfinite(d[..., None]), np.int32(INFO_NONFINITE),
                          arrays.first_zero_step(full))
        with np.errstate(all="ignore"):
            x = rhs / d[..., :, None]
    elif structure == "positive definite":
        f, ptrs, code = cusolver.cholesky_prepare(full)
        complex_ = f.dtype.kind == "c"
        cols = cupy.ascontiguousarray(rhs.swapaxes(1, 2))  # column-major
        cols = cols.conj() if complex_ else cols
        cusolver.potrs_columns(f, ptrs, cols)
        # The factors are of conj(A): conj(A) y = conj(b) gives y = conj(x).
        x = (cols.conj() if complex_ else cols).swapaxes(1, 2)
    elif routes.solve_route(n, dtype) == "kernel":
        x, code = kernel_route.solve(full, rhs)
        if structure in ("upper triangular", "lower triangular"):
            code = cupy.where(code == INFO_NONFINITE, code, arrays.first_zero_step(full))
    else:
        x, code = cublas.lu_solve(full, rhs)
        if structure in ("upper triangular", "lower triangular"):
            code = cupy.where(code == INFO_NONFINITE, code, arrays.first_zero_step(full))
    cupy.copyto(info, code, casting="unsafe")
    cupy.copyto(out, x, casting="unsafe")
    arrays.nan_where_failed(out, info)
    return full
