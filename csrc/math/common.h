// Elementary functions shared by the CPU and CUDA kernels.
//
// The float math is written once, as templates over a lane type V: one float (CPU scalar code
// and CUDA), or a vector of floats (the per-ISA CPU kernels in csrc/cpu/kernels/: at::vec's
// Vectorized<float>, or SSE2 lanes in the x86 default build; vec.h adds their Lanes). Both
// instantiations run the same IEEE operations in the same order (builds use -ffp-contract=off;
// Lanes::fmadd fuses where the ISA has FMA), so vector bodies and scalar tails agree bit for bit,
// and so do the avx2 and avx512 builds. The focal loss's float functions (exp_nonpos, log_unit,
// ...) are branch-free polynomials on the host and CUDA's libdevice functions on the device; box
// coding and scores call log_ / exp_, which are libm on the host and libdevice on the device;
// double always uses libm (the gradcheck / reference path). So CPU and CUDA agree bit for bit
// only where the math is IEEE +, -, *, / alone (IoU, hence assignment and NMS decisions on the
// same boxes); through exp / log (focal loss, box decoding, scores) they agree within a few ulp,
// which is what the CPU-vs-CUDA tests check (assert_close, not equal).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#define FO_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Forced inlining keeps the math inside the CPU loops.
#define FO_HD inline __attribute__((always_inline))
#else
#define FO_HD inline
#endif

// The device branches: nvcc's device pass, or the SIMT emulation build (csrc/emu), which runs
// them on the host with CUDA's intrinsics emulated.
#if defined(__CUDA_ARCH__) || defined(FOCALOPS_EMULATE)
#define FO_DEVICE_CODE 1
#else
#define FO_DEVICE_CODE 0
#endif
#if defined(FOCALOPS_EMULATE)
#include "emu/simt.h"
#endif

