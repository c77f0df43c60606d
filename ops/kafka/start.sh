#!/usr/bin/env bash
# Start a local Apache Kafka cluster (KRaft, no ZooKeeper, no Docker) from the
# jars on Maven Central, resolved through ops/kafka/pom.xml.
#
#   ops/kafka/start.sh [--brokers 1|3] [--port P] [--dir D] [--secure]
#
# --secure (one broker only): clients connect with SASL_SSL and SCRAM-SHA-512,
# ACLs are enforced (StandardAuthorizer, nothing allowed without an ACL), and
# the users admin (super user), orderlog (all of topics orders.*, groups,
# transactional ids), auditor (read orders.events, orders.members and
# orders.events.dead-letter; nothing of orders.keys) and outsider (no ACL)
# exist. The broker's certificate is <dir>/tls/server-keystore.pem and the CA
# <dir>/tls/ca.pem, as `orderlog tls-certs --out <dir>/tls --host 127.0.0.1
# --host localhost` makes them. The passwords are written to <dir>/secure.env
# (mode 0600) once, and <dir>/<user>.properties hold a Java client config.
#
# Prints the bootstrap servers as the last line of stdout (everything else goes
# to stderr) and writes them to <dir>/bootstrap. Idempotent: if the brokers of
# <dir> already run, it only prints the bootstrap servers. See README.md.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$SCRIPT_DIR/pom.xml"

BROKERS=""
PORT=""
SECURE=""
DIR="${ORDERLOG_KAFKA_DIR:-/tmp/orderlog-kafka}"
READY_TIMEOUT="${ORDERLOG_KAFKA_START_TIMEOUT:-90}"
CONTROLLER_PORT_OFFSET=100

log() { printf '%s\n' "start.sh: $*" >&2; }
die() { printf '%s\n' "start.sh: error: $*" >&2; exit 1; }

usage() {
  cat >&2 <<EOF
usage: $0 [--brokers 1|3] [--port P] [--dir D] [--secure]
  --brokers N  number of combined broker+controller nodes, 1 or 3 (default 1)
  --secure     one broker with SASL_SSL (SCRAM-SHA-512) and ACLs; see the top of this script
  --port P     first client port; brokers listen on 127.0.0.1:P..P+N-1,
               controllers on P+$CONTROLLER_PORT_OFFSET.. (default 19092)
  --dir D      data/log/pid directory (default \${ORDERLOG_KAFKA_DIR:-/tmp/orderlog-kafka})
On an existing dir, omitted --brokers/--port default to the dir's layout.
EOF
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --brokers) [[ $# -ge 2 ]] || { usage; die "--brokers needs a value"; }; BROKERS="$2"; shift 2 ;;
    --brokers=*) BROKERS="${1#*=}"; shift ;;
    --port) [[ $# -ge 2 ]] || { usage; die "--port needs a value"; }; PORT="$2"; shift 2 ;;
    --port=*) PORT="${1#*=}"; shift ;;
    --dir) [[ $# -ge 2 ]] || { usage; die "--dir needs a value"; }; DIR="$2"; shift 2 ;;
    --dir=*) DIR="${1#*=}"; shift ;;
    --secure) SECURE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage; die "unknown argument: $1" ;;
  esac
done

[[ -n "$DIR" ]] || die "--dir must not be empty"
mkdir -p "$DIR" || die "cannot create directory $DIR"
DIR="$(cd "$DIR" && pwd)"

# Serialise concurrent start.sh runs on the same dir.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$DIR/.start.lock"
  flock -w 120 9 || die "another start.sh holds $DIR/.start.lock for more than 120 s"
fi

