// Hopper grouped GEMM on CUTLASS 3.x ptr-array kernels (TMA loads, warp-specialised wgmma,
// persistent group tile scheduler). Included only by *_sm90.cu files, each of which instantiates
// ONE configuration (compile time: every instantiation costs minutes of nvcc).
//
// The host never sees per-group sizes: a one-thread-per-group setup kernel reads the device
// offsets and writes each group's problem shape, operand pointers and strides into the
// workspace, and the CUTLASS kernel reads them there (host problem shapes = nullptr). Groups with
// zero rows get a zero extent, so the tile scheduler gives them no tiles.
//
// kSwiGLU configurations replace the plain store with the epilogue visitor tree
// D = silu(C) * acc: C is the gate projection [rows, n] written by a plain GEMM just before (loaded
// by the epilogue's TMA, per group like D), acc the up projection in fp32, one rounding to bf16.
// The expert FFN so never writes or re-reads the [rows, 2 * ffn] gate/up tensor.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/epilogue/thread/activation.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

#include "grouped_gemm_internal.h"
#include "moebal/core/error.h"
#include "moebal/cuda/check.h"

namespace moebal::cuda::detail {

// kSwapAB computes y_g^T = W_g x_g^T: the weight rows fill the wgmma M dimension (>= 64) and the
// few token rows of a decode-sized group the N dimension (multiple of 8), so a 1-row group wastes
// no 64-row tile and every CTA streams distinct weight rows. D is then column-major [n, m_g] with
// leading dimension n, which is exactly row-major y_g [m_g, n].
// D = silu(C) * acc, computed in fp32 (the expert FFN's up projection; C = its gate projection).
template <class Element>
using Sm90SwiGLU = cutlass::epilogue::fusion::Sm90EVT<
    cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, Element, float, cutlass::FloatRoundStyle::round_to_nearest>,
    cutlass::epilogue::fusion::Sm90EVT<
        cutlass::epilogue::fusion::Sm90Compute<cutlass::epilogue::thread::SiLu, float, float,
                                               cutlass::FloatRoundStyle::round_to_nearest>,
        cutlass::epilogue::fusion::Sm90SrcFetch<Element>>,
    cutlass::epilogue::fusion::Sm90AccFetch>;

template <class TileShape_, class KernelSchedule_, class EpilogueSchedule_, bool kSwapAB_, bool kSwiGLU_ = false,
          int kClusterM = 1>
struct Sm90GroupedGemm {
  static constexpr bool kSwapAB = kSwapAB_;
  static constexpr bool kSwiGLU = kSwiGLU_;
  using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;
  using Element = cutlass::bfloat16_t;
  using LayoutA = cutlass::layout::RowMajor;     // x_g [m, k] or W_g [n, k]
  using LayoutB = cutlass::layout::ColumnMajor;  // W_g [n, k] or x_g [m, k], k contiguous
  using LayoutD = std::conditional_t<kSwapAB, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  static constexpr int kAlign = 8;  // 16 bytes of bf16
  using ClusterShape = cute::Shape<cute::Int<kClusterM>, cute::_1, cute::_1>;

  using ElementC = std::conditional_t<kSwiGLU, Element, void>;
  using Fusion = std::conditional_t<kSwiGLU, Sm90SwiGLU<Element>,
                                    cutlass::epilogue::fusion::LinearCombination<Element, float, void, float>>;
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape_, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, ElementC, LayoutD*, kAlign,
      Element, LayoutD*, kAlign, EpilogueSchedule_, Fusion>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA*, kAlign, Element,
      LayoutB*, kAlign, float, TileShape_, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule_>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using Shape = typename ProblemShape::UnderlyingProblemShape;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideC = typename Kernel::InternalStrideC;
  using StrideD = typename Kernel::InternalStrideD;

