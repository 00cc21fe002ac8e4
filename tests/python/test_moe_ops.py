"""torch.ops.moebal MoE data-path ops: CPU references against independent torch formulations,
input errors, opcheck, torch.compile, and (with a GPU) CUDA against CPU plus a CUDA-graph test."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from moebal import moe_ops, ops  # noqa: E402
from op_env import op_env  # noqa: E402

HAVE_OPS, HAVE_CUDA = op_env()
pytestmark = pytest.mark.skipif(not HAVE_OPS, reason="moebal torch ops not built")
gpu = pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA device and moebal CUDA kernels")


# ------------------------------------------------------------------------------------------------
# Independent references (torch, float64 where it matters)
# ------------------------------------------------------------------------------------------------
def ref_router(logits, top_k, scoring, renormalize, num_groups, topk_groups, bias, scale):
    x = torch.nan_to_num(logits.double(), nan=-math.inf)
    s = torch.softmax(x, -1) if scoring == "softmax" else torch.sigmoid(x)
    choice = s + (bias.double() if bias is not None else 0)
    t, e = choice.shape
    if num_groups > 1:
        g = choice.view(t, num_groups, -1)
        gs = g.topk(2, -1).values.sum(-1) if bias is not None else g.max(-1).values
        # lower group id wins ties: stable sort of the negated scores
        order = torch.sort(-gs, dim=-1, stable=True).indices[:, :topk_groups]
        mask = torch.zeros(t, num_groups, dtype=torch.bool).scatter_(1, order, True)
        choice = choice.masked_fill(~mask.repeat_interleave(e // num_groups, 1), -math.inf)
    ids = torch.sort(-choice, dim=-1, stable=True).indices[:, :top_k]
    w = s.gather(1, ids)
    if renormalize:
        w = w / w.sum(-1, keepdim=True)
    return ids.int(), (w * scale).float()


def ref_layout(ids, num_experts, num_slots, log2phy=None, logcnt=None):
    t, k = ids.shape
    e = ids.long()
    tok = torch.arange(t).unsqueeze(1).expand(t, k)
    valid = (e >= 0) & (e < num_experts)
    ec = e.clamp(0, num_experts - 1)
    if log2phy is None:
        slot = ec
    else:
        copy = tok % logcnt.long()[ec]
        slot = log2phy.long()[ec, copy]
    slot = torch.where(valid, slot, torch.full_like(slot, -1))
    key = torch.where(slot >= 0, slot, torch.full_like(slot, num_slots)).flatten()
    order = torch.sort(key, stable=True).indices
    row = torch.empty_like(order)
    row[order] = torch.arange(t * k)
    counts = torch.bincount(key, minlength=num_slots + 1)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])[: num_slots + 1]
    return slot.int(), offsets.int(), row.view(t, k).int(), (order // k).int()


def ref_ffn(x, w13, w2):
    """One slot's FFN; w13 [2F, H], w2 [H, F]; rounds where the GPU stores bf16."""
    f = w2.shape[1]
    h = (x.float() @ w13.float().T).bfloat16().float()
    act = (torch.nn.functional.silu(h[:, :f]) * h[:, f:]).bfloat16().float()
    return (act @ w2.float().T).bfloat16()


def ref_moe(hidden, w13, w2, ids, weights, log2phy=None, logcnt=None):
    num_experts = log2phy.shape[0] if log2phy is not None else w13.shape[0]
    slot, _, _, _ = ref_layout(ids, num_experts, w13.shape[0], log2phy, logcnt)
    out = torch.zeros(hidden.shape, dtype=torch.float32)
    for t in range(hidden.shape[0]):
        for j in range(ids.shape[1]):
            s = int(slot[t, j])
            if s >= 0:
                out[t] += weights[t, j] * ref_ffn(hidden[t : t + 1], w13[s], w2[s])[0].float()
    return out.bfloat16()


def zipf_ids(t, k, e, s=1.2, gen=None):
    p = 1.0 / torch.arange(1, e + 1, dtype=torch.float64) ** s
    return torch.multinomial(p.expand(t, e), k, replacement=False, generator=gen).int()


