// The VS Code extension: starts `triage serve` through vscode-languageclient, draws the status
// bar item, the Ask and Status panels, and maps the palette commands to the server's methods.
// Thin by design: every decision (routing, prompts, edits) is the server's.

import * as fs from "fs";
import * as vscode from "vscode";
import { LanguageClient, State, TransportKind, type LanguageClientOptions, type ServerOptions } from "vscode-languageclient/node";

import { IntentTracker } from "./intent";
import { AskPanel, StatusPanel, Work } from "./panels";
import { actionOfCommand, describeError, EDITING_ACTIONS, isCancellation, TriageSession, type Action, type Answer, type ChatParams, type Range, type Rpc, type StatusNotification } from "./protocol";
import { answerFooter, decisionMarkdown } from "./render";
import { INSTALL_STEPS, resolveServer } from "./serverPath";
import { affectsServer, needsRestart, toServerSettings } from "./settings";
import { decisionOf, statusLine, type LastDecision } from "./status";

let extension: Extension | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  extension = new Extension(context);
  await extension.start();
}

export async function deactivate(): Promise<void> {
  await extension?.stop();
  extension = undefined;
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

function settingsGetter(): (key: string) => unknown {
  const config = vscode.workspace.getConfiguration("triage");
  return (key) => config.get(key);
}

class Extension {
  private client: LanguageClient | undefined;
  private session: TriageSession | undefined;
  private status: StatusNotification | undefined;
  private tiers = new Map<string, string>();
  private last: LastDecision | undefined;
  private serverState: "starting" | "running" | "stopped" | "missing" = "starting";
  private readonly item = vscode.window.createStatusBarItem("triage.status", vscode.StatusBarAlignment.Right, 100);
  private readonly output = vscode.window.createOutputChannel("triage");
  private readonly work = new Work();
  private readonly intents = new IntentTracker((p) => this.session?.intent(p));
  private readonly askPanel: AskPanel;
  private readonly statusPanel: StatusPanel;
  private missingShown = false;

  constructor(private readonly context: vscode.ExtensionContext) {
    this.item.name = "triage";
    this.item.command = "triage.showStatus";
    this.askPanel = new AskPanel(() => this.session, this.work, {
      onAnswer: (answer) => this.remember(answer),
      onOpen: () => this.intents.chatOpened(),
      onClose: () => this.intents.chatClosed(),
      working: () => this.status,
      ask: (prompt) => void this.askPanel.ask({ title: "Ask", shown: prompt, params: { prompt } }),
    });
    this.statusPanel = new StatusPanel(() => this.session, () => ({ notification: this.status, last: this.last }));
    const command = (name: string, run: () => unknown) => context.subscriptions.push(vscode.commands.registerCommand(name, run));
    command("triage.askPrompt", () => this.askPrompt("Ask", {}));
    command("triage.explainSelection", () => this.streamAction("explain", "Explain"));
    command("triage.explainShellCommand", () => this.streamAction("explainShell", "Explain shell command"));
    command("triage.fixSelection", () => this.edit("fix"));
    command("triage.refactorSelection", () => this.edit("refactor"));
    command("triage.addDocstring", () => this.edit("docstring"));
    command("triage.writeTests", () => this.edit("tests"));
    command("triage.askHeavy", () => this.askPrompt("Ask the heavy model", { heavy: true }));
    command("triage.showStatus", () => this.withSession(() => this.statusPanel.show()));
    command("triage.routeOnly", () => this.routeOnly());
    command("triage.stop", () => {
      const stopped = this.work.stopAll();
      if (stopped === 0) void vscode.window.setStatusBarMessage("triage: nothing is running", 3000);
    });
    command("triage.restartServer", () => this.restart());
    context.subscriptions.push(
      this.item,
      this.output,
      this.askPanel,
      this.statusPanel,
      this.intents,
      this.work.onDidChange(() => this.redraw()),
      vscode.window.onDidChangeTextEditorSelection((e) => {
        const scheme = e.textEditor.document.uri.scheme;
        if (scheme !== "file" && scheme !== "untitled") return;
        const s = e.selections[0];
        this.intents.selectionChanged(e.textEditor.document.uri.toString(), s && !s.isEmpty ? toRange(s) : undefined);
      }),
      vscode.workspace.onDidChangeConfiguration((e) => {
        const affects = (section: string) => e.affectsConfiguration(section);
        if (needsRestart(affects)) void this.restart();
        else if (affectsServer(affects) && this.session) {
          this.session.configurationChanged(toServerSettings(settingsGetter()));
          // The server applies the notification on its own time; ask for the tiers after it.
          setTimeout(() => void this.refreshTiers(), 500);
        }
      }),
    );
    this.redraw();
    this.item.show();
  }

  async start(): Promise<void> {
    const config = vscode.workspace.getConfiguration("triage");
    const resolved = resolveServer(config.get<string | null>("serverPath"), process.env.PATH, isExecutable);
    if (!resolved.ok) {
      this.serverState = "missing";
      this.redraw();
      this.showMissing(resolved.message);
      return;
    }
    const args = [...(config.get<string[]>("serverArgs") ?? []), "serve"];
    const serverOptions: ServerOptions = { command: resolved.command, args, transport: TransportKind.stdio };
    const clientOptions: LanguageClientOptions = {
      documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
      initializationOptions: toServerSettings(settingsGetter()),
      outputChannel: this.output,
      middleware: {
        // Code actions from the lightbulb run the server's commands. Explanations are streamed
        // into the Ask panel instead (the command's answer would otherwise go nowhere), edits go
        // through the server as they are, with their result shown.
        executeCommand: async (command, args, next) => {
          const action = actionOfCommand(command);
          const argument = args[0] as { uri?: string; range?: Range } | undefined;
          if (action && argument?.uri && argument.range && !EDITING_ACTIONS.includes(action)) {
            const title = action === "ask" ? "Ask the heavy model" : action === "explainShell" ? "Explain shell command" : "Explain";
            await this.askPanel.ask({ title, shown: "", params: { textDocument: { uri: argument.uri }, range: argument.range, action } });
            return undefined;
          }
          if (!action) return (await next(command, args)) as unknown;
          return this.work.run(async () => {
            try {
              const answer = (await next(command, args)) as Answer | undefined;
              if (answer) this.reportEdit(answer);
              return answer;
            } catch (error) {
              this.reportFailure(error);
              return undefined;
            }
          });
        },
      },
    };
    const client = new LanguageClient("triage", "triage", serverOptions, clientOptions);
    this.client = client;
    const rpc: Rpc = {
      // Neither an undefined token nor undefined params may reach the call: both would be sent
      // as positional params.
      sendRequest: (method, params, token) =>
        params === undefined ? (token ? client.sendRequest(method, token) : client.sendRequest(method)) : token ? client.sendRequest(method, params, token) : client.sendRequest(method, params),
      sendNotification: (method, params) => client.sendNotification(method, params),
      onNotification: (method, handler) => client.onNotification(method, handler),
      onProgress: (type, token, handler) => client.onProgress(type, token, handler),
    };
    this.session = new TriageSession(rpc);
    this.context.subscriptions.push(
      this.session.onStatus((status) => {
        this.status = status;
        this.redraw();
      }),
      client.onDidChangeState((e) => {
        this.serverState = e.newState === State.Running ? "running" : e.newState === State.Starting ? "starting" : "stopped";
        this.redraw();
      }),
    );
    try {
      await client.start();
    } catch (error) {
      this.serverState = "stopped";
      this.redraw();
      void vscode.window.showErrorMessage(`triage: the language server (${resolved.command}) did not start: ${describeError(error).message}`, "Open Settings").then((choice) => {
        if (choice) void vscode.commands.executeCommand("workbench.action.openSettings", "triage.serverPath");
      });
      return;
    }
    await this.refreshTiers();
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    this.session = undefined;
    if (client && client.state !== State.Stopped) await client.stop();
  }

  private async restart(): Promise<void> {
    await this.stop();
    this.status = undefined;
    this.serverState = "starting";
    this.redraw();
    await this.start();
  }

  private showMissing(message: string): void {
    if (this.missingShown) return;
    this.missingShown = true;
    void vscode.window.showErrorMessage(message, "Open Settings", "Show Instructions").then((choice) => {
      if (choice === "Open Settings") void vscode.commands.executeCommand("workbench.action.openSettings", "triage.serverPath");
      if (choice === "Show Instructions") {
        this.output.appendLine(INSTALL_STEPS);
        this.output.show(true);
      }
    });
  }

  private async withSession(run: (session: TriageSession) => unknown): Promise<void> {
    if (!this.session) {
      this.missingShown = false;
      if (this.serverState === "missing") {
        const resolved = resolveServer(vscode.workspace.getConfiguration("triage").get<string | null>("serverPath"), process.env.PATH, isExecutable);
        if (!resolved.ok) return this.showMissing(resolved.message);
        return this.restart();
      }
      void vscode.window.showWarningMessage("triage: the language server is not running. Run “Triage: Restart the Language Server”.");
      return;
    }
    await run(this.session);
  }

  /** model → tier, so the bar says "coder" for the coder tier's model. */
  private async refreshTiers(): Promise<void> {
    if (!this.session) return;
    try {
      const report = await this.session.status();
      this.tiers = new Map(report.tiers.map((t) => [t.model, t.tier]));
      this.redraw();
    } catch (error) {
      this.output.appendLine(`triage/status failed: ${describeError(error).message}`);
    }
  }

  private redraw(): void {
    const line = statusLine({ status: this.status, tiers: this.tiers, busy: this.work.busy, last: this.last, serverState: this.serverState });
    this.item.text = line.text;
    this.item.backgroundColor = line.background ? new vscode.ThemeColor(line.background) : undefined;
    const tooltip = new vscode.MarkdownString(line.tooltip);
    tooltip.supportThemeIcons = true;
    this.item.tooltip = tooltip;
  }

  private remember(answer: Answer): void {
    this.last = decisionOf(answer);
    this.redraw();
  }

  private reportEdit(answer: Answer): void {
    this.remember(answer);
    if (answer.applied === false) {
      void vscode.window.showWarningMessage(`triage: ${answer.notApplied ?? "the edit was not applied"}`);
    } else {
      void vscode.window.setStatusBarMessage(`$(check) triage: ${answerFooter(answer)} (undo with Ctrl+Z)`, 8000);
    }
  }

  private reportFailure(error: unknown): void {
    if (isCancellation(error)) {
      void vscode.window.setStatusBarMessage("triage: stopped", 3000);
      return;
    }
    void vscode.window.showErrorMessage(`triage: ${describeError(error).message}`);
  }

  /** The active editor's selection (the current line when empty) as server arguments. */
  private target(): { uri: string; range: Range; text: string } | undefined {
    const editor = vscode.window.activeTextEditor;
    if (!editor || !this.client) {
      void vscode.window.showInformationMessage("triage: open a file and select code first.");
      return undefined;
    }
    const selection = editor.selection;
    return { uri: this.client.code2ProtocolConverter.asUri(editor.document.uri), range: toRange(selection), text: editor.document.getText(selection) };
  }

  private streamAction(action: Action, title: string): Promise<void> {
    return this.withSession(async () => {
      const target = this.target();
      if (!target) return;
      await this.askPanel.ask({ title, shown: target.text.split("\n").slice(0, 3).join("\n"), params: { textDocument: { uri: target.uri }, range: target.range, action } });
    });
  }

  private edit(action: Action): Promise<void> {
    return this.withSession(async (session) => {
      const target = this.target();
      if (!target) return;
      await this.work.run(async (token) => {
        try {
          this.reportEdit(await session.runCommand(action, target.uri, target.range, token));
        } catch (error) {
          this.reportFailure(error);
        }
      });
    });
  }

  private async promptFor(title: string): Promise<string | undefined> {
    this.intents.chatOpened();
    const prompt = await vscode.window.showInputBox({ title: `triage: ${title}`, prompt: "Your question (the selection, if any, goes with it)", ignoreFocusOut: true });
    return prompt?.trim() || undefined;
  }

  private askPrompt(title: string, options: { heavy?: boolean }): Promise<void> {
    return this.withSession(async () => {
      const prompt = await this.promptFor(title);
      if (!prompt) {
        this.intents.chatClosed();
        return;
      }
      const editor = vscode.window.activeTextEditor;
      const params: ChatParams = { prompt };
      if (editor && !editor.selection.isEmpty && this.client) {
        params.textDocument = { uri: this.client.code2ProtocolConverter.asUri(editor.document.uri) };
        params.range = toRange(editor.selection);
      }
      if (options.heavy) params.tier = "heavy";
      await this.askPanel.ask({ title, shown: prompt, params });
    });
  }

  private routeOnly(): Promise<void> {
    return this.withSession(async (session) => {
      const prompt = await vscode.window.showInputBox({ title: "triage: Route Only", prompt: "A question to route (no model is called)", ignoreFocusOut: true });
      if (prompt === undefined) return;
      const editor = vscode.window.activeTextEditor;
      const params: ChatParams = { prompt };
      if (editor && !editor.selection.isEmpty && this.client) {
        params.textDocument = { uri: this.client.code2ProtocolConverter.asUri(editor.document.uri) };
        params.range = toRange(editor.selection);
      }
      try {
        const decision = await session.route(params);
        this.last = decisionOf(decision);
        this.redraw();
        await this.askPanel.showMarkdown("Route Only", prompt, decisionMarkdown(decision), `${decision.model} · ${decision.tier} · confidence ${decision.confidence.toFixed(2)}`);
      } catch (error) {
        this.reportFailure(error);
      }
    });
  }
}

function toRange(selection: vscode.Selection | vscode.Range): Range {
  return { start: { line: selection.start.line, character: selection.start.character }, end: { line: selection.end.line, character: selection.end.character } };
}
