// NMS, batched NMS and fused RetinaNet post-processing, CPU.
//
// NMS: boxes are sorted by (score desc, index asc), grouped into one bucket per class (each
// bucket keeps that order), and every bucket runs the greedy loop on its own, buckets in
// parallel; each kept box suppresses the later boxes of its bucket in one vectorised pass.
// Post-processing: (image, level) segments select their candidates in parallel (a scan of the
// logits against the threshold, then nth_element for the top-k); images then decode, clip
// and run the class-aware NMS in parallel.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "checks/nms.h"
#include "cpu/kernels.h"
#include "math/box.h"
#include "math/postprocess.h"

namespace focalops {
namespace {

// Boxes k.. of c.
cpu::Columns from(cpu::Columns c, int64_t k) {
  return {c.x1 + k, c.y1 + k, c.x2 + k, c.y2 + k};
}

float iou_of(cpu::Columns c, int64_t k, const float* b) {
  return math::iou(c.x1[k], c.y1[k], c.x2[k], c.y2[k], b[0], b[1], b[2], b[3]);
}

// Greedy NMS over n boxes (float32 columns) given in processing order; keep[i] = 1 if kept.
// Each kept box removes the later boxes it overlaps too much (one vectorised pass of
// cpu/kernels/nms.cpp): O(n * kept), for small n.
void greedy_nms_dense(cpu::Columns c, int64_t n, float thr, uint8_t* keep) {
  const cpu::SuppressFn suppress = cpu::suppress_stub.get();
  std::vector<int32_t> removed(n, 0);
  for (int64_t i = 0; i < n; ++i) {
    if (removed[i]) continue;
    keep[i] = 1;
    const float box[4] = {c.x1[i], c.y1[i], c.x2[i], c.y2[i]};
    suppress(box, from(c, i + 1), n - i - 1, thr, removed.data() + i + 1);
  }
}

// The same greedy result for many boxes: box i is kept iff no kept box has IoU > thr with it
// (thr >= 0, so only boxes whose interiors overlap can interact). Kept boxes are filed in a
// uniform grid of cells about one typical box wide; a box is tested only against the kept boxes
// of the cells it touches (boxes spanning many cells are tested against, and filed in, a
// separate list). Returns false (nothing written) if a coordinate is not finite.
bool greedy_nms_grid(cpu::Columns c, int64_t n, float thr, uint8_t* keep) {
  float x0 = INFINITY, y0 = INFINITY, x1 = -INFINITY, y1 = -INFINITY;
  bool finite = true;
  std::vector<float> sides(n);
  for (int64_t i = 0; i < n; ++i) {
    const float b[4] = {c.x1[i], c.y1[i], c.x2[i], c.y2[i]};
    finite &= std::isfinite(b[0]) && std::isfinite(b[1]) && std::isfinite(b[2]) && std::isfinite(b[3]);
    x0 = std::min(x0, std::min(b[0], b[2]));
    x1 = std::max(x1, std::max(b[0], b[2]));
    y0 = std::min(y0, std::min(b[1], b[3]));
    y1 = std::max(y1, std::max(b[1], b[3]));
    sides[i] = std::max(b[2] - b[0], b[3] - b[1]);
  }
  if (!finite) return false;
  std::nth_element(sides.begin(), sides.begin() + n / 2, sides.end());
  constexpr int64_t kMaxCellsPerSide = 1024, kLargeSpan = 16;
  double cell = std::max<double>(0.5 * sides[n / 2], 1e-6);
  cell = std::max(cell, std::max(double(x1) - x0, double(y1) - y0) / kMaxCellsPerSide);
  const int64_t gx = static_cast<int64_t>((double(x1) - x0) / cell) + 1;
  const int64_t gy = static_cast<int64_t>((double(y1) - y0) / cell) + 1;
  auto cx = [&](float v) { return std::min<int64_t>(gx - 1, static_cast<int64_t>((double(v) - x0) / cell)); };
  auto cy = [&](float v) { return std::min<int64_t>(gy - 1, static_cast<int64_t>((double(v) - y0) / cell)); };
  std::vector<std::vector<int64_t>> cells(gx * gy);
  std::vector<int64_t> large;  // kept boxes spanning many cells
  std::vector<int64_t> kept;
  auto hits = [&](const float* b, const std::vector<int64_t>& ids) {
    for (const int64_t k : ids) {
      if (iou_of(c, k, b) > thr) return true;
    }
    return false;
  };
  for (int64_t i = 0; i < n; ++i) {
    const float b[4] = {c.x1[i], c.y1[i], c.x2[i], c.y2[i]};
    const int64_t ax = cx(std::min(b[0], b[2])), bx = cx(std::max(b[0], b[2]));
    const int64_t ay = cy(std::min(b[1], b[3])), by = cy(std::max(b[1], b[3]));
    const bool is_large = (bx - ax + 1) * (by - ay + 1) > kLargeSpan;
    bool removed = hits(b, large);
    if (is_large) {
      removed = removed || hits(b, kept);
    } else {
      for (int64_t y = ay; y <= by && !removed; ++y) {
        for (int64_t x = ax; x <= bx && !removed; ++x) removed = hits(b, cells[y * gx + x]);
      }
    }
    if (removed) continue;
    keep[i] = 1;
    kept.push_back(i);
    if (is_large) {
      large.push_back(i);
    } else {
      for (int64_t y = ay; y <= by; ++y) {
        for (int64_t x = ax; x <= bx; ++x) cells[y * gx + x].push_back(i);
      }
    }
  }
  return true;
}

void greedy_nms(cpu::Columns c, int64_t n, float thr, uint8_t* keep) {
  constexpr int64_t kGridMinBoxes = 2048;
  if (n >= kGridMinBoxes && greedy_nms_grid(c, n, thr, keep)) return;
  greedy_nms_dense(c, n, thr, keep);
}

// Unsigned key whose ascending order is the descending order of the score (NaN excluded;
// -0 and +0 tie, as they compare equal).
inline uint64_t descending_key(float s) {
  uint32_t bits;
  s += 0.f;  // -0 -> +0
  std::memcpy(&bits, &s, sizeof(bits));
  const uint32_t ascending = (bits >> 31) ? ~bits : bits | 0x80000000u;
  return ~ascending;
}
inline uint64_t descending_key(double s) {
  uint64_t bits;
  s += 0.0;
  std::memcpy(&bits, &s, sizeof(bits));
  const uint64_t ascending = (bits >> 63) ? ~bits : bits | (uint64_t(1) << 63);
  return ~ascending;
}

// Indices of the kept boxes in decreasing score order (ties: lower index first), at most
// max_keep of them. Boxes of different classes never suppress each other (classes may be
// null: one class).
template <typename S>
std::vector<int64_t> nms_core(const float* boxes, const S* scores, const int64_t* classes, int64_t n, float thr,
                              int64_t max_keep) {
  // order: indices by (score desc, index asc). Sorting (key, index) pairs compares in registers,
  // not through the score array: the sorts were most of batched NMS's time.
  std::vector<std::pair<uint64_t, int64_t>> ranked(n);
  for (int64_t i = 0; i < n; ++i) ranked[i] = {descending_key(scores[i]), i};
  std::sort(ranked.begin(), ranked.end());
  std::vector<int64_t> order(n);
  for (int64_t p = 0; p < n; ++p) order[p] = ranked[p].second;
  // pos: positions in `order`, grouped by class, each group in score order.
  std::vector<int64_t> pos(n);
  std::vector<int64_t> starts{0};
  const bool grouped = classes != nullptr && n > 0;
  const int64_t min_class = grouped ? *std::min_element(classes, classes + n) : 0;
  const uint64_t span = grouped ? uint64_t(*std::max_element(classes, classes + n)) - uint64_t(min_class) : 0;
  if (grouped && span < uint64_t(n) + 4096) {
    // Class ids in a small range (the usual 0..K-1): a counting sort, stable by position.
    std::vector<int64_t> offset(span + 1, 0);
    for (int64_t i = 0; i < n; ++i) ++offset[classes[i] - min_class];
    int64_t run = 0;
    for (uint64_t c = 0; c <= span; ++c) {
      const int64_t count = offset[c];
      offset[c] = run;
      if (count > 0 && run > 0) starts.push_back(run);
      run += count;
    }
    for (int64_t p = 0; p < n; ++p) pos[offset[classes[order[p]] - min_class]++] = p;
  } else if (grouped) {
    std::vector<std::pair<int64_t, int64_t>> by_class(n);  // (class, position): sorted, stable by position
    for (int64_t p = 0; p < n; ++p) by_class[p] = {classes[order[p]], p};
    std::sort(by_class.begin(), by_class.end());
    for (int64_t p = 0; p < n; ++p) {
      pos[p] = by_class[p].second;
      if (p > 0 && by_class[p].first != by_class[p - 1].first) starts.push_back(p);
    }
  } else {
    std::iota(pos.begin(), pos.end(), 0);
  }
  starts.push_back(n);
  std::vector<uint8_t> keep(n, 0);
  const int64_t num_buckets = static_cast<int64_t>(starts.size()) - 1;
  at::parallel_for(0, num_buckets, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> bucket;
    std::vector<uint8_t> kept;
    for (int64_t c = b0; c < b1; ++c) {
      const int64_t lo = starts[c], m = starts[c + 1] - starts[c];
      bucket.resize(4 * m);
      for (int64_t q = 0; q < m; ++q) {
        for (int k = 0; k < 4; ++k) bucket[k * m + q] = boxes[4 * order[pos[lo + q]] + k];
      }
      kept.assign(m, 0);
      const float* col = bucket.data();
      greedy_nms(cpu::Columns{col, col + m, col + 2 * m, col + 3 * m}, m, thr, kept.data());
      for (int64_t q = 0; q < m; ++q) keep[pos[lo + q]] = kept[q];
    }
  });
  std::vector<int64_t> out;
  for (int64_t p = 0; p < n && static_cast<int64_t>(out.size()) < max_keep; ++p) {
    if (keep[p]) out.push_back(order[p]);
  }
  return out;
}

at::Tensor nms_entry(const char* op, const at::Tensor& boxes_in, const at::Tensor& scores_in, const at::Tensor* idxs,
                     double iou_threshold) {
  TORCH_CHECK(!at::isnan(boxes_in).any().item<bool>(), op, ": boxes contain NaN");
  TORCH_CHECK(!at::isnan(scores_in).any().item<bool>(), op, ": scores contain NaN");
  const int64_t n = boxes_in.size(0);
  const at::Tensor boxes = boxes_in.to(at::kFloat).contiguous();
  const at::Tensor scores = scores_in.to(scores_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
  const at::Tensor classes = idxs ? idxs->contiguous() : at::Tensor();
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "nms_cpu", [&] {
    keep = nms_core(boxes.data_ptr<float>(), scores.data_ptr<scalar_t>(), idxs ? classes.data_ptr<int64_t>() : nullptr, n,
                    static_cast<float>(iou_threshold), n);
  });
  at::Tensor out = at::empty({static_cast<int64_t>(keep.size())}, boxes_in.options().dtype(at::kLong));
  std::copy(keep.begin(), keep.end(), out.data_ptr<int64_t>());
  return out;
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_args("nms", boxes, scores, iou_threshold);
  return nms_entry("nms", boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double iou_threshold) {
  check_nms_args("batched_nms", boxes, scores, iou_threshold);
  check_batched_nms_idxs(boxes, idxs);
  return nms_entry("batched_nms", boxes, scores, &idxs, iou_threshold);
}

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
template <typename L, typename T>
std::vector<Candidate<T>> select_candidates(const L* logits, int64_t n, T thresh, int64_t topk, bool& nan_seen) {
  T lo = logit_prefilter(thresh);
  const int64_t cap = topk > n / 2 ? n + 1 : 2 * topk;
  std::vector<Candidate<T>> c;
  [[maybe_unused]] const cpu::FirstAboveFn first_above = cpu::first_above_stub.get();
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<L, float>) {
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

template <typename L>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> postprocess_impl(const at::Tensor& cls_logits,
                                                                           const at::Tensor& box_deltas,
                                                                           const at::Tensor& anchors,
                                                                           at::IntArrayRef level_sizes,
                                                                           const at::Tensor& image_sizes, double score_thresh,
                                                                           int64_t topk, double nms_thresh, int64_t D) {
  using T = std::conditional_t<std::is_same_v<L, double>, double, float>;
  const int64_t B = cls_logits.size(0), A = cls_logits.size(1), K = cls_logits.size(2);
  const int64_t L_ = static_cast<int64_t>(level_sizes.size());
  const auto opts = box_deltas.options();
  at::Tensor out_boxes = at::zeros({B, D, 4}, opts);
  at::Tensor out_scores = at::zeros({B, D}, opts);
  at::Tensor out_labels = at::full({B, D}, -1, opts.dtype(at::kLong));
  at::Tensor counts = at::zeros({B}, opts.dtype(at::kLong));
  if (B == 0 || A == 0 || K == 0 || D == 0) return {out_boxes, out_scores, out_labels, counts};

  const L* logits = cls_logits.data_ptr<L>();
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
      const auto keep = nms_core(boxes_f.data(), scores.data(), labels.data(), static_cast<int64_t>(scores.size()), nms_thr, D);
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

TORCH_LIBRARY_IMPL(focalops, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
  m.impl("postprocess", &postprocess_cpu);
}

}  // namespace focalops
