// Writes the status view's page, as the extension renders it, from a real `triage/status`
// answer of the real server (against the loopback test backend, after a few answered
// requests), for the README screenshot: node out/test/tools/statusViewPage.js OUT.html
// Then: chromium --headless --screenshot=… OUT.html (see the README).

import * as fs from "node:fs";

import { decisionOf } from "../../src/status";
import { statusViewHtml } from "../../src/webviewHtml";
import { Backend, bounded, CODER, eventually, FAST, Server } from "../harness";

async function main(): Promise<void> {
  const out = process.argv[2];
  if (!out) throw new Error("usage: statusViewPage.js OUT.html");
  const backend = await Backend.start();
  const server = await Server.start(backend);
  try {
    await backend.setLoaded([
      { name: FAST, model: FAST, size: 2560 * 2 ** 20, size_vram: 2560 * 2 ** 20, expires_at: "2030-01-01T00:00:00Z" },
      { name: CODER, model: CODER, size: 19 * 2 ** 30, size_vram: 19 * 2 ** 30, expires_at: "2030-01-01T00:30:00Z" },
    ]);
    await server.open("file:///work/project/deploy.sh", "shellscript", "#!/bin/sh\nfind /var -type f -size +100M -print0 | xargs -0 ls -lh\n");
    for (let i = 0; i < 3; i++) await bounded(server.session.chat({ prompt: "hello", tier: "fast" }, () => undefined));
    let last = await bounded(server.session.chat({ prompt: "Warum hängen bei uns Goroutinen nach ctx-Cancel für immer?" }, () => undefined));
    last = await bounded(
      server.session.chat({ textDocument: { uri: "file:///work/project/deploy.sh" }, range: { start: { line: 1, character: 0 }, end: { line: 1, character: 0 } }, action: "explainShell" }, () => undefined),
    );
    const notification = await eventually(() => server.statuses.find((s) => s.loaded.length === 2), 5000, "the loaded models");
    const report = await bounded(server.session.status());
    fs.writeFileSync(out, statusViewHtml({ cspSource: "'self'", nonce: "screenshot" }, report, { notification, last: decisionOf(last), updated: new Date().toISOString().slice(11, 19) + " UTC" }));
  } finally {
    await server.stop();
    await backend.close();
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
