"""Our own CUDA kernels for stacks of small matrices.

Two kernel shapes (docs/kernels.md has the design and the numbers):

* ``thread``: one thread per matrix, the matrix in registers, global loads
  and stores coalesced through shared memory. For the smallest n.
* ``group``: a group of G lanes (a power of two, ``n <= G <= 32``) per
  matrix, one row per lane, pivot search and row broadcast by shuffles.

Both run the same algorithm from ``inverse.cuh`` (LU with partial pivoting
and forward substitution on the identity in place, then back substitution:
what ``numpy.linalg.inv`` does through LAPACK's gesv), the same source the
host tests compile with g++.

For Hermitian positive definite matrices (``assume_a="positive definite"``)
a third kernel, ``inv_chol_thread`` (``cholesky.cuh``: Cholesky, ``inv(L)``,
``L^-H L^-1``, one thread per matrix, the lower triangle read), serves
``n <= CHOL_MAX_N``: :func:`invert_small_chol`, ``kernel_spec(n, dtype, "chol")``.
Triangular and diagonal matrices (``assume_a="lower triangular"``,
``"upper triangular"``, ``"diagonal"``) have ``inv_tri_thread`` and
``inv_diag_thread`` (``triangular.cuh``: trtri's column order, or ``1 / d``;
one thread per matrix, only the triangle or the diagonal read) for
``n <= TRI_MAX_N`` and ``n <= DIAG_MAX_N``: :func:`invert_small_structured`,
``kernel_spec(n, dtype, "tril" | "triu" | "diag")``.

For ``solve`` (``A X = B``), ``solve_thread`` (one thread per system: the
LU inverse's factorization without the identity, then the forward and back
substitutions with each column of B, as LAPACK's gesv) serves
``n <= SOLVE_MAX_N``: :func:`solve_small`, ``kernel_spec(n, dtype, "solve")``.

Kernels are compiled at run time by NVRTC with :data:`NVRTC_OPTIONS` (not
through ``cupy.RawModule``, which adds ``-ftz=true``; see ``_nvrtc.py``), one
(dtype, n) at a time on first use, loaded with ``cupy.cuda.function.Module``
and cached per device, the binaries also on disk. The first call of each
(dtype, n) in a process therefore waits for NVRTC (under a second to several
seconds, docs/kernels.md) unless the disk cache has it; :func:`warm_up`
compiles many in parallel ahead of time. Importing this module does not import CuPy; :func:`invert_small` and
:func:`warm_up` do.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "KERNEL_MAX_N",
    "CHOL_MAX_N",
    "TRI_MAX_N",
    "DIAG_MAX_N",
    "SOLVE_MAX_N",
    "INPUT_READ_ONLY",
    "THREAD_MAX_N",
    "KernelSpec",
    "kernel_spec",
    "has_rcond_variant",
    "instantiations",
    "kernel_source",
    "invert_small",
    "invert_small_chol",
    "invert_small_structured",
    "solve_small",
    "launch_config",
    "warm_up",
    "NVRTC_OPTIONS",
]

_HERE = Path(__file__).resolve().parent

_DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, np.complex64, np.complex128))

_CXX_TYPES = dict(zip(_DTYPES, ("float", "double", "gpuinv::cplx<float>", "gpuinv::cplx<double>")))


def _per_dtype(float32: int, float64: int, complex64: int, complex128: int) -> dict[np.dtype, int]:
    """One bound per dtype, in _DTYPES' order."""
    return dict(zip(_DTYPES, (float32, float64, complex64, complex128)))


# The largest n that dispatch sends to these kernels, per dtype; above it
# the CUDA engine uses cuBLAS getrf/getri. Provisional until measured: the
# published batched Gauss-Jordan and LU kernels (one warp per matrix, rows in
# registers) beat cuBLAS's batched getrf+getri up to n = 32, so the kernels
# take every n up to 32 they can hold without spilling. complex128 stops at
# 24: above it a row of 4-register elements, plus the pivot elements ptxas
# hoists, reaches 255 registers and spills on sm_80 or sm_90 (`python -m
# gpuinv.kernels --check`, NVRTC 12.9). benchmarks/gpu_check.py measures the
# crossover against cuBLAS on real hardware.
KERNEL_MAX_N: dict[np.dtype, int] = _per_dtype(32, 32, 32, 24)

# The largest n that runs one thread per matrix; larger n runs a lane group
# per matrix. Chosen with the cost model (`python -m gpuinv.kernels --model`,
# NVRTC 12.9, sm_90, H200 ceilings; docs/kernels.md, "Choosing the shape"):
# with its loads all in flight, the one-thread kernel is predicted at the HBM
# bound at every n it can hold, where the lane group reaches 0.33-0.73 of it
# at n = 6-8; so it is kept up to the largest n that stays under about 200
# registers (headroom for other compiler versions; 255 is the limit) and a
# 64 KB main path: float64 n = 8 needs 240 registers, complex64 n = 7 a
# 69.5 KB main path, complex128 n = 6 246 registers. Provisional until a GPU
# measures both shapes: benchmarks/gpu_check.py times them side by side.
THREAD_MAX_N: dict[np.dtype, int] = _per_dtype(8, 7, 6, 5)

