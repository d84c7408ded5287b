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

// The Columns of `cols` holding n boxes as x1 | y1 | x2 | y2.
inline Columns columns(const float* cols, int64_t n) { return {cols, cols + n, cols + 2 * n, cols + 3 * n}; }

// Boxes [begin, end) of n into the columns x1 | y1 | x2 | y2 of `cols` (4 * n values),
// converted to A: box i is row row_of(i) of `rows` (boxes as (x1, y1, x2, y2)). Returns whether
// a value was NaN: the staging is the one pass that reads the boxes, so it is also their check.
template <typename T, typename A, typename RowOf>
inline bool stage_columns(const T* rows, RowOf row_of, int64_t n, int64_t begin, int64_t end, A* cols) {
  bool nan = false;
  for (int64_t i = begin; i < end; ++i) {
    const T* row = rows + 4 * row_of(i);
    for (int k = 0; k < 4; ++k) {
      const A v = static_cast<A>(row[k]);
      nan |= v != v;
      cols[k * n + i] = v;
    }
  }
  return nan;
}

// The same with box i in row i.
template <typename T, typename A>
inline bool stage_columns(const T* rows, int64_t n, int64_t begin, int64_t end, A* cols) {
  return stage_columns(rows, [](int64_t i) { return i; }, n, begin, end, cols);
}

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
