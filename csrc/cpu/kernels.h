// The vectorised CPU kernels and how one set of them is chosen.
//
// As in ATen's native/cpu + DispatchStub: every csrc/cpu/kernels/*.cpp is compiled once per
// capability (setup.py: default; avx2 with -mavx2 -mfma -mf16c; avx512 with -mavx512f/bw/vl/dq;
// only default off x86), each copy registering its functions in the stubs below. At load time
// the capability is taken from ATen (the CPU's best, or ATEN_CPU_CAPABILITY, never above what
// the CPU has), and every stub hands out that capability's function.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>

namespace focalops {
namespace cpu {

enum class Capability : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr int kNumCapabilities = 3;

// The capability in use: ATen's choice, lowered to the best one compiled; fixed at the first
// call (the library makes it when it loads).
Capability capability();
const char* capability_name(Capability c);

template <typename Fn>
struct Stub {
  Fn fns[kNumCapabilities] = {};

  Fn get() const {
    const Fn fn = fns[static_cast<int>(capability())];
    TORCH_INTERNAL_ASSERT(fn != nullptr, "focalops: a CPU kernel is missing from the ", capability_name(capability()),
                          " build");
    return fn;
  }
};

template <typename Fn>
struct Registration {
  Registration(Stub<Fn>& stub, Capability c, Fn fn) { stub.fns[static_cast<int>(c)] = fn; }
};

// Structure-of-arrays boxes: n boxes in four columns.
struct Columns {
  const float* x1;
  const float* y1;
  const float* x2;
  const float* y2;
};

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

// IoU of `box` with every one of n boxes: out[j] = IoU(box, boxes[j]).
using IouRowFn = void (*)(const float* box, Columns boxes, int64_t n, float* out);
extern Stub<IouRowFn> iou_row_stub;

// Box coding (torchvision's BoxCoder) of rows [begin, end) of n x 4 floats: out row i = f(x row
// i, anchors row i % M[, grad row i]), f = encode (x: ground truth), decode (x: deltas, dw and
// dh clamped at clamp) or the gradient of decode with respect to the deltas.
enum class BoxCoding : int { kEncode = 0, kDecode = 1, kDecodeBackward = 2 };
struct BoxRows {
  BoxCoding op;
  const float* x;
  const float* anchors;
  const float* grad;
  int64_t M;
  float wx, wy, ww, wh;
  float clamp;
  float* out;
};
using CodeRowsFn = void (*)(const BoxRows& a, int64_t begin, int64_t end);
extern Stub<CodeRowsFn> code_rows_stub;

// Assignment pass 1: max over boxes [begin, end) of IoU(box, boxes[i]); 0 for an empty range.
using MaxIouFn = float (*)(Columns boxes, int64_t begin, int64_t end, const float* box);
extern Stub<MaxIouFn> max_iou_stub;

// Assignment pass 2: one ground-truth box g (whose best IoU over all anchors is box_best)
// against anchors [begin, begin + n): keeps each anchor's best value and index (the first
// index wins ties) and flags anchors whose IoU equals box_best (when box_best > 0).
using MatchBoxFn = void (*)(Columns anchors, int64_t begin, int64_t n, const float* box, int32_t g, float box_best,
                            float* best_val, int32_t* best_idx, int32_t* low_quality);
extern Stub<MatchBoxFn> match_box_stub;

// NMS: removed[j] becomes non-zero where IoU(box, boxes[j]) > thr, for j in [0, n).
using SuppressFn = void (*)(const float* box, Columns boxes, int64_t n, float thr, int32_t* removed);
extern Stub<SuppressFn> suppress_stub;

// Post-processing's score pass: the first index i in [begin, n) with x[i] > lo or isnan(x[i]),
// or n.
using FirstAboveFn = int64_t (*)(const float* x, int64_t begin, int64_t n, float lo);
extern Stub<FirstAboveFn> first_above_stub;

}  // namespace cpu
}  // namespace focalops
