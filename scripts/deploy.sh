#!/usr/bin/env bash
# A real deployment on this machine: one SuperLink and NUM_NODES SuperNodes on 127.0.0.1 over TLS
# (a throw-away CA and server certificate are generated first), then `flwr run` of the app on them.
#   scripts/deploy.sh [NUM_NODES] [extra `flwr run` options, e.g. --run-config "strategy='clip21' num-server-rounds=3"]
# Each SuperNode gets node config partition-id=i num-partitions=NUM_NODES; client state
# (error feedback, momentum) lives in the SuperNode across rounds. Everything is stopped on exit.
# SuperNode authentication is on: each SuperNode gets an ECDSA key pair whose public key is
# registered with the SuperLink (`flwr supernode register`) before it connects; an unregistered
# process cannot join. Noise, minibatches and cohorts come from the OS (os-randomness=true)
# unless the run config sets os-randomness=false (the tests do, to compare trajectories).
# FL_DP_DEPLOY_PORT (default 19093) is the SuperLink's port; SuperNodes use the next ones.
# FL_DP_NODE_PRIVACY (e.g. "max-epsilon=8.0 min-noise-multiplier=0.5") is added to every
# SuperNode's node config: the client operator's own privacy floor (README, "Privacy").
# FL_DP_CLIENT_STATE_DIR (default results/client-state) holds each SuperNode's state-dir.
# FL_DP_NODE_DATA (e.g. "/data/site-%i.csv"; %i is the node's index) gives every SuperNode its own
# local files (node config data-path): it trains on them instead of a partition of the run's dataset.
# FL_DP_WARM_CLIENTAPP (default 1): each SuperNode polls every 0.1 s and runs with --isolation process
# beside one long-lived ClientApp process that keeps torch, the model and the data across messages
# (scripts/flower_runtime.py); 0 gives Flower's own: 3 s polls, a new flwr-clientapp process per message.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/flwr_env.sh
leading_count scripts/deploy.sh SuperNodes 2 "$@"
num_nodes="$COUNT"
[ "$COUNT_GIVEN" = 0 ] || shift
env_matches scripts/deploy.sh FL_DP_WARM_CLIENTAPP '^[01]$' "0 or 1"
env_matches scripts/deploy.sh FL_DP_DEPLOY_PORT '^[1-9][0-9]{0,4}$' "a port number"
warm="${FL_DP_WARM_CLIENTAPP:-1}"
port="${FL_DP_DEPLOY_PORT:-19093}"
if (( port + num_nodes > 65535 )); then  # the SuperNodes take the next num_nodes ports
  echo "scripts/deploy.sh: FL_DP_DEPLOY_PORT=$port leaves no room for $num_nodes SuperNode ports up to 65535" >&2
  exit 2
fi
work="$(mktemp -d /tmp/fl-dp-deploy-XXXXXX)"
export FLWR_HOME="$work/flwr-home"
mkdir -p "$FLWR_HOME" results

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${FL_DP_KEEP_DEPLOY_LOGS:-0}" = "0" ]; then rm -rf "$work"; else echo "logs kept in $work" >&2; fi
}
trap cleanup EXIT

"$venv/bin/python" scripts/make_certs.py "$work/certs"

flower-superlink \
  --ssl-ca-certfile "$work/certs/ca.crt" --ssl-certfile "$work/certs/server.pem" --ssl-keyfile "$work/certs/server.key" \
  --host 127.0.0.1 --port "$port" --database "$work/superlink.db" --enable-supernode-auth \
  --disable-runtime-dependency-installation >"$work/superlink.log" 2>&1 &
pids+=($!)

cat >"$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "tls-local"

[superlink.tls-local]
address = "127.0.0.1:$port"
root-certificates = "$work/certs/ca.crt"
TOML

export FL_DP_SUPERLINK=tls-local
# each client's state (g_i, m_i, own ledger) on "its" disk: kept after the script, so that a run
# started again with resume=true finds it (README, "Runs that survive faults")
state_dir="${FL_DP_CLIENT_STATE_DIR:-$PWD/results/client-state}"

for i in $(seq 0 $((num_nodes - 1))); do
  node_data=""
  if [ -n "${FL_DP_NODE_DATA:-}" ]; then node_data="data-path='${FL_DP_NODE_DATA//%i/$i}'"; fi
  ssh-keygen -q -t ecdsa -b 384 -N "" -f "$work/node-$i" -C "fl-dp-node-$i"
  # the SuperLink may still be starting: registration is retried for up to 30 s
  for attempt in $(seq 30); do
    flwr supernode register "$work/node-$i.pub" tls-local >"$work/register-$i.log" 2>&1 && break
    sleep 1
  done
  runtime_port=$((port + 1 + i))
  supernode=(flower-supernode)
  if [ "$warm" = "1" ]; then supernode=("$venv/bin/python" scripts/flower_runtime.py supernode --isolation process); fi
  "${supernode[@]}" \
    --superlink "127.0.0.1:$port" --root-certificates "$work/certs/ca.crt" \
    --auth-supernode-private-key "$work/node-$i" \
    --node-config "partition-id=$i num-partitions=$num_nodes state-dir='$state_dir/node-$i' $node_data ${FL_DP_NODE_PRIVACY:-}" \
    --host 127.0.0.1 --port "$runtime_port" >"$work/supernode-$i.log" 2>&1 &
  pids+=($!)
  if [ "$warm" = "1" ]; then
    # the Runtime API listens on 127.0.0.1 only: the same trust boundary as Flower's own SuperExec
    "$venv/bin/python" scripts/flower_runtime.py clientapp --runtime-api-address "127.0.0.1:$runtime_port" --insecure \
      >"$work/clientapp-$i.log" 2>&1 &
    pids+=($!)
  fi
done

flwr_run_checked . tls-local \
  --run-config "num-clients=$num_nodes clients-per-round=$num_nodes os-randomness=true results-dir='$PWD/results'" \
  "$@"