def rel_err(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


ROUTER_CASES = [
    # tokens, experts, top_k, scoring, renormalize, groups, topk_groups, bias, dtype
    (1, 8, 2, "softmax", True, 1, 1, False, torch.float32),
    (17, 8, 2, "softmax", False, 1, 1, False, torch.bfloat16),
    (3, 128, 8, "softmax", True, 1, 1, False, torch.float32),
    (1000, 128, 4, "softmax", True, 1, 1, False, torch.bfloat16),
    (1003, 256, 8, "sigmoid", True, 8, 4, True, torch.float32),
    (33, 160, 6, "softmax", False, 8, 3, False, torch.float32),
    (5, 60, 4, "sigmoid", False, 1, 1, False, torch.float32),
]


@pytest.mark.parametrize("case", ROUTER_CASES)
def test_router_cpu_matches_reference(case):
    t, e, k, scoring, renorm, g, tg, use_bias, dtype = case
    gen = torch.Generator().manual_seed(t * 31 + e)
    logits = (torch.randn(t, e, generator=gen) * 2).to(dtype)
    logits[::5, -1] = logits[::5, 0]  # exact ties: the lower id wins
    bias = torch.randn(e, generator=gen) * 0.1 if use_bias else None
    scale = 2.5 if use_bias else 1.0
    ids, w = moe_ops.router_topk(logits, k, scoring=scoring, renormalize=renorm, num_groups=g, topk_groups=tg,
                                 correction_bias=bias, scaling_factor=scale)
    rid, rw = ref_router(logits.float(), k, scoring, renorm, g, tg, bias, scale)
    assert torch.equal(ids, rid)
    torch.testing.assert_close(w, rw, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t,k,e", [(1, 2, 8), (3, 8, 128), (17, 4, 16), (1000, 8, 256)])
@pytest.mark.parametrize("replicas", [False, True])
def test_dispatch_layout_cpu_matches_reference(t, k, e, replicas):
    gen = torch.Generator().manual_seed(t + e)
    ids = zipf_ids(t, k, e, gen=gen)
    ids[0, 0] = -1  # padding
    log2phy = logcnt = None
    s = e
    if replicas:
        copies = torch.ones(e, dtype=torch.int32)
        copies[: min(e, 3)] = torch.tensor([3, 2, 2][: min(e, 3)], dtype=torch.int32)
        s = int(copies.sum())
        perm = torch.randperm(s, generator=gen).int()
        log2phy = torch.full((e, 3), -1, dtype=torch.int32)
        at = 0
        for x in range(e):
            c = int(copies[x])
            log2phy[x, :c] = perm[at : at + c].sort().values
            at += c
        logcnt = copies
    got = moe_ops.dispatch_layout(ids, e, s, log2phy, logcnt)
    want = ref_layout(ids, e, s, log2phy, logcnt)
    for g_, w_ in zip(got, want):
        assert torch.equal(g_, w_)


@pytest.mark.parametrize("t,k,h", [(1, 2, 64), (3, 8, 40), (17, 4, 7), (1000, 2, 16)])
def test_permute_and_combine_cpu(t, k, h):
    gen = torch.Generator().manual_seed(t * h)
    ids = zipf_ids(t, k, 8, gen=gen)
    ids[-1, -1] = -1  # one dropped pair: its row is skipped by the combine
    _, offsets, row, sorted_token = moe_ops.dispatch_layout(ids, 8)
    hidden = torch.randn(t, h, generator=gen).bfloat16()
    x = moe_ops.permute(hidden, row)
    assert torch.equal(x, hidden[sorted_token.long()])
    y = torch.randn(t * k, h, generator=gen).bfloat16()
    w = torch.rand(t, k, generator=gen)
    out = moe_ops.unpermute_combine(y, row, w, offsets)
    valid = (row < offsets[-1]).float()
    want = (y.float()[row.long()] * (w * valid).unsqueeze(-1)).sum(1)
    torch.testing.assert_close(out.float(), want, rtol=1e-2, atol=1e-2)


def make_layer(t, h, f, e, k, gen, dtype=torch.bfloat16):
    hidden = torch.randn(t, h, generator=gen).to(dtype)
    w13 = (torch.randn(e, 2 * f, h, generator=gen) / math.sqrt(h)).to(dtype)
    w2 = (torch.randn(e, h, f, generator=gen) / math.sqrt(f)).to(dtype)
    logits = torch.randn(t, e, generator=gen)
    return hidden, w13, w2, logits


def test_moe_forward_cpu_matches_reference():
    gen = torch.Generator().manual_seed(3)
    t, h, f, e, k = 13, 32, 24, 8, 2
    hidden, w13, w2, logits = make_layer(t, h, f, e, k, gen)
    out = moe_ops.moe_forward(hidden, w13, w2, router_logits=logits, top_k=k)
    ids, w = moe_ops.router_topk(logits, k)
    assert rel_err(out, ref_moe(hidden, w13, w2, ids, w)) < 1e-2
    out2 = moe_ops.moe_forward(hidden, w13, w2, topk_ids=ids, topk_weights=w)
    assert torch.equal(out, out2)


def test_moe_forward_cpu_with_replicas():
    gen = torch.Generator().manual_seed(4)
    t, h, f, e, k = 11, 16, 8, 4, 2
    hidden, w13, w2, logits = make_layer(t, h, f, e + 2, k, gen)  # 6 slots
    # expert 0 on slots {0, 4}, expert 1 on {1, 5}: replicas hold the same weights
    w13[4], w13[5], w2[4], w2[5] = w13[0], w13[1], w2[0], w2[1]
    log2phy = torch.tensor([[0, 4], [1, 5], [2, -1], [3, -1]], dtype=torch.int32)
    logcnt = torch.tensor([2, 2, 1, 1], dtype=torch.int32)
    ids, w = moe_ops.router_topk(logits[:, :e].contiguous(), k)
    out = moe_ops.moe_forward(hidden, w13, w2, topk_ids=ids, topk_weights=w, log2phy=log2phy, logcnt=logcnt)
    plain = moe_ops.moe_forward(hidden, w13[:e].contiguous(), w2[:e].contiguous(), topk_ids=ids, topk_weights=w)
    assert torch.equal(out, plain)
    assert rel_err(out, ref_moe(hidden, w13, w2, ids, w, log2phy, logcnt)) < 1e-2


# ------------------------------------------------------------------------------------------------
# Errors (CPU: the same checks run before the CUDA kernels)
# ------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_value_errors():
    logits = torch.randn(4, 8)
    with pytest.raises(ValueError, match="top_k"):
        moe_ops.router_topk(logits, 9)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        moe_ops.router_topk(logits.double(), 2)
    with pytest.raises(ValueError, match="contiguous"):
        moe_ops.router_topk(torch.randn(8, 4).t(), 2)
    with pytest.raises(ValueError, match="scoring"):
        moe_ops.router_topk(logits, 2, scoring="relu")
    with pytest.raises(ValueError, match="num_groups"):
        moe_ops.router_topk(logits, 2, num_groups=3)
    with pytest.raises(ValueError, match="correction_bias"):
        moe_ops.router_topk(logits, 2, correction_bias=torch.zeros(7))
    ids = torch.tensor([[0, 8]], dtype=torch.int32)
    with pytest.raises(ValueError, match="num_experts"):
        moe_ops.dispatch_layout(ids, 8)  # id 8 out of range
    with pytest.raises(ValueError, match="int32"):
        moe_ops.dispatch_layout(ids.long(), 9)
    with pytest.raises(ValueError, match="together"):
        moe_ops.dispatch_layout(ids, 9, 9, torch.zeros(9, 1, dtype=torch.int32), None)
    with pytest.raises(ValueError, match="log2phy"):
        moe_ops.dispatch_layout(torch.tensor([[1]], dtype=torch.int32), 2, 2,
                                torch.tensor([[0], [5]], dtype=torch.int32), torch.ones(2, dtype=torch.int32))
    hidden = torch.randn(2, 8).bfloat16()
    with pytest.raises(ValueError, match="bfloat16"):
        moe_ops.permute(hidden.float(), torch.zeros(2, 1, dtype=torch.int32))
    with pytest.raises(ValueError, match="row_index"):
        moe_ops.permute(hidden, torch.tensor([[0], [5]], dtype=torch.int32))
    w13 = torch.randn(4, 16, 8).bfloat16()
    w2 = torch.randn(4, 8, 8).bfloat16()
    with pytest.raises(ValueError, match="exactly one"):
        moe_ops.moe_forward(hidden, w13, w2)
    with pytest.raises(ValueError, match="w2"):
        moe_ops.moe_forward(hidden, w13, w2[:, :, :4].contiguous(), router_logits=torch.randn(2, 4), top_k=1)
    with pytest.raises(ValueError, match="rows"):
        moe_ops.moe_forward(hidden, w13, w2, router_logits=torch.randn(3, 4), top_k=1)


# ------------------------------------------------------------------------------------------------
# opcheck and torch.compile
# ------------------------------------------------------------------------------------------------
def _op_samples(device):
    gen = torch.Generator().manual_seed(11)
    t, h, f, e, k = 9, 16, 8, 8, 2
    hidden, w13, w2, logits = make_layer(t, h, f, e, k, gen)
    ids = zipf_ids(t, k, e, gen=gen)
    w = torch.rand(t, k, generator=gen)
    _, offsets, row, _ = moe_ops.dispatch_layout(ids, e)
    y = torch.randn(t * k, h, generator=gen).bfloat16()
    bias = torch.randn(e, generator=gen) * 0.1
    mv = lambda *xs: tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in xs)  # noqa: E731
    return [
        (torch.ops.moebal.router_topk.default, mv(logits, k, "softmax", True, 1, 1, None, 1.0)),
        (torch.ops.moebal.router_topk.default, mv(logits, k, "sigmoid", True, 4, 2, bias, 2.0)),
        (torch.ops.moebal.dispatch_layout.default, mv(ids, e, e, None, None)),
        (torch.ops.moebal.permute.default, mv(hidden, row)),
        (torch.ops.moebal.unpermute_combine.default, mv(y, row, w, offsets)),
        (torch.ops.moebal.moe_forward.default,
         mv(hidden, w13, w2, None, ids, w, 0, "softmax", True, 1, 1, None, 1.0, None, None)),
    ]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=gpu)])
