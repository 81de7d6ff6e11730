//! Load and soak against one real `triage serve` and the loopback test backend: many
//! concurrent `triage/chat` streams mixed with edits and cancels, optionally for a long time
//! with faults injected at random. Shared by `examples/load_lsp.rs` (the long runs, figures in
//! BENCHMARKS.md) and `tests/load.rs` (the small run in CI).
//!
//! What is checked, per request: exactly one response; an answer's text equals the deltas
//! streamed on its token and ends with the `echo:ID` of its own prompt (the test backend echoes
//! it), from the model of the tier it asked for; an error has a message; a cancelled request
//! answers RequestCancelled (or its full answer, when it finished first); nothing takes longer
//! than its bound. Per model: the backend never saw more streams at once than the limit. At the
//! end: documents equal their reference texts; memory, tasks, descriptors and connections to
//! the backend back near their baseline.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::backend::{Fault, TestBackend};
use super::lsp::{key, Lsp};

/// How long the backend may take to notice that a client closed its connection.
pub const NOTICE_GRACE_MS: f64 = 25.0;

pub const MODELS: [(&str, &str); 3] = [
    ("fast", "llama3.2:3b"),
    ("coder", "qwen3-coder:30b"),
    ("heavy", "llama3.1:70b"),
];

#[derive(Debug, Clone)]
pub struct Options {
    pub binary: PathBuf,
    /// Streams launched at once (load), or kept in flight (soak).
    pub streams: usize,
    pub max_concurrent: usize,
    /// 0: one burst of `streams` (load). Otherwise: run this long, injecting faults.
    pub soak: Duration,
    /// Share of requests cancelled, 0..1.
    pub cancel_share: f64,
    pub seed: u64,
    /// Trickle delay per token in the backend, ms.
    pub token_ms: u64,
    /// How long to wait after the last answer before the final sample (idle pooled
    /// connections close after 90 s).
    pub settle: Duration,
    pub verbose: bool,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Sample {
    pub at_s: f64,
    pub rss_kb: u64,
    pub fds: usize,
    pub sockets: usize,
    pub backend_connections: usize,
    pub tasks: Option<u64>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub requests: u64,
    pub answered: u64,
    pub errors: u64,
    pub busy: u64,
    pub cancelled: u64,
    pub lost: u64,
    pub mixed_up: u64,
    pub late: u64,
    pub duplicates: u64,
    pub unclear_errors: u64,
    pub edits: u64,
    pub documents_equal: bool,
    /// Streams per model the backend served at once, a cancelled stream counted until
    /// `NOTICE_GRACE_MS` before the backend noticed its client had gone.
    pub peak_per_model: HashMap<String, usize>,
    /// The same, counting a cancelled stream until the backend noticed.
    pub peak_raw_per_model: HashMap<String, usize>,
    /// The most requests `triage/status` reported running for one model (sampled, soak).
    pub peak_running_reported: usize,
    pub limit: usize,
    pub limit_respected: bool,
    pub max_latency_ms: u64,
    pub p50_latency_ms: u64,
    pub bound_ms: u64,
    pub baseline: Sample,
    pub after: Sample,
    pub peak_rss_kb: u64,
    /// Least-squares slope of RSS over the soak after its first minute, KB per minute.
    pub rss_slope_kb_per_min: f64,
    pub samples: Vec<Sample>,
    pub faults_injected: u64,
    pub duration_s: f64,
    pub framing_error: Option<String>,
    pub panicked: bool,
    pub exit_code: Option<i32>,
    pub failures: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

struct InFlight {
    sent: Instant,
    token: Value,
    echo: String,
    model: &'static str,
    cancelled: bool,
    cancel_at: Option<Instant>,
}

/// Backend connections from the server: established TCP sockets to `port` (`/proc/net/tcp`).
pub fn connections_to(port: u16) -> usize {
    let mut n = 0;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 4 {
                continue;
            }
            let remote_port = cols[2]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if remote_port == Some(port) && cols[3] == "01" {
                n += 1;
            }
        }
    }
    n
}

