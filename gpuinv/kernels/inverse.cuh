// gpuinv: the per-matrix math of the small-matrix kernels.
//
// This header is compiled twice from the same text:
//   * on the GPU through NVRTC, prepended to kernels.cu (gpuinv/kernels/__init__.py);
//   * on the host by g++ in tests/test_kernels_host.py, which runs it through
//     ctypes against NumPy.
// So it must not include anything under NVRTC (no <complex>, no <cmath>, no
// thrust) and must not use device-only intrinsics. The warp kernel's shuffles
// live in kernels.cu; everything numerical that both kernels do is here.
//
// Algorithm: what numpy.linalg.inv does through LAPACK's gesv, in place:
// LU with partial pivoting (getf2's arithmetic: a reciprocal of the pivot,
// then l = a_ik * (1 / pivot)), with the forward substitution L^-1 P applied
// to the identity as the elimination goes, then X = U^-1 (L^-1 P) by back
// substitution. The pivot is the first entry of largest |re| + |im| on or
// below the diagonal (i?amax's rule), so the pivot sequence and the step of
// the first exactly zero pivot (info) are those of getrf. Plain in-place
// Gauss-Jordan was tried first and rejected: its backward error
// ||A X - I|| / (||A|| ||X||) reached 40x LAPACK's on matrices with
// condition 1e8 (docs/kernels.md); this form stays within a few times.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define GPUINV_HD __host__ __device__ __forceinline__
#define GPUINV_UNROLL _Pragma("unroll")
#define GPUINV_ROLLED _Pragma("unroll 1")
#define GPUINV_FMA(a, b, c) fma((a), (b), (c))
#define GPUINV_FMAF(a, b, c) fmaf((a), (b), (c))
#else
#define GPUINV_HD inline
#define GPUINV_UNROLL
#define GPUINV_ROLLED
#define GPUINV_FMA(a, b, c) __builtin_fma((a), (b), (c))
#define GPUINV_FMAF(a, b, c) __builtin_fmaf((a), (b), (c))
#endif

