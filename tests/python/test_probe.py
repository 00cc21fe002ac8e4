"""PROBE planner: Python API (numpy -> C++ core, torch -> op), invariants, op checks, CUDA vs CPU."""
import math

import numpy as np
import pytest

import moebal
from moebal import probe

torch = pytest.importorskip("torch")

from moebal import ops  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def zipf_case(seed, R, E, L, copies=0, window=math.inf, s=1.1, tokens=3000):
    """Zipf counts per (source rank, expert), a random placement with `copies` extra slots per rank."""
    rng = np.random.default_rng(seed)
    spg = -(-E // R) + copies
    p2l = []
    counts = np.zeros((L, R, E), dtype=np.int32)
    for l in range(L):
        slots = np.concatenate([rng.permutation(E), rng.integers(0, E, spg * R - E)])
        p2l.append(rng.permutation(slots))
        w = 1.0 / np.arange(1, E + 1) ** s
        w = w[rng.permutation(E)]
        for r in range(R):
            counts[l, r] = np.floor(rng.uniform(0, tokens) * w / w.sum() * rng.uniform(0.5, 1.5, E))
    fixed = rng.uniform(0, 15, R)
    per_tok = rng.uniform(0.005, 0.05, R)
    return dict(counts=counts, placement=np.asarray(p2l, dtype=np.int32), fixed_us=fixed, us_per_token=per_tok,
                window_us=window, expert_bytes=int(rng.integers(1, 48)) << 20, max_extra_slots=int(rng.integers(0, 5)),
                max_iters=int(rng.integers(0, 20)), ranks_per_node=[0, 1, R][seed % 3] if R > 1 else 0)


def check_invariants(case, plan):
    counts, p2l = case["counts"], case["placement"]
    L, R, E = counts.shape
    S = case["max_extra_slots"]
    q = np.asarray(plan.quota)
    assert q.shape == (L, R, E, R)
    assert (q >= 0).all()
    np.testing.assert_array_equal(q.sum(-1), counts)  # tokens conserved
    spg = p2l.shape[1] // R
    rep = np.asarray(plan.replica_expert)
    src = np.asarray(plan.replica_src)
    assert rep.shape == (L, R, S)
    for l in range(L):
        holds = np.zeros((R, E), dtype=bool)
        holds[np.arange(p2l.shape[1]) // spg, p2l[l]] = True
        native = holds.copy()
        for r in range(R):
            for k in range(S):
                e = rep[l, r, k]
                if e < 0:
                    assert src[l, r, k] == -1
                    continue
                assert not holds[r, e] and native[src[l, r, k], e]
                holds[r, e] = True
        recv = q[l].sum(0)  # [E, R]
        assert (recv[~holds.T] == 0).all(), "tokens sent to a rank without a copy"
        t = np.asarray(plan.rank_time_us)[l]
        assert t[1].max() <= t[0].max()
        np.testing.assert_array_equal(np.asarray(plan.rank_tokens)[l, 1], recv.sum(0))
    assert (np.asarray(plan.stats)[:, 0] <= case["max_iters"]).all()


def run(case, backend="numpy", device="cpu"):
    c = dict(case)
    counts = c.pop("counts")
    if backend == "torch":
        counts = torch.as_tensor(counts, device=device)
    return probe.plan(counts, c.pop("placement"), **c)


@pytest.mark.parametrize("R, E, copies", [(1, 4, 0), (2, 3, 0), (3, 17, 0), (3, 17, 2), (8, 64, 1), (5, 33, 3)])
def test_invariants_and_numpy_equals_torch_cpu(R, E, copies):
    for seed in range(40):
        window = [math.inf, 0.0, 60.0, 500.0][seed % 4]
        case = zipf_case(seed, R, E, 3, copies, window)
        a = run(case)
        check_invariants(case, a)
        b = run(case, "torch")
        for x, y in zip((a.quota, a.replica_expert, a.replica_src, a.rank_time_us, a.rank_tokens, a.stats),
                        (b.quota, b.replica_expert, b.replica_src, b.rank_time_us, b.rank_tokens, b.stats)):
            np.testing.assert_array_equal(x, y.numpy())


def test_plan_reduces_imbalance_on_skewed_synthetic_trace():
    from moebal import synthetic

    cfg = synthetic.WorkloadConfig(num_layers=4, num_experts=64, top_k=4, num_steps=3, tokens_per_step=2048,
                                   num_ranks=8, zipf_s=1.2, seed=3)
    trace = synthetic.generate(cfg, with_weights=False)
    counts = probe.rank_expert_counts(trace, step=1)
    per_layer = counts.sum(axis=(1, 2))
    assert counts.shape == (4, 8, 64) and per_layer.min() > 0 and (per_layer == per_layer[0]).all()
    placement = moebal.Placement.contiguous(4, 64, 8, 1)
    plan = probe.plan(counts, placement, expert_bytes=1 << 20, fixed_us=2.0, us_per_token=0.01)
    before, after = plan.imbalance()
    assert (after <= before).all() and after.mean() < before.mean() - 0.05
    np.testing.assert_array_equal(plan.quota.sum(-1), counts)


def test_single_layer_and_topology_inputs():
    topo = moebal.Topology(2, 2, 400.0, 40.0, 55.0, [moebal.PerfModel.linear(5.0, 0.02)] * 4)
    counts = np.array([[400, 0, 0, 0], [300, 10, 0, 0], [200, 0, 0, 0], [100, 0, 0, 5]], dtype=np.int32)
    plan = probe.plan(counts, np.array([0, 1, 2, 3]), topology=topo, expert_shape=moebal.ExpertShape(1024, 512, 2),
                      window_us=50.0)
    assert plan.quota.shape == (1, 4, 4, 4)
    np.testing.assert_array_equal(plan.quota.sum(-1)[0], counts)
    a, b = probe.linearize(moebal.PerfModel.linear(5.0, 0.02))
    assert a == pytest.approx(5.0) and b == pytest.approx(0.02)
    # replicas of expert 0 go to rank 1 first (same node: NVLink), never beyond the window
    assert plan.moves[0] >= 1 and plan.replica_expert[0, 1, 0] == 0 and plan.replica_src[0, 1, 0] == 0


def test_bad_input_raises():
    case = zipf_case(1, 3, 17, 2)
    bad = [
        (dict(counts=-case["counts"] - 1), "negative"),
        (dict(counts=case["counts"][:, :2]), "per rank|GPUs|layers|phy2log|placement"),
        (dict(max_extra_slots=-1), "max_extra_slots"),
        (dict(max_iters=-1), "max_iters"),
        (dict(fixed_us=np.array([1.0, np.nan, 1.0])), "fixed_us"),
        (dict(us_per_token=np.inf), "us_per_token"),
        (dict(window_us=np.nan), "window_us"),
        (dict(window_us=np.ones(5)), "window_us"),
        (dict(intra_node_GBps=0.0), "intra_node_GBps"),
    ]
    for backend in ("numpy", "torch"):
        for change, match in bad:
            c = {**case, **change}
            with pytest.raises(ValueError, match=match):
                run(c, backend)
    with pytest.raises(ValueError, match="integers"):
        probe.plan(case["counts"].astype(np.float32), case["placement"], expert_bytes=1)
    with pytest.raises(ValueError, match="expert_bytes"):
        probe.plan(case["counts"], case["placement"])


@pytest.mark.parametrize("R, E, copies", [(1, 4, 0), (2, 3, 0), (3, 17, 2), (7, 29, 1), (8, 64, 0), (13, 41, 3)])
def test_sparse_quota_expands_to_the_dense_quota(R, E, copies):
    with_moves = 0
    for seed in range(30):
        window = [math.inf, 0.0, 60.0, 500.0][seed % 4]
        case = zipf_case(seed, R, E, 3, copies, window)
        if seed % 5 == 0:
            case["counts"][:, :, seed % E :: 3] = 0  # empty experts
        dense = run(case)
        sparse = run({**case, "quota": "sparse"})
        none = run({**case, "quota": "none"})
        assert sparse.quota is None and none.quota is None and none.quota_entries is None
        assert dense.quota_entries is None
        for x in (sparse, none):
            for f in ("replica_expert", "replica_src", "rank_time_us", "rank_tokens", "stats"):
                np.testing.assert_array_equal(getattr(x, f), getattr(dense, f))
        ent = np.asarray(sparse.quota_entries)
        assert ent.dtype == np.int32 and ent.ndim == 2 and ent.shape[1] == 5
        assert (ent[:, 4] > 0).all()
        key = [tuple(r) for r in ent[:, :4]]  # (layer, src, expert, dst), sorted by (layer, expert, src, dst)
        order = sorted(range(len(key)), key=lambda i: (key[i][0], key[i][2], key[i][1], key[i][3]))
        assert order == list(range(len(key)))
        assert len(set(key)) == len(key)
        q = np.asarray(dense.quota)
        np.testing.assert_array_equal(q[ent[:, 0], ent[:, 1], ent[:, 2], ent[:, 3]], ent[:, 4])
        rebuilt = probe.quota_to_dense(ent, case["counts"], case["placement"], ranks_per_node=case["ranks_per_node"])
        np.testing.assert_array_equal(rebuilt, q)
        # Layers without moves list nothing.
        moved = np.asarray(dense.stats)[:, probe.STAT_MOVES] > 0
        assert set(np.unique(ent[:, 0])) <= set(np.nonzero(moved)[0])
        with_moves += int(moved.sum())
    if R > 1:
        assert with_moves > 10


def test_sparse_quota_bad_input_raises():
    case = zipf_case(2, 4, 12, 2, 1)
    with pytest.raises(ValueError, match="quota must be"):
        run({**case, "quota": "coo"})
    with pytest.raises(ValueError, match="numpy"):
        run({**case, "quota": "sparse"}, "torch")
    lean = run({**case, "quota": "none"}, "torch")
    assert lean.quota is None and lean.quota_entries is None
    np.testing.assert_array_equal(lean.stats.numpy(), np.asarray(run(case).stats))
    case = {**case, "max_iters": 16, "max_extra_slots": 3, "window_us": math.inf}
    ent = np.asarray(run({**case, "quota": "sparse"}).quota_entries)
    assert len(ent) >= 2
    args = (case["counts"], case["placement"])
    kw = dict(ranks_per_node=case["ranks_per_node"])
    np.testing.assert_array_equal(probe.quota_to_dense(ent, *args, **kw), np.asarray(run(case).quota))
    bad = [
        (ent[::-1], "layer order|strictly sorted"),
        (np.concatenate([ent, ent[-1:]]), "strictly sorted"),
        (ent[:, :4], "shape"),
        (np.where(np.arange(5) == 3, 4, ent), "out of range"),  # dst = R
        (np.where(np.arange(5) == 0, 7, ent), "layer"),  # no such layer
        (np.where(np.arange(5) == 4, ent + 1, ent), "sum to"),  # rows no longer add up to the counts
    ]
    for e, match in bad:
        with pytest.raises(ValueError, match=match):
            probe.quota_to_dense(e, *args, **kw)
    with pytest.raises(ValueError, match="negative"):
        probe.quota_to_dense(ent, -case["counts"] - 1, case["placement"], **kw)


def _op_args(case, device="cpu"):
    t = lambda x, dt: torch.as_tensor(np.ascontiguousarray(x), dtype=dt, device=device)  # noqa: E731
    L, R, _ = case["counts"].shape
    return (t(case["counts"], torch.int32), t(case["placement"], torch.int32), t(case["fixed_us"], torch.float64),
            t(case["us_per_token"], torch.float64), t(np.full((L, R), 300.0), torch.float64),
            case["expert_bytes"], 450.0, 50.0, case["ranks_per_node"], 3, 16, 0.0)


def test_op_rejects_bad_dtypes_and_shapes():
    ops.load_library()
    args = list(_op_args(zipf_case(2, 3, 17, 2)))
    for i, wrong, match in [(0, args[0].long(), "counts must be int32"), (1, args[1].double(), "phy2log must be int32"),
                            (2, args[2].float(), "float64"), (4, args[4][:1], "window_us must be"),
                            (3, args[3][:2], "us_per_token must be")]:
        a = list(args)
        a[i] = wrong
        with pytest.raises(ValueError, match=match):
            torch.ops.moebal.probe_plan(*a)
        with pytest.raises(ValueError, match=match):  # the fake kernel mirrors the check
            with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
                torch.ops.moebal.probe_plan(*[mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in a])


def test_opcheck_and_compile():
    ops.load_library()
    args = _op_args(zipf_case(4, 3, 17, 2))
    torch.library.opcheck(torch.ops.moebal.probe_plan.default, args)

    def f(counts):
        out = torch.ops.moebal.probe_plan(counts, *args[1:])
        return out[0].sum(-1), out[3]

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got, want = compiled(args[0]), f(args[0])
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


@cuda
@pytest.mark.parametrize("R, E, copies, L", [(1, 4, 0, 2), (3, 17, 0, 5), (3, 17, 2, 3), (8, 61, 1, 7),
                                             (8, 256, 0, 58), (32, 256, 1, 58), (64, 1000, 0, 2)])
def test_cuda_matches_cpu(R, E, copies, L):
    ops.load_library()
    for seed in range(12 if R * E < 4096 else 3):
        window = [math.inf, 0.0, 60.0, 500.0][seed % 4]
        case = zipf_case(100 + seed, R, E, L, copies, window)
        a = run(case, "torch")
        b = run(case, "torch", "cuda")
        for x, y in zip((a.quota, a.replica_expert, a.replica_src, a.rank_time_us, a.rank_tokens, a.stats),
                        (b.quota, b.replica_expert, b.replica_src, b.rank_time_us, b.rank_tokens, b.stats)):
            assert y.device.type == "cuda"
            torch.testing.assert_close(y.cpu(), x, rtol=0, atol=0)


@cuda
def test_cuda_opcheck_status_and_devices():
    ops.load_library()
    args = _op_args(zipf_case(5, 3, 17, 2), "cuda")
    torch.library.opcheck(torch.ops.moebal.probe_plan.default, args)
    bad = list(args)
    bad[0] = args[0].clone()
    bad[0][1, 2, 3] = -1
    stats = torch.ops.moebal.probe_plan(*bad)[5].cpu()
    assert stats[0, 3] == 0 and stats[1, 3] == 1  # kProbeBadCounts on layer 1 only
    case = zipf_case(5, 3, 17, 2)
    case["counts"] = case["counts"].copy()
    case["counts"][1, 2, 3] = -1
    with pytest.raises(ValueError, match="layer 1"):
        run(case, "torch", "cuda")
    mixed = list(args)
    mixed[1] = args[1].cpu()
    with pytest.raises(ValueError, match="one device"):
        torch.ops.moebal.probe_plan(*mixed)


@cuda
def test_cuda_graph_capture_replays_the_same_plan():
    ops.load_library()
    args = _op_args(zipf_case(7, 8, 64, 4), "cuda")
    eager = torch.ops.moebal.probe_plan(*args)  # also raises the kernel's shared-memory limit once
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = torch.ops.moebal.probe_plan(*args)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(eager, captured):
        assert torch.equal(a, b)
