#!/usr/bin/env bash
# The one command that runs every check and test of orderlog on a fresh Debian
# machine: installs what is missing, starts a real Kafka broker (from Maven
# Central's jars), then runs rustfmt, clippy and all tests against it, fuzzes
# the HTTP API with schemathesis (ops/schemathesis.sh), and stops the broker.
#
#   ops/test.sh                   # everything
#   ops/test.sh --test black_box kafka_smoke::  # extra arguments go to `cargo test`
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
# Client ports P.. and controller ports P+100.. below the kernel's ephemeral
# range (32768+ on Linux), where an outgoing connection could take one between
# the check and the bind; a port already in use (someone else's broker, or a
# developer's test broker) moves on to the next candidate, and so does a start
# that fails anyway.
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports_free() { # $1 = nodes, $2 = first client port
  local i
  for ((i = 0; i < $1; i++)); do
    if in_use $(($2 + i)) || in_use $(($2 + 100 + i)); then return 1; fi
  done
}
start_kafka() { # $1 = nodes, $2 = dir, $3 = fixed port or "", then candidates; prints the bootstrap servers
  local n=$1 dir=$2 fixed=$3 c
  shift 3
  for c in ${fixed:-"$@"}; do
    [[ -n "$fixed" ]] || ports_free "$n" "$c" || continue
    if ops/kafka/start.sh --dir "$dir" --brokers "$n" --port "$c" | tail -n 1; then return 0; fi
    echo "test.sh: Kafka ($n node(s)) did not start on port $c; trying the next ports" >&2
    ops/kafka/stop.sh --dir "$dir" --purge >&2 || true
    mkdir -p "$dir"
  done
  echo "test.sh: no Kafka ($n node(s)) could be started on ports ${fixed:-$*} (set ORDERLOG_TEST_KAFKA_PORT / ORDERLOG_TEST_CLUSTER3_PORT)" >&2
  return 1
}
# Both start at once (each takes 15-30 s).
start_kafka 3 "$cluster3_dir" "${ORDERLOG_TEST_CLUSTER3_PORT:-}" 23092 23392 23692 23992 24292 24592 >/dev/null &
cluster3_pid=$!
ORDERLOG_TEST_BROKERS=$(start_kafka 1 "$kafka_dir" "${ORDERLOG_TEST_KAFKA_PORT:-}" 21092 21292 21492 21692 21892 22092 22292)
wait "$cluster3_pid" || { echo "test.sh: the three-broker cluster did not start (its errors are above)" >&2; exit 1; }
export ORDERLOG_TEST_BROKERS
export ORDERLOG_TEST_CLUSTER3_DIR="$cluster3_dir"
step "Kafka at $ORDERLOG_TEST_BROKERS, three brokers in $cluster3_dir; cargo test"

cargo test --all-targets --locked --no-fail-fast "$@"

# The HTTP API against schemas/openapi.json, on a full run only (not when
# arguments pick some tests): schemathesis from PyPI, about a minute.
if (($# == 0)); then
  step "schemathesis: the API fuzzed against schemas/openapi.json"
  ops/schemathesis.sh "$CARGO_TARGET_DIR/debug/orderlog"
  # The decoders of outside bytes under libFuzzer, from the committed seeds:
  # a smoke run of 20 s per target (the first build takes a few minutes).
  step "cargo-fuzz: envelope decoder, order body, feed cursor"
  ops/fuzz.sh --seconds 20
fi
step "done"
