// route_and_layout (router + dispatch layout in one launch at decode sizes), on each of its paths
// (auto, one block, cluster, grid, two kernels), against the two-kernel
// path router_topk + dispatch_layout, which cuda_test_moe_dataplane.cu checks against host
// references: ids, slots and layout must be equal, weights bit-identical. The layout is also
// checked against a stable host sort of the fused ids. Four model configurations, identity /
// replicated (also 288 slots for DeepSeek-V3) / broken / all-dropping placements, ties, NaN
// logits, fp32 and bf16 logits, fused and fallback sizes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>

#include "cuda_test_util.h"
#include "moebal/cuda/check.h"
#include "moebal/cuda/histogram.h"
#include "moebal/cuda/moe_routing.h"

namespace {

namespace mc = moebal::cuda;

using moebal_test::CapturedGraph;
using moebal_test::DeviceBuffer;

struct Model {
  const char* name;
  int experts, top_k;
  mc::RouterScoring scoring;
  bool renormalize, bias;
  int groups, topk_groups;
  float scaling;
};

const Model kMixtral{"Mixtral", 8, 2, mc::RouterScoring::kSoftmax, true, false, 1, 1, 1.0f};
const Model kQwen3{"Qwen3_30B", 128, 8, mc::RouterScoring::kSoftmax, true, false, 1, 1, 1.0f};
const Model kGptOss{"GPT_OSS", 128, 4, mc::RouterScoring::kSoftmax, true, false, 1, 1, 1.0f};
const Model kDeepSeekV3{"DeepSeek_V3", 256, 8, mc::RouterScoring::kSigmoid, true, true, 8, 4, 2.5f};
// Edge configurations: the largest router (64 scores a lane, 151 KiB of shared memory), odd sizes.
const Model kLimits{"Limits", 2048, 32, mc::RouterScoring::kSoftmax, true, false, 32, 16, 1.0f};
const Model kOdd{"Odd60", 60, 4, mc::RouterScoring::kSigmoid, false, false, 1, 1, 1.0f};
const Model kTiny{"Tiny3", 3, 3, mc::RouterScoring::kSigmoid, true, true, 3, 3, 1.0f};
const Model kDeepSeekV2{"DeepSeek_V2", 160, 6, mc::RouterScoring::kSoftmax, false, false, 8, 3, 16.0f};

// kReplicated: the first 6 experts get 2 or 3 copies; kEighth: the first E/8 get a second copy
// (DeepSeek-V3: 288 slots); kBroken: kReplicated with a few broken entries; kAllDropped: every
// expert has 0 copies, so every pair is dropped.
enum class PlacementKind { kIdentity, kReplicated, kBroken, kEighth, kAllDropped };

struct Case {
  Model model;
  int64_t tokens;
  PlacementKind placement;
  bool bf16;
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  const char* pl = c.placement == PlacementKind::kIdentity     ? "identity"
                   : c.placement == PlacementKind::kReplicated ? "replicated"
                   : c.placement == PlacementKind::kBroken     ? "broken"
                   : c.placement == PlacementKind::kEighth     ? "eighth"
                                                               : "alldropped";
  return std::string(c.model.name) + "_T" + std::to_string(c.tokens) + "_" + pl + (c.bf16 ? "_bf16" : "_fp32");
}

// EPLB tables: the first experts get 2 or 3 copies, slots shuffled. kBroken also breaks a few
// entries (a slot out of range, a copy count of 0 and one above max_copies): those pairs are dropped.
struct HostPlacement {
  int slots = 0, max_copies = 1;
  std::vector<int32_t> log2phy, logcnt;
};

HostPlacement make_placement(int E, PlacementKind kind, std::mt19937& rng) {
  HostPlacement P;
  if (kind == PlacementKind::kIdentity) {
    P.slots = E;
    return P;
  }
  std::vector<int> copies(E, 1);
  if (kind == PlacementKind::kEighth) {
    for (int e = 0; e < std::max(1, E / 8); ++e) copies[e] = 2;
  } else {
    for (int e = 0; e < std::min(E, 6); ++e) copies[e] = 2 + e % 2;
  }
  for (int v : copies) P.slots += v, P.max_copies = std::max(P.max_copies, v);
  std::vector<int32_t> perm(P.slots);
  for (int i = 0; i < P.slots; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  P.log2phy.assign(static_cast<size_t>(E) * P.max_copies, -1);
  P.logcnt.assign(E, 0);
  int next = 0;
  for (int e = 0; e < E; ++e) {
    for (int i = 0; i < copies[e]; ++i) P.log2phy[e * P.max_copies + i] = perm[next + i];
    P.logcnt[e] = copies[e];
    next += copies[e];
  }
  if (kind == PlacementKind::kBroken) {
    P.log2phy[0 * P.max_copies + 1] = P.slots + 3;  // expert 0, copy 1: out of range
    if (E > 1) P.logcnt[E - 1] = 0;                   // last expert: no copy
    if (E > 2) P.logcnt[E / 2] = P.max_copies + 1;    // more copies than the table holds
    if (E > 3) P.log2phy[3 * P.max_copies] = -2;      // negative slot
  }
  if (kind == PlacementKind::kAllDropped) P.logcnt.assign(E, 0);
  return P;
}

// Random normal logits (never zeros) with exact ties, NaNs and one all-NaN row.
std::vector<float> make_logits(int64_t T, int E, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.f, 2.f);
  std::vector<float> l(static_cast<size_t>(T) * E);
  for (auto& v : l) v = nd(rng);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t t = 0; t < T; ++t) {
    float* r = l.data() + t * E;
    if (t % 5 == 0 && E > 2) r[E - 1] = r[1] = r[0];  // a three-way tie: the lowest id wins
    if (t % 7 == 3) r[(3 * t) % E] = nan;
  }
  if (T > 2)
    for (int e = 0; e < E; ++e) l[2 * E + e] = nan;
  return l;
}

