// The kernels of one emulation executable, as the runtime (emu_main.cpp) sees them.
//
// tests/_cuda_emu.py generates, per executable, one translation unit that
// includes kernels.cu once per instantiation, each time inside a namespace
// of its own (emu_k0, emu_k1, ...: their `__shared__` arrays, which
// cuda_emu.h turns into `extern` declarations, are then distinct globals of
// each instantiation's exact size), and defines `emu_kernels`: one entry per
// instantiation. A second generated unit defines the shared arrays.
#pragma once

#include <cstddef>

// The kernel's arguments, untyped: the entry's `call` casts them to its element type.
struct EmuArgs {
    const void* a;
    const void* b;  // the right-hand sides, or null
    void* out;
    int* info;
    void* rcond;  // null where the kernel writes none
    long long m;
    int k;
};

struct EmuKernel {
    const char* name;                   // the template-id (gpuinv.kernels.KernelSpec.name_expression)
    void (*call)(const EmuArgs&);       // calls the kernel with its arguments in its order
    unsigned char* const* shared;       // its __shared__ arrays (null-terminated); [0] is poisoned per block
    std::size_t shared_bytes;           // KernelSpec.shared_bytes (at least 1): each array's exact size
    std::size_t elem_bytes;             // sizeof(T)
    std::size_t real_bytes;             // sizeof(real_of<T>::type), rcond's element
};

extern "C" const EmuKernel emu_kernels[];
extern "C" const int emu_kernel_count;
