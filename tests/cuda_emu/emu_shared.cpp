// The shared memory of the one kernel instantiation in this executable.
//
// cuda_emu.h turns `__shared__ T name[...]` into `extern T name[...]`;
// this file defines each such name (EMU_SHARED_NAMES, from
// tests/_cuda_emu.py) as a plain global of exactly the instantiation's
// shared size, so that AddressSanitizer puts a redzone after it and every
// out-of-bounds access to shared memory fails the run.
#include <cstddef>

#ifndef EMU_SHARED_BYTES
#error "EMU_SHARED_BYTES must be defined"
#endif

#define EMU_DEFINE_SHARED(name) alignas(128) unsigned char name[EMU_SHARED_BYTES];
namespace gpuinv {
EMU_SHARED_NAMES(EMU_DEFINE_SHARED)
}

#define EMU_ADDRESS_OF(name) gpuinv::name,
extern "C" {
unsigned char* emu_shared_arrays[] = {EMU_SHARED_NAMES(EMU_ADDRESS_OF) nullptr};
extern const std::size_t emu_shared_bytes = EMU_SHARED_BYTES;
}
