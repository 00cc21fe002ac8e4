// Data model: LoadMatrix, RoutingTrace, Placement, ExpertShape, PerfModel, Topology, metrics.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "moebal/core/metrics.h"
#include "moebal/core/placement.h"
#include "moebal/core/topology.h"
#include "moebal/core/trace.h"
#include "numpy_convert.h"

namespace py = pybind11;
using namespace moebal::core;

namespace moebal::python {

LoadMatrix load_matrix_from(const py::handle& obj) {
  py::array a = checked(obj, "loads", 2);
  return LoadMatrix(static_cast<int32_t>(a.shape(0)), static_cast<int32_t>(a.shape(1)),
                    to_float<double>(a, "loads", 2));
}

void bind_data_model(py::module_& m) {
  py::class_<LoadMatrix>(m, "LoadMatrix", "Per-layer expert loads [layers, experts] (EPLB's `weight`).")
      .def(py::init([](const py::handle& loads) { return load_matrix_from(loads); }), py::arg("loads"))
      .def_readonly("num_layers", &LoadMatrix::num_layers)
      .def_readonly("num_experts", &LoadMatrix::num_experts)
      .def_property_readonly("loads", [](const LoadMatrix& s) {
        return to_numpy(s.loads, {s.num_layers, s.num_experts});
      })
      .def("validate", &LoadMatrix::validate);

  m.def("sum_step_loads", [](const py::handle& obj) {
    py::array a = checked(obj, "step_loads", 3);
    return sum_step_loads(static_cast<int32_t>(a.shape(0)), static_cast<int32_t>(a.shape(1)),
                          static_cast<int32_t>(a.shape(2)), to_float<double>(a, "step_loads", 3));
  }, py::arg("step_loads"), "Sum per-step counts [steps, layers, experts] into a LoadMatrix.");

  py::class_<RoutingTrace>(m, "RoutingTrace",
                           "Token-level routing: top-k ids [layers, tokens, k] plus optional gate "
                           "weights, source rank and step per token.")
      .def(py::init([](const py::handle& ids, int32_t num_experts, const py::object& weights,
                       const py::object& src_rank, const py::object& step) {
             py::array a = checked(ids, "topk_ids", 3);
             const auto L = static_cast<int32_t>(a.shape(0)), T = static_cast<int32_t>(a.shape(1)),
                        K = static_cast<int32_t>(a.shape(2));
             std::vector<float> w;
             if (!weights.is_none()) {
               py::array wa = checked(weights, "topk_weights", 3);
               MOEBAL_CHECK_ARG(wa.shape(0) == L && wa.shape(1) == T && wa.shape(2) == K,
                                "topk_weights: shape ", shape_str(wa), " differs from topk_ids ",
                                shape_str(a));
               w = to_float<float>(wa, "topk_weights", 3);
             }
             std::vector<int32_t> r, s;
             if (!src_rank.is_none()) r = to_int32(src_rank, "src_rank", 1);
             if (!step.is_none()) s = to_int32(step, "step", 1);
             return RoutingTrace(L, T, K, num_experts, to_int32(a, "topk_ids", 3), std::move(w),
                                 std::move(r), std::move(s));
           }),
           py::arg("topk_ids"), py::arg("num_experts"), py::arg("topk_weights") = py::none(),
           py::arg("src_rank") = py::none(), py::arg("step") = py::none())
      .def_readonly("num_layers", &RoutingTrace::num_layers)
      .def_readonly("num_tokens", &RoutingTrace::num_tokens)
      .def_readonly("top_k", &RoutingTrace::top_k)
      .def_readonly("num_experts", &RoutingTrace::num_experts)
      .def_property_readonly("num_steps", &RoutingTrace::num_steps)
      .def_property_readonly("num_ranks", &RoutingTrace::num_ranks)
      .def_property_readonly("topk_ids", [](const RoutingTrace& t) {
        return to_numpy(t.topk_ids, {t.num_layers, t.num_tokens, t.top_k});
      })
      .def_property_readonly("topk_weights", [](const RoutingTrace& t) -> py::object {
        if (t.topk_weights.empty()) return py::none();
        return to_numpy(t.topk_weights, {t.num_layers, t.num_tokens, t.top_k});
      })
      .def_property_readonly("src_rank", [](const RoutingTrace& t) -> py::object {
        if (t.src_rank.empty()) return py::none();
        return to_numpy(t.src_rank, {t.num_tokens});
      })
      .def_property_readonly("step", [](const RoutingTrace& t) -> py::object {
        if (t.step.empty()) return py::none();
        return to_numpy(t.step, {t.num_tokens});
      })
      .def("loads", [](const RoutingTrace& t) { return t.loads(); })
      .def("loads", [](const RoutingTrace& t, int32_t b, int32_t e) { return t.loads(b, e); },
           py::arg("step_begin"), py::arg("step_end"))
      .def("step_loads", [](const RoutingTrace& t) {
        return to_numpy(t.step_loads(), {t.num_steps(), t.num_layers, t.num_experts});
      })
      .def("coactivation", [](const RoutingTrace& t, int32_t layer) {
        return to_numpy(t.coactivation(layer), {t.num_experts, t.num_experts});
      }, py::arg("layer"))
      .def("rank_expert_counts", [](const RoutingTrace& t, int32_t layer) {
        return to_numpy(t.rank_expert_counts(layer), {t.num_ranks(), t.num_experts});
      }, py::arg("layer"));

  py::class_<Placement>(m, "Placement",
                        "EPLB-compatible placement: phy2log [L,S], log2phy [L,E,C] (-1 padded), "
                        "logcnt [L,E]; slot s on GPU s // (S/G), GPU g on node g // (G/N).")
      .def(py::init([](const py::handle& phy2log, const py::handle& log2phy, const py::handle& logcnt,
                       int32_t num_gpus, int32_t num_nodes) {
             py::array p = checked(phy2log, "phy2log", 2), q = checked(log2phy, "log2phy", 3),
                       c = checked(logcnt, "logcnt", 2);
             Placement pl;
             pl.num_layers = static_cast<int32_t>(p.shape(0));
             pl.num_slots = static_cast<int32_t>(p.shape(1));
             pl.num_experts = static_cast<int32_t>(q.shape(1));
             pl.max_copies = static_cast<int32_t>(q.shape(2));
             pl.num_gpus = num_gpus;
             pl.num_nodes = num_nodes;
             MOEBAL_CHECK_ARG(q.shape(0) == pl.num_layers && c.shape(0) == pl.num_layers &&
                                  c.shape(1) == pl.num_experts,
                              "placement: shapes disagree: phy2log ", shape_str(p), ", log2phy ",
                              shape_str(q), ", logcnt ", shape_str(c));
             pl.phy2log = to_int32(p, "phy2log", 2);
             pl.log2phy = to_int32(q, "log2phy", 3);
             pl.logcnt = to_int32(c, "logcnt", 2);
             pl.validate();
             return pl;
           }),
           py::arg("phy2log"), py::arg("log2phy"), py::arg("logcnt"), py::arg("num_gpus"),
           py::arg("num_nodes") = 1)
      .def_static("from_phy2log", [](const py::handle& phy2log, int32_t num_experts, int32_t num_gpus,
                                     int32_t num_nodes, int32_t max_copies) {
             py::array p = checked(phy2log, "phy2log", 2);
             return Placement::from_phy2log(static_cast<int32_t>(p.shape(0)), num_experts,
                                            static_cast<int32_t>(p.shape(1)), num_gpus, num_nodes,
                                            to_int32(p, "phy2log", 2), max_copies);
           },
           py::arg("phy2log"), py::arg("num_experts"), py::arg("num_gpus"), py::arg("num_nodes") = 1,
           py::arg("max_copies") = 0)
      .def_static("contiguous", &Placement::contiguous, py::arg("num_layers"), py::arg("num_experts"),
                  py::arg("num_gpus"), py::arg("num_nodes") = 1)
      .def_readonly("num_layers", &Placement::num_layers)
      .def_readonly("num_experts", &Placement::num_experts)
      .def_readonly("num_slots", &Placement::num_slots)
      .def_readonly("num_gpus", &Placement::num_gpus)
      .def_readonly("num_nodes", &Placement::num_nodes)
      .def_readonly("max_copies", &Placement::max_copies)
      .def_property_readonly("slots_per_gpu", &Placement::slots_per_gpu)
      .def_property_readonly("gpus_per_node", &Placement::gpus_per_node)
      .def_property_readonly("phy2log", [](const Placement& p) {
        return to_numpy(p.phy2log, {p.num_layers, p.num_slots});
      })
      .def_property_readonly("log2phy", [](const Placement& p) {
        return to_numpy(p.log2phy, {p.num_layers, p.num_experts, p.max_copies});
      })
      .def_property_readonly("logcnt", [](const Placement& p) {
        return to_numpy(p.logcnt, {p.num_layers, p.num_experts});
      })
      .def_property_readonly("slot_to_gpu", [](const Placement& p) {
        std::vector<int32_t> v(p.num_slots);
        for (int32_t s = 0; s < p.num_slots; ++s) v[s] = p.gpu_of_slot(s);
        return to_numpy(v, {p.num_slots});
      })
      .def_property_readonly("gpu_to_node", [](const Placement& p) {
        std::vector<int32_t> v(p.num_gpus);
        for (int32_t g = 0; g < p.num_gpus; ++g) v[g] = p.node_of_gpu(g);
        return to_numpy(v, {p.num_gpus});
      })
      .def("validate", &Placement::validate);

  py::class_<ExpertShape>(m, "ExpertShape", "One expert FFN: hidden, ffn, bytes per element.")
      .def(py::init<int64_t, int64_t, int32_t>(), py::arg("hidden"), py::arg("ffn"),
           py::arg("dtype_bytes") = 2)
      .def_readonly("hidden", &ExpertShape::hidden)
      .def_readonly("ffn", &ExpertShape::ffn)
      .def_readonly("dtype_bytes", &ExpertShape::dtype_bytes)
      .def_property_readonly("weight_bytes", &ExpertShape::weight_bytes)
      .def_property_readonly("token_bytes", &ExpertShape::token_bytes)
      .def("flops", &ExpertShape::flops, py::arg("tokens"));

  py::class_<PerfModel>(m, "PerfModel", "Expert time (us) vs tokens on one GPU, piecewise linear.")
      .def(py::init<std::vector<double>, std::vector<double>>(), py::arg("tokens"), py::arg("micros"))
      .def_static("linear", &PerfModel::linear, py::arg("fixed_us"), py::arg("us_per_token"))
      .def_static("fit", &PerfModel::fit, py::arg("tokens"), py::arg("micros"), py::arg("num_knots") = 8)
      .def("time_us", &PerfModel::time_us, py::arg("tokens"))
      .def("__call__", [](const PerfModel& p, const py::array_t<double, py::array::forcecast>& n) {
        py::array_t<double> out(n.request().shape);
        for (py::ssize_t i = 0; i < n.size(); ++i) out.mutable_data()[i] = p.time_us(n.data()[i]);
        return out;
      }, py::arg("tokens"))
      .def("scaled", &PerfModel::scaled, py::arg("factor"))
      .def_property_readonly("knot_tokens", &PerfModel::knot_tokens)
      .def_property_readonly("knot_micros", &PerfModel::knot_micros);

  py::class_<Topology>(m, "Topology", "Nodes x GPUs, link bandwidths (GB/s), per-GPU perf models.")
      .def(py::init<int32_t, int32_t, double, double, double, std::vector<PerfModel>>(),
           py::arg("num_nodes"), py::arg("gpus_per_node"), py::arg("nvlink_GBps") = 450.0,
           py::arg("network_GBps") = 50.0, py::arg("pcie_GBps") = 55.0,
           py::arg("gpu_models") = std::vector<PerfModel>{})
      .def_readonly("num_nodes", &Topology::num_nodes)
      .def_readonly("gpus_per_node", &Topology::gpus_per_node)
      .def_readonly("nvlink_GBps", &Topology::nvlink_GBps)
      .def_readonly("network_GBps", &Topology::network_GBps)
      .def_readonly("pcie_GBps", &Topology::pcie_GBps)
      .def_readonly("gpu_models", &Topology::gpu_models)
      .def_property_readonly("num_gpus", &Topology::num_gpus)
      .def("node_of", &Topology::node_of, py::arg("gpu"))
      .def("bandwidth_GBps", &Topology::bandwidth_GBps, py::arg("gpu_a"), py::arg("gpu_b"))
      .def("transfer_us", &Topology::transfer_us, py::arg("bytes"), py::arg("gpu_a"), py::arg("gpu_b"));

  m.def("gpu_loads", [](const LoadMatrix& loads, const Placement& p) {
    return to_numpy(gpu_loads(loads, p), {p.num_layers, p.num_gpus});
  }, py::arg("loads"), py::arg("placement"),
        "Tokens per GPU per layer [L, G], each expert's load split evenly over its copies.");
  m.def("layer_imbalance", [](const LoadMatrix& loads, const Placement& p) {
    return to_numpy(layer_imbalance(loads, p), {p.num_layers});
  }, py::arg("loads"), py::arg("placement"), "max/mean GPU load per layer [L].");
}

}  // namespace moebal::python