/// The server's status `process.tasks`, asked over LSP.
fn tasks(lsp: &mut Lsp) -> Option<u64> {
    lsp.call("triage/status", Value::Null, Duration::from_secs(10))
        .and_then(|r| r["result"]["process"]["tasks"].as_u64())
}

/// With `with_tasks`, the status call comes first: it uses the connection pool, which is when
/// the pool closes connections idle past their timeout (90 s); counted after it, descriptors
/// and connections are what the process really holds on to.
fn sample(lsp: &mut Lsp, port: u16, started: Instant, with_tasks: bool) -> Sample {
    let tasks = if with_tasks { tasks(lsp) } else { None };
    let (fds, sockets) = lsp.fds().unwrap_or((0, 0));
    Sample {
        at_s: started.elapsed().as_secs_f64(),
        rss_kb: lsp.rss_kb().unwrap_or(0),
        fds,
        sockets,
        backend_connections: connections_to(port),
        tasks,
    }
}

fn slope_per_min(samples: &[Sample]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = samples.iter().map(|s| s.at_s).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.rss_kb as f64).sum::<f64>() / n;
    let sxy: f64 = samples
        .iter()
        .map(|s| (s.at_s - mx) * (s.rss_kb as f64 - my))
        .sum();
    let sxx: f64 = samples.iter().map(|s| (s.at_s - mx).powi(2)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx * 60.0
    }
}

/// A document and its reference text (ASCII and multibyte, edited at UTF-16 offsets that are
/// whole characters, by line and column).
struct Doc {
    uri: String,
    version: i32,
    text: String,
}

const PIECES: &[&str] = &["a", "ß", "😀", "\n", "é", "x y", "中文", "\t", "\r\n"];

fn utf16_position(text: &str, byte: usize) -> (u32, u32) {
    let before = &text[..byte];
    let mut line = 0u32;
    let mut col = 0u32;
    let mut chars = before.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => {
                line += 1;
                col = 0;
            }
            c => col += c.len_utf16() as u32,
        }
    }
    (line, col)
}

fn edit(doc: &mut Doc, rng: &mut fastrand::Rng) -> Value {
    let boundaries: Vec<usize> = doc
        .text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(doc.text.len()))
        // Not between the CR and LF of one line break: LSP cannot address it.
        .filter(|&i| {
            !(i > 0 && doc.text.as_bytes()[i - 1] == b'\r' && doc.text[i..].starts_with('\n'))
        })
        .collect();
    let mut a = boundaries[rng.usize(..boundaries.len())];
    let mut b = boundaries[rng.usize(..boundaries.len())];
    if a > b {
        std::mem::swap(&mut a, &mut b);
    }
    if doc.text.len() > 4000 {
        // Keep documents small: delete more than is inserted.
        b = boundaries
            .iter()
            .copied()
            .find(|&x| x >= a + 200)
            .unwrap_or(b);
    }
    let inserted: String = (0..rng.usize(0..4))
        .map(|_| PIECES[rng.usize(..PIECES.len())])
        .collect();
    let (sl, sc) = utf16_position(&doc.text, a);
    let (el, ec) = utf16_position(&doc.text, b);
    doc.text.replace_range(a..b, &inserted);
    doc.version += 1;
    json!({
        "textDocument": {"uri": doc.uri, "version": doc.version},
        "contentChanges": [{"range": {"start": {"line": sl, "character": sc}, "end": {"line": el, "character": ec}}, "text": inserted}],
    })
}

