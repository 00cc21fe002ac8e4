#include <algorithm>
#include <cfloat>
#include <climits>
#include <cstdint>

#include "moebal/core/error.h"
#include "moebal/cuda/check.h"
#include "moebal/cuda/predictor.h"
#include "moe_router_device.cuh"

namespace moebal::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void from_float(float v, float* p) { *p = v; }
__device__ __forceinline__ void from_float(float v, __nv_bfloat16* p) { *p = __float2bfloat16(v); }

// SiLU of a [num_tokens, dim] block of x (row pitch ld_x) into out ([num_tokens, dim], packed):
// out = v / (1 + exp(-v)), v = x in fp32. 2-D blocks: threadIdx.x walks a row kVec elements at a
// time (one 16-byte load and store when kVec > 1: the caller checks alignment), threadIdx.y picks
// one of blockDim.y rows; the grid strides over rows. No per-element division.
template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads) silu_kernel(const T* __restrict__ x, int64_t ld_x, int64_t num_tokens,
                                                         int dim, T* __restrict__ out) {
  const int d0 = (blockIdx.x * blockDim.x + threadIdx.x) * kVec;
  if (d0 >= dim) return;
  const int64_t row_step = static_cast<int64_t>(gridDim.y) * blockDim.y;
  for (int64_t t = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; t < num_tokens; t += row_step) {
    const T* src = x + t * ld_x + d0;
    T* dst = out + t * dim + d0;
    if constexpr (kVec == 1) {
      const float v = to_float(*src);
      from_float(v / (1.0f + __expf(-v)), dst);
    } else {
      static_assert(kVec * sizeof(T) == sizeof(uint4), "one 16-byte vector per step");
      union Pack {
        uint4 u;
        T e[kVec];
      } in, res;
      in.u = *reinterpret_cast<const uint4*>(src);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const float v = to_float(in.e[i]);
        from_float(v / (1.0f + __expf(-v)), &res.e[i]);
      }
      *reinterpret_cast<uint4*>(dst) = res.u;
    }
  }
}

// Ranking key of a logit: the router's order-preserving key (moe_router_device.cuh; -0 and +0
// equal) plus one, NaN mapped to 1 so that it ranks below every number, and 0 left for "no
// candidate". Larger value wins; equal values: lower expert id wins (the same rule as the CPU
// reference).
__device__ __forceinline__ uint32_t rank_key(float v) {
  return v != v ? 1u : detail::ordered_key(v) + 1u;  // +inf: 0xff800001, no overflow
}

// NJ = values per lane (num_experts <= 32 * NJ). Lane `l` owns experts l, l + 32, l + 64, ...
// One warp per token: the logits, their softmax denominator, then k rounds; in each, every lane
// offers its best remaining value (lowest j on equal keys, so its lowest expert id), the warp takes
// the largest key and, among the lanes offering it, the lowest expert id (two redux instructions),
// and the winning lane writes the pick.
template <typename T, int NJ>
__global__ void __launch_bounds__(kThreads) topk_hist_kernel(
    const T* __restrict__ gate, int64_t ld_gate, const T* __restrict__ residual, const float* __restrict__ bias,
    int64_t num_tokens, int32_t num_experts, int32_t k, float* __restrict__ logits, int32_t* __restrict__ topk_ids,
    float* __restrict__ topk_scores, int32_t* __restrict__ counts) {
  extern __shared__ int32_t bins[];
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) bins[e] = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t num_warps = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t t = warp; t < num_tokens; t += num_warps) {
    float v[NJ];
    uint32_t key[NJ];
    float mx = -FLT_MAX;
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      const int e = lane + 32 * j;
      v[j] = -FLT_MAX;
      key[j] = 0u;
      if (e < num_experts) {
        float x = to_float(gate[t * ld_gate + e]);
        if (bias) x += bias[e];
        if (residual) x += to_float(residual[t * num_experts + e]);
        logits[t * num_experts + e] = x;
        v[j] = x;
        key[j] = rank_key(x);
        mx = fmaxf(mx, x);
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < NJ; ++j)
      if (lane + 32 * j < num_experts) sum += __expf(v[j] - mx);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    const float inv = 1.f / sum;
    for (int r = 0; r < k; ++r) {
      uint32_t bk = 0u;
      float bv = 0.f;
      int bj = -1;
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        if (key[j] > bk) {
          bk = key[j];
          bv = v[j];
          bj = j;
        }
      }
      const uint32_t top = __reduce_max_sync(0xffffffffu, bk);
      const int mine = bj >= 0 && bk == top ? lane + 32 * bj : INT_MAX;
      const int win = __reduce_min_sync(0xffffffffu, mine);
      if (mine == win) {  // exactly one lane: expert ids are distinct
#pragma unroll
        for (int j = 0; j < NJ; ++j)
          if (j == bj) key[j] = 0u;  // taken
        topk_ids[t * k + r] = win;
        topk_scores[t * k + r] = __expf(bv - mx) * inv;
        atomicAdd(&bins[win], 1);
      }
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x)
    if (bins[e] != 0) atomicAdd(&counts[e], bins[e]);
}

int blocks_for(int64_t items_per_block, int64_t n, int64_t cap) {
  const int64_t want = (n + items_per_block - 1) / items_per_block;
  return static_cast<int>(want < 1 ? 1 : (want < cap ? want : cap));
}

