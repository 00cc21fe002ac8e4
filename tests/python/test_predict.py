"""Lookahead predictors (next_gate, probe offline/online, double-buffered publish) and metrics."""
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from moebal.predict import (  # noqa: E402
    NextGatePredictor, OnlineProbeTrainer, ProbePredictor, count_l1, evaluate, recall_2k, top_half_k_hit,
    topk_accuracy)


def test_metrics_by_hand():
    true = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    w = np.array([[0.1, 0.4, 0.3, 0.2], [0.4, 0.3, 0.2, 0.1]])
    pred = np.array([[1, 2, 9, 8], [4, 5, 6, 7]])
    assert topk_accuracy(pred, true) == pytest.approx((2 / 4 + 1) / 2)
    # true top-2 by weight: {1, 2} and {4, 5}: all inside pred
    assert top_half_k_hit(pred, true, w) == 1.0
    assert top_half_k_hit(np.array([[1, 9, 9, 9], [9, 9, 9, 5]]), true, w) == pytest.approx(0.5)
    pred2 = np.array([[1, 2, 9, 8, 0, 3, 11, 12], [9] * 8])
    assert recall_2k(pred2, true) == pytest.approx((1.0 + 0.0) / 2)
    assert count_l1([2, 0, 2], [1, 1, 2]) == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="2K"):
        recall_2k(pred, true)
    with pytest.raises(ValueError, match="tokens, K"):
        topk_accuracy(pred[:, :2], true)


def synthetic(L=3, T=3000, H=24, E=16, seed=0):
    """Hidden states whose next-layer router input is a nonlinear function of the current one, so a
    residual MLP can learn what the next-layer router alone cannot."""
    g = torch.Generator().manual_seed(seed)
    hs = [torch.randn(T, H, generator=g)]
    A = [torch.randn(H, H, generator=g) * 0.8 / H ** 0.5 for _ in range(L)]
    for l in range(1, L):
        hs.append(hs[-1] + torch.tanh(hs[-1] @ A[l]) * 2.0)
    routers = [(torch.randn(E, H, generator=g), None) for _ in range(L)]
    return hs, routers


def true_routing(routers, l, h, k):
    p = torch.softmax(h @ routers[l][0].t(), -1)
    w, i = p.topk(k, -1)
    return i.int(), w


@pytest.mark.parametrize("use_op", [False, True])
def test_probe_starts_as_next_gate_and_learns(use_op):
    if use_op:
        from moebal import ops

        try:
            ops.load_library()
        except ImportError:
            pytest.skip("moebal torch ops not built")
    hs, routers = synthetic()
    k = 4
    ng = NextGatePredictor(routers, k, use_op=use_op)
    pr = ProbePredictor(routers, k, residual_dim=48, use_op=use_op)
    a, b = ng.predict(0, hs[0][:500]), pr.predict(0, hs[0][:500])
    assert torch.equal(a.topk_ids, b.topk_ids) and torch.equal(a.counts, b.counts)  # zero-initialised residual
    ids, w = true_routing(routers, 1, hs[1], k)
    tr, te = slice(0, 2500), slice(2500, 3000)
    before = evaluate(pr, 0, hs[0][te], ids[te], w[te])
    losses = pr.fit(0, hs[0][tr], hs[1][tr], steps=300, batch=512, lr=3e-3)
    after = evaluate(pr, 0, hs[0][te], ids[te], w[te])
    assert np.mean(losses[-20:]) < np.mean(losses[:5])
    assert after["topk_acc"] > before["topk_acc"] + 0.1
    assert after["count_l1"] < before["count_l1"]
    assert after["recall_2k"] >= after["topk_acc"]
    assert torch.equal(ng.predict(0, hs[0][:50]).topk_ids, a.topk_ids[:50])  # next_gate untouched


