#!/usr/bin/env bash
# `make run`: the gate in the foreground on the embedded broker (or on $KAFKA_BOOTSTRAP_SERVERS).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  deploy/kafka/kafka.sh start
  trap 'deploy/kafka/kafka.sh stop' EXIT
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:${KAFKA_PORT:-9092}"
fi
if [ -z "${WAGATE_WINDOW_API_TOKEN:-}${WAGATE_WINDOW_API_TOKEN_FILE:-}" ]; then
  # The window API needs a bearer token: a local one, kept between runs, readable by this user only.
  mkdir -p var
  if [ ! -s var/window-api-token ]; then
    (umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_hex(24))' > var/window-api-token)
  fi
  export WAGATE_WINDOW_API_TOKEN_FILE="$PWD/var/window-api-token"
fi
if [ -z "${WAGATE_INTERNAL_KEY:-}" ]; then
  # The key that signs the gate's own messaging-limit records on wa.inbound: local, kept between runs.
  mkdir -p var
  if [ ! -s var/internal-key ]; then
    (umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_hex(24))' > var/internal-key)
  fi
  WAGATE_INTERNAL_KEY="$(cat var/internal-key)"
  export WAGATE_INTERNAL_KEY
fi
echo "wagate: gate on $KAFKA_BOOTSTRAP_SERVERS; metrics on http://${WAGATE_WEB_HOST:-127.0.0.1}:${WAGATE_WEB_PORT:-6066}/metrics; Ctrl-C stops" >&2
echo "wagate: window API token in ${WAGATE_WINDOW_API_TOKEN_FILE:-WAGATE_WINDOW_API_TOKEN} (WAGATE_WINDOW_API_TOKEN_FILE=var/window-api-token wagate window PNID USER)" >&2
.venv/bin/wagate worker
