"""The CPU engine's route choice, in one place: which method and how many threads for order n.

Read this file to know what the CPU engine runs for a given n. Each
threshold names the benchmark that set it. The engine (:mod:`.cpu`) and its
block functions look the routes up here and nowhere else.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._config import config

__all__ = ["CPU_CLOSED_FORM_MAX_N", "COMPILED_INV_MIN_N", "COMPILED_INV_MAX_N",
           "COMPILED_POSDEF_MIN_N", "COMPILED_POSDEF_MAX_N", "COMPILED_POSDEF_SOLVE_MAX_N",
           "COMPILED_SOLVE_MAX_N",
           "POSDEF_CHOLESKY_MIN_N", "posdef_method", "GETRI_MIN_N", "UNROLLED_MAX_N", "compiled_for",
           "compiled_kernels", "cpu_route", "threads_for", "unrolled_for"]

# Closed forms beat LAPACK's per-matrix calls by 5-30x for n <= 4 and keep its
# accuracy (with the guard in engines/_closed_form.py); at n = 5 the 5x5
# adjugate would cost more than LAPACK (benchmarks/bench_cpu.py).
CPU_CLOSED_FORM_MAX_N = 4


# From this order up, where SciPy is importable, LAPACK getrf + getri per
# matrix (SciPy's wrappers) instead of NumPy's gufunc (getrf + getrs against
# the identity): about 2n^3 flops against 8/3 n^3. One core, CPU time:
# getri ran at 1.12x the gufunc at n = 24, 1.19x at 32, 1.28x at 64 and
# 1.44x at 128 (float64), 0.99x at 24, 1.07x at 32 and 1.19x at 64
# (float32), 1.18x and 1.38x at 32 (complex64, complex128), and 0.4-0.9x at
# n = 8..16, where its two wrapper calls per matrix cost more than the flops
# saved (benchmarks/bench_cpu_peers.py --routes, OPENBLAS_NUM_THREADS=1, on
# a loaded 2-core AMD EPYC). n = 32 is where every dtype gains.
GETRI_MIN_N = 32

def cpu_route(n: int) -> str:
    """The CPU engine's route for order n: "closed_form" or "lapack"."""
    return "closed_form" if n <= CPU_CLOSED_FORM_MAX_N else "lapack"


def threads_for(n: int, dtype: Any = None, kind: str = "invert") -> int:
    """Worker threads for order n (benchmarks/bench_cpu.py, threads sweep).

    * 5 <= n <= 8: LAPACK's tiny-matrix calls contend inside OpenBLAS; two
      threads ran at 0.74x of one, so these stay on one thread, unless the
      compiled kernels take these orders (they share nothing between
      threads and release the GIL: every thread is free speed).
    * n >= 128 where the compiled kernels take the order (float64 up to 128,
      float32 up to 384; ``dtype`` given): the engine's pool, as below 128.
    * n >= 128 otherwise: getrf is blocked and OpenBLAS threads it itself; our threads
      on top oversubscribe the cores. Not settled against the pool with
      OpenBLAS held to one thread (which the engine could only do through
      threadpoolctl, not installed here, or ctypes): on the loaded 2-core
      machine ``bench_cpu_peers.py --threads`` gave policy / (pool, BLAS 1)
      1.25, 1.18, 0.71 at n = 128, 256, 512 in one run and 0.98, 0.81, 0.70
      (float64) in the next (docs/cpu-compiled.md, "Threads at n >= 128").
    """
    if dtype is not None and compiled_for(kind, n, dtype) is not None:
        return config.cpu_threads
    if 5 <= n <= 8 and compiled_kernels() is not None:
        return config.cpu_threads
    if 5 <= n <= 8 or n >= 128:
        return 1
    return config.cpu_threads


