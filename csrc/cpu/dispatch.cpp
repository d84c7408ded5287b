// The stubs of cpu/kernels.h and the choice of capability.
#include "cpu/kernels.h"

#include <ATen/Version.h>

#include <string>

namespace focalops {
namespace cpu {

Stub<FocalTileFn> focal_tile_stub;
Stub<IouRowFn> iou_row_stub;
Stub<CodeRowsFn> code_rows_stub;
Stub<MaxIouFn> max_iou_stub;
Stub<MatchBoxFn> match_box_stub;
Stub<SuppressFn> suppress_stub;
Stub<FirstAboveFn> first_above_stub;

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

}  // namespace

Capability capability() {
  static const Capability chosen = [] {
    int c = static_cast<int>(from_aten());
    while (c > 0 && focal_tile_stub.fns[c] == nullptr) --c;  // e.g. a compiler without AVX-512
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
