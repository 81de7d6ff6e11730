#!/usr/bin/env bash
# Renders the README's Neovim screenshot from a real run: Neovim in tmux with the plugin,
# the real `triage serve` and the loopback test backend, `:TriageExplain` captured while
# the answer streams (tmux capture-pane -e), ANSI → HTML (aha) → PNG (headless Chromium).
#   bash editors/nvim/tests/screenshot.sh docs/img/nvim-explain.png
# Needs: tmux, aha, chromium, neovim (apt-get install -y tmux aha chromium neovim) and
# `cargo build --bin triage --examples`.
set -euo pipefail
cd "$(dirname "$0")/../../.."
out="$(realpath -m "${1:-docs/img/nvim-explain.png}")"
target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
work="$(mktemp -d /tmp/triage-shot-XXXXXX)"
session="triage-shot-$$"
cleanup() {
  tmux kill-session -t "$session" 2>/dev/null || true
  [ -n "${backend_pid:-}" ] && kill "$backend_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkfifo "$work/backend-in"
"$target/debug/examples/test_backend" 127.0.0.1:0 <"$work/backend-in" >"$work/backend-out" 2>/dev/null &
backend_pid=$!
exec 3>"$work/backend-in"   # the backend serves until its stdin closes
for _ in $(seq 100); do grep -q "listening on" "$work/backend-out" && break; sleep 0.1; done
url="$(sed -n 's/^listening on //p' "$work/backend-out")"
printf '[endpoints.ollama]\nurl = "%s"\n' "$url" >"$work/config.toml"
curl -s -X POST "$url/_test/fault" -H 'content-type: application/json' \
  -d '{"model": "qwen3-coder:30b", "fault": {"kind": "trickle", "ms": 40, "tokens": 400}}' >/dev/null

cat >"$work/retry.py" <<'PY'
import time


def retry(fn, attempts=3, delay=0.5):
    """Calls fn until it succeeds, at most `attempts` times."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(delay * 2 ** attempt)
PY

cat >"$work/init.lua" <<LUA
vim.opt.runtimepath:append('$PWD/editors/nvim')
vim.o.termguicolors = true
vim.o.number = true
vim.o.laststatus = 2
vim.cmd('syntax on')
vim.cmd('colorscheme slate')
vim.cmd('highlight NormalFloat guibg=#1f2430 guifg=#d8dee9')
vim.cmd('highlight FloatBorder guibg=#1f2430 guifg=#7f8c98')
vim.cmd('highlight StatusLine gui=NONE guibg=#2e3440 guifg=#d8dee9')
vim.o.statusline = ' %f %m%=%{%v:lua.require("triage").statusline_highlighted()%} '
require('triage').setup({ cmd = { '$target/debug/triage', 'serve' } })
LUA

tmux new-session -d -s "$session" -x 132 -y 30 \
  "env TRIAGE_CONFIG=$work/config.toml TRIAGE_STATE_DIR=$work/state XDG_CONFIG_HOME=$work/xdg TERM=xterm-256color nvim -u $work/init.lua -i NONE $work/retry.py"
sleep 0.5
tmux send-keys -t "$session" '4GV11j' && sleep 0.3
tmux send-keys -t "$session" ':TriageExplain' Enter
sleep 3.2
tmux capture-pane -e -p -t "$session" >"$work/screen.ansi"

{ echo '<style>body{margin:0;background:#000} pre{font:15px/1.25 "DejaVu Sans Mono",monospace;margin:0;padding:10px}</style>'
  echo '<pre style="color:#d0d0d0">'
  aha --black --no-header <"$work/screen.ansi"
  echo '</pre>'
} >"$work/screen.html"
sed -i "s|$work/||g" "$work/screen.html"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/chromium" --hide-scrollbars --window-size=1240,600 \
  --screenshot="$out" "file://$work/screen.html" 2>/dev/null
echo "wrote $out"
