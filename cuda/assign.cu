// Replica assignment kernels. The ranked policies (all except hash) need, for every entry, its rank
// among earlier entries of its class in flat token order. Two pipelines compute it:
//  - count (classes <= kMaxCountClasses, the usual case): B blocks each own a contiguous chunk.
//      count: key[i] = class (or the sentinel for padding / invalid input); per-block class
//             histogram in shared memory -> counts[b][c]
//      scan:  counts[b][c] -> exclusive prefix over blocks b (entries of class c before chunk b)
//      rank:  each block walks its chunk in order, tile by tile, warp by warp (match_any gives the
//             rank among equal keys inside a warp; a shared counter per class carries it on), and
//             picks the slot with core::assign_detail::choose_slot.
//  - sort (many classes): classify, stable CUB radix sort of (key, i), mark each class's first
//    position, rank = position - first.
// Both equal the CPU reference's per-class counters. Hash needs no rank: one elementwise kernel.
#include <cub/device/device_radix_sort.cuh>

#include "moebal/cuda/assign.h"
#include "moebal/cuda/check.h"

namespace moebal::cuda {
namespace {

using core::AssignPolicy;
using core::ReplicaTable;
namespace rules = core::assign_detail;

constexpr int kThreads = 256;
constexpr int kCountWarps = kThreads / 32;
// The count pipeline's histograms grow with classes x blocks; on the H200 it beats the sort at 256
// classes (24.8 vs 33.8 us for 8192 x top-8) and loses at 8-9K classes (45.8 vs 36.9 us), so
// it serves up to 2048 classes (always within 48 KiB of shared counters).
constexpr uint32_t kMaxCountClasses = 2048;
constexpr int64_t kCountChunk = 1024;        // entries per block of the count pipeline
constexpr int kMaxCountBlocks = 128;

__host__ __device__ inline size_t align_up(size_t v) { return (v + 255) & ~static_cast<size_t>(255); }

__device__ __forceinline__ bool entry_valid(const ReplicaTable& t, int32_t e, int32_t g) {
  return e >= 0 && e < t.num_experts && g >= 0 && g < t.num_gpus;
}

__device__ __forceinline__ int32_t checked_slot(const ReplicaTable& t, int32_t s) {
  return s >= 0 && s < t.num_slots ? s : -1;
}

__global__ void classify_kernel(const int32_t* __restrict__ ids, const int32_t* __restrict__ src, int64_t n,
                                int32_t top_k, ReplicaTable t, AssignPolicy policy, uint32_t sentinel,
                                uint32_t* __restrict__ keys, int32_t* __restrict__ vals) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t e = ids[i], g = src[i / top_k];
    uint32_t key = sentinel;
    if (entry_valid(t, e, g) && rules::copies(t, e) > 0) {
      const rules::Tier tr = rules::uses_tier(policy) ? rules::locality_tier(t, e, g) : rules::Tier{0, 0, 0};
      key = static_cast<uint32_t>(rules::class_of(policy, t, e, g, tr));
    }
    keys[i] = key;
    vals[i] = static_cast<int32_t>(i);
  }
}

__global__ void heads_kernel(const uint32_t* __restrict__ keys, int64_t n, uint32_t sentinel, int32_t* __restrict__ start) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < n;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t k = keys[p];
    if (k != sentinel && (p == 0 || keys[p - 1] != k)) start[k] = static_cast<int32_t>(p);
  }
}

__global__ void choose_kernel(const int32_t* __restrict__ ids, const int32_t* __restrict__ src, int64_t n,
                              int32_t top_k, ReplicaTable t, AssignPolicy policy, uint32_t sentinel,
                              const uint32_t* __restrict__ keys, const int32_t* __restrict__ vals,
                              const int32_t* __restrict__ start, const int32_t* __restrict__ quota,
                              const int32_t* __restrict__ w, int32_t* __restrict__ out) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < n;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t k = keys[p];
    const int32_t i = vals[p];
    if (k == sentinel) {
      out[i] = -1;
      continue;
    }
    const int64_t token = i / top_k;
    const int32_t e = ids[i], g = src[token];
    const rules::Tier tr = rules::uses_tier(policy) ? rules::locality_tier(t, e, g) : rules::Tier{0, 0, 0};
    out[i] = checked_slot(t, rules::choose_slot(policy, t, e, g, token, p - start[k], quota, w, tr));
  }
}

