"""Grouped expert GEMM and expert FFN ops: typed wrappers and fake (meta) kernels.

``torch.ops.moebal.grouped_gemm`` / ``expert_ffn`` are declared in bindings/torch/grouped_gemm.cpp
with CPU reference kernels (fp32 loops) and, on CUDA builds, CUDA kernels (CUTLASS grouped GEMMs
on H100; "skinny" (mma.sync) and "gemv" (CUDA-core) decode kernels on any sm_80+ GPU, both
with SiLU(gate) * up fused into the gate/up GEMM of ``expert_ffn``; a portable WMMA
kernel otherwise; ``pick_grouped_gemm_kernel`` in include/moebal/cuda/grouped_gemm.h says which
one ``"auto"`` runs). The fakes below mirror the C++ checks.

Offsets contract: int32 ``[num_groups + 1]`` on the device of ``x``, ``offsets[0] == 0``,
non-decreasing, ``offsets[-1] == x.shape[0]``; the rows of group ``g`` are
``x[offsets[g]:offsets[g+1]]``. The CPU kernel raises on a malformed array. The CUDA kernel cannot
check it without a host synchronisation: it clamps the entries into ``[0, rows]`` (no
out-of-bounds access), and rows of a malformed array come out wrong or unwritten.
"""
from __future__ import annotations

import torch

from moebal.ops import load_library

#: Values of the ``kernel`` argument of :func:`grouped_gemm`.
KERNELS = {"auto": 0, "portable": 1, "hopper_small_m": 2, "hopper_large_m": 3, "hopper_medium_m": 4, "skinny": 5,
           "gemv": 6, "hopper_split": 7}


def _check_kernel(kernel: int) -> None:
    torch._check_value(0 <= kernel <= 7, lambda: f"moebal: kernel must be in [0, 7], got {kernel}")


def _kernel_id(kernel: str) -> int:
    if kernel not in KERNELS:  # a plain check: torch.compile traces it as a constant
        raise ValueError(f"moebal: unknown kernel {kernel!r}; one of {sorted(KERNELS)}")
    return KERNELS[kernel]


def _check_matrix(t: torch.Tensor, name: str, dims: int) -> None:
    torch._check_value(t.dtype == torch.bfloat16, lambda: f"moebal: {name} must be bfloat16, got {t.dtype}")
    torch._check_value(t.dim() == dims, lambda: f"moebal: {name} must be {dims}-D, got shape {tuple(t.shape)}")
    torch._check_value(t.is_contiguous(), lambda: f"moebal: {name} must be contiguous")


def _check_grouped_gemm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, w_name: str = "w") -> None:
    _check_matrix(x, "x", 2)
    _check_matrix(w, w_name, 3)
    for t, name in ((w, w_name), (offsets, "offsets")):
        torch._check_value(t.device == x.device, lambda: f"moebal: {name} is on {t.device} but x is on {x.device}")
    groups, n, k = w.shape
    torch._check_value(groups >= 1, lambda: f"moebal: {w_name} must hold at least one group, got shape {tuple(w.shape)}")
    torch._check_value(x.shape[1] == k, lambda: f"moebal: x has {x.shape[1]} columns but {w_name} has k = {k}")
    torch._check_value(n > 0 and n % 8 == 0 and k > 0 and k % 8 == 0,
                       lambda: f"moebal: n and k must be positive multiples of 8, got n = {n}, k = {k}")
    torch._check_value(offsets.dtype == torch.int32, lambda: f"moebal: offsets must be int32, got {offsets.dtype}")
    torch._check_value(offsets.dim() == 1 and offsets.shape[0] == groups + 1,
                       lambda: f"moebal: offsets must be 1-D with {groups + 1} entries (groups + 1), got shape "
                               f"{tuple(offsets.shape)}")
    torch._check_value(offsets.is_contiguous(), lambda: "moebal: offsets must be contiguous")


def _check_expert_ffn(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, offsets: torch.Tensor) -> None:
    _check_grouped_gemm(x, w13, offsets, "w13")
    _check_matrix(w2, "w2", 3)
    torch._check_value(w2.device == x.device, lambda: f"moebal: w2 is on {w2.device} but x is on {x.device}")
    groups, two_ffn, hidden = w13.shape
    torch._check_value(two_ffn % 16 == 0,
                       lambda: f"moebal: w13 must be [groups, 2 * ffn, hidden] with ffn a multiple of 8, got {tuple(w13.shape)}")
    ffn = two_ffn // 2
    torch._check_value(tuple(w2.shape) == (groups, hidden, ffn),
                       lambda: f"moebal: w2 must be [{groups}, {hidden}, {ffn}] (groups, hidden, ffn), got {tuple(w2.shape)}")


def register_fakes() -> None:
    @torch.library.register_fake("moebal::grouped_gemm")
    def _(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, kernel: int = 0) -> torch.Tensor:
        _check_grouped_gemm(x, w, offsets)
        _check_kernel(kernel)
        return x.new_empty((x.shape[0], w.shape[1]))

    @torch.library.register_fake("moebal::expert_ffn")
    def _(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, offsets: torch.Tensor, kernel: int = 0) -> torch.Tensor:
        _check_expert_ffn(x, w13, w2, offsets)
        _check_kernel(kernel)
        return x.new_empty(x.shape)


def grouped_gemm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, kernel: str = "auto") -> torch.Tensor:
    """``y[r] = x[r] @ w[g].T`` for the rows of each group (bf16 in/out, fp32 accumulation).

    x: bf16 ``[rows, k]``; w: bf16 ``[groups, n, k]``; offsets: int32 ``[groups + 1]`` (see the
    module docstring). ``kernel`` forces a CUDA kernel (a key of :data:`KERNELS`).
    """
    load_library()
    return torch.ops.moebal.grouped_gemm(x, w, offsets, _kernel_id(kernel))


def expert_ffn(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, offsets: torch.Tensor,
               kernel: str = "auto") -> torch.Tensor:
    """Per-group SwiGLU expert: ``(silu(x @ W1.T) * (x @ W3.T)) @ W2.T``.

    w13: bf16 ``[groups, 2 * ffn, hidden]`` (gate rows first, then up); w2: bf16 ``[groups, hidden, ffn]``.
    ``kernel`` forces the CUDA GEMM kernel of both projections: ``"skinny"`` and ``"gemv"`` run the
    gate/up GEMM with SiLU(gate) * up fused into its epilogue (two launches); any other choice runs three
    GEMMs (gate, up with SiLU(gate) * up in its epilogue, down) or GEMM, SiLU * up, GEMM, whichever measured
    faster for the shape (docs/gemm.md). ``"auto"`` picks as :func:`grouped_gemm` does.
    """
    load_library()
    return torch.ops.moebal.expert_ffn(x, w13, w2, offsets, _kernel_id(kernel))
