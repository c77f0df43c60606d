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
cleanup() { ops/kafka/stop.sh --dir "$kafka_dir" --purge >&2 || true; }
trap cleanup EXIT
step "start Kafka"
# A free client port P whose controller port P+100 is free too (a broker
# of someone else's, or a developer's test broker, may hold the default).
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port="${ORDERLOG_TEST_KAFKA_PORT:-}"
if [[ -z "$port" ]]; then
  for candidate in 39092 39292 39492 39692 39892 40092 40292; do
    if ! in_use "$candidate" && ! in_use $((candidate + 100)); then port=$candidate; break; fi
  done
  [[ -n "$port" ]] || { echo "test.sh: no free port pair for Kafka among 39092..40292; set ORDERLOG_TEST_KAFKA_PORT" >&2; exit 1; }
fi
ORDERLOG_TEST_BROKERS=$(ops/kafka/start.sh --dir "$kafka_dir" --port "$port" | tail -n 1)
export ORDERLOG_TEST_BROKERS
step "Kafka at $ORDERLOG_TEST_BROKERS; cargo test"

cargo test --all-targets --locked --no-fail-fast "$@"
step "done"
