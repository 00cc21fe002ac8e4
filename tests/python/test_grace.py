"""GRACE policy, CPU assignment reference and traffic accounting through the Python API."""
import os

import numpy as np
import pytest

import moebal
from moebal import grace, policies, synthetic

DEMO = os.path.join(os.path.dirname(moebal.__file__), "data", "demo_trace.npz")


@pytest.fixture(scope="module")
def demo():
    return moebal.load_trace(DEMO)


def test_grace_registered_and_needs_trace(demo):
    assert {"grace", "grace_balanced"} <= set(policies.available_policies())
    for name in ("grace", "grace_balanced"):
        with pytest.raises(ValueError, match="needs token-level routing"):
            policies.plan(name, demo.loads(), num_slots=64, num_gpus=8)


def test_grace_balanced_trades_affinity_for_balance(demo):
    loads = demo.loads()
    p = policies.plan("grace", loads, num_slots=64, num_gpus=8, num_nodes=2, trace=demo)
    b = policies.plan("grace_balanced", loads, num_slots=64, num_gpus=8, num_nodes=2, trace=demo)
    assert moebal.layer_imbalance(loads, b).mean() < moebal.layer_imbalance(loads, p).mean()
    contiguous = moebal.Placement.contiguous(loads.num_layers, 64, 8, 2)
    assert grace.affinity_kept(demo, b)["gpu"] > grace.affinity_kept(demo, contiguous)["gpu"]


@pytest.mark.parametrize("slots,gpus,nodes", [(64, 8, 1), (80, 8, 2), (96, 16, 2), (128, 32, 4)])
def test_grace_plan_layout_and_balance(demo, slots, gpus, nodes):
    loads = demo.loads()
    p = policies.plan("grace", loads, num_slots=slots, num_gpus=gpus, num_nodes=nodes, trace=demo)
    p.validate()
    assert p.num_slots == slots and p.slots_per_gpu == slots // gpus
    assert (p.logcnt >= 1).all() and p.logcnt.sum() == p.num_layers * slots
    if slots > 64:  # spare slots are used to balance: better than one copy each, contiguous
        contiguous = moebal.Placement.contiguous(loads.num_layers, 64, gpus, nodes)
        assert moebal.layer_imbalance(loads, p).mean() < moebal.layer_imbalance(loads, contiguous).mean()
    # Deterministic
    q = policies.plan("grace", loads, num_slots=slots, num_gpus=gpus, num_nodes=nodes, trace=demo)
    assert np.array_equal(p.phy2log, q.phy2log)


def test_grace_keeps_planted_coactivation_on_gpus():
    cfg = synthetic.WorkloadConfig(num_layers=2, num_experts=32, top_k=4, num_steps=2, tokens_per_step=2048,
                                   num_ranks=4, num_topics=4, topic_boost=6.0, zipf_s=0.2, seed=3)
    t = synthetic.generate(cfg)
    p = grace.plan(t.loads(), num_slots=32, num_gpus=4, trace=t)
    c = moebal.Placement.contiguous(2, 32, 4, 1)
    kept, base = grace.affinity_kept(t, p), grace.affinity_kept(t, c)
    assert kept["gpu"] > base["gpu"] + 0.2, (kept, base)


def test_grace_errors(demo):
    loads = demo.loads()
    with pytest.raises(ValueError, match="r must be in"):
        grace.plan(loads, num_slots=64, num_gpus=8, trace=demo, r=1.5)
    with pytest.raises(ValueError, match="co-activation must be"):
        grace.plan(loads, num_slots=64, num_gpus=8, coactivation=np.ones((12, 64, 63)))
    with pytest.raises(ValueError, match="divisible by num_gpus"):
        grace.plan(loads, num_slots=65, num_gpus=8, trace=demo)


