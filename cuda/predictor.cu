#include <cfloat>

#include "moebal/core/error.h"
#include "moebal/cuda/check.h"
#include "moebal/cuda/predictor.h"

namespace moebal::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void from_float(float v, float* p) { *p = v; }
__device__ __forceinline__ void from_float(float v, __nv_bfloat16* p) { *p = __float2bfloat16(v); }

template <typename T>
__global__ void silu_kernel(const T* __restrict__ x, int64_t ld_x, int64_t num_tokens, int64_t dim,
                            T* __restrict__ out) {
  const int64_t n = num_tokens * dim;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t t = i / dim, d = i - t * dim;
    const float v = to_float(x[t * ld_x + d]);
    from_float(v / (1.0f + __expf(-v)), out + i);
  }
}

// Larger value wins; equal values: lower expert id wins (same rule as the CPU reference).
__device__ __forceinline__ bool better(float va, int ia, float vb, int ib) {
  return va > vb || (va == vb && ia < ib);
}

// NJ = values per lane (num_experts <= 32 * NJ). Lane `l` owns experts l, l + 32, l + 64, ...
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
    float mx = -FLT_MAX;
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      const int e = lane + 32 * j;
      v[j] = -FLT_MAX;
      if (e < num_experts) {
        float x = to_float(gate[t * ld_gate + e]);
        if (bias) x += bias[e];
        if (residual) x += to_float(residual[t * num_experts + e]);
        logits[t * num_experts + e] = x;
        v[j] = x;
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
    uint32_t taken = 0;  // bit j: this lane's j-th value is already chosen
    for (int r = 0; r < k; ++r) {
      float bv = -FLT_MAX;
      int bi = 0x7fffffff;
      int bj = -1;
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        const int e = lane + 32 * j;
        if (e < num_experts && !(taken >> j & 1u) && better(v[j], e, bv, bi)) {
          bv = v[j];
          bi = e;
          bj = j;
        }
      }
      float wv = bv;
      int wi = bi;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, wv, off);
        const int oi = __shfl_xor_sync(0xffffffffu, wi, off);
        if (better(ov, oi, wv, wi)) {
          wv = ov;
          wi = oi;
        }
      }
      if (bi == wi && bj >= 0) taken |= 1u << bj;
      if (lane == 0) {
        topk_ids[t * k + r] = wi;
        topk_scores[t * k + r] = __expf(wv - mx) * inv;
        atomicAdd(&bins[wi], 1);
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

template <typename T>
void silu_impl(const T* x, int64_t ld_x, int64_t num_tokens, int64_t dim, T* out, cudaStream_t stream) {
  MOEBAL_CHECK_ARG(num_tokens >= 0 && dim >= 0, "probe_silu: num_tokens and dim must be >= 0, got ", num_tokens,
                   " and ", dim);
  MOEBAL_CHECK_ARG(ld_x >= dim, "probe_silu: ld_x (", ld_x, ") must be >= dim (", dim, ")");
  if (num_tokens == 0 || dim == 0) return;
  silu_kernel<T><<<blocks_for(kThreads * 4, num_tokens * dim, 4096), kThreads, 0, stream>>>(x, ld_x, num_tokens,
                                                                                           dim, out);
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
