// The extension's activation with a stand-in for the `vscode` module (VS Code itself cannot
// be downloaded here): every command package.json contributes is registered, and without a
// server binary there is exactly one error notification that says what to do, and the status
// bar says so — no language client is started.

import assert from "node:assert/strict";
import * as fs from "node:fs";
import Module from "node:module";
import * as path from "node:path";
import { test } from "node:test";

type Any = Record<string, unknown>;

class Disposable {
  constructor(private readonly onDispose?: () => void) {}
  dispose(): void {
    this.onDispose?.();
  }
  static from(): Disposable {
    return new Disposable();
  }
}

class EventEmitter {
  event = (): Disposable => new Disposable();
  fire(): void {}
  dispose(): void {}
}

function fakeVscode(record: { commands: string[]; errors: string[]; items: Any[]; configuration: Record<string, unknown> }): unknown {
  const nothing = () => new Disposable();
  const stub: Any = {
    Disposable,
    EventEmitter,
    StatusBarAlignment: { Left: 1, Right: 2 },
    ViewColumn: { Active: -1, Beside: -2 },
    ThemeColor: class {
      constructor(readonly id: string) {}
    },
    MarkdownString: class {
      supportThemeIcons = false;
      constructor(readonly value: string) {}
    },
    CancellationTokenSource: class {
      token = { isCancellationRequested: false, onCancellationRequested: nothing };
      cancel(): void {}
      dispose(): void {}
    },
    window: {
      createStatusBarItem: () => {
        const item: Any = { text: "", show: () => undefined, dispose: () => undefined };
        record.items.push(item);
        return item;
      },
      createOutputChannel: () => ({ appendLine: () => undefined, show: () => undefined, dispose: () => undefined }),
      showErrorMessage: (message: string) => {
        record.errors.push(message);
        return Promise.resolve(undefined);
      },
      showWarningMessage: () => Promise.resolve(undefined),
      showInformationMessage: () => Promise.resolve(undefined),
      setStatusBarMessage: nothing,
      onDidChangeTextEditorSelection: nothing,
    },
    workspace: {
      getConfiguration: () => ({ get: (key: string) => (key in record.configuration ? record.configuration[key] : null) }),
      onDidChangeConfiguration: nothing,
    },
    commands: {
      registerCommand: (name: string) => {
        record.commands.push(name);
        return new Disposable();
      },
      executeCommand: () => Promise.resolve(undefined),
    },
  };
  // vscode-languageclient touches more of the API when it is loaded; anything else is an
  // inert class.
  return new Proxy(stub, { get: (target, key: string) => (key in target ? target[key] : class {}) });
}

// The compiled sources, and the bundle that goes into the .vsix (`node esbuild.mjs` first).
const builds = [
  { name: "compiled sources", module: path.join(__dirname, "..", "..", "src", "extension.js") },
  { name: "the .vsix bundle", module: path.join(__dirname, "..", "..", "..", "dist", "extension.js") },
];

for (const build of builds) test(`activation without a server binary (${build.name}): all commands, one clear error, nothing started`, async () => {
  assert.ok(fs.existsSync(build.module), `${build.module} is missing: run \`npx tsc -p . && node esbuild.mjs\``);
  const record = { commands: [] as string[], errors: [] as string[], items: [] as Any[], configuration: { serverArgs: [] } as Record<string, unknown> };
  const vscode = fakeVscode(record);
  const moduleWithLoad = Module as unknown as { _load: (request: string, ...rest: unknown[]) => unknown };
  const load = moduleWithLoad._load;
  moduleWithLoad._load = function (request: string, ...rest: unknown[]) {
    return request === "vscode" ? vscode : load.call(this, request, ...rest);
  };
  const savedPath = process.env.PATH;
  process.env.PATH = path.join(__dirname, "no-such-dir");
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const extension = require(build.module) as { activate(context: { subscriptions: Disposable[] }): Promise<void>; deactivate(): Promise<void> };
    const context = { subscriptions: [] as Disposable[] };
    await extension.activate(context);
    const manifest = JSON.parse(fs.readFileSync(path.join(__dirname, "..", "..", "..", "package.json"), "utf8")) as { contributes: { commands: { command: string }[] } };
    const contributed = manifest.contributes.commands.map((c) => c.command).sort();
    assert.deepEqual([...record.commands].sort(), contributed);
    assert.equal(record.errors.length, 1);
    assert.match(record.errors[0], /`triage` language server was not found on PATH/);
    assert.match(record.errors[0], /cargo install --path \./);
    assert.equal(record.items.length, 1);
    assert.equal(record.items[0].text, "$(error) triage: no server");
    await extension.deactivate();
  } finally {
    process.env.PATH = savedPath;
    moduleWithLoad._load = load;
  }
});
