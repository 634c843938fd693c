// gpuinv: the per-matrix math of the positive definite (Cholesky) inverse kernel.
//
// Compiled like inverse.cuh (which must come first: it defines GPUINV_HD,
// cplx<R> and the scalar helpers): through NVRTC, pasted after kernels.cu's
// inverse part (gpuinv/kernels/__init__.py), and by g++ in the host tests
// (tests/test_kernels_chol_host.py) and the CPU emulation. So it includes
// nothing and uses no device-only intrinsic.
//
// Algorithm: what the CPU engine's assume_a="positive definite" computes
// (LAPACK potrf with lower=True, then potri: inv(A) = L^-H L^-1), in
// registers:
//   1. A = L L^H from the LOWER triangle only, column by column as potf2
//      does: d_j = re(a_jj) - sum_{k<j} |l_jk|^2 (the imaginary part of the
//      diagonal is never read: a Hermitian matrix's diagonal is real, and
//      potrf ignores it); the factorization fails at step j + 1 when d_j is
//      not > 0 (zero, negative or NaN); l_jj = sqrt(d_j);
//      l_ij = (a_ij - sum_{k<j} l_ik conj(l_jk)) * (1 / l_jj) for i > j.
//   2. W = L^-1 (lower triangular, trtri's column-by-column order):
//      w_jj = 1 / l_jj, w_ij = -(sum_{k=j}^{i-1} l_ik w_kj) * w_ii for i > j.
//   3. X = W^H W, the lower triangle x_ij = sum_{k>=i} conj(w_ki) w_kj
//      (i >= j), the diagonal a sum of |w_ki|^2 (real by construction), and
//      the upper triangle its conjugate mirror, so the result is exactly
//      Hermitian (symmetric) as the CPU engine's is.
// info: 0 inverted; k > 0 when the leading minor of order k is not positive
// definite (potrf's code: d_{k-1} <= 0 or NaN); -1 for NaN or Inf in the
// part read (the lower triangle, the diagonal's real part), as the LU
// kernels. For info != 0 the output is all NaN, as the CPU engine's.
#pragma once

