// cuda_emu.h: just enough of CUDA to run gpuinv's kernels, unchanged, as host C++.
//
// tests/_cuda_emu.py compiles gpuinv/kernels/kernels.cu (which includes
// inverse.cuh) after this header with g++, under AddressSanitizer and UBSan,
// a few instantiations per executable (emu_main.cpp, emu_table.h), and runs
// one of them on exact-size heap buffers with the grid and block that the Python launcher
// computes.
//
// Execution model
// ---------------
// * Every CUDA thread is a fiber with its own stack. One block runs at a time;
//   its threads run one at a time, each until it reaches a synchronization
//   point (a block barrier or a warp collective) or returns. Blocks of a
//   launch run one after another: the kernels never communicate between
//   blocks.
// * The order in which the runnable threads of a block are resumed is a
//   parameter: forward, reverse, or a fresh random permutation at every
//   round. Running "until the next synchronization point" means a thread that
//   lacks a barrier between writing shared memory and reading what other
//   threads wrote reads stale data in one of the orders; emu_main.cpp runs
//   each launch in several orders and requires identical bits.
// * __syncthreads is a block barrier: every thread of the block must reach the
//   same __syncthreads (same source line) before any goes on. A thread that
//   returns while others wait there is an error, as is a deadlock.
// * __syncwarp, __shfl_sync, __shfl_xor_sync, __ballot_sync and
//   __reduce_max_sync/__reduce_min_sync (unsigned) are lockstep
//   exchanges: a lane waits until every lane named in the mask has reached a
//   collective, then all of them must agree on the operation, the mask and
//   the width, or the launch fails naming the lanes and source lines. A lane
//   named in a mask that has returned, or that waits at a block barrier
//   instead, is an error too: on a GPU either is undefined behaviour (a hang
//   or garbage), here it is a clear message and exit status 3.
// * Shuffles follow PTX's shfl.sync semantics for the width segments: the
//   idx form reads lane (lane & ~(w-1)) | (src & (w-1)); the bfly (xor) form
//   reads lane ^ mask when that lane is not past the end of the caller's
//   segment, else the caller's own value. Reading a lane outside the mask is
//   an error (undefined on a GPU).
// * __shared__ arrays become `extern` declarations; a unit that
//   tests/_cuda_emu.py generates defines them as plain globals of the instantiation's exact shared size, so
//   AddressSanitizer bounds every access to them. They are filled with 0xFF
//   bytes (NaN for every floating type) before each block starts, so a read
//   of shared memory that the block never wrote shows up as NaN.
//
// Limits: a collective here is a full rendezvous, so shared-memory writes
// before it are visible after it; on a GPU only __syncwarp/__syncthreads
// order memory. A __syncwarp whose work another collective happens to do is
// therefore not detected as missing. Only 1-D grids and blocks are modelled.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace emu {

[[noreturn]] inline void fail(const std::string& message) {
    std::fprintf(stderr, "cuda_emu: error: %s\n", message.c_str());
    std::fflush(stderr);
    std::exit(3);
}

enum class Op : int { running, syncthreads, syncwarp, shfl_idx, shfl_xor, ballot, reduce_max, reduce_min, done };

inline const char* op_name(Op op) {
    switch (op) {
        case Op::running: return "running";
        case Op::syncthreads: return "__syncthreads";
        case Op::syncwarp: return "__syncwarp";
        case Op::shfl_idx: return "__shfl_sync";
        case Op::shfl_xor: return "__shfl_xor_sync";
        case Op::ballot: return "__ballot_sync";
        case Op::reduce_max: return "__reduce_max_sync";
        case Op::reduce_min: return "__reduce_min_sync";
        case Op::done: return "return";
    }
    return "?";
}

inline bool is_warp_collective(Op op) {
    return op == Op::syncwarp || op == Op::shfl_idx || op == Op::shfl_xor || op == Op::ballot ||
           op == Op::reduce_max || op == Op::reduce_min;
}

