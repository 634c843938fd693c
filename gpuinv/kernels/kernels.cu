// gpuinv: batched inversion kernels for small matrices.
//
// gpuinv/kernels/__init__.py prepends inverse.cuh to this text (in place of
// the #include below) and compiles it with NVRTC, one (dtype, n) at a time.
// Both kernels take a C-contiguous (m, n, n) stack `a`, write its inverses to
// `out` (same layout) and one info code per matrix to `info`, and never read
// or write past matrix m - 1. With the template argument RC they also write
// each matrix's rcond to `rcond` (inverse.cuh, rcond_of: 1 / (||A||_1
// ||X||_1) from the A and X they hold); without it `rcond` is ignored (a null
// pointer) and the code is what it was before RC existed. Offsets into the stack are 64-bit; the block
// (or warp) loops over tiles so any m works with a capped grid.
//
// __launch_bounds__(threads, 1): without the minimum-blocks hint ptxas
// trades a few registers for small spills in about one kernel in ten (seen
// with NVRTC 12.9 on sm_80 and sm_90); with it, ptxas keeps everything in
// registers, which `python -m gpuinv.kernels --check` verifies.
#include "inverse.cuh"

namespace gpuinv {

// The largest matrix (in bytes) the one-thread kernels take without a stage
// (inv_thread has why; gpuinv/kernels/__init__.py keeps the same bound).
constexpr int THREAD_DIRECT_BYTES = 32;

// --- the tile loops of the one-thread kernels ---------------------------------
//
// Every one-thread kernel (inv_thread, inv_chol_thread, inv_tri_thread,
// inv_diag_thread, solve_thread) is one of the two loops below plus its own
// math: direct_tiles for the sizes at or under THREAD_DIRECT_BYTES,
// staged_tiles above them. thread_tiles puts the inverses' math in either.

// The stage-less tile loop: `load(i, row, col)` gives element (row, col) of
// matrix i (only called for i < m), and `finish(i, r)` inverts matrix i held
// in `r` and stores it.
template <class T, int N, int B, class Load, class Finish>
__device__ __forceinline__ void direct_tiles(long long m, Load load, Finish finish) {
    constexpr int NN = N * N;
    constexpr int K = THREAD_DIRECT_BYTES / (NN * (int)sizeof(T));
    const long long stride = (long long)gridDim.x * B * K;
    for (long long first = (long long)blockIdx.x * B * K + threadIdx.x; first < m; first += stride) {
        T r[K][N][N];
        GPUINV_UNROLL
        for (int q = 0; q < K; ++q) {
            const long long i = first + q * B;
            GPUINV_UNROLL
            for (int e = 0; e < NN; ++e) r[q][e / N][e % N] = i < m ? load(i, e / N, e % N) : make_zero<T>();
        }
        GPUINV_UNROLL
        for (int q = 0; q < K; ++q) {
            const long long i = first + q * B;
            if (i < m) finish(i, r[q]);
        }
    }
}

// The stage: a tile of B matrices, element e of matrix t at e * (B + 1) + t,
// filled from and emptied to the tile's `valid` elements at `src`/`dst`
// with consecutive threads on consecutive elements (coalesced). The trip
// count is a compile-time NN, so the loops unroll and every load of a
// thread is in flight before its first store (what keeps HBM busy when
// registers limit occupancy; docs/kernels.md).
//
// APART writes the two bounds tests differently (the same in value:
// g < valid). Written alike, the compiler evaluates stage_out's NN tests
// once, with stage_in's, and holds them across the inversion, one register
// each (P2R): up to 60 registers more in the triangular, Cholesky and
// diagonal kernels at n = 3 to 7 (complex64 n = 5 triangular: 76 apart, 148
// alike). The default, apart for 8 < NN < 64, is what the one-thread
// kernels take but for two kinds, where alike allocated fewer: the complex
// kernels with rcond (complex64 n = 7 upper triangular on sm_90: 128 alike,
// 136 apart) and the complex LU kernels (complex64 n = 5 on sm_90: 113 with
// LuInverse's NaN branch, 120 apart); thread_tiles chooses, from
// Op::complex_alike. At NN <= 8 and NN = 64 (float32 n = 8 diagonal) alike
// allocated fewer everywhere. Measured, not derived: NVRTC 12.9, sm_80 and
// sm_90, every one-thread instantiation both ways (docs/kernels.md, "Cost
// budget"); recheck with `--budget` when the compiler changes.
template <int NN> __device__ __forceinline__ constexpr bool split_bounds_tests() { return NN > 8 && NN < 64; }
template <class T, int NN, int B, bool APART = split_bounds_tests<NN>()>
__device__ __forceinline__ void stage_in(T* stage, const T* __restrict__ src, int t, int valid) {
    GPUINV_UNROLL
    for (int e = 0; e < NN; ++e) {
        const int g = e * B + t;
        const int mat = g / NN;
        if (APART ? e * B < valid - t : g < valid) stage[(g - mat * NN) * (B + 1) + mat] = src[g];
    }
}
template <class T, int NN, int B, bool APART = split_bounds_tests<NN>()>
__device__ __forceinline__ void stage_out(const T* stage, T* __restrict__ dst, int t, int valid) {
    GPUINV_UNROLL
    for (int e = 0; e < NN; ++e) {
        const int g = e * B + t;
        const int mat = g / NN;
        if (APART ? t < valid - e * B : g < valid) dst[g] = stage[(g - mat * NN) * (B + 1) + mat];
    }
}

// Thread t's column of the stage: element e of its matrix at at[e * LD].
template <class T, int LD> struct StageColumn {
    T* at;
    __device__ __forceinline__ T& operator()(int e) const { return at[e * LD]; }
};

// The staged tile loop: a block takes B consecutive matrices per tile into
// a stage of SLOTS elements per matrix. `fill(stage, t, first, count)` loads
// the tile's `count` matrices from `first` on (stage_in); thread t < count
// then runs `work(first + t, slot)`, slot(e) being element e of its own
// column of the stage (a StageColumn: only thread t touches column t, so no
// barrier is needed between its reads and its writes); and, where `drains`,
// `drain(stage, t, first, count)` stores the tile (stage_out).
template <class T, int SLOTS, int B, class Fill, class Work, class Drain>
__device__ __forceinline__ void staged_tiles(long long m, Fill fill, Work work, Drain drain, bool drains) {
    constexpr int LD = B + 1;
    // Every kernel's stage is named `stage`: the CPU emulation maps it to
    // one buffer of the instantiation's size (tests/cuda_emu).
    __shared__ T stage[SLOTS * LD];
    const int t = threadIdx.x;
    const long long tiles = (m + B - 1) / B;
    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const long long first = tile * B;
        const int count = (m - first) < B ? (int)(m - first) : B;
        fill(stage, t, first, count);
        __syncthreads();
        // Threads past the stack's end only take part in the barriers.
        if (t < count) work(first + t, StageColumn<T, LD>{stage + t});
        if (drains) {
            __syncthreads();
            drain(stage, t, first, count);
        }
        __syncthreads();  // the next tile's loads overwrite the stage
    }
}

