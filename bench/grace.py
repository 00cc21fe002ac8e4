"""GRACE-MoE benchmark: placement balance, co-activation kept local, and all-to-all bytes.

For the shipped demo trace and synthetic co-activated traces (moebal.synthetic) on several clusters,
every registered placement policy (contiguous, grace, and whatever else the registry holds) is run
with 0, 1 and 2 spare slots per GPU, then each trace is routed through the placement with two
token -> replica assignments (round_robin = EPLB-style, weighted_locality = GRACE's TAR) and the
dispatch + combine bytes are counted intra-node vs cross-node, flat (one row per token and
destination GPU) vs hierarchical (GRACE HSC: one row per token and destination node, then an
NVLink fan-out). Finally the CPU assignment reference is timed at 8192 tokens x top-8 (and the CUDA
kernel too when a GPU is present).

    python bench/grace.py [--out bench/results/grace.md] [--quick]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numpy as np

import moebal
from moebal import grace, policies, synthetic
from moebal.benchmark import device_description, time_cpu, time_cuda

MiB = 2.0 ** 20


def scenarios(quick: bool):
    demo = moebal.load_trace(os.path.join(os.path.dirname(moebal.__file__), "data", "demo_trace.npz"))
    olmoe = moebal.ExpertShape(2048, 1024, 2)    # OLMoE-like expert (hidden 2048)
    qwen3 = moebal.ExpertShape(2048, 768, 2)     # Qwen3-30B-A3B-like expert
    dsv3 = moebal.ExpertShape(7168, 2048, 2)     # DeepSeek-V3-like expert
    steps = 2 if quick else 4
    out = [
        ("demo trace (12 layers, 64 experts, top-4, 8 ranks)", demo, 8, 1, olmoe),
        ("demo trace (12 layers, 64 experts, top-4, 8 ranks)", demo, 8, 2, olmoe),
    ]
    for (E, K, G, N, shape, L) in [(64, 8, 8, 1, olmoe, 8), (128, 8, 16, 2, qwen3, 6), (256, 8, 32, 4, dsv3, 4)]:
        cfg = synthetic.WorkloadConfig(num_layers=L, num_experts=E, top_k=K, num_steps=steps, tokens_per_step=2048,
                                       num_ranks=G, num_topics=G, topic_boost=4.0, zipf_s=0.9, drift=0.05,
                                       phase_steps=steps, seed=2026 + E)
        out.append((f"synthetic ({L} layers, {E} experts, top-{K}, {G} ranks, {G} topics, topic_boost 4, Zipf 0.9)",
                    synthetic.generate(cfg, with_weights=False), G, N, shape))
    return out


def evaluate(trace, G, N, shape, extra):
    loads = trace.loads()
    E = loads.num_experts
    S = E + extra * G
    rows = []
    # "grace (paper)" = the paper's grouping alone (no move/swap refinement), not a registered policy.
    for name in [*policies.available_policies(), "grace (paper)"]:
        t0 = time.perf_counter()
        try:
            if name == "grace (paper)":
                p = grace.plan(loads, num_slots=S, num_gpus=G, num_nodes=N, trace=trace, refine_passes=0)
            else:
                p = policies.plan(name, loads, num_slots=S, num_gpus=G, num_nodes=N, trace=trace)
        except Exception as e:  # a policy that cannot serve this input is reported, not fatal
            if name == "contiguous" and S != E:
                continue  # one copy per expert only
            rows.append({"policy": name, "error": str(e).split(" [")[0]})
            continue
        plan_ms = 1e3 * (time.perf_counter() - t0)
        kept = grace.affinity_kept(trace, p)
        ir_even = moebal.layer_imbalance(loads, p)
        replicated = float(np.mean((p.logcnt > 1).sum(axis=1)))
        for assign in ("round_robin", "weighted_locality"):
            tr = grace.traffic(trace, p, token_bytes=shape.token_bytes, policy=assign)
            rows.append({"policy": name, "assign": assign, "ir_even": float(ir_even.mean()),
                         "ir_assigned": float(tr["imbalance"].mean()), "ir_assigned_max": float(tr["imbalance"].max()),
                         "replicated": replicated, "kept_gpu": kept["gpu"], "kept_node": kept["node"],
                         **{k: float(tr[k].sum()) / MiB for k in ("flat_intra", "flat_cross", "hier_intra", "hier_cross")},
                         "plan_ms": plan_ms})
    return rows


def timing_section(quick: bool) -> list[str]:
    """CPU reference (pybind, numpy in/out; torch op CPU) and, with a GPU, the CUDA op."""
    cfg = synthetic.WorkloadConfig(num_layers=1, num_experts=256, top_k=8, num_steps=1, tokens_per_step=8192,
                                   num_ranks=32, num_topics=32, topic_boost=2.5, seed=5)
    t = synthetic.generate(cfg, with_weights=False)
    p = grace.plan(t.loads(), num_slots=288, num_gpus=32, num_nodes=4, trace=t)
    ids, src = t.topk_ids[0], t.src_rank
    w = grace.slot_weights(t.loads(), p)[0]
    reps = 5 if quick else 20
    lines = ["| policy | CPU reference via moebal.grace.assign (us) | torch op, CPU (us) | torch op, CUDA (us) |",
             "|---|---|---|---|"]
    try:
        import torch
        from moebal.assign_ops import assign_replicas, placement_tensors
        from moebal.ops import load_library

        load_library()
    except ImportError:  # no torch, or moebal built without its torch ops
        torch = None
    for policy in ("round_robin", "hash", "locality", "weighted_locality"):
        ref_us = time_cpu(lambda: grace.assign(ids, src, p, policy=policy, slot_weights=w), reps=reps).median_us
        cpu_op = cuda_op = "n/a"
        if torch is not None:
            l2p, cnt = placement_tensors(p, 0)
            args = [torch.from_numpy(ids.copy()), torch.from_numpy(src.copy()), l2p, cnt]
            ws = torch.from_numpy(w.copy())
            kw = dict(num_gpus=32, num_nodes=4, num_slots=288, policy=policy,
                      slot_weights=ws if policy == "weighted_locality" else None)
            cpu_op = f"{time_cpu(lambda: assign_replicas(*args, **kw), reps=reps).median_us:.0f}"
            if torch.cuda.is_available():
                dargs = [a.cuda() for a in args]
                dkw = dict(kw, slot_weights=ws.cuda() if policy == "weighted_locality" else None)
                out = assign_replicas(*dargs, **dkw)
                assert torch.equal(out.cpu(), assign_replicas(*args, **kw)), "CUDA != CPU"
                cuda_op = f"{time_cuda(lambda: assign_replicas(*dargs, **dkw), reps=100, warmup=10).median_us:.1f}"
        lines.append(f"| {policy} | {ref_us:.0f} | {cpu_op} | {cuda_op} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the markdown report here (default: print only)")
    ap.add_argument("--quick", action="store_true", help="fewer tokens and repetitions")
    args = ap.parse_args()
    lines = [f"# GRACE-MoE benchmark (bench/grace.py)", "",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; device: {device_description()}; "
             f"host CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
             f"- command: `python bench/grace.py{' --quick' if args.quick else ''}{' --out ' + args.out if args.out else ''}`",
             f"- policies in the registry: {', '.join(policies.available_policies())}; 'grace (paper)' = GRACE grouping "
             "without our move/swap refinement (refine_passes=0)",
             "- IR even = max/mean GPU load with each expert's load split evenly over its copies (moebal.layer_imbalance), "
             "mean over layers; IR assigned = max/mean rows per GPU after the token -> replica assignment (mean, and max over layers).",
             "- co-act GPU/node = share of co-activation (expert pairs chosen by one token) whose primary copies share a GPU / a node.",
             "- MiB = dispatch + combine bytes over the whole trace (all layers), token row = hidden x 2 bytes; flat = one row per "
             "(token, destination GPU); hier = GRACE HSC (one row per (token, destination node) to the peer GPU, then NVLink fan-out).",
             ""]
    for title, trace, G, N, shape in scenarios(args.quick):
        for extra in (0, 1, 2):
            rows = evaluate(trace, G, N, shape, extra)
            lines += [f"## {title}: {G} GPUs x {N} node(s), {extra} spare slot(s) per GPU "
                      f"({trace.num_experts + extra * G} slots), token row {shape.token_bytes} B", "",
                      "| policy | assign | IR even | IR assigned (max) | replicated experts / layer | co-act GPU | co-act node "
                      "| intra MiB flat | cross MiB flat | intra MiB hier | cross MiB hier | plan ms |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                if "error" in r:
                    lines.append(f"| {r['policy']} | - | error: {r['error']} |||||||||")
                    continue
                lines.append(f"| {r['policy']} | {r['assign']} | {r['ir_even']:.3f} | {r['ir_assigned']:.3f} ({r['ir_assigned_max']:.3f}) "
                             f"| {r['replicated']:.1f} | {100 * r['kept_gpu']:.1f}% | {100 * r['kept_node']:.1f}% "
                             f"| {r['flat_intra']:.1f} | {r['flat_cross']:.1f} | {r['hier_intra']:.1f} | {r['hier_cross']:.1f} "
                             f"| {r['plan_ms']:.0f} |")
            lines.append("")
            print("\n".join(lines[-len(rows) - 4:]), flush=True)
    lines += ["## Assignment timing: 8192 tokens x top-8, 256 experts, 288 slots, 32 GPUs x 4 nodes (GRACE placement)", "",
              "Median of repeated calls; CPU columns include argument conversion (numpy/torch), CUDA = torch op incl. "
              "dispatch and workspace allocation, CUDA-event timed, checked equal to the CPU op.", ""]
    lines += timing_section(args.quick)
    text = "\n".join(lines) + "\n"
    print("\n".join(lines[-7:]))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
