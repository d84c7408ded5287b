// Sigmoid focal loss, CPU: forward (elementwise or summed), backward, and the forward that
// also writes the gradient (the loss and its gradient share every exponential: the eager
// training step's one pass over the logits, focalops/ops/focal_loss.py).
//
// The flattened input is cut into fixed tiles of kTile elements. Each tile is staged into
// float buffers (logits, 0/1 or soft targets, a per-element multiplier that carries the
// ignore mask and the incoming gradient) and handed to one vectorised loop over the shared
// math in math/focal_loss.h. Tiles run in parallel; the sum adds per-tile partials in tile
// order, so the result does not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "checks/focal_loss.h"
#include "cpu/focal_loss.h"
#include "cpu/reusable_buffer.h"
#include "math/focal_loss.h"

namespace focalops {

namespace cpu {
Stub<FocalTileFn> focal_tile_stub;
}  // namespace cpu

namespace {

constexpr int64_t kTile = 1024;

using math::FocalMode;

// out[i] = m[i] * (loss or gradient)(x[i], t[i]) for i < n, or, with out == nullptr, the sum
// of those values in a fixed order. float32: the vectorised kernel of this CPU's capability.
// (grad_out: see cpu::FocalTile.)
double run_tile(bool hard, bool grad, int gk, const float* x, const float* t, const float* m, int64_t n, float alpha,
                float gamma, float* out, float* grad_out) {
  return cpu::focal_tile_stub.get()(cpu::FocalTile{x, t, m, n, alpha, gamma, gk, hard, grad, out, grad_out});
}

// float64 (the gradcheck path): the same math on scalars.
double run_tile(bool hard, bool grad, int gk, const double* x, const double* t, const double* m, int64_t n, double alpha,
                double gamma, double* out, double* grad_out) {
  const double a_pos = alpha < 0.0 ? 1.0 : alpha;
  const double a_neg = alpha < 0.0 ? 1.0 : 1.0 - alpha;
  return math::with_gamma_kind(gk, [&](auto g) {
    constexpr int G = decltype(g)::value;
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const math::LossGrad<double> r = hard ? math::focal_weighted<true, G>(x[i], t[i], m[i], alpha, a_pos, a_neg, gamma)
                                            : math::focal_weighted<false, G>(x[i], t[i], m[i], alpha, a_pos, a_neg, gamma);
      const double v = grad ? r.grad : r.loss;
      if (out != nullptr) {
        out[i] = v;
      } else {
        sum += v;
      }
      if (grad_out != nullptr) grad_out[i] = r.grad;
    }
    return sum;
  });
}

// Pointer to n values of type T: the data itself when no conversion is needed, else `buf`.
template <typename T, typename scalar_t>
const T* stage(const scalar_t* src, int64_t n, T* buf) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    return src;
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<T>(src[i]);
    return buf;
  }
}

void check_label(int64_t label, int64_t row, int64_t K, int64_t ignore_index) {
  TORCH_CHECK(label == ignore_index || label == -1 || (label >= 0 && label < K),
              "sigmoid_focal_loss: targets holds class index ", label, " at row ", row, ", outside [0, ", K,
              "); use -1 for background or ignore_index=", ignore_index, " to skip a row");
}

// Class-index targets of elements [begin, begin + n) as 0/1 in t and the row weight in m.
template <typename T>
void stage_labels(const int64_t* labels, int64_t K, int64_t ignore_index, int64_t begin, int64_t n, T* t, T* m) {
  int64_t i = 0;
  while (i < n) {
    const int64_t idx = begin + i;
    const int64_t row = idx / K;
    const int64_t col = idx - row * K;
    const int64_t label = labels[row];
    const bool ignored = label == ignore_index;
    check_label(label, row, K, ignore_index);
    const int64_t cnt = std::min(K - col, n - i);
    std::fill(t + i, t + i + cnt, T(0));
    std::fill(m + i, m + i + cnt, ignored ? T(0) : T(1));
    if (label >= col && label < col + cnt) t[i + label - col] = T(1);
    i += cnt;
  }
}

