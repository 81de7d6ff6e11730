import assert from "node:assert/strict";
import { test } from "node:test";

import type { Answer } from "../../src/protocol";
import { answerDetailsHtml, answerFooter, decisionMarkdown, renderMarkdown, sourceLabel, StreamedAnswer } from "../../src/render";

const answer: Answer = {
  text: "Use `find`:\n\n```sh\nfind /var -size +100M\n```",
  model: "qwen3-coder:30b",
  tier: "coder",
  confidence: 0.9137,
  reasons: ["the prompt is a shell command"],
  fallbacks: [],
  timings: { route_ms: 0.4, first_token_ms: 412, total_ms: 3810 },
};

test("the footer reads like `triage ask`'s", () => {
  assert.equal(answerFooter(answer), "qwen3-coder:30b · coder · confidence 0.91 · first token 412 ms · total 3810 ms");
  assert.equal(answerFooter({ ...answer, timings: { first_token_ms: null, total_ms: 65000 }, finish: "length" }), "qwen3-coder:30b · coder · confidence 0.91 · total 65.0 s · cut at the token limit");
});

test("streamed deltas render as Markdown, an open fence as an open code block", () => {
  const s = new StreamedAnswer();
  for (const d of ["Use ", "`find`", ":\n\n```sh\nfind /var", " -size +100M"]) s.push(d);
  assert.equal(s.text, "Use `find`:\n\n```sh\nfind /var -size +100M");
  assert.equal(s.size, s.text.length);
  const html = s.html();
  assert.match(html, /<p>Use <code>find<\/code>:<\/p>/);
  assert.match(html, /<pre><code class="language-sh">find \/var -size \+100M\n?<\/code><\/pre>/);
  s.push("\n```\nDone.");
  assert.match(s.html(), /<\/code><\/pre>\n<p>Done\.<\/p>/);
});

test("raw HTML and script links in an answer are not interpreted", () => {
  const html = renderMarkdown('<script>alert(1)</script> <img src=x onerror=alert(1)> [click](javascript:alert(1)) [ok](https://example.com) [f](file:///etc/passwd)');
  assert.doesNotMatch(html, /<script|<img/);
  assert.match(html, /&lt;script&gt;/);
  assert.doesNotMatch(html, /href="javascript:/);
  assert.doesNotMatch(html, /href="file:/);
  assert.match(html, /<a href="https:\/\/example\.com">ok<\/a>/);
});

test("details show warning, fallbacks, sources and reasons, escaped", () => {
  const html = answerDetailsHtml({
    ...answer,
    warning: "moved <for> lack of VRAM",
    fallbacks: [{ tier: "fast", model: "llama3.2:3b", endpoint: "ollama", error: "HTTP 500" }],
    context: { tokens: 100, sources: [{ path: "src/route.rs", start_line: 10, end_line: 42, kind: "symbol" }, { path: "README.md", start_line: 3, end_line: 3 }] },
  });
  assert.match(html, /moved &lt;for&gt; lack of VRAM/);
  assert.match(html, /llama3\.2:3b \(fast\) on ollama failed: HTTP 500/);
  assert.match(html, /src\/route\.rs:10–42 \(symbol\)/);
  assert.match(html, /data-path="README\.md" data-line="3">README\.md:3</);
  assert.match(html, /<summary>Why this model<\/summary><ul><li>the prompt is a shell command<\/li>/);
  // No sources, no section; a malformed source is skipped.
  assert.doesNotMatch(answerDetailsHtml(answer), /Sources/);
  assert.doesNotMatch(answerDetailsHtml({ ...answer, context: { sources: [{ path: 3 } as never] } }), /Sources/);
  assert.equal(sourceLabel({ path: "a.py", start_line: 1, end_line: 2 }), "a.py:1–2");
});

test("a decision as Markdown", () => {
  const md = decisionMarkdown({ tier: "coder", model: "qwen3-coder:30b", endpoint: "ollama", url: "http://127.0.0.1:11434/", confidence: 0.96, reasons: ["the prompt is a shell command"], warning: null, fallbacks: [{ tier: "heavy", model: "llama3.1:70b", endpoint: "ollama" }] });
  assert.match(md, /^\*\*coder → qwen3-coder:30b\*\* on ollama \(http:\/\/127\.0\.0\.1:11434\/\)/);
  assert.match(md, /- the prompt is a shell command/);
  assert.match(md, /Fallbacks: heavy \(llama3\.1:70b on ollama\)/);
});
