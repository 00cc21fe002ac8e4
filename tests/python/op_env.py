"""Shared by the torch-op test modules: is moebal's op library usable, and are its CUDA kernels?"""
from __future__ import annotations


def op_env() -> tuple[bool, bool]:
    """(ops loaded, CUDA kernels usable on a visible GPU). Call after pytest.importorskip("torch")."""
    import torch

    from moebal import ops

    try:
        ops.load_library()
    except ImportError:  # built without torch
        return False, False
    return True, bool(torch.cuda.is_available() and ops.has_cuda_kernels())
