#!/usr/bin/env bash
# Run the Flower app as a local Ray simulation through `flwr run`.
#   scripts/simulate.sh [NUM_CLIENTS] [extra `flwr run` options, e.g. --run-config "strategy='ef21' server-lr=0.5"]
# NUM_CLIENTS virtual SuperNodes (default 10) with client-resources-num-cpus=1
# (FL_DP_CLIENT_GPUS > 0 adds client-resources-num-gpus). Results: results/<run-name or strategy>.csv
set -euo pipefail
cd "$(dirname "$0")/.."
num_clients="${1:-10}"
shift || true
venv="$(realpath "${FL_DP_VENV:-.venv}")"
export PATH="$venv/bin:$PATH"
# flwr keeps its connections and a detached simulation SuperLink under FLWR_HOME
export FLWR_HOME="${FLWR_HOME:-$PWD/.flwr-home}"
# Ray's socket paths must stay under 107 bytes: keep its temp dir short
export RAY_TMPDIR="${RAY_TMPDIR:-/tmp/fl-dp-ray}"
export FLWR_TELEMETRY_ENABLED=0
# the SuperLink would otherwise install [project].dependencies per run (needs the network)
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export PYTHONUNBUFFERED=1
mkdir -p "$FLWR_HOME" "$RAY_TMPDIR" results

federation="num-supernodes=$num_clients client-resources-num-cpus=1"
if [ "${FL_DP_CLIENT_GPUS:-0}" != "0" ]; then
  federation="$federation client-resources-num-gpus=$FL_DP_CLIENT_GPUS"
fi

stop_superlink() {
  # `flwr run` leaves a detached simulation SuperLink behind; stop the one it started for us
  pkill -f "flower-superlink.*--simulation" 2>/dev/null || true
}
trap stop_superlink EXIT

log="$(mktemp)"
flwr run . --stream \
  --federation-config "$federation" \
  --run-config "num-clients=$num_clients results-dir='$PWD/results'" \
  "$@" 2>&1 | tee "$log"

# `flwr run` exits 0 even when the run failed: ask the SuperLink for the run's final status.
run_id="$(grep -o 'run_id `[0-9]*`' "$log" | head -n 1 | tr -dc '0-9')"
rm -f "$log"
if [ -z "$run_id" ]; then
  echo "simulate.sh: flwr run did not start a run" >&2
  exit 1
fi
flwr ls --run-id "$run_id" --format json | "$venv/bin/python" scripts/check_run_status.py
