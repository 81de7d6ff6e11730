//! A minimal LSP client that drives the real `triage serve` over its stdio pipes, for the
//! fuzzer, the load and soak driver and their tests. Not pytest-lsp: it must send bytes that
//! no typed client would (broken frames, wrong types), thousands per second.
//!
//! A reader thread parses every byte of the server's stdout strictly as LSP framing (a stray
//! byte is recorded as a framing error), answers the server's own requests
//! (`window/workDoneProgress/create`, `workspace/applyEdit`: refused) and files responses by id
//! and `$/progress` deltas by token. Another thread keeps the last 256 KB of stderr.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// What the server sent, filed for the driver.
#[derive(Default)]
pub struct Inbox {
    /// Responses by id (the id's JSON text), until taken.
    pub responses: HashMap<String, Value>,
    /// Responses with `id: null` (answers to malformed messages).
    pub null_id_errors: u64,
    /// Responses to an id already answered once, and (the first 100 of) those ids.
    pub duplicate_responses: u64,
    pub duplicate_ids: Vec<String>,
    /// `$/progress` deltas concatenated per token (the token's JSON text), until taken.
    pub deltas: HashMap<String, String>,
    pub notifications: u64,
    /// Every `window/logMessage` / `showMessage` counted; the last few kept.
    pub log_messages: u64,
    pub last_logs: std::collections::VecDeque<String>,
    /// The last `triage/status` notification.
    pub status: Option<Value>,
    /// The first violation of the framing, if any.
    pub framing_error: Option<String>,
    pub messages: u64,
    pub bytes: u64,
    /// stdout closed.
    pub closed: bool,
    answered: std::collections::HashSet<String>,
}

type Shared = Arc<(Mutex<Inbox>, Condvar)>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// `triage serve` as a child process.
pub struct Lsp {
    child: Child,
    writer: Arc<Mutex<Option<ChildStdin>>>,
    shared: Shared,
    stderr: Arc<Mutex<Vec<u8>>>,
    next_id: u64,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// The id's JSON text: the key responses are filed under.
pub fn key(id: &Value) -> String {
    id.to_string()
}

pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

impl Lsp {
    /// Starts `binary serve` with `envs` (over a clean environment for the variables triage
    /// reads).
    pub fn spawn(binary: &std::path::Path, envs: &[(&str, String)]) -> std::io::Result<Lsp> {
        let mut cmd = Command::new(binary);
        cmd.arg("serve")
            .env_remove("OLLAMA_HOST")
            .env_remove("OLLAMA_NUM_PARALLEL")
            .env_remove("TRIAGE_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or(std::io::ErrorKind::BrokenPipe)?;
        let stderr = child.stderr.take().ok_or(std::io::ErrorKind::BrokenPipe)?;
        let writer = Arc::new(Mutex::new(stdin));
        let shared: Shared = Arc::default();
        let err_buf = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        {
            let shared = shared.clone();
            let writer = writer.clone();
            threads.push(std::thread::spawn(move || {
                read_stdout(stdout, shared, writer)
            }));
        }
        {
            let err_buf = err_buf.clone();
            threads.push(std::thread::spawn(move || {
                let mut stderr = stderr;
                let mut chunk = [0u8; 8192];
                while let Ok(n) = stderr.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let mut buf = lock(&err_buf);
                    buf.extend_from_slice(&chunk[..n]);
                    let len = buf.len();
                    if len > 256 * 1024 {
                        buf.drain(..len - 256 * 1024);
                    }
                }
            }));
        }
        Ok(Lsp {
            child,
            writer,
            shared,
            stderr: err_buf,
            next_id: 1,
            threads,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes bytes as they are. False when the server's stdin is closed.
    pub fn send_raw(&self, bytes: &[u8]) -> bool {
        let mut w = lock(&self.writer);
        match w.as_mut() {
            Some(stdin) => stdin.write_all(bytes).and_then(|()| stdin.flush()).is_ok(),
            None => false,
        }
    }

    pub fn send(&self, message: &Value) -> bool {
        self.send_raw(&frame(message.to_string().as_bytes()))
    }

    pub fn notify(&self, method: &str, params: Value) -> bool {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}))
    }