__global__ void hash_kernel(const int32_t* __restrict__ ids, const int32_t* __restrict__ src, int64_t n,
                            int32_t top_k, ReplicaTable t, int32_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t e = ids[i];
    const int64_t token = i / top_k;
    const int32_t g = src[token];
    out[i] = entry_valid(t, e, g) ? checked_slot(t, rules::choose_slot(AssignPolicy::kHash, t, e, g, token, 0, nullptr, nullptr,
                                                                          rules::Tier{0, 0, 0}))
                                  : -1;
  }
}

__device__ __forceinline__ uint32_t class_key(const int32_t* ids, const int32_t* src, int64_t i, int32_t top_k,
                                              const ReplicaTable& t, AssignPolicy policy, uint32_t sentinel) {
  const int32_t e = ids[i], g = src[i / top_k];
  if (!entry_valid(t, e, g) || rules::copies(t, e) <= 0) return sentinel;
  const rules::Tier tr = rules::uses_tier(policy) ? rules::locality_tier(t, e, g) : rules::Tier{0, 0, 0};
  return static_cast<uint32_t>(rules::class_of(policy, t, e, g, tr));
}

__global__ void count_kernel(const int32_t* __restrict__ ids, const int32_t* __restrict__ src, int64_t n,
                             int32_t top_k, ReplicaTable t, AssignPolicy policy, uint32_t sentinel, int64_t chunk,
                             uint32_t* __restrict__ keys, int32_t* __restrict__ counts) {
  extern __shared__ int32_t hist[];
  for (uint32_t c = threadIdx.x; c < sentinel; c += blockDim.x) hist[c] = 0;
  __syncthreads();
  const int64_t begin = blockIdx.x * chunk, end = begin + chunk < n ? begin + chunk : n;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const uint32_t key = class_key(ids, src, i, top_k, t, policy, sentinel);
    keys[i] = key;
    if (key != sentinel) atomicAdd(&hist[key], 1);
  }
  __syncthreads();
  int32_t* row = counts + static_cast<int64_t>(blockIdx.x) * sentinel;
  for (uint32_t c = threadIdx.x; c < sentinel; c += blockDim.x) row[c] = hist[c];
}

// counts[b][c] -> sum of counts[b'][c] over b' < b.
__global__ void scan_blocks_kernel(int32_t* __restrict__ counts, uint32_t num_classes, int num_blocks) {
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= num_classes) return;
  int32_t run = 0;
  for (int b0 = 0; b0 < num_blocks; b0 += 8) {  // eight independent loads in flight
    int32_t v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j)
      v[j] = b0 + j < num_blocks ? counts[static_cast<int64_t>(b0 + j) * num_classes + c] : 0;
#pragma unroll
    for (int j = 0; j < 8; ++j)
      if (b0 + j < num_blocks) {
        counts[static_cast<int64_t>(b0 + j) * num_classes + c] = run;
        run += v[j];
      }
  }
}

