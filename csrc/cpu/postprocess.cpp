// Fused RetinaNet post-processing (torchvision RetinaNet.postprocess_detections), CPU.
//
// (image, level) segments select their candidates in parallel (a scan of the logits against
// the threshold, then nth_element for the top-k); images then decode, clip and run the
// class-aware NMS (cpu/nms.h) in parallel.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "checks/postprocess.h"
#include "cpu/nms.h"
#include "cpu/postprocess.h"
#include "math/box.h"
#include "math/postprocess.h"

namespace focalops {

namespace cpu {
Stub<FirstAboveFn> first_above_stub;
}  // namespace cpu

namespace {

template <typename T>
struct Candidate {
  T score;
  T logit;
  int64_t idx;  // flat (anchor in level, class) index within the level
};

template <typename T>
bool before(const Candidate<T>& a, const Candidate<T>& b) {
  return a.score > b.score || (a.score == b.score && a.idx < b.idx);
}

// Logits that can pass `score > thresh`: a slightly low cut on the logit (sigmoid is monotone)
// so the exact test on the score runs only near and above the threshold.
template <typename T>
T logit_prefilter(T thresh) {
  if (!(thresh > T(0))) return -std::numeric_limits<T>::infinity();
  if (thresh >= T(1)) return std::numeric_limits<T>::infinity();
  const double lt = std::log(double(thresh) / (1.0 - double(thresh)));
  return static_cast<T>(lt - 1e-3 * (1.0 + std::abs(lt)));
}

// The top `topk` candidates with score > thresh among n logits, best first. Sets nan_seen.
// The buffer is cut back to the best topk whenever it holds 2 * topk; the logit of the k-th
// best then becomes the cut (a later logit at or below it has a score at most equal and a
// larger index, so it can never enter), which keeps the scan close to a plain compare.
template <typename Logit, typename T>
std::vector<Candidate<T>> select_candidates(const Logit* logits, int64_t n, T thresh, int64_t topk, bool& nan_seen) {
  T lo = logit_prefilter(thresh);
  const int64_t cap = topk > n / 2 ? n + 1 : 2 * topk;
  std::vector<Candidate<T>> c;
  [[maybe_unused]] const cpu::FirstAboveFn first_above = cpu::first_above_stub.get();
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<Logit, float>) {
      i = first_above(logits, i, n, lo);  // skips the logits that cannot pass, vectorised
      if (i == n) break;
    }
    const T x = static_cast<T>(logits[i]);
    if (!(x > lo)) {
      nan_seen |= std::isnan(x);
      continue;
    }
    const T s = math::sigmoid_score(x);
    if (!(s > thresh)) continue;
    c.push_back({s, x, i});
    if (static_cast<int64_t>(c.size()) == cap) {
      std::nth_element(c.begin(), c.begin() + (topk - 1), c.end(), before<T>);
      c.resize(topk);
      lo = c[topk - 1].logit;
    }
  }
  if (static_cast<int64_t>(c.size()) > topk) {
    std::nth_element(c.begin(), c.begin() + topk, c.end(), before<T>);
    c.resize(topk);
  }
  std::sort(c.begin(), c.end(), before<T>);
  return c;
}

