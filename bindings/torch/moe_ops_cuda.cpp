// CUDA kernels of the MoE data-path ops: allocate with torch, compute with moebal::cuda on torch's
// current stream. No host synchronisation anywhere (ids are not validated on the device: out of
// range ids are dropped, as moebal/cuda/moe_routing.h documents).
#include <optional>
#include <string>
#include <tuple>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include "moe_checks.h"
#include "moebal/cuda/moe_layer.h"
#include "moebal/cuda/moe_permute.h"
#include "moebal/cuda/moe_routing.h"
#include "checks.h"

namespace moebal::pytorch {
namespace {

using OptTensor = std::optional<at::Tensor>;
namespace mc = moebal::cuda;

const __nv_bfloat16* bf16_ptr(const at::Tensor& t) {
  return reinterpret_cast<const __nv_bfloat16*>(t.data_ptr<at::BFloat16>());
}
__nv_bfloat16* bf16_ptr(at::Tensor& t) { return reinterpret_cast<__nv_bfloat16*>(t.data_ptr<at::BFloat16>()); }

mc::RouterParams router_params(int64_t E, int64_t top_k, const std::string& scoring, bool renormalize,
                               int64_t num_groups, int64_t topk_groups, double scaling) {
  mc::RouterParams p;
  p.num_experts = static_cast<int32_t>(E);
  p.top_k = static_cast<int32_t>(top_k);
  p.scoring = moe_scoring_code(scoring) == 0 ? mc::RouterScoring::kSoftmax : mc::RouterScoring::kSigmoid;
  p.renormalize = renormalize;
  p.num_groups = static_cast<int32_t>(num_groups);
  p.topk_groups = static_cast<int32_t>(num_groups > 1 ? topk_groups : 1);
  p.scaling_factor = static_cast<float>(scaling);
  return p;
}

mc::LogitsDtype logits_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kFloat ? mc::LogitsDtype::kFloat32 : mc::LogitsDtype::kBFloat16;
}

mc::PlacementView placement_view(const OptTensor& log2phy, const OptTensor& logcnt) {
  mc::PlacementView v;
  if (log2phy.has_value()) {
    v.log2phy = log2phy->data_ptr<int32_t>();
    v.logcnt = logcnt->data_ptr<int32_t>();
    v.max_copies = static_cast<int32_t>(log2phy->size(1));
  }
  return v;
}

std::tuple<at::Tensor, at::Tensor> router_topk_cuda(const at::Tensor& logits, int64_t top_k,
                                                    const std::string& scoring, bool renormalize,
                                                    int64_t num_groups, int64_t topk_groups,
                                                    const OptTensor& bias, double scaling) {
  const int64_t E = moe_check_router(logits, top_k, scoring, num_groups, topk_groups, bias);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t T = logits.size(0);
  at::Tensor ids = at::empty({T, top_k}, logits.options().dtype(at::kInt));
  at::Tensor weights = at::empty({T, top_k}, logits.options().dtype(at::kFloat));
  mc::router_topk(logits.data_ptr(), logits_dtype(logits), T,
                  router_params(E, top_k, scoring, renormalize, num_groups, topk_groups, scaling),
                  bias.has_value() ? bias->data_ptr<float>() : nullptr, ids.data_ptr<int32_t>(),
                  weights.data_ptr<float>(), at::cuda::getCurrentCUDAStream());
  return {ids, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dispatch_layout_cuda(
    const at::Tensor& topk_ids, int64_t num_experts, int64_t num_slots, const OptTensor& log2phy,
    const OptTensor& logcnt) {
  moe_check_topk(topk_ids, nullptr, topk_ids.device());
  moe_check_placement(log2phy, logcnt, num_experts, num_slots, topk_ids.device());
  const c10::cuda::CUDAGuard guard(topk_ids.device());
  const int64_t T = topk_ids.size(0), K = topk_ids.size(1);
  const auto iopt = topk_ids.options();
  at::Tensor slot_ids = at::empty({T, K}, iopt);
  at::Tensor offsets = at::empty({num_slots + 1}, iopt);
  at::Tensor row_index = at::empty({T, K}, iopt);
  at::Tensor sorted_token = at::empty({T * K}, iopt);
  const size_t ws_bytes = mc::dispatch_layout_workspace_bytes(T, static_cast<int32_t>(K), static_cast<int32_t>(num_slots));
  at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes)}, iopt.dtype(at::kByte));
  mc::dispatch_layout(topk_ids.data_ptr<int32_t>(), T, static_cast<int32_t>(K), static_cast<int32_t>(num_experts),
                      static_cast<int32_t>(num_slots), placement_view(log2phy, logcnt),
                      slot_ids.data_ptr<int32_t>(), offsets.data_ptr<int32_t>(), row_index.data_ptr<int32_t>(),
                      sorted_token.data_ptr<int32_t>(), ws_bytes ? ws.data_ptr() : nullptr, ws_bytes,
                      at::cuda::getCurrentCUDAStream());
  return {slot_ids, offsets, row_index, sorted_token};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> route_and_layout_cuda(
    const at::Tensor& logits, int64_t top_k, int64_t num_slots, const std::string& scoring, bool renormalize,
    int64_t num_groups, int64_t topk_groups, const OptTensor& bias, double scaling, const OptTensor& log2phy,
    const OptTensor& logcnt, const std::string& path) {
  const auto route_path = static_cast<mc::RouteLayoutPath>(
      moe_check_route_and_layout(logits, top_k, num_slots, scoring, num_groups, topk_groups, bias, log2phy, logcnt, path));
  const int64_t E = logits.size(1);
  TORCH_CHECK_VALUE(logits.size(0) * top_k < (int64_t{1} << 31) - 1, "moebal: tokens * top_k must fit in int32, got ",
                    logits.size(0), " * ", top_k);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t T = logits.size(0);
  const auto iopt = logits.options().dtype(at::kInt);
  at::Tensor ids = at::empty({T, top_k}, iopt);
  at::Tensor weights = at::empty({T, top_k}, logits.options().dtype(at::kFloat));
  at::Tensor slot_ids = at::empty({T, top_k}, iopt);
  at::Tensor offsets = at::empty({num_slots + 1}, iopt);
  at::Tensor row_index = at::empty({T, top_k}, iopt);
  at::Tensor sorted_token = at::empty({T * top_k}, iopt);
  const size_t ws_bytes =
      mc::route_and_layout_workspace_bytes(T, static_cast<int32_t>(top_k), static_cast<int32_t>(num_slots));
  at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes)}, iopt.dtype(at::kByte));
  mc::route_and_layout(logits.data_ptr(), logits_dtype(logits), T,
                       router_params(E, top_k, scoring, renormalize, num_groups, topk_groups, scaling),
                       bias.has_value() ? bias->data_ptr<float>() : nullptr, static_cast<int32_t>(num_slots),
                       placement_view(log2phy, logcnt), ids.data_ptr<int32_t>(), weights.data_ptr<float>(),
                       slot_ids.data_ptr<int32_t>(), offsets.data_ptr<int32_t>(), row_index.data_ptr<int32_t>(),
                       sorted_token.data_ptr<int32_t>(), ws_bytes ? ws.data_ptr() : nullptr, ws_bytes, route_path,
                       at::cuda::getCurrentCUDAStream());
  return {ids, weights, slot_ids, offsets, row_index, sorted_token};
}

