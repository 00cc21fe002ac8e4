// Router top-k: one warp per token, the token's scores in registers; optional group-limited
// routing; top_k rounds of a warp arg-max whose order (larger value, then lower id) makes the
// selection deterministic.
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

// Order-preserving map of a float to an unsigned key (larger float -> larger key); -0 and +0
// are made equal first so that they tie as they do in float comparison.
__device__ __forceinline__ unsigned ordered_key(float v) {
  const unsigned u = __float_as_uint(v + 0.0f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// One warp per token. Lane l holds experts l, l + 32, ..., so loads are coalesced and every value
// lives in registers (kPerLane of them, indexed only with compile-time constants). A round of the
// top-k is: each lane's cached best, a warp max of the ordered keys and a warp min of the ids that
// reach it (two redux.sync instructions), and a rescan in the winning lane alone.
template <int kPerLane, bool kBias, class T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    router_topk_kernel(const T* __restrict__ logits, int64_t num_tokens, RouterParams p,
                       const float* __restrict__ bias, int32_t* __restrict__ topk_ids,
                       float* __restrict__ topk_weights) {
  extern __shared__ float smem[];  // [warps][E] staging for group scores (num_groups > 1 only)
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (t >= num_tokens) return;  // whole warps exit together
  const int E = p.num_experts;
  const T* row = logits + t * E;

  // 1. Logits -> scores s (kept only with a bias) and choice values c.
  float c[kPerLane];
  float s[kBias ? kPerLane : 1];
  unsigned long long alive = 0;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + 32 * i;
    c[i] = e < E ? nan_to_neg_inf(load_logit(row + e)) : -INFINITY;
    if (e < E) alive |= 1ull << i;
  }
  const bool softmax = p.scoring == RouterScoring::kSoftmax;
  if (softmax) {
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) mx = fmaxf(mx, c[i]);
    mx = warp_max(mx);
    if (mx == -INFINITY) mx = 0.0f;  // all -inf: every score is 0
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      c[i] = expf(c[i] - mx);  // 0 for the padding lanes (-inf)
      sum += c[i];
    }
    sum = warp_sum(sum);
    const float inv_sum = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) c[i] *= inv_sum;
  } else {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) c[i] = 1.0f / (1.0f + expf(-c[i]));
  }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    if constexpr (kBias) {
      const int e = lane + 32 * i;
      s[i] = c[i];
      c[i] = nan_to_neg_inf(c[i] + (e < E ? __ldg(bias + e) : 0.0f));
    } else {
      c[i] = nan_to_neg_inf(c[i]);
    }
  }

  // 2. Group-limited routing: stage c in shared memory, one lane per group scores its group,
  // the best topk_groups groups stay alive.
  if (p.num_groups > 1) {
    float* stage = smem + warp * E;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (lane + 32 * i < E) stage[lane + 32 * i] = c[i];
    __syncwarp();
    const int group_size = E / p.num_groups;
    float gscore = -INFINITY;
    if (lane < p.num_groups) {
      const float* g = stage + lane * group_size;
      if (kBias) {  // sum of the two largest (DeepSeek-V3)
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
    unsigned eligible = 0;
    for (int r = 0; r < p.topk_groups; ++r) {
      const bool open = lane < p.num_groups && !((eligible >> lane) & 1u);
      float v = open ? gscore : -INFINITY;
      int id = open ? lane : INT_MAX;
      warp_argmax(v, id);
      eligible |= 1u << id;
    }
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int e = lane + 32 * i;
      if (e < E && !((eligible >> (e / group_size)) & 1u)) alive &= ~(1ull << i);
    }
  }

  // 3. top_k rounds.
  float best_v = -INFINITY;
  int best_i = -1;
  auto rescan = [&] {
    best_v = -INFINITY;
    best_i = -1;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)
      if (((alive >> i) & 1ull) && (best_i < 0 || c[i] > best_v)) {
        best_v = c[i];
        best_i = i;
      }
  };
  rescan();
  int my_id = 0;
  float my_w = 0.0f, wsum = 0.0f;
  for (int r = 0; r < p.top_k; ++r) {
    const unsigned key = best_i >= 0 ? ordered_key(best_v) : 0u;
    const unsigned top = __reduce_max_sync(kFull, key);
    const unsigned cand = (best_i >= 0 && key == top) ? static_cast<unsigned>(lane + 32 * best_i) : 0xffffffffu;
    const unsigned id = __reduce_min_sync(kFull, cand);
    const bool won = static_cast<unsigned>(lane) == (id & 31u);
    float w = 0.0f;
    if (won) {
#pragma unroll
      for (int i = 0; i < kPerLane; ++i)
        if (i == best_i) {
          if constexpr (kBias) {
            w = s[i];
          } else {
            w = c[i];
          }
        }
      alive &= ~(1ull << best_i);
      rescan();
    }
    w = __shfl_sync(kFull, w, static_cast<int>(id & 31u));
    wsum += w;  // in round order j = 0, 1, ..., as the CPU reference sums
    if (lane == r) {
      my_id = static_cast<int>(id);
      my_w = w;
    }
  }

  // 4. Weights.
  if (p.renormalize && wsum > 0.0f) my_w /= wsum;
  if (lane < p.top_k) {
    topk_ids[t * p.top_k + lane] = my_id;
    topk_weights[t * p.top_k + lane] = my_w * p.scaling_factor;
  }
}