// The inverses' tile loop: a C-contiguous (m, N, N) stack `a` in, `out` and
// one info code per matrix out, through direct_tiles or staged_tiles by the
// matrix's size. `Op` is the kernel's own math (the kernels below):
// * `Op::load(at, row, col)`: element (row, col) of the registers `r`, from
//   at(row, col), element (row, col) of the matrix in memory (only the
//   triangle or the diagonal a structured kernel reads);
// * `Op::norm_a(at)`: with RC, ||A||_1 of the matrix as loaded, at(row, col)
//   giving what load gives. Where Op::stage_norm, the staged loop takes it
//   from the stage, in a pass of its own before `r` is filled, then a
//   compiler barrier, so that r is still read from the stage as the
//   elimination needs it (GPUINV_RELOAD_BARRIER, inverse.cuh); otherwise,
//   and always in the stage-less loop, from `r`;
// * `Op::complex_alike`: the complex kernels without rcond stage with the
//   bounds tests alike too (with rcond they always do; stage_in has why);
// * `op(i, r, a_norm, put)`: inverts matrix i held in `r`, writes rcond[i]
//   with RC, writes element e of the inverse (NaN where the kernel's info
//   says so) with put(e, value), and returns the info code.
// (Function objects, not lambdas: NVRTC compiles no generic lambda.)
template <class T, int N, int B, bool RC, class Op>
__device__ __forceinline__ void thread_tiles(const T* __restrict__ a, T* __restrict__ out, int* __restrict__ info,
                                             long long m, Op op) {
    typedef typename real_of<T>::type R;
    constexpr int NN = N * N;
    constexpr bool is_cplx = sizeof(T) == 2 * sizeof(R);
    constexpr bool apart = split_bounds_tests<NN>() && !(is_cplx && (RC || Op::complex_alike));
    if constexpr (NN * (int)sizeof(T) <= THREAD_DIRECT_BYTES) {
        direct_tiles<T, N, B>(
            m,
            [&](long long i, int row, int col) {
                return Op::load([&](int p, int q) { return a[i * NN + p * N + q]; }, row, col);
            },
            [&](long long i, T (&r)[N][N]) {
                R a_norm = R(0);
                if constexpr (RC) a_norm = Op::norm_a([&](int p, int q) { return r[p][q]; });
                info[i] = op(i, r, a_norm, [&](int e, T v) { out[i * NN + e] = v; });
            });
    } else {
        typedef StageColumn<T, B + 1> Slot;
        staged_tiles<T, NN, B>(
            m, [&](T* stage, int t, long long first, int count) { stage_in<T, NN, B, apart>(stage, a + first * NN, t, count * NN); },
            [&](long long i, Slot slot) {
                auto held = [&](int row, int col) {
                    return Op::load([&](int p, int q) { return slot(p * N + q); }, row, col);
                };
                R a_norm = R(0);
                if constexpr (RC && Op::stage_norm) {
                    a_norm = Op::norm_a(held);
                    GPUINV_RELOAD_BARRIER();
                }
                T r[N][N];
                GPUINV_UNROLL
                for (int row = 0; row < N; ++row) {
                    GPUINV_UNROLL
                    for (int col = 0; col < N; ++col) r[row][col] = held(row, col);
                }
                if constexpr (RC && !Op::stage_norm) a_norm = Op::norm_a([&](int p, int q) { return r[p][q]; });
                info[i] = op(i, r, a_norm, [&](int e, T v) { slot(e) = v; });
            },
            [&](T* stage, int t, long long first, int count) { stage_out<T, NN, B, apart>(stage, out + first * NN, t, count * NN); },
            true);
    }
}

