//! A model server for tests that really speaks HTTP on loopback: Ollama's native API and the
//! OpenAI-compatible API, streaming, with per-model fault injection. It records every request
//! (model, keep_alive, num_ctx, max_tokens, bearer key) and whether the client closed the
//! connection before the answer was complete, so tests can assert which model was really
//! called and that cancellation reached the server.
//!
//! Used in-process by the Rust tests and standalone (`cargo run --example test_backend`) by the
//! editor-client tests, which steer it over `POST /_test/fault` and read `GET /_test/requests`.
//!
//! With [`TestBackend::simulate`] it also simulates one GPU on a virtual clock (see [`Sim`]):
//! models load (time proportional to size), are evicted when VRAM is full the way Ollama does
//! it, expire by keep_alive, answer one request at a time, and `/api/ps` shows what is resident.
//! The replay benchmark drives triage's real engine against it.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What a model does when asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answers normally.
    #[default]
    Ok,
    /// Answers with this HTTP status and an error body.
    Status { code: u16 },
    /// 404 model not found, as the real servers word it.
    NotFound,
    /// Never sends response headers.
    HangBeforeHeaders,
    /// Sends headers, then nothing.
    HangBeforeFirstToken,
    /// Sends `tokens` chunks, then nothing.
    StallAfter { tokens: usize },
    /// Sends `tokens` chunks, then a line that is not valid for the dialect.
    Malformed { after: usize },
    /// Sends `tokens` chunks, then breaks the connection.
    ResetAfter { tokens: usize },
    /// One chunk every `ms` milliseconds, `tokens` chunks in all.
    Trickle { ms: u64, tokens: usize },
    /// Finishes with `done_reason: length` / `finish_reason: length`.
    Length,
    /// The first token comes after `ms`, and the final chunk reports it as `load_duration`.
    ColdLoad { ms: u64 },
    /// A first token, then one line of `mb` MB without a newline (sent in 64 KB pieces).
    HugeLine { mb: usize },
    /// Deltas of 64 KB without end, as fast as the client reads (a server ignoring max_tokens).
    Flood,
    /// HTTP 200 with an HTML page instead of a stream.
    Html,
    /// Tokens as usual, then a final chunk claiming an absurd load time and token counts.
    LyingDone,
}

/// What a lying server answers on a metadata path (`/api/ps`, `/api/tags`, `/api/show`,
/// `/api/version`, `/v1/models`) instead of the truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Lie {
    /// This JSON body.
    Json { body: Value },
    /// `len` bytes (`[` repeated: never valid JSON) with this content type.
    Bytes { len: usize, content_type: String },
}

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recorded {
    pub path: String,
    pub model: String,
    pub keep_alive: Value,
    pub num_ctx: Option<u64>,
    pub max_tokens: Option<u64>,
    pub authorization: Option<String>,
    /// All message contents (or prompt and suffix) joined, to check what reached the model.
    pub text: String,
    /// The client went away before the answer was complete.
    pub closed_early: bool,
    /// The whole answer was sent.
    pub completed: bool,
    /// A request that only loads the model (no prompt, no messages).
    #[serde(default)]
    pub preload: bool,
    /// What the GPU simulator made of it.
    pub sim: Option<SimOutcome>,
    /// When the request arrived and when its answer ended (completed, failed, or the client's
    /// leaving noticed), in ms since the backend started.
    pub started_ms: f64,
    pub ended_ms: Option<f64>,
}

/// The backend's clock: ms since the first use.
fn now_ms() -> f64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
        * 1000.0
}

#[derive(Default)]
struct Shared {
    faults: HashMap<String, Fault>,
    requests: Vec<Recorded>,
    loaded: Vec<Value>,
    sim: Option<Sim>,
    lies: HashMap<String, Lie>,
    /// Answers in progress per model, and the most seen at once.
    active: HashMap<String, usize>,
    peak: HashMap<String, usize>,
    /// Per model, the context length `/api/show` reports (default 131072).
    context_lengths: HashMap<String, u64>,
}

/// Counts an answer in progress for as long as it lives (its handler or stream task).
struct Active {
    state: AppState,
    model: String,
    index: Option<usize>,
}

impl Active {
    fn new(state: &AppState, model: &str) -> Active {
        state.with(|s| {
            let n = s.active.entry(model.to_string()).or_default();
            *n += 1;
            let now = *n;
            let peak = s.peak.entry(model.to_string()).or_default();
            *peak = (*peak).max(now);
        });
        Active {
            state: state.clone(),
            model: model.to_string(),
            index: None,
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let index = self.index;
        self.state.with(|s| {
            if let Some(n) = s.active.get_mut(&self.model) {
                *n = n.saturating_sub(1);
            }
            if let Some(r) = index.and_then(|i| s.requests.get_mut(i)) {
                r.ended_ms = Some(now_ms());
            }
        });
    }
}

#[derive(Clone, Default)]
struct AppState(Arc<Mutex<Shared>>);

impl AppState {
    fn with<T>(&self, f: impl FnOnce(&mut Shared) -> T) -> T {
        let mut guard = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut guard)
    }
}

