"""moebal.distributed: the expert-parallel layer over several processes (gloo on CPU here, NCCL where
two GPUs are visible) equals the single-process layer, with replicas, uneven and empty ranks; bad
calls raise clear errors; a failing rank is reported instead of waited for."""
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
moe_ops = pytest.importorskip("moebal.moe_ops")
from moebal import _core  # noqa: E402
from moebal.assign_ops import assign_replicas, placement_tensors  # noqa: E402
from moebal.distributed import ep_moe_forward, local_slot_weights, run_ranks  # noqa: E402
from moebal.policies import plan  # noqa: E402

E, K, H, F = 12, 2, 32, 16


def _case(world: int, tokens: list, extra: int, policy: str, seed: int = 0):
    """Weights, every rank's tokens and routing, and a placement with ``extra`` copies per rank."""
    g = torch.Generator().manual_seed(seed)
    w13 = (torch.randn(E, 2 * F, H, generator=g) * 0.2).bfloat16()
    w2 = (torch.randn(E, H, F, generator=g) * 0.2).bfloat16()
    xs, ids, wts = [], [], []
    p = 0.6 ** np.arange(E)  # skewed, so that eplb replicates
    for T in tokens:
        xs.append(torch.randn(T, H, generator=g).bfloat16())
        rng = np.random.default_rng(seed + T)
        rows = [rng.choice(E, K, replace=False, p=p / p.sum()) for _ in range(T)]
        ids.append(torch.tensor(np.array(rows, dtype=np.int32).reshape(T, K)))
        wts.append(torch.rand(T, K, generator=g))
    loads = np.bincount(torch.cat(ids).reshape(-1).numpy(), minlength=E).astype(float)[None] + 1.0
    pl = plan(policy, loads, num_slots=E + extra * world, num_gpus=world)
    return w13, w2, xs, ids, wts, pl


def _rank(rank: int, world: int, a):
    tokens, extra, policy, assign, device = a[:5]
    exchange = a[5] if len(a) > 5 else "rows"
    w13, w2, xs, ids, wts, pl = _case(world, tokens, extra, policy)
    spr = pl.num_slots // world
    log2phy, logcnt = placement_tensors(pl, 0)
    src = torch.full((tokens[rank],), rank, dtype=torch.int32)
    slots = assign_replicas(ids[rank], src, log2phy, logcnt, num_gpus=world, num_nodes=1, num_slots=pl.num_slots,
                            policy=assign)
    w13_l, w2_l = local_slot_weights(w13, w2, pl.phy2log[0], rank, spr)
    dev = torch.device(device)
    out = ep_moe_forward(xs[rank].to(dev), wts[rank].to(dev), slots.to(dev), w13_l.to(dev), w2_l.to(dev),
                         slots_per_rank=spr, exchange=exchange)
    ref = moe_ops.moe_forward(xs[rank], w13, w2, topk_ids=ids[rank], topk_weights=wts[rank])
    remote = int((torch.div(slots.long(), spr, rounding_mode="floor") != rank).sum())
    return out.float().cpu(), ref.float(), remote


def _check(results):
    remote = 0
    for out, ref, r in results:
        assert isinstance(out, np.ndarray) and out.shape == ref.shape
        if ref.size:
            assert float(np.abs(out - ref).max()) <= 2e-2 * max(1.0, float(np.abs(ref).max()))
            assert float(np.abs(ref).max()) > 0  # random data: a zero output would not pass silently
        remote += r
    assert remote > 0  # rows did cross ranks


@pytest.mark.parametrize("world,tokens,extra,policy,assign", [
    (2, [7, 5], 0, "contiguous", "round_robin"),
    (3, [17, 1, 40], 1, "eplb", "weighted_locality"),
    (3, [0, 9, 33], 2, "balanced", "locality"),  # a rank without tokens still serves its experts
    (4, [3, 64, 1, 12], 1, "eplb", "hash"),
])
def test_ep_layer_equals_single_process_layer(world, tokens, extra, policy, assign):
    _check(run_ranks(_rank, world, (tokens, extra, policy, assign, "cpu"), backend="gloo", timeout=120))


