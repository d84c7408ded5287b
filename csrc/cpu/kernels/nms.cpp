// The inner loops of NMS (the suppression test) and of post-processing (the score pass).
#include "cpu/kernels/vec.h"
#include "math/box.h"

namespace focalops {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

void suppress(const float* box, Columns c, int64_t n, float thr, int32_t* removed) {
  const Vec a0(box[0]), a1(box[1]), a2(box[2]), a3(box[3]), thr_v(thr);
  int64_t j = 0;
  for (; j + Vec::size() <= n; j += Vec::size()) {
    const Vec v =
        math::iou(a0, a1, a2, a3, Vec::loadu(c.x1 + j), Vec::loadu(c.y1 + j), Vec::loadu(c.x2 + j), Vec::loadu(c.y2 + j));
    (Vec::loadu(removed + j) | (v > thr_v)).store(removed + j);
  }
  for (; j < n; ++j) {
    removed[j] |= math::iou(box[0], box[1], box[2], box[3], c.x1[j], c.y1[j], c.x2[j], c.y2[j]) > thr ? -1 : 0;
  }
}

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

FO_REGISTER_KERNEL(suppress_stub, suppress);
FO_REGISTER_KERNEL(first_above_stub, first_above);

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace focalops