using Layout = moebal_test::HostLayout;

// Stable host sort of the pairs by slot (dispatch_layout's documented semantics).
Layout layout_ref(const std::vector<int32_t>& ids, int64_t T, int K, int E, const HostPlacement& P) {
  return moebal_test::layout_ref(ids, T, K, E, P.slots, P.log2phy.empty() ? nullptr : &P.log2phy, &P.logcnt,
                                 P.max_copies);
}

mc::RouterParams params_of(const Model& m) {
  mc::RouterParams p;
  p.num_experts = m.experts;
  p.top_k = m.top_k;
  p.scoring = m.scoring;
  p.renormalize = m.renormalize;
  p.num_groups = m.groups;
  p.topk_groups = m.topk_groups;
  p.scaling_factor = m.scaling;
  return p;
}

// Device inputs of one case.
struct Problem {
  int64_t T;
  int K, E;
  mc::RouterParams p;
  HostPlacement P;
  std::vector<float> logits;
  std::vector<__nv_bfloat16> logits_bf;
  std::vector<float> bias;
  bool bf16, has_bias;
  DeviceBuffer<float> d_logits, d_bias;
  DeviceBuffer<__nv_bfloat16> d_logits_bf;
  DeviceBuffer<int32_t> d_l2p, d_cnt;
  mc::PlacementView pv;

