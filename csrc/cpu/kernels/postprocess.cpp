// The post-processing's score pass: the first score above the threshold (or NaN).
#include "cpu/kernels/vec.h"
#include "cpu/postprocess.h"

namespace focalops {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

int64_t first_above(const float* x, int64_t begin, int64_t n, float lo) {
  constexpr int kAllZero = (1 << Vec::size()) - 1;
  const Vec lo_v(lo);
  int64_t i = begin;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec v = Vec::loadu(x + i);
    if (((v > lo_v) | (v != v)).zero_mask() != kAllZero) break;
  }
  for (; i < n; ++i) {
    if (x[i] > lo || x[i] != x[i]) return i;
  }
  return n;
}

FO_REGISTER_KERNEL(first_above_stub, first_above);

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace focalops
