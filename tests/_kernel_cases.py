"""Shared by the kernel tests: the host build of the kernels' math, and test matrices.

``build_host_lib`` compiles gpuinv/kernels/inverse.cuh (unchanged: its
GPUINV_HD macro is empty outside CUDA) into a small shared library that
ctypes calls; ``host_invert`` runs both of its orders of work (the one-thread
kernel's and the lane group's) and checks they agree bit for bit. The CPU
execution harness (tests/_cuda_emu.py) compares the whole emulated kernels
against it, and tests/test_kernels_host.py compares it against LAPACK.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

import gpuinv.kernels as kernels

GXX = shutil.which("g++")
HEADER_DIR = Path(kernels.__file__).resolve().parent
DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
TYPECODE = {np.dtype(t): i for i, t in enumerate(DTYPES)}
MAX_N = max(kernels.KERNEL_MAX_N.values())

SHIM = r"""
#include "inverse.cuh"

using gpuinv::cplx;

// by_columns = 0: the one-thread kernel's way (invert_matrix);
// by_columns = 1: the warp kernel's way (invert_matrix_by_columns).
template <class T, int N>
static void run(const void* a, void* out, int* info, long long m, int by_columns) {
    const T* src = static_cast<const T*>(a);
    T* dst = static_cast<T*>(out);
    for (long long i = 0; i < m; ++i)
        info[i] = by_columns ? gpuinv::invert_matrix_by_columns<T, N>(src + i * N * N, dst + i * N * N)
                             : gpuinv::invert_matrix<T, N>(src + i * N * N, dst + i * N * N);
}

template <class T, int N>
struct Dispatch {
    static int go(int n, const void* a, void* out, int* info, long long m, int by_columns) {
        if (n == N) {
            run<T, N>(a, out, info, m, by_columns);
            return 0;
        }
        return Dispatch<T, N - 1>::go(n, a, out, info, m, by_columns);
    }
};
template <class T>
struct Dispatch<T, 0> {
    static int go(int, const void*, void*, int*, long long, int) { return -1; }
};

extern "C" int gpuinv_host_invert(int type, int n, const void* a, void* out, int* info, long long m,
                                   int by_columns) {
    switch (type) {
        case 0: return Dispatch<float, GPUINV_MAX_N>::go(n, a, out, info, m, by_columns);
        case 1: return Dispatch<double, GPUINV_MAX_N>::go(n, a, out, info, m, by_columns);
        case 2: return Dispatch<cplx<float>, GPUINV_MAX_N>::go(n, a, out, info, m, by_columns);
        case 3: return Dispatch<cplx<double>, GPUINV_MAX_N>::go(n, a, out, info, m, by_columns);
    }
    return -2;
}

extern "C" int gpuinv_sizeof_cplx(int type) {
    return type == 2 ? (int)sizeof(cplx<float>) : (int)sizeof(cplx<double>);
}
"""


def build_host_lib(build: Path) -> ctypes.CDLL:
    """Compile inverse.cuh with SHIM into a shared library in ``build`` and load it."""
    src = build / "shim.cpp"
    src.write_text(SHIM)
    lib = build / "libgpuinv_host.so"
    # -ffp-contract=off: no FMA on the host, so results do not depend on the
    # build machine's CPU; the accuracy bar holds either way.
    cmd = [
        GXX, "-O1", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-Wall", "-Werror",
        "-Wno-unknown-pragmas", f"-DGPUINV_MAX_N={MAX_N}", f"-I{HEADER_DIR}", str(src), "-o", str(lib),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"g++ failed:\n{result.stderr}"
    handle = ctypes.CDLL(str(lib))
    handle.gpuinv_host_invert.restype = ctypes.c_int
    handle.gpuinv_host_invert.argtypes = [
        ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong,
        ctypes.c_int,
    ]  # fmt: skip
    return handle


def host_invert(lib, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Invert with both host builds of the kernels' math; they must agree bit for bit.

    Returns the one-thread path's ``(inverse, info)``, after asserting that
    the warp kernel's order of work (phase 2 by columns) gives the same.
    """
    a = np.ascontiguousarray(a)
    m, n, _ = a.shape
    results = []
    for by_columns in (0, 1):
        out = np.full_like(a, 7)  # a value the code must overwrite
        info = np.full(m, 99, dtype=np.int32)
        status = lib.gpuinv_host_invert(
            TYPECODE[a.dtype], n, a.ctypes.data, out.ctypes.data, info.ctypes.data, m, by_columns
        )
        assert status == 0
        results.append((out, info))
    (out, info), (out_cols, info_cols) = results
    np.testing.assert_array_equal(info_cols, info)
    ok = info == 0
    np.testing.assert_array_equal(out_cols[ok], out[ok])
    assert np.all(np.isnan(out_cols[info == -1]))
    return out, info


