#!/usr/bin/env bash
# Embedded Apache Kafka (KRaft) for development, tests and benchmarks: one node, or a 3-node cluster.
#   kafka.sh fetch                     download the pinned jars (pom.xml) into lib/ with Maven
#   kafka.sh start [DATA_DIR]          format storage if new, start on 127.0.0.1:$KAFKA_PORT, wait until ready
#   kafka.sh stop  [DATA_DIR]          stop the broker started from DATA_DIR, by its own PID
#   kafka.sh cluster-start DATA_DIR    3 nodes (broker + controller each) on 127.0.0.1:$KAFKA_PORT..+2,
#                                      replication factor 3 and min.insync.replicas 2 by default
#   kafka.sh cluster-stop DATA_DIR     stop all three, by their PIDs
#   kafka.sh node-kill DATA_DIR N      SIGKILL node N (1-3) of the cluster (a fault test's broker loss)
#   kafka.sh node-start DATA_DIR N     start node N again and wait until it listens
# Environment: KAFKA_PORT (default 9092), KAFKA_CONTROLLER_PORT (default KAFKA_PORT+1000),
#              KAFKA_HEAP (default 512m), KAFKA_START_TIMEOUT seconds (default 90);
#              `start` only: KAFKA_SERVER_PROPERTIES, a file of properties appended to the generated
#              ones (later keys win: listeners, TLS, SASL), and KAFKA_FORMAT_ARGS, extra arguments
#              for the storage format of a new DATA_DIR (e.g. --add-scram for SCRAM users).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cmd="${1:-}"
data="${2:-$here/data}"
port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-$((port + 1000))}"
pidfile="$data/broker.pid"

fetch() {
  if [ -f "$here/lib/.complete" ]; then return; fi
  command -v mvn >/dev/null || { echo "kafka.sh: Maven (mvn) is not installed: apt-get install maven" >&2; exit 2; }
  command -v java >/dev/null || { echo "kafka.sh: Java 17 is not installed: apt-get install openjdk-17-jre-headless" >&2; exit 2; }
  echo "kafka.sh: fetching Apache Kafka jars from Maven Central (pom.xml)" >&2
  if ! mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies >"$here/.fetch.log" 2>&1; then
    cat "$here/.fetch.log" >&2
    echo "kafka.sh: Maven could not fetch the broker (see above); no other broker is substituted" >&2
    exit 3
  fi
  touch "$here/lib/.complete"
}

java_run() { java -Xms128m -Xmx"${KAFKA_HEAP:-512m}" -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
  -Dorg.slf4j.simpleLogger.logFile=System.err -cp "$here/lib/*" "$@"; }

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

launch() {  # launch DIR: a broker from DIR/server.properties in the background, its PID in DIR/broker.pid
  nohup java -Xms256m -Xmx"${KAFKA_HEAP:-512m}" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -cp "$here/lib/*" kafka.Kafka "$1/server.properties" \
    >"$1/broker.log" 2>&1 &
  echo $! >"$1/broker.pid"
}

start() {
  fetch
  mkdir -p "$data"
  if running; then echo "kafka.sh: already running (pid $(cat "$pidfile")) on port $(cat "$data/port")" >&2; return; fi
  cat >"$data/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$data/logs
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
PROPS
  if [ -n "${KAFKA_SERVER_PROPERTIES:-}" ]; then cat "$KAFKA_SERVER_PROPERTIES" >>"$data/server.properties"; fi
  if [ ! -f "$data/logs/meta.properties" ]; then
    local -a extra=()
    if [ -n "${KAFKA_FORMAT_ARGS:-}" ]; then set -f; read -r -a extra <<<"$KAFKA_FORMAT_ARGS"; set +f; fi
    java_run kafka.tools.StorageTool format -t "$(java_run kafka.tools.StorageTool random-uuid)" \
      -c "$data/server.properties" "${extra[@]}" >"$data/format.log" 2>&1 || { cat "$data/format.log" >&2; exit 4; }
  fi
  launch "$data"
  echo "$port" >"$data/port"
  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-90}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if ! running; then tail -30 "$data/broker.log" >&2; echo "kafka.sh: broker exited during start" >&2; exit 5; fi
    if [ $SECONDS -ge $deadline ]; then tail -30 "$data/broker.log" >&2; stop; echo "kafka.sh: broker not ready in time" >&2; exit 6; fi
    sleep 0.3
  done
  echo "kafka.sh: broker pid $(cat "$pidfile") listening on 127.0.0.1:$port (data $data)" >&2
}

