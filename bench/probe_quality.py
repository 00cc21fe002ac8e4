"""Plan quality of the PROBE planner on skewed synthetic routing (moebal.synthetic), per step and layer.

For every step and layer, the per-(source rank, expert) counts are planned with moebal.probe and the
imbalance ratio IR = max/mean tokens per rank (and predicted time max/mean) is reported for
  - static:   no replication (the static placement, locality-first), the baseline;
  - oracle:   PROBE planned on the step's own counts (perfect prediction);
  - stale:    PROBE planned on the previous step's counts, its quotas applied (as fractions per
              (source, expert)) to the step's actual counts - a pessimistic stand-in for a predictor;
under an unlimited and a realistic hiding window, plus how often the window blocked the best move.

    python bench/probe_quality.py [--md bench/results/probe_quality.md]
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

import moebal
from moebal import probe, synthetic
from moebal.benchmark import format_table

EXPERT_BYTES = 3 * 7168 * 2048  # fp8 DeepSeek-V3 expert (44 MB)
FIXED_US, US_PER_TOKEN = 4.0, 0.02


def static_split(counts: np.ndarray, p2l: np.ndarray, R: int, rpn: int) -> np.ndarray:
    """Locality-first routing on the static placement as per-rank token loads [L, R] (float)."""
    plan = probe.plan(counts, p2l, expert_bytes=EXPERT_BYTES, max_extra_slots=0, max_iters=0, ranks_per_node=rpn)
    return plan.rank_tokens[:, 0].astype(np.float64)


def apply_fractions(quota: np.ndarray, actual: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Per-rank loads [L, R] when actual counts follow the planned quota fractions per (src, e);
    (src, e) pairs the plan never saw follow the fallback quota (static placement)."""
    q = quota.astype(np.float64)
    tot = q.sum(-1, keepdims=True)
    frac = np.where(tot > 0, q / np.maximum(tot, 1), fallback / np.maximum(fallback.sum(-1, keepdims=True), 1))
    return (frac * actual[..., None]).sum(axis=(1, 2))


def ir(x: np.ndarray) -> np.ndarray:
    m = x.mean(-1)
    return np.where(m > 0, x.max(-1) / np.where(m > 0, m, 1), 1.0)


def run(R: int, rpn: int, E: int, K: int, L: int, steps: int, tokens: int, zipf_s: float, seed: int) -> list[dict]:
    cfg = synthetic.WorkloadConfig(num_layers=L, num_experts=E, top_k=K, num_steps=steps, tokens_per_step=tokens,
                                   num_ranks=R, zipf_s=zipf_s, num_topics=8, phase_steps=4, drift=0.15, seed=seed)
    trace = synthetic.generate(cfg, with_weights=False)
    p2l = np.asarray(moebal.Placement.contiguous(L, E, R, R // rpn).phy2log)
    counts = [probe.rank_expert_counts(trace, s) for s in range(steps)]
    rows = []
    for window, wname in ((math.inf, "unlimited"), (300.0, "300 us")):
        for S in (1, 3):
            acc = {k: [] for k in ("static", "oracle", "stale", "t_static", "t_oracle", "blocked", "moves", "reps", "ms")}
            for s in range(steps):
                c = counts[s]
                base = static_split(c, p2l, R, rpn)
                t0 = time.perf_counter()
                pl = probe.plan(c, p2l, expert_bytes=EXPERT_BYTES, fixed_us=FIXED_US, us_per_token=US_PER_TOKEN,
                                window_us=window, max_extra_slots=S, max_iters=16, ranks_per_node=rpn)
                acc["ms"].append((time.perf_counter() - t0) * 1e3 / L)
                acc["static"].append(ir(base))
                acc["oracle"].append(ir(pl.rank_tokens[:, 1].astype(np.float64)))
                acc["t_static"].append(ir(pl.rank_time_us[:, 0]))
                acc["t_oracle"].append(ir(pl.rank_time_us[:, 1]))
                acc["blocked"].append(pl.window_blocked > 0)
                acc["moves"].append(pl.moves)
                acc["reps"].append(pl.new_replicas)
                if s > 0:
                    prev = probe.plan(counts[s - 1], p2l, expert_bytes=EXPERT_BYTES, fixed_us=FIXED_US,
                                      us_per_token=US_PER_TOKEN, window_us=window, max_extra_slots=S, max_iters=16,
                                      ranks_per_node=rpn)
                    fallback = probe.plan(c, p2l, expert_bytes=EXPERT_BYTES, max_extra_slots=0, max_iters=0,
                                          ranks_per_node=rpn).quota
                    acc["stale"].append(ir(apply_fractions(prev.quota, c, fallback)))
            mean = lambda k: float(np.mean(np.concatenate(acc[k])))  # noqa: E731
            rows.append({"ranks": f"{R} ({R // rpn} node{'s' if R > rpn else ''})", "experts/top-k": f"{E}/{K}",
                         "window": wname, "S": S, "IR static": mean("static"), "IR PROBE oracle": mean("oracle"),
                         "IR PROBE stale": mean("stale"), "time skew static": mean("t_static"),
                         "time skew PROBE": mean("t_oracle"), "moves/layer": mean("moves"),
                         "replicas/layer": mean("reps"), "layers window-blocked": mean("blocked"),
                         "CPU ms/layer (Python call)": float(np.mean(acc["ms"]))})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--md", help="write the table (markdown) here")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--layers", type=int, default=6)
    a = ap.parse_args(argv)
    rows = []
    rows += run(R=8, rpn=8, E=256, K=8, L=a.layers, steps=a.steps, tokens=8192, zipf_s=1.0, seed=1)
    rows += run(R=32, rpn=8, E=256, K=8, L=a.layers, steps=a.steps, tokens=16384, zipf_s=1.0, seed=2)
    rows += run(R=8, rpn=8, E=128, K=4, L=a.layers, steps=a.steps, tokens=8192, zipf_s=1.2, seed=3)
    table = format_table(rows, markdown=True)
    print(table)
    if a.md:
        with open(a.md, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