# ---- layout: brokers/port, remembered in <dir>/layout ------------------------
LAYOUT_FILE="$DIR/layout"
if [[ -f "$LAYOUT_FILE" ]]; then
  saved_brokers="$(sed -n 's/^brokers=//p' "$LAYOUT_FILE")"
  saved_port="$(sed -n 's/^port=//p' "$LAYOUT_FILE")"
  if [[ -n "$BROKERS" && "$BROKERS" != "$saved_brokers" ]] || [[ -n "$PORT" && "$PORT" != "$saved_port" ]]; then
    die "$DIR already holds a cluster of $saved_brokers broker(s) on port $saved_port; \
start it with those settings, or run '$SCRIPT_DIR/stop.sh --dir $DIR --purge' first, or use another --dir"
  fi
  saved_secure="$(sed -n 's/^secure=//p' "$LAYOUT_FILE")"
  if [[ -n "$SECURE" && "$saved_secure" != 1 ]]; then
    die "$DIR already holds a plaintext cluster; use another --dir for --secure"
  fi
  BROKERS="$saved_brokers"
  PORT="$saved_port"
  [[ "$saved_secure" == 1 ]] && SECURE=1
fi
BROKERS="${BROKERS:-1}"
PORT="${PORT:-19092}"
[[ "$BROKERS" == 1 || "$BROKERS" == 3 ]] || die "--brokers must be 1 or 3 (got '$BROKERS')"
[[ -z "$SECURE" || "$BROKERS" == 1 ]] || die "--secure starts one broker (got --brokers $BROKERS)"
[[ "$PORT" =~ ^[0-9]+$ ]] && (( PORT >= 1024 && PORT + CONTROLLER_PORT_OFFSET + BROKERS - 1 <= 65535 )) \
  || die "--port must be a number with $PORT..$((PORT + CONTROLLER_PORT_OFFSET + BROKERS - 1)) in 1024..65535 (got '$PORT')"

broker_port() { echo $((PORT + $1 - 1)); }
controller_port() { echo $((PORT + CONTROLLER_PORT_OFFSET + $1 - 1)); }
node_dir() { echo "$DIR/node-$1"; }

BOOTSTRAP=""
for ((n = 1; n <= BROKERS; n++)); do
  BOOTSTRAP+="${BOOTSTRAP:+,}127.0.0.1:$(broker_port "$n")"
done

# ---- helpers -------------------------------------------------------------------
port_open() { # is something accepting connections on 127.0.0.1:$1 ?
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}
port_in_use() { # listening or bound on any address (incl. 127.0.0.1 / 0.0.0.0 / ::)
  port_open "$1" && return 0
  if command -v ss >/dev/null 2>&1; then
    [[ -n "$(ss -Hltn "( sport = :$1 )" 2>/dev/null)" ]] && return 0
  fi
  return 1
}
# Prints the pid of node $1 if its pid file names a live kafka.Kafka process of
# this very node (guards against pid reuse), else nothing.
node_pid() {
  local pidfile pid
  pidfile="$(node_dir "$1")/pid"
  [[ -f "$pidfile" ]] || return 0
  pid="$(tr -dc '0-9' <"$pidfile")"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 0
  # Process substitution, not a pipe: under pipefail an early-exiting grep -q
  # could fail the pipeline with SIGPIPE even on a match.
  if grep -qF "kafka.Kafka $(node_dir "$1")/server.properties" < <(tr '\0' ' ' <"/proc/$pid/cmdline"); then
    echo "$pid"
  fi
}
# True if the server log of node $1, from the offset recorded at its launch,
# says the server finished starting.
node_log_started() {
  local nd logf off size
  nd="$(node_dir "$1")"
  logf="$nd/logs/server.log"
  [[ -f "$logf" ]] || return 1
  off="$(cat "$nd/log-offset" 2>/dev/null || echo 0)"
  size="$(stat -c %s "$logf")"
  (( size >= off )) || off=0  # the log rolled over since
  # logged by KafkaRaftServer once the broker is unfenced; no pipe (see above)
  grep -qF 'Kafka Server started' < <(tail -c +"$((off + 1))" "$logf")
}
show_node_logs() {
  local nd
  nd="$(node_dir "$1")"
  {
    echo "----- last 40 lines of $nd/logs/server.log -----"
    tail -n 40 "$nd/logs/server.log" 2>/dev/null || echo "(no server.log)"
    echo "----- last 20 lines of $nd/stdout.log (JVM output) -----"
    tail -n 20 "$nd/stdout.log" 2>/dev/null || echo "(no stdout.log)"
    echo "-----"
  } >&2
}
finish() {
  printf '%s\n' "$BOOTSTRAP" >"$DIR/bootstrap"
  printf '%s\n' "$BOOTSTRAP"
  exit 0
}

