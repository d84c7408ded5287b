// Anchor assignment and RetinaNet targets, CUDA kernel bodies (torch-free; the .cu passes raw
// pointers). The A x G IoU matrix is never stored:
//   assign_best_iou_kernel: grid (anchor blocks, images). Boxes are staged in shared memory
//     in tiles; each thread keeps kAnchorsPerThread anchors in registers; per box a warp
//     reduces its max IoU, then a shared atomicMax, then one global atomicMax per (block, box)
//     on the float bits: IoU >= 0, so the int order of the bits is the float order and the
//     result is exact and order-free.
//   assign_match_kernel: one anchor per thread; per staged box it recomputes the IoU, keeps
//     the best box (first index wins ties) and tests for a tie with the box's best IoU.
// IoU comes from math::iou in float32 without FMA contraction, so it is bit-identical to the
// CPU kernel's and both give identical indices.
#pragma once

#include <cstdint>

#include "cuda/boxes.cuh"
#include "cuda/common.cuh"
#include "math/box.h"


namespace focalops {
namespace cuda {

constexpr int kAssignThreads = 256;
constexpr int kAnchorsPerThread = 4;
constexpr int kBoxTile = 1024;

__device__ __forceinline__ bool box_has_nan(const float* p) {
  return isnan(p[0]) || isnan(p[1]) || isnan(p[2]) || isnan(p[3]);
}

// best[b, g] = max over anchors of IoU(anchor, gt[b, g]); `best` is zero-filled by the caller.
__global__ void assign_best_iou_kernel(const float* __restrict__ anchors, const float* __restrict__ gt,
                                       const int64_t* __restrict__ counts, int64_t A, int64_t G,
                                       float* __restrict__ best) {
  __shared__ float s_box[kBoxTile * 4];
  __shared__ int s_best[kBoxTile];
  const int64_t b = blockIdx.y;
  const int64_t count = counts[b];
  FO_DEVICE_CHECK(count >= 0 && count <= G);  // gt_counts must be in [0, G]
  float a[kAnchorsPerThread][4];
  bool valid[kAnchorsPerThread];
#pragma unroll
  for (int p = 0; p < kAnchorsPerThread; ++p) {
    const int64_t i = (static_cast<int64_t>(blockIdx.x) * kAnchorsPerThread + p) * kAssignThreads + threadIdx.x;
    valid[p] = i < A;
#pragma unroll
    for (int k = 0; k < 4; ++k) a[p][k] = valid[p] ? anchors[4 * i + k] : 0.f;
    if (b == 0 && valid[p]) FO_DEVICE_CHECK(!box_has_nan(a[p]));  // anchors contain NaN coordinates
  }
  const int lane = threadIdx.x & 31;
  for (int64_t g0 = 0; g0 < count; g0 += kBoxTile) {
    const int n = static_cast<int>(count - g0 < kBoxTile ? count - g0 : kBoxTile);
    for (int k = threadIdx.x; k < n; k += kAssignThreads) {
      const float* src = gt + ((b * G) + g0 + k) * 4;
#pragma unroll
      for (int q = 0; q < 4; ++q) s_box[4 * k + q] = src[q];
      if (blockIdx.x == 0) FO_DEVICE_CHECK(!box_has_nan(src));  // gt_boxes contain NaN coordinates
      s_best[k] = 0;
    }
    __syncthreads();
    for (int g = 0; g < n; ++g) {
      float m = 0.f;
#pragma unroll
      for (int p = 0; p < kAnchorsPerThread; ++p) {
        const float v = valid[p] ? math::iou(a[p], s_box + 4 * g) : 0.f;
        m = v > m ? v : m;
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        const float o = __shfl_xor_sync(0xffffffffu, m, off);
        m = o > m ? o : m;
      }
      if (lane == 0 && m > 0.f) atomicMax(s_best + g, __float_as_int(m));
    }
    __syncthreads();
    for (int k = threadIdx.x; k < n; k += kAssignThreads) {
      if (s_best[k] > 0) atomicMax(reinterpret_cast<int*>(best) + b * G + g0 + k, s_best[k]);
    }
    __syncthreads();
  }
}

// matched[b, i]: the Matcher's decision for anchor i of image b, from best[b, :].
__global__ void assign_match_kernel(const float* __restrict__ anchors, const float* __restrict__ gt,
                                    const int64_t* __restrict__ counts, const float* __restrict__ best, int64_t A,
                                    int64_t G, float fg_iou, float bg_iou, bool allow_low_quality,
                                    int64_t* __restrict__ matched) {
  __shared__ float s_box[kBoxTile * 4];
  __shared__ float s_best[kBoxTile];
  const int64_t b = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kAssignThreads + threadIdx.x;
  const bool valid = i < A;
  const int64_t count = counts[b];
  float a[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) a[k] = valid ? anchors[4 * i + k] : 0.f;
  float best_val = -1.f;
  int64_t best_idx = 0;
  bool low_quality = false;
  for (int64_t g0 = 0; g0 < count; g0 += kBoxTile) {
    const int n = static_cast<int>(count - g0 < kBoxTile ? count - g0 : kBoxTile);
    for (int k = threadIdx.x; k < n; k += kAssignThreads) {
      const float* src = gt + ((b * G) + g0 + k) * 4;
#pragma unroll
      for (int q = 0; q < 4; ++q) s_box[4 * k + q] = src[q];
      s_best[k] = best[b * G + g0 + k];
    }
    __syncthreads();
    for (int g = 0; g < n; ++g) {
      const float v = math::iou(a, s_box + 4 * g);
      if (v > best_val) {
        best_val = v;
        best_idx = g0 + g;
      }
      low_quality |= (v == s_best[g]) && (s_best[g] > 0.f);
    }
    __syncthreads();
  }
  if (!valid) return;
  int64_t r;
  if (count == 0) {
    r = -1;
  } else {
    r = best_val >= fg_iou ? best_idx : (best_val >= bg_iou ? -2 : -1);
    if (allow_low_quality && low_quality) r = best_idx;
  }
  matched[b * A + i] = r;
}

// RetinaNet targets, grid-stride over the B * A anchors. num_classes < 0: labels only >= 0.
template <typename T>
__global__ void retinanet_targets_kernel(const int64_t* __restrict__ matched, const T* __restrict__ gt,
                                         const int64_t* __restrict__ labels, const T* __restrict__ anchors, int64_t B,
                                         int64_t A, int64_t G, int64_t num_classes, math::BoxWeights w,
                                         int64_t* __restrict__ cls, T* __restrict__ box, bool* __restrict__ fg) {
  using Acc = math::opmath_t<T>;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < B * A;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = idx / A, a = idx - b * A, k = matched[idx];
    FO_DEVICE_CHECK(k >= -2 && k < G);  // matched values must be -2, -1 or a box index in [0, G)
    Acc r[4] = {Acc(0), Acc(0), Acc(0), Acc(0)};
    if (k >= 0) {
      const int64_t label = labels[b * G + k];
      FO_DEVICE_CHECK(label >= 0 && (num_classes < 0 || label < num_classes));  // label of a matched box
      Acc gv[4], av[4];
      load_box(gt + (b * G + k) * 4, gv);
      load_box(anchors + a * 4, av);
      math::encode_box(gv, av, w, r);
      cls[idx] = label;
    } else {
      cls[idx] = k;
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) box[idx * 4 + q] = static_cast<T>(r[q]);
    fg[idx] = k >= 0;
  }
}

}  // namespace cuda
}  // namespace focalops
