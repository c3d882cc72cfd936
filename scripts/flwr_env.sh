# Sourced by simulate.sh and deploy.sh: the environment flwr needs here, and `flwr_run_checked`.
venv="$(realpath "${FL_DP_VENV:-.venv}")"
export PATH="$venv/bin:$PATH"
export FLWR_TELEMETRY_ENABLED=0
# the SuperLink would otherwise install [project].dependencies per run (needs the network)
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export PYTHONUNBUFFERED=1

# flwr_run_checked ARGS...: `flwr run ARGS --stream`, then fail unless the run completed.
# `flwr run` exits 0 even when the run failed, so ask the SuperLink for its final status.
flwr_run_checked() {
  local log run_id
  log="$(mktemp)"
  flwr run "$@" --stream 2>&1 | tee "$log"
  run_id="$(grep -o 'run_id `[0-9]*`' "$log" | head -n 1 | tr -dc '0-9')"
  rm -f "$log"
  if [ -z "$run_id" ]; then
    echo "fl-dp: flwr run did not start a run" >&2
    return 1
  fi
  local superlink=()
  [ -n "${FL_DP_SUPERLINK:-}" ] && superlink=("$FL_DP_SUPERLINK")
  flwr ls "${superlink[@]}" --run-id "$run_id" --format json | "$venv/bin/python" scripts/check_run_status.py
}