# ---- already running? ------------------------------------------------------------
all_up=1
for ((n = 1; n <= BROKERS; n++)); do
  pid="$(node_pid "$n")"
  if [[ -z "$pid" ]] || ! port_open "$(broker_port "$n")"; then all_up=0; fi
done
if (( all_up )); then
  log "Kafka already running in $DIR ($BROKERS broker(s))"
  # A secure broker goes on to (re)apply its ACLs below, in case an earlier
  # run stopped before they were all set.
  [[ "$SECURE" == 1 ]] || finish
fi

# ---- ports free? ------------------------------------------------------------------------------
busy=()
needed=()
for ((n = 1; n <= BROKERS; n++)); do
  needed+=("$(broker_port "$n")" "$(controller_port "$n")")
  [[ -n "$(node_pid "$n")" ]] && continue   # our own node, still starting
  for p in "$(broker_port "$n")" "$(controller_port "$n")"; do
    if port_in_use "$p"; then busy+=("$p"); fi
  done
done
if (( ${#busy[@]} > 0 )); then
  die "port(s) ${busy[*]} already in use by another process (find it with: ss -ltnp). \
This cluster needs 127.0.0.1 ports ${needed[*]} (per node: client port P+i, controller port P+$CONTROLLER_PORT_OFFSET+i). \
Stop that process, or choose another first port with --port P (and a fresh --dir: a dir keeps its ports)."
fi

# ---- java ---------------------------------------------------------------------------
if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
  JAVA="$JAVA_HOME/bin/java"
elif command -v java >/dev/null 2>&1; then
  JAVA="$(command -v java)"
else
  die "'java' not found on PATH (and JAVA_HOME is not set). Kafka needs Java 17 or newer: install it (e.g. 'apt-get install openjdk-17-jre-headless') or put it on PATH."
fi
java_spec="$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p' | head -n1)"
java_major="${java_spec#1.}"
java_major="${java_major%%.*}"
if ! [[ "$java_major" =~ ^[0-9]+$ ]]; then
  die "could not determine the version of $JAVA ('$("$JAVA" -version 2>&1 | head -n1)'); Kafka needs Java 17 or newer."
fi
(( java_major >= 17 )) || die "$JAVA is Java $java_spec, Kafka 4.x needs Java 17 or newer: install a newer JDK/JRE and put it first on PATH (or set JAVA_HOME)."

# ---- classpath (Maven), cached per pom hash ---------------------------------------------
pom_hash="$(sha256sum "$POM" | cut -c1-16)"
CP_FILE="$DIR/classpath.$pom_hash"
cp_valid() { # every entry of the cached classpath still exists
  [[ -s "$1" ]] || return 1
  local IFS=':' entry
  for entry in $(cat "$1"); do [[ -e "$entry" ]] || return 1; done
}
if ! cp_valid "$CP_FILE"; then
  command -v mvn >/dev/null 2>&1 || die "'mvn' (Apache Maven) not found on PATH; it is needed once to fetch the Kafka jars from Maven Central: install it (e.g. 'apt-get install maven') or put it on PATH."
  MVN_LOG="$DIR/mvn.log"
  tmp_cp="$CP_FILE.tmp.$$"
  log "resolving the Kafka classpath with Maven (offline first) ..."
  if ! JAVA_HOME="${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$JAVA")")")}" \
       mvn -B -q -o -Dstyle.color=never -f "$POM" dependency:build-classpath -Dmdep.outputFile="$tmp_cp" >"$MVN_LOG" 2>&1; then
    log "not all jars are in ~/.m2 yet; downloading from Maven Central (first run only) ..."
    if ! JAVA_HOME="${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$JAVA")")")}" \
         mvn -B -q -Dstyle.color=never -f "$POM" dependency:build-classpath -Dmdep.outputFile="$tmp_cp" >>"$MVN_LOG" 2>&1; then
      tail -n 30 "$MVN_LOG" >&2 || true
      rm -f "$tmp_cp"
      die "Maven could not resolve the Kafka jars (full output: $MVN_LOG). Check that Maven Central is reachable \
(proxy/mirror settings in ~/.m2/settings.xml), then re-run; to test Maven alone: mvn -f $POM dependency:build-classpath"
    fi
  fi
  cp_valid "$tmp_cp" || { rm -f "$tmp_cp"; die "Maven produced an empty or broken classpath (see $MVN_LOG)"; }
  mv -f "$tmp_cp" "$CP_FILE"
