#!/usr/bin/env bash
# API fuzzing: schemathesis (from PyPI) against schemas/openapi.json and a
# running `orderlog serve` on its embedded broker. Fails on any 5xx (but the
# documented 503 view_lagging), and on any status code, content type or body
# that schemas/openapi.json does not describe.
#
#   ops/schemathesis.sh <orderlog binary> [schemathesis run options]
#   ops/schemathesis.sh target/debug/orderlog --seed 1234          # replay a run
#   ops/schemathesis.sh target/debug/orderlog --max-examples 200   # a longer run
#
# Schemathesis runs in a temporary directory (its caches and Hypothesis'
# stay out of the checkout), so give report paths absolute:
# `--report har --report-dir /tmp/reports`.
#
# From scratch and idempotently:
#   1. a virtualenv with the pinned schemathesis and its pinned dependencies,
#      cached in ~/.cache/orderlog/schemathesis-<version> (needs Python 3.11+
#      with venv, on Debian python3-venv, and PyPI the first time);
#   2. `orderlog serve` on 127.0.0.1, a free port, a temporary data directory
#      and a fresh random token per role;
#   3. seeds orders in every state (active and shared with both view parties,
#      cancelled, erased, one field class erased, another merchant's), so reads
#      answer real bodies and not only 404, and a few active ones for the
#      fuzzed shares, cancels and erasures to move along (so they never touch
#      the ones the reads get); a path `id` is a seeded one 70% of the time
#      and a generated value otherwise;
#   4. run 1: every operation with the token of the role that may call it
#      (checkout places, shares, cancels and reads; privacy erases, holds,
#      reads erasure status and makes subject requests; auditor reads the
#      cluster; logistics:sf-express and
#      merchant:m-1 read their views, whose path names that party 80% of the
#      time). One run rather than one per role, so the stateful phase can
#      chain a placement into a share, a cancel or an erasure;
#   5. run 2: the reads an auditor may make, as auditor (`personal` is null
#      unless it asks for a reveal);
#   6. stops the server; fails if it panicked. On failure the server's log is
#      kept and its path printed.
#
# Checks: not_a_server_error, status_code_conformance,
# content_type_conformance, response_schema_conformance, and three of ours
# (in the hooks below): a 503 must be view_lagging; every read answered 2xx
# at least once (so a run that only ever met 401 or 404 fails); an auditor
# sees no personal data without a reveal.
set -euo pipefail