__global__ void rank_choose_kernel(const int32_t* __restrict__ ids, const int32_t* __restrict__ src, int64_t n,
                                   int32_t top_k, ReplicaTable t, AssignPolicy policy, uint32_t sentinel,
                                   int64_t chunk, const uint32_t* __restrict__ keys,
                                   const int32_t* __restrict__ counts, const int32_t* __restrict__ quota,
                                   const int32_t* __restrict__ w, int32_t* __restrict__ out) {
  extern __shared__ int32_t next[];  // next rank of each class in this chunk
  const int32_t* row = counts + static_cast<int64_t>(blockIdx.x) * sentinel;
  for (uint32_t c = threadIdx.x; c < sentinel; c += blockDim.x) next[c] = row[c];
  __syncthreads();
  const int64_t begin = blockIdx.x * chunk, end = begin + chunk < n ? begin + chunk : n;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t tile = begin; tile < end; tile += blockDim.x) {
    const int64_t i = tile + threadIdx.x;
    const bool valid = i < end;
    const uint32_t key = valid ? keys[i] : sentinel;
    const unsigned same = __match_any_sync(0xffffffffu, key);
    const int before = __popc(same & ((1u << lane) - 1u));
    int64_t rank = 0;
    // Warps of a tile take their ranks in order, so ranks follow flat token order.
    for (int wv = 0; wv < kCountWarps; ++wv) {
      if (warp == wv && key != sentinel) {
        const int32_t base = next[key];
        __syncwarp(same);
        if (before == 0) next[key] = base + __popc(same);
        rank = base + before;
      }
      __syncthreads();
    }
    if (!valid) continue;
    if (key == sentinel) {
      out[i] = -1;
      continue;
    }
    const int64_t token = i / top_k;
    const int32_t e = ids[i], g = src[token];
    const rules::Tier tr = rules::uses_tier(policy) ? rules::locality_tier(t, e, g) : rules::Tier{0, 0, 0};
    out[i] = checked_slot(t, rules::choose_slot(policy, t, e, g, token, rank, quota, w, tr));
  }
}

int end_bit_for(uint32_t sentinel) {
  int b = 1;
  while (b < 32 && (sentinel >> b) != 0) ++b;
  return b;
}

size_t sort_temp_bytes(int64_t n, uint32_t sentinel) {
  size_t bytes = 0;
  MOEBAL_CHECK_CUDA(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const uint32_t*>(nullptr),
                                                    static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                                    static_cast<int32_t*>(nullptr), static_cast<int>(n), 0,
                                                    end_bit_for(sentinel), static_cast<cudaStream_t>(nullptr)));
  return bytes;
}

int grid_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 4096 ? (b < 1 ? 1 : b) : 4096);
}

void check_args(int64_t num_tokens, int32_t top_k, int32_t E, int32_t G, int32_t N) {
  MOEBAL_CHECK_ARG(num_tokens >= 0, "assign_replicas: num_tokens must be >= 0, got ", num_tokens);
  MOEBAL_CHECK_ARG(top_k >= 1, "assign_replicas: top_k must be >= 1, got ", top_k);
  MOEBAL_CHECK_ARG(num_tokens * top_k < (int64_t{1} << 31), "assign_replicas: num_tokens * top_k = ",
                   num_tokens * top_k, " exceeds 2^31 - 1");
  MOEBAL_CHECK_ARG(E > 0 && G > 0 && N > 0 && G % N == 0, "assign_replicas: bad layout: ", E, " experts, ", G,
                   " GPUs, ", N, " nodes");
  MOEBAL_CHECK_ARG(core::assign_num_classes(core::AssignPolicy::kLocality, E, G, N) < (int64_t{1} << 30) &&
                       static_cast<int64_t>(G) * E < (int64_t{1} << 30),
                   "assign_replicas: too many rank classes");
}

int count_blocks(int64_t n) {
  const int64_t b = (n + kCountChunk - 1) / kCountChunk;
  return static_cast<int>(b < 1 ? 1 : (b > kMaxCountBlocks ? kMaxCountBlocks : b));
}

}  // namespace

size_t assign_replicas_workspace_bytes(int64_t num_tokens, int32_t top_k, int32_t E, int32_t G, int32_t N,
                                       AssignPolicy policy) {
  check_args(num_tokens, top_k, E, G, N);
  if (policy == AssignPolicy::kHash || num_tokens == 0) return 0;
  const int64_t n = num_tokens * top_k;
  const uint32_t sentinel = static_cast<uint32_t>(core::assign_num_classes(policy, E, G, N));
  if (sentinel <= kMaxCountClasses)
    return align_up(sizeof(int32_t) * n) + align_up(sizeof(int32_t) * sentinel * count_blocks(n));
  return 4 * align_up(sizeof(int32_t) * n) + align_up(sizeof(int32_t) * (sentinel + 1)) +
         align_up(sort_temp_bytes(n, sentinel));
}

