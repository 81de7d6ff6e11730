#!/usr/bin/env bash
# Fuzzes the gateway's OpenAPI document (/openapi.json) with schemathesis: every operation gets
# generated valid and invalid requests, and every answer is checked — no 5xx, no crash, status
# codes, content types, headers and bodies as the document says.
#
#   tests/gateway/run_schemathesis.sh [MAX_EXAMPLES]     (default 25 per operation)
#
# Needs the binaries (`cargo build --bin triage --examples`, or TRIAGE_BIN and
# TRIAGE_TEST_BACKEND) and schemathesis (tests/gateway/requirements.txt; SCHEMATHESIS overrides
# the command). Runs the real gateway against the loopback test backend on free ports.
set -euo pipefail
cd "$(dirname "$0")/../.."

examples="${1:-25}"
target="${CARGO_TARGET_DIR:-target}"
triage_bin="$(realpath "${TRIAGE_BIN:-$target/debug/triage}")"
backend_bin="$(realpath "${TRIAGE_TEST_BACKEND:-$target/debug/examples/test_backend}")"
schemathesis="${SCHEMATHESIS:-schemathesis}"
work="$(mktemp -d "${TMPDIR:-/tmp}/triage-schemathesis.XXXXXX")"
backend_pid=""
gateway_pid=""
cleanup() {
  [ -n "$gateway_pid" ] && kill "$gateway_pid" 2>/dev/null || true
  [ -n "$backend_pid" ] && kill "$backend_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The test backend serves until its stdin closes: keep a pipe open to it.
mkfifo "$work/backend.in"
"$backend_bin" 127.0.0.1:0 <"$work/backend.in" >"$work/backend.out" 2>/dev/null &
backend_pid=$!
exec 3>"$work/backend.in"
for _ in $(seq 100); do grep -q "listening on" "$work/backend.out" 2>/dev/null && break; sleep 0.1; done
backend_url="$(sed -n 's/^listening on //p' "$work/backend.out")"
[ -n "$backend_url" ] || { echo "the test backend did not start" >&2; exit 1; }

cat >"$work/config.toml" <<TOML
[endpoints.ollama]
url = "$backend_url"
max_concurrent = 32
TOML
TRIAGE_CONFIG="$work/config.toml" TRIAGE_STATE_DIR="$work/state" XDG_CONFIG_HOME="$work/xdg" \
  "$triage_bin" gateway --listen 127.0.0.1:0 >"$work/gateway.out" 2>"$work/gateway.err" &
gateway_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/gateway.out" 2>/dev/null && break; sleep 0.1; done
gateway_url="$(sed -n 's/^triage gateway listening on //p' "$work/gateway.out")"
[ -n "$gateway_url" ] || { echo "the gateway did not start: $(cat "$work/gateway.err")" >&2; exit 1; }

# One worker: with two, schemathesis' threads parse Python sources concurrently inside
# Hypothesis, which CPython 3.11.7 (seen here) can fail with "SystemError: AST constructor
# recursion depth mismatch" — an error of the tool, not a finding. It runs in the work folder so
# that its cache stays out of the repository.
status=0
(cd "$work" && "$schemathesis" run "$gateway_url/openapi.json" \
  --checks all \
  --mode all \
  --max-examples "$examples" \
  --seed 20261202 \
  --workers 1 \
  --request-timeout 30 \
  --generation-database none \
  --no-color) || status=$?

if ! kill -0 "$gateway_pid" 2>/dev/null; then
  echo "the gateway died during the run:" >&2
  cat "$work/gateway.err" >&2
  exit 1
fi
if grep -q "panicked" "$work/gateway.err"; then
  echo "the gateway panicked:" >&2
  cat "$work/gateway.err" >&2
  exit 1
fi
exit "$status"
