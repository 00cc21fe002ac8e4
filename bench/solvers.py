"""Placement-policy benchmark: every policy in moebal.policies on model shapes x clusters x extra
copies per GPU x load kinds. Per policy: mean IR (max/mean tokens per GPU), gap to the lower bound,
predicted MoE step time under per-GPU H100 models with 0%, 7% and 15% speed spread, solver wall time;
for drifting loads, bytes moved by vibe's bounded recalibration. Ends with the issue-3 targets.

    python bench/solvers.py            # full run (a few minutes on one core)
    python bench/solvers.py --quick    # fewer configs
    python bench/solvers.py --md bench/results/solvers_tables.md   # also write the tables
    python bench/solvers.py --perf a.json b.json --only-measured   # GPU models measured by `moebal profile`
    python bench/solvers.py --perf a.json b.json --only-measured --roofline   # the same configs, roofline

Loads (fixed seeds), tokens per layer = batch x top_k with batch = 8192 tokens:
- zipf: expert popularity 1/rank^0.8 in a random order per layer, multinomial token counts;
- pareto: popularity from a Pareto(alpha=1.5) draw per expert, multinomial counts;
- drift: popularity logits random-walk between a planning window and a later window (step 0.5 per
  expert plus 8 experts of each layer swapping rank with random others);
- demo: the shipped routing trace (12 layers, 64 experts, top-4): steps 0-3, then steps 4-7.
Every metric is computed on the loads the policy planned for. For drift and demo the "IR next" column
scores the same plan on the later window, and vibe then recalibrates to the later window with at most
one move per layer on average (drifted layers only).
Time model (moebal.solvers.h100_expert_model): a copy with n > 0 tokens costs
max(weight_bytes / (3.01 TB/s x 0.85), 6 H F n / (790 TFLOP/s x 0.8)), constants measured on the
project's H100 (shared/reference/kernel-anchors.md 1.1, 2.2); GPU g is slower by a factor drawn
uniformly in [1, 1 + spread] (seed 1). Policies that raise ValueError for a config are skipped and
listed. Gaps use the group-constrained bound for eplb/balanced/vibe (they keep DeepSeek's groups on
nodes) and the unconstrained bound for any other policy.
With --perf, a config whose expert shape matches a measured file (`moebal profile --out`, one model)
uses that model, scaled by the same slowdowns, instead of the roofline; the roofline time bound does
not hold for it, so its bound columns are left out ("-") and the summary scores it separately.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

import moebal
from moebal import _core, perf, plan_metrics, policies, solvers

GROUP_RESPECTING = {"eplb", "balanced", "vibe"}
SPREADS = (0.0, 0.07, 0.15)
BATCH = 8192
MEASURED: dict = {}  # (hidden, ffn) -> measured PerfModel (--perf)


@dataclass(frozen=True)
class Model:
    name: str
    layers: int
    experts: int
    top_k: int
    groups: int
    shape: tuple[int, int, int]  # hidden, ffn, dtype bytes


MODELS = [
    Model("DeepSeek-V3", 58, 256, 8, 8, (7168, 2048, 2)),
    Model("Qwen3-235B", 94, 128, 8, 1, (4096, 1536, 2)),
    Model("GPT-OSS-120B", 36, 128, 4, 1, (2880, 2880, 2)),
    Model("Mixtral-8x7B", 32, 8, 2, 1, (4096, 14336, 2)),
]
CLUSTERS = [(8, 1), (32, 4), (64, 8)]  # (GPUs, nodes)


def _multinomial(rng, probs: np.ndarray, total: int) -> np.ndarray:
    return np.stack([rng.multinomial(total, p / p.sum()) for p in probs]).astype(np.float64)


def make_loads(kind: str, m: Model, seed: int):
    """(planning loads, evaluation loads) [layers, experts]."""
    rng = np.random.default_rng(seed)
    L, E, total = m.layers, m.experts, BATCH * m.top_k
    if kind == "zipf":
        base = 1.0 / np.arange(1, E + 1) ** 0.8
        p = np.stack([rng.permutation(base) for _ in range(L)])
        w = _multinomial(rng, p, total)
        return w, w
    if kind == "pareto":
        p = rng.pareto(1.5, size=(L, E)) + 1e-3
        w = _multinomial(rng, p, total)
        return w, w
    if kind == "drift":
        logit = np.stack([rng.permutation(-0.9 * np.log(np.arange(1, E + 1))) for _ in range(L)])
        a = _multinomial(rng, np.exp(logit), total)
        logit2 = logit + 0.5 * rng.standard_normal(logit.shape)
        for l in range(L):
            for _ in range(min(8, E // 2)):
                i, j = rng.integers(0, E, size=2)
                logit2[l, [i, j]] = logit2[l, [j, i]]
        b = _multinomial(rng, np.exp(logit2), total)
        return a, b
    raise ValueError(kind)


def demo_loads():
    path = os.path.join(os.path.dirname(moebal.__file__), "data", "demo_trace.npz")
    t = moebal.load_trace(path)
    return np.asarray(t.loads(0, 4).loads), np.asarray(t.loads(4, t.num_steps).loads)


def slots_for(m: Model, gpus: int, extra: int):
    """Slots per layer for `extra` copies per GPU beyond E / G, or a reason to skip."""
    if m.experts % gpus == 0:
        return m.experts + extra * gpus, None
    if m.experts < gpus:
        if extra == 0:
            return None, f"{m.experts} experts < {gpus} GPUs: copies are unavoidable"
        return extra * gpus, None  # `extra` slots per GPU, all of them copies beyond the first
    return None, f"{m.experts} experts not divisible by {gpus} GPUs"


def run_config(m: Model, gpus: int, nodes: int, extra: int, kind: str, plan_w, eval_w, out, skipped):
    S, why = slots_for(m, gpus, extra)
    if S is None:
        skipped.append(f"{m.name} {gpus}x{nodes} +{extra}/GPU {kind}: {why}")
        return None
    shape = _core.ExpertShape(*m.shape)
    planL, evalL = moebal.LoadMatrix(plan_w), moebal.LoadMatrix(eval_w)
    groups = m.groups if m.groups % nodes == 0 and m.experts % m.groups == 0 else 1
    gpn = gpus // nodes
    measured = MEASURED.get((shape.hidden, shape.ffn))
    if measured is None:
        models = {s: solvers.speed_spread_models(gpus, s, shape, seed=1) for s in SPREADS}
    else:
        models = {s: perf.models_for_gpus([measured], gpus, solvers.speed_spread_slowdowns(gpus, s, seed=1))
                  for s in SPREADS}
    topo = {s: solvers.topology_with_models(nodes, gpn, models[s]) for s in SPREADS}
    lb_any = plan_metrics.lower_bounds(planL, S, gpus, nodes, 1)
    lb_grp = plan_metrics.lower_bounds(planL, S, gpus, nodes, groups)
    stale = kind in ("drift", "demo")
    rows = {}
    for name in policies.available_policies():
        plans, ms = {}, []
        try:
            for s in (SPREADS if name == "vibe" else (0.07,)):
                t0 = time.perf_counter()
                plans[s] = policies.plan(name, planL, num_slots=S, num_gpus=gpus, num_nodes=nodes,
                                         num_groups=groups, topology=topo[s])
                ms.append((time.perf_counter() - t0) * 1e3)
        except ValueError as e:
            skipped.append(f"{m.name} {gpus}x{nodes} +{extra}/GPU {kind}: policy {name} skipped ({e})")
            continue
        p0 = plans.get(0.0, plans.get(0.07))
        mx = moebal.gpu_loads(planL, p0).max(axis=1)
        lb = lb_grp if name in GROUP_RESPECTING else lb_any
        ir = float(np.mean(moebal.layer_imbalance(planL, p0)))
        ir_next = float(np.mean(moebal.layer_imbalance(evalL, p0))) if stale else None
        gap = float(mx.sum() / lb.sum() - 1.0)
        step = {s: float(plan_metrics.layer_step_times(planL, plans.get(s, p0), models[s]).sum()) / 1e3
                for s in SPREADS}
        rows[name] = dict(ir=ir, ir_next=ir_next, gap=gap, step=step, ms=float(np.mean(ms)), max=mx,
                          plan=plans)
    # Lower bound on any placement's step time under the roofline models (C++
    # plan_metrics.time_lower_bounds; proof in cpp/plan_metrics.cpp, brute-force checked in
    # tests/cpp/test_solvers.cpp): total work over the GPUs' summed speeds, the weight reads of the
    # slowest GPUs' slots, the largest copy's GPU, and per node under the group constraint.
    read_us, us_per_token = solvers.h100_roofline(shape)
    def time_bound(sp, grp):
        return float(plan_metrics.time_lower_bounds(
            planL, S, gpus, nodes, grp, read_us, us_per_token,
            solvers.speed_spread_slowdowns(gpus, sp, seed=1)).sum()) / 1e3
    if measured is None:
        time_lb = {sp: time_bound(sp, groups) for sp in SPREADS}  # placements keeping groups on nodes
        time_lb_any = {sp: time_bound(sp, 1) for sp in SPREADS}   # any placement
    else:  # the bound is for roofline copies only
        time_lb = time_lb_any = None
    recal = None
    if stale and "vibe" in rows:
        s = 0.07
        old = rows["vibe"]["plan"][s]
        rep = solvers.detect_drift(planL, evalL, solvers.DriftThresholds())
        budget = solvers.RecalibrationBudget(max_moves=max(1, m.layers), max_bytes=-1)
        t0 = time.perf_counter()
        r = solvers.recalibrate(old, evalL, models[s], shape, budget, rep.drifted_layers)
        rms = (time.perf_counter() - t0) * 1e3
        fresh = policies.plan("vibe", evalL, num_slots=S, num_gpus=gpus, num_nodes=nodes,
                              num_groups=groups, topology=topo[s])
        fresh_step = float(plan_metrics.layer_step_times(evalL, fresh, models[s]).sum()) / 1e3
        recal = dict(layers=len(rep.drifted_layers), moves=len(r.moves), bytes=r.bytes,
                     before=sum(r.step_us_before) / 1e3, after=sum(r.step_us_after) / 1e3,
                     full_bytes=solvers.replacement_bytes(old, fresh, shape), full_step=fresh_step, ms=rms)
    title = (f"{m.name} | {gpus} GPUs x {nodes} nodes | slots {S} ({S // gpus}/GPU, +{extra}) | {kind}"
             + (" | measured GPU model" if measured is not None else ""))
    lines = [f"### {title}", "",
             "| policy | mean IR | gap | step ms @0% | @7% | @15% | plan ms |" + (" IR next |" if stale else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if stale else "")]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['ir']:.4f} | {100 * r['gap']:.2f}% | {r['step'][0.0]:.2f} | "
                     f"{r['step'][0.07]:.2f} | {r['step'][0.15]:.2f} | {r['ms']:.1f} |"
                     + (f" {r['ir_next']:.4f} |" if stale else ""))
    if recal:
        lines.append("")
        lines.append(f"vibe recalibration @7% ({recal['layers']} drifted layers): {recal['moves']} moves, "
                     f"{recal['bytes'] / 2**20:.0f} MiB, step {recal['before']:.2f} -> {recal['after']:.2f} ms "
                     f"(full re-plan: {recal['full_bytes'] / 2**20:.0f} MiB, {recal['full_step']:.2f} ms); "
                     f"{recal['ms']:.1f} ms")
    if time_lb is not None:
        lines.append(f"| time bound{' (groups on nodes)' if groups > 1 and nodes > 1 else ''} | | | {time_lb[0.0]:.2f} | "
                     f"{time_lb[0.07]:.2f} | {time_lb[0.15]:.2f} | |" + (" |" if stale else ""))
    lines.append("")
    text = "\n".join(lines)
    print(text)
    out.append(text)
    return dict(model=m.name, gpus=gpus, extra=extra, kind=kind, rows=rows, recal=recal, time_lb=time_lb,
                time_lb_any=time_lb_any, measured=measured is not None)


def summarize(results) -> str:
    res = [r for r in results if r and {"eplb", "balanced", "vibe"} <= set(r["rows"])]
    ir_viol = sum(int((r["rows"]["balanced"]["max"] > r["rows"]["eplb"]["max"] * (1 + 1e-12)).any())
                  for r in res)
    g_e = np.array([r["rows"]["eplb"]["gap"] for r in res])
    g_b = np.array([r["rows"]["balanced"]["gap"] for r in res])
    t7 = np.array([r["rows"]["vibe"]["step"][0.07] / r["rows"]["eplb"]["step"][0.07] for r in res])
    t0 = np.array([r["rows"]["vibe"]["step"][0.0] / r["rows"]["eplb"]["step"][0.0] for r in res])
    t15 = np.array([r["rows"]["vibe"]["step"][0.15] / r["rows"]["eplb"]["step"][0.15] for r in res])
    recal = [r["recal"] for r in res if r["recal"]]
    lines = ["## Targets (issue 3)", "",
             f"- configs scored: {len(res)}",
             f"- balanced busiest-GPU load <= eplb's on every layer of every config: "
             f"{'yes' if ir_viol == 0 else f'NO ({ir_viol} configs violate)'}",
             f"- mean gap to the lower bound: eplb {100 * g_e.mean():.2f}%, balanced {100 * g_b.mean():.2f}% "
             f"-> ratio {g_b.mean() / max(g_e.mean(), 1e-300):.3f} (target <= 0.333); configs where balanced "
             f"closes less than 2/3 of eplb's gap: {int((g_b > g_e / 3 + 1e-9).sum())}",
             f"- vibe / eplb predicted step time: @0% mean {t0.mean():.4f} (max {t0.max():.4f}, target <= 1; "
             f"<= 0.93 in {int((t0 <= 0.93).sum())}); @7% mean {t7.mean():.4f} (max {t7.max():.4f}, target "
             f"<= 0.93; met in {int((t7 <= 0.93).sum())}/{len(t7)} configs); @15% mean {t15.mean():.4f} "
             f"(<= 0.93 in {int((t15 <= 0.93).sum())})"]
    meas = [r for r in res if r.get("measured")]
    if meas:
        m7 = np.array([r["rows"]["vibe"]["step"][0.07] / r["rows"]["eplb"]["step"][0.07] for r in meas])
        m0 = np.array([r["rows"]["vibe"]["step"][0.0] / r["rows"]["eplb"]["step"][0.0] for r in meas])
        lines.append(f"- of those, {len(meas)} configs on measured GPU models (--perf): vibe / eplb @0% mean "
                     f"{m0.mean():.4f} (max {m0.max():.4f}); @7% mean {m7.mean():.4f} (max {m7.max():.4f}, "
                     f"<= 0.93 in {int((m7 <= 0.93).sum())}/{len(m7)})")
    bounded = [r for r in res if r["time_lb"] is not None]
    for sp in SPREADS if bounded else ():
        tv = np.array([r["rows"]["vibe"]["step"][sp] for r in bounded])
        te = np.array([r["rows"]["eplb"]["step"][sp] for r in bounded])
        bg = np.array([r["time_lb"][sp] for r in bounded])
        ba = np.array([r["time_lb_any"][sp] for r in bounded])
        lines.append(
            f"- headroom @{100 * sp:.0f}%: roofline lower bound on the step time of any placement that "
            f"keeps groups on nodes (as eplb and vibe do) / eplb's: mean {np.mean(bg / te):.4f}, <= 0.93 "
            f"(target reachable at all) in {int((bg / te <= 0.93).sum())}/{len(te)} configs; vibe / "
            f"bound: mean {np.mean(tv / bg):.4f} (max {np.max(tv / bg):.4f}); bound of any placement "
            f"(groups free) / eplb's: mean {np.mean(ba / te):.4f}, <= 0.93 in {int((ba / te <= 0.93).sum())}")
    if recal:
        frac = np.mean([x["bytes"] / x["full_bytes"] for x in recal if x["full_bytes"] > 0])
        gain = np.mean([(x["before"] - x["after"]) / max(x["before"] - x["full_step"], 1e-9)
                        for x in recal if x["before"] > x["full_step"]])
        lines.append(f"- vibe recalibration under drift: mean {np.mean([x['moves'] for x in recal]):.1f} moves, "
                     f"{100 * frac:.1f}% of a full re-placement's bytes, recovering {100 * gain:.0f}% of the "
                     f"step time a full re-plan would recover")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="DeepSeek-V3 and Mixtral, 2 clusters, +0/+1")
    ap.add_argument("--md", help="also write all tables and the summary to this markdown file")
    ap.add_argument("--perf", nargs="+", default=[], help="measured single-GPU model files (moebal profile --out)")
    ap.add_argument("--only-measured", action="store_true", help="only the models (and the demo) whose expert shape has a --perf file")
    ap.add_argument("--roofline", action="store_true",
                    help="with --only-measured: the same configs on the roofline models (the baseline of a --perf run)")
    a = ap.parse_args(argv)
    for path in a.perf:
        ms, shape = perf.load_models(path)
        if len(ms) != 1:
            ap.error(f"--perf {path}: {len(ms)} GPU models; this benchmark scales one model per shape")
        MEASURED[(shape.hidden, shape.ffn)] = ms[0]
    if a.only_measured and not MEASURED:
        ap.error("--only-measured needs --perf files")
    if a.roofline and not a.only_measured:
        ap.error("--roofline goes with --only-measured")
    shapes = set(MEASURED)
    if a.roofline:
        MEASURED.clear()
    models = [MODELS[0], MODELS[3]] if a.quick else MODELS
    if a.only_measured:
        models = [m for m in models if (m.shape[0], m.shape[1]) in shapes]
    clusters = CLUSTERS[:2] if a.quick else CLUSTERS
    extras = (0, 1) if a.quick else (0, 1, 2)
    kinds = ("zipf", "drift") if a.quick else ("zipf", "pareto", "drift")
    out, skipped, results = [], [], []
    t_start = time.perf_counter()
    for mi, m in enumerate(models):
        loads = {k: make_loads(k, m, seed=100 + mi) for k in kinds}
        for gpus, nodes in clusters:
            for extra in extras:
                for k in kinds:
                    results.append(run_config(m, gpus, nodes, extra, k, *loads[k], out, skipped))
    demo = Model("demo-trace", 12, 64, 4, 1, (2048, 768, 2))
    dl = demo_loads()
    for gpus, nodes in clusters if not a.only_measured or (2048, 768) in shapes else ():
        for extra in extras:
            results.append(run_config(demo, gpus, nodes, extra, "demo", *dl, out, skipped))
    summary = summarize(results)
    print(summary)
    if skipped:
        print("Skipped:\n" + "\n".join(f"- {s}" for s in skipped))
    print(f"total {time.perf_counter() - t_start:.1f} s")
    if a.md:
        with open(a.md, "w") as f:
            f.write(summary + "\n" + ("Skipped:\n" + "\n".join(f"- {s}" for s in skipped) + "\n\n" if skipped else "")
                    + "\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
