// SIMT emulation of the CUDA built-ins our kernels use, so that csrc/cuda/*.cu(h) compile
// unchanged as host C++ and run on the CPU (the FOCALOPS_CUDA_EMULATE build, tests only).
//
// Each CUDA thread of a block is a fiber; a block's fibers run on the calling thread, switching
// only at barriers and warp operations; blocks run one after another in a shuffled order.
// What a GPU would refuse is an error of the launch (read back by cudaGetLastError, like a real
// launch or kernel fault): a barrier some threads of the block skip or exit before, threads
// waiting at different barriers, a warp operation whose mask names a lane that is not there
// (exited, elsewhere, or past the end of the block), block and grid sizes past the hardware
// limits or the kernel's __launch_bounds__, and shared memory past 48 KiB without the opt-in.
// Static shared memory is one linker section, filled with 0xFF before every block (reads of
// what the block did not write show); dynamic shared memory is a heap block (ASan sees overruns).
// Kernel resources (registers, static shared bytes, launch bounds) come from the real nvcc
// build (kernel_resources.inc, written by kernel_resources.py).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static __attribute__((section("fo_emu_shared")))

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The 16-bit storage types, rounding to nearest even as cuda_fp16.h / cuda_bf16.h do. Own
// structs (not c10's) so that kernel names mangle as nvcc's, matching kernel_resources.inc.
struct __half {
  uint16_t x;
  __half() = default;
  __half(float f) : x(c10::detail::fp16_ieee_from_fp32_value(f)) {}
  __half(double f) : __half(static_cast<float>(f)) {}
  operator float() const { return c10::detail::fp16_ieee_to_fp32_value(x); }
};
struct __nv_bfloat16 {
  uint16_t x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : x(c10::detail::round_to_nearest_even(f)) {}
  __nv_bfloat16(double f) : __nv_bfloat16(static_cast<float>(f)) {}
  operator float() const { return c10::detail::f32_from_bits(x); }
};
inline float __half2float(__half h) { return h; }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return h; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }

// The runtime API we call.
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorAssert = 710,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;
struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace fo_emu {

// Where a barrier or warp operation is in the source: two threads meet only at the same one.
struct Site {
  const char* file;
  int line;
};

struct ThreadState {
  uint3 idx;
};
struct BlockState {
  uint3 idx;
  dim3 dim;
  dim3 grid;
  void* dynamic_shared;
};

ThreadState& this_thread();
const BlockState& this_block();

int sync_block(Site site, int pred, int op);
enum WarpKind : int { kShflDown = 0, kShflXor = 1, kBallot = 2 };
uint64_t warp_op(Site site, int kind, unsigned mask, uint64_t bits, int arg, int width);
[[noreturn]] void device_assert(const char* cond, const char* file, int line, const char* func);

cudaError_t last_error(bool clear);
// What the last failed launch said, when e is its error; else the name of e.
const char* error_string(cudaError_t e);
cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);
cudaError_t occupancy(int* blocks, const void* kernel, int threads, size_t dynamic_shared);

// Runs body() as every thread of the grid (or records why the launch fails).
void launch(const void* kernel, dim3 grid, dim3 block, size_t dynamic_shared, const std::function<void()>& body);

template <typename F>
struct Launcher {
  F* kernel;
  dim3 grid, block;
  size_t smem;
  template <typename... Args>
  void operator()(Args&&... args) const {
    // The arguments are copied once per launch, as the GPU copies them to its parameter space.
    auto body = [k = kernel, tup = std::make_tuple(args...)] { std::apply(k, tup); };
    launch(reinterpret_cast<const void*>(kernel), grid, block, smem, body);
  }
};
template <typename R, typename... P>
Launcher<R(P...)> make_launcher(R (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t) {
  return {kernel, grid, block, smem};
}

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a value over 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

}  // namespace fo_emu

#define FO_EMU_SITE (::fo_emu::Site{__FILE__, __LINE__})
#define FO_LAUNCH(grid, block, smem, stream, ...) ::fo_emu::make_launcher(__VA_ARGS__, grid, block, smem, stream)
#define FO_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::fo_emu::this_block().dynamic_shared)

#define threadIdx (::fo_emu::this_thread().idx)
#define blockIdx (::fo_emu::this_block().idx)
#define blockDim (::fo_emu::this_block().dim)
#define gridDim (::fo_emu::this_block().grid)
#define __syncthreads() ((void)::fo_emu::sync_block(FO_EMU_SITE, 0, 0))
#define __syncthreads_or(pred) ::fo_emu::sync_block(FO_EMU_SITE, (pred) ? 1 : 0, 1)
// (Width 32 only: our kernels shuffle across whole warps.)
#define __shfl_down_sync(mask, v, delta) \
  ::fo_emu::from_bits<decltype(v)>(        \
      ::fo_emu::warp_op(FO_EMU_SITE, ::fo_emu::kShflDown, mask, ::fo_emu::to_bits(v), delta, 32))
#define __shfl_xor_sync(mask, v, lane_mask) \
  ::fo_emu::from_bits<decltype(v)>(           \
      ::fo_emu::warp_op(FO_EMU_SITE, ::fo_emu::kShflXor, mask, ::fo_emu::to_bits(v), lane_mask, 32))
#define __ballot_sync(mask, pred) \
  static_cast<unsigned>(::fo_emu::warp_op(FO_EMU_SITE, ::fo_emu::kBallot, mask, (pred) ? 1 : 0, 0, 32))
#define FO_DEVICE_CHECK(cond)                                                 \
  do {                                                                        \
    if (!(cond)) ::fo_emu::device_assert(#cond, __FILE__, __LINE__, __func__); \
  } while (0)

inline cudaError_t cudaGetLastError() { return fo_emu::last_error(true); }
inline cudaError_t cudaPeekAtLastError() { return fo_emu::last_error(false); }
inline const char* cudaGetErrorString(cudaError_t e) { return fo_emu::error_string(e); }
template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return fo_emu::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
}
template <typename F>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, F* kernel, int threads, size_t smem) {
  return fo_emu::occupancy(blocks, reinterpret_cast<const void*>(kernel), threads, smem);
}

// CUDA declares these in the global namespace.
using std::isfinite;
using std::isinf;
using std::isnan;

// Intrinsics, to their documented semantics. Atomics are the compiler's __atomic built-ins, which
// ThreadSanitizer sees as atomic.
inline float __int_as_float(int i) { return fo_emu::from_bits<float>(static_cast<uint32_t>(i)); }
inline int __float_as_int(float f) { return static_cast<int>(static_cast<uint32_t>(fo_emu::to_bits(f))); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }
// "For 2^126 < |y| < 2^128, __fdividef(x, y) delivers 0" (CUDA math API); else x / y here
// (within 2 ulp on the GPU).
inline float __fdividef(float x, float y) {
  const float ay = std::fabs(y);
  if (ay > 0x1p126f && std::isfinite(ay)) return std::isfinite(x) ? 0.f : x * 0.f;
  return x / y;
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline int atomicMax(int* p, int v) {
  int old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
inline unsigned long long atomicOr(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_or(p, v, __ATOMIC_RELAXED);
}
