"""eplb drop-in API, the policies behind moebal.policies, metrics/lower bound, drift/recalibration."""
from __future__ import annotations

import numpy as np
import pytest

import moebal
from moebal import _core, plan_metrics, policies, solvers

torch = pytest.importorskip("torch")
from moebal.eplb import rebalance_experts  # noqa: E402


def test_eplb_hierarchical_hand_computed():
    # Worked by hand in tests/cpp/test_solvers.cpp (Eplb.HierarchicalHandComputed).
    w = torch.tensor([[9, 1, 4, 4, 2, 2, 6, 0]], dtype=torch.float32)
    phy2log, log2phy, logcnt = rebalance_experts(w, 12, 4, 2, 4)
    assert phy2log.dtype == log2phy.dtype == logcnt.dtype == torch.int64
    assert phy2log.device.type == log2phy.device.type == logcnt.device.type == "cpu"
    assert phy2log.tolist() == [[0, 0, 1, 0, 4, 5, 3, 2, 2, 6, 6, 7]]
    assert logcnt.tolist() == [[3, 1, 2, 1, 1, 1, 2, 1]]
    assert log2phy.shape == (1, 8, 5)
    assert log2phy[0, 0].tolist() == [0, 3, 1, -1, -1]  # replica ranks 0, 1, 2 of expert 0
    assert log2phy[0, 2].tolist() == [7, 8, -1, -1, -1]
    assert log2phy[0, 6].tolist() == [9, 10, -1, -1, -1]


def test_eplb_global_hand_computed_and_integer_input():
    # 4 % 3 != 0: global policy (see Eplb.GlobalHandComputed). Integer counts are accepted.
    w = torch.tensor([[10, 5, 3, 2]], dtype=torch.int64)
    phy2log, log2phy, logcnt = rebalance_experts(w, 6, 4, 3, 3)
    assert phy2log.tolist() == [[1, 3, 0, 0, 0, 2]]
    assert log2phy.tolist() == [[[2, 4, 3], [0, -1, -1], [5, -1, -1], [1, -1, -1]]]
    assert logcnt.tolist() == [[3, 1, 1, 1]]


@pytest.mark.parametrize("layers,experts,replicas,groups,nodes,gpus",
                         [(3, 16, 20, 4, 2, 4), (2, 12, 16, 3, 2, 4), (5, 7, 14, 1, 1, 7), (1, 32, 40, 8, 4, 8)])
def test_eplb_tables_consistent(layers, experts, replicas, groups, nodes, gpus):
    g = torch.Generator().manual_seed(layers * 100 + experts)
    w = torch.randint(0, 1000, (layers, experts), generator=g).float()
    phy2log, log2phy, logcnt = rebalance_experts(w, replicas, groups, nodes, gpus)
    assert phy2log.shape == (layers, replicas)
    assert log2phy.shape == (layers, experts, replicas - experts + 1)
    assert logcnt.shape == (layers, experts)
    assert (logcnt >= 1).all() and (logcnt.sum(-1) == replicas).all()
    for l in range(layers):
        for e in range(experts):
            slots = log2phy[l, e]
            c = int(logcnt[l, e])
            assert (slots[c:] == -1).all()
            assert (phy2log[l, slots[:c]] == e).all()
    # The same tables as a moebal Placement pass validation.
    moebal.Placement(phy2log.numpy(), log2phy.numpy(), logcnt.numpy(), gpus, nodes if groups % nodes == 0 else 1)


def test_eplb_bad_input():
    w = torch.ones(2, 8)
    with pytest.raises(ValueError, match="num_replicas"):
        rebalance_experts(w, 6, 1, 1, 2)
    with pytest.raises(ValueError, match="divisible by num_gpus"):
        rebalance_experts(w, 10, 1, 1, 4)
    with pytest.raises(ValueError, match="divisible by num_groups"):
        rebalance_experts(w, 8, 3, 1, 2)
    with pytest.raises(ValueError, match="num_gpus .* divisible by num_nodes"):
        rebalance_experts(w, 12, 2, 2, 3)
    with pytest.raises(ValueError, match="not finite"):
        rebalance_experts(torch.tensor([[1.0, float("nan")]]), 2, 1, 1, 1)
    with pytest.raises(ValueError, match="negative"):
        rebalance_experts(torch.tensor([[1.0, -2.0]]), 2, 1, 1, 1)
    with pytest.raises(ValueError, match="2-D"):
        rebalance_experts(torch.ones(8), 8, 1, 1, 1)
    with pytest.raises(ValueError, match="non-empty"):
        rebalance_experts(torch.ones(0, 8), 8, 1, 1, 1)
    with pytest.raises(ValueError, match="real number"):
        rebalance_experts(torch.ones(2, 8, dtype=torch.bool), 8, 1, 1, 1)
    with pytest.raises(ValueError, match="meta"):
        rebalance_experts(torch.ones(2, 8, device="meta"), 8, 1, 1, 1)
    with pytest.raises(ValueError, match="num_gpus must be an int"):
        rebalance_experts(w, 8, 1, 1, 2.0)
    with pytest.raises(ValueError, match="num_groups must be > 0"):
        rebalance_experts(w, 8, 0, 1, 2)
    with pytest.raises(TypeError):
        rebalance_experts(np.ones((2, 8)), 8, 1, 1, 2)