def test_opcheck(device):
    for op, args in _op_samples(device):
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_whole_layer():
    gen = torch.Generator().manual_seed(12)
    hidden, w13, w2, logits = make_layer(7, 16, 8, 8, 2, gen)

    def layer(x, lg):
        return moe_ops.moe_forward(x * 2, w13, w2, router_logits=lg, top_k=2) + 1

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(hidden, logits), layer(hidden, logits))


# ------------------------------------------------------------------------------------------------
# GPU: CUDA against the CPU references
# ------------------------------------------------------------------------------------------------
def _poison_cuda_cache():
    """Fill freed allocator blocks (large and small pools) with NaN, so outputs allocated next
    start poisoned and an unwritten element shows up as NaN."""
    blocks = [torch.empty(32 << 20, dtype=torch.bfloat16, device="cuda")]
    blocks += [torch.empty(1 << 19, dtype=torch.bfloat16, device="cuda") for _ in range(32)]
    for b in blocks:
        b.fill_(float("nan"))
    torch.cuda.synchronize()
    del blocks


@gpu
@pytest.mark.parametrize("case", ROUTER_CASES)
def test_router_cuda_matches_cpu(case):
    t, e, k, scoring, renorm, g, tg, use_bias, dtype = case
    gen = torch.Generator().manual_seed(t * 7 + e)
    logits = (torch.randn(t, e, generator=gen) * 2).to(dtype)
    bias = torch.randn(e, generator=gen) * 0.1 if use_bias else None
    args = dict(scoring=scoring, renormalize=renorm, num_groups=g, topk_groups=tg, scaling_factor=1.5)
    ci, cw = moe_ops.router_topk(logits, k, correction_bias=bias, **args)
    _poison_cuda_cache()
    gi, gw = moe_ops.router_topk(logits.cuda(), k, correction_bias=None if bias is None else bias.cuda(), **args)
    assert torch.equal(gi.cpu(), ci)
    torch.testing.assert_close(gw.cpu(), cw, rtol=1e-5, atol=1e-6)


