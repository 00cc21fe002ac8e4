"""moebal: load balancing for Mixture-of-Experts inference.

The C++ core (``moebal._core``) holds the data model, solvers and metrics and imports without
torch. Torch ops (``torch.ops.moebal.*``, wrapped in :mod:`moebal.ops`) load on first use.
"""
from __future__ import annotations

from moebal._core import (  # noqa: F401  (re-exported data model)
    ExpertShape,
    LoadMatrix,
    MoebalError,
    MoebalValueError,
    PerfModel,
    Placement,
    RoutingTrace,
    Topology,
    __version__,
    gpu_loads,
    layer_imbalance,
    sum_step_loads,
)
from moebal.trace import load_trace, save_trace  # noqa: F401

__all__ = [
    "ExpertShape", "LoadMatrix", "MoebalError", "MoebalValueError", "PerfModel", "Placement",
    "RoutingTrace", "Topology", "__version__", "capabilities", "gpu_loads", "layer_imbalance",
    "load_trace", "save_trace", "sum_step_loads",
]


def capabilities() -> dict:
    """What this installation can do: compiled features of the core and the torch ops, and devices.

    Keys: ``version``, ``core`` (build info of the C++ core: cuda, nccl, cutlass, cuda_archs, ...),
    ``torch`` (torch version or None), ``ops`` (whether the torch op library loaded),
    ``ops_cuda`` (whether CUDA kernels were compiled into it), ``cuda_devices`` (visible GPUs),
    ``device_name`` (first GPU, or None).
    """
    from moebal import _core

    caps = {"version": __version__, "core": dict(_core.build_info()), "torch": None, "ops": False,
            "ops_cuda": False, "ops_error": None, "cuda_devices": 0, "device_name": None}
    try:
        import torch
    except ImportError:
        caps["ops_error"] = "torch is not installed"
        return caps
    caps["torch"] = torch.__version__
    try:
        from moebal import ops

        ops.load_library()
        caps["ops"] = True
        caps["ops_cuda"] = ops.has_cuda_kernels()
    except Exception as e:  # report, never raise: this is a diagnostic
        caps["ops_error"] = f"{type(e).__name__}: {e}"
    if torch.cuda.is_available():
        caps["cuda_devices"] = torch.cuda.device_count()
        caps["device_name"] = torch.cuda.get_device_name(0)
    return caps
