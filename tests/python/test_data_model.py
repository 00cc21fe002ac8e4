"""The C++ data model through the pybind11 module: construction, validation and derived values."""
import numpy as np
import pytest

import moebal
from moebal import _core


def test_imports_without_torch_dependency():
    # The core module must not pull torch in (it is a pybind11 module over the torch-free core).
    import subprocess
    import sys

    code = "import sys, moebal, moebal._core; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_error_classes():
    assert issubclass(moebal.MoebalValueError, ValueError)
    assert issubclass(moebal.MoebalValueError, moebal.MoebalError)
    assert issubclass(moebal.MoebalError, RuntimeError)


def test_load_matrix_roundtrip():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    m = moebal.LoadMatrix(a)
    assert (m.num_layers, m.num_experts) == (3, 4)
    np.testing.assert_array_equal(m.loads, a)


@pytest.mark.parametrize("bad, needle", [
    (np.array([[1.0, np.nan]]), "not finite"),
    (np.array([[1.0, -2.0]]), "negative"),
    (np.array([[1.0, np.inf]]), "not finite"),
    (np.zeros((0, 3)), "num_layers"),
    (np.ones(3), "2-d array"),
    (np.array([["a", "b"]]), "real-valued"),
])
def test_load_matrix_rejects(bad, needle):
    with pytest.raises(ValueError, match=needle):
        moebal.LoadMatrix(bad)


def make_trace(rng, L=3, T=50, K=2, E=8, ranks=4, steps=5):
    ids = np.stack([np.stack([rng.choice(E, K, replace=False) for _ in range(T)]) for _ in range(L)])
    w = rng.random((L, T, K)).astype(np.float32)
    src = rng.integers(0, ranks, T).astype(np.int32)
    step = np.sort(rng.integers(0, steps, T)).astype(np.int32)
    return moebal.RoutingTrace(ids.astype(np.int32), E, w, src, step), ids, src, step


def test_trace_derived_values_match_numpy(rng):
    t, ids, src, step = make_trace(rng)
    want = np.zeros((3, 8))
    for l in range(3):
        np.add.at(want[l], ids[l].ravel(), 1)
    np.testing.assert_array_equal(t.loads().loads, want)
    sl = t.step_loads()
    assert sl.shape == (t.num_steps, 3, 8)
    np.testing.assert_array_equal(sl.sum(0), want)
    c = t.coactivation(1)
    np.testing.assert_array_equal(c, c.T)
    np.testing.assert_array_equal(np.diag(c), want[1])
    pair = sum(1 for tok in ids[1] if 0 in tok and 1 in tok)
    assert c[0, 1] == pair
    rec = t.rank_expert_counts(2)
    assert rec.shape == (t.num_ranks, 8)
    for r in range(t.num_ranks):
        np.testing.assert_array_equal(rec[r], np.bincount(ids[2][src == r].ravel(), minlength=8))


