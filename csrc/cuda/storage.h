// CUDA storage type of an ATen scalar type: the launchers hand kernels __half / __nv_bfloat16
// pointers for at::Half / at::BFloat16 data (same bits), so the .cuh files need no torch.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace focalops {

template <typename scalar_t>
struct CudaStorage {
  using type = scalar_t;
};
template <>
struct CudaStorage<at::Half> {
  using type = __half;
};
template <>
struct CudaStorage<at::BFloat16> {
  using type = __nv_bfloat16;
};

}  // namespace focalops