def _infinite_bias_case(e, groups):
    """Groups 0 and 2: bias +inf on the first expert, -inf on the rest (group score inf + -inf);
    group 1: +inf on all but its second expert; the other groups finite."""
    gs = e // groups
    bias = torch.linspace(-0.1, 0.1, e)
    for g in (0, 2):
        bias[g * gs:(g + 1) * gs] = -math.inf
        bias[g * gs] = math.inf
    bias[gs:2 * gs] = math.inf
    bias[gs + 1] = 0.0
    return bias


@pytest.mark.parametrize("e,groups", [(256, 8), (256, 4), (48, 3)])
def test_router_cpu_infinite_bias_group_score_counts_as_neg_inf(e, groups):
    gen = torch.Generator().manual_seed(e)
    logits = torch.randn(5, e, generator=gen) * 2
    ids, _ = moe_ops.router_topk(logits, 4, scoring="sigmoid", num_groups=groups, topk_groups=groups - 1,
                                 correction_bias=_infinite_bias_case(e, groups))
    # Groups 0 and 2 score inf + -inf = -inf and tie: the lower id stays, group 2 is the one left
    # out. The +inf choices, lowest id first: expert 0 (group 0), then group 1's.
    gs = e // groups
    assert ids.tolist() == [[0, gs, gs + 2, gs + 3]] * 5


