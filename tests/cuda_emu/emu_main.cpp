// One kernel instantiation of gpuinv/kernels/kernels.cu, run on the CPU.
//
// Built by tests/_cuda_emu.py with
//   -DEMU_T=<element type>  -DEMU_KERNEL=<template-id, e.g. gpuinv::inv_thread<double, 4, 128>>
// and linked with emu_shared.cpp. kernels.cu (and inverse.cuh, which it
// includes) are compiled unchanged after cuda_emu.h.
//
// Usage: emu_kernel M GRID BLOCK ORDERS IN OUT INFO
//   M       matrices in the stack; IN holds M * N * N elements of EMU_T
//   ORDERS  comma-separated thread orders: f (forward), r (reverse), sSEED
//           (a random permutation per round, seeded)
// The stack is read into an exact-size heap allocation. The kernel runs once
// per order, each time into fresh exact-size `out` and `info` buffers that
// are pre-filled with 0xA5 bytes; all runs must give the same bits, and the
// input must be unchanged. The first run's out and info are written to OUT
// and INFO. Exit status: 0 ok, 2 usage or I/O error, 3 an emulation error
// (divergent collectives, deadlock), 4 results differ between orders, 5 the
// input was written; AddressSanitizer and UBSan abort on their own.
#include "cuda_emu.h"

#include "kernels.cu"

extern "C" unsigned char* emu_shared_arrays[];
extern "C" const std::size_t emu_shared_bytes;

namespace {

using T = EMU_T;

std::vector<unsigned char> read_file(const char* path) {
    std::vector<unsigned char> data;
    FILE* f = std::fopen(path, "rb");
    if (!f) {
        std::fprintf(stderr, "cuda_emu: cannot open %s\n", path);
        std::exit(2);
    }
    unsigned char buf[1 << 16];
    std::size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) data.insert(data.end(), buf, buf + got);
    std::fclose(f);
    return data;
}

void write_file(const char* path, const void* data, std::size_t bytes) {
    FILE* f = std::fopen(path, "wb");
    if (!f || (bytes && std::fwrite(data, 1, bytes, f) != bytes)) {
        std::fprintf(stderr, "cuda_emu: cannot write %s\n", path);
        std::exit(2);
    }
    std::fclose(f);
}

emu::Launch parse_order(const std::string& word) {
    emu::Launch how;
    if (word == "f") {
        how.order = emu::Order::forward;
    } else if (word == "r") {
        how.order = emu::Order::reverse;
    } else if (word.size() > 1 && word[0] == 's') {
        how.order = emu::Order::shuffle;
        how.seed = (unsigned)std::strtoul(word.c_str() + 1, nullptr, 10);
    } else {
        std::fprintf(stderr, "cuda_emu: unknown order '%s'\n", word.c_str());
        std::exit(2);
    }
    return how;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 8) {
        std::fprintf(stderr, "usage: %s M GRID BLOCK ORDERS IN OUT INFO\n", argv[0]);
        return 2;
    }
    const long long m = std::atoll(argv[1]);
    const unsigned grid = (unsigned)std::strtoul(argv[2], nullptr, 10);
    const unsigned block = (unsigned)std::strtoul(argv[3], nullptr, 10);
    std::vector<std::string> orders;
    {
        std::string all = argv[4], word;
        for (char c : all + ",") {
            if (c == ',') {
                if (!word.empty()) orders.push_back(word);
                word.clear();
            } else {
                word += c;
            }
        }
    }
    if (m < 1 || orders.empty()) {
        std::fprintf(stderr, "cuda_emu: need M >= 1 and at least one order\n");
        return 2;
    }
    std::vector<unsigned char> input = read_file(argv[5]);
    if (input.size() % (std::size_t)m != 0 || input.size() % sizeof(T) != 0) {
        std::fprintf(stderr, "cuda_emu: %s holds %zu bytes, not M matrices of %zu-byte elements\n", argv[5],
                     input.size(), sizeof(T));
        return 2;
    }
    const std::size_t a_bytes = input.size();
    const std::size_t info_bytes = (std::size_t)m * sizeof(int);

    // Exact-size heap buffers: one element past either end is a redzone.
    T* a = static_cast<T*>(std::malloc(a_bytes));
    std::memcpy(a, input.data(), a_bytes);
    std::vector<unsigned char> first_out, first_info;
    for (std::size_t i = 0; i < orders.size(); ++i) {
        T* out = static_cast<T*>(std::malloc(a_bytes));
        int* info = static_cast<int*>(std::malloc(info_bytes));
        std::memset(out, 0xA5, a_bytes);
        std::memset(info, 0xA5, info_bytes);
        emu::Launch how = parse_order(orders[i]);
        how.shared = emu_shared_arrays[0];
        how.shared_bytes = emu_shared_bytes;
        for (int s = 1; emu_shared_arrays[s] != nullptr; ++s) std::memset(emu_shared_arrays[s], 0xFF, emu_shared_bytes);
        emu::launch(dim3(grid), dim3(block), how, [&] { EMU_KERNEL(a, out, info, m); });
        if (std::memcmp(a, input.data(), a_bytes) != 0) {
            std::fprintf(stderr, "cuda_emu: the kernel wrote its input `a`\n");
            return 5;
        }
        const auto* ob = reinterpret_cast<const unsigned char*>(out);
        const auto* ib = reinterpret_cast<const unsigned char*>(info);
        if (i == 0) {
            first_out.assign(ob, ob + a_bytes);
            first_info.assign(ib, ib + info_bytes);
        } else {
            for (std::size_t b = 0; b < a_bytes; ++b) {
                if (ob[b] != first_out[b]) {
                    std::fprintf(stderr,
                                 "cuda_emu: race: `out` differs between thread orders %s and %s at byte %zu "
                                 "(matrix %zu)\n",
                                 orders[0].c_str(), orders[i].c_str(), b, b / (a_bytes / (std::size_t)m));
                    return 4;
                }
            }
            for (std::size_t b = 0; b < info_bytes; ++b) {
                if (ib[b] != first_info[b]) {
                    std::fprintf(stderr, "cuda_emu: race: `info` differs between thread orders %s and %s at matrix %zu\n",
                                 orders[0].c_str(), orders[i].c_str(), b / sizeof(int));
                    return 4;
                }
            }
        }
        std::free(out);
        std::free(info);
    }
    std::free(a);
    write_file(argv[6], first_out.data(), a_bytes);
    write_file(argv[7], first_info.data(), info_bytes);
    return 0;
}
