// PROBE planner on numpy arrays (CPU reference), for moebal.probe without torch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

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
         double min_gain_us) {
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
        using Shape = std::vector<py::ssize_t>;
        const py::ssize_t l = L, r = R, e = E, s = max_extra_slots;
        py::array_t<int32_t> quota(Shape{l, r, e, r}), rep_e(Shape{l, r, s}), rep_src(Shape{l, r, s}),
            stats(Shape{l, moebal::core::kProbeNumStats});
        py::array_t<double> times(Shape{l, 2, r});
        py::array_t<int64_t> tokens(Shape{l, 2, r});
        moebal::core::ProbeInputs in{counts.data(), phy2log.data(), fixed.data(), per_token.data(), window.data()};
        moebal::core::ProbeOutputs out{quota.mutable_data(), rep_e.mutable_data(), rep_src.mutable_data(),
                                       times.mutable_data(), tokens.mutable_data(), stats.mutable_data()};
        {
          py::gil_scoped_release release;
          moebal::core::probe_plan(cfg, L, in, out, ws.data(), ws.size());
        }
        return py::make_tuple(quota, rep_e, rep_src, times, tokens, stats);
      },
      py::arg("counts"), py::arg("phy2log"), py::arg("fixed_us"), py::arg("us_per_token"), py::arg("window_us"),
      py::arg("expert_bytes"), py::arg("intra_node_GBps"), py::arg("inter_node_GBps"), py::arg("ranks_per_node"),
      py::arg("max_extra_slots"), py::arg("max_iters"), py::arg("min_gain_us"),
      "PROBE planner (CPU reference) on numpy arrays; same arguments and results as torch.ops.moebal.probe_plan.");
}

}  // namespace moebal::python
