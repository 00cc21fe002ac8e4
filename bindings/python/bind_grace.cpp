// GRACE-MoE placement, token -> replica assignment (CPU reference) and all-to-all byte accounting.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "moebal/core/assign.h"
#include "moebal/core/grace.h"
#include "moebal/core/traffic.h"
#include "numpy_convert.h"

namespace py = pybind11;
using namespace moebal::core;

namespace moebal::python {
namespace {

GraceOptions options(double r, uint64_t seed, int32_t refine_passes, double balance_tol = -1.0) {
  GraceOptions o;
  o.balance_tol = balance_tol;
  o.r = r;
  o.seed = seed;
  o.refine_passes = refine_passes;
  o.validate();
  return o;
}

py::dict bytes_dict(const A2ABytes& b) {
  py::dict d;
  d["pairs_intra"] = b.pairs_intra;
  d["pairs_cross"] = b.pairs_cross;
  d["flat_intra"] = b.flat_intra;
  d["flat_cross"] = b.flat_cross;
  d["hier_intra"] = b.hier_intra;
  d["hier_cross"] = b.hier_cross;
  return d;
}

}  // namespace

void bind_grace(py::module_& m) {
  m.def("grace_plan",
        [](const LoadMatrix& loads, const py::object& trace, const py::object& coactivation, int32_t num_slots,
           int32_t num_gpus, int32_t num_nodes, double r, uint64_t seed, int32_t refine_passes, double balance_tol) {
          const GraceOptions o = options(r, seed, refine_passes, balance_tol);
          MOEBAL_CHECK_ARG(trace.is_none() != coactivation.is_none(),
                           "grace_plan: pass exactly one of trace (RoutingTrace) or coactivation [L, E, E]");
          if (!trace.is_none()) {
            const auto& t = trace.cast<const RoutingTrace&>();
            py::gil_scoped_release nogil;
            return grace_plan(loads, t, num_slots, num_gpus, num_nodes, o);
          }
          std::vector<double> c = to_float<double>(coactivation, "coactivation", 3);
          py::gil_scoped_release nogil;
          return grace_plan(loads, c, num_slots, num_gpus, num_nodes, o);
        },
        py::arg("loads"), py::kw_only(), py::arg("trace") = py::none(), py::arg("coactivation") = py::none(),
        py::arg("num_slots"), py::arg("num_gpus"), py::arg("num_nodes") = 1, py::arg("r") = 0.15,
        py::arg("seed") = GraceOptions{}.seed, py::arg("refine_passes") = GraceOptions{}.refine_passes,
        py::arg("balance_tol") = GraceOptions{}.balance_tol,
        "GRACE-MoE placement: hierarchical co-activation grouping (node, then GPU with tolerance r) and "
        "replication of hot experts by skew into the spare slots.");

  m.def("grace_grouping",
        [](const py::handle& coact, int32_t num_gpus, int32_t num_nodes, int32_t slots_per_gpu, double r, uint64_t seed,
           int32_t refine_passes, const py::object& loads_obj, double balance_tol) {
          py::array a = checked(coact, "coactivation", 2);
          MOEBAL_CHECK_ARG(a.shape(0) == a.shape(1), "coactivation: must be square, got ", shape_str(a));
          const auto E = static_cast<int32_t>(a.shape(0));
          const std::vector<double> c = to_float<double>(a, "coactivation", 2);
          std::vector<double> w;
          if (!loads_obj.is_none()) {
            w = to_float<double>(loads_obj, "loads", 1);
            MOEBAL_CHECK_ARG(w.size() == static_cast<size_t>(E), "loads: expected ", E, " entries, got ", w.size());
          }
          const std::vector<int32_t> g = grace_grouping(c.data(), E, num_gpus, num_nodes, slots_per_gpu,
                                                       options(r, seed, refine_passes, balance_tol),
                                                       w.empty() ? nullptr : w.data());
          return to_numpy(g, {E});
        },
        py::arg("coactivation"), py::arg("num_gpus"), py::arg("num_nodes") = 1, py::arg("slots_per_gpu"),
        py::arg("r") = 0.15, py::arg("seed") = GraceOptions{}.seed, py::arg("refine_passes") = GraceOptions{}.refine_passes,
        py::arg("loads") = py::none(), py::arg("balance_tol") = GraceOptions{}.balance_tol,
        "Primary GPU of every expert of one layer from its co-activation matrix [E, E].");

  m.def("grace_knee_r",
        [](const RoutingTrace& trace, int32_t num_gpus, int32_t num_nodes, int32_t slots_per_gpu,
           std::vector<double> candidates, uint64_t seed, int32_t refine_passes) {
          const size_t EE = static_cast<size_t>(trace.num_experts) * trace.num_experts;
          std::vector<double> coact(trace.num_layers * EE);
          for (int32_t l = 0; l < trace.num_layers; ++l) {
            const std::vector<double> c = trace.coactivation(l);
            std::copy(c.begin(), c.end(), coact.begin() + l * EE);
          }
          const KneeResult k = grace_knee_r(coact, trace.num_layers, trace.num_experts, num_gpus, num_nodes,
                                            slots_per_gpu, candidates, options(0.15, seed, refine_passes));
          py::dict d;
          d["r"] = k.r;
          d["candidates"] = k.candidates;
          d["U"] = k.u;
          d["S"] = k.s;
          return d;
        },
        py::arg("trace"), py::arg("num_gpus"), py::arg("num_nodes") = 1, py::arg("slots_per_gpu"),
        py::arg("candidates") = std::vector<double>{0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5},
        py::arg("seed") = GraceOptions{}.seed, py::arg("refine_passes") = GraceOptions{}.refine_passes,
        "The paper's knee selection of r: U(r) (intra-GPU co-activation share) vs S(r) (RMS group-size "
        "deviation) over candidate r; returns {'r', 'candidates', 'U', 'S'}.");

  m.def("intra_group_affinity",
        [](const py::handle& coact, const py::handle& group_of) {
          py::array a = checked(coact, "coactivation", 2);
          const auto E = static_cast<int32_t>(a.shape(0));
          MOEBAL_CHECK_ARG(a.shape(1) == E, "coactivation: must be square, got ", shape_str(a));
          const std::vector<double> c = to_float<double>(a, "coactivation", 2);
          const std::vector<int32_t> g = to_int32(group_of, "group_of", 1);
          MOEBAL_CHECK_ARG(g.size() == static_cast<size_t>(E), "group_of: expected ", E, " entries, got ", g.size());
          return intra_group_affinity(c.data(), E, g.data());
        },
        py::arg("coactivation"), py::arg("group_of"),
        "Share of the off-diagonal co-activation mass whose two experts share a group.");

  m.def("assign_replicas",
        [](const py::handle& ids_obj, const py::handle& src_obj, const Placement& p, int32_t layer,
           const std::string& policy, const py::object& quota_obj, const py::object& weights_obj) {
          py::array ids_a = checked(ids_obj, "topk_ids", 2);
          const int64_t T = ids_a.shape(0);
          const auto K = static_cast<int32_t>(ids_a.shape(1));
          const std::vector<int32_t> ids = to_int32(ids_a, "topk_ids", 2), src = to_int32(src_obj, "src_rank", 1);
          MOEBAL_CHECK_ARG(src.size() == static_cast<size_t>(T), "src_rank: expected ", T, " entries, got ", src.size());
          std::vector<int32_t> quota, w;
          if (!quota_obj.is_none()) {
            py::array q = checked(quota_obj, "quota", 3);
            MOEBAL_CHECK_ARG(q.shape(0) == p.num_gpus && q.shape(1) == p.num_experts && q.shape(2) == p.num_gpus,
                             "quota: expected shape (", p.num_gpus, ", ", p.num_experts, ", ", p.num_gpus, "), got ",
                             shape_str(q));
            quota = to_int32(q, "quota", 3);
          }
          if (!weights_obj.is_none()) {
            w = to_int32(weights_obj, "slot_weights", 1);
            MOEBAL_CHECK_ARG(w.size() == static_cast<size_t>(p.num_slots), "slot_weights: expected ", p.num_slots,
                             " entries, got ", w.size());
          }
          std::vector<int32_t> out(ids.size());
          assign_replicas(ids.data(), src.data(), T, K, replica_table(p, layer), parse_assign_policy(policy),
                          quota.empty() ? nullptr : quota.data(), w.empty() ? nullptr : w.data(), out.data());
          return to_numpy(out, {static_cast<py::ssize_t>(T), K});
        },
        py::arg("topk_ids"), py::arg("src_rank"), py::arg("placement"), py::arg("layer") = 0,
        py::arg("policy") = "locality", py::arg("quota") = py::none(), py::arg("slot_weights") = py::none(),
        "CPU reference of token -> replica assignment: slot [T, K] for topk_ids [T, K] from GPUs src_rank [T].");

  m.def("a2a_bytes",
        [](const py::handle& slots_obj, const py::handle& src_obj, const Placement& p, int64_t token_bytes) {
          py::array s = checked(slots_obj, "slots", 2);
          const std::vector<int32_t> slots = to_int32(s, "slots", 2), src = to_int32(src_obj, "src_rank", 1);
          MOEBAL_CHECK_ARG(src.size() == static_cast<size_t>(s.shape(0)), "src_rank: expected ", s.shape(0),
                           " entries, got ", src.size());
          return bytes_dict(a2a_bytes(slots.data(), src.data(), s.shape(0), static_cast<int32_t>(s.shape(1)),
                                      p.num_slots, p.num_gpus, p.num_nodes, token_bytes));
        },
        py::arg("slots"), py::arg("src_rank"), py::arg("placement"), py::arg("token_bytes"),
        "Dispatch + combine bytes of one layer's assignment: pairs/flat/hier x intra/cross node.");

  m.def("load_slot_weights",
        [](const LoadMatrix& loads, const Placement& p) {
          return to_numpy(load_slot_weights(loads, p), {p.num_layers, p.num_slots});
        },
        py::arg("loads"), py::arg("placement"),
        "GRACE routing weight per slot [L, S], proportional to 1 / predicted load of the slot's GPU.");

  m.def("trace_traffic",
        [](const RoutingTrace& trace, const Placement& p, const std::string& policy, int64_t token_bytes,
           const py::object& weights_obj) {
          std::vector<int32_t> w;
          if (!weights_obj.is_none()) w = to_int32(weights_obj, "slot_weights", 2);
          std::vector<LayerTraffic> r;
          {
            py::gil_scoped_release nogil;
            r = trace_traffic(trace, p, parse_assign_policy(policy), token_bytes, w);
          }
          const auto L = static_cast<py::ssize_t>(r.size());
          py::dict d;
          const char* names[] = {"pairs_intra", "pairs_cross", "flat_intra", "flat_cross", "hier_intra", "hier_cross"};
          for (int f = 0; f < 6; ++f) {
            std::vector<int64_t> v(L);
            for (py::ssize_t l = 0; l < L; ++l) {
              const A2ABytes& b = r[l].bytes;
              const int64_t vals[] = {b.pairs_intra, b.pairs_cross, b.flat_intra, b.flat_cross, b.hier_intra, b.hier_cross};
              v[l] = vals[f];
            }
            d[names[f]] = to_numpy(v, {L});
          }
          std::vector<double> gt, ir(L);
          for (py::ssize_t l = 0; l < L; ++l) {
            gt.insert(gt.end(), r[l].gpu_tokens.begin(), r[l].gpu_tokens.end());
            ir[l] = r[l].imbalance;
          }
          d["gpu_tokens"] = to_numpy(gt, {L, p.num_gpus});
          d["imbalance"] = to_numpy(ir, {L});
          return d;
        },
        py::arg("trace"), py::arg("placement"), py::arg("policy") = "weighted_locality", py::arg("token_bytes"),
        py::arg("slot_weights") = py::none(),
        "Assign every layer of a trace and count all-to-all bytes per layer (arrays [L]) plus rows per GPU "
        "[L, G] and the assigned imbalance [L].");
}

}  // namespace moebal::python
