"""Shared by the transformers test modules: tiny configs of every MoE family moebal supports."""
from __future__ import annotations

COMMON = dict(vocab_size=61, hidden_size=32, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)
MLA = dict(num_key_value_heads=4, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)
CASES = {
    "MixtralConfig": dict(num_local_experts=8, num_experts_per_tok=2),
    "Qwen2MoeConfig": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                           shared_expert_intermediate_size=16),
    "Qwen3MoeConfig": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, head_dim=8),
    "OlmoeConfig": dict(num_experts=8, num_experts_per_tok=2),
    "DeepseekV2Config": dict(MLA, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                             first_k_dense_replace=1, n_group=1, topk_group=1, q_lora_rank=None),
    "DeepseekV3Config": dict(MLA, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                             first_k_dense_replace=1, n_group=2, topk_group=1, q_lora_rank=16),
    "GptOssConfig": dict(num_local_experts=8, num_experts_per_tok=2, head_dim=8, sliding_window=8),
}


def tiny_config(name: str, **over):
    """The config of family `name` (a key of CASES) with overrides; skips the test when the installed
    transformers lacks that family."""
    import pytest
    import transformers

    cls = getattr(transformers, name, None)
    if cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {name}; that model family is not tested here")
    return cls(**{**COMMON, **CASES[name], **over})