def test_assign_reference_and_traffic(demo):
    p = grace.plan(demo.loads(), num_slots=96, num_gpus=16, num_nodes=2, trace=demo)
    src = demo.src_rank
    for policy in grace.ASSIGN_POLICIES:
        quota = None
        if policy == "quota":
            quota = np.zeros((16, 64, 16), np.int32)
        slots = grace.assign(demo.topk_ids[0], src, p, layer=0, policy=policy, quota=quota)
        assert slots.shape == demo.topk_ids[0].shape
        assert np.array_equal(p.phy2log[0][slots], demo.topk_ids[0])  # every slot holds its expert
    tb = moebal.ExpertShape(2048, 1408, 2).token_bytes
    flat = grace.traffic(demo, p, token_bytes=tb, policy="weighted_locality")
    assert set(flat) >= {"flat_intra", "flat_cross", "hier_intra", "hier_cross", "gpu_tokens", "imbalance"}
    assert (flat["hier_cross"] <= flat["flat_cross"]).all()
    assert flat["gpu_tokens"].sum() == demo.num_layers * demo.num_tokens * demo.top_k
    # One layer by hand equals the trace-level result.
    w = grace.slot_weights(demo.loads(), p)
    slots = grace.assign(demo.topk_ids[3], src, p, layer=3, policy="weighted_locality", slot_weights=w[3])
    b = grace.a2a_bytes(slots, src, p, tb)
    assert b["hier_cross"] == flat["hier_cross"][3] and b["flat_intra"] == flat["flat_intra"][3]


def test_assign_reference_errors(demo):
    p = moebal.Placement.contiguous(1, 8, 4, 2)
    ids = np.array([[0, 1], [2, 3]], np.int32)
    with pytest.raises(ValueError, match=">= num_experts"):
        grace.assign(np.array([[0, 8]], np.int32), np.array([0], np.int32), p)
    with pytest.raises(ValueError, match="src_rank of token 1"):
        grace.assign(ids, np.array([0, 4], np.int32), p)
    with pytest.raises(ValueError, match="src_rank: expected 2"):
        grace.assign(ids, np.array([0], np.int32), p)
    with pytest.raises(ValueError, match="quota: expected shape"):
        grace.assign(ids, np.array([0, 1], np.int32), p, policy="quota", quota=np.zeros((4, 8, 3), np.int32))
    with pytest.raises(ValueError, match="needs a quota"):
        grace.assign(ids, np.array([0, 1], np.int32), p, policy="quota")
    with pytest.raises(ValueError, match="unknown policy"):
        grace.assign(ids, np.array([0, 1], np.int32), p, policy="nearest")
    with pytest.raises(ValueError, match="integer array"):
        grace.assign(ids.astype(np.float32), np.array([0, 1], np.int32), p)
    with pytest.raises(ValueError, match="quota policy needs per-layer"):
        grace.traffic(demo, grace.plan(demo.loads(), num_slots=64, num_gpus=8, trace=demo), token_bytes=2,
                      policy="quota")


def test_knee_r_sweeps_size_tolerance():
    cfg = synthetic.WorkloadConfig(num_layers=2, num_experts=32, top_k=4, num_steps=1, tokens_per_step=2048,
                                   num_ranks=4, num_topics=6, topic_boost=4.0, seed=8)
    t = synthetic.generate(cfg)
    k = grace.knee_r(t, num_gpus=4, slots_per_gpu=12, candidates=[0.0, 0.15, 0.3, 0.5])
    assert k["r"] in k["candidates"] and len(k["U"]) == len(k["S"]) == 4
    assert k["S"][0] <= k["S"][-1] + 1e-9  # wider tolerance allows (not forces) larger size deviation
    assert k["U"][-1] >= k["U"][0] - 0.05
    with pytest.raises(ValueError, match="r must be in"):
        grace.knee_r(t, num_gpus=4, slots_per_gpu=12, candidates=[2.0])
    with pytest.raises(ValueError, match="at least one candidate"):
        grace.knee_r(t, num_gpus=4, slots_per_gpu=12, candidates=[])
