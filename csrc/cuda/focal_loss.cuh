// Sigmoid focal loss, CUDA kernel bodies and launch (torch-free; the .cu passes raw pointers).
//
// One grid-stride pass over the flattened logits in 16-byte packs, kFocalUnroll packs in flight
// per thread (all loads of a step are issued before the math). Bytes per element: forward reads
// the logits (summed: nothing written); backward reads them again and writes the gradient:
// 12 B per fp32 element for forward + backward (6 B for 16-bit).
//
// - Index math is 32-bit: a launch covers at most kFocalChunk elements (the launcher splits
//   larger tensors into chunks, each with its own head, and sums their partials in order).
// - Class-index targets: the row of a pack comes from one multiply-high division
//   (math::IntDivider); its label is loaded and range-checked once per row the pack touches
//   (a device-side assert, no host round trip), then each element is one 32-bit compare.
// - Alignment: packs are aligned to the output (or, for a sum, to the logits); the unaligned
//   head (< one pack) and the tail are done one element at a time. An input whose address is
//   not aligned like the output (`x.view(-1)[1:]` with a fresh gradient) is read with scalar
//   loads inside the same vector loop, so it never drops the rest of the pass to a scalar path.
// - Sums are deterministic: per-block partials in a fixed grid (it depends only on the size and
//   the device), added in order by one block.
#pragma once

#include <cstdint>

#include "cuda/common.cuh"
#include "math/focal_loss.h"
#include "math/intdiv.h"

