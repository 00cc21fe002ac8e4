#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "assign_test_util.h"
#include "moebal/core/assign.h"
#include "moebal/cuda/assign.h"
#include "moebal/cuda/check.h"
#include "moebal/cuda/histogram.h"
#include "cuda_test_util.h"

namespace {

using moebal::core::AssignPolicy;

template <class T>
T* to_device(const std::vector<T>& v, cudaStream_t s) {
  T* d = nullptr;
  MOEBAL_CHECK_CUDA(cudaMalloc(&d, sizeof(T) * (v.empty() ? 1 : v.size())));
  if (!v.empty()) MOEBAL_CHECK_CUDA(cudaMemcpyAsync(d, v.data(), sizeof(T) * v.size(), cudaMemcpyHostToDevice, s));
  return d;
}

struct DeviceCase {
  int32_t *ids, *src, *log2phy, *logcnt, *quota, *w, *out;
  void* ws = nullptr;
  size_t ws_bytes = 0;
  moebal::core::ReplicaTable table;
};

DeviceCase upload(const moebal::test::AssignCase& c, AssignPolicy p, cudaStream_t s) {
  DeviceCase d;
  d.ids = to_device(c.ids, s);
  d.src = to_device(c.src, s);
  d.log2phy = to_device(c.placement.log2phy, s);
  d.logcnt = to_device(c.placement.logcnt, s);
  d.quota = to_device(c.quota, s);
  d.w = to_device(c.weights, s);
  d.out = to_device(std::vector<int32_t>(c.ids.size(), 12345), s);
  d.table = moebal::core::replica_table(c.placement, 0);
  d.table.log2phy = d.log2phy;
  d.table.logcnt = d.logcnt;
  d.ws_bytes = moebal::cuda::assign_replicas_workspace_bytes(c.num_tokens, c.top_k, c.placement.num_experts,
                                                             c.placement.num_gpus, c.placement.num_nodes, p);
  if (d.ws_bytes) MOEBAL_CHECK_CUDA(cudaMalloc(&d.ws, d.ws_bytes));
  return d;
}

void release(DeviceCase& d) {
  for (int32_t* p : {d.ids, d.src, d.log2phy, d.logcnt, d.quota, d.w, d.out}) cudaFree(p);
  cudaFree(d.ws);
}

void launch(const moebal::test::AssignCase& c, AssignPolicy p, DeviceCase& d, cudaStream_t s) {
  moebal::cuda::assign_replicas(d.ids, d.src, c.num_tokens, c.top_k, d.table, p, d.quota, d.w, d.out, d.ws,
                                d.ws_bytes, s);
}

std::vector<int32_t> download(const DeviceCase& d, size_t n, cudaStream_t s) {
  std::vector<int32_t> out(n);
  if (n) MOEBAL_CHECK_CUDA(cudaMemcpyAsync(out.data(), d.out, sizeof(int32_t) * n, cudaMemcpyDeviceToHost, s));
  MOEBAL_CHECK_CUDA(cudaStreamSynchronize(s));
  return out;
}

std::vector<int32_t> reference(const moebal::test::AssignCase& c, AssignPolicy p) {
  std::vector<int32_t> out(c.ids.size());
  moebal::core::assign_replicas(c.ids.data(), c.src.data(), c.num_tokens, c.top_k,
                                moebal::core::replica_table(c.placement, 0), p, c.quota.data(), c.weights.data(),
                                out.data());
  return out;
}

// (tokens, top_k, experts, gpus, nodes, extra slots per GPU)
using Shape = std::tuple<int64_t, int32_t, int32_t, int32_t, int32_t, int32_t>;

class AssignCuda : public ::testing::TestWithParam<Shape> {
 protected:
  void SetUp() override {
    if (moebal::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(AssignCuda, MatchesCpuReference) {
  const auto [T, K, E, G, N, extra] = GetParam();
  std::mt19937_64 rng(static_cast<uint64_t>(T * 131 + E * 7 + G));
  const auto c = moebal::test::random_case(rng, T, K, E, G, N, (E + G - 1) / G + extra, 4.0);
  cudaStream_t s;
  MOEBAL_CHECK_CUDA(cudaStreamCreate(&s));
  for (AssignPolicy p : {AssignPolicy::kRoundRobin, AssignPolicy::kHash, AssignPolicy::kLocality, AssignPolicy::kQuota,
                         AssignPolicy::kWeightedLocality}) {
    DeviceCase d = upload(c, p, s);
    launch(c, p, d, s);
    EXPECT_EQ(download(d, c.ids.size(), s), reference(c, p)) << moebal::core::assign_policy_name(p);
    release(d);
  }
  cudaStreamDestroy(s);
}

INSTANTIATE_TEST_SUITE_P(Sizes, AssignCuda,
                         ::testing::Values(Shape{0, 8, 16, 4, 1, 1}, Shape{1, 8, 64, 8, 1, 2}, Shape{3, 2, 8, 4, 2, 1},
                                           Shape{17, 4, 33, 6, 3, 2}, Shape{1000, 8, 256, 32, 4, 1},
                                           Shape{1031, 6, 64, 16, 2, 3}, Shape{8192, 8, 256, 8, 1, 4},
                                           Shape{4099, 1, 7, 7, 7, 1},
                                           // many rank classes for locality/quota: the sort pipeline
                                           Shape{2003, 8, 1024, 16, 4, 1}));

TEST(AssignCudaGraph, CapturedLaunchEqualsReferenceAndInvalidEntriesGiveMinusOne) {
  if (moebal::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  std::mt19937_64 rng(5);
  auto c = moebal::test::random_case(rng, 777, 8, 64, 8, 2, 10);
  // Out-of-range ids and ranks: the CPU rejects them, the GPU gives -1 without a host sync and leaves
  // them out of every class, exactly as padding. So the expectation is the CPU result with those
  // entries turned into padding (they shift the ranks of later entries of their class).
  auto padded = c;
  c.ids[5] = 64;
  c.src[3] = 8;
  padded.ids[5] = -1;
  for (int k = 0; k < 8; ++k) padded.ids[3 * 8 + k] = -1;
  const auto want = reference(padded, AssignPolicy::kWeightedLocality);
  cudaStream_t s;
  MOEBAL_CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  DeviceCase d = upload(c, AssignPolicy::kWeightedLocality, s);
  MOEBAL_CHECK_CUDA(cudaStreamSynchronize(s));
  const moebal_test::CapturedGraph graph(s, [&] { launch(c, AssignPolicy::kWeightedLocality, d, s); },
                                         cudaStreamCaptureModeThreadLocal);
  graph.launch(s);
  EXPECT_EQ(download(d, c.ids.size(), s), want);
  release(d);
  cudaStreamDestroy(s);
}

TEST(AssignCudaArgs, RejectsBadArguments) {
  moebal::core::ReplicaTable t;
  t.num_experts = 4;
  t.max_copies = 1;
  t.num_slots = 4;
  t.num_gpus = 2;
  t.num_nodes = 1;
  EXPECT_THROW(moebal::cuda::assign_replicas_workspace_bytes(-1, 2, 4, 2, 1, AssignPolicy::kLocality), moebal::ValueError);
  EXPECT_THROW(moebal::cuda::assign_replicas_workspace_bytes(4, 0, 4, 2, 1, AssignPolicy::kLocality), moebal::ValueError);
  EXPECT_THROW(moebal::cuda::assign_replicas(nullptr, nullptr, 4, 2, t, AssignPolicy::kQuota, nullptr, nullptr, nullptr,
                                             nullptr, 0, nullptr),
               moebal::ValueError);
  if (moebal::cuda::device_count() == 0) return;  // the workspace query below needs the CUDA runtime
  int32_t* dummy = nullptr;
  MOEBAL_CHECK_CUDA(cudaMalloc(&dummy, 64));
  t.log2phy = t.logcnt = dummy;
  EXPECT_THROW(moebal::cuda::assign_replicas(dummy, dummy, 4, 2, t, AssignPolicy::kLocality, nullptr, nullptr, dummy,
                                             nullptr, 0, nullptr),
               moebal::ValueError);  // workspace too small
  cudaFree(dummy);
}

}  // namespace