struct Thread {
    uint3 idx{0, 0, 0};
    int lane = 0;
    int warp = 0;
    Op op = Op::running;
    int line = 0;
    unsigned mask = 0;
    int width = 32;
    int arg = 0;
    std::uint64_t value = 0;
    std::uint64_t result = 0;
    // Fiber state.
    char* stack = nullptr;
    std::size_t stack_size = 0;
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t ctx;
#endif
    void* fake_stack = nullptr;
};

enum class Order : int { forward = 0, reverse = 1, shuffle = 2 };

struct Launch {
    Order order = Order::forward;
    unsigned seed = 0;
    unsigned char* shared = nullptr;  // this instantiation's shared memory (tests/_cuda_emu.py)
    std::size_t shared_bytes = 0;
};

inline uint3 g_block_idx{0, 0, 0};
inline dim3 g_block_dim;
inline dim3 g_grid_dim;
inline Thread* g_current = nullptr;

inline const uint3& current_thread_idx() { return g_current->idx; }

// --- fibers ------------------------------------------------------------------

#if defined(__x86_64__)
// switch_stack(save, next): push the callee-saved registers, store the stack
// pointer in *save, load `next` and pop the registers saved there. A new
// fiber's stack is laid out so that the pops take zeros and the `ret` enters
// fiber_entry with the stack aligned as after a call. Weak: every object of
// an executable that includes this header defines it (tests/_cuda_emu.py
// links the runtime and the kernels' objects together).
extern "C" void emu_switch_stack(void** save, void* next);
asm(R"(
    .text
    .weak emu_switch_stack
    .type emu_switch_stack, @function
emu_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_stack, .-emu_switch_stack
)");
#endif

class Block;
inline Block* g_block = nullptr;

class Block {
  public:
    static constexpr std::size_t kStackBytes = 512 * 1024;

    template <class Body>
    Block(int threads, const Launch& launch, Body* body)
        : threads_(threads), launch_(launch), body_(body), run_(&Block::call<Body>), rng_(launch.seed) {
        pool().resize(std::max<std::size_t>(pool().size(), (std::size_t)threads));
        for (int t = 0; t < threads; ++t) {
            Thread& th = pool()[t];
            if (th.stack == nullptr) {
                th.stack_size = kStackBytes;
                th.stack = static_cast<char*>(std::malloc(th.stack_size));
                if (th.stack == nullptr) fail("out of memory for fiber stacks");
            }
        }
    }

    void run() {
        if (launch_.shared) std::memset(launch_.shared, 0xFF, launch_.shared_bytes);
        for (int t = 0; t < threads_; ++t) start(pool()[t], t);
        std::vector<int> ready;
        for (;;) {
            ready.clear();
            for (int t = 0; t < threads_; ++t)
                if (pool()[t].op == Op::running) ready.push_back(t);
            if (ready.empty()) {
                if (all_done()) return;
                if (!release()) deadlock();
                continue;
            }
            if (launch_.order == Order::reverse) std::reverse(ready.begin(), ready.end());
            if (launch_.order == Order::shuffle) std::shuffle(ready.begin(), ready.end(), rng_);
            for (int t : ready) resume(pool()[t]);
        }
    }

    // Called on a thread's fiber: record what it waits for and yield.
    void wait(Op op, int line, unsigned mask, int width, int arg, std::uint64_t value) {
        Thread& th = *g_current;
        th.op = op;
        th.line = line;
        th.mask = mask;
        th.width = width;
        th.arg = arg;
        th.value = value;
        yield(th);
    }

  private:
    static std::vector<Thread>& pool() {
        // Never destroyed, so the fiber stacks stay reachable (no leak report).
        static std::vector<Thread>* threads = new std::vector<Thread>();
        return *threads;
    }

    template <class Body>
    static void call(void* body) {
        (*static_cast<Body*>(body))();
    }

    bool all_done() const {
        for (int t = 0; t < threads_; ++t)
            if (pool()[t].op != Op::done) return false;
        return true;
    }

    std::string where(int t) const {
        const Thread& th = pool()[t];
        char buf[160];
        if (th.op == Op::done)
            std::snprintf(buf, sizeof buf, "thread %d (warp %d lane %d) has returned", t, th.warp, th.lane);
        else
            std::snprintf(buf, sizeof buf, "thread %d (warp %d lane %d) waits at %s (line %d, mask 0x%08x)", t,
                          th.warp, th.lane, op_name(th.op), th.line, th.mask);
        return buf;
    }