void assign_replicas(const int32_t* ids, const int32_t* src, int64_t num_tokens, int32_t top_k,
                     const ReplicaTable& t, AssignPolicy policy, const int32_t* quota, const int32_t* w,
                     int32_t* out, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  check_args(num_tokens, top_k, t.num_experts, t.num_gpus, t.num_nodes);
  MOEBAL_CHECK_ARG(t.num_slots > 0 && t.num_slots % t.num_gpus == 0 && t.max_copies >= 1,
                   "assign_replicas: bad table: ", t.num_slots, " slots on ", t.num_gpus, " GPUs, max_copies ",
                   t.max_copies);
  MOEBAL_CHECK_ARG(policy != AssignPolicy::kQuota || quota != nullptr, "assign_replicas: policy 'quota' needs a quota matrix");
  if (num_tokens == 0) return;
  MOEBAL_CHECK_ARG(ids && src && out && t.log2phy && t.logcnt, "assign_replicas: null device pointer");
  const int64_t n = num_tokens * top_k;
  const int grid = grid_for(n);
  if (policy == AssignPolicy::kHash) {
    hash_kernel<<<grid, kThreads, 0, stream>>>(ids, src, n, top_k, t, out);
    MOEBAL_CHECK_LAUNCH();
    return;
  }
  const uint32_t sentinel = static_cast<uint32_t>(core::assign_num_classes(policy, t.num_experts, t.num_gpus, t.num_nodes));
  const size_t need = assign_replicas_workspace_bytes(num_tokens, top_k, t.num_experts, t.num_gpus, t.num_nodes, policy);
  MOEBAL_CHECK_ARG(workspace != nullptr && workspace_bytes >= need, "assign_replicas: workspace of ", workspace_bytes,
                   " bytes is smaller than the ", need, " needed");
  char* ws = static_cast<char*>(workspace);
  auto take = [&](size_t bytes) {
    char* p = ws;
    ws += align_up(bytes);
    return p;
  };
  if (sentinel <= kMaxCountClasses) {
    const int blocks = count_blocks(n);
    const int64_t chunk = (n + blocks - 1) / blocks;
    auto* keys = reinterpret_cast<uint32_t*>(take(sizeof(int32_t) * n));
    auto* counts = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * sentinel * blocks));
    const size_t smem = sizeof(int32_t) * sentinel;
    count_kernel<<<blocks, kThreads, smem, stream>>>(ids, src, n, top_k, t, policy, sentinel, chunk, keys, counts);
    MOEBAL_CHECK_LAUNCH();
    scan_blocks_kernel<<<static_cast<int>((sentinel + kThreads - 1) / kThreads), kThreads, 0, stream>>>(counts, sentinel,
                                                                                                      blocks);
    MOEBAL_CHECK_LAUNCH();
    rank_choose_kernel<<<blocks, kThreads, smem, stream>>>(ids, src, n, top_k, t, policy, sentinel, chunk, keys, counts,
                                                           quota, w, out);
    MOEBAL_CHECK_LAUNCH();
    return;
  }
  auto* keys_in = reinterpret_cast<uint32_t*>(take(sizeof(int32_t) * n));
  auto* keys_out = reinterpret_cast<uint32_t*>(take(sizeof(int32_t) * n));
  auto* vals_in = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * n));
  auto* vals_out = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * n));
  auto* start = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * (sentinel + 1)));
  size_t temp_bytes = sort_temp_bytes(n, sentinel);
  void* temp = take(temp_bytes);

  classify_kernel<<<grid, kThreads, 0, stream>>>(ids, src, n, top_k, t, policy, sentinel, keys_in, vals_in);
  MOEBAL_CHECK_LAUNCH();
  MOEBAL_CHECK_CUDA(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, vals_in, vals_out,
                                                    static_cast<int>(n), 0, end_bit_for(sentinel), stream));
  heads_kernel<<<grid, kThreads, 0, stream>>>(keys_out, n, sentinel, start);
  MOEBAL_CHECK_LAUNCH();
  choose_kernel<<<grid, kThreads, 0, stream>>>(ids, src, n, top_k, t, policy, sentinel, keys_out, vals_out, start,
                                               quota, w, out);
  MOEBAL_CHECK_LAUNCH();
}

}  // namespace moebal::cuda
