#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "moebal/core/probe.h"
#include "moebal/cuda/check.h"
#include "moebal/cuda/histogram.h"
#include "moebal/cuda/probe.h"
#include "probe_cases.h"
#include "cuda_test_util.h"

namespace {

using moebal_test::ProbeCase;
using moebal_test::ProbePlanOut;

template <class T>
T* upload(const std::vector<T>& v, cudaStream_t s) {
  T* d = nullptr;
  MOEBAL_CHECK_CUDA(cudaMalloc(&d, sizeof(T) * (v.empty() ? 1 : v.size())));
  if (!v.empty()) MOEBAL_CHECK_CUDA(cudaMemcpyAsync(d, v.data(), sizeof(T) * v.size(), cudaMemcpyHostToDevice, s));
  return d;
}

template <class T>
T* poisoned(size_t n, cudaStream_t s) {
  T* d = nullptr;
  MOEBAL_CHECK_CUDA(cudaMalloc(&d, sizeof(T) * (n ? n : 1)));
  MOEBAL_CHECK_CUDA(cudaMemsetAsync(d, 0x5b, sizeof(T) * (n ? n : 1), s));
  return d;
}

template <class T>
void download(std::vector<T>& h, const T* d, cudaStream_t s) {
  if (!h.empty()) MOEBAL_CHECK_CUDA(cudaMemcpyAsync(h.data(), d, sizeof(T) * h.size(), cudaMemcpyDeviceToHost, s));
}

// Runs the CUDA planner on a case; `graph` captures the launch into a CUDA graph and replays it;
// `no_quota` passes a null quota (the plan alone: one kernel instead of two), and the quota comes
// back all -7 as the CPU's ProbePlanOut starts.
ProbePlanOut run_gpu(const ProbeCase& c, bool graph = false, bool no_quota = false) {
  cudaStream_t s;
  MOEBAL_CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  moebal::core::ProbeInputs in{upload(c.counts, s), upload(c.phy2log, s), upload(c.fixed_us, s),
                               upload(c.us_per_token, s), upload(c.window_us, s)};
  ProbePlanOut h(c);
  moebal::core::ProbeOutputs out{poisoned<int32_t>(h.quota.size(), s), poisoned<int32_t>(h.replica_expert.size(), s),
                                 poisoned<int32_t>(h.replica_src.size(), s), poisoned<double>(h.rank_time_us.size(), s),
                                 poisoned<int64_t>(h.rank_tokens.size(), s), poisoned<int32_t>(h.stats.size(), s)};
  const size_t wsb = moebal::cuda::probe_plan_workspace_bytes(c.cfg, c.L);
  void* ws = nullptr;
  if (wsb) MOEBAL_CHECK_CUDA(cudaMalloc(&ws, wsb));
  if (no_quota) {
    cudaFree(out.quota);
    out.quota = nullptr;
  }
  if (graph) {
    moebal::cuda::probe_plan(c.cfg, c.L, in, out, ws, wsb, s);  // sets the smem attribute
    if (out.quota) MOEBAL_CHECK_CUDA(cudaMemsetAsync(out.quota, 0x5b, sizeof(int32_t) * h.quota.size(), s));
    const moebal_test::CapturedGraph g(s, [&] { moebal::cuda::probe_plan(c.cfg, c.L, in, out, ws, wsb, s); });
    g.launch(s);
    MOEBAL_CHECK_CUDA(cudaStreamSynchronize(s));
  } else {
    moebal::cuda::probe_plan(c.cfg, c.L, in, out, ws, wsb, s);
  }
  if (out.quota) download(h.quota, out.quota, s);
  download(h.replica_expert, out.replica_expert, s);
  download(h.replica_src, out.replica_src, s);
  download(h.rank_time_us, out.rank_time_us, s);
  download(h.rank_tokens, out.rank_tokens, s);
  download(h.stats, out.stats, s);
  MOEBAL_CHECK_CUDA(cudaStreamSynchronize(s));
  for (const void* p : {static_cast<const void*>(in.counts), static_cast<const void*>(in.phy2log),
                        static_cast<const void*>(in.fixed_us), static_cast<const void*>(in.us_per_token),
                        static_cast<const void*>(in.window_us), static_cast<const void*>(out.quota),
                        static_cast<const void*>(out.replica_expert), static_cast<const void*>(out.replica_src),
                        static_cast<const void*>(out.rank_time_us), static_cast<const void*>(out.rank_tokens),
                        static_cast<const void*>(out.stats), static_cast<const void*>(ws)})
    cudaFree(const_cast<void*>(p));
  cudaStreamDestroy(s);
  return h;
}

ProbePlanOut run_cpu(const ProbeCase& c) {
  ProbePlanOut o(c);
  std::vector<unsigned char> ws(moebal::core::probe_workspace_bytes(c.cfg));
  moebal::core::probe_plan(c.cfg, c.L, c.inputs(), o.outputs(), ws.data(), ws.size());
  return o;
}

void expect_same(const ProbePlanOut& g, const ProbePlanOut& c, uint32_t seed) {
  ASSERT_EQ(g.stats, c.stats) << "seed " << seed;
  ASSERT_EQ(g.replica_expert, c.replica_expert) << "seed " << seed;
  ASSERT_EQ(g.replica_src, c.replica_src) << "seed " << seed;
  ASSERT_EQ(g.rank_tokens, c.rank_tokens) << "seed " << seed;
  ASSERT_EQ(g.rank_time_us, c.rank_time_us) << "seed " << seed;  // bit for bit
  ASSERT_EQ(g.quota, c.quota) << "seed " << seed;
}

class ProbeCuda : public ::testing::TestWithParam<std::tuple<int, int, int, int, int>> {
 protected:
  void SetUp() override {
    if (moebal::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(ProbeCuda, SamePlanAsCpu) {
  const auto [R, E, copies, rpn, L] = GetParam();
  const int cases = R * E > 4096 ? 6 : 25;
  for (int i = 0; i < cases; ++i) {
    const uint32_t seed = static_cast<uint32_t>(1000 + i * 104729 + R * 7 + E);
    const ProbeCase c = moebal_test::make_probe_case(seed, R, E, L, copies, rpn, 1 + seed % 4, 1 + seed % 24);
    const ProbePlanOut cpu = run_cpu(c);
    const ProbePlanOut gpu = run_gpu(c);
    expect_same(gpu, cpu, seed);
    if (HasFatalFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, ProbeCuda,
                         ::testing::Values(std::make_tuple(1, 4, 0, 0, 2), std::make_tuple(2, 2, 0, 0, 3),
                                           std::make_tuple(3, 17, 0, 0, 5), std::make_tuple(3, 17, 2, 0, 4),
                                           std::make_tuple(5, 33, 3, 1, 3), std::make_tuple(8, 61, 1, 4, 7),
                                           std::make_tuple(8, 256, 0, 0, 58), std::make_tuple(16, 128, 1, 8, 9),
                                           std::make_tuple(32, 256, 1, 8, 58), std::make_tuple(64, 256, 0, 8, 3),
                                           // R * E beyond shared memory: state in the global workspace
                                           std::make_tuple(64, 1000, 0, 8, 2)));

// One layer per launch, the online planner's case (the quota grid then has the most blocks per
// layer), with and without the dense quota, and with k_max = 0 (the initial assignment only).
TEST(ProbeCudaSingleLayer, SamePlanAsCpu) {
  if (moebal::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  for (const int R : {8, 32, 64}) {
    for (const int copies : {0, 1}) {
      for (int i = 0; i < 4; ++i) {
        const uint32_t seed = static_cast<uint32_t>(77 + 1000 * R + 100 * copies + i);
        ProbeCase c = moebal_test::make_probe_case(seed, R, 256, 1, copies, 8, 3, i == 3 ? 0 : 16);
        const ProbePlanOut cpu = run_cpu(c);
        expect_same(run_gpu(c), cpu, seed);
        if (HasFatalFailure()) return;
        ProbePlanOut lean = run_gpu(c, /*graph=*/i == 1, /*no_quota=*/true);
        ASSERT_TRUE(std::all_of(lean.quota.begin(), lean.quota.end(), [](int32_t q) { return q == -7; }));
        lean.quota = cpu.quota;
        expect_same(lean, cpu, seed);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST(ProbeCudaGraph, CapturedLaunchGivesTheSamePlan) {
  if (moebal::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const ProbeCase c = moebal_test::make_probe_case(99, 8, 256, 58, 0, 0);
  expect_same(run_gpu(c, /*graph=*/true), run_cpu(c), 99);
}

TEST(ProbeCudaInput, BadValuesSetStatusBits) {
  if (moebal::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  ProbeCase c = moebal_test::make_probe_case(5, 3, 17, 5, 1, 0);
  c.counts[1 * 3 * 17 + 4] = -3;                                  // layer 1
  c.phy2log[2 * c.cfg.num_slots + 1] = 17;                        // layer 2
  c.window_us[3 * 3 + 2] = std::numeric_limits<double>::quiet_NaN();  // layer 3
  const ProbePlanOut g = run_gpu(c);
  const int n = moebal::core::kProbeNumStats, st = moebal::core::kProbeStatStatus;
  EXPECT_EQ(g.stats[0 * n + st], 0);
  EXPECT_EQ(g.stats[1 * n + st], moebal::core::kProbeBadCounts);
  EXPECT_EQ(g.stats[2 * n + st], moebal::core::kProbeBadPlacement);
  EXPECT_EQ(g.stats[3 * n + st], moebal::core::kProbeBadWindow);
  EXPECT_EQ(g.stats[4 * n + st], 0);
  const size_t per = static_cast<size_t>(3) * 17 * 3;
  for (size_t i = per; i < 2 * per; ++i) ASSERT_EQ(g.quota[i], 0);  // the bad layer's quota is zeroed
  ProbeCase m = c;
  m.counts = moebal_test::make_probe_case(5, 3, 17, 5, 1, 0).counts;
  m.phy2log = moebal_test::make_probe_case(5, 3, 17, 5, 1, 0).phy2log;
  m.window_us = moebal_test::make_probe_case(5, 3, 17, 5, 1, 0).window_us;
  m.fixed_us[1] = std::numeric_limits<double>::infinity();
  const ProbePlanOut gm = run_gpu(m);
  for (int l = 0; l < m.L; ++l) EXPECT_EQ(gm.stats[l * n + st], moebal::core::kProbeBadModel);
}

TEST(ProbeCudaInput, ConfigErrorsThrowBeforeLaunch) {
  if (moebal::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  ProbeCase c = moebal_test::make_probe_case(5, 3, 17, 1, 0, 0);
  c.cfg.max_extra_slots = -1;
  EXPECT_THROW(moebal::cuda::probe_plan(c.cfg, 1, c.inputs(), {}, nullptr, 0, nullptr), moebal::ValueError);
  c.cfg.max_extra_slots = 3;
  // stats is required on the GPU
  EXPECT_THROW(moebal::cuda::probe_plan(c.cfg, 1, c.inputs(), {}, nullptr, 0, nullptr), moebal::ValueError);
  // the workspace (the move lists the quota grid reads) is required and checked against its size
  const size_t wsb = moebal::cuda::probe_plan_workspace_bytes(c.cfg, 2);
  EXPECT_GT(wsb, moebal::cuda::probe_plan_workspace_bytes(c.cfg, 1));
  moebal::core::ProbeOutputs out{};
  int32_t stats[2 * moebal::core::kProbeNumStats];
  out.stats = stats;  // never dereferenced: the checks throw before the launch
  EXPECT_THROW(moebal::cuda::probe_plan(c.cfg, 2, c.inputs(), out, nullptr, wsb, nullptr), moebal::ValueError);
  alignas(16) static unsigned char small[16];
  EXPECT_THROW(moebal::cuda::probe_plan(c.cfg, 2, c.inputs(), out, small, wsb - 1, nullptr), moebal::ValueError);
}

}  // namespace
