// Argument checks of the RetinaNet post-processing, shared by the CPU and CUDA entry points.
// focalops/ops/postprocess.py states them again, with the same messages.
#pragma once

#include <ATen/ATen.h>

#include "checks/nms.h"

namespace focalops {

// The box and score math type of postprocess: float32 for float32/half/bfloat16 logits, float64 for float64.
inline at::ScalarType postprocess_math_type(const at::Tensor& cls_logits) {
  return cls_logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_postprocess_args(const at::Tensor& cls_logits, const at::Tensor& box_deltas, const at::Tensor& anchors,
                                   at::IntArrayRef level_sizes, const at::Tensor& image_sizes, double score_thresh,
                                   int64_t topk_candidates, double nms_thresh, int64_t detections_per_img) {
  TORCH_CHECK(cls_logits.dim() == 3, "postprocess: cls_logits must be [B, A, K], got ", cls_logits.sizes());
  TORCH_CHECK(nms_is_float(cls_logits.scalar_type()), "postprocess: cls_logits must be floating, got ",
              cls_logits.scalar_type());
  const int64_t B = cls_logits.size(0), A = cls_logits.size(1);
  const auto mt = postprocess_math_type(cls_logits);
  TORCH_CHECK(box_deltas.dim() == 3 && box_deltas.size(0) == B && box_deltas.size(1) == A && box_deltas.size(2) == 4,
              "postprocess: box_deltas must be [B, A, 4] = [", B, ", ", A, ", 4], got ", box_deltas.sizes());
  TORCH_CHECK(anchors.dim() == 2 && anchors.size(0) == A && anchors.size(1) == 4, "postprocess: anchors must be [A, 4] = [", A,
              ", 4], got ", anchors.sizes());
  TORCH_CHECK(image_sizes.dim() == 2 && image_sizes.size(0) == B && image_sizes.size(1) == 2,
              "postprocess: image_sizes must be [B, 2] = [", B, ", 2] (height, width), got ", image_sizes.sizes());
  TORCH_CHECK(box_deltas.scalar_type() == mt && anchors.scalar_type() == mt && image_sizes.scalar_type() == mt,
              "postprocess: box_deltas, anchors and image_sizes must be ", mt, ", got ", box_deltas.scalar_type(), ", ",
              anchors.scalar_type(), " and ", image_sizes.scalar_type());
  for (const auto& t : {box_deltas, anchors, image_sizes}) {
    TORCH_CHECK(t.device() == cls_logits.device(), "postprocess: all tensors must be on ", cls_logits.device(), ", got ",
                t.device());
  }
  int64_t total = 0;
  for (const int64_t s : level_sizes) {
    // s <= A - total keeps the running sum <= A: it cannot overflow, whatever the sizes.
    TORCH_CHECK(s >= 0 && s <= A - total, "postprocess: level_sizes must be >= 0 and sum to A = ", A, ", got ",
                level_sizes);
    total += s;
  }
  TORCH_CHECK(total == A, "postprocess: level_sizes must be >= 0 and sum to A = ", A, ", got ", level_sizes);
  TORCH_CHECK(score_thresh >= 0.0 && score_thresh <= 1.0, "postprocess: score_thresh must be in [0, 1], got ",
              score_thresh);
  TORCH_CHECK(topk_candidates >= 1, "postprocess: topk_candidates must be >= 1, got ", topk_candidates);
  TORCH_CHECK(nms_thresh >= 0.0 && nms_thresh <= 1.0, "postprocess: nms_thresh must be in [0, 1], got ", nms_thresh);
  TORCH_CHECK(detections_per_img >= 0, "postprocess: detections_per_img must be >= 0, got ", detections_per_img);
}

}  // namespace focalops
