// PROBE planner on numpy arrays (CPU reference), for moebal.probe without torch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <vector>

#include "bindings.h"
#include "moebal/core/probe.h"
#include "numpy_convert.h"

namespace py = pybind11;

namespace moebal::python {

void bind_probe(py::module_& m) {
  using moebal::core::ProbeConfig;
  m.def(
      "probe_plan",
      [](const py::handle& counts_obj, const py::handle& phy2log_obj, const py::handle& fixed_obj,
         const py::handle& per_token_obj, const py::handle& window_obj, int64_t expert_bytes, double intra_node_GBps,
         double inter_node_GBps, int32_t ranks_per_node, int32_t max_extra_slots, int32_t max_iters,
         double min_gain_us, const std::string& quota) {
        py::array ca = checked(counts_obj, "counts", 3), pa = checked(phy2log_obj, "phy2log", 2);
        const auto L = static_cast<int32_t>(ca.shape(0)), R = static_cast<int32_t>(ca.shape(1)),
                   E = static_cast<int32_t>(ca.shape(2));
        MOEBAL_CHECK_ARG(pa.shape(0) == L, "phy2log: ", pa.shape(0), " layers but counts has ", L);
        std::vector<int32_t> counts = to_int32(ca, "counts", 3), phy2log = to_int32(pa, "phy2log", 2);
        std::vector<double> fixed = to_float<double>(fixed_obj, "fixed_us", 1);
        std::vector<double> per_token = to_float<double>(per_token_obj, "us_per_token", 1);
        py::array wa = checked(window_obj, "window_us", 2);
        MOEBAL_CHECK_ARG(static_cast<int32_t>(fixed.size()) == R, "fixed_us: expected ", R, " values (one per rank), got ",
                         fixed.size());
        MOEBAL_CHECK_ARG(static_cast<int32_t>(per_token.size()) == R, "us_per_token: expected ", R,
                         " values (one per rank), got ", per_token.size());
        MOEBAL_CHECK_ARG(wa.shape(0) == L && wa.shape(1) == R, "window_us: expected shape (", L, ", ", R, "), got ",
                         shape_str(wa));
        std::vector<double> window = to_float<double>(wa, "window_us", 2);
        ProbeConfig cfg;
        cfg.num_ranks = R;
        cfg.num_experts = E;
        cfg.num_slots = static_cast<int32_t>(pa.shape(1));
        cfg.ranks_per_node = ranks_per_node;
        cfg.max_extra_slots = max_extra_slots;
        cfg.max_iters = max_iters;
        cfg.expert_bytes = expert_bytes;
        cfg.intra_node_GBps = intra_node_GBps;
        cfg.inter_node_GBps = inter_node_GBps;
        cfg.min_gain_us = min_gain_us;
        std::vector<unsigned char> ws(moebal::core::probe_workspace_bytes(cfg));  // validates cfg
        MOEBAL_CHECK_ARG(quota == "dense" || quota == "sparse" || quota == "none",
                         "probe: quota must be 'dense', 'sparse' or 'none', got '", quota, "'");
        using Shape = std::vector<py::ssize_t>;
        const py::ssize_t l = L, r = R, e = E, s = max_extra_slots;
        const bool dense = quota == "dense", sparse = quota == "sparse";
        py::array_t<int32_t> quota_arr(dense ? Shape{l, r, e, r} : Shape{0}), rep_e(Shape{l, r, s}),
            rep_src(Shape{l, r, s}), stats(Shape{l, moebal::core::kProbeNumStats});
        py::array_t<double> times(Shape{l, 2, r});
        py::array_t<int64_t> tokens(Shape{l, 2, r});
        const size_t cap = sparse ? moebal::core::probe_max_quota_entries(cfg) : 0;
        std::vector<int32_t> entries(sparse ? static_cast<size_t>(L) * cap * moebal::core::kProbeQuotaFields : 0),
            num_entries(sparse ? L : 0);
        moebal::core::ProbeInputs in{counts.data(), phy2log.data(), fixed.data(), per_token.data(), window.data()};
        moebal::core::ProbeOutputs out{dense ? quota_arr.mutable_data() : nullptr, rep_e.mutable_data(),
                                       rep_src.mutable_data(), times.mutable_data(), tokens.mutable_data(),
                                       stats.mutable_data()};
        if (sparse) {
          out.quota_entries = entries.data();
          out.num_quota_entries = num_entries.data();
        }
        {
          py::gil_scoped_release release;
          moebal::core::probe_plan(cfg, L, in, out, ws.data(), ws.size());
        }
        py::object quota_obj = py::none(), entries_obj = py::none();
        if (dense) quota_obj = quota_arr;
        if (sparse) {
          // [N, 5] (layer, src, expert, dst, tokens), layers in order, each sorted by (expert, src, dst).
          py::ssize_t n = 0;
          for (int32_t i = 0; i < L; ++i) n += num_entries[i];
          py::array_t<int32_t> flat(Shape{n, 5});
          int32_t* f = flat.mutable_data();
          for (int32_t i = 0; i < L; ++i) {
            const int32_t* q = entries.data() + static_cast<size_t>(i) * cap * moebal::core::kProbeQuotaFields;
            for (int32_t k = 0; k < num_entries[i]; ++k, f += 5, q += moebal::core::kProbeQuotaFields) {
              f[0] = i;
              for (int j = 0; j < moebal::core::kProbeQuotaFields; ++j) f[1 + j] = q[j];
            }
          }
          entries_obj = flat;
        }
        return py::make_tuple(quota_obj, rep_e, rep_src, times, tokens, stats, entries_obj);
      },
      py::arg("counts"), py::arg("phy2log"), py::arg("fixed_us"), py::arg("us_per_token"), py::arg("window_us"),
      py::arg("expert_bytes"), py::arg("intra_node_GBps"), py::arg("inter_node_GBps"), py::arg("ranks_per_node"),
      py::arg("max_extra_slots"), py::arg("max_iters"), py::arg("min_gain_us"), py::arg("quota") = "dense",
      "PROBE planner (CPU reference) on numpy arrays; same arguments as torch.ops.moebal.probe_plan. Returns "
      "(quota, replica_expert, replica_src, rank_time_us, rank_tokens, stats, quota_entries): quota [L, R, E, R] "
      "when quota='dense' (else None); quota_entries int32 [N, 5] (layer, src, expert, dst, tokens) when "
      "quota='sparse' (else None): the complete rows the moves touched, each layer's sorted by (expert, src, "
      "dst); every other row keeps the locality-first default split.");

  m.def(
      "probe_quota_to_dense",
      [](const py::handle& counts_obj, const py::handle& phy2log_obj, const py::handle& entries_obj,
         int32_t ranks_per_node) {
        py::array ca = checked(counts_obj, "counts", 3), pa = checked(phy2log_obj, "phy2log", 2),
                  ea = checked(entries_obj, "quota_entries", 2);
        const auto L = static_cast<int32_t>(ca.shape(0)), R = static_cast<int32_t>(ca.shape(1)),
                   E = static_cast<int32_t>(ca.shape(2));
        MOEBAL_CHECK_ARG(pa.shape(0) == L, "phy2log: ", pa.shape(0), " layers but counts has ", L);
        MOEBAL_CHECK_ARG(ea.shape(1) == 5, "quota_entries: expected shape (N, 5) (layer, src, expert, dst, tokens), got ",
                         shape_str(ea));
        std::vector<int32_t> counts = to_int32(ca, "counts", 3), phy2log = to_int32(pa, "phy2log", 2),
                             flat = to_int32(ea, "quota_entries", 2);
        ProbeConfig cfg;
        cfg.num_ranks = R;
        cfg.num_experts = E;
        cfg.num_slots = static_cast<int32_t>(pa.shape(1));
        cfg.ranks_per_node = ranks_per_node;
        cfg.validate();
        // Split the [N, 5] rows by layer (they must come in layer order) into the core's layout.
        const size_t n = static_cast<size_t>(ea.shape(0));
        std::vector<int32_t> num(L, 0);
        for (size_t i = 0; i < n; ++i) {
          const int32_t l = flat[i * 5];
          MOEBAL_CHECK_ARG(l >= 0 && l < L, "quota_entries[", i, ", 0] = ", l, " is not a layer in [0, ", L, ")");
          MOEBAL_CHECK_ARG(i == 0 || flat[(i - 1) * 5] <= l, "quota_entries: rows must come in layer order; row ", i,
                           " has layer ", l, " after ", flat[(i - 1) * 5]);
          ++num[l];
        }
        size_t per_layer = 0;
        for (int32_t c : num) per_layer = std::max(per_layer, static_cast<size_t>(c));
        std::vector<int32_t> entries(std::max<size_t>(1, static_cast<size_t>(L) * per_layer * 4));
        std::vector<int32_t> fill(L, 0);
        for (size_t i = 0; i < n; ++i) {
          const int32_t l = flat[i * 5];
          int32_t* q = entries.data() + (static_cast<size_t>(l) * per_layer + fill[l]++) * 4;
          for (int j = 0; j < 4; ++j) q[j] = flat[i * 5 + 1 + j];
        }
        using Shape = std::vector<py::ssize_t>;
        py::array_t<int32_t> quota(Shape{L, R, E, R});
        {
          py::gil_scoped_release release;
          moebal::core::probe_quota_to_dense(cfg, L, counts.data(), phy2log.data(), entries.data(), num.data(),
                                             per_layer, quota.mutable_data());
        }
        return quota;
      },
      py::arg("counts"), py::arg("phy2log"), py::arg("quota_entries"), py::arg("ranks_per_node"),
      "Dense quota [L, R, E, R] from a sparse one (probe_plan(..., quota='sparse')'s quota_entries [N, 5]) and the "
      "plan's counts [L, R, E] and phy2log [L, slots].");
}

}  // namespace moebal::python