// The LU inverse's math for thread_tiles. info -1's NaN: a select per
// element for real T; for complex T a branch that overwrites the stored
// inverse (complex64 n = 5 on sm_90: 122 registers with the select, 113
// with the branch; float32 n = 2 on sm_80: 29 with the select, 32 with the
// branch).
template <class T, int N, bool RC> struct LuInverse {
    typedef typename real_of<T>::type R;
    static constexpr bool stage_norm = true;
    static constexpr bool complex_alike = true;
    static constexpr bool is_cplx = sizeof(T) == 2 * sizeof(R);
    R* rcond;
    template <class At> __device__ __forceinline__ static T load(At at, int row, int col) { return at(row, col); }
    template <class At> __device__ __forceinline__ static R norm_a(At at) { return one_norm_at<T, N>(at); }
    template <class Put> __device__ __forceinline__ int operator()(long long i, T (&r)[N][N], R a_norm, Put put) const {
        int col[N];
        const int code = invert_in_place<T, N>(r, col);
        if constexpr (RC) rcond[i] = rcond_of(code, a_norm, one_norm<T, N>(r));
        GPUINV_UNROLL
        for (int row = 0; row < N; ++row) {
            GPUINV_UNROLL
            for (int c = 0; c < N; ++c) put(row * N + col[c], is_cplx || code != -1 ? r[row][c] : make_nan<T>());
        }
        if (is_cplx && code == -1) {
            GPUINV_UNROLL
            for (int e = 0; e < N * N; ++e) put(e, make_nan<T>());
        }
        return code;
    }
};

// One thread per matrix, the matrix in registers: the LU inverse.
//
// The staged loop's tile is loaded from global memory with consecutive
// threads reading consecutive elements (coalesced) into shared memory,
// stored there transposed (element e of matrix t at e * (B + 1) + t, the +1
// avoiding bank conflicts), so that each thread then reads its own matrix
// without bank conflicts. The result goes back the same way, the column
// permutation of partial pivoting applied on the way into shared memory.
//
// The smallest matrices (THREAD_DIRECT_BYTES or less, gpuinv/kernels/__init__.py
// keeps the same bound) skip the stage: each thread loads and stores its own
// matrices straight from and to global memory. A warp's access then spans
// 32 matrices, at most 1 KiB, whose cache lines the next element's access
// finds in L1; the stage's loops, index arithmetic and barriers, which
// cost several times the inversion of a 2x2, are gone. Each thread takes
// K = THREAD_DIRECT_BYTES / (matrix bytes) matrices per tile (B apart, so
// each load instruction stays coalesced) and issues all their loads before
// any arithmetic: 32 bytes in flight per thread, which is what keeps HBM
// busy at any occupancy (docs/kernels.md, the cost model's Little's law).
template <class T, int N, int B, bool RC = false>
__global__ void __launch_bounds__(B, 1)
    inv_thread(const T* __restrict__ a, T* __restrict__ out, int* __restrict__ info,
               typename real_of<T>::type* __restrict__ rcond, long long m) {
    thread_tiles<T, N, B, RC>(a, out, info, m, LuInverse<T, N, RC>{rcond});
}

