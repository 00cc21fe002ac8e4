// Token-major permute and weighted combine. One thread owns one 16-byte column of one token:
// permute loads it once and stores it top_k times; combine issues its top_k loads back to back
// (all in flight before the first use), sums in fp32 and stores once.
#include <climits>
#include <cstdint>

#include <cuda_bf16.h>

#include "moebal/cuda/check.h"
#include "moebal/cuda/moe_permute.h"

namespace moebal::cuda {
namespace {

constexpr int kThreads = 128;

template <int N>
struct alignas(2 * N) Pack {
  __nv_bfloat16 e[N];
};

template <int N>
__device__ __forceinline__ Pack<N> load_pack(const __nv_bfloat16* p) {
  return *reinterpret_cast<const Pack<N>*>(p);
}

// Streaming load: the expert output rows are read exactly once.
template <>
__device__ __forceinline__ Pack<8> load_pack<8>(const __nv_bfloat16* p) {
  const uint4 u = __ldcs(reinterpret_cast<const uint4*>(p));
  Pack<8> r;
  static_assert(sizeof(r) == sizeof(u));
  memcpy(&r, &u, sizeof(u));
  return r;
}

// Work items are (token, pack column) pairs, numbered token-major over a 1-D grid-stride loop, so
// no thread idles when hidden_size / N is not a multiple of the block size. items < 2^32.
template <int N>
__global__ void __launch_bounds__(kThreads)
    permute_kernel(const __nv_bfloat16* __restrict__ hidden, int64_t num_tokens, int64_t cols,
                   const int32_t* __restrict__ row_index, int top_k,
                   const int32_t* __restrict__ num_valid_rows, __nv_bfloat16* __restrict__ out) {
  const int64_t rows = num_valid_rows != nullptr ? static_cast<int64_t>(__ldg(num_valid_rows)) : num_tokens * top_k;
  const uint32_t items = static_cast<uint32_t>(num_tokens * cols);
  const uint32_t ucols = static_cast<uint32_t>(cols);
  for (uint32_t idx = blockIdx.x * kThreads + threadIdx.x; idx < items; idx += gridDim.x * kThreads) {
    const uint32_t t = idx / ucols;
    const uint32_t c = idx - t * ucols;
    const Pack<N> v = *reinterpret_cast<const Pack<N>*>(hidden + static_cast<int64_t>(idx) * N);
    for (int j = 0; j < top_k; ++j) {
      const int32_t r = __ldg(row_index + static_cast<int64_t>(t) * top_k + j);
      if (r >= 0 && r < rows) *reinterpret_cast<Pack<N>*>(out + (static_cast<int64_t>(r) * cols + c) * N) = v;
    }
  }
}

// kK > 0: top_k known at compile time (all loads unrolled and in flight); kK == 0: any top_k.
template <int N, int kK>
__global__ void __launch_bounds__(kThreads)
    combine_kernel(const __nv_bfloat16* __restrict__ y, const int32_t* __restrict__ row_index,
                   const float* __restrict__ weights, const int32_t* __restrict__ num_valid_rows,
                   int64_t num_tokens, int64_t cols, int top_k, __nv_bfloat16* __restrict__ out) {
  const int K = kK > 0 ? kK : top_k;
  const int64_t valid = num_valid_rows != nullptr ? static_cast<int64_t>(__ldg(num_valid_rows))
                                                  : num_tokens * K;
  const uint32_t items = static_cast<uint32_t>(num_tokens * cols);
  const uint32_t ucols = static_cast<uint32_t>(cols);
  for (uint32_t idx = blockIdx.x * kThreads + threadIdx.x; idx < items; idx += gridDim.x * kThreads) {
    const int64_t t = idx / ucols;
    const int64_t c = idx - static_cast<uint32_t>(t) * ucols;
    float acc[N];
#pragma unroll
    for (int i = 0; i < N; ++i) acc[i] = 0.0f;
    if constexpr (kK > 0) {
      Pack<N> v[kK];
      float w[kK];
#pragma unroll
      for (int j = 0; j < kK; ++j) {
        const int32_t r = __ldg(row_index + t * kK + j);
        const bool ok = r >= 0 && r < valid;
        w[j] = ok ? __ldg(weights + t * kK + j) : 0.0f;
        if (ok) {
          v[j] = load_pack<N>(y + (static_cast<int64_t>(r) * cols + c) * N);
        } else {
#pragma unroll
          for (int i = 0; i < N; ++i) v[j].e[i] = __float2bfloat16(0.0f);
        }
      }
#pragma unroll
      for (int j = 0; j < kK; ++j)
#pragma unroll
        for (int i = 0; i < N; ++i) acc[i] = fmaf(w[j], __bfloat162float(v[j].e[i]), acc[i]);
    } else {
      for (int j = 0; j < K; ++j) {
        const int32_t r = __ldg(row_index + t * K + j);
        if (r < 0 || r >= valid) continue;
        const float w = __ldg(weights + t * K + j);
        const Pack<N> v = load_pack<N>(y + (static_cast<int64_t>(r) * cols + c) * N);
#pragma unroll
        for (int i = 0; i < N; ++i) acc[i] = fmaf(w, __bfloat162float(v.e[i]), acc[i]);
      }
    }
    Pack<N> o;
#pragma unroll
    for (int i = 0; i < N; ++i) o.e[i] = __float2bfloat16_rn(acc[i]);
    *reinterpret_cast<Pack<N>*>(out + static_cast<int64_t>(idx) * N) = o;
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

constexpr int64_t kMaxBlocks = 1 << 20;

// Blocks for a 1-D grid-stride loop over num_tokens * cols items.
unsigned grid_for(int64_t cols, int64_t num_tokens) {
  const int64_t blocks = (num_tokens * cols + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

void check_common(const char* fn, int64_t num_tokens, int64_t hidden_size, int32_t top_k) {
  MOEBAL_CHECK_ARG(num_tokens >= 0, fn, ": num_tokens must be >= 0, got ", num_tokens);
  MOEBAL_CHECK_ARG(hidden_size >= 1, fn, ": hidden_size must be >= 1, got ", hidden_size);
  MOEBAL_CHECK_ARG(top_k >= 1, fn, ": top_k must be >= 1, got ", top_k);
  MOEBAL_CHECK_ARG(num_tokens * hidden_size < (int64_t{1} << 32), fn, ": num_tokens * hidden_size (",
                   num_tokens * hidden_size, ") must be < 2^32");
}

template <int N>
void launch_combine(const __nv_bfloat16* y, const int32_t* row_index, const float* weights,
                    const int32_t* num_valid_rows, int64_t num_tokens, int64_t cols, int32_t top_k,
                    __nv_bfloat16* out, cudaStream_t stream) {
  const unsigned grid = grid_for(cols, num_tokens);
#define MOEBAL_COMBINE(K)                                                                         \
  combine_kernel<N, K><<<grid, kThreads, 0, stream>>>(y, row_index, weights, num_valid_rows,      \
                                                      num_tokens, cols, top_k, out)
  switch (top_k) {
    case 1: MOEBAL_COMBINE(1); break;
    case 2: MOEBAL_COMBINE(2); break;
    case 4: MOEBAL_COMBINE(4); break;
    case 6: MOEBAL_COMBINE(6); break;
    case 8: MOEBAL_COMBINE(8); break;
    default: MOEBAL_COMBINE(0); break;
  }
#undef MOEBAL_COMBINE
  MOEBAL_CHECK_LAUNCH();
}

}  // namespace

void permute_rows_bf16(const __nv_bfloat16* hidden, int64_t num_tokens, int64_t hidden_size,
                       const int32_t* row_index, int32_t top_k, const int32_t* num_valid_rows,
                       __nv_bfloat16* out, cudaStream_t stream) {
  check_common("permute_rows_bf16", num_tokens, hidden_size, top_k);
  if (num_tokens == 0) return;
  MOEBAL_CHECK_ARG(hidden && row_index && out, "permute_rows_bf16: null device pointer");
  if (hidden_size % 8 == 0 && aligned16(hidden) && aligned16(out)) {
    const int64_t cols = hidden_size / 8;
    permute_kernel<8><<<grid_for(cols, num_tokens), kThreads, 0, stream>>>(hidden, num_tokens, cols,
                                                                            row_index, top_k, num_valid_rows, out);
  } else {
    permute_kernel<1><<<grid_for(hidden_size, num_tokens), kThreads, 0, stream>>>(
        hidden, num_tokens, hidden_size, row_index, top_k, num_valid_rows, out);
  }
  MOEBAL_CHECK_LAUNCH();
}

void unpermute_combine_bf16(const __nv_bfloat16* y, const int32_t* row_index, const float* weights,
                            const int32_t* num_valid_rows, int64_t num_tokens, int64_t hidden_size,
                            int32_t top_k, __nv_bfloat16* out, cudaStream_t stream) {
  check_common("unpermute_combine_bf16", num_tokens, hidden_size, top_k);
  if (num_tokens == 0) return;
  MOEBAL_CHECK_ARG(y && row_index && weights && out, "unpermute_combine_bf16: null device pointer");
  if (hidden_size % 8 == 0 && aligned16(y) && aligned16(out)) {
    launch_combine<8>(y, row_index, weights, num_valid_rows, num_tokens, hidden_size / 8, top_k, out, stream);
  } else {
    launch_combine<1>(y, row_index, weights, num_valid_rows, num_tokens, hidden_size, top_k, out, stream);
  }
}

}  // namespace moebal::cuda