def _max_loads(loads, p):
    return moebal.gpu_loads(loads, p).max(axis=1)


def test_policies_registered_and_bad_input():
    names = policies.available_policies()
    for n in ("eplb", "balanced", "vibe"):
        assert n in names
    loads = np.arange(8, dtype=float)[None, :] + 1
    with pytest.raises(ValueError, match="needs a topology"):
        policies.plan("vibe", loads, num_slots=8, num_gpus=2)
    with pytest.raises(ValueError, match="num_slots .* must be >= num_experts"):
        policies.plan("balanced", loads, num_slots=6, num_gpus=2)
    with pytest.raises(ValueError, match="divisible by num_groups"):
        policies.plan("balanced", loads, num_slots=8, num_gpus=4, num_nodes=2, num_groups=6)
    with pytest.raises(ValueError, match="not finite"):
        policies.plan("balanced", np.array([[1.0, np.nan]]), num_slots=2, num_gpus=1)
    with pytest.raises(ValueError, match="negative"):
        policies.plan("eplb", np.array([[1.0, -1.0]]), num_slots=2, num_gpus=1)
    with pytest.raises(ValueError, match="topology has 2 GPUs"):
        policies.plan("vibe", loads, num_slots=8, num_gpus=4,
                      topology=solvers.topology_with_models(1, 2, [moebal.PerfModel.linear(0, 1)] * 2))