__device__ __forceinline__ float shfl(float v, int src, int width) {
    return __shfl_sync(0xffffffffu, v, src, width);
}
__device__ __forceinline__ double shfl(double v, int src, int width) {
    return __shfl_sync(0xffffffffu, v, src, width);
}
template <class R>
__device__ __forceinline__ cplx<R> shfl(cplx<R> v, int src, int width) {
    cplx<R> r;
    r.re = __shfl_sync(0xffffffffu, v.re, src, width);
    r.im = __shfl_sync(0xffffffffu, v.im, src, width);
    return r;
}
template <class R>
__device__ __forceinline__ R shfl_xor(R v, int mask, int width) {
    return __shfl_xor_sync(0xffffffffu, v, mask, width);
}

// A candidate pivot's rank as an unsigned code that orders as pivot_key
// does (|re| + |im|, NaN below every number, non-candidates below NaN): the
// bits of a non-negative float or double order as its value, so |x| codes as
// bits(|x|) + 2, NaN as 1 and a non-candidate as 0 (two words for double).
// The sign bit is cleared, so -0.0 (which cabs1 can return) codes as +0.0.
struct PivotCode {
    static constexpr unsigned zero = 2u;  // the code of a zero key (lo word; hi word 0)
    static constexpr bool two_words = false;
    unsigned hi = 0u, lo;
    __device__ __forceinline__ PivotCode(float key, bool candidate) {
        const unsigned b = __float_as_uint(key) & 0x7fffffffu;
        lo = candidate ? (b > 0x7f800000u ? 1u : b + 2u) : 0u;
    }
};
struct PivotCode64 {
    static constexpr unsigned zero = 2u;
    static constexpr bool two_words = true;
    unsigned hi, lo;
    __device__ __forceinline__ PivotCode64(double key, bool candidate) {
        const unsigned long long b = (unsigned long long)__double_as_longlong(key) & 0x7fffffffffffffffull;
        const unsigned long long c = candidate ? (b > 0x7ff0000000000000ull ? 1ull : b + 2ull) : 0ull;
        hi = (unsigned)(c >> 32);
        lo = (unsigned)c;
    }
};
template <class R> struct pivot_code_of { typedef PivotCode type; };
template <> struct pivot_code_of<double> { typedef PivotCode64 type; };