    std::string block_name() const {
        char buf[64];
        std::snprintf(buf, sizeof buf, "block %u: ", g_block_idx.x);
        return buf;
    }

    // Complete whatever can complete; false if nothing could.
    bool release() {
        bool any = false;
        // Warp collectives.
        for (int t = 0; t < threads_; ++t) {
            Thread& th = pool()[t];
            if (!is_warp_collective(th.op)) continue;
            const int base = th.warp * 32;
            if (!(th.mask >> th.lane & 1u))
                fail(block_name() + where(t) + ", but its own lane is not in the mask");
            bool complete = true;
            for (int l = 0; l < 32; ++l) {
                if (!(th.mask >> l & 1u)) continue;
                const int u = base + l;
                if (u >= threads_)
                    fail(block_name() + where(t) + ", which names lane " + std::to_string(l) +
                         " past the end of the block");
                const Thread& other = pool()[u];
                if (other.op == Op::running) {
                    complete = false;
                    continue;
                }
                if (other.op == Op::done || other.op == Op::syncthreads)
                    fail(block_name() + "divergent warp: " + where(t) + ", but " + where(u) +
                         " (lanes must reach the same collectives)");
                if (other.op != th.op || other.mask != th.mask || other.width != th.width)
                    fail(block_name() + "divergent warp: " + where(t) + ", but " + where(u) +
                         " (lanes must execute the same collective with the same mask and width)");
            }
            if (!complete) continue;
            exchange(th);
            any = true;
        }
        if (any) return true;
        // The block barrier.
        int first = -1;
        for (int t = 0; t < threads_; ++t) {
            const Thread& th = pool()[t];
            if (th.op != Op::syncthreads) continue;
            if (first < 0) first = t;
            if (th.line != pool()[first].line)
                fail(block_name() + "threads reached different __syncthreads: " + where(first) + ", " + where(t));
        }
        if (first < 0) return false;
        for (int t = 0; t < threads_; ++t) {
            const Thread& th = pool()[t];
            if (th.op == Op::done)
                fail(block_name() + where(first) + ", but " + where(t) +
                     " (every thread of the block must reach each __syncthreads)");
            if (th.op != Op::syncthreads) return false;
        }
        for (int t = 0; t < threads_; ++t) pool()[t].op = Op::running;
        return true;
    }

    // Every lane of th's mask waits at the same collective: compute and release.
    void exchange(const Thread& th) {
        const int base = th.warp * 32;
        const unsigned mask = th.mask;
        const Op op = th.op;
        unsigned ballot = 0;
        if (op == Op::ballot) {
            for (int l = 0; l < 32; ++l)
                if ((mask >> l & 1u) && pool()[base + l].value != 0) ballot |= 1u << l;
        }
        // redux.sync: the unsigned maximum or minimum over the mask's lanes.
        unsigned reduced = op == Op::reduce_max ? 0u : 0xffffffffu;
        if (op == Op::reduce_max || op == Op::reduce_min) {
            for (int l = 0; l < 32; ++l) {
                if (!(mask >> l & 1u)) continue;
                const unsigned v = (unsigned)pool()[base + l].value;
                reduced = op == Op::reduce_max ? (v > reduced ? v : reduced) : (v < reduced ? v : reduced);
            }
        }
        std::uint64_t results[32];
        for (int l = 0; l < 32; ++l) {
            if (!(mask >> l & 1u)) continue;
            const Thread& me = pool()[base + l];
            if (op == Op::shfl_idx || op == Op::shfl_xor) {
                const int w = me.width;
                if (w < 1 || w > 32 || (w & (w - 1)) != 0)
                    fail(block_name() + where(base + l) + " with width " + std::to_string(w) +
                         " (must be a power of two, at most 32)");
                const int seg = l & ~(w - 1);
                int src;
                if (op == Op::shfl_idx) {
                    src = seg | (me.arg & (w - 1));
                } else {
                    src = l ^ (me.arg & 31);
                    if (src > (seg | (w - 1))) src = l;  // past the segment: own value
                }
                if (!(mask >> src & 1u))
                    fail(block_name() + where(base + l) + " reads lane " + std::to_string(src) +
                         ", which is not in the mask");
                results[l] = pool()[base + src].value;
            } else if (op == Op::ballot) {
                results[l] = ballot;
            } else if (op == Op::reduce_max || op == Op::reduce_min) {
                results[l] = reduced;
            } else {
                results[l] = 0;
            }
        }
        for (int l = 0; l < 32; ++l) {
            if (!(mask >> l & 1u)) continue;
            Thread& me = pool()[base + l];
            me.result = results[l];
            me.op = Op::running;
        }
    }

