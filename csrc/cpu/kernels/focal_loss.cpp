// Sigmoid focal loss over one staged tile (cpu/focal_loss.h: FocalTile), on vector lanes (Vec)
// with the scalar math for the tail: both are math/focal_loss.h.
#include "cpu/focal_loss.h"
#include "cpu/kernels/vec.h"
#include "math/focal_loss.h"

namespace focalops {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kSumLanes = 16;  // the sum's lane count on every capability: same bits everywhere
static_assert(kSumLanes % Vec::size() == 0, "kSumLanes must be a multiple of the vector width");

// kGrad: the value is the gradient (else the loss); kStore: values go to out (else their sum
// is returned); kAlsoGrad: the gradient also goes to grad_out (with a loss value).
template <bool kHard, bool kGrad, bool kStore, bool kAlsoGrad, int G>
double tile(const FocalTile& a) {
  const float alpha = a.alpha, gamma = a.gamma;
  const float a_pos = alpha < 0.f ? 1.f : alpha;
  const float a_neg = alpha < 0.f ? 1.f : 1.f - alpha;
  const Vec alpha_v(alpha), a_pos_v(a_pos), a_neg_v(a_neg), gamma_v(gamma);
  constexpr int kAcc = kSumLanes / Vec::size();
  Vec acc[kAcc];
  for (auto& v : acc) v = Vec(0.f);
  int64_t i = 0;
  for (; i + kSumLanes <= a.n; i += kSumLanes) {
    for (int k = 0; k < kAcc; ++k) {
      const int64_t j = i + k * Vec::size();
      const math::LossGrad<Vec> r = math::focal_weighted<kHard, G>(Vec::loadu(a.x + j), Vec::loadu(a.t + j),
                                                                   Vec::loadu(a.m + j), alpha_v, a_pos_v, a_neg_v, gamma_v);
      const Vec v = kGrad ? r.grad : r.loss;
      if constexpr (kStore) {
        v.store(a.out + j);
      } else {
        acc[k] = acc[k] + v;
      }
      if constexpr (kAlsoGrad) r.grad.store(a.grad_out + j);
    }
  }
  double sum = 0.0;
  for (; i < a.n; ++i) {
    const math::LossGrad<float> r = math::focal_weighted<kHard, G>(a.x[i], a.t[i], a.m[i], alpha, a_pos, a_neg, gamma);
    const float v = kGrad ? r.grad : r.loss;
    if constexpr (kStore) {
      a.out[i] = v;
    } else {
      sum += v;
    }
    if constexpr (kAlsoGrad) a.grad_out[i] = r.grad;
  }
  if constexpr (!kStore) {
    float lanes[kSumLanes];
    for (int k = 0; k < kAcc; ++k) acc[k].store(lanes + k * Vec::size());
    for (const float v : lanes) sum += v;
  }
  return sum;
}

template <bool kHard, bool kGrad, bool kStore, bool kAlsoGrad>
double tile_gamma(const FocalTile& a) {
  return math::with_gamma_kind(a.gamma_kind,
                               [&](auto g) { return tile<kHard, kGrad, kStore, kAlsoGrad, decltype(g)::value>(a); });
}

template <bool kHard>
double tile_mode(const FocalTile& a) {
  if (a.grad) return tile_gamma<kHard, true, true, false>(a);
  if (a.grad_out != nullptr) {
    return a.out != nullptr ? tile_gamma<kHard, false, true, true>(a) : tile_gamma<kHard, false, false, true>(a);
  }
  return a.out != nullptr ? tile_gamma<kHard, false, true, false>(a) : tile_gamma<kHard, false, false, false>(a);
}

double focal_tile(const FocalTile& a) {
  return a.hard ? tile_mode<true>(a) : tile_mode<false>(a);
}

FO_REGISTER_KERNEL(focal_tile_stub, focal_tile);

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace focalops
