// Replica-aware dispatch layout: a stable counting sort of the (token, k) pairs by physical slot,
// entirely on the device.
//
// The pairs are cut into chunks (one per block) and each chunk into one contiguous piece per warp.
// A warp walks its piece 32 pairs at a time; __match_any_sync groups the lanes that hit the same
// slot, so the rank of a lane among equal slots is a popcount and one leader per slot updates the
// warp's shared histogram (no atomics, order preserved). Small problems do everything in one
// block (one launch); large ones count per chunk, scan the chunk counts, then scatter.
#include <algorithm>
#include <climits>

#include "moe_layout_device.cuh"
#include "moebal/cuda/check.h"
#include "moebal/cuda/moe_routing.h"

namespace moebal::cuda {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kMaxSharedInts = 11 * 1024;  // 44 KiB of warp histograms per block (< 48 KiB)
constexpr int kSingleMaxWarps = 32;
constexpr int kMultiWarps = 8;
constexpr int64_t kSingleMaxPairs = 4096;
constexpr int64_t kChunkPairs = 2048;  // per block in the multi-block path
constexpr int kScanThreads = 1024;

enum class Mode { kSingle, kCount, kScatter };

struct LayoutArgs {
  const int32_t* topk_ids;
  int64_t num_pairs;
  int32_t top_k;
  int32_t num_experts;
  int32_t num_slots;  // bins = num_slots + 1; bin num_slots holds dropped pairs
  PlacementView placement;
  int64_t chunk;  // pairs per block
  int32_t* slot_ids;
  int32_t* offsets;
  int32_t* row_index;
  int32_t* sorted_token;
  int32_t* chunk_counts;  // [num_blocks, bins] (multi-block path)
};

__device__ __forceinline__ int bin_of(const LayoutArgs& a, int64_t pair) {
  return detail::replica_bin(a.placement, a.num_experts, a.num_slots, __ldg(a.topk_ids + pair),
                             [&] { return pair / a.top_k; });
}

using detail::block_exclusive_scan;

// kCache > 0: every warp's piece is at most 32 * kCache pairs; their bins are computed once, with
// all loads issued up front, and kept in registers for both passes.
template <Mode kMode, int kCache>
__global__ void layout_chunk_kernel(LayoutArgs a) {
  extern __shared__ int hist[];  // [warps][bins]
  __shared__ int scratch[32];
  const int bins = a.num_slots + 1;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  int* my_hist = hist + warp * bins;
  for (int i = threadIdx.x; i < warps * bins; i += blockDim.x) hist[i] = 0;
  __syncthreads();

  const int64_t chunk_begin = static_cast<int64_t>(blockIdx.x) * a.chunk;
  const int64_t chunk_end = min(a.num_pairs, chunk_begin + a.chunk);
  const int64_t piece = (a.chunk + warps - 1) / warps;
  const int64_t begin = min(chunk_end, chunk_begin + warp * piece);
  const int64_t end = min(chunk_end, begin + piece);
  const unsigned lt_mask = (1u << lane) - 1u;

  int cached[kCache > 0 ? kCache : 1];
  if constexpr (kCache > 0) {
#pragma unroll
    for (int it = 0; it < kCache; ++it) {
      const int64_t pair = begin + it * 32 + lane;
      cached[it] = pair < end ? bin_of(a, pair) : -1;
    }
  }
  auto count_step = [&](int bin) {
    const unsigned peers = __match_any_sync(kFull, bin);
    if (bin >= 0 && (peers & lt_mask) == 0) my_hist[bin] += __popc(peers);
    __syncwarp();
  };

  // Pass 1: per-warp counts.
  if constexpr (kCache > 0) {
#pragma unroll
    for (int it = 0; it < kCache; ++it) count_step(cached[it]);
  } else {
    for (int64_t base = begin; base < end; base += 32) {
      const int64_t pair = base + lane;
      count_step(pair < end ? bin_of(a, pair) : -1);
    }
  }
  __syncthreads();

  // Turn counts into each warp's first row per bin.
  if constexpr (kMode == Mode::kSingle) {
    int carry = 0;
    for (int tile = 0; tile < bins; tile += blockDim.x) {
      const int s = tile + threadIdx.x;
      const int run = s < bins ? detail::scan_bin_over_warps(hist, bins, warps, s) : 0;
      int total;
      const int start = carry + block_exclusive_scan(run, scratch, &total);
      if (s < bins) {
        for (int w = 0; w < warps; ++w) hist[w * bins + s] += start;
        a.offsets[s] = start;  // offsets[num_slots] = start of the dropped rows = valid rows
      }
      carry += total;
    }
  } else {
    for (int s = threadIdx.x; s < bins; s += blockDim.x) {
      const int run = detail::scan_bin_over_warps(hist, bins, warps, s);
      if constexpr (kMode == Mode::kCount) {
        a.chunk_counts[static_cast<int64_t>(blockIdx.x) * bins + s] = run;
      } else {
        const int start = a.chunk_counts[static_cast<int64_t>(blockIdx.x) * bins + s];
        for (int w = 0; w < warps; ++w) hist[w * bins + s] += start;
      }
    }
    if constexpr (kMode == Mode::kCount) return;
  }
  __syncthreads();

  // Pass 2: stable ranks.
  auto rank_step = [&](int64_t pair, int bin) {
    const unsigned peers = __match_any_sync(kFull, bin);
    if (bin >= 0) {
      const int row = my_hist[bin] + __popc(peers & lt_mask);
      a.row_index[pair] = row;
      a.sorted_token[row] = static_cast<int32_t>(pair / a.top_k);
      a.slot_ids[pair] = bin == a.num_slots ? -1 : bin;
    }
    __syncwarp();
    if (bin >= 0 && (peers & lt_mask) == 0) my_hist[bin] += __popc(peers);
    __syncwarp();
  };
  if constexpr (kCache > 0) {
#pragma unroll
    for (int it = 0; it < kCache; ++it) rank_step(begin + it * 32 + lane, cached[it]);
  } else {
    for (int64_t base = begin; base < end; base += 32) {
      const int64_t pair = base + lane;
      rank_step(pair, pair < end ? bin_of(a, pair) : -1);
    }
  }
}

// chunk_counts[b, s] -> absolute first row of chunk b in bin s; offsets[s] = first row of bin s.
__global__ void layout_scan_kernel(int32_t* chunk_counts, int num_chunks, int bins, int32_t* offsets) {
  __shared__ int scratch[32];
  int carry = 0;
  for (int tile = 0; tile < bins; tile += blockDim.x) {
    const int s = tile + threadIdx.x;
    int run = 0;
    if (s < bins)
      for (int b = 0; b < num_chunks; ++b) {
        const int c = chunk_counts[static_cast<int64_t>(b) * bins + s];
        chunk_counts[static_cast<int64_t>(b) * bins + s] = run;
        run += c;
      }
    int total;
    const int start = carry + block_exclusive_scan(run, scratch, &total);
    if (s < bins) {
      for (int b = 0; b < num_chunks; ++b) chunk_counts[static_cast<int64_t>(b) * bins + s] += start;
      offsets[s] = start;
    }
    carry += total;
  }
}

int warps_for(int bins, int max_warps) {
  return std::max(1, std::min(max_warps, kMaxSharedInts / bins));
}

bool single_block(int64_t num_pairs) { return num_pairs <= kSingleMaxPairs; }

int64_t num_chunks(int64_t num_pairs) { return (num_pairs + kChunkPairs - 1) / kChunkPairs; }

}  // namespace

