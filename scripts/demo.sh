#!/usr/bin/env bash
# One command from a fresh clone: set up, install, and run `moebal demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install.sh
exec "${MOEBAL_VENV:-.venv}/bin/moebal" demo "$@"
