"""The ``moebal`` command: ``info``, ``plan``, ``demo`` and ``capture``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources
from typing import Sequence

import numpy as np

import moebal
from moebal import _core, policies
from moebal._progress import progress
from moebal.trace import LoadTrace, from_eplb_weight, load_trace, slice_steps, trace_meta

# Real routing of moebal's reference MoE (12 layers, 64 experts, top-8; tools/refmoe) on held-out
# Python source. data/demo_trace.npz is the synthetic alternative (moebal.synthetic).
DEMO_TRACE = ("refmoe", "refmoe_python.npz")
SYNTHETIC_TRACE = ("demo_trace.npz",)


def _demo_trace_path() -> str:
    return str(resources.files("moebal").joinpath("data", *DEMO_TRACE))


def _synthetic_trace_path() -> str:
    return str(resources.files("moebal").joinpath("data", *SYNTHETIC_TRACE))


def _read_loads(path: str, step_begin: int | None, step_end: int | None):
    """Loads from a trace (.npz) or a plain [layers, experts] array (.npy / .csv)."""
    if path.endswith(".npz"):
        t = load_trace(path)
        if isinstance(t, LoadTrace):
            return t.loads(step_begin or 0, step_end), None
        if step_begin is None and step_end is None:
            return t.loads(), t
        return t.loads(step_begin or 0, step_end if step_end is not None else t.num_steps), t
    if path.endswith(".npy"):
        return from_eplb_weight(np.load(path, allow_pickle=False)), None
    if path.endswith(".csv"):
        return from_eplb_weight(np.loadtxt(path, delimiter=",", ndmin=2)), None
    raise _core.MoebalValueError(f"{path}: expected a .npz trace, or a .npy/.csv [layers, experts] load matrix")


def _format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    line = "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths)))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def imbalance_table(loads: _core.LoadMatrix, placements: dict[str, _core.Placement],
                    topology: _core.Topology | None = None, fit_loads: _core.LoadMatrix | None = None) -> str:
    """Per-layer imbalance ratio (max/mean GPU load) of each placement, with mean and max, and the
    predicted MoE step time (sum over layers of the slowest GPU) when topology has GPU models."""
    L = loads.num_layers
    shown = list(range(L)) if L <= 16 else sorted({*range(0, L, max(1, L // 12)), L - 1})
    timed = topology is not None and len(topology.gpu_models) > 0
    header = (["policy", "slots"] + (["fit IR"] if fit_loads is not None else []) + ["mean IR", "max IR"]
              + (["step us"] if timed else []) + [f"L{l}" for l in shown])
    rows = []
    for name, p in placements.items():
        ir = _core.layer_imbalance(loads, p)
        step = [f"{_core.layer_step_times(loads, p, topology.gpu_models).sum():.1f}"] if timed else []
        fit = [f"{_core.layer_imbalance(fit_loads, p).mean():.3f}"] if fit_loads is not None else []
        rows.append([name, str(p.num_slots)] + fit + [f"{ir.mean():.3f}", f"{ir.max():.3f}"] + step
                    + [f"{ir[l]:.2f}" for l in shown])
    return _format_table(header, rows)


DEMO_SPREAD = 0.07


def _parse_shape(text: str) -> _core.ExpertShape:
    try:
        hidden, ffn = (int(v) for v in text.split(","))
    except ValueError:
        raise _core.MoebalValueError(f"--expert-shape must be 'hidden,ffn' (two integers), got {text!r}") from None
    return _core.ExpertShape(hidden, ffn, 2)


def _speed_topology(args: argparse.Namespace) -> _core.Topology:
    """GPUs with the measured models of --perf (one per GPU, or one for all), else H100 roofline
    expert models; either way a single model gets fixed-seed slowdowns in [1, 1 + spread]. A spread
    of None (the demo's default) means 7% for a single model and none for one model per GPU; the
    spread used is left in args.speed_spread."""
    from moebal import perf, solvers

    if args.gpus % args.nodes:
        raise _core.MoebalValueError(f"--gpus ({args.gpus}) must be divisible by --nodes ({args.nodes})")
    data = perf.read_file(args.perf) if getattr(args, "perf", None) else None
    measured = perf.models_from_dict(data)[0] if data is not None else None
    per_gpu = measured is not None and len(measured) == args.gpus
    if args.speed_spread is None:
        args.speed_spread = 0.0 if per_gpu else DEMO_SPREAD
    if measured is None:
        models = solvers.speed_spread_models(args.gpus, args.speed_spread, _parse_shape(args.expert_shape),
                                             seed=args.seed)
    elif per_gpu:
        if args.speed_spread:
            raise _core.MoebalValueError("--speed-spread applies to a single measured model; "
                                         f"{args.perf} already has one per GPU")
        models = measured
    else:
        slowdowns = solvers.speed_spread_slowdowns(args.gpus, args.speed_spread, seed=args.seed)
        models = perf.models_for_gpus(measured, args.gpus, slowdowns)
    link = perf.link_GBps(data) if data is not None else None
    if link is not None:  # measured by moebal profile --links: the slowest pair
        return _core.Topology(args.nodes, args.gpus // args.nodes, nvlink_GBps=link, gpu_models=list(models))
    return solvers.topology_with_models(args.nodes, args.gpus // args.nodes, models)


def cmd_profile(args: argparse.Namespace) -> int:
    from moebal import perf, solvers

    shape = _parse_shape(args.expert_shape)
    try:
        tokens = [int(v) for v in args.tokens.split(",") if v]
        devices = None if args.devices is None else [int(v) for v in args.devices.split(",") if v]
    except ValueError:
        raise _core.MoebalValueError("--tokens and --devices take comma-separated integers") from None
    if args.links:
        import torch

        n = len(devices) if devices is not None else torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n < 2:
            raise _core.MoebalValueError(f"--links needs at least two GPUs, got {n}")
    data = perf.measure_gpu_models(shape, devices, tokens, groups=args.groups)
    roof = solvers.h100_expert_model(shape)
    header = ["tokens"] + [f"GPU {g['index']} us" for g in data["gpus"]] + \
        [f"GPU {g['index']} fit" for g in data["gpus"]] + ["H100 roofline us"]
    fits = [_core.PerfModel(g["knot_tokens"], g["knot_micros"]) for g in data["gpus"]]
    rows = [[str(n)] + [f"{g['micros'][i]:.2f}" for g in data["gpus"]] + [f"{m.time_us(n):.2f}" for m in fits]
            + [f"{roof.time_us(n):.2f}"] for i, n in enumerate(data["gpus"][0]["tokens"])]
    print(f"expert {shape.hidden}x{shape.ffn} bf16, us per expert copy inside a grouped launch; {data['date']}")
    print(_format_table(header, rows))
    if args.links:
        data["links"] = perf.measure_links([g["index"] for g in data["gpus"]])
        print("\nGPU-to-GPU copies, us per copy; fit: latency + bytes / bandwidth")
        sizes = data["links"][0]["bytes"]
        header = ["src -> dst", "peer"] + [f"{b >> 20} MiB" for b in sizes] + ["GB/s", "latency us"]
        rows = [[f"{l['src']} -> {l['dst']}", "yes" if l["peer"] else "no"] + [f"{t:.1f}" for t in l["micros"]]
                + [f"{l['GBps']:.1f}", f"{l['latency_us']:.1f}"] for l in data["links"]]
        print(_format_table(header, rows))
    if args.out:
        perf.save_models(args.out, data)
        print(f"models written to {args.out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    caps = moebal.capabilities()
    caps["policies"] = policies.available_policies()
    print(json.dumps(caps, indent=2))
    return 0


def _save_placement(path: str, p: _core.Placement, policy: str) -> None:
    np.savez_compressed(path, phy2log=p.phy2log, log2phy=p.log2phy, logcnt=p.logcnt,
                        slot_to_gpu=p.slot_to_gpu, gpu_to_node=p.gpu_to_node,
                        __meta__=np.array(json.dumps({"policy": policy, "num_gpus": p.num_gpus,
                                                      "num_nodes": p.num_nodes})))


def cmd_plan(args: argparse.Namespace) -> int:
    loads, trace = _read_loads(args.input, args.step_begin, args.step_end)
    num_slots = args.slots if args.slots is not None else loads.num_experts + args.extra_per_gpu * args.gpus
    topology = _speed_topology(args)
    p = policies.plan(args.policy, loads, num_slots=num_slots, num_gpus=args.gpus, num_nodes=args.nodes,
                      num_groups=args.groups, topology=topology, trace=trace)
    base = {}
    if args.policy != "contiguous" and loads.num_experts % args.gpus == 0:
        base["contiguous"] = _core.Placement.contiguous(loads.num_layers, loads.num_experts, args.gpus, args.nodes)
    print(imbalance_table(loads, {**base, args.policy: p}, topology))
    if args.out:
        _save_placement(args.out, p, args.policy)
        print(f"placement written to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    path = args.trace or _demo_trace_path()
    trace = load_trace(path)
    if isinstance(trace, LoadTrace):
        raise _core.MoebalValueError("demo needs a token-level routing trace, got a load-only trace")
    meta = trace_meta(path)
    S = trace.num_steps
    fit_end = max(1, S // 2)
    fit = trace.loads(0, fit_end)
    held = trace.loads(fit_end, S) if fit_end < S else fit
    E, G, N = trace.num_experts, args.gpus, args.nodes
    print(f"moebal demo: {os.path.basename(path)} ({meta.get('source', 'unknown source')})")
    print(f"  {trace.num_layers} MoE layers, {E} experts, top-{trace.top_k}, {trace.num_tokens} tokens "
          f"in {S} steps; {G} GPUs on {N} node(s), {args.extra_per_gpu} extra slot(s) per GPU")
    print(f"  placements are planned on steps [0, {fit_end}) ('fit IR': mean imbalance there) and evaluated "
          f"on steps [{fit_end}, {S}) (the load they meet next: the other columns)")
    topology = _speed_topology(args)
    fit_trace = slice_steps(trace, 0, fit_end)  # co-activation-aware policies see only the planning window
    speeds = (f"models measured by moebal profile ({args.perf})" if args.perf else
              f"H100 roofline model of a {args.expert_shape} bf16 expert")
    print(f"  GPU speeds: {speeds}, slowdowns up to {100 * args.speed_spread:.0f}% (seed {args.seed}); "
          "'step us' = predicted MoE time of all layers for the held-out tokens as one batch\n")
    placements: dict[str, _core.Placement] = {}
    names = list(policies.available_policies())
    skipped = {}
    for name in progress(names, len(names), "planning", enabled=None if not args.no_progress else False):
        slots = E if name == "contiguous" else E + args.extra_per_gpu * G
        try:
            placements[name] = policies.plan(name, fit, num_slots=slots, num_gpus=G, num_nodes=N,
                                             num_groups=args.groups, topology=topology, trace=fit_trace)
        except ValueError as e:
            skipped[name] = str(e)
    if not placements:
        reasons = "; ".join(f"{n}: {why}" for n, why in skipped.items())
        raise _core.MoebalValueError(f"no policy can place {E} experts on {G} GPUs ({reasons})")
    print(imbalance_table(held, placements, topology, fit_loads=fit if fit_end < S else None))
    for name, why in skipped.items():
        print(f"  (skipped {name}: {why})")
    if args.no_plot:
        return 0
    try:
        from moebal.plot import plot_gpu_loads
    except ImportError:
        print("\nmatplotlib is not installed; no plot (pip install matplotlib)")
        return 0
    os.makedirs(args.out_dir, exist_ok=True)
    png = os.path.join(args.out_dir, "moebal_demo.png")
    plot_gpu_loads(png, f"moebal demo: {G} GPUs, held-out steps of {os.path.basename(path)}",
                   [f"L{l}" for l in range(trace.num_layers)],
                   {n: _core.gpu_loads(held, p) for n, p in placements.items()},
                   {n: _core.layer_imbalance(held, p) for n, p in placements.items()})
    print(f"\nplot written to {png}")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    from moebal.capture import capture_cli

    return capture_cli(args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="moebal", description=__doc__)
    ap.add_argument("--version", action="version", version=f"moebal {moebal.__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="what this installation can do (JSON)").set_defaults(fn=cmd_info)

    p = sub.add_parser("plan", help="plan a placement from a trace or load matrix")
    p.add_argument("input", help=".npz moebal trace, or .npy/.csv load matrix [layers, experts]")
    p.add_argument("--policy", default="contiguous", help="one of: " + ", ".join(policies.available_policies()))
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--groups", type=int, default=1, help="expert groups (EPLB's num_groups)")
    p.add_argument("--slots", type=int, help="physical slots per layer (default: experts + extra-per-gpu * gpus)")
    p.add_argument("--extra-per-gpu", type=int, default=0)
    p.add_argument("--step-begin", type=int)
    p.add_argument("--step-end", type=int)
    p.add_argument("--out", help="write the placement tables to this .npz")
    p.add_argument("--expert-shape", default="2048,768", help="hidden,ffn of one expert (GPU time models for vibe and 'step us')")
    p.add_argument("--speed-spread", type=float, default=0.0, help="GPU slowdowns drawn from [1, 1 + spread]")
    p.add_argument("--perf", help="measured per-GPU models (moebal profile --out): one per GPU, or one for all "
                                  "(then --speed-spread scales it); replaces --expert-shape's roofline models")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(fn=cmd_plan)

    pr = sub.add_parser("profile", help="measure each GPU's expert time vs tokens and fit its model (needs a GPU)")
    pr.add_argument("--expert-shape", required=True, help="hidden,ffn of one bf16 expert")
    pr.add_argument("--tokens", default=",".join(map(str, (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096))))
    pr.add_argument("--devices", help="CUDA device indices (default: every visible GPU)")
    pr.add_argument("--groups", type=int, help="experts per timed call (default: enough to exceed 256 MiB of weights)")
    pr.add_argument("--links", action="store_true",
                    help="also time GPU-to-GPU copies of 1-256 MiB for every ordered pair (needs >= 2 GPUs); the "
                         "slowest pair's bandwidth becomes the intra-node link of topologies read from --out")
    pr.add_argument("--out", help="write the models to this JSON file (moebal plan --perf reads it)")
    pr.set_defaults(fn=cmd_profile)

    d = sub.add_parser("demo", help="balance a shipped routing trace and plot per-GPU load")
    d.add_argument("--trace", help="routing trace (.npz); default: the one shipped with moebal")
    d.add_argument("--gpus", type=int, default=8)
    d.add_argument("--nodes", type=int, default=1)
    d.add_argument("--groups", type=int, default=1)
    d.add_argument("--extra-per-gpu", type=int, default=1)
    d.add_argument("--expert-shape", default="2048,768", help="hidden,ffn of one expert (for GPU time models)")
    d.add_argument("--speed-spread", type=float, default=None,
                   help="GPU slowdowns drawn from [1, 1 + spread] (default 0.07; 0 with one measured model per GPU)")
    d.add_argument("--perf", help="measured GPU models (moebal profile --out) instead of the roofline ones; "
                                  "one model is scaled by --speed-spread, one per GPU is used as is")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--out-dir", default="moebal_demo_out")
    d.add_argument("--no-plot", action="store_true")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(fn=cmd_demo)

    c = sub.add_parser("capture", help="capture a routing trace from a transformers MoE model (needs torch + transformers)")
    c.add_argument("model", help="model directory (save_pretrained layout) or a config.json for random weights")
    c.add_argument("--out", required=True, help="trace file to write (.npz)")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", nargs="+", help="text files, tokenized with the model directory's tokenizer")
    src.add_argument("--tokens", help=".npy of token ids: [N] (cut into windows) or [sequences, seq_len]")
    c.add_argument("--seq-len", type=int, default=512)
    c.add_argument("--batch", type=int, default=8, help="sequences per step")
    c.add_argument("--max-steps", type=int)
    c.add_argument("--store-hidden", action="store_true", help="also store the hidden state entering each MoE layer")
    c.add_argument("--store-logits", action="store_true", help="also store the router logits")
    c.add_argument("--device", default="cpu")
    c.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    c.add_argument("--seed", type=int, default=0, help="seed of the random weights (config.json input)")
    c.set_defaults(fn=cmd_capture)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"moebal {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
