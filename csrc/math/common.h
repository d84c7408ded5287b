// Elementary functions shared by the CPU and CUDA kernels.
//
// The host float versions are branch-free polynomials so that the CPU loops vectorise (libm's
// expf/log1pf calls do not); the device versions use CUDA's libdevice functions; double always
// uses libm (it is the gradcheck / reference path, not the fast one).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FO_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Forced inlining keeps the math inside the CPU loops, where the vectoriser needs it.
#define FO_HD inline __attribute__((always_inline))
#else
#define FO_HD inline
#endif

namespace focalops {
namespace math {

FO_HD float int_bits_to_float(int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof(f));
  return f;
#endif
}

FO_HD int32_t float_to_int_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(f);
#else
  int32_t i;
  std::memcpy(&i, &f, sizeof(i));
  return i;
#endif
}

// Overloads that pick the float or double libm / libdevice function.
FO_HD float log_(float x) { return logf(x); }
FO_HD double log_(double x) { return ::log(x); }
FO_HD float exp_(float x) { return expf(x); }
FO_HD double exp_(double x) { return ::exp(x); }

// Products that the compiler may not fuse into an FMA with a following add (nvcc contracts by
// default; the host build does not): IoU must round identically on CPU and CUDA.
FO_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
FO_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

FO_HD float fmax0(float x) { return x > 0.f ? x : 0.f; }
FO_HD double fmax0(double x) { return x > 0.0 ? x : 0.0; }

// exp(x) for x <= 0 (every exponential in the focal loss has a non-positive argument).
// Cephes expf: |rel err| < 2 ulp; exactly 0 below the normal range.
FO_HD float exp_nonpos(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  const float xc = x < -87.3f ? -87.3f : x;
  // Round to nearest by the 1.5 * 2^23 trick: branch-free and vectorisable.
  const float n = (xc * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.f;
  const float scale = int_bits_to_float((static_cast<int32_t>(n) + 127) << 23);
  return x < -87.3f ? 0.f : y * scale;
#endif
}
FO_HD double exp_nonpos(double x) { return ::exp(x); }

// 2 * atanh(s) = log((1 + s) / (1 - s)) for |s| <= 1/3, by its odd series (rel err < 2e-8).
FO_HD float log_ratio_series(float s) {
  const float s2 = s * s;
  float p = 1.f / 13.f;
  p = p * s2 + 1.f / 11.f;
  p = p * s2 + 1.f / 9.f;
  p = p * s2 + 1.f / 7.f;
  p = p * s2 + 1.f / 5.f;
  p = p * s2 + 1.f / 3.f;
  return 2.f * s * (p * s2 + 1.f);
}

// For e = exp(-|x|) in [0, 1]: d = 1 / (1 + e) (= sigmoid(|x|)) and l = log1p(e)
// (= softplus(-|x|)), sharing one division: 1 / ((1 + e)(2 + e)) gives both d and the
// series argument e / (2 + e).
FO_HD void sigmoid_log1p(float e, float& d, float& l) {
  const float one_e = 1.f + e;
  const float two_e = 2.f + e;
  const float r = 1.f / (one_e * two_e);
  d = two_e * r;
  l = log_ratio_series(e * one_e * r);
}
FO_HD void sigmoid_log1p(double e, double& d, double& l) {
  d = 1.0 / (1.0 + e);
  l = ::log1p(e);
}

// log(x) for x in [0, 1] (0 gives -inf): exponent from the bits, mantissa in
// [sqrt(1/2), sqrt(2)) through the same series.
FO_HD float log_unit(float x) {
#if defined(__CUDA_ARCH__)
  return logf(x);
#else
  const int32_t bits = float_to_int_bits(x);
  int32_t e = (bits >> 23) - 127;
  float m = int_bits_to_float((bits & 0x007fffff) | 0x3f800000);
  const bool big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1 : e;
  const float y = static_cast<float>(e) * 0.693147180559945f + log_ratio_series((m - 1.f) / (m + 1.f));
  return x < 1.17549435e-38f ? -INFINITY : y;
#endif
}
FO_HD double log_unit(double x) { return ::log(x); }

}  // namespace math
}  // namespace focalops