fn config(dir: &Path, primary: &TestBackend, secondary: &TestBackend, o: &Options) -> PathBuf {
    // Short timeouts so faults resolve quickly; each tier has a second endpoint that the soak
    // takes down and brings back.
    let timeouts = "[TIER.timeouts]\nconnect_s = 1\nfirst_token_s = 2\nidle_s = 1\ntotal_s = 20\n";
    let mut text = format!(
        "[endpoints.ollama]\nurl = \"{}\"\nmax_concurrent = {}\n\
         [endpoints.second]\nurl = \"{}\"\nmax_concurrent = {}\n\
         [limits]\nqueue_len = {}\nmax_wait_s = {}\n",
        primary.url(),
        o.max_concurrent,
        secondary.url(),
        o.max_concurrent,
        o.streams.max(64) * 2,
        if o.soak.is_zero() { 120 } else { 5 },
    );
    for (tier, _) in MODELS {
        text.push_str(&format!(
            "[tiers.{tier}]\nendpoint = [\"ollama\", \"second\"]\n"
        ));
        text.push_str(&timeouts.replace("TIER", &format!("tiers.{tier}")));
    }
    let path = dir.join("config.toml");
    let _ = std::fs::write(&path, text);
    path
}

/// The fault a soak round injects for one model.
fn random_fault(rng: &mut fastrand::Rng, token_ms: u64) -> Fault {
    match rng.u32(0..10) {
        0 => Fault::Status { code: 500 },
        1 => Fault::HangBeforeFirstToken,
        2 => Fault::StallAfter { tokens: 3 },
        3 => Fault::ResetAfter { tokens: 3 },
        4 => Fault::HangBeforeHeaders,
        5 => Fault::Malformed { after: 2 },
        _ => Fault::Trickle {
            ms: token_ms,
            tokens: 10,
        },
    }
}

