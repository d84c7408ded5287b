// Box IoU and box coding (encode, decode and its backward), CPU.
//
// box_iou stages boxes2 as columns once, then each row of boxes1 runs one loop over them. The
// coders are one parallel pass over the rows; anchor row = row % M. float32 runs the vectorised
// kernels of cpu/kernels/boxes.cpp, the other dtypes the same math on scalars.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "checks/boxes.h"
#include "cpu/boxes.h"
#include "math/box.h"

namespace focalops {

namespace cpu {
Stub<IouRowFn> iou_row_stub;
Stub<CodeRowsFn> code_rows_stub;
}  // namespace cpu

namespace {

template <typename scalar_t>
void box_iou_kernel(const scalar_t* b1, const scalar_t* b2, int64_t N, int64_t M, scalar_t* out) {
  using A = math::opmath_t<scalar_t>;
  std::vector<A> cols(4 * M);  // x1 | y1 | x2 | y2
  cpu::stage_columns(b2, M, 0, M, cols.data());
  const A* x1 = cols.data();
  const A* y1 = x1 + M;
  const A* x2 = y1 + M;
  const A* y2 = x2 + M;
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / std::max<int64_t>(M, 1)), [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      const cpu::IouRowFn iou_row = cpu::iou_row_stub.get();
      const cpu::Columns c = cpu::columns(x1, M);
      for (int64_t i = begin; i < end; ++i) iou_row(b1 + 4 * i, c, M, out + i * M);
      return;
    }
    for (int64_t i = begin; i < end; ++i) {
      A a[4];
      math::load_box(b1 + 4 * i, a);
      scalar_t* row = out + i * M;
      for (int64_t j = 0; j < M; ++j) {
        const A b[4] = {x1[j], y1[j], x2[j], y2[j]};
        row[j] = static_cast<scalar_t>(math::iou(a, b));
      }
    }
  });
}

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_iou_args(boxes1, boxes2);
  const auto b1 = boxes1.contiguous();
  const auto b2 = boxes2.contiguous();
  auto out = at::empty({b1.size(0), b2.size(0)}, b1.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_cpu", [&] {
    box_iou_kernel(b1.data_ptr<scalar_t>(), b2.data_ptr<scalar_t>(), b1.size(0), b2.size(0), out.data_ptr<scalar_t>());
  });
  return out;
}

using Coder = cpu::BoxCoding;

// out row i = f(x row i, anchors row i % M[, grad row i]).
template <Coder kOp, typename scalar_t>
void coder_kernel(const scalar_t* x, const scalar_t* anchors, const scalar_t* grad, int64_t rows, int64_t M,
                  math::BoxWeights w, double clamp, scalar_t* out) {
  using A = math::opmath_t<scalar_t>;
  at::parallel_for(0, rows, 4096, [&](int64_t begin, int64_t end) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      const cpu::BoxRows args{kOp, x, anchors, grad, M, w.wx, w.wy, w.ww, w.wh, static_cast<float>(clamp), out};
      cpu::code_rows_stub.get()(args, begin, end);
      return;
    }
    int64_t m = begin % M;
    for (int64_t i = begin; i < end; ++i) {
      A xv[4], av[4], r[4];
      math::load_box(x + 4 * i, xv);
      math::load_box(anchors + 4 * m, av);
      if constexpr (kOp == Coder::kEncode) {
        math::encode_box(xv, av, w, r);
      } else if constexpr (kOp == Coder::kDecode) {
        math::decode_box(xv, av, w, static_cast<A>(clamp), r);
      } else {
        A gv[4];
        math::load_box(grad + 4 * i, gv);
        math::decode_box_backward(gv, xv, av, w, static_cast<A>(clamp), r);
      }
      for (int k = 0; k < 4; ++k) out[4 * i + k] = static_cast<scalar_t>(r[k]);
      if (++m == M) m = 0;
    }
  });
}

template <Coder kOp>
at::Tensor coder_cpu(const at::Tensor& x_, const at::Tensor& anchors_, const at::Tensor* grad_, at::ArrayRef<double> weights,
                     double clamp) {
  const auto x = x_.contiguous();
  const auto anchors = anchors_.contiguous();
  auto out = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) return out;
  at::Tensor grad;
  if (grad_ != nullptr) grad = grad_->expand(x.sizes()).contiguous();
  const auto w = box_weights(weights);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "box_coder_cpu", [&] {
    coder_kernel<kOp>(x.data_ptr<scalar_t>(), anchors.data_ptr<scalar_t>(),
                      grad_ != nullptr ? grad.data_ptr<scalar_t>() : nullptr, x.numel() / 4, anchors.numel() / 4, w,
                      clamp, out.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor encode_boxes_cpu(const at::Tensor& gt, const at::Tensor& anchors, at::ArrayRef<double> weights) {
  check_coder_args("encode_boxes", "gt", gt, anchors, weights);
  return coder_cpu<Coder::kEncode>(gt, anchors, nullptr, weights, 0.0);
}

at::Tensor decode_boxes_cpu(const at::Tensor& deltas, const at::Tensor& anchors, at::ArrayRef<double> weights,
                            double clamp) {
  check_coder_args("decode_boxes", "deltas", deltas, anchors, weights);
  check_decode_clamp("decode_boxes", clamp);
  return coder_cpu<Coder::kDecode>(deltas, anchors, nullptr, weights, clamp);
}

at::Tensor decode_boxes_backward_cpu(const at::Tensor& grad, const at::Tensor& deltas, const at::Tensor& anchors,
                                     at::ArrayRef<double> weights, double clamp) {
  check_decode_backward_args(grad, deltas, anchors, weights, clamp);
  return coder_cpu<Coder::kDecodeBackward>(deltas, anchors, &grad, weights, clamp);
}

}  // namespace

TORCH_LIBRARY_IMPL(focalops, CPU, m) {
  m.impl("box_iou", &box_iou_cpu);
  m.impl("encode_boxes", &encode_boxes_cpu);
  m.impl("decode_boxes", &decode_boxes_cpu);
  m.impl("_decode_boxes_backward", &decode_boxes_backward_cpu);
}

}  // namespace focalops
