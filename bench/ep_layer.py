"""Measured expert-parallel MoE layers under moebal's placements: the slowest rank's time, per policy,
on real routing.

Every rank runs :func:`moebal.distributed.ep_moe_forward` (all-to-all dispatch, grouped experts of
its slots, all-to-all back, weighted combine) on its share of the tokens, for every layer of a
routing trace and every placement policy, in one process group. The placements are planned on one
range of the trace's steps and measured on another (out of sample). Tokens: the evaluation steps'
routing, split into contiguous equal shares per rank, each token repeated ``--repeat`` times, which
scales the load and keeps its skew and co-activation. Expert weights: random bf16 of
``--expert-shape``, the same for every copy of an expert (so the result can be checked against the
single-process layer, and is on every rank).

Exchanges (``--exchange``): ``rows`` sends one row per (token, k); ``dedup`` one per (token,
destination rank), the experts of that rank applied there and summed; ``dense`` every token to
every rank (eager here; its CUDA-graph form is timed by ``bench/ep_decode.py``). With both, each layer runs
them interleaved, repetition by repetition, in the same process group.

Reported per policy and exchange: the imbalance of (token, k) rows the ranks serve (max/mean), the
rows each rank sends (each way, its own rank's share included), the slowest rank's expert time and whole-layer time
(CUDA events, median over ``--reps`` after a barrier, summed over layers), the whole-layer time
relative to ``contiguous`` with ``rows``, and the other exchanges relative to ``rows`` for the same
policy.

Usage: python bench/ep_layer.py [--world 4] [--trace T.npz] [--expert-shape 2048,768] [--repeat 8]
       [--policies contiguous,eplb,balanced] [--extra-per-gpu 1] [--assign weighted_locality]
       [--plan-steps 0:2] [--eval-steps 2:4] [--reps 10] [--exchange rows,dedup] [--json out.json]
       [--backend gloo]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from moebal.distributed import EXCHANGES

DEFAULT_TRACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python", "moebal", "data", "refmoe",
                             "refmoe_python.npz")


def _steps(text: str, name: str) -> tuple:
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"{name} takes BEGIN:END, got {text!r}") from None
    if not 0 <= a < b:
        raise ValueError(f"{name} must satisfy 0 <= BEGIN < END, got {text!r}")
    return a, b


def setup(args, world: int) -> dict:
    """What every rank computes the same way: the trace, the placements, the rank shares."""
    from moebal import _core
    from moebal.policies import plan
    from moebal.trace import load_arrays

    arr = load_arrays(args.trace, ("topk_ids", "topk_weights", "step"))
    ids, wts, step = arr["topk_ids"], arr["topk_weights"], arr["step"]
    L, T, K = ids.shape
    E = int(arr["meta"]["num_experts"])
    n_steps = int(step.max()) + 1
    for name, (a, b) in (("--plan-steps", args.plan_steps), ("--eval-steps", args.eval_steps)):
        if b > n_steps:
            raise ValueError(f"{name} {a}:{b} exceeds the trace's {n_steps} steps")
    pa, pb = args.plan_steps
    sel = (step >= pa) & (step < pb)
    loads = np.stack([np.bincount(ids[l][sel].reshape(-1), minlength=E) for l in range(L)]).astype(np.float64)
    ea, eb = args.eval_steps
    sel = (step >= ea) & (step < eb)
    ev_ids = np.repeat(ids[:, sel], args.repeat, axis=1)
    ev_w = np.repeat(wts[:, sel], args.repeat, axis=1)
    n = ev_ids.shape[1] - ev_ids.shape[1] % world
    if n < world:
        raise ValueError(f"the evaluation steps hold {ev_ids.shape[1]} tokens (x repeat), fewer than {world} ranks")
    placements = {}
    for p in args.policies:
        slots = E if p == "contiguous" else E + args.extra_per_gpu * world
        if slots % world:
            raise ValueError(f"{slots} slots (policy {p}) do not divide over {world} ranks")
        placements[p] = plan(p, _core.LoadMatrix(loads), num_slots=slots, num_gpus=world)
    return {"L": L, "E": E, "K": K, "ids": ev_ids[:, :n], "w": ev_w[:, :n], "per_rank": n // world,
            "placements": placements}


def rank_setup(rank: int, world: int, args) -> tuple:
    """A rank's share of the setup: (setup(...), on CUDA?, device, w13, w2), the random bf16 experts of
    --expert-shape the same on every rank."""
    s = setup(args, world)
    cuda = args.backend == "nccl"
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    H, F = args.expert_shape
    g = torch.Generator().manual_seed(1234)  # the same weights on every rank
    w13 = (torch.randn(s["E"], 2 * F, H, generator=g) * H ** -0.5).bfloat16().to(dev)
    w2 = (torch.randn(s["E"], H, F, generator=g) * F ** -0.5).bfloat16().to(dev)
    return s, cuda, dev, w13, w2


def rank_layer(s: dict, pl, layer: int, rank: int, world: int, lo: int, n: int, w13, w2, assign: str) -> tuple:
    """One layer on one rank: its tokens lo:lo+n of the evaluation routing (ids, weights), their
    physical slots under placement ``pl`` (``assign`` policy), and the rank's slot weights."""
    from moebal.assign_ops import assign_replicas, placement_tensors
    from moebal.distributed import local_slot_weights

    dev = w13.device
    ids = torch.from_numpy(np.ascontiguousarray(s["ids"][layer, lo:lo + n])).to(dev)
    wts = torch.from_numpy(np.ascontiguousarray(s["w"][layer, lo:lo + n])).to(dev)
    log2phy, logcnt = placement_tensors(pl, layer, dev)
    src = torch.full((n,), rank, dtype=torch.int32, device=dev)
    slots = assign_replicas(ids, src, log2phy, logcnt, num_gpus=world, num_nodes=1, num_slots=pl.num_slots,
                            policy=assign)
    w13_l, w2_l = local_slot_weights(w13, w2, pl.phy2log[layer], rank, pl.num_slots // world)
    return ids, wts, slots, w13_l, w2_l


def _rank(rank: int, world: int, args) -> dict:
    import torch.distributed as dist

    from moebal.distributed import ep_moe_forward
    from moebal.moe_ops import moe_forward

    s, cuda, dev, w13, w2 = rank_setup(rank, world, args)
    H = args.expert_shape[0]
    n = s["per_rank"]
    lo = rank * n
    x = (torch.randn(n, H, generator=torch.Generator().manual_seed(rank))).bfloat16().to(dev)
    out = {}
    for p, pl in s["placements"].items():
        spr = pl.num_slots // world
        rows = {m: [] for m in args.exchange}
        for l in range(s["L"]):
            ids, wts, slots, w13_l, w2_l = rank_layer(s, pl, l, rank, world, lo, n, w13, w2, args.assign)
            ref = moe_forward(x, w13, w2, topk_ids=ids, topk_weights=wts)
            dest = torch.div(slots.long(), spr, rounding_mode="floor")
            sent = torch.bincount(dest.reshape(-1), minlength=world).tolist()  # (token, k) rows per destination rank
            wire = {"rows": sum(sent),  # rows this rank sends each way (to itself too)
                    "dedup": int(torch.zeros(world, n, dtype=torch.bool, device=dev).scatter_(0, dest.t(), True).sum()),
                    "dense": world * n}
            err, total, experts = {}, {m: [] for m in args.exchange}, {m: [] for m in args.exchange}
            for m in args.exchange:
                y = ep_moe_forward(x, wts, slots, w13_l, w2_l, slots_per_rank=spr, exchange=m)
                err[m] = float((y.float() - ref.float()).abs().max()) / max(1e-6, float(ref.float().abs().max()))
            for i in range(args.warmup + args.reps):
                for m in args.exchange:  # the exchanges interleaved, each after a barrier
                    dist.barrier()
                    if cuda:
                        torch.cuda.synchronize(dev)
                        t = {}
                        ep_moe_forward(x, wts, slots, w13_l, w2_l, slots_per_rank=spr, timings=t, exchange=m)
                        t["end"].synchronize()
                        if i >= args.warmup:
                            total[m].append(t["start"].elapsed_time(t["end"]) * 1e3)
                            experts[m].append(t["experts_start"].elapsed_time(t["experts_end"]) * 1e3)
                    else:
                        t0 = time.perf_counter()
                        ep_moe_forward(x, wts, slots, w13_l, w2_l, slots_per_rank=spr, exchange=m)
                        if i >= args.warmup:
                            total[m].append((time.perf_counter() - t0) * 1e6)
            for m in args.exchange:
                rows[m].append({"us": float(np.median(total[m])),
                                "experts_us": float(np.median(experts[m])) if experts[m] else None,
                                "rows_sent": sent, "wire_rows": wire[m], "rel_err": err[m]})
        for m in args.exchange:
            out[_key(p, m)] = rows[m]
    return out


def _key(policy: str, mode: str) -> str:
    """Table key of a policy under one exchange: ``balanced``, ``balanced+dedup``."""
    return policy if mode == "rows" else f"{policy}+{mode}"


def summarize(res: list, args, s: dict) -> dict:
    world = len(res)
    table = {}
    for p in args.policies:
        for m in args.exchange:
            key = _key(p, m)
            per_layer = []
            for l in range(s["L"]):
                r = [res[k][key][l] for k in range(world)]
                rows_in = [sum(v["rows_sent"][k] for v in r) for k in range(world)]  # (token, k) rows each rank serves
                per_layer.append({"us": max(v["us"] for v in r),
                                  "experts_us": max(v["experts_us"] for v in r) if r[0]["experts_us"] is not None else None,
                                  "rows_ir": max(rows_in) / (sum(rows_in) / world),
                                  "wire_rows": sum(v["wire_rows"] for v in r) / world,
                                  "rel_err": max(v["rel_err"] for v in r)})
            table[key] = {"policy": p, "exchange": m, "slots": s["placements"][p].num_slots,
                          "rows_ir_mean": float(np.mean([v["rows_ir"] for v in per_layer])),
                          "wire_rows_mean": float(np.mean([v["wire_rows"] for v in per_layer])),
                          "us_sum": float(sum(v["us"] for v in per_layer)),
                          "experts_us_sum": (float(sum(v["experts_us"] for v in per_layer))
                                             if per_layer[0]["experts_us"] is not None else None),
                          "max_rel_err": float(max(v["rel_err"] for v in per_layer)), "per_layer": per_layer}
    return table


def _vs_rows(table: dict, t: dict) -> str:
    """This exchange's speed-up over ``rows`` for the same policy, when both ran."""
    r = table.get(_key(t["policy"], "rows"))
    return "-" if r is None or r is t else f"{r['us_sum'] / t['us_sum']:.2f}x"


def check_common(ap, args) -> None:
    """The checks ep_layer and ep_decode share: --expert-shape (parsed into a tuple), --world (GPUs
    for NCCL; set when absent) and --trace."""
    try:
        args.expert_shape = tuple(int(v) for v in args.expert_shape.split(","))
        if len(args.expert_shape) != 2 or min(args.expert_shape) < 1 or args.expert_shape[0] % 8 or args.expert_shape[1] % 8:
            raise ValueError
    except ValueError:
        ap.error(f"--expert-shape takes hidden,ffn, positive multiples of 8, got {args.expert_shape!r}")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.world is None:
        args.world = n if args.backend == "nccl" else 2
    if args.world < 2:
        ap.error(f"--world must be >= 2, got {args.world} (GPUs visible: {n})")
    if args.backend == "nccl" and n < args.world:
        ap.error(f"--backend nccl needs one GPU per rank: --world {args.world}, {n} GPU(s) visible")
    if not os.path.exists(args.trace):
        ap.error(f"--trace {args.trace}: no such file")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    ap.add_argument("--world", type=int, default=None, help="ranks (default: every visible GPU; gloo: 2)")
    ap.add_argument("--trace", default=DEFAULT_TRACE)
    ap.add_argument("--expert-shape", default="2048,768", help="hidden,ffn of one expert")
    ap.add_argument("--repeat", type=int, default=8, help="times each evaluation token is repeated")
    ap.add_argument("--policies", default="contiguous,eplb,balanced")
    ap.add_argument("--extra-per-gpu", type=int, default=1)
    ap.add_argument("--assign", default="weighted_locality",
                    help="token -> replica policy (round_robin, hash, locality, weighted_locality)")
    ap.add_argument("--exchange", default="rows",
                    help="comma list of ep_moe_forward exchanges: rows (one row per (token, k)), dedup (one per "
                         "(token, destination rank)), dense (every token to every rank); several are timed "
                         "interleaved in the same process group")
    ap.add_argument("--plan-steps", default="0:2")
    ap.add_argument("--eval-steps", default="2:4")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    check_common(ap, args)
    args.policies = [p for p in args.policies.split(",") if p]
    args.exchange = [m for m in args.exchange.split(",") if m]
    if not args.exchange or any(m not in EXCHANGES for m in args.exchange) \
            or len(set(args.exchange)) != len(args.exchange):
        ap.error(f"--exchange takes {', '.join(EXCHANGES)}, each at most once, got {','.join(args.exchange)!r}")
    from moebal.policies import available_policies

    bad = [p for p in args.policies if p not in available_policies()]
    if bad or not args.policies:
        ap.error(f"--policies: unknown {bad}; available: {', '.join(available_policies())}")
    try:
        args.plan_steps = _steps(args.plan_steps, "--plan-steps")
        args.eval_steps = _steps(args.eval_steps, "--eval-steps")
    except ValueError as e:
        ap.error(str(e))
    if args.repeat < 1 or args.reps < 1 or args.warmup < 0 or args.extra_per_gpu < 0:
        ap.error("--repeat and --reps must be >= 1, --warmup and --extra-per-gpu >= 0")
    from moebal import _core

    try:
        setup(args, args.world)  # the trace's steps, the placements: checked before any process starts
    except (ValueError, _core.MoebalValueError) as e:
        ap.error(str(e))
    return args


def main(argv=None) -> int:
    from moebal.distributed import run_ranks

    args = parse(argv)
    s = setup(args, args.world)
    res = run_ranks(_rank, args.world, args, backend=args.backend, timeout=args.timeout)
    table = summarize(res, args, s)
    dev = torch.cuda.get_device_name(0) if args.backend == "nccl" else "cpu"
    H, F = args.expert_shape
    print(f"expert-parallel MoE layer, {args.world} ranks ({args.backend}, {dev}), experts {H}x{F} bf16, "
          f"{s['E']} experts top-{s['K']}, {s['L']} layers of {os.path.basename(args.trace)}: planned on steps "
          f"{args.plan_steps[0]}:{args.plan_steps[1]}, measured on steps {args.eval_steps[0]}:{args.eval_steps[1]} "
          f"x{args.repeat} ({s['per_rank']} tokens per rank); slowest rank, median of {args.reps}, summed over "
          f"layers; exchanges {', '.join(args.exchange)} interleaved")
    base = table.get("contiguous", next(iter(table.values())))["us_sum"]
    hdr = ["policy", "exchange", "slots", "rows max/mean", "rows sent per rank (own included)", "experts us", "layer us",
           "vs first" if "contiguous" not in table else "vs contiguous", "vs rows", "max rel err"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for p, t in table.items():
        ex = f"{t['experts_us_sum']:.0f}" if t["experts_us_sum"] is not None else "-"
        print(f"| {t['policy']} | {t['exchange']} | {t['slots']} | {t['rows_ir_mean']:.3f} | {t['wire_rows_mean']:.0f} | "
              f"{ex} | {t['us_sum']:.0f} | {base / t['us_sum']:.2f}x | "
              f"{_vs_rows(table, t)} | {t['max_rel_err']:.1e} |")
    ok = all(t["max_rel_err"] < 2e-2 for t in table.values())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": args.backend, "world": args.world, "device": dev, "torch": torch.__version__,
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "trace": os.path.basename(args.trace),
                       "expert_shape": [H, F], "repeat": args.repeat, "tokens_per_rank": s["per_rank"],
                       "plan_steps": list(args.plan_steps), "eval_steps": list(args.eval_steps),
                       "assign": args.assign, "extra_per_gpu": args.extra_per_gpu, "exchange": args.exchange, "policies": table,
                       "results_correct": ok}, f, indent=1)
    if not ok:
        print("ERROR: an expert-parallel output differs from the single-process layer", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
