// One box against a column of boxes (the IoU row of box_iou), and box coding.
#include "cpu/kernels/vec.h"
#include "cpu/boxes.h"
#include "math/box.h"

#include <algorithm>

namespace focalops {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

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

// Vec::size() rows at a time: rows of 4 are staged into four columns (x1 | y1 | x2 | y2), coded
// on vector lanes, and written back as rows. The last block runs on the same lanes (count rows
// staged, the rest zero and never written), so every row has the same bits wherever it falls.
template <BoxCoding kOp>
void code_rows_op(const BoxRows& a, int64_t begin, int64_t end) {
  constexpr int W = Vec::size();
  const math::BoxWeights w{a.wx, a.wy, a.ww, a.wh};
  const Vec clamp(a.clamp);
  alignas(64) float xs[4][W], as[4][W], gs[4][W], os[4][W];
  int64_t m = begin % a.M;
  for (int64_t i = begin; i < end; i += W) {
    const int count = static_cast<int>(std::min<int64_t>(W, end - i));
    for (int l = 0; l < W; ++l) {
      const bool live = l < count;
      for (int k = 0; k < 4; ++k) {
        xs[k][l] = live ? a.x[4 * (i + l) + k] : 0.f;
        as[k][l] = live ? a.anchors[4 * m + k] : 0.f;
        if constexpr (kOp == BoxCoding::kDecodeBackward) gs[k][l] = live ? a.grad[4 * (i + l) + k] : 0.f;
      }
      if (live && ++m == a.M) m = 0;
    }
    Vec xv[4], av[4], r[4];
    for (int k = 0; k < 4; ++k) {
      xv[k] = Vec::loadu(xs[k]);
      av[k] = Vec::loadu(as[k]);
    }
    if constexpr (kOp == BoxCoding::kEncode) {
      math::encode_box(xv, av, w, r);
    } else if constexpr (kOp == BoxCoding::kDecode) {
      math::decode_box(xv, av, w, clamp, r);
    } else {
      Vec gv[4];
      for (int k = 0; k < 4; ++k) gv[k] = Vec::loadu(gs[k]);
      math::decode_box_backward(gv, xv, av, w, clamp, r);
    }
    for (int k = 0; k < 4; ++k) r[k].store(os[k]);
    for (int l = 0; l < count; ++l)
      for (int k = 0; k < 4; ++k) a.out[4 * (i + l) + k] = os[k][l];
  }
}

void code_rows(const BoxRows& a, int64_t begin, int64_t end) {
  switch (a.op) {
    case BoxCoding::kEncode: return code_rows_op<BoxCoding::kEncode>(a, begin, end);
    case BoxCoding::kDecode: return code_rows_op<BoxCoding::kDecode>(a, begin, end);
    case BoxCoding::kDecodeBackward: return code_rows_op<BoxCoding::kDecodeBackward>(a, begin, end);
  }
}

FO_REGISTER_KERNEL(code_rows_stub, code_rows);

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace focalops
