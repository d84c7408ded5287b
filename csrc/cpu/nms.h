// The NMS family's CPU kernel (cpu/kernels/nms.cpp), and the greedy NMS that nms / batched_nms
// (cpu/nms.cpp) and the post-processing (cpu/postprocess.cpp) share.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/boxes.h"
#include "cpu/stub.h"

namespace focalops {
namespace cpu {

// removed[j] becomes non-zero where IoU(box, boxes[j]) > thr, for j in [0, n).
using SuppressFn = void (*)(const float* box, Columns boxes, int64_t n, float thr, int32_t* removed);
extern Stub<SuppressFn> suppress_stub;

// Indices of the kept boxes in decreasing score order (ties: lower index first), at most
// max_keep of them. Boxes of different classes never suppress each other (classes may be
// null: one class). boxes: n rows of float32 (x1, y1, x2, y2); scores: float or double.
// Given an op name, a NaN score or box coordinate raises "<op>: scores contain NaN" / "<op>: boxes
// contain NaN", found as the ranking and the bucket staging read them (no pass of its own);
// with none, NaN boxes suppress nothing and are never suppressed (the post-processing's boxes,
// decoded from huge finite anchors, can be NaN as the reference's are).
template <typename S>
std::vector<int64_t> nms_core(const char* op, const float* boxes, const S* scores, const int64_t* classes, int64_t n,
                              float thr, int64_t max_keep);

extern template std::vector<int64_t> nms_core<float>(const char*, const float*, const float*, const int64_t*, int64_t,
                                                     float, int64_t);
extern template std::vector<int64_t> nms_core<double>(const char*, const float*, const double*, const int64_t*,
                                                      int64_t, float, int64_t);

}  // namespace cpu
}  // namespace focalops