// A group of G lanes (G a power of two, N <= G <= 32) per matrix, 32 / G
// matrices per warp, W warps per block. Each warp stages its matrices
// through its own slice of shared memory (rows LD = N + 1 rounded up to 16
// bytes apart), so global loads and stores are coalesced and only
// __syncwarp is needed.
//
// Phase 1 (LU and L^-1 P): one row per lane, in registers, never moving
// between lanes: an interchange only swaps the two lanes' `pos` (the row's
// position in the pivoted order). The k loop stays rolled (its body is the
// same for every k, so the code is O(N), not O(N^2)), which a register
// array allows only if no element is indexed by k: so each row is kept
// rotated, r[0] holding slot k at step k, and every step shifts it by one
// as it updates it (r[j - 1] = r[j] - l p_j; r[N - 1] = -l), which costs no
// moves. The pivot search is a butterfly arg-max over the group on
// (pivot_key, pos). The pivot lane stores its row, with 1 / pivot in place
// of the pivot, straight to its final place in the slice (row k, rotated:
// slot k first), and every lane reads it back from there: a 16-byte access
// moves 4, 2 or 1 elements, where a shuffle moves 4 bytes. Every lane then
// applies the same update without a select: rows below the pivot get
// exactly lu_row_step's arithmetic, and the other rows (the pivot row and
// rows above it, already stored) get values nobody reads. That is exact for
// every matrix with info == 0 (and info -1 writes NaN from both shapes).
// At an exactly zero pivot (info > 0) the shapes differ, in an inverse that
// is meaningless anyway: this kernel stores 1 as the pivot's reciprocal
// (recip(1), no select) and updates the rows below with l = a_ik (+-0
// unless NaN), where the one-thread kernel keeps the zero pivot and leaves
// the rows alone (lu_row_step's `active`). So X differs wholesale, not only
// in the signs of zeros: the zero matrix gives X = I here and X = 0 from
// inv_thread. Making the one-thread kernel do this kernel's arithmetic
// costs it registers past the CI budget (docs/kernels.md, "The two shapes
// at info > 0"), and making this kernel do the other's costs selects in its
// rolled k loop; tests/test_kernels_shapes_emu.py pins what agrees and what
// does not.
// Phase 2 (X = U^-1 Y): each lane solves one column with
// back_substitute_column_rotated, reading U and Y from the slice (all lanes
// of a group read the same U element at once: a broadcast). Lanes past N
// only take part in the collectives.
template <class T, int N, int G, int W, bool RC = false>
__global__ void __launch_bounds__(32 * W, 1)
    inv_group(const T* __restrict__ a, T* __restrict__ out, int* __restrict__ info, typename real_of<T>::type* __restrict__ rcond,
              long long m) {
    typedef typename real_of<T>::type R;
    constexpr int NN = N * N;
    constexpr int MPW = 32 / G;  // matrices per warp
    constexpr int LD = group_stage<T, N>::ld;
    constexpr int SLICE = MPW * N * LD;
    // Declared as 16-byte elements so that the stage is 16-byte aligned.
    __shared__ cplx<double> stage16[W * SLICE * sizeof(T) / 16];
    T* stage = reinterpret_cast<T*>(stage16);
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int grp = lane / G;
    const int row = lane % G;
    const bool has_row = row < N;
    const unsigned gmask = (G == 32) ? 0xffffffffu : (((1u << G) - 1u) << (grp * G));
    T* s = stage + warp * SLICE;
    T* mine = s + grp * N * LD;
    const long long chunks = (m + MPW - 1) / MPW;
    const long long stride = (long long)gridDim.x * W;
    for (long long chunk = (long long)blockIdx.x * W + warp; chunk < chunks; chunk += stride) {
        const long long first = chunk * MPW;
        const int count = (m - first) < MPW ? (int)(m - first) : MPW;
        const long long base = first * NN;
        // Element g of the chunk is element (g % N) of its row g / N (counted
        // over all the chunk's matrices), which the slice keeps LD apart.
        for (int g = lane; g < MPW * NN; g += 32) {
            // Matrices past m are zeros: they run through the elimination
            // (every lane must) but are never written back.
            s[g + (g / N) * (LD - N)] = g < count * NN ? a[base + g] : make_zero<T>();
        }
        __syncwarp();
        T r[N];
        GPUINV_UNROLL
        for (int j = 0; j < N; ++j) r[j] = has_row ? mine[row * LD + j] : make_zero<T>();
        const bool bad = has_row && !row_is_finite(r);
        const bool nonfinite = (__ballot_sync(0xffffffffu, bad) & gmask) != 0u;
        // RC: lane `row` sums column `row` of A (||A||_1 is the group's
        // largest such sum, taken at the end with ||X||_1's).
        R a_sum = R(0);
        if constexpr (RC) {
            if (has_row) {
                GPUINV_UNROLL
                for (int i = 0; i < N; ++i) a_sum += modulus(mine[i * LD + row]);
            }
        }
        __syncwarp();  // every lane has read its row: phase 1 overwrites the slice
        int pos = row;  // lanes past N keep pos >= N: never a candidate, never matched
        int code = 0;
        GPUINV_ROLLED
        for (int k = 0; k < N; ++k) {
            // Rows already used as pivots, and lanes without a row, rank below
            // every candidate.
            const bool candidate = has_row && pos >= k;
            bool is_pivot, active;
            int best_pos;
            if constexpr (G == 32) {
                // One matrix per warp: the arg-max is two or three warp
                // reductions (redux.sync) on the key's order-preserving code,
                // then the smallest position among the ties.
                typedef typename pivot_code_of<R>::type PivotCode;
                const PivotCode code_of_key(cabs1(r[0]), candidate);
                unsigned top_hi = 0u, top_lo;
                if constexpr (PivotCode::two_words) top_hi = __reduce_max_sync(0xffffffffu, code_of_key.hi);
                const bool hi_top = code_of_key.hi == top_hi;
                top_lo = __reduce_max_sync(0xffffffffu, hi_top ? code_of_key.lo : 0u);
                const bool at_top = hi_top && code_of_key.lo == top_lo;
                best_pos = (int)__reduce_min_sync(0xffffffffu, at_top ? (unsigned)pos : 0xffffffffu);
                is_pivot = pos == best_pos;
                active = !(top_hi == 0u && top_lo == PivotCode::zero);
            } else {
                // A butterfly over the group on (key, pos). Positions are
                // distinct and below 32, so (pos, row) packs into one word
                // that orders as pos does.
                R best = candidate ? pivot_key(r[0]) : R(-1);  // candidates' keys are >= -0.5
                unsigned best_at = (unsigned)(pos * 32 + row);
                GPUINV_UNROLL
                for (int off = G / 2; off > 0; off /= 2) {
                    R other = shfl_xor(best, off, G);
                    unsigned other_at = shfl_xor(best_at, off, G);
                    if (pivot_beats(other, (int)other_at, best, (int)best_at)) {
                        best = other;
                        best_at = other_at;
                    }
                }
                is_pivot = row == (int)(best_at % 32u);
                best_pos = (int)(best_at / 32u);
                // The pivot's key is cabs1(pivot), or -0.5 for NaN: nonzero
                // exactly when lu_row_step's `active` is true.
                active = best != R(0);
            }
            if (!active && code == 0) code = k + 1;
            // Interchange: the pivot row takes position k, the row that held
            // position k takes the pivot's old position.
            pos = is_pivot ? k : (pos == k ? best_pos : pos);
            const T inv = recip((is_pivot && active) ? r[0] : make_one<T>());
            T* prow = mine + k * LD;
            if (is_pivot) {
                prow[0] = inv;
                GPUINV_UNROLL
                for (int j = 1; j < N; ++j) prow[j] = r[j];
            }
            __syncwarp();
            const T l = mul(r[0], prow[0]);
            GPUINV_UNROLL
            for (int j = 1; j < N; ++j) r[j - 1] = fms(r[j], l, prow[j]);
            r[N - 1] = neg(l);
        }
        // Column `row` of U^-1 Y is column col_of_mine of the inverse: the
        // original index of the row now at position `row`, passed through
        // the slice's padding column.
        if (has_row) mine[pos * LD + N] = from_index<T>(row);
        __syncwarp();
        const int col_of_mine = has_row ? to_index(mine[row * LD + N]) : 0;
        T x[N];
        back_substitute_column_rotated<T, N>(mine, LD, row, x);  // lanes past N: a harmless dummy column
        // X goes straight to global memory: the group's lanes hold the N
        // columns of X, so each store writes one whole row of the inverse
        // (permuted among the lanes), as coalesced as a staged store.
        R a_norm = R(0), x_norm = R(0);
        if constexpr (RC) {
            // Each lane holds one column of X; the group's largest column
            // sums, NaN kept (a butterfly: every lane ends with both norms).
            R x_sum = R(0);
            if (has_row) {
                GPUINV_UNROLL
                for (int i = 0; i < N; ++i) x_sum += modulus(x[i]);
            }
            a_norm = a_sum;
            x_norm = x_sum;
            GPUINV_UNROLL
            for (int off = G / 2; off > 0; off /= 2) {
                a_norm = max_keep_nan(a_norm, shfl_xor(a_norm, off, G));
                x_norm = max_keep_nan(x_norm, shfl_xor(x_norm, off, G));
            }
        }
        if (has_row && grp < count) {
            T* dst = out + base + grp * NN + col_of_mine;
            GPUINV_UNROLL
            for (int i = 0; i < N; ++i) dst[i * N] = nonfinite ? make_nan<T>() : x[i];
            if (row == 0) {
                info[first + grp] = nonfinite ? -1 : code;
                if constexpr (RC) rcond[first + grp] = rcond_of(nonfinite ? -1 : code, a_norm, x_norm);
            }
        }
        __syncwarp();  // every lane has read U before the next chunk's loads overwrite the slice
    }
}

}  // namespace gpuinv

