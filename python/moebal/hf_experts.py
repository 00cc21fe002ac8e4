"""moebal's MoE data path inside Hugging Face transformers models.

transformers (5.x) runs the routed experts of its MoE models through a registry of "experts
implementations" (``transformers.integrations.moe.ALL_EXPERTS_FUNCTIONS``; a model picks one with
``from_pretrained(..., experts_implementation=...)`` or ``model.set_experts_implementation``).
:func:`register` adds ``"moebal"``: the experts then run as one :func:`moebal.moe_ops.moe_forward`
call on the router's top-k choice (dispatch layout, permute, the SiLU-gated grouped FFN, weighted
combine; CUTLASS grouped GEMM on Hopper, CPU reference loops on the CPU). The router, the shared
experts and everything else stay the model's own::

    import moebal.hf_experts as hfx
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda()
    hfx.enable(model)                      # checks every experts module, then switches
    model.generate(...)

Supported: experts modules with concatenated ``gate_up_proj [E, 2F, H]`` (gate rows first) and
``down_proj [E, H, F]`` in bfloat16, no biases, SiLU gating (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE,
DeepSeek-V2/V3 and the other families that share that layout). Anything else (GPT-OSS: biases,
interleaved and transposed weights, a clamped gate) is refused by :func:`enable` with the reason.
Expert ids >= the number of experts (transformers' expert-parallel sentinels) contribute nothing,
as in transformers' own implementations.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from moebal import moe_ops

NAME = "moebal"


def _transformers_moe():
    try:
        from transformers.integrations import moe
    except ImportError as e:  # transformers missing or too old for the experts interface
        raise ImportError("moebal.hf_experts needs transformers >= 5 (transformers.integrations.moe."
                          f"ALL_EXPERTS_FUNCTIONS): {e}") from e
    if not hasattr(moe, "ALL_EXPERTS_FUNCTIONS"):
        raise ImportError("moebal.hf_experts needs transformers >= 5: this transformers has no experts interface")
    return moe


def unsupported_reason(module: torch.nn.Module) -> Optional[str]:
    """Why moebal cannot run this experts module (None when it can)."""
    moe = _transformers_moe()
    name = type(module).__name__
    for attr in ("gate_up_proj", "down_proj", "num_experts"):
        if not hasattr(module, attr):
            return f"{name} has no {attr} (not a transformers experts module)"
    if getattr(module, "has_bias", False):
        return f"{name} has biases (moebal's expert FFN has none)"
    if not getattr(module, "has_gate", True):
        return f"{name} is not gated (moebal's expert FFN is SiLU(gate) * up)"
    if not getattr(module, "is_concatenated", True) or getattr(module, "is_transposed", False):
        return f"{name} stores its weights interleaved or transposed (moebal reads [E, 2F, H] and [E, H, F])"
    default_gate = getattr(moe, "_default_apply_gate", None)  # what the decorator installs
    if default_gate is not None and getattr(type(module), "_apply_gate", default_gate) is not default_gate:
        return f"{name} has its own gating function (moebal's expert FFN is SiLU(gate) * up)"
    act = getattr(module, "act_fn", None)
    if type(act).__name__ not in ("SiLUActivation", "SiLU"):
        return f"{name} uses activation {type(act).__name__} (moebal's expert FFN uses SiLU)"
    w13, w2 = module.gate_up_proj, module.down_proj
    if w13.dim() != 3 or w2.dim() != 3:
        return f"{name}: gate_up_proj and down_proj must be 3-D, got {tuple(w13.shape)} and {tuple(w2.shape)}"
    E, F2, H = w13.shape
    if E != module.num_experts or F2 % 2 or tuple(w2.shape) != (E, H, F2 // 2):
        return (f"{name}: gate_up_proj {tuple(w13.shape)} and down_proj {tuple(w2.shape)} are not "
                f"[E={module.num_experts}, 2F, H] and [E, H, F]")
    if w13.dtype != torch.bfloat16 or w2.dtype != torch.bfloat16:
        return f"{name} weights are {w13.dtype} / {w2.dtype}; moebal needs bfloat16 (load the model with dtype=torch.bfloat16)"
    if H % 8 or (F2 // 2) % 8:
        return f"{name}: hidden ({H}) and expert ffn ({F2 // 2}) must be multiples of 8"
    if w13.device != w2.device:
        return f"{name}: gate_up_proj is on {w13.device} but down_proj on {w2.device}"
    return None


def experts_forward(self: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
    """The ``"moebal"`` experts implementation: sum_j w[t, j] * FFN_{id[t, j]}(x[t]) for every token t."""
    # Static properties of the module, checked once per module in eager mode (a model switched to
    # "moebal" without enable() lands here); under torch.compile the check is skipped (enable()
    # made it, and moe_forward's own checks still run).
    if not torch.compiler.is_compiling() and not getattr(self, "_moebal_checked", False):
        reason = unsupported_reason(self)
        if reason is not None:
            raise ValueError(f"moebal experts: {reason}")
        self._moebal_checked = True
    H = self.gate_up_proj.shape[2]
    if hidden_states.shape[-1] != H:
        raise ValueError(f"moebal experts: hidden_states has {hidden_states.shape[-1]} features but the experts "
                         f"take {H}")
    x = hidden_states.reshape(-1, H)
    ids = top_k_index.reshape(x.shape[0], -1)
    if top_k_weights.numel() != ids.numel():
        raise ValueError(f"moebal experts: top_k_weights has {top_k_weights.numel()} values for {ids.numel()} "
                         "expert ids")
    # transformers' expert-parallel sentinels (ids >= num_experts) contribute nothing. moebal's CUDA
    # kernels drop such ids themselves (docs/dataplane.md); its CPU op raises on them, so there they
    # become -1 (padding, dropped).
    if ids.device.type != "cuda":
        ids = torch.where(ids < self.num_experts, ids, -1)
    ids = ids.to(torch.int32).contiguous()
    w = top_k_weights.reshape(ids.shape).to(torch.float32).contiguous()
    out = moe_ops.moe_forward(x.to(torch.bfloat16).contiguous(), self.gate_up_proj, self.down_proj,
                              topk_ids=ids, topk_weights=w)
    return out.to(hidden_states.dtype).reshape(hidden_states.shape)


def register() -> None:
    """Add ``"moebal"`` to transformers' experts implementations (idempotent)."""
    _transformers_moe().ALL_EXPERTS_FUNCTIONS.register(NAME, experts_forward)


def experts_modules(model: torch.nn.Module) -> List[torch.nn.Module]:
    """The experts modules of a model that go through transformers' experts interface (the
    ``use_experts_implementation`` decorator records the weight layout on each instance)."""
    return [m for m in model.modules() if hasattr(m, "is_concatenated") and hasattr(m, "has_gate")]


def enable(model: torch.nn.Module) -> torch.nn.Module:
    """Run every experts module of `model` through moebal; refuses (ValueError) if any cannot.

    Checks every module first, so a refused model is left unchanged. Returns the model.
    """
    register()
    mods = experts_modules(model)
    if not mods:
        raise ValueError(f"moebal experts: {type(model).__name__} has no experts module that uses transformers' "
                         "experts interface (use_experts_implementation)")
    reasons = sorted({r for r in (unsupported_reason(m) for m in mods) if r is not None})
    if reasons:
        raise ValueError("moebal experts: cannot run this model: " + "; ".join(reasons))
    if not hasattr(model, "set_experts_implementation"):
        raise ValueError(f"moebal experts: {type(model).__name__} is not a transformers PreTrainedModel "
                         "(no set_experts_implementation)")
    model.set_experts_implementation(NAME)
    return model
