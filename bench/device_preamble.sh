# Sourced by the bench/device_*.sh passes: OUT (required) becomes $out, the build environment for
# sm_90a, a `stamp` helper that prints elapsed seconds, and the card and date into $out/device.txt.
set -uo pipefail
out=${OUT:?set OUT}
mkdir -p "$out"
export MOEBAL_CUDA_ARCHS=90a PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
status=0
t0=$(date +%s)
stamp() { echo "=== $* (+$(($(date +%s) - t0)) s)"; }
stamp device
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
date -u | tee -a "$out/device.txt"
