// The inner loop of NMS: the suppression test of one box against a column of boxes.
#include "cpu/kernels/vec.h"
#include "cpu/nms.h"
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

FO_REGISTER_KERNEL(suppress_stub, suppress);

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace focalops
