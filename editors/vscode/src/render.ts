// Turning answers into what the Ask panel shows: the streamed Markdown rendered safely, the
// footer (model · tier · confidence · timings), fallbacks, sources, and a routing decision.
// Pure; the panel posts the resulting HTML into its webview.

import MarkdownIt from "markdown-it";

import type { Answer, Decision, Source } from "./protocol";

// Raw HTML in an answer is shown as text, never interpreted; links are limited to http(s) and
// mailto (markdown-it's validateLink already refuses javascript:, vbscript:, file: and data:
// except images). The webview's CSP forbids scripts besides the panel's own anyway.
const markdown = new MarkdownIt({ html: false, linkify: true, typographer: false, breaks: false });
const defaultValidate = markdown.validateLink.bind(markdown);
markdown.validateLink = (url: string) => defaultValidate(url) && /^(https?:|mailto:|#)/i.test(url.trim());

export function renderMarkdown(text: string): string {
  return markdown.render(text);
}

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c] ?? c);
}

/** Collects the deltas of one streamed answer. Markdown is rendered from the whole text each
 * time (an unclosed fence renders as an open code block until it closes). */
export class StreamedAnswer {
  private parts: string[] = [];
  private length = 0;

  push(delta: string): void {
    this.parts.push(delta);
    this.length += delta.length;
  }

  get text(): string {
    if (this.parts.length > 1) this.parts = [this.parts.join("")];
    return this.parts[0] ?? "";
  }

  get size(): number {
    return this.length;
  }

  html(): string {
    return renderMarkdown(this.text);
  }
}

function ms(value: number | null | undefined): string | undefined {
  if (value === null || value === undefined) return undefined;
  return value >= 10000 ? `${(value / 1000).toFixed(1)} s` : `${Math.round(value)} ms`;
}

/** "qwen3-coder:30b · coder · confidence 0.91 · first token 412 ms · total 3810 ms", as
 * `triage ask` prints it. */
export function answerFooter(answer: Answer): string {
  const parts = [answer.model, answer.tier, `confidence ${answer.confidence.toFixed(2)}`];
  const first = ms(answer.timings?.first_token_ms);
  if (first) parts.push(`first token ${first}`);
  const total = ms(answer.timings?.total_ms);
  if (total) parts.push(`total ${total}`);
  if (answer.finish === "length") parts.push("cut at the token limit");
  return parts.join(" · ");
}

export function fallbackLines(answer: Answer): string[] {
  return answer.fallbacks.map((f) => `${f.model} (${f.tier}) on ${f.endpoint} failed: ${f.error}`);
}

export function sourceLabel(source: Source): string {
  const lines = source.start_line === source.end_line ? `${source.start_line}` : `${source.start_line}–${source.end_line}`;
  return `${source.path}:${lines}${source.kind ? ` (${source.kind})` : ""}`;
}

export function sourcesOf(answer: Answer): Source[] {
  const sources = answer.context?.sources;
  if (!Array.isArray(sources)) return [];
  return sources.filter((s): s is Source => typeof s === "object" && s !== null && typeof s.path === "string" && Number.isFinite(s.start_line) && Number.isFinite(s.end_line));
}

/** The HTML under an answer: footer, warning, fallbacks, sources, reasons. */
export function answerDetailsHtml(answer: Answer): string {
  const out: string[] = [`<div class="footer">${escapeHtml(answerFooter(answer))}</div>`];
  if (answer.warning) out.push(`<div class="warning">⚠ ${escapeHtml(answer.warning)}</div>`);
  if (answer.error) out.push(`<div class="error">${escapeHtml(answer.error)}</div>`);
  if (answer.notApplied) out.push(`<div class="warning">Not applied: ${escapeHtml(answer.notApplied)}</div>`);
  const fallbacks = fallbackLines(answer);
  if (fallbacks.length > 0) out.push(`<div class="fallbacks">Fell back after: <ul>${fallbacks.map((f) => `<li>${escapeHtml(f)}</li>`).join("")}</ul></div>`);
  const sources = sourcesOf(answer);
  if (sources.length > 0) {
    out.push(
      `<div class="sources">Sources: <ul>${sources
        .map((s) => `<li><a href="#" class="source" data-path="${escapeHtml(s.path)}" data-line="${s.start_line}">${escapeHtml(sourceLabel(s))}</a></li>`)
        .join("")}</ul></div>`,
    );
  }
  if (answer.reasons.length > 0) out.push(`<details class="reasons"><summary>Why this model</summary><ul>${answer.reasons.map((r) => `<li>${escapeHtml(r)}</li>`).join("")}</ul></details>`);
  return out.join("\n");
}

/** A decision (Route Only) as Markdown. */
export function decisionMarkdown(decision: Decision): string {
  const lines = [`**${decision.tier} → ${decision.model}** on ${decision.endpoint}${decision.url ? ` (${decision.url})` : ""}`, "", `confidence ${decision.confidence.toFixed(2)}`, ""];
  if (decision.reasons.length > 0) {
    lines.push("Reasons:", "");
    for (const r of decision.reasons) lines.push(`- ${r}`);
    lines.push("");
  }
  if (decision.fallbacks.length > 0) lines.push(`Fallbacks: ${decision.fallbacks.map((f) => `${f.tier} (${f.model} on ${f.endpoint})`).join(" → ")}`, "");
  if (decision.warning) lines.push(`⚠ ${decision.warning}`);
  return lines.join("\n");
}
