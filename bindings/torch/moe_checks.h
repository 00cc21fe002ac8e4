// Input checks of the MoE data-path ops, shared by the CPU and CUDA kernels (and mirrored by the
// fake kernels in python/moebal/moe_ops.py). Every failure is a ValueError naming the argument.
#pragma once

#include <optional>
#include <string>
#include <utility>

#include <torch/types.h>

namespace moebal::pytorch {

constexpr int64_t kMoeMaxExperts = 2048;  // == moebal::cuda::kRouterMaxExperts
constexpr int64_t kMoeMaxTopK = 32;       // == moebal::cuda::kRouterMaxTopK
constexpr int64_t kMoeMaxSlots = 11 * 1024 - 1;

/// torch-style dtype names ("int32", not "Int") for error messages.
inline std::string moe_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return c10::toString(t);
  }
}

inline void moe_check_tensor(const at::Tensor& x, const char* name, int64_t dim, at::ScalarType dtype,
                             const at::Device& device) {
  TORCH_CHECK_VALUE(x.dim() == dim, "moebal: ", name, " must be ", dim, "-D, got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.scalar_type() == dtype, "moebal: ", name, " must be ", moe_dtype_name(dtype), ", got ",
                    moe_dtype_name(x.scalar_type()));
  TORCH_CHECK_VALUE(x.device() == device, "moebal: ", name, " is on ", x.device(), " but the inputs are on ",
                    device);
  TORCH_CHECK_VALUE(x.is_contiguous(), "moebal: ", name, " must be contiguous");
}

inline int32_t moe_scoring_code(const std::string& scoring) {
  if (scoring == "softmax") return 0;
  if (scoring == "sigmoid") return 1;
  TORCH_CHECK_VALUE(false, "moebal: scoring must be 'softmax' or 'sigmoid', got '", scoring, "'");
  return -1;
}

/// route_and_layout's path argument -> moebal::cuda::RouteLayoutPath's value.
inline int32_t moe_route_layout_path_code(const std::string& path) {
  if (path == "auto") return 0;
  if (path == "two_kernels") return 1;
  if (path == "one_block") return 2;
  if (path == "cluster") return 3;
  if (path == "grid") return 4;
  TORCH_CHECK_VALUE(false, "moebal: path must be 'auto', 'two_kernels', 'one_block', 'cluster' or 'grid', got '", path,
                    "'");
  return -1;
}

/// Checks the router inputs; returns num_experts.
inline int64_t moe_check_router(const at::Tensor& logits, int64_t top_k, const std::string& scoring,
                                int64_t num_groups, int64_t topk_groups,
                                const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "moebal: router_logits must be 2-D [tokens, experts], got shape ",
                    logits.sizes());
  TORCH_CHECK_VALUE(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16,
                    "moebal: router_logits must be float32 or bfloat16, got ", moe_dtype_name(logits.scalar_type()));
  TORCH_CHECK_VALUE(logits.is_contiguous(), "moebal: router_logits must be contiguous");
  const int64_t e = logits.size(1);
  TORCH_CHECK_VALUE(e >= 1 && e <= kMoeMaxExperts, "moebal: router_logits has ", e,
                    " experts; must be in [1, ", kMoeMaxExperts, "]");
  TORCH_CHECK_VALUE(top_k >= 1 && top_k <= e && top_k <= kMoeMaxTopK, "moebal: top_k must be in [1, min(",
                    e, ", ", kMoeMaxTopK, ")], got ", top_k);
  moe_scoring_code(scoring);
  TORCH_CHECK_VALUE(num_groups >= 1 && num_groups <= 32 && e % num_groups == 0,
                    "moebal: num_groups must be in [1, 32] and divide the expert count (", e, "), got ",
                    num_groups);
  if (num_groups > 1) {
    TORCH_CHECK_VALUE(topk_groups >= 1 && topk_groups <= num_groups, "moebal: topk_groups must be in [1, ",
                      num_groups, "], got ", topk_groups);
    TORCH_CHECK_VALUE(topk_groups * (e / num_groups) >= top_k, "moebal: topk_groups * group size (",
                      topk_groups, " * ", e / num_groups, ") must be >= top_k (", top_k, ")");
  }
  if (bias.has_value()) {
    moe_check_tensor(*bias, "correction_bias", 1, at::kFloat, logits.device());
    TORCH_CHECK_VALUE(bias->size(0) == e, "moebal: correction_bias must have ", e, " entries, got ",
                      bias->size(0));
  }
  return e;
}

inline void moe_check_topk(const at::Tensor& ids, const at::Tensor* weights, const at::Device& device) {
  moe_check_tensor(ids, "topk_ids", 2, at::kInt, device);
  TORCH_CHECK_VALUE(ids.size(1) >= 1, "moebal: topk_ids must have top_k >= 1 columns, got shape ", ids.sizes());
  TORCH_CHECK_VALUE(ids.size(0) * ids.size(1) < (int64_t{1} << 31) - 1,
                    "moebal: tokens * top_k must fit in int32, got shape ", ids.sizes());
  if (weights != nullptr) {
    moe_check_tensor(*weights, "topk_weights", 2, at::kFloat, device);
    TORCH_CHECK_VALUE(weights->sizes() == ids.sizes(), "moebal: topk_weights shape ", weights->sizes(),
                      " must equal topk_ids shape ", ids.sizes());
  }
}

