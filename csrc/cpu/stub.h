// Per-ISA dispatch of the vectorised CPU kernels: the generic part (ATen's DispatchStub).
//
// Every csrc/cpu/kernels/*.cpp is compiled once per capability (setup.py: default; avx2 with
// -mavx2 -mfma -mf16c; avx512 with -mavx512f/bw/vl/dq; only default off x86), each copy
// registering its functions (FO_REGISTER_KERNEL, cpu/kernels/vec.h) in its family's stubs. A
// family declares its stubs in csrc/cpu/<family>.h and defines them in csrc/cpu/<family>.cpp.
// At load time the capability is taken from ATen (the CPU's best, or ATEN_CPU_CAPABILITY, never
// above what the CPU has), and every stub hands out that capability's function.
#pragma once

#include <c10/util/Exception.h>

namespace focalops {
namespace cpu {

enum class Capability : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr int kNumCapabilities = 3;

// The capability in use: ATen's choice, lowered to the best one every stub has a kernel of;
// fixed at the first call (the library makes it when it loads, after every registration).
Capability capability();
const char* capability_name(Capability c);

template <typename Fn>
struct Stub {
  // Zero when the library loads (constant initialisation: no constructor runs after a
  // registration from another translation unit could have filled an entry).
  Fn fns[kNumCapabilities] = {};

  Fn get() const {
    const Fn fn = fns[static_cast<int>(capability())];
    TORCH_INTERNAL_ASSERT(fn != nullptr, "focalops: a CPU kernel is missing from the ", capability_name(capability()),
                          " build");
    return fn;
  }

  static bool has(const void* stub, Capability c) {
    return static_cast<const Stub*>(stub)->fns[static_cast<int>(c)] != nullptr;
  }
};

// Every stub that has a registration, for capability() to check them all.
void enrol(const void* stub, bool (*has)(const void*, Capability));

template <typename Fn>
struct Registration {
  Registration(Stub<Fn>& stub, Capability c, Fn fn) {
    stub.fns[static_cast<int>(c)] = fn;
    enrol(&stub, &Stub<Fn>::has);
  }
};

}  // namespace cpu
}  // namespace focalops