def random_matrices(rng, m, n, dtype):
    x = rng.standard_normal((m, n, n))
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal((m, n, n))
    return x.astype(dtype)


def conditioned(rng, m, n, dtype, cond):
    """Matrices U diag(s) V^H with singular values from 1 down to 1/cond."""
    complex_ = np.dtype(dtype).kind == "c"

    def orthonormal():
        g = rng.standard_normal((m, n, n))
        if complex_:
            g = g + 1j * rng.standard_normal((m, n, n))
        q, _ = np.linalg.qr(g)
        return q

    s = np.logspace(0, -np.log10(cond), n)
    u, v = orthonormal(), orthonormal()
    return ((u * s[None, None, :]) @ np.conj(np.swapaxes(v, -1, -2))).astype(dtype)


def backward_error(a, x):
    """||A X - I||_1 / (||A||_1 ||X||_1) per matrix, computed in float64/complex128."""
    wide = np.complex128 if a.dtype.kind == "c" else np.float64
    a = a.astype(wide)
    x = x.astype(wide)
    n = a.shape[-1]
    residual = np.linalg.norm(a @ x - np.eye(n), 1, axis=(-2, -1))
    return residual / (np.linalg.norm(a, 1, axis=(-2, -1)) * np.linalg.norm(x, 1, axis=(-2, -1)))


def eps(dtype):
    return np.finfo(dtype).eps


def exact_singular(rng, m, n, dtype):
    """Matrices whose elimination is exact in floating point and meets a zero pivot.

    A = L U with L unit lower triangular (off-diagonal entries in {0, 1, -1}),
    U upper triangular with diagonal entries in {1, -1, 2, -2} except one 0 at
    step k, and small integers above the diagonal; complex rows are
    multiplied by 1 or i. Column j of every Schur complement is then L's
    column j times u_jj, so the first maximum is row j itself, every
    multiplier is 0 or a unit, every pivot a power of two, and elimination
    meets an exactly zero pivot at step k + 1. Returns the matrices and k + 1.
    """
    out = np.empty((m, n, n), dtype=dtype)
    steps = np.empty(m, dtype=np.int32)
    for t in range(m):
        lower = np.tril(rng.choice([0, 0, 0, 1, -1], size=(n, n)), -1) + np.eye(n)
        upper = np.triu(rng.integers(-2, 3, size=(n, n)), 1).astype(float)
        diag = rng.choice([1.0, -1.0, 2.0, -2.0], size=n)
        steps[t] = rng.integers(n) + 1
        diag[steps[t] - 1] = 0.0
        a = lower @ (upper + np.diag(diag))
        if np.dtype(dtype).kind == "c":
            a = a * rng.choice([1, 1j], size=(n, 1))
        out[t] = a
    return out, steps


