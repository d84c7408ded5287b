// RetinaNet post-processing, CUDA kernels: candidates per level, then the NMS of cuda/nms.cuh
// per image with the detections written as they are kept (CUDA runtime + csrc/math only).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/nms.cuh"
#include "math/box.h"
#include "math/postprocess.h"

namespace focalops {
namespace cuda {

// Post-processing keeps an untiled image's removed-words in shared memory: up to 48 KiB, 393,216
// candidates (with the kernel's static shared memory on top, past the 48 KiB a launch gets
// without opting in: launch_postprocess_nms opts in); beyond it they go to global memory.
constexpr int64_t kNmsSharedRemovedBytes = 48 << 10;

// Post-processing, step 1: the k top-k logits of one level (vals, flat indices idx within the
// level, [B, k]) become candidates in columns [slot, slot + k) of the [B, M] candidate arrays:
// score (-1 if not above score_thresh), label, sort key (level, flat index), decoded and
// clipped box (and its float32 copy for the IoU).
template <typename Logit, typename T>
__global__ void candidates_kernel(const Logit* vals, const int64_t* idx, int64_t num_images, int64_t k, const T* deltas,
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

template <typename Logit, typename T>
cudaError_t launch_candidates(const Logit* vals, const int64_t* idx, int64_t num_images, int64_t k, const T* deltas,
                              const T* anchors, const T* image_sizes, int64_t num_anchors, int64_t num_classes,
                              int64_t level, int64_t anchor_start, int64_t slot, int64_t M, T score_thresh, T clamp,
                              T* boxes, float* boxes_f, T* scores, int64_t* labels, int64_t* keys, cudaStream_t stream) {
  const int64_t total = num_images * k;
  const int threads = 256;
  const int blocks = static_cast<int>(imin((total + threads - 1) / threads, 65535));
  FO_LAUNCH(blocks, threads, 0, stream, candidates_kernel<Logit, T>)(vals, idx, num_images, k, deltas, anchors, image_sizes,
                                                          num_anchors, num_classes, level, anchor_start, slot, M,
                                                          score_thresh, clamp, boxes, boxes_f, scores, labels, keys);
  return cudaGetLastError();
}

// Per-image state of the post-processing NMS across mask tiles (global memory, zeroed).
struct PostprocessState {
  uint64_t* removed;  // [B, col_blocks]; nullptr: one tile, removed-words in shared memory
  uint8_t* keep;      // [B, M] kept flags for the later tiles' nms_suppress_kernel
  int* done;          // [B] 1 once D detections are kept or the padding is reached
};

// Post-processing, step 3: per image (blockIdx.x) the greedy pass over blocks [c0, c1) of its M
// sorted candidates (scores < 0 are padding, sorted last), appending the kept detections to the
// outputs until D are kept; the last tile writes the padding. counts[b] carries the number kept
// from tile to tile (zeroed before the first). Dynamic shared memory (one tile only):
// col_blocks removed-words.
template <typename T>
__global__ void __launch_bounds__(kNmsReduceThreads)
    postprocess_nms_kernel(const uint64_t* mask, const T* boxes, const T* scores, const int64_t* labels, int64_t M,
                           int64_t D, int64_t c0, int64_t c1, int64_t W, int64_t rows, PostprocessState state,
                           T* out_boxes, T* out_scores, int64_t* out_labels, int64_t* counts) {
  FO_DYNAMIC_SHARED(uint64_t, removed_smem);
  __shared__ uint64_t diag[kNmsBlock];
  __shared__ int kept_pos[kNmsBlock];
  __shared__ unsigned invalid_words[kNmsBlock / 32];
  __shared__ int n_kept;
  __shared__ int stop;
  const int t = threadIdx.x;
  const int64_t b = blockIdx.x;
  const int64_t col_blocks = nms_col_blocks(M);
  const bool tiled = state.removed != nullptr;
  mask += b * rows * W;
  boxes += b * M * 4;
  scores += b * M;
  labels += b * M;
  uint64_t* removed = tiled ? state.removed + b * col_blocks : removed_smem;
  if (!tiled) {
    for (int64_t w = t; w < col_blocks; w += blockDim.x) removed[w] = 0;
  }
  int64_t count = counts[b];
  bool done = tiled && state.done[b] != 0;
  __syncthreads();  // removed zeroed; every thread has read counts[b] before thread 0 rewrites it
  int size = static_cast<int>(imin(M - c0 * kNmsBlock, kNmsBlock));
  uint64_t next = 0;
  T next_score = T(0);
  if (!done && t < size) {
    next = nms_diag_word(mask, W, c0, c0, t);
    next_score = scores[c0 * kNmsBlock + t];
  }
  for (int64_t nb = c0; nb < c1 && !done && count < D; ++nb) {
    // Stage this block's diagonal words and which of its candidates are padding.
    if (t < size) diag[t] = next;
    const unsigned invalid = __ballot_sync(0xffffffffu, t < size && !(next_score >= T(0)));
    if (t < kNmsBlock && (t & 31) == 0) invalid_words[t >> 5] = invalid;
    __syncthreads();
    // Prefetch the next block's words and scores: the loads overlap thread 0's serial pass.
    const int next_size = nb + 1 < c1 ? static_cast<int>(imin(M - (nb + 1) * kNmsBlock, kNmsBlock)) : 0;
    if (t < next_size) {
      next = nms_diag_word(mask, W, c0, nb + 1, t);
      next_score = scores[(nb + 1) * kNmsBlock + t];
    }
    if (t == 0) {
      // Candidates from the first padding one on are not valid (padding sorts last).
      const uint64_t pad = static_cast<uint64_t>(invalid_words[0]) | (static_cast<uint64_t>(invalid_words[1]) << 32);
      const int valid = pad != 0 ? __ffsll(static_cast<long long>(pad)) - 1 : size;
      uint64_t rem = removed[nb];
      int nk = 0, end = valid < size;
      for (int k = 0; k < valid; ++k) {
        if ((rem >> k) & 1ull) continue;
        kept_pos[nk++] = k;
        rem |= diag[k];
        if (count + nk == D) {
          end = 1;
          break;
        }
      }
      n_kept = nk;
      stop = end;
    }
    __syncthreads();
    const int nk = n_kept;
    for (int r = t; r < nk; r += blockDim.x) {
      const int64_t i = nb * kNmsBlock + kept_pos[r];
      const int64_t o = b * D + count + r;
      for (int c = 0; c < 4; ++c) out_boxes[o * 4 + c] = boxes[i * 4 + c];
      out_scores[o] = scores[i];
      out_labels[o] = labels[i];
      if (tiled) state.keep[b * M + i] = 1;
    }
    done = stop != 0;
    if (!done) nms_propagate(mask, W, c0, c1, nb, kept_pos, nk, removed);
    count += nk;
    __syncthreads();
    size = next_size;
  }
  if (c1 == col_blocks) {  // the last tile: padding after the detections
    for (int64_t s = count + t; s < D; s += blockDim.x) {
      const int64_t o = b * D + s;
      for (int c = 0; c < 4; ++c) out_boxes[o * 4 + c] = T(0);
      out_scores[o] = T(0);
      out_labels[o] = -1;
    }
  }
  if (t == 0) {
    counts[b] = count;
    if (tiled && done) state.done[b] = 1;
  }
}

// Post-processing, steps 2-3 after the candidates are sorted: per mask tile, what the earlier
// tiles' detections suppress, the tile's mask words, then the greedy pass. W column blocks per
// tile (nms_tile_blocks(M, num_images, budget)); mask: num_images * nms_tile_rows(M, W) * W
// words; state: zeroed, removed == nullptr when W covers every column block; counts: zeroed.
template <typename T>
cudaError_t launch_postprocess_nms(const float* sorted_boxes_f, const T* sorted_boxes, const T* sorted_scores,
                                   const int64_t* sorted_labels, int64_t num_images, int64_t M, int64_t D, float thr,
                                   int64_t W, uint64_t* mask, PostprocessState state, T* out_boxes, T* out_scores,
                                   int64_t* out_labels, int64_t* counts, cudaStream_t stream) {
  const int64_t cb = nms_col_blocks(M);
  const int64_t rows = nms_tile_rows(M, W);
  const unsigned images = static_cast<unsigned>(num_images);
  const size_t smem = state.removed == nullptr ? static_cast<size_t>(cb) * sizeof(uint64_t) : 0;
  if (smem > 0) {
    // The removed-words take up to 48 KiB, the kernel's static shared memory comes on top: past
    // 48 KiB in all a launch needs the kernel's opt-in.
    const cudaError_t err = cudaFuncSetAttribute(postprocess_nms_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  for (int64_t c0 = 0; c0 < cb; c0 += W) {
    const int64_t c1 = imin(c0 + W, cb);
    const unsigned tw = static_cast<unsigned>(c1 - c0);
    if (c0 > 0) {
      FO_LAUNCH(dim3(static_cast<unsigned>(c0), tw, images), kNmsBlock, 0, stream, nms_suppress_kernel<kClasses>)(
          sorted_boxes_f, sorted_labels, M, thr, state.keep, c0, state.removed);
    }
    FO_LAUNCH(dim3(tw, tw, images), kNmsBlock, 0, stream, nms_mask_kernel<kClasses>)(sorted_boxes_f, sorted_labels, M, thr,
                                                                             c0, W, rows, mask);
    FO_LAUNCH(images, kNmsReduceThreads, smem, stream, postprocess_nms_kernel<T>)(mask, sorted_boxes, sorted_scores,
                                                                            sorted_labels, M, D, c0, c1, W, rows,
                                                                            state, out_boxes, out_scores, out_labels,
                                                                            counts);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace focalops
