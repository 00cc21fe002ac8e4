"""Synthetic routing workloads: skewed, co-activated and drifting, with a fixed seed.

Used where no captured trace exists (the demo, tests, benchmarks). The generative model:

- Every layer has a base popularity over experts: Zipf weights ``1 / rank**zipf_s`` in a random
  order per layer, as log-probabilities.
- Experts fall into ``num_topics`` clusters; each token carries a latent topic (drawn per request,
  shared by all its layers), which adds ``topic_boost`` to the logits of its cluster's experts.
  This gives co-activation (GRACE-style grouping has something to find) and cross-layer
  correlation (lookahead predictors have something to learn).
- Drift: the topic mix changes over time. Steps are grouped into phases of ``phase_steps``; each
  phase favours different topics (a domain switch), and the base popularity takes a random-walk
  step of size ``drift`` every step.
- Each token's top-k experts are drawn without replacement with the Gumbel-top-k trick; its gate
  weights are the softmax of the chosen logits. Tokens are spread over ``num_ranks`` source ranks,
  each rank serving its own request stream (so topics are correlated with ranks).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from moebal import _core


@dataclass(frozen=True)
class WorkloadConfig:
    num_layers: int = 12
    num_experts: int = 64
    top_k: int = 4
    num_steps: int = 8
    tokens_per_step: int = 512
    num_ranks: int = 8
    zipf_s: float = 0.9
    num_topics: int = 8
    topic_boost: float = 1.5
    phase_steps: int = 4
    drift: float = 0.15
    seed: int = 0

    def validate(self) -> None:
        for name in ("num_layers", "num_experts", "top_k", "num_steps", "tokens_per_step", "num_ranks",
                     "num_topics", "phase_steps"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise _core.MoebalValueError(f"workload: {name} must be a positive integer, got {v!r}")
        if self.top_k > self.num_experts:
            raise _core.MoebalValueError(f"workload: top_k ({self.top_k}) exceeds num_experts ({self.num_experts})")
        if self.num_topics > self.num_experts:
            raise _core.MoebalValueError("workload: num_topics must be <= num_experts")
        for name in ("zipf_s", "topic_boost", "drift"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise _core.MoebalValueError(f"workload: {name} must be finite and >= 0, got {v!r}")


def generate(cfg: WorkloadConfig = WorkloadConfig(), with_weights: bool = True) -> _core.RoutingTrace:
    """Generate a RoutingTrace from ``cfg`` (deterministic for a given seed)."""
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    L, E, K, S, T, R = (cfg.num_layers, cfg.num_experts, cfg.top_k, cfg.num_steps, cfg.tokens_per_step,
                        cfg.num_ranks)
    zipf = -cfg.zipf_s * np.log(np.arange(1, E + 1, dtype=np.float64))
    base = np.stack([rng.permutation(zipf) for _ in range(L)])               # [L, E]
    cluster = np.stack([rng.permutation(E) % cfg.num_topics for _ in range(L)])  # [L, E] topic of expert
    num_phases = (S + cfg.phase_steps - 1) // cfg.phase_steps
    # Each phase favours a few topics; each rank leans towards its own topics within the phase.
    phase_mix = rng.dirichlet(np.full(cfg.num_topics, 0.3), size=num_phases)        # [P, topics]
    rank_mix = rng.dirichlet(np.full(cfg.num_topics, 0.5), size=R)                 # [R, topics]

    ids = np.empty((L, S * T, K), dtype=np.int32)
    weights = np.empty((L, S * T, K), dtype=np.float32)
    src = np.empty(S * T, dtype=np.int32)
    step = np.repeat(np.arange(S, dtype=np.int32), T)
    for s in range(S):
        base = base + cfg.drift * rng.standard_normal(base.shape)
        rows = slice(s * T, (s + 1) * T)
        ranks = rng.integers(0, R, size=T)
        src[rows] = ranks
        mix = phase_mix[s // cfg.phase_steps][None, :] * rank_mix[ranks]          # [T, topics]
        mix /= mix.sum(axis=1, keepdims=True)
        u = rng.random((T, 1))
        topic = (u > np.cumsum(mix, axis=1)).sum(axis=1).clip(max=cfg.num_topics - 1)  # [T]
        for layer in range(L):
            logits = base[layer][None, :] + cfg.topic_boost * (cluster[layer][None, :] == topic[:, None])
            g = logits + rng.gumbel(size=(T, E))
            top = np.argpartition(-g, K - 1, axis=1)[:, :K]
            order = np.argsort(-np.take_along_axis(g, top, axis=1), axis=1)
            top = np.take_along_axis(top, order, axis=1)
            chosen = np.take_along_axis(logits, top, axis=1)
            w = np.exp(chosen - chosen.max(axis=1, keepdims=True))
            ids[layer, rows] = top
            weights[layer, rows] = w / w.sum(axis=1, keepdims=True)
    return _core.RoutingTrace(ids, E, weights if with_weights else None, src, step)


def config_dict(cfg: WorkloadConfig) -> dict:
    return asdict(cfg)
