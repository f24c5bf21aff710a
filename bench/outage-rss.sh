#!/usr/bin/env bash
# Memory of an agent whose Kafka sink cannot deliver (issue 16): kubesim (`lookout sim`, 2,000
# realistic Pods, 2,000 changes/s) and `lookout run` with one Kafka sink whose broker address
# refuses connections, so its queue fills to queueCapacity (10,000) and stays full. Prints the
# agent's RSS, queue depth and coalesced count after SETTLE seconds, RUNS times, for each
# lookout binary given (default: the release build).
#
#   bench/outage-rss.sh [lookout-binary ...]      # RUNS=2 SETTLE=25 by default
set -euo pipefail

TARGET=${CARGO_TARGET_DIR:-$(git rev-parse --show-toplevel)/target}
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=("$TARGET/release/lookout")
RUNS=${RUNS:-2}
SETTLE=${SETTLE:-25}
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DIR"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

SIM_PORT=$(free_port)
"${BINS[0]}" sim --port "$SIM_PORT" --seed-pods 2000 --churn 2000 --history-limit 100000 \
  --kubeconfig "$DIR/kubeconfig" >"$DIR/sim.log" 2>&1 &
for _ in $(seq 100); do [ -s "$DIR/kubeconfig" ] && break; sleep 0.1; done
sleep 5 # seeding

OPS=$(free_port)
cat >"$DIR/lookout.yaml" <<YAML
cluster: outage
resources:
  - apiVersion: v1
    kind: Pod
sinks:
  - name: kafka
    type: kafka
    brokers: ["127.0.0.1:1"]
    topic: outage
    queueCapacity: 10000
server:
  listen: 127.0.0.1:$OPS
log:
  level: error
YAML

metric() { curl -s "127.0.0.1:$OPS/metrics" | awk -v m="$1" 'index($0, m"{") == 1 { print $2 }'; }

for run in $(seq "$RUNS"); do
  for bin in "${BINS[@]}"; do
    KUBECONFIG="$DIR/kubeconfig" "$bin" run --config "$DIR/lookout.yaml" >/dev/null 2>&1 &
    pid=$!
    sleep "$SETTLE"
    rss=$(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")
    echo "run $run  $bin  rss_mb=$((rss / 1024))  queue=$(metric lookout_sink_queue_depth)  coalesced=$(metric lookout_sink_coalesced_total)"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
done