@pytest.mark.parametrize("exchange", ["dedup", "dense"])
@pytest.mark.parametrize("world,tokens,extra,policy,assign", [
    (2, [7, 5], 0, "contiguous", "round_robin"),
    (3, [0, 9, 33], 2, "balanced", "locality"),
    (3, [16, 16, 16], 1, "eplb", "weighted_locality"),
    (2, [1, 1], 1, "balanced", "round_robin"),  # one token: views of it must still be sent as copies
])
def test_ep_layer_other_exchanges(world, tokens, extra, policy, assign, exchange):
    if exchange == "dense" and len(set(tokens)) > 1:
        with pytest.raises(RuntimeError, match=r"disagree on tokens per rank \(with exchange='dense'\)"):
            run_ranks(_rank, world, (tokens, extra, policy, assign, "cpu", exchange), backend="gloo", timeout=120)
        return
    _check(run_ranks(_rank, world, (tokens, extra, policy, assign, "cpu", exchange), backend="gloo", timeout=120))


def _gpus_or_skip():
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    from moebal import ops

    if not ops.has_cuda_kernels():
        pytest.skip("moebal built without CUDA kernels")


def test_ep_layer_on_gpus_with_nccl():
    _gpus_or_skip()
    for exchange, tokens in (("rows", [300, 211]), ("dedup", [300, 211]), ("dense", [64, 64])):
        res = run_ranks(_rank_cuda, 2, (tokens, 1, "eplb", "weighted_locality", exchange), backend="nccl", timeout=180)
        _check(res)


def _rank_cuda(rank, world, a):
    tokens, extra, policy, assign, exchange = a
    return _rank(rank, world, (tokens, extra, policy, assign, f"cuda:{rank}", exchange))


def _rank_graph(rank: int, world: int, a):
    """The dense exchange captured in a CUDA graph and replayed on new inputs of the same shapes;
    then the refusals under capture, and the NaN row of a bad slot id."""
    T, extra = a
    w13, w2, xs, ids, wts, pl = _case(world, [T] * world, extra, "eplb")
    spr = pl.num_slots // world
    dev = torch.device("cuda", rank)
    log2phy, logcnt = placement_tensors(pl, 0)
    src = torch.full((T,), rank, dtype=torch.int32)
    slots = assign_replicas(ids[rank], src, log2phy, logcnt, num_gpus=world, num_nodes=1, num_slots=pl.num_slots,
                            policy="weighted_locality").to(dev)
    w13_l, w2_l = (t.to(dev) for t in local_slot_weights(w13, w2, pl.phy2log[0], rank, spr))
    x, w = xs[rank].to(dev), wts[rank].to(dev)
    kw = dict(slots_per_rank=spr, exchange="dense")
    eager = ep_moe_forward(x, w, slots, w13_l, w2_l, **kw)  # agrees on the shapes; warms up
    torch.cuda.synchronize()
    x_s, w_s, s_s = x.clone(), w.clone(), slots.clone()  # the graph's static inputs
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y_s = ep_moe_forward(x_s, w_s, s_s, w13_l, w2_l, **kw)
    out = {"eager": eager.float().cpu()}
    g.replay()
    torch.cuda.synchronize()
    out["replay"] = y_s.float().cpu()
    x2 = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + rank)).bfloat16()
    x_s.copy_(x2.to(dev))
    g.replay()
    torch.cuda.synchronize()
    out["replay_new"] = y_s.float().cpu()
    out["ref_new"] = moe_ops.moe_forward(x2, w13, w2, topk_ids=ids[rank], topk_weights=wts[rank]).float()
    out["ref"] = moe_ops.moe_forward(xs[rank], w13, w2, topk_ids=ids[rank], topk_weights=wts[rank]).float()
    s_s[0, 0] = world * spr  # out of range: under capture no error can be raised, the row is NaN
    g.replay()
    torch.cuda.synchronize()
    out["bad"] = y_s.float().cpu()
    errors = []
    for name, fn in (("rows", lambda: ep_moe_forward(x_s, w_s, s_s, w13_l, w2_l, slots_per_rank=spr)),
                     ("unagreed", lambda: ep_moe_forward(x_s[:T - 1], w_s[:T - 1], s_s[:T - 1], w13_l, w2_l, **kw))):
        try:
            with torch.cuda.graph(torch.cuda.CUDAGraph()):
                fn()
            errors.append(f"{name}: no error")
        except _core.MoebalValueError as e:
            errors.append(f"{name}: {e}")
    out["errors"] = errors
    return out


