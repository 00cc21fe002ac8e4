"""Typed wrapper and fake kernel of ``torch.ops.moebal.probe_predict`` (declared in
bindings/torch/predictor.cpp). The fake mirrors the C++ checks in bindings/torch/predictor_checks.h."""
from __future__ import annotations

import torch

MAX_EXPERTS = 1024
MAX_TOPK = 32


def _check(hidden, w_cat, bias, w2, num_experts: int, k: int) -> int:
    c = torch._check_value
    c(hidden.dim() == 2, lambda: f"moebal.probe_predict: hidden must be [tokens, hidden], got {hidden.dim()}-D")
    c(hidden.dtype in (torch.float32, torch.bfloat16),
      lambda: f"moebal.probe_predict: hidden must be float32 or bfloat16, got {hidden.dtype}")
    c(1 <= num_experts <= MAX_EXPERTS, lambda: f"moebal.probe_predict: num_experts must be in [1, {MAX_EXPERTS}], got {num_experts}")
    c(1 <= k <= min(num_experts, MAX_TOPK), lambda: f"moebal.probe_predict: k must be in [1, min({num_experts}, {MAX_TOPK})], got {k}")
    c(w_cat.dim() == 2 and w_cat.shape[1] == hidden.shape[1] and w_cat.shape[0] >= num_experts,
      lambda: f"moebal.probe_predict: w_cat must be [num_experts + D, hidden] = [{num_experts} + D, {hidden.shape[1]}], "
              f"got {list(w_cat.shape)} (mismatched hidden size?)")
    d = w_cat.shape[0] - num_experts
    c(w2.dim() == 2 and w2.shape[0] == num_experts and w2.shape[1] == d,
      lambda: f"moebal.probe_predict: w2 must be [num_experts, D] = [{num_experts}, {d}], got {list(w2.shape)}")
    c(w_cat.dtype == hidden.dtype and w2.dtype == hidden.dtype,
      lambda: f"moebal.probe_predict: w_cat and w2 must have hidden's dtype {hidden.dtype}, got {w_cat.dtype} and {w2.dtype}")
    c(hidden.is_contiguous() and w_cat.is_contiguous() and w2.is_contiguous(),
      lambda: "moebal.probe_predict: hidden, w_cat and w2 must be contiguous")
    if bias is not None:
        c(bias.dim() == 1 and bias.shape[0] == num_experts and bias.dtype == torch.float32 and bias.is_contiguous(),
          lambda: f"moebal.probe_predict: bias must be contiguous float32 [{num_experts}], got {bias.dtype} {list(bias.shape)}")
    return d


def register_fakes() -> None:
    @torch.library.register_fake("moebal::probe_predict")
    def _(hidden, w_cat, bias, w2, num_experts, k):
        _check(hidden, w_cat, bias, w2, num_experts, k)
        T = hidden.shape[0]
        return (hidden.new_empty((T, num_experts), dtype=torch.float32), hidden.new_empty((T, k), dtype=torch.int32),
                hidden.new_empty((T, k), dtype=torch.float32), hidden.new_empty((num_experts,), dtype=torch.int32))


def probe_predict(hidden: torch.Tensor, w_cat: torch.Tensor, bias: torch.Tensor | None, w2: torch.Tensor,
                  num_experts: int, k: int):
    """PROBE predictor inference: ``logits = (hidden @ w_cat.T)[:, :E] + bias + SiLU((hidden @ w_cat.T)[:, E:]) @ w2.T``,
    then per-token top-k (ties: lower id) with softmax scores and the per-expert histogram.

    ``w_cat`` = [frozen next-layer router W (E rows); residual W1 (D rows)], ``w2`` [E, D] (D may be
    0: the next-gate baseline). Returns ``(logits f32 [T, E], topk_ids i32 [T, k], topk_scores f32 [T, k],
    counts i32 [E])``.
    """
    from moebal import ops

    ops.load_library()
    return torch.ops.moebal.probe_predict(hidden, w_cat, bias, w2, num_experts, k)
