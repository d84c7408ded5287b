// NMS and batched NMS, CPU.
//
// Boxes are sorted by (score desc, index asc), grouped into one bucket per class (each bucket
// keeps that order), and every bucket runs the greedy loop on its own, buckets in parallel;
// each kept box suppresses the later boxes of its bucket in one vectorised pass. nms_core is
// also the post-processing's NMS (cpu/postprocess.cpp).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "checks/nms.h"
#include "cpu/nms.h"
#include "math/box.h"

namespace focalops {

namespace cpu {
Stub<SuppressFn> suppress_stub;
}  // namespace cpu

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

}  // namespace

namespace cpu {

template <typename S>
std::vector<int64_t> nms_core(const char* op, const float* boxes, const S* scores, const int64_t* classes, int64_t n,
                              float thr, int64_t max_keep) {
  // order: indices by (score desc, index asc). Sorting (key, index) pairs compares in registers,
  // not through the score array: the sorts were most of batched NMS's time.
  std::vector<std::pair<uint64_t, int64_t>> ranked(n);
  bool nan_score = false;
  for (int64_t i = 0; i < n; ++i) {
    nan_score |= std::isnan(scores[i]);
    ranked[i] = {descending_key(scores[i]), i};
  }
  TORCH_CHECK(op == nullptr || !nan_score, op, ": scores contain NaN");
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
  std::atomic<bool> nan_box{false};
  at::parallel_for(0, num_buckets, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> bucket;
    std::vector<uint8_t> kept;
    bool nan = false;
    for (int64_t c = b0; c < b1; ++c) {
      const int64_t lo = starts[c], m = starts[c + 1] - starts[c];
      bucket.resize(4 * m);
      nan |= cpu::stage_columns(boxes, [&](int64_t q) { return order[pos[lo + q]]; }, m, 0, m, bucket.data());
      kept.assign(m, 0);
      const float* col = bucket.data();
      greedy_nms(cpu::columns(col, m), m, thr, kept.data());
      for (int64_t q = 0; q < m; ++q) keep[pos[lo + q]] = kept[q];
    }
    if (nan) nan_box = true;
  });
  TORCH_CHECK(op == nullptr || !nan_box, op, ": boxes contain NaN");
  std::vector<int64_t> out;
  for (int64_t p = 0; p < n && static_cast<int64_t>(out.size()) < max_keep; ++p) {
    if (keep[p]) out.push_back(order[p]);
  }
  return out;
}

template std::vector<int64_t> nms_core<float>(const char*, const float*, const float*, const int64_t*, int64_t, float,
                                              int64_t);
template std::vector<int64_t> nms_core<double>(const char*, const float*, const double*, const int64_t*, int64_t, float,
                                               int64_t);

}  // namespace cpu

namespace {

at::Tensor nms_entry(const char* op, const at::Tensor& boxes_in, const at::Tensor& scores_in, const at::Tensor* idxs,
                     double iou_threshold) {
  const int64_t n = boxes_in.size(0);
  const at::Tensor boxes = boxes_in.to(at::kFloat).contiguous();
  const at::Tensor scores = scores_in.to(scores_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
  const at::Tensor classes = idxs ? idxs->contiguous() : at::Tensor();
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "nms_cpu", [&] {
    keep = cpu::nms_core(op, boxes.data_ptr<float>(), scores.data_ptr<scalar_t>(), idxs ? classes.data_ptr<int64_t>() : nullptr, n,
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

}  // namespace

TORCH_LIBRARY_IMPL(focalops, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
}

}  // namespace focalops
