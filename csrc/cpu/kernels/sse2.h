// The vector lanes of the x86 default build (x86 CPUs without AVX2): 8 floats in two SSE2
// registers, SSE2 being every x86-64 CPU's baseline. ATen's generic Vectorized<float>, which this
// build would otherwise use, compares lane by lane through branches and calls libm once per lane
// for exp / log, so GCC leaves most of the kernels scalar (measured on the focal loss: 12x the
// avx2 build's time, assignment 40x). Eight lanes like the generic type, so tiles and the focal
// loss's 16-lane sum keep their shape. Only what the kernels and math/ use is here.
#pragma once

#include <emmintrin.h>

#include <cstdint>

namespace focalops {
namespace cpu {
namespace CPU_CAPABILITY {

struct Sse2Int {
  __m128i lo, hi;
  Sse2Int() = default;
  Sse2Int(__m128i l, __m128i h) : lo(l), hi(h) {}
  explicit Sse2Int(int32_t v) : lo(_mm_set1_epi32(v)), hi(lo) {}
  friend Sse2Int operator&(const Sse2Int& a, const Sse2Int& b) { return {_mm_and_si128(a.lo, b.lo), _mm_and_si128(a.hi, b.hi)}; }
  friend Sse2Int operator|(const Sse2Int& a, const Sse2Int& b) { return {_mm_or_si128(a.lo, b.lo), _mm_or_si128(a.hi, b.hi)}; }
};

// Comparisons give all-ones / all-zero lanes, as at::vec's (NaN compares false but for !=).
struct Sse2Vec {
  __m128 lo, hi;
  static constexpr int size() { return 8; }
  Sse2Vec() = default;
  Sse2Vec(__m128 l, __m128 h) : lo(l), hi(h) {}
  Sse2Vec(float v) : lo(_mm_set1_ps(v)), hi(lo) {}  // NOLINT: implicit, as at::vec's
  static Sse2Vec loadu(const void* p) {
    const float* f = static_cast<const float*>(p);
    return {_mm_loadu_ps(f), _mm_loadu_ps(f + 4)};
  }
  void store(void* p) const {
    float* f = static_cast<float*>(p);
    _mm_storeu_ps(f, lo);
    _mm_storeu_ps(f + 4, hi);
  }
  // Bit i set where lane i is 0.0 (at::vec's zero_mask; an all-ones mask lane is a NaN: not 0).
  int zero_mask() const {
    const __m128 z = _mm_setzero_ps();
    return _mm_movemask_ps(_mm_cmpeq_ps(lo, z)) | (_mm_movemask_ps(_mm_cmpeq_ps(hi, z)) << 4);
  }
};

#define FO_SSE2_BINARY(op, fn)                                 \
  inline Sse2Vec operator op(const Sse2Vec& a, const Sse2Vec& b) { \
    return {fn(a.lo, b.lo), fn(a.hi, b.hi)};                   \
  }
FO_SSE2_BINARY(+, _mm_add_ps)
FO_SSE2_BINARY(-, _mm_sub_ps)
FO_SSE2_BINARY(*, _mm_mul_ps)
FO_SSE2_BINARY(/, _mm_div_ps)
FO_SSE2_BINARY(&, _mm_and_ps)
FO_SSE2_BINARY(|, _mm_or_ps)
FO_SSE2_BINARY(^, _mm_xor_ps)
FO_SSE2_BINARY(<, _mm_cmplt_ps)
FO_SSE2_BINARY(<=, _mm_cmple_ps)
FO_SSE2_BINARY(>, _mm_cmpgt_ps)
FO_SSE2_BINARY(>=, _mm_cmpge_ps)
FO_SSE2_BINARY(==, _mm_cmpeq_ps)
FO_SSE2_BINARY(!=, _mm_cmpneq_ps)  // unordered: NaN != NaN
#undef FO_SSE2_BINARY

}  // namespace CPU_CAPABILITY
}  // namespace cpu

namespace math {

template <>
struct Lanes<cpu::CPU_CAPABILITY::Sse2Vec> {
  using V = cpu::CPU_CAPABILITY::Sse2Vec;
  using Int = cpu::CPU_CAPABILITY::Sse2Int;
  static inline V select(const V& m, const V& a, const V& b) {
    return {_mm_or_ps(_mm_and_ps(m.lo, a.lo), _mm_andnot_ps(m.lo, b.lo)),
            _mm_or_ps(_mm_and_ps(m.hi, a.hi), _mm_andnot_ps(m.hi, b.hi))};
  }
  // minps / maxps are a < b ? a : b and a > b ? a : b exactly.
  static inline V min_lt(const V& a, const V& b) { return {_mm_min_ps(a.lo, b.lo), _mm_min_ps(a.hi, b.hi)}; }
  static inline V max_gt(const V& a, const V& b) { return {_mm_max_ps(a.lo, b.lo), _mm_max_ps(a.hi, b.hi)}; }
  // No FMA in this build: rounded twice, as Lanes<float> of the scalar tails.
  static inline V fmadd(const V& a, const V& b, const V& c) { return a * b + c; }
  static inline Int bits(const V& x) { return {_mm_castps_si128(x.lo), _mm_castps_si128(x.hi)}; }
  static inline V from_bits(const Int& i) { return {_mm_castsi128_ps(i.lo), _mm_castsi128_ps(i.hi)}; }
  static inline Int trunc_to_int(const V& x) { return {_mm_cvttps_epi32(x.lo), _mm_cvttps_epi32(x.hi)}; }
  static inline V to_float(const Int& i) { return {_mm_cvtepi32_ps(i.lo), _mm_cvtepi32_ps(i.hi)}; }
};

// libm's exp / log have no SSE2 form: the polynomials of math/common.h (within 1 ulp).
FO_HD cpu::CPU_CAPABILITY::Sse2Vec exp_(const cpu::CPU_CAPABILITY::Sse2Vec& x) { return exp_poly(x); }
FO_HD cpu::CPU_CAPABILITY::Sse2Vec log_(const cpu::CPU_CAPABILITY::Sse2Vec& x) { return log_poly(x); }

}  // namespace math
}  // namespace focalops
