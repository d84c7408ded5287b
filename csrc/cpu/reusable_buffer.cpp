// reusable_buffer.h: one kept block behind a mutex (tensors may be freed on any thread).
#include "cpu/reusable_buffer.h"

#include <c10/core/CPUAllocator.h>

#include <mutex>

namespace focalops {
namespace cpu {
namespace {

constexpr size_t kMinBytes = size_t(1) << 22;  // below 4 MB glibc's heap reuses blocks itself

struct KeptBlock {
  std::mutex mutex;
  void* data = nullptr;
  size_t bytes = 0;
};

KeptBlock& kept() {
  static KeptBlock* block = new KeptBlock();  // never destroyed: tensors may outlive static teardown
  return *block;
}

void* take(size_t bytes) {
  KeptBlock& k = kept();
  std::lock_guard<std::mutex> lock(k.mutex);
  if (k.data == nullptr || k.bytes != bytes) return nullptr;
  void* data = k.data;
  k.data = nullptr;
  return data;
}

// Deleter: keep the block (replacing an older one), so the newest size wins.
void give_back(void* data, size_t bytes) {
  void* drop = data;
  {
    KeptBlock& k = kept();
    std::lock_guard<std::mutex> lock(k.mutex);
    std::swap(drop, k.data);
    k.bytes = bytes;
  }
  if (drop != nullptr) c10::GetCPUAllocator()->raw_deallocate(drop);
}

}  // namespace

at::Tensor reusable_empty_like(const at::Tensor& x) {
  const size_t bytes = x.nbytes();
  if (bytes < kMinBytes) return at::empty_like(x, at::MemoryFormat::Contiguous);
  void* data = take(bytes);
  if (data == nullptr) data = c10::GetCPUAllocator()->raw_allocate(bytes);
  return at::from_blob(
      data, x.sizes(), [bytes](void* p) { give_back(p, bytes); }, x.options());
}

}  // namespace cpu
}  // namespace focalops
