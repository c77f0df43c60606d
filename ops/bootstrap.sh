#!/usr/bin/env bash
# Installs what building and testing orderlog needs on a fresh Debian machine,
# and checks what cannot be installed here. Idempotent: a second run only checks.
#
#   - Debian packages: clang + libclang (RocksDB's bindgen), a C/C++ toolchain,
#     cmake, pkg-config, libssl-dev (librdkafka's TLS/SASL), Java 17 and Maven
#     (the Kafka broker the tests start, fetched from Maven Central).
#   - Rust: cargo with rustfmt and clippy must already be there (rustup).
set -euo pipefail

packages=(clang libclang-dev build-essential cmake pkg-config libssl-dev zlib1g-dev maven openjdk-17-jre-headless)

missing=()
for p in "${packages[@]}"; do
  # Java and Maven may come from elsewhere (a JDK in /usr/lib/jvm, a manual Maven): accept working commands.
  case "$p" in
    maven) command -v mvn >/dev/null 2>&1 && continue ;;
    openjdk-17-jre-headless) command -v java >/dev/null 2>&1 && continue ;;
  esac
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == *"install ok installed"* ]] || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}" >&2
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

fail() { echo "bootstrap: $*" >&2; exit 1; }

command -v java >/dev/null || fail "java not found: install a Java 17+ runtime (apt-get install openjdk-17-jre-headless)"
# Whole outputs are captured first: with pipefail, a reader that stops early
# (head, awk's exit) would fail the pipeline with SIGPIPE.
java_out=$(java -version 2>&1 || true)
java_major=$(awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}' <<<"$java_out")
[[ -n "$java_major" && "$java_major" -ge 17 ]] || fail "Java 17 or newer is needed for the Kafka broker, found: ${java_out%%$'\n'*}"
command -v mvn >/dev/null || fail "mvn not found: install Maven (apt-get install maven)"
command -v cargo >/dev/null || fail "cargo not found: install Rust 1.95+ with rustup (https://rustup.rs), then rerun"
cargo fmt --version >/dev/null 2>&1 || fail "rustfmt missing: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || fail "clippy missing: rustup component add clippy"
mvn_out=$(mvn -B -v 2>/dev/null || true)
mvn_version=$(sed -n '1{s/\x1b\[[0-9;]*m//g;p}' <<<"$mvn_out" | cut -d' ' -f1-3)
echo "bootstrap: ok (java $java_major, $mvn_version, $(cargo --version))" >&2
