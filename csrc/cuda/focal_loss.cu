// Sigmoid focal loss, CUDA entry points: tensor plumbing around cuda/focal_loss.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "checks/focal_loss.h"
#include "cuda/runtime.h"
#include "cuda/focal_loss.cuh"
#include "cuda/storage.h"

namespace focalops {
namespace {

// A gradient that is one value broadcast to every element (stride 0 everywhere, e.g. from
// `loss(reduction="none").sum()`), as a 0-d view of that value; else undefined.
at::Tensor broadcast_scalar(const at::Tensor& grad) {
  if (grad.dim() == 0 || grad.numel() == 0) return at::Tensor();
  for (const int64_t s : grad.strides()) {
    if (s != 0) return at::Tensor();
  }
  return grad.as_strided({}, {}, grad.storage_offset());
}

// mode: math::kFocalLoss / kFocalSum / kFocalGrad. `grad` is the incoming gradient (kFocalGrad).
at::Tensor focal_cuda(math::FocalMode mode, const at::Tensor& inputs, const at::Tensor& targets, const at::Tensor& grad,
                      double alpha, double gamma, int64_t ignore_index) {
  const gpu::DeviceGuard guard(inputs.device());
  const at::Tensor x = inputs.contiguous();
  const at::Tensor t = targets.contiguous();
  const bool hard = focal_is_index_form(t);
  const auto acc_dtype = focal_sum_dtype(x);
  const int64_t K = x.dim() > 0 ? x.size(-1) : 1;
  at::Tensor g;
  bool grad_each = false;
  if (mode == math::kFocalGrad) {
    const at::Tensor scalar = grad.dim() == 0 ? grad : broadcast_scalar(grad);
    grad_each = !scalar.defined();
    g = grad_each ? grad.to(x.scalar_type()).contiguous() : scalar.to(acc_dtype);
  }
  at::Tensor out = mode == math::kFocalSum ? at::empty({}, x.options().dtype(acc_dtype)) : at::empty_like(x);
  if (x.numel() == 0) {
    // K = 0 still has rows: only -1 and ignore_index are valid labels (checked on the device).
    if (hard && t.numel() > 0) {
      at::_assert_async(at::logical_or(t == -1, t == ignore_index).all(),
                        "sigmoid_focal_loss: targets holds a class index outside [0, 0) (K = 0)");
    }
    return mode == math::kFocalSum ? out.zero_() : out;
  }
  TORCH_CHECK(!hard || K <= cuda::kFocalMaxClasses, "sigmoid_focal_loss: at most ", cuda::kFocalMaxClasses,
              " classes (last dimension) with class-index targets on CUDA, got ", K);
  const int sms = gpu::multiprocessors();
  const at::Tensor partials = mode == math::kFocalSum
                                  ? at::empty({cuda::focal_partials(x.numel(), sms)}, x.options().dtype(acc_dtype))
                                  : at::Tensor();
  const cudaStream_t stream = gpu::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sigmoid_focal_loss_cuda", [&] {
    using T = typename CudaStorage<scalar_t>::type;
    using A = typename cuda::OpMath<T>::type;
    const A* gs = (mode == math::kFocalGrad && !grad_each) ? g.data_ptr<A>() : nullptr;
    const T* tp = hard ? nullptr : reinterpret_cast<const T*>(t.data_ptr<scalar_t>());
    const int64_t* lp = hard ? t.data_ptr<int64_t>() : nullptr;
    const T* gp = grad_each ? reinterpret_cast<const T*>(g.data_ptr<scalar_t>()) : nullptr;
    T* op = mode == math::kFocalSum ? nullptr : reinterpret_cast<T*>(out.data_ptr<scalar_t>());
    A* sum = mode == math::kFocalSum ? out.data_ptr<A>() : nullptr;
    A* part = mode == math::kFocalSum ? partials.data_ptr<A>() : nullptr;
    FO_CUDA_CHECK(cuda::launch_focal<T>(mode, hard, math::gamma_kind(static_cast<A>(gamma)), x.numel(), K, ignore_index,
                                         static_cast<A>(alpha), static_cast<A>(gamma), gs,
                                         reinterpret_cast<const T*>(x.data_ptr<scalar_t>()), tp, lp, gp, op, part, sum,
                                         sms, stream));
  });
  return out;
}

at::Tensor sigmoid_focal_loss_cuda(const at::Tensor& inputs, const at::Tensor& targets, double alpha, double gamma,
                                   int64_t ignore_index, bool reduce) {
  check_focal_args(inputs, targets, alpha, gamma, ignore_index);
  return focal_cuda(reduce ? math::kFocalSum : math::kFocalLoss, inputs, targets, at::Tensor(), alpha, gamma,
                    ignore_index);
}

at::Tensor sigmoid_focal_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& inputs, const at::Tensor& targets,
                                            double alpha, double gamma, int64_t ignore_index, bool reduce) {
  check_focal_args(inputs, targets, alpha, gamma, ignore_index);
  check_focal_grad(grad, inputs, reduce);
  return focal_cuda(math::kFocalGrad, inputs, targets, reduce ? grad.reshape({}) : grad, alpha, gamma, ignore_index);
}

}  // namespace

TORCH_LIBRARY_IMPL(focalops, FO_CUDA_DISPATCH_KEY, m) {
  m.impl("sigmoid_focal_loss", &sigmoid_focal_loss_cuda);
  m.impl("_sigmoid_focal_loss_backward", &sigmoid_focal_loss_backward_cuda);
}

}  // namespace focalops