def test_online_trainer_publishes_without_stopping_inference():
    hs, routers = synthetic(T=2000)
    k = 4
    pr = ProbePredictor(routers, k, residual_dim=32, use_op=False)
    ids, w = true_routing(routers, 2, hs[2], k)
    trainer = OnlineProbeTrainer(pr, capacity=1024, steps_per_update=40, batch=256, lr=3e-3)
    acc0 = evaluate(pr, 1, hs[1][1500:], ids[1500:], w[1500:])["topk_acc"]
    stop = threading.Event()
    seen = []

    def serve():  # concurrent inference while updates publish
        while not stop.is_set():
            p = pr.predict(1, hs[1][1500:1600])
            seen.append(int(p.counts.sum()))

    t = threading.Thread(target=serve)
    t.start()
    try:
        for s in range(0, 1500, 250):
            trainer.observe(1, hs[1][s:s + 250], hs[2][s:s + 250])
            trainer.update(layers=[1])
    finally:
        stop.set()
        t.join()
    assert seen and all(c == 100 * k for c in seen)
    assert trainer.updates == 6 and pr._active[1] == 0  # 6 flips: back on buffer 0
    acc1 = evaluate(pr, 1, hs[1][1500:], ids[1500:], w[1500:])["topk_acc"]
    assert acc1 > acc0 + 0.05
    assert torch.equal(pr.w2[0], torch.zeros_like(pr.w2[0]))  # other layers untouched


def test_ring_buffer_wraps():
    hs, routers = synthetic(T=300)
    pr = ProbePredictor(routers, 2, residual_dim=8, use_op=False)
    tr = OnlineProbeTrainer(pr, capacity=100)
    tr.observe(0, hs[0][:70], hs[1][:70])
    tr.observe(0, hs[0][70:140], hs[1][70:140])
    assert tr._n[0] == 100 and tr._pos[0] == 40
    torch.testing.assert_close(tr._h[0][:40], hs[0][100:140])
    torch.testing.assert_close(tr._h[0][40:100], hs[0][40:100])


def test_bad_input():
    hs, routers = synthetic()
    pr = ProbePredictor(routers, 4, residual_dim=8, use_op=False)
    with pytest.raises(ValueError, match="layer must be in"):
        pr.predict(2, hs[0])
    with pytest.raises(ValueError, match="mismatched hidden size"):
        pr.predict(0, hs[0][:, :10])
    with pytest.raises(ValueError, match="mismatched hidden size or expert count"):
        NextGatePredictor([routers[0], (torch.zeros(16, 7), None)], 2)
    with pytest.raises(ValueError, match="at least 2"):
        NextGatePredictor(routers[:1], 2)
    with pytest.raises(ValueError, match="top_k"):
        NextGatePredictor(routers, 17)
    with pytest.raises(ValueError, match="residual_dim"):
        ProbePredictor(routers, 2, residual_dim=0)
    with pytest.raises(ValueError, match="do not match"):
        pr.publish(0, torch.zeros(3, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="min_lr_frac"):
        pr.fit(0, hs[0][:64], hs[1][:64], steps=2, min_lr_frac=1.5)


def test_fit_cosine_schedule_learns_and_ends_at_min_lr():
    hs, routers = synthetic()
    pr = ProbePredictor(routers, 4, residual_dim=48, use_op=False)
    ids, w = true_routing(routers, 1, hs[1], 4)
    before = evaluate(pr, 0, hs[0][2500:], ids[2500:], w[2500:])
    seen = []
    orig = torch.optim.AdamW.step

    def spy(self, *a, **k):  # record the learning rate each step runs with
        seen.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        pr.fit(0, hs[0][:2500], hs[1][:2500], steps=200, batch=512, lr=3e-3, min_lr_frac=0.1)
    finally:
        torch.optim.AdamW.step = orig
    after = evaluate(pr, 0, hs[0][2500:], ids[2500:], w[2500:])
    assert len(seen) == 200 and seen[0] == pytest.approx(3e-3)
    assert all(a >= b for a, b in zip(seen, seen[1:]))  # monotone cosine decay
    assert seen[-1] == pytest.approx(3e-4, rel=0.01)
    assert after["topk_acc"] > before["topk_acc"] + 0.1
