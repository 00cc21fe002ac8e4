"""Typed wrappers of the ``torch.ops.moebal`` ops, and their fake (meta) kernels.

The ops are declared once in C++ (bindings/torch/ops.cpp) with CPU and, on CUDA builds, CUDA
kernels. The fake kernels here mirror the C++ checks so ``torch.compile`` and ``opcheck`` see the
same errors and shapes.
"""
from __future__ import annotations

import os
import threading

import torch

_lock = threading.Lock()
_loaded = False


def _library_path() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(os.listdir(here)):
        if name.startswith("_ops") and name.endswith(".so"):
            return os.path.join(here, name)
    raise ImportError(
        "moebal torch ops are not built: reinstall moebal with torch importable "
        "(pip install --no-build-isolation .) and MOEBAL_TORCH not OFF")


# Python modules that register fake kernels for their ops (each defines register_fakes()).
# A component adds its module name here.
_FAKE_MODULES: tuple[str, ...] = ("moebal.predictor_ops", "moebal.probe_ops", "moebal.gemm_ops", "moebal.moe_ops", "moebal.assign_ops",)


def load_library() -> None:
    """Load the op library and register the fake kernels (idempotent, thread-safe)."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        torch.ops.load_library(_library_path())
        _register_fakes()
        import importlib

        for name in _FAKE_MODULES:
            importlib.import_module(name).register_fakes()
        _loaded = True


def has_cuda_kernels() -> bool:
    """Whether the op library carries CUDA kernels (a CUDA build of moebal against CUDA torch)."""
    load_library()
    return torch._C._dispatch_has_kernel_for_dispatch_key("moebal::expert_histogram", "CUDA")


def _check_topk_ids(topk_ids: torch.Tensor, num_experts: int) -> None:
    torch._check_value(topk_ids.dtype == torch.int32, lambda: f"moebal: topk_ids must be int32, got {topk_ids.dtype}")
    torch._check_value(topk_ids.is_contiguous(), lambda: "moebal: topk_ids must be contiguous")
    torch._check_value(0 < num_experts <= 2**30, lambda: f"moebal: num_experts must be in [1, 2^30], got {num_experts}")


def _register_fakes() -> None:
    @torch.library.register_fake("moebal::expert_histogram")
    def _(topk_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
        _check_topk_ids(topk_ids, num_experts)
        return topk_ids.new_empty((num_experts,), dtype=torch.int32)


def expert_histogram(topk_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Tokens routed to each expert: int32 [num_experts] from int32 ``topk_ids`` of any shape.

    Negative ids are padding and skipped. On CPU an id >= num_experts raises; on CUDA such ids are
    skipped (checking would need a host synchronisation).
    """
    load_library()
    return torch.ops.moebal.expert_histogram(topk_ids, num_experts)