  Problem(const Case& c, std::mt19937& rng)
      : T(c.tokens), K(c.model.top_k), E(c.model.experts), p(params_of(c.model)),
        P(make_placement(c.model.experts, c.placement, rng)), logits(make_logits(c.tokens, c.model.experts, rng)),
        logits_bf(c.bf16 ? logits.size() : 0), bias(c.model.bias ? c.model.experts : 0), bf16(c.bf16),
        has_bias(c.model.bias), d_logits(logits), d_bias(fill_bias(rng)), d_logits_bf(to_bf16()),
        d_l2p(P.log2phy), d_cnt(P.logcnt) {
    if (!P.log2phy.empty()) pv = {d_l2p.ptr, d_cnt.ptr, P.max_copies};
  }
  const std::vector<float>& fill_bias(std::mt19937& rng) {
    std::normal_distribution<float> nd(0.f, 0.1f);
    for (auto& v : bias) v = nd(rng);
    return bias;
  }
  const std::vector<__nv_bfloat16>& to_bf16() {
    for (size_t i = 0; i < logits_bf.size(); ++i) logits_bf[i] = __float2bfloat16(logits[i]);
    return logits_bf;
  }
  const void* logits_ptr() const { return bf16 ? static_cast<const void*>(d_logits_bf.ptr) : d_logits.ptr; }
  mc::LogitsDtype dtype() const { return bf16 ? mc::LogitsDtype::kBFloat16 : mc::LogitsDtype::kFloat32; }
  const float* bias_ptr() const { return has_bias ? d_bias.ptr : nullptr; }
};

// The outputs of one path.
struct Outputs {
  DeviceBuffer<int32_t> ids, slot, offsets, row, token;
  DeviceBuffer<float> w;
  Outputs(int64_t N, int S) : ids(N), slot(N), offsets(S + 1), row(N), token(N), w(N) {
    for (auto* b : {&ids, &slot, &offsets, &row, &token}) b->poison();
    w.poison();
  }
};

void run_two_kernels(const Problem& pr, Outputs& o, cudaStream_t s) {
  mc::router_topk(pr.logits_ptr(), pr.dtype(), pr.T, pr.p, pr.bias_ptr(), o.ids.ptr, o.w.ptr, s);
  const size_t ws_bytes = mc::dispatch_layout_workspace_bytes(pr.T, pr.K, pr.P.slots);
  DeviceBuffer<char> ws(ws_bytes);
  mc::dispatch_layout(o.ids.ptr, pr.T, pr.K, pr.E, pr.P.slots, pr.pv, o.slot.ptr, o.offsets.ptr, o.row.ptr,
                      o.token.ptr, ws.ptr, ws_bytes, s);
  MOEBAL_CHECK_CUDA(cudaStreamSynchronize(s));
}

void run_fused(const Problem& pr, Outputs& o, void* ws, size_t ws_bytes, mc::RouteLayoutPath path, cudaStream_t s) {
  mc::route_and_layout(pr.logits_ptr(), pr.dtype(), pr.T, pr.p, pr.bias_ptr(), pr.P.slots, pr.pv, o.ids.ptr,
                       o.w.ptr, o.slot.ptr, o.offsets.ptr, o.row.ptr, o.token.ptr, ws, ws_bytes, path, s);
}

bool device_has(cudaDeviceAttr attr) {
  int dev = 0, v = 0;
  MOEBAL_CHECK_CUDA(cudaGetDevice(&dev));
  MOEBAL_CHECK_CUDA(cudaDeviceGetAttribute(&v, attr, dev));
  return v != 0;
}

bool device_has_clusters() { return device_has(cudaDevAttrClusterLaunch); }

const char* path_name(mc::RouteLayoutPath p) {
  switch (p) {
    case mc::RouteLayoutPath::kAuto: return "auto";
    case mc::RouteLayoutPath::kTwoKernels: return "two_kernels";
    case mc::RouteLayoutPath::kOneBlock: return "one_block";
    case mc::RouteLayoutPath::kCluster: return "cluster";
    case mc::RouteLayoutPath::kGrid: return "grid";
  }
  return "?";
}

