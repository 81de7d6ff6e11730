import assert from "node:assert/strict";
import { test } from "node:test";

import { resolveServer } from "../../src/serverPath";

const files = (...executable: string[]) => (file: string) => executable.includes(file);

test("the setting wins when it points at an executable", () => {
  assert.deepEqual(resolveServer("/opt/triage/bin/triage", "/usr/bin", files("/opt/triage/bin/triage", "/usr/bin/triage"), "linux"), { ok: true, command: "/opt/triage/bin/triage" });
});

test("a setting that points nowhere is an error naming it, not a silent PATH lookup", () => {
  const r = resolveServer("/nope/triage", "/usr/bin", files("/usr/bin/triage"), "linux");
  assert.equal(r.ok, false);
  assert.match(!r.ok ? r.message : "", /triage\.serverPath \(\/nope\/triage\) does not exist/);
});

test("else the first triage on PATH", () => {
  assert.deepEqual(resolveServer(null, "/a:/b:/c", files("/b/triage", "/c/triage"), "linux"), { ok: true, command: "/b/triage" });
  assert.deepEqual(resolveServer("  ", "/a::/b", files("/b/triage"), "linux"), { ok: true, command: "/b/triage" });
});

test("nowhere: one message that says what to do", () => {
  const r = resolveServer(undefined, "/a:/b", files(), "linux");
  assert.equal(r.ok, false);
  const message = !r.ok ? r.message : "";
  assert.match(message, /not found on PATH/);
  assert.match(message, /cargo install --path \./);
  assert.match(message, /triage\.serverPath/);
});