    /// Sends a request with a fresh numeric id; returns the id.
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = json!(self.next_id);
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    /// A fresh id without sending anything.
    pub fn fresh_id(&mut self) -> Value {
        let id = json!(self.next_id);
        self.next_id += 1;
        id
    }

    /// Waits for the response to `id` (and takes it).
    pub fn wait(&self, id: &Value, timeout: Duration) -> Option<Value> {
        let k = key(id);
        let deadline = Instant::now() + timeout;
        let (inbox, cv) = &*self.shared;
        let mut g = lock(inbox);
        loop {
            if let Some(v) = g.responses.remove(&k) {
                return Some(v);
            }
            let now = Instant::now();
            if now >= deadline || g.closed {
                return None;
            }
            g = match cv.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// A request and its response.
    pub fn call(&mut self, method: &str, params: Value, timeout: Duration) -> Option<Value> {
        let id = self.request(method, params);
        self.wait(&id, timeout)
    }

    /// Every response that arrived, taken.
    pub fn take_responses(&self) -> HashMap<String, Value> {
        std::mem::take(&mut lock(&self.shared.0).responses)
    }

    /// The deltas streamed on `token`, taken.
    pub fn take_deltas(&self, token: &Value) -> String {
        lock(&self.shared.0)
            .deltas
            .remove(&key(token))
            .unwrap_or_default()
    }

    pub fn inbox<T>(&self, f: impl FnOnce(&mut Inbox) -> T) -> T {
        f(&mut lock(&self.shared.0))
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stderr)).into_owned()
    }

    /// `initialize` (offering `encodings`) and `initialized`; the initialize result.
    pub fn initialize(&mut self, encodings: &[&str], options: Value) -> Option<Value> {
        let result = self.call(
            "initialize",
            json!({
                "processId": null,
                "rootUri": null,
                "capabilities": {
                    "general": {"positionEncodings": encodings},
                    "window": {"workDoneProgress": true},
                },
                "initializationOptions": options,
            }),
            Duration::from_secs(20),
        );
        self.notify("initialized", json!({}));
        result
    }

    /// `shutdown`, `exit`, and the exit status (waited for at most `timeout`).
    pub fn shutdown(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let _ = self.call("shutdown", Value::Null, timeout);
        self.notify("exit", Value::Null);
        self.wait_exit(timeout)
    }

