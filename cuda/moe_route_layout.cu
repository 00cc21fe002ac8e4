// Router top-k and the replica-aware dispatch layout in ONE launch for decode-sized batches.
//
// At decode sizes both steps are a few microseconds of work each, and as two kernels each pays its
// own launch (or CUDA-graph node) plus a round trip of the ids through global memory. Here one
// launch does everything:
//   1. the warps route the tokens with the router's own per-token routine (moe_router_device.cuh,
//      so ids and weights are those of router_topk, bit for bit) and map each pair to its bin
//      (slot, or the drop bin num_slots) right away. One block (kOneBlock) keeps the bins in
//      shared memory; a cluster of blocks (kCluster, sm_90+) spreads the routing over several SMs,
//      writes slot_ids, and after a cluster barrier (release/acquire) its first block reads them
//      back and alone does steps 2-4; a cooperative grid (kGrid) routes 4 tokens per block, as
//      router_topk does, and its block 0 does steps 2-4 after a grid barrier;
//   2. each warp walks a contiguous piece of the pairs 32 at a time; __match_any_sync groups the
//      lanes of equal bins, so a pair's rank among the piece's earlier pairs of its bin is the
//      warp's running count plus a popcount (no atomics, order kept);
//   3. per bin, an exclusive scan of the warps' counts; over bins, an exclusive scan of the totals
//      (the offsets);
//   4. row = bin start + the warp's prefix in that bin + the pair's rank: the stable counting sort
//      dispatch_layout computes.
// Larger problems run router_topk + dispatch_layout (several blocks each).
#include <algorithm>
#include <atomic>
#include <climits>

#include <cooperative_groups.h>

#include "moe_layout_device.cuh"
#include "moe_router_device.cuh"
#include "moebal/cuda/check.h"
#include "moebal/cuda/moe_routing.h"

namespace moebal::cuda {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kRankBits = 13;  // a pair's rank inside its warp's piece (< kRouteLayoutMaxPairs)
static_assert(kRouteLayoutMaxPairs <= (int64_t{1} << kRankBits), "ranks must fit in kRankBits");
static_assert(static_cast<int64_t>(kLayoutMaxSlots + 1) << kRankBits <= INT_MAX, "packed bin/rank must fit");

// Warps per block for a kernel that keeps kPerLane (x2 with a bias) scores per lane in registers:
// 1024 threads leave 64 registers a thread, enough up to 8 per lane (256 experts).
constexpr int max_warps(int per_lane) { return per_lane <= 8 ? 32 : per_lane <= 16 ? 16 : 8; }

int per_lane_of(int32_t num_experts) {
  const int need = (num_experts + 31) / 32;
  int p = 1;
  while (p < need) p <<= 1;
  return p;
}

int warps_for(int64_t num_tokens, int32_t num_experts) {
  return static_cast<int>(std::min<int64_t>(max_warps(per_lane_of(num_experts)), std::max<int64_t>(4, num_tokens)));
}

size_t smem_bytes(int64_t num_tokens, const RouterParams& p, int32_t num_slots, int warps) {
  const size_t bins = static_cast<size_t>(num_slots) + 1;
  const size_t pairs = static_cast<size_t>(num_tokens) * p.top_k;
  size_t ints = static_cast<size_t>(warps) * bins + bins + pairs;
  if (p.num_groups > 1) ints += static_cast<size_t>(warps) * p.num_experts;
  return sizeof(int32_t) * ints;
}

struct FusedArgs {
  const void* logits;
  int32_t num_tokens;
  RouterParams p;
  const float* bias;
  int32_t num_slots;
  PlacementView placement;
  int32_t* topk_ids;
  float* topk_weights;
  int32_t* slot_ids;
  int32_t* offsets;
  int32_t* row_index;
  int32_t* sorted_token;
};

// The bin of pair (token, expert e), exactly as dispatch_layout's bin_of.
__device__ __forceinline__ int bin_of(const FusedArgs& a, int token, int e) {
  return detail::replica_bin(a.placement, a.p.num_experts, a.num_slots, e, [&] { return token; });
}

using detail::block_exclusive_scan;

// Barrier over the thread-block cluster with release/acquire semantics at cluster scope: the
// slot_ids the other blocks stored are visible to the first block after it.
__device__ __forceinline__ void cluster_barrier() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#else
  __trap();  // the host launches clusters only on devices that support them
#endif
}

