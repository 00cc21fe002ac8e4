"""PNG plots of per-GPU load (matplotlib, Agg backend; imported only when plotting)."""
from __future__ import annotations

import os

import numpy as np


def plot_gpu_loads(path: str | os.PathLike, title: str, layer_names: list[str],
                   gpu_load_by_policy: dict[str, np.ndarray], ir_by_policy: dict[str, np.ndarray]) -> None:
    """Two panels: per-GPU load (normalised to the mean) of each policy in the layer the first policy
    (the baseline) balances worst, and the per-layer imbalance ratio of each policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.6))
    names = list(gpu_load_by_policy)
    first = names[0]
    worst = int(np.argmax(ir_by_policy[first]))  # the layer the first (baseline) policy balances worst
    num_gpus = gpu_load_by_policy[first].shape[1]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        row = gpu_load_by_policy[name][worst]
        ax1.bar(np.arange(num_gpus) + i * width - 0.4 + width / 2, row / max(row.mean(), 1e-12), width,
                label=f"{name} (IR {ir_by_policy[name][worst]:.2f})")
    ax1.axhline(1.0, color="k", lw=0.8, ls="--")
    ax1.set_xticks(np.arange(num_gpus))
    ax1.set_xlabel("GPU")
    ax1.set_ylabel("tokens / mean tokens per GPU")
    ax1.set_title(f"Per-GPU load in {layer_names[worst]} (worst layer under {first})")
    ax1.legend(fontsize=8)
    for name in names:
        ax2.plot(np.arange(len(layer_names)), ir_by_policy[name], marker="o", label=name)
    ax2.axhline(1.0, color="k", lw=0.8, ls="--")
    ax2.set_xticks(np.arange(len(layer_names)))
    ax2.set_xticklabels(layer_names, fontsize=8)
    ax2.set_xlabel("MoE layer")
    ax2.set_ylabel("imbalance ratio (max / mean GPU load)")
    ax2.set_title("Per-layer imbalance")
    ax2.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
