//! Language-server figures, measured on the real `triage serve` binary over pipes: spawn →
//! `initialize` answered, idle memory, memory with 20 large documents open, 5,000
//! single-character edits plus one round trip, and the latency `triage/chat` adds to the first
//! token over a direct call to the loopback test backend.
//!
//! Run: `cargo bench --bench lsp` (prints a table; figures go into BENCHMARKS.md).

#[path = "../tests/support/backend.rs"]
mod backend;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: i64,
}

impl Session {
    fn spawn(config: &std::path::Path, state: &std::path::Path) -> Session {
        let mut child = Command::new(env!("CARGO_BIN_EXE_triage"))
            .arg("serve")
            .env("TRIAGE_CONFIG", config)
            .env("TRIAGE_STATE_DIR", state)
            .env_remove("OLLAMA_HOST")
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("triage serve starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Session {
            child,
            stdin,
            stdout,
            next_id: 1,
        }
    }

    fn send(&mut self, message: &Value) {
        let body = message.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).expect("write");
    }

    fn flush(&mut self) {
        self.stdin.flush().expect("flush");
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    fn read(&mut self) -> Value {
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.stdout.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.strip_prefix("Content-Length: ") {
                length = v.parse().expect("length");
            }
        }
        let mut body = vec![0; length];
        self.stdout.read_exact(&mut body).expect("body");
        serde_json::from_slice(&body).expect("json")
    }

    /// Sends a request and returns its response, answering server requests on the way.
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.flush();
        self.wait_for(id, |_| {})
    }

    fn wait_for(&mut self, id: i64, mut on_notification: impl FnMut(&Value)) -> Value {
        loop {
            let message = self.read();
            if message["id"] == json!(id) && message.get("method").is_none() {
                return message;
            }
            if message.get("method").is_some() && message.get("id").is_some() {
                // A server request (workDoneProgress/create …): answer null.
                let reply = json!({"jsonrpc": "2.0", "id": message["id"], "result": null});
                self.send(&reply);
                self.flush();
            } else {
                on_notification(&message);
            }
        }
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn close(mut self) {
        let _ = self.request("shutdown", Value::Null);
        self.notify("exit", Value::Null);
        self.flush();
        let _ = self.child.wait();
    }
}