/// Checks an optional placement (both tables or neither) against num_experts and num_slots.
inline void moe_check_placement(const std::optional<at::Tensor>& log2phy, const std::optional<at::Tensor>& logcnt,
                                int64_t num_experts, int64_t num_slots, const at::Device& device) {
  TORCH_CHECK_VALUE(num_experts >= 1, "moebal: num_experts must be >= 1, got ", num_experts);
  TORCH_CHECK_VALUE(num_slots >= 1 && num_slots <= kMoeMaxSlots, "moebal: num_slots must be in [1, ",
                    kMoeMaxSlots, "], got ", num_slots);
  TORCH_CHECK_VALUE(log2phy.has_value() == logcnt.has_value(),
                    "moebal: log2phy and logcnt must be given together");
  if (!log2phy.has_value()) {
    TORCH_CHECK_VALUE(num_slots == num_experts, "moebal: without a placement num_slots (", num_slots,
                      ") must equal num_experts (", num_experts, ")");
    return;
  }
  moe_check_tensor(*log2phy, "log2phy", 2, at::kInt, device);
  moe_check_tensor(*logcnt, "logcnt", 1, at::kInt, device);
  TORCH_CHECK_VALUE(log2phy->size(0) == num_experts && log2phy->size(1) >= 1,
                    "moebal: log2phy must be [num_experts=", num_experts, ", max_copies >= 1], got shape ",
                    log2phy->sizes());
  TORCH_CHECK_VALUE(logcnt->size(0) == num_experts, "moebal: logcnt must have num_experts=", num_experts,
                    " entries, got ", logcnt->size(0));
}

/// route_and_layout's arguments (router, placement, path), shared by the CPU and CUDA kernels;
/// returns the path's moebal::cuda::RouteLayoutPath value.
inline int32_t moe_check_route_and_layout(const at::Tensor& logits, int64_t top_k, int64_t num_slots,
                                          const std::string& scoring, int64_t num_groups, int64_t topk_groups,
                                          const std::optional<at::Tensor>& bias,
                                          const std::optional<at::Tensor>& log2phy,
                                          const std::optional<at::Tensor>& logcnt, const std::string& path) {
  const int64_t E = moe_check_router(logits, top_k, scoring, num_groups, topk_groups, bias);
  moe_check_placement(log2phy, logcnt, E, num_slots, logits.device());
  return moe_route_layout_path_code(path);
}

inline void moe_check_hidden(const at::Tensor& hidden, const char* name = "hidden") {
  TORCH_CHECK_VALUE(hidden.dim() == 2, "moebal: ", name, " must be 2-D [rows, hidden], got shape ",
                    hidden.sizes());
  TORCH_CHECK_VALUE(hidden.scalar_type() == at::kBFloat16, "moebal: ", name, " must be bfloat16, got ",
                    moe_dtype_name(hidden.scalar_type()));
  TORCH_CHECK_VALUE(hidden.is_contiguous(), "moebal: ", name, " must be contiguous");
}

/// Checks the weights of a layer: w13 [slots, 2 * ffn, hidden], w2 [slots, hidden, ffn]; returns ffn.
inline int64_t moe_check_weights(const at::Tensor& w13, const at::Tensor& w2, int64_t hidden,
                                 const at::Device& device) {
  moe_check_tensor(w13, "w13", 3, at::kBFloat16, device);
  moe_check_tensor(w2, "w2", 3, at::kBFloat16, device);
  TORCH_CHECK_VALUE(w13.size(2) == hidden && w13.size(1) % 2 == 0 && w13.size(1) > 0,
                    "moebal: w13 must be [slots, 2 * ffn, hidden=", hidden, "], got shape ", w13.sizes());
  const int64_t ffn = w13.size(1) / 2;
  TORCH_CHECK_VALUE(w2.size(0) == w13.size(0) && w2.size(1) == hidden && w2.size(2) == ffn,
                    "moebal: w2 must be [slots=", w13.size(0), ", hidden=", hidden, ", ffn=", ffn,
                    "], got shape ", w2.sizes());
  TORCH_CHECK_VALUE(hidden % 8 == 0 && ffn % 8 == 0, "moebal: hidden (", hidden, ") and ffn (", ffn,
                    ") must be multiples of 8");
  return ffn;
}

/// Checks every argument of moe_forward (defined in moe_ops.cpp, shared with the CUDA kernel);
/// returns (num_experts, top_k).
std::pair<int64_t, int64_t> moe_forward_check(const at::Tensor& hidden, const at::Tensor& w13, const at::Tensor& w2,
                                              const std::optional<at::Tensor>& logits,
                                              const std::optional<at::Tensor>& topk_ids,
                                              const std::optional<at::Tensor>& topk_weights, int64_t top_k,
                                              const std::string& scoring, int64_t num_groups,
                                              int64_t topk_groups, const std::optional<at::Tensor>& bias,
                                              const std::optional<at::Tensor>& log2phy,
                                              const std::optional<at::Tensor>& logcnt);

}  // namespace moebal::pytorch
