// NMS and RetinaNet post-processing, CUDA kernels (CUDA runtime + csrc/math only, so nvcc can
// check this header without torch).
//
// Bitmask NMS: boxes are sorted (by score, and for batched_nms grouped by class); one CTA per
// (row block, column block) of 64 boxes writes, for each row box, a 64-bit word whose bit k says
// "row box suppresses column box k" (later box, same class, IoU > threshold). A single CTA then
// walks the blocks in order on the GPU: thread 0 resolves the 64 boxes of a block from the
// diagonal words (staged in shared memory), all threads OR the rows of its kept boxes into the
// removed-words of the later blocks. No mask ever leaves the device.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "math/box.h"
#include "math/postprocess.h"

namespace focalops {
namespace cuda {

constexpr int kNmsBlock = 64;         // boxes per mask word
constexpr int kNmsReduceThreads = 256;

// How the mask kernel treats classes.
enum NmsClassMode : int {
  kNoClasses = 0,      // one class
  kClasses = 1,        // per-box class, any order
  kSortedClasses = 2,  // per-box class, ascending: a block pair with disjoint classes is skipped
};

__host__ __device__ inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

__host__ __device__ inline int64_t nms_col_blocks(int64_t n) { return (n + kNmsBlock - 1) / kNmsBlock; }

// mask[(s * n + i) * col_blocks + cb], bit k: sorted box i suppresses box cb * 64 + k (> i).
// grid (col_blocks, col_blocks, segments), kNmsBlock threads; segment s = blockIdx.z holds n boxes.
template <int kMode>
__global__ void nms_mask_kernel(const float* boxes, const int64_t* classes, int64_t n, float thr, uint64_t* mask) {
  const int64_t rb = blockIdx.y, cb = blockIdx.x;
  if (cb < rb) return;  // never read: a box only suppresses later boxes
  const int64_t col_blocks = nms_col_blocks(n);
  const int64_t seg = blockIdx.z;
  boxes += seg * n * 4;
  if (kMode != kNoClasses) classes += seg * n;
  mask += seg * n * col_blocks;
  const int row_size = static_cast<int>(imin(n - rb * kNmsBlock, kNmsBlock));
  const int col_size = static_cast<int>(imin(n - cb * kNmsBlock, kNmsBlock));
  const int t = threadIdx.x;
  const int64_t i = rb * kNmsBlock + t;
  if (kMode == kSortedClasses && classes[rb * kNmsBlock + row_size - 1] < classes[cb * kNmsBlock]) {
    if (t < row_size) mask[i * col_blocks + cb] = 0;
    return;
  }
  __shared__ float col_boxes[kNmsBlock * 4];
  __shared__ int64_t col_classes[kNmsBlock];
  if (t < col_size) {
    const int64_t j = cb * kNmsBlock + t;
    for (int c = 0; c < 4; ++c) col_boxes[t * 4 + c] = boxes[j * 4 + c];
    if (kMode != kNoClasses) col_classes[t] = classes[j];
  }
  __syncthreads();
  if (t >= row_size) return;
  float box[4];
  for (int c = 0; c < 4; ++c) box[c] = boxes[i * 4 + c];
  const int64_t cls = kMode != kNoClasses ? classes[i] : 0;
  uint64_t bits = 0;
  for (int k = rb == cb ? t + 1 : 0; k < col_size; ++k) {
    const bool same = kMode == kNoClasses || col_classes[k] == cls;
    if (same && math::iou(box, col_boxes + 4 * k) > thr) bits |= 1ull << k;
  }
  mask[i * col_blocks + cb] = bits;
}

// OR the mask rows of the boxes kept in block nb (bits of `kept`) into removed[w], w > nb.
__device__ __forceinline__ void nms_propagate(const uint64_t* mask, int64_t col_blocks, int64_t nb, uint64_t kept,
                                              uint64_t* removed) {
  for (int64_t w = nb + 1 + threadIdx.x; w < col_blocks; w += blockDim.x) {
    uint64_t acc = removed[w];
    for (uint64_t bits = kept; bits != 0; bits &= bits - 1) {
      const int k = __ffsll(static_cast<long long>(bits)) - 1;
      acc |= mask[(nb * kNmsBlock + k) * col_blocks + w];
    }
    removed[w] = acc;
  }
}

// Greedy pass over the mask of n sorted boxes: keep[i] = 1 for kept boxes. One CTA;
// removed: col_blocks zeroed words of scratch.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) nms_reduce_kernel(const uint64_t* mask, int64_t n, uint64_t* removed, uint8_t* keep) {
  const int64_t col_blocks = nms_col_blocks(n);
  __shared__ uint64_t diag[kNmsBlock];
  __shared__ uint64_t kept_bits;
  for (int64_t nb = 0; nb < col_blocks; ++nb) {
    const int size = static_cast<int>(imin(n - nb * kNmsBlock, kNmsBlock));
    if (threadIdx.x < size) diag[threadIdx.x] = mask[(nb * kNmsBlock + threadIdx.x) * col_blocks + nb];
    __syncthreads();
    if (threadIdx.x == 0) {
      uint64_t rem = removed[nb], kept = 0;
      for (int k = 0; k < size; ++k) {
        if ((rem >> k) & 1ull) continue;
        kept |= 1ull << k;
        rem |= diag[k];
      }
      kept_bits = kept;
    }
    __syncthreads();
    const uint64_t kept = kept_bits;
    if (threadIdx.x < size) keep[nb * kNmsBlock + threadIdx.x] = static_cast<uint8_t>((kept >> threadIdx.x) & 1ull);
    nms_propagate(mask, col_blocks, nb, kept, removed);
    __syncthreads();
  }
}

template <int kMode>
cudaError_t launch_nms(const float* sorted_boxes, const int64_t* sorted_classes, int64_t n, float thr, uint64_t* mask,
                       uint64_t* removed, uint8_t* keep, cudaStream_t stream) {
  const int64_t cb = nms_col_blocks(n);
  nms_mask_kernel<kMode><<<dim3(cb, cb, 1), kNmsBlock, 0, stream>>>(sorted_boxes, sorted_classes, n, thr, mask);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  nms_reduce_kernel<kNmsReduceThreads><<<1, kNmsReduceThreads, 0, stream>>>(mask, n, removed, keep);
  return cudaGetLastError();
}

// Post-processing, step 1: the k top-k logits of one level (vals, flat indices idx within the
// level, [B, k]) become candidates in columns [slot, slot + k) of the [B, M] candidate arrays:
// score (-1 if not above score_thresh), label, sort key (level, flat index), decoded and
// clipped box (and its float32 copy for the IoU).
template <typename L, typename T>
__global__ void candidates_kernel(const L* vals, const int64_t* idx, int64_t num_images, int64_t k, const T* deltas,
                                  const T* anchors, const T* image_sizes, int64_t num_anchors, int64_t num_classes,
                                  int64_t level, int64_t anchor_start, int64_t slot, int64_t M, T score_thresh, T clamp,
                                  T* boxes, float* boxes_f, T* scores, int64_t* labels, int64_t* keys) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < num_images * k;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = e / k, j = e % k;
    const T x = static_cast<T>(load_as_opmath(vals[e]));
    const T s = math::sigmoid_score(x);
    const int64_t flat = idx[e];
    const int64_t a = anchor_start + flat / num_classes;
    T box[4];
    math::decode_box(deltas + (b * num_anchors + a) * 4, anchors + a * 4, math::BoxWeights{1.f, 1.f, 1.f, 1.f}, clamp,
                     box);
    math::clip_box(box, image_sizes[2 * b], image_sizes[2 * b + 1]);
    const int64_t out = b * M + slot + j;
    for (int c = 0; c < 4; ++c) {
      boxes[out * 4 + c] = box[c];
      boxes_f[out * 4 + c] = static_cast<float>(box[c]);
    }
    scores[out] = s > score_thresh ? s : T(-1);
    labels[out] = flat % num_classes;
    keys[out] = level * num_anchors * num_classes + flat;
  }
}

