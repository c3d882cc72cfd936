#!/usr/bin/env bash
# Install (idempotent), lint and type-check the package, and run the whole test suite.
# pytest's exit 5 (no test collected) is a failure here.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh || exit 1
venv="${FL_DP_VENV:-.venv}"
export FLWR_TELEMETRY_ENABLED=0
# ruff (lint + format) and mypy on the library and its Flower adapters, as configured in pyproject.toml
"$venv/bin/ruff" check fl_dp strategies clients || exit 1
"$venv/bin/ruff" format --check fl_dp strategies clients || exit 1
"$venv/bin/mypy" || exit 1
"$venv/bin/python" -m pytest -q "$@"
status=$?
if [ "$status" = "5" ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
