#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "moebal/core/error.h"
#include "moebal/core/metrics.h"
#include "moebal/core/placement.h"
#include "moebal/core/topology.h"
#include "moebal/core/trace.h"
#include "test_util.h"

using namespace moebal::core;


TEST(LoadMatrix, ValidatesShapeAndValues) {
  LoadMatrix ok(2, 3, {1, 2, 3, 4, 5, 6});
  EXPECT_DOUBLE_EQ(ok.at(1, 2), 6);
  EXPECT_VALUE_ERROR(LoadMatrix(2, 3, {1, 2, 3}), "expected 2 x 3");
  EXPECT_VALUE_ERROR(LoadMatrix(1, 2, {1, -1}), "negative");
  EXPECT_VALUE_ERROR(LoadMatrix(1, 2, {1, std::nan("")}), "not finite");
  EXPECT_VALUE_ERROR(LoadMatrix(1, 2, {1, std::numeric_limits<double>::infinity()}), "not finite");
  EXPECT_VALUE_ERROR(LoadMatrix(0, 2, {}), "num_layers");
}

TEST(LoadMatrix, SumStepLoads) {
  // 2 steps, 1 layer, 3 experts
  LoadMatrix m = sum_step_loads(2, 1, 3, {1, 0, 2, 3, 1, 0});
  EXPECT_EQ(m.loads, (std::vector<double>{4, 1, 2}));
  EXPECT_VALUE_ERROR(sum_step_loads(2, 1, 3, {1, 0, 2}), "expected shape");
  EXPECT_VALUE_ERROR(sum_step_loads(1, 1, 2, {1, -3}), "finite and >= 0");
}

static RoutingTrace small_trace() {
  // 2 layers, 4 tokens, top-2, 4 experts; tokens 0,1 in step 0 on rank 0; tokens 2,3 step 1 rank 1.
  std::vector<int32_t> ids = {0, 1, 0, 2, 1, 2, 3, 0,   // layer 0
                              3, 2, 3, 1, 3, 0, 2, 1};  // layer 1
  return RoutingTrace(2, 4, 2, 4, ids, {}, {0, 0, 1, 1}, {0, 0, 1, 1});
}

TEST(RoutingTrace, LoadsCountsEveryChoice) {
  RoutingTrace t = small_trace();
  EXPECT_EQ(t.loads().loads, (std::vector<double>{3, 2, 2, 1, 1, 2, 2, 3}));
  EXPECT_EQ(t.loads(1, 2).loads, (std::vector<double>{1, 1, 1, 1, 1, 1, 1, 1}));
  EXPECT_EQ(t.num_steps(), 2);
  EXPECT_EQ(t.num_ranks(), 2);
  auto sl = t.step_loads();
  ASSERT_EQ(sl.size(), 2u * 2 * 4);
  double total = 0;
  for (double v : sl) total += v;
  EXPECT_DOUBLE_EQ(total, 2 * 4 * 2);
}

TEST(RoutingTrace, CoactivationIsSymmetricWithLoadsOnDiagonal) {
  RoutingTrace t = small_trace();
  auto c = t.coactivation(0);
  const auto loads = t.loads();
  for (int i = 0; i < 4; ++i) {
    EXPECT_DOUBLE_EQ(c[i * 4 + i], loads.at(0, i));
    for (int j = 0; j < 4; ++j) EXPECT_DOUBLE_EQ(c[i * 4 + j], c[j * 4 + i]);
  }
  EXPECT_DOUBLE_EQ(c[0 * 4 + 1], 1);  // token 0
  EXPECT_DOUBLE_EQ(c[0 * 4 + 3], 1);  // token 3
  EXPECT_DOUBLE_EQ(c[1 * 4 + 3], 0);
  EXPECT_VALUE_ERROR(t.coactivation(2), "layer 2");
}

TEST(RoutingTrace, RankExpertCounts) {
  RoutingTrace t = small_trace();
  auto c = t.rank_expert_counts(1);
  EXPECT_EQ(c, (std::vector<double>{0, 1, 1, 2, 1, 1, 1, 1}));
}