// --- the Hermitian positive definite inverse (Cholesky) ----------------------

#include "cholesky.cuh"

namespace gpuinv {

// The Cholesky inverse's math for thread_tiles: only the lower triangle is
// loaded (chol_invert_in_place reads no more: the lower triangle and the
// real part of the diagonal).
template <class T, int N, bool RC> struct CholInverse {
    typedef typename real_of<T>::type R;
    static constexpr bool stage_norm = true;
    static constexpr bool complex_alike = false;
    R* rcond;
    template <class At> __device__ __forceinline__ static T load(At at, int row, int col) {
        return col <= row ? at(row, col) : make_zero<T>();
    }
    template <class At> __device__ __forceinline__ static R norm_a(At at) { return hermitian_one_norm_at<T, N>(at); }
    template <class Put> __device__ __forceinline__ int operator()(long long i, T (&r)[N][N], R a_norm, Put put) const {
        const int code = chol_invert_in_place<T, N>(r);
        if constexpr (RC) rcond[i] = rcond_of(code, a_norm, one_norm<T, N>(r));
        GPUINV_UNROLL
        for (int e = 0; e < N * N; ++e) put(e, code != 0 ? make_nan<T>() : r[e / N][e % N]);
        return code;
    }
};

// One thread per matrix, the matrix's lower triangle in registers, in
// inv_thread's tile loop (thread_tiles, CholInverse); the whole inverse,
// exactly Hermitian, goes back. info follows potrf (k > 0: the leading
// minor of order k is not positive definite), -1 for NaN or Inf in the part
// read; for info != 0 the output is all NaN.
template <class T, int N, int B, bool RC = false>
__global__ void __launch_bounds__(B, 1)
    inv_chol_thread(const T* __restrict__ a, T* __restrict__ out, int* __restrict__ info, typename real_of<T>::type* __restrict__ rcond,
                    long long m) {
    thread_tiles<T, N, B, RC>(a, out, info, m, CholInverse<T, N, RC>{rcond});
}

}  // namespace gpuinv