/// A running test backend. It stops when dropped (its runtime goes with it).
pub struct TestBackend {
    pub addr: SocketAddr,
    state: AppState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestBackend {
    /// Starts on 127.0.0.1 with a free port, on its own thread and runtime.
    pub fn start() -> TestBackend {
        Self::start_on("127.0.0.1:0")
    }

    pub fn start_on(address: &str) -> TestBackend {
        Self::try_start_on(address).expect("bind loopback")
    }

    /// As `start_on`, with an error when the address cannot be bound (a soak bringing a
    /// backend back on its old port).
    pub fn try_start_on(address: &str) -> std::io::Result<TestBackend> {
        let state = AppState::default();
        let listener = std::net::TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app_state = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                // Nagle's algorithm would hold back the first small chunk for a delayed ACK and
                // turn every first-token measurement into ~40 ms.
                let listener = tokio::net::TcpListener::from_std(listener)
                    .expect("tokio listener")
                    .tap_io(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                let app = router(app_state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
            });
            // Streams still hanging on purpose must not keep the thread alive.
            runtime.shutdown_timeout(Duration::from_millis(100));
        });
        Ok(TestBackend {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers `path` with `lie` from now on.
    pub fn lie(&self, path: &str, lie: Lie) {
        self.state.with(|s| s.lies.insert(path.to_string(), lie));
    }

    pub fn set_fault(&self, model: &str, fault: Fault) {
        self.state
            .with(|s| s.faults.insert(model.to_string(), fault));
    }

    /// Models `/api/ps` reports as loaded: (name, size in MB, MB in VRAM).
    pub fn set_loaded(&self, models: &[(&str, u64, u64)]) {
        let loaded = models
            .iter()
            .map(|(name, size, vram)| {
                json!({"name": name, "model": name, "size": size * 1024 * 1024, "size_vram": vram * 1024 * 1024,
                       "expires_at": "2030-01-01T00:00:00Z"})
            })
            .collect();
        self.state.with(|s| s.loaded = loaded);
    }

    /// The context length `/api/show` reports for `model`.
    pub fn set_context_length(&self, model: &str, length: u64) {
        self.state
            .with(|s| s.context_lengths.insert(model.to_string(), length));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.with(|s| s.requests.clone())
    }

    /// Turns on the GPU simulator (replacing `set_loaded`): nothing is loaded, the clock is 0.
    pub fn simulate(&self, config: SimConfig) {
        self.state.with(|s| s.sim = Some(Sim::new(config)));
    }

    /// Sets the simulator's clock (seconds); it never goes back.
    pub fn set_time(&self, now_s: f64) {
        self.state.with(|s| {
            if let Some(sim) = &mut s.sim {
                sim.now_s = sim.now_s.max(now_s);
                sim.expire(sim.now_s);
            }
        });
    }

    /// The simulated GPU: (total MB, free MB) now.
    pub fn gpu(&self) -> Option<(u64, u64)> {
        self.state.with(|s| {
            s.sim
                .as_ref()
                .map(|sim| (sim.config.total_mb, sim.free_mb()))
        })
    }

    pub fn sim_counts(&self) -> Option<SimCounts> {
        self.state
            .with(|s| s.sim.as_ref().map(|sim| sim.counts.clone()))
    }

    /// The most answers to `model` that overlapped, where a stream the client left counts
    /// only until `grace_ms` before the server noticed (the server learns of a closed
    /// connection a moment after the client closed it, and the client's next request can
    /// arrive in between).
    pub fn peak_overlap(&self, model: &str, grace_ms: f64) -> usize {
        let spans: Vec<(f64, f64)> = self
            .requests()
            .iter()
            .filter(|r| r.model == model)
            .map(|r| {
                let end = r.ended_ms.unwrap_or(f64::MAX);
                let end = if r.closed_early { end - grace_ms } else { end };
                (r.started_ms, end)
            })
            .collect();
        spans
            .iter()
            .map(|(t, _)| spans.iter().filter(|(s, e)| s <= t && t < e).count())
            .max()
            .unwrap_or(0)
    }

    /// The most answers to `model` that overlapped among those sent to the end (the client
    /// read each of them whole, so it really had them all open at once).
    pub fn peak_overlap_completed(&self, model: &str) -> usize {
        let spans: Vec<(f64, f64)> = self
            .requests()
            .iter()
            .filter(|r| r.model == model && r.completed)
            .map(|r| (r.started_ms, r.ended_ms.unwrap_or(f64::MAX)))
            .collect();
        spans
            .iter()
            .map(|(t, _)| spans.iter().filter(|(s, e)| s <= t && t < e).count())
            .max()
            .unwrap_or(0)
    }

    /// Answers to `model` in progress now, and the most there were at once.
    pub fn load(&self, model: &str) -> (usize, usize) {
        self.state.with(|s| {
            (
                s.active.get(model).copied().unwrap_or(0),
                s.peak.get(model).copied().unwrap_or(0),
            )
        })
    }

    /// Waits (bounded) until `pred` holds for the recorded requests.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Recorded]) -> bool) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if pred(&self.requests()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        pred(&self.requests())
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/chat", post(ollama_chat))
        .route("/api/generate", post(ollama_generate))
        .route("/api/tags", get(ollama_tags))
        .route("/api/ps", get(ollama_ps))
        .route(
            "/api/version",
            get(|State(state): State<AppState>| async move {
                lie_for(&state, "/api/version")
                    .unwrap_or_else(|| Json(json!({"version": "0.0.0-test"})).into_response())
            }),
        )
        .route("/api/show", post(ollama_show))
        .route("/api/embed", post(ollama_embed))
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/models", get(openai_models))
        .route("/_test/fault", post(control_fault))
        .route("/_test/requests", get(control_requests))
        .route("/_test/loaded", post(control_loaded))
        .route("/_test/sim", post(control_sim).get(control_sim_state))
        .route("/_test/clock", post(control_clock))
        .route("/_test/load", get(control_load))
        .route("/_test/context_length", post(control_context_length))
        .with_state(state)
}

#[derive(Deserialize)]
struct FaultCommand {
    model: String,
    fault: Fault,
}

async fn control_fault(State(state): State<AppState>, Json(cmd): Json<FaultCommand>) -> StatusCode {
    state.with(|s| s.faults.insert(cmd.model, cmd.fault));
    StatusCode::NO_CONTENT
}

async fn control_requests(State(state): State<AppState>) -> Json<Vec<Recorded>> {
    Json(state.with(|s| s.requests.clone()))
}

/// `{"active": {model: n}, "peak": {model: n}}`
async fn control_load(State(state): State<AppState>) -> Json<Value> {
    Json(state.with(|s| json!({"active": s.active, "peak": s.peak})))
}

async fn control_loaded(
    State(state): State<AppState>,
    Json(models): Json<Vec<Value>>,
) -> StatusCode {
    state.with(|s| s.loaded = models);
    StatusCode::NO_CONTENT
}

async fn control_sim(State(state): State<AppState>, Json(config): Json<SimConfig>) -> StatusCode {
    state.with(|s| s.sim = Some(Sim::new(config)));
    StatusCode::NO_CONTENT
}

async fn control_sim_state(State(state): State<AppState>) -> Json<Value> {
    Json(state.with(|s| match &s.sim {
        Some(sim) => json!({"now_s": sim.now_s, "total_mb": sim.config.total_mb,
                            "free_mb": sim.free_mb(), "counts": sim.counts}),
        None => Value::Null,
    }))
}

#[derive(Deserialize)]
struct ClockCommand {
    now_s: f64,
}

async fn control_clock(State(state): State<AppState>, Json(cmd): Json<ClockCommand>) -> StatusCode {
    state.with(|s| {
        if let Some(sim) = &mut s.sim {
            sim.now_s = sim.now_s.max(cmd.now_s);
            sim.expire(sim.now_s);
        }
    });
    StatusCode::NO_CONTENT
}

/// A request that only loads the model: Ollama's documented preload (no prompt / messages).
fn is_preload(path: &str, body: &Value) -> bool {
    match path {
        "/api/generate" => {
            body["prompt"].as_str().is_none_or(str::is_empty) && body.get("suffix").is_none()
        }
        "/api/chat" => body["messages"].as_array().is_none_or(Vec::is_empty),
        _ => false,
    }
}

/// Answers a preload as Ollama does: one JSON object with `done_reason: "load"`, after the
/// load (a `cold_load` fault's time; the simulator's is virtual). The client leaving first is
/// recorded as `closed_early`.
fn preload_answer(state: AppState, index: usize, model: String, fault: Fault) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let simulated = state.with(|s| s.sim.is_some());
    tokio::spawn(async move {
        let wait = match fault {
            Fault::ColdLoad { ms } if !simulated => Duration::from_millis(ms),
            Fault::HangBeforeFirstToken => Duration::from_secs(120),
            _ => Duration::ZERO,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => {
                state.with(|x| x.requests[index].closed_early = true);
                return;
            }
        }
        let body = json!({"model": model, "created_at": "2026-01-01T00:00:00Z", "response": "",
                          "done": true, "done_reason": "load"});
        if tx.send(Ok(Bytes::from(body.to_string()))).await.is_ok() {
            state.with(|x| x.requests[index].completed = true);
        } else {
            state.with(|x| x.requests[index].closed_early = true);
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[derive(Clone, Copy, PartialEq)]
enum Dialect {
    OllamaChat,
    OllamaGenerate,
    Openai,
}

fn text_of(body: &Value) -> String {
    let mut parts: Vec<String> = body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|x| x["content"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for key in ["prompt", "suffix"] {
        if let Some(t) = body[key].as_str() {
            parts.push(t.to_string());
        }
    }
    parts.join("\n")
}

fn record(state: &AppState, path: &str, headers: &HeaderMap, body: &Value) -> (usize, Fault) {
    let model = body["model"].as_str().unwrap_or("").to_string();
    let entry = Recorded {
        path: path.to_string(),
        model: model.clone(),
        keep_alive: body.get("keep_alive").cloned().unwrap_or(Value::Null),
        num_ctx: body["options"]["num_ctx"].as_u64(),
        max_tokens: body["options"]["num_predict"]
            .as_u64()
            .or(body["max_tokens"].as_u64()),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        text: text_of(body),
        closed_early: false,
        started_ms: now_ms(),
        ended_ms: None,
        completed: false,
        preload: is_preload(path, body),
        sim: None,
    };
    state.with(|s| {
        s.requests.push(entry);
        (
            s.requests.len() - 1,
            s.faults.get(&model).cloned().unwrap_or_default(),
        )
    })
}

async fn ollama_chat(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    answer(state, "/api/chat", headers, body, Dialect::OllamaChat).await
}

async fn ollama_generate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    answer(
        state,
        "/api/generate",
        headers,
        body,
        Dialect::OllamaGenerate,
    )
    .await
}

async fn openai_chat(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    answer(
        state,
        "/v1/chat/completions",
        headers,
        body,
        Dialect::Openai,
    )
    .await
}

/// `echo:ID` from the prompt: answered as a last token ` echo:ID`, so that a load test can
/// check that each answer belongs to its request.
fn echo_of(text: &str) -> Option<String> {
    // The request's own last line only: workspace context before it may quote `echo:` too.
    let last = text.trim_end().lines().last()?;
    let at = last.rfind("echo:")?;
    let id: String = last[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_'))
        .take(64)
        .collect();
    Some(id)
}

/// The words of every answer: `Hello from MODEL, this is a test answer.`
fn tokens_for(model: &str, count: usize) -> Vec<String> {
    let base = [
        "Hello",
        " from",
        &format!(" {model}"),
        ",",
        " this",
        " is",
        " a",
        " test",
        " answer",
        ".",
    ];
    (0..count.max(1))
        .map(|i| base[i % base.len()].to_string())
        .collect()
}

fn chunk(dialect: Dialect, model: &str, token: &str) -> String {
    match dialect {
        Dialect::OllamaChat => format!(
            "{}\n",
            json!({"model": model, "created_at": "2026-01-01T00:00:00Z", "message": {"role": "assistant", "content": token}, "done": false})
        ),
        Dialect::OllamaGenerate => format!(
            "{}\n",
            json!({"model": model, "response": token, "done": false})
        ),
        Dialect::Openai => format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": model,
                   "choices": [{"index": 0, "delta": {"content": token}, "finish_reason": null}]})
        ),
    }
}

fn final_chunks(
    dialect: Dialect,
    model: &str,
    tokens: usize,
    length: bool,
    load_ms: u64,
) -> String {
    let reason = if length { "length" } else { "stop" };
    match dialect {
        Dialect::OllamaChat | Dialect::OllamaGenerate => {
            let mut done = json!({"model": model, "done": true, "done_reason": reason,
                                  "total_duration": 1_000_000u64 + load_ms * 1_000_000, "load_duration": load_ms * 1_000_000,
                                  "prompt_eval_count": 12, "eval_count": tokens});
            if dialect == Dialect::OllamaChat {
                done["message"] = json!({"role": "assistant", "content": ""});
            } else {
                done["response"] = json!("");
            }
            format!("{done}\n")
        }
        Dialect::Openai => format!(
            "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
            json!({"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": model,
                   "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}),
            json!({"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": model, "choices": [],
                   "usage": {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}})
        ),
    }
}

fn error_body(dialect: Dialect, message: &str) -> Value {
    match dialect {
        Dialect::Openai => {
            json!({"error": {"message": message, "type": "invalid_request_error", "code": "model_not_found"}})
        }
        _ => json!({"error": message}),
    }
}

async fn answer(
    state: AppState,
    path: &str,
    headers: HeaderMap,
    body: Value,
    dialect: Dialect,
) -> Response {
    let (index, fault) = record(&state, path, &headers, &body);
    let model = body["model"].as_str().unwrap_or("").to_string();
    let preload = dialect != Dialect::Openai && is_preload(path, &body);
    let simulated = match simulate_request(&state, index, &body, preload) {
        Ok(outcome) => outcome,
        Err(message) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(error_body(dialect, &message)),
            )
                .into_response()
        }
    };
    if preload {
        return preload_answer(state, index, model, fault);
    }
    let mut active = Active::new(&state, &model);
    active.index = Some(index);
    let text = text_of(&body);
    match fault {
        Fault::Status { code } => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, Json(error_body(dialect, "injected failure"))).into_response();
        }
        Fault::NotFound => {
            let message = match dialect {
                Dialect::Openai => format!("The model `{model}` does not exist."),
                _ => format!("model '{model}' not found"),
            };
            return (StatusCode::NOT_FOUND, Json(error_body(dialect, &message))).into_response();
        }
        Fault::HangBeforeHeaders => {
            // Bounded, so a broken test cannot hang forever.
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        Fault::Html => {
            return Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/html")
                .body(Body::from("<html><body>Welcome to nginx!</body></html>\n"))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
        _ => {}
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let task_state = state.clone();
    tokio::spawn(async move {
        let _active = active;
        let closed = |s: &AppState| s.with(|x| x.requests[index].closed_early = true);
        let send = |text: String| {
            let tx = tx.clone();
            async move { tx.send(Ok(Bytes::from(text))).await.is_ok() }
        };
        let (count, delay) = match &fault {
            Fault::Trickle { ms, tokens } => (*tokens, Some(*ms)),
            _ => (10, None),
        };
        let mut tokens = tokens_for(&model, count);
        if let Some(echo) = echo_of(&text) {
            tokens.push(format!(" {echo}"));
        }
        let limit = match &fault {
            Fault::StallAfter { tokens }
            | Fault::Malformed { after: tokens }
            | Fault::ResetAfter { tokens } => *tokens,
            Fault::HangBeforeFirstToken => 0,
            _ => tokens.len(),
        };
        if let Fault::ColdLoad { ms } = fault {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        match fault {
            Fault::HugeLine { mb } => {
                let _ = send(chunk(dialect, &model, "Hello")).await;
                let piece = "x".repeat(65_536);
                for _ in 0..mb * 16 {
                    if !send(piece.clone()).await {
                        closed(&task_state);
                        return;
                    }
                }
                let _ = send("\n".to_string()).await;
                return;
            }
            Fault::Flood => {
                let big = "y".repeat(65_536);
                // Bounded (1 GB), so a broken client cannot keep a test busy forever.
                for _ in 0..16_384 {
                    if !send(chunk(dialect, &model, &big)).await {
                        closed(&task_state);
                        return;
                    }
                }
                return;
            }
            _ => {}
        }
        for token in tokens.iter().take(limit) {
            if let Some(ms) = delay.filter(|ms| *ms > 0) {
                // A client that leaves between two tokens is noticed at once, as a real server
                // notices a closed connection, not only at the next write.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    _ = tx.closed() => {
                        closed(&task_state);
                        return;
                    }
                }
            }
            if !send(chunk(dialect, &model, token)).await {
                closed(&task_state);
                return;
            }
        }
        match fault {
            Fault::HangBeforeFirstToken | Fault::StallAfter { .. } => {
                // Hold the connection open (bounded) and notice when the client leaves.
                if tokio::time::timeout(Duration::from_secs(120), tx.closed())
                    .await
                    .is_ok()
                {
                    closed(&task_state);
                }
                return;
            }
            Fault::Malformed { .. } => {
                let garbage = match dialect {
                    Dialect::Openai => "data: {this is not json\n\n",
                    _ => "this is not json\n",
                };
                let _ = send(garbage.to_string()).await;
                return;
            }
            Fault::ResetAfter { .. } => {
                // Let the tokens reach the client first, as when a server dies mid-answer.
                tokio::time::sleep(Duration::from_millis(150)).await;
                let _ = tx
                    .send(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "injected reset",
                    )))
                    .await;
                return;
            }
            _ => {}
        }
        if fault == Fault::LyingDone {
            let done = match dialect {
                Dialect::Openai => "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":-5,\"completion_tokens\":1e300}}\n\ndata: [DONE]\n\n".to_string(),
                _ => format!(
                    "{}\n",
                    json!({"model": model, "done": true, "done_reason": "stop", "message": {"role": "assistant", "content": ""},
                           "load_duration": u64::MAX, "prompt_eval_count": -5, "eval_count": 1e300})
                ),
            };
            if send(done).await {
                task_state.with(|x| x.requests[index].completed = true);
            }
            return;
        }
        let load_ms = match fault {
            Fault::ColdLoad { ms } => ms,
            _ => 0,
        };
        let last = match &simulated {
            Some(sim) => simulated_final_chunk(dialect, &model, sim),
            None => final_chunks(dialect, &model, limit, fault == Fault::Length, load_ms),
        };
        if send(last).await {
            task_state.with(|x| x.requests[index].completed = true);
        } else {
            closed(&task_state);
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let content_type = match dialect {
        Dialect::Openai => "text/event-stream",
        _ => "application/x-ndjson",
    };
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The lie set for `path`, as a response.
fn lie_for(state: &AppState, path: &str) -> Option<Response> {
    let lie = state.with(|s| s.lies.get(path).cloned())?;
    Some(match lie {
        Lie::Json { body } => Json(body).into_response(),
        Lie::Bytes { len, content_type } => {
            let chunks = futures::stream::iter((0..len.div_ceil(65_536)).map(move |i| {
                Ok::<_, std::io::Error>(Bytes::from(vec![b'['; (len - i * 65_536).min(65_536)]))
            }));
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", content_type)
                .body(Body::from_stream(chunks))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
    })
}

fn known_models(state: &AppState) -> Vec<String> {
    let mut models: Vec<String> = ["llama3.2:3b", "qwen3-coder:30b", "llama3.1:70b"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    state.with(|s| {
        for (name, fault) in &s.faults {
            if *fault != Fault::NotFound && !models.contains(name) {
                models.push(name.clone());
            }
        }
        models.retain(|m| s.faults.get(m) != Some(&Fault::NotFound));
    });
    models
}

async fn ollama_tags(State(state): State<AppState>) -> Response {
    if let Some(lie) = lie_for(&state, "/api/tags") {
        return lie;
    }
    let models: Vec<Value> = known_models(&state)
        .iter()
        .map(|m| json!({"name": m, "model": m, "size": 2_000_000_000u64}))
        .collect();
    Json(json!({ "models": models })).into_response()
}

async fn ollama_ps(State(state): State<AppState>) -> Response {
    if let Some(lie) = lie_for(&state, "/api/ps") {
        return lie;
    }
    Json(json!({ "models": state.with(|s| match &s.sim {
        Some(sim) => sim.ps(),
        None => s.loaded.clone(),
    }) }))
    .into_response()
}

async fn ollama_show(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
    if let Some(lie) = lie_for(&state, "/api/show") {
        return lie;
    }
    let model = body["model"].as_str().unwrap_or("");
    if state.with(|s| s.faults.get(model) == Some(&Fault::NotFound)) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("model '{model}' not found")})),
        )
            .into_response();
    }
    let length = state.with(|s| s.context_lengths.get(model).copied().unwrap_or(131_072));
    Json(json!({
        "model_info": {"general.architecture": "llama", "llama.context_length": length},
        "capabilities": ["completion", "insert"],
    }))
    .into_response()
}

async fn openai_models(State(state): State<AppState>) -> Response {
    if let Some(lie) = lie_for(&state, "/v1/models") {
        return lie;
    }
    let data: Vec<Value> = known_models(&state)
        .iter()
        .map(|m| json!({"id": m, "object": "model"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

// -------------------------------------------------------------------------------------------
// The GPU simulator.

/// One model as the simulator runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimModel {
    /// Memory it takes when loaded (weights and the KV cache for its num_ctx), MB.
    pub size_mb: u64,
    pub prompt_tokens_per_s: f64,
    /// Generation speed.
    pub tokens_per_s: f64,
    /// Time from the end of prompt evaluation to the first token, seconds.
    pub overhead_s: f64,
}

/// The simulated machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    pub total_mb: u64,
    /// Load speed (disk to VRAM), MB/s: load time is proportional to size.
    pub load_mb_per_s: f64,
    /// keep_alive of a request that sends none (Ollama: 5 minutes).
    pub default_keep_alive_s: f64,
    pub models: BTreeMap<String, SimModel>,
}

/// What the simulator did with one request, in virtual seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimOutcome {
    pub arrival_s: f64,
    pub first_token_s: f64,
    pub done_s: f64,
    /// Arrival to first token (to loaded, for a preload).
    pub wait_s: f64,
    /// Part of the wait spent loading the model.
    pub load_s: f64,
    pub prompt_tokens: u64,
    /// Time the prompt took to read (Ollama `prompt_eval_duration`).
    pub prompt_eval_s: f64,
    pub answer_tokens: u64,
    /// This request made the model load.
    pub caused_load: bool,
    /// Models unloaded to make room for it.
    pub evicted: Vec<String>,
}

/// What happened on the simulated GPU.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SimCounts {
    pub loads: u64,
    /// Unloaded to make room for another model.
    pub evictions: u64,
    /// Unloaded because their keep_alive ran out.
    pub expiries: u64,
    /// Loaded again within 60 s of being evicted.
    pub ping_pongs: u64,
}

#[derive(Debug, Clone)]
struct Resident {
    name: String,
    size_mb: u64,
    /// Loaded (ready to answer) from then on.
    ready_s: f64,
    /// Answering until then (one request at a time, as OLLAMA_NUM_PARALLEL=1).
    busy_until_s: f64,
    keep_alive_s: f64,
}

/// One GPU on a virtual clock, scheduling like Ollama: a model not loaded is loaded (one load at
/// a time, `size_mb / load_mb_per_s` seconds); when VRAM is full, idle models are unloaded, the
/// shortest keep_alive first (ties by name), and a model answering is never unloaded (the load
/// waits until it is idle); a model idle for its keep_alive unloads; each model answers one
/// request at a time, prompt at `prompt_tokens_per_s`, then `overhead_s`, then the answer at
/// `tokens_per_s`.
pub struct Sim {
    config: SimConfig,
    now_s: f64,
    resident: Vec<Resident>,
    loader_free_s: f64,
    evicted_at: HashMap<String, f64>,
    counts: SimCounts,
}

impl Sim {
    fn new(config: SimConfig) -> Sim {
        Sim {
            config,
            now_s: 0.0,
            resident: Vec::new(),
            loader_free_s: 0.0,
            evicted_at: HashMap::new(),
            counts: SimCounts::default(),
        }
    }

    fn free_mb(&self) -> u64 {
        let used: u64 = self.resident.iter().map(|r| r.size_mb).sum();
        self.config.total_mb.saturating_sub(used)
    }

    fn ps(&self) -> Vec<Value> {
        self.resident
            .iter()
            .map(|r| {
                let bytes = r.size_mb * 1024 * 1024;
                json!({"name": r.name, "model": r.name, "size": bytes, "size_vram": bytes,
                       "expires_at": "2030-01-01T00:00:00Z"})
            })
            .collect()
    }

    /// Unloads models whose keep_alive ran out by `now`.
    fn expire(&mut self, now: f64) {
        let before = self.resident.len();
        self.resident
            .retain(|r| r.busy_until_s.max(r.ready_s) + r.keep_alive_s > now);
        self.counts.expiries += (before - self.resident.len()) as u64;
    }

    fn schedule(
        &mut self,
        model: &str,
        prompt_tokens: u64,
        answer_tokens: u64,
        keep_alive_s: f64,
        preload: bool,
    ) -> Result<SimOutcome, String> {
        let arrival = self.now_s;
        self.expire(arrival);
        let spec = self
            .config
            .models
            .get(model)
            .cloned()
            .ok_or_else(|| format!("model '{model}' not found"))?;
        let mut evicted = Vec::new();
        let mut caused_load = false;
        if !self.resident.iter().any(|r| r.name == model) {
            let mut t = arrival;
            while self.free_mb() < spec.size_mb {
                let mut idle: Vec<usize> = (0..self.resident.len())
                    .filter(|i| {
                        let r = &self.resident[*i];
                        r.busy_until_s <= t && r.ready_s <= t
                    })
                    .collect();
                idle.sort_by(|a, b| {
                    let (a, b) = (&self.resident[*a], &self.resident[*b]);
                    a.keep_alive_s
                        .total_cmp(&b.keep_alive_s)
                        .then(a.name.cmp(&b.name))
                });
                if let Some(&victim) = idle.first() {
                    let gone = self.resident.remove(victim);
                    self.evicted_at.insert(gone.name.clone(), t);
                    self.counts.evictions += 1;
                    evicted.push(gone.name);
                    continue;
                }
                // Nothing idle: wait for the first model to finish answering.
                let Some(next) = self
                    .resident
                    .iter()
                    .map(|r| r.busy_until_s.max(r.ready_s))
                    .min_by(f64::total_cmp)
                else {
                    return Err(format!(
                        "model requires more system memory ({} MB) than is available",
                        spec.size_mb
                    ));
                };
                t = next.max(t);
            }
            let start = t.max(self.loader_free_s);
            let ready = start + spec.size_mb as f64 / self.config.load_mb_per_s;
            self.loader_free_s = ready;
            if self.evicted_at.get(model).is_some_and(|e| start - e < 60.0) {
                self.counts.ping_pongs += 1;
            }
            self.counts.loads += 1;
            caused_load = true;
            self.resident.push(Resident {
                name: model.to_string(),
                size_mb: spec.size_mb,
                ready_s: ready,
                busy_until_s: ready,
                keep_alive_s,
            });
        }
        let Some(r) = self.resident.iter_mut().find(|r| r.name == model) else {
            return Err("the simulator lost a model".to_string());
        };
        r.keep_alive_s = keep_alive_s;
        let load_s = (r.ready_s - arrival).max(0.0);
        let (first, done) = if preload {
            (r.ready_s.max(arrival), r.ready_s.max(arrival))
        } else {
            let start = arrival.max(r.ready_s).max(r.busy_until_s);
            let first = start + prompt_tokens as f64 / spec.prompt_tokens_per_s + spec.overhead_s;
            let done = first + answer_tokens as f64 / spec.tokens_per_s;
            r.busy_until_s = done;
            (first, done)
        };
        Ok(SimOutcome {
            arrival_s: arrival,
            first_token_s: first,
            done_s: done,
            wait_s: first - arrival,
            load_s,
            prompt_tokens,
            prompt_eval_s: prompt_tokens as f64 / spec.prompt_tokens_per_s,
            answer_tokens: if preload { 0 } else { answer_tokens },
            caused_load,
            evicted,
        })
    }
}

/// Ollama's keep_alive: seconds (negative: for ever) or a duration ("5m", "2h", "90s").
fn keep_alive_seconds(value: &Value, default_s: f64) -> f64 {
    if let Some(n) = value.as_f64() {
        return if n < 0.0 { f64::INFINITY } else { n };
    }
    let Some(text) = value.as_str() else {
        return default_s;
    };
    if let Ok(n) = text.trim().parse::<f64>() {
        return if n < 0.0 { f64::INFINITY } else { n };
    }
    let mut total = 0.0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let n: f64 = number.parse().unwrap_or(0.0);
        number.clear();
        total += n * match c {
            'h' => 3600.0,
            'm' => 60.0,
            _ => 1.0,
        };
    }
    total
}

/// Answer length: 80–479 tokens, fixed per prompt text (FNV-1a), cut at `num_predict`.
fn answer_tokens(text: &str, num_predict: Option<u64>) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x100000001b3);
    }
    let tokens = 80 + hash % 400;
    num_predict.map_or(tokens, |n| tokens.min(n.max(1)))
}

