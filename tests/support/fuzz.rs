//! A structure-aware fuzzer of the language server: it drives the real `triage serve` over its
//! pipes with a seeded mix of valid and hostile traffic and checks, all along, that the server
//! neither panics nor hangs, answers every request exactly once, writes nothing but framed
//! JSON-RPC, and keeps every document equal to a reference model after every edit.
//! Shared by `examples/fuzz_lsp.rs` (long runs) and `tests/fuzz.rs` (the short one in CI).
//!
//! The traffic: random and mutated frames (bytes that are not JSON, JSON that is not JSON-RPC,
//! byte flips and truncations of valid messages, broken headers and lengths, batches, deep
//! nesting), every method with one parameter replaced by a value of the wrong type (huge and
//! negative numbers, strings, nulls, arrays, invalid UTF-8, lone surrogates), valid and invalid
//! edits (out-of-range, backwards and mid-character positions, stale versions, whole-batch
//! failures, unknown and closed documents), `$/cancelRequest` for pending, finished and made-up
//! ids, requests before `initialize` and after `shutdown`, and lines of 10 MB.
//! cargo-fuzz needs a nightly toolchain and would fuzz a function in-process; this drives the
//! process editors really run, so a hang or an abort is seen as the editor would see it.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::backend::{Fault, TestBackend};
use super::lsp::{frame, key, Lsp};

#[derive(Debug, Clone)]
pub struct Options {
    pub binary: PathBuf,
    pub seed: u64,
    pub messages: u64,
    /// Files whose bytes are sent as frame bodies, verbatim and mutated.
    pub corpus: Option<PathBuf>,
    /// A 10 MB line every this many messages (and once in the middle of any run).
    pub big_every: u64,
    /// Where the last frames go when a check fails.
    pub crashes: Option<PathBuf>,
    pub verbose: bool,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub seed: u64,
    pub messages: u64,
    pub bytes_sent: u64,
    pub requests: u64,
    pub responses: u64,
    pub error_codes: BTreeMap<String, u64>,
    pub null_id_errors: u64,
    pub valid_edits: u64,
    pub invalid_edits: u64,
    pub document_checks: u64,
    pub document_mismatches: u64,
    pub cancels: u64,
    pub big_lines: u64,
    pub corpus_entries: u64,
    pub hangs: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub panicked: bool,
    pub framing_error: Option<String>,
    pub exit_code: Option<i32>,
    pub peak_rss_kb: u64,
    pub duration_s: f64,
    pub messages_per_s: f64,
    pub failures: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// A document as the client believes it is.
#[derive(Clone)]
struct Doc {
    uri: String,
    text: String,
    version: i32,
    open: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Enc {
    Utf8,
    Utf16,
}

const PIECES: &[&str] = &[
    "a", "ß", "😀", "\n", "\r\n", "\r", "é", "x y", "", "\u{2028}", "中文", "\t", "{", "\"", "\\",
    "\u{0}", "\u{feff}", "𝕏",
];

const METHODS: &[&str] = &[
    "textDocument/hover",
    "textDocument/completion",
    "textDocument/inlineCompletion",
    "textDocument/codeAction",
    "workspace/executeCommand",
    "triage/chat",
    "triage/route",
    "triage/document",
    "triage/status",
    "textDocument/definition",
    "no/such/method",
    "initialize",
];

/// Byte offsets of the positions LSP can address (not between the CR and LF of a break).
fn boundaries(text: &str) -> Vec<usize> {
    text.char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .filter(|&i| !(i > 0 && text.as_bytes()[i - 1] == b'\r' && text[i..].starts_with('\n')))
        .collect()
}

/// The LSP position of a byte offset, computed on the plain string (independently of the
/// server's ropes): only `\n`, `\r\n` and `\r` break lines.
fn position(text: &str, byte: usize, enc: Enc) -> (u32, u32) {
    let mut line = 0u32;
    let mut col = 0u32;
    let mut chars = text[..byte].chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => {
                line += 1;
                col = 0;
            }
            c => {
                col += match enc {
                    Enc::Utf8 => c.len_utf8() as u32,
                    Enc::Utf16 => c.len_utf16() as u32,
                }
            }
        }
    }
    (line, col)
}

/// The end of line `line` (byte offset), if the line exists.
fn line_end(text: &str, line: u32) -> Option<usize> {
    let mut current = 0u32;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if current == line && (bytes[i] == b'\n' || bytes[i] == b'\r') {
            return Some(i);
        }
        if bytes[i] == b'\n' || bytes[i] == b'\r' {
            if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            current += 1;
        }
        i += 1;
    }
    (current == line).then_some(text.len())
}

fn range(s: (u32, u32), e: (u32, u32)) -> Value {
    json!({"start": {"line": s.0, "character": s.1}, "end": {"line": e.0, "character": e.1}})
}

fn random_text(rng: &mut fastrand::Rng, pieces: usize) -> String {
    (0..pieces)
        .map(|_| PIECES[rng.usize(..PIECES.len())])
        .collect()
}