TEST(RoutingTrace, RejectsBadInput) {
  EXPECT_VALUE_ERROR(RoutingTrace(1, 2, 2, 4, {0, 1, 2}), "topk_ids must have shape");
  EXPECT_VALUE_ERROR(RoutingTrace(1, 1, 2, 4, {0, 4}), "outside [0, 4)");
  EXPECT_VALUE_ERROR(RoutingTrace(1, 1, 2, 4, {-1, 2}), "outside [0, 4)");
  EXPECT_VALUE_ERROR(RoutingTrace(1, 1, 2, 4, {2, 2}), "repeats expert 2");
  EXPECT_VALUE_ERROR(RoutingTrace(1, 1, 5, 4, {0, 1, 2, 3, 0}), "top_k");
  EXPECT_VALUE_ERROR(RoutingTrace(1, 1, 2, 4, {0, 1}, {0.5f}), "topk_weights");
  EXPECT_VALUE_ERROR(RoutingTrace(1, 1, 2, 4, {0, 1}, {0.5f, std::nanf("")}), "topk_weights[1]");
  EXPECT_VALUE_ERROR(RoutingTrace(1, 2, 1, 4, {0, 1}, {}, {0, -1}), "src_rank of token 1");
  EXPECT_VALUE_ERROR(RoutingTrace(1, 2, 1, 4, {0, 1}, {}, {}, {1, 0}), "non-decreasing");
  EXPECT_VALUE_ERROR(RoutingTrace(1, 2, 1, 4, {0, 1}, {}, {}, {0}), "step must be");
}

TEST(Placement, ContiguousLayout) {
  Placement p = Placement::contiguous(2, 8, 4, 2);
  EXPECT_EQ(p.slots_per_gpu(), 2);
  EXPECT_EQ(p.gpu_of_slot(5), 2);
  EXPECT_EQ(p.node_of_gpu(3), 1);
  EXPECT_EQ(p.max_copies, 1);
  for (int e = 0; e < 8; ++e) EXPECT_EQ(p.slot_of(1, e, 0), e);
}

TEST(Placement, FromPhy2LogBuildsConsistentTables) {
  // 1 layer, 3 experts, 6 slots on 3 GPUs: expert 0 has 3 copies, 1 has 2, 2 has 1.
  Placement p = Placement::from_phy2log(1, 3, 6, 3, 1, {0, 1, 0, 2, 1, 0});
  EXPECT_EQ(p.max_copies, 3);
  EXPECT_EQ(p.logcnt, (std::vector<int32_t>{3, 2, 1}));
  EXPECT_EQ(p.log2phy, (std::vector<int32_t>{0, 2, 5, 1, 4, -1, 3, -1, -1}));
  Placement padded = Placement::from_phy2log(1, 3, 6, 3, 1, {0, 1, 0, 2, 1, 0}, 4);
  EXPECT_EQ(padded.max_copies, 4);
  EXPECT_VALUE_ERROR(Placement::from_phy2log(1, 3, 6, 3, 1, {0, 1, 0, 2, 1, 0}, 2), "max_copies");
}

TEST(Placement, RejectsBadLayouts) {
  EXPECT_VALUE_ERROR(Placement::from_phy2log(1, 4, 6, 4, 1, {0, 1, 2, 3, 0, 1}), "divisible by num_gpus");
  EXPECT_VALUE_ERROR(Placement::from_phy2log(1, 4, 6, 3, 2, {0, 1, 2, 3, 0, 1}), "divisible by num_nodes");
  EXPECT_VALUE_ERROR(Placement::from_phy2log(1, 4, 2, 2, 1, {0, 1}), "num_slots (2) must be >= num_experts");
  EXPECT_VALUE_ERROR(Placement::from_phy2log(1, 4, 4, 2, 1, {0, 1, 2, 7}), "outside [0, 4)");
  EXPECT_VALUE_ERROR(Placement::from_phy2log(1, 4, 4, 2, 1, {0, 1, 2, 2}), "logcnt at layer 0, expert 3");
  EXPECT_VALUE_ERROR(Placement::from_phy2log(1, 4, 4, 2, 1, {0, 1, 2}), "phy2log must have shape");
}

TEST(Placement, ValidateCatchesInconsistentTables) {
  Placement p = Placement::from_phy2log(1, 2, 4, 2, 1, {0, 1, 0, 1});
  Placement bad = p;
  std::swap(bad.log2phy[0], bad.log2phy[2]);  // expert 0 now claims a slot of expert 1
  EXPECT_VALUE_ERROR(bad.validate(), "phy2log says");
  bad = p;
  bad.logcnt[0] = 1;
  EXPECT_VALUE_ERROR(bad.validate(), "-1 padding");
  bad = p;
  bad.log2phy[1] = bad.log2phy[0];
  EXPECT_THROW(bad.validate(), moebal::ValueError);
}

TEST(ExpertShape, SizesAndValidation) {
  ExpertShape s(4096, 14336, 2);
  EXPECT_EQ(s.weight_bytes(), 3LL * 4096 * 14336 * 2);
  EXPECT_EQ(s.token_bytes(), 8192);
  EXPECT_DOUBLE_EQ(s.flops(10), 6.0 * 4096 * 14336 * 10);
  EXPECT_VALUE_ERROR(ExpertShape(0, 10, 2), "hidden");
  EXPECT_VALUE_ERROR(ExpertShape(10, 10, 3), "dtype_bytes");
}

