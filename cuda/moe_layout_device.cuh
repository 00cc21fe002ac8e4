// Device helpers shared by the dispatch layout (moe_dispatch.cu) and the fused router + layout
// kernels (moe_route_layout.cu), so both place a pair in the same bin and scan the same way.
// Internal to moebal_cuda: not installed, not part of the public API.
#pragma once

#include <cstdint>

#include "moebal/cuda/moe_routing.h"

namespace moebal::cuda::detail {

/// The bin of a (token, expert) pair: the slot of copy (token mod logcnt[e]) of expert e through
/// the placement tables (slot e without tables), or num_slots (the dropped bin) for an expert
/// outside [0, num_experts), a copy count outside [1, max_copies], or a slot outside [0, num_slots).
/// token() is called only when the placement has tables (callers that derive the token from a pair
/// index pay the division only then).
template <class TokenFn>
__device__ __forceinline__ int replica_bin(const PlacementView& placement, int32_t num_experts,
                                           int32_t num_slots, int32_t e, TokenFn token) {
  if (e < 0 || e >= num_experts) return num_slots;
  int32_t slot = e;
  if (placement.log2phy != nullptr) {
    const int32_t cnt = __ldg(placement.logcnt + e);
    if (cnt <= 0 || cnt > placement.max_copies) return num_slots;
    slot = __ldg(placement.log2phy + static_cast<int64_t>(e) * placement.max_copies + token() % cnt);
  }
  return (slot < 0 || slot >= num_slots) ? num_slots : slot;
}

/// Bin s of per-warp counts hist [warps][bins]: replaces each warp's count by the rows of bin s
/// that the warps before it hold (an exclusive scan over warps) and returns the bin's total.
__device__ __forceinline__ int scan_bin_over_warps(int* hist, int bins, int warps, int s) {
  int run = 0;
  for (int w = 0; w < warps; ++w) {
    const int c = hist[w * bins + s];
    hist[w * bins + s] = run;
    run += c;
  }
  return run;
}

/// Exclusive scan of one int per thread over the block (blockDim.x a multiple of 32, <= 1024);
/// returns the thread's prefix and sets *total. scratch: >= 32 ints of shared memory, free again
/// when the call returns.
__device__ inline int block_exclusive_scan(int v, int* scratch, int* total) {
  constexpr unsigned kFull = 0xffffffffu;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  int incl = v;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int o = __shfl_up_sync(kFull, incl, off);
    if (lane >= off) incl += o;
  }
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int w = lane < warps ? scratch[lane] : 0;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int o = __shfl_up_sync(kFull, w, off);
      if (lane >= off) w += o;
    }
    if (lane < warps) scratch[lane] = w;  // inclusive warp totals
  }
  __syncthreads();
  const int before = warp > 0 ? scratch[warp - 1] : 0;
  *total = scratch[warps - 1];
  __syncthreads();  // scratch is reused by the next call
  return before + incl - v;
}

}  // namespace moebal::cuda::detail
