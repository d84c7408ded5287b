// One box against a column of boxes: the IoU row of box_iou.
#include "cpu/kernels/vec.h"
#include "math/box.h"

namespace focalops {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;

void iou_row(const float* box, Columns c, int64_t n, float* out) {
  const Vec a0(box[0]), a1(box[1]), a2(box[2]), a3(box[3]);
  int64_t j = 0;
  for (; j + Vec::size() <= n; j += Vec::size()) {
    math::iou(a0, a1, a2, a3, Vec::loadu(c.x1 + j), Vec::loadu(c.y1 + j), Vec::loadu(c.x2 + j), Vec::loadu(c.y2 + j))
        .store(out + j);
  }
  for (; j < n; ++j) out[j] = math::iou(box[0], box[1], box[2], box[3], c.x1[j], c.y1[j], c.x2[j], c.y2[j]);
}

FO_REGISTER_KERNEL(iou_row_stub, iou_row);

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace focalops