fi
CLASSPATH_STR="$(cat "$CP_FILE")"
cp -f "$CP_FILE" "$DIR/classpath"   # handy for running Kafka's CLI tools by hand

# ---- log4j2 configs ------------------------------------------------------------------------
cat >"$DIR/log4j2.properties" <<'EOF'
# Written by ops/kafka/start.sh. Server logs go to ${kafka.logs.dir}/server.log.
status = warn
name = orderlog-kafka
appender.server.type = RollingFile
appender.server.name = server
appender.server.fileName = ${sys:kafka.logs.dir}/server.log
appender.server.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.server.policies.type = Policies
appender.server.policies.size.type = SizeBasedTriggeringPolicy
appender.server.policies.size.size = 50MB
appender.server.strategy.type = DefaultRolloverStrategy
appender.server.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.server.ref = server
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
cat >"$DIR/log4j2-tools.properties" <<'EOF'
# Written by ops/kafka/start.sh, for Kafka's CLI tools: warnings to stderr.
status = warn
name = orderlog-kafka-tools
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = err
EOF

# ---- config + storage format ---------------------------------------------------------------------
echo "brokers=$BROKERS" >"$LAYOUT_FILE.tmp"
echo "port=$PORT" >>"$LAYOUT_FILE.tmp"
echo "secure=${SECURE:-0}" >>"$LAYOUT_FILE.tmp"
mv -f "$LAYOUT_FILE.tmp" "$LAYOUT_FILE"