namespace focalops {
namespace math {

// The compute type of a storage type: double for double, float for everything else (float and
// the half types: at::Half / at::BFloat16 on the CPU, __half / __nv_bfloat16 on CUDA).
template <typename T>
using opmath_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

FO_HD float int_bits_to_float(int32_t i) {
#if FO_DEVICE_CODE
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof(f));
  return f;
#endif
}

FO_HD int32_t float_to_int_bits(float f) {
#if FO_DEVICE_CODE
  return __float_as_int(f);
#else
  int32_t i;
  std::memcpy(&i, &f, sizeof(i));
  return i;
#endif
}

// What the generic math needs beyond arithmetic and comparisons. Mask is what a comparison of
// two V gives; Int holds the bits of V. min_lt(a, b) is a < b ? a : b and max_gt(a, b) is
// a > b ? a : b, exactly (a NaN or equal operands give b): x86's minps / maxps.
template <typename V>
struct Lanes;

// fmadd(a, b, c) = a * b + c, fused exactly where the vector lanes of the same build fuse it
// (CUDA, or a host ISA with FMA: the avx2 / avx512 builds, ARM), so that scalar tails and
// vector bodies round alike.
template <>
struct Lanes<float> {
  using Int = int32_t;
  static FO_HD float select(bool m, float a, float b) { return m ? a : b; }
  static FO_HD float min_lt(float a, float b) { return a < b ? a : b; }
  static FO_HD float max_gt(float a, float b) { return a > b ? a : b; }
  static FO_HD float fmadd(float a, float b, float c) {
#if FO_DEVICE_CODE
    return __fmaf_rn(a, b, c);
#elif defined(__FMA__) || defined(__ARM_FEATURE_FMA)
    return std::fma(a, b, c);
#else
    return a * b + c;
#endif
  }
  static FO_HD int32_t bits(float x) { return float_to_int_bits(x); }
  static FO_HD float from_bits(int32_t i) { return int_bits_to_float(i); }
  // Only called on finite values within the int32 range.
  static FO_HD int32_t trunc_to_int(float x) { return static_cast<int32_t>(x); }
  static FO_HD float to_float(int32_t i) { return static_cast<float>(i); }
};

template <>
struct Lanes<double> {
  static FO_HD double select(bool m, double a, double b) { return m ? a : b; }
  static FO_HD double min_lt(double a, double b) { return a < b ? a : b; }
  static FO_HD double max_gt(double a, double b) { return a > b ? a : b; }
  static FO_HD double fmadd(double a, double b, double c) { return a * b + c; }
};

// Overloads that pick the float or double libm / libdevice function.
FO_HD float log_(float x) { return logf(x); }
FO_HD double log_(double x) { return ::log(x); }
FO_HD float exp_(float x) { return expf(x); }
FO_HD double exp_(double x) { return ::exp(x); }

// Products that the compiler may not fuse into an FMA with a following add (nvcc contracts by
// default; the host build passes -ffp-contract=off): IoU must round identically on CPU and CUDA.
FO_HD float mul_rn(float a, float b) {
#if FO_DEVICE_CODE
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
FO_HD double mul_rn(double a, double b) {
#if FO_DEVICE_CODE
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
template <typename V>
FO_HD V mul_rn(V a, V b) {
  return a * b;
}

// max(x, 0); NaN gives 0.
template <typename V>
FO_HD V fmax0(V x) {
  return Lanes<V>::max_gt(x, V(0));
}

// a * b, except that a == 0 gives 0 even where b is infinite: the limit of a product whose
// first factor vanishes faster (focal loss terms at infinite logits, weights of ignored rows).
// A NaN in either factor still gives NaN (unless a == 0).
template <typename V>
FO_HD V mul_zero_wins(V a, V b) {
  return Lanes<V>::select(a == V(0.f), V(0.f), a * b);
}

// exp(xc) = y * 2^n for |xc| <= 104 (Cephes expf): n = round(xc / ln 2), y = exp(r) on the
// remainder r = xc - n ln 2 (ln 2 split in two). The callers scale y by 2^n.
template <typename V>
FO_HD V exp_reduced(V xc, V& n) {
  using L = Lanes<V>;
  // Round to nearest by the 1.5 * 2^23 trick: branch-free.
  n = (xc * V(1.44269504088896341f) + V(12582912.f)) - V(12582912.f);
  const V r = (xc - n * V(0.693359375f)) + n * V(2.12194440e-4f);
  V p(1.9875691500e-4f);
  p = L::fmadd(p, r, V(1.3981999507e-3f));
  p = L::fmadd(p, r, V(8.3334519073e-3f));
  p = L::fmadd(p, r, V(4.1665795894e-2f));
  p = L::fmadd(p, r, V(1.6666665459e-1f));
  p = L::fmadd(p, r, V(5.0000001201e-1f));
  return L::fmadd(p * r, r, r) + V(1.f);
}

// 2^n for an integer-valued n in [-126, 127], from its bits: (n + 127) * 2^23 is an exact integer.
template <typename V>
FO_HD V pow2i(V n) {
  using L = Lanes<V>;
  return L::from_bits(L::trunc_to_int((n + V(127.f)) * V(8388608.f)));
}

// exp(x) for x <= 0 (every exponential in the focal loss has a non-positive argument; rounding
// can make one slightly positive, which counts as 0). Cephes expf: |rel err| < 2 ulp; exactly 0
// below the normal range; NaN stays NaN.
template <typename V>
FO_HD V exp_nonpos_poly(V x) {
  using L = Lanes<V>;
  const V lo(-87.3f);
  // NaN -> lo and x > 0 -> 0: the int conversion below always gets a value in range.
  const V xc = L::select(x >= lo, L::select(x > V(0.f), V(0.f), x), lo);
  V n;
  const V y = exp_reduced(xc, n);
  return L::select(x < lo, V(0.f), y * pow2i(n) + (x - x));  // x - x: 0, or NaN for NaN
}

FO_HD float exp_nonpos(float x) {
#if FO_DEVICE_CODE
  return expf(x);
#else
  return exp_nonpos_poly(x);
#endif
}
FO_HD double exp_nonpos(double x) { return ::exp(x); }
template <typename V>
FO_HD V exp_nonpos(V x) {
  return exp_nonpos_poly(x);
}

// 2 * atanh(s) = log((1 + s) / (1 - s)) for |s| <= 1/3, by its odd series (rel err < 2e-8).
template <typename V>
FO_HD V log_ratio_series(V s) {
  using L = Lanes<V>;
  const V s2 = s * s;
  V p(1.f / 13.f);
  p = L::fmadd(p, s2, V(1.f / 11.f));
  p = L::fmadd(p, s2, V(1.f / 9.f));
  p = L::fmadd(p, s2, V(1.f / 7.f));
  p = L::fmadd(p, s2, V(1.f / 5.f));
  p = L::fmadd(p, s2, V(1.f / 3.f));
  return V(2.f) * s * L::fmadd(p, s2, V(1.f));
}

// For e = exp(-|x|) in [0, 1]: d = 1 / (1 + e) (= sigmoid(|x|)) and l = log1p(e)
// (= softplus(-|x|)), sharing one division: 1 / ((1 + e)(2 + e)) gives both d and the
// series argument e / (2 + e).
template <typename V>
FO_HD void sigmoid_log1p(V e, V& d, V& l) {
  const V one_e = V(1.f) + e;
  const V two_e = V(2.f) + e;
  const V r = V(1.f) / (one_e * two_e);
  d = two_e * r;
  l = log_ratio_series(e * one_e * r);
}
// float: on the device the division is __fdividef (one MUFU.RCP and a multiply instead of the
// IEEE division subroutine): its divisor (1 + e)(2 + e) is in [2, 6], inside the range where
// __fdividef is within 2 ulp. (The exponential stays expf: on sm_90 it is already an FMA range
// reduction plus ex2.approx, 2 ulp, while __expf's error grows to ~100 ulp near -87.) The
// host code is the template above, unchanged.
FO_HD void sigmoid_log1p(float e, float& d, float& l) {
#if FO_DEVICE_CODE
  const float one_e = 1.f + e;
  const float two_e = 2.f + e;
  const float r = __fdividef(1.f, one_e * two_e);
  d = two_e * r;
  l = log_ratio_series(e * one_e * r);
#else
  sigmoid_log1p<float>(e, d, l);
#endif
}
FO_HD void sigmoid_log1p(double e, double& d, double& l) {
  d = 1.0 / (1.0 + e);
  l = ::log1p(e);
}

// x = 2^e m with m in [sqrt(1/2), sqrt(2)), for a positive normal x given by its bits; `bias` is
// the exponent bias (127, or 150 for a subnormal scaled by 2^23 first).
template <typename V>
FO_HD void split_exponent(typename Lanes<V>::Int bits, V bias, V& e, V& m) {
  using L = Lanes<V>;
  using I = typename L::Int;
  // The biased exponent times 2^23 converts to float exactly.
  e = L::to_float(bits & I(0x7f800000)) * V(1.f / 8388608.f) - bias;
  m = L::from_bits((bits & I(0x007fffff)) | I(0x3f800000));
  const auto big = m > V(1.41421356f);
  m = L::select(big, V(0.5f) * m, m);
  e = L::select(big, e + V(1.f), e);
}

// log(x) for x in [0, 1] (0 gives -inf): exponent from the bits, mantissa in
// [sqrt(1/2), sqrt(2)) through the same series.
template <typename V>
FO_HD V log_unit_poly(V x) {
  using L = Lanes<V>;
  V e, m;
  split_exponent(L::bits(x), V(127.f), e, m);
  const V y = e * V(0.693147180559945f) + log_ratio_series((m - V(1.f)) / (m + V(1.f)));
  return L::select(x < V(1.17549435e-38f), V(-INFINITY), y);
}

// exp(x) for any float, by exp_nonpos_poly's range reduction and polynomial: 2^n is applied as
// two normal powers of two, so results down in the subnormal range and up to FLT_MAX round once.
// Overflow gives inf, underflow 0, NaN stays NaN. For lanes without a vector exp of their own
// (the x86 default build's SSE2 lanes).
template <typename V>
FO_HD V exp_poly(V x) {
  using L = Lanes<V>;
  const V lo(-104.f), hi(88.8f);  // exp(-104) < FLT_TRUE_MIN / 2, exp(88.8) > FLT_MAX
  const V xc = L::select(x >= lo, L::select(x > hi, hi, x), lo);  // NaN -> lo: in range below
  V n;
  const V y = exp_reduced(xc, n);
  // n in [-150, 128] as n1 + n2, each in [-75, 64]: 2^n1 and 2^n2 are normal floats.
  const V n1 = L::to_float(L::trunc_to_int(n * V(0.5f)));
  const V e = (y * pow2i(n1)) * pow2i(n - n1);
  return L::select(x < lo, V(0.f), L::select(x > hi, V(INFINITY), e + (x - x)));  // x - x: NaN for NaN
}

// log(x) for any float: log_unit_poly's reduction over every positive float (subnormals are
// scaled by 2^23 first), then Cephes logf's polynomial in f = m - 1 (exact) and its split ln 2:
// within 1 ulp near x = 1, where the atanh series' division costs a third rounding. 0 gives
// -inf, inf gives inf, a negative or NaN x gives NaN.
template <typename V>
FO_HD V log_poly(V x) {
  using L = Lanes<V>;
  const auto tiny = x < V(1.17549435e-38f);
  V e, m;
  split_exponent(L::bits(L::select(tiny, x * V(8388608.f), x)), L::select(tiny, V(150.f), V(127.f)), e, m);
  const V f = m - V(1.f);
  const V z = f * f;
  V p(7.0376836292e-2f);
  p = L::fmadd(p, f, V(-1.1514610310e-1f));
  p = L::fmadd(p, f, V(1.1676998740e-1f));
  p = L::fmadd(p, f, V(-1.2420140846e-1f));
  p = L::fmadd(p, f, V(1.4249322787e-1f));
  p = L::fmadd(p, f, V(-1.6668057665e-1f));
  p = L::fmadd(p, f, V(2.0000714765e-1f));
  p = L::fmadd(p, f, V(-2.4999993993e-1f));
  p = L::fmadd(p, f, V(3.3333331174e-1f));
  const V t = p * f * z + e * V(-2.12194440e-4f) - V(0.5f) * z;
  const V y = (f + t) + e * V(0.693359375f);
  const V special = L::select(x == V(0.f), V(-INFINITY), L::select(x == V(INFINITY), x, V(NAN)));
  return L::select(x > V(0.f), L::select(x < V(INFINITY), y, special), special);
}

FO_HD float log_unit(float x) {
#if FO_DEVICE_CODE
  return logf(x);
#else
  return log_unit_poly(x);
#endif
}
FO_HD double log_unit(double x) { return ::log(x); }
template <typename V>
FO_HD V log_unit(V x) {
  return log_unit_poly(x);
}

}  // namespace math
}  // namespace focalops
