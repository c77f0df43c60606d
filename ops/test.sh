#!/usr/bin/env bash
# The one command that runs every check and test of orderlog on a fresh Debian
# machine: installs what is missing, starts a real Kafka broker (from Maven
# Central's jars), then runs rustfmt, clippy and all tests against it, and
# stops the broker.
#
#   ops/test.sh                   # everything
#   ops/test.sh --test kafka_smoke  # extra arguments go to `cargo test`
#
# Builds go to CARGO_TARGET_DIR (default ~/.cache/orderlog/target), outside
# the checkout, so a fresh clone on the same machine reuses the compiled
# RocksDB and librdkafka instead of spending ~20 minutes on them again.
set -euo pipefail
cd "$(dirname "$0")/.."

ops/bootstrap.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/orderlog/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

started=$(date +%s)
step() { echo "== $* ($(( $(date +%s) - started ))s)" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "build (tests, benches, binary)"
cargo build --all-targets --locked

step "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

kafka_dir=$(mktemp -d "${TMPDIR:-/tmp}/orderlog-test-kafka.XXXXXX")
cluster3_dir=$(mktemp -d "${TMPDIR:-/tmp}/orderlog-test-kafka3.XXXXXX")
cleanup() {
  # A broker-fault test may have left a node paused: resume it, so it stops.
  for pidfile in "$cluster3_dir"/node-*/pid; do
    [[ -f "$pidfile" ]] && kill -CONT "$(cat "$pidfile")" 2>/dev/null || true
  done
  ops/kafka/stop.sh --dir "$kafka_dir" --purge >&2 || true
  ops/kafka/stop.sh --dir "$cluster3_dir" --purge >&2 || true
}
trap cleanup EXIT
step "start Kafka: one broker, and a three-broker cluster for the broker-fault test"
# Free client ports P.. whose controller ports P+100.. are free too (a broker
# of someone else's, or a developer's test broker, may hold the defaults).
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_ports() { # $1 = nodes, then candidates; prints the first free P
  local n=$1 c i busy
  shift
  for c in "$@"; do
    busy=0
    for ((i = 0; i < n; i++)); do
      if in_use $((c + i)) || in_use $((c + 100 + i)); then busy=1; fi
    done
    (( busy )) || { echo "$c"; return 0; }
  done
  return 1
}
port="${ORDERLOG_TEST_KAFKA_PORT:-$(free_ports 1 39092 39292 39492 39692 39892 40092 40292 || true)}"
[[ -n "$port" ]] || { echo "test.sh: no free port pair for Kafka among 39092..40292; set ORDERLOG_TEST_KAFKA_PORT" >&2; exit 1; }
port3="${ORDERLOG_TEST_CLUSTER3_PORT:-$(free_ports 3 42092 42392 42692 42992 43292 43592 || true)}"
[[ -n "$port3" ]] || { echo "test.sh: no free ports for the three-broker cluster among 42092..43694; set ORDERLOG_TEST_CLUSTER3_PORT" >&2; exit 1; }
# Both start at once (each takes 15-30 s).
ops/kafka/start.sh --dir "$cluster3_dir" --brokers 3 --port "$port3" >"$cluster3_dir.out" &
cluster3_pid=$!
ORDERLOG_TEST_BROKERS=$(ops/kafka/start.sh --dir "$kafka_dir" --port "$port" | tail -n 1)
wait "$cluster3_pid" || { echo "test.sh: the three-broker cluster did not start (its errors are above)" >&2; exit 1; }
rm -f "$cluster3_dir.out"
export ORDERLOG_TEST_BROKERS
export ORDERLOG_TEST_CLUSTER3_DIR="$cluster3_dir"
step "Kafka at $ORDERLOG_TEST_BROKERS, three brokers in $cluster3_dir; cargo test"

cargo test --all-targets --locked --no-fail-fast "$@"
step "done"
