// Argument checks of the anchor assignment and the RetinaNet targets, shared by the CPU and
// CUDA entry points. focalops/ops/assign.py states them again for fake tensors.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "checks/boxes.h"

namespace focalops {

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
  TORCH_CHECK(matched.scalar_type() == at::kLong, "retinanet_targets: matched must be int64, got ", matched.scalar_type());
  TORCH_CHECK(matched.dim() == 2, "retinanet_targets: matched must be [B, A], got ", matched.sizes());
  check_box_dtype("retinanet_targets", "gt_boxes", gt_boxes);
  TORCH_CHECK(anchors.scalar_type() == gt_boxes.scalar_type(), "retinanet_targets: anchors must have the dtype of gt_boxes");
  TORCH_CHECK(gt_boxes.dim() == 3 && gt_boxes.size(0) == matched.size(0) && gt_boxes.size(2) == 4,
              "retinanet_targets: gt_boxes must be [B, G, 4] with B = ", matched.size(0), ", got ", gt_boxes.sizes());
  TORCH_CHECK(gt_labels.scalar_type() == at::kLong, "retinanet_targets: gt_labels must be int64, got ",
              gt_labels.scalar_type());
  TORCH_CHECK(gt_labels.dim() == 2 && gt_labels.size(0) == gt_boxes.size(0) && gt_labels.size(1) == gt_boxes.size(1),
              "retinanet_targets: gt_labels must be [B, G] = [", gt_boxes.size(0), ", ", gt_boxes.size(1), "], got ",
              gt_labels.sizes());
  TORCH_CHECK(anchors.dim() == 2 && anchors.size(0) == matched.size(1) && anchors.size(1) == 4,
              "retinanet_targets: anchors must be [A, 4] with A = ", matched.size(1), ", got ", anchors.sizes());
  TORCH_CHECK(matched.device() == gt_boxes.device() && matched.device() == gt_labels.device() &&
                  matched.device() == anchors.device(),
              "retinanet_targets: matched, gt_boxes, gt_labels and anchors must be on one device");
  check_box_weights("retinanet_targets", weights);
  TORCH_CHECK(num_classes.value_or(0) >= 0, "retinanet_targets: num_classes must be >= 0, got ", num_classes.value_or(0));
}

}  // namespace focalops
