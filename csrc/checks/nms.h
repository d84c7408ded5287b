// Argument checks of the NMS ops, shared by the CPU and CUDA entry points.
// focalops/ops/nms.py states them again, with the same messages.
#pragma once

#include <ATen/ATen.h>


namespace focalops {

inline bool nms_is_float(at::ScalarType dt) {
  return dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16;
}

inline void check_nms_args(const char* op, const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op, ": boxes must be [N, 4], got ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), op, ": scores must be [N] with N = ", boxes.size(0),
              ", got ", scores.sizes());
  TORCH_CHECK(nms_is_float(boxes.scalar_type()), op, ": boxes must be floating, got ", boxes.scalar_type());
  TORCH_CHECK(nms_is_float(scores.scalar_type()), op, ": scores must be floating, got ", scores.scalar_type());
  TORCH_CHECK(boxes.device() == scores.device(), op, ": boxes and scores must be on the same device, got ", boxes.device(),
              " and ", scores.device());
  TORCH_CHECK(iou_threshold >= 0.0 && iou_threshold <= 1.0, op, ": iou_threshold must be in [0, 1], got ", iou_threshold);
}

inline void check_batched_nms_idxs(const at::Tensor& boxes, const at::Tensor& idxs) {
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), "batched_nms: idxs must be [N] with N = ", boxes.size(0),
              ", got ", idxs.sizes());
  TORCH_CHECK(idxs.scalar_type() == at::kLong, "batched_nms: idxs must be int64, got ", idxs.scalar_type());
  TORCH_CHECK(idxs.device() == boxes.device(), "batched_nms: idxs must be on ", boxes.device(), ", got ", idxs.device());
}

}  // namespace focalops