// Dense targets of elements [begin, begin + n): in [0, 1] (outside it the loss can go negative),
// so not NaN either. One branch-free pass; the message comes from a second one.
template <typename T>
void check_soft_targets(const T* t, int64_t begin, int64_t n) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= (t[i] >= T(0)) & (t[i] <= T(1));
  if (ok) return;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(t[i] >= T(0) && t[i] <= T(1), "sigmoid_focal_loss: dense targets must be in [0, 1], got ", t[i],
                " at flat index ", begin + i);
  }
}

template <typename scalar_t>
void focal_cpu(FocalMode mode, const at::Tensor& x, const at::Tensor& targets, const at::Tensor& grad, double alpha,
               double gamma, int64_t ignore_index, at::Tensor& out, at::Tensor* grad_out) {
  using T = math::opmath_t<scalar_t>;
  const int64_t numel = x.numel();
  const bool hard = focal_is_index_form(targets);
  const int64_t K = x.dim() > 0 ? x.size(-1) : 1;
  const int64_t* lp = hard ? targets.data_ptr<int64_t>() : nullptr;
  if (numel == 0) {
    // K = 0 still has rows, whose labels must be valid (only -1 and ignore_index are).
    for (int64_t row = 0; hard && row < targets.numel(); ++row) check_label(lp[row], row, K, ignore_index);
    if (mode == math::kFocalSum) out.zero_();
    return;
  }
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* tp = hard ? nullptr : targets.data_ptr<scalar_t>();
  const bool grad_each = mode == math::kFocalGrad && grad.dim() > 0 && grad.sizes() == x.sizes();
  const scalar_t* gp = grad_each ? grad.data_ptr<scalar_t>() : nullptr;
  const T gscale = (mode == math::kFocalGrad && !grad_each) ? static_cast<T>(grad.item<double>()) : T(1);
  scalar_t* op = mode == math::kFocalSum ? nullptr : out.data_ptr<scalar_t>();
  scalar_t* gop = grad_out != nullptr ? grad_out->data_ptr<scalar_t>() : nullptr;
  const int gk = math::gamma_kind(static_cast<T>(gamma));
  const int64_t ntiles = (numel + kTile - 1) / kTile;
  std::vector<double> partial(mode == math::kFocalSum ? ntiles : 0);

  at::parallel_for(0, ntiles, 4, [&](int64_t tile0, int64_t tile1) {
    T xb[kTile], tb[kTile], mb[kTile], ob[kTile], gb[kTile];
    for (int64_t k = tile0; k < tile1; ++k) {
      const int64_t begin = k * kTile;
      const int64_t n = std::min(kTile, numel - begin);
      const T* xt = stage<T>(xp + begin, n, xb);
      const T* tt = tb;
      if (hard) {
        stage_labels<T>(lp, K, ignore_index, begin, n, tb, mb);
      } else {
        tt = stage<T>(tp + begin, n, tb);
        check_soft_targets(tt, begin, n);
        for (int64_t i = 0; i < n; ++i) mb[i] = T(1);
      }
      if (gp) {
        for (int64_t i = 0; i < n; ++i) mb[i] *= static_cast<T>(gp[begin + i]);
      } else if (mode == math::kFocalGrad) {
        for (int64_t i = 0; i < n; ++i) mb[i] *= gscale;
      }
      T* ot = mode == math::kFocalSum ? nullptr : ob;
      T* gt = gop != nullptr ? gb : nullptr;
      if constexpr (std::is_same_v<T, scalar_t>) {
        if (op) ot = op + begin;
        if (gop) gt = gop + begin;
      }
      const double sum = run_tile(hard, mode == math::kFocalGrad, gk, xt, tt, mb, n, static_cast<T>(alpha),
                                  static_cast<T>(gamma), ot, gt);
      if (mode == math::kFocalSum) {
        partial[k] = sum;
      } else if (ot == ob) {
        for (int64_t i = 0; i < n; ++i) op[begin + i] = static_cast<scalar_t>(ob[i]);
      }
      if (gt == gb) {
        for (int64_t i = 0; i < n; ++i) gop[begin + i] = static_cast<scalar_t>(gb[i]);
      }
    }
  });
  if (mode == math::kFocalSum) {
    double s = 0.0;
    for (double v : partial) s += v;
    // A float32 sum rounds to inf from FLT_MAX + half an ulp on, as float arithmetic would
    // (fill_ rejects a finite double beyond the float range).
    constexpr double kFloatInf = 0x1.ffffffp+127;
    if (out.scalar_type() == at::kFloat && std::abs(s) >= kFloatInf) s = std::copysign(INFINITY, s);
    out.fill_(s);
  }
}

