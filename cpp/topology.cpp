#include "moebal/core/topology.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "moebal/core/error.h"

namespace moebal::core {

ExpertShape::ExpertShape(int64_t h, int64_t f, int32_t b) : hidden(h), ffn(f), dtype_bytes(b) {
  validate();
}

void ExpertShape::validate() const {
  MOEBAL_CHECK_ARG(hidden > 0, "expert shape: hidden must be > 0, got ", hidden);
  MOEBAL_CHECK_ARG(ffn > 0, "expert shape: ffn must be > 0, got ", ffn);
  MOEBAL_CHECK_ARG(dtype_bytes == 1 || dtype_bytes == 2 || dtype_bytes == 4,
                   "expert shape: dtype_bytes must be 1, 2 or 4, got ", dtype_bytes);
}

PerfModel::PerfModel(std::vector<double> tokens, std::vector<double> micros)
    : tokens_(std::move(tokens)), micros_(std::move(micros)) {
  MOEBAL_CHECK_ARG(!tokens_.empty(), "perf model: needs at least one knot");
  MOEBAL_CHECK_ARG(tokens_.size() == micros_.size(), "perf model: ", tokens_.size(),
                   " token knots but ", micros_.size(), " time values");
  for (size_t i = 0; i < tokens_.size(); ++i) {
    MOEBAL_CHECK_ARG(std::isfinite(tokens_[i]) && tokens_[i] >= 0, "perf model: knot ", i,
                     " has tokens ", tokens_[i], "; must be finite and >= 0");
    MOEBAL_CHECK_ARG(std::isfinite(micros_[i]) && micros_[i] >= 0, "perf model: knot ", i,
                     " has time ", micros_[i], " us; must be finite and >= 0");
    MOEBAL_CHECK_ARG(i == 0 || tokens_[i] > tokens_[i - 1],
                     "perf model: knot tokens must strictly increase; knot ", i, " has ", tokens_[i],
                     " after ", tokens_[i - 1]);
  }
}

PerfModel PerfModel::linear(double fixed_us, double us_per_token) {
  MOEBAL_CHECK_ARG(std::isfinite(fixed_us) && fixed_us >= 0, "perf model: fixed_us must be finite and >= 0, got ", fixed_us);
  MOEBAL_CHECK_ARG(std::isfinite(us_per_token) && us_per_token >= 0,
                   "perf model: us_per_token must be finite and >= 0, got ", us_per_token);
  return PerfModel({1.0, 2.0}, {fixed_us + us_per_token, fixed_us + 2 * us_per_token});
}

PerfModel PerfModel::fit(const std::vector<double>& n, const std::vector<double>& t,
                         int32_t num_knots) {
  MOEBAL_CHECK_ARG(n.size() == t.size(), "perf model fit: ", n.size(), " token counts but ",
                   t.size(), " times");
  MOEBAL_CHECK_ARG(num_knots >= 2, "perf model fit: num_knots must be >= 2, got ", num_knots);
  for (size_t i = 0; i < n.size(); ++i) {
    MOEBAL_CHECK_ARG(std::isfinite(n[i]) && n[i] > 0, "perf model fit: sample ", i, " has tokens ",
                     n[i], "; must be finite and > 0");
    MOEBAL_CHECK_ARG(std::isfinite(t[i]) && t[i] >= 0, "perf model fit: sample ", i, " has time ",
                     t[i], "; must be finite and >= 0");
  }
  std::vector<double> distinct(n);
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  MOEBAL_CHECK_ARG(distinct.size() >= 2, "perf model fit: needs samples at >= 2 distinct token counts, got ",
                   distinct.size());
  // Knots at evenly spaced quantiles of the distinct token counts (always both ends).
  std::vector<double> knots;
  const size_t m = std::min<size_t>(num_knots, distinct.size());
  for (size_t j = 0; j < m; ++j) {
    const double v = distinct[(j * (distinct.size() - 1)) / (m - 1)];
    if (knots.empty() || v > knots.back()) knots.push_back(v);
  }
  const size_t K = knots.size();
  // Hat-basis least squares: t_i ~ sum_j c_j * hat_j(n_i). Normal equations are tridiagonal, but K
  // is small, so dense Gaussian elimination with partial pivoting keeps this simple.
  std::vector<double> A(K * K, 0.0), b(K, 0.0);
  for (size_t i = 0; i < n.size(); ++i) {
    size_t j = std::upper_bound(knots.begin(), knots.end(), n[i]) - knots.begin();
    j = std::clamp<size_t>(j, 1, K - 1);
    const double w = (n[i] - knots[j - 1]) / (knots[j] - knots[j - 1]);
    const size_t idx[2] = {j - 1, j};
    const double val[2] = {1.0 - w, w};
    for (int a = 0; a < 2; ++a) {
      b[idx[a]] += val[a] * t[i];
      for (int c = 0; c < 2; ++c) A[idx[a] * K + idx[c]] += val[a] * val[c];
    }
  }
  double trace = 0;
  for (size_t j = 0; j < K; ++j) trace += A[j * K + j];
  for (size_t j = 0; j < K; ++j) A[j * K + j] += 1e-12 * trace + 1e-300;
  for (size_t col = 0; col < K; ++col) {
    size_t piv = col;
    for (size_t r = col + 1; r < K; ++r)
      if (std::abs(A[r * K + col]) > std::abs(A[piv * K + col])) piv = r;
    for (size_t c = 0; c < K; ++c) std::swap(A[col * K + c], A[piv * K + c]);
    std::swap(b[col], b[piv]);
    for (size_t r = col + 1; r < K; ++r) {
      const double f = A[r * K + col] / A[col * K + col];
      for (size_t c = col; c < K; ++c) A[r * K + c] -= f * A[col * K + c];
      b[r] -= f * b[col];
    }
  }
  std::vector<double> coef(K);
  for (size_t r = K; r-- > 0;) {
    double s = b[r];
    for (size_t c = r + 1; c < K; ++c) s -= A[r * K + c] * coef[c];
    coef[r] = std::max(0.0, s / A[r * K + r]);
  }
  return PerfModel(std::move(knots), std::move(coef));
}

double PerfModel::time_us(double n) const {
  MOEBAL_CHECK(!tokens_.empty(), "perf model used before it was set");
  if (!(n > 0)) return 0.0;
  if (tokens_.size() == 1 || n <= tokens_.front()) return micros_.front();
  size_t j = std::upper_bound(tokens_.begin(), tokens_.end(), n) - tokens_.begin();
  j = std::min(j, tokens_.size() - 1);
  const double slope = (micros_[j] - micros_[j - 1]) / (tokens_[j] - tokens_[j - 1]);
  return std::max(0.0, micros_[j - 1] + slope * (n - tokens_[j - 1]));
}

PerfModel PerfModel::scaled(double factor) const {
  MOEBAL_CHECK_ARG(std::isfinite(factor) && factor > 0, "perf model: scale factor must be finite and > 0, got ", factor);
  std::vector<double> m(micros_);
  for (double& v : m) v *= factor;
  return PerfModel(tokens_, std::move(m));
}

Topology::Topology(int32_t nodes, int32_t gpn, double nvlink, double network, double pcie,
                   std::vector<PerfModel> models)
    : num_nodes(nodes), gpus_per_node(gpn), nvlink_GBps(nvlink), network_GBps(network),
      pcie_GBps(pcie), gpu_models(std::move(models)) {
  validate();
}

void Topology::validate() const {
  MOEBAL_CHECK_ARG(num_nodes > 0, "topology: num_nodes must be > 0, got ", num_nodes);
  MOEBAL_CHECK_ARG(gpus_per_node > 0, "topology: gpus_per_node must be > 0, got ", gpus_per_node);
  for (auto [name, v] : {std::pair{"nvlink_GBps", nvlink_GBps}, std::pair{"network_GBps", network_GBps},
                         std::pair{"pcie_GBps", pcie_GBps}})
    MOEBAL_CHECK_ARG(std::isfinite(v) && v > 0, "topology: ", name, " must be finite and > 0, got ", v);
  MOEBAL_CHECK_ARG(gpu_models.empty() || gpu_models.size() == static_cast<size_t>(num_gpus()),
                   "topology: gpu_models must be empty or hold one model per GPU (", num_gpus(),
                   "), got ", gpu_models.size());
}

double Topology::bandwidth_GBps(int32_t a, int32_t b) const {
  MOEBAL_CHECK_ARG(a >= 0 && a < num_gpus() && b >= 0 && b < num_gpus(), "topology: GPU ids ", a,
                   ", ", b, " outside [0, ", num_gpus(), ")");
  if (a == b) return std::numeric_limits<double>::infinity();
  return node_of(a) == node_of(b) ? nvlink_GBps : network_GBps;
}

double Topology::transfer_us(double bytes, int32_t a, int32_t b) const {
  MOEBAL_CHECK_ARG(std::isfinite(bytes) && bytes >= 0, "topology: bytes must be finite and >= 0, got ", bytes);
  if (a == b) return 0.0;
  return bytes / (bandwidth_GBps(a, b) * 1e3);  // GB/s = 1e3 bytes/us
}

}  // namespace moebal::core