def getf2_zero_step(x: np.ndarray) -> np.ndarray:
    """First exactly zero pivot (1-based step, 0 if none) of LAPACK getf2's LU.

    Vectorized over the batch, with getf2's arithmetic as the kernels do it:
    the reciprocal of the pivot, multipliers l = a_ik * (1 / pivot), then
    a_ij - l * a_kj as one fused multiply-add (inverse.cuh's fms; complex:
    two per part, as there).
    """
    a = np.array(x, copy=True)
    m, n, _ = a.shape
    rows = np.arange(m)
    zero_step = np.zeros(m, dtype=np.int32)
    with np.errstate(all="ignore"):
        for k in range(n):
            key = np.abs(a[:, k:, k].real) + np.abs(a[:, k:, k].imag)
            p = k + key.argmax(axis=1)
            pivot_row = a[rows, p].copy()
            a[rows, p] = a[:, k]
            a[:, k] = pivot_row
            pivot = a[:, k, k]
            zero = pivot == 0
            zero_step[(zero_step == 0) & zero] = k + 1
            inv = 1 / np.where(zero, 1, pivot)
            mult = a[:, k + 1 :, k] * inv[:, None]
            a[:, k + 1 :, k + 1 :] = _fms(a[:, k + 1 :, k + 1 :], mult[:, :, None], a[:, k, None, k + 1 :])
    return zero_step


def _fused(a, b, c):
    """a - b * c for real arrays, rounded once to a's dtype, as an FMA does.

    The product and the difference are formed in a wider type (float64 for
    float32, long double for float64): exact for float32, and for float64
    exact wherever long double has 64 or more significand bits and the
    operands' product fits, which is all these tests need to decide whether
    a pivot is exactly zero.
    """
    wide = np.float64 if a.dtype == np.float32 else np.longdouble
    return (a.astype(wide) - b.astype(wide) * c.astype(wide)).astype(a.dtype)


def _fms(a, b, c):
    if a.dtype.kind != "c":
        return _fused(a, b, c)
    re = _fused(_fused(a.real, b.real, c.real), -b.imag, c.imag)
    im = _fused(_fused(a.imag, b.real, c.imag), b.imag, c.real)
    return re + 1j * im if a.dtype == np.complex128 else (re + np.complex64(1j) * im).astype(a.dtype)


# --- the Cholesky (positive definite) kernel's math: cholesky.cuh ------------

CHOL_MAX_N = max(kernels.CHOL_MAX_N.values())

CHOL_SHIM = r"""
#include "inverse.cuh"
#include "cholesky.cuh"

using gpuinv::cplx;

template <class T, int N>
struct CholDispatch {
    static int go(int n, const void* a, void* out, int* info, long long m) {
        if (n != N) return CholDispatch<T, N - 1>::go(n, a, out, info, m);
        const T* src = static_cast<const T*>(a);
        T* dst = static_cast<T*>(out);
        for (long long i = 0; i < m; ++i)
            info[i] = gpuinv::chol_invert_matrix<T, N>(src + i * N * N, dst + i * N * N);
        return 0;
    }
};
template <class T>
struct CholDispatch<T, 0> {
    static int go(int, const void*, void*, int*, long long) { return -1; }
};

extern "C" int gpuinv_host_chol_invert(int type, int n, const void* a, void* out, int* info, long long m) {
    switch (type) {
        case 0: return CholDispatch<float, GPUINV_MAX_N>::go(n, a, out, info, m);
        case 1: return CholDispatch<double, GPUINV_MAX_N>::go(n, a, out, info, m);
        case 2: return CholDispatch<cplx<float>, GPUINV_MAX_N>::go(n, a, out, info, m);
        case 3: return CholDispatch<cplx<double>, GPUINV_MAX_N>::go(n, a, out, info, m);
    }
    return -2;
}
"""


