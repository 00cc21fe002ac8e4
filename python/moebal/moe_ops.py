"""The MoE data path as torch ops: router top-k, replica-aware dispatch layout, permute,
unpermute + combine, and the whole layer (``moe_forward``).

The ops are declared once in C++ (bindings/torch/moe_ops.cpp, CPU reference kernels;
moe_ops_cuda.cpp, CUDA kernels). This module registers their fake kernels, mirroring the C++
checks, and offers typed wrappers. See docs/dataplane.md for the semantics.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import ops as _ops

MAX_EXPERTS = 2048
MAX_TOP_K = 32
MAX_SLOTS = 11 * 1024 - 1
ROUTE_LAYOUT_PATHS = ("auto", "two_kernels", "one_block", "cluster", "grid")

# Router configurations of the four benchmark models, shared by tests and benchmarks:
# name -> (num_experts, top_k, router keyword arguments, whether the router adds a correction bias).
ROUTER_PRESETS = {
    "Mixtral-8x7B": (8, 2, dict(scoring="softmax", renormalize=True), False),
    "Qwen3-30B-A3B": (128, 8, dict(scoring="softmax", renormalize=True), False),
    "GPT-OSS-120B": (128, 4, dict(scoring="softmax", renormalize=True), False),
    "DeepSeek-V3": (256, 8, dict(scoring="sigmoid", renormalize=True, num_groups=8, topk_groups=4,
                                 scaling_factor=2.5), True),
}


def _check(cond: bool, msg) -> None:
    torch._check_value(cond, msg if callable(msg) else (lambda: msg))


def _check_tensor(x: torch.Tensor, name: str, dim: int, dtype: torch.dtype, device: torch.device) -> None:
    _check(x.dim() == dim, lambda: f"moebal: {name} must be {dim}-D, got shape {tuple(x.shape)}")
    _check(x.dtype == dtype, lambda: f"moebal: {name} must be {dtype}, got {x.dtype}")
    _check(x.device == device, lambda: f"moebal: {name} is on {x.device} but the inputs are on {device}")
    _check(x.is_contiguous(), lambda: f"moebal: {name} must be contiguous")


def _check_router(logits, top_k, scoring, num_groups, topk_groups, bias) -> int:
    _check(logits.dim() == 2, lambda: f"moebal: router_logits must be 2-D [tokens, experts], got shape {tuple(logits.shape)}")
    _check(logits.dtype in (torch.float32, torch.bfloat16),
           lambda: f"moebal: router_logits must be float32 or bfloat16, got {logits.dtype}")
    _check(logits.is_contiguous(), "moebal: router_logits must be contiguous")
    e = logits.shape[1]
    _check(1 <= e <= MAX_EXPERTS, lambda: f"moebal: router_logits has {e} experts; must be in [1, {MAX_EXPERTS}]")
    _check(1 <= top_k <= min(e, MAX_TOP_K), lambda: f"moebal: top_k must be in [1, min({e}, {MAX_TOP_K})], got {top_k}")
    _check(scoring in ("softmax", "sigmoid"), lambda: f"moebal: scoring must be 'softmax' or 'sigmoid', got '{scoring}'")
    _check(1 <= num_groups <= 32 and e % num_groups == 0,
           lambda: f"moebal: num_groups must be in [1, 32] and divide the expert count ({e}), got {num_groups}")
    if num_groups > 1:
        _check(1 <= topk_groups <= num_groups, lambda: f"moebal: topk_groups must be in [1, {num_groups}], got {topk_groups}")
        _check(topk_groups * (e // num_groups) >= top_k,
               lambda: f"moebal: topk_groups * group size must be >= top_k ({top_k})")
    if bias is not None:
        _check_tensor(bias, "correction_bias", 1, torch.float32, logits.device)
        _check(bias.shape[0] == e, lambda: f"moebal: correction_bias must have {e} entries, got {bias.shape[0]}")
    return e


def _check_topk(ids, weights, device) -> None:
    _check_tensor(ids, "topk_ids", 2, torch.int32, device)
    _check(ids.shape[1] >= 1, lambda: f"moebal: topk_ids must have top_k >= 1 columns, got shape {tuple(ids.shape)}")
    if weights is not None:
        _check_tensor(weights, "topk_weights", 2, torch.float32, device)
        _check(weights.shape == ids.shape,
               lambda: f"moebal: topk_weights shape {tuple(weights.shape)} must equal topk_ids shape {tuple(ids.shape)}")


def _check_placement(log2phy, logcnt, num_experts, num_slots, device) -> None:
    _check(num_experts >= 1, lambda: f"moebal: num_experts must be >= 1, got {num_experts}")
    _check(1 <= num_slots <= MAX_SLOTS, lambda: f"moebal: num_slots must be in [1, {MAX_SLOTS}], got {num_slots}")
    _check((log2phy is None) == (logcnt is None), "moebal: log2phy and logcnt must be given together")
    if log2phy is None:
        _check(num_slots == num_experts,
               lambda: f"moebal: without a placement num_slots ({num_slots}) must equal num_experts ({num_experts})")
        return
    _check_tensor(log2phy, "log2phy", 2, torch.int32, device)
    _check_tensor(logcnt, "logcnt", 1, torch.int32, device)
    _check(log2phy.shape[0] == num_experts and log2phy.shape[1] >= 1,
           lambda: f"moebal: log2phy must be [num_experts={num_experts}, max_copies >= 1], got shape {tuple(log2phy.shape)}")
    _check(logcnt.shape[0] == num_experts, lambda: f"moebal: logcnt must have num_experts={num_experts} entries")


def _check_hidden(x, name="hidden") -> None:
    _check(x.dim() == 2, lambda: f"moebal: {name} must be 2-D [rows, hidden], got shape {tuple(x.shape)}")
    _check(x.dtype == torch.bfloat16, lambda: f"moebal: {name} must be bfloat16, got {x.dtype}")
    _check(x.is_contiguous(), lambda: f"moebal: {name} must be contiguous")


def _check_row_index(row_index, tokens, device) -> None:
    _check_tensor(row_index, "row_index", 2, torch.int32, device)
    _check(row_index.shape[0] == tokens and row_index.shape[1] >= 1,
           lambda: f"moebal: row_index must be [tokens={tokens}, top_k >= 1], got shape {tuple(row_index.shape)}")


def register_fakes() -> None:
    @torch.library.register_fake("moebal::router_topk")
    def _router_topk(router_logits, top_k, scoring="softmax", renormalize=True, num_groups=1, topk_groups=1,
                     correction_bias=None, scaling_factor=1.0):
        _check_router(router_logits, top_k, scoring, num_groups, topk_groups, correction_bias)
        t = router_logits.shape[0]
        return (router_logits.new_empty((t, top_k), dtype=torch.int32),
                router_logits.new_empty((t, top_k), dtype=torch.float32))

    @torch.library.register_fake("moebal::dispatch_layout")
    def _dispatch_layout(topk_ids, num_experts, num_slots, log2phy=None, logcnt=None):
        _check_topk(topk_ids, None, topk_ids.device)
        _check_placement(log2phy, logcnt, num_experts, num_slots, topk_ids.device)
        t, k = topk_ids.shape
        return (topk_ids.new_empty((t, k)), topk_ids.new_empty((num_slots + 1,)),
                topk_ids.new_empty((t, k)), topk_ids.new_empty((t * k,)))

    @torch.library.register_fake("moebal::route_and_layout")
    def _route_and_layout(router_logits, top_k, num_slots, scoring="softmax", renormalize=True, num_groups=1,
                          topk_groups=1, correction_bias=None, scaling_factor=1.0, log2phy=None, logcnt=None,
                          path="auto"):
        e = _check_router(router_logits, top_k, scoring, num_groups, topk_groups, correction_bias)
        _check_placement(log2phy, logcnt, e, num_slots, router_logits.device)
        _check(path in ROUTE_LAYOUT_PATHS, lambda: f"moebal: path must be one of {ROUTE_LAYOUT_PATHS}, got '{path}'")
        t = router_logits.shape[0]
        ids = router_logits.new_empty((t, top_k), dtype=torch.int32)
        return (ids, router_logits.new_empty((t, top_k), dtype=torch.float32), ids.new_empty((t, top_k)),
                ids.new_empty((num_slots + 1,)), ids.new_empty((t, top_k)), ids.new_empty((t * top_k,)))

    @torch.library.register_fake("moebal::permute")
    def _permute(hidden, row_index):
        _check_hidden(hidden)
        _check_row_index(row_index, hidden.shape[0], hidden.device)
        return hidden.new_empty((hidden.shape[0] * row_index.shape[1], hidden.shape[1]))

    @torch.library.register_fake("moebal::unpermute_combine")
    def _unpermute_combine(expert_out, row_index, topk_weights, offsets):
        _check_hidden(expert_out, "expert_out")
        _check_tensor(row_index, "row_index", 2, torch.int32, expert_out.device)
        _check_tensor(topk_weights, "topk_weights", 2, torch.float32, expert_out.device)
        _check(topk_weights.shape == row_index.shape, "moebal: topk_weights shape must equal row_index shape")
        t, k = row_index.shape
        _check(expert_out.shape[0] == t * k, lambda: f"moebal: expert_out must have tokens * top_k = {t * k} rows")
        _check_tensor(offsets, "offsets", 1, torch.int32, expert_out.device)
        _check(offsets.shape[0] >= 2, "moebal: offsets must have num_slots + 1 >= 2 entries")
        return expert_out.new_empty((t, expert_out.shape[1]))

    @torch.library.register_fake("moebal::moe_forward")
    def _moe_forward(hidden, w13, w2, router_logits=None, topk_ids=None, topk_weights=None, top_k=0,
                     scoring="softmax", renormalize=True, num_groups=1, topk_groups=1, correction_bias=None,
                     scaling_factor=1.0, log2phy=None, logcnt=None):
        _check_hidden(hidden)
        h = hidden.shape[1]
        _check_tensor(w13, "w13", 3, torch.bfloat16, hidden.device)
        _check_tensor(w2, "w2", 3, torch.bfloat16, hidden.device)
        _check(w13.shape[2] == h and w13.shape[1] % 2 == 0 and w13.shape[1] > 0,
               lambda: f"moebal: w13 must be [slots, 2 * ffn, hidden={h}], got shape {tuple(w13.shape)}")
        ffn = w13.shape[1] // 2
        _check(tuple(w2.shape) == (w13.shape[0], h, ffn),
               lambda: f"moebal: w2 must be [slots, hidden, ffn], got shape {tuple(w2.shape)}")
        _check(h % 8 == 0 and ffn % 8 == 0, lambda: f"moebal: hidden ({h}) and ffn ({ffn}) must be multiples of 8")
        _check((router_logits is None) != (topk_ids is None),
               "moebal: moe_forward needs exactly one of router_logits or (topk_ids, topk_weights)")
        _check((topk_ids is None) == (topk_weights is None), "moebal: topk_ids and topk_weights must be given together")
        num_slots = w13.shape[0]
        e = log2phy.shape[0] if log2phy is not None else num_slots
        if router_logits is not None:
            _check(router_logits.device == hidden.device, "moebal: router_logits is on another device")
            e = _check_router(router_logits, top_k, scoring, num_groups, topk_groups, correction_bias)
            _check(router_logits.shape[0] == hidden.shape[0], "moebal: router_logits rows must equal hidden tokens")
        else:
            _check_topk(topk_ids, topk_weights, hidden.device)
            _check(topk_ids.shape[0] == hidden.shape[0], "moebal: topk_ids rows must equal hidden tokens")
            _check(top_k == 0 or top_k == topk_ids.shape[1], "moebal: top_k disagrees with topk_ids")
        _check_placement(log2phy, logcnt, e, num_slots, hidden.device)
        return torch.empty_like(hidden)


def router_topk(router_logits: torch.Tensor, top_k: int, *, scoring: str = "softmax", renormalize: bool = True,
                num_groups: int = 1, topk_groups: int = 1, correction_bias: Optional[torch.Tensor] = None,
                scaling_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing -> (topk_ids int32 [T, k], topk_weights float32 [T, k]); ties to the lower id."""
    _ops.load_library()
    return torch.ops.moebal.router_topk(router_logits, top_k, scoring, renormalize, num_groups, topk_groups,
                                        correction_bias, scaling_factor)


