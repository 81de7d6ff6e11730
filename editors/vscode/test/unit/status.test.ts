import assert from "node:assert/strict";
import { test } from "node:test";

import type { StatusNotification } from "../../src/protocol";
import { decisionOf, levelBackground, statusLine, statusText, vramPercent } from "../../src/status";

const tiers = new Map([
  ["llama3.2:3b", "fast"],
  ["qwen3-coder:30b", "coder"],
  ["llama3.1:70b", "heavy"],
]);

function status(partial: Partial<StatusNotification>): StatusNotification {
  return { vram: { used_mb: 2300, total_mb: 32768 }, level: "ok", loaded: [], working: null, ...partial };
}

test("VRAM share and the working tier", () => {
  assert.equal(statusText(status({ working: "qwen3-coder:30b" }), tiers), "VRAM 7% · coder");
  assert.equal(statusText(status({}), tiers), "VRAM 7% · idle");
  // A model that is no tier's (forced by name) is shown by name.
  assert.equal(statusText(status({ working: "mistral:7b" }), tiers), "VRAM 7% · mistral:7b");
  assert.equal(statusText(status({ vram: null, level: "unknown" }), tiers), "no GPU · idle");
  assert.equal(statusText(undefined, tiers), "triage");
});

test("percent is rounded and survives a zero total", () => {
  assert.equal(vramPercent(status({ vram: { used_mb: 31130, total_mb: 32768 } })), 95);
  assert.equal(vramPercent(status({ vram: { used_mb: 0, total_mb: 0 } })), undefined);
});

test("levels colour the item: warn yellow, critical red, ok and unknown plain", () => {
  assert.equal(levelBackground("warn"), "statusBarItem.warningBackground");
  assert.equal(levelBackground("critical"), "statusBarItem.errorBackground");
  assert.equal(levelBackground("ok"), undefined);
  assert.equal(levelBackground("unknown"), undefined);
  assert.equal(statusLine({ status: status({ level: "critical" }), tiers, busy: false, last: undefined, serverState: "running" }).background, "statusBarItem.errorBackground");
});

test("spinner while a request runs or a model is at work", () => {
  const idle = statusLine({ status: status({}), tiers, busy: false, last: undefined, serverState: "running" });
  assert.equal(idle.text, "$(hubot) VRAM 7% · idle");
  const busy = statusLine({ status: status({}), tiers, busy: true, last: undefined, serverState: "running" });
  assert.equal(busy.text, "$(sync~spin) VRAM 7% · idle");
  const working = statusLine({ status: status({ working: "llama3.2:3b" }), tiers, busy: false, last: undefined, serverState: "running" });
  assert.equal(working.text, "$(sync~spin) VRAM 7% · fast");
});

test("tooltip lists loaded models and the last decision with its reasons", () => {
  const line = statusLine({
    status: status({ loaded: [{ name: "qwen3-coder:30b", endpoint: "ollama", size_mb: 19456, vram_mb: 9728 }] }),
    tiers,
    busy: false,
    last: decisionOf({ model: "qwen3-coder:30b", tier: "coder", confidence: 0.912, reasons: ["the prompt is a shell command", "a bare command means: explain it"], fallbacks: [], text: "" }),
    serverState: "running",
  });
  assert.match(line.tooltip, /\*\*VRAM\*\* 2\.2 GB of 32\.0 GB used \(7%\) · level ok/);
  assert.match(line.tooltip, /qwen3-coder:30b on ollama · 19\.0 GB, 50% in VRAM/);
  assert.match(line.tooltip, /\*\*Last decision:\*\* qwen3-coder:30b \(coder\) · confidence 0\.91/);
  assert.match(line.tooltip, /\n- the prompt is a shell command\n- a bare command means: explain it/);
});

test("a missing server and a stopped one say so", () => {
  const missing = statusLine({ status: undefined, tiers, busy: false, last: undefined, serverState: "missing" });
  assert.match(missing.text, /no server/);
  assert.match(missing.tooltip, /triage\.serverPath/);
  assert.equal(statusLine({ status: undefined, tiers, busy: false, last: undefined, serverState: "starting" }).text, "$(hubot) triage: starting");
});