/// Runs a request through the simulator when it is on; `Ok(None)` when it is off.
fn simulate_request(
    state: &AppState,
    index: usize,
    body: &Value,
    preload: bool,
) -> Result<Option<SimOutcome>, String> {
    state.with(|s| {
        let Some(sim) = &mut s.sim else {
            return Ok(None);
        };
        let model = body["model"].as_str().unwrap_or("");
        let text = text_of(body);
        // ~4 characters per token, as a tokenizer averages on English and code.
        let prompt_tokens = (text.chars().count() as u64).div_ceil(4).max(1);
        let keep_alive = keep_alive_seconds(
            body.get("keep_alive").unwrap_or(&Value::Null),
            sim.config.default_keep_alive_s,
        );
        let outcome = sim.schedule(
            model,
            prompt_tokens,
            answer_tokens(&text, body["options"]["num_predict"].as_u64()),
            keep_alive,
            preload,
        )?;
        s.requests[index].sim = Some(outcome.clone());
        Ok(Some(outcome))
    })
}

/// The final chunk with the simulator's timings (virtual nanoseconds), as Ollama reports them.
fn simulated_final_chunk(dialect: Dialect, model: &str, sim: &SimOutcome) -> String {
    if dialect == Dialect::Openai {
        return final_chunks(dialect, model, sim.answer_tokens as usize, false, 0);
    }
    let ns = |s: f64| (s.max(0.0) * 1e9) as u64;
    let prompt_eval_s = sim.prompt_eval_s;
    let mut done = json!({"model": model, "done": true, "done_reason": "stop",
        "total_duration": ns(sim.done_s - sim.arrival_s), "load_duration": ns(sim.load_s),
        "prompt_eval_count": sim.prompt_tokens, "prompt_eval_duration": ns(prompt_eval_s),
        "eval_count": sim.answer_tokens, "eval_duration": ns(sim.done_s - sim.first_token_s)});
    if dialect == Dialect::OllamaChat {
        done["message"] = json!({"role": "assistant", "content": ""});
    } else {
        done["response"] = json!("");
    }
    format!("{done}\n")
}