// Steps 2-4 for one block: packed[i] holds pair i's bin on entry; hist [warps][bins] is zero.
// Writes offsets, row_index and sorted_token. Called by every thread of the block.
__device__ __forceinline__ void layout_block(const FusedArgs& a, int* hist, int* start, int* packed, int* scratch,
                                             int pairs) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int bins = a.num_slots + 1;
  const int K = a.p.top_k;
  // 2. Per-warp counts over contiguous pieces, and each pair's rank inside its piece and bin.
  const int piece = (pairs + warps - 1) / warps;
  const int begin = min(pairs, warp * piece);
  const int end = min(pairs, begin + piece);
  int* my_hist = hist + warp * bins;
  const unsigned lt_mask = (1u << lane) - 1u;
  for (int base = begin; base < end; base += 32) {
    const int pair = base + lane;
    const int bin = pair < end ? packed[pair] : -1;
    const unsigned peers = __match_any_sync(kFull, bin);
    if (bin >= 0) packed[pair] = (bin << kRankBits) | (my_hist[bin] + __popc(peers & lt_mask));
    __syncwarp();
    if (bin >= 0 && (peers & lt_mask) == 0) my_hist[bin] += __popc(peers);
    __syncwarp();
  }
  __syncthreads();

  // 3. hist[w][s] -> rows of bin s before warp w's piece; start[s] -> first row of bin s.
  for (int s = threadIdx.x; s < bins; s += blockDim.x) start[s] = detail::scan_bin_over_warps(hist, bins, warps, s);
  __syncthreads();
  int carry = 0;
  for (int tile = 0; tile < bins; tile += blockDim.x) {  // uniform trip count: every thread scans
    const int s = tile + threadIdx.x;
    int total;
    const int first = carry + block_exclusive_scan(s < bins ? start[s] : 0, scratch, &total);
    if (s < bins) {
      start[s] = first;
      a.offsets[s] = first;  // offsets[num_slots] = first dropped row = number of valid rows
    }
    carry += total;
  }
  __syncthreads();

  // 4. Scatter.
  for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
    const int v = packed[i];
    const int bin = v >> kRankBits;
    const int row = start[bin] + hist[(i / piece) * bins + bin] + (v & ((1 << kRankBits) - 1));
    a.row_index[i] = row;
    a.sorted_token[row] = i / K;
  }
}

// The shared memory of a fused kernel: hist [warps][bins] (zeroed in block 0, which does the
// layout) | start [bins] | packed [pairs] | stage [routing warps][E].
struct FusedSmem {
  int* hist;
  int* start;
  int* packed;
  float* stage;  // this warp's router scratch
};

__device__ __forceinline__ FusedSmem carve_smem(const FusedArgs& a, int* smem) {
  const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int bins = a.num_slots + 1;
  FusedSmem m;
  m.hist = smem;
  m.start = m.hist + warps * bins;
  m.packed = m.start + bins;
  m.stage = reinterpret_cast<float*>(m.packed + a.num_tokens * a.p.top_k) + warp * a.p.num_experts;
  if (blockIdx.x == 0)
    for (int i = threadIdx.x; i < warps * bins; i += blockDim.x) m.hist[i] = 0;
  return m;
}

// Step 1 for one warp: routes tokens first, first + stride, ...; the router outputs and slot_ids
// go to global memory, each pair's bin also to `packed` when it is not null (one block).
template <int kPerLane, bool kBias, class T>
__device__ __forceinline__ void route_tokens(const FusedArgs& a, int first, int stride, float* stage, int* packed) {
  const int lane = threadIdx.x & 31;
  const int K = a.p.top_k, E = a.p.num_experts;
  const T* logits = static_cast<const T*>(a.logits);
  for (int t = first; t < a.num_tokens; t += stride) {
    int id;
    float w;
    detail::route_token_warp<kPerLane, kBias>(logits + static_cast<int64_t>(t) * E, a.p, a.bias, stage, id, w);
    if (lane < K) {
      const int pair = t * K + lane;
      const int bin = bin_of(a, t, id);
      a.topk_ids[pair] = id;
      a.topk_weights[pair] = w;
      a.slot_ids[pair] = bin == a.num_slots ? -1 : bin;
      if (packed != nullptr) packed[pair] = bin;
    }
  }
}