// --- the triangular and diagonal inverses -------------------------------------

#include "triangular.cuh"

namespace gpuinv {

// The triangular inverse's math for thread_tiles. Only the triangle the
// structure names is loaded, into the lower triangle of `r`: as it is for
// LOWER, transposed for an upper triangular matrix, whose inverse is the
// transpose of (U^T)^-1 (a plain transpose: U^T is the transpose, not the
// conjugate transpose). With RC, r holds the triangle transposed for an
// upper matrix, so its 1-norm is r's infinity-norm (largest row sum), and
// X's too.
template <class T, int N, bool LOWER, bool RC> struct TriInverse {
    typedef typename real_of<T>::type R;
    static constexpr bool stage_norm = false;
    static constexpr bool complex_alike = false;
    R* rcond;
    template <class At> __device__ __forceinline__ static T load(At at, int row, int col) {
        return col <= row ? (LOWER ? at(row, col) : at(col, row)) : make_zero<T>();
    }
    // ||.||_1 of the matrix r holds (lower) or holds transposed (upper): the
    // infinity-norm as the 1-norm of the transpose, inf_norm's sums in its order.
    template <class At> __device__ __forceinline__ static R norm_a(At at) {
        return LOWER ? one_norm_at<T, N>(at) : one_norm_at<T, N>([&](int p, int q) { return at(q, p); });
    }
    template <class Put> __device__ __forceinline__ int operator()(long long i, T (&r)[N][N], R a_norm, Put put) const {
        const int code = tri_invert_in_place<T, N>(r);
        if constexpr (RC) rcond[i] = rcond_of(code, a_norm, LOWER ? one_norm<T, N>(r) : inf_norm<T, N>(r));
        GPUINV_UNROLL
        for (int e = 0; e < N * N; ++e)
            put(e, code != 0 ? make_nan<T>() : (LOWER ? r[e / N][e % N] : r[e % N][e / N]));
        return code;
    }
};

// One thread per matrix, in inv_thread's tile loop (thread_tiles,
// TriInverse). The whole inverse goes back, exact zeros in the other
// triangle. info follows trtri (k > 0: the first exactly zero diagonal
// element), -1 for NaN or Inf in the triangle read; for info != 0 the
// output is all NaN.
template <class T, int N, int B, bool LOWER, bool RC = false>
__global__ void __launch_bounds__(B, 1)
    inv_tri_thread(const T* __restrict__ a, T* __restrict__ out, int* __restrict__ info,
                   typename real_of<T>::type* __restrict__ rcond, long long m) {
    thread_tiles<T, N, B, RC>(a, out, info, m, TriInverse<T, N, LOWER, RC>{rcond});
}

// The diagonal inverse's math for thread_tiles: only the diagonal is
// loaded (n registers: the rest of `r` is zeros the compiler drops), and
// diag(1 / d) goes back whole, exact zeros elsewhere. With RC, rcond from
// the norms of diag(d) and diag(1 / d): their largest |d_j| and |1 / d_j|.
template <class T, int N, bool RC> struct DiagInverse {
    typedef typename real_of<T>::type R;
    static constexpr bool stage_norm = false;
    static constexpr bool complex_alike = false;
    R* rcond;
    template <class At> __device__ __forceinline__ static T load(At at, int row, int col) {
        return row == col ? at(row, col) : make_zero<T>();
    }
    template <class At> __device__ __forceinline__ static R norm_a(At at) {
        T d[N];
        GPUINV_UNROLL
        for (int j = 0; j < N; ++j) d[j] = at(j, j);
        return max_modulus<T, N>(d);
    }
    template <class Put> __device__ __forceinline__ int operator()(long long i, T (&r)[N][N], R a_norm, Put put) const {
        T d[N];
        GPUINV_UNROLL
        for (int j = 0; j < N; ++j) d[j] = r[j][j];
        const int code = diag_invert_in_place<T, N>(d);
        if constexpr (RC) rcond[i] = rcond_of(code, a_norm, max_modulus<T, N>(d));
        GPUINV_UNROLL
        for (int e = 0; e < N * N; ++e) put(e, code != 0 ? make_nan<T>() : (e / N == e % N ? d[e / N] : make_zero<T>()));
        return code;
    }
};

// One thread per matrix, in inv_thread's tile loop (thread_tiles,
// DiagInverse). The stage still moves every element in: the diagonal's
// elements lie in as many 32-byte sectors as the whole small matrix, so
// reading them alone would save no memory traffic, and the coalesced loads
// are the same code as the other kernels'. info: the first exactly zero
// d_k, -1 for NaN or Inf on the diagonal; for info != 0 the output is all NaN.
template <class T, int N, int B, bool RC = false>
__global__ void __launch_bounds__(B, 1)
    inv_diag_thread(const T* __restrict__ a, T* __restrict__ out, int* __restrict__ info,
                    typename real_of<T>::type* __restrict__ rcond, long long m) {
    thread_tiles<T, N, B, RC>(a, out, info, m, DiagInverse<T, N, RC>{rcond});
}

}  // namespace gpuinv

