#!/usr/bin/env bash
# `make run`: the gate in the foreground on the embedded broker (or on $KAFKA_BOOTSTRAP_SERVERS).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  deploy/kafka/kafka.sh start
  trap 'deploy/kafka/kafka.sh stop' EXIT
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:${KAFKA_PORT:-9092}"
fi
echo "wagate: gate on $KAFKA_BOOTSTRAP_SERVERS; metrics on http://${WAGATE_WEB_HOST:-127.0.0.1}:${WAGATE_WEB_PORT:-6066}/metrics; Ctrl-C stops" >&2
.venv/bin/wagate worker