// After a barrier over the blocks that routed: the layout block reads every pair's slot back
// (from L2: written by other SMs) as its bin.
__device__ __forceinline__ void gather_bins(const FusedArgs& a, int* packed) {
  const int pairs = a.num_tokens * a.p.top_k;
  for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
    const int slot = __ldcg(a.slot_ids + i);
    packed[i] = slot < 0 ? a.num_slots : slot;
  }
}

// gridDim.x == 1: one block. gridDim.x > 1: the grid is ONE cluster of gridDim.x blocks.
template <int kPerLane, bool kBias, class T>
__global__ void __launch_bounds__(max_warps(kPerLane) * 32) route_layout_kernel(FusedArgs a) {
  extern __shared__ int smem[];
  __shared__ int scratch[32];
  const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const FusedSmem m = carve_smem(a, smem);
  const bool one_block = gridDim.x == 1;
  route_tokens<kPerLane, kBias, T>(a, blockIdx.x * warps + warp, gridDim.x * warps, m.stage,
                                   one_block ? m.packed : nullptr);
  if (!one_block) {
    __threadfence();
    cluster_barrier();
    if (blockIdx.x != 0) return;
    gather_bins(a, m.packed);
  }
  __syncthreads();
  layout_block(a, m.hist, m.start, m.packed, scratch, a.num_tokens * a.p.top_k);
}

// kGrid: warps per block (the layout block's warps; routing uses the first route_warps of each
// block, so that each SM routes few tokens, as router_topk's grid does).
constexpr int grid_warps(int per_lane) { return max_warps(per_lane) < 16 ? max_warps(per_lane) : 16; }
constexpr int kGridRouteWarps = 4;

// kGrid: a cooperative launch of many blocks. Warp w < route_warps of block b routes tokens
// b * route_warps + w, + gridDim.x * route_warps, ...; after a grid barrier (which orders the
// slot_ids stores before the loads) block 0 reads the slots back and alone does steps 2-4.
template <int kPerLane, bool kBias, class T>
__global__ void __launch_bounds__(grid_warps(kPerLane) * 32) route_grid_kernel(FusedArgs a, int route_warps) {
  extern __shared__ int smem[];  // stage: route_warps rows only
  __shared__ int scratch[32];
  const int warp = threadIdx.x >> 5;
  const FusedSmem m = carve_smem(a, smem);
  if (warp < route_warps)
    route_tokens<kPerLane, kBias, T>(a, blockIdx.x * route_warps + warp, gridDim.x * route_warps, m.stage, nullptr);
  cooperative_groups::this_grid().sync();
  if (blockIdx.x != 0) return;
  gather_bins(a, m.packed);
  __syncthreads();
  layout_block(a, m.hist, m.start, m.packed, scratch, a.num_tokens * a.p.top_k);
}

// Blocks and warps of a fused launch.
struct Plan {
  RouteLayoutPath path;
  int blocks, warps;
  size_t smem;
  int route_warps = 0;  // kGrid: routing warps per block
};

