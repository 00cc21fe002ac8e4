// The MoE data-path kernels (router, dispatch layout, permute, combine) against host references
// beside them: random data, odd sizes, skewed and empty experts, replicas, padding, poisoned
// outputs, and a CUDA-graph capture of the whole chain.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include <cuda_bf16.h>

#include "../../cuda/moe_router_device.cuh"  // white-box: the router's fast reciprocal
#include "cuda_test_util.h"
#include "moebal/cuda/check.h"
#include "moebal/cuda/histogram.h"
#include "moebal/cuda/moe_layer.h"
#include "moebal/cuda/moe_permute.h"
#include "moebal/cuda/moe_routing.h"

namespace {

namespace mc = moebal::cuda;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------------------------------------
// Small RAII helpers
// ---------------------------------------------------------------------------------------------
using moebal_test::CapturedGraph;
using moebal_test::DeviceBuffer;

class CudaSuite : public ::testing::Test {
 protected:
  void SetUp() override {
    if (mc::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

float bf16_round(float v) { return __bfloat162float(__float2bfloat16(v)); }

// ---------------------------------------------------------------------------------------------
// Router
// ---------------------------------------------------------------------------------------------
bool beats(float v, int id, float bv, int bid) { return v > bv || (v == bv && id < bid); }
float nan_to_neg_inf(float v) { return std::isnan(v) ? kNegInf : v; }

void router_ref(const std::vector<float>& logits, int64_t T, const mc::RouterParams& p,
                const std::vector<float>* bias, std::vector<int32_t>& ids, std::vector<float>& weights) {
  const int E = p.num_experts, K = p.top_k;
  ids.assign(T * K, -1);
  weights.assign(T * K, 0.f);
  const bool softmax = p.scoring == mc::RouterScoring::kSoftmax;
  for (int64_t t = 0; t < T; ++t) {
    const float* l = logits.data() + t * E;
    std::vector<float> score(E), choice(E);
    float mx = kNegInf, inv = 1.f;
    if (softmax) {
      for (int e = 0; e < E; ++e) mx = std::max(mx, nan_to_neg_inf(l[e]));
      float s = 0.f;
      for (int e = 0; e < E; ++e) s += std::exp(nan_to_neg_inf(l[e]) - mx);
      inv = 1.f / s;
    }
    for (int e = 0; e < E; ++e) {
      const float x = nan_to_neg_inf(l[e]);
      score[e] = softmax ? std::exp(x - mx) * inv : 1.f / (1.f + std::exp(-x));
      choice[e] = score[e] + (bias ? (*bias)[e] : 0.f);
    }
    std::vector<char> ok(E, 1);
    if (p.num_groups > 1) {
      const int gs = E / p.num_groups;
      std::vector<float> gsc(p.num_groups);
      for (int g = 0; g < p.num_groups; ++g) {
        std::vector<float> v(choice.begin() + g * gs, choice.begin() + (g + 1) * gs);
        std::sort(v.rbegin(), v.rend());
        gsc[g] = bias ? (gs > 1 ? v[0] + v[1] : v[0]) : v[0];
      }
      std::vector<char> picked(p.num_groups, 0);
      for (int r = 0; r < p.topk_groups; ++r) {
        int bid = INT_MAX;
        float bv = kNegInf;
        for (int g = 0; g < p.num_groups; ++g)
          if (!picked[g] && beats(gsc[g], g, bv, bid)) bv = gsc[g], bid = g;
        picked[bid] = 1;
      }
      for (int e = 0; e < E; ++e) ok[e] = picked[e / gs];
    }
    float sum = 0.f;
    for (int j = 0; j < K; ++j) {
      int bid = INT_MAX;
      float bv = kNegInf;
      for (int e = 0; e < E; ++e)
        if (ok[e] && beats(choice[e], e, bv, bid)) bv = choice[e], bid = e;
      ok[bid] = 0;
      ids[t * K + j] = bid;
      weights[t * K + j] = score[bid];
      sum += score[bid];
    }
    for (int j = 0; j < K; ++j) {
      if (p.renormalize) weights[t * K + j] /= sum;
      weights[t * K + j] *= p.scaling_factor;
    }
  }
}

struct RouterCase {
  int64_t tokens;
  int experts, top_k;
  mc::RouterScoring scoring;
  bool renormalize, bias, bf16;
  int groups, topk_groups;
};

class RouterTopkCuda : public CudaSuite, public ::testing::WithParamInterface<RouterCase> {};

TEST_P(RouterTopkCuda, MatchesHostReference) {
  const RouterCase c = GetParam();
  mc::RouterParams p;
  p.num_experts = c.experts;
  p.top_k = c.top_k;
  p.scoring = c.scoring;
  p.renormalize = c.renormalize;
  p.num_groups = c.groups;
  p.topk_groups = c.topk_groups;
  p.scaling_factor = c.bias ? 2.5f : 1.0f;
  std::mt19937 rng(static_cast<unsigned>(c.tokens * 7 + c.experts));
  std::normal_distribution<float> nd(0.f, 2.f);
  std::vector<float> logits(c.tokens * c.experts);
  for (auto& v : logits) v = nd(rng);
  // Exact ties (the lower id must win) in a few rows.
  for (int64_t t = 0; t < c.tokens; t += 5) logits[t * c.experts + c.experts - 1] = logits[t * c.experts];
  std::vector<__nv_bfloat16> logits_bf(logits.size());
  if (c.bf16) {
    for (size_t i = 0; i < logits.size(); ++i) {
      logits_bf[i] = __float2bfloat16(logits[i]);
      logits[i] = __bfloat162float(logits_bf[i]);
    }
  }
  std::vector<float> bias(c.experts);
  for (auto& v : bias) v = 0.1f * nd(rng);
  std::vector<int32_t> want_ids;
  std::vector<float> want_w;
  router_ref(logits, c.tokens, p, c.bias ? &bias : nullptr, want_ids, want_w);

  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<__nv_bfloat16> d_logits_bf(logits_bf);
  DeviceBuffer<float> d_bias(bias);
  DeviceBuffer<int32_t> d_ids(c.tokens * c.top_k);
  DeviceBuffer<float> d_w(c.tokens * c.top_k);
  d_ids.poison();
  d_w.poison();
  mc::router_topk(c.bf16 ? static_cast<const void*>(d_logits_bf.ptr) : d_logits.ptr,
                  c.bf16 ? mc::LogitsDtype::kBFloat16 : mc::LogitsDtype::kFloat32, c.tokens, p,
                  c.bias ? d_bias.ptr : nullptr, d_ids.ptr, d_w.ptr, nullptr);
  MOEBAL_CHECK_CUDA(cudaDeviceSynchronize());
  const auto ids = d_ids.host();
  const auto w = d_w.host();
  ASSERT_EQ(ids, want_ids);
  for (size_t i = 0; i < w.size(); ++i) ASSERT_NEAR(w[i], want_w[i], 1e-5f * (1.f + std::fabs(want_w[i]))) << i;
}

INSTANTIATE_TEST_SUITE_P(
    Configs, RouterTopkCuda,
    ::testing::Values(
        RouterCase{1, 8, 2, mc::RouterScoring::kSoftmax, true, false, false, 1, 1},        // Mixtral
        RouterCase{17, 8, 2, mc::RouterScoring::kSoftmax, false, false, true, 1, 1},
        RouterCase{3, 128, 8, mc::RouterScoring::kSoftmax, true, false, true, 1, 1},       // Qwen3
        RouterCase{1000, 128, 4, mc::RouterScoring::kSoftmax, true, false, false, 1, 1},   // GPT-OSS
        RouterCase{1003, 256, 8, mc::RouterScoring::kSigmoid, true, true, true, 8, 4},     // DeepSeek-V3
        RouterCase{17, 256, 8, mc::RouterScoring::kSigmoid, true, true, false, 8, 4},
        RouterCase{65, 256, 8, mc::RouterScoring::kSigmoid, true, true, false, 4, 2},      // groups of 64
        RouterCase{29, 256, 6, mc::RouterScoring::kSoftmax, true, false, true, 2, 1},      // groups of 128
        RouterCase{40, 64, 4, mc::RouterScoring::kSigmoid, true, true, false, 2, 1},       // 2 regs/lane
        RouterCase{33, 160, 6, mc::RouterScoring::kSoftmax, false, false, false, 8, 3},    // DeepSeek-V2
        RouterCase{5, 60, 4, mc::RouterScoring::kSigmoid, false, false, false, 1, 1},      // E < 64, odd
        RouterCase{7, 2048, 32, mc::RouterScoring::kSoftmax, true, false, false, 32, 16},  // limits
        RouterCase{9, 3, 3, mc::RouterScoring::kSigmoid, true, true, false, 3, 3},
        RouterCase{19, 128, 8, mc::RouterScoring::kSigmoid, true, true, false, 2, 1},     // groups = 16 lanes
        RouterCase{21, 192, 8, mc::RouterScoring::kSigmoid, true, true, false, 2, 1},     // 12 lanes: staged
        RouterCase{11, 200, 8, mc::RouterScoring::kSigmoid, true, true, true, 25, 5},     // 1 lane, padding
        RouterCase{9, 98, 4, mc::RouterScoring::kSigmoid, true, true, false, 7, 3},       // unaligned rows
        RouterCase{13, 250, 8, mc::RouterScoring::kSoftmax, true, false, true, 1, 1}));   // unaligned bf16

// The sigmoid's reciprocal without the division's per-call slow-path branch
// (moe_router_device.cuh) must equal the division bit for bit on every float in [1, 2^126), the
// range of 1 + e^-x the fast path takes, and the range check must send [2^126, inf] to the
// division.
__global__ void check_rcp_range(unsigned first_bits, unsigned last_bits, bool expect_fast,
                                unsigned long long* bad, unsigned long long* wrong_path) {
  unsigned long long my_bad = 0, my_wrong = 0;
  for (unsigned b = first_bits + blockIdx.x * blockDim.x + threadIdx.x; b >= first_bits && b <= last_bits;
       b += gridDim.x * blockDim.x) {
    const float d = __uint_as_float(b);
    const bool fast = mc::detail::rcp_fast_ok(d);
    my_wrong += fast != expect_fast;
    if (fast) my_bad += __float_as_uint(mc::detail::rcp_fast(d)) != __float_as_uint(1.0f / d);
  }
  if (my_bad) atomicAdd(bad, my_bad);
  if (my_wrong) atomicAdd(wrong_path, my_wrong);
}

TEST_F(CudaSuite, RouterFastReciprocalEqualsDivision) {
  DeviceBuffer<unsigned long long> d(2);
  MOEBAL_CHECK_CUDA(cudaMemset(d.ptr, 0, 2 * sizeof(unsigned long long)));
  check_rcp_range<<<1024, 256>>>(0x3f800000u, 0x7e7fffffu, true, d.ptr, d.ptr + 1);  // [1, 2^126)
  check_rcp_range<<<64, 256>>>(0x7e800000u, 0x7f800000u, false, d.ptr, d.ptr + 1);   // [2^126, inf]
  MOEBAL_CHECK_CUDA(cudaGetLastError());
  MOEBAL_CHECK_CUDA(cudaDeviceSynchronize());
  const auto h = d.host();
  EXPECT_EQ(h[0], 0u) << "floats whose fast reciprocal differs from 1.0f / d";
  EXPECT_EQ(h[1], 0u) << "floats sent down the wrong path by rcp_fast_ok";
}

TEST_F(CudaSuite, RouterRejectsBadConfigs) {
  mc::RouterParams p;
  p.num_experts = 16;
  p.top_k = 17;
  EXPECT_THROW(mc::router_topk(nullptr, mc::LogitsDtype::kFloat32, 4, p, nullptr, nullptr, nullptr, nullptr),
               moebal::ValueError);
  p.top_k = 4;
  p.num_groups = 3;  // does not divide 16
  EXPECT_THROW(mc::router_topk(nullptr, mc::LogitsDtype::kFloat32, 4, p, nullptr, nullptr, nullptr, nullptr),
               moebal::ValueError);
  p.num_groups = 4;
  p.topk_groups = 0;
  EXPECT_THROW(mc::router_topk(nullptr, mc::LogitsDtype::kFloat32, 4, p, nullptr, nullptr, nullptr, nullptr),
               moebal::ValueError);
  p.num_experts = 4096;
  EXPECT_THROW(mc::router_topk(nullptr, mc::LogitsDtype::kFloat32, 4, p, nullptr, nullptr, nullptr, nullptr),
               moebal::ValueError);
}

// ---------------------------------------------------------------------------------------------
// Dispatch layout
// ---------------------------------------------------------------------------------------------
using Layout = moebal_test::HostLayout;
using moebal_test::layout_ref;

// Zipf-skewed expert ids, distinct within a token (as a router produces), some padding.
std::vector<int32_t> skewed_ids(int64_t T, int K, int E, double zipf_s, double pad_rate, std::mt19937& rng) {
  std::vector<double> cdf(E);
  double acc = 0;
  for (int e = 0; e < E; ++e) cdf[e] = acc += 1.0 / std::pow(e + 1.0, zipf_s);
  std::uniform_real_distribution<double> u(0, acc);
  std::uniform_real_distribution<double> u01(0, 1);
  std::vector<int32_t> ids(T * K);
  for (int64_t t = 0; t < T; ++t) {
    for (int j = 0; j < K; ++j) {
      int e;
      do {
        e = static_cast<int>(std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin());
        e = std::min(e, E - 1);
      } while (std::find(ids.begin() + t * K, ids.begin() + t * K + j, e) != ids.begin() + t * K + j);
      ids[t * K + j] = u01(rng) < pad_rate ? -1 : e;
    }
  }
  return ids;
}

struct LayoutCase {
  int64_t tokens;
  int top_k, experts;
  bool replicas;
  double zipf, pad;
};

class DispatchLayoutCuda : public CudaSuite, public ::testing::WithParamInterface<LayoutCase> {};

TEST_P(DispatchLayoutCuda, MatchesStableHostSort) {
  const LayoutCase c = GetParam();
  std::mt19937 rng(static_cast<unsigned>(c.tokens * 13 + c.experts));
  const int K = std::min(c.top_k, c.experts);
  auto ids = skewed_ids(c.tokens, K, c.experts, c.zipf, c.pad, rng);
  if (c.tokens > 2) ids[1] = c.experts + 5;  // out of range: dropped on the device
  // Replicas: hot experts (low ids under Zipf) get extra copies; slots shuffled; the last expert's
  // slots are never used by the ids of this test when zipf is large (empty slots).
  int S = c.experts, maxc = 1;
  std::vector<int32_t> l2p, cnt;
  if (c.replicas) {
    std::vector<int> copies(c.experts, 1);
    for (int e = 0; e < std::min(c.experts, 4); ++e) copies[e] = 1 + (e % 3) + 1;
    S = 0;
    for (int v : copies) S += v, maxc = std::max(maxc, v);
    std::vector<int32_t> perm(S);
    for (int i = 0; i < S; ++i) perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), rng);
    l2p.assign(c.experts * maxc, -1);
    cnt.assign(c.experts, 0);
    int next = 0;
    for (int e = 0; e < c.experts; ++e) {
      std::vector<int32_t> mine(perm.begin() + next, perm.begin() + next + copies[e]);
      std::sort(mine.begin(), mine.end());
      for (int i = 0; i < copies[e]; ++i) l2p[e * maxc + i] = mine[i];
      cnt[e] = copies[e];
      next += copies[e];
    }
  }
  const Layout want = layout_ref(ids, c.tokens, K, c.experts, S, c.replicas ? &l2p : nullptr,
                                 c.replicas ? &cnt : nullptr, maxc);
  const int64_t N = c.tokens * K;
  DeviceBuffer<int32_t> d_ids(ids), d_l2p(l2p), d_cnt(cnt);
  DeviceBuffer<int32_t> slot(N), offsets(S + 1), row(N), token(N);
  for (auto* b : {&slot, &offsets, &row, &token}) b->poison();
  const size_t ws_bytes = mc::dispatch_layout_workspace_bytes(c.tokens, K, S);
  DeviceBuffer<char> ws(ws_bytes);
  ws.poison();
  mc::PlacementView pv;
  if (c.replicas) pv = {d_l2p.ptr, d_cnt.ptr, maxc};
  mc::dispatch_layout(d_ids.ptr, c.tokens, K, c.experts, S, pv, slot.ptr, offsets.ptr, row.ptr, token.ptr, ws.ptr,
                      ws_bytes, nullptr);
  MOEBAL_CHECK_CUDA(cudaDeviceSynchronize());
  EXPECT_EQ(offsets.host(), want.offsets);
  EXPECT_EQ(slot.host(), want.slot);
  EXPECT_EQ(row.host(), want.row);
  EXPECT_EQ(token.host(), want.token);
}

INSTANTIATE_TEST_SUITE_P(
    Sizes, DispatchLayoutCuda,
    ::testing::Values(LayoutCase{1, 2, 8, false, 0.0, 0.0}, LayoutCase{3, 8, 128, false, 1.2, 0.0},
                      LayoutCase{17, 8, 256, true, 1.0, 0.05}, LayoutCase{1000, 4, 128, true, 0.0, 0.0},
                      LayoutCase{1000, 2, 8, false, 3.0, 0.0},     // one hot expert, most empty
                      LayoutCase{4099, 1, 7, true, 1.5, 0.01},      // multi-block, odd sizes
                      LayoutCase{16384, 8, 256, false, 1.2, 0.0},   // 131072 pairs
                      LayoutCase{20011, 8, 256, true, 0.8, 0.02},
                      LayoutCase{9, 3, 3000, false, 0.5, 0.0},      // many slots
                      LayoutCase{1500, 2, 3000, false, 0.5, 0.01},  // one block, uncached steps
                      LayoutCase{5003, 1, 2000, true, 0.7, 0.0}));  // multi-block, uncached steps

TEST_F(CudaSuite, DispatchLayoutEmptyAndBadArgs) {
  DeviceBuffer<int32_t> offsets(9);
  offsets.poison();
  mc::dispatch_layout(nullptr, 0, 2, 8, 8, {}, nullptr, offsets.ptr, nullptr, nullptr, nullptr, 0, nullptr);
  MOEBAL_CHECK_CUDA(cudaDeviceSynchronize());
  EXPECT_EQ(offsets.host(), std::vector<int32_t>(9, 0));
  EXPECT_THROW(mc::dispatch_layout(nullptr, 4, 2, 8, 9, {}, nullptr, offsets.ptr, nullptr, nullptr, nullptr, 0,
                                   nullptr),
               moebal::ValueError);  // identity placement needs num_slots == num_experts
  EXPECT_THROW(mc::dispatch_layout(nullptr, 5000, 8, 8, 8, {}, offsets.ptr, offsets.ptr, offsets.ptr, offsets.ptr,
                                   nullptr, 0, nullptr),
               moebal::ValueError);  // workspace missing
}

// ---------------------------------------------------------------------------------------------
// Permute and combine
// ---------------------------------------------------------------------------------------------
struct PermuteCase {
  int64_t tokens;
  int top_k;
  int64_t hidden;
};

class PermuteCombineCuda : public CudaSuite, public ::testing::WithParamInterface<PermuteCase> {};

TEST_P(PermuteCombineCuda, MatchesHost) {
  const PermuteCase c = GetParam();
  const int E = 16, K = c.top_k;
  const int64_t T = c.tokens, H = c.hidden, N = T * K;
  std::mt19937 rng(static_cast<unsigned>(T * 3 + H));
  auto ids = skewed_ids(T, K, E, 1.1, 0.03, rng);
  const Layout L = layout_ref(ids, T, K, E, E, nullptr, nullptr, 1);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<__nv_bfloat16> hidden(T * H), y(N * H);
  for (auto& v : hidden) v = __float2bfloat16(nd(rng));
  for (auto& v : y) v = __float2bfloat16(nd(rng));
  std::vector<float> w(N);
  for (auto& v : w) v = std::fabs(nd(rng));

  DeviceBuffer<__nv_bfloat16> d_hidden(hidden), d_y(y), d_x(N * H), d_out(T * H);
  DeviceBuffer<int32_t> d_row(L.row), d_off(L.offsets);
  DeviceBuffer<float> d_w(w);
  d_x.poison();
  d_out.poison();
  mc::permute_rows_bf16(d_hidden.ptr, T, H, d_row.ptr, K, nullptr, d_x.ptr, nullptr);
  mc::unpermute_combine_bf16(d_y.ptr, d_row.ptr, d_w.ptr, d_off.ptr + E, T, H, K, d_out.ptr, nullptr);
  MOEBAL_CHECK_CUDA(cudaDeviceSynchronize());
  const auto x = d_x.host();
  for (int64_t r = 0; r < N; ++r)
    ASSERT_EQ(0, std::memcmp(&x[r * H], &hidden[L.token[r] * H], sizeof(__nv_bfloat16) * H)) << "row " << r;
  const int64_t valid = L.offsets[E];
  // With the valid-row count, the rows of dropped pairs (after offsets[E]) are left alone.
  d_x.poison();
  mc::permute_rows_bf16(d_hidden.ptr, T, H, d_row.ptr, K, d_off.ptr + E, d_x.ptr, nullptr);
  MOEBAL_CHECK_CUDA(cudaDeviceSynchronize());
  const auto xv = d_x.host();
  const std::vector<unsigned char> poison(sizeof(__nv_bfloat16) * H, 0x7b);
  for (int64_t r = 0; r < N; ++r) {
    const void* want = r < valid ? static_cast<const void*>(&hidden[L.token[r] * H]) : poison.data();
    ASSERT_EQ(0, std::memcmp(&xv[r * H], want, sizeof(__nv_bfloat16) * H)) << "row " << r << ", valid " << valid;
  }
  const auto out = d_out.host();
  double err = 0, ref = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      float acc = 0.f;
      for (int j = 0; j < K; ++j) {
        const int64_t r = L.row[t * K + j];
        if (r < valid) acc = std::fma(w[t * K + j], __bfloat162float(y[r * H + h]), acc);
      }
      const float got = __bfloat162float(out[t * H + h]);
      ASSERT_FALSE(std::isnan(got)) << t << "," << h;
      ASSERT_LE(std::fabs(got - bf16_round(acc)), 1e-2f * std::fabs(acc) + 1e-6f) << t << "," << h;
      err += (got - acc) * (got - acc);
      ref += acc * acc;
    }
  EXPECT_LT(std::sqrt(err / std::max(ref, 1e-30)), 5e-3);
}

INSTANTIATE_TEST_SUITE_P(Sizes, PermuteCombineCuda,
                         ::testing::Values(PermuteCase{1, 2, 4096}, PermuteCase{3, 8, 2048}, PermuteCase{17, 4, 2880},
                                           PermuteCase{1000, 8, 64}, PermuteCase{1000, 3, 136},  // generic top_k
                                           PermuteCase{33, 2, 7},    // 2-byte path
                                           PermuteCase{4096, 2, 512}, PermuteCase{5, 1, 8}));

// ---------------------------------------------------------------------------------------------
// The chain in a CUDA graph: capture fails on any host synchronisation; replays must match.
// ---------------------------------------------------------------------------------------------
TEST_F(CudaSuite, RouterLayoutPermuteCombineCaptureAndReplay) {
  const int64_t T = 77, H = 256;
  const int E = 64, K = 6;
  mc::RouterParams p;
  p.num_experts = E;
  p.top_k = K;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> logits(T * E);
  for (auto& v : logits) v = nd(rng);
  std::vector<__nv_bfloat16> hidden(T * H);
  for (auto& v : hidden) v = __float2bfloat16(nd(rng));
  DeviceBuffer<float> d_logits(logits), d_w(T * K);
  DeviceBuffer<int32_t> ids(T * K), slot(T * K), off(E + 1), row(T * K), tok(T * K);
  DeviceBuffer<__nv_bfloat16> d_hidden(hidden), x(T * K * H), out(T * H);
  cudaStream_t s;
  MOEBAL_CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  auto chain = [&] {
    mc::router_topk(d_logits.ptr, mc::LogitsDtype::kFloat32, T, p, nullptr, ids.ptr, d_w.ptr, s);
    mc::dispatch_layout(ids.ptr, T, K, E, E, {}, slot.ptr, off.ptr, row.ptr, tok.ptr, nullptr, 0, s);
    mc::permute_rows_bf16(d_hidden.ptr, T, H, row.ptr, K, nullptr, x.ptr, s);
    // Combine the permuted rows themselves: with renormalised weights out == hidden (to bf16).
    mc::unpermute_combine_bf16(x.ptr, row.ptr, d_w.ptr, off.ptr + E, T, H, K, out.ptr, s);
  };
  const CapturedGraph graph(s, chain);
  for (int rep = 0; rep < 3; ++rep) {
    out.poison();
    graph.launch(s);
    MOEBAL_CHECK_CUDA(cudaStreamSynchronize(s));
    const auto o = out.host();
    for (int64_t i = 0; i < T * H; ++i)
      ASSERT_NEAR(__bfloat162float(o[i]), __bfloat162float(hidden[i]), 1e-2f * std::fabs(__bfloat162float(hidden[i])) + 1e-6f)
          << "replay " << rep << " at " << i;
  }
  cudaStreamDestroy(s);
}

// ---------------------------------------------------------------------------------------------
// The whole layer (router from logits, replicas) against a host reference, eager and replayed
// from a CUDA graph (capture fails on any host synchronisation).
// ---------------------------------------------------------------------------------------------
TEST_F(CudaSuite, MoeForwardMatchesHostEagerAndInGraph) {
  const int64_t T = 37, H = 64, F = 40;
  const int E = 6, K = 2, S = 8;  // experts 0 and 1 get a replica each (slots 6, 7)
  std::mt19937 rng(17);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> logits(T * E);
  for (auto& v : logits) v = nd(rng);
  std::vector<__nv_bfloat16> hidden(T * H), w13(S * 2 * F * H), w2(S * H * F);
  for (auto& v : hidden) v = __float2bfloat16(nd(rng));
  for (auto& v : w13) v = __float2bfloat16(nd(rng) / 8.f);
  for (auto& v : w2) v = __float2bfloat16(nd(rng) / 6.f);
  std::vector<int32_t> l2p = {0, 6, 1, 7, 2, -1, 3, -1, 4, -1, 5, -1}, cnt = {2, 2, 1, 1, 1, 1};
  mc::RouterParams p;
  p.num_experts = E;
  p.top_k = K;
  std::vector<int32_t> ids;
  std::vector<float> rw;
  router_ref(logits, T, p, nullptr, ids, rw);
  const Layout L = layout_ref(ids, T, K, E, S, &l2p, &cnt, 2);
  // Host reference: bf16 where the GPU stores bf16 (GEMM outputs, activation, expert output).
  std::vector<float> want(T * H, 0.f);
  for (int64_t t = 0; t < T; ++t)
    for (int j = 0; j < K; ++j) {
      const int s = L.slot[t * K + j];
      std::vector<float> act(F);
      for (int64_t f = 0; f < F; ++f) {
        float g = 0, u = 0;
        for (int64_t h = 0; h < H; ++h) {
          const float x = __bfloat162float(hidden[t * H + h]);
          g += x * __bfloat162float(w13[(s * 2 * F + f) * H + h]);
          u += x * __bfloat162float(w13[(s * 2 * F + F + f) * H + h]);
        }
        g = bf16_round(g);
        u = bf16_round(u);
        act[f] = bf16_round(g / (1.f + std::exp(-g)) * u);
      }
      for (int64_t h = 0; h < H; ++h) {
        float y = 0;
        for (int64_t f = 0; f < F; ++f) y += act[f] * __bfloat162float(w2[(s * H + h) * F + f]);
        want[t * H + h] += rw[t * K + j] * bf16_round(y);
      }
    }
  DeviceBuffer<float> d_logits(logits);
  DeviceBuffer<__nv_bfloat16> d_hidden(hidden), d_w13(w13), d_w2(w2), out(T * H);
  DeviceBuffer<int32_t> d_l2p(l2p), d_cnt(cnt);
  mc::MoeShape shape;
  shape.num_tokens = T;
  shape.hidden = H;
  shape.ffn = F;
  shape.top_k = K;
  shape.num_experts = E;
  shape.num_slots = S;
  const size_t ws_bytes = mc::moe_forward_workspace_bytes(shape);
  DeviceBuffer<char> ws(ws_bytes);
  const mc::PlacementView pv{d_l2p.ptr, d_cnt.ptr, 2};
  cudaStream_t st;
  MOEBAL_CHECK_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  auto layer = [&] {
    mc::moe_forward_bf16_from_logits(d_hidden.ptr, d_logits.ptr, mc::LogitsDtype::kFloat32, p, nullptr, d_w13.ptr,
                                     d_w2.ptr, shape, pv, out.ptr, ws.ptr, ws_bytes, st);
  };
  auto check = [&](const char* what) {
    const auto o = out.host();
    double err = 0, ref = 0;
    for (int64_t i = 0; i < T * H; ++i) {
      const float g = __bfloat162float(o[i]);
      ASSERT_FALSE(std::isnan(g)) << what << " at " << i;
      err += (g - want[i]) * (g - want[i]);
      ref += want[i] * want[i];
    }
    EXPECT_LT(std::sqrt(err / ref), 1e-2) << what;
  };
  out.poison();
  layer();
  MOEBAL_CHECK_CUDA(cudaStreamSynchronize(st));
  check("eager");
  const CapturedGraph graph(st, layer);
  for (int rep = 0; rep < 2; ++rep) {
    out.poison();
    graph.launch(st);
    MOEBAL_CHECK_CUDA(cudaStreamSynchronize(st));
    check("graph replay");
  }
  cudaStreamDestroy(st);
}

TEST_F(CudaSuite, MoeForwardRejectsBadShapes) {
  mc::MoeShape shape;
  shape.num_tokens = 4;
  shape.hidden = 12;  // not a multiple of 8
  shape.ffn = 16;
  shape.top_k = 2;
  shape.num_experts = shape.num_slots = 4;
  EXPECT_THROW(mc::moe_forward_workspace_bytes(shape), moebal::ValueError);
  shape.hidden = 16;
  EXPECT_THROW(mc::moe_forward_bf16(nullptr, nullptr, nullptr, nullptr, nullptr, shape, {}, nullptr, nullptr, 0, nullptr),
               moebal::ValueError);  // workspace too small
}

}  // namespace
