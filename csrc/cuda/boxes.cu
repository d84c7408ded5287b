// Box IoU and box coding, CUDA launchers (kernel bodies in boxes.cuh).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "checks/boxes.h"
#include "cuda/runtime.h"
#include "cuda/boxes.cuh"

namespace focalops {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) { return cuda::grid_stride_blocks(n, kThreads, gpu::multiprocessors()); }

at::Tensor box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_iou_args(boxes1, boxes2);
  const gpu::DeviceGuard guard(boxes1.device());
  const auto b1 = boxes1.contiguous();
  const auto b2 = boxes2.contiguous();
  auto out = at::empty({b1.size(0), b2.size(0)}, b1.options());
  if (out.numel() == 0) return out;
  const auto stream = gpu::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_cuda", [&] {
    FO_LAUNCH(blocks_for(out.numel()), kThreads, 0, stream, cuda::box_iou_kernel<scalar_t>)(
        b1.data_ptr<scalar_t>(), b2.data_ptr<scalar_t>(), b1.size(0), b2.size(0), out.data_ptr<scalar_t>());
    FO_LAUNCH_CHECK();
  });
  return out;
}

template <math::BoxCoding kOp>
at::Tensor coder_cuda(const at::Tensor& x_, const at::Tensor& anchors_, const at::Tensor* grad_,
                      at::ArrayRef<double> weights, double clamp) {
  const gpu::DeviceGuard guard(x_.device());
  const auto x = x_.contiguous();
  const auto anchors = anchors_.contiguous();
  auto out = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) return out;
  at::Tensor grad;
  if (grad_ != nullptr) grad = grad_->contiguous();
  const auto w = box_weights(weights);
  const int64_t rows = x.numel() / 4;
  const auto stream = gpu::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "box_coder_cuda", [&] {
    FO_LAUNCH(blocks_for(rows), kThreads, 0, stream, cuda::box_coder_kernel<kOp, scalar_t>)(
        x.data_ptr<scalar_t>(), anchors.data_ptr<scalar_t>(), grad_ != nullptr ? grad.data_ptr<scalar_t>() : nullptr,
        rows, anchors.numel() / 4, w, clamp, out.data_ptr<scalar_t>());
    FO_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor encode_boxes_cuda(const at::Tensor& gt, const at::Tensor& anchors, at::ArrayRef<double> weights) {
  check_coder_args("encode_boxes", "gt", gt, anchors, weights);
  return coder_cuda<math::BoxCoding::kEncode>(gt, anchors, nullptr, weights, 0.0);
}

at::Tensor decode_boxes_cuda(const at::Tensor& deltas, const at::Tensor& anchors, at::ArrayRef<double> weights,
                             double clamp) {
  check_coder_args("decode_boxes", "deltas", deltas, anchors, weights);
  check_decode_clamp("decode_boxes", clamp);
  return coder_cuda<math::BoxCoding::kDecode>(deltas, anchors, nullptr, weights, clamp);
}

at::Tensor decode_boxes_backward_cuda(const at::Tensor& grad, const at::Tensor& deltas, const at::Tensor& anchors,
                                      at::ArrayRef<double> weights, double clamp) {
  check_decode_backward_args(grad, deltas, anchors, weights, clamp);
  return coder_cuda<math::BoxCoding::kDecodeBackward>(deltas, anchors, &grad, weights, clamp);
}

}  // namespace

TORCH_LIBRARY_IMPL(focalops, FO_CUDA_DISPATCH_KEY, m) {
  m.impl("box_iou", &box_iou_cuda);
  m.impl("encode_boxes", &encode_boxes_cuda);
  m.impl("decode_boxes", &decode_boxes_cuda);
  m.impl("_decode_boxes_backward", &decode_boxes_backward_cuda);
}

}  // namespace focalops
