#!/usr/bin/env bash
# Renders the README's VS Code screenshot: the status view's page from the extension's own
# HTML generator, fed with a real `triage/status` answer (statusViewPage.ts), in headless
# Chromium.   bash editors/vscode/test/tools/screenshot.sh docs/img/vscode-status.png
# Needs: chromium (apt-get install -y chromium), npm ci in editors/vscode, and
# `cargo build --bin triage --examples`.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="$(realpath -m "${1:-../../docs/img/vscode-status.png}")"
work="$(mktemp -d /tmp/triage-vscode-shot-XXXXXX)"
trap 'rm -rf "$work"' EXIT
npx tsc -p .
node out/test/tools/statusViewPage.js "$work/status.html"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/chromium" --hide-scrollbars --window-size=1100,820 \
  --screenshot="$out" "file://$work/status.html" 2>/dev/null
echo "wrote $out"
