"""Does the PROBE planner fed with *predicted* per-(rank, expert) counts balance as well as the same
planner fed with the *true* counts? (issue 4's third target; needs moebal.probe, branch `probe`.)

Tokens of pred_ids.npz (run_eval.py output: true top-K ids of the reference MoE on held-out python
and prose text, and the ids predicted by next_gate and probe from the previous layer) are dealt to
R source ranks by sequence (sequence i -> rank i % R); one step = all tokens of one domain. For each
target layer: plan with counts C (true, probe-predicted, next_gate-predicted), then route the TRUE
tokens with that plan (each (rank, expert)'s true tokens split in the proportions of the plan's
quota; pairs the plan gave no quota go to the expert's home rank), and measure max/mean tokens per
rank. Compute model: time = tokens (the planner's default), window unlimited, <= 3 extra slots.

Usage: python planner_eval.py pred_ids.npz [--ranks 8] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def rank_counts(ids: np.ndarray, ranks: np.ndarray, R: int, E: int) -> np.ndarray:
    """ids [L, T, K] -> int32 [L, R, E]."""
    L = ids.shape[0]
    out = np.zeros((L, R * E), np.int64)
    flat = ranks[None, :, None].astype(np.int64) * E + ids.astype(np.int64)
    for l in range(L):
        out[l] = np.bincount(flat[l].reshape(-1), minlength=R * E)
    return out.reshape(L, R, E).astype(np.int32)


def routed_loads(quota: np.ndarray, true: np.ndarray, home: np.ndarray) -> np.ndarray:
    """quota [L, R, E, R], true counts [L, R, E], home [L, E] -> tokens per destination rank [L, R]."""
    q = quota.astype(np.float64)
    tot = q.sum(-1, keepdims=True)
    frac = np.where(tot > 0, q / np.maximum(tot, 1), 0.0)
    L, R, E = true.shape
    none = tot[..., 0] == 0
    fallback = np.zeros_like(frac)
    li, ri, ei = np.nonzero(none)
    fallback[li, ri, ei, home[li, ei]] = 1.0
    return ((frac + fallback) * true[..., None]).sum((1, 2))


def ir(x: np.ndarray) -> np.ndarray:
    return x.max(-1) / x.mean(-1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pred_ids")
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--expert-bytes", type=int, default=3 * 512 * 256 * 2)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    import moebal
    from moebal import probe

    z = np.load(a.pred_ids)
    meta = json.loads(str(z["__meta__"]))
    S, R, E = meta["seq_len"], a.ranks, a.experts
    res = {"ranks": R, "experts": E, "domains": {}}
    for d in ("python", "prose"):
        true = z[f"{d}_true"][1:]  # layers 1..L-1: the ones predicted
        L, T, K = true.shape
        ranks = (np.arange(T) // S) % R
        place = moebal.Placement.contiguous(L, E, R, 1)
        home = np.asarray(place.phy2log).reshape(L, E).argsort(1) // (E // R)  # slot of expert e -> its GPU
        c_true = rank_counts(true, ranks, R, E)
        base = ir(c_true.sum(1).reshape(L, R, E // R).sum(-1))  # contiguous: GPU g holds experts [g*E/R, (g+1)*E/R)
        row = {"tokens": int(T), "no_planner": base.tolist()}
        preds = ["probe", "next_gate"] + sorted(k[len(d) + 1:] for k in z.files if k.startswith(f"{d}_probe_D"))
        for name in ["true"] + preds:
            c = c_true if name == "true" else rank_counts(z[f"{d}_{name}"], ranks, R, E)
            p = probe.plan(c, place, expert_bytes=a.expert_bytes)
            row[name] = ir(routed_loads(np.asarray(p.quota), c_true, home)).tolist()
            row[name + "_planned_on_own_counts"] = np.asarray(p.imbalance()[1]).tolist()
        for name in preds:
            row[name + "_over_true"] = (np.asarray(row[name]) / np.asarray(row["true"])).tolist()
        res["domains"][d] = row
        print(f"{d}: IR per layer (max/mean tokens per rank, routed with true counts)")
        for key in ["no_planner", "true"] + preds + [n + "_over_true" for n in preds]:
            v = np.asarray(row[key])
            print(f"  {key:22s} mean {v.mean():.3f}  " + " ".join(f"{x:.3f}" for x in v))
    if a.json:
        json.dump(res, open(a.json, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
