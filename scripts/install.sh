#!/usr/bin/env bash
# Build and install the moebal Python package into the venv made by scripts/setup.sh.
# CUDA kernels go into the torch op library only when the venv's torch is a CUDA build, so a CPU
# torch gets a CPU-only package build (the C++ build of scripts/test.sh still compiles all CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${MOEBAL_VENV:-.venv}/bin/python"
if [ -z "${MOEBAL_CUDA:-}" ]; then
  if "$py" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"; then
    export MOEBAL_CUDA=AUTO
  else
    export MOEBAL_CUDA=OFF
  fi
fi
"$py" -m pip install -q --no-build-isolation --no-deps .
