#!/usr/bin/env bash
# Deploy examples/fl_app on this machine: one SuperLink and two SuperNodes on the loopback, then `flwr run`.
# Offline: no telemetry, no per-run dependency installation (artshield must be importable: installed or PYTHONPATH).
# Stops every process it started, whatever happens.
set -euo pipefail
cd "$(dirname "$0")"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_HOME="${FLWR_HOME:-$(mktemp -d)}"   # Flower's config and state for this run only (not ~/.flwr)
LOGS="$FLWR_HOME/logs"; mkdir -p "$LOGS"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

flower-superlink --insecure --database :flwr-in-memory-state: >"$LOGS/superlink.log" 2>&1 & pids+=($!)
for i in 0 1; do
  flower-supernode --insecure --superlink 127.0.0.1:8000 --port $((9094 + i)) \
    --node-config "partition-id=$i num-partitions=2" >"$LOGS/supernode-$i.log" 2>&1 & pids+=($!)
done
cat >"$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "local-deployment"

[superlink.local-deployment]
address = "127.0.0.1:8000"
insecure = true
TOML
sleep 3
flwr run . local-deployment --stream