def test_dense_exchange_in_a_cuda_graph():
    _gpus_or_skip()
    for res in run_ranks(_rank_graph, 2, (48, 1), backend="nccl", timeout=180):
        ref, ref_new = res["ref"], res["ref_new"]
        for got, want in ((res["eager"], ref), (res["replay"], ref), (res["replay_new"], ref_new)):
            assert float(np.abs(got - want).max()) <= 2e-2 * float(np.abs(want).max())
        assert np.isnan(res["bad"][0]).all() and not np.isnan(res["bad"][1:]).any()
        assert "rows: " in res["errors"][0] and "cannot be captured" in res["errors"][0], res["errors"]
        assert "call it once outside capture" in res["errors"][1], res["errors"]


def _bad(rank: int, world: int, which: str):
    x = torch.randn(4, H).bfloat16()
    w = torch.rand(4, K)
    s = torch.zeros(4, K, dtype=torch.int32)
    w13, w2 = torch.zeros(2, 2 * F, H).bfloat16(), torch.zeros(2, H, F).bfloat16()
    kw = dict(slots_per_rank=2)
    if which == "slot_range":
        s[0, 0] = 2 * world
    elif which == "weights_shape":
        w = torch.rand(3, K)
    elif which == "local_count":
        kw["slots_per_rank"] = 3
    elif which == "hidden_mismatch":
        w13 = torch.zeros(2, 2 * F, H + 1).bfloat16()
    elif which == "slot_dtype":
        s = s.float()
    ep_moe_forward(x, w, s, w13, w2, **kw)


@pytest.mark.parametrize("which,match", [
    ("slot_range", r"slot ids must be in \[0, 4\)"),
    ("weights_shape", r"topk_weights must be \[4, K\]"),
    ("local_count", r"must hold this rank's 3 slots"),
    ("hidden_mismatch", r"do not fit hidden 32"),
    ("slot_dtype", r"slot_ids must be int32 or int64"),
])
def test_bad_calls_are_reported(which, match):
    with pytest.raises(RuntimeError, match=r"rank \d: MoebalValueError: ep_moe_forward: .*" + match):
        run_ranks(_bad, 2, which, backend="gloo", timeout=60)


def _bad_on_one(rank: int, world: int, which: str):
    """Only rank 1 is wrong (or differs): every rank must raise, none may wait in a collective."""
    x = torch.randn(4, H).bfloat16()
    w = torch.rand(4, K)
    s = torch.arange(4 * K, dtype=torch.int32).view(4, K) % (2 * world)
    w13, w2 = torch.randn(2, 2 * F, H).bfloat16(), torch.randn(2, H, F).bfloat16()
    kw = dict(slots_per_rank=2, exchange={"topk_dedup": "dedup", "tokens_dense": "dense"}.get(which, "rows"))
    if rank == 1:
        if which == "topk_dedup":  # every rank dedups; rank 1 routes each token to 3 experts
            w, s = torch.rand(4, K + 1), torch.arange(4 * (K + 1), dtype=torch.int32).view(4, K + 1) % (2 * world)
        elif which == "tokens_dense":  # every rank sends densely; rank 1 has 3 tokens
            x, w, s = x[:3], w[:3], s[:3]
        elif which == "exchange_name":
            kw["exchange"] = "fused"
        elif which == "slot_range":
            s[3, 1] = -1
        elif which == "hidden_dtype":
            x = x.float()
        elif which == "dedup":
            kw["exchange"] = "dedup"
        elif which == "hidden_size":
            x = torch.randn(4, H + 8).bfloat16()
            w13, w2 = torch.randn(2, 2 * F, H + 8).bfloat16(), torch.randn(2, H + 8, F).bfloat16()
        elif which == "slots_per_rank":
            kw["slots_per_rank"] = 3
            w13, w2 = torch.randn(3, 2 * F, H).bfloat16(), torch.randn(3, H, F).bfloat16()
    return ep_moe_forward(x, w, s, w13, w2, **kw)