# The largest n that the Cholesky (positive definite) kernel takes, per
# dtype: one thread per matrix, only the lower triangle (n(n+1)/2 elements)
# live in registers. The bound is registers, as for THREAD_MAX_N, and set
# with `python -m gpuinv.kernels --check --all` (NVRTC 12.9, sm_80 and
# sm_90; docs/kernels.md has the numbers): the largest n where the kernel
# stays under about 200 registers without spilling, at most 8 (above it the
# CUDA engine uses cuSOLVER's potrfBatched). n = 8 needs 95 (float32), 163
# (float64) and 168 (complex64) registers on sm_90; complex128 needs 178 at
# n = 6, 234-240 at n = 7 and spills at n = 8. Whether the kernel beats the
# cuSOLVER route up to these sizes is provisional: no GPU has measured it.
CHOL_MAX_N: dict[np.dtype, int] = _per_dtype(8, 8, 8, 6)

# The largest n that the triangular kernel takes (either triangle), per
# dtype: one thread per matrix, the triangle read (n(n+1)/2 elements) in
# registers. The bound is registers, as for CHOL_MAX_N, and set the same way
# (`python -m gpuinv.kernels --check --all`, NVRTC 12.9, sm_80 and sm_90,
# the larger of the two; tril and triu compile alike): the largest n that
# stays under about 200 registers without spilling, at most 8 (above it
# the CUDA engine keeps its cuBLAS route). float32 needs 167 registers at
# n = 8; float64 180 at n = 7 and 254 at n = 8; complex64 186 at n = 6, 172
# at n = 7 (a block of 64 there) and 231 at n = 8; complex128 182 at n = 5,
# 255 at n = 6 and spills at n = 7. Provisional as CHOL_MAX_N: no GPU has
# timed the kernel against the cuBLAS route.
TRI_MAX_N: dict[np.dtype, int] = _per_dtype(8, 7, 7, 5)
# The largest n that the diagonal kernel takes, per dtype, by the same rule
# and check. Its own state is n elements, but the staging's unrolled loads
# and stores (all of a tile's elements in flight, kernels.cu) set its
# registers as they do the others': float32 needs 120 registers at n = 7
# and 108 at n = 8; float64 125 at n = 7 and 254 at n = 8; complex64 114 at
# n = 6 and 209 at n = 7; complex128 182 at n = 5 and spills at n = 6 on
# sm_90 (16 bytes) and at n = 7 on both.
DIAG_MAX_N: dict[np.dtype, int] = _per_dtype(8, 7, 6, 5)

# The largest n that the LU solve kernel (solve_thread, one thread per
# system) takes, per dtype; above it the CUDA engine solves with cuBLAS
# getrfBatched + getrsBatched. The bound is registers, as for THREAD_MAX_N
# (the matrix in registers, plus one right-hand side column), set with
# `python -m gpuinv.kernels --check --all` (NVRTC 12.9, sm_80 and sm_90;
# docs/kernels.md has the numbers): the largest n that stays under about
# 200 registers without spilling. float32 needs 202 at n = 8; float64 196
# at n = 6 and 228 at n = 7; complex64 168 at n = 6 and 226 at n = 7;
# complex128 204 at n = 5 and spills at n = 6. Whether the kernel beats
# getrf + getrs up to these sizes is provisional: no GPU has measured it.
SOLVE_MAX_N: dict[np.dtype, int] = _per_dtype(8, 6, 6, 5)


@dataclass(frozen=True)
class _Op:
    """One operation's kernel, as data: what :func:`kernel_spec` checks and
    :func:`instantiations` lists, and the template :attr:`KernelSpec.name_expression` names."""

    what: str  # the words of its range error
    max_n: dict[np.dtype, int]  # the largest n dispatch sends it, per dtype
    template: str  # the one-thread kernel's C++ name; {T} {n} {block} {rc} are filled in
    #: The largest n ``--check --all`` compiles its one-thread kernel at, dispatched or not
    #: (for "inv": the one-thread shape above THREAD_MAX_N).
    check_n: int = 8
    rcond: bool = True  # has rcond variants (where has_rcond_variant says so)


#: Every operation's kernel (the key is KernelSpec.op), in the order :func:`instantiations` lists them.
_OP_TABLE: dict[str, _Op] = {
    "inv": _Op("the small-matrix kernels", KERNEL_MAX_N, "gpuinv::inv_thread<{T}, {n}, {block}{rc}>"),
    "chol": _Op("the Cholesky kernel", CHOL_MAX_N, "gpuinv::inv_chol_thread<{T}, {n}, {block}{rc}>"),
    "tril": _Op("the triangular kernel", TRI_MAX_N, "gpuinv::inv_tri_thread<{T}, {n}, {block}, true{rc}>"),
    "triu": _Op("the triangular kernel", TRI_MAX_N, "gpuinv::inv_tri_thread<{T}, {n}, {block}, false{rc}>"),
    "diag": _Op("the diagonal kernel", DIAG_MAX_N, "gpuinv::inv_diag_thread<{T}, {n}, {block}{rc}>"),
    "solve": _Op("the solve kernel", SOLVE_MAX_N, "gpuinv::solve_thread<{T}, {n}, {block}>", rcond=False),
}
#: The general inverse's lane-group kernel.
_GROUP_TEMPLATE = "gpuinv::inv_group<{T}, {n}, {group}, {warps}{rc}>"
_OPS = tuple(_OP_TABLE)