# --- the compiled route (issue 19): every threshold in one place --------------
#
# Where Numba is installed (the gpuinv[cpu] extra) and config.cpu_compiled is
# on, per-matrix LU kernels compiled by Numba (engines/_compiled.py) replace
# LAPACK's per-matrix calls for these orders. Set by
# `benchmarks/bench_compiled.py block` (one 1 MiB chunk on one thread, rcond
# on as inv's defaults, the compiled kernel against this module's LAPACK
# route, by process time, interleaved; 2-core AMD EPYC under load; table in
# docs/cpu-compiled.md). Compiled / LAPACK route speed, since the loop
# kernel's row updates became one loop over the whole row (1.5-2.7x at
# n = 16..64 for real types; the 2026-12-07 session's table, before it, is
# in docs/cpu-compiled.md):
#
#   n           12    24    32    48    64    96   128
#   float64   3.55  3.58  2.86  2.36  1.89  1.62  2.51
#   float32   2.59  2.83  2.65  2.06  2.08  2.01  3.21
#   complex128 1.58 1.13  0.82  0.63  0.56  0.46  0.39
#   complex64 1.77  1.09  0.75  0.57  0.46  0.58  0.47
#
# Above n = 96 one thread against one is not the question: the LAPACK
# route runs there one call at a time with OpenBLAS's own threads, the
# compiled one on the engine's pool. inv's defaults, 16 MiB stacks, both
# threads, the compiled route against the peers (`bench_cpu_peers.py --n
# 128 192 256 384`), matrices/s: float64 3.95e3 at n = 128 (the LAPACK
# route's table: 2.8e3), 1.27e3 at 192 (1.36e3), 611 at 256 (740);
# float32 8.7e3 at 128 (3.7e3), 1.41e3 at 256 (743), 441 at 384 (295).
#
# * COMPILED_INV_MIN_N: from n = 2 the compiled route (the unrolled kernels
#   below, UNROLLED_MAX_N) runs faster than the closed forms, but for
#   complex64 at n = 2, 3: inv's defaults, 16 MiB stacks, two threads,
#   closed forms -> compiled, matrices/s (/tmp bench, interleaved, loaded
#   2-core AMD EPYC; `bench_compiled.py inv --ns 2,3,4` reruns it):
#
#   n            2      3      4
#   float64    1.77   2.25   2.80
#   float32    1.13   1.40   1.79
#   complex128 1.12   1.28   1.81
#   complex64  0.76   0.83   1.11
#
#   LU with partial pivoting is at least as accurate as the closed forms
#   with their guard (issue 19 item 2: "keep whichever is faster at equal
#   or better accuracy"). The loop kernel alone, before the unrolled ones,
#   ran at 0.51-2.14x of the closed forms, so the closed forms had stayed.
#   n = 1 stays on the closed form (a reciprocal per element, memory-bound).
# * COMPILED_INV_MAX_N: the last n where the compiled route is faster:
#   128 for float64, 384 for float32 (the largest measured), 24 for complex.
# * COMPILED_SOLVE_MAX_N: the compiled LU solve from n = 1 (backward stable,
#   where the closed-form solve was not, issue 19 item 3) up to its
#   crossover with gesv (`bench_compiled.py solve-block`, k = 1, compiled /
#   gesv route speed):
#
#   n           2     4     8    12    16    24    32
#   float64   3.34  2.28  1.60  1.68  1.26  1.09  0.86
#   float32   3.61  2.71  1.90  1.58  1.27  0.91  0.73
#   complex128 3.29 2.31  1.75  1.47  1.19  0.89  0.68
#   complex64 3.30  2.42  1.74  1.75  1.41  1.01  0.80
#
#   and since the solve kernel's row update runs over the whole row (and
#   the unrolled solve at n <= 8), forced past the bound to find it:
#
#   n            8    16    24    32    48    64
#   float64    2.73  1.78  1.64  1.37  0.81  0.77
#   float32    2.62  1.98  1.70  1.49  1.06  0.92
#   complex128 1.67  1.12  0.76  0.61  0.48  0.42
#   complex64  1.53  1.06  0.78  0.60  0.44  0.35
COMPILED_INV_MIN_N = {"d": 2, "f": 2, "D": 2, "F": 4}
# Up to these orders the compiled route runs the kernel written out for one n
# (engines/_unrolled.py: the loop kernel's arithmetic, the same bits, every
# entry a local variable) instead of the loop kernel. Its speed over the
# loop kernel's, one thread, 1 MiB blocks, rcond off
# (`benchmarks/bench_compiled.py unrolled`; docs/cpu-compiled.md):
#
#   n           2     3     4     5     6     7     8
#   float64   3.09  2.32  2.33  2.13  1.84  1.40  1.20
#   float32   2.98  2.18  2.04  1.87    -     -   1.19
#   complex128   -     -  1.66  1.47    -     -     -
#
# Complex stops at 4: its compile grows as n^3 (complex128, the first call
# on a machine: 4.3 s at n = 4, 8.7 s at 5, 43 s at 8; float64 1.1, 1.9, 6.9).
UNROLLED_MAX_N = {"d": 8, "f": 8, "D": 4, "F": 4}
COMPILED_INV_MAX_N = {"d": 128, "f": 384, "D": 24, "F": 24}
COMPILED_SOLVE_MAX_N = {"d": 32, "f": 48, "D": 16, "F": 16}
# The positive definite inverse and solve (assume_a="positive definite"):
# elimination without pivoting with each pivot row scaled by 1 / sqrt(pivot)
# (the LU kernels' posdef variant: Cholesky's factor, by whole-row loops;
# the pivots give potrf's info), written out up to UNROLLED_MAX_N, and for
# complex types from POSDEF_CHOLESKY_MIN_N a Cholesky kernel (engines/
# _compiled.py, _make_chol: half the arithmetic, in triangular loops, which
# pays where complex arithmetic dominates; for real types elimination ran
# 1.2-2.3x faster at every n). Both as accurate as LAPACK's potri (backward
# error about 1 eps at condition 1e8; tests/test_accuracy.py). The LAPACK
# route they replace: NumPy's Cholesky gufunc, the triangular inverse and a
# product (the closed forms and their leading minors up to n = 4), which ran
# at 0.1-0.6x of the compiled general inverse. Compiled / LAPACK route
# speed, one 1 MiB chunk on one thread, the inverse with rcond and the solve
# (k = 1), 9 interleaved rounds (`bench_compiled.py posdef`; loaded 2-core
# AMD EPYC; benchmarks/results/2026-12-07c-cpu-posdef-amd-epyc-2core/):
#
#   n              1     2     3     4     5     8    16    32    64   128
#   float64      1.46  4.29  6.05 10.27 13.69 14.37  4.49  4.76  3.37  1.99
#   float32      0.17  1.56  2.20  6.09  8.21  5.19  2.74  2.64  1.90  1.67
#   complex128   0.63  1.58  2.42  4.51  3.16  2.85  2.13  1.80  1.46  1.33
#   complex64    0.38  1.04  1.64  3.16  2.88  2.10  1.58  1.25  0.90  0.73
#   solve:
#   float64      2.91 10.08  9.32  7.65  6.04  8.85  2.34  2.15  1.70  1.09
#   float32      2.07 10.44  9.61  7.23  6.78  4.04  2.14  2.04  1.88  1.38
#   complex128   1.94  7.39  5.55  5.13  3.34  3.06  2.18  1.68  1.18  1.14
#   complex64    2.27  5.90  4.19  3.90  2.15  1.90  1.60  1.26  0.86  0.56
#
# and against the compiled general inverse on the same matrices, from n = 2
# (complex64: 3): 0.80-1.45x (real; below 1 at n = 2..4, where the written-
# out LU has no square root to take) and 0.96-1.84x (complex). The inverse
# at n = 1 (a reciprocal per element) and complex64 at n = 2 keep the closed
# forms; complex64 stops at 48 (1.08, and 0.90 at 64), the rest at 128, the
# largest measured.
COMPILED_POSDEF_MIN_N = {"d": 2, "f": 2, "D": 2, "F": 3}
COMPILED_POSDEF_MAX_N = {"d": 128, "f": 128, "D": 128, "F": 48}
COMPILED_POSDEF_SOLVE_MAX_N = {"d": 128, "f": 128, "D": 128, "F": 48}
# Elimination / Cholesky speed (the same run), complex128 and complex64: the
# inverse 0.87 and 1.05 at n = 8, 0.94 and 0.90 at 12, 0.62 and 0.55 at 128;
# the solve 1.02 and 0.91 at 8, 0.98 and 0.81 at 12. (An earlier run: 1.03
# and 1.17 at 8, 0.90 and 0.93 at 12.)
POSDEF_CHOLESKY_MIN_N = {"d": 1 << 20, "f": 1 << 20, "D": 12, "F": 12}