@pytest.mark.parametrize("which,bad_rank_says,others_say", [
    ("slot_range", r"slot ids must be in \[0, 6\) \(3 ranks x 2 slots\), got \[-1, 5\]", r"rank\(s\) \[1\] refused"),
    ("hidden_dtype", r"hidden must be bfloat16, got torch.float32", r"rank\(s\) \[1\] refused"),
    ("dedup", r"disagree on exchange: \['rows', 'dedup', 'rows'\]", r"disagree on exchange"),
    ("exchange_name", r"exchange must be one of rows, dedup, dense, got 'fused'", r"rank\(s\) \[1\] refused"),
    ("tokens_dense", r"disagree on tokens per rank \(with exchange='dense'\): \[4, 3, 4\]", r"disagree on tokens"),
    ("hidden_size", r"disagree on hidden size: \[32, 40, 32\]", r"disagree on hidden size"),
    ("slots_per_rank", r"disagree on slots_per_rank: \[2, 3, 2\]", r"disagree on slots_per_rank"),
    ("topk_dedup", r"disagree on top-k \(with exchange='dedup'\): \[2, 3, 2\]", r"disagree on top-k"),
])
def test_one_bad_rank_stops_every_rank(which, bad_rank_says, others_say):
    with pytest.raises(RuntimeError) as info:
        run_ranks(_bad_on_one, 3, which, backend="gloo", timeout=60)
    msg = str(info.value)
    per_rank = dict(re.findall(r"(rank \d): (.*?)(?=; rank \d: |$)", msg))
    assert sorted(per_rank) == ["rank 0", "rank 1", "rank 2"], msg  # each raised: none was left waiting
    assert re.search(bad_rank_says, per_rank["rank 1"]), msg
    for r in ("rank 0", "rank 2"):
        assert re.search(others_say, per_rank[r]), msg


def test_without_a_process_group():
    x = torch.zeros(1, H).bfloat16()
    with pytest.raises(_core.MoebalValueError, match="not initialised"):
        ep_moe_forward(x, torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.int32), torch.zeros(1, 2 * F, H).bfloat16(),
                       torch.zeros(1, H, F).bfloat16(), slots_per_rank=1)


def _fail_on_one(rank: int, world: int, a):
    if rank == 1:
        raise ValueError("boom")
    import torch.distributed as dist

    dist.barrier()  # would wait forever for rank 1
    return rank


def test_a_failing_rank_is_reported_not_waited_for():
    with pytest.raises(RuntimeError, match="rank 1: ValueError: boom"):
        run_ranks(_fail_on_one, 2, None, backend="gloo", timeout=60)


def _ok(rank, world, a):
    return (rank, world, a)


def test_run_ranks_results_in_rank_order_and_bad_arguments():
    assert run_ranks(_ok, 3, "x", backend="gloo", timeout=60) == [(0, 3, "x"), (1, 3, "x"), (2, 3, "x")]
    with pytest.raises(_core.MoebalValueError, match="world must be >= 1"):
        run_ranks(_ok, 0)
    with pytest.raises(_core.MoebalValueError, match="backend must be nccl or gloo"):
        run_ranks(_ok, 2, backend="mpi")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(_core.MoebalValueError, match="one GPU per rank"):
        run_ranks(_ok, n + 1, backend="nccl")


def test_local_slot_weights():
    w13 = torch.arange(4).view(4, 1, 1).expand(4, 2, 3).float()
    w2 = torch.arange(4).view(4, 1, 1).expand(4, 3, 1).float()
    a, b = local_slot_weights(w13, w2, [3, 0, 3, 1, 2, 2], 1, 3)  # rank 1 holds slots 3-5: experts 1, 2, 2
    assert a[:, 0, 0].tolist() == [1, 2, 2] and b[:, 0, 0].tolist() == [1, 2, 2]
    with pytest.raises(_core.MoebalValueError, match="rank 2 needs"):
        local_slot_weights(w13, w2, [0, 1, 2, 3], 2, 2)
    with pytest.raises(_core.MoebalValueError, match="outside"):
        local_slot_weights(w13, w2, [0, 9], 0, 2)
