// The real `triage serve` and the loopback test model server (examples/test_backend), for the
// integration test and the status-view screenshot. The server is driven over a bare
// vscode-jsonrpc connection through the same TriageSession the extension uses.

import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as readline from "node:readline";
import { createMessageConnection, StreamMessageReader, StreamMessageWriter, type MessageConnection } from "vscode-jsonrpc/node";

import { TriageSession, type Rpc, type StatusNotification } from "../src/protocol";

export const FAST = "llama3.2:3b";
export const CODER = "qwen3-coder:30b";
export const HEAVY = "llama3.1:70b";

const REPO = path.resolve(__dirname, "..", "..", "..", "..");

function binary(variable: string, relative: string): string {
  const explicit = process.env[variable];
  if (explicit) return path.isAbsolute(explicit) ? explicit : path.join(REPO, explicit);
  const target = process.env.CARGO_TARGET_DIR ?? path.join(REPO, "target");
  return path.join(target, "debug", relative);
}

export const TRIAGE_BIN = binary("TRIAGE_BIN", "triage");
export const TEST_BACKEND = binary("TRIAGE_TEST_BACKEND", path.join("examples", "test_backend"));

/** Every wait is bounded: a hang fails the test, not the run. */
export function bounded<T>(promise: Promise<T>, ms = 10000, what = "a response"): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export async function eventually<T>(check: () => T | undefined | false | Promise<T | undefined | false>, ms = 5000, what = "a condition"): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface Recorded {
  path: string;
  model: string;
  text: string;
  closed_early: boolean;
  completed: boolean;
}

export class Backend {
  private constructor(
    private readonly child: ChildProcess,
    readonly url: string,
  ) {}

  static async start(): Promise<Backend> {
    if (!fs.existsSync(TEST_BACKEND)) throw new Error(`missing ${TEST_BACKEND}: run \`cargo build --bin triage --examples\` (or set TRIAGE_TEST_BACKEND)`);
    const child = spawn(TEST_BACKEND, ["127.0.0.1:0"], { stdio: ["pipe", "pipe", "ignore"] });
    const lines = readline.createInterface({ input: child.stdout });
    const first = await bounded(new Promise<string>((resolve) => lines.once("line", resolve)), 15000, "test_backend's address");
    lines.close();
    const prefix = "listening on ";
    if (!first.startsWith(prefix)) throw new Error(`unexpected first line from test_backend: ${first}`);
    return new Backend(child, first.slice(prefix.length));
  }