_compiled_module: Any = None
_compiled_failed = False


def compiled_kernels() -> Any:
    """The compiled-kernel module, or None (Numba missing, or config.cpu_compiled off).

    Imported on first use only: ``import gpuinv`` never imports Numba.
    """
    global _compiled_module, _compiled_failed
    if not config.cpu_compiled or _compiled_failed:
        return None
    if _compiled_module is None:
        try:
            from . import _compiled
        except ImportError:
            _compiled_failed = True
            return None
        _compiled_module = _compiled
    return _compiled_module


def unrolled_for(n: int, dtype: Any) -> bool:
    """Whether the compiled inverse at order n runs the unrolled kernel (UNROLLED_MAX_N)."""
    return 2 <= n <= UNROLLED_MAX_N[np.dtype(dtype).char]


def posdef_method(n: int, dtype: Any) -> str:
    """The compiled positive definite kernels' method at order n: "unrolled",
    "elimination" or "cholesky" (see COMPILED_POSDEF_MAX_N)."""
    if unrolled_for(n, dtype):
        return "unrolled"
    return "cholesky" if n >= POSDEF_CHOLESKY_MIN_N[np.dtype(dtype).char] else "elimination"


def compiled_for(kind: str, n: int, dtype: Any) -> Any:
    """The compiled-kernel module if it takes ``kind`` at order n: "invert" and
    "solve" (LU), "posdef" and "posdef-solve" (positive definite)."""
    char = np.dtype(dtype).char
    low, top = {"invert": (COMPILED_INV_MIN_N[char], COMPILED_INV_MAX_N[char]),
                "solve": (1, COMPILED_SOLVE_MAX_N[char]),
                "posdef": (COMPILED_POSDEF_MIN_N[char], COMPILED_POSDEF_MAX_N[char]),
                "posdef-solve": (1, COMPILED_POSDEF_SOLVE_MAX_N[char])}[kind]
    if not low <= n <= top:
        return None
    return compiled_kernels()