    pub fn close_stdin(&self) {
        lock(&self.writer).take();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident memory of the server, in KB (Linux `/proc`).
    pub fn rss_kb(&self) -> Option<u64> {
        proc_status(self.pid(), "VmRSS:")
    }

    /// Threads of the server process.
    pub fn threads(&self) -> Option<u64> {
        proc_status(self.pid(), "Threads:")
    }

    /// Open file descriptors of the server, and how many of them are sockets.
    pub fn fds(&self) -> Option<(usize, usize)> {
        let entries = std::fs::read_dir(format!("/proc/{}/fd", self.pid())).ok()?;
        let mut fds = 0;
        let mut sockets = 0;
        for entry in entries.flatten() {
            fds += 1;
            if std::fs::read_link(entry.path())
                .map(|t| t.to_string_lossy().starts_with("socket:"))
                .unwrap_or(false)
            {
                sockets += 1;
            }
        }
        Some((fds, sockets))
    }
}

impl Drop for Lsp {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.close_stdin();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// Reads frames until stdout closes; any byte outside `Content-Length` framing of a JSON-RPC
/// 2.0 object is a framing error.
fn read_stdout(
    stdout: std::process::ChildStdout,
    shared: Shared,
    writer: Arc<Mutex<Option<ChildStdin>>>,
) {
    let mut reader = BufReader::with_capacity(1 << 16, stdout);
    let fail = |shared: &Shared, why: String| {
        let mut g = lock(&shared.0);
        if g.framing_error.is_none() {
            g.framing_error = Some(why);
        }
    };
    'frames: loop {
        let mut length: Option<usize> = None;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => break 'frames,
                Ok(_) => {}
                Err(e) => {
                    fail(&shared, format!("stdout is not UTF-8 in a header: {e}"));
                    break 'frames;
                }
            }
            if line == "\r\n" {
                break;
            }
            let Some(header) = line.strip_suffix("\r\n") else {
                fail(&shared, format!("a header line without CRLF: {line:?}"));
                break 'frames;
            };
            match header.split_once(": ") {
                Some((name, value)) if name.eq_ignore_ascii_case("content-length") => {
                    length = value.trim().parse().ok();
                }
                Some((name, _)) if name.eq_ignore_ascii_case("content-type") => {}
                _ => {
                    fail(&shared, format!("not an LSP header: {header:?}"));
                    break 'frames;
                }
            }
        }
        let Some(length) = length else {
            fail(&shared, "a frame without Content-Length".into());
            break;
        };
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            fail(&shared, "stdout ended inside a message".into());
            break;
        }
        let message: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                fail(&shared, format!("a body that is not JSON: {e}"));
                break;
            }
        };
        if message["jsonrpc"] != "2.0" {
            fail(&shared, format!("not JSON-RPC 2.0: {message}"));
            break;
        }
        file(&shared, &writer, message, length);
    }
    let (inbox, cv) = &*shared;
    lock(inbox).closed = true;
    cv.notify_all();
}

fn file(shared: &Shared, writer: &Arc<Mutex<Option<ChildStdin>>>, message: Value, length: usize) {
    let method = message["method"].as_str().map(str::to_string);
    let has_id = message.get("id").is_some();
    // A request from the server: answer it at once, as an editor would.
    if let (Some(method), true) = (&method, has_id) {
        let result = match method.as_str() {
            "workspace/applyEdit" => json!({"applied": false, "failureReason": "test client"}),
            _ => Value::Null,
        };
        let answer = json!({"jsonrpc": "2.0", "id": message["id"], "result": result});
        if let Some(stdin) = lock(writer).as_mut() {
            let _ = stdin.write_all(&frame(answer.to_string().as_bytes()));
            let _ = stdin.flush();
        }
    }
    let (inbox, cv) = &**shared;
    let mut g = lock(inbox);
    g.messages += 1;
    g.bytes += length as u64;
    match (method.as_deref(), has_id) {
        (Some("$/progress"), _) => {
            g.notifications += 1;
            if let Some(delta) = message["params"]["value"]["delta"].as_str() {
                let token = key(&message["params"]["token"]);
                g.deltas.entry(token).or_default().push_str(delta);
            }
        }
        (Some("window/logMessage") | Some("window/showMessage"), _) => {
            g.notifications += 1;
            g.log_messages += 1;
            let text = message["params"]["message"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect();
            g.last_logs.push_back(text);
            if g.last_logs.len() > 20 {
                g.last_logs.pop_front();
            }
        }
        (Some("triage/status"), false) => {
            g.notifications += 1;
            g.status = Some(message["params"].clone());
        }
        (Some(_), _) => g.notifications += 1,
        (None, _) => {
            let id = &message["id"];
            if id.is_null() {
                g.null_id_errors += 1;
            } else {
                let k = key(id);
                if !g.answered.insert(k.clone()) {
                    g.duplicate_responses += 1;
                    if g.duplicate_ids.len() < 100 {
                        g.duplicate_ids.push(k.clone());
                    }
                }
                g.responses.insert(k, message);
            }
        }
    }
    drop(g);
    cv.notify_all();
}
