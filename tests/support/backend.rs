//! A model server for tests that really speaks HTTP on loopback: Ollama's native API and the
//! OpenAI-compatible API, streaming, with per-model fault injection. It records every request
//! (model, keep_alive, num_ctx, max_tokens, bearer key) and whether the client closed the
//! connection before the answer was complete, so tests can assert which model was really
//! called and that cancellation reached the server.
//!
//! Used in-process by the Rust tests and standalone (`cargo run --example test_backend`) by the
//! editor-client tests, which steer it over `POST /_test/fault` and read `GET /_test/requests`.

#![allow(dead_code)]

use std::collections::HashMap;
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
}

#[derive(Default)]
struct Shared {
    faults: HashMap<String, Fault>,
    requests: Vec<Recorded>,
    loaded: Vec<Value>,
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
        let state = AppState::default();
        let listener = std::net::TcpListener::bind(address).expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
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
        TestBackend {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.with(|s| s.requests.clone())
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
            get(|| async { Json(json!({"version": "0.0.0-test"})) }),
        )
        .route("/api/show", post(ollama_show))
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/models", get(openai_models))
        .route("/_test/fault", post(control_fault))
        .route("/_test/requests", get(control_requests))
        .route("/_test/loaded", post(control_loaded))
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

async fn control_loaded(
    State(state): State<AppState>,
    Json(models): Json<Vec<Value>>,
) -> StatusCode {
    state.with(|s| s.loaded = models);
    StatusCode::NO_CONTENT
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
        completed: false,
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
        _ => {}
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let task_state = state.clone();
    tokio::spawn(async move {
        let closed = |s: &AppState| s.with(|x| x.requests[index].closed_early = true);
        let send = |text: String| {
            let tx = tx.clone();
            async move { tx.send(Ok(Bytes::from(text))).await.is_ok() }
        };
        let (count, delay) = match &fault {
            Fault::Trickle { ms, tokens } => (*tokens, Some(*ms)),
            _ => (10, None),
        };
        let tokens = tokens_for(&model, count);
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
        for token in tokens.iter().take(limit) {
            if let Some(ms) = delay.filter(|ms| *ms > 0) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
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
        let load_ms = match fault {
            Fault::ColdLoad { ms } => ms,
            _ => 0,
        };
        if send(final_chunks(
            dialect,
            &model,
            limit,
            fault == Fault::Length,
            load_ms,
        ))
        .await
        {
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

async fn ollama_tags(State(state): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = known_models(&state)
        .iter()
        .map(|m| json!({"name": m, "model": m, "size": 2_000_000_000u64}))
        .collect();
    Json(json!({ "models": models }))
}

async fn ollama_ps(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "models": state.with(|s| s.loaded.clone()) }))
}

async fn ollama_show(State(state): State<AppState>, Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or("");
    if state.with(|s| s.faults.get(model) == Some(&Fault::NotFound)) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("model '{model}' not found")})),
        )
            .into_response();
    }
    Json(json!({
        "model_info": {"general.architecture": "llama", "llama.context_length": 131072},
        "capabilities": ["completion", "insert"],
    }))
    .into_response()
}

async fn openai_models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = known_models(&state)
        .iter()
        .map(|m| json!({"id": m, "object": "model"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}
