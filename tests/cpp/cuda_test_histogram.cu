#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "moebal/cuda/check.h"
#include "moebal/cuda/histogram.h"

namespace {

class ExpertHistogramCuda : public ::testing::TestWithParam<std::pair<int64_t, int32_t>> {
 protected:
  void SetUp() override {
    if (moebal::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(ExpertHistogramCuda, MatchesHostCount) {
  const auto [n, experts] = GetParam();
  std::mt19937 rng(static_cast<unsigned>(n * 31 + experts));
  // Zipf-ish skew plus padding (-1) and out-of-range ids, which the kernel must skip.
  std::vector<int32_t> ids(n);
  std::vector<int32_t> want(experts, 0);
  for (auto& v : ids) {
    const double u = std::uniform_real_distribution<double>(0, 1)(rng);
    v = static_cast<int32_t>(experts * u * u * u);
    if (rng() % 97 == 0) v = -1;
    if (rng() % 101 == 0) v = experts + 3;
    if (v >= 0 && v < experts) ++want[v];
  }
  int32_t *d_ids = nullptr, *d_counts = nullptr;
  cudaStream_t stream;
  MOEBAL_CHECK_CUDA(cudaStreamCreate(&stream));
  MOEBAL_CHECK_CUDA(cudaMalloc(&d_ids, sizeof(int32_t) * (n ? n : 1)));
  MOEBAL_CHECK_CUDA(cudaMalloc(&d_counts, sizeof(int32_t) * experts));
  MOEBAL_CHECK_CUDA(cudaMemsetAsync(d_counts, 0x7f, sizeof(int32_t) * experts, stream));  // poison
  MOEBAL_CHECK_CUDA(cudaMemcpyAsync(d_ids, ids.data(), sizeof(int32_t) * n, cudaMemcpyHostToDevice, stream));
  moebal::cuda::expert_histogram(d_ids, n, experts, d_counts, stream);
  std::vector<int32_t> got(experts);
  MOEBAL_CHECK_CUDA(cudaMemcpyAsync(got.data(), d_counts, sizeof(int32_t) * experts, cudaMemcpyDeviceToHost, stream));
  MOEBAL_CHECK_CUDA(cudaStreamSynchronize(stream));
  EXPECT_EQ(got, want);
  cudaFree(d_ids);
  cudaFree(d_counts);
  cudaStreamDestroy(stream);
}

INSTANTIATE_TEST_SUITE_P(Sizes, ExpertHistogramCuda,
                         ::testing::Values(std::pair<int64_t, int32_t>{0, 8}, std::pair<int64_t, int32_t>{1, 8},
                                           std::pair<int64_t, int32_t>{17, 3}, std::pair<int64_t, int32_t>{989, 128},
                                           std::pair<int64_t, int32_t>{65536 * 8 + 5, 256},
                                           std::pair<int64_t, int32_t>{100003, 10000}));

TEST(ExpertHistogramCudaArgs, RejectsBadArguments) {
  EXPECT_THROW(moebal::cuda::expert_histogram(nullptr, 4, 0, nullptr, nullptr), moebal::ValueError);
  EXPECT_THROW(moebal::cuda::expert_histogram(nullptr, -1, 4, nullptr, nullptr), moebal::ValueError);
}

}  // namespace