template <class Kernel>
void set_smem(Kernel kernel, size_t smem) {
  if (smem > 48 * 1024) {
    MOEBAL_CHECK_CUDA(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
}

template <int kPerLane, class T>
void launch_fused(const FusedArgs& a, const Plan& plan, cudaStream_t stream) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(plan.blocks));
  cfg.blockDim = dim3(static_cast<unsigned>(plan.warps * 32));
  cfg.dynamicSmemBytes = plan.smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  if (plan.path == RouteLayoutPath::kGrid) {
    auto kernel = a.bias != nullptr ? route_grid_kernel<kPerLane, true, T> : route_grid_kernel<kPerLane, false, T>;
    set_smem(kernel, plan.smem);
    attr[0].id = cudaLaunchAttributeCooperative;  // the grid barrier needs every block resident
    attr[0].val.cooperative = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    MOEBAL_CHECK_CUDA(cudaLaunchKernelEx(&cfg, kernel, a, plan.route_warps));
    return;
  }
  auto kernel = a.bias != nullptr ? route_layout_kernel<kPerLane, true, T> : route_layout_kernel<kPerLane, false, T>;
  set_smem(kernel, plan.smem);
  if (plan.blocks == 1) {
    kernel<<<1, plan.warps * 32, plan.smem, stream>>>(a);
    return;
  }
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(plan.blocks);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  MOEBAL_CHECK_CUDA(cudaLaunchKernelEx(&cfg, kernel, a));
}

template <class T>
void dispatch_fused(const FusedArgs& a, const Plan& plan, cudaStream_t stream) {
  switch (per_lane_of(a.p.num_experts)) {
    case 1: return launch_fused<1, T>(a, plan, stream);
    case 2: return launch_fused<2, T>(a, plan, stream);
    case 4: return launch_fused<4, T>(a, plan, stream);
    case 8: return launch_fused<8, T>(a, plan, stream);
    case 16: return launch_fused<16, T>(a, plan, stream);
    case 32: return launch_fused<32, T>(a, plan, stream);
    default: return launch_fused<64, T>(a, plan, stream);
  }
}

// A device attribute of the current device, cached per device (the attributes asked here never
// change while the process runs).
enum CachedAttr { kAttrCluster = 0, kAttrCooperative = 1, kAttrSms = 2, kNumCachedAttrs = 3 };

int device_attr(CachedAttr which) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices][kNumCachedAttrs];  // value + 1; 0 = not asked yet
  int dev = 0;
  MOEBAL_CHECK_CUDA(cudaGetDevice(&dev));
  if (dev < 0 || dev >= kMaxDevices) return 0;
  int v = cache[dev][which].load(std::memory_order_relaxed);
  if (v == 0) {
    const cudaDeviceAttr attr = which == kAttrCluster       ? cudaDevAttrClusterLaunch
                                : which == kAttrCooperative ? cudaDevAttrCooperativeLaunch
                                                            : cudaDevAttrMultiProcessorCount;
    int value = 0;
    MOEBAL_CHECK_CUDA(cudaDeviceGetAttribute(&value, attr, dev));
    v = value + 1;
    cache[dev][which].store(v, std::memory_order_relaxed);
  }
  return v - 1;
}

bool cluster_launch_supported() { return device_attr(kAttrCluster) != 0; }

// Auto, from bench/results/routerfuse.md (H200; one-block rows also on H100) and
// bench/results/layoutfast.md (H100, with kGrid): one block while its routing is short (<= 4
// tokens); kGrid (routing over one SM per 4 tokens) once the routing work, tokens x scores per
// lane, is large: from 16 tokens with 8+ scores a lane (DeepSeek-V3: 9.0-13.6 us against
// 9.3-14.8 us for the best other path at 16-256 tokens), and from 256 work units otherwise
// (Qwen3 / GPT-OSS at 128-256 tokens, Mixtral at 256); otherwise a cluster, and the two kernels
// once the routing work outgrows what up to 8 SMs do faster than the router kernel's grid
// (without cooperative launch: DeepSeek-V3 wins fused up to 32 tokens and loses at 128; Qwen3 /
// GPT-OSS win at 128 and lose at 256).
constexpr int64_t kAutoOneBlockMaxTokens = 4;
constexpr int64_t kAutoGridMinWork = 256;         // num_tokens * ceil_pow2(num_experts / 32)
constexpr int64_t kAutoGridMinTokensWide = 16;    // with 8+ scores a lane
constexpr int kAutoGridWidePerLane = 8;
constexpr int64_t kAutoOneBlockMaxTokensNoCluster = 16;
constexpr int64_t kAutoMaxFusedTokens = 128;
constexpr int64_t kAutoMaxFusedWork = 512;  // num_tokens * ceil_pow2(num_experts / 32)

