// Anchor assignment (torchvision Matcher, fused) and RetinaNet targets, CPU.
//
// The A x G IoU matrix is never stored. Anchors are staged as float columns, then
//   pass 1: best IoU of every box: each thread takes a fixed slice of the anchors and keeps a
//           partial max per box; the partials are combined after (max is order-free, so any
//           thread count gives the same bits);
//   pass 2: per tile of anchors, a loop over the boxes keeps each anchor's best box (first
//           index wins ties), and whether it ties some box's best IoU (low-quality match).
// The loops over anchors are the vectorised kernels of cpu/kernels/assign.cpp.
// Extra memory: O(A + threads * B * G) floats.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "checks/assign.h"
#include "cpu/assign.h"
#include "math/box.h"

namespace focalops {

namespace cpu {
Stub<MaxIouFn> max_iou_stub;
Stub<MatchBoxFn> match_box_stub;
}  // namespace cpu

namespace {

constexpr int64_t kTile = 512;

void check_finite_boxes(const float* p, int64_t n, const char* what) {
  std::atomic<bool> bad{false};
  at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
    bool b = false;
    for (int64_t i = begin; i < end; ++i) b |= std::isnan(p[i]);
    if (b) bad = true;
  });
  TORCH_CHECK(!bad, "assign: ", what, " contain NaN coordinates");
}

