// gpuinv: batched inversion kernels for small matrices.
//
// gpuinv/kernels/__init__.py prepends inverse.cuh to this text (in place of
// the #include below) and compiles it with NVRTC, one (dtype, n) at a time.
// Both kernels take a C-contiguous (m, n, n) stack `a`, write its inverses to
// `out` (same layout) and one info code per matrix to `info`, and never read
// or write past matrix m - 1. Offsets into the stack are 64-bit; the block
// (or warp) loops over tiles so any m works with a capped grid.
//
// __launch_bounds__(threads, 1): without the minimum-blocks hint ptxas
// trades a few registers for small spills in about one kernel in ten (seen
// with NVRTC 12.9 on sm_80 and sm_90); with it, ptxas keeps everything in
// registers, which `python -m gpuinv.kernels --check` verifies.
#include "inverse.cuh"

namespace gpuinv {

// One thread per matrix, the matrix in registers.
//
// A block of B threads inverts B consecutive matrices per tile. The tile is
// loaded from global memory with consecutive threads reading consecutive
// elements (coalesced) into shared memory, stored there transposed
// (element e of matrix t at e * (B + 1) + t, the +1 avoiding bank
// conflicts), so that each thread then reads its own matrix without bank
// conflicts. The result goes back the same way, the column permutation of
// partial pivoting applied on the way into shared memory.
template <class T, int N, int B>
__global__ void __launch_bounds__(B, 1)
    inv_thread(const T* __restrict__ a, T* __restrict__ out, int* __restrict__ info, long long m) {
    constexpr int NN = N * N;
    constexpr int LD = B + 1;
    __shared__ T stage[NN * LD];
    const int t = threadIdx.x;
    const long long tiles = (m + B - 1) / B;
    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const long long first = tile * B;
        const int count = (m - first) < B ? (int)(m - first) : B;
        const long long base = first * NN;
        for (int g = t; g < count * NN; g += B) {
            int mat = g / NN;
            stage[(g - mat * NN) * LD + mat] = a[base + g];
        }
        __syncthreads();
        if (t < count) {
            T r[N][N];
            int col[N];
            GPUINV_UNROLL
            for (int i = 0; i < N; ++i) {
                GPUINV_UNROLL
                for (int j = 0; j < N; ++j) r[i][j] = stage[(i * N + j) * LD + t];
            }
            int code = invert_in_place<T, N>(r, col);
            // Only thread t touches column t of the stage, so no barrier is
            // needed between its reads above and its writes here.
            GPUINV_UNROLL
            for (int i = 0; i < N; ++i) {
                GPUINV_UNROLL
                for (int c = 0; c < N; ++c)
                    stage[(i * N + col[c]) * LD + t] = code == -1 ? make_nan<T>() : r[i][c];
            }
            info[first + t] = code;
        }
        __syncthreads();
        for (int g = t; g < count * NN; g += B) {
            int mat = g / NN;
            out[base + g] = stage[(g - mat * NN) * LD + mat];
        }
        __syncthreads();  // the next tile's loads overwrite the stage
    }
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

// A group of G lanes (G a power of two, N <= G <= 32) per matrix, 32 / G
// matrices per warp, W warps per block. Each warp stages its matrices
// through its own slice of shared memory (rows padded to N + 1), so global
// loads and stores are coalesced and only __syncwarp is needed.
//
// Phase 1 (LU and L^-1 P): one row per lane. Rows never move between lanes:
// an interchange only swaps the two lanes' `pos` (the row's position in the
// pivoted order). The pivot search is a butterfly arg-max over the group on
// (pivot_key, pos); the pivot row is broadcast one element at a time by
// shuffles, so only one element of it is live in registers; each lane
// updates its own row with lu_row_step, as the one-thread kernel does.
// Phase 2 (X = U^-1 Y): the lanes write their rows back to the slice in
// pivoted order and then each lane solves one column with
// back_substitute_column, reading U from shared memory (a broadcast: all
// lanes read the same element). Lanes past N only take part in the
// shuffles.
template <class T, int N, int G, int W>
__global__ void __launch_bounds__(32 * W, 1)
    inv_group(const T* __restrict__ a, T* __restrict__ out, int* __restrict__ info, long long m) {
    typedef typename real_of<T>::type R;
    constexpr int NN = N * N;
    constexpr int MPW = 32 / G;  // matrices per warp
    constexpr int LD = N + 1;
    constexpr int SLICE = MPW * N * LD;
    __shared__ T stage[W * SLICE];
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
        for (int g = lane; g < MPW * NN; g += 32) {
            int mat = g / NN;
            int e = g - mat * NN;
            int i = e / N;
            // Matrices past m are zeros: they run through the elimination
            // (every lane must) but are never written back.
            s[mat * N * LD + i * LD + (e - i * N)] = mat < count ? a[base + g] : make_zero<T>();
        }
        __syncwarp();
        T r[N];
        GPUINV_UNROLL
        for (int j = 0; j < N; ++j) r[j] = has_row ? mine[row * LD + j] : make_zero<T>();
        const bool bad = has_row && !row_is_finite(r);
        const bool nonfinite = (__ballot_sync(0xffffffffu, bad) & gmask) != 0u;
        int pos = row;  // lanes past N keep pos >= N: never a candidate, never matched
        int code = 0;
        GPUINV_UNROLL
        for (int k = 0; k < N; ++k) {
            // Rows already used as pivots, and lanes without a row, rank below
            // every candidate (whose key is >= -0.5).
            R best = (has_row && pos >= k) ? pivot_key(r[k]) : R(-1);
            int best_pos = pos;
            int best_row = row;
            GPUINV_UNROLL
            for (int off = G / 2; off > 0; off /= 2) {
                R other = shfl_xor(best, off, G);
                int other_pos = shfl_xor(best_pos, off, G);
                int other_row = shfl_xor(best_row, off, G);
                if (pivot_beats(other, other_pos, best, best_pos)) {
                    best = other;
                    best_pos = other_pos;
                    best_row = other_row;
                }
            }
            const bool is_pivot = row == best_row;
            // Interchange: the pivot row takes position k, the row that held
            // position k takes the pivot's old position.
            pos = is_pivot ? k : (pos == k ? best_pos : pos);
            const T piv = shfl(r[k], best_row, G);
            const bool active = cabs1(piv) != R(0);
            if (!active && code == 0) code = k + 1;
            const T inv = active ? recip(piv) : make_one<T>();
            lu_row_step<T, N>(r, k, has_row && pos > k, is_pivot, active, inv,
                              [&](int j) { return shfl(r[j], best_row, G); });
        }
        // The original index of the row now at position `row`: phase 2's
        // column `row` of U^-1 Y is column col_of_mine of the inverse.
        int col_of_mine = 0;
        GPUINV_UNROLL
        for (int c = 0; c < N; ++c) {
            unsigned at_c = __ballot_sync(0xffffffffu, has_row && pos == c) & gmask;
            if (row == c) col_of_mine = __ffs(at_c) - 1 - grp * G;
        }
        __syncwarp();  // every lane has read its input row from the slice
        if (has_row) {
            GPUINV_UNROLL
            for (int j = 0; j < N; ++j) mine[pos * LD + j] = r[j];
        }
        __syncwarp();
        T x[N];
        back_substitute_column<T, N>(mine, LD, row, x);  // lanes past N: a harmless dummy column
        __syncwarp();  // every lane has read U before the slice takes X
        if (has_row) {
            GPUINV_UNROLL
            for (int i = 0; i < N; ++i) mine[i * LD + col_of_mine] = nonfinite ? make_nan<T>() : x[i];
        }
        if (row == 0 && grp < count) info[first + grp] = nonfinite ? -1 : code;
        __syncwarp();
        for (int g = lane; g < count * NN; g += 32) {
            int mat = g / NN;
            int e = g - mat * NN;
            int i = e / N;
            out[base + g] = s[mat * N * LD + i * LD + (e - i * N)];
        }
        __syncwarp();  // the next chunk's loads overwrite the slice
    }
}

}  // namespace gpuinv

