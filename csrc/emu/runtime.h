// The emulated side of csrc/cuda/runtime.h: the .cu launchers run on tensors of the emulated
// device (PrivateUse1, host memory; csrc/emu/device.cpp), kernels through csrc/emu/simt.h.
#pragma once

#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include "emu/simt.h"

namespace focalops {
namespace gpu {

struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};
inline cudaStream_t current_stream() { return nullptr; }
// Multiprocessors of the emulated device: FOCALOPS_EMU_SMS, else 2 (few, so that small tests
// already take several grid-stride steps).
int multiprocessors();

}  // namespace gpu
}  // namespace focalops

#define FO_CUDA_CHECK(expr)                                                                      \
  do {                                                                                           \
    const cudaError_t fo_err = (expr);                                                           \
    TORCH_CHECK(fo_err == cudaSuccess, "CUDA error ", static_cast<int>(fo_err), ": ", cudaGetErrorString(fo_err)); \
  } while (0)
#define FO_LAUNCH_CHECK() FO_CUDA_CHECK(cudaGetLastError())
#define FO_CUDA_DISPATCH_KEY PrivateUse1
