"""torch.ops.moebal.route_and_layout: router top-k + dispatch layout in one op (one launch at decode
sizes on CUDA). CPU = the composition of the two CPU references; CUDA must equal the two CUDA ops
exactly (ids, layout, weight bits) and the CPU reference (weights to fp32 rounding)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from moebal import moe_ops  # noqa: E402
from op_env import op_env  # noqa: E402

HAVE_OPS, HAVE_CUDA = op_env()
pytestmark = pytest.mark.skipif(not HAVE_OPS, reason="moebal torch ops not built")
gpu = pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA device and moebal CUDA kernels")

MODELS = moe_ops.ROUTER_PRESETS  # name: experts, top_k, router keyword arguments, correction bias
TOKENS = [1, 3, 17, 128, 256, 1003]


def make_inputs(model, t, replicated, seed, dtype=torch.float32):
    e, k, kw, use_bias = MODELS[model]
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(t, e, generator=gen) * 2
    logits[::5, -1] = logits[::5, 0]  # exact ties: the lower id wins
    logits[3::7, 1] = float("nan")
    logits = logits.to(dtype)
    bias = torch.randn(e, generator=gen) * 0.1 if use_bias else None
    if not replicated:
        return logits, k, dict(kw, correction_bias=bias), e, None, None
    copies = torch.ones(e, dtype=torch.int32)
    copies[: min(e, 6)] = torch.tensor([2, 3, 2, 3, 2, 3], dtype=torch.int32)[: min(e, 6)]
    s, maxc = int(copies.sum()), int(copies.max())
    perm = torch.randperm(s, generator=gen).int()
    log2phy = torch.full((e, maxc), -1, dtype=torch.int32)
    at = 0
    for x in range(e):
        c = int(copies[x])
        log2phy[x, :c] = perm[at:at + c]
        at += c
    return logits, k, dict(kw, correction_bias=bias), s, log2phy, copies


def to(x, device):
    return None if x is None else x.to(device)


def two_ops(logits, k, kw, s, log2phy, logcnt):
    ids, w = moe_ops.router_topk(logits, k, **kw)
    return (ids, w) + tuple(moe_ops.dispatch_layout(ids, logits.shape[1], s, log2phy, logcnt))


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("replicated", [False, True])
def test_cpu_is_router_then_layout(model, replicated):
    logits, k, kw, s, log2phy, logcnt = make_inputs(model, 37, replicated, seed=1)
    got = moe_ops.route_and_layout(logits, k, s, log2phy=log2phy, logcnt=logcnt, **kw)
    want = two_ops(logits, k, kw, s, log2phy, logcnt)
    assert len(got) == 6
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    offsets = got[3]
    assert offsets.shape == (s + 1,) and int(offsets[-1]) == 37 * k  # nothing dropped


def test_bad_inputs_raise_value_error():
    logits, k, kw, s, log2phy, logcnt = make_inputs("Mixtral-8x7B", 5, True, seed=2)
    with pytest.raises(ValueError, match="num_slots"):
        moe_ops.route_and_layout(logits, k, 9)  # identity placement: num_slots must equal num_experts
    with pytest.raises(ValueError, match="num_slots"):
        moe_ops.route_and_layout(logits, k, log2phy=log2phy, logcnt=logcnt)  # placement needs num_slots
    with pytest.raises(ValueError, match="top_k"):
        moe_ops.route_and_layout(logits, 9, 8)
    with pytest.raises(ValueError, match="path"):
        moe_ops.route_and_layout(logits, k, 8, path="fastest")
    with pytest.raises(ValueError, match="together"):
        moe_ops.route_and_layout(logits, k, s, log2phy=log2phy)
    with pytest.raises(ValueError, match="log2phy"):
        moe_ops.route_and_layout(logits, k, s, log2phy=log2phy[:4].contiguous(), logcnt=logcnt)
    bad = log2phy.clone()
    bad[0, :] = s + 1
    hot = logits.clone()
    hot[:, 0] = 10.0  # every token picks expert 0, whose slots are out of range
    with pytest.raises(ValueError, match="outside"):  # the CPU reference validates slots
        moe_ops.route_and_layout(hot, k, s, log2phy=bad, logcnt=logcnt)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=gpu)])
def test_opcheck(device):
    for model, replicated in [("Mixtral-8x7B", False), ("DeepSeek-V3", True)]:
        logits, k, kw, s, log2phy, logcnt = make_inputs(model, 9, replicated, seed=3)
        args = (logits.to(device), k, s, kw["scoring"], kw["renormalize"], kw.get("num_groups", 1),
                kw.get("topk_groups", 1), to(kw["correction_bias"], device), kw.get("scaling_factor", 1.0),
                to(log2phy, device), to(logcnt, device), "cluster" if replicated else "auto")
        torch.library.opcheck(torch.ops.moebal.route_and_layout.default, args)


def test_torch_compile_fullgraph():
    logits, k, kw, s, log2phy, logcnt = make_inputs("DeepSeek-V3", 7, True, seed=4)

    def f(lg):
        ids, w, slot, off, row, tok = moe_ops.route_and_layout(lg * 1.0, k, s, log2phy=log2phy, logcnt=logcnt, **kw)
        return w * 2, row + 1, off

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for g, w in zip(compiled(logits), f(logits)):
        assert torch.equal(g, w)


@gpu
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("t", TOKENS)
@pytest.mark.parametrize("replicated", [False, True])
def test_cuda_equals_two_ops_and_cpu(model, t, replicated):
    dtype = torch.bfloat16 if t == 17 else torch.float32
    logits, k, kw, s, log2phy, logcnt = make_inputs(model, t, replicated, seed=t * 3 + int(replicated), dtype=dtype)
    dkw = dict(kw, correction_bias=to(kw["correction_bias"], "cuda"))
    dl, dp, dc = logits.cuda(), to(log2phy, "cuda"), to(logcnt, "cuda")
    two = two_ops(dl, k, dkw, s, dp, dc)
    for path in moe_ops.ROUTE_LAYOUT_PATHS:
        got = moe_ops.route_and_layout(dl, k, s, log2phy=dp, logcnt=dc, path=path, **dkw)
        for g, w in zip(got, two):  # bit for bit, weights included
            assert torch.equal(g, w), path
    got = moe_ops.route_and_layout(dl, k, s, log2phy=dp, logcnt=dc, **dkw)
    cpu = moe_ops.route_and_layout(logits, k, s, log2phy=log2phy, logcnt=logcnt, **kw)
    for i, (g, w) in enumerate(zip(got, cpu)):
        if i == 1:
            torch.testing.assert_close(g.cpu(), w, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(g.cpu(), w), i


@gpu
def test_cuda_broken_placement_drops_like_dispatch_layout():
    logits, k, kw, s, log2phy, logcnt = make_inputs("DeepSeek-V3", 128, True, seed=5)
    logits[:, 0] = logits[:, 3] = 6.0  # most tokens pick experts 0 and 3, whose tables are broken below
    log2phy = log2phy.clone()
    logcnt = logcnt.clone()
    log2phy[0, 1] = s + 3  # out of range
    logcnt[-1] = 0  # no copy
    log2phy[3, 0] = -2
    dkw = dict(kw, correction_bias=kw["correction_bias"].cuda())
    dl, dp, dc = logits.cuda(), log2phy.cuda(), logcnt.cuda()
    two = two_ops(dl, k, dkw, s, dp, dc)
    for path in moe_ops.ROUTE_LAYOUT_PATHS:
        got = moe_ops.route_and_layout(dl, k, s, log2phy=dp, logcnt=dc, path=path, **dkw)
        for g, w in zip(got, two):
            assert torch.equal(g, w), path
    slot_ids, offsets = got[2], got[3]
    dropped = int((slot_ids < 0).sum())
    assert dropped > 0 and int(offsets[-1]) == 128 * k - dropped


@gpu
def test_cuda_graph_capture_and_whole_layer():
    logits, k, kw, s, log2phy, logcnt = make_inputs("DeepSeek-V3", 16, True, seed=6)
    dkw = dict(kw, correction_bias=kw["correction_bias"].cuda())
    dl, dp, dc = logits.cuda(), log2phy.cuda(), logcnt.cuda()
    eager = moe_ops.route_and_layout(dl, k, s, log2phy=dp, logcnt=dc, **dkw)
    for path in moe_ops.ROUTE_LAYOUT_PATHS:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            captured = moe_ops.route_and_layout(dl, k, s, log2phy=dp, logcnt=dc, path=path, **dkw)
        g.replay()
        torch.cuda.synchronize()
        for a, b in zip(captured, eager):
            assert torch.equal(a, b), path
    # moe_forward from logits (fused routing inside) equals moe_forward from the fused ids/weights.
    gen = torch.Generator().manual_seed(7)
    h, f = 128, 64
    hidden = torch.randn(16, h, generator=gen).bfloat16().cuda()
    w13 = (torch.randn(s, 2 * f, h, generator=gen) / 8).bfloat16().cuda()
    w2 = (torch.randn(s, h, f, generator=gen) / 6).bfloat16().cuda()
    a = moe_ops.moe_forward(hidden, w13, w2, router_logits=dl, top_k=k, log2phy=dp, logcnt=dc, **dkw)
    b = moe_ops.moe_forward(hidden, w13, w2, topk_ids=eager[0], topk_weights=eager[1], log2phy=dp, logcnt=dc)
    assert torch.equal(a, b)
