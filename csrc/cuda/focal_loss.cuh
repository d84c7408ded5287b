// Sigmoid focal loss, CUDA kernel bodies and launch (torch-free; the .cu passes raw pointers).
//
// One grid-stride pass over the flattened logits in 16-byte packs. Class-index targets are
// read per row (one division per pack, then a running column), so no one-hot tensor exists.
// Bytes per element: forward reads the logits (summed: nothing written); backward reads them
// again and writes the gradient: 12 B per fp32 element for forward + backward (6 B for 16-bit).
// Sums are deterministic: per-block partials in a fixed grid, added in order by one block.
#pragma once

#include "cuda/common.cuh"
#include "math/focal_loss.h"

namespace focalops {
namespace cuda {

enum FocalMode : int { kFocalLoss = 0, kFocalSum = 1, kFocalGrad = 2 };

template <typename A>
struct FocalArgs {
  int64_t numel;
  int64_t K;  // size of the last dimension (classes)
  int64_t ignore_index;
  A alpha;
  A gamma;
  const A* grad_scalar;  // kFocalGrad of a reduced loss: the incoming 0-d gradient, on device
};

constexpr int kFocalThreads = 256;

// Loss (or gradient times the incoming gradient) of M consecutive elements from idx0.
template <typename T, bool kHard, int G, int kMode, int M>
__device__ __forceinline__ void focal_chunk(int64_t idx0, const typename OpMath<T>::type (&xv)[M],
                                            const typename OpMath<T>::type (&tv)[M], const int64_t* __restrict__ labels,
                                            const FocalArgs<typename OpMath<T>::type>& args,
                                            typename OpMath<T>::type (&res)[M]) {
  using A = typename OpMath<T>::type;
  const A a_pos = args.alpha < A(0) ? A(1) : args.alpha;
  const A a_neg = args.alpha < A(0) ? A(1) : A(1) - args.alpha;
  int64_t row = 0, col = 0, label = 0;
  if (kHard) {
    row = idx0 / args.K;
    col = idx0 - row * args.K;
    label = __ldg(labels + row);
  }
#pragma unroll
  for (int j = 0; j < M; ++j) {
    math::LossGrad<A> r;
    A w = A(1);
    if (kHard) {
      while (col >= args.K) {
        col -= args.K;
        label = __ldg(labels + ++row);
      }
      const bool ignored = label == args.ignore_index;
      FO_DEVICE_CHECK(ignored || (label >= -1 && label < args.K));  // targets: class index out of range
      const bool pos = col == label;
      w = ignored ? A(0) : A(1);
      r = math::focal_hard<G>(xv[j], pos, pos ? a_pos : a_neg, args.gamma);
      ++col;
    } else {
      r = math::focal_soft<G>(xv[j], tv[j], args.alpha, args.gamma);
    }
    res[j] = math::mul_zero_wins(w, kMode == kFocalGrad ? r.grad : r.loss);
  }
}

template <typename T, bool kHard, int G, int kMode, int M>
__device__ __forceinline__ void focal_step(int64_t idx0, const T* __restrict__ x, const T* __restrict__ soft,
                                           const int64_t* __restrict__ labels, const T* __restrict__ grad_each,
                                           T* __restrict__ out, const FocalArgs<typename OpMath<T>::type>& args,
                                           typename OpMath<T>::type gscale, typename OpMath<T>::type& acc) {
  using A = typename OpMath<T>::type;
  A xv[M], tv[M], res[M];
  {
    const Pack<T, M> px = *reinterpret_cast<const Pack<T, M>*>(x + idx0);
#pragma unroll
    for (int j = 0; j < M; ++j) xv[j] = load_as_opmath(px.v[j]);
  }
  if (!kHard) {
    const Pack<T, M> pt = *reinterpret_cast<const Pack<T, M>*>(soft + idx0);
#pragma unroll
    for (int j = 0; j < M; ++j) tv[j] = load_as_opmath(pt.v[j]);
  }
  focal_chunk<T, kHard, G, kMode, M>(idx0, xv, tv, labels, args, res);
  if (kMode == kFocalSum) {
#pragma unroll
    for (int j = 0; j < M; ++j) acc += res[j];
    return;
  }
  Pack<T, M> po;
  if (kMode == kFocalGrad && grad_each != nullptr) {
    const Pack<T, M> pg = *reinterpret_cast<const Pack<T, M>*>(grad_each + idx0);
#pragma unroll
    for (int j = 0; j < M; ++j) po.v[j] = store_from_opmath<T>(res[j] * load_as_opmath(pg.v[j]));
  } else {
#pragma unroll
    for (int j = 0; j < M; ++j) po.v[j] = store_from_opmath<T>(res[j] * gscale);
  }
  *reinterpret_cast<Pack<T, M>*>(out + idx0) = po;
}

// vec: every pointer is 16-byte aligned, so whole packs of N elements can be moved.
template <typename T, bool kHard, int G, int kMode>
__global__ void __launch_bounds__(kFocalThreads)
    focal_kernel(const T* __restrict__ x, const T* __restrict__ soft, const int64_t* __restrict__ labels,
                 const T* __restrict__ grad_each, T* __restrict__ out, typename OpMath<T>::type* __restrict__ partials,
                 FocalArgs<typename OpMath<T>::type> args, bool vec) {
  using A = typename OpMath<T>::type;
  constexpr int N = 16 / sizeof(T) > 0 ? 16 / sizeof(T) : 1;
  const A gscale = (kMode == kFocalGrad && grad_each == nullptr) ? *args.grad_scalar : A(1);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  A acc = A(0);
  int64_t done = 0;
  if (vec) {
    const int64_t packs = args.numel / N;
    for (int64_t p = tid; p < packs; p += stride) {
      focal_step<T, kHard, G, kMode, N>(p * N, x, soft, labels, grad_each, out, args, gscale, acc);
    }
    done = packs * N;
  }
  for (int64_t i = done + tid; i < args.numel; i += stride) {
    focal_step<T, kHard, G, kMode, 1>(i, x, soft, labels, grad_each, out, args, gscale, acc);
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
                             FocalArgs<typename OpMath<T>::type>, bool);

template <typename T, bool kHard, int kMode>
FocalKernel<T, kHard, kMode> focal_kernel_for(int gk) {
  switch (gk) {
    case math::kGammaZero: return focal_kernel<T, kHard, math::kGammaZero, kMode>;
    case math::kGammaOne: return focal_kernel<T, kHard, math::kGammaOne, kMode>;
    case math::kGammaTwo: return focal_kernel<T, kHard, math::kGammaTwo, kMode>;
    default: return focal_kernel<T, kHard, math::kGammaAny, kMode>;
  }
}

// One wave of resident blocks (no partial second wave of the grid-stride loop), fewer when
// the work is small. Returns the grid used (the number of partial sums), or 0 on error.
template <typename T, bool kHard, int kMode>
int launch_focal_kernel(int gk, int sms, cudaStream_t stream, const T* x, const T* soft, const int64_t* labels,
                        const T* grad_each, T* out, typename OpMath<T>::type* partials,
                        const FocalArgs<typename OpMath<T>::type>& args, bool vec) {
  const FocalKernel<T, kHard, kMode> kernel = focal_kernel_for<T, kHard, kMode>(gk);
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kFocalThreads, 0) != cudaSuccess) return 0;
  constexpr int N = 16 / sizeof(T);
  const int64_t work = vec ? args.numel / N + args.numel % N : args.numel;
  const int64_t wanted = (work + kFocalThreads - 1) / kFocalThreads;
  const int64_t resident = static_cast<int64_t>(per_sm > 0 ? per_sm : 1) * sms;
  const int grid = static_cast<int>(wanted < 1 ? 1 : wanted < resident ? wanted : resident);
  kernel<<<grid, kFocalThreads, 0, stream>>>(x, soft, labels, grad_each, out, partials, args, vec);
  return grid;
}

// Launches one focal loss pass on `sms` multiprocessors. kFocalSum writes the 0-d sum to
// sum_out (partials must hold kFocalMaxBlocksPerSm * sms values); kFocalLoss / kFocalGrad
// write numel values to out.
constexpr int kFocalMaxBlocksPerSm = 2048 / kFocalThreads;

template <typename T>
cudaError_t launch_focal(int mode, bool hard, int gk, const T* x, const T* soft, const int64_t* labels,
                         const T* grad_each, T* out, typename OpMath<T>::type* partials,
                         typename OpMath<T>::type* sum_out, const FocalArgs<typename OpMath<T>::type>& args, int sms,
                         cudaStream_t stream) {
  auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vec = aligned(x) && aligned(soft) && aligned(grad_each) && aligned(out);
  int grid = 0;
  if (mode == kFocalSum) {
    grid = hard ? launch_focal_kernel<T, true, kFocalSum>(gk, sms, stream, x, soft, labels, grad_each, out, partials,
                                                          args, vec)
                : launch_focal_kernel<T, false, kFocalSum>(gk, sms, stream, x, soft, labels, grad_each, out, partials,
                                                           args, vec);
    if (grid > 0) focal_sum_finalize<<<1, 1024, 0, stream>>>(partials, grid, sum_out);
  } else if (mode == kFocalGrad) {
    grid = hard ? launch_focal_kernel<T, true, kFocalGrad>(gk, sms, stream, x, soft, labels, grad_each, out, partials,
                                                           args, vec)
                : launch_focal_kernel<T, false, kFocalGrad>(gk, sms, stream, x, soft, labels, grad_each, out,
                                                            partials, args, vec);
  } else {
    grid = hard ? launch_focal_kernel<T, true, kFocalLoss>(gk, sms, stream, x, soft, labels, grad_each, out, partials,
                                                           args, vec)
                : launch_focal_kernel<T, false, kFocalLoss>(gk, sms, stream, x, soft, labels, grad_each, out,
                                                            partials, args, vec);
  }
  return grid > 0 ? cudaGetLastError() : cudaErrorInvalidConfiguration;
}

}  // namespace cuda
}  // namespace focalops
