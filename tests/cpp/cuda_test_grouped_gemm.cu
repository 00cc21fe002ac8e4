// Grouped GEMM and expert FFN on the GPU against fp64 host references: every kernel choice the
// device supports (incl. the skinny and gemv decode kernels and the fused gate/up + SiLU FFN path), odd sizes
// (k and n not multiples of the tile), empty / 1 / 3 / 17 / 1000+ row groups, skewed groups, and
// outputs poisoned with NaN so an unwritten row fails.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>

#include "moebal/core/error.h"
#include "moebal/cuda/check.h"
#include "moebal/cuda/grouped_gemm.h"
#include "moebal/cuda/histogram.h"
#include "cuda_test_util.h"

namespace {

using moebal::cuda::GroupedGemmKernel;

template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  explicit DeviceBuffer(size_t n) { MOEBAL_CHECK_CUDA(cudaMalloc(&ptr, sizeof(T) * (n ? n : 1))); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

std::vector<__nv_bfloat16> random_bf16(size_t n, float scale, std::mt19937& rng) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<__nv_bfloat16> v(n);
  for (auto& e : v) e = __float2bfloat16(d(rng));
  return v;
}

std::vector<double> to_double(const std::vector<__nv_bfloat16>& v) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __bfloat162float(v[i]);
  return out;
}

std::vector<int32_t> offsets_of(const std::vector<int>& sizes) {
  std::vector<int32_t> o(sizes.size() + 1, 0);
  for (size_t g = 0; g < sizes.size(); ++g) o[g + 1] = o[g] + sizes[g];
  return o;
}

// out[r, j] = sum_i a[r, i] * w[g, j, i] for the rows r of group g.
std::vector<double> reference(const std::vector<double>& a, const std::vector<double>& w,
                              const std::vector<int32_t>& offs, int64_t n, int64_t k) {
  std::vector<double> out(static_cast<size_t>(offs.back()) * n, 0.0);
  for (size_t g = 0; g + 1 < offs.size(); ++g)
    for (int64_t r = offs[g]; r < offs[g + 1]; ++r)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        const double* wr = &w[(g * n + j) * k];
        for (int64_t i = 0; i < k; ++i) acc += a[r * k + i] * wr[i];
        out[r * n + j] = acc;
      }
  return out;
}

