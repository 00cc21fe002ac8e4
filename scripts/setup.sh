#!/usr/bin/env bash
# Prepare a machine for building and testing moebal. Idempotent.
#   - Python: a virtual environment at $MOEBAL_VENV (default .venv) with torch, numpy, pybind11,
#     scikit-build-core, pytest, matplotlib, and the NVIDIA NCCL / CUTLASS header wheels.
#     torch: an importable torch is kept; otherwise $MOEBAL_TORCH_SPEC (default torch==2.13.0).
#   - System (only with --system, needs root + apt): cmake, ninja, googletest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MOEBAL_VENV:-.venv}
if [ "${1:-}" = "--system" ]; then
  if ! { [ -f /usr/lib/x86_64-linux-gnu/libgtest.a ] || [ -d /usr/src/googletest ]; } || ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgtest-dev cmake ninja-build >/dev/null
    else
      echo "setup: need cmake, ninja and googletest (apt-get install libgtest-dev cmake ninja-build)" >&2
      exit 1
    fi
  fi
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$py" -c "import torch" >/dev/null 2>&1; then
  "$py" -m pip install -q "${MOEBAL_TORCH_SPEC:-torch==2.13.0}"
fi
"$py" -m pip install -q numpy pybind11 "scikit-build-core>=0.10" pytest matplotlib ninja nvidia-nccl-cu13 nvidia-cutlass
echo "setup: $("$py" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__)') in $venv"