  // Workspace layout, each array 256-byte aligned.
  struct Layout {
    size_t shapes, ptr_a, ptr_b, ptr_c, ptr_d, stride_a, stride_b, stride_c, stride_d, cutlass, total;
  };
  static size_t align_up(size_t v) { return (v + 255) / 256 * 256; }
  static Layout layout(int groups, size_t cutlass_bytes) {
    Layout l{};
    size_t at = 0;
    auto take = [&](size_t bytes) { const size_t here = at; at += align_up(bytes); return here; };
    const size_t g = static_cast<size_t>(groups);
    l.shapes = take(g * sizeof(Shape));
    l.ptr_a = take(g * sizeof(void*));
    l.ptr_b = take(g * sizeof(void*));
    l.ptr_c = kSwiGLU ? take(g * sizeof(void*)) : 0;
    l.ptr_d = take(g * sizeof(void*));
    l.stride_a = take(g * sizeof(StrideA));
    l.stride_b = take(g * sizeof(StrideB));
    l.stride_c = kSwiGLU ? take(g * sizeof(StrideC)) : 0;
    l.stride_d = take(g * sizeof(StrideD));
    l.cutlass = take(cutlass_bytes);
    l.total = at;
    return l;
  }

  // Tile order of the persistent scheduler (MOEBAL_GEMM_RASTER, MOEBAL_GEMM_SWIZZLE; see sm90_run).
  struct Order {
    bool along_n = false;  // consecutive tiles walk n (weight rows) before m, instead of m before n
    int swizzle = 1;       // CUTLASS's max_swizzle_size: 1, 2, 4 or 8
  };

  static typename Gemm::Arguments arguments(int groups, int sm_count, char* ws, const Layout& l, Order order = {}) {
    cutlass::KernelHardwareInfo hw;
    cudaGetDevice(&hw.device_id);
    hw.sm_count = sm_count;
    typename Gemm::Arguments args;
    args.mode = cutlass::gemm::GemmUniversalMode::kGrouped;
    using Raster = decltype(args.scheduler.raster_order);
    args.scheduler.raster_order = order.along_n ? Raster::AlongN : Raster::AlongM;
    args.scheduler.max_swizzle_size = order.swizzle;
    args.problem_shape = {groups, reinterpret_cast<Shape*>(ws + l.shapes), nullptr};
    args.mainloop = {reinterpret_cast<const Element**>(ws + l.ptr_a), reinterpret_cast<StrideA*>(ws + l.stride_a),
                     reinterpret_cast<const Element**>(ws + l.ptr_b), reinterpret_cast<StrideB*>(ws + l.stride_b)};
    if constexpr (kSwiGLU) {
      args.epilogue.thread = {};  // the visitor tree has no scalars
      args.epilogue.ptr_C = reinterpret_cast<const Element**>(ws + l.ptr_c);
      args.epilogue.dC = reinterpret_cast<StrideC*>(ws + l.stride_c);
    } else {
      args.epilogue.thread.alpha = 1.0f;
      args.epilogue.thread.beta = 0.0f;
      args.epilogue.ptr_C = nullptr;
      args.epilogue.dC = nullptr;
    }
    args.epilogue.ptr_D = reinterpret_cast<Element**>(ws + l.ptr_d);
    args.epilogue.dD = reinterpret_cast<StrideD*>(ws + l.stride_d);
    args.hw_info = hw;
    return args;
  }