pub fn run(o: &Options) -> Report {
    let mut report = Report {
        limit: o.max_concurrent,
        documents_equal: true,
        limit_respected: true,
        ..Report::default()
    };
    let mut rng = fastrand::Rng::with_seed(o.seed);
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            report.failures.push(format!("no temp dir: {e}"));
            return report;
        }
    };
    let primary = TestBackend::start();
    let mut secondary = Some(TestBackend::start());
    let secondary_addr = secondary
        .as_ref()
        .map(|b| b.addr.to_string())
        .unwrap_or_default();
    let trickle = Fault::Trickle {
        ms: o.token_ms,
        tokens: 10,
    };
    for (_, model) in MODELS {
        primary.set_fault(model, trickle.clone());
        if let Some(s) = &secondary {
            s.set_fault(model, trickle.clone());
        }
    }
    let config = config(
        dir.path(),
        &primary,
        secondary.as_ref().expect("secondary"),
        o,
    );
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
    let mut lsp = match Lsp::spawn(&o.binary, &envs) {
        Ok(l) => l,
        Err(e) => {
            report
                .failures
                .push(format!("cannot start {}: {e}", o.binary.display()));
            return report;
        }
    };
    let started = Instant::now();
    if lsp.initialize(&["utf-16"], Value::Null).is_none() {
        report.failures.push("initialize was not answered".into());
        return report;
    }
    let mut docs: Vec<Doc> = (0..5)
        .map(|i| Doc {
            uri: format!("file:///load/doc{i}.py"),
            version: 1,
            text: format!("def f{i}():\n    return {i}\n"),
        })
        .collect();
    for d in &docs {
        lsp.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": d.uri, "languageId": "python", "version": d.version, "text": d.text}}),
        );
    }
    // Warm up (pool, first requests), then the baseline.
    for i in 0..o.max_concurrent.min(8) {
        let _ = lsp.call(
            "triage/chat",
            json!({"prompt": format!("warm up echo:w{i}"), "tier": "fast"}),
            Duration::from_secs(30),
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    report.baseline = sample(&mut lsp, primary.addr.port(), started, true);
    let port = primary.addr.port();

    let mut in_flight: HashMap<String, InFlight> = HashMap::new();
    let mut latencies: Vec<u64> = Vec::new();
    // A request may wait in up to two queues (primary and second endpoint of its tier, then
    // the other tiers'), and take each endpoint's whole first-token and total timeouts.
    let bound = if o.soak.is_zero() {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(6 * (5 + 2 + 20) + 10)
    };
    report.bound_ms = bound.as_millis() as u64;
    let mut next_fault_change = Instant::now();
    let mut next_sample = Instant::now();
    let mut launched = 0usize;
    let soak_until = started + o.soak;
    let mut secondary_down_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let soaking = !o.soak.is_zero();
        let want_more = if soaking {
            now < soak_until
        } else {
            launched < o.streams
        };
        if !want_more && in_flight.is_empty() {
            break;
        }
        // Launch: all at once under load; topped up to `streams` in flight when soaking.
        while want_more && in_flight.len() < o.streams && (soaking || launched < o.streams) {
            let (tier, model) = MODELS[launched % MODELS.len()];
            let echo = format!("echo:r{launched}");
            let token = json!(format!("t{launched}"));
            let id = lsp.fresh_id();
            lsp.send(&json!({"jsonrpc": "2.0", "id": id, "method": "triage/chat", "params": {
                "prompt": format!("question {launched} {echo}"), "tier": tier, "partialResultToken": token,
            }}));
            let cancel_at = (rng.f64() < o.cancel_share)
                .then(|| Instant::now() + Duration::from_millis(rng.u64(0..400)));
            in_flight.insert(
                key(&id),
                InFlight {
                    sent: Instant::now(),
                    token,
                    echo,
                    model,
                    cancelled: false,
                    cancel_at,
                },
            );
            launched += 1;
            report.requests += 1;
            // Edits interleave with the requests.
            if rng.u32(0..3) == 0 {
                let d = rng.usize(..docs.len());
                let params = edit(&mut docs[d], &mut rng);
                lsp.notify("textDocument/didChange", params);
                report.edits += 1;
            }
        }
        // Cancels that are due.
        let now = Instant::now();
        for (id, f) in in_flight.iter_mut() {
            if !f.cancelled && f.cancel_at.is_some_and(|t| t <= now) {
                f.cancelled = true;
                let id: Value = serde_json::from_str(id).unwrap_or(Value::Null);
                lsp.notify("$/cancelRequest", json!({"id": id}));
            }
        }
        // Faults, in the soak: every 3 s a new fault per model; the second endpoint goes down
        // now and then.
        if soaking && now >= next_fault_change {
            next_fault_change = now + Duration::from_secs(3);
            for (_, model) in MODELS {
                let fault = random_fault(&mut rng, o.token_ms);
                primary.set_fault(model, fault);
                report.faults_injected += 1;
                if let Some(s) = &secondary {
                    s.set_fault(model, random_fault(&mut rng, o.token_ms));
                    report.faults_injected += 1;
                }
            }
            match secondary_down_until {
                Some(until) if now >= until => {
                    // Back on the same port (once the old listener is gone).
                    if let Ok(b) = TestBackend::try_start_on(&secondary_addr) {
                        for (_, model) in MODELS {
                            b.set_fault(model, trickle.clone());
                        }
                        secondary = Some(b);
                        secondary_down_until = None;
                    }
                }
                None if rng.u32(0..4) == 0 => {
                    // Down: connection refused until it comes back. Its hanging streams end in
                    // the background.
                    if let Some(b) = secondary.take() {
                        std::thread::spawn(move || drop(b));
                    }
                    secondary_down_until = Some(now + Duration::from_secs(6));
                    report.faults_injected += 1;
                }
                _ => {}
            }
        }
        if soaking && now >= next_sample {
            next_sample = now + Duration::from_secs(5);
            // triage's own count of running and queued requests, per model.
            let status = lsp.call("triage/status", Value::Null, Duration::from_secs(10));
            if let Some(limits) = status
                .as_ref()
                .and_then(|s| s["result"]["limits"].as_array().cloned())
            {
                for l in limits {
                    let running = l["running"].as_u64().unwrap_or(0) as usize;
                    report.peak_running_reported = report.peak_running_reported.max(running);
                    if running > o.max_concurrent {
                        report.limit_respected = false;
                    }
                }
            }
            let s = sample(&mut lsp, port, started, false);
            report.peak_rss_kb = report.peak_rss_kb.max(s.rss_kb);
            if o.verbose {
                eprintln!(
                    "[{:>5.0} s] rss {} KB, fds {}, sockets {}, backend connections {}, in flight {}, answered {}, errors {}",
                    s.at_s, s.rss_kb, s.fds, s.sockets, s.backend_connections, in_flight.len(), report.answered, report.errors
                );
            }
            report.samples.push(s);
        }
        // Responses.
        for (id, response) in lsp.take_responses() {
            let Some(f) = in_flight.remove(&id) else {
                continue; // a status call's late answer, or a stray
            };
            let latency = f.sent.elapsed();
            latencies.push(latency.as_millis() as u64);
            if latency > bound {
                report.late += 1;
            }
            let deltas = lsp.take_deltas(&f.token);
            if let Some(result) = response.get("result") {
                report.answered += 1;
                let text = result["text"].as_str().unwrap_or("");
                let expected_start =
                    format!("Hello from {}", result["model"].as_str().unwrap_or("?"));
                if !text.ends_with(&format!(" {}", f.echo))
                    || !text.starts_with(&expected_start)
                    || text != deltas
                {
                    report.mixed_up += 1;
                    if report.failures.len() < 20 {
                        report.failures.push(format!(
                            "request {id} ({}) got {text:?}, deltas {deltas:?}",
                            f.echo
                        ));
                    }
                }
                if !soaking && result["model"] != f.model {
                    report.mixed_up += 1;
                    report.failures.push(format!(
                        "request {id} wanted {} but got {}",
                        f.model, result["model"]
                    ));
                }
            } else {
                let code = response["error"]["code"].as_i64().unwrap_or(0);
                let message = response["error"]["message"].as_str().unwrap_or("");
                if code == -32800 && f.cancelled {
                    report.cancelled += 1;
                } else {
                    report.errors += 1;
                    if response["error"]["data"]["busy"] == true {
                        report.busy += 1;
                    }
                    if message.trim().len() < 10 {
                        report.unclear_errors += 1;
                    }
                    if !soaking && report.failures.len() < 20 {
                        report
                            .failures
                            .push(format!("request {id} failed: {response}"));
                    }
                }
            }
        }
        // Lost: in flight far past its bound.
        let lost: Vec<String> = in_flight
            .iter()
            .filter(|(_, f)| f.sent.elapsed() > bound + Duration::from_secs(30))
            .map(|(id, _)| id.clone())
            .collect();
        for id in lost {
            in_flight.remove(&id);
            report.lost += 1;
        }
        if !lsp.alive() {
            report.failures.push("the server died".into());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    report.duration_s = started.elapsed().as_secs_f64();
    for (_, model) in MODELS {
        report
            .peak_raw_per_model
            .insert(model.to_string(), primary.load(model).1);
        // Under faults the backend keeps hung handlers alive after the client left (it only
        // notices at its next write), so only streams read to the end are counted.
        let peak = if o.soak.is_zero() {
            primary.peak_overlap(model, NOTICE_GRACE_MS)
        } else {
            primary.peak_overlap_completed(model)
        };
        report.peak_per_model.insert(model.to_string(), peak);
    }
    report.limit_respected &= report
        .peak_per_model
        .values()
        .all(|p| *p <= o.max_concurrent);

    // Documents equal their references.
    for d in &docs {
        let got = lsp.call(
            "triage/document",
            json!({"textDocument": {"uri": d.uri}}),
            Duration::from_secs(10),
        );
        let text = got
            .as_ref()
            .and_then(|g| g["result"]["text"].as_str().map(str::to_string));
        if text.as_deref() != Some(d.text.as_str()) {
            report.documents_equal = false;
            report
                .failures
                .push(format!("{} differs from its reference", d.uri));
        }
    }
    // Settle: finished streams' connections return to the pool, the allocator trims.
    for (_, model) in MODELS {
        primary.set_fault(model, trickle.clone());
    }
    std::thread::sleep(o.settle);
    report.after = sample(&mut lsp, port, started, true);
    if o.verbose {
        if let Ok(entries) = std::fs::read_dir(format!("/proc/{}/fd", lsp.pid())) {
            let links: Vec<String> = entries
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| l.display().to_string())
                .collect();
            eprintln!("descriptors after: {links:?}");
        }
    }
    report.peak_rss_kb = report.peak_rss_kb.max(report.after.rss_kb);
    // After the first minute: the allocator's and the pool's warm-up are not a leak.
    let settled: Vec<Sample> = report
        .samples
        .iter()
        .filter(|s| s.at_s >= 60.0)
        .cloned()
        .collect();
    report.rss_slope_kb_per_min = if settled.len() >= 4 {
        slope_per_min(&settled)
    } else {
        slope_per_min(&report.samples)
    };
    latencies.sort_unstable();
    report.max_latency_ms = latencies.last().copied().unwrap_or(0);
    report.p50_latency_ms = latencies.get(latencies.len() / 2).copied().unwrap_or(0);
    report.duplicates = lsp.inbox(|i| i.duplicate_responses);
    report.framing_error = lsp.inbox(|i| i.framing_error.clone());
    let status = lsp.shutdown(Duration::from_secs(10));
    report.exit_code = status.and_then(|s| s.code());
    report.panicked = lsp.stderr().contains("panicked");

    // Verdicts.
    let r = &report;
    let checks = vec![
        (r.lost > 0, format!("{} requests lost", r.lost)),
        (r.mixed_up > 0, format!("{} answers mixed up", r.mixed_up)),
        (
            r.duplicates > 0,
            format!("{} duplicate responses", r.duplicates),
        ),
        (r.late > 0, format!("{} requests past their bound", r.late)),
        (
            r.unclear_errors > 0,
            format!("{} errors without a clear message", r.unclear_errors),
        ),
        (
            !r.limit_respected,
            format!("limit {} exceeded: {:?}", r.limit, r.peak_per_model),
        ),
        (
            r.framing_error.is_some(),
            format!("stdout framing: {:?}", r.framing_error),
        ),
        (r.panicked, "the server panicked".to_string()),
        (
            r.exit_code != Some(0),
            format!("exit code {:?}", r.exit_code),
        ),
        (
            r.after.rss_kb > r.baseline.rss_kb + (r.baseline.rss_kb / 4).max(4096),
            format!(
                "memory not back to baseline: {} KB after, {} KB before",
                r.after.rss_kb, r.baseline.rss_kb
            ),
        ),
        (
            r.after.tasks.unwrap_or(0)
                > r.baseline.tasks.unwrap_or(0) + 3 * o.max_concurrent as u64 * 2,
            format!(
                "tasks: {:?} after, {:?} before",
                r.after.tasks, r.baseline.tasks
            ),
        ),
        (
            r.after.backend_connections > 2 * MODELS.len() * o.max_concurrent,
            format!(
                "{} connections to the backend left open",
                r.after.backend_connections
            ),
        ),
        (
            r.after.fds > r.baseline.fds + 2 * MODELS.len() * o.max_concurrent + 8,
            format!(
                "descriptors: {} after, {} before",
                r.after.fds, r.baseline.fds
            ),
        ),
    ];
    let failed: Vec<String> = checks
        .into_iter()
        .filter(|(cond, _)| *cond)
        .map(|(_, what)| what)
        .collect();
    report.failures.extend(failed);
    report
}
