// The choice of capability (cpu/stub.h).
#include "cpu/stub.h"

#include <ATen/Version.h>

#include <string>
#include <vector>

namespace focalops {
namespace cpu {

namespace {

// ATen has already read ATEN_CPU_CAPABILITY and checked it against the CPU (cpuinfo); its
// AVX512 needs avx512f/bw/vl/dq + fma, exactly what our avx512 build assumes. Anything else
// (NO AVX, VSX, Z VECTOR, SVE) runs the default build.
Capability from_aten() {
  const std::string aten = at::get_cpu_capability();
#if defined(__x86_64__) || defined(_M_X64)
  if (aten == "AVX512") return Capability::kAvx512;
  if (aten == "AVX2") return Capability::kAvx2;
#endif
  return Capability::kDefault;
}

struct Enrolled {
  const void* stub;
  bool (*has)(const void*, Capability);
};

// A function-local static: registrations run during static initialisation, in any order of the
// translation units.
std::vector<Enrolled>& enrolled() {
  static std::vector<Enrolled> all;
  return all;
}

}  // namespace

void enrol(const void* stub, bool (*has)(const void*, Capability)) { enrolled().push_back({stub, has}); }

Capability capability() {
  static const Capability chosen = [] {
    int c = static_cast<int>(from_aten());
    // Lowered while some stub lacks a kernel of it (e.g. a compiler without AVX-512).
    const auto complete = [](int cap) {
      for (const Enrolled& e : enrolled()) {
        if (!e.has(e.stub, static_cast<Capability>(cap))) return false;
      }
      return true;
    };
    while (c > 0 && !complete(c)) --c;
    return static_cast<Capability>(c);
  }();
  return chosen;
}

const char* capability_name(Capability c) {
  switch (c) {
    case Capability::kAvx512: return "avx512";
    case Capability::kAvx2: return "avx2";
    default: return "default";
  }
}

}  // namespace cpu
}  // namespace focalops