def test_random_properties_all_policies():
    """Invariants on random inputs for every registered policy (the C++ suite runs 1500 more)."""
    rng = np.random.default_rng(5)
    checked = 0
    for case in range(300):
        nodes = int(rng.integers(1, 3))
        gpn = int(rng.integers(1, 4))
        gpus = nodes * gpn
        groups = nodes * int(rng.integers(1, 3)) if rng.random() < 0.5 else 1
        experts = groups * int(rng.integers(1, 6)) if groups > 1 else int(rng.integers(1, 25))
        k = -(-experts // gpus) + int(rng.integers(0, 3))
        slots = k * gpus
        w = np.floor(rng.pareto(1.2, size=(int(rng.integers(1, 3)), experts)) * 100)
        loads = moebal.LoadMatrix(w)
        models = solvers.speed_spread_models(gpus, 0.15, moebal.ExpertShape(64, 128, 2), seed=case)
        topo = solvers.topology_with_models(nodes, gpn, models)
        lb_any = plan_metrics.lower_bounds(loads, slots, gpus, nodes, 1)
        lb_grp = plan_metrics.lower_bounds(loads, slots, gpus, nodes, groups)
        got = {}
        for name in policies.available_policies():
            try:
                p = policies.plan(name, loads, num_slots=slots, num_gpus=gpus, num_nodes=nodes,
                                  num_groups=groups, topology=topo)
            except ValueError:
                continue  # e.g. contiguous needs slots == experts
            p.validate()
            assert (p.logcnt >= 1).all()
            gl = moebal.gpu_loads(loads, p)
            np.testing.assert_allclose(gl.sum(axis=1), w.sum(axis=1), rtol=1e-9, atol=1e-9)
            mx = gl.max(axis=1)
            assert (mx >= lb_any * (1 - 1e-9)).all(), (name, case)
            got[name] = (p, mx)
        for name in ("eplb", "balanced", "vibe"):
            assert (got[name][1] >= lb_grp * (1 - 1e-9)).all(), (name, case)
        assert (got["balanced"][1] <= got["eplb"][1]).all(), case
        t = {n: plan_metrics.layer_step_times(loads, got[n][0], models) for n in ("eplb", "balanced", "vibe")}
        assert (t["vibe"] <= t["balanced"] * (1 + 1e-12)).all()
        assert (t["vibe"] <= t["eplb"] * (1 + 1e-12)).all()
        checked += 1
    assert checked == 300


def test_vibe_equal_models_no_worse_than_balanced():
    rng = np.random.default_rng(0)
    loads = moebal.LoadMatrix(np.floor(rng.zipf(1.5, size=(4, 64)).astype(float)))
    shape = moebal.ExpertShape(1024, 512, 2)
    models = solvers.speed_spread_models(8, 0.0, shape)
    topo = solvers.topology_with_models(1, 8, models)
    b = policies.plan("balanced", loads, num_slots=72, num_gpus=8)
    v = policies.plan("vibe", loads, num_slots=72, num_gpus=8, topology=topo)
    assert (plan_metrics.layer_step_times(loads, v, models)
            <= plan_metrics.layer_step_times(loads, b, models) * (1 + 1e-12)).all()


def test_evaluate_and_h100_model():
    shape = moebal.ExpertShape(7168, 2048, 2)
    m = solvers.h100_expert_model(shape)
    read_us = shape.weight_bytes / (3.01e12 * 0.85) * 1e6
    assert m.time_us(1) == pytest.approx(read_us)
    assert m.time_us(0) == 0
    per_tok = shape.flops(1.0) / (790e12 * 0.8) * 1e6
    assert m.time_us(10000) == pytest.approx(10000 * per_tok)
    loads = moebal.LoadMatrix(np.array([[4.0, 2, 1, 1]]))
    p = moebal.Placement.from_phy2log(np.array([[0, 1, 2, 3]]), 4, 2)
    r = plan_metrics.evaluate(loads, p, models=[m, m.scaled(1.1)], shape=shape)
    assert r["layer_max_load"][0] == 6 and r["layer_ir"][0] == 1.5
    assert r["layer_lower_bound"][0] == 5 and r["gap"] == pytest.approx(0.2)
    assert r["extra_bytes"] == 0 and r["step_us"] > 0


def test_drift_and_recalibration():
    shape = moebal.ExpertShape(256, 512, 2)
    models = solvers.speed_spread_models(4, 0.07, shape, seed=3)
    topo = solvers.topology_with_models(1, 4, models)
    flat = moebal.LoadMatrix(np.full((2, 16), 500.0))
    hot_w = np.full((2, 16), 500.0)
    hot_w[1, 3] = 8000
    hot = moebal.LoadMatrix(hot_w)
    p = policies.plan("vibe", flat, num_slots=20, num_gpus=4, topology=topo)
    rep = solvers.detect_drift(flat, hot)
    assert rep.drifted_layers == [1] and rep.load_drift and not rep.perf_drift
    budget = solvers.RecalibrationBudget(max_moves=4, max_bytes=3 * shape.weight_bytes)
    r = solvers.recalibrate(p, hot, models, shape, budget, rep.drifted_layers)
    assert 0 < len(r.moves) <= 4 and r.bytes <= 3 * shape.weight_bytes
    assert all(mv.layer == 1 for mv in r.moves)
    assert r.step_us_after[1] < r.step_us_before[1] and r.step_us_after[0] == r.step_us_before[0]
    assert sum(mv.bytes for mv in r.moves) == r.bytes
    r.placement.validate()
    with pytest.raises(ValueError, match="max_moves"):
        solvers.RecalibrationBudget(max_moves=-1)
    with pytest.raises(ValueError, match="cosine"):
        solvers.DriftThresholds(cosine=float("nan"))


def _roofline_time(w, row, slow, read_us, per_tok):
    """Slowest GPU's roofline time of one layer's slot -> expert row (GPU g holds row[g*k:(g+1)*k])."""
    k = len(row) // len(slow)
    cnt = np.bincount(row, minlength=len(w))
    per_copy = np.where(w[row] > 0, np.maximum(read_us, per_tok * w[row] / cnt[row]), 0.0)
    return float((per_copy.reshape(len(slow), k).sum(axis=1) * slow).max())


def test_time_lower_bound_below_brute_force_optimum():
    """The roofline time bound never exceeds the exact optimum over every placement (small cases,
    with empty experts and the group constraint), and vibe never goes below it."""
    import itertools
    rng = np.random.default_rng(3)
    checked = tight = 0
    for _ in range(400):
        G = int(rng.integers(1, 4))
        N = G if G > 1 and rng.random() < 0.5 else 1
        groups = N if N > 1 and rng.random() < 0.5 else 1
        E = int(rng.integers(1, 4))
        if groups > 1:
            E = groups * max(1, E // groups)
        k = -(-E // G) + int(rng.integers(0, 2))
        S = k * G
        if E ** S > 5000:
            continue
        w = np.where(rng.random(E) < 0.25, 0.0, np.floor(rng.random(E) * 400))
        read_us, per_tok = float(rng.uniform(1, 60)), float(rng.uniform(0.05, 1.0))
        slow = rng.uniform(1.0, 1.3, size=G)
        gsize, spn = E // groups, S // N
        best = np.inf
        for row in itertools.product(range(E), repeat=S):
            row = np.array(row)
            if len(set(row.tolist())) < E:
                continue
            if N > 1 and groups % N == 0 and any(
                    len({s // spn for s in range(S) if row[s] // gsize == grp}) > 1 for grp in range(groups)):
                continue
            best = min(best, _roofline_time(w, row, slow, read_us, per_tok))
        lb = plan_metrics.layer_time_lower_bound(w, S, G, N, groups, read_us, per_tok, slow)
        assert lb <= best * (1 + 1e-9), (w, S, G, N, groups)
        tight += lb >= best * (1 - 1e-9)
        models = [_core.PerfModel([read_us / per_tok, 2 * read_us / per_tok], [read_us, 2 * read_us]).scaled(float(s))
                  for s in slow]
        loads = moebal.LoadMatrix(w[None, :])
        v = policies.plan("vibe", loads, num_slots=S, num_gpus=G, num_nodes=N, num_groups=groups,
                          topology=solvers.topology_with_models(N, G // N, models))
        assert plan_metrics.layer_step_times(loads, v, models)[0] >= best * (1 - 1e-9)
        checked += 1
    assert checked > 250 and tight > checked // 2


def test_time_lower_bound_matches_bench_models_and_bad_input():
    shape = moebal.ExpertShape(7168, 2048, 2)
    read_us, per_tok = solvers.h100_roofline(shape)
    slow = solvers.speed_spread_slowdowns(8, 0.07, seed=1)
    models = solvers.speed_spread_models(8, 0.07, shape, seed=1)
    for s, m in zip(slow, models):  # the bound's (read_us, us_per_token, slowdown) are the models'
        assert m.time_us(1) == pytest.approx(s * read_us)
        assert m.time_us(5000) == pytest.approx(s * 5000 * per_tok)
    loads = moebal.LoadMatrix(np.random.default_rng(1).integers(0, 500, size=(3, 64)).astype(float))
    lb = plan_metrics.time_lower_bounds(loads, 72, 8, 1, 1, read_us, per_tok, slow)
    v = policies.plan("vibe", loads, num_slots=72, num_gpus=8, topology=solvers.topology_with_models(1, 8, models))
    assert (plan_metrics.layer_step_times(loads, v, models) >= lb * (1 - 1e-9)).all()
    with pytest.raises(ValueError, match="one slowdown per GPU"):
        plan_metrics.time_lower_bounds(loads, 72, 8, 1, 1, read_us, per_tok, slow[:7])
    with pytest.raises(ValueError, match="read_us"):
        plan_metrics.time_lower_bounds(loads, 72, 8, 1, 1, -1.0, per_tok, slow)
    with pytest.raises(ValueError, match="slowdown of GPU 2"):
        plan_metrics.layer_time_lower_bound(np.ones(64), 72, 8, 1, 1, read_us, per_tok,
                                            np.array([1, 1, 0, 1, 1, 1, 1, 1.0]))
    with pytest.raises(ValueError, match="speed spread"):
        solvers.speed_spread_slowdowns(8, -0.1)


@pytest.mark.parametrize("gpus,nodes,groups,extra", [(8, 1, 1, 1), (16, 2, 4, 1), (12, 3, 6, 2), (8, 4, 8, 0)])
def test_vibe_never_worse_than_eplb_at_equal_speeds(gpus, nodes, groups, extra):
    """At 0% speed spread (equal H100 roofline models) vibe's predicted step time is <= eplb's on
    every layer: skewed, flat and sparse loads."""
    rng = np.random.default_rng(gpus * 100 + extra)
    E = 48
    shape = moebal.ExpertShape(2048, 1024, 2)
    models = solvers.speed_spread_models(gpus, 0.0, shape)
    topo = solvers.topology_with_models(nodes, gpus // nodes, models)
    for kind in range(3):
        if kind == 0:
            p = 1.0 / np.arange(1, E + 1) ** 1.1
            w = np.stack([rng.multinomial(24000, rng.permutation(p) / p.sum()) for _ in range(5)])
        elif kind == 1:
            w = rng.integers(200, 400, size=(5, E))
        else:
            w = np.where(rng.random((5, E)) < 0.4, 0, rng.pareto(1.5, size=(5, E)) * 300).astype(int)
        loads = moebal.LoadMatrix(w.astype(float))
        kw = dict(num_slots=E + extra * gpus, num_gpus=gpus, num_nodes=nodes, num_groups=groups, topology=topo)
        te = plan_metrics.layer_step_times(loads, policies.plan("eplb", loads, **kw), models)
        tv = plan_metrics.layer_step_times(loads, policies.plan("vibe", loads, **kw), models)
        assert (tv <= te * (1 + 1e-12)).all(), (kind, tv / te)
