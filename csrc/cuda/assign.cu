// Anchor assignment and RetinaNet targets, CUDA launchers (kernel bodies in assign.cuh).
// No host synchronisation: bad counts, NaN coordinates, bad matched values and bad labels of
// matched boxes are device-side assertions.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "checks/assign.h"
#include "cuda/runtime.h"
#include "cuda/assign.cuh"

namespace focalops {
namespace {

at::Tensor assign_cuda(const at::Tensor& anchors_, const at::Tensor& gt_boxes_, const at::Tensor& gt_counts_,
                       double fg_iou, double bg_iou, bool allow_low_quality) {
  check_assign_args(anchors_, gt_boxes_, gt_counts_, fg_iou, bg_iou);
  const gpu::DeviceGuard guard(anchors_.device());
  const auto anchors = anchors_.contiguous();
  const auto gt_boxes = gt_boxes_.contiguous();
  const auto gt_counts = gt_counts_.contiguous();
  const int64_t A = anchors.size(0), B = gt_boxes.size(0), G = gt_boxes.size(1);
  auto matched = at::empty({B, A}, anchors.options().dtype(at::kLong));
  if (matched.numel() == 0) return matched;
  TORCH_CHECK(B <= 65535, "assign: at most 65535 images per call on CUDA, got ", B);
  auto best = at::zeros({B, std::max<int64_t>(G, 1)}, anchors.options());
  const auto stream = gpu::current_stream();
  constexpr int64_t per_block1 = cuda::kAssignThreads * cuda::kAnchorsPerThread;
  const dim3 grid1(static_cast<unsigned>((A + per_block1 - 1) / per_block1), static_cast<unsigned>(B));
  FO_LAUNCH(grid1, cuda::kAssignThreads, 0, stream, cuda::assign_best_iou_kernel)(
      anchors.data_ptr<float>(), gt_boxes.data_ptr<float>(), gt_counts.data_ptr<int64_t>(), A, G,
      best.data_ptr<float>());
  FO_LAUNCH_CHECK();
  const dim3 grid2(static_cast<unsigned>((A + cuda::kAssignThreads - 1) / cuda::kAssignThreads),
                   static_cast<unsigned>(B));
  FO_LAUNCH(grid2, cuda::kAssignThreads, 0, stream, cuda::assign_match_kernel)(
      anchors.data_ptr<float>(), gt_boxes.data_ptr<float>(), gt_counts.data_ptr<int64_t>(), best.data_ptr<float>(), A,
      G, static_cast<float>(fg_iou), static_cast<float>(bg_iou), allow_low_quality, matched.data_ptr<int64_t>());
  FO_LAUNCH_CHECK();
  return matched;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> retinanet_targets_cuda(const at::Tensor& matched_,
                                                                      const at::Tensor& gt_boxes_,
                                                                      const at::Tensor& gt_labels_,
                                                                      const at::Tensor& anchors_,
                                                                      at::ArrayRef<double> weights,
                                                                      std::optional<int64_t> num_classes) {
  check_targets_args(matched_, gt_boxes_, gt_labels_, anchors_, weights, num_classes);
  const gpu::DeviceGuard guard(matched_.device());
  const auto matched = matched_.contiguous();
  const auto gt_boxes = gt_boxes_.contiguous();
  const auto gt_labels = gt_labels_.contiguous();
  const auto anchors = anchors_.contiguous();
  const int64_t B = matched.size(0), A = matched.size(1), G = gt_boxes.size(1);
  auto cls = at::empty({B, A}, matched.options());
  auto box = at::empty({B, A, 4}, gt_boxes.options());
  auto fg = at::empty({B, A}, matched.options().dtype(at::kBool));
  if (cls.numel() == 0) return {cls, box, fg};
  const auto w = box_weights(weights);
  const int blocks = cuda::grid_stride_blocks(B * A, 256, gpu::multiprocessors());
  const auto stream = gpu::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gt_boxes.scalar_type(), "retinanet_targets_cuda", [&] {
    FO_LAUNCH(blocks, 256, 0, stream, cuda::retinanet_targets_kernel<scalar_t>)(
        matched.data_ptr<int64_t>(), gt_boxes.data_ptr<scalar_t>(), gt_labels.data_ptr<int64_t>(),
        anchors.data_ptr<scalar_t>(), B, A, G, num_classes.value_or(-1), w, cls.data_ptr<int64_t>(),
        box.data_ptr<scalar_t>(), fg.data_ptr<bool>());
    FO_LAUNCH_CHECK();
  });
  return {cls, box, fg};
}

}  // namespace

TORCH_LIBRARY_IMPL(focalops, FO_CUDA_DISPATCH_KEY, m) {
  m.impl("assign", &assign_cuda);
  m.impl("retinanet_targets", &retinanet_targets_cuda);
}

}  // namespace focalops