  static size_t workspace_bytes(int groups, int sm_count) {
    Layout probe = layout(groups, 0);
    auto args = arguments(groups, sm_count, nullptr, probe);
    return layout(groups, Gemm::get_workspace_size(args)).total;
  }
};

template <class Cfg>
__global__ void sm90_grouped_gemm_setup(GroupedGemmProblem p, char* ws, typename Cfg::Layout l) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= p.num_groups) return;
  // Clamp so malformed offsets can never address outside x / y.
  const int64_t lo = std::min<int64_t>(std::max<int64_t>(p.offsets[g], 0), p.total_rows);
  const int64_t hi = std::min<int64_t>(std::max<int64_t>(p.offsets[g + 1], lo), p.total_rows);
  const int rows = static_cast<int>(hi - lo);
  const int m = rows >= p.rows_lo && rows <= p.rows_hi ? rows : 0;  // outside the split's class: no tiles
  const int n = static_cast<int>(p.n), k = static_cast<int>(p.k);
  using Element = typename Cfg::Element;
  const Element* x_g = reinterpret_cast<const Element*>(p.x) + lo * p.k;
  const Element* w_g = reinterpret_cast<const Element*>(p.w) + static_cast<int64_t>(g) * p.group_stride();
  Element* y_g = reinterpret_cast<Element*>(p.y) + lo * p.n;
  auto* shapes = reinterpret_cast<typename Cfg::Shape*>(ws + l.shapes);
  auto* ptr_a = reinterpret_cast<const Element**>(ws + l.ptr_a);
  auto* ptr_b = reinterpret_cast<const Element**>(ws + l.ptr_b);
  auto* ptr_d = reinterpret_cast<Element**>(ws + l.ptr_d);
  auto* stride_a = reinterpret_cast<typename Cfg::StrideA*>(ws + l.stride_a);
  auto* stride_b = reinterpret_cast<typename Cfg::StrideB*>(ws + l.stride_b);
  auto* stride_d = reinterpret_cast<typename Cfg::StrideD*>(ws + l.stride_d);
  if constexpr (Cfg::kSwapAB) {
    shapes[g] = typename Cfg::Shape{n, m, k};
    ptr_a[g] = w_g;
    ptr_b[g] = x_g;
    stride_a[g] = cutlass::make_cute_packed_stride(typename Cfg::StrideA{}, {n, k, 1});
    stride_b[g] = cutlass::make_cute_packed_stride(typename Cfg::StrideB{}, {m, k, 1});
    stride_d[g] = cutlass::make_cute_packed_stride(typename Cfg::StrideD{}, {n, m, 1});
  } else {
    shapes[g] = typename Cfg::Shape{m, n, k};
    ptr_a[g] = x_g;
    ptr_b[g] = w_g;
    stride_a[g] = cutlass::make_cute_packed_stride(typename Cfg::StrideA{}, {m, k, 1});
    stride_b[g] = cutlass::make_cute_packed_stride(typename Cfg::StrideB{}, {n, k, 1});
    stride_d[g] = cutlass::make_cute_packed_stride(typename Cfg::StrideD{}, {m, n, 1});
  }
  ptr_d[g] = y_g;
  if constexpr (Cfg::kSwiGLU) {
    // C has D's shape and layout: gate rows of this group's tokens.
    reinterpret_cast<const Element**>(ws + l.ptr_c)[g] = reinterpret_cast<const Element*>(p.c) + lo * p.n;
    auto* stride_c = reinterpret_cast<typename Cfg::StrideC*>(ws + l.stride_c);
    if constexpr (Cfg::kSwapAB) {
      stride_c[g] = cutlass::make_cute_packed_stride(typename Cfg::StrideC{}, {n, m, 1});
    } else {
      stride_c[g] = cutlass::make_cute_packed_stride(typename Cfg::StrideC{}, {m, n, 1});
    }
  }
}

