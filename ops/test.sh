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
ORDERLOG_TEST_BROKERS=$(ops/kafka/start.sh --dir "$kafka_dir" --port "${ORDERLOG_TEST_KAFKA_PORT:-39092}" | tail -n 1)
export ORDERLOG_TEST_BROKERS
step "Kafka at $ORDERLOG_TEST_BROKERS; cargo test"

cargo test --all-targets --locked --no-fail-fast "$@"
step "done"
