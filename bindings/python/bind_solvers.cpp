// Placement policies (eplb, balanced, vibe), EPLB's raw tables, plan metrics with the lower bound,
// drift detection and bounded recalibration.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "moebal/core/drift.h"
#include "moebal/core/plan_metrics.h"
#include "moebal/core/solvers.h"
#include "numpy_convert.h"

namespace py = pybind11;
using namespace moebal::core;

namespace moebal::python {

namespace {

PlanRequest make_request(const LoadMatrix& loads, int32_t num_slots, int32_t num_gpus,
                         int32_t num_nodes, int32_t num_groups, const Topology* topology) {
  PlanRequest r;
  r.loads = &loads;
  r.num_slots = num_slots;
  r.num_gpus = num_gpus;
  r.num_nodes = num_nodes;
  r.num_groups = num_groups;
  r.topology = topology;
  return r;
}

template <class T>
py::array_t<int64_t> to_int64(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  py::array_t<int64_t> out(shape);
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

}  // namespace

void bind_solvers(py::module_& m) {
  m.def("eplb_rebalance", [](const py::handle& weight, int32_t num_replicas, int32_t num_groups,
                             int32_t num_nodes, int32_t num_gpus) {
        py::array a = checked(weight, "weight", 2);
        const auto L = static_cast<int32_t>(a.shape(0)), E = static_cast<int32_t>(a.shape(1));
        MOEBAL_CHECK_ARG(L > 0 && E > 0, "eplb: weight must be non-empty [layers, experts], got shape ",
                         shape_str(a));
        const std::vector<double> w = to_float<double>(a, "weight", 2);
        EplbTables t;
        {
          py::gil_scoped_release release;
          t = eplb_rebalance(w.data(), L, E, num_replicas, num_groups, num_nodes, num_gpus);
        }
        return py::make_tuple(to_int64(t.phy2log, {L, num_replicas}), to_int64(t.phyrank, {L, num_replicas}),
                              to_int64(t.logcnt, {L, E}), t.hierarchical);
      },
      py::arg("weight"), py::arg("num_replicas"), py::arg("num_groups"), py::arg("num_nodes"),
      py::arg("num_gpus"),
      "DeepSeek EPLB on a [layers, experts] array: (phy2log, phyrank, logcnt, hierarchical), int64.");

  m.def("placement_policies", [] {
    py::list out;
    for (const auto& p : placement_policies()) out.append(py::make_tuple(p.name, p.doc));
    return out;
  }, "Built-in C++ placement policies as (name, doc) pairs.");

  m.def("plan_placement", [](const std::string& policy, const LoadMatrix& loads, int32_t num_slots,
                             int32_t num_gpus, int32_t num_nodes, int32_t num_groups,
                             const Topology* topology) {
        const PlanRequest r = make_request(loads, num_slots, num_gpus, num_nodes, num_groups, topology);
        py::gil_scoped_release release;
        return plan_placement(policy, r);
      },
      py::arg("policy"), py::arg("loads"), py::arg("num_slots"), py::arg("num_gpus"),
      py::arg("num_nodes") = 1, py::arg("num_groups") = 1, py::arg("topology") = nullptr,
      "Run a built-in C++ placement policy ('eplb', 'balanced', 'vibe').");

  m.def("layer_lower_bound", [](const py::handle& w, int32_t num_slots, int32_t num_gpus,
                                int32_t num_nodes, int32_t num_groups) {
        const std::vector<double> v = to_float<double>(w, "loads", 1);
        MOEBAL_CHECK_ARG(!v.empty(), "lower bound: loads of the layer are empty");
        return layer_lower_bound(v.data(), static_cast<int32_t>(v.size()), num_slots, num_gpus,
                                 num_nodes, num_groups);
      },
      py::arg("loads"), py::arg("num_slots"), py::arg("num_gpus"), py::arg("num_nodes") = 1,
      py::arg("num_groups") = 1,
      "Lower bound on the busiest GPU's tokens for one layer's loads [E] (see docs/solvers.md).");
  m.def("lower_bounds", [](const LoadMatrix& loads, int32_t num_slots, int32_t num_gpus,
                           int32_t num_nodes, int32_t num_groups) {
        return to_numpy(lower_bounds(loads, num_slots, num_gpus, num_nodes, num_groups), {loads.num_layers});
      },
      py::arg("loads"), py::arg("num_slots"), py::arg("num_gpus"), py::arg("num_nodes") = 1,
      py::arg("num_groups") = 1, "layer_lower_bound for every layer [L].");
  m.def("layer_time_lower_bound", [](const py::handle& w, int32_t num_slots, int32_t num_gpus,
                                     int32_t num_nodes, int32_t num_groups, double read_us,
                                     double us_per_token, const py::handle& slowdown) {
        const std::vector<double> v = to_float<double>(w, "loads", 1);
        const std::vector<double> sl = to_float<double>(slowdown, "slowdown", 1);
        MOEBAL_CHECK_ARG(!v.empty(), "time lower bound: loads of the layer are empty");
        MOEBAL_CHECK_ARG(sl.size() == static_cast<size_t>(num_gpus), "time lower bound: need one slowdown per GPU (",
                         num_gpus, "), got ", sl.size());
        return layer_time_lower_bound(v.data(), static_cast<int32_t>(v.size()), num_slots, num_gpus,
                                      num_nodes, num_groups, read_us, us_per_token, sl.data());
      },
      py::arg("loads"), py::arg("num_slots"), py::arg("num_gpus"), py::arg("num_nodes"),
      py::arg("num_groups"), py::arg("read_us"), py::arg("us_per_token"), py::arg("slowdown"),
      "Lower bound (us) on any placement's step time for one layer [E] under roofline copy times "
      "slowdown[g] * max(read_us, us_per_token * n) (0 for an empty copy); see docs/solvers.md.");
  m.def("time_lower_bounds", [](const LoadMatrix& loads, int32_t num_slots, int32_t num_gpus,
                                int32_t num_nodes, int32_t num_groups, double read_us,
                                double us_per_token, const py::handle& slowdown) {
        const std::vector<double> sl = to_float<double>(slowdown, "slowdown", 1);
        std::vector<double> r;
        {
          py::gil_scoped_release release;
          r = time_lower_bounds(loads, num_slots, num_gpus, num_nodes, num_groups, read_us, us_per_token, sl);
        }
        return to_numpy(r, {loads.num_layers});
      },
      py::arg("loads"), py::arg("num_slots"), py::arg("num_gpus"), py::arg("num_nodes"),
      py::arg("num_groups"), py::arg("read_us"), py::arg("us_per_token"), py::arg("slowdown"),
      "layer_time_lower_bound for every layer [L].");
  m.def("gpu_times", [](const LoadMatrix& loads, const Placement& p, const std::vector<PerfModel>& models) {
        return to_numpy(gpu_times(loads, p, models), {p.num_layers, p.num_gpus});
      },
      py::arg("loads"), py::arg("placement"), py::arg("models"),
      "Predicted time (us) per layer and GPU [L, G] under per-GPU perf models.");
  m.def("layer_step_times", [](const LoadMatrix& loads, const Placement& p, const std::vector<PerfModel>& models) {
        return to_numpy(layer_step_times(loads, p, models), {p.num_layers});
      },
      py::arg("loads"), py::arg("placement"), py::arg("models"),
      "Predicted MoE step time per layer (max over GPUs) [L].");
  m.def("extra_expert_bytes", &extra_expert_bytes, py::arg("placement"), py::arg("shape"),
        "Bytes of expert weights beyond one copy per expert, over all layers.");

  py::class_<PlanMetrics>(m, "PlanMetrics", "Quality of a placement under loads (see evaluate_plan).")
      .def_property_readonly("layer_ir", [](const PlanMetrics& r) { return to_numpy(r.layer_ir, {static_cast<py::ssize_t>(r.layer_ir.size())}); })
      .def_property_readonly("layer_max_load", [](const PlanMetrics& r) { return to_numpy(r.layer_max_load, {static_cast<py::ssize_t>(r.layer_max_load.size())}); })
      .def_property_readonly("layer_lower_bound", [](const PlanMetrics& r) { return to_numpy(r.layer_lower_bound, {static_cast<py::ssize_t>(r.layer_lower_bound.size())}); })
      .def_property_readonly("layer_step_us", [](const PlanMetrics& r) { return to_numpy(r.layer_step_us, {static_cast<py::ssize_t>(r.layer_step_us.size())}); })
      .def_readonly("mean_ir", &PlanMetrics::mean_ir)
      .def_readonly("max_ir", &PlanMetrics::max_ir)
      .def_readonly("gap", &PlanMetrics::gap)
      .def_readonly("step_us", &PlanMetrics::step_us)
      .def_readonly("extra_copies", &PlanMetrics::extra_copies)
      .def_readonly("extra_bytes", &PlanMetrics::extra_bytes);
  m.def("evaluate_plan", [](const LoadMatrix& loads, const Placement& p, const std::vector<PerfModel>& models,
                            const ExpertShape* shape, int32_t num_groups) {
        return evaluate_plan(loads, p, models, shape, num_groups);
      },
      py::arg("loads"), py::arg("placement"), py::arg("models") = std::vector<PerfModel>{},
      py::arg("shape") = nullptr, py::arg("num_groups") = 1,
      "IR, busiest-GPU load, lower bound and gap, predicted step time, extra copy bytes.");

  py::class_<DriftThresholds>(m, "DriftThresholds", "When load or performance drift triggers recalibration.")
      .def(py::init([](double cosine, double l1, double residual) {
             DriftThresholds t{cosine, l1, residual};
             t.validate();
             return t;
           }),
           py::arg("cosine") = 0.02, py::arg("l1") = 0.15, py::arg("residual") = 0.05)
      .def_readonly("cosine", &DriftThresholds::cosine)
      .def_readonly("l1", &DriftThresholds::l1)
      .def_readonly("residual", &DriftThresholds::residual);
  py::class_<DriftReport>(m, "DriftReport", "Per-layer load distances, per-GPU residuals, triggers.")
      .def_readonly("cosine_distance", &DriftReport::cosine_distance)
      .def_readonly("l1_distance", &DriftReport::l1_distance)
      .def_readonly("residual", &DriftReport::residual)
      .def_readonly("drifted_layers", &DriftReport::drifted_layers)
      .def_readonly("load_drift", &DriftReport::load_drift)
      .def_readonly("perf_drift", &DriftReport::perf_drift)
      .def_property_readonly("triggered", &DriftReport::triggered);
  m.def("detect_drift", &detect_drift, py::arg("planned"), py::arg("recent"),
        py::arg("thresholds") = DriftThresholds{}, py::arg("measured_us") = std::vector<double>{},
        py::arg("predicted_us") = std::vector<double>{},
        "Compare planned vs recent loads (cosine and total-variation distance per layer) and measured "
        "vs predicted per-GPU times.");
  m.def("rescale_models", &rescale_models, py::arg("models"), py::arg("measured_us"),
        py::arg("predicted_us"), "Per-GPU models scaled by measured / predicted time.");

  py::class_<RecalibrationBudget>(m, "RecalibrationBudget", "Limits of one recalibration.")
      .def(py::init([](int32_t max_moves, int64_t max_bytes, double min_gain_us) {
             RecalibrationBudget b{max_moves, max_bytes, min_gain_us};
             b.validate();
             return b;
           }),
           py::arg("max_moves") = 16, py::arg("max_bytes") = -1, py::arg("min_gain_us") = 0.0)
      .def_readonly("max_moves", &RecalibrationBudget::max_moves)
      .def_readonly("max_bytes", &RecalibrationBudget::max_bytes)
      .def_readonly("min_gain_us", &RecalibrationBudget::min_gain_us);
  py::class_<SlotMove>(m, "SlotMove", "One slot move: 'swap' (2 copies move) or 'retarget' (1 copy).")
      .def_property_readonly("kind", [](const SlotMove& s) { return s.kind == SlotMove::Swap ? "swap" : "retarget"; })
      .def_readonly("layer", &SlotMove::layer)
      .def_readonly("slot_a", &SlotMove::slot_a)
      .def_readonly("slot_b", &SlotMove::slot_b)
      .def_readonly("expert_a", &SlotMove::expert_a)
      .def_readonly("expert_b", &SlotMove::expert_b)
      .def_readonly("bytes", &SlotMove::bytes)
      .def_readonly("layer_us_before", &SlotMove::layer_us_before)
      .def_readonly("layer_us_after", &SlotMove::layer_us_after)
      .def("__repr__", [](const SlotMove& s) {
        return "SlotMove(" + std::string(s.kind == SlotMove::Swap ? "swap" : "retarget") + ", layer=" +
               std::to_string(s.layer) + ", slot_a=" + std::to_string(s.slot_a) + ", slot_b=" +
               std::to_string(s.slot_b) + ", bytes=" + std::to_string(s.bytes) + ")";
      });
  py::class_<Recalibration>(m, "Recalibration", "Result of recalibrate: new placement and the moves.")
      .def_readonly("placement", &Recalibration::placement)
      .def_readonly("moves", &Recalibration::moves)
      .def_readonly("bytes", &Recalibration::bytes)
      .def_readonly("step_us_before", &Recalibration::step_us_before)
      .def_readonly("step_us_after", &Recalibration::step_us_after);
  m.def("recalibrate", [](const Placement& cur, const LoadMatrix& loads, const std::vector<PerfModel>& models,
                          const ExpertShape& shape, const RecalibrationBudget& budget,
                          const std::vector<int32_t>& layers) {
        py::gil_scoped_release release;
        return recalibrate(cur, loads, models, shape, budget, layers);
      },
      py::arg("placement"), py::arg("loads"), py::arg("models"), py::arg("shape"),
      py::arg("budget") = RecalibrationBudget{}, py::arg("layers") = std::vector<int32_t>{},
      "Bounded greedy repair of a placement under new loads/models: a short list of slot moves.");
  m.def("replacement_bytes", &replacement_bytes, py::arg("a"), py::arg("b"), py::arg("shape"),
        "Bytes moved switching placement a to b (slots whose expert changes x weight bytes).");
}

}  // namespace moebal::python
