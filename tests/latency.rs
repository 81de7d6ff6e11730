//! The latency features through the real `triage serve` over stdio, against the loopback test
//! backend: pre-warm on a `triage/intent` and its cancellation (the backend sees the preload
//! request and then the connection close), a code-action request counting as intent, the rule
//! that a model answering is never evicted, and `budget_s` checked in `triage/chat`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::backend::{Fault, TestBackend};
use support::{temp_file, triage};

/// A language-server session on the real binary.
struct Lsp {
    child: Child,
    stdin: ChildStdin,
    messages: Receiver<Value>,
    seen: Vec<Value>,
    next_id: i64,
}

impl Lsp {
    fn start(config: &PathBuf) -> Lsp {
        let mut child = triage()
            .arg("--config")
            .arg(config)
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("triage serve runs");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, messages) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut length = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(n) = line.strip_prefix("Content-Length: ") {
                        length = n.trim().parse::<usize>().ok();
                    }
                }
                let Some(n) = length else { return };
                let mut body = vec![0; n];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        let mut lsp = Lsp {
            child,
            stdin,
            messages,
            seen: Vec::new(),
            next_id: 1,
        };
        let id = lsp.request(
            "initialize",
            json!({"processId": null, "rootUri": null, "capabilities": {}}),
        );
        lsp.response(id);
        lsp.notify("initialized", json!({}));
        lsp
    }

    fn send(&mut self, value: Value) {
        let body = value.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).expect("write");
        self.stdin.flush().expect("flush");
    }

    fn request(&mut self, method: &str, params: Value) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Waits (bounded) for a message matching `pred`, answering the server's own requests.
    fn wait(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(found) = self.seen.iter().find(|m| pred(m)) {
            return found.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let Ok(message) = self.messages.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            if message.get("method").is_some() && message.get("id").is_some() {
                let id = message["id"].clone();
                self.send(json!({"jsonrpc": "2.0", "id": id, "result": null}));
            }
            self.seen.push(message.clone());
            if pred(&message) {
                return message;
            }
        }
        panic!("no {what} within 15 s; seen: {:#?}", self.seen);
    }

    fn response(&mut self, id: i64) -> Value {
        self.wait(&format!("response {id}"), |m| {
            m["id"] == id && m.get("method").is_none()
        })
    }

    fn log_containing(&mut self, text: &str) -> Value {
        self.wait(&format!("log message with {text:?}"), |m| {
            m["method"] == "window/logMessage"
                && m["params"]["message"]
                    .as_str()
                    .is_some_and(|t| t.contains(text))
        })
    }

    fn stop(mut self) {
        let id = self.request("shutdown", Value::Null);
        self.response(id);
        self.notify("exit", Value::Null);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
    }
}

/// The test backend on a 48 GB card (`[vram] total_mb`: no NVML here).
fn config(backend: &TestBackend, extra: &str) -> PathBuf {
    let text = format!(
        "[endpoints.ollama]\nurl = \"{}\"\n[vram]\ntotal_mb = 49152\n[tiers.fast]\nvram_mb = 3000\n[tiers.coder]\nvram_mb = 20000\n[tiers.heavy]\nvram_mb = 44000\n{extra}",
        backend.url()
    );
    temp_file("latency.toml", text.as_bytes())
}

/// Waits until the server's status shows the configured GPU (its snapshot is fresh).
fn await_snapshot(lsp: &mut Lsp) {
    lsp.wait("a status notification with the GPU", |m| {
        m["method"] == "triage/status" && m["params"]["vram"]["total_mb"] == 49152
    });
}

const FUNCTION: &str = "def parse(items):\n    result = []\n    for item in items:\n        if item is None:\n            continue\n        key, _, value = item.partition('=')\n        result.append((key.strip(), value.strip()))\n    return dict(result)\n\n\ndef render(pairs):\n    return ', '.join(f'{k}={v}' for k, v in sorted(pairs.items()))\n";

