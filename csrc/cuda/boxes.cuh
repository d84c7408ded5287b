// Box IoU and box coding, CUDA kernel bodies (torch-free; the .cu passes raw pointers).
// T is the storage type (float, double, a 16-bit float type); math runs in float
// (double for double) through the shared csrc/math/box.h.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/common.cuh"
#include "math/box.h"

namespace focalops {
namespace cuda {

using math::load_box;

// out[i, j] = IoU(boxes1[i], boxes2[j]), grid-stride over the N * M pairs.
template <typename T>
__global__ void box_iou_kernel(const T* __restrict__ b1, const T* __restrict__ b2, int64_t N, int64_t M,
                               T* __restrict__ out) {
  using A = math::opmath_t<T>;
  const int64_t total = N * M;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / M, j = idx - i * M;
    A a[4], b[4];
    load_box(b1 + 4 * i, a);
    load_box(b2 + 4 * j, b);
    out[idx] = static_cast<T>(math::iou(a, b));
  }
}

// out row i = f(x row i, anchors row i % M [, grad row i]); grid-stride over rows.
template <math::BoxCoding kOp, typename T>
__global__ void box_coder_kernel(const T* __restrict__ x, const T* __restrict__ anchors, const T* __restrict__ grad,
                                 int64_t rows, int64_t M, math::BoxWeights w, double clamp, T* __restrict__ out) {
  using A = math::opmath_t<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < rows;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    A xv[4], av[4], r[4];
    load_box(x + 4 * i, xv);
    load_box(anchors + 4 * (i % M), av);
    if (kOp == math::BoxCoding::kEncode) {
      math::encode_box(xv, av, w, r);
    } else if (kOp == math::BoxCoding::kDecode) {
      math::decode_box(xv, av, w, static_cast<A>(clamp), r);
    } else {
      A gv[4];
      load_box(grad + 4 * i, gv);
      math::decode_box_backward(gv, xv, av, w, static_cast<A>(clamp), r);
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) out[4 * i + k] = static_cast<T>(r[k]);
  }
}

}  // namespace cuda
}  // namespace focalops
