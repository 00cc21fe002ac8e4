// Router top-k: one warp per token. The warp stages the token's choice values in shared memory,
// optionally masks all but the best expert groups, then runs top_k rounds of a warp arg-max whose
// comparison (larger value, then lower id) makes the selection deterministic.
#include <cfloat>
#include <climits>

#include <cuda_bf16.h>

#include "moebal/cuda/check.h"
#include "moebal/cuda/moe_routing.h"

namespace moebal::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float load_logit(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_logit(const __nv_bfloat16* p) { return __bfloat162float(*p); }

__device__ __forceinline__ float nan_to_neg_inf(float v) { return isnan(v) ? -INFINITY : v; }

// (v, id) beats (bv, bid) when larger, or equal and with a lower id.
__device__ __forceinline__ bool beats(float v, int id, float bv, int bid) {
  return v > bv || (v == bv && id < bid);
}

__device__ __forceinline__ void warp_argmax(float& v, int& id) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(kFull, v, off);
    const int oid = __shfl_xor_sync(kFull, id, off);
    if (beats(ov, oid, v, id)) {
      v = ov;
      id = oid;
    }
  }
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, off));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

template <class T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    router_topk_kernel(const T* __restrict__ logits, int64_t num_tokens, RouterParams p,
                       const float* __restrict__ bias, int32_t* __restrict__ topk_ids,
                       float* __restrict__ topk_weights) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (t >= num_tokens) return;  // whole warps exit together
  const int E = p.num_experts;
  float* choice = smem + warp * E;
  const T* row = logits + t * E;

  // 1. Scores. Softmax needs the row max and the sum of exponentials.
  float row_max = -INFINITY;
  for (int e = lane; e < E; e += 32) {
    const float l = nan_to_neg_inf(load_logit(row + e));
    choice[e] = l;
    row_max = fmaxf(row_max, l);
  }
  float inv_sum = 1.0f;
  const bool softmax = p.scoring == RouterScoring::kSoftmax;
  if (softmax) {
    row_max = warp_max(row_max);
    if (row_max == -INFINITY) row_max = 0.0f;  // all -inf: keep exp finite (every score is 0)
    float s = 0.0f;
    for (int e = lane; e < E; e += 32) s += expf(choice[e] - row_max);
    s = warp_sum(s);
    inv_sum = s > 0.0f ? 1.0f / s : 0.0f;
  }
  for (int e = lane; e < E; e += 32) {
    const float l = choice[e];
    float sc = softmax ? expf(l - row_max) * inv_sum : 1.0f / (1.0f + expf(-l));
    if (bias != nullptr) sc += __ldg(bias + e);
    choice[e] = nan_to_neg_inf(sc);
  }
  __syncwarp();

  // 2. Group-limited routing: a bitmask of eligible groups.
  unsigned eligible = kFull;
  int group_size = E;
  if (p.num_groups > 1) {
    group_size = E / p.num_groups;
    float gscore = -INFINITY;
    if (lane < p.num_groups) {
      const float* g = choice + lane * group_size;
      if (bias != nullptr) {  // sum of the two largest
        float a = -INFINITY, b = -INFINITY;
        for (int i = 0; i < group_size; ++i) {
          const float v = g[i];
          if (v > a) {
            b = a;
            a = v;
          } else if (v > b) {
            b = v;
          }
        }
        gscore = group_size > 1 ? a + b : a;
      } else {
        for (int i = 0; i < group_size; ++i) gscore = fmaxf(gscore, g[i]);
      }
    }
    eligible = 0;
    for (int r = 0; r < p.topk_groups; ++r) {
      float v = (lane < p.num_groups && !((eligible >> lane) & 1u)) ? gscore : -INFINITY;
      int id = (lane < p.num_groups && !((eligible >> lane) & 1u)) ? lane : INT_MAX;
      warp_argmax(v, id);
      eligible |= 1u << id;
    }
  }

  // 3. top_k rounds of arg-max; a taken expert becomes NaN (never selected again).
  int my_id = 0;
  for (int r = 0; r < p.top_k; ++r) {
    float bv = -INFINITY;
    int bid = INT_MAX;
    for (int e = lane; e < E; e += 32) {
      const float v = choice[e];
      if (isnan(v) || !((eligible >> (e / group_size)) & 1u)) continue;
      if (beats(v, e, bv, bid)) {
        bv = v;
        bid = e;
      }
    }
    warp_argmax(bv, bid);
    if (lane == r) my_id = bid;
    if (lane == 0) choice[bid] = NAN;
    __syncwarp();
  }

  // 4. Weights from the unbiased scores, recomputed from the logit (cheap: top_k loads).
  float w = 0.0f;
  if (lane < p.top_k) {
    const float l = nan_to_neg_inf(load_logit(row + my_id));
    w = softmax ? expf(l - row_max) * inv_sum : 1.0f / (1.0f + expf(-l));
  }
  if (p.renormalize) {
    // Sum in the order j = 0, 1, ... (as the CPU reference does) via a shuffle broadcast.
    float s = 0.0f;
    for (int j = 0; j < p.top_k; ++j) s += __shfl_sync(kFull, w, j);
    w = s > 0.0f ? w / s : w;
  }
  if (lane < p.top_k) {
    topk_ids[t * p.top_k + lane] = my_id;
    topk_weights[t * p.top_k + lane] = w * p.scaling_factor;
  }
}

}  // namespace