// kGrid: one block per kGridRouteWarps tokens (at most one block per SM, so that every block is
// resident, as the cooperative launch requires), each of grid_warps(...) warps (fewer when the
// layout's shared memory would not fit).
Plan grid_plan(int64_t num_tokens, const RouterParams& p, int32_t num_slots) {
  const Plan two{RouteLayoutPath::kTwoKernels, 0, 0, 0};
  const int sms = device_attr(kAttrSms);
  if (device_attr(kAttrCooperative) == 0 || sms < 1) return two;
  const int per_lane = per_lane_of(p.num_experts);
  for (int warps = grid_warps(per_lane); warps >= kGridRouteWarps; warps /= 2) {
    Plan plan{RouteLayoutPath::kGrid, 0, warps, 0, kGridRouteWarps};
    int64_t blocks = (num_tokens + plan.route_warps - 1) / plan.route_warps;
    if (blocks > sms) {
      blocks = sms;
      plan.route_warps = static_cast<int>(std::min<int64_t>(warps, (num_tokens + sms - 1) / sms));
    }
    plan.blocks = static_cast<int>(blocks);
    const size_t bins = static_cast<size_t>(num_slots) + 1;
    size_t ints = static_cast<size_t>(warps) * bins + bins + static_cast<size_t>(num_tokens) * p.top_k;
    if (p.num_groups > 1) ints += static_cast<size_t>(plan.route_warps) * p.num_experts;
    plan.smem = sizeof(int32_t) * ints;
    if (plan.smem <= kRouteLayoutMaxSmemBytes) return plan;
  }
  return two;
}

Plan make_plan(int64_t num_tokens, const RouterParams& p, int32_t num_slots, RouteLayoutPath want) {
  const Plan two{RouteLayoutPath::kTwoKernels, 0, 0, 0};
  if (want == RouteLayoutPath::kTwoKernels) return two;
  if (num_tokens < 1 || num_tokens > kRouteLayoutMaxTokens || p.num_experts < 1 || p.top_k < 1) return two;
  if (num_tokens * p.top_k > kRouteLayoutMaxPairs || num_slots < 1 || num_slots > kLayoutMaxSlots) return two;
  const bool cluster_ok = cluster_launch_supported();
  if (want == RouteLayoutPath::kAuto) {
    const int per_lane = per_lane_of(p.num_experts);
    if (num_tokens > kAutoOneBlockMaxTokens &&
        (num_tokens * per_lane >= kAutoGridMinWork ||
         (per_lane >= kAutoGridWidePerLane && num_tokens >= kAutoGridMinTokensWide))) {
      const Plan grid = grid_plan(num_tokens, p, num_slots);
      if (grid.path == RouteLayoutPath::kGrid) return grid;
    }
    if (num_tokens > kAutoMaxFusedTokens || num_tokens * per_lane_of(p.num_experts) > kAutoMaxFusedWork) return two;
    if (num_tokens <= kAutoOneBlockMaxTokens) {
      want = RouteLayoutPath::kOneBlock;
    } else if (cluster_ok) {
      want = RouteLayoutPath::kCluster;
    } else {
      want = num_tokens <= kAutoOneBlockMaxTokensNoCluster ? RouteLayoutPath::kOneBlock : RouteLayoutPath::kTwoKernels;
    }
    if (want == RouteLayoutPath::kTwoKernels) return two;
  }
  if (want == RouteLayoutPath::kGrid) return grid_plan(num_tokens, p, num_slots);
  Plan plan{want, 1, warps_for(num_tokens, p.num_experts), 0};
  if (want == RouteLayoutPath::kCluster) {
    if (!cluster_ok) return two;
    // About 4+ tokens a block, up to the portable cluster size; one token a warp where possible.
    const int64_t blocks = std::min<int64_t>(kRouteLayoutMaxCluster, std::max<int64_t>(2, (num_tokens + 3) / 4));
    const int64_t per_block = (num_tokens + blocks - 1) / blocks;
    plan.blocks = static_cast<int>(blocks);
    plan.warps = static_cast<int>(
        std::min<int64_t>(max_warps(per_lane_of(p.num_experts)), std::max<int64_t>(4, per_block)));
  }
  plan.smem = smem_bytes(num_tokens, p, num_slots, plan.warps);
  return plan.smem <= kRouteLayoutMaxSmemBytes ? plan : two;
}

}  // namespace

