"""Regenerate python/moebal/data/demo_trace.npz, the synthetic trace (`moebal demo --trace ...`, tests, benches).

No captured trace from a real model ships yet, so the demo uses moebal.synthetic's documented
skewed, co-activated, drifting workload with a fixed seed. Run from the repository root:
    python scripts/make_demo_trace.py
"""
import os

from moebal import save_trace
from moebal.synthetic import WorkloadConfig, config_dict, generate

cfg = WorkloadConfig(num_layers=12, num_experts=64, top_k=4, num_steps=8, tokens_per_step=512,
                     num_ranks=8, zipf_s=0.9, num_topics=8, topic_boost=1.5, phase_steps=4,
                     drift=0.15, seed=2026)
out = os.path.join(os.path.dirname(__file__), "..", "python", "moebal", "data", "demo_trace.npz")
trace = generate(cfg, with_weights=False)
save_trace(out, trace, model="synthetic (moebal.synthetic)",
           source="synthetic skewed drifting workload, moebal.synthetic.generate, seed 2026",
           workload=config_dict(cfg))
print(f"wrote {os.path.normpath(out)}: {os.path.getsize(out) / 1e3:.0f} kB")