size_t dispatch_layout_workspace_bytes(int64_t num_tokens, int32_t top_k, int32_t num_slots) {
  const int64_t pairs = num_tokens * top_k;
  if (pairs <= 0 || single_block(pairs)) return 0;
  return sizeof(int32_t) * static_cast<size_t>(num_chunks(pairs)) * (static_cast<size_t>(num_slots) + 1);
}

void dispatch_layout(const int32_t* topk_ids, int64_t num_tokens, int32_t top_k, int32_t num_experts,
                     int32_t num_slots, const PlacementView& placement, int32_t* slot_ids,
                     int32_t* offsets, int32_t* row_index, int32_t* sorted_token, void* workspace,
                     size_t workspace_bytes, cudaStream_t stream) {
  MOEBAL_CHECK_ARG(num_tokens >= 0, "dispatch_layout: num_tokens must be >= 0, got ", num_tokens);
  MOEBAL_CHECK_ARG(top_k >= 1, "dispatch_layout: top_k must be >= 1, got ", top_k);
  MOEBAL_CHECK_ARG(num_experts >= 1, "dispatch_layout: num_experts must be >= 1, got ", num_experts);
  MOEBAL_CHECK_ARG(num_slots >= 1 && num_slots < kMaxSharedInts,
                   "dispatch_layout: num_slots must be in [1, ", kMaxSharedInts - 1, "], got ", num_slots);
  MOEBAL_CHECK_ARG(num_tokens * top_k < INT_MAX, "dispatch_layout: num_tokens * top_k (",
                   num_tokens * top_k, ") must fit in int32");
  if (placement.log2phy == nullptr) {
    MOEBAL_CHECK_ARG(num_slots == num_experts, "dispatch_layout: without a placement num_slots (",
                     num_slots, ") must equal num_experts (", num_experts, ")");
  } else {
    MOEBAL_CHECK_ARG(placement.logcnt != nullptr && placement.max_copies >= 1,
                     "dispatch_layout: a placement needs logcnt and max_copies >= 1 (max_copies=",
                     placement.max_copies, ")");
  }
  MOEBAL_CHECK_ARG(offsets != nullptr, "dispatch_layout: offsets is null");
  const int64_t pairs = num_tokens * top_k;
  const int bins = num_slots + 1;
  if (pairs == 0) {
    MOEBAL_CHECK_CUDA(cudaMemsetAsync(offsets, 0, sizeof(int32_t) * bins, stream));
    return;
  }
  MOEBAL_CHECK_ARG(topk_ids && slot_ids && row_index && sorted_token, "dispatch_layout: null device pointer");
  const size_t need = dispatch_layout_workspace_bytes(num_tokens, top_k, num_slots);
  MOEBAL_CHECK_ARG(workspace_bytes >= need && (need == 0 || workspace != nullptr),
                   "dispatch_layout: workspace of ", workspace_bytes, " bytes is too small (need ", need, ")");

  LayoutArgs a{topk_ids, pairs, top_k, num_experts, num_slots, placement, 0,
               slot_ids, offsets, row_index, sorted_token, static_cast<int32_t*>(workspace)};
  if (single_block(pairs)) {
    // About 128 pairs (4 cached steps) per warp, at least 8 warps so that zeroing and scanning
    // the per-slot histograms is spread over 256+ threads.
    const int want = std::max(8, static_cast<int>((pairs + 127) / 128));
    const int warps = std::max(1, std::min(want, warps_for(bins, kSingleMaxWarps)));
    a.chunk = pairs;
    const size_t smem = sizeof(int) * warps * bins;
    if ((pairs + warps - 1) / warps <= 32 * 4) {
      layout_chunk_kernel<Mode::kSingle, 4><<<1, warps * 32, smem, stream>>>(a);
    } else {
      layout_chunk_kernel<Mode::kSingle, 0><<<1, warps * 32, smem, stream>>>(a);
    }
    MOEBAL_CHECK_LAUNCH();
    return;
  }
  const int warps = warps_for(bins, kMultiWarps);
  const int64_t chunks = num_chunks(pairs);
  a.chunk = kChunkPairs;
  const size_t smem = sizeof(int) * warps * bins;
  const bool cache = (kChunkPairs + warps - 1) / warps <= 32 * 8;
  const unsigned grid = static_cast<unsigned>(chunks);
  if (cache) {
    layout_chunk_kernel<Mode::kCount, 8><<<grid, warps * 32, smem, stream>>>(a);
  } else {
    layout_chunk_kernel<Mode::kCount, 0><<<grid, warps * 32, smem, stream>>>(a);
  }
  MOEBAL_CHECK_LAUNCH();
  layout_scan_kernel<<<1, kScanThreads, 0, stream>>>(a.chunk_counts, static_cast<int>(chunks), bins, offsets);
  MOEBAL_CHECK_LAUNCH();
  if (cache) {
    layout_chunk_kernel<Mode::kScatter, 8><<<grid, warps * 32, smem, stream>>>(a);
  } else {
    layout_chunk_kernel<Mode::kScatter, 0><<<grid, warps * 32, smem, stream>>>(a);
  }
  MOEBAL_CHECK_LAUNCH();
}

}  // namespace moebal::cuda
