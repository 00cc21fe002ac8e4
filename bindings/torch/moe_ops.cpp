// The MoE data-path ops: schemas (declared once, here) and their CPU reference kernels, plain
// loops in fp32 that define what the CUDA kernels must compute.
#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <torch/library.h>
#include <torch/types.h>

#include "moe_checks.h"
#include "checks.h"

TORCH_LIBRARY_FRAGMENT(moebal, m) {
  // Top-k routing of logits [tokens, experts] (float32 or bfloat16) -> (topk_ids int32 [tokens, k],
  // topk_weights float32 [tokens, k]). scoring: "softmax" | "sigmoid"; num_groups/topk_groups:
  // DeepSeek group-limited routing; correction_bias [experts] float32 shifts the choice only.
  // Ties go to the lower expert id.
  m.def(
      "router_topk(Tensor router_logits, int top_k, str scoring=\"softmax\", bool renormalize=True, "
      "int num_groups=1, int topk_groups=1, Tensor? correction_bias=None, float scaling_factor=1.0) "
      "-> (Tensor, Tensor)");
  // Replica-aware dispatch layout -> (slot_ids [tokens, k], offsets [num_slots + 1],
  // row_index [tokens, k], sorted_token [tokens * k]); replica = token mod logcnt[expert].
  // Negative ids are padding (dropped, slot -1, rows after offsets[-1]).
  m.def(
      "dispatch_layout(Tensor topk_ids, int num_experts, int num_slots, Tensor? log2phy=None, "
      "Tensor? logcnt=None) -> (Tensor, Tensor, Tensor, Tensor)");
  // router_topk then dispatch_layout, one launch at decode sizes on CUDA (same outputs, bit for
  // bit) -> (topk_ids, topk_weights, slot_ids, offsets, row_index, sorted_token). path: "auto" |
  // "two_kernels" | "one_block" | "cluster" | "grid" (benchmarking; every path gives the same outputs).
  m.def(
      "route_and_layout(Tensor router_logits, int top_k, int num_slots, str scoring=\"softmax\", "
      "bool renormalize=True, int num_groups=1, int topk_groups=1, Tensor? correction_bias=None, "
      "float scaling_factor=1.0, Tensor? log2phy=None, Tensor? logcnt=None, str path=\"auto\") "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // out[row_index[t, j]] = hidden[t]: [tokens, hidden] bf16 -> [tokens * k, hidden] bf16.
  m.def("permute(Tensor hidden, Tensor row_index) -> Tensor");
  // out[t] = sum_j topk_weights[t, j] * expert_out[row_index[t, j]] over rows < offsets[-1], fp32
  // accumulation in j order, bf16 out [tokens, hidden].
  m.def("unpermute_combine(Tensor expert_out, Tensor row_index, Tensor topk_weights, Tensor offsets) -> Tensor");
  // The whole layer: routing (router_logits, or topk_ids + topk_weights) -> layout -> permute ->
  // SiLU-gated expert FFN per physical slot (w13 [slots, 2F, H], w2 [slots, H, F]) -> combine.
  m.def(
      "moe_forward(Tensor hidden, Tensor w13, Tensor w2, Tensor? router_logits=None, "
      "Tensor? topk_ids=None, Tensor? topk_weights=None, int top_k=0, str scoring=\"softmax\", "
      "bool renormalize=True, int num_groups=1, int topk_groups=1, Tensor? correction_bias=None, "
      "float scaling_factor=1.0, Tensor? log2phy=None, Tensor? logcnt=None) -> Tensor");
}

namespace moebal::pytorch {
namespace {

using OptTensor = std::optional<at::Tensor>;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

float nan_to_neg_inf(float v) { return std::isnan(v) ? kNegInf : v; }
bool beats(float v, int64_t id, float bv, int64_t bid) { return v > bv || (v == bv && id < bid); }

// One token's routing, the documented semantics of moebal::cuda::router_topk.
void route_token(const float* logits, int64_t E, int64_t top_k, bool softmax, bool renormalize,
                 int64_t num_groups, int64_t topk_groups, const float* bias, double scaling,
                 int32_t* ids, float* weights) {
  std::vector<float> score(E), choice(E);
  float row_max = kNegInf, inv_sum = 1.0f;
  if (softmax) {
    for (int64_t e = 0; e < E; ++e) row_max = std::max(row_max, nan_to_neg_inf(logits[e]));
    if (row_max == kNegInf) row_max = 0.0f;
    float s = 0.0f;
    for (int64_t e = 0; e < E; ++e) s += std::exp(nan_to_neg_inf(logits[e]) - row_max);
    inv_sum = s > 0.0f ? 1.0f / s : 0.0f;
  }
  for (int64_t e = 0; e < E; ++e) {
    const float l = nan_to_neg_inf(logits[e]);
    score[e] = softmax ? std::exp(l - row_max) * inv_sum : 1.0f / (1.0f + std::exp(-l));
    choice[e] = nan_to_neg_inf(score[e] + (bias ? bias[e] : 0.0f));
  }
  std::vector<char> eligible(E, 1);
  if (num_groups > 1) {
    const int64_t gs = E / num_groups;
    std::vector<float> gscore(num_groups, kNegInf);
    for (int64_t g = 0; g < num_groups; ++g) {
      if (bias) {
        float a = kNegInf, b = kNegInf;
        for (int64_t i = 0; i < gs; ++i) {
          const float v = choice[g * gs + i];
          if (v > a) {
            b = a;
            a = v;
          } else if (v > b) {
            b = v;
          }
        }
        gscore[g] = nan_to_neg_inf(gs > 1 ? a + b : a);  // inf + -inf (infinite biases) counts as -inf
      } else {
        for (int64_t i = 0; i < gs; ++i) gscore[g] = std::max(gscore[g], choice[g * gs + i]);
      }
    }
    std::vector<char> picked(num_groups, 0);
    for (int64_t r = 0; r < topk_groups; ++r) {
      float bv = kNegInf;
      int64_t bid = INT_MAX;
      for (int64_t g = 0; g < num_groups; ++g)
        if (!picked[g] && beats(gscore[g], g, bv, bid)) {
          bv = gscore[g];
          bid = g;
        }
      picked[bid] = 1;
    }
    for (int64_t e = 0; e < E; ++e) eligible[e] = picked[e / gs];
  }
  std::vector<char> taken(E, 0);
  for (int64_t j = 0; j < top_k; ++j) {
    float bv = kNegInf;
    int64_t bid = INT_MAX;
    for (int64_t e = 0; e < E; ++e)
      if (eligible[e] && !taken[e] && beats(choice[e], e, bv, bid)) {
        bv = choice[e];
        bid = e;
      }
    taken[bid] = 1;
    ids[j] = static_cast<int32_t>(bid);
    weights[j] = score[bid];
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < top_k; ++j) sum += weights[j];
  for (int64_t j = 0; j < top_k; ++j) {
    float w = weights[j];
    if (renormalize && sum > 0.0f) w /= sum;
    weights[j] = w * static_cast<float>(scaling);
  }
}

std::tuple<at::Tensor, at::Tensor> router_topk_cpu(const at::Tensor& logits, int64_t top_k,
                                                   const std::string& scoring, bool renormalize,
                                                   int64_t num_groups, int64_t topk_groups,
                                                   const OptTensor& bias, double scaling) {
  const int64_t E = moe_check_router(logits, top_k, scoring, num_groups, topk_groups, bias);
  const int64_t T = logits.size(0);
  const at::Tensor lf = logits.to(at::kFloat).contiguous();
  at::Tensor ids = at::empty({T, top_k}, logits.options().dtype(at::kInt));
  at::Tensor weights = at::empty({T, top_k}, logits.options().dtype(at::kFloat));
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const bool softmax = moe_scoring_code(scoring) == 0;
  for (int64_t t = 0; t < T; ++t)
    route_token(lf.data_ptr<float>() + t * E, E, top_k, softmax, renormalize, num_groups, topk_groups, b,
                scaling, ids.data_ptr<int32_t>() + t * top_k, weights.data_ptr<float>() + t * top_k);
  return {ids, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dispatch_layout_cpu(
    const at::Tensor& topk_ids, int64_t num_experts, int64_t num_slots, const OptTensor& log2phy,
    const OptTensor& logcnt) {
  moe_check_topk(topk_ids, nullptr, topk_ids.device());
  moe_check_placement(log2phy, logcnt, num_experts, num_slots, topk_ids.device());
  const int64_t T = topk_ids.size(0), K = topk_ids.size(1), N = T * K;
  const int32_t* ids = topk_ids.data_ptr<int32_t>();
  const int32_t* l2p = log2phy.has_value() ? log2phy->data_ptr<int32_t>() : nullptr;
  const int32_t* cnt = logcnt.has_value() ? logcnt->data_ptr<int32_t>() : nullptr;
  const int64_t max_copies = log2phy.has_value() ? log2phy->size(1) : 1;
  const auto iopt = topk_ids.options();
  at::Tensor slot_ids = at::empty({T, K}, iopt);
  at::Tensor offsets = at::empty({num_slots + 1}, iopt);
  at::Tensor row_index = at::empty({T, K}, iopt);
  at::Tensor sorted_token = at::empty({N}, iopt);
  int32_t* slot = slot_ids.data_ptr<int32_t>();
  std::vector<int64_t> cursor(num_slots + 2, 0);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t e = ids[i];
    TORCH_CHECK_VALUE(e < num_experts, "moebal: expert id ", e, " at topk_ids[", i / K, ", ", i % K,
                      "] is >= num_experts (", num_experts, ")");
    int64_t s = -1;
    if (e >= 0) {
      s = e;
      if (l2p != nullptr) {
        const int64_t c = cnt[e];
        TORCH_CHECK_VALUE(c >= 1 && c <= max_copies, "moebal: logcnt[", e, "] = ", c, " is outside [1, ",
                          max_copies, "]");
        s = l2p[e * max_copies + (i / K) % c];
        TORCH_CHECK_VALUE(s >= 0 && s < num_slots, "moebal: log2phy[", e, ", ", (i / K) % c, "] = ", s,
                          " is outside [0, num_slots=", num_slots, ")");
      }
    }
    slot[i] = static_cast<int32_t>(s);
    ++cursor[(s < 0 ? num_slots : s) + 1];
  }
  for (int64_t s = 0; s <= num_slots; ++s) cursor[s + 1] += cursor[s];
  int32_t* off = offsets.data_ptr<int32_t>();
  for (int64_t s = 0; s <= num_slots; ++s) off[s] = static_cast<int32_t>(cursor[s]);
  int32_t* row = row_index.data_ptr<int32_t>();
  int32_t* tok = sorted_token.data_ptr<int32_t>();
  for (int64_t i = 0; i < N; ++i) {
    const int64_t r = cursor[slot[i] < 0 ? num_slots : slot[i]]++;
    row[i] = static_cast<int32_t>(r);
    tok[r] = static_cast<int32_t>(i / K);
  }
  return {slot_ids, offsets, row_index, sorted_token};
}

// The composition of the two references: what the CUDA op computes in one launch.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> route_and_layout_cpu(
    const at::Tensor& logits, int64_t top_k, int64_t num_slots, const std::string& scoring, bool renormalize,
    int64_t num_groups, int64_t topk_groups, const OptTensor& bias, double scaling, const OptTensor& log2phy,
    const OptTensor& logcnt, const std::string& path) {
  moe_check_route_and_layout(logits, top_k, num_slots, scoring, num_groups, topk_groups, bias, log2phy, logcnt, path);
  const int64_t E = logits.size(1);
  auto [ids, weights] = router_topk_cpu(logits, top_k, scoring, renormalize, num_groups, topk_groups, bias, scaling);
  auto [slot_ids, offsets, row_index, sorted_token] = dispatch_layout_cpu(ids, E, num_slots, log2phy, logcnt);
  return {ids, weights, slot_ids, offsets, row_index, sorted_token};
}

void check_row_index(const at::Tensor& hidden_like_tokens, const at::Tensor& row_index, int64_t tokens) {
  moe_check_tensor(row_index, "row_index", 2, at::kInt, hidden_like_tokens.device());
  TORCH_CHECK_VALUE(row_index.size(0) == tokens && row_index.size(1) >= 1, "moebal: row_index must be [tokens=",
                    tokens, ", top_k >= 1], got shape ", row_index.sizes());
}

at::Tensor permute_cpu(const at::Tensor& hidden, const at::Tensor& row_index) {
  moe_check_hidden(hidden);
  check_row_index(hidden, row_index, hidden.size(0));
  const int64_t T = hidden.size(0), H = hidden.size(1), K = row_index.size(1), N = T * K;
  at::Tensor out = at::zeros({N, H}, hidden.options());
  const auto* src = hidden.data_ptr<at::BFloat16>();
  auto* dst = out.data_ptr<at::BFloat16>();
  const int32_t* row = row_index.data_ptr<int32_t>();
  for (int64_t i = 0; i < N; ++i) {
    TORCH_CHECK_VALUE(row[i] >= 0 && row[i] < N, "moebal: row_index[", i / K, ", ", i % K, "] = ", row[i],
                      " is outside [0, tokens * top_k = ", N, ")");
    std::copy(src + (i / K) * H, src + (i / K + 1) * H, dst + static_cast<int64_t>(row[i]) * H);
  }
  return out;
}

void combine_into(const at::BFloat16* y, const int32_t* row, const float* w, int64_t valid, int64_t T,
                  int64_t H, int64_t K, at::BFloat16* out) {
  std::vector<float> acc(H);
  for (int64_t t = 0; t < T; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t j = 0; j < K; ++j) {
      const int64_t r = row[t * K + j];
      TORCH_CHECK_VALUE(r >= 0 && r < T * K, "moebal: row_index[", t, ", ", j, "] = ", r,
                        " is outside [0, tokens * top_k = ", T * K, ")");
      if (r >= valid) continue;
      for (int64_t h = 0; h < H; ++h) acc[h] = std::fma(w[t * K + j], static_cast<float>(y[r * H + h]), acc[h]);
    }
    for (int64_t h = 0; h < H; ++h) out[t * H + h] = static_cast<at::BFloat16>(acc[h]);
  }
}

int64_t valid_rows(const at::Tensor& offsets, int64_t N, const at::Device& device) {
  moe_check_tensor(offsets, "offsets", 1, at::kInt, device);
  TORCH_CHECK_VALUE(offsets.size(0) >= 2, "moebal: offsets must have num_slots + 1 >= 2 entries, got ",
                    offsets.size(0));
  const int64_t valid = offsets.data_ptr<int32_t>()[offsets.size(0) - 1];
  TORCH_CHECK_VALUE(valid >= 0 && valid <= N, "moebal: offsets[-1] = ", valid, " is outside [0, ", N, "]");
  return valid;
}

void check_combine(const at::Tensor& y, const at::Tensor& row_index, const at::Tensor& weights,
                   const at::Tensor& offsets) {
  moe_check_hidden(y, "expert_out");
  moe_check_tensor(row_index, "row_index", 2, at::kInt, y.device());
  moe_check_tensor(weights, "topk_weights", 2, at::kFloat, y.device());
  TORCH_CHECK_VALUE(weights.sizes() == row_index.sizes(), "moebal: topk_weights shape ", weights.sizes(),
                    " must equal row_index shape ", row_index.sizes());
  TORCH_CHECK_VALUE(y.size(0) == row_index.size(0) * row_index.size(1), "moebal: expert_out must have tokens * top_k = ",
                    row_index.size(0) * row_index.size(1), " rows, got ", y.size(0));
  moe_check_tensor(offsets, "offsets", 1, at::kInt, y.device());
  TORCH_CHECK_VALUE(offsets.size(0) >= 2, "moebal: offsets must have num_slots + 1 >= 2 entries, got ",
                    offsets.size(0));
}

at::Tensor unpermute_combine_cpu(const at::Tensor& y, const at::Tensor& row_index, const at::Tensor& weights,
                                 const at::Tensor& offsets) {
  check_combine(y, row_index, weights, offsets);
  const int64_t T = row_index.size(0), K = row_index.size(1), H = y.size(1);
  const int64_t valid = valid_rows(offsets, T * K, y.device());
  at::Tensor out = at::empty({T, H}, y.options());
  combine_into(y.data_ptr<at::BFloat16>(), row_index.data_ptr<int32_t>(), weights.data_ptr<float>(), valid, T,
               H, K, out.data_ptr<at::BFloat16>());
  return out;
}

// The SiLU-gated FFN of one row, rounding where the GPU stores bf16 (the activation, the output).
void ffn_row(const at::BFloat16* x, const at::BFloat16* w13, const at::BFloat16* w2, int64_t H, int64_t F,
             std::vector<float>& act, at::BFloat16* y) {
  for (int64_t f = 0; f < F; ++f) {
    float g = 0.0f, u = 0.0f;
    const at::BFloat16* wg = w13 + f * H;
    const at::BFloat16* wu = w13 + (F + f) * H;
    for (int64_t h = 0; h < H; ++h) {
      const float xv = static_cast<float>(x[h]);
      g += xv * static_cast<float>(wg[h]);
      u += xv * static_cast<float>(wu[h]);
    }
    g = static_cast<float>(static_cast<at::BFloat16>(g));
    u = static_cast<float>(static_cast<at::BFloat16>(u));
    act[f] = static_cast<float>(static_cast<at::BFloat16>(g / (1.0f + std::exp(-g)) * u));
  }
  for (int64_t h = 0; h < H; ++h) {
    float acc = 0.0f;
    const at::BFloat16* w = w2 + h * F;
    for (int64_t f = 0; f < F; ++f) acc += act[f] * static_cast<float>(w[f]);
    y[h] = static_cast<at::BFloat16>(acc);
  }
}

}  // namespace

/// Resolves the routing arguments of moe_forward (shared with the CUDA kernel): checks everything
/// and returns (num_experts, top_k).
std::pair<int64_t, int64_t> moe_forward_check(const at::Tensor& hidden, const at::Tensor& w13, const at::Tensor& w2,
                                              const OptTensor& logits, const OptTensor& topk_ids,
                                              const OptTensor& topk_weights, int64_t top_k,
                                              const std::string& scoring, int64_t num_groups,
                                              int64_t topk_groups, const OptTensor& bias,
                                              const OptTensor& log2phy, const OptTensor& logcnt) {
  moe_check_hidden(hidden);
  moe_check_weights(w13, w2, hidden.size(1), hidden.device());
  const int64_t num_slots = w13.size(0);
  TORCH_CHECK_VALUE(logits.has_value() != topk_ids.has_value(),
                    "moebal: moe_forward needs exactly one of router_logits or (topk_ids, topk_weights)");
  TORCH_CHECK_VALUE(topk_ids.has_value() == topk_weights.has_value(),
                    "moebal: topk_ids and topk_weights must be given together");
  int64_t E = log2phy.has_value() ? log2phy->size(0) : num_slots;
  if (logits.has_value()) {
    moe_check_tensor(*logits, "router_logits", 2, logits->scalar_type(), hidden.device());
    E = moe_check_router(*logits, top_k, scoring, num_groups, topk_groups, bias);
    TORCH_CHECK_VALUE(logits->size(0) == hidden.size(0), "moebal: router_logits has ", logits->size(0),
                      " rows but hidden has ", hidden.size(0), " tokens");
  } else {
    moe_check_topk(*topk_ids, &*topk_weights, hidden.device());
    TORCH_CHECK_VALUE(topk_ids->size(0) == hidden.size(0), "moebal: topk_ids has ", topk_ids->size(0),
                      " rows but hidden has ", hidden.size(0), " tokens");
    TORCH_CHECK_VALUE(top_k == 0 || top_k == topk_ids->size(1), "moebal: top_k (", top_k,
                      ") disagrees with topk_ids (", topk_ids->size(1), " columns)");
    top_k = topk_ids->size(1);
  }
  moe_check_placement(log2phy, logcnt, E, num_slots, hidden.device());
  return {E, top_k};
}

namespace {

at::Tensor moe_forward_cpu(const at::Tensor& hidden, const at::Tensor& w13, const at::Tensor& w2,
                           const OptTensor& logits, const OptTensor& topk_ids_in, const OptTensor& topk_weights_in,
                           int64_t top_k, const std::string& scoring, bool renormalize, int64_t num_groups,
                           int64_t topk_groups, const OptTensor& bias, double scaling, const OptTensor& log2phy,
                           const OptTensor& logcnt) {
  const auto [E, K] = moe_forward_check(hidden, w13, w2, logits, topk_ids_in, topk_weights_in, top_k, scoring,
                                        num_groups, topk_groups, bias, log2phy, logcnt);
  at::Tensor ids, weights;
  if (logits.has_value()) {
    std::tie(ids, weights) = router_topk_cpu(*logits, K, scoring, renormalize, num_groups, topk_groups, bias, scaling);
  } else {
    ids = *topk_ids_in;
    weights = *topk_weights_in;
  }
  const int64_t S = w13.size(0), T = hidden.size(0), H = hidden.size(1), F = w2.size(2);
  const auto [slot_ids, offsets, row_index, sorted_token] = dispatch_layout_cpu(ids, E, S, log2phy, logcnt);
  const at::Tensor x = permute_cpu(hidden, row_index);
  at::Tensor y = at::zeros({T * K, H}, hidden.options());
  const int32_t* off = offsets.data_ptr<int32_t>();
  std::vector<float> act(F);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t r = off[s]; r < off[s + 1]; ++r)
      ffn_row(x.data_ptr<at::BFloat16>() + r * H, w13.data_ptr<at::BFloat16>() + s * 2 * F * H,
              w2.data_ptr<at::BFloat16>() + s * H * F, H, F, act, y.data_ptr<at::BFloat16>() + r * H);
  return unpermute_combine_cpu(y, row_index, weights, offsets);
}

}  // namespace

TORCH_LIBRARY_IMPL(moebal, CPU, m) {
  m.impl("router_topk", &ValueErrorsOf<&router_topk_cpu>::call);
  m.impl("dispatch_layout", &ValueErrorsOf<&dispatch_layout_cpu>::call);
  m.impl("route_and_layout", &ValueErrorsOf<&route_and_layout_cpu>::call);
  m.impl("permute", &ValueErrorsOf<&permute_cpu>::call);
  m.impl("unpermute_combine", &ValueErrorsOf<&unpermute_combine_cpu>::call);
  m.impl("moe_forward", &ValueErrorsOf<&moe_forward_cpu>::call);
}

}  // namespace moebal::pytorch
