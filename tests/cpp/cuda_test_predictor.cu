// The predictor kernels' C++ entry points (moebal/cuda/predictor.h): argument checks, which throw
// before any CUDA call (so they run without a GPU too), and SiLU on the device against the host
// formula, on column slices of a wider buffer and on unaligned rows (the scalar path).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <cuda_bf16.h>

#include "cuda_test_util.h"
#include "moebal/core/error.h"
#include "moebal/cuda/check.h"
#include "moebal/cuda/histogram.h"  // device_count
#include "moebal/cuda/predictor.h"

namespace {

using moebal_test::DeviceBuffer;

TEST(PredictorArgs, SiluRejectsBadSizesBeforeTouchingTheDevice) {
  // null pointers: nothing may be dereferenced or launched before the checks
  float* none = nullptr;
  const int64_t big = int64_t{1} << 31;  // a row index the kernel keeps in 32 bits
  EXPECT_THROW(moebal::cuda::probe_silu(none, big, 1, big, none, nullptr), moebal::ValueError);
  EXPECT_THROW(moebal::cuda::probe_silu(none, 8, -1, 8, none, nullptr), moebal::ValueError);
  EXPECT_THROW(moebal::cuda::probe_silu(none, 8, 1, -8, none, nullptr), moebal::ValueError);
  EXPECT_THROW(moebal::cuda::probe_silu(none, 7, 1, 8, none, nullptr), moebal::ValueError);  // ld_x < dim
  const __nv_bfloat16* bnone = nullptr;
  EXPECT_THROW(moebal::cuda::probe_silu(bnone, big, 1, big, nullptr, nullptr), moebal::ValueError);
  // nothing to do: returns without a launch
  EXPECT_NO_THROW(moebal::cuda::probe_silu(none, 8, 0, 8, none, nullptr));
  EXPECT_NO_THROW(moebal::cuda::probe_silu(none, 0, 5, 0, none, nullptr));
}

TEST(PredictorArgs, TopkRejectsBadSizesBeforeTouchingTheDevice) {
  const float* g = nullptr;
  float* f = nullptr;
  int32_t* i = nullptr;
  using moebal::cuda::kProbeMaxExperts;
  using moebal::cuda::kProbeMaxTopK;
  EXPECT_THROW(moebal::cuda::probe_topk_histogram(g, 8, g, g, 4, 0, 1, f, i, f, i, nullptr), moebal::ValueError);
  EXPECT_THROW(moebal::cuda::probe_topk_histogram(g, kProbeMaxExperts + 1, g, g, 4, kProbeMaxExperts + 1, 1, f, i,
                                                  f, i, nullptr),
               moebal::ValueError);
  EXPECT_THROW(moebal::cuda::probe_topk_histogram(g, 8, g, g, 4, 8, 0, f, i, f, i, nullptr), moebal::ValueError);
  EXPECT_THROW(moebal::cuda::probe_topk_histogram(g, 8, g, g, 4, 8, 9, f, i, f, i, nullptr), moebal::ValueError);
  EXPECT_THROW(moebal::cuda::probe_topk_histogram(g, 64, g, g, 4, 64, kProbeMaxTopK + 1, f, i, f, i, nullptr),
               moebal::ValueError);
  EXPECT_THROW(moebal::cuda::probe_topk_histogram(g, 8, g, g, -1, 8, 2, f, i, f, i, nullptr), moebal::ValueError);
  EXPECT_THROW(moebal::cuda::probe_topk_histogram(g, 7, g, g, 4, 8, 2, f, i, f, i, nullptr), moebal::ValueError);
}

float host_silu(float v) { return v / (1.0f + std::exp(-v)); }

class PredictorSiluCuda : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t>> {
 protected:
  void SetUp() override {
    if (moebal::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

// (tokens, dim, ld_x): a column slice (ld_x > dim) of the GEMM output, odd sizes (scalar path).
TEST_P(PredictorSiluCuda, MatchesTheHostFormula) {
  const auto [T, dim, ld] = GetParam();
  std::mt19937 rng(static_cast<unsigned>(T * 7 + dim));
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> x(static_cast<size_t>(T * ld));
  for (auto& v : x) v = nd(rng);
  std::vector<__nv_bfloat16> xb(x.size());
  for (size_t j = 0; j < x.size(); ++j) xb[j] = __float2bfloat16(x[j]);
  DeviceBuffer<float> dx(x), dout(static_cast<size_t>(T * dim));
  DeviceBuffer<__nv_bfloat16> dxb(xb), doutb(static_cast<size_t>(T * dim));
  dout.poison();
  doutb.poison();
  moebal::cuda::probe_silu(dx.ptr, ld, T, dim, dout.ptr, nullptr);
  moebal::cuda::probe_silu(dxb.ptr, ld, T, dim, doutb.ptr, nullptr);
  MOEBAL_CHECK_CUDA(cudaDeviceSynchronize());
  const std::vector<float> got = dout.host();
  const std::vector<__nv_bfloat16> gotb = doutb.host();
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t d = 0; d < dim; ++d) {
      const float want = host_silu(x[t * ld + d]);
      ASSERT_NEAR(got[t * dim + d], want, 1e-5f * (1.0f + std::fabs(want))) << "t " << t << " d " << d;
      const float wantb = host_silu(__bfloat162float(xb[t * ld + d]));
      ASSERT_NEAR(__bfloat162float(gotb[t * dim + d]), wantb, 1e-2f * (1.0f + std::fabs(wantb)))
          << "bf16 t " << t << " d " << d;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, PredictorSiluCuda,
                         ::testing::Values(std::make_tuple(int64_t{1}, int64_t{8}, int64_t{8}),
                                           std::make_tuple(int64_t{3}, int64_t{256}, int64_t{384}),
                                           std::make_tuple(int64_t{17}, int64_t{1000}, int64_t{1128}),
                                           std::make_tuple(int64_t{5}, int64_t{13}, int64_t{29}),
                                           std::make_tuple(int64_t{1030}, int64_t{64}, int64_t{192})));

}  // namespace
