#!/usr/bin/env bash
# The layering rule of STYLE.md: the core and CUDA layers never include torch, ATen, c10, pybind11
# or Python; the pybind11 module never includes torch.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=$(grep -rnE '#\s*include\s*[<"](torch/|ATen/|c10/|pybind11/|Python\.h)' include cpp cuda || true)
bad+=$(grep -rnE '#\s*include\s*[<"](torch/|ATen/|c10/)' bindings/python || true)
if [ -n "$bad" ]; then
  echo "layering rule broken:"
  echo "$bad"
  exit 1
fi
echo "layering: ok (no torch/pybind11/Python includes in include/ cpp/ cuda/; no torch in bindings/python)"
