#!/usr/bin/env bash
# Run the Flower app as a local Ray simulation through `flwr run`.
#   scripts/simulate.sh [NUM_CLIENTS] [--verbose] [extra `flwr run` options, e.g. --run-config "strategy='ef21' server-lr=0.5"]
# NUM_CLIENTS virtual SuperNodes (default 10) with client-resources-num-cpus=1
# (FL_DP_CLIENT_GPUS > 0 adds client-resources-num-gpus). Prints one line a round; --verbose adds
# Flower's and Ray's own lines (always in results/<run>/flower.log).
# Results: results/<run-name or strategy>.csv and .png
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/flwr_env.sh
leading_count scripts/simulate.sh clients 10 "$@"
num_clients="$COUNT"
[ "$COUNT_GIVEN" = 0 ] || shift
env_matches scripts/simulate.sh FL_DP_CLIENT_GPUS '^([0-9]+(\.[0-9]*)?|\.[0-9]+)$' "a number of GPUs >= 0 (e.g. 0.25)"
flwr_args=()
verbose=false
for arg in "$@"; do
  if [ "$arg" = "--verbose" ]; then verbose=true; else flwr_args+=("$arg"); fi
done
# flwr keeps its connections and a detached simulation SuperLink under FLWR_HOME
export FLWR_HOME="${FLWR_HOME:-$PWD/.flwr-home}"
# Ray's socket paths must stay under 107 bytes: keep its temp dir short
export RAY_TMPDIR="${RAY_TMPDIR:-/tmp/fl-dp-ray}"
mkdir -p "$FLWR_HOME" "$RAY_TMPDIR" results
# A reply (the message and the client's state in its Context) above Ray's 100 KiB inline limit
# goes through the object store: 6 ms instead of 3 ms per round trip here (benchmarks/simulation.py)
export RAY_max_direct_call_object_size="${RAY_max_direct_call_object_size:-1048576}"

federation="num-supernodes=$num_clients client-resources-num-cpus=1"
if [ "${FL_DP_CLIENT_GPUS:-0}" != "0" ]; then
  federation="$federation client-resources-num-gpus=$FL_DP_CLIENT_GPUS"
fi

# `flwr run` starts a detached simulation SuperLink that keeps running. Stop only the one this
# script's run started: it logs to $FLWR_HOME/local-superlink/superlink.log, and was not running
# before. Another user's SuperLink (another FLWR_HOME) or an earlier one is left alone.
superlink_pids() {
  local pid
  for pid in $(pgrep -f "flower-superlink" 2>/dev/null); do
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--log-file $FLWR_HOME/local-superlink/superlink.log"; then
      echo "$pid"
    fi
  done
}
already_running=" $(superlink_pids | tr '\n' ' ') "
descendants() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do
    echo "$child"
    descendants "$child"
  done
}
# A run cut short (Ctrl-C) leaves the SuperLink's simulation process and its Ray cluster running;
# they are found as the SuperLink's descendants before it stops (then they belong to init).
stop_superlink() {
  local pid i tree
  for pid in $(superlink_pids); do
    case "$already_running" in *" $pid "*) continue ;; esac
    tree="$(descendants "$pid" | tr '\n' ' ')"
    kill "$pid" 2>/dev/null || continue
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    [ -n "${tree// /}" ] || continue
    # shellcheck disable=SC2086 # one pid a word
    kill $tree 2>/dev/null || true
    for i in $(seq 25); do kill -0 $tree 2>/dev/null || break; sleep 0.2; done
    # shellcheck disable=SC2086
    kill -9 $tree 2>/dev/null || true
  done
}
trap stop_superlink EXIT

flwr_run_checked . \
  --federation-config "$federation" \
  --run-config "num-clients=$num_clients clients-per-round=$num_clients results-dir='$PWD/results' verbose=$verbose" \
  "${flwr_args[@]}"
