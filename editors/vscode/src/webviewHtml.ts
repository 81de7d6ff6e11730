// The HTML of the extension's two webviews: the Ask panel (a shell that the extension fills
// by messages) and the status view (endpoints, GPU, tiers, per-model latency, generated from
// a `triage/status` answer). Pure: no `vscode` import, so the same generator renders the
// README screenshot in headless Chromium.

import type { StatusNotification, StatusReport } from "./protocol";
import { escapeHtml } from "./render";
import type { LastDecision } from "./status";

export interface WebviewEnv {
  /** `webview.cspSource`. */
  cspSource: string;
  /** A fresh random string per render. */
  nonce: string;
}

function csp(env: WebviewEnv): string {
  return `default-src 'none'; img-src ${env.cspSource} data:; style-src ${env.cspSource} 'nonce-${env.nonce}'; script-src 'nonce-${env.nonce}';`;
}

// Theme variables with fallbacks (VS Code's Dark Modern), so the page also looks right outside
// VS Code.
const BASE_CSS = `
:root { color-scheme: dark light; }
body { font-family: var(--vscode-font-family, system-ui, sans-serif); font-size: var(--vscode-font-size, 13px);
  color: var(--vscode-foreground, #cccccc); background: var(--vscode-editor-background, #1f1f1f); margin: 0; padding: 12px 20px 24px; line-height: 1.5; }
h1 { font-size: 1.3em; margin: 0.2em 0 0.6em; font-weight: 600; }
h2 { font-size: 1.05em; margin: 1.4em 0 0.5em; font-weight: 600; color: var(--vscode-textPreformat-foreground, #d7ba7d); }
code, pre { font-family: var(--vscode-editor-font-family, ui-monospace, monospace); }
pre { background: var(--vscode-textCodeBlock-background, #2b2b2b); padding: 8px 10px; border-radius: 4px; overflow-x: auto; }
:not(pre) > code { background: var(--vscode-textCodeBlock-background, #2b2b2b); padding: 1px 4px; border-radius: 3px; }
a { color: var(--vscode-textLink-foreground, #4daafc); }
table { border-collapse: collapse; width: 100%; margin: 4px 0; }
th, td { text-align: left; padding: 4px 10px 4px 0; border-bottom: 1px solid var(--vscode-editorWidget-border, #454545); vertical-align: top; }
th { font-weight: 600; color: var(--vscode-descriptionForeground, #9d9d9d); }
.muted, .footer { color: var(--vscode-descriptionForeground, #9d9d9d); }
.ok { color: var(--vscode-testing-iconPassed, #73c991); }
.bad, .error { color: var(--vscode-errorForeground, #f85149); }
.warning { color: var(--vscode-editorWarning-foreground, #cca700); }
.level-warn { color: var(--vscode-editorWarning-foreground, #cca700); }
.level-critical { color: var(--vscode-errorForeground, #f85149); }
.bar { height: 8px; background: var(--vscode-editorWidget-border, #454545); border-radius: 4px; overflow: hidden; max-width: 420px; }
.bar > div { height: 100%; background: var(--vscode-progressBar-background, #0078d4); }
.bar.level-warn > div { background: var(--vscode-editorWarning-foreground, #cca700); }
.bar.level-critical > div { background: var(--vscode-errorForeground, #f85149); }
button { font: inherit; color: var(--vscode-button-foreground, #ffffff); background: var(--vscode-button-background, #0078d4); border: none; padding: 4px 12px; border-radius: 2px; cursor: pointer; }
button:hover { background: var(--vscode-button-hoverBackground, #026ec1); }
button.secondary { color: var(--vscode-button-secondaryForeground, #cccccc); background: var(--vscode-button-secondaryBackground, #313131); }
button[disabled] { opacity: 0.5; cursor: default; }
.toolbar { display: flex; gap: 8px; align-items: center; margin: 6px 0 10px; }
.pill { display: inline-block; padding: 0 8px; border-radius: 10px; background: var(--vscode-badge-background, #616161); color: var(--vscode-badge-foreground, #f8f8f8); font-size: 0.9em; }
`;

