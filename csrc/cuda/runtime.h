// Every ATen-CUDA call of the .cu launchers, in one place: the real ones, or (FOCALOPS_EMULATE)
// the SIMT emulation's (csrc/emu/runtime.h), which runs the same launchers on host memory.
#pragma once

#if defined(FOCALOPS_EMULATE)
#include "emu/runtime.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace focalops {
namespace gpu {

using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream(); }
inline int multiprocessors() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

}  // namespace gpu
}  // namespace focalops

#define FO_CUDA_CHECK(expr) C10_CUDA_CHECK(expr)
#define FO_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
// The dispatch key the .cu files register their kernels under.
#define FO_CUDA_DISPATCH_KEY CUDA
#endif