fn initialize(session: &mut Session) {
    let response = session.request(
        "initialize",
        json!({"processId": null, "rootUri": null, "capabilities": {"window": {"workDoneProgress": false}}}),
    );
    assert!(response.get("result").is_some(), "{response}");
    session.notify("initialized", json!({}));
    session.flush();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing else useful.
    let server = backend::TestBackend::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[endpoints.ollama]\nurl = \"{}\"\n", server.url()),
    )
    .expect("config");
    let state = dir.path().join("state");

    // 1. spawn → initialize answered.
    let mut spawn_times = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        let mut s = Session::spawn(&config, &state);
        initialize(&mut s);
        spawn_times.push(started.elapsed().as_secs_f64() * 1000.0);
        s.close();
    }

    // 2. idle memory after initialize.
    let mut s = Session::spawn(&config, &state);
    initialize(&mut s);
    std::thread::sleep(Duration::from_millis(1500));
    let idle_kb = s.rss_kb();

    // 3. twenty documents of 10,000 lines (~8.2 MB).
    // 41 bytes a line: 20 × 10,000 lines = 8.2 MB, as in the comparison.
    let line = "    let value = compute(input, 42); // x\n";
    let text: String = line.repeat(10_000);
    for i in 0..20 {
        s.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": format!("file:///bench/doc{i}.rs"), "languageId": "rust", "version": 1, "text": text}}),
        );
    }
    s.flush();
    let _ = s.request("triage/route", json!({"prompt": "hi"}));
    std::thread::sleep(Duration::from_millis(500));
    let docs_kb = s.rss_kb();
    let total_mb = (text.len() * 20) as f64 / 1e6;

    // 4. 5,000 single-character edits, then one round trip.
    let mut edit_times = Vec::new();
    for round in 0..5 {
        let uri = format!("file:///bench/edits{round}.rs");
        s.notify("textDocument/didOpen", json!({"textDocument": {"uri": uri, "languageId": "rust", "version": 0, "text": "fn main() {\n}\n"}}));
        s.flush();
        let started = Instant::now();
        for v in 1..=5000 {
            s.notify(
                "textDocument/didChange",
                json!({"textDocument": {"uri": uri, "version": v},
                       "contentChanges": [{"range": {"start": {"line": 1, "character": 0}, "end": {"line": 1, "character": 0}}, "text": "x"}]}),
            );
        }
        let response = s.request(
            "triage/route",
            json!({"prompt": "explain", "textDocument": {"uri": uri}, "range": {"start": {"line": 1, "character": 0}, "end": {"line": 1, "character": 5000}}}),
        );
        edit_times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(response.get("result").is_some(), "{response}");
    }

    // 5. a request round trip without a model.
    let mut route_times = Vec::new();
    for _ in 0..300 {
        let started = Instant::now();
        let _ = s.request("triage/route", json!({"prompt": "hi"}));
        route_times.push(started.elapsed().as_secs_f64() * 1000.0);
    }

    // 6. latency added to the first token: triage/chat vs a direct call, alternating so that
    // both see the same machine. Twice: back to back, and after an idle pause (as when a user
    // asks again after reading the answer: the CPUs have gone idle and every wake-up costs).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .no_proxy()
        .build()
        .expect("client");
    let url = format!("{}/api/chat", server.url());
    let direct_call = || {
        runtime.block_on(async {
            let started = Instant::now();
            let mut response = http
                .post(&url)
                .json(&json!({"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi"}], "stream": true}))
                .send()
                .await
                .expect("send");
            let _ = response.chunk().await;
            started.elapsed().as_secs_f64() * 1000.0
        })
    };
    let chat_call = |s: &mut Session| {
        let id = s.next_id;
        s.next_id += 1;
        let token = format!("bench-{id}");
        let started = Instant::now();
        s.send(&json!({"jsonrpc": "2.0", "id": id, "method": "triage/chat",
                       "params": {"prompt": "hi", "tier": "fast", "partialResultToken": token}}));
        s.flush();
        let mut first = None;
        s.wait_for(id, |m| {
            if m["method"] == "$/progress" && first.is_none() {
                first = Some(started.elapsed().as_secs_f64() * 1000.0);
            }
        });
        first.unwrap_or(f64::NAN)
    };
    let mut first_token = Vec::new();
    for (runs, pause) in [(200, Duration::ZERO), (100, Duration::from_millis(20))] {
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            std::thread::sleep(pause);
            direct.push(direct_call());
            std::thread::sleep(pause);
            through.push(chat_call(&mut s));
        }
        first_token.push((runs, pause, median(direct), median(through)));
    }
    s.close();

    println!("| measure | median | target |");
    println!("|---|---|---|");
    println!(
        "| spawn → initialize answered (30 runs) | {:.2} ms | ≤ 4 ms |",
        median(spawn_times)
    );
    println!(
        "| idle RSS after initialize, no document | {:.1} MB | ≤ 10 MB |",
        idle_kb as f64 / 1024.0
    );
    println!(
        "| RSS with 20 documents of 10,000 lines ({total_mb:.1} MB of text) | {:.1} MB | ≤ 20 MB |",
        docs_kb as f64 / 1024.0
    );
    println!(
        "| 5,000 single-character edits + one round trip (5 runs) | {:.1} ms | ≤ 100 ms |",
        median(edit_times)
    );
    println!(
        "| `triage/route` round trip, no model (300 runs) | {:.3} ms | — |",
        median(route_times)
    );
    for (runs, pause, d, t) in first_token {
        let when = if pause.is_zero() {
            "back to back".to_string()
        } else {
            format!("after {} ms idle", pause.as_millis())
        };
        println!("| first token, {when}: direct call / through triage/chat ({runs} each) | {d:.3} ms / {t:.3} ms: +{:.3} ms | ≤ 0.5 ms added |", t - d);
    }
}