void expect_same(const Outputs& want, const Outputs& got, const char* what) {
  EXPECT_EQ(got.ids.host(), want.ids.host()) << what;
  const auto gw = got.w.host(), ww = want.w.host();
  ASSERT_EQ(gw.size(), ww.size());
  EXPECT_EQ(0, std::memcmp(gw.data(), ww.data(), sizeof(float) * gw.size())) << what << ": weights differ in bits";
  EXPECT_EQ(got.slot.host(), want.slot.host()) << what;
  EXPECT_EQ(got.offsets.host(), want.offsets.host()) << what;
  EXPECT_EQ(got.row.host(), want.row.host()) << what;
  EXPECT_EQ(got.token.host(), want.token.host()) << what;
}

class RouteAndLayoutCuda : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (mc::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(RouteAndLayoutCuda, MatchesRouterThenLayout) {
  const Case c = GetParam();
  std::mt19937 rng(static_cast<unsigned>(c.tokens * 31 + c.model.experts * 7 + static_cast<int>(c.placement)));
  const Problem pr(c, rng);
  const int64_t N = pr.T * pr.K;
  // The size rule: fused paths up to 256 tokens and 4096 pairs (shared memory fits for all of
  // these configurations), the two kernels beyond; kCluster needs cluster launch, kGrid
  // cooperative launch.
  const bool fusable = pr.T <= mc::kRouteLayoutMaxTokens && N <= mc::kRouteLayoutMaxPairs;
  using P = mc::RouteLayoutPath;
  EXPECT_EQ(mc::route_and_layout_plan(pr.T, pr.p, pr.P.slots, P::kOneBlock), fusable ? P::kOneBlock : P::kTwoKernels);
  EXPECT_EQ(mc::route_and_layout_plan(pr.T, pr.p, pr.P.slots, P::kCluster),
            fusable && device_has_clusters() ? P::kCluster : P::kTwoKernels);
  EXPECT_EQ(mc::route_and_layout_plan(pr.T, pr.p, pr.P.slots, P::kGrid),
            fusable && device_has(cudaDevAttrCooperativeLaunch) ? P::kGrid : P::kTwoKernels);
  EXPECT_EQ(mc::route_and_layout_plan(pr.T, pr.p, pr.P.slots, P::kTwoKernels), P::kTwoKernels);
  if (!fusable) EXPECT_EQ(mc::route_and_layout_plan(pr.T, pr.p, pr.P.slots), P::kTwoKernels);
  cudaStream_t s;
  MOEBAL_CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  Outputs want(N, pr.P.slots);
  run_two_kernels(pr, want, s);
  const size_t ws_bytes = mc::route_and_layout_workspace_bytes(pr.T, pr.K, pr.P.slots);
  DeviceBuffer<char> ws(ws_bytes);
  ws.poison();
  void* wsp = ws_bytes ? ws.ptr : nullptr;

  for (const P path : {P::kAuto, P::kOneBlock, P::kCluster, P::kGrid, P::kTwoKernels}) {
    SCOPED_TRACE(path_name(path));
    Outputs got(N, pr.P.slots);
    run_fused(pr, got, wsp, ws_bytes, path, s);
    MOEBAL_CHECK_CUDA(cudaStreamSynchronize(s));
    expect_same(want, got, "eager");

    // Independent of the two-kernel path: the layout is the stable host sort of the fused ids.
    const Layout L = layout_ref(got.ids.host(), pr.T, pr.K, pr.E, pr.P);
    EXPECT_EQ(got.slot.host(), L.slot);
    EXPECT_EQ(got.offsets.host(), L.offsets);
    EXPECT_EQ(got.row.host(), L.row);
    EXPECT_EQ(got.token.host(), L.token);
    if (c.placement == PlacementKind::kBroken && pr.T >= 128) {
      EXPECT_LT(L.offsets.back(), N) << "the broken placement must drop some pairs";
    }
    if (c.placement == PlacementKind::kAllDropped) {
      EXPECT_EQ(L.offsets.back(), 0) << "every pair must be dropped";
    }

    // No host synchronisation: the call captures into a CUDA graph and replays to the same result.
    Outputs replay(N, pr.P.slots);
    const CapturedGraph graph(s, [&] { run_fused(pr, replay, wsp, ws_bytes, path, s); });
    for (int rep = 0; rep < 2; ++rep) {
      graph.launch(s);
      MOEBAL_CHECK_CUDA(cudaStreamSynchronize(s));
      expect_same(want, replay, "graph replay");
    }
  }
  cudaStreamDestroy(s);
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const Model& m : {kMixtral, kQwen3, kGptOss, kDeepSeekV3})
    for (int64_t t : {1, 3, 17, 128, 256, 1003})
      for (PlacementKind pl : {PlacementKind::kIdentity, PlacementKind::kReplicated, PlacementKind::kBroken})
        cases.push_back({m, t, pl, t == 17 || t == 256});
  for (const Model& m : {kLimits, kOdd, kTiny, kDeepSeekV2})
    for (int64_t t : {1, 37, 100})
      cases.push_back({m, t, t == 37 ? PlacementKind::kReplicated : PlacementKind::kIdentity, t == 100});
  cases.push_back({kDeepSeekV3, 513, PlacementKind::kReplicated, false});  // 4104 pairs: fallback
  // Size and slot boundaries of the fused paths: exactly kRouteLayoutMaxPairs pairs (128 x top-32)
  // and one token more; 288 slots (DeepSeek-V3 with E/8 second copies) at decode sizes; every
  // pair dropped.
  cases.push_back({kLimits, 128, PlacementKind::kIdentity, false});
  cases.push_back({kLimits, 129, PlacementKind::kIdentity, false});
  for (int64_t t : {1, 32, 128, 256}) cases.push_back({kDeepSeekV3, t, PlacementKind::kEighth, t == 32});
  cases.push_back({kDeepSeekV3, 128, PlacementKind::kAllDropped, false});
  cases.push_back({kMixtral, 17, PlacementKind::kAllDropped, true});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Models, RouteAndLayoutCuda, ::testing::ValuesIn(all_cases()), case_name);