@gpu
@pytest.mark.parametrize("e,groups", [(256, 8), (256, 4), (48, 3)])
@pytest.mark.parametrize("t", [1, 33, 128])
def test_router_cuda_infinite_bias_matches_cpu(e, groups, t):
    gen = torch.Generator().manual_seed(e + t)
    logits = torch.randn(t, e, generator=gen) * 2
    bias = _infinite_bias_case(e, groups)
    args = dict(scoring="sigmoid", num_groups=groups, topk_groups=groups - 1, correction_bias=bias)
    ci, cw = moe_ops.router_topk(logits, 4, **args)
    gi, gw = moe_ops.router_topk(logits.cuda(), 4, **{**args, "correction_bias": bias.cuda()})
    assert torch.equal(gi.cpu(), ci)
    torch.testing.assert_close(gw.cpu(), cw, rtol=1e-5, atol=1e-6)
    for path in ("two_kernels", "one_block", "cluster", "grid"):
        out = moe_ops.route_and_layout(logits.cuda(), 4, e, path=path, **{**args, "correction_bias": bias.cuda()})
        assert torch.equal(out[0].cpu(), ci), path


@gpu
@pytest.mark.parametrize("t,k,e,zipf", [(1, 2, 8, 0.0), (3, 8, 128, 1.2), (17, 8, 256, 2.0), (1000, 4, 128, 1.0),
                                         (4099, 2, 8, 3.0), (16384, 8, 256, 1.2)])
