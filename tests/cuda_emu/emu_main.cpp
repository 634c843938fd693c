// The runtime of an emulation executable: runs one of its kernels on the CPU.
//
// Linked by tests/_cuda_emu.py with the generated objects that hold the
// kernel instantiations (gpuinv/kernels/kernels.cu compiled unchanged after
// cuda_emu.h, several instantiations per executable) and their shared
// arrays; emu_table.h describes them. This file does not include kernels.cu,
// so its object is built once and reused by every executable.
//
// Usage: emu_kernel INDEX NAME M K GRID BLOCK ORDERS A B OUT INFO RCOND
//   INDEX   the kernel's entry in emu_kernels; NAME must be its template-id
//           (e.g. gpuinv::inv_thread<double, 4, 128>), checked
//   M       matrices in the stack; A holds M matrices of the kernel's element type
//   K       right-hand sides per matrix (0 where the kernel takes none)
//   ORDERS  comma-separated thread orders: f (forward), r (reverse), sSEED
//           (a random permutation per round, seeded)
//   B       the right-hand sides (M * N * K elements), or - for none
//   RCOND   where to write rcond (M reals), or - where the kernel writes none
// The inputs are read into exact-size heap allocations. The kernel runs once
// per order, each time into fresh exact-size `out` (the size of B where
// there is one, else of A), `info` and `rcond` buffers that are pre-filled
// with 0xA5 bytes; all runs must give the same bits, and the inputs must be
// unchanged. The first run's outputs are written to OUT, INFO and RCOND.
// Exit status: 0 ok, 2 usage or I/O error, 3 an emulation error (divergent
// collectives, deadlock), 4 results differ between orders, 5 an input was
// written; AddressSanitizer and UBSan abort on their own.
#include "cuda_emu.h"

#include "emu_table.h"

namespace {

// One output buffer: exact size, pre-filled, compared across thread orders.
struct Output {
    const char* name;
    std::size_t bytes;
    std::size_t unit;  // bytes per matrix, for the race report
    unsigned char* data = nullptr;
    std::vector<unsigned char> first;
    Output(const char* name_, std::size_t bytes_, std::size_t unit_) : name(name_), bytes(bytes_), unit(unit_) {}
    Output(const Output&) = delete;
    Output& operator=(const Output&) = delete;
    ~Output() { std::free(data); }  // every return frees it: LeakSanitizer would fail the run
    void fresh() {
        std::free(data);
        data = static_cast<unsigned char*>(std::malloc(bytes ? bytes : 1));
        std::memset(data, 0xA5, bytes);
    }
    // 0, or 4 after reporting where this run differs from the first one.
    int settle(std::size_t run, const std::string& first_order, const std::string& order) {
        if (run == 0) {
            first.assign(data, data + bytes);
            return 0;
        }
        for (std::size_t b = 0; b < bytes; ++b) {
            if (data[b] != first[b]) {
                std::fprintf(stderr, "cuda_emu: race: `%s` differs between thread orders %s and %s at byte %zu (matrix %zu)\n",
                             name, first_order.c_str(), order.c_str(), b, b / unit);
                return 4;
            }
        }
        return 0;
    }
};

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
    if (argc != 13) {
        std::fprintf(stderr, "usage: %s INDEX NAME M K GRID BLOCK ORDERS A B OUT INFO RCOND\n", argv[0]);
        return 2;
    }
    const int index = std::atoi(argv[1]);
    if (index < 0 || index >= emu_kernel_count || std::strcmp(emu_kernels[index].name, argv[2]) != 0) {
        std::fprintf(stderr, "cuda_emu: kernel %s is not entry %s of this executable\n", argv[2], argv[1]);
        return 2;
    }
    const EmuKernel& kernel = emu_kernels[index];
    argv += 2;  // the rest as before: M K GRID BLOCK ORDERS A B OUT INFO RCOND at argv[1..10]
    const long long m = std::atoll(argv[1]);
    const int k = std::atoi(argv[2]);
    const unsigned grid = (unsigned)std::strtoul(argv[3], nullptr, 10);
    const unsigned block = (unsigned)std::strtoul(argv[4], nullptr, 10);
    std::vector<std::string> orders;
    {
        std::string all = argv[5], word;
        for (char c : all + ",") {
            if (c == ',') {
                if (!word.empty()) orders.push_back(word);
                word.clear();
            } else {
                word += c;
            }
        }
    }
    const std::string b_path = argv[7], rcond_path = argv[10];
    const bool has_b = b_path != "-", has_rcond = rcond_path != "-";
    if (m < 1 || k < 0 || orders.empty()) {
        std::fprintf(stderr, "cuda_emu: need M >= 1, K >= 0 and at least one order\n");
        return 2;
    }
    std::vector<unsigned char> a_in = read_file(argv[6]), b_in;
    if (has_b) b_in = read_file(argv[7]);
    for (const auto* in : {&a_in, &b_in}) {
        if (in->size() % (std::size_t)m != 0 || in->size() % kernel.elem_bytes != 0) {
            std::fprintf(stderr, "cuda_emu: an input holds %zu bytes, not M matrices of %zu-byte elements\n",
                         in->size(), kernel.elem_bytes);
            return 2;
        }
    }

    // Exact-size heap buffers: one element past either end is a redzone.
    struct Input {
        void* p = nullptr;
        explicit Input(const std::vector<unsigned char>& data) {
            p = std::malloc(data.size() ? data.size() : 1);
            if (!data.empty()) std::memcpy(p, data.data(), data.size());
        }
        Input(const Input&) = delete;
        Input& operator=(const Input&) = delete;
        ~Input() { std::free(p); }
    };
    Input a_buf(a_in), b_buf(b_in);
    const void* a = a_buf.p;
    const void* b = has_b ? b_buf.p : nullptr;
    const std::size_t out_bytes = has_b ? b_in.size() : a_in.size();
    Output outs[3] = {{"out", out_bytes, out_bytes / (std::size_t)m},
                      {"info", (std::size_t)m * sizeof(int), sizeof(int)},
                      {"rcond", has_rcond ? (std::size_t)m * kernel.real_bytes : 0, kernel.real_bytes}};
    for (std::size_t i = 0; i < orders.size(); ++i) {
        for (auto& o : outs) o.fresh();
        const EmuArgs args{a, b, outs[0].data, reinterpret_cast<int*>(outs[1].data),
                           has_rcond ? outs[2].data : nullptr, m, k};
        emu::Launch how = parse_order(orders[i]);
        how.shared = kernel.shared[0];
        how.shared_bytes = kernel.shared_bytes;
        for (int s = 1; kernel.shared[s] != nullptr; ++s) std::memset(kernel.shared[s], 0xFF, kernel.shared_bytes);
        emu::launch(dim3(grid), dim3(block), how, [&] { kernel.call(args); });
        if (std::memcmp(a, a_in.data(), a_in.size()) != 0) {
            std::fprintf(stderr, "cuda_emu: the kernel wrote its input `a`\n");
            return 5;
        }
        if (has_b && std::memcmp(b, b_in.data(), b_in.size()) != 0) {
            std::fprintf(stderr, "cuda_emu: the kernel wrote its input `b`\n");
            return 5;
        }
        for (auto& o : outs) {
            if (int status = o.settle(i, orders[0], orders[i])) return status;
        }
    }
    write_file(argv[8], outs[0].first.data(), outs[0].bytes);
    write_file(argv[9], outs[1].first.data(), outs[1].bytes);
    if (has_rcond) write_file(argv[10], outs[2].first.data(), outs[2].bytes);
    return 0;
}