def test_trace_rejects_bad_input(rng):
    ids = np.zeros((1, 2, 2), dtype=np.int32)
    ids[0] = [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="outside"):
        moebal.RoutingTrace(ids, 3)
    with pytest.raises(ValueError, match="integer array"):
        moebal.RoutingTrace(ids.astype(np.float32), 4)
    with pytest.raises(ValueError, match="repeats expert"):
        moebal.RoutingTrace(np.array([[[1, 1]]], dtype=np.int32), 4)
    with pytest.raises(ValueError, match="topk_weights: shape"):
        moebal.RoutingTrace(ids, 4, topk_weights=np.ones((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match="src_rank"):
        moebal.RoutingTrace(ids, 4, src_rank=np.array([0, -1]))
    with pytest.raises(ValueError, match="non-decreasing"):
        moebal.RoutingTrace(ids, 4, step=np.array([1, 0]))
    with pytest.raises(ValueError, match="does not fit in int32"):
        moebal.RoutingTrace(np.array([[[2**40, 1]]]), 4)
    with pytest.raises(ValueError, match="3-d array"):
        moebal.RoutingTrace(ids[0], 4)


def test_placement_tables():
    p = moebal.Placement.from_phy2log(np.array([[0, 1, 0, 2, 1, 0]]), num_experts=3, num_gpus=3)
    np.testing.assert_array_equal(p.logcnt, [[3, 2, 1]])
    np.testing.assert_array_equal(p.log2phy, [[[0, 2, 5], [1, 4, -1], [3, -1, -1]]])
    np.testing.assert_array_equal(p.slot_to_gpu, [0, 0, 1, 1, 2, 2])
    q = moebal.Placement(p.phy2log, p.log2phy, p.logcnt, num_gpus=3)
    np.testing.assert_array_equal(q.phy2log, p.phy2log)
    c = moebal.Placement.contiguous(2, 16, 4, 2)
    np.testing.assert_array_equal(c.gpu_to_node, [0, 0, 1, 1])


@pytest.mark.parametrize("kwargs, needle", [
    (dict(phy2log=[[0, 1, 2, 3, 0, 1]], num_experts=4, num_gpus=4), "divisible by num_gpus"),
    (dict(phy2log=[[0, 1, 2, 3, 0, 1]], num_experts=4, num_gpus=3, num_nodes=2), "divisible by num_nodes"),
    (dict(phy2log=[[0, 1]], num_experts=4, num_gpus=2), "must be >= num_experts"),
    (dict(phy2log=[[0, 1, 2, 9]], num_experts=4, num_gpus=2), "outside"),
    (dict(phy2log=[[0, 1, 2, 2]], num_experts=4, num_gpus=2), "expert 3"),
    (dict(phy2log=[[0.0, 1.0]], num_experts=2, num_gpus=2), "integer array"),
])
def test_placement_rejects(kwargs, needle):
    kwargs["phy2log"] = np.asarray(kwargs["phy2log"])
    with pytest.raises(ValueError, match=needle):
        moebal.Placement.from_phy2log(**kwargs)


def test_placement_rejects_inconsistent_tables():
    p = moebal.Placement.from_phy2log(np.array([[0, 1, 0, 1]]), num_experts=2, num_gpus=2)
    log2phy = p.log2phy.copy()
    log2phy[0, 0, 0], log2phy[0, 1, 0] = log2phy[0, 1, 0], log2phy[0, 0, 0]
    with pytest.raises(ValueError, match="phy2log says"):
        moebal.Placement(p.phy2log, log2phy, p.logcnt, num_gpus=2)
    with pytest.raises(ValueError, match="shapes disagree"):
        moebal.Placement(p.phy2log, p.log2phy, p.logcnt[:, :1], num_gpus=2)


def test_perf_model_fit_and_errors():
    n = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512], dtype=float)
    t = 10 + 0.05 * n
    m = moebal.PerfModel.fit(list(n), list(t), 6)
    np.testing.assert_allclose(m(np.array([3.0, 100.0, 1000.0])), 10 + 0.05 * np.array([3, 100, 1000]), rtol=1e-6)
    assert m.time_us(0) == 0
    with pytest.raises(ValueError, match="distinct"):
        moebal.PerfModel.fit([4, 4], [1, 2])
    with pytest.raises(ValueError, match="strictly increase"):
        moebal.PerfModel([2, 1], [1, 1])


def test_topology_and_shape():
    topo = moebal.Topology(2, 4, gpu_models=[moebal.PerfModel.linear(5, 0.1)] * 8)
    assert topo.num_gpus == 8 and topo.node_of(5) == 1
    assert topo.bandwidth_GBps(0, 5) == topo.network_GBps
    with pytest.raises(ValueError, match="gpu_models"):
        moebal.Topology(1, 4, gpu_models=[moebal.PerfModel.linear(5, 0.1)])
    s = moebal.ExpertShape(7168, 2048, 2)
    assert s.weight_bytes == 3 * 7168 * 2048 * 2
    with pytest.raises(ValueError, match="dtype_bytes"):
        moebal.ExpertShape(8, 8, 3)


def test_gpu_loads_and_imbalance():
    loads = moebal.LoadMatrix(np.array([[60.0, 30.0, 10.0]]))
    p = moebal.Placement.from_phy2log(np.array([[0, 1, 0, 2]]), num_experts=3, num_gpus=2)
    np.testing.assert_allclose(moebal.gpu_loads(loads, p), [[60, 40]])
    np.testing.assert_allclose(moebal.layer_imbalance(loads, p), [1.2])
    with pytest.raises(ValueError, match="experts"):
        moebal.gpu_loads(moebal.LoadMatrix(np.ones((1, 4))), p)
