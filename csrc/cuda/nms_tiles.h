// The NMS bitmask tiles, host side (cuda/nms.cu and cuda/postprocess.cu): the budget, the
// tile allocation, the tensors' words.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstdlib>

#include "cuda/nms.cuh"

namespace focalops {
namespace gpu {

inline uint64_t* words(const at::Tensor& t) {
  return reinterpret_cast<uint64_t*>(t.data_ptr<int64_t>());
}

// The bitmask tile budget: cuda::kNmsTileBytes, or FOCALOPS_NMS_TILE_BYTES (a testing knob: small
// values run the tiled path on small inputs).
inline int64_t tile_budget() {
  const char* env = std::getenv("FOCALOPS_NMS_TILE_BYTES");
  if (env == nullptr || *env == '\0') return cuda::kNmsTileBytes;
  char* end = nullptr;
  const long long v = std::strtoll(env, &end, 10);
  TORCH_CHECK(end != env && *end == '\0' && v > 0, "FOCALOPS_NMS_TILE_BYTES must be a positive integer, got '", env,
              "'");
  return static_cast<int64_t>(v);
}

// The bitmask tile (at most the budget): a failed allocation names what it was for.
inline at::Tensor mask_tile(const char* op, int64_t num_words, int64_t n, const at::TensorOptions& opts) {
  try {
    return at::empty({num_words}, opts.dtype(at::kLong));
  } catch (const c10::OutOfMemoryError& e) {
    TORCH_CHECK_WITH(OutOfMemoryError, false, op, ": no GPU memory left for the ", (num_words * 8) >> 20,
                     " MiB NMS bitmask tile of ", n,
                     " boxes (the bitmask is built in tiles of at most ", tile_budget() >> 20,
                     " MiB; free GPU memory or pass fewer boxes). ", e.what());
    throw;
  }
}

}  // namespace gpu
}  // namespace focalops
