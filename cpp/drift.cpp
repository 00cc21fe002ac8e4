#include "moebal/core/drift.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "moebal/core/error.h"

namespace moebal::core {

void DriftThresholds::validate() const {
  for (auto [name, v] : {std::pair{"cosine", cosine}, std::pair{"l1", l1}, std::pair{"residual", residual}})
    MOEBAL_CHECK_ARG(std::isfinite(v) && v >= 0, "drift thresholds: ", name,
                     " must be finite and >= 0, got ", v);
}

void RecalibrationBudget::validate() const {
  MOEBAL_CHECK_ARG(max_moves >= 0, "recalibration budget: max_moves must be >= 0, got ", max_moves);
  MOEBAL_CHECK_ARG(std::isfinite(min_gain_us) && min_gain_us >= 0,
                   "recalibration budget: min_gain_us must be finite and >= 0, got ", min_gain_us);
}

static void check_times(const std::vector<double>& v, const char* name, bool positive) {
  for (size_t g = 0; g < v.size(); ++g)
    MOEBAL_CHECK_ARG(std::isfinite(v[g]) && (positive ? v[g] > 0 : v[g] >= 0), "drift: ", name,
                     "[", g, "] must be finite and ", positive ? "> 0" : ">= 0", ", got ", v[g]);
}

DriftReport detect_drift(const LoadMatrix& a, const LoadMatrix& b, const DriftThresholds& th,
                         const std::vector<double>& measured, const std::vector<double>& predicted) {
  a.validate();
  b.validate();
  th.validate();
  MOEBAL_CHECK_ARG(a.num_layers == b.num_layers && a.num_experts == b.num_experts,
                   "drift: planned loads are ", a.num_layers, " x ", a.num_experts,
                   " but recent loads are ", b.num_layers, " x ", b.num_experts);
  MOEBAL_CHECK_ARG(measured.size() == predicted.size(), "drift: ", measured.size(),
                   " measured times but ", predicted.size(), " predicted times");
  check_times(measured, "measured_us", false);
  check_times(predicted, "predicted_us", true);
  DriftReport r;
  for (int32_t l = 0; l < a.num_layers; ++l) {
    const double *p = a.row(l), *q = b.row(l);
    double dot = 0, np = 0, nq = 0, sp = 0, sq = 0;
    for (int32_t e = 0; e < a.num_experts; ++e) {
      dot += p[e] * q[e];
      np += p[e] * p[e];
      nq += q[e] * q[e];
      sp += p[e];
      sq += q[e];
    }
    double cosd, l1 = 0;
    if (sp == 0 || sq == 0) {
      cosd = l1 = (sp == 0 && sq == 0) ? 0.0 : 1.0;
    } else {
      cosd = std::max(0.0, 1.0 - dot / std::sqrt(np * nq));
      for (int32_t e = 0; e < a.num_experts; ++e) l1 += std::abs(p[e] / sp - q[e] / sq);
      l1 *= 0.5;
    }
    r.cosine_distance.push_back(cosd);
    r.l1_distance.push_back(l1);
    if (cosd > th.cosine || l1 > th.l1) r.drifted_layers.push_back(l);
  }
  r.load_drift = !r.drifted_layers.empty();
  for (size_t g = 0; g < measured.size(); ++g) {
    r.residual.push_back((measured[g] - predicted[g]) / predicted[g]);
    if (std::abs(r.residual.back()) > th.residual) r.perf_drift = true;
  }
  return r;
}

std::vector<PerfModel> rescale_models(const std::vector<PerfModel>& models,
                                      const std::vector<double>& measured,
                                      const std::vector<double>& predicted) {
  MOEBAL_CHECK_ARG(measured.size() == models.size() && predicted.size() == models.size(),
                   "rescale_models: need one measured and one predicted time per model (", models.size(),
                   "), got ", measured.size(), " and ", predicted.size());
  check_times(measured, "measured_us", true);
  check_times(predicted, "predicted_us", true);
  std::vector<PerfModel> out;
  for (size_t g = 0; g < models.size(); ++g) out.push_back(models[g].scaled(measured[g] / predicted[g]));
  return out;
}

namespace {

// One layer's mutable state for recalibration.
struct LayerState {
  const double* w;
  int32_t E, S, G, k;
  const std::vector<PerfModel>* models;
  std::vector<int32_t> row, cnt;
  std::vector<double> t;  // per-GPU time