size_t route_and_layout_workspace_bytes(int64_t num_tokens, int32_t top_k, int32_t num_slots) {
  return dispatch_layout_workspace_bytes(num_tokens, top_k, num_slots);
}

RouteLayoutPath route_and_layout_plan(int64_t num_tokens, const RouterParams& p, int32_t num_slots,
                                      RouteLayoutPath path) {
  return make_plan(num_tokens, p, num_slots, path).path;
}

void route_and_layout(const void* logits, LogitsDtype dtype, int64_t num_tokens, const RouterParams& p,
                      const float* correction_bias, int32_t num_slots, const PlacementView& placement,
                      int32_t* topk_ids, float* topk_weights, int32_t* slot_ids, int32_t* offsets,
                      int32_t* row_index, int32_t* sorted_token, void* workspace, size_t workspace_bytes,
                      RouteLayoutPath path, cudaStream_t stream) {
  detail::check_router_params("route_and_layout", dtype, num_tokens, p);
  MOEBAL_CHECK_ARG(path == RouteLayoutPath::kAuto || path == RouteLayoutPath::kTwoKernels ||
                       path == RouteLayoutPath::kOneBlock || path == RouteLayoutPath::kCluster ||
                       path == RouteLayoutPath::kGrid,
                   "route_and_layout: unknown path ", static_cast<int>(path));
  MOEBAL_CHECK_ARG(num_slots >= 1 && num_slots <= kLayoutMaxSlots, "route_and_layout: num_slots must be in [1, ",
                   kLayoutMaxSlots, "], got ", num_slots);
  MOEBAL_CHECK_ARG(num_tokens * p.top_k < INT_MAX, "route_and_layout: num_tokens * top_k (", num_tokens * p.top_k,
                   ") must fit in int32");
  if (placement.log2phy == nullptr) {
    MOEBAL_CHECK_ARG(num_slots == p.num_experts, "route_and_layout: without a placement num_slots (", num_slots,
                     ") must equal num_experts (", p.num_experts, ")");
  } else {
    MOEBAL_CHECK_ARG(placement.logcnt != nullptr && placement.max_copies >= 1,
                     "route_and_layout: a placement needs logcnt and max_copies >= 1 (max_copies=",
                     placement.max_copies, ")");
  }
  MOEBAL_CHECK_ARG(offsets != nullptr, "route_and_layout: offsets is null");
  if (num_tokens == 0) {
    MOEBAL_CHECK_CUDA(cudaMemsetAsync(offsets, 0, sizeof(int32_t) * (static_cast<size_t>(num_slots) + 1), stream));
    return;
  }
  MOEBAL_CHECK_ARG(logits && topk_ids && topk_weights && slot_ids && row_index && sorted_token,
                   "route_and_layout: null device pointer");
  const Plan plan = make_plan(num_tokens, p, num_slots, path);
  if (plan.path == RouteLayoutPath::kTwoKernels) {
    router_topk(logits, dtype, num_tokens, p, correction_bias, topk_ids, topk_weights, stream);
    dispatch_layout(topk_ids, num_tokens, p.top_k, p.num_experts, num_slots, placement, slot_ids, offsets,
                    row_index, sorted_token, workspace, workspace_bytes, stream);
    return;
  }
  const FusedArgs a{logits,   static_cast<int32_t>(num_tokens), p,       correction_bias, num_slots, placement,
                    topk_ids, topk_weights,                     slot_ids, offsets,        row_index, sorted_token};
  if (dtype == LogitsDtype::kFloat32) {
    dispatch_fused<float>(a, plan, stream);
  } else {
    dispatch_fused<__nv_bfloat16>(a, plan, stream);
  }
  MOEBAL_CHECK_LAUNCH();
}

}  // namespace moebal::cuda