def build_chol_host_lib(build: Path) -> ctypes.CDLL:
    """Compile cholesky.cuh (after inverse.cuh) with CHOL_SHIM into a shared library and load it.

    Built for every n up to 8, the largest n ``--check --all`` compiles,
    whatever ``CHOL_MAX_N`` dispatches.
    """
    src = build / "chol_shim.cpp"
    src.write_text(CHOL_SHIM)
    lib = build / "libgpuinv_chol_host.so"
    cmd = [
        GXX, "-O1", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-Wall", "-Werror",
        "-Wno-unknown-pragmas", f"-DGPUINV_MAX_N={max(CHOL_MAX_N, 8)}", f"-I{HEADER_DIR}", str(src),
        "-o", str(lib),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"g++ failed:\n{result.stderr}"
    handle = ctypes.CDLL(str(lib))
    handle.gpuinv_host_chol_invert.restype = ctypes.c_int
    handle.gpuinv_host_chol_invert.argtypes = [
        ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong,
    ]  # fmt: skip
    return handle


def host_chol_invert(lib, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(inverse, info)`` of the host build of the Cholesky kernel's math."""
    a = np.ascontiguousarray(a)
    m, n, _ = a.shape
    out = np.full_like(a, 7)  # a value the code must overwrite
    info = np.full(m, 99, dtype=np.int32)
    status = lib.gpuinv_host_chol_invert(TYPECODE[a.dtype], n, a.ctypes.data, out.ctypes.data, info.ctypes.data, m)
    assert status == 0
    return out, info


def spd_matrices(rng, m, n, dtype, cond=None):
    """Hermitian positive definite matrices: ``B B^H + n I`` (well conditioned), or with
    ``cond``, ``Q diag(s) Q^H`` with eigenvalues graded from 1 down to ``1 / cond``."""
    complex_ = np.dtype(dtype).kind == "c"
    g = rng.standard_normal((m, n, n))
    if complex_:
        g = g + 1j * rng.standard_normal((m, n, n))
    if cond is None:
        a = g @ np.conj(np.swapaxes(g, -1, -2)) + n * np.eye(n)
    else:
        q, _ = np.linalg.qr(g)
        s = np.logspace(0, -np.log10(cond), n)
        a = (q * s[None, None, :]) @ np.conj(np.swapaxes(q, -1, -2))
    a = (a + np.conj(np.swapaxes(a, -1, -2))) / 2  # Hermitian to the last bit in the wide type
    return a.astype(dtype)


def indefinite_at(rng, m, n, dtype):
    """Hermitian matrices whose leading minor of order k (drawn per matrix) is the first
    that is not positive definite, by a wide margin, so rounding cannot move it.

    ``A = L D L^H`` with L unit lower triangular (entries up to 0.25 in size)
    and D positive (1 to 2) except ``D[k-1]``, which is -1 or exactly 0 in
    the matrices where L's row k-1 is the unit row (so that the pivot is
    exactly 0). Returns the matrices and k.
    """
    complex_ = np.dtype(dtype).kind == "c"
    out = np.empty((m, n, n), dtype=dtype)
    steps = np.empty(m, dtype=np.int32)
    for t in range(m):
        k = int(rng.integers(n)) + 1
        low = np.tril(rng.uniform(-0.25, 0.25, (n, n)), -1)
        if complex_:
            low = low + 1j * np.tril(rng.uniform(-0.25, 0.25, (n, n)), -1)
        d = rng.uniform(1, 2, n)
        if t % 2:
            d[k - 1] = -1.0
        else:
            d[k - 1] = 0.0
            low[k - 1, :] = 0  # row k of A is then (0 ... 0 0 *): the pivot d is exactly 0
        low = low + np.eye(n)
        a = (low * d[None, :]) @ np.conj(low.T)
        if not t % 2:
            a[k - 1, :k] = 0  # exactly: the leading minor of order k has a zero row
            a[:k, k - 1] = 0
        out[t] = (a + np.conj(a.T)) / 2
        steps[t] = k
    return out, steps


# --- the triangular and diagonal kernels' math: triangular.cuh -----------------

TRI_SHIM = r"""
#include "inverse.cuh"
#include "cholesky.cuh"
#include "triangular.cuh"

using gpuinv::cplx;

// op 0: lower triangular, 1: upper triangular, 2: diagonal.
template <class T, int N>
struct TriDispatch {
    static int go(int op, int n, const void* a, void* out, int* info, long long m) {
        if (n != N) return TriDispatch<T, N - 1>::go(op, n, a, out, info, m);
        const T* src = static_cast<const T*>(a);
        T* dst = static_cast<T*>(out);
        for (long long i = 0; i < m; ++i) {
            const T* x = src + i * N * N;
            T* y = dst + i * N * N;
            info[i] = op == 0 ? gpuinv::tri_invert_matrix<T, N, true>(x, y)
                    : op == 1 ? gpuinv::tri_invert_matrix<T, N, false>(x, y)
                              : gpuinv::diag_invert_matrix<T, N>(x, y);
        }
        return 0;
    }
};
template <class T>
struct TriDispatch<T, 0> {
    static int go(int, int, const void*, void*, int*, long long) { return -1; }
};

extern "C" int gpuinv_host_tri_invert(int type, int op, int n, const void* a, void* out, int* info,
                                      long long m) {
    switch (type) {
        case 0: return TriDispatch<float, GPUINV_MAX_N>::go(op, n, a, out, info, m);
        case 1: return TriDispatch<double, GPUINV_MAX_N>::go(op, n, a, out, info, m);
        case 2: return TriDispatch<cplx<float>, GPUINV_MAX_N>::go(op, n, a, out, info, m);
        case 3: return TriDispatch<cplx<double>, GPUINV_MAX_N>::go(op, n, a, out, info, m);
    }
    return -2;
}
"""

#: The host build's op codes, by KernelSpec.op.
TRI_OPS = {"tril": 0, "triu": 1, "diag": 2}


def build_tri_host_lib(build: Path) -> ctypes.CDLL:
    """Compile triangular.cuh (after inverse.cuh and cholesky.cuh) with TRI_SHIM into a
    shared library and load it; built for every n up to 8, the largest n ``--check
    --all`` compiles, whatever ``TRI_MAX_N`` and ``DIAG_MAX_N`` dispatch."""
    src = build / "tri_shim.cpp"
    src.write_text(TRI_SHIM)
    lib = build / "libgpuinv_tri_host.so"
    top = max(8, *kernels.TRI_MAX_N.values(), *kernels.DIAG_MAX_N.values())
    cmd = [
        GXX, "-O1", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-Wall", "-Werror",
        "-Wno-unknown-pragmas", f"-DGPUINV_MAX_N={top}", f"-I{HEADER_DIR}", str(src), "-o", str(lib),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"g++ failed:\n{result.stderr}"
    handle = ctypes.CDLL(str(lib))
    handle.gpuinv_host_tri_invert.restype = ctypes.c_int
    handle.gpuinv_host_tri_invert.argtypes = [
        ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_longlong,
    ]  # fmt: skip
    return handle


def host_tri_invert(lib, a: np.ndarray, op: str) -> tuple[np.ndarray, np.ndarray]:
    """``(inverse, info)`` of the host build of the triangular (``"tril"``, ``"triu"``) or
    diagonal (``"diag"``) kernel's math."""
    a = np.ascontiguousarray(a)
    m, n, _ = a.shape
    out = np.full_like(a, 7)  # a value the code must overwrite
    info = np.full(m, 99, dtype=np.int32)
    status = lib.gpuinv_host_tri_invert(TYPECODE[a.dtype], TRI_OPS[op], n, a.ctypes.data, out.ctypes.data,
                                        info.ctypes.data, m)
    assert status == 0
    return out, info


def triangular_matrices(rng, m, n, dtype, lower, grade=None):
    """Well conditioned triangular matrices: diagonal entries of size 1 to 2 with
    random signs (phases), off-diagonal entries uniform in [-0.5, 0.5) (both parts);
    with ``grade``, the rows scaled from 1 down to ``1 / grade``, so that the condition
    number is about ``grade``. Zeros outside the triangle."""
    complex_ = np.dtype(dtype).kind == "c"
    x = rng.uniform(-0.5, 0.5, (m, n, n))
    d = rng.uniform(1, 2, (m, n)) * rng.choice([-1.0, 1.0], (m, n))
    if complex_:
        x = x + 1j * rng.uniform(-0.5, 0.5, (m, n, n))
        d = d * np.exp(1j * rng.uniform(0, 2 * np.pi, (m, n)))
    idx = np.arange(n)
    x[:, idx, idx] = d
    if grade is not None:
        x = x * np.logspace(0, -np.log10(grade), n)[None, :, None]
    x = np.tril(x) if lower else np.triu(x)
    return x.astype(dtype)


# --- the LU solve kernel's math: inverse.cuh's lu_factor and solve_column ------

SOLVE_MAX_N = max(kernels.SOLVE_MAX_N.values())

SOLVE_SHIM = r"""
#include "inverse.cuh"

using gpuinv::cplx;

template <class T, int N>
struct SolveDispatch {
    static int go(int n, const void* a, const void* b, void* x, int* info, long long m, int k) {
        if (n != N) return SolveDispatch<T, N - 1>::go(n, a, b, x, info, m, k);
        const T* sa = static_cast<const T*>(a);
        const T* sb = static_cast<const T*>(b);
        T* dx = static_cast<T*>(x);
        for (long long i = 0; i < m; ++i)
            info[i] = gpuinv::solve_matrix<T, N>(sa + i * N * N, sb + i * N * k, dx + i * N * k, k);
        return 0;
    }
};
template <class T>
struct SolveDispatch<T, 0> {
    static int go(int, const void*, const void*, void*, int*, long long, int) { return -1; }
};

extern "C" int gpuinv_host_solve(int type, int n, const void* a, const void* b, void* x, int* info, long long m,
                                 int k) {
    switch (type) {
        case 0: return SolveDispatch<float, GPUINV_MAX_N>::go(n, a, b, x, info, m, k);
        case 1: return SolveDispatch<double, GPUINV_MAX_N>::go(n, a, b, x, info, m, k);
        case 2: return SolveDispatch<cplx<float>, GPUINV_MAX_N>::go(n, a, b, x, info, m, k);
        case 3: return SolveDispatch<cplx<double>, GPUINV_MAX_N>::go(n, a, b, x, info, m, k);
    }
    return -2;
}
"""


def build_solve_host_lib(build: Path) -> ctypes.CDLL:
    """Compile inverse.cuh with SOLVE_SHIM into a shared library and load it.

    Built for every n up to 8, the largest n ``--check --all`` compiles the
    solve kernel at, whatever ``SOLVE_MAX_N`` dispatches.
    """
    src = build / "solve_shim.cpp"
    src.write_text(SOLVE_SHIM)
    lib = build / "libgpuinv_solve_host.so"
    cmd = [
        GXX, "-O1", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-Wall", "-Werror",
        "-Wno-unknown-pragmas", f"-DGPUINV_MAX_N={max(SOLVE_MAX_N, 8)}", f"-I{HEADER_DIR}", str(src),
        "-o", str(lib),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"g++ failed:\n{result.stderr}"
    handle = ctypes.CDLL(str(lib))
    handle.gpuinv_host_solve.restype = ctypes.c_int
    handle.gpuinv_host_solve.argtypes = [
        ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_longlong, ctypes.c_int,
    ]  # fmt: skip
    return handle


def host_solve(lib, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x, info)`` of the host build of the solve kernel's math: ``a`` (m, n, n), ``b`` (m, n, k)."""
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b, dtype=a.dtype)
    m, n, _ = a.shape
    k = b.shape[-1]
    assert b.shape == (m, n, k)
    x = np.full_like(b, 7)  # a value the code must overwrite
    info = np.full(m, 99, dtype=np.int32)
    status = lib.gpuinv_host_solve(TYPECODE[a.dtype], n, a.ctypes.data, b.ctypes.data, x.ctypes.data,
                                   info.ctypes.data, m, k)  # fmt: skip
    assert status == 0
    return x, info


def solve_backward_error(a, x, b):
    """||A x - b||_1 / (||A||_1 ||x||_1 + ||b||_1) per system (columnwise max), in float64/complex128."""
    wide = np.complex128 if a.dtype.kind == "c" else np.float64
    a, x, b = a.astype(wide), x.astype(wide), b.astype(wide)
    r = np.abs(a @ x - b).sum(axis=-2)  # 1-norm of each column's residual
    scale = np.linalg.norm(a, 1, axis=(-2, -1))[:, None] * np.abs(x).sum(axis=-2) + np.abs(b).sum(axis=-2)
    return (r / scale).max(axis=-1)