  double slot_time(int32_t s) const {
    const int32_t e = row[s];
    return (*models)[s / k].time_us(w[e] / cnt[e]);
  }
  void recompute() {
    std::fill(cnt.begin(), cnt.end(), 0);
    for (int32_t e : row) ++cnt[e];
    std::fill(t.begin(), t.end(), 0.0);
    for (int32_t s = 0; s < S; ++s) t[s / k] += slot_time(s);
  }
  double step() const { return *std::max_element(t.begin(), t.end()); }
  bool gpu_has(int32_t g, int32_t e) const {
    for (int32_t j = 0; j < k; ++j)
      if (row[g * k + j] == e) return true;
    return false;
  }
};

struct Candidate {
  double after = std::numeric_limits<double>::infinity();
  SlotMove move;
};

// Best move of a layer that involves its slowest GPU.
Candidate best_move(LayerState& st, int64_t copy_bytes, int64_t bytes_left) {
  Candidate best;
  const int32_t gm = static_cast<int32_t>(std::max_element(st.t.begin(), st.t.end()) - st.t.begin());
  const double before = st.t[gm];
  // Max of the GPUs other than a and b.
  auto max_excl = [&](int32_t a, int32_t b) {
    double m = 0;
    for (int32_t g = 0; g < st.G; ++g)
      if (g != a && g != b) m = std::max(m, st.t[g]);
    return m;
  };
  // Swaps: 2 copies move.
  if (bytes_left < 0 || bytes_left >= 2 * copy_bytes)
    for (int32_t a = 0; a < st.k; ++a) {
      const int32_t sa = gm * st.k + a, ea = st.row[sa];
      const double ta_g = st.slot_time(sa);
      for (int32_t h = 0; h < st.G; ++h) {
        if (h == gm || st.gpu_has(h, ea)) continue;
        const double rest = max_excl(gm, h);
        const double ta_h = (*st.models)[h].time_us(st.w[ea] / st.cnt[ea]);
        for (int32_t b = 0; b < st.k; ++b) {
          const int32_t sb = h * st.k + b, eb = st.row[sb];
          if (eb == ea || st.gpu_has(gm, eb)) continue;
          const double ng = st.t[gm] - ta_g + (*st.models)[gm].time_us(st.w[eb] / st.cnt[eb]);
          const double nh = st.t[h] - st.slot_time(sb) + ta_h;
          const double after = std::max({rest, ng, nh});
          if (after < best.after) {
            best.after = after;
            best.move = {SlotMove::Swap, 0, sa, sb, ea, eb, 2 * copy_bytes, before, after};
          }
        }
      }
    }
  // Retargets: a slot of an expert with >= 2 copies receives a copy of an expert on the slowest GPU
  // (or a slot on the slowest GPU receives a copy of another expert). 1 copy moves.
  if (bytes_left < 0 || bytes_left >= copy_bytes) {
    std::vector<int32_t> hot;
    for (int32_t a = 0; a < st.k; ++a) hot.push_back(st.row[gm * st.k + a]);
    std::vector<int32_t> saved_row;
    for (int32_t s = 0; s < st.S; ++s) {
      const int32_t ef = st.row[s];
      if (st.cnt[ef] < 2) continue;
      const int32_t g = s / st.k;
      for (int32_t e : hot) {
        if (e == ef || st.gpu_has(g, e)) continue;
        // Evaluate by recomputing the GPUs holding ef or e (their per-copy loads change).
        st.row[s] = e;
        --st.cnt[ef];
        ++st.cnt[e];
        std::vector<double> t2 = st.t;
        for (int32_t gg = 0; gg < st.G; ++gg) {
          bool touched = false;
          for (int32_t j = 0; j < st.k && !touched; ++j) {
            const int32_t x = st.row[gg * st.k + j];
            touched = x == e || x == ef || gg == g;
          }
          if (!touched) continue;
          double sum = 0;
          for (int32_t j = 0; j < st.k; ++j) sum += st.slot_time(gg * st.k + j);
          t2[gg] = sum;
        }
        const double after = *std::max_element(t2.begin(), t2.end());
        st.row[s] = ef;
        ++st.cnt[ef];
        --st.cnt[e];
        if (after < best.after) {
          best.after = after;
          best.move = {SlotMove::Retarget, 0, s, -1, ef, e, copy_bytes, before, after};
        }
      }
    }
  }
  return best;
}

}  // namespace

Recalibration recalibrate(const Placement& cur, const LoadMatrix& loads,
                          const std::vector<PerfModel>& models, const ExpertShape& shape,
                          const RecalibrationBudget& budget, const std::vector<int32_t>& layers) {
  cur.validate();
  loads.validate();
  shape.validate();
  budget.validate();
  MOEBAL_CHECK_ARG(loads.num_layers == cur.num_layers && loads.num_experts == cur.num_experts,
                   "recalibrate: loads are ", loads.num_layers, " x ", loads.num_experts,
                   " but the placement is ", cur.num_layers, " x ", cur.num_experts);
  MOEBAL_CHECK_ARG(models.size() == static_cast<size_t>(cur.num_gpus),
                   "recalibrate: need one perf model per GPU (", cur.num_gpus, "), got ", models.size());
  std::vector<char> allowed(cur.num_layers, layers.empty() ? 1 : 0);
  for (int32_t l : layers) {
    MOEBAL_CHECK_ARG(l >= 0 && l < cur.num_layers, "recalibrate: layer ", l, " outside [0, ",
                     cur.num_layers, ")");
    allowed[l] = 1;
  }
  const int32_t L = cur.num_layers, S = cur.num_slots;
  const int64_t copy_bytes = shape.weight_bytes();
  std::vector<LayerState> st(L);
  Recalibration r;
  for (int32_t l = 0; l < L; ++l) {
    st[l] = {loads.row(l), cur.num_experts, S, cur.num_gpus, cur.slots_per_gpu(), &models,
             std::vector<int32_t>(cur.phy2log.begin() + static_cast<size_t>(l) * S,
                                  cur.phy2log.begin() + static_cast<size_t>(l + 1) * S),
             std::vector<int32_t>(cur.num_experts), std::vector<double>(cur.num_gpus)};
    st[l].recompute();
    r.step_us_before.push_back(st[l].step());
  }
  std::vector<Candidate> cand(L);
  auto left = [&] { return budget.max_bytes < 0 ? int64_t(-1) : budget.max_bytes - r.bytes; };
  for (int32_t l = 0; l < L; ++l)
    if (allowed[l]) cand[l] = best_move(st[l], copy_bytes, left());
  while (static_cast<int32_t>(r.moves.size()) < budget.max_moves) {
    int32_t bl = -1;
    double bgain = budget.min_gain_us;
    for (int32_t l = 0; l < L; ++l) {
      if (!allowed[l] || !std::isfinite(cand[l].after)) continue;
      const int64_t lb = left();
      if (lb >= 0 && cand[l].move.bytes > lb) continue;
      const double gain = st[l].step() - cand[l].after;
      if (gain > bgain * (1 + 1e-12) + 1e-12 * st[l].step()) {
        bgain = gain;
        bl = l;
      }
    }
    if (bl < 0) break;
    SlotMove mv = cand[bl].move;
    mv.layer = bl;
    LayerState& s = st[bl];
    if (mv.kind == SlotMove::Swap)
      std::swap(s.row[mv.slot_a], s.row[mv.slot_b]);
    else
      s.row[mv.slot_a] = mv.expert_b;
    s.recompute();
    mv.layer_us_after = s.step();
    r.bytes += mv.bytes;
    r.moves.push_back(mv);
    // Budget changed for every layer: refresh candidates that may no longer fit, and this layer.
    for (int32_t l = 0; l < L; ++l)
      if (allowed[l] && (l == bl || (left() >= 0 && cand[l].move.bytes > left())))
        cand[l] = best_move(st[l], copy_bytes, left());
  }
  std::vector<int32_t> phy2log;
  phy2log.reserve(static_cast<size_t>(L) * S);
  for (int32_t l = 0; l < L; ++l) {
    phy2log.insert(phy2log.end(), st[l].row.begin(), st[l].row.end());
    r.step_us_after.push_back(st[l].step());
  }
  r.placement = Placement::from_phy2log(L, cur.num_experts, S, cur.num_gpus, cur.num_nodes,
                                        std::move(phy2log));
  return r;
}

int64_t replacement_bytes(const Placement& a, const Placement& b, const ExpertShape& shape) {
  MOEBAL_CHECK_ARG(a.num_layers == b.num_layers && a.num_slots == b.num_slots,
                   "replacement_bytes: placements differ in shape (", a.num_layers, " x ", a.num_slots,
                   " vs ", b.num_layers, " x ", b.num_slots, ")");
  shape.validate();
  int64_t changed = 0;
  for (size_t i = 0; i < a.phy2log.size(); ++i) changed += a.phy2log[i] != b.phy2log[i];
  return changed * shape.weight_bytes();
}

}  // namespace moebal::core
