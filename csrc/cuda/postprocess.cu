// RetinaNet post-processing, CUDA entry point: tensor plumbing around cuda/postprocess.cuh.
// Top-k, sorting and gathers are ATen's (asynchronous); the op never synchronises with the
// host (static output shapes). The NMS bitmask is built in tiles (cuda/nms_tiles.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>

#include "checks/postprocess.h"
#include "cuda/nms_tiles.h"
#include "cuda/postprocess.cuh"
#include "cuda/runtime.h"
#include "cuda/storage.h"

namespace focalops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> postprocess_cuda(
    const at::Tensor& cls_logits, const at::Tensor& box_deltas, const at::Tensor& anchors, at::IntArrayRef level_sizes,
    const at::Tensor& image_sizes, double score_thresh, int64_t topk_candidates, double nms_thresh,
    int64_t detections_per_img) {
  check_postprocess_args(cls_logits, box_deltas, anchors, level_sizes, image_sizes, score_thresh, topk_candidates,
                         nms_thresh, detections_per_img);
  const gpu::DeviceGuard guard(cls_logits.device());
  const int64_t B = cls_logits.size(0), A = cls_logits.size(1), K = cls_logits.size(2), D = detections_per_img;
  const auto mt = postprocess_math_type(cls_logits);
  const auto opts = box_deltas.options();
  const auto long_opts = opts.dtype(at::kLong);
  // Candidate slots: min(topk, anchors * K) per level, static.
  int64_t M = 0;
  for (const int64_t s : level_sizes) M += std::min(topk_candidates, s * K);
  // A device-side assertion: checking the sizes costs no host synchronisation.
  at::_assert_async(at::logical_and(image_sizes >= 0, at::isfinite(image_sizes)).all(),
                    "postprocess: image_sizes must be >= 0 and finite");
  if (B == 0 || M == 0 || D == 0) {
    return {at::zeros({B, D, 4}, opts), at::zeros({B, D}, opts), at::full({B, D}, -1, long_opts),
            at::zeros({B}, long_opts)};
  }
  TORCH_CHECK(B <= 65535, "postprocess: at most 65535 images per call on CUDA, got ", B);
  const at::Tensor logits = cls_logits.contiguous();
  const at::Tensor deltas = box_deltas.contiguous();
  const at::Tensor anc = anchors.contiguous();
  const at::Tensor sizes = image_sizes.contiguous();
  at::Tensor cand_boxes = at::empty({B, M, 4}, opts);
  at::Tensor cand_boxes_f = at::empty({B, M, 4}, opts.dtype(at::kFloat));
  at::Tensor cand_scores = at::empty({B, M}, opts);
  at::Tensor cand_labels = at::empty({B, M}, long_opts);
  at::Tensor cand_keys = at::empty({B, M}, long_opts);
  const cudaStream_t stream = gpu::current_stream();
  const double clamp = math::kBoxDeltaClamp;

  // 1. Per level: top-k logits of every image (the threshold is applied to their scores).
  int64_t anchor_start = 0, slot = 0;
  for (int64_t l = 0; l < static_cast<int64_t>(level_sizes.size()); ++l) {
    const int64_t n_l = level_sizes[l] * K, k = std::min(topk_candidates, n_l);
    if (k > 0) {
      const at::Tensor seg = logits.narrow(1, anchor_start, level_sizes[l]).reshape({B, n_l});
      const auto top = at::topk(seg, k, /*dim=*/1, /*largest=*/true, /*sorted=*/false);
      const at::Tensor vals = std::get<0>(top).contiguous();
      const at::Tensor idx = std::get<1>(top).contiguous();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "postprocess_candidates", [&] {
        using Logit = typename CudaStorage<scalar_t>::type;
        using T = typename cuda::OpMath<Logit>::type;
        const cudaError_t err = cuda::launch_candidates<Logit, T>(
            reinterpret_cast<const Logit*>(vals.data_ptr<scalar_t>()), idx.data_ptr<int64_t>(), B, k, deltas.data_ptr<T>(),
            anc.data_ptr<T>(), sizes.data_ptr<T>(), A, K, l, anchor_start, slot, M, static_cast<T>(score_thresh),
            static_cast<T>(clamp), cand_boxes.data_ptr<T>(), cand_boxes_f.data_ptr<float>(), cand_scores.data_ptr<T>(),
            cand_labels.data_ptr<int64_t>(), cand_keys.data_ptr<int64_t>(), stream);
        FO_CUDA_CHECK(err);
      });
    }
    anchor_start += level_sizes[l];
    slot += k;
  }

  // 2. Per image: order by (score desc, level, flat index): sort by key, then stable by score.
  const at::Tensor by_key = std::get<1>(at::sort(cand_keys, /*stable=*/false, /*dim=*/1, /*descending=*/false));
  const at::Tensor keyed_scores = cand_scores.gather(1, by_key);
  const auto by_score = at::sort(keyed_scores, /*stable=*/true, /*dim=*/1, /*descending=*/true);
  const at::Tensor perm = by_key.gather(1, std::get<1>(by_score));
  const at::Tensor perm4 = perm.unsqueeze(-1).expand({B, M, 4});
  const at::Tensor sorted_scores = std::get<0>(by_score).contiguous();
  const at::Tensor sorted_boxes = cand_boxes.gather(1, perm4).contiguous();
  const at::Tensor sorted_boxes_f = cand_boxes_f.gather(1, perm4).contiguous();
  const at::Tensor sorted_labels = cand_labels.gather(1, perm).contiguous();

  // 3. Class-aware bitmask NMS per image, first D kept written with their padding.
  at::Tensor out_boxes = at::empty({B, D, 4}, opts);
  at::Tensor out_scores = at::empty({B, D}, opts);
  at::Tensor out_labels = at::empty({B, D}, long_opts);
  at::Tensor counts = at::zeros({B}, long_opts);
  const int64_t cb = cuda::nms_col_blocks(M);
  const int64_t W = cuda::nms_tile_blocks(M, B, gpu::tile_budget());
  const at::Tensor mask = gpu::mask_tile("postprocess", B * cuda::nms_tile_rows(M, W) * W, B * M, long_opts);
  // More than one tile, or more removed-words than shared memory holds: the removed-words, kept
  // flags and stop flags live in global memory.
  const bool tiled = W < cb || cb * static_cast<int64_t>(sizeof(uint64_t)) > cuda::kNmsSharedRemovedBytes;
  const at::Tensor removed = tiled ? at::zeros({B, cb}, long_opts) : at::Tensor();
  const at::Tensor keep = tiled ? at::zeros({B, M}, opts.dtype(at::kByte)) : at::Tensor();
  const at::Tensor done = tiled ? at::zeros({B}, opts.dtype(at::kInt)) : at::Tensor();
  const cuda::PostprocessState state{tiled ? gpu::words(removed) : nullptr, tiled ? keep.data_ptr<uint8_t>() : nullptr,
                                     tiled ? done.data_ptr<int>() : nullptr};
  AT_DISPATCH_FLOATING_TYPES(mt, "postprocess_nms", [&] {
    FO_CUDA_CHECK(cuda::launch_postprocess_nms<scalar_t>(
        sorted_boxes_f.data_ptr<float>(), sorted_boxes.data_ptr<scalar_t>(), sorted_scores.data_ptr<scalar_t>(),
        sorted_labels.data_ptr<int64_t>(), B, M, D, static_cast<float>(nms_thresh), W, gpu::words(mask), state,
        out_boxes.data_ptr<scalar_t>(), out_scores.data_ptr<scalar_t>(), out_labels.data_ptr<int64_t>(),
        counts.data_ptr<int64_t>(), stream));
  });
  return {out_boxes, out_scores, out_labels, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(focalops, FO_CUDA_DISPATCH_KEY, m) { m.impl("postprocess", &postprocess_cuda); }

}  // namespace focalops
