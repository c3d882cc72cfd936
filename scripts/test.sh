#!/usr/bin/env bash
# Install (idempotent) and run the whole test suite. pytest's exit 5 (no test collected) is a failure here.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh || exit 1
venv="${FL_DP_VENV:-.venv}"
export FLWR_TELEMETRY_ENABLED=0
"$venv/bin/python" -m pytest -q "$@"
status=$?
if [ "$status" = "5" ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
