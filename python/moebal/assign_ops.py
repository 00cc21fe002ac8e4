"""Torch op ``torch.ops.moebal.assign_replicas``: its typed wrapper and fake kernel.

The op is declared in C++ (bindings/torch/assign.cpp, CPU reference) with a CUDA kernel
(bindings/torch/assign_cuda.cpp -> moebal_cuda). The CUDA kernel never synchronises the host and is
CUDA-graph capturable; it therefore cannot raise on bad *values*: ids >= num_experts or source ranks
outside [0, num_gpus) give slot -1 there, while the CPU kernel raises. Shapes, dtypes and devices
are checked on both (and here, for torch.compile).
"""
from __future__ import annotations

import torch

_POLICIES = ("round_robin", "hash", "locality", "quota", "weighted_locality")


def _check(name: str, x: torch.Tensor, dim: int, ref: torch.Tensor) -> None:
    torch._check_value(x.dtype == torch.int32, lambda: f"moebal.assign_replicas: {name} must be int32, got {x.dtype}")
    torch._check_value(x.dim() == dim, lambda: f"moebal.assign_replicas: {name} must be {dim}-d, got shape {tuple(x.shape)}")
    torch._check_value(x.device == ref.device,
                       lambda: f"moebal.assign_replicas: {name} is on {x.device} but topk_ids is on {ref.device}")
    torch._check_value(x.is_contiguous(), lambda: f"moebal.assign_replicas: {name} must be contiguous")


def _check_args(topk_ids, src_rank, log2phy, logcnt, num_gpus, num_nodes, num_slots, policy, quota, slot_weights):
    torch._check_value(policy in _POLICIES, lambda: f"moebal.assign_replicas: unknown policy '{policy}'; expected one of {', '.join(_POLICIES)}")
    _check("topk_ids", topk_ids, 2, topk_ids)
    _check("src_rank", src_rank, 1, topk_ids)
    _check("log2phy", log2phy, 2, topk_ids)
    _check("logcnt", logcnt, 1, topk_ids)
    T, E = topk_ids.shape[0], log2phy.shape[0]
    torch._check_value(topk_ids.shape[1] >= 1, lambda: "moebal.assign_replicas: topk_ids must have top_k >= 1 columns")
    torch._check_value(src_rank.shape[0] == T, lambda: f"moebal.assign_replicas: src_rank has {src_rank.shape[0]} entries but topk_ids has {T} tokens")
    torch._check_value(E >= 1 and log2phy.shape[1] >= 1, lambda: "moebal.assign_replicas: log2phy must be [num_experts, max_copies] with both >= 1")
    torch._check_value(logcnt.shape[0] == E, lambda: f"moebal.assign_replicas: logcnt has {logcnt.shape[0]} entries but log2phy has {E} experts")
    torch._check_value(num_gpus >= 1 and num_nodes >= 1 and num_gpus % num_nodes == 0 and num_gpus <= 2**16,
                       lambda: f"moebal.assign_replicas: num_gpus ({num_gpus}) must be >= 1 and divisible by num_nodes ({num_nodes})")
    torch._check_value(num_slots >= E and num_slots % num_gpus == 0 and num_slots < 2**30,
                       lambda: f"moebal.assign_replicas: num_slots ({num_slots}) must be >= num_experts ({E}) and divisible by num_gpus ({num_gpus})")
    if policy == "quota":
        torch._check_value(quota is not None, lambda: "moebal.assign_replicas: policy 'quota' needs quota [num_gpus, num_experts, num_gpus]")
    if quota is not None:
        _check("quota", quota, 3, topk_ids)
        torch._check_value(tuple(quota.shape) == (num_gpus, E, num_gpus),
                           lambda: f"moebal.assign_replicas: quota must have shape [{num_gpus}, {E}, {num_gpus}], got {list(quota.shape)}")
    if slot_weights is not None:
        _check("slot_weights", slot_weights, 1, topk_ids)
        torch._check_value(slot_weights.shape[0] == num_slots,
                           lambda: f"moebal.assign_replicas: slot_weights must have num_slots={num_slots} entries, got {slot_weights.shape[0]}")


def register_fakes() -> None:
    @torch.library.register_fake("moebal::assign_replicas")
    def _(topk_ids, src_rank, log2phy, logcnt, num_gpus, num_nodes, num_slots, policy, quota=None, slot_weights=None):
        _check_args(topk_ids, src_rank, log2phy, logcnt, num_gpus, num_nodes, num_slots, policy, quota, slot_weights)
        return torch.empty_like(topk_ids)


def assign_replicas(topk_ids: torch.Tensor, src_rank: torch.Tensor, log2phy: torch.Tensor, logcnt: torch.Tensor, *,
                    num_gpus: int, num_nodes: int, num_slots: int, policy: str = "weighted_locality",
                    quota: torch.Tensor | None = None, slot_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Physical slot (int32 [T, K]) serving each (token, k) of ``topk_ids`` [T, K].

    ``src_rank`` [T]: GPU each token lives on. ``log2phy`` [E, C] / ``logcnt`` [E]: one layer of a
    :class:`moebal.Placement`. ``policy``: round_robin | hash | locality | quota | weighted_locality.
    ``quota`` [G, E, G] int32 (quota policy), ``slot_weights`` [S] int32 in [1, 2^20]
    (weighted_locality; None = equal). Negative ids are padding and give -1. CPU and CUDA kernels
    give identical results on valid input.
    """
    from moebal.ops import load_library

    load_library()
    return torch.ops.moebal.assign_replicas(topk_ids, src_rank, log2phy, logcnt, num_gpus, num_nodes, num_slots,
                                            policy, quota, slot_weights)


def placement_tensors(placement, layer: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(log2phy [E, C], logcnt [E]) int32 tensors of one layer of a :class:`moebal.Placement`."""
    return (torch.from_numpy(placement.log2phy[layer].copy()).to(device),
            torch.from_numpy(placement.logcnt[layer].copy()).to(device))
