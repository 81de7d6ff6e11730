// The extension's protocol code (TriageSession, the settings mapping, the status formatting)
// against the real `triage serve` and the loopback test backend, over vscode-jsonrpc, as the
// extension drives it through vscode-languageclient.

import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";
import { CancellationTokenSource } from "vscode-jsonrpc";

import { isCancellation, isStatusNotification, type Answer } from "../../src/protocol";
import { toServerSettings } from "../../src/settings";
import { statusText } from "../../src/status";
import { answerTokens, Backend, bounded, CODER, eventually, FAST, Server } from "../harness";

const URI = "file:///work/project/greet.py";
const TEXT = 'def greet(name):\n    return "héllo " + name  # 👋\n\nprint(greet("wörld"))\n';

let backend: Backend;
let server: Server | undefined;

// Each test gets its own test backend (its recorded requests are the test's own) and server.
beforeEach(async () => {
  backend = await Backend.start();
});
afterEach(async () => {
  try {
    if (server) assert.equal(await server.stop(), 0, "shutdown + exit gives exit code 0");
  } finally {
    server = undefined;
    await backend.close();
  }
});

async function start(settings: Record<string, unknown> = {}): Promise<Server> {
  const get = (key: string) => (key in settings ? settings[key] : null);
  server = await Server.start(backend, { initializationOptions: toServerSettings(get) });
  return server;
}

test("settings go over as initializationOptions and take effect, and again on change", async () => {
  const s = await start({ "tiers.coder.model": "qwen2.5-coder:7b", "tiers.heavy.enabled": false, "vram.warnPercent": 70 });
  const status = await bounded(s.session.status());
  const coder = status.tiers.find((t) => t.tier === "coder");
  assert.equal(coder?.model, "qwen2.5-coder:7b");
  assert.equal(status.tiers.find((t) => t.tier === "heavy")?.enabled, false);
  // The errors a bad setting gets are shown, and the last good settings stay.
  s.session.configurationChanged(toServerSettings((k) => (k === "tiers.fast.model" ? "llama3.2:1b" : null)));
  await eventually(async () => (await s.session.status()).tiers.find((t) => t.tier === "fast")?.model === "llama3.2:1b", 5000, "the changed fast model");
  const after = await s.session.status();
  assert.equal(after.tiers.find((t) => t.tier === "coder")?.model, CODER, "a removed setting falls back to the file/built-in value");
  s.session.configurationChanged({ tiers: { fast: { vram_mb: "lots" } } });
  await eventually(() => s.messages.find((m) => m.message.includes("settings not applied")), 5000, "the refusal message");
  assert.equal((await s.session.status()).tiers.find((t) => t.tier === "fast")?.model, "llama3.2:1b");
});

test("code actions, and Fix applied through workspace/applyEdit as one edit", async () => {
  const s = await start();
  await s.open(URI, "python", TEXT);
  const range = { start: { line: 0, character: 0 }, end: { line: 2, character: 0 } };
  const actions = await bounded(s.connection.sendRequest<{ title: string; command: { command: string; arguments: unknown[] } }[]>("textDocument/codeAction", { textDocument: { uri: URI }, range, context: { diagnostics: [] } }));
  const commands = actions.map((a) => a.command.command);
  for (const c of ["triage.explain", "triage.fix", "triage.refactor", "triage.docstring", "triage.tests", "triage.ask"]) assert.ok(commands.includes(c), `${c} offered`);
  assert.ok(!commands.includes("triage.explainShell"), "no shell command in a Python function");

  const answer: Answer = await bounded(s.session.runCommand("fix", URI, range));
  assert.equal(answer.applied, true);
  assert.equal(answer.text, answerTokens(answer.model).join(""));
  assert.equal(s.edits.length, 1);
  const edit = s.edits[0] as { edit: { changes: Record<string, { range: unknown; newText: string }[]> } };
  assert.deepEqual(Object.keys(edit.edit.changes), [URI]);
  const edits = edit.edit.changes[URI];
  assert.equal(edits.length, 1, "one edit: one undo step");
  assert.deepEqual(edits[0].range, range);
  assert.equal(edits[0].newText, answer.text);
});

test("triage/chat streams $/progress deltas on the partialResultToken, in order", async () => {
  const s = await start();
  await backend.setFault(FAST, { kind: "trickle", ms: 5, tokens: 30 });
  const deltas: string[] = [];
  const answer = await bounded(s.session.chat({ prompt: "hello", tier: "fast" }, (d) => deltas.push(d)));
  assert.equal(answer.model, FAST);
  assert.deepEqual(deltas, answerTokens(FAST, 30));
  assert.equal(deltas.join(""), answer.text);
  assert.ok(answer.confidence > 0 && answer.confidence <= 1);
  assert.ok(answer.reasons.length > 0);
});

test("Explain streams the selection's explanation (chat with an action)", async () => {
  const s = await start();
  await s.open(URI, "python", TEXT);
  const deltas: string[] = [];
  const answer = await bounded(s.session.chat({ textDocument: { uri: URI }, range: { start: { line: 0, character: 0 }, end: { line: 2, character: 0 } }, action: "explain" }, (d) => deltas.push(d)));
  assert.equal(answer.tier, "coder");
  assert.equal(deltas.join(""), answer.text);
  const sent = (await backend.requests()).filter((r) => r.path === "/api/chat");
  assert.equal(sent.length, 1);
  assert.ok(sent[0].text.includes('def greet(name):\n    return "héllo " + name  # 👋'), "the selection reached the model");
  assert.equal(s.edits.length, 0, "explaining never edits");
});

