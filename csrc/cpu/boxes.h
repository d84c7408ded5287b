// The box family's CPU kernels (cpu/kernels/boxes.cpp), and the column layout of boxes that the
// assignment and NMS kernels read too.
#pragma once

#include <cstdint>

#include "cpu/stub.h"
#include "math/box.h"

namespace focalops {
namespace cpu {

// Structure-of-arrays boxes: n boxes in four columns.
struct Columns {
  const float* x1;
  const float* y1;
  const float* x2;
  const float* y2;
};

// IoU of `box` with every one of n boxes: out[j] = IoU(box, boxes[j]).
using IouRowFn = void (*)(const float* box, Columns boxes, int64_t n, float* out);
extern Stub<IouRowFn> iou_row_stub;

// Box coding (torchvision's BoxCoder) of rows [begin, end) of n x 4 floats: out row i = f(x row
// i, anchors row i % M[, grad row i]), f = encode (x: ground truth), decode (x: deltas, dw and
// dh clamped at clamp) or the gradient of decode with respect to the deltas.
using math::BoxCoding;
struct BoxRows {
  BoxCoding op;
  const float* x;
  const float* anchors;
  const float* grad;
  int64_t M;
  float wx, wy, ww, wh;
  float clamp;
  float* out;
};
using CodeRowsFn = void (*)(const BoxRows& a, int64_t begin, int64_t end);
extern Stub<CodeRowsFn> code_rows_stub;

}  // namespace cpu
}  // namespace focalops