def test_dispatch_layout_cuda_matches_cpu(t, k, e, zipf):
    gen = torch.Generator().manual_seed(t)
    ids = zipf_ids(t, k, e, s=zipf, gen=gen)
    ids[t // 2, 0] = -1
    log2phy = torch.arange(e, dtype=torch.int32).view(e, 1).repeat(1, 2)
    log2phy[:, 1] = -1
    log2phy[0, 1] = e  # hot expert 0 gets a replica in slot e
    logcnt = torch.ones(e, dtype=torch.int32)
    logcnt[0] = 2
    for pl in [(None, None, e), (log2phy, logcnt, e + 1)]:
        want = moe_ops.dispatch_layout(ids, e, pl[2], pl[0], pl[1])
        _poison_cuda_cache()
        got = moe_ops.dispatch_layout(ids.cuda(), e, pl[2], *(None if x is None else x.cuda() for x in pl[:2]))
        for g_, w_ in zip(got, want):
            assert torch.equal(g_.cpu(), w_)


@gpu
@pytest.mark.parametrize("t,k,h", [(1, 2, 4096), (3, 8, 2048), (17, 4, 2880), (1000, 8, 64), (1001, 3, 7),
                                   (4096, 2, 1024)])
def test_permute_combine_cuda_matches_cpu(t, k, h):
    gen = torch.Generator().manual_seed(t + h)
    ids = zipf_ids(t, k, 16, gen=gen)
    ids[0, -1] = -1
    _, offsets, row, _ = moe_ops.dispatch_layout(ids, 16)
    hidden = torch.randn(t, h, generator=gen).bfloat16()
    y = torch.randn(t * k, h, generator=gen).bfloat16()
    w = torch.rand(t, k, generator=gen)
    _poison_cuda_cache()
    x = moe_ops.permute(hidden.cuda(), row.cuda())
    assert torch.equal(x.cpu(), moe_ops.permute(hidden, row))
    _poison_cuda_cache()
    out = moe_ops.unpermute_combine(y.cuda(), row.cuda(), w.cuda(), offsets.cuda()).cpu()
    want = moe_ops.unpermute_combine(y, row, w, offsets)
    assert not out.isnan().any()
    assert rel_err(out, want) < 2e-3
    torch.testing.assert_close(out.float(), want.float(), rtol=1e-2, atol=1e-2)


LAYER_CASES = [
    # tokens, hidden, ffn, experts, top_k, zipf
    (1, 128, 64, 8, 2, 0.0),
    (3, 256, 128, 16, 4, 1.0),
    (17, 128, 96, 32, 8, 2.5),   # skewed: many empty experts
    (1000, 256, 128, 8, 2, 1.2),
    (1029, 128, 64, 64, 6, 0.0),
]


@gpu
@pytest.mark.parametrize("case", LAYER_CASES)
def test_moe_forward_cuda_matches_cpu(case):
    t, h, f, e, k, zipf = case
    gen = torch.Generator().manual_seed(t * 5 + e)
    hidden, w13, w2, logits = make_layer(t, h, f, e, k, gen)
    ids = zipf_ids(t, k, e, s=zipf, gen=gen)
    w = torch.rand(t, k, generator=gen)
    want = moe_ops.moe_forward(hidden, w13, w2, topk_ids=ids, topk_weights=w)
    _poison_cuda_cache()
    got = moe_ops.moe_forward(hidden.cuda(), w13.cuda(), w2.cuda(), topk_ids=ids.cuda(), topk_weights=w.cuda()).cpu()
    assert not got.isnan().any()
    assert rel_err(got, want) < 1e-2
    # routed from logits as well (router on the device)
    want = moe_ops.moe_forward(hidden, w13, w2, router_logits=logits, top_k=k)
    got = moe_ops.moe_forward(hidden.cuda(), w13.cuda(), w2.cuda(), router_logits=logits.cuda(), top_k=k).cpu()
    assert rel_err(got, want) < 1e-2


@gpu
def test_moe_forward_cuda_graph_capture_and_replay():
    """Capture fails on any host synchronisation; replays on new inputs must match eager calls."""
    gen = torch.Generator().manual_seed(21)
    t, h, f, e, k = 67, 256, 128, 32, 4
    hidden, w13, w2, logits = make_layer(t, h, f, e, k, gen)
    hidden, w13, w2, logits = hidden.cuda(), w13.cuda(), w2.cuda(), logits.cuda()
    bias = (torch.randn(e, generator=gen) * 0.1).cuda()
    log2phy = torch.arange(e, dtype=torch.int32, device="cuda").view(e, 1)
    logcnt = torch.ones(e, dtype=torch.int32, device="cuda")

    def call():
        return moe_ops.moe_forward(hidden, w13, w2, router_logits=logits, top_k=k, scoring="sigmoid",
                                   num_groups=4, topk_groups=2, correction_bias=bias, log2phy=log2phy, logcnt=logcnt)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        call()  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    for rep in range(3):
        hidden.copy_(torch.randn(t, h, generator=gen).bfloat16())
        logits.copy_(torch.randn(t, e, generator=gen))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, call()) < 1e-3, f"replay {rep}"
        want = moe_ops.moe_forward(hidden.cpu(), w13.cpu(), w2.cpu(), router_logits=logits.cpu(), top_k=k,
                                   scoring="sigmoid", num_groups=4, topk_groups=2, correction_bias=bias.cpu(),
                                   log2phy=log2phy.cpu(), logcnt=logcnt.cpu())
        assert rel_err(out.cpu(), want) < 1e-2


@gpu
def test_cuda_inputs_on_mixed_devices_raise():
    hidden = torch.randn(4, 16, device="cuda").bfloat16()
    row = torch.arange(8, dtype=torch.int32).view(4, 2)
    with pytest.raises(ValueError, match="row_index is on cpu"):
        moe_ops.permute(hidden, row)
    with pytest.raises(ValueError, match="correction_bias is on cpu"):
        moe_ops.router_topk(torch.randn(4, 8, device="cuda"), 2, correction_bias=torch.zeros(8))
    w13 = torch.randn(4, 16, 16, device="cuda").bfloat16()
    w2 = torch.randn(4, 16, 8).bfloat16()
    with pytest.raises(ValueError, match="w2 is on cpu"):
        moe_ops.moe_forward(hidden, w13, w2, router_logits=torch.randn(4, 4, device="cuda"), top_k=2)
