// The assignment family's CPU kernels (cpu/kernels/assign.cpp).
#pragma once

#include <cstdint>

#include "cpu/boxes.h"
#include "cpu/stub.h"

namespace focalops {
namespace cpu {

// Assignment pass 1: max over boxes [begin, end) of IoU(box, boxes[i]); 0 for an empty range.
using MaxIouFn = float (*)(Columns boxes, int64_t begin, int64_t end, const float* box);
extern Stub<MaxIouFn> max_iou_stub;

// Assignment pass 2: one ground-truth box g (whose best IoU over all anchors is box_best)
// against anchors [begin, begin + n): keeps each anchor's best value and index (the first
// index wins ties) and flags anchors whose IoU equals box_best (when box_best > 0).
using MatchBoxFn = void (*)(Columns anchors, int64_t begin, int64_t n, const float* box, int32_t g, float box_best,
                            float* best_val, int32_t* best_idx, int32_t* low_quality);
extern Stub<MatchBoxFn> match_box_stub;

}  // namespace cpu
}  // namespace focalops