    [[noreturn]] void deadlock() const {
        std::string msg = block_name() + "deadlock: no thread can go on;";
        int shown = 0;
        for (int t = 0; t < threads_ && shown < 8; ++t) {
            if (pool()[t].op == Op::done) continue;
            msg += " " + where(t) + ";";
            ++shown;
        }
        fail(msg);
    }

    // --- switching -------------------------------------------------------------

    static void entry() {
        Block* self = g_block;
        Thread& th = *g_current;
#if EMU_ASAN
        __sanitizer_finish_switch_fiber(nullptr, &self->main_bottom_, &self->main_size_);
#endif
        self->run_(self->body_);
        th.op = Op::done;
#if EMU_ASAN
        __sanitizer_start_switch_fiber(nullptr, self->main_bottom_, self->main_size_);
#endif
#if defined(__x86_64__)
        void* dead;
        emu_switch_stack(&dead, self->main_sp_);
#else
        setcontext(&self->main_ctx_);
#endif
        __builtin_unreachable();
    }

    void start(Thread& th, int t) {
        th.idx = uint3{(unsigned)t, 0, 0};
        th.lane = t % 32;
        th.warp = t / 32;
        th.op = Op::running;
        th.fake_stack = nullptr;
#if EMU_ASAN
        // A fiber ends by switching away, never returning from entry(): without
        // optimization entry()'s frame has redzones, left poisoned on the stack
        // that the next block's fiber reuses.
        __asan_unpoison_memory_region(th.stack, th.stack_size);
#endif
#if defined(__x86_64__)
        auto top = reinterpret_cast<std::uintptr_t>(th.stack + th.stack_size) & ~std::uintptr_t(15);
        auto* sp = reinterpret_cast<std::uintptr_t*>(top);
        *--sp = 0;                                                // entry's return address: never used
        *--sp = reinterpret_cast<std::uintptr_t>(&Block::entry);  // taken by `ret`
        for (int i = 0; i < 6; ++i) *--sp = 0;                    // rbp rbx r12 r13 r14 r15
        th.sp = sp;
#else
        getcontext(&th.ctx);
        th.ctx.uc_stack.ss_sp = th.stack;
        th.ctx.uc_stack.ss_size = th.stack_size;
        th.ctx.uc_link = nullptr;
        makecontext(&th.ctx, &Block::entry, 0);
#endif
    }

    void resume(Thread& th) {
        g_current = &th;
        g_block = this;
#if EMU_ASAN
        void* fake = nullptr;
        __sanitizer_start_switch_fiber(&fake, th.stack, th.stack_size);
#endif
#if defined(__x86_64__)
        emu_switch_stack(&main_sp_, th.sp);
#else
        swapcontext(&main_ctx_, &th.ctx);
#endif
#if EMU_ASAN
        __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
        g_current = nullptr;
    }

    void yield(Thread& th) {
#if EMU_ASAN
        __sanitizer_start_switch_fiber(&th.fake_stack, main_bottom_, main_size_);
#endif
#if defined(__x86_64__)
        emu_switch_stack(&th.sp, main_sp_);
#else
        swapcontext(&th.ctx, &main_ctx_);
#endif
#if EMU_ASAN
        __sanitizer_finish_switch_fiber(th.fake_stack, &main_bottom_, &main_size_);
#endif
    }

