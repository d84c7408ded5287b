// The two IoU passes of anchor assignment (see cpu/assign.cpp), anchors in columns.
#include "cpu/kernels/vec.h"
#include "cpu/assign.h"
#include "math/box.h"

namespace focalops {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

using L = math::Lanes<Vec>;

// Forced inline: the avx512 build otherwise kept this as a call per vector (3.3x slower than avx2).
FO_HD Vec anchor_iou(Columns c, int64_t i, const Vec* box) {
  return math::iou(Vec::loadu(c.x1 + i), Vec::loadu(c.y1 + i), Vec::loadu(c.x2 + i), Vec::loadu(c.y2 + i), box[0], box[1],
                   box[2], box[3]);
}

FO_HD float anchor_iou(Columns c, int64_t i, const float* box) {
  return math::iou(c.x1[i], c.y1[i], c.x2[i], c.y2[i], box[0], box[1], box[2], box[3]);
}

float max_iou(Columns c, int64_t begin, int64_t end, const float* box) {
  const Vec b[4] = {Vec(box[0]), Vec(box[1]), Vec(box[2]), Vec(box[3])};
  Vec lane(0.f);
  int64_t i = begin;
  for (; i + Vec::size() <= end; i += Vec::size()) {
    const Vec v = anchor_iou(c, i, b);
    lane = L::max_gt(v, lane);
  }
  float lanes[Vec::size()];
  lane.store(lanes);
  float m = 0.f;
  for (const float v : lanes) m = v > m ? v : m;
  for (; i < end; ++i) {
    const float v = anchor_iou(c, i, box);
    m = v > m ? v : m;
  }
  return m;
}

void match_box(Columns c, int64_t begin, int64_t n, const float* box, int32_t g, float box_best, float* best_val,
               int32_t* best_idx, int32_t* low_quality) {
  const Vec b[4] = {Vec(box[0]), Vec(box[1]), Vec(box[2]), Vec(box[3])};
  const int32_t can_tie = box_best > 0.f ? -1 : 0;
  // Indices and flags travel as the bits of float lanes (blends and ors keep bits).
  const Vec g_bits = L::from_bits(L::Int(g));
  const Vec tie_bits = L::from_bits(L::Int(can_tie));
  const Vec best_v(box_best);
  int64_t j = 0;
  for (; j + Vec::size() <= n; j += Vec::size()) {
    const Vec v = anchor_iou(c, begin + j, b);
    const Vec old = Vec::loadu(best_val + j);
    const Vec better = v > old;
    L::select(better, v, old).store(best_val + j);
    L::select(better, g_bits, Vec::loadu(best_idx + j)).store(best_idx + j);
    (Vec::loadu(low_quality + j) | ((v == best_v) & tie_bits)).store(low_quality + j);
  }
  for (; j < n; ++j) {
    const float v = anchor_iou(c, begin + j, box);
    const bool better = v > best_val[j];
    best_val[j] = better ? v : best_val[j];
    best_idx[j] = better ? g : best_idx[j];
    low_quality[j] |= (v == box_best ? -1 : 0) & can_tie;
  }
}

FO_REGISTER_KERNEL(max_iou_stub, max_iou);
FO_REGISTER_KERNEL(match_box_stub, match_box);

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace focalops