# The (op, dtype, n) whose kernel has no rcond variant: the one-thread
# kernels already near the register limit, where the variant's norms (a
# pass over A, one over X, a division) take them to 255 registers or past
# it (NVRTC 12.9, sm_80 / sm_90, `python -m gpuinv.kernels --check`): LU
# float64 n = 7 (plain 196 / 198; rcond 255 with 36 bytes spilled), Cholesky
# float64 n = 7 (255, at the limit) and n = 8 (plain 230 / 231; rcond spills
# 20-44 bytes), Cholesky complex64 n = 8 (254-255, at the limit). There the
# CUDA engine runs the plain kernel and takes rcond from the two CuPy norms
# (gpuinv/engines/cuda/engine.py), as on the cuBLAS routes.
_NO_RCOND_VARIANT = {
    ("inv", np.dtype(np.float64), 7),
    ("chol", np.dtype(np.float64), 7),
    ("chol", np.dtype(np.float64), 8),
    ("chol", np.dtype(np.complex64), 8),
}


def has_rcond_variant(n: int, dtype: Any, op: str = "inv") -> bool:
    """Whether ``kernel_spec(n, dtype, op)`` has an rcond variant (``rcond=True``).

    Every dispatched kernel has one except the solve kernel and the few
    one-thread kernels where it would exceed the registers (``_NO_RCOND_VARIANT``).
    """
    return op in _OP_TABLE and _OP_TABLE[op].rcond and (op, np.dtype(dtype), int(n)) not in _NO_RCOND_VARIANT

# Every kernel takes the input as ``const T* __restrict__`` and only reads it,
# so the CUDA engine may hand them the caller's own contiguous stack without
# a gather copy (gpuinv/engines/cuda.py, route "kernel").
INPUT_READ_ONLY = True

# The one-thread kernel skips its shared-memory stage for matrices of this
# many bytes or fewer (kernels.cu keeps the same constant; docs/kernels.md).
THREAD_DIRECT_BYTES = 32

# Static shared memory per block is capped at 48 KiB; staying within it
# avoids the opt-in for dynamic shared memory.
_SMEM_LIMIT = 48 * 1024
# The largest grid.x CUDA allows; the kernels loop over tiles past it.
_MAX_GRID = 2**31 - 1


