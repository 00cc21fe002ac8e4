"""The shipped reference-MoE traces and predictor sample (python/moebal/data/refmoe/): they load,
validate, show real (skewed, domain-dependent) routing, and the shipped predictors reproduce their
accuracy on CPU."""
import json
import os
from importlib import resources

import numpy as np
import pytest

import moebal
from moebal.trace import load_arrays

DATA = str(resources.files("moebal") / "data" / "refmoe")
DOMAINS = ["c", "man", "prose", "python"]
LAYERS = 12  # tools/refmoe/config.json: num_hidden_layers
pytestmark = pytest.mark.skipif(not os.path.isdir(DATA), reason="reference-MoE data not shipped in this build")


@pytest.mark.parametrize("name", DOMAINS + ["switch"])
def test_traces_load_and_are_skewed(name):
    path = os.path.join(DATA, f"refmoe_{name}.npz")
    t = moebal.load_trace(path)
    a = load_arrays(path)
    meta = a["meta"]
    L = t.num_layers
    assert (L, t.num_experts, t.top_k) == (LAYERS, 64, 8)
    assert meta["model_type"] == "qwen3_moe" and meta["moe_layer_ids"] == list(range(L))
    assert t.num_steps >= 4 and a["position"].max() < 512
    w = a["topk_weights"]
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=5e-3)  # norm_topk_prob
    loads = np.asarray(t.loads().loads).reshape(L, 64)
    ratio = loads.max(1) / loads.mean(1)
    assert np.all(ratio > 2.5)  # real routing is skewed (measured 3.3-7.0); uniform routing of this many tokens is ~1.2
    place = moebal.Placement.contiguous(L, 64, 8, 1)
    assert np.all(moebal.layer_imbalance(t.loads(), place) > 1.02)


def test_domains_route_differently():
    loads = {d: np.asarray(moebal.load_trace(os.path.join(DATA, f"refmoe_{d}.npz")).loads().loads).reshape(LAYERS, 64)
             for d in DOMAINS}
    p = {d: v / v.sum(1, keepdims=True) for d, v in loads.items()}
    # total-variation distance between the expert distributions of code and prose, middle layer
    assert 0.5 * np.abs(p["python"][4] - p["prose"][4]).sum() > 0.1


def test_shipped_predictors_reproduce():
    torch = pytest.importorskip("torch")
    from moebal.predict import NextGatePredictor, ProbePredictor, topk_accuracy

    z = np.load(os.path.join(DATA, "refmoe_predictor_sample.npz"))
    meta = json.loads(str(z["__meta__"]))
    W = torch.from_numpy(z["router_weight"].astype(np.float32))
    routers = [(W[l], None) for l in range(W.shape[0])]
    K = meta["top_k"]
    ng = NextGatePredictor(routers, K)
    pr = ProbePredictor(routers, K, residual_dim=meta["residual_dim"])
    for l in range(W.shape[0] - 1):
        pr.w1[l] = torch.from_numpy(z["probe_w1"][l].astype(np.float32))
        pr.w2[l] = torch.from_numpy(z["probe_w2"][l].astype(np.float32))
        pr.publish(l, pr.w1[l], pr.w2[l])
    h = torch.from_numpy(z["hidden_states"].astype(np.float32))
    ids = z["topk_ids"]
    # the stored hidden states reproduce the model's own routing through its routers
    own = np.mean([topk_accuracy(torch.topk(h[l] @ W[l].t(), K).indices.numpy(), ids[l]) for l in range(W.shape[0])])
    assert own > 0.99  # fp16 storage flips only near-ties
    acc_ng = np.mean([topk_accuracy(ng.predict(l, h[l]).topk_ids, ids[l + 1]) for l in range(W.shape[0] - 1)])
    acc_pr = np.mean([topk_accuracy(pr.predict(l, h[l]).topk_ids, ids[l + 1]) for l in range(W.shape[0] - 1)])
    assert acc_pr > acc_ng + 0.03  # measured on this sample: next_gate 83.3%, probe 88.1%
    assert acc_pr > 0.85
