// NMS, CUDA kernels (CUDA runtime + csrc/math only, so nvcc can check this header without
// torch). The RetinaNet post-processing builds on them (cuda/postprocess.cuh).
//
// Bitmask NMS: boxes are sorted (by score, and for batched_nms grouped by class). Box i's mask
// row holds, per block of 64 later boxes, a 64-bit word whose bit k says "i suppresses box
// 64 * block + k" (same class, IoU > threshold). A single CTA walks the blocks in order on the
// GPU: thread 0 resolves the 64 boxes of a block from the diagonal words (staged in shared
// memory, the next block's prefetched meanwhile), all threads OR the rows of its kept boxes into
// the removed-words of the later blocks. No mask ever leaves the device.
//
// Memory: the whole mask is n^2 / 8 bytes, so it is built in square tiles of W column blocks
// (nms_tile_blocks: the whole mask when it fits in the budget, kNmsTileBytes, the usual case). For the tile
// of blocks [c0, c1): nms_suppress_kernel ORs the mask words of every box kept before c0 into
// removed[c0, c1) (computed on the fly, never stored: boxes already removed are skipped), then
// nms_mask_kernel writes the tile's own words (rows and columns in [c0, c1)), then the reduction
// resolves the tile's blocks. Scratch: n bytes of keep flags, n / 64 removed-words and one tile
// (at most kNmsTileBytes), whatever n is.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/common.cuh"
#include "math/box.h"

