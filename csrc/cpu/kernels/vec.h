// Included first by every per-ISA kernel source (csrc/cpu/kernels/*.cpp): the vector lanes of the
// capability being compiled (at::vec's; SSE2 ones in the x86 default build), the shared math on
// them, and registration.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include "cpu/stub.h"
#include "math/common.h"

#if defined(CPU_CAPABILITY_AVX512)
#define FO_THIS_CAPABILITY ::focalops::cpu::Capability::kAvx512
#elif defined(CPU_CAPABILITY_AVX2)
#define FO_THIS_CAPABILITY ::focalops::cpu::Capability::kAvx2
#elif defined(CPU_CAPABILITY_DEFAULT)
#define FO_THIS_CAPABILITY ::focalops::cpu::Capability::kDefault
#else
#error "csrc/cpu/kernels/*.cpp are compiled by setup.py once per capability (CPU_CAPABILITY_<X> defined)"
#endif

#if defined(CPU_CAPABILITY_DEFAULT) && defined(__SSE2__)
#include "cpu/kernels/sse2.h"
#define FO_SSE2_LANES 1
#endif

namespace focalops {
namespace cpu {
namespace CPU_CAPABILITY {
// The kernels' vector lanes: at::vec's, but SSE2 in the x86 default build (cpu/kernels/sse2.h).
#if defined(FO_SSE2_LANES)
using Vec = Sse2Vec;
#else
using Vec = at::vec::Vectorized<float>;
#endif
}  // namespace CPU_CAPABILITY
}  // namespace cpu

#if !defined(FO_SSE2_LANES)
namespace math {

template <>
struct Lanes<at::vec::Vectorized<float>> {
  using V = at::vec::Vectorized<float>;
  using Int = at::vec::Vectorized<int32_t>;
#if defined(CPU_CAPABILITY_AVX512)
  // One bitwise select (m ? a : b per bit). at::vec's blendv turns the vector mask back into a
  // mask register first: a compare and a blend.
  static inline V select(const V& m, const V& a, const V& b) {
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(m), _mm512_castps_si512(a),
                                                         _mm512_castps_si512(b), 0xca));
  }
  // minps / maxps are a < b ? a : b and a > b ? a : b (b for NaN or equal operands): no compare,
  // no mask, no blend.
  static inline V min_lt(const V& a, const V& b) { return _mm512_min_ps(a, b); }
  static inline V max_gt(const V& a, const V& b) { return _mm512_max_ps(a, b); }
#elif defined(CPU_CAPABILITY_AVX2)
  static inline V select(const V& m, const V& a, const V& b) { return V::blendv(b, a, m); }
  static inline V min_lt(const V& a, const V& b) { return _mm256_min_ps(a, b); }
  static inline V max_gt(const V& a, const V& b) { return _mm256_max_ps(a, b); }
#else
  // The default build off x86 (ARM: NEON Vectorized): a bitwise select.
  static inline V select(const V& m, const V& a, const V& b) { return b ^ ((a ^ b) & m); }
  static inline V min_lt(const V& a, const V& b) { return select(a < b, a, b); }
  static inline V max_gt(const V& a, const V& b) { return select(a > b, a, b); }
#endif
  static inline V fmadd(const V& a, const V& b, const V& c) { return at::vec::fmadd(a, b, c); }
  static inline Int bits(const V& x) { return at::vec::cast<int32_t>(x); }
  static inline V from_bits(const Int& i) { return at::vec::cast<float>(i); }
  static inline Int trunc_to_int(const V& x) { return at::vec::convert_to_int_of_same_size(x); }
  static inline V to_float(const Int& i) { return at::vec::convert_to_fp_of_same_size<float>(i); }
};

// at::vec's exponential and logarithm (the functions torch.exp / torch.log run on the CPU): box
// coding, whose arguments span the whole float range (the focal loss has its own on [0, 1]).
FO_HD at::vec::Vectorized<float> exp_(const at::vec::Vectorized<float>& x) { return x.exp(); }
FO_HD at::vec::Vectorized<float> log_(const at::vec::Vectorized<float>& x) { return x.log(); }

}  // namespace math
#endif
}  // namespace focalops

// Registers `fn` (a function of this translation unit) as this capability's kernel of `stub`.
#define FO_REGISTER_KERNEL(stub, fn) \
  static const ::focalops::cpu::Registration<decltype(&fn)> fo_registration_##fn(::focalops::cpu::stub, FO_THIS_CAPABILITY, &fn)