at::Tensor assign_cpu(const at::Tensor& anchors_, const at::Tensor& gt_boxes_, const at::Tensor& gt_counts_, double fg_iou,
                      double bg_iou, bool allow_low_quality) {
  check_assign_args(anchors_, gt_boxes_, gt_counts_, fg_iou, bg_iou);
  const auto anchors = anchors_.contiguous();
  const auto gt_boxes = gt_boxes_.contiguous();
  const auto gt_counts = gt_counts_.contiguous();
  const int64_t A = anchors.size(0), B = gt_boxes.size(0), G = gt_boxes.size(1);
  // Checked even when there is nothing to match: a bad input is an error whatever its size.
  const int64_t* counts = gt_counts.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(counts[b] >= 0 && counts[b] <= G, "assign: gt_counts must be in [0, G] = [0, ", G, "], got ", counts[b],
                " for image ", b);
  }
  const float* gt = gt_boxes.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) check_finite_boxes(gt + b * G * 4, counts[b] * 4, "gt_boxes");
  // Anchors staged as columns, checked as they are read.
  std::vector<float> cols(4 * A);
  std::atomic<bool> nan_anchor{false};
  at::parallel_for(0, A, 1 << 14, [&](int64_t begin, int64_t end) {
    if (cpu::stage_columns(anchors.data_ptr<float>(), A, begin, end, cols.data())) nan_anchor = true;
  });
  TORCH_CHECK(!nan_anchor, "assign: anchors contain NaN coordinates");
  auto matched = at::empty({B, A}, anchors.options().dtype(at::kLong));
  if (matched.numel() == 0) return matched;
  const cpu::Columns c = cpu::columns(cols.data(), A);

  // Pass 1: best IoU of every valid box.
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), A / 1024));
  std::vector<float> partial(slices * B * G, 0.f);
  const cpu::MaxIouFn max_iou = cpu::max_iou_stub.get();
  at::parallel_for(0, slices, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t begin = A * s / slices, end = A * (s + 1) / slices;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t g = 0; g < counts[b]; ++g) partial[(s * B + b) * G + g] = max_iou(c, begin, end, gt + (b * G + g) * 4);
    }
  });
  std::vector<float> best(B * G, 0.f);
  for (int64_t s = 0; s < slices; ++s)
    for (int64_t k = 0; k < B * G; ++k) best[k] = std::max(best[k], partial[s * B * G + k]);

  // Pass 2: per (image, tile of anchors).
  const float fg = static_cast<float>(fg_iou), bg = static_cast<float>(bg_iou);
  const int64_t tiles = (A + kTile - 1) / kTile;
  int64_t* out = matched.data_ptr<int64_t>();
  const cpu::MatchBoxFn match_box = cpu::match_box_stub.get();
  at::parallel_for(0, B * tiles, 1, [&](int64_t t0, int64_t t1) {
    float best_val[kTile];
    int32_t best_idx[kTile], low_quality[kTile];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / tiles, begin = (t % tiles) * kTile, n = std::min(kTile, A - begin);
      int64_t* row = out + b * A + begin;
      if (counts[b] == 0) {
        std::fill(row, row + n, int64_t(-1));
        continue;
      }
      std::fill(best_val, best_val + n, -1.f);
      std::fill(best_idx, best_idx + n, 0);
      std::fill(low_quality, low_quality + n, 0);
      for (int64_t g = 0; g < counts[b]; ++g) {
        match_box(c, begin, n, gt + (b * G + g) * 4, static_cast<int32_t>(g), best[b * G + g], best_val, best_idx,
                  low_quality);
      }
      for (int64_t j = 0; j < n; ++j) {
        const float v = best_val[j];
        int64_t r = v >= fg ? best_idx[j] : (v >= bg ? -2 : -1);
        if (allow_low_quality && low_quality[j]) r = best_idx[j];
        row[j] = r;
      }
    }
  });
  return matched;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> retinanet_targets_cpu(const at::Tensor& matched_, const at::Tensor& gt_boxes_,
                                                                     const at::Tensor& gt_labels_,
                                                                     const at::Tensor& anchors_,
                                                                     at::ArrayRef<double> weights,
                                                                     std::optional<int64_t> num_classes) {
  check_targets_args(matched_, gt_boxes_, gt_labels_, anchors_, weights, num_classes);
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gt_boxes.scalar_type(), "retinanet_targets_cpu", [&] {
    using T = math::opmath_t<scalar_t>;
    const int64_t* m = matched.data_ptr<int64_t>();
    const int64_t* lab = gt_labels.data_ptr<int64_t>();
    const scalar_t* gt = gt_boxes.data_ptr<scalar_t>();
    const scalar_t* anc = anchors.data_ptr<scalar_t>();
    int64_t* cls_p = cls.data_ptr<int64_t>();
    scalar_t* box_p = box.data_ptr<scalar_t>();
    bool* fg_p = fg.data_ptr<bool>();
    at::parallel_for(0, B * A, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / A, a = i - b * A, k = m[i];
        TORCH_CHECK(k >= -2 && k < G, "retinanet_targets: matched values must be -2, -1 or a box index in [0, G = ", G,
                    "), got ", k, " for anchor ", a, " of image ", b);
        T r[4] = {T(0), T(0), T(0), T(0)};
        if (k >= 0) {
          const int64_t label = lab[b * G + k];
          TORCH_CHECK(label >= 0 && label < num_classes.value_or(std::numeric_limits<int64_t>::max()),
                      "retinanet_targets: the label of a matched box must be ",
                      num_classes ? "in [0, num_classes = " + std::to_string(*num_classes) + ")" : ">= 0", ", got ",
                      label, " for box ", k, " of image ", b);
          T gv[4], av[4];
          for (int q = 0; q < 4; ++q) {
            gv[q] = static_cast<T>(gt[(b * G + k) * 4 + q]);
            av[q] = static_cast<T>(anc[a * 4 + q]);
          }
          math::encode_box(gv, av, w, r);
          cls_p[i] = label;
        } else {
          cls_p[i] = k;
        }
        for (int q = 0; q < 4; ++q) box_p[i * 4 + q] = static_cast<scalar_t>(r[q]);
        fg_p[i] = k >= 0;
      }
    });
  });
  return {cls, box, fg};
}

}  // namespace

TORCH_LIBRARY_IMPL(focalops, CPU, m) {
  m.impl("assign", &assign_cpu);
  m.impl("retinanet_targets", &retinanet_targets_cpu);
}

}  // namespace focalops
