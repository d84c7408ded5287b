// The post-processing family's CPU kernel (cpu/kernels/postprocess.cpp).
#pragma once

#include <cstdint>

#include "cpu/stub.h"

namespace focalops {
namespace cpu {

// The score pass: the first index i in [begin, n) with x[i] > lo or isnan(x[i]), or n.
using FirstAboveFn = int64_t (*)(const float* x, int64_t begin, int64_t n, float lo);
extern Stub<FirstAboveFn> first_above_stub;

}  // namespace cpu
}  // namespace focalops
