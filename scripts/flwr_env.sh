# Sourced by simulate.sh and deploy.sh: the environment flwr needs here, and `flwr_run_checked`.
venv="$(realpath "${FL_DP_VENV:-.venv}")"
export PATH="$venv/bin:$PATH"
export FLWR_TELEMETRY_ENABLED=0
# the SuperLink would otherwise install [project].dependencies per run (needs the network)
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export PYTHONUNBUFFERED=1
# Ray's start prints a FutureWarning whose tip (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0) would let a
# client given no GPU see the GPUs, and device = "auto" then use one: keep Ray's behaviour, drop the tip
export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore::FutureWarning:ray._private.worker"

# leading_count SCRIPT WHAT DEFAULT ARGS...: sets COUNT to ARGS' first word where that is a whole number
# >= 1 (and COUNT_GIVEN=1), else to DEFAULT (COUNT_GIVEN=0); a first word that looks like a number
# but is not such a count (0, -3, 1.5, "") stops the script with a message naming it.
leading_count() {
  local script="$1" what="$2" default="$3"
  shift 3
  COUNT="$default"
  COUNT_GIVEN=0
  [ $# -gt 0 ] || return 0
  if [[ "$1" =~ ^[1-9][0-9]{0,5}$ ]]; then
    COUNT="$1"
    COUNT_GIVEN=1
  elif [ -z "$1" ] || [[ "$1" =~ ^[+-]?[0-9.]+([eE][+-]?[0-9]+)?$ ]]; then
    echo "$script: the number of $what must be a whole number from 1 to 999999, got '$1'" >&2
    exit 2
  fi
}

# env_matches SCRIPT NAME REGEX WHAT: stops the script with a message naming the environment variable
# NAME when its value does not match REGEX (WHAT says what it must be); unset or empty (the default) passes.
env_matches() {
  local script="$1" name="$2" regex="$3" what="$4"
  local value="${!name-}"
  [ -z "$value" ] && return 0
  if ! [[ "$value" =~ $regex ]]; then
    echo "$script: $name must be $what, got '$value'" >&2
    exit 2
  fi
}

# flwr_run_checked APP ARGS...: `flwr run APP ARGS --stream`, then fail unless the run completed.
# `flwr run` exits 0 even when the run failed, so ask the SuperLink for its final status.
# APP is handed over as a copy without its ignored directories (scripts/stage_app.py): flwr lists
# every file under APP, .venv's included, before it applies .gitignore (3.5 s against 0.7 s).
flwr_run_checked() {
  local log run_id app given="$1" status=0
  app="$("$venv/bin/python" "$(dirname "${BASH_SOURCE[0]}")/stage_app.py" "$given")"
  shift
  log="$(mktemp)"
  flwr run "$app" "$@" --stream 2>&1 | tee "$log" || status=$?
  [ "$app" = "$given" ] || rm -rf "$app"
  run_id="$(grep -o 'run_id `[0-9]*`' "$log" | head -n 1 | tr -dc '0-9')"
  rm -f "$log"
  if [ "$status" != 0 ]; then
    echo "fl-dp: flwr run exited with status $status" >&2
    return "$status"
  fi
  if [ -z "$run_id" ]; then
    echo "fl-dp: flwr run did not start a run" >&2
    return 1
  fi
  local superlink=()
  [ -n "${FL_DP_SUPERLINK:-}" ] && superlink=("$FL_DP_SUPERLINK")
  flwr ls "${superlink[@]}" --run-id "$run_id" --format json | "$venv/bin/python" scripts/check_run_status.py
}
