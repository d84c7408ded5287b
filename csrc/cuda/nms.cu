// NMS and batched NMS, CUDA entry points: tensor plumbing around cuda/nms.cuh. Sorting and
// gathers are ATen's (asynchronous); nms / batched_nms read the kept count back (their output
// size depends on the data). The NMS bitmask is built in tiles of at most
// cuda::kNmsTileBytes (see cuda/nms.cuh), so memory stays O(boxes) plus one tile.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>

#include "checks/nms.h"
#include "cuda/runtime.h"
#include "cuda/nms.cuh"
#include "cuda/nms_tiles.h"
#include "cuda/storage.h"

namespace focalops {
namespace {

at::Tensor nms_cuda_impl(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs, double iou_threshold) {
  const gpu::DeviceGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  const auto long_opts = boxes.options().dtype(at::kLong);
  if (n == 0) return at::empty({0}, long_opts);
  // Score order (ties: lower index first); batched: then grouped by class, score order kept.
  const at::Tensor order = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  at::Tensor perm = order;
  at::Tensor sorted_classes;
  if (idxs != nullptr) {
    const at::Tensor classes_by_score = idxs->index_select(0, order);
    const at::Tensor by_class = std::get<1>(at::sort(classes_by_score, /*stable=*/true, /*dim=*/0, /*descending=*/false));
    perm = order.index_select(0, by_class);
    sorted_classes = idxs->index_select(0, perm).contiguous();
  }
  const at::Tensor sorted_boxes = boxes.index_select(0, perm).to(at::kFloat).contiguous();
  const int64_t cb = cuda::nms_col_blocks(n);
  const int64_t W = cuda::nms_tile_blocks(n, 1, gpu::tile_budget());
  const at::Tensor mask = gpu::mask_tile(idxs != nullptr ? "batched_nms" : "nms", cuda::nms_tile_rows(n, W) * W, n, long_opts);
  const at::Tensor removed = at::zeros({cb}, long_opts);
  const at::Tensor keep_sorted = at::empty({n}, boxes.options().dtype(at::kByte));
  const cudaStream_t stream = gpu::current_stream();
  const float thr = static_cast<float>(iou_threshold);
  if (idxs != nullptr) {
    FO_CUDA_CHECK(cuda::launch_nms<cuda::kSortedClasses>(sorted_boxes.data_ptr<float>(), sorted_classes.data_ptr<int64_t>(),
                                                          n, thr, W, gpu::words(mask), gpu::words(removed),
                                                          keep_sorted.data_ptr<uint8_t>(), stream));
  } else {
    FO_CUDA_CHECK(cuda::launch_nms<cuda::kNoClasses>(sorted_boxes.data_ptr<float>(), nullptr, n, thr, W, gpu::words(mask),
                                                      gpu::words(removed), keep_sorted.data_ptr<uint8_t>(), stream));
  }
  // Back to score order; masked_select reads the count back (the one synchronisation).
  const at::Tensor keep = at::empty({n}, boxes.options().dtype(at::kBool)).index_copy_(0, perm, keep_sorted.to(at::kBool));
  return order.masked_select(keep.index_select(0, order));
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_args("nms", boxes, scores, iou_threshold);
  return nms_cuda_impl(boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  check_nms_args("batched_nms", boxes, scores, iou_threshold);
  check_batched_nms_idxs(boxes, idxs);
  return nms_cuda_impl(boxes, scores, &idxs, iou_threshold);
}

}  // namespace

TORCH_LIBRARY_IMPL(focalops, FO_CUDA_DISPATCH_KEY, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
}

}  // namespace focalops
