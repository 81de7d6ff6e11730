// The triage/* protocol as the README's language-server section defines it: the shapes the
// server sends and the calls the extension makes. No `vscode` import: the extension drives it
// through vscode-languageclient, the integration test through a bare vscode-jsonrpc
// connection, with the same code.

import { CancellationToken, ProgressType } from "vscode-jsonrpc";

export type Tier = "fast" | "coder" | "heavy";
export type Level = "ok" | "warn" | "critical" | "unknown";

export interface Position {
  line: number;
  character: number;
}

export interface Range {
  start: Position;
  end: Position;
}

/** The `triage/status` notification (server → client). */
export interface StatusNotification {
  vram: { used_mb: number; total_mb: number } | null;
  level: Level;
  loaded: LoadedModel[];
  working: string | null;
}

export interface LoadedModel {
  name: string;
  endpoint: string;
  size_mb: number;
  vram_mb: number;
  expires_at?: string | null;
}

export interface Fallback {
  tier: string;
  model: string;
  endpoint: string;
  error: string;
}

/** `context.sources` (workspace retrieval, issue 9): shown under the answer when present. */
export interface Source {
  path: string;
  start_line: number;
  end_line: number;
  kind?: string;
}

/** The answer object of `triage/chat` and the `triage.*` commands (as `triage ask --json`). */
export interface Answer {
  text: string;
  model: string;
  tier: string;
  endpoint?: string;
  confidence: number;
  reasons: string[];
  fallbacks: Fallback[];
  usage?: { prompt_tokens?: number; completion_tokens?: number };
  timings?: { route_ms?: number; first_token_ms?: number | null; total_ms?: number; load_ms?: number | null };
  finish?: string;
  context?: { tokens?: number; cut?: boolean; redacted?: number | boolean; sources?: Source[] };
  warning?: string | null;
  error?: string;
  applied?: boolean;
  notApplied?: string;
}

/** `triage/route`'s answer (as `triage route --json`). */
export interface Decision {
  tier: string;
  model: string;
  endpoint: string;
  url?: string;
  confidence: number;
  reasons: string[];
  warning?: string | null;
  fallbacks: { tier: string; model: string; endpoint: string }[];
  analysis?: Record<string, unknown>;
}

/** `triage/status`'s answer (as `triage status --json`). */
export interface StatusReport {
  endpoints: {
    name: string;
    kind: string;
    url: string;
    reachable: boolean;
    version: string | null;
    error: string | null;
    models: { name: string; size_mb?: number }[];
    loaded: { name: string; size_mb: number; vram_mb: number; vram_percent: number; expires_at?: string | null }[];
  }[];
  gpu: {
    seen: boolean;
    total_mb: number | null;
    used_mb: number | null;
    free_mb: number | null;
    level: string;
    devices: { index: number; name: string; total_mb: number; used_mb: number; free_mb: number; processes: { pid: number; used_mb?: number }[] }[];
    notes: string[];
  };
  tiers: { tier: Tier; enabled: boolean; model: string; endpoints: string[]; vram_mb: number; present: boolean | null; loaded: boolean }[];
  stats: {
    model: string;
    requests: number;
    errors: number;
    last_error: string | null;
    first_token_p50_ms: number | null;
    first_token_p95_ms: number | null;
    tokens_per_s: number | null;
    load_ms: number | null;
  }[];
}

/** The code actions' commands; `action` is the name `triage/chat` takes for each. */
export const COMMANDS = {
  explain: "triage.explain",
  explainShell: "triage.explainShell",
  fix: "triage.fix",
  refactor: "triage.refactor",
  docstring: "triage.docstring",
  tests: "triage.tests",
  ask: "triage.ask",
} as const;
export type Action = keyof typeof COMMANDS;

/** Commands whose answer the server applies to the document as one edit. */
export const EDITING_ACTIONS: readonly Action[] = ["fix", "refactor", "docstring", "tests"];

export function actionOfCommand(command: string): Action | undefined {
  return (Object.keys(COMMANDS) as Action[]).find((a) => COMMANDS[a] === command);
}

export interface ChatParams {
  prompt?: string;
  textDocument?: { uri: string };
  range?: Range;
  tier?: Tier;
  model?: string;
  action?: Action;
}

export interface IntentParams {
  kind: "chat" | "selection" | "codeAction";
  active: boolean;
  textDocument?: { uri: string };
  range?: Range;
}

