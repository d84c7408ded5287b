// CUDA helpers shared by the kernels: storage <-> compute type conversion, device-side checks,
// deterministic block reduction. Depends on the CUDA runtime only (nvcc-checkable without torch).
#pragma once

#include <assert.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "math/common.h"

namespace focalops {
namespace cuda {

#if !defined(FOCALOPS_EMULATE)  // the SIMT emulation (csrc/emu/simt.h) defines these three
// Fails the kernel like PyTorch's CUDA_KERNEL_ASSERT: the error surfaces at the next
// synchronisation, so checking data on the device costs no host round trip.
#define FO_DEVICE_CHECK(cond)                                                         \
  do {                                                                                \
    if (!(cond)) __assert_fail(#cond, __FILE__, static_cast<unsigned>(__LINE__), __func__); \
  } while (0)
// A kernel launch, written once for nvcc and the emulation: FO_LAUNCH(grid, block, shared
// bytes, stream, kernel)(args...).
#define FO_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
// The kernel's dynamic shared memory, as a T*.
#define FO_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

// Blocks of a grid-stride launch over n elements, `threads` per block: one per `threads`
// elements, at most kGridBlocksPerSm per multiprocessor (past that the kernel's loop strides;
// tests/conftest.py one_grid sizes inputs past one such grid).
constexpr int64_t kGridBlocksPerSm = 32;
inline int grid_stride_blocks(int64_t n, int threads, int64_t sms) {
  const int64_t wanted = (n + threads - 1) / threads;
  const int64_t most = sms * kGridBlocksPerSm;
  return static_cast<int>(wanted < 1 ? 1 : wanted < most ? wanted : most);
}

// Compute type of a storage type (math::opmath_t). A class, not the alias: the kernels'
// signatures name OpMath<T>::type, which keeps their mangled names (csrc/emu/kernel_resources.inc).
template <typename T>
struct OpMath {
  using type = math::opmath_t<T>;
};

template <typename T>
__device__ __forceinline__ typename OpMath<T>::type load_as_opmath(T v) {
  return v;
}
template <>
__device__ __forceinline__ float load_as_opmath(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float load_as_opmath(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T, typename A>
__device__ __forceinline__ T store_from_opmath(A v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __half store_from_opmath<__half, float>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 store_from_opmath<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

// N values loaded or stored as one access (16 bytes for a full pack; N = 1 is a plain scalar,
// so the tail and the unaligned path never claim more alignment than the data has).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Sum over the block in a fixed order (warp shuffles, then warp 0); valid in thread 0.
template <typename A, int kThreads>
__device__ __forceinline__ A block_sum(A v) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block must be whole warps");
  __shared__ A warp_sums[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : A(0);
  if (warp == 0) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  }
  return v;
}

}  // namespace cuda
}  // namespace focalops