namespace focalops {
namespace cuda {

using math::FocalMode;
using math::kFocalGrad;
using math::kFocalLoss;
using math::kFocalSum;

constexpr int kFocalThreads = 256;
// Resident blocks per SM the register budget is fitted to (__launch_bounds__): 4 x 256 threads
// (<= 64 registers per thread); 3 (<= 85) for the 16-bit class-index gradient, whose 8-element
// packs with the incoming gradient beside them would spill at 64. The grid is one wave.
template <typename T, bool kHard, int kMode>
constexpr int focal_min_blocks() {
  return (sizeof(T) == 2 && kHard && kMode == 2) ? 3 : 4;
}
// Elements per launch: 32-bit indices with room for the column offset and the grid stride. (The
// SIMT emulator's is 2^16, so that its tests reach the chunking on small inputs.)
#if defined(FOCALOPS_EMULATE)
constexpr int64_t kFocalChunk = int64_t{1} << 16;
#else
constexpr int64_t kFocalChunk = int64_t{1} << 30;
#endif
// Largest class count of the class-index form (the column offset of a chunk stays < 2^31).
constexpr int64_t kFocalMaxClasses = int64_t{1} << 30;

// Packs in flight per thread, within the 64-register budget (no spills: check with
// -Xptxas -v): 4 of fp32 / fp64 logits in the class-index form, 2 with soft targets streaming
// beside them (4 packs in flight); 16-bit packs hold 8 elements, so half as many.
template <typename T, bool kHard>
constexpr int focal_unroll() {
  return sizeof(T) == 2 ? (kHard ? 2 : 1) : (kHard ? 4 : 2);
}

template <typename T>
constexpr int focal_pack() {
  return 16 / sizeof(T) > 0 ? static_cast<int>(16 / sizeof(T)) : 1;
}

template <typename A>
struct FocalArgs {
  uint32_t numel;         // elements of this launch (<= kFocalChunk)
  uint32_t K;             // size of the last dimension (classes)
  uint32_t col0;          // class-index form: column of element 0 in its row (labels[0] is that row)
  math::IntDivider kdiv;  // divides by K
  int64_t ignore_index;
  A alpha;
  A gamma;
  const A* grad_scalar;  // kFocalGrad of a reduced loss: the incoming 0-d gradient, on device
};

// Where the 16-byte packs are: elements [head, head + packs * N) in packs, the rest one by one.
// *_vec: that input's packs are 16-byte aligned (else read element by element).
struct FocalLayout {
  uint32_t head;
  uint32_t packs;
  bool x_vec;
  bool soft_vec;
  bool grad_vec;
};

constexpr int32_t kIgnoredRow = INT32_MIN;

// The class of row `row` (-1: background, kIgnoredRow: ignore_index), checked once per load.
template <typename A>
__device__ __forceinline__ int32_t focal_row_class(const int64_t* __restrict__ labels, uint32_t row,
                                                   const FocalArgs<A>& args) {
  const int64_t label = __ldg(labels + row);
  if (label == args.ignore_index) return kIgnoredRow;
  FO_DEVICE_CHECK(label >= -1 && label < static_cast<int64_t>(args.K));  // targets: class index out of range
  return static_cast<int32_t>(label);
}

template <typename T, int M>
__device__ __forceinline__ Pack<T, M> focal_load(const T* __restrict__ p, bool vec) {
  if (M > 1 && vec) return *reinterpret_cast<const Pack<T, M>*>(p);
  Pack<T, M> r;
#pragma unroll
  for (int j = 0; j < M; ++j) r.v[j] = p[j];
  return r;
}

// The M elements from e (a pack, or M = 1): loss or gradient times the incoming gradient,
// stored to out (or added to acc for kFocalSum).
template <typename T, bool kHard, int G, int kMode, int M>
__device__ __forceinline__ void focal_pack_values(uint32_t e, const Pack<T, M>& px, const Pack<T, M>& pt,
                                                  const Pack<T, M>& pg, bool has_g,
                                                  const int64_t* __restrict__ labels, T* __restrict__ out,
                                                  const FocalArgs<typename OpMath<T>::type>& args,
                                                  typename OpMath<T>::type gscale, typename OpMath<T>::type& acc) {
  using A = typename OpMath<T>::type;
  const A a_pos = args.alpha < A(0) ? A(1) : args.alpha;
  const A a_neg = args.alpha < A(0) ? A(1) : A(1) - args.alpha;
  uint32_t row = 0;
  int32_t col = 0, cls = 0;
  if (kHard) {
    const uint32_t g = args.col0 + e;  // < 2^31: col0 < K <= 2^30, e < 2^30
    row = args.kdiv.div(g);
    col = static_cast<int32_t>(g - row * args.K);
    cls = focal_row_class(labels, row, args);
  }
  Pack<T, M> po;
#pragma unroll
  for (int j = 0; j < M; ++j) {
    const A x = load_as_opmath(px.v[j]);
    math::LossGrad<A> r;
    A w = A(1);
    if (kHard) {
      if (col == static_cast<int32_t>(args.K)) {  // the pack runs into the next row
        col = 0;
        cls = focal_row_class(labels, ++row, args);
      }
      const bool pos = col == cls;
      w = cls == kIgnoredRow ? A(0) : A(1);
      r = math::focal_hard<G>(x, pos, pos ? a_pos : a_neg, args.gamma);
      ++col;
    } else {
      r = math::focal_soft<G>(x, load_as_opmath(pt.v[j]), args.alpha, args.gamma);
    }
    const A v = math::mul_zero_wins(w, kMode == kFocalGrad ? r.grad : r.loss);
    if (kMode == kFocalSum) {
      acc += v;
    } else {
      const A scale = (kMode == kFocalGrad && has_g) ? load_as_opmath(pg.v[j]) : gscale;
      po.v[j] = store_from_opmath<T>(v * scale);
    }
  }
  if (kMode != kFocalSum) *reinterpret_cast<Pack<T, M>*>(out + e) = po;
}

// One element at e (the head and the tail).
template <typename T, bool kHard, int G, int kMode>
__device__ __forceinline__ void focal_scalar(uint32_t e, const T* __restrict__ x, const T* __restrict__ soft,
                                             const int64_t* __restrict__ labels, const T* __restrict__ grad_each,
                                             T* __restrict__ out, const FocalArgs<typename OpMath<T>::type>& args,
                                             typename OpMath<T>::type gscale, typename OpMath<T>::type& acc) {
  // Unused values are x: every value defined (GCC could not see that pg is read only if has_g).
  Pack<T, 1> px, pt, pg;
  px.v[0] = x[e];
  pt.v[0] = kHard ? px.v[0] : soft[e];
  const bool has_g = kMode == kFocalGrad && grad_each != nullptr;
  pg.v[0] = has_g ? grad_each[e] : px.v[0];
  focal_pack_values<T, kHard, G, kMode, 1>(e, px, pt, pg, has_g, labels, out, args, gscale, acc);
}

template <typename T, bool kHard, int G, int kMode>
__global__ void __launch_bounds__(kFocalThreads, (focal_min_blocks<T, kHard, kMode>()))
    focal_kernel(const T* __restrict__ x, const T* __restrict__ soft, const int64_t* __restrict__ labels,
                 const T* __restrict__ grad_each, T* __restrict__ out, typename OpMath<T>::type* __restrict__ partials,
                 FocalArgs<typename OpMath<T>::type> args, FocalLayout lay) {
  using A = typename OpMath<T>::type;
  constexpr int N = focal_pack<T>();
  constexpr int U = focal_unroll<T, kHard>();
  const bool has_g = kMode == kFocalGrad && grad_each != nullptr;
  const A gscale = (kMode == kFocalGrad && grad_each == nullptr) ? *args.grad_scalar : A(1);
  A acc = A(0);

  // Body: U packs per thread per step, p = p0 + u * kFocalThreads (coalesced per u).
  const uint32_t step = gridDim.x * static_cast<uint32_t>(kFocalThreads * U);
  for (uint32_t p0 = blockIdx.x * static_cast<uint32_t>(kFocalThreads * U) + threadIdx.x; p0 < lay.packs;
       p0 += step) {
    Pack<T, N> px[U], pt[U], pg[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint32_t p = p0 + u * kFocalThreads;
      if (p < lay.packs) {
        const uint32_t e = lay.head + p * N;
        px[u] = focal_load<T, N>(x + e, lay.x_vec);
        if (!kHard) pt[u] = focal_load<T, N>(soft + e, lay.soft_vec);
        if (has_g) pg[u] = focal_load<T, N>(grad_each + e, lay.grad_vec);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint32_t p = p0 + u * kFocalThreads;
      if (p < lay.packs) {
        focal_pack_values<T, kHard, G, kMode, N>(lay.head + p * N, px[u], pt[u], pg[u], has_g, labels, out, args,
                                                 gscale, acc);
      }
    }
  }

  // Head (before the first aligned pack) and tail (after the last whole pack): < 2N elements.
  const uint32_t body_end = lay.head + lay.packs * N;
  const uint32_t rest = lay.head + (args.numel - body_end);
  for (uint32_t k = blockIdx.x * static_cast<uint32_t>(kFocalThreads) + threadIdx.x; k < rest;
       k += gridDim.x * static_cast<uint32_t>(kFocalThreads)) {
    const uint32_t e = k < lay.head ? k : body_end + (k - lay.head);
    focal_scalar<T, kHard, G, kMode>(e, x, soft, labels, grad_each, out, args, gscale, acc);
  }

  if (kMode == kFocalSum) {
    acc = block_sum<A, kFocalThreads>(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
  }
}

template <typename A>
__global__ void __launch_bounds__(1024) focal_sum_finalize(const A* __restrict__ partials, int n, A* __restrict__ out) {
  A v = A(0);
  for (int i = threadIdx.x; i < n; i += 1024) v += partials[i];
  v = block_sum<A, 1024>(v);
  if (threadIdx.x == 0) *out = v;
}

template <typename T, bool kHard, int kMode>
using FocalKernel = void (*)(const T*, const T*, const int64_t*, const T*, T*, typename OpMath<T>::type*,
                             FocalArgs<typename OpMath<T>::type>, FocalLayout);

template <typename T, bool kHard, int kMode>
FocalKernel<T, kHard, kMode> focal_kernel_for(int gk) {
  switch (gk) {
    case math::kGammaZero: return focal_kernel<T, kHard, math::kGammaZero, kMode>;
    case math::kGammaOne: return focal_kernel<T, kHard, math::kGammaOne, kMode>;
    case math::kGammaTwo: return focal_kernel<T, kHard, math::kGammaTwo, kMode>;
    default: return focal_kernel<T, kHard, math::kGammaAny, kMode>;
  }
}

// Elements before the first 16-byte boundary of p (p is aligned to its element size).
template <typename T>
uint32_t focal_head(const T* p) {
  constexpr uintptr_t kPackBytes = sizeof(T) * focal_pack<T>();
  const uintptr_t mis = reinterpret_cast<uintptr_t>(p) % kPackBytes;
  return mis == 0 ? 0u : static_cast<uint32_t>((kPackBytes - mis) / sizeof(T));
}

// Packs start where `anchor` (the output, or the logits for a sum) is 16-byte aligned; each
// other input is read in packs only if it is aligned at the same place.
template <typename T>
FocalLayout focal_layout(uint32_t numel, const T* anchor, const T* x, const T* soft, const T* grad_each) {
  constexpr int N = focal_pack<T>();
  constexpr uintptr_t kPackBytes = sizeof(T) * N;
  FocalLayout lay{};
  lay.head = focal_head(anchor);
  if (lay.head > numel) lay.head = numel;
  lay.packs = (numel - lay.head) / N;
  auto aligned = [&](const T* p) {
    return p == nullptr || reinterpret_cast<uintptr_t>(p + lay.head) % kPackBytes == 0;
  };
  lay.x_vec = aligned(x);
  lay.soft_vec = aligned(soft);
  lay.grad_vec = aligned(grad_each);
  return lay;
}

// One launch over one chunk: a wave of resident blocks at most (fewer when the work is small).
// *grid: the grid used (the number of partial sums written).
template <typename T, bool kHard, int kMode>
cudaError_t launch_focal_chunk(int gk, int sms, cudaStream_t stream, const T* x, const T* soft, const int64_t* labels,
                               const T* grad_each, T* out, typename OpMath<T>::type* partials,
                               const FocalArgs<typename OpMath<T>::type>& args, int* grid) {
  const FocalKernel<T, kHard, kMode> kernel = focal_kernel_for<T, kHard, kMode>(gk);
  int per_sm = 0;
  const cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kFocalThreads, 0);
  if (err != cudaSuccess) return err;
  const FocalLayout lay = focal_layout<T>(args.numel, kMode == kFocalSum ? x : out, x, soft, grad_each);
  constexpr int64_t kPerBlock = int64_t{kFocalThreads} * focal_unroll<T, kHard>();
  const int64_t wanted = (static_cast<int64_t>(lay.packs) + kPerBlock - 1) / kPerBlock;
  const int64_t resident = static_cast<int64_t>(per_sm > 0 ? per_sm : 1) * sms;
  *grid = static_cast<int>(wanted < 1 ? 1 : wanted < resident ? wanted : resident);
  FO_LAUNCH(*grid, kFocalThreads, 0, stream, kernel)(x, soft, labels, grad_each, out, partials, args, lay);
  return cudaGetLastError();
}

// Partial sums a kFocalSum pass over numel elements may write.
inline int64_t focal_partials(int64_t numel, int sms) {
  const int64_t chunks = numel > 0 ? (numel + kFocalChunk - 1) / kFocalChunk : 1;
  return chunks * static_cast<int64_t>(2048 / kFocalThreads) * sms;
}

// Launches one focal loss pass over numel elements on `sms` multiprocessors, chunk by chunk.
// kFocalSum writes the 0-d sum to sum_out (partials must hold focal_partials(numel, sms)
// values); kFocalLoss / kFocalGrad write numel values to out. Class-index form: K <= kFocalMaxClasses.
template <typename T>
cudaError_t launch_focal(FocalMode mode, bool hard, int gk, int64_t numel, int64_t K, int64_t ignore_index,
                         typename OpMath<T>::type alpha, typename OpMath<T>::type gamma,
                         const typename OpMath<T>::type* grad_scalar, const T* x, const T* soft, const int64_t* labels,
                         const T* grad_each, T* out, typename OpMath<T>::type* partials,
                         typename OpMath<T>::type* sum_out, int sms, cudaStream_t stream) {
  if (!hard) K = 1;  // the dense form has no rows
  if (K < 1 || K > kFocalMaxClasses) return cudaErrorInvalidValue;
  using A = typename OpMath<T>::type;
  FocalArgs<A> args{};
  args.K = static_cast<uint32_t>(K);
  args.kdiv = math::IntDivider(args.K);
  args.ignore_index = ignore_index;
  args.alpha = alpha;
  args.gamma = gamma;
  args.grad_scalar = grad_scalar;
  int64_t written = 0;
  for (int64_t c0 = 0; c0 < numel; c0 += kFocalChunk) {
    args.numel = static_cast<uint32_t>(numel - c0 < kFocalChunk ? numel - c0 : kFocalChunk);
    args.col0 = static_cast<uint32_t>(c0 % K);
    const int64_t* lp = hard ? labels + c0 / K : nullptr;
    const T* sp = hard ? nullptr : soft + c0;
    const T* gp = grad_each != nullptr ? grad_each + c0 : nullptr;
    T* op = out != nullptr ? out + c0 : nullptr;
    A* part = partials != nullptr ? partials + written : nullptr;
    int grid = 0;
    cudaError_t err;
    if (mode == kFocalSum) {
      err = hard ? launch_focal_chunk<T, true, kFocalSum>(gk, sms, stream, x + c0, sp, lp, gp, op, part, args, &grid)
                 : launch_focal_chunk<T, false, kFocalSum>(gk, sms, stream, x + c0, sp, lp, gp, op, part, args, &grid);
    } else if (mode == kFocalGrad) {
      err = hard ? launch_focal_chunk<T, true, kFocalGrad>(gk, sms, stream, x + c0, sp, lp, gp, op, part, args, &grid)
                 : launch_focal_chunk<T, false, kFocalGrad>(gk, sms, stream, x + c0, sp, lp, gp, op, part, args, &grid);
    } else {
      err = hard ? launch_focal_chunk<T, true, kFocalLoss>(gk, sms, stream, x + c0, sp, lp, gp, op, part, args, &grid)
                 : launch_focal_chunk<T, false, kFocalLoss>(gk, sms, stream, x + c0, sp, lp, gp, op, part, args, &grid);
    }
    if (err != cudaSuccess) return err;
    written += grid;
  }
  if (mode == kFocalSum) {
    FO_LAUNCH(1, 1024, 0, stream, focal_sum_finalize<A>)(partials, static_cast<int>(written), sum_out);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace focalops