export interface Disposable {
  dispose(): void;
}

/** What both a LanguageClient and a bare MessageConnection offer. */
export interface Rpc {
  sendRequest<R>(method: string, params: unknown, token?: CancellationToken): Promise<R>;
  sendNotification(method: string, params: unknown): Promise<void> | void;
  onNotification(method: string, handler: (params: unknown) => void): Disposable;
  onProgress<P>(type: ProgressType<P>, token: string | number, handler: (value: P) => void): Disposable;
}

interface DeltaReport {
  kind?: string;
  message?: string;
  delta?: string;
}

const deltaType = new ProgressType<DeltaReport>();

/** JSON-RPC's RequestCancelled (LSP): the answer to a `$/cancelRequest`. */
export const REQUEST_CANCELLED = -32800;

export function isCancellation(error: unknown): boolean {
  if (typeof error !== "object" || error === null) return false;
  const e = error as { code?: unknown; name?: unknown };
  return e.code === REQUEST_CANCELLED || e.name === "Canceled" || e.name === "CancellationError";
}

/** The error text of a failed request; a failed `triage/chat` carries the partial answer. */
export function describeError(error: unknown): { message: string; partial?: Answer } {
  if (typeof error === "object" && error !== null) {
    const e = error as { message?: unknown; data?: unknown };
    const message = typeof e.message === "string" ? e.message : JSON.stringify(error);
    const data = e.data as Partial<Answer> | undefined;
    if (data && typeof data === "object" && typeof data.text === "string" && typeof data.model === "string") {
      return { message, partial: data as Answer };
    }
    return { message };
  }
  return { message: String(error) };
}

/** The triage methods, over any `Rpc`. */
export class TriageSession {
  private nextToken = 1;

  constructor(private readonly rpc: Rpc) {}

  /** `triage/chat`, with every `$/progress` delta on its partialResultToken passed to
   * `onDelta` in order (the server writes them all before the response). */
  async chat(params: ChatParams, onDelta: (delta: string) => void, token?: CancellationToken): Promise<Answer> {
    const partialResultToken = `triage-chat-${process.pid}-${this.nextToken++}`;
    const subscription = this.rpc.onProgress(deltaType, partialResultToken, (value) => {
      if (value && typeof value.delta === "string") onDelta(value.delta);
    });
    try {
      return await this.rpc.sendRequest<Answer>("triage/chat", { ...params, partialResultToken }, token);
    } finally {
      subscription.dispose();
    }
  }

  /** A code action's command (`workspace/executeCommand`); for the editing ones the server
   * sends `workspace/applyEdit` before it answers. */
  runCommand(action: Action, uri: string, range: Range, token?: CancellationToken, prompt?: string): Promise<Answer> {
    const argument: { uri: string; range: Range; prompt?: string } = { uri, range };
    if (prompt) argument.prompt = prompt;
    return this.rpc.sendRequest<Answer>("workspace/executeCommand", { command: COMMANDS[action], arguments: [argument] }, token);
  }

  route(params: ChatParams, token?: CancellationToken): Promise<Decision> {
    return this.rpc.sendRequest<Decision>("triage/route", params, token);
  }

  status(token?: CancellationToken): Promise<StatusReport> {
    return this.rpc.sendRequest<StatusReport>("triage/status", undefined, token);
  }

  onStatus(handler: (status: StatusNotification) => void): Disposable {
    return this.rpc.onNotification("triage/status", (params) => {
      if (isStatusNotification(params)) handler(params);
    });
  }

  /** `triage/intent` (pre-warming); servers that do not know it ignore it. */
  intent(params: IntentParams): void {
    void Promise.resolve(this.rpc.sendNotification("triage/intent", params)).catch(() => undefined);
  }

  /** Settings changed: the whole mapped configuration again (the server merges it over the
   * config file, so a removed setting falls back to the file). */
  configurationChanged(settings: Record<string, unknown>): void {
    void Promise.resolve(this.rpc.sendNotification("workspace/didChangeConfiguration", { settings: { triage: settings } })).catch(
      () => undefined,
    );
  }
}

export function isStatusNotification(value: unknown): value is StatusNotification {
  if (typeof value !== "object" || value === null) return false;
  const v = value as Record<string, unknown>;
  return typeof v.level === "string" && Array.isArray(v.loaded) && "vram" in v;
}