/// Dimensions of the test embeddings.
const EMBED_DIMENSIONS: usize = 64;

/// `/api/embed`: a deterministic bag-of-words vector per input (each lower-cased word hashed
/// into one of 64 dimensions), so texts sharing words are close. Recorded like a chat (path
/// `/api/embed`, every input in `text`); a model's `status` or `not_found` fault applies.
async fn ollama_embed(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let mut recorded = body.clone();
    recorded["prompt"] = json!(inputs.join("\n"));
    let (index, fault) = record(&state, "/api/embed", &headers, &recorded);
    let model = body["model"].as_str().unwrap_or("").to_string();
    match fault {
        Fault::Status { code } => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, Json(json!({"error": "injected failure"}))).into_response();
        }
        Fault::NotFound => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error": format!("model '{model}' not found")})),
            )
                .into_response();
        }
        _ => {}
    }
    let embeddings: Vec<Vec<f32>> = inputs
        .iter()
        .map(|text| {
            let mut v = vec![0f32; EMBED_DIMENSIONS];
            for word in text
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.len() > 2)
            {
                let h = word
                    .to_lowercase()
                    .bytes()
                    .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
                    });
                v[(h % EMBED_DIMENSIONS as u64) as usize] += 1.0;
            }
            v
        })
        .collect();
    state.with(|s| s.requests[index].completed = true);
    Json(json!({"model": model, "embeddings": embeddings, "prompt_eval_count": inputs.len()}))
        .into_response()
}

#[derive(Deserialize)]
struct ContextLengthCommand {
    model: String,
    length: u64,
}

async fn control_context_length(
    State(state): State<AppState>,
    Json(cmd): Json<ContextLengthCommand>,
) -> StatusCode {
    state.with(|s| s.context_lengths.insert(cmd.model, cmd.length));
    StatusCode::NO_CONTENT
}