template <class Cfg>
void sm90_run(const GroupedGemmProblem& p, void* workspace, size_t bytes, cudaStream_t stream) {
  const size_t need = Cfg::workspace_bytes(p.num_groups, p.sm_count);
  MOEBAL_CHECK_ARG(workspace != nullptr && bytes >= need, "grouped_gemm_bf16: workspace of ", bytes,
                   " bytes is smaller than the ", need, " bytes needed");
  MOEBAL_CHECK((p.c != nullptr) == Cfg::kSwiGLU, "grouped_gemm_bf16: internal error: the SwiGLU source is ",
                   p.c != nullptr ? "set for a plain" : "missing for a SwiGLU", " Hopper kernel");
  // Tile-order overrides, checked before anything is enqueued.
  typename Cfg::Order order;
  const int raster = tuning_env_int("MOEBAL_GEMM_RASTER", 0);
  MOEBAL_CHECK_ARG(raster == 0 || raster == 1,
                   "environment variable MOEBAL_GEMM_RASTER must be 0 (along m) or 1 (along n), got ", raster);
  order.along_n = raster == 1;
  order.swizzle = tuning_env_int("MOEBAL_GEMM_SWIZZLE", 1);
  MOEBAL_CHECK_ARG(order.swizzle == 1 || order.swizzle == 2 || order.swizzle == 4 || order.swizzle == 8,
                   "environment variable MOEBAL_GEMM_SWIZZLE must be 1, 2, 4 or 8, got ", order.swizzle);
  char* ws = static_cast<char*>(workspace);
  // need = layout(groups, cutlass bytes).total, so the CUTLASS part is what remains after it.
  const typename Cfg::Layout l = Cfg::layout(p.num_groups, need - Cfg::layout(p.num_groups, 0).total);
  constexpr int kThreads = 128;
  sm90_grouped_gemm_setup<Cfg><<<(p.num_groups + kThreads - 1) / kThreads, kThreads, 0, stream>>>(p, ws, l);
  MOEBAL_CHECK_LAUNCH();
  auto args = Cfg::arguments(p.num_groups, p.sm_count, ws, l, order);
  typename Cfg::Gemm gemm;
  cutlass::Status st = gemm.can_implement(args);
  MOEBAL_CHECK(st == cutlass::Status::kSuccess, "grouped_gemm_bf16: CUTLASS cannot run this problem: ",
               cutlassGetStatusString(st));
  st = gemm.initialize(args, ws + l.cutlass, stream);
  MOEBAL_CHECK(st == cutlass::Status::kSuccess, "grouped_gemm_bf16: CUTLASS initialize failed: ",
               cutlassGetStatusString(st));
  st = gemm.run(stream);
  MOEBAL_CHECK(st == cutlass::Status::kSuccess, "grouped_gemm_bf16: CUTLASS launch failed: ",
               cutlassGetStatusString(st));
  MOEBAL_CHECK_LAUNCH();
}

// The three tile configurations; each *_sm90.cu file instantiates one of them, plain or SwiGLU.
//
// Decode-sized groups (few rows per active expert): swap-AB, 64 weight rows x 32 token rows x 128 k
// per tile, ping-pong warpgroups so one tile's epilogue overlaps the next tile's loads. The workload
// is weight streaming; 64-row tiles give 2x the CTAs of 128-row ones on the narrow down projections
// (e.g. n = 4096 over 2 experts).
template <bool kSwiGLU>
using Sm90SmallM = Sm90GroupedGemm<cute::Shape<cute::_64, cute::_32, cute::_128>,
                                   cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpong,
                                   cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong, true, kSwiGLU>;
// The middle regime (tens to a few hundred rows per active expert, still weight-bandwidth bound):
// swap-AB, 128 weight rows x 64 token rows x 64 k per tile, cooperative. A group of up to 64 rows
// streams each weight tile once; unlike the 128 x 256 prefill tile, a 40-row group does not pad to
// 128 rows.
template <bool kSwiGLU>
using Sm90MediumM = Sm90GroupedGemm<cute::Shape<cute::_128, cute::_64, cute::_64>,
                                    cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative,
                                    cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, true, kSwiGLU>;
// Prefill-sized groups: 128 token rows x 256 weight rows x 64 k per tile, two cooperative consumer
// warpgroups, TMA epilogue. Compute-bound tiles with the highest arithmetic intensity that fits a
// single CTA's shared memory with a multi-stage pipeline.
template <bool kSwiGLU>
using Sm90LargeM = Sm90GroupedGemm<cute::Shape<cute::_128, cute::_256, cute::_64>,
                                   cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative,
                                   cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative, false, kSwiGLU>;

}  // namespace moebal::cuda::detail

// Defines the two entry points of grouped_gemm_internal.h for one configuration.
#define MOEBAL_SM90_GROUPED_GEMM_ENTRY(name, Cfg)                                                        \
  namespace moebal::cuda::detail {                                                                     \
  size_t sm90_##name##_workspace_bytes(int num_groups, int sm_count) {                                 \
    return Cfg::workspace_bytes(num_groups, sm_count);                                                 \
  }                                                                                                    \
  void sm90_##name##_grouped_gemm(const GroupedGemmProblem& p, void* workspace, size_t bytes,          \
                                  cudaStream_t stream) {                                               \
    sm90_run<Cfg>(p, workspace, bytes, stream);                                                        \
  }                                                                                                    \
  }