/// A value of some JSON type, often hostile.
fn hostile(rng: &mut fastrand::Rng) -> Value {
    match rng.u32(0..18) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1),
        3 => json!(2_147_483_648u64),
        4 => json!(4_294_967_296u64),
        5 => json!(u64::MAX),
        6 => json!(i64::MIN),
        7 => json!(1e308),
        8 => json!(1.5),
        9 => json!(""),
        10 => json!("x".repeat(rng.usize(0..5000))),
        11 => json!([]),
        12 => json!({}),
        13 => json!([1, "two", null, {"three": 3}]),
        14 => json!({"uri": "file:///nope", "line": -5}),
        15 => json!("file:///%ff%fe"),
        16 => json!("not a uri at all"),
        _ => json!(4_294_967_295u64),
    }
}

/// Replaces one node of `v` (chosen at random, depth first) by a hostile value, or removes it.
fn mutate(v: &mut Value, rng: &mut fastrand::Rng) {
    let mut paths: Vec<Vec<PathStep>> = Vec::new();
    collect_paths(v, &mut Vec::new(), &mut paths);
    if paths.is_empty() {
        *v = hostile(rng);
        return;
    }
    let path = &paths[rng.usize(..paths.len())];
    let remove = rng.u32(0..5) == 0;
    let mut node = v;
    for (i, step) in path.iter().enumerate() {
        let last = i == path.len() - 1;
        match step {
            PathStep::Key(k) => {
                let Some(map) = node.as_object_mut() else {
                    return;
                };
                if last {
                    if remove {
                        map.remove(k);
                    } else {
                        map.insert(k.clone(), hostile(rng));
                    }
                    return;
                }
                let Some(next) = map.get_mut(k) else { return };
                node = next;
            }
            PathStep::Index(n) => {
                let Some(arr) = node.as_array_mut() else {
                    return;
                };
                if last {
                    if remove && *n < arr.len() {
                        arr.remove(*n);
                    } else if let Some(slot) = arr.get_mut(*n) {
                        *slot = hostile(rng);
                    }
                    return;
                }
                let Some(next) = arr.get_mut(*n) else { return };
                node = next;
            }
        }
    }
}

enum PathStep {
    Key(String),
    Index(usize),
}