class RouteAndLayoutArgs : public ::testing::Test {
 protected:
  void SetUp() override {
    if (mc::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(RouteAndLayoutArgs, EmptyBatchZeroesOffsets) {
  DeviceBuffer<int32_t> offsets(9);
  offsets.poison();
  mc::RouterParams p = params_of(kMixtral);
  mc::route_and_layout(nullptr, mc::LogitsDtype::kFloat32, 0, p, nullptr, 8, {}, nullptr, nullptr, nullptr,
                       offsets.ptr, nullptr, nullptr, nullptr, 0, mc::RouteLayoutPath::kAuto, nullptr);
  MOEBAL_CHECK_CUDA(cudaDeviceSynchronize());
  EXPECT_EQ(offsets.host(), std::vector<int32_t>(9, 0));
  EXPECT_EQ(mc::route_and_layout_plan(0, p, 8), mc::RouteLayoutPath::kTwoKernels);
}

// The auto rule (bench/results/layoutfast.md): one block up to 4 tokens; kGrid for large routing
// work (DeepSeek-V3 from 16 tokens, 4-score-a-lane routers from 64, Mixtral from 256); a cluster
// between.
TEST_F(RouteAndLayoutArgs, AutoRule) {
  using P = mc::RouteLayoutPath;
  const bool grid = device_has(cudaDevAttrCooperativeLaunch), cluster = device_has_clusters();
  const mc::RouterParams ds = params_of(kDeepSeekV3), qwen = params_of(kQwen3), mix = params_of(kMixtral);
  EXPECT_EQ(mc::route_and_layout_plan(4, ds, 288), P::kOneBlock);
  if (grid)
    for (int64_t t : {16, 32, 128, 256}) EXPECT_EQ(mc::route_and_layout_plan(t, ds, 288), P::kGrid) << t;
  if (cluster) EXPECT_EQ(mc::route_and_layout_plan(8, ds, 288), P::kCluster);
  EXPECT_EQ(mc::route_and_layout_plan(128, qwen, 128), grid ? P::kGrid : cluster ? P::kCluster : P::kTwoKernels);
  if (cluster) {
    EXPECT_EQ(mc::route_and_layout_plan(32, qwen, 128), P::kCluster);
    EXPECT_EQ(mc::route_and_layout_plan(128, mix, 8), P::kCluster);
  }
  EXPECT_EQ(mc::route_and_layout_plan(256, mix, 8), grid ? P::kGrid : P::kTwoKernels);
  EXPECT_EQ(mc::route_and_layout_plan(513, ds, 288), P::kTwoKernels);  // 4104 pairs
}

TEST_F(RouteAndLayoutArgs, RejectsBadArguments) {
  DeviceBuffer<int32_t> buf(64);
  DeviceBuffer<float> fbuf(64);
  int32_t* i = buf.ptr;
  auto call = [&](const mc::RouterParams& p, int32_t slots, const mc::PlacementView& pv) {
    mc::route_and_layout(fbuf.ptr, mc::LogitsDtype::kFloat32, 4, p, nullptr, slots, pv, i, fbuf.ptr, i, i, i, i,
                         nullptr, 0, mc::RouteLayoutPath::kAuto, nullptr);
  };
  mc::RouterParams p = params_of(kMixtral);
  EXPECT_THROW(call(p, 9, {}), moebal::ValueError);       // identity needs num_slots == num_experts
  EXPECT_THROW(call(p, 0, {}), moebal::ValueError);       // no slots
  EXPECT_THROW(call(p, mc::kLayoutMaxSlots + 1, {buf.ptr, buf.ptr, 1}), moebal::ValueError);
  EXPECT_THROW(call(p, 8, {buf.ptr, nullptr, 1}), moebal::ValueError);  // placement without logcnt
  EXPECT_THROW(call(p, 8, {buf.ptr, buf.ptr, 0}), moebal::ValueError);  // max_copies 0
  mc::RouterParams bad = p;
  bad.top_k = 9;  // > num_experts
  EXPECT_THROW(call(bad, 8, {}), moebal::ValueError);
  bad = p;
  bad.num_groups = 3;  // does not divide 8
  EXPECT_THROW(call(bad, 8, {}), moebal::ValueError);
  EXPECT_THROW(mc::route_and_layout(fbuf.ptr, mc::LogitsDtype::kFloat32, 4, p, nullptr, 8, {}, i, fbuf.ptr, i,
                                    nullptr, i, i, nullptr, 0, mc::RouteLayoutPath::kAuto, nullptr),
               moebal::ValueError);  // offsets null
  EXPECT_THROW(mc::route_and_layout(fbuf.ptr, mc::LogitsDtype::kFloat32, 4, p, nullptr, 8, {}, i, fbuf.ptr, i, i, i,
                                    i, nullptr, 0, static_cast<mc::RouteLayoutPath>(7), nullptr),
               moebal::ValueError);  // unknown path
  // Sizes beyond the fused kernels' limits are not errors: they take the two-kernel path.
  using P = mc::RouteLayoutPath;
  EXPECT_EQ(mc::route_and_layout_plan(mc::kRouteLayoutMaxTokens + 1, p, 8), P::kTwoKernels);
  EXPECT_EQ(mc::route_and_layout_plan(mc::kRouteLayoutMaxTokens + 1, p, 8, P::kOneBlock), P::kTwoKernels);
  mc::RouterParams big = params_of(kDeepSeekV3);
  EXPECT_EQ(mc::route_and_layout_plan(256, big, 256, P::kOneBlock), P::kOneBlock);
  EXPECT_EQ(mc::route_and_layout_plan(256, big, mc::kLayoutMaxSlots, P::kOneBlock), P::kTwoKernels);  // smem
}

}  // namespace