    int threads_;
    Launch launch_;
    void* body_;
    void (*run_)(void*);
    std::mt19937 rng_;
#if defined(__x86_64__)
    void* main_sp_ = nullptr;
#else
    ucontext_t main_ctx_;
#endif
    const void* main_bottom_ = nullptr;
    std::size_t main_size_ = 0;
};

// Run `body` (a call of the kernel with its arguments) as a 1-D launch.
template <class Body>
void launch(dim3 grid, dim3 block, const Launch& how, Body body) {
    if (grid.y != 1 || grid.z != 1 || block.y != 1 || block.z != 1) fail("only 1-D launches are emulated");
    if (grid.x < 1 || block.x < 1 || block.x > 1024) fail("invalid launch configuration");
    g_grid_dim = grid;
    g_block_dim = block;
    Block blk((int)block.x, how, &body);
    for (unsigned b = 0; b < grid.x; ++b) {
        g_block_idx = uint3{b, 0, 0};
        blk.run();
    }
}

// --- the device functions ----------------------------------------------------

template <class V>
inline std::uint64_t to_bits(V v) {
    static_assert(sizeof(V) <= 8, "shuffles move at most 64 bits");
    std::uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(V));
    return bits;
}

template <class V>
inline V from_bits(std::uint64_t bits) {
    V v;
    std::memcpy(&v, &bits, sizeof(V));
    return v;
}

inline void check_warp_mask(unsigned mask, const char* what, int line) {
    if (mask == 0) fail(std::string(what) + " at line " + std::to_string(line) + " with an empty mask");
}

inline void syncthreads(int line) { g_block->wait(Op::syncthreads, line, 0, 0, 0, 0); }

inline void syncwarp(int line, unsigned mask = 0xffffffffu) {
    check_warp_mask(mask, "__syncwarp", line);
    g_block->wait(Op::syncwarp, line, mask, 32, 0, 0);
}

template <class V>
inline V shfl_idx(int line, unsigned mask, V v, int src, int width = 32) {
    check_warp_mask(mask, "__shfl_sync", line);
    g_block->wait(Op::shfl_idx, line, mask, width, src, to_bits(v));
    return from_bits<V>(g_current->result);
}

template <class V>
inline V shfl_xor(int line, unsigned mask, V v, int lane_mask, int width = 32) {
    check_warp_mask(mask, "__shfl_xor_sync", line);
    g_block->wait(Op::shfl_xor, line, mask, width, lane_mask, to_bits(v));
    return from_bits<V>(g_current->result);
}

inline unsigned ballot(int line, unsigned mask, int predicate) {
    check_warp_mask(mask, "__ballot_sync", line);
    g_block->wait(Op::ballot, line, mask, 32, 0, predicate != 0);
    return (unsigned)g_current->result;
}

inline unsigned reduce(Op op, int line, unsigned mask, unsigned value) {
    check_warp_mask(mask, op_name(op), line);
    g_block->wait(op, line, mask, 32, 0, value);
    return (unsigned)g_current->result;
}

}  // namespace emu

// --- CUDA's names ------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ extern
#define threadIdx (::emu::current_thread_idx())
#define blockIdx (::emu::g_block_idx)
#define blockDim (::emu::g_block_dim)
#define gridDim (::emu::g_grid_dim)
#define __syncthreads() ::emu::syncthreads(__LINE__)
#define __syncwarp(...) ::emu::syncwarp(__LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_sync(...) ::emu::shfl_idx(__LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) ::emu::shfl_xor(__LINE__, __VA_ARGS__)
#define __ballot_sync(mask, predicate) ::emu::ballot(__LINE__, (mask), (predicate))
#define __reduce_max_sync(mask, value) ::emu::reduce(::emu::Op::reduce_max, __LINE__, (mask), (unsigned)(value))
#define __reduce_min_sync(mask, value) ::emu::reduce(::emu::Op::reduce_min, __LINE__, (mask), (unsigned)(value))

inline unsigned __float_as_uint(float x) { return ::emu::from_bits<unsigned>(::emu::to_bits(x)); }
inline long long __double_as_longlong(double x) { return ::emu::from_bits<long long>(::emu::to_bits(x)); }

inline int __ffs(int x) { return __builtin_ffs(x); }
