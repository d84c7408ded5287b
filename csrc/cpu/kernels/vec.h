// Included first by every per-ISA kernel source (csrc/cpu/kernels/*.cpp): at::vec for the
// capability being compiled, the shared math on Vectorized<float> lanes, and registration.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include "cpu/kernels.h"
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

namespace focalops {
namespace math {

template <>
struct Lanes<at::vec::Vectorized<float>> {
  using V = at::vec::Vectorized<float>;
  using Int = at::vec::Vectorized<int32_t>;
#if defined(CPU_CAPABILITY_DEFAULT)
  // Bitwise: at::vec's generic blendv branches per lane, which keeps the compiler from
  // vectorising the default build.
  static inline V select(const V& m, const V& a, const V& b) { return b ^ ((a ^ b) & m); }
#else
  static inline V select(const V& m, const V& a, const V& b) { return V::blendv(b, a, m); }
#endif
  static inline V fmadd(const V& a, const V& b, const V& c) { return at::vec::fmadd(a, b, c); }
  static inline Int bits(const V& x) { return at::vec::cast<int32_t>(x); }
  static inline V from_bits(const Int& i) { return at::vec::cast<float>(i); }
  static inline Int trunc_to_int(const V& x) { return at::vec::convert_to_int_of_same_size(x); }
  static inline V to_float(const Int& i) { return at::vec::convert_to_fp_of_same_size<float>(i); }
};

// at::vec's exponential and logarithm (the functions torch.exp / torch.log run on the CPU): box
// coding, whose arguments span the whole float range (the focal loss has its own on [0, 1]).
inline at::vec::Vectorized<float> exp_(const at::vec::Vectorized<float>& x) { return x.exp(); }
inline at::vec::Vectorized<float> log_(const at::vec::Vectorized<float>& x) { return x.log(); }

}  // namespace math
}  // namespace focalops

// Registers `fn` (a function of this translation unit) as this capability's kernel of `stub`.
#define FO_REGISTER_KERNEL(stub, fn) \
  static const ::focalops::cpu::Registration<decltype(&fn)> fo_registration_##fn(::focalops::cpu::stub, FO_THIS_CAPABILITY, &fn)
