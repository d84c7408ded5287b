// Argument checks of the focal loss ops, shared by the CPU and CUDA entry points.
// focalops/ops/focal_loss.py states them again, with the same messages.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

namespace focalops {

inline bool focal_is_index_form(const at::Tensor& targets) {
  return targets.scalar_type() == at::kLong;
}

inline void check_focal_args(const at::Tensor& inputs, const at::Tensor& targets, double alpha, double gamma,
                             int64_t ignore_index) {
  const auto dt = inputs.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "sigmoid_focal_loss: inputs must be float32, float64, float16 or bfloat16, got ", dt);
  TORCH_CHECK(inputs.device() == targets.device(), "sigmoid_focal_loss: inputs and targets must be on the same device, got ",
              inputs.device(), " and ", targets.device());
  TORCH_CHECK(gamma >= 0.0 && std::isfinite(gamma), "sigmoid_focal_loss: gamma must be >= 0 and finite, got ", gamma);
  TORCH_CHECK(alpha <= 1.0, "sigmoid_focal_loss: alpha must be <= 1 (or < 0 to disable), got ", alpha);
  // -1 is the background label: ignoring it would silently drop every background row.
  TORCH_CHECK(ignore_index != -1, "sigmoid_focal_loss: ignore_index must not be -1 (the background label)");
  if (focal_is_index_form(targets)) {
    TORCH_CHECK(inputs.dim() >= 1 && targets.sizes() == inputs.sizes().slice(0, inputs.dim() - 1),
                "sigmoid_focal_loss: class-index targets must have shape inputs.shape[:-1] = ",
                inputs.sizes().slice(0, std::max<int64_t>(inputs.dim() - 1, 0)), ", got ", targets.sizes(),
                " (for one-hot targets pass a floating tensor)");
  } else {
    TORCH_CHECK(targets.scalar_type() == dt, "sigmoid_focal_loss: targets must be int64 class indices or have the dtype of inputs (",
                dt, "), got ", targets.scalar_type());
    TORCH_CHECK(targets.sizes() == inputs.sizes(), "sigmoid_focal_loss: targets must have the shape of inputs ", inputs.sizes(),
                ", got ", targets.sizes());
  }
}

inline void check_focal_grad(const at::Tensor& grad, const at::Tensor& inputs, bool reduce) {
  TORCH_CHECK(grad.device() == inputs.device(), "_sigmoid_focal_loss_backward: grad must be on ", inputs.device());
  if (reduce) {
    TORCH_CHECK(grad.numel() == 1, "_sigmoid_focal_loss_backward: grad of a reduced loss must have one element, got ",
                grad.sizes());
  } else {
    TORCH_CHECK(grad.sizes() == inputs.sizes(), "_sigmoid_focal_loss_backward: grad must have the shape of inputs ",
                inputs.sizes(), ", got ", grad.sizes());
  }
}

// The reduced loss is accumulated and returned in float32 (float64 for float64 inputs).
inline at::ScalarType focal_sum_dtype(const at::Tensor& inputs) {
  return inputs.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace focalops