template <typename L, typename T>
cudaError_t launch_candidates(const L* vals, const int64_t* idx, int64_t num_images, int64_t k, const T* deltas,
                              const T* anchors, const T* image_sizes, int64_t num_anchors, int64_t num_classes,
                              int64_t level, int64_t anchor_start, int64_t slot, int64_t M, T score_thresh, T clamp,
                              T* boxes, float* boxes_f, T* scores, int64_t* labels, int64_t* keys, cudaStream_t stream) {
  const int64_t total = num_images * k;
  const int threads = 256;
  const int blocks = static_cast<int>(imin((total + threads - 1) / threads, 65535));
  candidates_kernel<L, T><<<blocks, threads, 0, stream>>>(vals, idx, num_images, k, deltas, anchors, image_sizes,
                                                          num_anchors, num_classes, level, anchor_start, slot, M,
                                                          score_thresh, clamp, boxes, boxes_f, scores, labels, keys);
  return cudaGetLastError();
}

// Post-processing, step 3: per image (blockIdx.x) the greedy pass over the mask of its M sorted
// candidates (scores < 0 are padding, sorted last), writing the first D kept detections and
// the padding of the outputs. Dynamic shared memory: col_blocks removed-words.
template <typename T>
__global__ void __launch_bounds__(kNmsReduceThreads) postprocess_nms_kernel(const uint64_t* mask, const T* boxes, const T* scores, const int64_t* labels,
                                       int64_t M, int64_t D, T* out_boxes, T* out_scores, int64_t* out_labels,
                                       int64_t* counts) {
  extern __shared__ uint64_t removed[];
  __shared__ uint64_t diag[kNmsBlock];
  __shared__ int kept_pos[kNmsBlock];
  __shared__ int n_kept;
  __shared__ int stop;
  __shared__ uint64_t kept_bits;
  const int64_t b = blockIdx.x;
  const int64_t col_blocks = nms_col_blocks(M);
  mask += b * M * col_blocks;
  boxes += b * M * 4;
  scores += b * M;
  labels += b * M;
  for (int64_t w = threadIdx.x; w < col_blocks; w += blockDim.x) removed[w] = 0;
  __syncthreads();
  int64_t count = 0;
  for (int64_t nb = 0; nb < col_blocks && count < D; ++nb) {
    const int size = static_cast<int>(imin(M - nb * kNmsBlock, kNmsBlock));
    if (threadIdx.x < size) diag[threadIdx.x] = mask[(nb * kNmsBlock + threadIdx.x) * col_blocks + nb];
    __syncthreads();
    if (threadIdx.x == 0) {
      uint64_t rem = removed[nb], kept = 0;
      int nk = 0, done = 0;
      for (int k = 0; k < size; ++k) {
        if (!(scores[nb * kNmsBlock + k] >= T(0))) {  // padding: nothing valid follows
          done = 1;
          break;
        }
        if ((rem >> k) & 1ull) continue;
        kept |= 1ull << k;
        kept_pos[nk++] = k;
        rem |= diag[k];
        if (count + nk == D) {
          done = 1;
          break;
        }
      }
      n_kept = nk;
      kept_bits = kept;
      stop = done;
    }
    __syncthreads();
    const int nk = n_kept;
    for (int r = threadIdx.x; r < nk; r += blockDim.x) {
      const int64_t i = nb * kNmsBlock + kept_pos[r];
      const int64_t o = b * D + count + r;
      for (int c = 0; c < 4; ++c) out_boxes[o * 4 + c] = boxes[i * 4 + c];
      out_scores[o] = scores[i];
      out_labels[o] = labels[i];
    }
    const bool done = stop != 0;
    if (!done) nms_propagate(mask, col_blocks, nb, kept_bits, removed);
    count += nk;
    __syncthreads();
    if (done) break;
  }
  for (int64_t s = count + threadIdx.x; s < D; s += blockDim.x) {
    const int64_t o = b * D + s;
    for (int c = 0; c < 4; ++c) out_boxes[o * 4 + c] = T(0);
    out_scores[o] = T(0);
    out_labels[o] = -1;
  }
  if (threadIdx.x == 0) counts[b] = count;
}

// Post-processing, steps 2-3 after the candidates are sorted: mask per image, then the greedy pass.
template <typename T>
cudaError_t launch_postprocess_nms(const float* sorted_boxes_f, const T* sorted_boxes, const T* sorted_scores,
                                   const int64_t* sorted_labels, int64_t num_images, int64_t M, int64_t D, float thr,
                                   uint64_t* mask, T* out_boxes, T* out_scores, int64_t* out_labels, int64_t* counts,
                                   cudaStream_t stream) {
  const int64_t cb = nms_col_blocks(M);
  nms_mask_kernel<kClasses><<<dim3(cb, cb, num_images), kNmsBlock, 0, stream>>>(sorted_boxes_f, sorted_labels, M, thr,
                                                                                mask);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  postprocess_nms_kernel<T><<<num_images, kNmsReduceThreads, cb * sizeof(uint64_t), stream>>>(
      mask, sorted_boxes, sorted_scores, sorted_labels, M, D, out_boxes, out_scores, out_labels, counts);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace focalops
