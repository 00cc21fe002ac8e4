#!/usr/bin/env bash
# One command from a fresh clone: set up, build, and run every test.
#   C++: googletest suites through ctest (CUDA suites skip without a GPU), every CUDA source
#        compiled when nvcc is found, the C++ consumer example built against an installed moebal.
#   Python: the package installed into the venv, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${MOEBAL_JOBS:-$(nproc)}
bash scripts/setup.sh --system
py="${MOEBAL_VENV:-.venv}/bin/python"
export Python3_EXECUTABLE="$py"

echo "=== layering"
bash scripts/check_layering.sh

echo "=== C++ build (moebal_core, moebal_cuda when nvcc is found, tests, benches)"
cmake -S . -B build/test -G Ninja -DPython3_EXECUTABLE="$py" -DMOEBAL_BUILD_TESTS=ON -DMOEBAL_BUILD_BENCH=ON \
      -DCMAKE_INSTALL_PREFIX="$PWD/build/test-install"
cmake --build build/test -j "$jobs"

echo "=== ctest"
ctest --test-dir build/test --output-on-failure -j "$jobs"

echo "=== C++ consumer example (find_package(moebal))"
cmake --install build/test >/dev/null
cmake -S examples/cpp -B build/example -G Ninja -DCMAKE_PREFIX_PATH="$PWD/build/test-install"
cmake --build build/example
./build/example/moebal_example

echo "=== Python package"
bash scripts/install.sh

echo "=== pytest"
set +e
(cd build && "../$py" -m pytest -q -rs ../tests/python)
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit $rc