TEST(PerfModel, InterpolatesAndExtrapolates) {
  PerfModel m({1, 10, 100}, {5, 10, 40});
  EXPECT_DOUBLE_EQ(m.time_us(0), 0);
  EXPECT_DOUBLE_EQ(m.time_us(1), 5);
  EXPECT_DOUBLE_EQ(m.time_us(5.5), 7.5);
  EXPECT_DOUBLE_EQ(m.time_us(55), 25);
  EXPECT_DOUBLE_EQ(m.time_us(200), 40 + 100 * (30.0 / 90.0));
  EXPECT_DOUBLE_EQ(m.scaled(2).time_us(10), 20);
  PerfModel lin = PerfModel::linear(3, 0.5);
  EXPECT_DOUBLE_EQ(lin.time_us(0), 0);
  EXPECT_DOUBLE_EQ(lin.time_us(10), 8);
  EXPECT_VALUE_ERROR(PerfModel({1, 1}, {1, 2}), "strictly increase");
  EXPECT_VALUE_ERROR(PerfModel({1, 2}, {1, -2}), "finite and >= 0");
  EXPECT_VALUE_ERROR(PerfModel({1, 2}, {1}), "time values");
  EXPECT_VALUE_ERROR(m.scaled(0), "scale factor");
}

class PerfModelFit : public ::testing::TestWithParam<int> {};

TEST_P(PerfModelFit, RecoversPiecewiseLinearFromNoisyMeasurements) {
  // Truth: a GEMM-like curve, flat until 64 tokens (weight-bound), then linear.
  auto truth = [](double n) { return n <= 64 ? 20.0 : 20.0 + 0.25 * (n - 64); };
  std::mt19937 rng(GetParam());
  std::normal_distribution<double> noise(0, 0.2);
  std::vector<double> n, t;
  for (int rep = 0; rep < 5; ++rep)
    for (double x : {1., 8., 16., 32., 64., 128., 256., 512., 1024., 2048.}) {
      n.push_back(x);
      t.push_back(truth(x) + noise(rng));
    }
  PerfModel m = PerfModel::fit(n, t, 10);
  for (double x : {4., 48., 100., 700., 2048., 4096.})
    EXPECT_NEAR(m.time_us(x), truth(x), 0.02 * truth(x) + 0.5) << "tokens=" << x;
}

INSTANTIATE_TEST_SUITE_P(Seeds, PerfModelFit, ::testing::Values(1, 7, 19));

TEST(PerfModel, FitRejectsBadSamples) {
  EXPECT_VALUE_ERROR(PerfModel::fit({1, 1}, {1, 2}), "distinct");
  EXPECT_VALUE_ERROR(PerfModel::fit({1, 2}, {1}), "times");
  EXPECT_VALUE_ERROR(PerfModel::fit({1, -2}, {1, 2}), "tokens");
  EXPECT_VALUE_ERROR(PerfModel::fit({1, 2}, {1, std::nan("")}), "time");
}

TEST(Topology, BandwidthAndValidation) {
  Topology t(2, 4, 400, 50, 55);
  EXPECT_EQ(t.num_gpus(), 8);
  EXPECT_DOUBLE_EQ(t.bandwidth_GBps(0, 3), 400);
  EXPECT_DOUBLE_EQ(t.bandwidth_GBps(0, 4), 50);
  EXPECT_DOUBLE_EQ(t.transfer_us(50e3, 1, 5), 1.0);
  EXPECT_DOUBLE_EQ(t.transfer_us(1e9, 2, 2), 0.0);
  EXPECT_VALUE_ERROR(t.bandwidth_GBps(0, 8), "outside");
  EXPECT_VALUE_ERROR(Topology(0, 4), "num_nodes");
  EXPECT_VALUE_ERROR(Topology(1, 4, -1), "nvlink_GBps");
  EXPECT_VALUE_ERROR(Topology(1, 2, 400, 50, 55, {PerfModel::linear(1, 1)}), "gpu_models");
}

TEST(Metrics, GpuLoadsSplitOverCopies) {
  LoadMatrix loads(1, 3, {60, 30, 10});
  // expert 0 on slots 0 and 2 (GPUs 0 and 1), expert 1 slot 1 (GPU 0), expert 2 slot 3 (GPU 1)
  Placement p = Placement::from_phy2log(1, 3, 4, 2, 1, {0, 1, 0, 2});
  auto g = gpu_loads(loads, p);
  EXPECT_EQ(g, (std::vector<double>{60, 40}));
  auto ir = layer_imbalance(loads, p);
  EXPECT_DOUBLE_EQ(ir[0], 60.0 / 50.0);
  double zero[3] = {0, 0, 0};
  EXPECT_DOUBLE_EQ(imbalance_ratio(zero, 3), 1.0);
  EXPECT_VALUE_ERROR(gpu_loads(LoadMatrix(1, 4, {1, 1, 1, 1}), p), "experts");
}
