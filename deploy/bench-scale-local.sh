#!/usr/bin/env bash
# `make bench-scale`: a 3-node cluster of its own (fresh data, ports $BENCH_KAFKA_PORT..+2) unless
# KAFKA_BOOTSTRAP_SERVERS is set (then it must have 3 brokers: topics are made with replication 3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  data="$(mktemp -d -t wagate-scale-kafka.XXXXXX)"
  export KAFKA_PORT="${BENCH_KAFKA_PORT:-19292}" KAFKA_CONTROLLER_PORT="${BENCH_KAFKA_CONTROLLER_PORT:-19392}"
  export KAFKA_HEAP="${KAFKA_HEAP:-768m}"
  deploy/kafka/kafka.sh cluster-start "$data"
  trap 'deploy/kafka/kafka.sh cluster-stop "$data"; rm -rf "$data"' EXIT
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT,127.0.0.1:$((KAFKA_PORT + 1)),127.0.0.1:$((KAFKA_PORT + 2))"
fi
.venv/bin/wagate bench-scale --out "${BENCH_OUT:-bench-scale-result.json}" "$@"