fn collect_paths(v: &Value, here: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                here.push(PathStep::Key(k.clone()));
                out.push(clone_path(here));
                collect_paths(child, here, out);
                here.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                here.push(PathStep::Index(i));
                out.push(clone_path(here));
                collect_paths(child, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn clone_path(p: &[PathStep]) -> Vec<PathStep> {
    p.iter()
        .map(|s| match s {
            PathStep::Key(k) => PathStep::Key(k.clone()),
            PathStep::Index(i) => PathStep::Index(*i),
        })
        .collect()
}

/// Flips, cuts or repeats bytes of a serialised message.
fn mutate_bytes(body: &mut Vec<u8>, rng: &mut fastrand::Rng) {
    if body.is_empty() {
        body.push(rng.u8(..));
        return;
    }
    match rng.u32(0..4) {
        0 => {
            for _ in 0..rng.usize(1..6) {
                let i = rng.usize(..body.len());
                body[i] = rng.u8(..);
            }
        }
        1 => body.truncate(rng.usize(..body.len())),
        2 => {
            let a = rng.usize(..body.len());
            let b = (a + rng.usize(0..32)).min(body.len());
            let slice = body[a..b].to_vec();
            body.splice(a..a, slice);
        }
        _ => {
            let i = rng.usize(..body.len());
            body.insert(i, [0xff, 0xfe, 0xc3, 0x28, 0xed, 0xa0][rng.usize(..6)]);
        }
    }
}

struct Fuzzer {
    lsp: Lsp,
    rng: fastrand::Rng,
    enc: Enc,
    docs: Vec<Doc>,
    /// Requests sent and not yet answered: id → (sent, method).
    pending: HashMap<String, (Instant, String)>,
    /// Recently answered ids, for cancels of finished requests.
    answered: Vec<Value>,
    report: Report,
    /// The last frames sent, for a reproduction when a check fails.
    recent: std::collections::VecDeque<Vec<u8>>,
    corpus: Vec<Vec<u8>>,
    initialized: bool,
}

impl Fuzzer {
    fn send_bytes(&mut self, bytes: Vec<u8>) {
        self.report.messages += 1;
        self.report.bytes_sent += bytes.len() as u64;
        let keep: Vec<u8> = if bytes.len() > 4096 {
            let mut head = bytes[..2048].to_vec();
            head.extend_from_slice(format!("…[{} bytes]", bytes.len()).as_bytes());
            head
        } else {
            bytes.clone()
        };
        self.recent.push_back(keep);
        if self.recent.len() > 300 {
            self.recent.pop_front();
        }
        if !self.lsp.send_raw(&bytes) {
            self.fail("the server's stdin closed".into());
        }
    }

    fn send_value(&mut self, v: &Value) {
        self.send_bytes(frame(v.to_string().as_bytes()));
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send_value(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// A request whose answer is checked for (exactly once, eventually).
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = if self.rng.u32(0..4) == 0 {
            json!(format!("s{}", self.lsp.fresh_id()))
        } else {
            self.lsp.fresh_id()
        };
        self.pending
            .insert(key(&id), (Instant::now(), method.to_string()));
        self.report.requests += 1;
        self.send_value(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    /// Waits for `id` (a hang when it does not come).
    fn answer(&mut self, id: &Value, timeout: Duration) -> Option<Value> {
        self.collect();
        if let Some((_, _)) = self.pending.get(&key(id)) {
            let got = self.lsp.wait(id, timeout);
            if let Some(r) = &got {
                self.pending.remove(&key(id));
                self.count(r);
            } else {
                self.report.hangs += 1;
                self.fail(format!("no answer to request {id} within {timeout:?}"));
            }
            return got;
        }
        None
    }

    fn count(&mut self, response: &Value) {
        self.report.responses += 1;
        if let Some(code) = response["error"]["code"].as_i64() {
            *self.report.error_codes.entry(code.to_string()).or_default() += 1;
        }
        self.answered.push(response["id"].clone());
        if self.answered.len() > 64 {
            self.answered.remove(0);
        }
    }

    /// Takes the responses that arrived.
    fn collect(&mut self) {
        for (id, response) in self.lsp.take_responses() {
            if self.pending.remove(&id).is_none() {
                // An answer to a request made with a hostile id, or twice: the latter counts.
                continue;
            }
            self.count(&response);
        }
    }

    fn fail(&mut self, what: String) {
        if self.report.failures.len() < 50 {
            if self.report.failures.is_empty() {
                if let Some(dir) = &self.report_dir() {
                    let _ = std::fs::create_dir_all(dir);
                    let path = dir.join(format!(
                        "seed-{}-msg-{}.frames",
                        self.report.seed, self.report.messages
                    ));
                    let mut bytes = Vec::new();
                    for f in &self.recent {
                        bytes.extend_from_slice(f);
                        bytes.extend_from_slice(b"\n--------\n");
                    }
                    let _ = std::fs::write(&path, bytes);
                    eprintln!("fuzz_lsp: the last frames are in {}", path.display());
                }
            }
            self.report.failures.push(what);
        }
    }

    fn report_dir(&self) -> Option<PathBuf> {
        std::env::var_os("TRIAGE_FUZZ_CRASHES").map(PathBuf::from)
    }

    fn open_docs(&self) -> Vec<usize> {
        (0..self.docs.len())
            .filter(|&i| self.docs[i].open)
            .collect()
    }

    /// Asks the server for `doc` and compares it with the reference.
    fn check_doc(&mut self, index: usize) {
        let doc = self.docs[index].clone();
        let id = self.request("triage/document", json!({"textDocument": {"uri": doc.uri}}));
        let Some(response) = self.answer(&id, Duration::from_secs(20)) else {
            return;
        };
        self.report.document_checks += 1;
        let result = &response["result"];
        let equal = if doc.open {
            result["text"].as_str() == Some(doc.text.as_str())
                && result["version"].as_i64() == Some(doc.version as i64)
        } else {
            result.is_null()
        };
        if !equal {
            self.report.document_mismatches += 1;
            let got: String = result["text"]
                .as_str()
                .unwrap_or("<none>")
                .chars()
                .take(200)
                .collect();
            let want: String = doc.text.chars().take(200).collect();
            self.fail(format!(
                "{} (open {}) differs from the reference: server v{} {:?}, reference v{} {:?}",
                doc.uri, doc.open, result["version"], got, doc.version, want
            ));
        }
    }

    fn random_valid_range(&mut self, text: &str) -> (usize, usize) {
        let b = boundaries(text);
        let mut x = b[self.rng.usize(..b.len())];
        let mut y = b[self.rng.usize(..b.len())];
        if x > y {
            std::mem::swap(&mut x, &mut y);
        }
        (x, y)
    }

    /// A valid batch of 1–3 changes (sometimes a full replacement, sometimes a character far
    /// past the end of a line, which LSP reads as the line's end).
    fn valid_edit(&mut self) {
        let open = self.open_docs();
        if open.is_empty() {
            return self.open_doc();
        }
        let index = open[self.rng.usize(..open.len())];
        let mut text = self.docs[index].text.clone();
        let mut changes = Vec::new();
        for _ in 0..self.rng.usize(1..4) {
            let n = self.rng.usize(0..5);
            let inserted = random_text(&mut self.rng, n);
            if self.rng.u32(0..25) == 0 {
                changes.push(json!({"text": inserted}));
                text = inserted;
                continue;
            }
            let (a, b) = self.random_valid_range(&text);
            let start = position(&text, a, self.enc);
            let mut end = position(&text, b, self.enc);
            let mut b = b;
            if self.rng.u32(0..10) == 0 {
                // Past the end of the end line: the line's end.
                end.1 = end.1.saturating_add(1_000_000);
                b = line_end(&text, end.0).unwrap_or(b).max(a);
            }
            changes.push(json!({"range": range(start, end), "text": inserted}));
            text.replace_range(a..b, &inserted);
        }
        let doc = &mut self.docs[index];
        doc.version += self.rng.i32(1..3);
        doc.text = text;
        let params = json!({"textDocument": {"uri": doc.uri, "version": doc.version}, "contentChanges": changes});
        self.notify("textDocument/didChange", params);
        self.report.valid_edits += 1;
        self.check_doc(index);
    }

    /// An edit the server must refuse whole; the reference stays as it was.
    fn invalid_edit(&mut self) {
        let open = self.open_docs();
        let index = if open.is_empty() || self.rng.u32(0..6) == 0 {
            // Unknown or closed documents.
            if self.docs.is_empty() {
                return self.open_doc();
            }
            self.rng.usize(..self.docs.len())
        } else {
            open[self.rng.usize(..open.len())]
        };
        let doc = self.docs[index].clone();
        let text = &doc.text;
        let (a, b) = self.random_valid_range(text);
        let start = position(text, a, self.enc);
        let end = position(text, b, self.enc);
        let next = doc.version + 1;
        let good = json!({"range": range(start, end), "text": "ok"});
        let lines = text.split('\n').count() as u32 + 2;
        let (version, changes): (Value, Value) = match self.rng.u32(0..11) {
            0 => (
                json!(next),
                json!([{"range": range((lines + 1000, 0), (lines + 1000, 1)), "text": "x"}]),
            ),
            1 => (
                json!(next),
                json!([good, {"range": range((lines + 5, 0), (lines + 5, 0)), "text": "y"}]),
            ),
            2 => (json!(doc.version), json!([good])),
            3 => (json!(doc.version - 5), json!([good])),
            // Backwards (when the range is empty it would be valid: out of range instead).
            4 if a < b => (
                json!(next),
                json!([{"range": range(end, start), "text": "z"}]),
            ),
            4 => (
                json!(next),
                json!([{"range": range((lines + 9, 0), (lines + 9, 0)), "text": "z"}]),
            ),
            5 => (
                json!(next),
                json!([{"range": {"start": {"line": -1, "character": 0}, "end": {"line": 0, "character": 0}}, "text": "n"}]),
            ),
            6 => (
                json!(next),
                json!([{"range": {"start": {"line": 4_294_967_296u64, "character": 0}, "end": {"line": 0, "character": 0}}, "text": "n"}]),
            ),
            7 => (json!("seven"), json!([good])),
            8 => (json!(next), json!("not an array")),
            9 => (
                json!(next),
                json!([{"range": range(start, end), "text": 42}]),
            ),
            _ => {
                // Inside a surrogate pair (UTF-16) or inside a multibyte character (UTF-8).
                let Some((i, c)) = text.char_indices().find(|(_, c)| {
                    c.len_utf16() == 2 || (self.enc == Enc::Utf8 && c.len_utf8() > 1)
                }) else {
                    return self.valid_edit();
                };
                let _ = c;
                let (l, col) = position(text, i, self.enc);
                (
                    json!(next),
                    json!([{"range": range((l, col + 1), (l, col + 1)), "text": "m"}]),
                )
            }
        };
        let uri = if doc.open || self.rng.bool() {
            doc.uri.clone()
        } else {
            format!("file:///never/opened/{}.txt", self.rng.u32(..))
        };
        self.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": changes}),
        );
        self.report.invalid_edits += 1;
        self.check_doc(index);
    }

    fn open_doc(&mut self) {
        let closed: Vec<usize> = (0..self.docs.len())
            .filter(|&i| !self.docs[i].open)
            .collect();
        let index = if !closed.is_empty() && (self.docs.len() >= 8 || self.rng.bool()) {
            closed[self.rng.usize(..closed.len())]
        } else if self.docs.len() < 8 {
            self.docs.push(Doc {
                uri: format!(
                    "file:///fuzz/doc{}.{}",
                    self.docs.len(),
                    ["py", "sh", "md", "rs"][self.rng.usize(..4)]
                ),
                text: String::new(),
                version: 0,
                open: false,
            });
            self.docs.len() - 1
        } else {
            // Re-open an open document: the new text replaces the old.
            self.rng.usize(..self.docs.len())
        };
        let pieces = self.rng.usize(0..60);
        let text = random_text(&mut self.rng, pieces);
        let language = [
            "python",
            "shellscript",
            "markdown",
            "rust",
            "dockerfile",
            "yaml",
        ][self.rng.usize(..6)];
        let doc = &mut self.docs[index];
        doc.text = text;
        doc.version = self.rng.i32(0..10);
        doc.open = true;
        let params = json!({"textDocument": {"uri": doc.uri, "languageId": language, "version": doc.version, "text": doc.text}});
        self.notify("textDocument/didOpen", params);
        self.check_doc(index);
    }

    fn close_doc(&mut self) {
        let open = self.open_docs();
        if open.is_empty() {
            return;
        }
        let index = open[self.rng.usize(..open.len())];
        self.docs[index].open = false;
        let uri = self.docs[index].uri.clone();
        self.notify(
            "textDocument/didClose",
            json!({"textDocument": {"uri": uri}}),
        );
        self.check_doc(index);
    }

    fn any_uri(&mut self) -> String {
        if !self.docs.is_empty() && self.rng.u32(0..5) != 0 {
            self.docs[self.rng.usize(..self.docs.len())].uri.clone()
        } else {
            "file:///fuzz/unknown.txt".to_string()
        }
    }

    fn any_position(&mut self) -> Value {
        let (line, character) = match self.rng.u32(0..6) {
            0 => (4_294_967_295u64, 4_294_967_295u64),
            1 => (self.rng.u64(0..3), self.rng.u64(0..2_000_000)),
            _ => (self.rng.u64(0..20), self.rng.u64(0..40)),
        };
        json!({"line": line, "character": character})
    }

    /// Plausible params for `method`, with random (often out-of-range) positions.
    fn params_for(&mut self, method: &str) -> Value {
        let uri = self.any_uri();
        let p = self.any_position();
        let q = self.any_position();
        match method {
            "textDocument/hover"
            | "textDocument/completion"
            | "textDocument/inlineCompletion"
            | "textDocument/definition" => {
                json!({"textDocument": {"uri": uri}, "position": p, "context": {"triggerKind": 1}})
            }
            "textDocument/codeAction" => {
                json!({"textDocument": {"uri": uri}, "range": {"start": p, "end": q}, "context": {"diagnostics": []}})
            }
            "workspace/executeCommand" => {
                let command = [
                    "triage.explain",
                    "triage.explainShell",
                    "triage.fix",
                    "triage.refactor",
                    "triage.docstring",
                    "triage.tests",
                    "triage.ask",
                    "triage.nope",
                ][self.rng.usize(..8)];
                json!({"command": command, "arguments": [{"uri": uri, "range": {"start": p, "end": q}}]})
            }
            "triage/chat" | "triage/route" => {
                let n = self.rng.usize(0..12);
                let prompt = random_text(&mut self.rng, n);
                let mut v = json!({"prompt": prompt, "partialResultToken": format!("fz{}", self.rng.u32(..))});
                if self.rng.bool() {
                    v["textDocument"] = json!({"uri": uri});
                    v["range"] = json!({"start": p, "end": q});
                }
                if self.rng.u32(0..3) == 0 {
                    v["tier"] =
                        json!(["fast", "coder", "heavy", "medium", ""][self.rng.usize(..5)]);
                }
                if self.rng.u32(0..6) == 0 {
                    v["model"] = json!(format!("made-up-{}", self.rng.u32(..1000)));
                }
                v
            }
            "triage/document" => json!({"textDocument": {"uri": uri}}),
            "initialize" => json!({"capabilities": {}}),
            _ => json!({"anything": [p, q]}),
        }
    }

    fn valid_request(&mut self) {
        let method = METHODS[self.rng.usize(..METHODS.len())];
        // Status asks the backend and the GPU: rarer.
        if method == "triage/status" && self.rng.u32(0..5) != 0 {
            return;
        }
        let params = self.params_for(method);
        self.request(method, params);
    }

    fn mutated_request(&mut self) {
        let method = METHODS[self.rng.usize(..METHODS.len())];
        if method == "triage/status" {
            return;
        }
        let mut params = self.params_for(method);
        for _ in 0..self.rng.usize(1..3) {
            mutate(&mut params, &mut self.rng);
        }
        if self.rng.u32(0..20) == 0 {
            params = hostile(&mut self.rng);
        }
        self.request(method, params);
    }

    fn notification(&mut self) {
        let mut settings = json!({"tiers": {"fast": {"timeouts": {"first_token_s": 2}}}});
        if self.rng.bool() {
            mutate(&mut settings, &mut self.rng);
        }
        match self.rng.u32(0..5) {
            0 => self.notify(
                "workspace/didChangeConfiguration",
                json!({"settings": settings}),
            ),
            1 => {
                let v = hostile(&mut self.rng);
                self.notify("$/setTrace", json!({ "value": v }))
            }
            2 => {
                let v = hostile(&mut self.rng);
                self.notify("workspace/didChangeWatchedFiles", json!({ "changes": v }))
            }
            3 => {
                let uri = self.any_uri();
                self.notify(
                    "textDocument/didSave",
                    json!({"textDocument": {"uri": uri}}),
                )
            }
            _ => {
                let v = hostile(&mut self.rng);
                self.notify("textDocument/didOpen", v)
            }
        }
    }

    fn cancel(&mut self) {
        self.report.cancels += 1;
        let id = match self.rng.u32(0..6) {
            0 | 1 => self
                .pending
                .keys()
                .next()
                .and_then(|k| serde_json::from_str(k).ok())
                .unwrap_or(json!(1)),
            2 => self.answered.last().cloned().unwrap_or(json!(0)),
            3 => hostile(&mut self.rng),
            _ => json!(self.rng.u64(..)),
        };
        self.notify("$/cancelRequest", json!({"id": id}));
        // Cancel a chat that runs: it must still answer (RequestCancelled or its result).
        if self.rng.u32(0..3) == 0 {
            let params = self.params_for("triage/chat");
            let id = self.request("triage/chat", params);
            self.notify("$/cancelRequest", json!({"id": id}));
        }
    }

    /// A frame whose body is not a usable message.
    fn raw_frame(&mut self) {
        let body: Vec<u8> = match self.rng.u32(0..13) {
            0 => (0..self.rng.usize(0..200)).map(|_| self.rng.u8(..)).collect(),
            1 => hostile(&mut self.rng).to_string().into_bytes(),
            2 => b"[{\"jsonrpc\":\"2.0\",\"id\":\"x-batch\",\"method\":\"triage/route\",\"params\":{}}]".to_vec(),
            3 => {
                let depth = self.rng.usize(100..20_000);
                let mut b = vec![b'['; depth];
                b.extend(std::iter::repeat_n(b']', depth));
                b
            }
            4 => {
                let mut b = br#"{"jsonrpc":"2.0","method":"textDocument/didChange","params":{"textDocument":{"uri":"file:///fuzz/doc0.py","version":99999},"contentChanges":[{"text":"bad "#.to_vec();
                b.extend_from_slice(&[0xff, 0xfe, 0xc0, 0x80]);
                b.extend_from_slice(b"\"}]}}");
                b
            }
            5 => {
                let uri = self.docs.first().map(|d| d.uri.clone()).unwrap_or_default();
                format!(r#"{{"jsonrpc":"2.0","method":"textDocument/didChange","params":{{"textDocument":{{"uri":"{uri}","version":99999}},"contentChanges":[{{"text":"lone \ud800 surrogate"}}]}}}}"#).into_bytes()
            }
            6 => br#"{"jsonrpc":"1.0","id":"x-old","method":"triage/route","params":{}}"#.to_vec(),
            7 => format!(r#"{{"jsonrpc":"2.0","id":{},"method":"triage/route","params":{{"prompt":"x"}}}}"#, ["null", "1.5", "{}", "[]", "true", "-0"][self.rng.usize(..6)]).into_bytes(),
            8 => br#"{"jsonrpc":"2.0","id":424242,"result":null}"#.to_vec(),
            9 => br#"{"jsonrpc":"2.0","method":42}"#.to_vec(),
            10 if !self.corpus.is_empty() => {
                let mut b = self.corpus[self.rng.usize(..self.corpus.len())].clone();
                if self.rng.u32(0..3) != 0 {
                    mutate_bytes(&mut b, &mut self.rng);
                }
                b
            }
            _ => {
                let params = self.params_for("triage/route");
                // Its id may be mangled too: such ids are not tracked ("x-" prefix).
                let id = format!("x-{}", self.report.messages);
                let mut b = json!({"jsonrpc": "2.0", "id": id, "method": "triage/route", "params": params}).to_string().into_bytes();
                mutate_bytes(&mut b, &mut self.rng);
                b
            }
        };
        self.send_bytes(frame(&body));
    }

    /// Broken framing; each keeps the stream recoverable (the server resynchronises on the
    /// next `Content-Length`).
    fn broken_frame(&mut self) {
        let body = br#"{"jsonrpc":"2.0","method":"$/noop","params":{}}"#;
        let bytes: Vec<u8> = match self.rng.u32(0..7) {
            0 => [b"Content-Type: application/json\r\n\r\n".as_slice(), body].concat(),
            1 => [format!("Content-Length: {}\r\n\r\n", ["-1", "abc", "99999999999999999999999", ""][self.rng.usize(..4)]).as_bytes(), body].concat(),
            2 => [format!("content-length: {}\r\n\r\n", body.len()).as_bytes(), body].concat(),
            3 => [format!("Content-Length: {}\nX-Other: 1\n\n", body.len()).as_bytes(), body].concat(),
            4 => {
                let mut b = format!("X-Junk: {}\r\n", "j".repeat(self.rng.usize(9_000..30_000))).into_bytes();
                b.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                b.extend_from_slice(body);
                b
            }
            5 => [format!("Content-Length: {}\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n", body.len()).as_bytes(), body].concat(),
            _ => b"\r\n\r\n\r\n".to_vec(),
        };
        self.send_bytes(bytes);
    }

    /// Lines of 10 MB: a document, an edit in it, a request on it, a garbage body, a header.
    fn big_line(&mut self) {
        self.report.big_lines += 1;
        let line: String = "abc😀 ".repeat(10 * 1024 * 1024 / 8);
        self.docs.push(Doc {
            uri: format!("file:///fuzz/big{}.txt", self.report.big_lines),
            text: line,
            version: 1,
            open: true,
        });
        let index = self.docs.len() - 1;
        let doc = self.docs[index].clone();
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": doc.uri, "languageId": "plaintext", "version": 1, "text": doc.text}}),
        );
        // An edit in the middle of the line.
        let b = boundaries(&doc.text);
        let at = b[b.len() / 2];
        let pos = position(&doc.text, at, self.enc);
        self.docs[index].text.insert_str(at, "MIDDLE");
        self.docs[index].version = 2;
        self.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": doc.uri, "version": 2}, "contentChanges": [{"range": range(pos, pos), "text": "MIDDLE"}]}),
        );
        self.check_doc(index);
        let uri = doc.uri.clone();
        let hover = self.request(
            "textDocument/hover",
            json!({"textDocument": {"uri": uri}, "position": {"line": 0, "character": 5_000_000}}),
        );
        let action = self.request("textDocument/codeAction", json!({"textDocument": {"uri": uri}, "range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 3_000_000}}, "context": {"diagnostics": []}}));
        self.answer(&hover, Duration::from_secs(60));
        self.answer(&action, Duration::from_secs(60));
        // A 10 MB body of garbage and a 10 MB header line.
        let garbage = vec![b'x'; 10 * 1024 * 1024];
        self.send_bytes(frame(&garbage));
        let mut header = vec![b'h'; 10 * 1024 * 1024];
        header.extend_from_slice(b"\r\n");
        self.send_bytes(header);
        self.docs[index].open = false;
        self.notify(
            "textDocument/didClose",
            json!({"textDocument": {"uri": uri}}),
        );
        self.check_doc(index);
        // Free the reference's memory too.
        self.docs[index].text = String::new();
    }

    fn probe(&mut self) {
        let id = self.request(
            "triage/document",
            json!({"textDocument": {"uri": "file:///probe"}}),
        );
        self.answer(&id, Duration::from_secs(20));
        if let Some(rss) = self.lsp.rss_kb() {
            self.report.peak_rss_kb = self.report.peak_rss_kb.max(rss);
        }
        if !self.lsp.alive() {
            self.fail("the server died".into());
        }
    }
}

pub fn run(o: &Options) -> Report {
    let started = Instant::now();
    let mut report = Report {
        seed: o.seed,
        ..Report::default()
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            report.failures.push(format!("no temp dir: {e}"));
            return report;
        }
    };
    let backend = TestBackend::start();
    // Answers come fast; some models fail now and then, so that fallbacks run too.
    backend.set_fault("llama3.1:70b", Fault::Status { code: 500 });
    let config = dir.path().join("config.toml");
    let text = format!(
        "[endpoints.ollama]\nurl = \"{}\"\nmax_concurrent = 2\n[limits]\nqueue_len = 16\nmax_wait_s = 3\n\
         [tiers.fast.timeouts]\nfirst_token_s = 2\nidle_s = 1\ntotal_s = 5\n\
         [tiers.coder.timeouts]\nfirst_token_s = 2\nidle_s = 1\ntotal_s = 5\n\
         [tiers.heavy.timeouts]\nfirst_token_s = 2\nidle_s = 1\ntotal_s = 5\n",
        backend.url()
    );
    if let Err(e) = std::fs::write(&config, text) {
        report
            .failures
            .push(format!("cannot write the config: {e}"));
        return report;
    }
    let envs = [
        ("TRIAGE_CONFIG", config.display().to_string()),
        (
            "TRIAGE_STATE_DIR",
            dir.path().join("state").display().to_string(),
        ),
        (
            "XDG_CONFIG_HOME",
            dir.path().join("xdg").display().to_string(),
        ),
        ("HOME", dir.path().display().to_string()),
    ];
    let lsp = match Lsp::spawn(&o.binary, &envs) {
        Ok(l) => l,
        Err(e) => {
            report
                .failures
                .push(format!("cannot start {}: {e}", o.binary.display()));
            return report;
        }
    };
    let corpus: Vec<Vec<u8>> = o
        .corpus
        .as_ref()
        .and_then(|d| std::fs::read_dir(d).ok())
        .map(|entries| {
            let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
        })
        .unwrap_or_default();
    let mut f = Fuzzer {
        lsp,
        rng: fastrand::Rng::with_seed(o.seed),
        enc: Enc::Utf16,
        docs: Vec::new(),
        pending: HashMap::new(),
        answered: Vec::new(),
        report,
        recent: Default::default(),
        corpus,
        initialized: false,
    };

    // Before `initialize`: requests are refused (ServerNotInitialized), notifications dropped.
    for i in 0..20 {
        let method = METHODS[i % METHODS.len()];
        if method == "initialize" {
            continue;
        }
        let params = f.params_for(method);
        let id = f.request(method, params);
        if let Some(r) = f.answer(&id, Duration::from_secs(10)) {
            let code = r["error"]["code"].as_i64();
            // Unknown methods may be answered MethodNotFound at once.
            let refused =
                code == Some(-32002) || (code == Some(-32601) && method == "no/such/method");
            if !refused {
                f.fail(format!("{method} before initialize answered {r}"));
            }
        }
    }
    f.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": "file:///fuzz/early.txt", "languageId": "plaintext", "version": 1, "text": "early"}}),
    );
    f.raw_frame();
    let encodings: &[&str] = if f.rng.bool() {
        &["utf-8", "utf-16"]
    } else {
        &["utf-16"]
    };
    let init = f.lsp.initialize(encodings, Value::Null);
    match init {
        Some(r) => {
            f.initialized = true;
            if r["result"]["capabilities"]["positionEncoding"] == "utf-8" {
                f.enc = Enc::Utf8;
            }
        }
        None => f.fail("initialize was not answered".into()),
    }
    // A document opened before initialize was not applied.
    let id = f.request(
        "triage/document",
        json!({"textDocument": {"uri": "file:///fuzz/early.txt"}}),
    );
    if let Some(r) = f.answer(&id, Duration::from_secs(10)) {
        if !r["result"].is_null() {
            f.fail(format!("a didOpen before initialize was applied: {r}"));
        }
    }
    // The corpus, verbatim.
    for i in 0..f.corpus.len() {
        let body = f.corpus[i].clone();
        f.send_bytes(frame(&body));
        f.report.corpus_entries += 1;
        if i % 20 == 0 {
            f.probe();
        }
    }
    f.probe();

    let big_at = o.messages / 2;
    let mut big_done = false;
    while f.report.messages < o.messages && f.report.failures.is_empty() {
        let m = f.report.messages;
        if (!big_done && m >= big_at && o.big_every > 0)
            || (o.big_every > 0 && m > 0 && m % o.big_every == 0)
        {
            big_done = true;
            f.big_line();
            continue;
        }
        match f.rng.u32(0..100) {
            0..=29 => f.valid_edit(),
            30..=39 => f.invalid_edit(),
            40..=42 => f.open_doc(),
            43..=44 => f.close_doc(),
            45..=56 => f.valid_request(),
            57..=71 => f.mutated_request(),
            72..=76 => f.cancel(),
            77..=80 => f.notification(),
            81..=94 => f.raw_frame(),
            _ => f.broken_frame(),
        }
        if f.report.messages / 250 != m / 250 {
            f.probe();
            f.collect();
            if o.verbose {
                eprintln!(
                    "fuzz_lsp: {} messages, {} pending, {} edits checked, rss {} KB",
                    f.report.messages,
                    f.pending.len(),
                    f.report.document_checks,
                    f.lsp.rss_kb().unwrap_or(0)
                );
            }
        }
    }
    if !f.lsp.alive() {
        f.report.panicked = f.lsp.stderr().contains("panicked");
        let excerpt: String = f
            .lsp
            .stderr()
            .chars()
            .rev()
            .take(1500)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        f.fail(format!("the server died: {excerpt}"));
        f.report.duration_s = started.elapsed().as_secs_f64();
        return f.report;
    }
    // Every request answered, exactly once, in bounded time.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f.pending.is_empty() && Instant::now() < deadline {
        f.collect();
        std::thread::sleep(Duration::from_millis(20));
    }
    f.collect();
    if !f.pending.is_empty() {
        f.report.lost = f.pending.len() as u64;
        let sample: Vec<String> = f
            .pending
            .iter()
            .take(5)
            .map(|(k, (_, m))| format!("{k} {m}"))
            .collect();
        f.fail(format!(
            "{} requests never answered, e.g. {sample:?}",
            f.pending.len()
        ));
    }
    // Still answering: a document, a route and a chat.
    for i in 0..f.docs.len() {
        if f.docs[i].open && f.docs[i].text.len() < 100_000 {
            f.check_doc(i);
        }
    }
    backend.set_fault("llama3.2:3b", Fault::Ok);
    let id = f.request(
        "triage/chat",
        json!({"prompt": "still there?", "tier": "fast"}),
    );
    match f.answer(&id, Duration::from_secs(30)) {
        Some(r)
            if r["result"]["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("Hello from")) => {}
        other => f.fail(format!("the session stopped answering chats: {other:?}")),
    }
    // After shutdown: requests refused, then exit 0.
    let id = f.request("shutdown", Value::Null);
    f.answer(&id, Duration::from_secs(20));
    let params = f.params_for("triage/route");
    let id = f.request("triage/route", params);
    if let Some(r) = f.answer(&id, Duration::from_secs(10)) {
        if r["error"]["code"] != -32600 {
            f.fail(format!("a request after shutdown answered {r}"));
        }
    }
    f.notify("exit", Value::Null);
    let status = f.lsp.wait_exit(Duration::from_secs(10));
    f.report.exit_code = status.and_then(|s| s.code());
    if f.report.exit_code != Some(0) {
        let code = f.report.exit_code;
        f.fail(format!("exit after shutdown gave {code:?}"));
    }
    // Ids the fuzzer sent itself (not ones inside raw or mangled frames) answered twice.
    f.report.duplicates = f.lsp.inbox(|i| {
        i.duplicate_ids
            .iter()
            .filter(|k| {
                !k.starts_with("\"x-") && !["0", "1.5", "true", "{}", "[]"].contains(&k.as_str())
            })
            .count() as u64
    });
    f.report.null_id_errors = f.lsp.inbox(|i| i.null_id_errors);
    f.report.framing_error = f.lsp.inbox(|i| i.framing_error.clone());
    let stderr = f.lsp.stderr();
    f.report.panicked = stderr.contains("panicked");
    if f.report.panicked {
        let at = stderr.find("panicked").unwrap_or(0);
        let excerpt: String = stderr[at..].chars().take(600).collect();
        f.fail(format!("the server panicked: {excerpt}"));
    }
    if f.report.duplicates > 0 {
        let d = f.report.duplicates;
        f.fail(format!("{d} duplicate responses"));
    }
    if let Some(e) = f.report.framing_error.clone() {
        f.fail(format!("stdout framing: {e}"));
    }
    f.report.duration_s = started.elapsed().as_secs_f64();
    f.report.messages_per_s = f.report.messages as f64 / f.report.duration_s.max(0.001);
    f.report
}