// --- the LU solve: A X = B ------------------------------------------------------

namespace gpuinv {

// One thread per system: A (m, N, N) and B, X (m, N, k), all C-contiguous.
// A is staged as inv_thread stages it (coalesced tile loads into the
// transposed stage; the smallest sizes stage-less, through direct_tiles),
// factored in registers by lu_factor (inverse.cuh: the LU inverse's pivots,
// U and info codes, bit for bit), and each right-hand side column j < k is
// solved by solve_column in a rolled loop: k is a run-time argument, so one
// instantiation serves every k, and the code stays the size of one column's
// solve. info is the LU inverse's (0; k > 0 exactly zero pivot at step k;
// -1 NaN or Inf in A); X is all NaN where info != 0, as the CUDA engine's
// cuBLAS route and the CPU engine write it. NaN or Inf in B only propagate.
//
// The right-hand sides:
// * k = 1: a tile's B is B * N contiguous elements, staged coalesced in the
//   same shared array after A (element r of system t at NN * LD + r * LD + t),
//   solved from there, X written back into it and stored coalesced.
// * k > 1: each thread reads its columns straight from global memory and
//   writes X straight back. Rows of B are k elements apart and consecutive
//   threads N * k apart, so one warp-wide access touches 32 separate sectors
//   for 32 useful elements: the loads of column j + 1 find the rest of each
//   sector in L1 only while it stays there (at worst DRAM moves 32 /
//   sizeof(T) bytes per useful byte), and every store is a partial-sector
//   write that L2 merges. A staged B for every k would need k times the
//   shared memory or a loop over column tiles; the k = 1 case, which the
//   issue's targets time, is the one staged.
template <class T, int N, int B>
__global__ void __launch_bounds__(B, 1)
    solve_thread(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ x, int* __restrict__ info,
                 long long m, int k) {
    constexpr int NN = N * N;
    // Column j of system i from global memory: x_j = A^-1 b_j for j < k.
    auto solve_columns = [&](long long i, const T (&r)[N][N], const int (&col)[N], int code) {
        const long long base = i * N * (long long)k;
        GPUINV_ROLLED
        for (int j = 0; j < k; ++j) {
            T y[N];
            solve_column<T, N>(r, col, [&](int row) { return b[base + (long long)row * k + j]; }, y);
            GPUINV_UNROLL
            for (int row = 0; row < N; ++row) x[base + (long long)row * k + j] = code != 0 ? make_nan<T>() : y[row];
        }
    };
    if constexpr (NN * (int)sizeof(T) <= THREAD_DIRECT_BYTES) {
        direct_tiles<T, N, B>(
            m, [&](long long i, int row, int col) { return a[i * NN + row * N + col]; },
            [&](long long i, T (&r)[N][N]) {
                int col[N];
                const int code = lu_factor<T, N>(r, col);
                solve_columns(i, r, col, code);
                info[i] = code;
            });
    } else {
        // The stage holds A and, for k = 1, b after it: element r of system
        // t's b at slot NN + r of its column.
        staged_tiles<T, NN + N, B>(
            m,
            [&](T* stage, int t, long long first, int count) {
                stage_in<T, NN, B>(stage, a + first * NN, t, count * NN);
                if (k == 1) stage_in<T, N, B>(stage + NN * (B + 1), b + first * N, t, count * N);
            },
            [&](long long i, StageColumn<T, B + 1> slot) {
                T r[N][N];
                int col[N];
                GPUINV_UNROLL
                for (int row = 0; row < N; ++row) {
                    GPUINV_UNROLL
                    for (int c = 0; c < N; ++c) r[row][c] = slot(row * N + c);
                }
                const int code = lu_factor<T, N>(r, col);
                if (k == 1) {
                    T y[N];
                    solve_column<T, N>(r, col, [&](int row) { return slot(NN + row); }, y);
                    GPUINV_UNROLL
                    for (int row = 0; row < N; ++row) slot(NN + row) = code != 0 ? make_nan<T>() : y[row];
                } else {
                    solve_columns(i, r, col, code);
                }
                info[i] = code;
            },
            [&](T* stage, int t, long long first, int count) {
                stage_out<T, N, B>(stage + NN * (B + 1), x + first * N, t, count * N);
            },
            k == 1);
    }
}

}  // namespace gpuinv