template <int kPerLane, class T>
void launch_router(const T* logits, int64_t num_tokens, const RouterParams& p, const float* bias,
                   int32_t* ids, float* weights, cudaStream_t stream) {
  const int64_t blocks = (num_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const size_t smem = p.num_groups > 1 ? sizeof(float) * kWarpsPerBlock * p.num_experts : 0;
  if (bias != nullptr) {
    router_topk_kernel<kPerLane, true, T><<<static_cast<int>(blocks), kWarpsPerBlock * 32, smem, stream>>>(
        logits, num_tokens, p, bias, ids, weights);
  } else {
    router_topk_kernel<kPerLane, false, T><<<static_cast<int>(blocks), kWarpsPerBlock * 32, smem, stream>>>(
        logits, num_tokens, p, bias, ids, weights);
  }
}

template <class T>
void dispatch_router(const T* logits, int64_t num_tokens, const RouterParams& p, const float* bias,
                     int32_t* ids, float* weights, cudaStream_t stream) {
  const int per_lane = (p.num_experts + 31) / 32;
  if (per_lane <= 1) return launch_router<1>(logits, num_tokens, p, bias, ids, weights, stream);
  if (per_lane <= 2) return launch_router<2>(logits, num_tokens, p, bias, ids, weights, stream);
  if (per_lane <= 4) return launch_router<4>(logits, num_tokens, p, bias, ids, weights, stream);
  if (per_lane <= 8) return launch_router<8>(logits, num_tokens, p, bias, ids, weights, stream);
  if (per_lane <= 16) return launch_router<16>(logits, num_tokens, p, bias, ids, weights, stream);
  if (per_lane <= 32) return launch_router<32>(logits, num_tokens, p, bias, ids, weights, stream);
  return launch_router<64>(logits, num_tokens, p, bias, ids, weights, stream);
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
  MOEBAL_CHECK_ARG((num_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock <= INT_MAX,
                   "router_topk: too many tokens: ", num_tokens);
  if (dtype == LogitsDtype::kFloat32) {
    dispatch_router(static_cast<const float*>(logits), num_tokens, p, correction_bias, topk_ids, topk_weights,
                    stream);
  } else {
    dispatch_router(static_cast<const __nv_bfloat16*>(logits), num_tokens, p, correction_bias, topk_ids,
                    topk_weights, stream);
  }
  MOEBAL_CHECK_LAUNCH();
}

}  // namespace moebal::cuda
