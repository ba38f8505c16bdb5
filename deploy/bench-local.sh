#!/usr/bin/env bash
# `make bench`: a broker of its own (fresh data, port $BENCH_KAFKA_PORT) unless KAFKA_BOOTSTRAP_SERVERS is set.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  data="$(mktemp -d -t wagate-bench-kafka.XXXXXX)"
  export KAFKA_PORT="${BENCH_KAFKA_PORT:-19192}" KAFKA_HEAP="${KAFKA_HEAP:-1g}"
  deploy/kafka/kafka.sh start "$data"
  trap 'deploy/kafka/kafka.sh stop "$data"; rm -rf "$data"' EXIT
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT"
fi
.venv/bin/wagate bench --out "${BENCH_OUT:-bench-result.json}" "$@"