// --- the Hermitian positive definite inverse (Cholesky) ----------------------

#include "cholesky.cuh"

namespace gpuinv {

// One thread per matrix, the matrix's lower triangle in registers; the
// staging is inv_thread's (coalesced tile loads into a transposed shared
// stage, B + 1 against bank conflicts). chol_invert_in_place (cholesky.cuh)
// reads only the lower triangle and the real part of the diagonal, so
// only those are taken from the stage; the whole inverse, exactly
// Hermitian, goes back. info follows potrf (k > 0: the leading minor of
// order k is not positive definite), -1 for NaN or Inf in the part read;
// for info != 0 the output is all NaN.
template <class T, int N, int B>
__global__ void __launch_bounds__(B, 1)
    inv_chol_thread(const T* __restrict__ a, T* __restrict__ out, int* __restrict__ info, long long m) {
    constexpr int NN = N * N;
    constexpr int LD = B + 1;
    // Named as inv_thread's stage: the CPU emulation maps every kernel's
    // `stage` to one buffer of the instantiation's size (tests/cuda_emu).
    __shared__ T stage[NN * LD];
    const int t = threadIdx.x;
    const long long tiles = (m + B - 1) / B;
    for (long long tl = blockIdx.x; tl < tiles; tl += gridDim.x) {
        const long long first = tl * B;
        const int count = (m - first) < B ? (int)(m - first) : B;
        const long long off = first * NN;
        for (int g = t; g < count * NN; g += B) {
            int mat = g / NN;
            stage[(g - mat * NN) * LD + mat] = a[off + g];
        }
        __syncthreads();
        // Threads past the stack's end only take part in the barriers.
        if (t < count) {
            T r[N][N];
            GPUINV_UNROLL
            for (int i = 0; i < N; ++i) {
                GPUINV_UNROLL
                for (int j = 0; j < N; ++j)
                    r[i][j] = j <= i ? stage[(i * N + j) * LD + t] : make_zero<T>();
            }
            int code = chol_invert_in_place<T, N>(r);
            // Only thread t touches column t of the stage.
            GPUINV_UNROLL
            for (int i = 0; i < N; ++i) {
                GPUINV_UNROLL
                for (int j = 0; j < N; ++j)
                    stage[(i * N + j) * LD + t] = code != 0 ? make_nan<T>() : r[i][j];
            }
            info[first + t] = code;
        }
        __syncthreads();
        for (int g = t; g < count * NN; g += B) {
            int mat = g / NN;
            out[off + g] = stage[(g - mat * NN) * LD + mat];
        }
        __syncthreads();  // the next tile's loads overwrite the stage
    }
}

}  // namespace gpuinv
