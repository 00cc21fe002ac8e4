"""torch.ops.moebal.assign_replicas: CPU reference, fake kernel, opcheck, compile, CUDA vs CPU."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import moebal  # noqa: E402
from moebal import grace  # noqa: E402
from moebal.assign_ops import assign_replicas, placement_tensors  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
POLICIES = ("round_robin", "hash", "locality", "quota", "weighted_locality")


def make_case(T, K, E, G, N, extra, seed, skew=3.0):
    """Random placement with spare copies, Zipf-skewed routing, padding, quota and weights."""
    rng = np.random.default_rng(seed)
    S = G * (-(-E // G) + extra)
    phy = np.concatenate([np.arange(E), rng.integers(0, E, S - E)]).astype(np.int32)
    rng.shuffle(phy)
    p = moebal.Placement.from_phy2log(phy[None, :], E, G, N)
    K = min(K, E)
    pop = rng.random(E) ** skew
    ids = np.array([rng.choice(E, K, replace=False, p=pop / pop.sum()) for _ in range(T)], dtype=np.int32).reshape(T, K)
    if T:
        ids[rng.random((T, K)) < 0.02] = -1
    src = rng.integers(0, G, T).astype(np.int32)
    quota = np.zeros((G, E, G), np.int32)
    for r in range(G):
        for e in range(E):
            demand = int(((ids == e) & (src[:, None] == r)).sum())
            for _ in range(int(demand * rng.uniform(0.5, 1.1))):
                s = p.log2phy[0, e, rng.integers(0, p.logcnt[0, e])]
                quota[r, e, s // p.slots_per_gpu] += 1
    w = rng.integers(1, 1025, S).astype(np.int32)
    l2p, cnt = placement_tensors(p, 0)
    return dict(ids=torch.from_numpy(ids), src=torch.from_numpy(src), l2p=l2p, cnt=cnt, p=p, G=G, N=N, S=S,
                quota=torch.from_numpy(quota), w=torch.from_numpy(w))


def run(c, policy, device="cpu"):
    d = lambda x: x.to(device)  # noqa: E731
    return assign_replicas(d(c["ids"]), d(c["src"]), d(c["l2p"]), d(c["cnt"]), num_gpus=c["G"], num_nodes=c["N"],
                           num_slots=c["S"], policy=policy, quota=d(c["quota"]) if policy == "quota" else None,
                           slot_weights=d(c["w"]) if policy == "weighted_locality" else None)


@pytest.mark.parametrize("policy", POLICIES)
def test_cpu_op_matches_core_reference(policy):
    c = make_case(300, 4, 24, 6, 2, 2, seed=1)
    got = run(c, policy)
    want = grace.assign(c["ids"].numpy(), c["src"].numpy(), c["p"], policy=policy, quota=c["quota"].numpy(),
                        slot_weights=c["w"].numpy())
    assert got.dtype == torch.int32 and np.array_equal(got.numpy(), want)
    valid = c["ids"] >= 0
    phy2log = torch.from_numpy(c["p"].phy2log[0])
    assert torch.equal(phy2log[got[valid].long()], c["ids"][valid])
    assert (got[~valid] == -1).all()


def test_errors():
    c = make_case(10, 2, 8, 4, 2, 1, seed=2)
    ids, src, l2p, cnt = c["ids"], c["src"], c["l2p"], c["cnt"]
    kw = dict(num_gpus=4, num_nodes=2, num_slots=c["S"])
    with pytest.raises(ValueError, match="topk_ids must be int32"):
        assign_replicas(ids.long(), src, l2p, cnt, **kw)
    with pytest.raises(ValueError, match="contiguous"):
        assign_replicas(torch.zeros(2, 10, dtype=torch.int32).t(), src, l2p, cnt, **kw)
    with pytest.raises(ValueError, match="src_rank has 9 entries"):
        assign_replicas(ids, src[:9].contiguous(), l2p, cnt, **kw)
    with pytest.raises(ValueError, match="logcnt has 7 entries"):
        assign_replicas(ids, src, l2p, cnt[:7].contiguous(), **kw)
    with pytest.raises(ValueError, match=">= num_experts"):
        assign_replicas(torch.full_like(ids, 8), src, l2p, cnt, **kw)
    with pytest.raises(ValueError, match="src_rank of token 0 is 4"):
        assign_replicas(ids, torch.full_like(src, 4), l2p, cnt, **kw)
    with pytest.raises(ValueError, match="needs quota"):
        assign_replicas(ids, src, l2p, cnt, policy="quota", **kw)
    with pytest.raises(ValueError, match=r"quota must have shape \[4, 8, 4\]"):
        assign_replicas(ids, src, l2p, cnt, policy="quota", quota=torch.zeros(4, 8, 3, dtype=torch.int32), **kw)
    with pytest.raises(ValueError, match="quota must be int32"):
        assign_replicas(ids, src, l2p, cnt, policy="quota", quota=torch.zeros(4, 8, 4), **kw)
    with pytest.raises(ValueError, match="slot_weights must have"):
        assign_replicas(ids, src, l2p, cnt, slot_weights=torch.ones(3, dtype=torch.int32), **kw)
    with pytest.raises(ValueError, match="unknown policy"):
        assign_replicas(ids, src, l2p, cnt, policy="nearest", **kw)
    with pytest.raises(ValueError, match="divisible by num_gpus"):
        assign_replicas(ids, src, l2p, cnt, num_gpus=4, num_nodes=2, num_slots=c["S"] + 1)
    with pytest.raises(ValueError, match="divisible by num_nodes"):
        assign_replicas(ids, src, l2p, cnt, num_gpus=4, num_nodes=3, num_slots=c["S"])


def test_mismatched_devices_and_meta():
    c = make_case(10, 2, 8, 4, 1, 1, seed=5)
    kw = dict(num_gpus=4, num_nodes=1, num_slots=c["S"])
    # Mixed CPU / meta tensors dispatch to the fake kernel, which checks devices like the C++ glue.
    with pytest.raises(ValueError, match="src_rank is on meta but topk_ids is on cpu"):
        assign_replicas(c["ids"], c["src"].to("meta"), c["l2p"], c["cnt"], **kw)
    out = assign_replicas(*(c[k].to("meta") for k in ("ids", "src", "l2p", "cnt")), **kw)
    assert out.shape == c["ids"].shape and out.dtype == torch.int32 and out.device.type == "meta"


@pytest.mark.parametrize("policy", POLICIES)
def test_opcheck(policy):
    c = make_case(33, 3, 12, 4, 2, 1, seed=3)
    args = (c["ids"], c["src"], c["l2p"], c["cnt"], c["G"], c["N"], c["S"], policy,
            c["quota"] if policy == "quota" else None, c["w"] if policy == "weighted_locality" else None)
    torch.library.opcheck(torch.ops.moebal.assign_replicas.default, args)


def test_compiles_fullgraph():
    c = make_case(40, 2, 8, 4, 1, 1, seed=4)

    def f(ids, src, l2p, cnt):
        return assign_replicas(ids, src, l2p, cnt, num_gpus=4, num_nodes=1, num_slots=c["S"], policy="locality") + 0

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = (c["ids"], c["src"], c["l2p"], c["cnt"])
    assert torch.equal(compiled(*args), f(*args))


@cuda
@pytest.mark.parametrize("T,K,E,G,N,extra", [(0, 8, 16, 4, 1, 1), (1, 8, 64, 8, 1, 2), (3, 2, 8, 4, 2, 1),
                                             (17, 4, 33, 6, 3, 2), (1000, 8, 256, 32, 4, 1),
                                             (1031, 6, 64, 16, 2, 3), (4096, 8, 128, 8, 1, 4),
                                             (1500, 8, 1024, 16, 4, 1)])  # many classes: sort pipeline
@pytest.mark.parametrize("policy", POLICIES)
def test_cuda_matches_cpu(T, K, E, G, N, extra, policy):
    c = make_case(T, K, E, G, N, extra, seed=T + E, skew=5.0)
    want = run(c, policy)
    got = run(c, policy, "cuda")
    assert got.is_cuda and torch.equal(got.cpu(), want)


@cuda
def test_cuda_bad_values_give_minus_one_and_graph_capture():
    c = make_case(500, 8, 64, 8, 2, 2, seed=9)
    ids, src = c["ids"].clone(), c["src"].clone()
    ids[7, 2] = 64
    src[11] = 8
    # The GPU gives -1 for invalid entries and leaves them out of every rank class, like padding, so
    # the expectation is the CPU result with those entries padded (they shift later ranks).
    padded = dict(c, ids=c["ids"].clone())
    padded["ids"][7, 2] = -1
    padded["ids"][11, :] = -1
    want = run(padded, "weighted_locality")
    dev = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in c.items()}
    ids_d, src_d = ids.cuda(), src.cuda()

    def f():
        return assign_replicas(ids_d, src_d, dev["l2p"], dev["cnt"], num_gpus=8, num_nodes=2, num_slots=c["S"],
                               policy="weighted_locality", slot_weights=dev["w"])

    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        f()  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = f()
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out.cpu(), want)


@cuda
def test_cuda_mismatched_devices():
    c = make_case(10, 2, 8, 4, 1, 1, seed=5)
    with pytest.raises(ValueError, match="src_rank is on cpu"):
        assign_replicas(c["ids"].cuda(), c["src"], c["l2p"].cuda(), c["cnt"].cuda(), num_gpus=4, num_nodes=1,
                        num_slots=c["S"])
