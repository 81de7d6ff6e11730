// The two webview panels: Ask (a streamed answer with model/tier/confidence and a Stop button)
// and Status. UI plumbing only; what they show is built by render.ts and webviewHtml.ts.

import * as crypto from "crypto";
import * as vscode from "vscode";

import { describeError, isCancellation, type Answer, type ChatParams, type StatusNotification, type StatusReport, type TriageSession } from "./protocol";
import { answerDetailsHtml, escapeHtml, renderMarkdown, StreamedAnswer } from "./render";
import type { LastDecision } from "./status";
import { askPanelHtml, statusViewHtml } from "./webviewHtml";

function nonce(): string {
  return crypto.randomBytes(16).toString("base64").replace(/[^A-Za-z0-9]/g, "");
}

/** Running requests, for the spinner and for Triage: Stop. */
export class Work {
  private readonly running = new Set<vscode.CancellationTokenSource>();
  private readonly changed = new vscode.EventEmitter<void>();
  readonly onDidChange = this.changed.event;

  get busy(): boolean {
    return this.running.size > 0;
  }

  async run<T>(task: (token: vscode.CancellationToken) => Promise<T>, source = new vscode.CancellationTokenSource()): Promise<T> {
    this.running.add(source);
    this.changed.fire();
    try {
      return await task(source.token);
    } finally {
      this.running.delete(source);
      source.dispose();
      this.changed.fire();
    }
  }

  stopAll(): number {
    const n = this.running.size;
    for (const source of this.running) source.cancel();
    return n;
  }
}

export interface AskRequest {
  title: string;
  /** What the panel shows as the question. */
  shown: string;
  params: ChatParams;
}

export class AskPanel {
  private panel: vscode.WebviewPanel | undefined;
  private current: vscode.CancellationTokenSource | undefined;
  private ready: Promise<void> = Promise.resolve();

  constructor(
    private readonly session: () => TriageSession | undefined,
    private readonly work: Work,
    private readonly hooks: {
      onAnswer(answer: Answer): void;
      onOpen(): void;
      onClose(): void;
      working(): StatusNotification | undefined;
      ask(prompt: string): void;
    },
  ) {}

  private ensurePanel(): vscode.WebviewPanel {
    if (this.panel) {
      this.panel.reveal(vscode.ViewColumn.Beside, true);
      return this.panel;
    }
    const panel = vscode.window.createWebviewPanel("triage.ask", "triage", { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true }, { enableScripts: true, retainContextWhenHidden: true });
    let resolveReady: () => void = () => undefined;
    this.ready = new Promise((resolve) => (resolveReady = resolve));
    panel.webview.html = askPanelHtml({ cspSource: panel.webview.cspSource, nonce: nonce() });
    panel.webview.onDidReceiveMessage((message: { type?: string; prompt?: string; path?: string; line?: number }) => {
      if (message.type === "ready") resolveReady();
      else if (message.type === "stop") this.stop();
      else if (message.type === "ask" && message.prompt) this.hooks.ask(message.prompt);
      else if (message.type === "openSource" && message.path) void openSource(message.path, message.line ?? 1);
    });
    panel.onDidChangeViewState((e) => void vscode.commands.executeCommand("setContext", "triage.askPanelFocused", e.webviewPanel.active));
    panel.onDidDispose(() => {
      this.stop();
      this.panel = undefined;
      this.hooks.onClose();
    });
    this.panel = panel;
    this.hooks.onOpen();
    // The page may never say "ready" (a broken webview): do not wait for it forever.
    this.ready = Promise.race([this.ready, new Promise<void>((resolve) => setTimeout(resolve, 3000))]);
    return panel;
  }

  stop(): void {
    this.current?.cancel();
  }

