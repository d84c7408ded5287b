// The focal-loss family's CPU kernel (cpu/kernels/focal_loss.cpp).
#pragma once

#include <cstdint>

#include "cpu/stub.h"

namespace focalops {
namespace cpu {

// One tile of the focal loss on float buffers: out[i] = m[i] * (loss or gradient)(x[i], t[i]),
// t a 0/1 class indicator (hard) or a soft target. With out == nullptr nothing is written and
// the function returns the sum of the n values, added in a fixed order (16 lanes, then the
// tail) that is the same on every capability. With grad == false and grad_out set, the
// gradient m[i] * d loss / d x[i] also goes to grad_out[i] (the loss and its gradient share
// every exponential).
struct FocalTile {
  const float* x;
  const float* t;
  const float* m;
  int64_t n;
  float alpha;
  float gamma;
  int gamma_kind;  // math::GammaKind
  bool hard;
  bool grad;
  float* out;
  float* grad_out;
};
using FocalTileFn = double (*)(const FocalTile&);
extern Stub<FocalTileFn> focal_tile_stub;

}  // namespace cpu
}  // namespace focalops