// ||got - want|| / ||want|| over all elements; NaN (an unwritten, poisoned element) -> infinity.
double rel_error(const std::vector<__nv_bfloat16>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = __bfloat162float(got[i]);
    if (!std::isfinite(g)) return INFINITY;
    num += (g - want[i]) * (g - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}

bool kernel_runs_here(GroupedGemmKernel kernel) {
  int device = 0;
  MOEBAL_CHECK_CUDA(cudaGetDevice(&device));
  if (kernel != GroupedGemmKernel::kAuto && kernel != GroupedGemmKernel::kPortable &&
      kernel != GroupedGemmKernel::kSkinny && kernel != GroupedGemmKernel::kGemv)
    return moebal::cuda::hopper_grouped_gemm_available(device);
  int major = 0;
  MOEBAL_CHECK_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return major >= 8;
}

struct GemmCase {
  std::vector<int> sizes;
  int64_t n, k;
  GroupedGemmKernel kernel;
};

std::string case_name(const ::testing::TestParamInfo<GemmCase>& info) {
  int rows = 0;
  for (int s : info.param.sizes) rows += s;
  return std::string(moebal::cuda::to_string(info.param.kernel)) + "_g" + std::to_string(info.param.sizes.size()) +
         "_r" + std::to_string(rows) + "_n" + std::to_string(info.param.n) + "_k" + std::to_string(info.param.k);
}

class GroupedGemmCuda : public ::testing::TestWithParam<GemmCase> {
 protected:
  void SetUp() override {
    if (moebal::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    if (!kernel_runs_here(GetParam().kernel)) GTEST_SKIP() << "kernel not supported on this device";
  }
};

// One grouped-GEMM problem on the device: random x and w (never zeros), the fp64 host reference,
// a stream, and the workspace grouped_gemm_workspace_bytes asks for.
struct DeviceGemm {
  std::vector<int32_t> offs;
  int groups;
  int64_t rows, n, k;
  std::vector<double> want;
  cudaStream_t stream = nullptr;
  DeviceBuffer<__nv_bfloat16> dx, dw, dy;
  DeviceBuffer<int32_t> doff;
  size_t ws_bytes;
  DeviceBuffer<char> ws;

  DeviceGemm(const std::vector<int>& sizes, int64_t n_, int64_t k_, unsigned seed)
      : offs(offsets_of(sizes)), groups(static_cast<int>(sizes.size())), rows(offs.back()), n(n_), k(k_),
        dx(rows * k), dw(groups * n * k), dy(rows * n), doff(offs.size()),
        ws_bytes(moebal::cuda::grouped_gemm_workspace_bytes(groups)), ws(ws_bytes) {
    std::mt19937 rng(seed);
    const auto x = random_bf16(rows * k, 1.0f, rng);
    const auto w = random_bf16(groups * n * k, 1.0f / std::sqrt(static_cast<float>(k)), rng);
    want = reference(to_double(x), to_double(w), offs, n, k);
    MOEBAL_CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    MOEBAL_CHECK_CUDA(cudaMemcpyAsync(dx.ptr, x.data(), x.size() * 2, cudaMemcpyHostToDevice, stream));
    MOEBAL_CHECK_CUDA(cudaMemcpyAsync(dw.ptr, w.data(), w.size() * 2, cudaMemcpyHostToDevice, stream));
    MOEBAL_CHECK_CUDA(cudaMemcpyAsync(doff.ptr, offs.data(), offs.size() * 4, cudaMemcpyHostToDevice, stream));
  }
  ~DeviceGemm() { cudaStreamDestroy(stream); }
  DeviceGemm(const DeviceGemm&) = delete;
  DeviceGemm& operator=(const DeviceGemm&) = delete;

  /// y filled with NaN (0xffff is a bf16 NaN), queued on the stream: an unwritten row then fails.
  void poison() { MOEBAL_CHECK_CUDA(cudaMemsetAsync(dy.ptr, 0xff, rows * n * 2, stream)); }
  void run(GroupedGemmKernel kernel, size_t bytes) {
    moebal::cuda::grouped_gemm_bf16_with(kernel, dx.ptr, dw.ptr, dy.ptr, doff.ptr, groups, rows, n, k, ws.ptr, bytes,
                                         stream);
  }
  void run(GroupedGemmKernel kernel) { run(kernel, ws_bytes); }
  /// Waits for the stream; ||y - reference|| / ||reference||, infinity on any NaN.
  double error() {
    std::vector<__nv_bfloat16> got(rows * n);
    MOEBAL_CHECK_CUDA(cudaMemcpyAsync(got.data(), dy.ptr, got.size() * 2, cudaMemcpyDeviceToHost, stream));
    MOEBAL_CHECK_CUDA(cudaStreamSynchronize(stream));
    return rel_error(got, want);
  }
};

TEST_P(GroupedGemmCuda, MatchesHostReference) {
  const GemmCase& c = GetParam();
  int64_t rows = 0;
  for (int s : c.sizes) rows += s;
  DeviceGemm g(c.sizes, c.n, c.k, static_cast<unsigned>(rows * 7 + c.n * 3 + c.k));
  // Run twice over a NaN-poisoned output: the second run catches state left in the workspace.
  for (int rep = 0; rep < 2; ++rep) {
    g.poison();
    g.run(c.kernel);
    // bf16 output rounding is 2^-9 relative; fp32 accumulation order adds ~sqrt(k) ulp of fp32.
    EXPECT_LT(g.error(), 8e-3) << "rep " << rep;
  }
}

std::vector<GemmCase> gemm_cases() {
  const std::vector<std::vector<int>> patterns = {
      {0, 1, 3, 17, 1031, 0, 64, 5},          // odd, empty, 1000+
      {1},                                    // single row
      {0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1},   // decode: almost every expert empty
      {700, 1, 1, 1, 0, 2, 1, 300},           // skewed
      {33, 65, 129, 16, 48, 96, 8, 40, 47},   // around the tile edges
  };
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{200, 136}, {512, 1024}, {72, 4104}};
  std::vector<GemmCase> out;
  for (auto kernel : {GroupedGemmKernel::kAuto, GroupedGemmKernel::kPortable, GroupedGemmKernel::kHopperSmallM,
                      GroupedGemmKernel::kHopperMediumM, GroupedGemmKernel::kHopperLargeM, GroupedGemmKernel::kSkinny,
                      GroupedGemmKernel::kGemv, GroupedGemmKernel::kHopperSplit})
    for (const auto& p : patterns)
      for (const auto& [n, k] : shapes) out.push_back({p, n, k, kernel});
  // Skinny and gemv kernels at decode sizes: total_rows 1, 3, 16, 17, 32, 33, 100 (skinny: one, two
  // and four token tiles per pass, 33+ rows take several passes; gemv: 1, 4 or 8 rows per pass, a
  // group of 9+ rows takes several), empty groups, n = 8 (half a 16-row tile, a quarter of a gemv
  // CTA's 32 rows), n = 24, 40, 2880; k = 8 (one 8-wide piece), 40 (k % 32 != 0), 512 (whole
  // 256-element gemv chunks), 2888 (skinny: k-split over 4 warps with a tail; gemv: 11 chunks + 72,
  // k-split over 2-4 warps), 1000 with n = 24 (gemv: k-split over 2 warps, 4-row warp blocks past n
  // that only join the barriers).
  const std::vector<std::vector<int>> decode = {
      {1},
      {0, 2, 0, 1},
      {0, 0, 9, 0, 7, 0},
      {17, 0},
      {0, 5, 3, 8, 0, 16},
      {0, 0, 33},
      {40, 1, 0, 0, 59},
  };
  const std::vector<std::pair<int64_t, int64_t>> decode_shapes = {{8, 8},    {24, 40},  {2880, 2888},
                                                                   {8, 2888}, {40, 512}, {24, 1000}};
  for (auto kernel : {GroupedGemmKernel::kSkinny, GroupedGemmKernel::kGemv, GroupedGemmKernel::kAuto})
    for (const auto& p : decode)
      for (const auto& [n, k] : decode_shapes) out.push_back({p, n, k, kernel});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, GroupedGemmCuda, ::testing::ValuesIn(gemm_cases()), case_name);

class GroupedGemmCudaArgs : public ::testing::Test {
 protected:
  void SetUp() override {
    if (moebal::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(GroupedGemmCudaArgs, RejectsBadShapesAndSmallWorkspace) {
  DeviceBuffer<__nv_bfloat16> buf(1 << 16);
  DeviceBuffer<int32_t> offs(3);
  EXPECT_THROW(moebal::cuda::grouped_gemm_bf16(buf.ptr, buf.ptr, buf.ptr, offs.ptr, 2, 4, 12, 16, nullptr, 0, nullptr),
               moebal::ValueError);  // n % 8 != 0
  EXPECT_THROW(moebal::cuda::grouped_gemm_bf16(buf.ptr, buf.ptr, buf.ptr, offs.ptr, 0, 4, 16, 16, nullptr, 0, nullptr),
               moebal::ValueError);  // no groups
  EXPECT_THROW(moebal::cuda::grouped_gemm_bf16(buf.ptr + 1, buf.ptr, buf.ptr, offs.ptr, 2, 4, 16, 16, nullptr, 0,
                                               nullptr),
               moebal::ValueError);  // misaligned x
  int device = 0;
  MOEBAL_CHECK_CUDA(cudaGetDevice(&device));
  if (moebal::cuda::hopper_grouped_gemm_available(device)) {
    EXPECT_GT(moebal::cuda::grouped_gemm_workspace_bytes(2), 0u);
    EXPECT_THROW(moebal::cuda::grouped_gemm_bf16_with(GroupedGemmKernel::kHopperLargeM, buf.ptr, buf.ptr, buf.ptr,
                                                      offs.ptr, 2, 4, 16, 16, buf.ptr, 16, nullptr),
                 moebal::ValueError);  // workspace too small
  } else {
    EXPECT_THROW(moebal::cuda::grouped_gemm_bf16_with(GroupedGemmKernel::kHopperSmallM, buf.ptr, buf.ptr, buf.ptr,
                                                      offs.ptr, 2, 4, 16, 16, nullptr, 0, nullptr),
                 moebal::ValueError);  // Hopper kernel on another architecture
  }
  // kAuto at 1 token (total_rows = top_k <= 8, fewer than half the experts): gemv on Hopper for small
  // and large experts alike (Qwen3-30B-A3B, Mixtral-8x7B w13), skinny on other sm_80+ devices; never a decode kernel with
  // many rows per group; on Hopper the CUTLASS kernels from 9 rows on (DeepSeek-V3 at 16 tokens).
  const bool hopper = moebal::cuda::hopper_grouped_gemm_available(device);
  const GroupedGemmKernel decode = hopper ? GroupedGemmKernel::kGemv : GroupedGemmKernel::kSkinny;
  EXPECT_EQ(moebal::cuda::pick_grouped_gemm_kernel(device, 128, 8, 1536, 2048), decode);
  EXPECT_NE(moebal::cuda::pick_grouped_gemm_kernel(device, 8, 4096, 1536, 2048), decode);
  if (hopper) {
    EXPECT_EQ(moebal::cuda::pick_grouped_gemm_kernel(device, 8, 2, 28672, 4096), GroupedGemmKernel::kGemv);
    // Mixtral-8x7B at 2 and 4 tokens: 4-8 rows over 8 experts pile up, the CUTLASS kernel wins.
    EXPECT_EQ(moebal::cuda::pick_grouped_gemm_kernel(device, 8, 4, 28672, 4096), GroupedGemmKernel::kHopperSmallM);
    EXPECT_EQ(moebal::cuda::pick_grouped_gemm_kernel(device, 8, 8, 28672, 4096), GroupedGemmKernel::kHopperSmallM);
    EXPECT_EQ(moebal::cuda::pick_grouped_gemm_kernel(device, 128, 8, 5760, 2880), GroupedGemmKernel::kGemv);
    // Small experts (Qwen3-30B-A3B) keep gemv up to 32 rows over 128 experts; large ones do not.
    EXPECT_EQ(moebal::cuda::pick_grouped_gemm_kernel(device, 128, 32, 1536, 2048), GroupedGemmKernel::kGemv);
    EXPECT_EQ(moebal::cuda::pick_grouped_gemm_kernel(device, 128, 33, 1536, 2048), GroupedGemmKernel::kHopperSmallM);
    EXPECT_EQ(moebal::cuda::pick_grouped_gemm_kernel(device, 256, 16, 4096, 7168), GroupedGemmKernel::kHopperSmallM);
    EXPECT_EQ(moebal::cuda::pick_grouped_gemm_kernel(device, 256, 128, 4096, 7168), GroupedGemmKernel::kHopperSmallM);
    EXPECT_EQ(moebal::cuda::pick_grouped_gemm_kernel(device, 256, 9, 4096, 7168), GroupedGemmKernel::kHopperSmallM);
    // Split launch: many large experts at 25-256 rows per group (DeepSeek-V3 at 1024 and 4096 tokens,
    // GPT-OSS-120B at 1024); not for small experts (Qwen3-30B-A3B), 8 experts (Mixtral-8x7B) or
    // 512 rows per group (DeepSeek-V3 at 16384 tokens).
    EXPECT_EQ(moebal::cuda::pick_grouped_gemm_kernel(device, 256, 8192, 4096, 7168), GroupedGemmKernel::kHopperSplit);
    EXPECT_EQ(moebal::cuda::pick_grouped_gemm_kernel(device, 256, 32768, 7168, 2048), GroupedGemmKernel::kHopperSplit);
    EXPECT_EQ(moebal::cuda::pick_grouped_gemm_kernel(device, 128, 4096, 5760, 2880), GroupedGemmKernel::kHopperSplit);
    EXPECT_EQ(moebal::cuda::pick_grouped_gemm_kernel(device, 256, 6144, 4096, 7168), GroupedGemmKernel::kHopperMediumM);
    EXPECT_EQ(moebal::cuda::pick_grouped_gemm_kernel(device, 256, 131072, 4096, 7168), GroupedGemmKernel::kHopperLargeM);
    EXPECT_EQ(moebal::cuda::pick_grouped_gemm_kernel(device, 128, 32768, 1536, 2048), GroupedGemmKernel::kHopperLargeM);
    EXPECT_EQ(moebal::cuda::pick_grouped_gemm_kernel(device, 8, 2048, 28672, 4096), GroupedGemmKernel::kHopperLargeM);
  }
  // Zero rows: nothing to do, no launch, no workspace needed.
  EXPECT_NO_THROW(moebal::cuda::grouped_gemm_bf16(nullptr, buf.ptr, nullptr, offs.ptr, 2, 0, 16, 16, nullptr, 0, nullptr));
}

// The split launch (groups of more than MOEBAL_GEMM_SPLIT_ROWS rows on large_m, then the others on
// medium_m): every class boundary of the override around the group sizes (all heavy, all light,
// groups of exactly the bound), pending work on the caller's stream before it, a CUDA-graph capture
// (a host synchronisation would fail it), bad overrides and a short workspace.
TEST_F(GroupedGemmCudaArgs, SplitLaunchClassesAndCapture) {
  int device = 0;
  MOEBAL_CHECK_CUDA(cudaGetDevice(&device));
  if (!moebal::cuda::hopper_grouped_gemm_available(device)) GTEST_SKIP() << "needs the sm_90a kernels";
  DeviceGemm g({700, 1, 64, 65, 0, 3, 300, 17, 128, 129}, 264, 200, 4242);
  for (const char* split_rows : {"", "0", "1", "3", "64", "65", "128", "700", "1000000", "2147483647"}) {
    SCOPED_TRACE(std::string("MOEBAL_GEMM_SPLIT_ROWS=") + split_rows);
    setenv("MOEBAL_GEMM_SPLIT_ROWS", split_rows, 1);
    g.poison();  // work still pending on the caller's stream when the split launch is queued
    g.run(GroupedGemmKernel::kHopperSplit);
    EXPECT_LT(g.error(), 8e-3);
  }
  // Bad overrides and a short workspace: clear errors, nothing launched.
  setenv("MOEBAL_GEMM_SPLIT_ROWS", "-3", 1);
  EXPECT_THROW(g.run(GroupedGemmKernel::kHopperSplit), moebal::ValueError);
  setenv("MOEBAL_GEMM_SPLIT_ROWS", "lots", 1);
  EXPECT_THROW(g.run(GroupedGemmKernel::kHopperSplit), moebal::ValueError);
  unsetenv("MOEBAL_GEMM_SPLIT_ROWS");
  EXPECT_THROW(g.run(GroupedGemmKernel::kHopperSplit, 256), moebal::ValueError);

  // Captured into a graph and replayed over a poisoned output.
  const moebal_test::CapturedGraph graph(g.stream, [&] { g.run(GroupedGemmKernel::kHopperSplit); });
  for (int rep = 0; rep < 2; ++rep) {
    g.poison();
    graph.launch(g.stream);
    EXPECT_LT(g.error(), 8e-3) << "replay " << rep;
  }
}

// The tile-order overrides of the Hopper kernels (benchmarks): every order gives the same result;
// values outside the documented ones are errors.
TEST_F(GroupedGemmCudaArgs, TileOrderOverrides) {
  int device = 0;
  MOEBAL_CHECK_CUDA(cudaGetDevice(&device));
  if (!moebal::cuda::hopper_grouped_gemm_available(device)) GTEST_SKIP() << "needs the sm_90a kernels";
  DeviceGemm g({700, 1, 0, 129, 3, 300}, 520, 136, 77);
  for (const char* raster : {"0", "1"})
    for (const char* swizzle : {"1", "2", "8"})
      for (auto kernel : {GroupedGemmKernel::kHopperSmallM, GroupedGemmKernel::kHopperMediumM,
                          GroupedGemmKernel::kHopperLargeM, GroupedGemmKernel::kHopperSplit}) {
        SCOPED_TRACE(std::string(moebal::cuda::to_string(kernel)) + " MOEBAL_GEMM_RASTER=" + raster +
                     " MOEBAL_GEMM_SWIZZLE=" + swizzle);
        setenv("MOEBAL_GEMM_RASTER", raster, 1);
        setenv("MOEBAL_GEMM_SWIZZLE", swizzle, 1);
        g.poison();
        g.run(kernel);
        EXPECT_LT(g.error(), 8e-3);
      }
  for (const auto& [name, value] : std::vector<std::pair<const char*, const char*>>{
           {"MOEBAL_GEMM_RASTER", "2"}, {"MOEBAL_GEMM_RASTER", "n"}, {"MOEBAL_GEMM_SWIZZLE", "3"},
           {"MOEBAL_GEMM_SWIZZLE", "16"}, {"MOEBAL_GEMM_SWIZZLE", "0"}}) {
    SCOPED_TRACE(std::string(name) + "=" + value);
    unsetenv("MOEBAL_GEMM_RASTER");
    unsetenv("MOEBAL_GEMM_SWIZZLE");
    setenv(name, value, 1);
    EXPECT_THROW(g.run(GroupedGemmKernel::kHopperLargeM), moebal::ValueError);
  }
  unsetenv("MOEBAL_GEMM_RASTER");
  unsetenv("MOEBAL_GEMM_SWIZZLE");
}

struct FfnCase {
  std::vector<int> sizes;
  int64_t hidden, ffn;
  GroupedGemmKernel kernel;
};

std::string ffn_case_name(const ::testing::TestParamInfo<FfnCase>& info) {
  int rows = 0;
  for (int s : info.param.sizes) rows += s;
  return std::string(moebal::cuda::to_string(info.param.kernel)) + "_g" + std::to_string(info.param.sizes.size()) +
         "_r" + std::to_string(rows) + "_h" + std::to_string(info.param.hidden) + "_f" +
         std::to_string(info.param.ffn) + "_" + std::to_string(info.index);
}

class ExpertFfnCuda : public ::testing::TestWithParam<FfnCase> {
 protected:
  void SetUp() override {
    if (moebal::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
    if (!kernel_runs_here(GroupedGemmKernel::kPortable)) GTEST_SKIP() << "needs sm_80+";
    if (!kernel_runs_here(GetParam().kernel)) GTEST_SKIP() << "kernel not supported on this device";
  }
};

TEST_P(ExpertFfnCuda, MatchesHostReference) {
  const FfnCase& c = GetParam();
  const auto& sizes = c.sizes;
  const int groups = static_cast<int>(sizes.size());
  const int64_t hidden = c.hidden, ffn = c.ffn;
  const auto offs = offsets_of(sizes);
  const int64_t rows = offs.back();
  std::mt19937 rng(static_cast<unsigned>(rows + groups + hidden + ffn));
  const auto x = random_bf16(rows * hidden, 1.0f, rng);
  const auto w13 = random_bf16(groups * 2 * ffn * hidden, 1.0f / std::sqrt(float(hidden)), rng);
  const auto w2 = random_bf16(groups * hidden * ffn, 1.0f / std::sqrt(float(ffn)), rng);
  const auto h = reference(to_double(x), to_double(w13), offs, 2 * ffn, hidden);
  std::vector<double> act(rows * ffn);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < ffn; ++j) {
      const double g = h[r * 2 * ffn + j], u = h[r * 2 * ffn + ffn + j];
      act[r * ffn + j] = g / (1 + std::exp(-g)) * u;
    }
  const auto want = reference(act, to_double(w2), offs, hidden, ffn);

  cudaStream_t stream;
  MOEBAL_CHECK_CUDA(cudaStreamCreate(&stream));
  DeviceBuffer<__nv_bfloat16> dx(x.size()), dw13(w13.size()), dw2(w2.size()), dy(rows * hidden);
  DeviceBuffer<int32_t> doff(offs.size());
  const size_t ws_bytes = moebal::cuda::expert_ffn_workspace_bytes(groups, rows, ffn);
  DeviceBuffer<char> ws(ws_bytes);
  MOEBAL_CHECK_CUDA(cudaMemcpyAsync(dx.ptr, x.data(), x.size() * 2, cudaMemcpyHostToDevice, stream));
  MOEBAL_CHECK_CUDA(cudaMemcpyAsync(dw13.ptr, w13.data(), w13.size() * 2, cudaMemcpyHostToDevice, stream));
  MOEBAL_CHECK_CUDA(cudaMemcpyAsync(dw2.ptr, w2.data(), w2.size() * 2, cudaMemcpyHostToDevice, stream));
  MOEBAL_CHECK_CUDA(cudaMemcpyAsync(doff.ptr, offs.data(), offs.size() * 4, cudaMemcpyHostToDevice, stream));
  // Off the decode kernels both FFN forms run: SiLU(gate) * up in the up GEMM's epilogue ("1") and
  // the separate activation pass ("0"); unset = the default choice.
  const bool decode = c.kernel == GroupedGemmKernel::kSkinny || c.kernel == GroupedGemmKernel::kGemv;
  for (const char* form : {"", "1", "0"}) {
    if (decode && *form != '\0') continue;
    SCOPED_TRACE(std::string("MOEBAL_FFN_SWIGLU_EPILOGUE=") + form);
    setenv("MOEBAL_FFN_SWIGLU_EPILOGUE", form, 1);
    // Poison the output and the workspace (which holds the activation): an unwritten element fails.
    MOEBAL_CHECK_CUDA(cudaMemsetAsync(dy.ptr, 0xff, rows * hidden * 2, stream));
    MOEBAL_CHECK_CUDA(cudaMemsetAsync(ws.ptr, 0xff, ws_bytes, stream));
    moebal::cuda::expert_ffn_bf16_with(c.kernel, dx.ptr, dw13.ptr, dw2.ptr, dy.ptr, doff.ptr, groups, rows, hidden,
                                       ffn, ws.ptr, ws_bytes, stream);
    std::vector<__nv_bfloat16> got(rows * hidden);
    MOEBAL_CHECK_CUDA(cudaMemcpyAsync(got.data(), dy.ptr, got.size() * 2, cudaMemcpyDeviceToHost, stream));
    MOEBAL_CHECK_CUDA(cudaStreamSynchronize(stream));
    // Up to two bf16 roundings of intermediates (gate/up, activation) plus the output.
    EXPECT_LT(rel_error(got, want), 1.5e-2);
  }
  // A tuning override that is not 0 or 1 is an error, not a silent default.
  for (const char* bad : {"yes", "2", "-1"}) {
    SCOPED_TRACE(std::string("MOEBAL_FFN_SWIGLU_EPILOGUE=") + bad);
    setenv("MOEBAL_FFN_SWIGLU_EPILOGUE", bad, 1);
    EXPECT_THROW(moebal::cuda::expert_ffn_bf16_with(c.kernel, dx.ptr, dw13.ptr, dw2.ptr, dy.ptr, doff.ptr, groups,
                                                    rows, hidden, ffn, ws.ptr, ws_bytes, stream),
                 moebal::ValueError);
  }
  unsetenv("MOEBAL_FFN_SWIGLU_EPILOGUE");
  cudaStreamDestroy(stream);
}

std::vector<FfnCase> ffn_cases() {
  std::vector<FfnCase> out;
  const std::vector<std::vector<int>> general = {
      {0, 1, 3, 17, 1031}, {1}, {5, 0, 0, 0, 0, 0, 0, 2}, {40, 40, 40, 40}};
  // Every kernel; the portable and Hopper ones run the gate GEMM and the up GEMM with the SwiGLU
  // epilogue reading the gate tile.
  for (auto kernel : {GroupedGemmKernel::kAuto, GroupedGemmKernel::kPortable, GroupedGemmKernel::kSkinny,
                      GroupedGemmKernel::kGemv, GroupedGemmKernel::kHopperSmallM, GroupedGemmKernel::kHopperMediumM,
                      GroupedGemmKernel::kHopperLargeM, GroupedGemmKernel::kHopperSplit})
    for (const auto& s : general) out.push_back({s, 264, 200, kernel});
  // Model-like shapes on the CUTLASS kernels: k of the down GEMM (ffn) not a multiple of the tile's
  // k, several tiles in n.
  for (auto kernel : {GroupedGemmKernel::kHopperSmallM, GroupedGemmKernel::kHopperMediumM,
                      GroupedGemmKernel::kHopperLargeM, GroupedGemmKernel::kHopperSplit})
    out.push_back({{0, 7, 130, 1, 0, 64}, 2048, 776, kernel});
  // Fused skinny path at decode: total_rows 1, 3, 16, 17, 32, 33, 100; empty groups; hidden (the
  // k of the gate/up GEMM) 8, 40, 2888 and ffn (its k in the down GEMM) 8, 24, 2880.
  const std::vector<std::vector<int>> decode = {{1}, {0, 2, 0, 1}, {0, 16, 0}, {17},
                                                {0, 5, 3, 8, 0, 16}, {0, 0, 33}, {40, 1, 0, 0, 59}};
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{8, 8}, {40, 24}, {2888, 48}, {264, 2880}};
  for (auto kernel : {GroupedGemmKernel::kSkinny, GroupedGemmKernel::kGemv, GroupedGemmKernel::kAuto})
    for (const auto& s : decode)
      for (const auto& [hidden, ffn] : shapes) out.push_back({s, hidden, ffn, kernel});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Groups, ExpertFfnCuda, ::testing::ValuesIn(ffn_cases()), ffn_case_name);

}  // namespace
