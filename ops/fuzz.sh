#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that take outside bytes (cargo-fuzz,
# libFuzzer): the event envelope decoder, the body of POST /v1/orders with its
# validation, and the feed cursor.
#
#   ops/fuzz.sh [--seconds N] [target ...]
#
# Each target runs N seconds (default 20: the smoke run ops/test.sh does) from
# the committed seeds in fuzz/seeds/<target>, on a scratch copy, so the repo
# stays clean; a crash leaves its input in fuzz/artifacts/<target>/ and fails
# the run. For a long run: ops/fuzz.sh --seconds 3600 envelope.
#
# cargo-fuzz needs nightly compiler flags: RUSTC_BOOTSTRAP=1 lets the installed
# stable toolchain take them. The build has its own target directory
# (ORDERLOG_FUZZ_TARGET_DIR, default ~/.cache/orderlog/fuzz-target); it links
# the RocksDB archive the main build already compiled, when there is one
# (CARGO_TARGET_DIR, as ops/test.sh sets it), instead of compiling RocksDB's
# C++ a second time.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECONDS_PER=20
TARGETS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) SECONDS_PER="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(envelope place_order_body cursor)

export RUSTC_BOOTSTRAP=1
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
target_dir="${ORDERLOG_FUZZ_TARGET_DIR:-$HOME/.cache/orderlog/fuzz-target}"
main_target="${CARGO_TARGET_DIR:-$HOME/.cache/orderlog/target}"
rocksdb_lib="$(ls -t "$main_target"/debug/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -n 1 || true)"
if [[ -n "$rocksdb_lib" ]]; then
  export ROCKSDB_LIB_DIR="$(dirname "$rocksdb_lib")" ROCKSDB_STATIC=1
else
  echo "fuzz.sh: no RocksDB archive under $main_target (build the crate first): compiling RocksDB for the fuzz build, which takes long" >&2
fi

for t in "${TARGETS[@]}"; do
  cargo fuzz build -O --target-dir "$target_dir" "$t"
done
failed=()
for t in "${TARGETS[@]}"; do
  scratch="$(mktemp -d)"
  echo "fuzz.sh: $t for ${SECONDS_PER}s from fuzz/seeds/$t" >&2
  # New inputs go to the scratch corpus (the first directory); the seeds are read only.
  if cargo fuzz run -O --target-dir "$target_dir" "$t" "$scratch" "fuzz/seeds/$t" -- \
       -max_total_time="$SECONDS_PER" -print_final_stats=1 >"$scratch.log" 2>&1; then
    grep -E '^stat::number_of_executed_units|^stat::new_units_added|DONE' "$scratch.log" | tr '\n' ' ' >&2
    echo >&2
  else
    tail -n 40 "$scratch.log" >&2
    failed+=("$t")
  fi
  rm -rf "$scratch" "$scratch.log"
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz.sh: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz.sh: ${TARGETS[*]}: no crash in ${SECONDS_PER}s each" >&2