stop() {
  running || { rm -f "$pidfile"; return 0; }
  local pid; pid="$(cat "$pidfile")"
  kill "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$pidfile"
  echo "kafka.sh: broker pid $pid stopped" >&2
}

# -- the 3-node cluster: node N in DATA_DIR/nodeN, broker port $port+N-1, controller port $cport+N-1 --

node_props() {  # node_props N
  local n="$1" voters="1@127.0.0.1:$cport,2@127.0.0.1:$((cport + 1)),3@127.0.0.1:$((cport + 2))"
  local bport=$((port + n - 1)) ctl=$((cport + n - 1))
  cat <<PROPS
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$bport,CONTROLLER://127.0.0.1:$ctl
advertised.listeners=PLAINTEXT://127.0.0.1:$bport
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$data/node$n/logs
num.partitions=4
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
unclean.leader.election.enable=false
PROPS
}

node_running() { [ -f "$data/node$1/broker.pid" ] && kill -0 "$(cat "$data/node$1/broker.pid")" 2>/dev/null; }

node_launch() {  # node_launch N: start it in the background (formatting its storage first if new)
  local n="$1" dir="$data/node$1"
  mkdir -p "$dir"
  node_running "$n" && return
  node_props "$n" >"$dir/server.properties"
  if [ ! -f "$dir/logs/meta.properties" ]; then
    java_run kafka.tools.StorageTool format -t "$(cat "$data/cluster.id")" -c "$dir/server.properties" \
      >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; exit 4; }
  fi
  launch "$dir"
}

node_wait() {  # node_wait N: until its broker port accepts connections
  local n="$1" bport=$((port + $1 - 1)) deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-90}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$bport") 2>/dev/null; do
    if ! node_running "$n"; then tail -30 "$data/node$n/broker.log" >&2; echo "kafka.sh: node $n exited" >&2; exit 5; fi
    if [ $SECONDS -ge $deadline ]; then tail -30 "$data/node$n/broker.log" >&2; echo "kafka.sh: node $n not ready" >&2; exit 6; fi
    sleep 0.3
  done
}

cluster_start() {
  fetch
  mkdir -p "$data"
  [ -f "$data/cluster.id" ] || java_run kafka.tools.StorageTool random-uuid >"$data/cluster.id"
  for n in 1 2 3; do node_launch "$n"; done  # together: each waits for a quorum of controllers
  for n in 1 2 3; do node_wait "$n"; done
  echo "kafka.sh: 3-node cluster on 127.0.0.1:$port,$((port + 1)),$((port + 2)) (data $data)" >&2
}

node_kill() {
  node_running "$1" || return 0
  kill -9 "$(cat "$data/node$1/broker.pid")"
  rm -f "$data/node$1/broker.pid"
  echo "kafka.sh: node $1 killed" >&2
}

cluster_stop() {
  for n in 1 2 3; do
    node_running "$n" || continue
    local pid; pid="$(cat "$data/node$n/broker.pid")"
    kill "$pid"
  done
  for n in 1 2 3; do
    [ -f "$data/node$n/broker.pid" ] || continue
    local pid; pid="$(cat "$data/node$n/broker.pid")"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$data/node$n/broker.pid"
  done
  echo "kafka.sh: cluster stopped" >&2
}

case "$cmd" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  cluster-start) cluster_start ;;
  cluster-stop) cluster_stop ;;
  node-kill) node_kill "${3:?node 1-3}" ;;
  node-start) node_launch "${3:?node 1-3}"; node_wait "$3" ;;
  *) echo "usage: kafka.sh fetch | start [DATA_DIR] | stop [DATA_DIR] | cluster-start DATA_DIR | cluster-stop DATA_DIR | node-kill DATA_DIR N | node-start DATA_DIR N" >&2; exit 2 ;;
esac
