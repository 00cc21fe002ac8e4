"""Capture routing traces from the trained reference MoE, measure its routing skew, train and
evaluate the lookahead predictors (next_gate, probe offline, probe online across a domain switch).

Usage: python run_eval.py --corpus DIR --model DIR --out DIR [--tiny]
Writes into OUT: traces/refmoe_<domain>.npz, traces/refmoe_switch.npz (moebal trace format),
refmoe_predictor_sample.npz (router + probe weights and a held-out hidden-state sample, fp16),
eval_results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

import moebal
from moebal import _core
from moebal.capture import MemorySink, RoutingRecorder, capture_trace
from moebal.predict import NextGatePredictor, OnlineProbeTrainer, ProbePredictor, evaluate, routers_from_model

DOMAINS = ["c", "man", "prose", "python"]


def windows(stream: np.ndarray, n: int, seq_len: int, offset: int = 0) -> torch.Tensor:
    """n consecutive non-overlapping windows from ``offset``."""
    need = offset + n * seq_len
    if need > stream.size:
        raise ValueError(f"stream of {stream.size} tokens is too short for {n} x {seq_len} from {offset}")
    return torch.from_numpy(stream[offset:need].astype(np.int64)).view(n, seq_len)


def random_windows(stream: np.ndarray, n: int, seq_len: int, rng: np.random.Generator) -> torch.Tensor:
    offs = rng.integers(0, stream.size - seq_len - 1, size=n)
    return torch.from_numpy(np.stack([stream[o:o + seq_len] for o in offs]).astype(np.int64))


@torch.no_grad()
def record(model, ids: torch.Tensor, batch: int, device) -> MemorySink:
    sink = MemorySink(keep_torch=True)
    with RoutingRecorder(model, sink, store_hidden=True, to_numpy=False, hidden_dtype=torch.float16):
        for s in range(0, ids.shape[0], batch):
            model(input_ids=ids[s:s + batch].to(device), use_cache=False)
    return sink


def skew(topk_ids: np.ndarray, steps: np.ndarray, E: int, gpus: int) -> dict:
    """Per-layer max/mean expert load and max/mean GPU load (contiguous placement), per step, averaged."""
    t = _core.RoutingTrace(np.ascontiguousarray(topk_ids, dtype=np.int32), E, step=steps.astype(np.int32))
    L = t.num_layers
    place = _core.Placement.contiguous(L, E, gpus, 1)
    exp_ir, gpu_ir = [], []
    for s in range(t.num_steps):
        lm = t.loads(s, s + 1)
        a = np.asarray(lm.loads).reshape(L, E)
        exp_ir.append(a.max(1) / a.mean(1))
        gpu_ir.append(np.asarray(_core.layer_imbalance(lm, place)))
    exp_ir, gpu_ir = np.mean(exp_ir, 0), np.mean(gpu_ir, 0)
    return {"expert_max_over_mean": exp_ir.tolist(), "gpu_max_over_mean": gpu_ir.tolist(),
            "expert_max_over_mean_avg": float(exp_ir.mean()), "gpu_max_over_mean_avg": float(gpu_ir.mean()),
            "tokens_per_step": int(t.num_tokens // t.num_steps)}


def layer_metrics(pred, sink: MemorySink, batch_tokens: int) -> dict:
    L = pred.num_layers
    per = []
    for l in range(L - 1):
        h = sink.cat("hidden", l)
        per.append(evaluate(pred, l, h, sink.cat("topk_ids", l + 1), sink.cat("topk_weights", l + 1), batch_tokens))
    avg = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
    return {"per_layer": per, "avg": avg}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--residual-dims", default="256,1024,2048")
    ap.add_argument("--ship-dim", type=int, default=256)
    ap.add_argument("--n-fit", type=int, default=768, help="training sequences per domain for the predictors")
    ap.add_argument("--fit-steps", type=int, default=3000, help="Adam steps per layer (batch 4096, cosine lr)")
    ap.add_argument("--per-domain", action="store_true", help="also fit the shipped width offline per domain")
    ap.add_argument("--prequential", default="",
                    help="comma-separated residual widths (each also in --residual-dims) to run online, prequential, "
                         "per domain, starting from the mixed-domain offline probe of that width")
    ap.add_argument("--ablate", action="store_true",
                    help="also fit the shipped width on the previous recipe (96 sequences per domain, 1000 "
                         "constant-lr steps) to separate the effect of the fit data from the model's")
    args = ap.parse_args(argv)
    import transformers

    t_start = time.time()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    z = np.load(os.path.join(args.corpus, "corpus.npz"), allow_pickle=False)
    dtype = torch.bfloat16 if args.device != "cpu" else torch.float32
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(dev).eval()
    cfg = model.config
    E, K, L, H = cfg.num_experts, cfg.num_experts_per_tok, cfg.num_hidden_layers, cfg.hidden_size
    S = 512 if not args.tiny else 64
    n_eval = 64 if not args.tiny else 4           # sequences per domain for metrics
    n_fit = args.n_fit if not args.tiny else 4    # sequences per domain for predictor training
    batch = 16 if not args.tiny else 2
    fit_steps = args.fit_steps if not args.tiny else 20
    fit_kw = dict(batch=4096, lr=2e-3, min_lr_frac=0.05)
    res: dict = {"model": {"num_layers": L, "num_experts": E, "top_k": K, "hidden": H}, "device": args.device,
                 "seq_len": S}
    os.makedirs(os.path.join(args.out, "traces"), exist_ok=True)

    # 1. held-out evaluation sets: the second half of each domain's held-out stream
    evalset, eval_ids = {}, {}
    for d in DOMAINS:
        st = z[f"{d}_heldout"]
        eval_ids[d] = windows(st, n_eval, S, offset=st.size // 2)
        evalset[d] = record(model, eval_ids[d], batch, dev)
    # predictor training data: random windows of the training streams, all domains mixed
    rng = np.random.default_rng(7)
    fit_ids = torch.cat([random_windows(z[f"{d}_train"], n_fit, S, rng) for d in DOMAINS])
    fitset = record(model, fit_ids, batch, dev)
    py_ids = random_windows(z["python_train"], n_fit, S, rng)
    fit_py = record(model, py_ids, batch, dev)
    print(f"captured: eval {len(DOMAINS)} x {n_eval * S} tokens, fit {fit_ids.numel()} tokens ({time.time() - t_start:.0f}s)", flush=True)

    # 2. routing skew on held-out text, 8 GPUs with a contiguous placement, per step of `batch` sequences
    res["skew"] = {}
    for d in DOMAINS:
        ids = np.stack([evalset[d].cat("topk_ids", l).cpu().numpy() for l in range(L)])
        steps = np.repeat(np.arange(n_eval // batch), batch * S)
        res["skew"][d] = skew(ids, steps, E, 8)
    allids = np.concatenate([np.stack([evalset[d].cat("topk_ids", l).cpu().numpy() for l in range(L)]) for d in DOMAINS], 1)
    res["skew"]["all_domains_one_step"] = skew(allids, np.zeros(allids.shape[1], np.int32), E, 8)
    print("skew:", json.dumps({d: [round(v["expert_max_over_mean_avg"], 2), round(v["gpu_max_over_mean_avg"], 2)]
                                for d, v in res["skew"].items()}), flush=True)

    # 3. predictors
    routers = routers_from_model(model)
    bt = batch * S  # count error per step (the planner's window)
    ng = NextGatePredictor(routers, K, device=dev)
    res["predictor_uses_op"] = ng.use_op
    print(f"predictors run through moebal::probe_predict: {ng.use_op}", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True  # predictor training GEMMs
    res["next_gate"] = {d: layer_metrics(ng, evalset[d], bt) for d in DOMAINS}
    h_fit = [fitset.cat("hidden", l, release=True) for l in range(L)]  # chunks freed layer by layer
    res["probe"] = {}
    shipped = None
    offline = {}  # residual width -> the mixed-domain offline probe
    for D in [int(x) for x in args.residual_dims.split(",")]:
        if args.tiny:
            D = min(D, 32)
        pr = ProbePredictor(routers, K, residual_dim=D, device=dev, seed=0)
        t0 = time.time()
        losses = {l: pr.fit(l, h_fit[l], h_fit[l + 1], steps=fit_steps, seed=l, **fit_kw) for l in range(L - 1)}
        fit_s = time.time() - t0
        res["probe"][str(D)] = {"fit_s": fit_s, "final_loss": {l: float(np.mean(v[-20:])) for l, v in losses.items()},
                                "eval": {d: layer_metrics(pr, evalset[d], bt) for d in DOMAINS}}
        r = res["probe"][str(D)]["eval"]
        print(f"probe D={D}: fit {fit_s:.1f}s, top-K acc " +
              " ".join(f"{d}={r[d]['avg']['topk_acc']:.3f}" for d in DOMAINS) +
              " | next_gate " + " ".join(f"{d}={res['next_gate'][d]['avg']['topk_acc']:.3f}" for d in DOMAINS), flush=True)
        offline[D] = pr
        if D == args.ship_dim or shipped is None:
            shipped = (D, pr)

    if args.ablate:
        # previous recipe: the first 96 sequences of each domain's fit windows, 1000 constant-lr steps
        n_old, steps_old = (min(96, n_fit), 1000) if not args.tiny else (min(2, n_fit), 20)
        keep = torch.cat([torch.arange(i * n_fit * S, (i * n_fit + n_old) * S) for i in range(len(DOMAINS))])
        pr = ProbePredictor(routers, K, residual_dim=args.ship_dim, device=dev, seed=0)
        for l in range(L - 1):
            ki = keep.to(h_fit[l].device)
            pr.fit(l, h_fit[l][ki], h_fit[l + 1][ki], steps=steps_old, batch=4096, lr=2e-3, seed=l)
        res["probe_ablation_small_fit"] = {"residual_dim": args.ship_dim, "sequences_per_domain": n_old, "steps": steps_old,
                                           "eval": {d: layer_metrics(pr, evalset[d], bt) for d in DOMAINS}}
        r = res["probe_ablation_small_fit"]["eval"]
        print(f"probe D={args.ship_dim} previous recipe ({n_old} seqs/domain, {steps_old} steps): top-K acc " +
              " ".join(f"{d}={r[d]['avg']['topk_acc']:.3f}" for d in DOMAINS), flush=True)
    res["fit_recipe"] = {"sequences_per_domain": n_fit, "steps": fit_steps, **fit_kw}

    # 4. domain switch: python then prose, `per_step` sequences per step; predictors predict a step,
    # then (online only) learn from it
    per_step = 4 if not args.tiny else 1
    n_sw = 16 if not args.tiny else 4
    half = n_sw // 2 * per_step
    sw_ids = torch.cat([windows(z["python_heldout"], half, S, 0), windows(z["prose_heldout"], half, S, 0)])
    D = shipped[0]
    py_probe = ProbePredictor(routers, K, residual_dim=D, device=dev, seed=0)
    for l in range(L - 1):
        py_probe.fit(l, fit_py.cat("hidden", l), fit_py.cat("hidden", l + 1), steps=fit_steps, seed=l, **fit_kw)
    online = ProbePredictor(routers, K, residual_dim=D, device=dev, seed=0)
    for l in range(L - 1):
        online.w1[l], online.w2[l] = py_probe.w1[l].clone(), py_probe.w2[l].clone()
        online.publish(l, online.w1[l], online.w2[l])
    trainer = OnlineProbeTrainer(online, capacity=8192, lr=1e-3, steps_per_update=50, batch=2048)
    switch_rows = []
    for st in range(n_sw):
        one = record(model, sw_ids[st * per_step:(st + 1) * per_step], per_step, dev)
        row = {"step": st, "domain": "python" if st < n_sw // 2 else "prose"}
        for name, p in (("next_gate", ng), ("probe_mixed", shipped[1]), ("probe_python_static", py_probe), ("probe_online", online)):
            row[name] = layer_metrics(p, one, per_step * S)["avg"]
        for l in range(L - 1):
            trainer.observe(l, one.cat("hidden", l), one.cat("hidden", l + 1))
        trainer.update()
        switch_rows.append(row)
        print(f"switch step {st} ({row['domain']}): " + " ".join(
            f"{n}={row[n]['topk_acc']:.3f}" for n in ("next_gate", "probe_mixed", "probe_python_static", "probe_online")), flush=True)
    res["switch"] = {"seqs_per_step": per_step, "residual_dim": D, "online_update": "50 AdamW steps, batch 2048, lr 1e-3, ring 8192 tokens, after every step", "rows": switch_rows}

    # 4b. per-domain predictors, the way PROBE deploys them (trained on the serving workload itself):
    #  - offline per domain: the shipped width fitted on that domain's training windows only;
    #  - online, prequential: start from the mixed offline probe and stream the first half of the
    #    domain's held-out text in steps of `pq_seqs` sequences; each step is PREDICTED FIRST (that is
    #    what is scored), then fed to the online trainer, then an update is published.
    if args.per_domain:
        D = shipped[0]
        res["probe_domain_offline"] = {}
        for i, d in enumerate(DOMAINS):
            sl = torch.arange(i * n_fit * S, (i + 1) * n_fit * S)
            pd = ProbePredictor(routers, K, residual_dim=D, device=dev, seed=0)
            for l in range(L - 1):
                si = sl.to(h_fit[l].device)
                pd.fit(l, h_fit[l][si], h_fit[l + 1][si], steps=fit_steps, seed=l, **fit_kw)
            res["probe_domain_offline"][d] = layer_metrics(pd, evalset[d], bt)
            print(f"probe D={D} fitted on {d} only: top-K acc {res['probe_domain_offline'][d]['avg']['topk_acc']:.3f}", flush=True)

    pq_dims = [int(x) for x in args.prequential.split(",") if x]
    if args.tiny:
        pq_dims = [min(D_, 32) for D_ in pq_dims]
    for D in pq_dims:
        if D not in offline:
            raise SystemExit(f"--prequential width {D} is not among --residual-dims")
        pq_seqs, pq_steps = (4, 24) if not args.tiny else (1, 3)
        pq = {"residual_dim": D, "seqs_per_step": pq_seqs, "steps": pq_steps,
              "online_update": "50 AdamW steps, batch 2048, lr 1e-3, ring 16384 tokens", "domains": {}}
        for d in DOMAINS:
            op = ProbePredictor(routers, K, residual_dim=D, device=dev, seed=0)
            for l in range(L - 1):
                op.w1[l], op.w2[l] = offline[D].w1[l].clone(), offline[D].w2[l].clone()
                op.publish(l, op.w1[l], op.w2[l])
            tr = OnlineProbeTrainer(op, capacity=16384, lr=1e-3, steps_per_update=50, batch=2048)
            ids = windows(z[f"{d}_heldout"], pq_seqs * pq_steps, S, 0)
            rows = []
            for st in range(pq_steps):
                one = record(model, ids[st * pq_seqs:(st + 1) * pq_seqs], pq_seqs, dev)
                m = layer_metrics(op, one, pq_seqs * S)
                rows.append({"step": st, **m["avg"], "per_layer_topk_acc": [p_["topk_acc"] for p_ in m["per_layer"]]})
                for l in range(L - 1):
                    tr.observe(l, one.cat("hidden", l), one.cat("hidden", l + 1))
                tr.update()
            acc = [r_["topk_acc"] for r_ in rows]
            pq["domains"][d] = {"rows": rows, "topk_acc_all_steps": float(np.mean(acc)),
                                "topk_acc_after_first_quarter": float(np.mean(acc[pq_steps // 4:]))}
            print(f"probe D={D} online prequential on {d}: top-K acc all steps {np.mean(acc):.3f}, "
                  f"after the first quarter {np.mean(acc[pq_steps // 4:]):.3f}", flush=True)
        res.setdefault("probe_online_prequential_by_dim", {})[str(D)] = pq
        if D == shipped[0]:
            res["probe_online_prequential"] = pq

    # 5. shipped traces (moebal format, ids + gate weights + positions + steps; small)
    n_ship = 16 if not args.tiny else 2  # switch trace: 8 python + 8 prose sequences; domains: half of that
    for d in DOMAINS:
        capture_trace(model, [eval_ids[d][i:i + 2] for i in range(0, max(2, n_ship // 2), 2)],
                      os.path.join(args.out, "traces", f"refmoe_{d}.npz"), round_weights=True,
                      meta={"domain": d, "text": "held-out (second half of the domain's held-out stream)", "source": "moebal reference MoE"})
    mid = sw_ids.shape[0] // 2
    sw_ship = sw_ids[mid - n_ship // 2: mid + n_ship // 2]
    capture_trace(model, [sw_ship[i:i + 2] for i in range(0, sw_ship.shape[0], 2)],
                  os.path.join(args.out, "traces", "refmoe_switch.npz"), round_weights=True,
                  meta={"domain": "python->prose", "source": "moebal reference MoE"})
    # 6. predictor sample: routers, shipped probe weights, 256 python + 256 prose held-out hidden states
    nt = 128 if not args.tiny else 32
    hs = np.stack([np.concatenate([evalset["python"].cat("hidden", l)[:nt].cpu().numpy(),
                                   evalset["prose"].cat("hidden", l)[:nt].cpu().numpy()]) for l in range(L)])
    ids_s = np.stack([np.concatenate([evalset["python"].cat("topk_ids", l)[:nt].cpu().numpy(),
                                      evalset["prose"].cat("topk_ids", l)[:nt].cpu().numpy()]) for l in range(L)])
    w_s = np.stack([np.concatenate([evalset["python"].cat("topk_weights", l)[:nt].cpu().numpy(),
                                    evalset["prose"].cat("topk_weights", l)[:nt].cpu().numpy()]) for l in range(L)])
    pr = shipped[1]
    np.savez_compressed(os.path.join(args.out, "refmoe_predictor_sample.npz"),
                        router_weight=np.stack([w.cpu().numpy() for w, _ in routers]).astype(np.float16),
                        probe_w1=np.stack([w.cpu().numpy() for w in pr.w1]).astype(np.float16),
                        probe_w2=np.stack([w.cpu().numpy() for w in pr.w2]).astype(np.float16),
                        hidden_states=hs.astype(np.float16), topk_ids=ids_s.astype(np.int32), topk_weights=w_s.astype(np.float32),
                        __meta__=np.array(json.dumps({"num_experts": E, "top_k": K, "hidden_size": H, "residual_dim": shipped[0],
                                                      "tokens": {"python": nt, "prose": nt}})))
    # 7. predicted vs true ids (uint8) on the python and prose evaluation sets, for offline planner studies
    nt = min(16384, n_eval * S)
    arrs = {}
    for d in ("python", "prose"):
        arrs[f"{d}_true"] = np.stack([evalset[d].cat("topk_ids", l)[:nt].cpu().numpy() for l in range(L)]).astype(np.uint8)
        preds = [("next_gate", ng), ("probe", pr)] + [(f"probe_D{D}", p) for D, p in sorted(offline.items())]
        for name, p in preds:
            arrs[f"{d}_{name}"] = np.stack([p.predict(l, evalset[d].cat("hidden", l)[:nt]).topk_ids.cpu().numpy()
                                            for l in range(L - 1)]).astype(np.uint8)
    np.savez_compressed(os.path.join(args.out, "pred_ids.npz"), **arrs,
                        __meta__=np.array(json.dumps({"seq_len": S, "tokens": nt, "probe_residual_dim": shipped[0],
                                                      "layout": "<domain>_true [L, T, K]; <domain>_<predictor> [L-1, T, K] predicts layers 1..L-1 "
                                                                "(probe = the shipped width; probe_D<D> = every offline width)"})))
    res["elapsed_s"] = time.time() - t_start
    json.dump(res, open(os.path.join(args.out, "eval_results.json"), "w"), indent=1)
    print(f"eval done in {res['elapsed_s']:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