void router_topk(const void* logits, LogitsDtype dtype, int64_t num_tokens, const RouterParams& p,
                 const float* correction_bias, int32_t* topk_ids, float* topk_weights,
                 cudaStream_t stream) {
  MOEBAL_CHECK_ARG(num_tokens >= 0, "router_topk: num_tokens must be >= 0, got ", num_tokens);
  MOEBAL_CHECK_ARG(p.num_experts >= 1 && p.num_experts <= kRouterMaxExperts,
                   "router_topk: num_experts must be in [1, ", kRouterMaxExperts, "], got ", p.num_experts);
  MOEBAL_CHECK_ARG(p.top_k >= 1 && p.top_k <= p.num_experts && p.top_k <= kRouterMaxTopK,
                   "router_topk: top_k must be in [1, min(num_experts, ", kRouterMaxTopK, ")], got ",
                   p.top_k);
  MOEBAL_CHECK_ARG(p.scoring == RouterScoring::kSoftmax || p.scoring == RouterScoring::kSigmoid,
                   "router_topk: unknown scoring ", static_cast<int>(p.scoring));
  MOEBAL_CHECK_ARG(dtype == LogitsDtype::kFloat32 || dtype == LogitsDtype::kBFloat16,
                   "router_topk: unknown logits dtype ", static_cast<int>(dtype));
  MOEBAL_CHECK_ARG(p.num_groups >= 1 && p.num_groups <= 32 && p.num_experts % p.num_groups == 0,
                   "router_topk: num_groups must be in [1, 32] and divide num_experts (",
                   p.num_experts, "), got ", p.num_groups);
  if (p.num_groups > 1) {
    MOEBAL_CHECK_ARG(p.topk_groups >= 1 && p.topk_groups <= p.num_groups,
                     "router_topk: topk_groups must be in [1, num_groups=", p.num_groups, "], got ",
                     p.topk_groups);
    MOEBAL_CHECK_ARG(static_cast<int64_t>(p.topk_groups) * (p.num_experts / p.num_groups) >= p.top_k,
                     "router_topk: topk_groups * group size (", p.topk_groups, " * ",
                     p.num_experts / p.num_groups, ") must be >= top_k (", p.top_k, ")");
  }
  if (num_tokens == 0) return;
  MOEBAL_CHECK_ARG(logits != nullptr && topk_ids != nullptr && topk_weights != nullptr,
                   "router_topk: null device pointer");
  const int64_t blocks = (num_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
  MOEBAL_CHECK_ARG(blocks <= INT_MAX, "router_topk: too many tokens: ", num_tokens);
  const size_t smem = sizeof(float) * kWarpsPerBlock * p.num_experts;
  if (dtype == LogitsDtype::kFloat32) {
    router_topk_kernel<float><<<static_cast<int>(blocks), kWarpsPerBlock * 32, smem, stream>>>(
        static_cast<const float*>(logits), num_tokens, p, correction_bias, topk_ids, topk_weights);
  } else {
    router_topk_kernel<__nv_bfloat16><<<static_cast<int>(blocks), kWarpsPerBlock * 32, smem, stream>>>(
        static_cast<const __nv_bfloat16*>(logits), num_tokens, p, correction_bias, topk_ids,
        topk_weights);
  }
  MOEBAL_CHECK_LAUNCH();
}

}  // namespace moebal::cuda
