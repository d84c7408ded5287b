// Sigmoid focal loss value and d(loss)/d(logit): the one source of truth for CPU and CUDA.
//
//   loss = alpha_t * (1 - p_t)^gamma * ce,  p = sigmoid(x)
//
// Everything is built from e = exp(-|x|), which never overflows: sigmoid(x) and
// sigmoid(-x) are 1/(1+e) and e/(1+e) in some order, log1p(e) gives the log-sigmoids, so
// the loss and its gradient are finite for every finite logit. The gradient is written
// with (1 - p_t)^gamma, never (1 - p_t)^(gamma - 1), so gamma in (0, 1) is safe at p_t = 1.
// At x = +-inf both are the limits (loss 0 or inf, gradient finite): every product of a
// vanishing factor with an infinite one is mul_zero_wins. A NaN logit gives NaN, except where
// its weight alpha_t is 0: a weight of 0 gives 0 whatever the logit (as an ignored row).
#pragma once

#include <type_traits>

#include "math/common.h"

namespace focalops {
namespace math {

// What a focal-loss pass produces: the elementwise loss, its sum, or the gradient (times the
// incoming one). The CPU entry and the CUDA kernels (a template argument) name the same modes.
enum FocalMode : int { kFocalLoss = 0, kFocalSum = 1, kFocalGrad = 2 };

// gamma is a template parameter where it has a cheap closed form. Callers pass gamma in the
// type the math runs in (1e-50 is 0 in float32, and 0 * log(0) must not be reached).
enum GammaKind : int { kGammaZero = 0, kGammaOne = 1, kGammaTwo = 2, kGammaAny = 3 };

inline GammaKind gamma_kind(double gamma) {
  return gamma == 0.0 ? kGammaZero : gamma == 1.0 ? kGammaOne : gamma == 2.0 ? kGammaTwo : kGammaAny;
}

// f(std::integral_constant<int, G>()) for the GammaKind gk.
template <typename F>
inline auto with_gamma_kind(int gk, F&& f) {
  switch (gk) {
    case kGammaZero: return f(std::integral_constant<int, kGammaZero>());
    case kGammaOne: return f(std::integral_constant<int, kGammaOne>());
    case kGammaTwo: return f(std::integral_constant<int, kGammaTwo>());
    default: return f(std::integral_constant<int, kGammaAny>());
  }
}

// q^gamma for q in [0, 1] given log(q) (only evaluated for kGammaAny).
template <int G, typename T>
FO_HD T pow_gamma(T q, T log_q, T gamma) {
  if (G == kGammaZero) return T(1.f);
  if (G == kGammaOne) return q;
  if (G == kGammaTwo) return q * q;
  return exp_nonpos(gamma * log_q);
}

template <typename T>
struct LossGrad {
  T loss;
  T grad;  // d loss / d x
};

// T is float, double or a vector of floats (Lanes<T>); M is what comparing two T gives.
//
// Hard target (class-index form): t = 1 where `positive`, else 0; alpha_t already chosen.
// With z = +x for a positive and -x for a negative:
//   p_t = sigmoid(z), q = 1 - p_t = sigmoid(-z), ce = softplus(-z) = -log(p_t)
//   loss = a q^g ce,   d loss / dz = -a q^g (g p_t ce + q),   dz/dx = +-1.
// p_t ce is 0 where p_t is (z = -inf: the limit, not 0 * inf).
template <int G, typename T, typename M>
FO_HD LossGrad<T> focal_hard(T x, M positive, T alpha_t, T gamma) {
  using L = Lanes<T>;
  const T ax = L::select(x < T(0.f), T(0.f) - x, x);
  const T e = exp_nonpos(T(0.f) - ax);
  T d, l;
  sigmoid_log1p(e, d, l);
  const T z = L::select(positive, x, T(0.f) - x);
  const auto z_pos = z >= T(0.f);
  const T q = L::select(z_pos, e * d, d);
  const T p_t = L::select(z_pos, d, e * d);
  const T ce = fmax0(T(0.f) - z) + l;
  const T qg = pow_gamma<G>(q, T(0.f) - (fmax0(z) + l), gamma);
  const T p_t_ce = L::select(p_t > T(0.f), p_t * ce, T(0.f));
  const T dz = T(0.f) - mul_zero_wins(alpha_t, qg * (gamma * p_t_ce + q));
  return {mul_zero_wins(alpha_t, mul_zero_wins(qg, ce)), L::select(positive, dz, T(0.f) - dz)};
}

// Soft target t in [0, 1] (dense form, torchvision's formula):
//   ce = softplus(x) - x t,  1 - p_t = p (1 - t) + (1 - p) t,  alpha_t = a t + (1 - a)(1 - t)
//   d loss / dx = alpha_t (1-p_t)^g [g (1 - 2t) r ce + p (1 - t) - (1 - p) t],
//   r = p (1 - p) / (1 - p_t) in [0, 2] (0 where 1 - p_t underflows).
// p and 1 - p are both formed without cancellation, so hard 0/1 targets are exact too.
// ce is |x| w + log1p(e) with w = 1 - t (x >= 0) or t (x < 0), never inf - inf at x = +-inf.
template <int G, typename T>
FO_HD LossGrad<T> focal_soft(T x, T t, T alpha, T gamma) {
  using L = Lanes<T>;
  const T ax = L::select(x < T(0.f), T(0.f) - x, x);
  const T e = exp_nonpos(T(0.f) - ax);
  T d, l;
  sigmoid_log1p(e, d, l);
  const auto x_pos = x >= T(0.f);
  const T p = L::select(x_pos, d, e * d);
  const T pm = L::select(x_pos, e * d, d);
  const T one(1.f);
  const T q = p * (one - t) + pm * t;
  const T ce = mul_zero_wins(L::select(x_pos, one - t, t), ax) + l;
  const T alpha_t = L::select(alpha < T(0.f), one, alpha * t + (one - alpha) * (one - t));
  const T qg = G == kGammaAny ? pow_gamma<G>(q, log_unit(q), gamma) : pow_gamma<G>(q, T(0.f), gamma);
  const T r = L::select(q > T(0.f), p * pm / q, T(0.f));
  const T dx = qg * (gamma * (one - T(2.f) * t) * mul_zero_wins(r, ce) + p * (one - t) - pm * t);
  return {mul_zero_wins(alpha_t, mul_zero_wins(qg, ce)), mul_zero_wins(alpha_t, dx)};
}

// m * (loss, gradient) for a 0/1 indicator (kHard) or a soft target t; a_pos and a_neg are
// alpha_t of a positive and of a negative. m = 0 (an ignored row) gives 0, even for an
// infinite or NaN logit.
template <bool kHard, int G, typename T>
FO_HD LossGrad<T> focal_weighted(T x, T t, T m, T alpha, T a_pos, T a_neg, T gamma) {
  LossGrad<T> r;
  if constexpr (kHard) {
    const auto pos = t > T(0.5f);
    r = focal_hard<G>(x, pos, Lanes<T>::select(pos, a_pos, a_neg), gamma);
  } else {
    r = focal_soft<G>(x, t, alpha, gamma);
  }
  return {mul_zero_wins(m, r.loss), mul_zero_wins(m, r.grad)};
}

}  // namespace math
}  // namespace focalops
