// What the status bar item shows: "VRAM 7% · coder", its colour by level, the spinner while a
// request runs and the tooltip (loaded models, the last routing decision and its reasons).
// Pure: the extension turns the result into a StatusBarItem.

import type { Answer, Decision, Level, StatusNotification } from "./protocol";

export interface StatusLine {
  /** The item's text, with a `$(sync~spin)` codicon while busy. */
  text: string;
  /** The theme colour of the background: none for ok/unknown. */
  background: "statusBarItem.warningBackground" | "statusBarItem.errorBackground" | undefined;
  /** Markdown. */
  tooltip: string;
}

/** The last routing decision the client saw (from an answer or a `triage/route`). */
export type LastDecision = Pick<Answer, "model" | "tier" | "confidence" | "reasons"> & { warning?: string | null };

export function decisionOf(source: Answer | Decision): LastDecision {
  return { model: source.model, tier: source.tier, confidence: source.confidence, reasons: source.reasons, warning: source.warning ?? null };
}

/** `model → tier` from the configured tiers (the `triage/status` request), so the bar can say
 * "coder" for qwen3-coder:30b. */
export type TierMap = ReadonlyMap<string, string>;

export function vramPercent(status: StatusNotification | undefined): number | undefined {
  const vram = status?.vram;
  if (!vram || !(vram.total_mb > 0)) return undefined;
  return Math.round((100 * vram.used_mb) / vram.total_mb);
}

/** The short text shared by both editors: "VRAM 7% · coder", "no GPU · idle", "triage: starting". */
export function statusText(status: StatusNotification | undefined, tiers: TierMap): string {
  if (!status) return "triage";
  const percent = vramPercent(status);
  const vram = percent === undefined ? "no GPU" : `VRAM ${percent}%`;
  const working = status.working ? (tiers.get(status.working) ?? status.working) : "idle";
  return `${vram} · ${working}`;
}

export function levelBackground(level: Level | undefined): StatusLine["background"] {
  if (level === "critical") return "statusBarItem.errorBackground";
  if (level === "warn") return "statusBarItem.warningBackground";
  return undefined;
}

function mb(value: number): string {
  return value >= 1024 ? `${(value / 1024).toFixed(1)} GB` : `${value} MB`;
}

function escapeMarkdown(text: string): string {
  return text.replace(/([\\`*_{}[\]#|<>])/g, "\\$1");
}

export function statusLine(input: {
  status: StatusNotification | undefined;
  tiers: TierMap;
  busy: boolean;
  last: LastDecision | undefined;
  serverState: "starting" | "running" | "stopped" | "missing";
}): StatusLine {
  const { status, tiers, busy, last, serverState } = input;
  if (serverState === "missing") {
    return { text: "$(error) triage: no server", background: "statusBarItem.errorBackground", tooltip: "The `triage` binary was not found. Set `triage.serverPath` or put `triage` on PATH." };
  }
  if (serverState === "stopped") {
    return { text: "$(debug-disconnect) triage", background: undefined, tooltip: "The triage language server is not running. Run **Triage: Restart the Language Server**." };
  }
  const spinning = busy || Boolean(status?.working);
  const text = `${spinning ? "$(sync~spin) " : "$(hubot) "}${serverState === "starting" && !status ? "triage: starting" : statusText(status, tiers)}`;
  const lines: string[] = [];
  if (status) {
    const vram = status.vram;
    lines.push(
      vram
        ? `**VRAM** ${mb(vram.used_mb)} of ${mb(vram.total_mb)} used (${vramPercent(status)}%) · level ${status.level}`
        : "**VRAM** no GPU seen",
    );
    if (status.working) lines.push(`**Answering:** ${escapeMarkdown(status.working)}`);
    if (status.loaded.length === 0) {
      lines.push("**Loaded:** none");
    } else {
      lines.push("**Loaded:**");
      for (const m of status.loaded) {
        const share = m.size_mb > 0 ? Math.min(100, Math.round((100 * m.vram_mb) / m.size_mb)) : 100;
        lines.push(`- ${escapeMarkdown(m.name)} on ${escapeMarkdown(m.endpoint)} · ${mb(m.size_mb)}, ${share}% in VRAM`);
      }
    }
  }
  if (last) {
    lines.push(`**Last decision:** ${escapeMarkdown(last.model)} (${last.tier}) · confidence ${last.confidence.toFixed(2)}`);
    for (const reason of last.reasons) lines.push(`- ${escapeMarkdown(reason)}`);
    if (last.warning) lines.push(`⚠ ${escapeMarkdown(last.warning)}`);
  }
  lines.push("_Click for the status view._");
  return { text, background: levelBackground(status?.level), tooltip: lines.join("\n\n").replace(/\n\n- /g, "\n- ") };
}