namespace gpuinv {

// sqrt_real: inverse.cuh (the rcond's modulus uses it too).

GPUINV_HD float real_part(float x) { return x; }
GPUINV_HD double real_part(double x) { return x; }
template <class R> GPUINV_HD R real_part(cplx<R> x) { return x.re; }

// |x|^2
GPUINV_HD float abs2(float x) { return x * x; }
GPUINV_HD double abs2(double x) { return x * x; }
template <class R> GPUINV_HD R abs2(cplx<R> x) { return x.re * x.re + x.im * x.im; }

// x * s for a real s
GPUINV_HD float scale(float x, float s) { return x * s; }
GPUINV_HD double scale(double x, double s) { return x * s; }
template <class R> GPUINV_HD cplx<R> scale(cplx<R> x, R s) {
    cplx<R> r;
    r.re = x.re * s;
    r.im = x.im * s;
    return r;
}

// acc - a * conj(b)
GPUINV_HD float fms_conj(float acc, float a, float b) { return acc - a * b; }
GPUINV_HD double fms_conj(double acc, double a, double b) { return acc - a * b; }
template <class R> GPUINV_HD cplx<R> fms_conj(cplx<R> acc, cplx<R> a, cplx<R> b) {
    cplx<R> r;
    r.re = acc.re - (a.re * b.re + a.im * b.im);
    r.im = acc.im - (a.im * b.re - a.re * b.im);
    return r;
}

// acc + conj(a) * b
GPUINV_HD float fma_conj(float acc, float a, float b) { return acc + a * b; }
GPUINV_HD double fma_conj(double acc, double a, double b) { return acc + a * b; }
template <class R> GPUINV_HD cplx<R> fma_conj(cplx<R> acc, cplx<R> a, cplx<R> b) {
    cplx<R> r;
    r.re = acc.re + (a.re * b.re + a.im * b.im);
    r.im = acc.im + (a.re * b.im - a.im * b.re);
    return r;
}

// acc + a * b
GPUINV_HD float fma_plain(float acc, float a, float b) { return acc + a * b; }
GPUINV_HD double fma_plain(double acc, double a, double b) { return acc + a * b; }
template <class R> GPUINV_HD cplx<R> fma_plain(cplx<R> acc, cplx<R> a, cplx<R> b) {
    cplx<R> r;
    r.re = acc.re + (a.re * b.re - a.im * b.im);
    r.im = acc.im + (a.re * b.im + a.im * b.re);
    return r;
}

GPUINV_HD float conj_of(float x) { return x; }
GPUINV_HD double conj_of(double x) { return x; }
template <class R> GPUINV_HD cplx<R> conj_of(cplx<R> x) {
    cplx<R> r;
    r.re = x.re;
    r.im = -x.im;
    return r;
}

template <class T> GPUINV_HD T from_real_as(typename real_of<T>::type x);
template <> GPUINV_HD float from_real_as<float>(float x) { return x; }
template <> GPUINV_HD double from_real_as<double>(double x) { return x; }
template <> GPUINV_HD cplx<float> from_real_as<cplx<float> >(float x) {
    cplx<float> r;
    r.re = x;
    r.im = 0.0f;
    return r;
}
template <> GPUINV_HD cplx<double> from_real_as<cplx<double> >(double x) {
    cplx<double> r;
    r.re = x;
    r.im = 0.0;
    return r;
}

// Is the part of `a` that the Cholesky inverse reads finite: the strict
// lower triangle and the real parts of the diagonal?
template <class T, int N> GPUINV_HD bool lower_is_finite(const T (&a)[N][N]) {
    bool ok = true;
    GPUINV_UNROLL
    for (int i = 0; i < N; ++i) {
        GPUINV_UNROLL
        for (int j = 0; j < i; ++j) ok = ok && is_finite(a[i][j]);
        ok = ok && finite_real(real_part(a[i][i]));
    }
    return ok;
}

// The inverse of a Hermitian positive definite matrix held in `a`, in place:
// only the lower triangle (and the real part of the diagonal) is read; on
// return with info 0, `a` holds the whole inverse, exactly Hermitian. Returns
// the info code; for info != 0 the contents are unspecified (the callers
// write NaN).
//
// Every loop is unrolled and every index known at compile time, so `a`
// lives in registers. A failed step does not stop the arithmetic (a branch
// out of unrolled code would not save registers): its pivot is replaced by
// 1 and only the first failure is reported.
// ||A||_1 of the Hermitian matrix that the lower triangle of `l` defines
// (the diagonal's real part, the strict upper triangle the conjugate mirror):
// what the RC variant of inv_chol_thread reports rcond against, the matrix
// as read (gpuinv._numerics.structured_matrix builds the same one).
// The element (i, j), i >= j, of the lower triangle is at(i, j).
template <class T, int N, class At>
GPUINV_HD typename real_of<T>::type hermitian_one_norm_at(At at) {
    typedef typename real_of<T>::type R;
    R norm = R(0);
    GPUINV_UNROLL
    for (int j = 0; j < N; ++j) {
        R s = abs_real(real_part(at(j, j)));
        GPUINV_UNROLL
        for (int i = 0; i < N; ++i) {
            if (i != j) s += modulus(i > j ? at(i, j) : at(j, i));
        }
        norm = max_keep_nan(norm, s);
    }
    return norm;
}
template <class T, int N>
GPUINV_HD typename real_of<T>::type hermitian_one_norm(const T (&l)[N][N]) {
    return hermitian_one_norm_at<T, N>([&](int i, int j) { return l[i][j]; });
}

template <class T, int N>
GPUINV_HD int chol_invert_in_place(T (&a)[N][N]) {
    typedef typename real_of<T>::type R;
    if (!lower_is_finite<T, N>(a)) return -1;
    int info = 0;
    R rinv[N];  // 1 / l_jj, which is w_jj
    // 1. Cholesky, column j from the columns before it (potf2's order).
    GPUINV_UNROLL
    for (int j = 0; j < N; ++j) {
        R d = real_part(a[j][j]);
        GPUINV_UNROLL
        for (int k = 0; k < j; ++k) d -= abs2(a[j][k]);
        const bool ok = d > R(0);  // false for NaN too
        if (!ok && info == 0) info = j + 1;
        const R ljj = sqrt_real(ok ? d : R(1));
        const R r = R(1) / ljj;
        rinv[j] = r;
        a[j][j] = from_real_as<T>(ljj);
        GPUINV_UNROLL
        for (int i = j + 1; i < N; ++i) {
            T s = a[i][j];
            GPUINV_UNROLL
            for (int k = 0; k < j; ++k) s = fms_conj(s, a[i][k], a[j][k]);
            a[i][j] = scale(s, r);
        }
    }
    // 2. W = L^-1 in place, column by column: column j of W needs column j
    // of L (read before it is overwritten, row by row) and the columns of L
    // to its right, not yet overwritten.
    GPUINV_UNROLL
    for (int j = 0; j < N; ++j) {
        a[j][j] = from_real_as<T>(rinv[j]);
        GPUINV_UNROLL
        for (int i = j + 1; i < N; ++i) {
            T s = make_zero<T>();
            GPUINV_UNROLL
            for (int k = j; k < i; ++k) s = fma_plain(s, a[i][k], a[k][j]);
            a[i][j] = scale(neg(s), rinv[i]);
        }
    }
    // 3. X = W^H W, row i of the lower triangle from rows k >= i of W. Row i
    // of X replaces row i of W; rows below i are still W's, and row i of W is
    // only needed for row i of X, whose entries j < i read w_ii and w_ij
    // (their own slot) and whose diagonal, computed last, reads w_ii.
    GPUINV_UNROLL
    for (int i = 0; i < N; ++i) {
        GPUINV_UNROLL
        for (int j = 0; j < i; ++j) {
            T s = make_zero<T>();
            GPUINV_UNROLL
            for (int k = i; k < N; ++k) s = fma_conj(s, a[k][i], a[k][j]);
            a[i][j] = s;
        }
        R d = R(0);
        GPUINV_UNROLL
        for (int k = i; k < N; ++k) d += abs2(a[k][i]);
        a[i][i] = from_real_as<T>(d);
    }
    // The upper triangle: the conjugate mirror of the lower one.
    GPUINV_UNROLL
    for (int i = 0; i < N; ++i) {
        GPUINV_UNROLL
        for (int j = i + 1; j < N; ++j) a[i][j] = conj_of(a[j][i]);
    }
    return info;
}

// Invert one n x n C-ordered Hermitian positive definite matrix from `in`
// into `out` (which may not alias `in`) the way the kernel does, reading only
// the lower triangle of `in`. The host tests call it.
template <class T, int N>
GPUINV_HD int chol_invert_matrix(const T* in, T* out) {
    T a[N][N];
    GPUINV_UNROLL
    for (int i = 0; i < N; ++i) {
        GPUINV_UNROLL
        for (int j = 0; j < N; ++j) a[i][j] = j <= i ? in[i * N + j] : make_zero<T>();
    }
    int info = chol_invert_in_place<T, N>(a);
    GPUINV_UNROLL
    for (int i = 0; i < N; ++i) {
        GPUINV_UNROLL
        for (int j = 0; j < N; ++j) out[i * N + j] = info != 0 ? make_nan<T>() : a[i][j];
    }
    return info;
}

}  // namespace gpuinv