namespace gpuinv {

// A complex number laid out as NumPy's and CuPy's complex64/complex128
// (real part first), aligned to its size so that loads vectorize.
template <class R>
struct alignas(2 * sizeof(R)) cplx {
    R re;
    R im;
};

template <class T> struct real_of { typedef T type; };
template <class R> struct real_of<cplx<R> > { typedef R type; };

// --- real scalars -----------------------------------------------------------

template <class R> GPUINV_HD R abs_real(R x) { return x < R(0) ? -x : x; }

// x - x is 0 for finite x and NaN for Inf or NaN; no library call needed,
// and it stays correct because no kernel is compiled with fast math.
template <class R> GPUINV_HD bool finite_real(R x) { return (x - x) == R(0); }

// NaN built from its bits. `zero / zero` was a division: under
// -prec-div=true the GPU compiler emits it as a call of the IEEE division
// subroutine (unconditionally for double, behind an FCHK for float), on
// every tile of every kernel that may write NaN. The bits are those that
// division returns for 0 / 0 on the GPU (0x7fffffff; 0xfff8000000000000),
// on the host too, so that every build writes the same NaN.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
GPUINV_HD float float_from_bits(int bits) { return __int_as_float(bits); }
GPUINV_HD double double_from_bits(long long bits) { return __longlong_as_double(bits); }
#else
inline float float_from_bits(int bits) {
    float x;
    __builtin_memcpy(&x, &bits, sizeof x);
    return x;
}
inline double double_from_bits(long long bits) {
    double x;
    __builtin_memcpy(&x, &bits, sizeof x);
    return x;
}
#endif
template <class R> GPUINV_HD R nan_real();
template <> GPUINV_HD float nan_real<float>() { return float_from_bits(0x7fffffff); }
template <> GPUINV_HD double nan_real<double>() { return double_from_bits((long long)0xfff8000000000000ull); }

GPUINV_HD float cabs1(float x) { return abs_real(x); }
GPUINV_HD double cabs1(double x) { return abs_real(x); }
GPUINV_HD bool is_finite(float x) { return finite_real(x); }
GPUINV_HD bool is_finite(double x) { return finite_real(x); }
GPUINV_HD float mul(float a, float b) { return a * b; }
GPUINV_HD double mul(double a, double b) { return a * b; }
// a - b * c as one fused multiply-add, written out so that the host build
// (compiled with -ffp-contract=off) rounds exactly as the GPU does.
GPUINV_HD float fms(float a, float b, float c) { return GPUINV_FMAF(-b, c, a); }
GPUINV_HD double fms(double a, double b, double c) { return GPUINV_FMA(-b, c, a); }
GPUINV_HD float neg(float a) { return -a; }
GPUINV_HD double neg(double a) { return -a; }
GPUINV_HD float recip(float a) { return 1.0f / a; }
GPUINV_HD double recip(double a) { return 1.0 / a; }

template <class T> GPUINV_HD T make_nan();
template <> GPUINV_HD float make_nan<float>() { return nan_real<float>(); }
template <> GPUINV_HD double make_nan<double>() { return nan_real<double>(); }
template <class T> GPUINV_HD T make_one();
template <> GPUINV_HD float make_one<float>() { return 1.0f; }
template <> GPUINV_HD double make_one<double>() { return 1.0; }
template <class T> GPUINV_HD T make_zero();
template <> GPUINV_HD float make_zero<float>() { return 0.0f; }
template <> GPUINV_HD double make_zero<double>() { return 0.0; }

// --- complex scalars --------------------------------------------------------

template <class R> GPUINV_HD R cabs1(cplx<R> x) { return abs_real(x.re) + abs_real(x.im); }
template <class R> GPUINV_HD bool is_finite(cplx<R> x) {
    return finite_real(x.re) && finite_real(x.im);
}
template <class R> GPUINV_HD cplx<R> mul(cplx<R> a, cplx<R> b) {
    cplx<R> r;
    r.re = a.re * b.re - a.im * b.im;
    r.im = a.re * b.im + a.im * b.re;
    return r;
}
// a - b * c in four fused multiply-adds, (a.re - b.re c.re) + b.im c.im and
// (a.im - b.re c.im) - b.im c.re: two roundings per part, as the real
// elimination has per product, and four instructions instead of six.
template <class R> GPUINV_HD cplx<R> fms(cplx<R> a, cplx<R> b, cplx<R> c) {
    cplx<R> r;
    r.re = fms(fms(a.re, b.re, c.re), -b.im, c.im);
    r.im = fms(fms(a.im, b.re, c.im), b.im, c.re);
    return r;
}
template <class R> GPUINV_HD cplx<R> neg(cplx<R> a) {
    cplx<R> r;
    r.re = -a.re;
    r.im = -a.im;
    return r;
}
// 1 / (c + i d) by Smith's method: no overflow or underflow in |c|^2 + |d|^2.
// Two divisions, not three: t / den is taken as t * (1 / den), one more
// rounding (half an ulp) in one part, for one IEEE division less.
template <class R> GPUINV_HD cplx<R> recip(cplx<R> a) {
    cplx<R> r;
    if (abs_real(a.re) >= abs_real(a.im)) {
        R t = a.im / a.re;
        R rd = R(1) / (a.re + a.im * t);
        r.re = rd;
        r.im = -(t * rd);
    } else {
        R t = a.re / a.im;
        R rd = R(1) / (a.re * t + a.im);
        r.re = t * rd;
        r.im = -rd;
    }
    return r;
}
template <> GPUINV_HD cplx<float> make_nan<cplx<float> >() {
    cplx<float> r;
    r.re = r.im = nan_real<float>();
    return r;
}
template <> GPUINV_HD cplx<double> make_nan<cplx<double> >() {
    cplx<double> r;
    r.re = r.im = nan_real<double>();
    return r;
}
template <> GPUINV_HD cplx<float> make_one<cplx<float> >() {
    cplx<float> r;
    r.re = 1.0f;
    r.im = 0.0f;
    return r;
}
template <> GPUINV_HD cplx<double> make_one<cplx<double> >() {
    cplx<double> r;
    r.re = 1.0;
    r.im = 0.0;
    return r;
}
template <> GPUINV_HD cplx<float> make_zero<cplx<float> >() {
    cplx<float> r;
    r.re = r.im = 0.0f;
    return r;
}
template <> GPUINV_HD cplx<double> make_zero<cplx<double> >() {
    cplx<double> r;
    r.re = r.im = 0.0;
    return r;
}

// A small integer stored in an element slot and read back (the lane-group
// kernel passes the column permutation through shared memory this way).
template <class T> GPUINV_HD T from_index(int i) {
    T v = make_zero<T>();
    return v + T(i);
}
template <class R> GPUINV_HD cplx<R> from_index_c(int i) {
    cplx<R> v;
    v.re = R(i);
    v.im = R(0);
    return v;
}
template <> GPUINV_HD cplx<float> from_index<cplx<float> >(int i) { return from_index_c<float>(i); }
template <> GPUINV_HD cplx<double> from_index<cplx<double> >(int i) { return from_index_c<double>(i); }
GPUINV_HD int to_index(float v) { return (int)v; }
GPUINV_HD int to_index(double v) { return (int)v; }
template <class R> GPUINV_HD int to_index(cplx<R> v) { return (int)v.re; }

// The leading dimension of the lane-group kernel's shared stage: n + 1
// rounded up to 16 bytes, so that every row starts 16-byte aligned and the
// pivot row is stored and read with 128-bit accesses.
template <class T, int N> struct group_stage {
    static constexpr int per_16 = 16 / (int)sizeof(T);
    static constexpr int ld = (N + 1 + per_16 - 1) / per_16 * per_16;
};

// --- the steps of the inversion, shared by every kernel shape -----------------

// The key a candidate pivot is ranked by: |re| + |im| (LAPACK's cabs1).
// NaN, which can only appear after an overflow inside the elimination, ranks
// below every number, so that the ranking is a total order and every lane of
// a warp agrees on the winner of a butterfly reduction.
template <class T> GPUINV_HD typename real_of<T>::type pivot_key(T x) {
    typedef typename real_of<T>::type R;
    R key = cabs1(x);
    return key == key ? key : R(-0.5);
}

// Does candidate a (key, position) beat candidate b? Larger key wins; on a
// tie the smaller position wins, as i?amax returns the first maximum.
template <class R> GPUINV_HD bool pivot_beats(R key_a, int pos_a, R key_b, int pos_b) {
    return key_a > key_b || (key_a == key_b && pos_a < pos_b);
}

// Phase 1, step k, applied to one row: LU elimination below the pivot,
// carried out on the identity at the same time, in place.
//
// A row at position i holds, before step k, L^-1 (P I) in its slots j < k and
// the active part of A in its slots j >= k. A row below the pivot (i > k)
// becomes row - l * pivot_row with l = a_ik / pivot, in every slot but k,
// and slot k (where the identity's column k now lives) becomes -l. The
// pivot row keeps its U part, and its slot k takes 1 / pivot, which phase 2
// needs. Rows above are untouched. After step n-1, slots j < i of row i hold
// Y = L^-1 P (unit lower triangular, diagonal implicit) and slots j >= i hold
// U, with 1 / u_ii on the diagonal: getrf plus the forward substitution of
// getrs applied to the identity.
//
// `fetch(j)` returns element j of the pivot row as it was before this step;
// the warp kernel fetches it with a shuffle, the one-thread kernel from its
// registers. If `active` is false (the pivot is exactly zero, so the column
// below it is all zero) the row is left alone; fetch is still called for
// every j != k, because in the warp kernel every lane must take part in
// every shuffle.
template <class T, int N, class Fetch>
GPUINV_HD void lu_row_step(T (&row)[N], int k, bool below, bool is_pivot, bool active, T inv, Fetch fetch) {
    const bool update = active && below;
    T l = mul(row[k], inv);
    GPUINV_UNROLL
    for (int j = 0; j < N; ++j) {
        if (j == k) continue;
        T pj = fetch(j);
        if (update) row[j] = fms(row[j], l, pj);
    }
    if (update) row[k] = neg(l);
    if (active && is_pivot) row[k] = inv;
}

// Phase 2, one element: X = U^-1 Y, by back substitution, row k from the
// rows below it:
//     x_kc = (y_kc - sum_{j>k} u_kj x_jc) / u_kk,
// with the sum in increasing j and the division as a product with the
// stored 1 / u_kk. The one-thread kernel runs it row by row, the warp kernel
// column by column (one column per lane); the order of operations for each
// element is the same, so both give the same bits.
template <class T, int N, class Ukj, class Xjc>
GPUINV_HD T back_substitute(T y, int k, T inv_ukk, Ukj u, Xjc x) {
    T t = y;
    GPUINV_UNROLL
    for (int j = k + 1; j < N; ++j) t = fms(t, u(j), x(j));
    return mul(t, inv_ukk);
}

template <class T, int N> GPUINV_HD bool row_is_finite(const T (&row)[N]) {
    bool ok = true;
    GPUINV_UNROLL
    for (int j = 0; j < N; ++j) ok = ok && is_finite(row[j]);
    return ok;
}

// The checks and the pivoting of phase 1, shared by the LU inverse
// (lu_in_place) and the LU solve (lu_factor): every element finite (col[i]
// set to i on the way), and at step k the choice of the pivot and the
// interchange of its row with row k.
template <class T, int N>
GPUINV_HD bool start_pivoting(const T (&a)[N][N], int (&col)[N]) {
    bool finite = true;
    GPUINV_UNROLL
    for (int i = 0; i < N; ++i) {
        col[i] = i;
        finite = finite && row_is_finite(a[i]);
    }
    return finite;
}

// Partial pivoting at step k: the first entry of largest |re| + |im| on or
// below the diagonal (getf2's rule) moves to row k. Returns the pivot.
template <class T, int N>
GPUINV_HD T pivot_step(T (&a)[N][N], int (&col)[N], int k) {
    typedef typename real_of<T>::type R;
    int p = k;
    R best = pivot_key(a[k][k]);
    GPUINV_UNROLL
    for (int i = k + 1; i < N; ++i) {
        R key = pivot_key(a[i][k]);
        if (pivot_beats(key, i, best, p)) {
            best = key;
            p = i;
        }
    }
    // Swap rows k and p. p is known only at run time, and a register
    // array cannot be indexed at run time without spilling to local
    // memory, so each candidate row is swapped under a predicate.
    GPUINV_UNROLL
    for (int i = k + 1; i < N; ++i) {
        bool s = (p == i);
        GPUINV_UNROLL
        for (int j = 0; j < N; ++j) {
            T t = a[k][j];
            a[k][j] = s ? a[i][j] : t;
            a[i][j] = s ? t : a[i][j];
        }
        int tc = col[k];
        col[k] = s ? col[i] : tc;
        col[i] = s ? tc : col[i];
    }
    return a[k][k];
}

// Phase 1 on a matrix held in `a` (registers on the GPU), in place.
//
// Partial pivoting picks the first entry of largest |re| + |im| on or below
// the diagonal, as LAPACK's getf2 does, so the pivots and the first zero
// pivot are getrf's. Returns the info code: 0 inverted, k > 0 the first
// exactly zero pivot was met at step k (1-based), -1 the input held NaN or
// Inf (and `a` is left as it was). col[c] is the original index of the row
// now at position c.
template <class T, int N>
GPUINV_HD int lu_in_place(T (&a)[N][N], int (&col)[N]) {
    typedef typename real_of<T>::type R;
    if (!start_pivoting<T, N>(a, col)) return -1;
    int info = 0;
    GPUINV_UNROLL
    for (int k = 0; k < N; ++k) {
        T piv = pivot_step<T, N>(a, col, k);
        bool active = cabs1(piv) != R(0);
        if (!active && info == 0) info = k + 1;
        T inv = active ? recip(piv) : make_one<T>();
        // The rows below first, the pivot row last: they read it as it was.
        GPUINV_UNROLL
        for (int i = k + 1; i < N; ++i)
            lu_row_step<T, N>(a[i], k, true, false, active, inv, [&](int j) { return a[k][j]; });
        lu_row_step<T, N>(a[k], k, false, true, active, inv, [&](int j) { return a[k][j]; });
    }
    return info;
}

// Phase 2 on the output of lu_in_place, row by row (the one-thread kernel):
// X = U^-1 Y, bottom row first; the rows below k already hold X.
template <class T, int N>
GPUINV_HD void back_substitute_rows(T (&a)[N][N]) {
    GPUINV_UNROLL
    for (int k = N - 1; k >= 0; --k) {
        T u[N];  // row k's U part, which its X values overwrite
        GPUINV_UNROLL
        for (int j = k + 1; j < N; ++j) u[j] = a[k][j];
        const T inv_ukk = a[k][k];
        GPUINV_UNROLL
        for (int c = 0; c < N; ++c) {
            T y = c < k ? a[k][c] : (c == k ? make_one<T>() : make_zero<T>());
            a[k][c] = back_substitute<T, N>(y, k, inv_ukk, [&](int j) { return u[j]; },
                                            [&](int j) { return a[j][c]; });
        }
    }
}

// Phase 2, one column (the warp kernel: one lane per column): column c of
// X = U^-1 Y from the output of phase 1 stored row by row at lu[i * ld + j]
// (shared memory on the GPU; every lane reads the same U element at once,
// which shared memory broadcasts). Column c of Y is 0 above row c, 1 at
// row c and stored below it.
template <class T, int N>
GPUINV_HD void back_substitute_column(const T* lu, int ld, int c, T (&x)[N]) {
    GPUINV_UNROLL
    for (int k = 0; k < N; ++k) x[k] = k < c ? make_zero<T>() : (k == c ? make_one<T>() : lu[k * ld + c]);
    GPUINV_UNROLL
    for (int k = N - 1; k >= 0; --k)
        x[k] = back_substitute<T, N>(x[k], k, lu[k * ld + k], [&](int j) { return lu[k * ld + j]; },
                                     [&](int j) { return x[j]; });
}

// The same column of X = U^-1 Y from phase 1's rows stored rotated, as the
// lane-group kernel stores them: row k's slot s at lu[k * ld + (s - k) mod n],
// so that its diagonal (1 / u_kk) comes first, then u_k,k+1 ... u_k,n-1,
// then y_k0 ... y_k,k-1. The offsets of U are compile-time constants; only
// Y's depend on the column. The arithmetic is back_substitute_column's, in
// the same order, so it gives the same bits.
template <class T, int N>
GPUINV_HD void back_substitute_column_rotated(const T* lu, int ld, int c, T (&x)[N]) {
    GPUINV_UNROLL
    for (int k = 0; k < N; ++k) x[k] = k < c ? make_zero<T>() : (k == c ? make_one<T>() : lu[k * ld + c - k + N]);
    GPUINV_UNROLL
    for (int k = N - 1; k >= 0; --k)
        x[k] = back_substitute<T, N>(x[k], k, lu[k * ld], [&](int j) { return lu[k * ld + j - k]; },
                                     [&](int j) { return x[j]; });
}

// The whole inversion on a matrix in `a`, in place: on return a[i][c] is
// element (i, col[c]) of the inverse (the row interchanges of pivoting
// become a column permutation of the result, which the kernels apply when
// they store it: shared memory takes run-time indices, registers do not).
// Returns the info code; for info == -1 the contents are unspecified and the
// caller writes NaN; for info > 0 they are meaningless (they may hold Inf),
// as LAPACK's are.
template <class T, int N>
GPUINV_HD int invert_in_place(T (&a)[N][N], int (&col)[N]) {
    int info = lu_in_place<T, N>(a, col);
    if (info != -1) back_substitute_rows<T, N>(a);
    return info;
}

// Invert one n x n C-ordered matrix from `in` into `out` (which may not alias
// `in`) the way the one-thread kernel does. The host tests call it.
template <class T, int N>
GPUINV_HD int invert_matrix(const T* in, T* out) {
    T a[N][N];
    int col[N];
    GPUINV_UNROLL
    for (int i = 0; i < N; ++i) {
        GPUINV_UNROLL
        for (int j = 0; j < N; ++j) a[i][j] = in[i * N + j];
    }
    int info = invert_in_place<T, N>(a, col);
    GPUINV_UNROLL
    for (int i = 0; i < N; ++i) {
        GPUINV_UNROLL
        for (int c = 0; c < N; ++c) out[i * N + col[c]] = info == -1 ? make_nan<T>() : a[i][c];
    }
    return info;
}

// The same inversion with phase 2 done column by column from a row-major
// copy of phase 1's output, the way the warp kernel does it (whose phase 1
// is lu_row_step on rows spread over lanes). The host tests check that it
// gives the same bits as invert_matrix and LAPACK-level accuracy.
template <class T, int N>
GPUINV_HD int invert_matrix_by_columns(const T* in, T* out) {
    T a[N][N];
    int col[N];
    for (int i = 0; i < N; ++i)
        for (int j = 0; j < N; ++j) a[i][j] = in[i * N + j];
    int info = lu_in_place<T, N>(a, col);
    T lu[N * (N + 1)];
    for (int i = 0; i < N; ++i)
        for (int j = 0; j < N; ++j) lu[i * (N + 1) + j] = a[i][j];
    for (int c = 0; c < N; ++c) {
        T x[N];
        back_substitute_column<T, N>(lu, N + 1, c, x);
        for (int i = 0; i < N; ++i) out[i * N + col[c]] = info == -1 ? make_nan<T>() : x[i];
    }
    return info;
}

// --- the LU solve (the solve_thread kernel) -------------------------------------
//
// What numpy.linalg.solve does through LAPACK's gesv: getrf, then getrs
// (x = U^-1 L^-1 P b). The factorization is lu_in_place's without the
// identity: the same pivot choice, the same reciprocal of the pivot, the
// same multipliers l = a_ik * (1 / pivot) and the same fused updates of the
// active part, so the pivots, U and the info code are those of the LU
// inverse bit for bit; only the slots left of the diagonal differ: they keep
// the multipliers (L) instead of L^-1 P, and the updates that would carry
// the identity along are skipped (n^3 / 3 multiply-adds instead of n^3 / 2).
// The right-hand side then takes the elimination the identity took in the
// inverse: row interchanges, forward substitution with L in the order of
// the elimination (y_i -= l_ik y_k, k outer), and back_substitute with the
// stored 1 / u_kk, so a solve with b = column col[c] of the identity gives
// column col[c] of invert_in_place's inverse (the same values; a zero can
// differ in sign).

// Phase 1 of the solve on `a`, in place: on return slots j < i of row i hold
// L's multipliers (unit diagonal implicit), slots j > i hold U, and slot i
// holds 1 / u_ii. col[c] is the original index of the row now at position c.
// The info code is lu_in_place's: 0, k > 0 (first exactly zero pivot at step
// k; the steps past it go on, as getrf's, and their results are not used),
// -1 (NaN or Inf in the input; `a` is left as it was).
template <class T, int N>
GPUINV_HD int lu_factor(T (&a)[N][N], int (&col)[N]) {
    typedef typename real_of<T>::type R;
    if (!start_pivoting<T, N>(a, col)) return -1;
    int info = 0;
    GPUINV_UNROLL
    for (int k = 0; k < N; ++k) {
        T piv = pivot_step<T, N>(a, col, k);
        bool active = cabs1(piv) != R(0);
        if (!active && info == 0) info = k + 1;
        T inv = active ? recip(piv) : make_one<T>();
        GPUINV_UNROLL
        for (int i = k + 1; i < N; ++i) {
            T l = mul(a[i][k], inv);
            GPUINV_UNROLL
            for (int j = k + 1; j < N; ++j)
                if (active) a[i][j] = fms(a[i][j], l, a[k][j]);
            if (active) a[i][k] = l;
        }
        if (active) a[k][k] = inv;
    }
    return info;
}

// Phase 2 of the solve for one right-hand side: y = U^-1 L^-1 P b from
// lu_factor's output. `load(r)` returns element r of b (row r of the
// original system: the interchanges are applied here, by reading b at the
// original row of each position, col[c]). The forward substitution runs in
// the elimination's order (k outer), as getrs's trsm does; the back
// substitution is the inverse's back_substitute.
template <class T, int N, class Load>
GPUINV_HD void solve_column(const T (&lu)[N][N], const int (&col)[N], Load load, T (&y)[N]) {
    GPUINV_UNROLL
    for (int c = 0; c < N; ++c) y[c] = load(col[c]);
    GPUINV_UNROLL
    for (int k = 0; k < N; ++k) {
        GPUINV_UNROLL
        for (int i = k + 1; i < N; ++i) y[i] = fms(y[i], lu[i][k], y[k]);
    }
    GPUINV_UNROLL
    for (int k = N - 1; k >= 0; --k)
        y[k] = back_substitute<T, N>(y[k], k, lu[k][k], [&](int j) { return lu[k][j]; },
                                     [&](int j) { return y[j]; });
}

// Solve A X = B for one n x n C-ordered matrix `a` and its n x k C-ordered
// right-hand sides `b` into `x` (which may not alias them) the way the
// solve_thread kernel does: X is all NaN where the info code is not 0. The
// host tests call it.
template <class T, int N>
GPUINV_HD int solve_matrix(const T* a, const T* b, T* x, int k) {
    T lu[N][N];
    int col[N];
    for (int i = 0; i < N; ++i)
        for (int j = 0; j < N; ++j) lu[i][j] = a[i * N + j];
    int info = lu_factor<T, N>(lu, col);
    for (int j = 0; j < k; ++j) {
        T y[N];
        solve_column<T, N>(lu, col, [&](int r) { return b[r * k + j]; }, y);
        for (int r = 0; r < N; ++r) x[r * k + j] = info != 0 ? make_nan<T>() : y[r];
    }
    return info;
}

// --- the reciprocal condition number (the kernels' RC variants) -------------
//
// rcond = 1 / (||A||_1 ||X||_1), from the A a kernel read and the X it
// computed, with gpuinv._numerics.rcond_from_inverse's conventions (what the
// CPU engine returns): 0 for info > 0, NaN for info -1, and 0 where the
// product is 0 or not finite (an overflowed inverse). |x| is the modulus, as
// NumPy's abs (hypot for complex, so no overflow in re^2 + im^2). Summation
// order and hypot's last bit can differ from NumPy's: the results agree to a
// few ulps times n, not bit for bit.

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
// Correctly rounded under NVRTC's -prec-sqrt=true.
GPUINV_HD float sqrt_real(float x) { return sqrtf(x); }
GPUINV_HD double sqrt_real(double x) { return sqrt(x); }
// sqrt(x) as x * rsqrt(x) for x in safe_squares's range: one MUFU.RSQ and a
// multiply for float (within 3 ulp), where the IEEE sqrtf adds a Newton
// step and a slow-path check.
GPUINV_HD float sqrt_approx(float x) { return x * rsqrtf(x); }
GPUINV_HD double sqrt_approx(double x) { return x * rsqrt(x); }
// Out of line: the rare path of modulus, called as the IEEE division's slow
// path is (so the cost model counts it as one too).
__device__ __noinline__ float hypot_real(float x, float y) { return hypotf(x, y); }
__device__ __noinline__ double hypot_real(double x, double y) { return hypot(x, y); }
#else
// GCC's builtins: no <cmath> needed, correctly rounded (IEEE sqrt).
GPUINV_HD float sqrt_real(float x) { return __builtin_sqrtf(x); }
GPUINV_HD double sqrt_real(double x) { return __builtin_sqrt(x); }
GPUINV_HD float sqrt_approx(float x) { return x * (1.0f / __builtin_sqrtf(x)); }
GPUINV_HD double sqrt_approx(double x) { return x * (1.0 / __builtin_sqrt(x)); }
GPUINV_HD float hypot_real(float x, float y) { return __builtin_hypotf(x, y); }
GPUINV_HD double hypot_real(double x, double y) { return __builtin_hypot(x, y); }
#endif

// Squares that neither overflow nor lose bits to subnormals: re^2 + im^2
// within [2^-100, 2^100] (float) or [2^-900, 2^900] (double).
template <class R> struct safe_squares;
template <> struct safe_squares<float> {
    static constexpr float lo = 7.88860905e-31f, hi = 1.26765060e+30f;
};
template <> struct safe_squares<double> {
    static constexpr double lo = 1.1830521861667747e-271, hi = 8.452712498170644e+270;
};

GPUINV_HD float modulus(float x) { return abs_real(x); }
GPUINV_HD double modulus(double x) { return abs_real(x); }
// sqrt(re^2 + im^2) where the squares are safe (within 1.5 ulp of |x|), and
// hypot (some 28 instructions inlined; called out of line here) only
// outside that range (and for 0, Inf, NaN): inlined hypot made the RC
// variant of complex64 n = 4 issue-bound (0.84x HBM on the cost model).
template <class R> GPUINV_HD R modulus(cplx<R> x) {
    const R ss = x.re * x.re + x.im * x.im;
    if (ss >= safe_squares<R>::lo && ss <= safe_squares<R>::hi) return sqrt_approx(ss);
    return hypot_real(x.re, x.im);
}

// max(norm, s) that keeps a NaN once it has seen one (NumPy's max does), so
// that a NaN column sum gives a NaN norm and rcond 0, as on the CPU.
template <class R> GPUINV_HD R max_keep_nan(R norm, R s) { return (s > norm || s != s) ? s : norm; }

// ||a||_1: the largest column sum of |a_ij|, with a_ij = at(i, j).
template <class T, int N, class At>
GPUINV_HD typename real_of<T>::type one_norm_at(At at) {
    typedef typename real_of<T>::type R;
    R norm = R(0);
    GPUINV_UNROLL
    for (int j = 0; j < N; ++j) {
        R s = R(0);
        GPUINV_UNROLL
        for (int i = 0; i < N; ++i) s += modulus(at(i, j));
        norm = max_keep_nan(norm, s);
    }
    return norm;
}
template <class T, int N>
GPUINV_HD typename real_of<T>::type one_norm(const T (&a)[N][N]) {
    return one_norm_at<T, N>([&](int i, int j) { return a[i][j]; });
}

// A compiler barrier (no instruction): memory may have changed, so a load
// after it is not merged with an equal load before it. The staged kernels'
// rcond takes A's norm from the stage in a pass of its own before the
// inversion: had those loads been merged with the ones that fill the
// registers, or the norm been taken from the registers, every element of A
// would be read at once and stay live (float64 n = 7 spilled at 255
// registers), where the plain kernel reads the stage as the elimination
// needs it.
#define GPUINV_RELOAD_BARRIER() asm volatile("" ::: "memory")

// ||a||_inf: the largest row sum of |a_ij| (the 1-norm of a's transpose).
template <class T, int N>
GPUINV_HD typename real_of<T>::type inf_norm(const T (&a)[N][N]) {
    typedef typename real_of<T>::type R;
    R norm = R(0);
    GPUINV_UNROLL
    for (int i = 0; i < N; ++i) {
        R s = R(0);
        GPUINV_UNROLL
        for (int j = 0; j < N; ++j) s += modulus(a[i][j]);
        norm = max_keep_nan(norm, s);
    }
    return norm;
}

// The largest |d_j|: the 1-norm of diag(d).
template <class T, int N>
GPUINV_HD typename real_of<T>::type max_modulus(const T (&d)[N]) {
    typedef typename real_of<T>::type R;
    R norm = R(0);
    GPUINV_UNROLL
    for (int j = 0; j < N; ++j) norm = max_keep_nan(norm, modulus(d[j]));
    return norm;
}

// rcond from the two norms and the kernel's info code.
template <class R>
GPUINV_HD R rcond_of(int info, R a_norm, R x_norm) {
    if (info == -1) return nan_real<R>();
    const R rc = R(1) / (a_norm * x_norm);
    return (info == 0 && finite_real(rc)) ? rc : R(0);
}

}  // namespace gpuinv