template <typename Logit>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> postprocess_impl(const at::Tensor& cls_logits,
                                                                           const at::Tensor& box_deltas,
                                                                           const at::Tensor& anchors,
                                                                           at::IntArrayRef level_sizes,
                                                                           const at::Tensor& image_sizes, double score_thresh,
                                                                           int64_t topk, double nms_thresh, int64_t D) {
  using T = math::opmath_t<Logit>;
  const int64_t B = cls_logits.size(0), A = cls_logits.size(1), K = cls_logits.size(2);
  const int64_t L_ = static_cast<int64_t>(level_sizes.size());
  const auto opts = box_deltas.options();
  at::Tensor out_boxes = at::zeros({B, D, 4}, opts);
  at::Tensor out_scores = at::zeros({B, D}, opts);
  at::Tensor out_labels = at::full({B, D}, -1, opts.dtype(at::kLong));
  at::Tensor counts = at::zeros({B}, opts.dtype(at::kLong));
  if (B == 0 || A == 0 || K == 0 || D == 0) return {out_boxes, out_scores, out_labels, counts};

  const Logit* logits = cls_logits.data_ptr<Logit>();
  const T* deltas = box_deltas.data_ptr<T>();
  const T* anc = anchors.data_ptr<T>();
  const T* sizes = image_sizes.data_ptr<T>();
  std::vector<int64_t> starts(L_ + 1, 0);
  for (int64_t l = 0; l < L_; ++l) starts[l + 1] = starts[l] + level_sizes[l];

  // 1. Candidates of every (image, level) segment.
  std::vector<std::vector<Candidate<T>>> cands(B * L_);
  std::vector<uint8_t> nan_seen(B * L_, 0);
  const T thresh = static_cast<T>(score_thresh);
  at::parallel_for(0, B * L_, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t b = s / L_, l = s % L_;
      bool nan = false;
      cands[s] = select_candidates(logits + (b * A + starts[l]) * K, level_sizes[l] * K, thresh, topk, nan);
      nan_seen[s] = nan;
    }
  });
  TORCH_CHECK(std::find(nan_seen.begin(), nan_seen.end(), 1) == nan_seen.end(), "postprocess: cls_logits contains NaN");

  // 2. Per image: decode, clip, class-aware NMS, write the first D kept.
  const math::BoxWeights w{1.f, 1.f, 1.f, 1.f};
  const T clamp = static_cast<T>(math::kBoxDeltaClamp);
  const float nms_thr = static_cast<float>(nms_thresh);
  T* ob = out_boxes.data_ptr<T>();
  T* os = out_scores.data_ptr<T>();
  int64_t* ol = out_labels.data_ptr<int64_t>();
  int64_t* oc = counts.data_ptr<int64_t>();
  // The deltas and anchors of the boxes decoded are checked here, as they are read: a separate
  // pass over all of them would cost more than this step (at K = 1 the deltas are 4x the logits).
  std::vector<uint8_t> bad_delta(B, 0), bad_anchor(B, 0);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      std::vector<T> boxes, scores;
      std::vector<float> boxes_f;
      std::vector<int64_t> labels;
      const T height = sizes[2 * b], width = sizes[2 * b + 1];
      bool finite_deltas = true, finite_anchors = true;
      for (int64_t l = 0; l < L_; ++l) {
        for (const auto& c : cands[b * L_ + l]) {
          const int64_t a = starts[l] + c.idx / K;
          const T* d = deltas + (b * A + a) * 4;
          const T* an = anc + a * 4;
          finite_deltas &= std::isfinite(d[0]) & std::isfinite(d[1]) & std::isfinite(d[2]) & std::isfinite(d[3]);
          finite_anchors &= std::isfinite(an[0]) & std::isfinite(an[1]) & std::isfinite(an[2]) & std::isfinite(an[3]);
          T box[4];
          math::decode_box(d, an, w, clamp, box);
          math::clip_box(box, height, width);
          boxes.insert(boxes.end(), box, box + 4);
          for (int k = 0; k < 4; ++k) boxes_f.push_back(static_cast<float>(box[k]));
          scores.push_back(c.score);
          labels.push_back(c.idx % K);
        }
      }
      if (!(finite_deltas && finite_anchors)) {
        bad_delta[b] = !finite_deltas;
        bad_anchor[b] = !finite_anchors;
        continue;
      }
      const auto keep = cpu::nms_core(nullptr, boxes_f.data(), scores.data(), labels.data(), static_cast<int64_t>(scores.size()), nms_thr, D);
      for (size_t r = 0; r < keep.size(); ++r) {
        std::copy_n(boxes.data() + 4 * keep[r], 4, ob + (b * D + r) * 4);
        os[b * D + r] = scores[keep[r]];
        ol[b * D + r] = labels[keep[r]];
      }
      oc[b] = static_cast<int64_t>(keep.size());
    }
  });
  const auto image_with = [&](const std::vector<uint8_t>& flags) { return std::find(flags.begin(), flags.end(), 1) - flags.begin(); };
  TORCH_CHECK(image_with(bad_delta) == B, "postprocess: box_deltas contains NaN or inf (image ", image_with(bad_delta),
              ", a candidate's deltas)");
  TORCH_CHECK(image_with(bad_anchor) == B, "postprocess: anchors contain NaN or inf (a candidate's anchor, image ",
              image_with(bad_anchor), ")");
  return {out_boxes, out_scores, out_labels, counts};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> postprocess_cpu(
    const at::Tensor& cls_logits, const at::Tensor& box_deltas, const at::Tensor& anchors, at::IntArrayRef level_sizes,
    const at::Tensor& image_sizes, double score_thresh, int64_t topk_candidates, double nms_thresh, int64_t detections_per_img) {
  check_postprocess_args(cls_logits, box_deltas, anchors, level_sizes, image_sizes, score_thresh, topk_candidates, nms_thresh,
                         detections_per_img);
  const at::Tensor logits = cls_logits.contiguous();
  const at::Tensor deltas = box_deltas.contiguous();
  const at::Tensor anc = anchors.contiguous();
  const at::Tensor sizes = image_sizes.contiguous();
  AT_DISPATCH_FLOATING_TYPES(sizes.scalar_type(), "postprocess_image_sizes", [&] {
    const scalar_t* p = sizes.data_ptr<scalar_t>();
    for (int64_t i = 0; i < sizes.numel(); ++i) {
      TORCH_CHECK(p[i] >= 0 && std::isfinite(p[i]), "postprocess: image_sizes must be >= 0 and finite, got ", p[i],
                  " for image ", i / 2);
    }
  });
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "postprocess_cpu", [&] {
    out = postprocess_impl<scalar_t>(logits, deltas, anc, level_sizes, sizes, score_thresh, topk_candidates, nms_thresh,
                                     detections_per_img);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(focalops, CPU, m) { m.impl("postprocess", &postprocess_cpu); }

}  // namespace focalops
