#!/usr/bin/env bash
# The main job on a fresh Debian machine: installs what is missing, builds,
# and runs `orderlog serve`. With no --brokers it runs on the embedded Kafka
# mock cluster (demo: nothing is kept across restarts) and prints one bearer
# token per role.
#
#   ops/serve.sh                                  # embedded demo on 127.0.0.1:8080
#   ops/serve.sh --brokers 127.0.0.1:9092 --kek-file orderlog.kek
#
# Shares the build cache of ops/test.sh (CARGO_TARGET_DIR, dev profile with
# optimised dependencies), so RocksDB is compiled once for both.
set -euo pipefail
cd "$(dirname "$0")/.."
ops/bootstrap.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/orderlog/target}"
cargo build --locked --bin orderlog
exec "$CARGO_TARGET_DIR/debug/orderlog" serve "$@"