def dispatch_layout(topk_ids: torch.Tensor, num_experts: int, num_slots: Optional[int] = None,
                    log2phy: Optional[torch.Tensor] = None, logcnt: Optional[torch.Tensor] = None):
    """(slot_ids [T, k], offsets [num_slots + 1], row_index [T, k], sorted_token [T * k])."""
    _ops.load_library()
    if num_slots is None:
        num_slots = num_experts
    return torch.ops.moebal.dispatch_layout(topk_ids, num_experts, num_slots, log2phy, logcnt)


def route_and_layout(router_logits: torch.Tensor, top_k: int, num_slots: Optional[int] = None, *,
                     scoring: str = "softmax", renormalize: bool = True, num_groups: int = 1, topk_groups: int = 1,
                     correction_bias: Optional[torch.Tensor] = None, scaling_factor: float = 1.0,
                     log2phy: Optional[torch.Tensor] = None, logcnt: Optional[torch.Tensor] = None,
                     path: str = "auto"):
    """router_topk then dispatch_layout (one launch at decode sizes on CUDA, identical outputs) ->
    (topk_ids, topk_weights, slot_ids, offsets, row_index, sorted_token). ``path`` forces a CUDA
    path for benchmarking ("two_kernels", "one_block", "cluster", "grid"); every path gives the same outputs."""
    _ops.load_library()
    if num_slots is None:
        _check(log2phy is None, "moebal: route_and_layout with a placement needs num_slots")
        num_slots = router_logits.shape[-1]
    return torch.ops.moebal.route_and_layout(router_logits, top_k, num_slots, scoring, renormalize, num_groups,
                                             topk_groups, correction_bias, scaling_factor, log2phy, logcnt, path)