template <typename T, int kVec>
void silu_launch(const T* x, int64_t ld_x, int64_t num_tokens, int dim, T* out, cudaStream_t stream) {
  const int vecs = (dim + kVec - 1) / kVec;                      // threads a row needs
  const int bx = std::min(kThreads, (vecs + 31) / 32 * 32);      // a warp multiple, at most the block
  const int by = kThreads / bx;                                  // rows per block
  const int gx = (vecs + bx - 1) / bx;
  const int64_t rows = (num_tokens + by - 1) / by;
  const int gy = static_cast<int>(std::min<int64_t>(rows, std::max(1, 8192 / gx)));  // ~8K blocks at most
  silu_kernel<T, kVec><<<dim3(gx, gy), dim3(bx, by), 0, stream>>>(x, ld_x, num_tokens, dim, out);
}

template <typename T>
void silu_impl(const T* x, int64_t ld_x, int64_t num_tokens, int64_t dim, T* out, cudaStream_t stream) {
  MOEBAL_CHECK_ARG(num_tokens >= 0 && dim >= 0, "probe_silu: num_tokens and dim must be >= 0, got ", num_tokens,
                   " and ", dim);
  MOEBAL_CHECK_ARG(dim <= INT32_MAX, "probe_silu: dim must be < 2^31, got ", dim);
  MOEBAL_CHECK_ARG(ld_x >= dim, "probe_silu: ld_x (", ld_x, ") must be >= dim (", dim, ")");
  if (num_tokens == 0 || dim == 0) return;
  constexpr int kVec = static_cast<int>(sizeof(uint4) / sizeof(T));
  const bool vec = dim % kVec == 0 && ld_x % kVec == 0 && (reinterpret_cast<uintptr_t>(x) & 15) == 0 &&
                   (reinterpret_cast<uintptr_t>(out) & 15) == 0;
  if (vec) {
    silu_launch<T, kVec>(x, ld_x, num_tokens, static_cast<int>(dim), out, stream);
  } else {
    silu_launch<T, 1>(x, ld_x, num_tokens, static_cast<int>(dim), out, stream);
  }
  MOEBAL_CHECK_LAUNCH();
}

template <typename T>
void topk_impl(const T* gate, int64_t ld_gate, const T* residual, const float* bias, int64_t num_tokens,
               int32_t num_experts, int32_t k, float* logits, int32_t* topk_ids, float* topk_scores, int32_t* counts,
               cudaStream_t stream) {
  MOEBAL_CHECK_ARG(num_experts >= 1 && num_experts <= kProbeMaxExperts, "probe_topk_histogram: num_experts must be in [1, ",
                   kProbeMaxExperts, "], got ", num_experts);
  MOEBAL_CHECK_ARG(k >= 1 && k <= num_experts && k <= kProbeMaxTopK, "probe_topk_histogram: k must be in [1, min(",
                   num_experts, ", ", kProbeMaxTopK, ")], got ", k);
  MOEBAL_CHECK_ARG(num_tokens >= 0, "probe_topk_histogram: num_tokens must be >= 0, got ", num_tokens);
  MOEBAL_CHECK_ARG(ld_gate >= num_experts, "probe_topk_histogram: ld_gate (", ld_gate, ") must be >= num_experts (",
                   num_experts, ")");
  MOEBAL_CHECK_CUDA(cudaMemsetAsync(counts, 0, sizeof(int32_t) * num_experts, stream));
  if (num_tokens == 0) return;
  const int blocks = blocks_for(kWarps, num_tokens, 132 * 16);
  const size_t smem = sizeof(int32_t) * num_experts;
#define MOEBAL_PROBE_LAUNCH(NJ)                                                                              \
  topk_hist_kernel<T, NJ><<<blocks, kThreads, smem, stream>>>(gate, ld_gate, residual, bias, num_tokens,     \
                                                              num_experts, k, logits, topk_ids, topk_scores, \
                                                              counts)
  if (num_experts <= 32) MOEBAL_PROBE_LAUNCH(1);
  else if (num_experts <= 64) MOEBAL_PROBE_LAUNCH(2);
  else if (num_experts <= 128) MOEBAL_PROBE_LAUNCH(4);
  else if (num_experts <= 256) MOEBAL_PROBE_LAUNCH(8);
  else if (num_experts <= 512) MOEBAL_PROBE_LAUNCH(16);
  else MOEBAL_PROBE_LAUNCH(32);
#undef MOEBAL_PROBE_LAUNCH
  MOEBAL_CHECK_LAUNCH();
}

}  // namespace

void probe_silu(const float* x, int64_t ld_x, int64_t num_tokens, int64_t dim, float* out, cudaStream_t stream) {
  silu_impl(x, ld_x, num_tokens, dim, out, stream);
}
void probe_silu(const __nv_bfloat16* x, int64_t ld_x, int64_t num_tokens, int64_t dim, __nv_bfloat16* out,
                cudaStream_t stream) {
  silu_impl(x, ld_x, num_tokens, dim, out, stream);
}
void probe_topk_histogram(const float* gate, int64_t ld_gate, const float* residual, const float* bias,
                          int64_t num_tokens, int32_t num_experts, int32_t k, float* logits, int32_t* topk_ids,
                          float* topk_scores, int32_t* counts, cudaStream_t stream) {
  topk_impl(gate, ld_gate, residual, bias, num_tokens, num_experts, k, logits, topk_ids, topk_scores, counts, stream);
}
void probe_topk_histogram(const __nv_bfloat16* gate, int64_t ld_gate, const __nv_bfloat16* residual,
                          const float* bias, int64_t num_tokens, int32_t num_experts, int32_t k, float* logits,
                          int32_t* topk_ids, float* topk_scores, int32_t* counts, cudaStream_t stream) {
  topk_impl(gate, ld_gate, residual, bias, num_tokens, num_experts, k, logits, topk_ids, topk_scores, counts, stream);
}

}  // namespace moebal::cuda
