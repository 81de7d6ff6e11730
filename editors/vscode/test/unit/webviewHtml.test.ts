import assert from "node:assert/strict";
import { test } from "node:test";

import type { StatusReport } from "../../src/protocol";
import { askPanelHtml, statusViewHtml } from "../../src/webviewHtml";

const env = { cspSource: "vscode-resource:", nonce: "abc123" };

const report: StatusReport = {
  endpoints: [
    { name: "ollama", kind: "ollama", url: "http://127.0.0.1:11434/", reachable: true, version: "0.12.3", error: null, models: [{ name: "llama3.2:3b" }, { name: "qwen3-coder:30b" }], loaded: [{ name: "qwen3-coder:30b", size_mb: 19456, vram_mb: 19456, vram_percent: 100 }] },
    { name: "gpu-box", kind: "ollama", url: "http://gpu-box.lan:11434/", reachable: false, version: null, error: "connection refused <x>", models: [], loaded: [] },
  ],
  gpu: { seen: true, total_mb: 32607, used_mb: 23130, free_mb: 9477, level: "ok", devices: [{ index: 0, name: "NVIDIA GeForce RTX 5090", total_mb: 32607, used_mb: 23130, free_mb: 9477, processes: [{ pid: 1 }] }], notes: [] },
  tiers: [
    { tier: "fast", enabled: true, model: "llama3.2:3b", endpoints: ["ollama"], vram_mb: 2500, present: true, loaded: false },
    { tier: "heavy", enabled: true, model: "llama3.1:70b", endpoints: ["ollama"], vram_mb: 42000, present: false, loaded: false },
  ],
  stats: [{ model: "llama3.2:3b", requests: 14, errors: 1, last_error: "stalled", first_token_p50_ms: 180, first_token_p95_ms: 420, tokens_per_s: 96.44, load_ms: 2100 }],
};

test("the status view shows endpoints, GPU, tiers and per-model latency", () => {
  const html = statusViewHtml(env, report, { last: { model: "llama3.2:3b", tier: "fast", confidence: 0.9, reasons: ["a greeting"] } });
  assert.match(html, /<td><b>ollama<\/b><\/td><td>ollama<\/td><td><code>http:\/\/127\.0\.0\.1:11434\/<\/code><\/td><td><span class="ok">reachable<\/span> <span class="muted">0\.12\.3<\/span>/);
  assert.match(html, /<span class="bad">unreachable<\/span><br><span class="muted">connection refused &lt;x&gt;<\/span>/);
  assert.match(html, /22\.6 GB used of 31\.8 GB · 9\.3 GB free · level <span class="level-ok">ok<\/span>/);
  assert.match(html, /width:71%/);
  assert.match(html, /NVIDIA GeForce RTX 5090<\/td><td>22\.6 GB \/ 31\.8 GB<\/td><td>1<\/td>/);
  assert.match(html, /<code>llama3\.1:70b<\/code><\/td><td>ollama<\/td><td>~41\.0 GB<\/td><td><span class="bad">missing<\/span>/);
  assert.match(html, /<td><code>llama3\.2:3b<\/code><\/td><td>14<\/td><td><span class="bad">1<\/span><\/td><td>180 ms<\/td><td>420 ms<\/td><td>96\.4<\/td><td>2100 ms<\/td><td class="muted">stalled<\/td>/);
  assert.match(html, /Last routing decision[\s\S]*<li>a greeting<\/li>/);
});

test("no GPU and no statistics read as such", () => {
  const html = statusViewHtml(env, { ...report, gpu: { seen: false, total_mb: null, used_mb: null, free_mb: null, level: "unknown", devices: [], notes: ["no NVIDIA driver"] }, stats: [] });
  assert.match(html, /No GPU seen/);
  assert.match(html, /no NVIDIA driver/);
  assert.match(html, /No requests answered yet/);
});

test("both pages allow only their own nonce'd script and style", () => {
  for (const html of [askPanelHtml(env), statusViewHtml(env, report)]) {
    assert.match(html, /content="default-src 'none'; img-src vscode-resource: data:; style-src vscode-resource: 'nonce-abc123'; script-src 'nonce-abc123';"/);
    const scripts = html.match(/<script[^>]*>/g) ?? [];
    assert.deepEqual(scripts, ['<script nonce="abc123">']);
  }
  assert.match(askPanelHtml(env), /<button id="stop" class="secondary" disabled>Stop<\/button>/);
});
