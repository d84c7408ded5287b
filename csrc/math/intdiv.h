// Division by a run-time constant with one multiply-high, an add and a shift (Granlund and
// Montgomery; PyTorch's IntDivider<unsigned int>), for 32-bit index math in the CUDA kernels
// (an integer division is a ~20-instruction subroutine on the GPU).
//
//   IntDivider d(K);  d.div(n) == n / K  for every K in [1, 2^31) and n in [0, 2^31).
//
// Proof sketch: with s = ceil(log2 K) and m = floor(2^32 (2^s - K) / K) + 1, the exact quotient
// is floor(n (2^32 + m) / 2^(32 + s)), and umulhi(n, m) + n = floor(n (2^32 + m) / 2^32) < 2^32
// for n < 2^31. tests/test_intdiv.py checks it on the host for divisors and dividends at
// every power-of-two boundary.
#pragma once

#include <cstdint>

#include "math/common.h"

namespace focalops {
namespace math {

FO_HD uint32_t umulhi32(uint32_t a, uint32_t b) {
#if FO_DEVICE_CODE
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

struct IntDivider {
  uint32_t divisor = 1;
  uint32_t magic = 1;
  uint32_t shift = 0;

  IntDivider() = default;
  // divisor in [1, 2^31) (checked by the callers).
  explicit IntDivider(uint32_t d) : divisor(d) {
    shift = 0;
    while (shift < 31 && (uint32_t{1} << shift) < d) ++shift;
    const uint64_t one = 1;
    magic = static_cast<uint32_t>(((one << 32) * ((one << shift) - d)) / d + 1);
  }

  // n / divisor for n in [0, 2^31).
  FO_HD uint32_t div(uint32_t n) const { return (umulhi32(n, magic) + n) >> shift; }
};

}  // namespace math
}  // namespace focalops