  /** Streams one `triage/chat` into the panel. */
  async ask(request: AskRequest): Promise<void> {
    const session = this.session();
    if (!session) return;
    this.stop();
    const panel = this.ensurePanel();
    panel.title = `triage: ${request.title}`;
    await this.ready;
    const source = new vscode.CancellationTokenSource();
    this.current = source;
    // A request that was replaced by a newer one must not draw over it.
    const post = (message: Record<string, unknown>) => {
      if (this.current === source) void panel.webview.postMessage(message);
    };
    post({ type: "start", title: request.title, prompt: request.shown });
    const streamed = new StreamedAnswer();
    let timer: NodeJS.Timeout | undefined;
    const routeText = () => {
      const working = this.hooks.working()?.working;
      return working ? `answering: ${working}` : "routing…";
    };
    // At most ~20 renders a second, however fast the deltas come.
    const flush = () => {
      timer = undefined;
      post({ type: "render", html: streamed.html(), route: routeText() });
    };
    void vscode.commands.executeCommand("setContext", "triage.answering", true);
    try {
      const answer = await this.work.run(
        (token) =>
          session.chat(
            request.params,
            (delta) => {
              streamed.push(delta);
              timer ??= setTimeout(flush, 50);
            },
            token,
          ),
        source,
      );
      if (timer) clearTimeout(timer);
      this.hooks.onAnswer(answer);
      post({ type: "done", html: renderMarkdown(answer.text), details: answerDetailsHtml(answer), route: `${answer.model} · ${answer.tier} · confidence ${answer.confidence.toFixed(2)}` });
    } catch (error) {
      if (timer) clearTimeout(timer);
      if (isCancellation(error) || source.token.isCancellationRequested) {
        post({ type: "cancelled", html: streamed.html(), details: `<div class="muted">Stopped: the model's stream was closed.</div>`, route: "stopped" });
      } else {
        const { message, partial } = describeError(error);
        const html = partial ? renderMarkdown(partial.text) : streamed.html();
        const details = `<div class="error">${escapeHtml(message)}</div>${partial ? answerDetailsHtml(partial) : ""}`;
        post({ type: "error", html, details, route: "failed" });
      }
    } finally {
      if (this.current === source) {
        this.current = undefined;
        void vscode.commands.executeCommand("setContext", "triage.answering", false);
      }
    }
  }

  /** Shows a routing decision (Markdown) without calling a model. */
  async showMarkdown(title: string, shown: string, text: string, route: string): Promise<void> {
    const panel = this.ensurePanel();
    panel.title = `triage: ${title}`;
    await this.ready;
    void panel.webview.postMessage({ type: "start", title, prompt: shown });
    void panel.webview.postMessage({ type: "done", html: renderMarkdown(text), details: "", route });
  }

  dispose(): void {
    this.panel?.dispose();
  }
}

async function openSource(file: string, line: number): Promise<void> {
  const folder = vscode.workspace.workspaceFolders?.[0]?.uri;
  const uri = file.startsWith("/") || !folder ? vscode.Uri.file(file) : vscode.Uri.joinPath(folder, file);
  const position = new vscode.Position(Math.max(0, line - 1), 0);
  await vscode.window.showTextDocument(uri, { selection: new vscode.Range(position, position), preview: true });
}

export class StatusPanel {
  private panel: vscode.WebviewPanel | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly session: () => TriageSession | undefined,
    private readonly extra: () => { notification?: StatusNotification; last?: LastDecision },
  ) {}

  async show(): Promise<void> {
    if (!this.panel) {
      const panel = vscode.window.createWebviewPanel("triage.status", "triage status", vscode.ViewColumn.Active, { enableScripts: true });
      panel.webview.onDidReceiveMessage((m: { type?: string }) => {
        if (m.type === "refresh") void this.refresh();
      });
      panel.onDidDispose(() => {
        if (this.timer) clearInterval(this.timer);
        this.timer = undefined;
        this.panel = undefined;
      });
      // Latency and loaded models change as requests run: refresh while the view is open.
      this.timer = setInterval(() => {
        if (this.panel?.visible) void this.refresh();
      }, 5000);
      this.panel = panel;
    } else {
      this.panel.reveal();
    }
    await this.refresh();
  }

  async refresh(): Promise<void> {
    const panel = this.panel;
    const session = this.session();
    if (!panel || !session) return;
    let report: StatusReport;
    try {
      report = await session.status();
    } catch (error) {
      panel.webview.html = `<!DOCTYPE html><html><body><p>triage/status failed: ${escapeHtml(describeError(error).message)}</p></body></html>`;
      return;
    }
    panel.webview.html = statusViewHtml({ cspSource: panel.webview.cspSource, nonce: nonce() }, report, { ...this.extra(), updated: new Date().toLocaleTimeString() });
  }

  dispose(): void {
    this.panel?.dispose();
  }
}
