"""Render bench/results/routing.md from the JSON results of one device run.

Usage: python report.py --train train_log.json --eval eval_results.json [--bench bench_probe.json]
       [--command "..."] --out bench/results/routing.md
"""
from __future__ import annotations

import argparse
import json
import sys

DOMAINS = ["c", "man", "prose", "python"]
METRICS = [("topk_acc", "Top-K acc"), ("top_half_hit", "top-half-K hit"), ("recall_2k", "2xTop-K recall"),
           ("count_l1", "count L1 (rel.)")]


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def pct(x):
    return f"{100 * x:.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--bench")
    ap.add_argument("--planner", help="planner_eval.py --json output")
    ap.add_argument("--planner-note", default="")
    ap.add_argument("--command", default="")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    tr, ev = json.load(open(a.train)), json.load(open(a.eval))
    be = json.load(open(a.bench)) if a.bench else None
    mc, tc = tr["config"]["model"], tr["config"]["train"]
    L = ev["model"]["num_layers"]
    md = ["# Routing: reference MoE, traces, lookahead predictors", ""]
    md.append(f"Device: {tr['device']}; torch {tr['torch']}, transformers {tr['transformers']}. "
              f"Command: `{a.command}`" if a.command else f"Device: {tr['device']}")
    def dom_avg(res, m="topk_acc"):
        return sum(res[d]["avg"][m] for d in DOMAINS) / len(DOMAINS)

    def met(ok):
        return "**met**" if ok else "**not met**"

    ship = str(ev.get("switch", {}).get("residual_dim", 256))
    ngv = dom_avg(ev["next_gate"])
    best = max(ev["probe"], key=lambda D: dom_avg(ev["probe"][D]["eval"]))
    pv, sv = dom_avg(ev["probe"][best]["eval"]), dom_avg(ev["probe"][ship]["eval"])
    pq = ev.get("probe_online_prequential")
    qv = sum(x["topk_acc_all_steps"] for x in pq["domains"].values()) / len(pq["domains"]) if pq else None
    q_by = {D_: sum(x["topk_acc_all_steps"] for x in v["domains"].values()) / len(v["domains"])
            for D_, v in (ev.get("probe_online_prequential_by_dim") or {}).items()}
    top = max([v for v in (pv, sv, qv) if v is not None] + list(q_by.values()))
    acc_line = (f"- Trained probe Top-K accuracy >= 90% averaged over layers: {met(top >= 0.9)}: offline mixed-domain "
                f"{100 * sv:.1f}% (shipped width D={ship}), {100 * pv:.1f}% (best width D={best})")
    if q_by:
        acc_line += "; online (prequential, per domain) " + ", ".join(f"{100 * v:.1f}% (D={D_})" for D_, v in q_by.items())
    elif qv is not None:
        acc_line += f"; online (prequential, per domain, D={ship}) {100 * qv:.1f}%"
    md += ["", "## Targets (issue 4)", "", acc_line + ". PROBE reports 87-94% on much deeper production models.",
           f"- probe >= 10 points above next_gate: {met(top - ngv >= 0.1)}: +{100 * (top - ngv):.1f} points at best "
           f"({100 * ngv:.1f}% -> {100 * top:.1f}%); relative count L1 error {dom_avg(ev['next_gate'], 'count_l1'):.3f} -> "
           f"{dom_avg(ev['probe'][ship]['eval'], 'count_l1'):.3f} (D={ship}); top-half-K hit "
           f"{100 * dom_avg(ev['probe'][ship]['eval'], 'top_half_hit'):.1f}%, 2xTop-K recall "
           f"{100 * dom_avg(ev['probe'][ship]['eval'], 'recall_2k'):.1f}%."]
    if be:
        r = {row["D"]: row for row in be["rows"]}
        md.append(f"- Predictor kernel at 8192 tokens, hidden 4096, 128 experts vs dispatch ({be['dispatch_us_370GBps']:.0f} us at "
                  f"370 GB/s): next_gate {r[0]['op_us']:.0f} us, probe D=256 {r[256]['op_us']:.0f} us "
                  f"({r[256]['op_over_dispatch_370']:.2f} of dispatch): **met for D <= 256**; D=1024 {r[1024]['op_us']:.0f} us "
                  f"({r[1024]['op_over_dispatch_370']:.2f}, not 'well under'), D=2048 {r[2048]['op_us']:.0f} us (exceeds). The shipped "
                  f"probe uses D={ship}.")
    if a.planner:
        pe = json.load(open(a.planner))
        v = {d: 100 * (sum(x["probe_over_true"]) / len(x["probe_over_true"]) - 1) for d, x in pe["domains"].items()}
        ok = [d for d, x in v.items() if x <= 5.0]
        md.append("- PROBE planner with probe-predicted counts within 5% of the planner with true counts: "
                  + ", ".join(f"{d} {x:+.1f}%" for d, x in v.items()) + " (mean over layers): "
                  + (met(True) if len(ok) == len(v) else f"**met on {', '.join(ok) or 'none'}, not on "
                     f"{', '.join(d for d in v if d not in ok)}**") + ".")
    md += ["", "## Reference MoE model", "",
           f"transformers Qwen3-MoE classes: {mc['num_hidden_layers']} layers, hidden {mc['hidden_size']}, "
           f"{mc['num_experts']} experts top-{mc['num_experts_per_tok']} (expert FFN {mc['moe_intermediate_size']}), "
           f"{tr['params'] / 1e6:.0f}M parameters, a byte-level BPE vocabulary of 8192 tokens trained on the corpus. Trained {tr['steps']} steps x "
           f"{tc['batch_size']} x {tc['seq_len']} tokens = {tr['tokens'] / 1e6:.1f}M tokens in {tr['train_s']:.0f} s "
           f"(seed {tc['seed']}, bf16 weights + fp32 AdamW masters, lr {tc['lr']} cosine, experts "
           f"`{tr.get('experts_implementation')}`), load-balancing aux loss weight {mc['router_aux_loss_coef']}.",
           "",
           f"Final training LM loss {tr['final_train_lm_loss']:.3f} nats/token (aux loss {tr['final_aux_loss']:.3f}; "
           f"{mc['num_experts_per_tok']}.0 = perfectly balanced in transformers' normalisation).", "",
           table(["held-out domain", "LM loss (nats/token)"], [[d, f"{v:.3f}"] for d, v in tr["heldout_loss"].items()]),
           ""]
    sk = ev["skew"]
    md += ["## Routing skew on held-out text", "",
           f"Per step of {sk['python']['tokens_per_step']} tokens (one domain), averaged over steps; GPU load = 8 GPUs, "
           "contiguous placement (8 experts per GPU); max/mean over experts or GPUs, then averaged over layers. "
           "Published: PROBE measured max/mean GPU load 1.4-2.6 on GPT-OSS-120B and Qwen3-235B.", "",
           table(["text", "expert max/mean", "GPU max/mean (8 GPUs)"] + [f"GPU L{l}" for l in range(L)],
                 [[d, f"{v['expert_max_over_mean_avg']:.2f}", f"{v['gpu_max_over_mean_avg']:.2f}"] +
                  [f"{x:.2f}" for x in v["gpu_max_over_mean"]] for d, v in sk.items()]), ""]
    md += ["## Lookahead predictors (held-out text)", "",
           f"Predict layer l+1's top-K from the hidden state entering layer l's MoE block ({L - 1} source layers). `next_gate` = layer "
           "l+1's router applied to it; `probe` = frozen copy of that router + residual MLP (SiLU, zero-initialised), "
           "distilled offline (cross-entropy to the true router's softmax) on hidden states of "
           "training-stream windows of all four domains. Metrics over all held-out tokens; count L1 = "
           "sum|n_pred - n_true| / sum n_true per step, averaged.", ""]
    rows = []
    def avg_over(res):
        return {m: sum(res[d]["avg"][m] for d in DOMAINS) / len(DOMAINS) for m, _ in METRICS}
    ng = avg_over(ev["next_gate"])
    rows.append(["next_gate", "-"] + [pct(ng[m]) if m != "count_l1" else f"{ng[m]:.3f}" for m, _ in METRICS])
    for D, r in ev["probe"].items():
        p = avg_over(r["eval"])
        rows.append([f"probe D={D}", f"{r['fit_s']:.0f}"] + [pct(p[m]) if m != "count_l1" else f"{p[m]:.3f}" for m, _ in METRICS])
    md += [table(["predictor", "fit s", *[n for _, n in METRICS]], rows), ""]
    md += ["Per domain, Top-K accuracy (%):", ""]
    rows = [["next_gate"] + [pct(ev["next_gate"][d]["avg"]["topk_acc"]) for d in DOMAINS]]
    rows += [[f"probe D={D}"] + [pct(r["eval"][d]["avg"]["topk_acc"]) for d in DOMAINS] for D, r in ev["probe"].items()]
    md += [table(["predictor"] + DOMAINS, rows), ""]
    md += ["Per layer (source layer l predicts layer l+1), Top-K accuracy (%) averaged over domains:", ""]
    def per_layer(res):
        return [sum(res[d]["per_layer"][l]["topk_acc"] for d in DOMAINS) / len(DOMAINS) for l in range(L - 1)]
    rows = [["next_gate"] + [pct(x) for x in per_layer(ev["next_gate"])]]
    rows += [[f"probe D={D}"] + [pct(x) for x in per_layer(r["eval"])] for D, r in ev["probe"].items()]
    md += [table(["predictor"] + [f"{l}->{l + 1}" for l in range(L - 1)], rows), ""]
    if "probe_domain_offline" in ev or pq:
        md += ["## Per-domain predictors (how PROBE deploys them: trained on the serving workload)", "",
               f"`probe fitted per domain` = D={ship}, fitted offline on that domain's training windows only. "
               f"`probe online` = starts as the mixed-domain offline probe, then streams the first half of the domain's "
               f"held-out text in steps of {pq['seqs_per_step'] if pq else '-'} sequences: each step is predicted FIRST (scored), "
               f"then learned from ({pq['online_update'] if pq else '-'}; new weights published by double-buffered swap). "
               "Top-K accuracy (%), averaged over layers:", ""]
        rows = [["next_gate"] + [pct(ev["next_gate"][d]["avg"]["topk_acc"]) for d in DOMAINS] + [pct(ngv)],
                [f"probe D={ship} mixed"] + [pct(ev["probe"][ship]["eval"][d]["avg"]["topk_acc"]) for d in DOMAINS] + [pct(sv)]]
        if "probe_domain_offline" in ev:
            po = ev["probe_domain_offline"]
            rows.append([f"probe D={ship} fitted per domain"] + [pct(po[d]["avg"]["topk_acc"]) for d in DOMAINS]
                        + [pct(dom_avg(po))])
        for Dq, pq_ in (ev.get("probe_online_prequential_by_dim") or ({ship: pq} if pq else {})).items():
            q1 = sum(pq_["domains"][d]["topk_acc_all_steps"] for d in DOMAINS) / len(DOMAINS)
            q2 = sum(pq_["domains"][d]["topk_acc_after_first_quarter"] for d in DOMAINS) / len(DOMAINS)
            rows.append([f"probe D={Dq} online, all {pq_['steps']} steps"] +
                        [pct(pq_["domains"][d]["topk_acc_all_steps"]) for d in DOMAINS] + [pct(q1)])
            rows.append([f"probe D={Dq} online, after the first quarter"] +
                        [pct(pq_["domains"][d]["topk_acc_after_first_quarter"]) for d in DOMAINS] + [pct(q2)])
        md += [table(["predictor"] + DOMAINS + ["mean"], rows), ""]
        if pq:
            pl = [sum(sum(r_["per_layer_topk_acc"][l] for r_ in pq["domains"][d]["rows"]) / len(pq["domains"][d]["rows"])
                      for d in DOMAINS) / len(DOMAINS) for l in range(L - 1)]
            md += ["Online probe, per layer (averaged over steps and domains), Top-K accuracy (%):", "",
                   table([f"{l}->{l + 1}" for l in range(L - 1)], [[pct(x) for x in pl]]), ""]
    sw = ev["switch"]
    md += ["## Domain switch (python -> prose)", "",
           f"Steps of {sw['seqs_per_step']} sequences; `probe_mixed` = offline probe (D={sw['residual_dim']}) trained on all "
           "domains; `probe_python_static` = trained on python only, frozen; `probe_online` = starts as "
           f"probe_python_static, then after each step: {sw['online_update']}, published by double-buffered swap. "
           "Top-K accuracy (%) / count L1, averaged over layers:", ""]
    names = ["next_gate", "probe_mixed", "probe_python_static", "probe_online"]
    md += [table(["step", "domain"] + names,
                 [[r["step"], r["domain"]] + [f"{pct(r[n]['topk_acc'])} / {r[n]['count_l1']:.3f}" for n in names]
                  for r in sw["rows"]]), ""]
    rows_ = sw["rows"]
    half = len(rows_) // 2
    last = rows_[-4:]
    mean = lambda n, rs: 100 * sum(r[n]["topk_acc"] for r in rs) / len(rs)  # noqa: E731
    md += [f"After the switch, the python-only probe drops from {mean('probe_python_static', rows_[:half]):.1f}% to "
           f"{mean('probe_python_static', rows_[half:]):.1f}%; the online probe recovers to {mean('probe_online', last):.1f}% "
           f"over the last 4 prose steps (python-only static: {mean('probe_python_static', last):.1f}%, offline mixed-domain "
           f"probe: {mean('probe_mixed', last):.1f}%, next_gate: {mean('next_gate', last):.1f}%).", ""]
    if be:
        md += ["## Predictor kernel vs all-to-all dispatch", "",
               f"{be['device']}, T={be['tokens']} tokens, hidden {be['hidden']}, {be['experts']} experts, top-{be['k']}, bf16. "
               f"`moebal::probe_predict` = 2 cuBLAS GEMMs (at::mm) + moebal SiLU kernel + fused add/top-k/histogram kernel; "
               "eager = the same math in plain torch ops. Dispatch estimate: T x hidden x 2 B = "
               f"{be['dispatch_bytes'] / 2**20:.0f} MiB over NVLink: {be['dispatch_us_450GBps']:.0f} us at 450 GB/s "
               f"(line rate per direction), {be['dispatch_us_370GBps']:.0f} us at 370 GB/s (NCCL effective).", "",
               table(["residual D", "op us", "eager us", "op TFLOP/s", "op / dispatch(370 GB/s)", "same ids as eager"],
                     [[r["D"], f"{r['op_us']:.1f}", f"{r['eager_us']:.1f}", f"{r['tflops']:.0f}",
                       f"{r['op_over_dispatch_370']:.2f}", f"{100 * r['frac_tokens_same_ids_as_eager']:.2f}%"] for r in be["rows"]]),
               ""]
        if "refcheck" in be:
            md += [f"Refcheck (float32, 256 tokens, CUDA op vs CPU op): {be['refcheck']}", ""]
    if a.planner:
        pe = json.load(open(a.planner))
        md += ["## PROBE planner fed with predicted counts", "",
               f"`tools/refmoe/planner_eval.py` {a.planner_note}: tokens of the held-out python / prose evaluation sets "
               f"dealt to {pe['ranks']} source ranks by sequence (one step = all tokens of a domain); the planner "
               "(moebal.probe.plan, defaults: time = tokens, unlimited window, <= 3 extra slots per rank) plans on true "
               "or predicted per-(rank, expert) counts, then the TRUE tokens are routed with that plan. "
               f"max/mean tokens per rank, averaged over the {L - 1} predicted layers:", ""]
        rows = []
        for d, r in pe["domains"].items():
            m = lambda k: sum(r[k]) / len(r[k])  # noqa: E731
            rows.append([d, r["tokens"], f"{m('no_planner'):.3f}", f"{m('true'):.3f}", f"{m('probe'):.3f}",
                         f"{m('next_gate'):.3f}", f"{100 * (m('probe_over_true') - 1):+.1f}%",
                         f"{100 * (max(r['probe_over_true']) - 1):+.1f}%", f"{100 * (m('next_gate_over_true') - 1):+.1f}%"])
        md += [table(["text", "tokens", "no planner", "planned on true", "planned on probe", "planned on next_gate",
                      "probe vs true (mean)", "probe vs true (worst layer)", "next_gate vs true (mean)"], rows), ""]
    open(a.out, "w").write("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