#[test]
fn intent_prewarms_the_likely_model_and_inactive_cancels_it() {
    let backend = TestBackend::start();
    backend.set_loaded(&[("llama3.2:3b", 3000, 3000)]);
    // The coder model takes 20 s to "load": the pre-warm is still running when cancelled.
    backend.set_fault("qwen3-coder:30b", Fault::ColdLoad { ms: 20_000 });
    let mut lsp = Lsp::start(&config(&backend, ""));
    await_snapshot(&mut lsp);

    lsp.notify("triage/intent", json!({"kind": "chat", "active": true}));
    assert!(
        backend.wait_for(Duration::from_secs(10), |r| r
            .iter()
            .any(|r| r.preload && r.model == "qwen3-coder:30b")),
        "{:#?}",
        backend.requests()
    );
    let preload = backend
        .requests()
        .into_iter()
        .find(|r| r.preload)
        .expect("preload");
    assert_eq!(preload.path, "/api/generate");
    assert_eq!(preload.keep_alive, json!("5m"));
    assert!(!preload.closed_early);

    lsp.notify("triage/intent", json!({"kind": "chat", "active": false}));
    lsp.log_containing("pre-warm for Chat cancelled");
    assert!(
        backend.wait_for(Duration::from_secs(10), |r| r
            .iter()
            .any(|r| r.preload && r.closed_early)),
        "the backend must see the pre-warm's connection close: {:#?}",
        backend.requests()
    );

    // Opening the code-action menu on a selection is an intent too.
    lsp.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": "file:///w/a.py", "languageId": "python", "version": 1, "text": FUNCTION}}),
    );
    let id = lsp.request(
        "textDocument/codeAction",
        json!({"textDocument": {"uri": "file:///w/a.py"},
               "range": {"start": {"line": 0, "character": 0}, "end": {"line": 12, "character": 0}},
               "context": {"diagnostics": []}}),
    );
    let actions = lsp.response(id);
    assert!(actions["result"].as_array().is_some_and(|a| !a.is_empty()));
    assert!(
        backend.wait_for(Duration::from_secs(10), |r| r
            .iter()
            .filter(|r| r.preload && r.model == "qwen3-coder:30b")
            .count()
            == 2),
        "{:#?}",
        backend.requests()
    );
    // Bad intent params are reported, not fatal.
    lsp.notify("triage/intent", json!({"kind": "dance", "active": true}));
    lsp.log_containing("triage/intent ignored");
    lsp.stop();
}

#[test]
fn prewarm_is_off_by_setting() {
    let backend = TestBackend::start();
    backend.set_loaded(&[("llama3.2:3b", 3000, 3000)]);
    let mut lsp = Lsp::start(&config(&backend, "[latency]\nprewarm = false\n"));
    await_snapshot(&mut lsp);
    lsp.notify("triage/intent", json!({"kind": "chat", "active": true}));
    // A request after the intent: by then a pre-warm would have been sent.
    let id = lsp.request("triage/route", json!({"prompt": "hi"}));
    lsp.response(id);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        backend.requests().iter().all(|r| !r.preload),
        "{:#?}",
        backend.requests()
    );
    lsp.stop();
}

#[test]
fn a_model_answering_is_never_evicted_and_budgets_are_checked() {
    let backend = TestBackend::start();
    backend.set_loaded(&[
        ("llama3.2:3b", 3000, 3000),
        ("qwen3-coder:30b", 20_000, 20_000),
    ]);
    // The coder model answers slowly: 60 chunks, 100 ms apart.
    backend.set_fault(
        "qwen3-coder:30b",
        Fault::Trickle {
            ms: 100,
            tokens: 60,
        },
    );
    let mut lsp = Lsp::start(&config(&backend, ""));
    await_snapshot(&mut lsp);
    let chat = lsp.request(
        "triage/chat",
        json!({"prompt": "write a python function that parses ISO dates", "tier": "coder"}),
    );
    assert!(backend.wait_for(Duration::from_secs(10), |r| r
        .iter()
        .any(|r| r.model == "qwen3-coder:30b")));
    // A design question with all the time in the world would load heavy — but that would
    // evict the coder model, which is answering.
    let design = "design a multi-region active-active architecture for our payments ledger, with the trade-offs";
    let id = lsp.request("triage/route", json!({"prompt": design, "budget_s": 3600}));
    let decision = lsp.response(id);
    assert_ne!(decision["result"]["tier"], "heavy", "{decision}");
    assert!(
        decision["result"]["reasons"]
            .to_string()
            .contains("would have to evict coder, which is answering: never done"),
        "{decision}"
    );
    let answer = lsp.response(chat);
    assert_eq!(answer["result"]["model"], "qwen3-coder:30b", "{answer}");

    let id = lsp.request("triage/chat", json!({"prompt": "hi", "budget_s": -1}));
    let refused = lsp.response(id);
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    assert!(refused["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("budget_s")));
    lsp.stop();
}