void dispatch(FocalMode mode, const at::Tensor& x, const at::Tensor& t, const at::Tensor& g, double alpha, double gamma,
              int64_t ignore_index, at::Tensor& out, at::Tensor* grad_out = nullptr) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sigmoid_focal_loss_cpu",
                                  [&] { focal_cpu<scalar_t>(mode, x, t, g, alpha, gamma, ignore_index, out, grad_out); });
}

// The forward's output: the 0-d sum (reduce) or the elementwise loss.
at::Tensor empty_loss(const at::Tensor& x, bool reduce) {
  return reduce ? at::empty({}, x.options().dtype(focal_sum_dtype(x))) : at::empty_like(x, at::MemoryFormat::Contiguous);
}

at::Tensor sigmoid_focal_loss_cpu(const at::Tensor& inputs, const at::Tensor& targets, double alpha, double gamma,
                                  int64_t ignore_index, bool reduce) {
  check_focal_args(inputs, targets, alpha, gamma, ignore_index);
  const at::Tensor x = inputs.contiguous();
  const at::Tensor t = targets.contiguous();
  at::Tensor out = empty_loss(x, reduce);
  dispatch(reduce ? math::kFocalSum : math::kFocalLoss, x, t, at::Tensor(), alpha, gamma, ignore_index, out);
  return out;
}

// The loss as sigmoid_focal_loss, and the gradient of its sum (reduce) or of each element
// (d loss[i] / d inputs[i]) in the layout of a contiguous inputs.
std::tuple<at::Tensor, at::Tensor> sigmoid_focal_loss_with_grad_cpu(const at::Tensor& inputs, const at::Tensor& targets,
                                                                     double alpha, double gamma, int64_t ignore_index,
                                                                     bool reduce) {
  check_focal_args(inputs, targets, alpha, gamma, ignore_index);
  const at::Tensor x = inputs.contiguous();
  const at::Tensor t = targets.contiguous();
  at::Tensor out = empty_loss(x, reduce);
  at::Tensor grad = cpu::reusable_empty_like(x);  // the same size every step
  dispatch(reduce ? math::kFocalSum : math::kFocalLoss, x, t, at::Tensor(), alpha, gamma, ignore_index, out, &grad);
  return {out, grad};
}

at::Tensor sigmoid_focal_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& inputs, const at::Tensor& targets,
                                           double alpha, double gamma, int64_t ignore_index, bool reduce) {
  check_focal_args(inputs, targets, alpha, gamma, ignore_index);
  check_focal_grad(grad, inputs, reduce);
  const at::Tensor x = inputs.contiguous();
  const at::Tensor t = targets.contiguous();
  const at::Tensor g = reduce ? grad : grad.to(x.scalar_type()).contiguous();
  at::Tensor out = cpu::reusable_empty_like(x);
  dispatch(math::kFocalGrad, x, t, g, alpha, gamma, ignore_index, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(focalops, CPU, m) {
  m.impl("sigmoid_focal_loss", &sigmoid_focal_loss_cpu);
  m.impl("_sigmoid_focal_loss_backward", &sigmoid_focal_loss_backward_cpu);
  m.impl("_sigmoid_focal_loss_with_grad", &sigmoid_focal_loss_with_grad_cpu);
}

}  // namespace focalops