@dataclass(frozen=True)
class KernelSpec:
    """One kernel instantiation: which template, with which arguments.

    Attributes
    ----------
    dtype : numpy.dtype
        The element type.
    n : int
        The matrix order.
    shape : str
        ``"thread"`` (one thread per matrix) or ``"group"`` (lanes per matrix).
    block : int
        Threads per block.
    per_block : int
        Matrices per block and tile.
    group : int
        Lanes per matrix (1 for the thread shape).
    op : str
        ``"inv"`` (the general inverse, LU), ``"chol"`` (the Hermitian
        positive definite inverse, Cholesky), ``"tril"`` / ``"triu"`` (the
        lower / upper triangular inverse), ``"diag"`` (the diagonal
        inverse) or ``"solve"`` (``A X = B`` by LU); all but ``"inv"`` have
        the thread shape only.
    rcond : bool
        Whether the kernel also writes each matrix's reciprocal condition
        number in the 1-norm, ``1 / (||A||_1 ||X||_1)``, computed from the A
        and X it holds (the ``RC`` template argument). Without it the
        kernel's code is the same as before rcond existed.
    """

    dtype: np.dtype
    n: int
    shape: str
    block: int
    per_block: int
    group: int
    op: str = "inv"
    rcond: bool = False

    @property
    def params(self) -> tuple[str, ...]:
        """The kernel's arguments, in order, by the names :func:`_launch` and the
        CPU emulation (tests/_cuda_emu.py, tests/cuda_emu/emu_main.cpp) give
        them, from: ``a`` and ``b`` (the inputs), ``out``, ``info`` and
        ``rcond`` (the outputs; ``rcond`` a null pointer where the kernel
        writes none), ``m`` (matrices) and ``k`` (right-hand sides)."""
        if self.op == "solve":
            return ("a", "b", "out", "info", "m", "k")
        return ("a", "out", "info", "rcond", "m")

    @property
    def name_expression(self) -> str:
        """The C++ name of the instantiation, as NVRTC's addNameExpression takes it."""
        template = _OP_TABLE[self.op].template if self.shape == "thread" else _GROUP_TEMPLATE
        return template.format(T=_CXX_TYPES[self.dtype], n=self.n, block=self.block, group=self.group,
                               warps=self.block // 32, rc=", true" if self.rcond else "")

    @property
    def direct(self) -> bool:
        """Whether the one-thread kernel loads and stores without a shared-memory stage (kernels.cu's THREAD_DIRECT_BYTES)."""
        return self.shape == "thread" and self.n * self.n * self.dtype.itemsize <= THREAD_DIRECT_BYTES

    @property
    def shared_bytes(self) -> int:
        """Static shared memory of one block."""
        item = self.dtype.itemsize
        if self.shape == "thread":
            if self.direct:
                return 0
            return _stage_elements(self.n, self.op) * (self.block + 1) * item
        return self.per_block * self.n * group_ld(self.n, self.dtype) * item

    @property
    def kind(self) -> str:
        """The shape, prefixed with the operation where it is not the general inverse
        (``"thread"``, ``"group"``, ``"chol-thread"``, ``"tril-thread"``, ...), with
        ``"-rcond"`` for the rcond variants: the key of the model and the budget."""
        kind = self.shape if self.op == "inv" else f"{self.op}-{self.shape}"
        return kind + "-rcond" if self.rcond else kind

    def label(self) -> str:
        return f"{self.dtype.name:<10} n={self.n:<2} {self.kind:<17} block={self.block:<3}"


def group_ld(n: int, dtype: Any) -> int:
    """The lane-group kernel's stage row stride: n + 1 rounded up to 16 bytes (inverse.cuh's group_stage)."""
    per_16 = 16 // np.dtype(dtype).itemsize
    return -(-(n + 1) // per_16) * per_16


def _check_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in _CXX_TYPES:
        raise TypeError(
            f"the small-matrix kernels support float32, float64, complex64 and complex128, got {dt}"
        )
    return dt


def _stage_elements(n: int, op: str) -> int:
    """Elements per matrix in the one-thread kernels' stage: A, and for the solve
    one right-hand side column (staged when k = 1; kernels.cu's solve_thread)."""
    return n * n + (n if op == "solve" else 0)


def _thread_spec(dt: np.dtype, n: int, op: str, rcond: bool = False) -> KernelSpec:
    """The one-thread kernel's instantiation (any operation)."""
    item = dt.itemsize
    if n * n * item <= THREAD_DIRECT_BYTES:
        # No stage: each thread takes THREAD_DIRECT_BYTES of matrices a tile.
        return KernelSpec(dt, n, "thread", 128, 128 * (THREAD_DIRECT_BYTES // (n * n * item)), 1, op, rcond)
    # The largest block whose stage fits: more matrices per block means
    # longer coalesced runs; 128 threads keeps enough blocks per SM.
    for block in (128, 64, 32):
        if _stage_elements(n, op) * (block + 1) * item <= _SMEM_LIMIT:
            return KernelSpec(dt, n, "thread", block, block, 1, op, rcond)
    raise AssertionError("unreachable: n <= 8 keeps the stage under the limit")


def _check_spec(n: int, dt: np.dtype, op: str, rcond: bool) -> np.dtype:
    """The one check of an (n, dtype, op, rcond) request against _OP_TABLE; returns the dtype."""
    if op not in _OP_TABLE:
        raise ValueError(f"op must be one of {', '.join(map(repr, _OPS))}, got {op!r}")
    kernel = _OP_TABLE[op]
    if rcond and not kernel.rcond:
        raise ValueError(f"{kernel.what} has no rcond variant")
    if rcond and not has_rcond_variant(n, dt, op):
        raise ValueError(f"the {op} kernel for n={n} {dt} has no rcond variant (registers; see has_rcond_variant)")
    word = "takes" if op != "inv" else "take"
    if not 1 <= n <= kernel.max_n[dt]:
        raise ValueError(f"{kernel.what} {word} 1 <= n <= {kernel.max_n[dt]} for {dt}, got n={n}")
    return dt


def kernel_spec(n: int, dtype: Any, op: str = "inv", rcond: bool = False) -> KernelSpec:
    """The instantiation that inverts (n, n) matrices of ``dtype``.

    ``op="chol"`` gives the Cholesky kernel for Hermitian positive definite
    matrices (``1 <= n <= CHOL_MAX_N[dtype]``); ``"tril"`` and ``"triu"``
    the triangular kernel for lower and upper triangular matrices
    (``TRI_MAX_N``), ``"diag"`` the diagonal kernel (``DIAG_MAX_N``),
    ``"solve"`` the LU solve kernel (``SOLVE_MAX_N``). With ``rcond``, the
    variant that also writes each matrix's reciprocal condition number (the
    same shape and launch; :attr:`KernelSpec.rcond`; not for ``"solve"``).

    Raises
    ------
    ValueError
        If ``n`` is not in ``1..KERNEL_MAX_N[dtype]`` (the op's own bound for
        the others), or ``op`` is unknown, or ``rcond`` is asked of the solve kernel.
    """
    dt = _check_spec(n, _check_dtype(dtype), op, rcond)
    if op != "inv" or n <= THREAD_MAX_N[dt]:
        return _thread_spec(dt, n, op, rcond)
    item = dt.itemsize
    group = 1 << (n - 1).bit_length()
    per_warp = 32 // group
    for warps in (4, 2, 1):
        if warps * per_warp * n * group_ld(n, dt) * item <= _SMEM_LIMIT:
            return KernelSpec(dt, n, "group", 32 * warps, warps * per_warp, group, "inv", rcond)
    raise AssertionError("unreachable: one warp's stage of a 32x32 complex128 is 16.5 KiB")


def instantiations(include_non_default: bool = False) -> list[KernelSpec]:
    """Every (dtype, n, shape) instantiation dispatch can select, in order:
    the general inverse's, then the Cholesky kernel's, then the triangular
    (lower, upper) and diagonal kernels', then the same again with rcond
    (:attr:`KernelSpec.rcond`) where :func:`has_rcond_variant`, then the LU
    solve kernel's.

    With ``include_non_default``, also the one-thread shape for the n just
    above ``THREAD_MAX_N``, and the structured kernels for the n just above
    their bounds (all up to 8), which dispatch does not select: the
    NVRTC check reports them to show where and why the threshold lies.
    """
    with_rc = [op for op, kernel in _OP_TABLE.items() if kernel.rcond]
    plain_only = [op for op, kernel in _OP_TABLE.items() if not kernel.rcond]

    def dispatched(ops: list[str]) -> list[KernelSpec]:
        return [kernel_spec(n, dt, op) for op in ops for dt in _DTYPES for n in range(1, _OP_TABLE[op].max_n[dt] + 1)]

    specs = dispatched(with_rc)
    specs += [replace(s, rcond=True) for s in list(specs) if has_rcond_variant(s.n, s.dtype, s.op)]
    specs += dispatched(plain_only)
    if include_non_default:
        # The general inverse's one-thread shape above THREAD_MAX_N, the others above their bounds.
        above = {op: (THREAD_MAX_N if op == "inv" else kernel.max_n) for op, kernel in _OP_TABLE.items()}
        for op in plain_only + [op for op in with_rc if op != "inv"] + ["inv"]:
            specs += [_thread_spec(dt, n, op) for dt in _DTYPES for n in range(above[op][dt] + 1, _OP_TABLE[op].check_n + 1)]
    return specs


@functools.lru_cache(maxsize=None)
def kernel_source() -> str:
    """The CUDA source compiled for every instantiation: kernels.cu with the
    headers it includes (inverse.cuh, cholesky.cuh, triangular.cuh) pasted in.

    The headers are pasted in rather than included so that the text hashed
    for the disk cache covers all of the code.
    """
    kernels = (_HERE / "kernels.cu").read_text()
    for name in ("inverse.cuh", "cholesky.cuh", "triangular.cuh"):
        include = f'#include "{name}"'
        if include not in kernels:
            raise RuntimeError(f"kernels.cu no longer includes {name}; update kernel_source()")
        kernels = kernels.replace(include, (_HERE / name).read_text(), 1)
    return kernels


# The options every kernel compiles with, and why: gpuinv/kernels/_nvrtc.py, which
# compiles them (defined there so that it needs nothing from this package).
from ._nvrtc import NVRTC_OPTIONS  # noqa: E402


def _compute_capability(device_id: int) -> str:
    import cupy

    return str(cupy.cuda.Device(device_id).compute_capability)


@functools.lru_cache(maxsize=None)
def _kernel(spec: KernelSpec, device_id: int) -> Any:
    # One module per instantiation and device: only what is used gets
    # compiled, and a module binds to the context (device) current at load.
    from cupy.cuda import function

    from . import _nvrtc

    binary, _origin = _nvrtc.compiled(kernel_source(), spec.name_expression, _compute_capability(device_id))
    with _device(device_id):
        module = function.Module()
        module.load(binary.data)
        return module.get_function(binary.names[spec.name_expression])


def _device(device_id: int) -> Any:
    import cupy

    return cupy.cuda.Device(device_id)


def _warm_job(job: tuple[KernelSpec, str]) -> tuple[KernelSpec, Any, str, float]:
    # Runs in a spawned worker: the same lookup and compile path as _kernel.
    import time

    from . import _nvrtc

    spec, cc = job
    start = time.perf_counter()
    binary, origin = _nvrtc.compiled(kernel_source(), spec.name_expression, cc)
    return spec, binary, origin, time.perf_counter() - start


def warm_up(
    dtypes: Any = None,
    ns: Any = None,
    *,
    arch: str | int | None = None,
    workers: int | None = None,
    load: bool = True,
    extra: Any = (),
) -> list[dict[str, Any]]:
    """Compile kernel instantiations ahead of their first use, in parallel.

    Each (dtype, n) is its own NVRTC program, compiled on first use: under
    a second for small n, several seconds at n = 32 (all 120 take about 3
    minutes on one core; docs/kernels.md has the numbers). This compiles
    the ones asked for that no cache holds, in a pool of spawned processes,
    through the same path :func:`invert_small` uses, so the binaries land in
    the disk cache and in this process's cache; with ``load`` they are also
    loaded on the current device, and the first call then launches at once.

    Parameters
    ----------
    dtypes : sequence of dtype-like, optional
        Default: float32, float64, complex64, complex128.
    ns : sequence of int, optional
        Default: every n the kernels take. An n above ``KERNEL_MAX_N`` of a
        dtype is skipped for that dtype (cuBLAS handles it, nothing to compile).
    arch : str or int, optional
        Compute capability to compile for (``"90"``, ``"sm_90"``). Default:
        the current CuPy device's. With ``arch`` given no GPU is needed and
        nothing is loaded.
    workers : int, optional
        Processes (default: the usable CPUs, at most one per kernel to
        compile). 1 compiles in this process.
    load : bool
        Load the modules on the current device (ignored when ``arch`` is given).
    extra : sequence of KernelSpec, optional
        Further instantiations, compiled with the others: shapes dispatch does
        not pick (``benchmarks/gpu_check.py`` times both shapes where both exist),
        or the structured and solve kernels (``kernel_spec(n, dtype, "chol")``,
        ``"tril"``, ..., ``"solve"``), which ``dtypes`` and ``ns`` do not select.

    Returns
    -------
    list of dict
        Per instantiation: ``dtype``, ``n``, ``shape``, ``op``, ``origin`` (``"memory"``,
        ``"disk"`` or ``"compiled"``) and ``seconds`` spent finding or compiling it.

    Raises
    ------
    TypeError
        For an unsupported dtype.
    ValueError
        For an n below 1.
    """
    import multiprocessing
    import os
    import time
    from concurrent.futures import ProcessPoolExecutor

    from . import _nvrtc

    dts = _DTYPES if dtypes is None else tuple(_check_dtype(d) for d in dtypes)
    ns = None if ns is None else [int(n) for n in ns]
    if ns is not None and any(n < 1 for n in ns):
        raise ValueError(f"ns must be positive matrix orders, got {list(ns)}")
    specs = [
        kernel_spec(n, dt)
        for dt in dts
        for n in (range(1, KERNEL_MAX_N[dt] + 1) if ns is None else sorted(set(ns)))
        if n <= KERNEL_MAX_N[dt]
    ]
    specs += [s for s in extra if s not in specs]
    device_id = None
    if arch is None:
        import cupy

        device_id = cupy.cuda.Device().id
        arch = _compute_capability(device_id)
    cc = str(arch)
    _nvrtc.load_nvrtc()  # fail here, not in a worker, if libnvrtc is missing
    results = []
    missing = []
    for spec in specs:  # what is cached already needs no worker
        start = time.perf_counter()
        hit = _nvrtc.cached(kernel_source(), spec.name_expression, cc)
        if hit is None:
            missing.append(spec)
        else:
            results.append((spec, hit[0], hit[1], time.perf_counter() - start))
    # The costliest first, so that no worker is left with a big one at the end.
    jobs = [(s, cc) for s in sorted(missing, key=lambda s: s.n * s.n * s.dtype.itemsize, reverse=True)]
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(workers, len(jobs)))
    if len(jobs) <= 1 or workers == 1:
        results += [_warm_job(job) for job in jobs]
    else:
        # "spawn", not fork: the caller may hold CUDA contexts and other
        # libraries' threads that a forked child would inherit mid-lock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            results += list(pool.map(_warm_job, jobs))
    report = []
    for spec, binary, origin, seconds in results:
        _nvrtc.remember(kernel_source(), spec.name_expression, cc, binary)
        if load and device_id is not None:
            _kernel(spec, device_id)
        report.append({"dtype": spec.dtype.name, "n": spec.n, "shape": spec.shape, "op": spec.op,
                       "origin": origin, "seconds": seconds})
    order = {(s.dtype.name, s.n, s.shape, s.op): i for i, s in enumerate(specs)}
    return sorted(report, key=lambda r: order[(r["dtype"], r["n"], r["shape"], r["op"])])


def launch_config(spec: KernelSpec, m: int, max_blocks: int | None = None) -> tuple[int, int]:
    """The 1-D grid and block that :func:`invert_small` launches ``spec`` with on ``m`` matrices.

    One block per tile of ``spec.per_block`` matrices, capped at
    ``max_blocks`` (default: CUDA's grid limit); the kernels loop over the
    tiles past the cap. The CPU execution harness (tests/_cuda_emu.py) runs
    the kernels with exactly this configuration.
    """
    tiles = -(-m // spec.per_block)
    cap = _MAX_GRID if max_blocks is None else max(1, int(max_blocks))
    return min(tiles, cap), spec.block


def invert_small(a: Any, out: Any, info: Any, *, rcond: Any = None, max_blocks: int | None = None) -> None:
    """Invert every matrix of a CuPy stack with the small-matrix kernels.

    Runs on CuPy's current device and stream and never synchronizes with
    the host.

    Parameters
    ----------
    a : cupy.ndarray, shape (m, n, n)
        C-contiguous, float32, float64, complex64 or complex128, with
        ``1 <= n <= KERNEL_MAX_N[a.dtype]``. Not modified.
    out : cupy.ndarray, shape (m, n, n)
        C-contiguous, same dtype; receives the inverses (NaN for matrices
        with info -1, meaningless for info > 0). Must not overlap ``a``.
    info : cupy.ndarray, shape (m,)
        int32, C-contiguous; receives 0 (inverted), k > 0 (exactly zero
        pivot at step k, 1-based) or -1 (NaN or Inf in the input).
    rcond : cupy.ndarray, shape (m,), optional
        C-contiguous, of the real dtype of ``a``; receives each matrix's
        ``1 / (||A||_1 ||X||_1)`` from the A and X the kernel holds (0 where
        info > 0 or the product is 0 or not finite, NaN where info is -1:
        :func:`gpuinv._numerics.rcond_from_inverse`'s conventions). Given,
        the kernel's ``rcond`` variant runs.
    max_blocks : int, optional
        Cap on the grid size (default: CUDA's limit). The kernels loop over
        the remaining tiles, so any cap is correct; tests use a small one.

    Raises
    ------
    TypeError
        For an unsupported dtype.
    ValueError
        For mismatched shapes, non-contiguous arrays or n out of range.
    """
    m, n, dt = _check_arrays(a, out, info, rcond)
    if m == 0:
        return
    spec = kernel_spec(n, dt, rcond=rcond is not None)
    _check_same_device(a, out, info, rcond)
    _launch(spec, a, out, info, rcond, max_blocks=max_blocks)


def _real_dtype(dt: np.dtype) -> np.dtype:
    return np.dtype(dt.char.lower()) if dt.kind == "c" else dt


def _check_arrays(a: Any, out: Any, info: Any, rcond: Any = None) -> tuple[int, int, np.dtype]:
    """Shapes, dtypes and layout of a kernel launch's arrays; returns (m, n, dtype)."""
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"a must have shape (m, n, n), got {a.shape}")
    m, n = a.shape[0], a.shape[1]
    dt = _check_dtype(a.dtype)
    if out.shape != a.shape or out.dtype != dt:
        raise ValueError(f"out must have shape {a.shape} and dtype {dt}, got {out.shape} {out.dtype}")
    if info.shape != (m,) or info.dtype != np.int32:
        raise ValueError(f"info must have shape ({m},) and dtype int32, got {info.shape} {info.dtype}")
    real = _real_dtype(dt)
    if rcond is not None and (rcond.shape != (m,) or rcond.dtype != real):
        raise ValueError(f"rcond must have shape ({m},) and dtype {real}, got {rcond.shape} {rcond.dtype}")
    for name, arr in (("a", a), ("out", out), ("info", info), ("rcond", rcond)):
        if arr is not None and not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
    return m, n, dt


def _check_same_device(a: Any, out: Any, info: Any, rcond: Any = None) -> None:
    device_id = a.device.id
    for name, arr in (("out", out), ("info", info), ("rcond", rcond)):
        if arr is not None and arr.device.id != device_id:
            raise ValueError(f"{name} is on device {arr.device.id} but a is on device {device_id}")


def _launch(spec: KernelSpec, a: Any, out: Any, info: Any, rcond: Any = None, *,
            max_blocks: int | None = None, b: Any = None) -> None:
    # The launch itself, for any instantiation (benchmarks/gpu_check.py also
    # times the shape dispatch does not pick); arguments already checked.
    m = a.shape[0]
    grid, block = launch_config(spec, m, max_blocks)
    if (rcond is not None) != spec.rcond:
        raise ValueError(f"{spec.name_expression} {'needs' if spec.rcond else 'takes no'} rcond array")
    # A null pointer where the kernel writes no rcond (its RC = false ignores it).
    values = {"a": a, "out": out, "info": info, "rcond": np.uint64(0) if rcond is None else rcond,
              "m": np.int64(m)}
    if b is not None:  # the solve's right-hand sides, and their count
        values.update(b=b, k=np.int32(b.shape[-1]))
    with a.device:  # compile for, and launch on, the device that holds the data
        kernel = _kernel(spec, a.device.id)
        kernel((grid,), (block,), tuple(values[name] for name in spec.params))


def invert_small_chol(a: Any, out: Any, info: Any, *, rcond: Any = None,
                      max_blocks: int | None = None) -> None:
    """Invert every Hermitian positive definite matrix of a CuPy stack with the Cholesky kernel.

    Only the lower triangle of each matrix is read, and of its diagonal
    only the real part (as LAPACK ``potrf`` with ``lower=True``); the
    inverse is written whole and exactly Hermitian (symmetric). Runs on
    CuPy's current device and stream and never synchronizes with the host.

    Parameters
    ----------
    a : cupy.ndarray, shape (m, n, n)
        C-contiguous, float32, float64, complex64 or complex128, with
        ``1 <= n <= CHOL_MAX_N[a.dtype]``. Not modified.
    out : cupy.ndarray, shape (m, n, n)
        C-contiguous, same dtype; receives the inverses (all NaN where
        info != 0). Must not overlap ``a``.
    info : cupy.ndarray, shape (m,)
        int32, C-contiguous; receives 0 (inverted), k > 0 (the leading minor
        of order k is not positive definite, potrf's code) or -1 (NaN or Inf
        in the part read).
    rcond : cupy.ndarray, shape (m,), optional
        As :func:`invert_small`'s, with ``||A||_1`` of the Hermitian matrix
        the lower triangle (and the real part of the diagonal) defines.
    max_blocks : int, optional
        Cap on the grid size (default: CUDA's limit); any cap is correct.

    Raises
    ------
    TypeError
        For an unsupported dtype.
    ValueError
        For mismatched shapes, non-contiguous arrays or n out of range.
    """
    m, n, dt = _check_arrays(a, out, info, rcond)
    spec = kernel_spec(n, dt, "chol", rcond=rcond is not None)
    if m == 0:
        return
    _check_same_device(a, out, info, rcond)
    _launch(spec, a, out, info, rcond, max_blocks=max_blocks)


#: :func:`invert_small_structured`'s structures (SciPy's ``assume_a`` names) and their kernels.
_STRUCTURE_OPS = {"lower triangular": "tril", "upper triangular": "triu", "diagonal": "diag"}


def invert_small_structured(a: Any, out: Any, info: Any, structure: str, *, rcond: Any = None,
                            max_blocks: int | None = None) -> None:
    """Invert every triangular or diagonal matrix of a CuPy stack with its kernel.

    Only the part of each matrix that ``structure`` names is read (the
    triangle, or the diagonal), as LAPACK ``trtri`` and SciPy's
    ``assume_a`` do: the rest may hold anything, NaN included. The inverse
    is written whole, with exact zeros outside the structure. Runs on CuPy's
    current device and stream and never synchronizes with the host.

    Parameters
    ----------
    a : cupy.ndarray, shape (m, n, n)
        C-contiguous, float32, float64, complex64 or complex128, with
        ``1 <= n <= TRI_MAX_N[a.dtype]`` (``DIAG_MAX_N`` for the diagonal).
        Not modified.
    out : cupy.ndarray, shape (m, n, n)
        C-contiguous, same dtype; receives the inverses (all NaN where
        info != 0). Must not overlap ``a``.
    info : cupy.ndarray, shape (m,)
        int32, C-contiguous; receives 0 (inverted), k > 0 (the k-th diagonal
        element, 1-based, is the first exactly zero one: trtri's code) or -1
        (NaN or Inf in the part read).
    structure : {"lower triangular", "upper triangular", "diagonal"}
        What the matrices are.
    rcond : cupy.ndarray, shape (m,), optional
        As :func:`invert_small`'s, with the norms of the matrix as read (the
        triangle or the diagonal, zeros elsewhere).
    max_blocks : int, optional
        Cap on the grid size (default: CUDA's limit); any cap is correct.

    Raises
    ------
    TypeError
        For an unsupported dtype.
    ValueError
        For an unknown structure, mismatched shapes, non-contiguous arrays or
        n out of range.

    Examples
    --------
    >>> import cupy  # doctest: +SKIP
    >>> a = cupy.tril(cupy.random.rand(1000, 4, 4)) + 4 * cupy.eye(4)  # doctest: +SKIP
    >>> out, info = cupy.empty_like(a), cupy.empty(1000, dtype=cupy.int32)  # doctest: +SKIP
    >>> invert_small_structured(a, out, info, "lower triangular")  # doctest: +SKIP
    """
    if structure not in _STRUCTURE_OPS:
        raise ValueError(f"structure must be one of {', '.join(map(repr, _STRUCTURE_OPS))}, got {structure!r}")
    m, n, dt = _check_arrays(a, out, info, rcond)
    spec = kernel_spec(n, dt, _STRUCTURE_OPS[structure], rcond=rcond is not None)
    if m == 0:
        return
    _check_same_device(a, out, info, rcond)
    _launch(spec, a, out, info, rcond, max_blocks=max_blocks)


def _check_rhs(a: Any, b: Any, x: Any) -> int:
    """Shapes, dtypes and layout of a solve's right-hand sides and solutions; returns k."""
    m, n = a.shape[0], a.shape[1]
    if b.ndim != 3 or b.shape[:2] != (m, n):
        raise ValueError(f"b must have shape ({m}, {n}, k), got {b.shape}")
    k = b.shape[2]
    if b.dtype != a.dtype:
        raise ValueError(f"b must have dtype {a.dtype}, got {b.dtype}")
    if x.shape != b.shape or x.dtype != a.dtype:
        raise ValueError(f"x must have shape {b.shape} and dtype {a.dtype}, got {x.shape} {x.dtype}")
    for name, arr in (("b", b), ("x", x)):
        if not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
    if k > np.iinfo(np.int32).max:
        raise ValueError(f"the solve kernel takes at most {np.iinfo(np.int32).max} right-hand sides, got {k}")
    return k


def solve_small(a: Any, b: Any, x: Any, info: Any, *, max_blocks: int | None = None) -> None:
    """Solve ``a[i] @ x[i] = b[i]`` for every system of a CuPy stack with the LU solve kernel.

    LU with partial pivoting (the LU inverse kernel's pivots and info codes),
    then forward and back substitution for each right-hand side column, one
    thread per system. Runs on CuPy's current device and stream and never
    synchronizes with the host.

    Parameters
    ----------
    a : cupy.ndarray, shape (m, n, n)
        C-contiguous, float32, float64, complex64 or complex128, with
        ``1 <= n <= SOLVE_MAX_N[a.dtype]``. Not modified.
    b : cupy.ndarray, shape (m, n, k)
        C-contiguous, same dtype: the right-hand sides. Not modified.
    x : cupy.ndarray, shape (m, n, k)
        C-contiguous, same dtype; receives the solutions (all NaN where
        info != 0; NaN or Inf in ``b`` only propagate). Must not overlap
        ``a`` or ``b``.
    info : cupy.ndarray, shape (m,)
        int32, C-contiguous; receives 0 (solved), k > 0 (exactly zero pivot
        at step k, 1-based) or -1 (NaN or Inf in ``a``), as
        :func:`invert_small` does.
    max_blocks : int, optional
        Cap on the grid size (default: CUDA's limit); any cap is correct.

    Raises
    ------
    TypeError
        For an unsupported dtype.
    ValueError
        For mismatched shapes, non-contiguous arrays or n out of range.

    Examples
    --------
    >>> import cupy  # doctest: +SKIP
    >>> a = cupy.random.rand(1000, 4, 4) + 4 * cupy.eye(4)  # doctest: +SKIP
    >>> b = cupy.random.rand(1000, 4, 1)  # doctest: +SKIP
    >>> x, info = cupy.empty_like(b), cupy.empty(1000, dtype=cupy.int32)  # doctest: +SKIP
    >>> solve_small(a, b, x, info)  # doctest: +SKIP
    """
    m, n, dt = _check_arrays(a, a, info)
    _check_rhs(a, b, x)
    spec = kernel_spec(n, dt, "solve")
    if m == 0:
        return
    device_id = a.device.id
    for name, arr in (("b", b), ("x", x), ("info", info)):
        if arr.device.id != device_id:
            raise ValueError(f"{name} is on device {arr.device.id} but a is on device {device_id}")
    _launch(spec, a, x, info, max_blocks=max_blocks, b=b)
