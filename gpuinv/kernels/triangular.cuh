// gpuinv: the per-matrix math of the triangular and diagonal inverse kernels.
//
// Compiled like cholesky.cuh, after inverse.cuh and cholesky.cuh (which
// define GPUINV_HD, cplx<R> and the scalar helpers used here): through
// NVRTC, pasted into kernels.cu (gpuinv/kernels/__init__.py), and by g++ in
// the host tests (tests/test_kernels_tri_host.py) and the CPU emulation. So
// it includes nothing and uses no device-only intrinsic.
//
// Triangular: what the CPU engine's assume_a="lower triangular" computes
// (LAPACK trtri, non-unit diagonal), in registers, on the lower triangle:
//   w_jj = 1 / l_jj, w_ij = -(sum_{k=j}^{i-1} l_ik w_kj) * w_ii for i > j,
// column by column, the order of cholesky.cuh's step 2 (which cannot be
// shared as it is: its diagonal is real and comes from the factorization,
// and refactoring it risks the Cholesky kernel's bits). An upper triangular
// U is inverted as the transpose of the lower (U^T)^-1: the kernel loads
// U^T, so the same code serves both (a plain transpose, no conjugate).
// Diagonal: 1 / d_i, zeros elsewhere, as the CPU engine's diagonal_inverse.
//
// info (both): 0 inverted; k > 0 when d_k (1-based) is the first exactly
// zero diagonal element (trtri's code; for complex, both parts zero); -1
// for NaN or Inf in the part read (the triangle, or the diagonal), which
// wins over a zero, as on the CPU engine, where non-finite matrices are
// set aside first. For info != 0 the output is all NaN, as the CPU
// engine's.
#pragma once

namespace gpuinv {

GPUINV_HD bool is_zero(float x) { return x == 0.0f; }
GPUINV_HD bool is_zero(double x) { return x == 0.0; }
template <class R> GPUINV_HD bool is_zero(cplx<R> x) { return x.re == R(0) && x.im == R(0); }

// Is the lower triangle of `a`, diagonal included, finite?
template <class T, int N> GPUINV_HD bool tri_lower_is_finite(const T (&a)[N][N]) {
    bool ok = true;
    GPUINV_UNROLL
    for (int i = 0; i < N; ++i) {
        GPUINV_UNROLL
        for (int j = 0; j <= i; ++j) ok = ok && is_finite(a[i][j]);
    }
    return ok;
}

// The inverse of a lower triangular matrix held in `a`, in place: only the
// lower triangle is read and written (the strict upper triangle is left as
// it is: the callers load zeros there). Returns the info code; for
// info != 0 the contents are unspecified (the callers write NaN).
//
// Every loop is unrolled and every index known at compile time, so `a`
// lives in registers. A zero diagonal element does not stop the arithmetic
// (a branch out of unrolled code would not save registers): it is replaced
// by 1 and only the first is reported.
template <class T, int N>
GPUINV_HD int tri_invert_in_place(T (&a)[N][N]) {
    if (!tri_lower_is_finite<T, N>(a)) return -1;
    int info = 0;
    // The diagonal first: w_ii = 1 / l_ii in place. Below, l_ii is never
    // needed again, and every row needs its w_ii.
    GPUINV_UNROLL
    for (int j = 0; j < N; ++j) {
        const bool zero = is_zero(a[j][j]);
        if (zero && info == 0) info = j + 1;
        a[j][j] = recip(zero ? make_one<T>() : a[j][j]);
    }
    // Column j of W needs column j of L (read in its own slot before it is
    // overwritten, row by row, top down), W's column j above the row (done),
    // and L's columns to the right of j (not yet overwritten).
    GPUINV_UNROLL
    for (int j = 0; j < N; ++j) {
        GPUINV_UNROLL
        for (int i = j + 1; i < N; ++i) {
            T s = make_zero<T>();
            GPUINV_UNROLL
            for (int k = j; k < i; ++k) s = fma_plain(s, a[i][k], a[k][j]);
            a[i][j] = mul(neg(s), a[i][i]);
        }
    }
    return info;
}

// Invert one n x n C-ordered triangular matrix from `in` into `out` (which
// may not alias `in`) the way the kernel does: LOWER reads the lower
// triangle of `in`, else the upper one (as the transpose of a lower one).
// The other triangle of `out` is exactly zero (all NaN for info != 0). The
// host tests call it.
template <class T, int N, bool LOWER>
GPUINV_HD int tri_invert_matrix(const T* in, T* out) {
    T a[N][N];
    GPUINV_UNROLL
    for (int i = 0; i < N; ++i) {
        GPUINV_UNROLL
        for (int j = 0; j < N; ++j)
            a[i][j] = j <= i ? (LOWER ? in[i * N + j] : in[j * N + i]) : make_zero<T>();
    }
    int info = tri_invert_in_place<T, N>(a);
    GPUINV_UNROLL
    for (int i = 0; i < N; ++i) {
        GPUINV_UNROLL
        for (int j = 0; j < N; ++j)
            out[i * N + j] = info != 0 ? make_nan<T>() : (LOWER ? a[i][j] : a[j][i]);
    }
    return info;
}

// The inverse of the diagonal `d` in place: d_i becomes 1 / d_i. Returns the
// info code (see the top); for info != 0 the contents are unspecified.
template <class T, int N>
GPUINV_HD int diag_invert_in_place(T (&d)[N]) {
    bool ok = true;
    GPUINV_UNROLL
    for (int i = 0; i < N; ++i) ok = ok && is_finite(d[i]);
    if (!ok) return -1;
    int info = 0;
    GPUINV_UNROLL
    for (int i = 0; i < N; ++i) {
        const bool zero = is_zero(d[i]);
        if (zero && info == 0) info = i + 1;
        d[i] = recip(zero ? make_one<T>() : d[i]);
    }
    return info;
}

// Invert one n x n C-ordered diagonal matrix from `in` into `out` the way
// the kernel does, reading only the diagonal of `in`; exact zeros off the
// diagonal (all NaN for info != 0). The host tests call it.
template <class T, int N>
GPUINV_HD int diag_invert_matrix(const T* in, T* out) {
    T d[N];
    GPUINV_UNROLL
    for (int i = 0; i < N; ++i) d[i] = in[i * N + i];
    int info = diag_invert_in_place<T, N>(d);
    GPUINV_UNROLL
    for (int i = 0; i < N; ++i) {
        GPUINV_UNROLL
        for (int j = 0; j < N; ++j)
            out[i * N + j] = info != 0 ? make_nan<T>() : (i == j ? d[i] : make_zero<T>());
    }
    return info;
}

}  // namespace gpuinv