if [[ ! -s "$DIR/cluster-id" ]]; then
  cid="$("$JAVA" -Dlog4j2.configurationFile="$DIR/log4j2-tools.properties" -cp "$CLASSPATH_STR" \
          kafka.tools.StorageTool random-uuid 2>>"$DIR/format.log" | tail -n1)"
  [[ "$cid" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "could not generate a cluster id (got '$cid', see $DIR/format.log)"
  echo "$cid" >"$DIR/cluster-id"
fi
CLUSTER_ID="$(cat "$DIR/cluster-id")"

VOTERS=""
for ((n = 1; n <= BROKERS; n++)); do
  VOTERS+="${VOTERS:+,}$n@127.0.0.1:$(controller_port "$n")"
done
if (( BROKERS == 1 )); then RF=1; MIN_ISR=1; else RF=3; MIN_ISR=2; fi

# ---- secure mode: certificates, passwords, client configs -------------------------------------
SECURE_USERS=(admin orderlog auditor outsider)
if [[ "$SECURE" == 1 ]]; then
  TLS_DIR="$DIR/tls"
  for f in ca.pem server-keystore.pem; do
    [[ -s "$TLS_DIR/$f" ]] || die "--secure needs $TLS_DIR/$f: make the certificates with \
'orderlog tls-certs --out $TLS_DIR --host 127.0.0.1 --host localhost'"
  done
  if [[ ! -s "$DIR/secure.env" ]]; then
    ( umask 077
      for u in "${SECURE_USERS[@]}"; do
        printf 'KAFKA_%s_PASSWORD=%s\n' "${u^^}" "$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
      done >"$DIR/secure.env.tmp"
      mv -f "$DIR/secure.env.tmp" "$DIR/secure.env" )
    log "wrote the SCRAM users' passwords to $DIR/secure.env"
  fi
  # shellcheck disable=SC1091
  source "$DIR/secure.env"
  password_of() { local v="KAFKA_${1^^}_PASSWORD"; printf '%s' "${!v}"; }
  scram_jaas() { printf 'org.apache.kafka.common.security.scram.ScramLoginModule required username="%s" password="%s";' "$1" "$(password_of "$1")"; }
  for u in "${SECURE_USERS[@]}"; do
    ( umask 077
      cat >"$DIR/$u.properties" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$(scram_jaas "$u")
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
EOF
    )
  done
fi

for ((n = 1; n <= BROKERS; n++)); do
  nd="$(node_dir "$n")"
  mkdir -p "$nd/data" "$nd/logs"
  cat >"$nd/server.properties" <<EOF
# Written by ops/kafka/start.sh (regenerated on every start).
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$VOTERS
listeners=PLAINTEXT://127.0.0.1:$(broker_port "$n"),CONTROLLER://127.0.0.1:$(controller_port "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(broker_port "$n")
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$nd/data
num.network.threads=2
num.io.threads=4
num.partitions=1
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
default.replication.factor=$RF
min.insync.replicas=$MIN_ISR
offsets.topic.replication.factor=$RF
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$RF
transaction.state.log.min.isr=$MIN_ISR
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=$RF
share.coordinator.state.topic.min.isr=$MIN_ISR
EOF
  scram_args=()
  if [[ "$SECURE" == 1 ]]; then
    # Clients: SASL_SSL with SCRAM. The controller listener stays PLAINTEXT on
    # loopback (KRaft cannot authenticate controllers with SCRAM, whose
    # credentials live in the metadata the controllers serve); its anonymous
    # principal is a super user so the broker can register, which is why it
    # binds 127.0.0.1 only.
    sed -i \
      -e "s|^listeners=.*|listeners=SASL_SSL://127.0.0.1:$(broker_port "$n"),CONTROLLER://127.0.0.1:$(controller_port "$n")|" \
      -e "s|^advertised.listeners=.*|advertised.listeners=SASL_SSL://127.0.0.1:$(broker_port "$n")|" \
      -e "s|^inter.broker.listener.name=.*|inter.broker.listener.name=SASL_SSL|" \
      -e "s|^listener.security.protocol.map=.*|listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL|" \
      "$nd/server.properties"
    chmod 600 "$nd/server.properties"
    cat >>"$nd/server.properties" <<EOF
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$(scram_jaas admin)
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/server-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:ANONYMOUS
EOF
    for u in "${SECURE_USERS[@]}"; do
      scram_args+=(--add-scram "SCRAM-SHA-512=[name=$u,password=$(password_of "$u")]")
    done
  fi
  if [[ ! -f "$nd/data/meta.properties" ]]; then
    log "formatting storage of node $n (cluster id $CLUSTER_ID)"
    if ! "$JAVA" -Dlog4j2.configurationFile="$DIR/log4j2-tools.properties" -cp "$CLASSPATH_STR" \
         kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$nd/server.properties" --ignore-formatted \
         "${scram_args[@]}" >>"$DIR/format.log" 2>&1; then
      tail -n 20 "$DIR/format.log" >&2 || true
      die "formatting the storage of node $n failed (see $DIR/format.log)"
    fi
  fi
done

# ---- launch ---------------------------------------------------------------------------------------
if (( BROKERS == 1 )); then HEAP="${ORDERLOG_KAFKA_HEAP:--Xms256m -Xmx512m}"; else HEAP="${ORDERLOG_KAFKA_HEAP:--Xms192m -Xmx384m}"; fi
start_epoch=$SECONDS
for ((n = 1; n <= BROKERS; n++)); do
  nd="$(node_dir "$n")"
  if [[ -n "$(node_pid "$n")" ]]; then
    log "node $n already running (pid $(node_pid "$n")), waiting for it"
    continue
  fi
  rm -f "$nd/pid"
  stat -c %s "$nd/logs/server.log" >"$nd/log-offset" 2>/dev/null || echo 0 >"$nd/log-offset"
  # shellcheck disable=SC2086  # HEAP is a list of JVM options
  setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$nd/pid" \
    "$JAVA" $HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$DIR/log4j2.properties" -Dkafka.logs.dir="$nd/logs" \
    -cp "$CLASSPATH_STR" kafka.Kafka "$nd/server.properties" \
    >"$nd/stdout.log" 2>&1 </dev/null 9>&- &
  for _ in $(seq 50); do [[ -s "$nd/pid" ]] && break; sleep 0.1; done
  [[ -s "$nd/pid" ]] || die "node $n did not start (no pid file); see $nd/stdout.log"
  log "started node $n (pid $(cat "$nd/pid")), client port $(broker_port "$n"), logs in $nd/logs/server.log"
done

# ---- wait until ready --------------------------------------------------------------------------------
deadline=$((SECONDS + READY_TIMEOUT))
declare -A ready=()
while :; do
  for ((n = 1; n <= BROKERS; n++)); do
    [[ -n "${ready[$n]:-}" ]] && continue
    if [[ -z "$(node_pid "$n")" ]]; then
      show_node_logs "$n"
      "$SCRIPT_DIR/stop.sh" --dir "$DIR" >&2 || true
      die "node $n (port $(broker_port "$n")) exited during startup; logs above, full logs in $(node_dir "$n")/logs/"
    fi
    if port_open "$(broker_port "$n")" && node_log_started "$n"; then
      ready[$n]=1
      log "node $n ready on 127.0.0.1:$(broker_port "$n") after $((SECONDS - start_epoch)) s"
    fi
  done
  (( ${#ready[@]} == BROKERS )) && break
  if (( SECONDS >= deadline )); then
    for ((n = 1; n <= BROKERS; n++)); do
      [[ -n "${ready[$n]:-}" ]] || show_node_logs "$n"
    done
    "$SCRIPT_DIR/stop.sh" --dir "$DIR" >&2 || true
    die "Kafka did not become ready within $READY_TIMEOUT s (logs above; full logs in $DIR/node-*/logs/); the nodes were stopped"
  fi
  sleep 0.5
done
log "Kafka ${BROKERS}-node cluster ready in $DIR"

# ---- secure mode: ACLs (adding one that exists changes nothing) -------------------------------
if [[ "$SECURE" == 1 ]]; then
  acl() {
    "$JAVA" -Dlog4j2.configurationFile="$DIR/log4j2-tools.properties" -cp "$CLASSPATH_STR" \
      org.apache.kafka.tools.AclCommand --bootstrap-server "$BOOTSTRAP" \
      --command-config "$DIR/admin.properties" --add --force "$@" >>"$DIR/acl.log" 2>&1 \
      || { tail -n 20 "$DIR/acl.log" >&2; die "setting ACLs failed (see $DIR/acl.log)"; }
  }
  # orderlog's nodes: everything on their topics, groups and transactions.
  acl --allow-principal User:orderlog --operation All --topic orders. --resource-pattern-type prefixed
  acl --allow-principal User:orderlog --operation All --group '*'
  acl --allow-principal User:orderlog --operation All --transactional-id '*'
  acl --allow-principal User:orderlog --operation IdempotentWrite --operation Create \
    --operation Describe --operation DescribeConfigs --cluster
  # Auditors read the events, the members and the dead letters; never orders.keys.
  for t in orders.events orders.members orders.events.dead-letter; do
    acl --allow-principal User:auditor --operation Read --operation Describe --topic "$t"
  done
  acl --allow-principal User:auditor --operation Read --group '*'
  log "ACLs set: orderlog on orders.*, auditor reads orders.events, orders.members and orders.events.dead-letter"
fi
finish