function page(env: WebviewEnv, title: string, body: string, script: string): string {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${csp(env)}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>${escapeHtml(title)}</title>
<style nonce="${env.nonce}">${BASE_CSS}</style>
</head>
<body>
${body}
<script nonce="${env.nonce}">${script}</script>
</body>
</html>`;
}

/** The Ask panel's page. The extension posts `{type: "start" | "render" | "done" | "error" |
 * "cancelled", …}`; the page posts `{type: "stop"}`, `{type: "ask", prompt}` and
 * `{type: "openSource", path, line}`. */
export function askPanelHtml(env: WebviewEnv): string {
  const body = `
<h1 id="title">triage</h1>
<div class="muted" id="prompt"></div>
<div class="toolbar"><span class="pill" id="route">…</span><button id="stop" class="secondary" disabled>Stop</button></div>
<div id="answer" class="markdown"></div>
<div id="details"></div>
<form id="again" class="toolbar"><input id="next" type="text" placeholder="Ask another question…" style="flex:1;font:inherit;padding:4px;color:inherit;background:var(--vscode-input-background,#313131);border:1px solid var(--vscode-input-border,#3c3c3c)"><button type="submit">Ask</button></form>`;
  const script = `
const vscode = acquireVsCodeApi();
const $ = (id) => document.getElementById(id);
$("stop").addEventListener("click", () => vscode.postMessage({ type: "stop" }));
$("again").addEventListener("submit", (e) => { e.preventDefault(); const p = $("next").value.trim(); if (p) { vscode.postMessage({ type: "ask", prompt: p }); $("next").value = ""; } });
document.addEventListener("click", (e) => {
  const a = e.target.closest && e.target.closest("a.source");
  if (a) { e.preventDefault(); vscode.postMessage({ type: "openSource", path: a.dataset.path, line: Number(a.dataset.line) }); }
});
window.addEventListener("message", (event) => {
  const m = event.data;
  if (m.type === "start") { $("title").textContent = m.title; $("prompt").textContent = m.prompt || ""; $("answer").innerHTML = ""; $("details").innerHTML = ""; $("route").textContent = m.route || "routing…"; $("stop").disabled = false; }
  else if (m.type === "render") { $("answer").innerHTML = m.html; if (m.route) $("route").textContent = m.route; window.scrollTo(0, document.body.scrollHeight); }
  else if (m.type === "done" || m.type === "error" || m.type === "cancelled") { if (m.html !== undefined) $("answer").innerHTML = m.html; $("details").innerHTML = m.details || ""; $("route").textContent = m.route || m.type; $("stop").disabled = true; }
});
vscode.postMessage({ type: "ready" });`;
  return page(env, "triage", body, script);
}

function mb(value: number | null | undefined): string {
  if (value === null || value === undefined) return "–";
  return value >= 1024 ? `${(value / 1024).toFixed(1)} GB` : `${value} MB`;
}

function msText(value: number | null | undefined): string {
  if (value === null || value === undefined) return "–";
  return value >= 10000 ? `${(value / 1000).toFixed(1)} s` : `${value} ms`;
}

function yesNo(value: boolean | null, yes: string, no: string, unknown = "–"): string {
  if (value === null) return `<span class="muted">${unknown}</span>`;
  return value ? `<span class="ok">${yes}</span>` : `<span class="bad">${no}</span>`;
}

/** The status view: everything `triage/status` answers, plus the live notification and the
 * last routing decision. */
export function statusViewHtml(
  env: WebviewEnv,
  report: StatusReport,
  extra: { notification?: StatusNotification; last?: LastDecision; updated?: string } = {},
): string {
  const e = escapeHtml;
  const gpu = report.gpu;
  const level = gpu.level.toLowerCase();
  const percent = gpu.total_mb && gpu.used_mb !== null ? Math.round((100 * gpu.used_mb) / gpu.total_mb) : undefined;
  const gpuHtml = gpu.seen
    ? `<p>${mb(gpu.used_mb)} used of ${mb(gpu.total_mb)} · ${mb(gpu.free_mb)} free · level <span class="level-${e(level)}">${e(level)}</span></p>
<div class="bar level-${e(level)}"><div style="width:${percent ?? 0}%"></div></div>
${gpu.devices.length > 0 ? `<table><tr><th>#</th><th>device</th><th>used</th><th>processes</th></tr>${gpu.devices
        .map((d) => `<tr><td>${d.index}</td><td>${e(d.name)}</td><td>${mb(d.used_mb)} / ${mb(d.total_mb)}</td><td>${d.processes.length}</td></tr>`)
        .join("")}</table>` : ""}`
    : `<p class="muted">No GPU seen (no NVIDIA driver or GPU): routing by analysis alone.</p>`;
  const notes = gpu.notes.length > 0 ? `<ul>${gpu.notes.map((n) => `<li class="muted">${e(n)}</li>`).join("")}</ul>` : "";

  const endpoints = report.endpoints
    .map((ep) => {
      const loaded = ep.loaded.length > 0 ? ep.loaded.map((l) => `${e(l.name)} <span class="muted">${mb(l.size_mb)}, ${l.vram_percent}% in VRAM</span>`).join("<br>") : `<span class="muted">none</span>`;
      const state = ep.reachable ? `<span class="ok">reachable</span>${ep.version ? ` <span class="muted">${e(ep.version)}</span>` : ""}` : `<span class="bad">unreachable</span><br><span class="muted">${e(ep.error ?? "")}</span>`;
      return `<tr><td><b>${e(ep.name)}</b></td><td>${e(ep.kind)}</td><td><code>${e(ep.url)}</code></td><td>${state}</td><td>${ep.models.length}</td><td>${loaded}</td></tr>`;
    })
    .join("");

  const tiers = report.tiers
    .map(
      (t) =>
        `<tr><td><b>${e(t.tier)}</b>${t.enabled ? "" : ' <span class="muted">(off)</span>'}</td><td><code>${e(t.model)}</code></td><td>${e(t.endpoints.join(", "))}</td><td>~${mb(t.vram_mb)}</td><td>${yesNo(t.present, "present", "missing")}</td><td>${t.loaded ? '<span class="ok">loaded</span>' : '<span class="muted">not loaded</span>'}</td></tr>`,
    )
    .join("");

  const stats =
    report.stats.length > 0
      ? `<table><tr><th>model</th><th>requests</th><th>errors</th><th>first token p50</th><th>p95</th><th>tokens/s</th><th>cold load</th><th>last error</th></tr>${report.stats
          .map(
            (s) =>
              `<tr><td><code>${e(s.model)}</code></td><td>${s.requests}</td><td>${s.errors > 0 ? `<span class="bad">${s.errors}</span>` : "0"}</td><td>${msText(s.first_token_p50_ms)}</td><td>${msText(s.first_token_p95_ms)}</td><td>${s.tokens_per_s === null ? "–" : s.tokens_per_s.toFixed(1)}</td><td>${msText(s.load_ms)}</td><td class="muted">${e(s.last_error ?? "")}</td></tr>`,
          )
          .join("")}</table>`
      : `<p class="muted">No requests answered yet.</p>`;

  const working = extra.notification?.working ? `<p>Answering now: <code>${e(extra.notification.working)}</code></p>` : "";
  const last = extra.last
    ? `<h2>Last routing decision</h2><p><code>${e(extra.last.model)}</code> (${e(extra.last.tier)}) · confidence ${extra.last.confidence.toFixed(2)}</p><ul>${extra.last.reasons.map((r) => `<li>${e(r)}</li>`).join("")}</ul>${extra.last.warning ? `<p class="warning">⚠ ${e(extra.last.warning)}</p>` : ""}`
    : "";

  const body = `
<h1>triage status</h1>
<div class="toolbar"><button id="refresh">Refresh</button>${extra.updated ? `<span class="muted">updated ${e(extra.updated)}</span>` : ""}</div>
${working}
<h2>GPU</h2>
${gpuHtml}${notes}
<h2>Endpoints</h2>
<table><tr><th>name</th><th>kind</th><th>url</th><th>state</th><th>models</th><th>loaded</th></tr>${endpoints}</table>
<h2>Tiers</h2>
<table><tr><th>tier</th><th>model</th><th>endpoints</th><th>needs</th><th>present</th><th>loaded</th></tr>${tiers}</table>
<h2>Models (latency)</h2>
${stats}
${last}`;
  const script = `
const vscode = typeof acquireVsCodeApi === "function" ? acquireVsCodeApi() : undefined;
document.getElementById("refresh").addEventListener("click", () => vscode && vscode.postMessage({ type: "refresh" }));`;
  return page(env, "triage status", body, script);
}
