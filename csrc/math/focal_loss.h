// Sigmoid focal loss value and d(loss)/d(logit): the one source of truth for CPU and CUDA.
//
//   loss = alpha_t * (1 - p_t)^gamma * ce,  p = sigmoid(x)
//
// Everything is built from e = exp(-|x|), which never overflows: sigmoid(x) and
// sigmoid(-x) are 1/(1+e) and e/(1+e) in some order, log1p(e) gives the log-sigmoids, so
// the loss and its gradient are finite for every finite logit. The gradient is written
// with (1 - p_t)^gamma, never (1 - p_t)^(gamma - 1), so gamma in (0, 1) is safe at p_t = 1.
#pragma once

#include "math/common.h"

namespace focalops {
namespace math {

// gamma is a template parameter where it has a cheap closed form.
enum GammaKind : int { kGammaZero = 0, kGammaOne = 1, kGammaTwo = 2, kGammaAny = 3 };

inline GammaKind gamma_kind(double gamma) {
  return gamma == 0.0 ? kGammaZero : gamma == 1.0 ? kGammaOne : gamma == 2.0 ? kGammaTwo : kGammaAny;
}

// q^gamma for q in [0, 1] given log(q) (only evaluated for kGammaAny).
template <int G, typename T>
FO_HD T pow_gamma(T q, T log_q, T gamma) {
  if (G == kGammaZero) return T(1);
  if (G == kGammaOne) return q;
  if (G == kGammaTwo) return q * q;
  return exp_nonpos(gamma * log_q);
}

template <typename T>
struct LossGrad {
  T loss;
  T grad;  // d loss / d x
};

// Hard target (class-index form): t = 1 if `positive`, else 0; alpha_t already chosen.
// With z = +x for a positive and -x for a negative:
//   p_t = sigmoid(z), q = 1 - p_t = sigmoid(-z), ce = softplus(-z) = -log(p_t)
//   loss = a q^g ce,   d loss / dz = -a q^g (g p_t ce + q),   dz/dx = +-1.
template <int G, typename T>
FO_HD LossGrad<T> focal_hard(T x, bool positive, T alpha_t, T gamma) {
  const T ax = x < T(0) ? -x : x;
  const T e = exp_nonpos(-ax);
  T d, l;
  sigmoid_log1p(e, d, l);
  const T z = positive ? x : -x;
  const bool z_pos = z >= T(0);
  const T q = z_pos ? e * d : d;
  const T p_t = z_pos ? d : e * d;
  const T ce = fmax0(-z) + l;
  const T qg = pow_gamma<G>(q, -(fmax0(z) + l), gamma);
  const T dz = -alpha_t * qg * (gamma * p_t * ce + q);
  return {alpha_t * qg * ce, positive ? dz : -dz};
}

// Soft target t in [0, 1] (dense form, torchvision's formula):
//   ce = softplus(x) - x t,  1 - p_t = p (1 - t) + (1 - p) t,  alpha_t = a t + (1 - a)(1 - t)
//   d loss / dx = alpha_t (1-p_t)^g [g (1 - 2t) r ce + p (1 - t) - (1 - p) t],
//   r = p (1 - p) / (1 - p_t) in [0, 2] (0 where 1 - p_t underflows).
// p and 1 - p are both formed without cancellation, so hard 0/1 targets are exact too.
template <int G, typename T>
FO_HD LossGrad<T> focal_soft(T x, T t, T alpha, T gamma) {
  const T ax = x < T(0) ? -x : x;
  const T e = exp_nonpos(-ax);
  T d, l;
  sigmoid_log1p(e, d, l);
  const bool x_pos = x >= T(0);
  const T p = x_pos ? d : e * d;
  const T pm = x_pos ? e * d : d;
  const T q = p * (T(1) - t) + pm * t;
  const T ce = fmax0(x) - x * t + l;
  const T alpha_t = alpha < T(0) ? T(1) : alpha * t + (T(1) - alpha) * (T(1) - t);
  const T qg = G == kGammaAny ? pow_gamma<G>(q, log_unit(q), gamma) : pow_gamma<G>(q, T(0), gamma);
  const T r = q > T(0) ? p * pm / q : T(0);
  const T grad = alpha_t * qg * (gamma * (T(1) - T(2) * t) * r * ce + p * (T(1) - t) - pm * t);
  return {alpha_t * qg * ce, grad};
}

}  // namespace math
}  // namespace focalops