namespace focalops {
namespace cuda {

constexpr int kNmsBlock = 64;  // boxes per mask word
constexpr int kNmsReduceThreads = 256;
// Mask tile budget, all segments (images) together (the launchers take it as an argument:
// FOCALOPS_NMS_TILE_BYTES overrides it, so that tests reach the tiled path with small inputs).
constexpr int64_t kNmsTileBytes = int64_t{256} << 20;

// How the mask kernels treat classes.
enum NmsClassMode : int {
  kNoClasses = 0,      // one class
  kClasses = 1,        // per-box class, any order
  kSortedClasses = 2,  // per-box class, ascending: a block pair with disjoint classes is skipped
};

__host__ __device__ inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

__host__ __device__ inline int64_t nms_col_blocks(int64_t n) { return (n + kNmsBlock - 1) / kNmsBlock; }

// Column blocks per mask tile for `segments` segments of n boxes each: all of them when the
// whole mask fits in tile_bytes, else the widest square tile (64 W rows x W words per
// segment) that does, at least 1.
inline int64_t nms_tile_blocks(int64_t n, int64_t segments, int64_t tile_bytes) {
  const int64_t cb = nms_col_blocks(n);
  const double budget_words = static_cast<double>(tile_bytes) / sizeof(uint64_t) / static_cast<double>(segments);
  if (static_cast<double>(n) * static_cast<double>(cb) <= budget_words) return cb;
  int64_t w = static_cast<int64_t>(std::sqrt(budget_words / kNmsBlock));
  while (w > 1 && static_cast<double>(kNmsBlock) * w * w > budget_words) --w;
  // W is gridDim.y of the mask and suppress kernels (at most 65535; only a budget of ~2 TB gets there).
  return w < 1 ? 1 : imin(imin(w, cb), int64_t{65535});
}

// Mask rows stored per segment for tiles of W column blocks (a tile's rows start at 64 * c0).
inline int64_t nms_tile_rows(int64_t n, int64_t W) { return imin(n, W * kNmsBlock); }

__device__ __forceinline__ bool nms_same_class(int kMode, int64_t a, int64_t b) {
  return kMode == kNoClasses || a == b;
}

// Loads the (up to 64) boxes of column block cb into shared memory.
template <int kMode>
__device__ __forceinline__ void nms_stage_columns(const float* boxes, const int64_t* classes, int64_t cb, int col_size,
                                                  float* col_boxes, int64_t* col_classes) {
  const int t = threadIdx.x;
  if (t < col_size) {
    const int64_t j = cb * kNmsBlock + t;
    for (int c = 0; c < 4; ++c) col_boxes[t * 4 + c] = boxes[j * 4 + c];
    if (kMode != kNoClasses) col_classes[t] = classes[j];
  }
}

// Mask words of one tile: tile[(i - 64 c0) * W + (cb - c0)], bit k: sorted box i suppresses box
// 64 cb + k (> i). grid (c1 - c0, c1 - c0, segments), kNmsBlock threads; blockIdx.x is the column
// block, blockIdx.y the row block (both from c0); segment s = blockIdx.z holds n boxes and
// `rows` * W words of mask.
template <int kMode>
__global__ void __launch_bounds__(kNmsBlock)
    nms_mask_kernel(const float* boxes, const int64_t* classes, int64_t n, float thr, int64_t c0, int64_t W,
                    int64_t rows, uint64_t* mask) {
  const int64_t rb = c0 + blockIdx.y, cb = c0 + blockIdx.x;
  if (cb < rb) return;  // never read: a box only suppresses later boxes
  const int64_t seg = blockIdx.z;
  boxes += seg * n * 4;
  if (kMode != kNoClasses) classes += seg * n;
  mask += seg * rows * W;
  const int row_size = static_cast<int>(imin(n - rb * kNmsBlock, kNmsBlock));
  const int col_size = static_cast<int>(imin(n - cb * kNmsBlock, kNmsBlock));
  const int t = threadIdx.x;
  const int64_t i = rb * kNmsBlock + t;
  uint64_t* word = mask + (i - c0 * kNmsBlock) * W + (cb - c0);
  if (kMode == kSortedClasses && classes[rb * kNmsBlock + row_size - 1] < classes[cb * kNmsBlock]) {
    if (t < row_size) *word = 0;
    return;
  }
  __shared__ float col_boxes[kNmsBlock * 4];
  __shared__ int64_t col_classes[kNmsBlock];
  nms_stage_columns<kMode>(boxes, classes, cb, col_size, col_boxes, col_classes);
  __syncthreads();
  if (t >= row_size) return;
  float box[4];
  for (int c = 0; c < 4; ++c) box[c] = boxes[i * 4 + c];
  const int64_t cls = kMode != kNoClasses ? classes[i] : 0;
  uint64_t bits = 0;
  for (int k = rb == cb ? t + 1 : 0; k < col_size; ++k) {
    if (nms_same_class(kMode, col_classes[k], cls) && math::iou(box, col_boxes + 4 * k) > thr) bits |= 1ull << k;
  }
  *word = bits;
}

// removed[cb] |= the mask words (row block rb, column block cb) of the kept boxes of row block
// rb, for every rb < c0 and cb in [c0, c1): what the boxes resolved by earlier tiles remove from
// this one. grid (c0, c1 - c0, segments), kNmsBlock threads; `keep` holds the earlier tiles'
// decisions (0 for every box not kept), `removed` col_blocks words per segment.
template <int kMode>
__global__ void __launch_bounds__(kNmsBlock)
    nms_suppress_kernel(const float* boxes, const int64_t* classes, int64_t n, float thr, const uint8_t* keep,
                        int64_t c0, uint64_t* removed) {
  const int64_t rb = blockIdx.x, cb = c0 + blockIdx.y;
  const int64_t seg = blockIdx.z;
  const int64_t col_blocks = nms_col_blocks(n);
  boxes += seg * n * 4;
  if (kMode != kNoClasses) classes += seg * n;
  keep += seg * n;
  removed += seg * col_blocks;
  const int t = threadIdx.x;
  const int64_t i = rb * kNmsBlock + t;  // rb < c0 < col_blocks: a whole block, i < n
  const bool kept = keep[i] != 0;
  if (!__syncthreads_or(kept)) return;
  const int col_size = static_cast<int>(imin(n - cb * kNmsBlock, kNmsBlock));
  if (kMode == kSortedClasses && classes[rb * kNmsBlock + kNmsBlock - 1] < classes[cb * kNmsBlock]) return;
  __shared__ float col_boxes[kNmsBlock * 4];
  __shared__ int64_t col_classes[kNmsBlock];
  nms_stage_columns<kMode>(boxes, classes, cb, col_size, col_boxes, col_classes);
  __syncthreads();
  uint64_t bits = 0;
  if (kept) {
    float box[4];
    for (int c = 0; c < 4; ++c) box[c] = boxes[i * 4 + c];
    const int64_t cls = kMode != kNoClasses ? classes[i] : 0;
    for (int k = 0; k < col_size; ++k) {
      if (nms_same_class(kMode, col_classes[k], cls) && math::iou(box, col_boxes + 4 * k) > thr) bits |= 1ull << k;
    }
  }
  for (int off = 16; off > 0; off >>= 1) bits |= __shfl_xor_sync(0xffffffffu, bits, off);
  if ((t & 31) == 0 && bits != 0) {
    atomicOr(reinterpret_cast<unsigned long long*>(removed + cb), static_cast<unsigned long long>(bits));
  }
}

// removed[w] |= OR of the tile's mask words (column w) of the kept boxes of block nb, for
// w in (nb, c1). kept_pos: their positions in the block; four loads in flight per word.
__device__ __forceinline__ void nms_propagate(const uint64_t* tile, int64_t W, int64_t c0, int64_t c1, int64_t nb,
                                              const int* kept_pos, int nk, uint64_t* removed) {
  const int64_t row0 = (nb - c0) * kNmsBlock;
  for (int64_t w = nb + 1 + threadIdx.x; w < c1; w += blockDim.x) {
    const uint64_t* col = tile + (w - c0);
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int r = 0;
    for (; r + 4 <= nk; r += 4) {
      a0 |= col[(row0 + kept_pos[r]) * W];
      a1 |= col[(row0 + kept_pos[r + 1]) * W];
      a2 |= col[(row0 + kept_pos[r + 2]) * W];
      a3 |= col[(row0 + kept_pos[r + 3]) * W];
    }
    for (; r < nk; ++r) a0 |= col[(row0 + kept_pos[r]) * W];
    removed[w] |= a0 | a1 | a2 | a3;
  }
}

// The diagonal word of box 64 nb + t (t < size) in the tile starting at c0.
__device__ __forceinline__ uint64_t nms_diag_word(const uint64_t* tile, int64_t W, int64_t c0, int64_t nb, int t) {
  return tile[((nb - c0) * kNmsBlock + t) * W + (nb - c0)];
}

// Greedy pass over blocks [c0, c1) of n sorted boxes: keep[i] = 1 for kept boxes, 0 for the
// others. One CTA; removed: col_blocks words, zeroed before the first tile.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    nms_reduce_kernel(const uint64_t* tile, int64_t n, int64_t c0, int64_t c1, int64_t W, uint64_t* removed,
                      uint8_t* keep) {
  static_assert(kThreads >= kNmsBlock, "one thread per box of a block");
  __shared__ uint64_t diag[kNmsBlock];
  __shared__ int kept_pos[kNmsBlock];
  __shared__ int n_kept;
  __shared__ uint64_t kept_bits;
  const int t = threadIdx.x;
  int size = static_cast<int>(imin(n - c0 * kNmsBlock, kNmsBlock));
  uint64_t next = t < size ? nms_diag_word(tile, W, c0, c0, t) : 0;
  for (int64_t nb = c0; nb < c1; ++nb) {
    if (t < size) diag[t] = next;
    __syncthreads();
    // Prefetch the next block's diagonal words: the load overlaps thread 0's serial pass.
    const int next_size = nb + 1 < c1 ? static_cast<int>(imin(n - (nb + 1) * kNmsBlock, kNmsBlock)) : 0;
    if (t < next_size) next = nms_diag_word(tile, W, c0, nb + 1, t);
    if (t == 0) {
      uint64_t rem = removed[nb], kept = 0;
      int nk = 0;
      for (int k = 0; k < size; ++k) {
        if ((rem >> k) & 1ull) continue;
        kept |= 1ull << k;
        kept_pos[nk++] = k;
        rem |= diag[k];
      }
      kept_bits = kept;
      n_kept = nk;
    }
    __syncthreads();
    const uint64_t kept = kept_bits;
    if (t < size) keep[nb * kNmsBlock + t] = static_cast<uint8_t>((kept >> t) & 1ull);
    nms_propagate(tile, W, c0, c1, nb, kept_pos, n_kept, removed);
    __syncthreads();
    size = next_size;
  }
}

// NMS of n sorted boxes (sorted_classes: nullptr for kNoClasses) into keep[n] (1: kept), tile
// by tile, W column blocks per tile (nms_tile_blocks(n, 1, budget)). mask: nms_tile_rows(n, W) * W
// words; removed: nms_col_blocks(n) zeroed words.
template <int kMode>
cudaError_t launch_nms(const float* sorted_boxes, const int64_t* sorted_classes, int64_t n, float thr, int64_t W,
                       uint64_t* mask, uint64_t* removed, uint8_t* keep, cudaStream_t stream) {
  const int64_t cb = nms_col_blocks(n);
  const int64_t rows = nms_tile_rows(n, W);
  for (int64_t c0 = 0; c0 < cb; c0 += W) {
    const int64_t c1 = imin(c0 + W, cb);
    const unsigned tw = static_cast<unsigned>(c1 - c0);
    if (c0 > 0) {
      FO_LAUNCH(dim3(static_cast<unsigned>(c0), tw, 1), kNmsBlock, 0, stream, nms_suppress_kernel<kMode>)(
          sorted_boxes, sorted_classes, n, thr, keep, c0, removed);
    }
    FO_LAUNCH(dim3(tw, tw, 1), kNmsBlock, 0, stream, nms_mask_kernel<kMode>)(sorted_boxes, sorted_classes, n, thr, c0, W,
                                                                       rows, mask);
    FO_LAUNCH(1, kNmsReduceThreads, 0, stream, nms_reduce_kernel<kNmsReduceThreads>)(mask, n, c0, c1, W, removed, keep);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace focalops