test("Stop: cancelling the token sends $/cancelRequest and the backend stream is dropped", async () => {
  const s = await start();
  await backend.setFault(FAST, { kind: "trickle", ms: 200, tokens: 200 });
  const source = new CancellationTokenSource();
  const deltas: string[] = [];
  const chat = s.session.chat({ prompt: "hello", tier: "fast" }, (d) => deltas.push(d), source.token);
  await eventually(() => deltas.length > 0, 5000, "the first delta");
  source.cancel();
  const error = await bounded(chat.then(() => undefined, (e: unknown) => e), 3000, "the cancelled response");
  assert.ok(isCancellation(error), `cancelled, got ${JSON.stringify(error)}`);
  const requests = await eventually(async () => {
    const rs = await backend.requests();
    return rs.length > 0 && rs[0].closed_early ? rs : undefined;
  }, 3000, "the backend to see the connection closed");
  assert.equal(requests[0].model, FAST);
  assert.equal(requests[0].completed, false);
  const seen = deltas.length;
  await new Promise((r) => setTimeout(r, 600));
  assert.ok(deltas.length <= seen + 1, "no more deltas after Stop");
  // The session goes on.
  await backend.setFault(FAST, { kind: "ok" });
  const next = await bounded(s.session.chat({ prompt: "hello", tier: "fast" }, () => undefined));
  assert.equal(next.text, answerTokens(FAST).join(""));
});

test("the Cancel button of a command's progress (window/workDoneProgress/cancel) stops it", async () => {
  const s = await start();
  await s.open(URI, "python", TEXT);
  const tokens: (string | number)[] = [];
  s.connection.onRequest("window/workDoneProgress/create", (p: { token: string | number }) => {
    tokens.push(p.token);
    return null;
  });
  await backend.setFault(CODER, { kind: "trickle", ms: 200, tokens: 200 });
  const fix = s.session.runCommand("fix", URI, { start: { line: 0, character: 0 }, end: { line: 2, character: 0 } });
  await eventually(async () => tokens.length > 0 && (await backend.requests()).some((r) => r.path === "/api/chat"), 5000, "the command's progress and model call");
  await s.connection.sendNotification("window/workDoneProgress/cancel", { token: tokens[0] });
  const error = await bounded(fix.then(() => undefined, (e: unknown) => e), 3000, "the cancelled command");
  assert.ok(isCancellation(error), `cancelled, got ${JSON.stringify(error)}`);
  await eventually(async () => (await backend.requests()).at(-1)?.closed_early, 3000, "the model's stream closed");
  assert.equal(s.edits.length, 0, "nothing edited");
});

test("the triage/status notification drives the status bar text", async () => {
  const s = await start();
  const tiers = new Map((await bounded(s.session.status())).tiers.map((t) => [t.model, t.tier]));
  await eventually(() => s.statuses.length > 0, 3000, "the first triage/status");
  assert.ok(isStatusNotification(s.statuses[0]));
  assert.equal(statusText(s.statuses[0], tiers), "no GPU · idle");
  await backend.setLoaded([{ name: CODER, model: CODER, size: 19 * 2 ** 30, size_vram: 19 * 2 ** 30, expires_at: "2030-01-01T00:00:00Z" }]);
  const loaded = await eventually(() => s.statuses.find((n) => n.loaded.some((m) => m.name === CODER)), 4000, "the loaded model");
  assert.equal(loaded.loaded[0].size_mb, 19 * 1024);
  // A slow first token: the working model is reported while it loads.
  await backend.setFault(CODER, { kind: "cold_load", ms: 1400 });
  const answer = await bounded(s.session.chat({ prompt: "hello", tier: "coder" }, () => undefined));
  assert.equal(answer.model, CODER);
  const working = await eventually(() => s.statuses.find((n) => n.working === CODER), 3000, "coder at work");
  assert.equal(statusText(working, tiers), "no GPU · coder");
  await eventually(() => s.statuses.at(-1)?.working === null, 3000, "working cleared");
});

test("triage/intent notifications are accepted without an answer", async () => {
  const s = await start();
  await s.open(URI, "python", TEXT);
  s.session.intent({ kind: "chat", active: true });
  s.session.intent({ kind: "selection", active: true, textDocument: { uri: URI }, range: { start: { line: 0, character: 0 }, end: { line: 4, character: 0 } } });
  s.session.intent({ kind: "selection", active: false });
  s.session.intent({ kind: "chat", active: false });
  const answer = await bounded(s.session.chat({ prompt: "hello", tier: "fast" }, () => undefined));
  assert.equal(answer.model, FAST);
  assert.deepEqual(s.messages.filter((m) => m.type === 1), [], "no error shown or logged");
});

test("Route Only calls no model", async () => {
  const s = await start();
  const decision = await bounded(s.session.route({ prompt: "ps aux | grep -v grep | grep -i nginx" }));
  assert.equal(decision.tier, "coder");
  assert.ok(decision.reasons.some((r) => r.includes("shell command")));
  assert.deepEqual((await backend.requests()).filter((r) => r.path === "/api/chat"), []);
});