at::Tensor permute_cuda(const at::Tensor& hidden, const at::Tensor& row_index) {
  moe_check_hidden(hidden);
  moe_check_tensor(row_index, "row_index", 2, at::kInt, hidden.device());
  TORCH_CHECK_VALUE(row_index.size(0) == hidden.size(0) && row_index.size(1) >= 1,
                    "moebal: row_index must be [tokens=", hidden.size(0), ", top_k >= 1], got shape ",
                    row_index.sizes());
  const c10::cuda::CUDAGuard guard(hidden.device());
  const int64_t T = hidden.size(0), H = hidden.size(1), K = row_index.size(1);
  at::Tensor out = at::empty({T * K, H}, hidden.options());
  mc::permute_rows_bf16(bf16_ptr(hidden), T, H, row_index.data_ptr<int32_t>(), static_cast<int32_t>(K),
                        /*num_valid_rows=*/nullptr, bf16_ptr(out), at::cuda::getCurrentCUDAStream());
  return out;
}

at::Tensor unpermute_combine_cuda(const at::Tensor& y, const at::Tensor& row_index, const at::Tensor& weights,
                                  const at::Tensor& offsets) {
  moe_check_hidden(y, "expert_out");
  moe_check_tensor(row_index, "row_index", 2, at::kInt, y.device());
  moe_check_tensor(weights, "topk_weights", 2, at::kFloat, y.device());
  TORCH_CHECK_VALUE(weights.sizes() == row_index.sizes(), "moebal: topk_weights shape ", weights.sizes(),
                    " must equal row_index shape ", row_index.sizes());
  TORCH_CHECK_VALUE(y.size(0) == row_index.size(0) * row_index.size(1),
                    "moebal: expert_out must have tokens * top_k = ", row_index.size(0) * row_index.size(1),
                    " rows, got ", y.size(0));
  moe_check_tensor(offsets, "offsets", 1, at::kInt, y.device());
  TORCH_CHECK_VALUE(offsets.size(0) >= 2, "moebal: offsets must have num_slots + 1 >= 2 entries, got ",
                    offsets.size(0));
  const c10::cuda::CUDAGuard guard(y.device());
  const int64_t T = row_index.size(0), K = row_index.size(1), H = y.size(1);
  at::Tensor out = at::empty({T, H}, y.options());
  mc::unpermute_combine_bf16(bf16_ptr(y), row_index.data_ptr<int32_t>(), weights.data_ptr<float>(),
                             offsets.data_ptr<int32_t>() + (offsets.size(0) - 1), T, H, static_cast<int32_t>(K),
                             bf16_ptr(out), at::cuda::getCurrentCUDAStream());
  return out;
}

