#!/usr/bin/env bash
# Stop the Kafka nodes that ops/kafka/start.sh started in a dir, by the pids in
# <dir>/node-*/pid (never by process name): SIGTERM, wait up to 30 s, SIGKILL.
#
#   ops/kafka/stop.sh [--dir D] [--purge]
#
# Exits 0 when nothing runs. --purge deletes the dir afterwards.
set -euo pipefail

DIR="${ORDERLOG_KAFKA_DIR:-/tmp/orderlog-kafka}"
PURGE=0
GRACE="${ORDERLOG_KAFKA_STOP_TIMEOUT:-30}"

log() { printf '%s\n' "stop.sh: $*" >&2; }
die() { printf '%s\n' "stop.sh: error: $*" >&2; exit 1; }
usage() { echo "usage: $0 [--dir D] [--purge]" >&2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) [[ $# -ge 2 ]] || { usage; die "--dir needs a value"; }; DIR="$2"; shift 2 ;;
    --dir=*) DIR="${1#*=}"; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage; die "unknown argument: $1" ;;
  esac
done

[[ -n "$DIR" ]] || die "--dir must not be empty"
if [[ ! -d "$DIR" ]]; then
  log "$DIR does not exist; nothing to stop"
  exit 0
fi
DIR="$(cd "$DIR" && pwd)"

# The pid of a node dir's live kafka.Kafka process (checked against the
# command line, so a recycled pid is never signalled), else nothing.
node_pid() {
  local nd="$1" pid
  [[ -f "$nd/pid" ]] || return 0
  pid="$(tr -dc '0-9' <"$nd/pid")"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 0
  if grep -qF "kafka.Kafka $nd/server.properties" < <(tr '\0' ' ' <"/proc/$pid/cmdline"); then
    echo "$pid"
  fi
}

declare -A pids=()
for nd in "$DIR"/node-*; do
  [[ -d "$nd" ]] || continue
  pid="$(node_pid "$nd")"
  if [[ -n "$pid" ]]; then
    pids[$nd]="$pid"
  elif [[ -f "$nd/pid" ]]; then
    log "$(basename "$nd"): stale pid file (process gone), removing it"
    rm -f "$nd/pid"
  fi
done

if (( ${#pids[@]} > 0 )); then
  # Signal all nodes at once: a KRaft node's broker asks the controller quorum
  # to approve its controlled shutdown, which needs a majority still alive.
  for nd in "${!pids[@]}"; do
    log "$(basename "$nd"): SIGTERM to pid ${pids[$nd]}"
    kill -TERM "${pids[$nd]}" 2>/dev/null || true
  done
  start=$SECONDS
  deadline=$((SECONDS + GRACE))
  while :; do
    for nd in "${!pids[@]}"; do
      if ! kill -0 "${pids[$nd]}" 2>/dev/null; then
        log "$(basename "$nd"): stopped after $((SECONDS - start)) s"
        rm -f "$nd/pid"
        unset "pids[$nd]"
      fi
    done
    (( ${#pids[@]} == 0 )) && break
    if (( SECONDS >= deadline )); then
      for nd in "${!pids[@]}"; do
        log "$(basename "$nd"): still running after $GRACE s, SIGKILL to pid ${pids[$nd]}"
        kill -KILL "${pids[$nd]}" 2>/dev/null || true
      done
      sleep 1
      for nd in "${!pids[@]}"; do
        if kill -0 "${pids[$nd]}" 2>/dev/null; then
          die "$(basename "$nd"): pid ${pids[$nd]} survived SIGKILL"
        fi
        rm -f "$nd/pid"
      done
      break
    fi
    sleep 0.2
  done
else
  log "no Kafka node of $DIR is running"
fi

if (( PURGE )); then
  # Only delete what looks like a start.sh dir.
  case "$DIR" in
    /|"$HOME"|/tmp|/root|/home|/usr|/etc|/var) die "refusing to purge $DIR" ;;
  esac
  if [[ -f "$DIR/layout" || -f "$DIR/cluster-id" || -d "$DIR/node-1" || -f "$DIR/.start.lock" \
        || -z "$(ls -A "$DIR")" ]]; then
    rm -rf -- "$DIR"
    log "purged $DIR"
  else
    die "$DIR does not look like a start.sh dir (no layout, cluster-id, node-1 or .start.lock, and not empty); not deleting it"
  fi
fi
exit 0
