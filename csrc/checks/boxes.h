// Argument checks of the box, assignment and box coding ops, shared by the CPU and CUDA entry
// points. focalops/_meta.py raises the same messages for fake tensors.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>

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

inline void check_assign_args(const at::Tensor& anchors, const at::Tensor& gt_boxes, const at::Tensor& gt_counts,
                              double fg_iou, double bg_iou) {
  TORCH_CHECK(anchors.scalar_type() == at::kFloat, "assign: anchors must be float32, got ", anchors.scalar_type());
  TORCH_CHECK(gt_boxes.scalar_type() == at::kFloat, "assign: gt_boxes must be float32, got ", gt_boxes.scalar_type());
  TORCH_CHECK(gt_counts.scalar_type() == at::kLong, "assign: gt_counts must be int64, got ", gt_counts.scalar_type());
  TORCH_CHECK(anchors.dim() == 2 && anchors.size(1) == 4, "assign: anchors must be [A, 4], got ", anchors.sizes());
  TORCH_CHECK(gt_boxes.dim() == 3 && gt_boxes.size(2) == 4, "assign: gt_boxes must be [B, G, 4], got ", gt_boxes.sizes());
  TORCH_CHECK(gt_counts.dim() == 1 && gt_counts.size(0) == gt_boxes.size(0), "assign: gt_counts must be [B] = [",
              gt_boxes.size(0), "], got ", gt_counts.sizes());
  TORCH_CHECK(anchors.device() == gt_boxes.device() && anchors.device() == gt_counts.device(),
              "assign: anchors, gt_boxes and gt_counts must be on one device");
  TORCH_CHECK(0.0 <= bg_iou && bg_iou <= fg_iou && fg_iou <= 1.0, "assign: need 0 <= bg_iou <= fg_iou <= 1, got fg_iou=",
              fg_iou, " and bg_iou=", bg_iou);
}

inline void check_targets_args(const at::Tensor& matched, const at::Tensor& gt_boxes, const at::Tensor& gt_labels,
                               const at::Tensor& anchors, at::ArrayRef<double> weights,
                               std::optional<int64_t> num_classes) {
  TORCH_CHECK(matched.scalar_type() == at::kLong && matched.dim() == 2,
              "retinanet_targets: matched must be int64 [B, A], got ", matched.scalar_type(), " ", matched.sizes());
  check_box_dtype("retinanet_targets", "gt_boxes", gt_boxes);
  TORCH_CHECK(anchors.scalar_type() == gt_boxes.scalar_type(), "retinanet_targets: anchors must have the dtype of gt_boxes");
  TORCH_CHECK(gt_boxes.dim() == 3 && gt_boxes.size(0) == matched.size(0) && gt_boxes.size(2) == 4,
              "retinanet_targets: gt_boxes must be [B, G, 4] with B = ", matched.size(0), ", got ", gt_boxes.sizes());
  TORCH_CHECK(gt_labels.scalar_type() == at::kLong && gt_labels.dim() == 2 && gt_labels.size(0) == gt_boxes.size(0) &&
                  gt_labels.size(1) == gt_boxes.size(1),
              "retinanet_targets: gt_labels must be int64 [B, G], got ", gt_labels.scalar_type(), " ", gt_labels.sizes());
  TORCH_CHECK(anchors.dim() == 2 && anchors.size(0) == matched.size(1) && anchors.size(1) == 4,
              "retinanet_targets: anchors must be [A, 4] with A = ", matched.size(1), ", got ", anchors.sizes());
  TORCH_CHECK(matched.device() == gt_boxes.device() && matched.device() == gt_labels.device() &&
                  matched.device() == anchors.device(),
              "retinanet_targets: matched, gt_boxes, gt_labels and anchors must be on one device");
  check_box_weights("retinanet_targets", weights);
  TORCH_CHECK(num_classes.value_or(0) >= 0, "retinanet_targets: num_classes must be >= 0, got ", num_classes.value_or(0));
}

}  // namespace focalops