at::Tensor moe_forward_cuda(const at::Tensor& hidden, const at::Tensor& w13, const at::Tensor& w2,
                            const OptTensor& logits, const OptTensor& topk_ids, const OptTensor& topk_weights,
                            int64_t top_k, const std::string& scoring, bool renormalize, int64_t num_groups,
                            int64_t topk_groups, const OptTensor& bias, double scaling, const OptTensor& log2phy,
                            const OptTensor& logcnt) {
  const auto [E, K] = moe_forward_check(hidden, w13, w2, logits, topk_ids, topk_weights, top_k, scoring,
                                        num_groups, topk_groups, bias, log2phy, logcnt);
  const c10::cuda::CUDAGuard guard(hidden.device());
  mc::MoeShape shape;
  shape.num_tokens = hidden.size(0);
  shape.hidden = hidden.size(1);
  shape.ffn = w2.size(2);
  shape.top_k = static_cast<int32_t>(K);
  shape.num_experts = static_cast<int32_t>(E);
  shape.num_slots = static_cast<int32_t>(w13.size(0));
  at::Tensor out = at::empty_like(hidden);
  const size_t ws_bytes = mc::moe_forward_workspace_bytes(shape);
  at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes)}, hidden.options().dtype(at::kByte));
  const auto stream = at::cuda::getCurrentCUDAStream();
  const mc::PlacementView placement = placement_view(log2phy, logcnt);
  if (logits.has_value()) {
    mc::moe_forward_bf16_from_logits(bf16_ptr(hidden), logits->data_ptr(), logits_dtype(*logits),
                                     router_params(E, K, scoring, renormalize, num_groups, topk_groups, scaling),
                                     bias.has_value() ? bias->data_ptr<float>() : nullptr, bf16_ptr(w13),
                                     bf16_ptr(w2), shape, placement, bf16_ptr(out), ws.data_ptr(), ws_bytes, stream);
  } else {
    mc::moe_forward_bf16(bf16_ptr(hidden), topk_ids->data_ptr<int32_t>(), topk_weights->data_ptr<float>(),
                         bf16_ptr(w13), bf16_ptr(w2), shape, placement, bf16_ptr(out), ws.data_ptr(), ws_bytes,
                         stream);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(moebal, CUDA, m) {
  m.impl("router_topk", &ValueErrorsOf<&router_topk_cuda>::call);
  m.impl("dispatch_layout", &ValueErrorsOf<&dispatch_layout_cuda>::call);
  m.impl("route_and_layout", &ValueErrorsOf<&route_and_layout_cuda>::call);
  m.impl("permute", &ValueErrorsOf<&permute_cuda>::call);
  m.impl("unpermute_combine", &ValueErrorsOf<&unpermute_combine_cuda>::call);
  m.impl("moe_forward", &ValueErrorsOf<&moe_forward_cuda>::call);
}

}  // namespace moebal::pytorch