  private async call(method: string, route: string, body?: unknown): Promise<unknown> {
    const response = await fetch(this.url + route, { method, headers: { "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body), signal: AbortSignal.timeout(5000) });
    const text = await response.text();
    return text ? (JSON.parse(text) as unknown) : undefined;
  }

  async setFault(model: string, fault: Record<string, unknown>): Promise<void> {
    await this.call("POST", "/_test/fault", { model, fault });
  }

  async setLoaded(models: Record<string, unknown>[]): Promise<void> {
    await this.call("POST", "/_test/loaded", models);
  }

  async requests(): Promise<Recorded[]> {
    return (await this.call("GET", "/_test/requests")) as Recorded[];
  }

  async close(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once("exit", r));
    this.child.stdin?.end(); // test_backend serves until stdin closes
    await bounded(exited, 5000, "test_backend to exit").catch(() => this.child.kill("SIGKILL"));
  }
}

export interface ServerOptions {
  initializationOptions?: Record<string, unknown>;
  /** Extra TOML for the config file. */
  toml?: string;
}

export class Server {
  readonly edits: unknown[] = [];
  readonly statuses: StatusNotification[] = [];
  readonly messages: { type: number; message: string }[] = [];
  stderr = "";
  private constructor(
    readonly child: ChildProcess,
    readonly connection: MessageConnection,
    readonly session: TriageSession,
    readonly dir: string,
  ) {}

  /** Spawns `triage serve` with a config file pointing at `backend` and initializes it as the
   * extension does. */
  static async start(backend: Backend, options: ServerOptions = {}): Promise<Server> {
    if (!fs.existsSync(TRIAGE_BIN)) throw new Error(`missing ${TRIAGE_BIN}: run \`cargo build --bin triage --examples\` (or set TRIAGE_BIN)`);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "triage-vscode-"));
    const config = path.join(dir, "config.toml");
    fs.writeFileSync(config, configToml(backend.url, options.toml ?? ""));
    const env: NodeJS.ProcessEnv = { ...process.env, TRIAGE_CONFIG: config, TRIAGE_STATE_DIR: path.join(dir, "state"), XDG_CONFIG_HOME: path.join(dir, "xdg") };
    delete env.OLLAMA_HOST;
    delete env.RUST_LOG;
    const child = spawn(TRIAGE_BIN, ["serve"], { env, stdio: ["pipe", "pipe", "pipe"] });
    const connection = createMessageConnection(new StreamMessageReader(child.stdout), new StreamMessageWriter(child.stdin));
    // The same adapter shape as the extension's over LanguageClient.
    const rpc: Rpc = {
      sendRequest: (method, params, token) =>
        params === undefined ? (token ? connection.sendRequest(method, token) : connection.sendRequest(method)) : token ? connection.sendRequest(method, params, token) : connection.sendRequest(method, params),
      sendNotification: (method, params) => connection.sendNotification(method, params),
      onNotification: (method, handler) => connection.onNotification(method, handler),
      onProgress: (type, token, handler) => connection.onProgress(type, token, handler),
    };
    const server = new Server(child, connection, new TriageSession(rpc), dir);
    child.stderr.on("data", (chunk: Buffer) => (server.stderr += chunk.toString()));
    // What VS Code does for these, as far as the tests need: apply the edit, accept progress.
    connection.onRequest("workspace/applyEdit", (params: unknown) => {
      server.edits.push(params);
      return { applied: true };
    });
    connection.onRequest("window/workDoneProgress/create", () => null);
    connection.onNotification("window/showMessage", (p: { type: number; message: string }) => server.messages.push(p));
    connection.onNotification("window/logMessage", (p: { type: number; message: string }) => server.messages.push(p));
    server.session.onStatus((s) => server.statuses.push(s));
    connection.listen();
    await bounded(
      connection.sendRequest("initialize", {
        processId: process.pid,
        rootUri: null,
        capabilities: {
          general: { positionEncodings: ["utf-16"] },
          window: { workDoneProgress: true },
          workspace: { applyEdit: true, workspaceEdit: { documentChanges: true }, didChangeConfiguration: { dynamicRegistration: false }, executeCommand: {} },
          textDocument: { synchronization: {}, codeAction: {}, hover: { contentFormat: ["markdown"] }, completion: {} },
        },
        initializationOptions: options.initializationOptions ?? {},
      }),
      10000,
      "initialize",
    );
    await connection.sendNotification("initialized", {});
    return server;
  }

  async open(uri: string, languageId: string, text: string, version = 1): Promise<void> {
    await this.connection.sendNotification("textDocument/didOpen", { textDocument: { uri, languageId, version, text } });
  }

  async stop(): Promise<number | null> {
    const exited = new Promise<number | null>((r) => this.child.once("exit", (code) => r(code)));
    if (this.child.exitCode === null) {
      try {
        await bounded(this.connection.sendRequest("shutdown"), 5000, "shutdown");
        await this.connection.sendNotification("exit");
      } catch {
        this.child.kill("SIGKILL");
      }
    }
    const code = this.child.exitCode ?? (await bounded(exited, 5000, "the server to exit").catch(() => (this.child.kill("SIGKILL"), null)));
    this.connection.dispose();
    fs.rmSync(this.dir, { recursive: true, force: true });
    if (this.stderr.includes("panicked")) throw new Error(`the server panicked:\n${this.stderr}`);
    return code;
  }
}

/** As tests/lsp/conftest.py writes it: short timeouts, one endpoint at the test backend. */
export function configToml(url: string, extra: string): string {
  const tiers = ["fast", "coder", "heavy"].map((t) => `[tiers.${t}.timeouts]\nfirst_token_s = 1.5\nidle_s = 1\ntotal_s = 20\n\n`).join("");
  return `[endpoints.ollama]\nurl = "${url}"\n\n${tiers}${extra}`;
}

/** The test backend's answer: `Hello from MODEL, this is a test answer.` (`tokens` chunks). */
export function answerTokens(model: string, tokens = 10): string[] {
  const base = ["Hello", " from", ` ${model}`, ",", " this", " is", " a", " test", " answer", "."];
  return Array.from({ length: tokens }, (_, i) => base[i % base.length]);
}