bin=${1:?usage: ops/schemathesis.sh <orderlog binary> [schemathesis run options]}
shift
[[ -x "$bin" && ! -d "$bin" ]] || { echo "schemathesis.sh: $bin is not an executable" >&2; exit 2; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
cd "$(dirname "$0")/.."
schema=$PWD/schemas/openapi.json

SCHEMATHESIS_VERSION=4.32.5
# What pip resolved for it when it was pinned: a new release of a
# dependency (hypothesis above all) must not change what a run does.
CONSTRAINTS="anyio==4.16.0 certifi==2026.10.19.post1 charset-normalizer==3.5.3 click==8.5.1
graphql-core==3.3.2 harfile==0.6.0 hypothesis==6.170.17 hypothesis-graphql==0.13.5 idna==3.20
iniconfig==2.3.1 jsonschema_rs==0.60.3 markdown-it-py==4.3.0 MarkupSafe==3.0.4 mdurl==0.1.2
packaging==26.4 pluggy==1.7.0 Pygments==2.21.0 pyrate-limiter==4.5.1 pytest==9.2.0 PyYAML==6.0.4
requests==2.34.2 rich==15.0.0 sortedcontainers==2.4.0 typing_extensions==4.16.0 urllib3==2.8.0
Werkzeug==3.1.9"
# Test cases per operation and phase: 25 to 60 s for both runs on 2 cores
# (the spread is reads that wait 5 s for a min_version or cursor ahead).
EXAMPLES=30

started=$(date +%s)
step() { echo "== schemathesis.sh: $* ($(($(date +%s) - started))s)" >&2; }

# 1. The virtualenv, made once per pinned version.
venv="$HOME/.cache/orderlog/schemathesis-$SCHEMATHESIS_VERSION"
st="$venv/bin/schemathesis"
py="$venv/bin/python"
if ! "$st" --version 2>/dev/null | grep -qxF "schemathesis, version $SCHEMATHESIS_VERSION"; then
  step "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  command -v python3 >/dev/null || { echo "schemathesis.sh: python3 not found (apt-get install python3 python3-venv)" >&2; exit 1; }
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { echo "schemathesis.sh: schemathesis $SCHEMATHESIS_VERSION needs Python 3.11 or newer (Debian 12 or later)" >&2; exit 1; }
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >&2; then
    rm -rf "$venv"
    echo "schemathesis.sh: python3 -m venv failed (apt-get install python3-venv)" >&2
    exit 1
  fi
  tr ' ' '\n' <<<"$CONSTRAINTS" >"$venv/constraints.txt"
  if ! "$venv/bin/pip" install --quiet --disable-pip-version-check \
    -c "$venv/constraints.txt" "schemathesis==$SCHEMATHESIS_VERSION" >&2; then
    rm -rf "$venv"
    echo "schemathesis.sh: pip could not install schemathesis $SCHEMATHESIS_VERSION" >&2
    exit 1
  fi
fi

# 2. The server.
work=$(mktemp -d "${TMPDIR:-/tmp}/orderlog-schemathesis.XXXXXX")
server_pid=""
stop_server() {
  [[ -n "$server_pid" ]] || return 0
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
cleanup() {
  local rc=$?
  stop_server
  if ((rc == 0)); then
    rm -rf "$work"
  else
    rm -rf "$work/data"
    echo "schemathesis.sh: failed; the server's log is $work/serve.log" >&2
  fi
}
trap cleanup EXIT

# 192 random bits each. They reach schemathesis through its ${VAR}
# substitution, never a file.
for role in CHECKOUT PRIVACY AUDITOR SF M1; do
  t=$("$py" -c 'import secrets; print(secrets.token_hex(24))')
  export "ST_$role=$t"
done
# None of the caller's ORDERLOG_* settings (brokers, config file, KEK): the
# server is this run's alone.
own_env=()
for v in $(compgen -e); do [[ $v == ORDERLOG_* ]] && own_env+=(-u "$v"); done
step "starting $bin serve on the embedded broker"
env "${own_env[@]}" \
  ORDERLOG_TOKENS="$ST_CHECKOUT=checkout,$ST_PRIVACY=privacy,$ST_AUDITOR=auditor,$ST_SF=logistics:sf-express,$ST_M1=merchant:m-1" \
  "$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/serve.log" 2>&1 &
server_pid=$!
base=""
for _ in $(seq 600); do
  base=$(sed -n 's|^orderlog listening on \(http://127\.0\.0\.1:[0-9]*\)$|\1|p' "$work/serve.log")
  [[ -n "$base" ]] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if [[ -z "$base" ]]; then
  echo "schemathesis.sh: the server did not start; its log:" >&2
  cat "$work/serve.log" >&2
  exit 1
fi

# 3. Ready, then the seeded orders; their ids go to schemathesis dictionaries:
# the reads get orders in every state that no fuzzed write touches, the
# writes (share, cancel, erase) orders of their own to move along.
ST_BASE=$base "$py" - "$work/read.txt" "$work/write.txt" "$work/erased.txt" <<'PY'
import json, os, sys, time, urllib.error, urllib.request, uuid

base = os.environ["ST_BASE"]

def call(method, path, token=None, body=None):
    req = urllib.request.Request(base + path, method=method)
    if token:
        req.add_header("Authorization", "Bearer " + os.environ[token])
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
        req.add_header("Idempotency-Key", str(uuid.uuid4()))
    try:
        with urllib.request.urlopen(req, data, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read()

def ok(method, path, token, body=None):
    status, answer = call(method, path, token, body)
    if status not in (200, 201):
        sys.exit(f"seeding: {method} {path} answered {status}: {answer!r}")
    return answer

deadline = time.time() + 60
while True:
    try:
        if call("GET", "/readyz")[0] == 200:
            break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("seeding: the server was not ready within 60 s")
    time.sleep(0.2)

def place(merchant="m-1", identity=False, contact=True):
    items = [{"sku": "TEA-250", "name": "Longjing tea", "quantity": 2, "unit_price": 8800}]
    if identity:
        items.append({"sku": "DRILL-18V", "name": "Cordless drill", "quantity": 1,
                      "unit_price": 39900, "real_name": True})
    body = {
        "order_number": "ON-" + uuid.uuid4().hex[:12], "merchant_id": merchant,
        "currency": "CNY", "amount": sum(i["quantity"] * i["unit_price"] for i in items),
        "items": items,
        "consignee": {"name": "张三", "mobile": "13800138000", "address": {
            "province": "广东省", "city": "深圳市", "district": "南山区",
            "street": "科技园路 1 号", "postal_code": "518057"}},
    }
    if contact:
        body["contact"] = {"email": "zhang.san@example.com", "landline": "0755-12345678"}
    if identity:
        body["id_number"] = "11010519491231002X"
    return ok("POST", "/v1/orders", "ST_CHECKOUT", body)["order_id"]

def share(oid, kind, party, fields):
    ok("POST", f"/v1/orders/{oid}/shares", "ST_CHECKOUT",
       {"party": {"kind": kind, "id": party}, "fields": fields})

def shared(identity=False, contact=True):
    o = place(identity=identity, contact=contact)
    share(o, "logistics", "sf-express", ["shipping", "contact"] if contact else ["shipping"])
    share(o, "merchant", "m-1", ["identity"] if identity else ["shipping"])
    return o

# Every order below is at version 3 or more: a min_version of 1 to 3 never waits.
read = [shared(identity=True), shared(contact=False)]  # active
o = shared(); read.append(o)  # cancelled
ok("POST", f"/v1/orders/{o}/cancel", "ST_CHECKOUT", {"reason": "customer_request"})
erased = []
o = place(identity=True); read.append(o); erased.append(o)  # erased
share(o, "logistics", "sf-express", ["shipping", "contact", "identity"])
ok("POST", f"/v1/orders/{o}/erase", "ST_PRIVACY", {})
o = place(identity=True); read.append(o); erased.append(o)  # one field class erased
share(o, "logistics", "sf-express", ["shipping", "identity"])
ok("POST", f"/v1/orders/{o}/erase", "ST_PRIVACY", {"fields": ["identity"]})
for fields in ({}, {"fields": ["contact"]}):
    o = shared(identity=True); read.append(o); erased.append(o)
    ok("POST", f"/v1/orders/{o}/erase", "ST_PRIVACY", fields)
o = place(merchant="m-2", contact=False); read.append(o)  # neither view party's
share(o, "logistics", "yto", ["shipping"])
write = [shared(identity=True), shared(), shared(contact=False), place(), place(identity=True)]
for path, ids in zip(sys.argv[1:], (read, write, erased)):
    with open(path, "w") as f:
        f.write("".join(json.dumps(i) + "\n" for i in ids))
PY
step "server at $base, $(cat "$work/read.txt" "$work/write.txt" | wc -l) orders seeded"

cat >"$work/hooks.py" <<'PY'
"""orderlog's own checks, beside schemathesis' built-in ones."""
import os

import schemathesis


@schemathesis.check
def only_view_lagging_503(ctx, response, case):
    """The one 5xx the API documents as normal: a read that waited (for
    min_version, a cursor or an erasure) longer than this node's view lagged.
    Anything else (log_unavailable, outcome_unknown, partition_moving,
    shutting_down) means the server failed on a healthy single node."""
    if response.status_code == 503:
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        assert code in ("view_lagging", "index_lagging"), f"503 with error code {code!r}, not view_lagging"


@schemathesis.check
class reads_reach_2xx:
    """Every GET operation answered 2xx at least once: with the seeded orders
    and the right tokens, a run that met only 401, 403 or 404 tested nothing."""

    def __init__(self):
        self.tested = set()
        self.reached = set()

    def after_response(self, ctx, response, case):
        if case.operation.method.upper() == "GET":
            self.tested.add(case.operation.label)
            if 200 <= response.status_code < 300:
                self.reached.add(case.operation.label)

    def after_run(self, ctx):
        never = self.tested - self.reached
        assert not never, "never answered 2xx: " + ", ".join(sorted(never))


@schemathesis.check
def auditor_sees_no_personal_data_unasked(ctx, response, case):
    """GET /v1/orders/{id} as auditor: `personal` is null unless ?reveal=true."""
    if os.environ.get("ST_AS") != "auditor" or response.status_code != 200:
        return
    if case.operation.label != "GET /v1/orders/{id}":
        return
    reveal = str((case.query or {}).get("reveal", "false")).lower() == "true"
    if not reveal:
        assert response.json().get("personal") is None, "personal data without ?reveal=true"
PY

# Settings both runs share. 503 passes not_a_server_error so that
# only_view_lagging_503 can tell the documented one from a failure.
common() {
  cat <<EOF
base-url = "$base"
hooks = "$work/hooks.py"
request-timeout = 20
# One worker: with two, Hypothesis (describing its filters) calls ast.parse
# from both threads, and CPython 3.11 (Debian 12's) can fail that with
# "SystemError: AST constructor recursion depth mismatch", a runtime error
# of the tool, not a finding about the API.
workers = 1
color = false

[cache]
enabled = false

[generation]
max-examples = $EXAMPLES
database = "none"

[checks]
not_a_server_error = { expected-statuses = ["2xx", "3xx", "4xx", "503"] }

[dictionaries]
read = { from-file = "$work/read.txt" }
write = { from-file = "$work/write.txt" }
erased = { from-file = "$work/erased.txt" }
providers = { values = ["sf-express"] }
merchants = { values = ["m-1"] }
versions = { values = [1, 2, 3] }

[parameters]
"path.id" = { dictionary = "read", probability = 0.7 }
"query.min_version" = { dictionary = "versions", probability = 0.8 }
EOF
}
{
  common
  cat <<'EOF'

[[operations]]
include-operation-id = ["placeOrder", "getOrder"]
headers = { Authorization = "Bearer ${ST_CHECKOUT}" }

[[operations]]
include-operation-id = ["shareOrder", "cancelOrder"]
headers = { Authorization = "Bearer ${ST_CHECKOUT}" }
parameters = { "path.id" = { dictionary = "write", probability = 0.7 } }

[[operations]]
include-operation-id = ["eraseOrder", "holdOrder", "releaseHold"]
headers = { Authorization = "Bearer ${ST_PRIVACY}" }
parameters = { "path.id" = { dictionary = "write", probability = 0.7 } }

[[operations]]
include-operation-id = ["subjectSearch", "subjectExport", "subjectErase"]
headers = { Authorization = "Bearer ${ST_PRIVACY}" }

# An erasure's status is 404 for an order never erased: its ids come from the
# erased orders, so that a run reaches its 2xx answer (a run once drew only
# ids that were never erased and failed reads_reach_2xx).
[[operations]]
include-operation-id = "erasureStatus"
headers = { Authorization = "Bearer ${ST_PRIVACY}" }
parameters = { "path.id" = { dictionary = "erased", probability = 0.7 } }

[[operations]]
include-operation-id = "cluster"
headers = { Authorization = "Bearer ${ST_AUDITOR}" }

[[operations]]
include-operation-id = ["shippingFeed", "shippingOrder"]
headers = { Authorization = "Bearer ${ST_SF}" }
parameters = { "path.provider" = { dictionary = "providers", probability = 0.8 } }

[[operations]]
include-operation-id = ["merchantFeed", "merchantOrder"]
headers = { Authorization = "Bearer ${ST_M1}" }
parameters = { "path.merchant" = { dictionary = "merchants", probability = 0.8 } }
EOF
} >"$work/by-role.toml"
{
  common
  cat <<'EOF'

[[operations]]
include-operation-id = ["getOrder", "cluster"]
headers = { Authorization = "Bearer ${ST_AUDITOR}" }

[[operations]]
include-operation-id = "erasureStatus"
headers = { Authorization = "Bearer ${ST_AUDITOR}" }
parameters = { "path.id" = { dictionary = "erased", probability = 0.7 } }
EOF
} >"$work/auditor.toml"

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
checks+=,only_view_lagging_503,reads_reach_2xx,auditor_sees_no_personal_data_unasked
status=0
cd "$work"
step "run 1: every operation as the role that may call it"
"$st" --config-file by-role.toml run "$schema" --checks "$checks" "$@" || status=1
step "run 2: the reads an auditor may make, as auditor"
ST_AS=auditor "$st" --config-file auditor.toml run "$schema" --checks "$checks" \
  --include-operation-id getOrder --include-operation-id erasureStatus --include-operation-id cluster \
  "$@" || status=1

stop_server
if grep -q 'panicked' "$work/serve.log"; then
  echo "schemathesis.sh: the server panicked:" >&2
  grep -m5 'panicked' "$work/serve.log" >&2
  status=1
fi
step "done: $([[ $status == 0 ]] && echo passed || echo FAILED)"
exit $status
