// Argument checks of the box ops (IoU, box coding), shared by the CPU and CUDA entry
// points. focalops/ops/boxes.py states them again, with the same messages.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "math/box.h"

namespace focalops {

inline void check_box_dtype(const char* op, const char* name, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16, op, ": ", name,
              " must be float32, float64, float16 or bfloat16, got ", dt);
}

inline void check_box_iou_args(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_dtype("box_iou", "boxes1", boxes1);
  TORCH_CHECK(boxes1.dim() == 2 && boxes1.size(1) == 4, "box_iou: boxes1 must be [N, 4], got ", boxes1.sizes());
  TORCH_CHECK(boxes2.dim() == 2 && boxes2.size(1) == 4, "box_iou: boxes2 must be [M, 4], got ", boxes2.sizes());
  TORCH_CHECK(boxes2.scalar_type() == boxes1.scalar_type(), "box_iou: boxes2 must have the dtype of boxes1");
  TORCH_CHECK(boxes1.device() == boxes2.device(), "box_iou: boxes1 and boxes2 must be on the same device");
}

inline void check_box_weights(const char* op, at::ArrayRef<double> weights) {
  bool ok = weights.size() == 4;
  for (const double w : weights) ok &= w > 0.0 && std::isfinite(w);
  TORCH_CHECK(ok, op, ": weights must be 4 positive finite numbers (wx, wy, ww, wh), got ", weights);
}

// Box coding: `a` is [..., 4]; `anchors` holds M rows of 4 that repeat along a's rows.
inline void check_coder_args(const char* op, const char* name, const at::Tensor& a, const at::Tensor& anchors,
                             at::ArrayRef<double> weights) {
  check_box_dtype(op, name, a);
  TORCH_CHECK(a.dim() >= 1 && a.size(-1) == 4, op, ": ", name, " must be [..., 4], got ", a.sizes());
  TORCH_CHECK(anchors.dim() >= 1 && anchors.size(-1) == 4, op, ": anchors must be [..., 4], got ", anchors.sizes());
  TORCH_CHECK(anchors.scalar_type() == a.scalar_type(), op, ": anchors must have the dtype of ", name);
  TORCH_CHECK(anchors.device() == a.device(), op, ": anchors must be on the device of ", name);
  TORCH_CHECK(anchors.numel() > 0 ? a.numel() % anchors.numel() == 0 : a.numel() == 0, op, ": anchors ",
              anchors.sizes(), " do not repeat evenly along ", name, " ", a.sizes());
  check_box_weights(op, weights);
}

// A NaN clamp would turn every box into NaN; +-inf are fine (no clamp, zero-size boxes).
inline void check_decode_clamp(const char* op, double clamp) {
  TORCH_CHECK(!std::isnan(clamp), op, ": clamp must be a number, got nan");
}

inline void check_decode_backward_args(const at::Tensor& grad, const at::Tensor& deltas, const at::Tensor& anchors,
                                       at::ArrayRef<double> weights, double clamp) {
  check_coder_args("_decode_boxes_backward", "deltas", deltas, anchors, weights);
  check_decode_clamp("_decode_boxes_backward", clamp);
  TORCH_CHECK(grad.sizes() == deltas.sizes() && grad.scalar_type() == deltas.scalar_type() &&
                  grad.device() == deltas.device(),
              "_decode_boxes_backward: grad must have the shape, dtype and device of deltas");
}

inline math::BoxWeights box_weights(at::ArrayRef<double> w) {
  return {static_cast<float>(w[0]), static_cast<float>(w[1]), static_cast<float>(w[2]), static_cast<float>(w[3])};
}

}  // namespace focalops