def permute(hidden: torch.Tensor, row_index: torch.Tensor) -> torch.Tensor:
    """Slot-sorted rows: out[row_index[t, j]] = hidden[t]."""
    _ops.load_library()
    return torch.ops.moebal.permute(hidden, row_index)


def unpermute_combine(expert_out: torch.Tensor, row_index: torch.Tensor, topk_weights: torch.Tensor,
                      offsets: torch.Tensor) -> torch.Tensor:
    """out[t] = sum_j topk_weights[t, j] * expert_out[row_index[t, j]] (valid rows only), bf16."""
    _ops.load_library()
    return torch.ops.moebal.unpermute_combine(expert_out, row_index, topk_weights, offsets)


def moe_forward(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, *,
                router_logits: Optional[torch.Tensor] = None, topk_ids: Optional[torch.Tensor] = None,
                topk_weights: Optional[torch.Tensor] = None, top_k: int = 0, scoring: str = "softmax",
                renormalize: bool = True, num_groups: int = 1, topk_groups: int = 1,
                correction_bias: Optional[torch.Tensor] = None, scaling_factor: float = 1.0,
                log2phy: Optional[torch.Tensor] = None, logcnt: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The whole MoE layer (see docs/dataplane.md); CUDA-graph capturable on CUDA."""
    _ops.load_library()
    return torch.ops.moebal.moe_forward(hidden, w13, w2, router_logits, topk_ids, topk_weights, top_k, scoring,
                                        renormalize, num_groups, topk_groups, correction_bias, scaling_factor,
                                        log2phy, logcnt)
