// Box math shared by the CPU and CUDA kernels: IoU and torchvision BoxCoder encode/decode.
// Boxes are (x1, y1, x2, y2). T is a float, a double or a vector of floats (the CPU coders'
// vector lanes, whose exp_ / log_ are at::vec's, as torch.exp / torch.log on the CPU, but in the
// x86 default build: see cpu/kernels/vec.h).
#pragma once

#include "math/common.h"

namespace focalops {
namespace math {

// torchvision's box_iou formula, except that an empty union gives 0 instead of NaN. V is a
// float, a double or a vector of floats (one box against several). Callers that must agree bit
// for bit across devices (assignment, NMS) use float32; the products are never contracted into
// FMAs, so the result is also bit-identical to torch's float32 box_iou on CPU.
template <typename V>
FO_HD V iou(V ax1, V ay1, V ax2, V ay2, V bx1, V by1, V bx2, V by2) {
  using L = Lanes<V>;
  const V area_a = mul_rn(ax2 - ax1, ay2 - ay1);
  const V area_b = mul_rn(bx2 - bx1, by2 - by1);
  const V w = fmax0(L::min_lt(ax2, bx2) - L::max_gt(ax1, bx1));
  const V h = fmax0(L::min_lt(ay2, by2) - L::max_gt(ay1, by1));
  const V inter = mul_rn(w, h);
  const V uni = area_a + area_b - inter;
  return L::select(uni > V(0.f), inter / uni, V(0.f));
}

template <typename T>
FO_HD T iou(const T* a, const T* b) {
  return iou(a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]);
}

struct BoxWeights {
  float wx, wy, ww, wh;
};

// The three box coders (torchvision's BoxCoder): encode, decode, and decode's gradient with
// respect to the deltas. One name for the CPU kernels and the CUDA kernel's template argument.
enum class BoxCoding : int { kEncode = 0, kDecode = 1, kDecodeBackward = 2 };

// A box's four values from storage type T into the compute type A.
template <typename T, typename A>
FO_HD void load_box(const T* p, A* out) {
  for (int k = 0; k < 4; ++k) out[k] = static_cast<A>(p[k]);
}

// Regression deltas (dx, dy, dw, dh) that move `anchor` onto `gt` (BoxCoder.encode_single).
template <typename T>
FO_HD void encode_box(const T* gt, const T* anchor, BoxWeights w, T* out) {
  const T aw = anchor[2] - anchor[0];
  const T ah = anchor[3] - anchor[1];
  const T ax = anchor[0] + T(0.5) * aw;
  const T ay = anchor[1] + T(0.5) * ah;
  const T gw = gt[2] - gt[0];
  const T gh = gt[3] - gt[1];
  const T gx = gt[0] + T(0.5) * gw;
  const T gy = gt[1] + T(0.5) * gh;
  out[0] = T(w.wx) * (gx - ax) / aw;
  out[1] = T(w.wy) * (gy - ay) / ah;
  out[2] = T(w.ww) * log_(gw / aw);
  out[3] = T(w.wh) * log_(gh / ah);
}

// torchvision's bound on dw, dh when decoding: log(1000 / 16) (BoxCoder.bbox_xform_clip).
constexpr double kBoxDeltaClamp = 4.135166556742356;

// Box from deltas and anchor (BoxCoder.decode_single); dw, dh clamped at `clamp`
// (kBoxDeltaClamp in RetinaNet's post-processing) so exp() cannot overflow.
template <typename T>
FO_HD void decode_box(const T* delta, const T* anchor, BoxWeights w, T clamp, T* out) {
  const T aw = anchor[2] - anchor[0];
  const T ah = anchor[3] - anchor[1];
  const T ax = anchor[0] + T(0.5) * aw;
  const T ay = anchor[1] + T(0.5) * ah;
  const T dx = delta[0] / T(w.wx);
  const T dy = delta[1] / T(w.wy);
  T dw = delta[2] / T(w.ww);
  T dh = delta[3] / T(w.wh);
  using L = Lanes<T>;
  dw = L::select(dw > clamp, clamp, dw);  // a NaN delta stays NaN (torch.clamp)
  dh = L::select(dh > clamp, clamp, dh);
  // Products unfused, like the CPU and torchvision. The boxes are not bit-identical across
  // devices: exp_ is CUDA's expf on the GPU and libm's, at::vec's or math::exp_poly on the host,
  // which differ by up to 2 ulp.
  // What the tests hold them to: decode_boxes matches the reference within float32 assert_close
  // tolerance on both devices; CUDA postprocess matches the CPU with equal labels and counts,
  // boxes within rtol 3e-7 / atol 1e-5 and scores within rtol 3e-7.
  const T cx = mul_rn(dx, aw) + ax;
  const T cy = mul_rn(dy, ah) + ay;
  const T half_w = T(0.5) * (exp_(dw) * aw);
  const T half_h = T(0.5) * (exp_(dh) * ah);
  out[0] = cx - half_w;
  out[1] = cy - half_h;
  out[2] = cx + half_w;
  out[3] = cy + half_h;
}

// Gradient of decode_box with respect to the deltas, given the gradient of the box. dw and dh
// pass gradient where they are <= clamp (torch.clamp's convention).
template <typename T>
FO_HD void decode_box_backward(const T* grad, const T* delta, const T* anchor, BoxWeights w, T clamp, T* grad_delta) {
  const T aw = anchor[2] - anchor[0];
  const T ah = anchor[3] - anchor[1];
  const T dw = delta[2] / T(w.ww);
  const T dh = delta[3] / T(w.wh);
  grad_delta[0] = (grad[0] + grad[2]) * aw / T(w.wx);
  grad_delta[1] = (grad[1] + grad[3]) * ah / T(w.wy);
  using L = Lanes<T>;
  grad_delta[2] = L::select(dw <= clamp, (grad[2] - grad[0]) * (T(0.5) * exp_(dw) * aw) / T(w.ww), T(0));
  grad_delta[3] = L::select(dh <= clamp, (grad[3] - grad[1]) * (T(0.5) * exp_(dh) * ah) / T(w.wh), T(0));
}

}  // namespace math
}  // namespace focalops
