//! HTTP clients for model servers: Ollama's native API and the OpenAI-compatible API (llama.cpp's
//! llama-server, vLLM, LM Studio, Ollama's `/v1`).
//!
//! Owns the wire formats, streaming (NDJSON and SSE), error classification and the bearer key.
//! One [`Client`] (one connection pool) serves the whole process. Cancellation is by drop:
//! dropping a [`ChatStream`] closes its HTTP connection, so the server stops generating.
//! Timeouts other than connecting, fallbacks and retries are the engine's job, not this module's.

mod ollama;
mod openai;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;

use crate::config::{Endpoint, EndpointKind};

/// A message of a chat.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// What to ask a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    /// Ollama `keep_alive` ("30m", "-1", "0"); ignored by OpenAI-compatible servers.
    pub keep_alive: Option<String>,
    /// Context window to run the model with (Ollama `options.num_ctx`): fixed per model so
    /// that Ollama neither reloads it per request nor truncates at its 4k default.
    pub num_ctx: Option<u32>,
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Sampling settings a client asked for (the gateway passes them through); empty otherwise.
    pub sampling: Sampling,
}

/// Sampling settings, in the dialect-neutral form both wire formats are written from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Ollama only (OpenAI-compatible servers have no such field in the API).
    pub top_k: Option<u32>,
    pub seed: Option<i64>,
    pub stop: Vec<String>,
    pub format: Option<Format>,
}

/// A constrained answer format.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// Any JSON value (Ollama `format: "json"`, OpenAI `response_format: json_object`).
    Json,
    /// JSON following this JSON Schema.
    Schema(serde_json::Value),
}

/// Fill-in-the-middle: text before and after the cursor (Ollama `/api/generate` with `suffix`).
#[derive(Debug, Clone, PartialEq)]
pub struct FimRequest {
    pub model: String,
    pub prefix: String,
    pub suffix: String,
    pub keep_alive: Option<String>,
    pub num_ctx: Option<u32>,
    pub max_tokens: Option<u32>,
}

/// Why a model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// It finished by itself.
    Stop,
    /// It hit the token limit: the answer is cut.
    Length,
    /// Anything else the server reported.
    Other,
}

/// Token counts the server reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The end of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub finish: Finish,
    pub usage: Option<Usage>,
    /// Time the server spent loading the model (Ollama `load_duration`).
    pub load_duration: Option<Duration>,
    /// Prompt tokens evaluated and the time it took (Ollama `prompt_eval_count`,
    /// `prompt_eval_duration`): the model's prompt speed.
    pub prompt_eval: Option<PromptEval>,
}

/// How fast a model read its prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PromptEval {
    pub tokens: u64,
    pub duration: Duration,
}

/// One item of an answer stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Delta(String),
    Done(Done),
}

/// Why a backend call failed. Each message names the fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("{}", unreachable_message(.kind, .endpoint, .url))]
    Unreachable {
        kind: EndpointKind,
        endpoint: String,
        url: String,
        detail: String,
    },
    #[error("model `{model}` is not available on `{endpoint}`: pull it (`ollama pull {model}`) or fix the tier's model name")]
    ModelNotFound { endpoint: String, model: String },
    #[error("`{endpoint}` answered HTTP {status}: {message}")]
    Status {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("`{endpoint}` sent a malformed stream: {detail}")]
    Malformed { endpoint: String, detail: String },
    #[error("the connection to `{endpoint}` broke: {detail}")]
    Connection { endpoint: String, detail: String },
    #[error("the API key variable `{variable}` for `{endpoint}` is not set: export it or remove api_key_env")]
    MissingKey { endpoint: String, variable: String },
    #[error("`{endpoint}` does not support {what}")]
    Unsupported {
        endpoint: String,
        what: &'static str,
    },
}

fn unreachable_message(kind: &EndpointKind, endpoint: &str, url: &str) -> String {
    match kind {
        EndpointKind::Ollama if endpoint == crate::config::DEFAULT_ENDPOINT => format!(
            "Ollama is not reachable at {} — start it with `ollama serve` or set OLLAMA_HOST",
            url.trim_end_matches('/')
        ),
        EndpointKind::Ollama => format!(
            "Ollama endpoint `{endpoint}` is not reachable at {} — start it or fix [endpoints.{endpoint}] url",
            url.trim_end_matches('/')
        ),
        EndpointKind::Openai => format!(
            "the OpenAI-compatible server `{endpoint}` is not reachable at {} — start it or fix [endpoints.{endpoint}] url",
            url.trim_end_matches('/')
        ),
    }
}

impl Error {
    /// A short label for logs and statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Unreachable { .. } => "unreachable",
            Error::ModelNotFound { .. } => "model not found",
            Error::Status { .. } => "http status",
            Error::Malformed { .. } => "malformed stream",
            Error::Connection { .. } => "connection broken",
            Error::MissingKey { .. } => "missing key",
            Error::Unsupported { .. } => "unsupported",
        }
    }
}

/// An endpoint with its configured name.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub name: &'a str,
    pub endpoint: &'a Endpoint,
}

/// A model present on an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelEntry {
    pub name: String,
    /// Size on disk in MB, where the server says.
    pub size_mb: Option<u64>,
}

/// A model loaded into memory (Ollama `/api/ps`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadedEntry {
    pub name: String,
    pub size_mb: u64,
    pub vram_mb: u64,
    /// When Ollama will unload it (RFC 3339), if it says.
    pub expires_at: Option<String>,
}

/// What `/api/show` tells about a model.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelInfo {
    pub context_length: Option<u64>,
    pub capabilities: Vec<String>,
}

/// The process's HTTP client. Clones share one connection pool.
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<LazyHttp>,
}

/// Built on first use: setting up TLS (the root certificate store) is a measurable share of the
/// language server's start-up, and `initialize` needs no model server.
#[derive(Debug)]
struct LazyHttp {
    connect_timeout: Duration,
    http: OnceLock<reqwest::Client>,
}

/// Longest time a metadata request (version, tags, ps, show, models) may take: these feed the
/// status bar and must never hold anything up.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

impl Client {
    /// One client for the process. `connect_timeout` bounds TCP connection setup.
    pub fn new(connect_timeout: Duration) -> Client {
        Client {
            shared: Arc::new(LazyHttp {
                connect_timeout,
                http: OnceLock::new(),
            }),
        }
    }

    fn http(&self) -> &reqwest::Client {
        let connect_timeout = self.shared.connect_timeout;
        self.shared.http.get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(connect_timeout)
                // Local-first: a proxy from the environment must not see prompts meant for a
                // loopback server.
                .no_proxy()
                .tcp_nodelay(true)
                .pool_idle_timeout(Duration::from_secs(90))
                .build()
                .unwrap_or_else(|_| reqwest::Client::new())
        })
    }

    /// Starts a streaming chat; returns once the server accepted the request (status checked).
    pub async fn chat(
        &self,
        target: Target<'_>,
        request: &ChatRequest,
    ) -> Result<ChatStream, Error> {
        let (url, body, dialect) = match target.endpoint.kind {
            EndpointKind::Ollama => (
                join(target, "api/chat"),
                ollama::chat_body(request),
                Dialect::OllamaChat,
            ),
            EndpointKind::Openai => (
                join(target, "chat/completions"),
                openai::chat_body(request),
                Dialect::OpenaiSse,
            ),
        };
        let response = self.post(target, &url, &body, None).await?;
        let response = check_status(target, &request.model, response).await?;
        Ok(ChatStream::new(target.name, dialect, response))
    }

    /// Starts a streaming fill-in-the-middle completion (Ollama only).
    pub async fn fill_in_middle(
        &self,
        target: Target<'_>,
        request: &FimRequest,
    ) -> Result<ChatStream, Error> {
        if target.endpoint.kind != EndpointKind::Ollama {
            return Err(Error::Unsupported {
                endpoint: target.name.to_string(),
                what: "fill-in-the-middle (/api/generate with suffix)",
            });
        }
        let url = join(target, "api/generate");
        let response = self
            .post(target, &url, &ollama::generate_body(request), None)
            .await?;
        let response = check_status(target, &request.model, response).await?;
        Ok(ChatStream::new(
            target.name,
            Dialect::OllamaGenerate,
            response,
        ))
    }

    /// The server's version (Ollama `/api/version`) or, for OpenAI-compatible servers, the
    /// number of models it serves as a liveness check.
    pub async fn version(&self, target: Target<'_>) -> Result<String, Error> {
        match target.endpoint.kind {
            EndpointKind::Ollama => {
                let v: serde_json::Value =
                    self.get_json(target, &join(target, "api/version")).await?;
                Ok(v["version"].as_str().unwrap_or("unknown").to_string())
            }
            EndpointKind::Openai => {
                let models = self.models(target).await?;
                Ok(format!("openai-compatible, {} models", models.len()))
            }
        }
    }

    /// Models the endpoint has (`/api/tags` or `/v1/models`).
    pub async fn models(&self, target: Target<'_>) -> Result<Vec<ModelEntry>, Error> {
        match target.endpoint.kind {
            EndpointKind::Ollama => {
                let v = self.get_json(target, &join(target, "api/tags")).await?;
                Ok(ollama::parse_tags(&v))
            }
            EndpointKind::Openai => {
                let v = self.get_json(target, &join(target, "models")).await?;
                Ok(openai::parse_models(&v))
            }
        }
    }

    /// Models loaded in memory (Ollama `/api/ps`); OpenAI-compatible servers do not say, and
    /// answer an empty list.
    pub async fn loaded(&self, target: Target<'_>) -> Result<Vec<LoadedEntry>, Error> {
        match target.endpoint.kind {
            EndpointKind::Ollama => {
                let v = self.get_json(target, &join(target, "api/ps")).await?;
                Ok(ollama::parse_ps(&v))
            }
            EndpointKind::Openai => Ok(Vec::new()),
        }
    }

    /// Loads a model without generating anything (Ollama: `/api/generate` with no prompt and a
    /// `keep_alive`), for pre-warming. Returns once the server says the model is loaded; dropping
    /// the future closes the request; `timeout` bounds it. OpenAI-compatible servers cannot be
    /// told to load.
    pub async fn preload(
        &self,
        target: Target<'_>,
        model: &str,
        keep_alive: &str,
        timeout: Duration,
    ) -> Result<(), Error> {
        if target.endpoint.kind != EndpointKind::Ollama {
            return Err(Error::Unsupported {
                endpoint: target.name.to_string(),
                what: "loading a model ahead of a request",
            });
        }
        let url = join(target, "api/generate");
        let response = self
            .post(
                target,
                &url,
                &ollama::preload_body(model, keep_alive),
                Some(timeout),
            )
            .await?;
        let response = check_status(target, model, response).await?;
        // The answer is one small JSON object (`done_reason: "load"`); read it so the
        // connection goes back to the pool.
        let _ = response.bytes().await;
        Ok(())
    }

    /// Context length and capabilities of a model (Ollama `/api/show`).
    pub async fn show(&self, target: Target<'_>, model: &str) -> Result<ModelInfo, Error> {
        if target.endpoint.kind != EndpointKind::Ollama {
            return Err(Error::Unsupported {
                endpoint: target.name.to_string(),
                what: "/api/show",
            });
        }
        let body = serde_json::json!({ "model": model });
        let url = join(target, "api/show");
        let response = self
            .post(target, &url, &body, Some(METADATA_TIMEOUT))
            .await?;
        let response = check_status(target, model, response).await?;
        let v = json_body(target, &url, response).await?;
        Ok(ollama::parse_show(&v))
    }

    /// Embeddings of `inputs` (Ollama `/api/embed`), one vector per input, in order. Bounded
    /// by `timeout`: embeddings refine a ranking and must never hold a request up for long.
    pub async fn embed(
        &self,
        target: Target<'_>,
        model: &str,
        inputs: &[String],
        timeout: Duration,
    ) -> Result<Vec<Vec<f32>>, Error> {
        if target.endpoint.kind != EndpointKind::Ollama {
            return Err(Error::Unsupported {
                endpoint: target.name.to_string(),
                what: "/api/embed",
            });
        }
        let url = join(target, "api/embed");
        let response = self
            .post(
                target,
                &url,
                &ollama::embed_body(model, inputs),
                Some(timeout),
            )
            .await?;
        let response = check_status(target, model, response).await?;
        let v: serde_json::Value = response.json().await.map_err(|e| Error::Malformed {
            endpoint: target.name.to_string(),
            detail: format!("/api/embed: {e}"),
        })?;
        ollama::parse_embed(&v, inputs.len()).map_err(|detail| Error::Malformed {
            endpoint: target.name.to_string(),
            detail: format!("/api/embed: {detail}"),
        })
    }

    async fn post(
        &self,
        target: Target<'_>,
        url: &str,
        body: &serde_json::Value,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, Error> {
        let mut request = self.http().post(url).json(body);
        if let Some(t) = timeout {
            request = request.timeout(t);
        }
        request = authorise(target, request)?;
        request.send().await.map_err(|e| transport_error(target, e))
    }

    async fn get_json(&self, target: Target<'_>, url: &str) -> Result<serde_json::Value, Error> {
        let request = authorise(target, self.http().get(url).timeout(METADATA_TIMEOUT))?;
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(target, e))?;
        let response = check_status(target, "", response).await?;
        json_body(target, url, response).await
    }
}

/// Largest metadata answer read (`/api/tags`, `/api/ps`, `/api/show`, `/v1/models`): a real one
/// is a few KB even with hundreds of models; a lying server must not fill the memory.
pub const MAX_METADATA_BODY: usize = 8 * 1024 * 1024;

/// Largest error body read for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Reads at most `limit` bytes of a body; `Err(read)` when it is longer.
async fn body_limited(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Result<Vec<u8>, usize>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(Err(body.len() + chunk.len()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(body))
}

/// A JSON metadata answer, bounded in size.
async fn json_body(
    target: Target<'_>,
    url: &str,
    mut response: reqwest::Response,
) -> Result<serde_json::Value, Error> {
    let malformed = |detail: String| Error::Malformed {
        endpoint: target.name.to_string(),
        detail,
    };
    let body = match body_limited(&mut response, MAX_METADATA_BODY).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            return Err(malformed(format!(
                "{url}: the answer is larger than {} MB",
                MAX_METADATA_BODY / (1024 * 1024)
            )))
        }
        Err(e) => return Err(transport_error(target, e)),
    };
    serde_json::from_slice(&body).map_err(|e| {
        malformed(format!(
            "{url}: not JSON ({e}): {}",
            crate::analyze::signals::prefix(&String::from_utf8_lossy(&body), 80)
        ))
    })
}

/// Adds the bearer key, read from the variable the endpoint names. The key goes into the header
/// only: never into a log, an error or a prompt.
fn authorise(
    target: Target<'_>,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::RequestBuilder, Error> {
    let Some(variable) = &target.endpoint.api_key_env else {
        return Ok(request);
    };
    match std::env::var(variable) {
        Ok(key) if !key.is_empty() => Ok(request.bearer_auth(key)),
        _ => Err(Error::MissingKey {
            endpoint: target.name.to_string(),
            variable: variable.clone(),
        }),
    }
}

/// `base` + `path`, keeping a base path (`http://host/v1` + `models` → `http://host/v1/models`).
fn join(target: Target<'_>, path: &str) -> String {
    let base = target.endpoint.url.as_str().trim_end_matches('/');
    format!("{base}/{path}")
}

fn transport_error(target: Target<'_>, e: reqwest::Error) -> Error {
    let detail = error_chain(&e);
    if e.is_connect() || (e.is_timeout() && !e.is_body()) {
        Error::Unreachable {
            kind: target.endpoint.kind,
            endpoint: target.name.to_string(),
            url: target.endpoint.url.to_string(),
            detail,
        }
    } else {
        Error::Connection {
            endpoint: target.name.to_string(),
            detail,
        }
    }
}

/// The innermost cause of an error, which is the readable one ("connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// Turns an error status into a typed error, reading the server's own message.
async fn check_status(
    target: Target<'_>,
    model: &str,
    response: reqwest::Response,
) -> Result<reqwest::Response, Error> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let mut response = response;
    let body = match body_limited(&mut response, MAX_ERROR_BODY).await {
        Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => String::new(),
    };
    let message = server_message(&body);
    let lower = message.to_lowercase();
    let not_found = status == reqwest::StatusCode::NOT_FOUND
        && (lower.contains("model")
            || lower.contains("not found")
            || body.contains("model_not_found"));
    if not_found && !model.is_empty() {
        return Err(Error::ModelNotFound {
            endpoint: target.name.to_string(),
            model: model.to_string(),
        });
    }
    Err(Error::Status {
        endpoint: target.name.to_string(),
        status: status.as_u16(),
        message,
    })
}

/// `{"error": "…"}` (Ollama), `{"error": {"message": "…"}}` (OpenAI), or the body itself.
fn server_message(body: &str) -> String {
    let text = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => match &v["error"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => o
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or_default()
                .to_string(),
            _ => body.to_string(),
        },
        Err(_) => body.to_string(),
    };
    let text = text.trim();
    let text = crate::analyze::signals::prefix(text, 300);
    if text.is_empty() {
        "no message".to_string()
    } else {
        text.to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dialect {
    OllamaChat,
    OllamaGenerate,
    OpenaiSse,
}

/// A streaming answer. Dropping it closes the connection.
pub struct ChatStream {
    endpoint: String,
    dialect: Dialect,
    response: reqwest::Response,
    buffer: Vec<u8>,
    /// How much of `buffer` is known to hold no newline (so a long line is scanned once).
    scanned: usize,
    pending: std::collections::VecDeque<Event>,
    /// Set once a `Done` was produced; later bytes are ignored.
    finished: bool,
    /// OpenAI streams send the finish reason and usage in separate chunks before `[DONE]`.
    openai_finish: Option<Finish>,
    openai_usage: Option<Usage>,
}

/// Longest line accepted in a stream: a server that never sends a newline must not grow the
/// buffer without bound.
const MAX_LINE: usize = 4 * 1024 * 1024;

impl ChatStream {
    fn new(endpoint: &str, dialect: Dialect, response: reqwest::Response) -> ChatStream {
        ChatStream {
            endpoint: endpoint.to_string(),
            dialect,
            response,
            buffer: Vec::new(),
            scanned: 0,
            pending: std::collections::VecDeque::new(),
            finished: false,
            openai_finish: None,
            openai_usage: None,
        }
    }

    /// The next event; `None` after `Done`. A stream that ends without `Done` is an error.
    pub async fn next(&mut self) -> Option<Result<Event, Error>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            if let Some(pos) = self.buffer[self.scanned..]
                .iter()
                .position(|b| *b == b'\n')
                .map(|p| p + self.scanned)
            {
                let line: Vec<u8> = self.buffer.drain(..=pos).collect();
                self.scanned = 0;
                if let Err(e) = self.parse_line(&line[..line.len() - 1]) {
                    self.finished = true;
                    return Some(Err(e));
                }
                continue;
            }
            self.scanned = self.buffer.len();
            if self.buffer.len() > MAX_LINE {
                self.finished = true;
                // Its memory goes now, not when the stream is dropped.
                self.buffer = Vec::new();
                return Some(Err(self.malformed("a line longer than 4 MB")));
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buffer.extend_from_slice(&bytes),
                Ok(None) => {
                    // The body ended: parse a last line without newline, then insist on Done.
                    if !self.buffer.is_empty() {
                        let line = std::mem::take(&mut self.buffer);
                        self.scanned = 0;
                        if let Err(e) = self.parse_line(&line) {
                            self.finished = true;
                            return Some(Err(e));
                        }
                        continue;
                    }
                    self.finished = true;
                    return Some(Err(
                        self.malformed("the stream ended before the model finished")
                    ));
                }
                Err(e) => {
                    self.finished = true;
                    return Some(Err(Error::Connection {
                        endpoint: self.endpoint.clone(),
                        detail: error_chain(&e),
                    }));
                }
            }
        }
    }

    /// After `Done`: reads what is left of the body (briefly), so the connection goes back to
    /// the pool instead of being closed and opened again for the next request.
    pub async fn finish(mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(50), async {
            while let Ok(Some(_)) = self.response.chunk().await {}
        })
        .await;
    }

    fn parse_line(&mut self, line: &[u8]) -> Result<(), Error> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let text =
            std::str::from_utf8(line).map_err(|_| self.malformed("a line is not valid UTF-8"))?;
        let parsed = match self.dialect {
            Dialect::OllamaChat => ollama::parse_chat_line(text),
            Dialect::OllamaGenerate => ollama::parse_generate_line(text),
            Dialect::OpenaiSse => {
                openai::parse_sse_line(text, &mut self.openai_finish, &mut self.openai_usage)
            }
        };
        match parsed {
            Ok(events) => {
                for event in events {
                    if matches!(event, Event::Done(_)) {
                        self.finished = true;
                    }
                    self.pending.push_back(event);
                }
                Ok(())
            }
            Err(ParseError::Malformed(detail)) => Err(self.malformed(&detail)),
            Err(ParseError::Server(message)) => Err(Error::Status {
                endpoint: self.endpoint.clone(),
                status: 200,
                message: format!("error in stream: {message}"),
            }),
        }
    }

    fn malformed(&self, detail: &str) -> Error {
        Error::Malformed {
            endpoint: self.endpoint.clone(),
            detail: detail.to_string(),
        }
    }
}

/// Why one stream line could not be used.
#[derive(Debug, PartialEq)]
enum ParseError {
    Malformed(String),
    /// The server reported an error inside the stream.
    Server(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_in_both_dialects() {
        assert_eq!(
            server_message(r#"{"error":"model 'x' not found"}"#),
            "model 'x' not found"
        );
        assert_eq!(
            server_message(r#"{"error":{"message":"bad request","type":"x"}}"#),
            "bad request"
        );
        assert_eq!(server_message("plain text"), "plain text");
        assert_eq!(server_message(""), "no message");
        assert_eq!(server_message(&"é".repeat(400)).len(), 300);
    }

    /// The parsers under random and mutated input (seeded): never a panic; sizes and context
    /// lengths always clamped.
    #[test]
    fn parsers_survive_random_and_mutated_input() {
        let seeds = [
            r#"{"message":{"role":"assistant","content":"Hi"},"done":false}"#,
            r#"{"message":{"content":""},"done":true,"done_reason":"length","prompt_eval_count":5,"eval_count":7,"load_duration":2000000000}"#,
            r#"{"response":"fn","done":false}"#,
            r#"{"error":"out of memory"}"#,
            r#"data: {"choices":[{"delta":{"content":"Hel"},"finish_reason":null}]}"#,
            r#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
            "data: [DONE]",
            ": keep-alive",
            r#"{"models":[{"name":"a","size":3221225472,"size_vram":2147483648,"expires_at":"x"}]}"#,
            r#"{"model_info":{"general.architecture":"llama","llama.context_length":131072},"capabilities":["insert"]}"#,
            r#"{"data":[{"id":"m","object":"model"}]}"#,
        ];
        let hostile = [
            "-1",
            "1e308",
            "-1e308",
            "18446744073709551615",
            "18446744073709551616",
            "1.5",
            "null",
            "true",
            r#""s""#,
            "[]",
            "{}",
            r#""\ud800""#,
            "[[[[[[[[]]]]]]]]",
            "-0",
        ];
        let mut rng = fastrand::Rng::with_seed(12);
        for _ in 0..40_000 {
            let mut line = seeds[rng.usize(..seeds.len())].to_string();
            for _ in 0..rng.usize(1..4) {
                match rng.u32(0..4) {
                    // A number or literal replaced by a hostile value.
                    0 => {
                        let digits: Vec<usize> = line
                            .char_indices()
                            .filter(|(_, c)| c.is_ascii_digit())
                            .map(|(i, _)| i)
                            .collect();
                        if let Some(&at) = digits.get(rng.usize(..digits.len().max(1))) {
                            let end = line[at..]
                                .find(|c: char| !c.is_ascii_digit())
                                .map_or(line.len(), |e| at + e);
                            line.replace_range(at..end, hostile[rng.usize(..hostile.len())]);
                        }
                    }
                    1 if !line.is_empty() => {
                        let at = rng.usize(..line.len());
                        if line.is_char_boundary(at) {
                            line.truncate(at);
                        }
                    }
                    2 => {
                        let at = rng.usize(..=line.len());
                        if line.is_char_boundary(at) {
                            line.insert(at, ['"', '{', '}', ',', ':', '\\', 'é'][rng.usize(..7)]);
                        }
                    }
                    _ => line = line.replace("\"size\"", "\"size_vram\""),
                }
            }
            let _ = ollama::parse_chat_line(&line);
            let _ = ollama::parse_generate_line(&line);
            let (mut finish, mut usage) = (None, None);
            let _ = openai::parse_sse_line(&line, &mut finish, &mut usage);
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                for entry in ollama::parse_ps(&v) {
                    assert!(
                        entry.size_mb == 0 || entry.vram_mb <= entry.size_mb,
                        "{line}"
                    );
                }
                let info = ollama::parse_show(&v);
                assert!(info
                    .context_length
                    .is_none_or(|n| (1..=ollama::MAX_CONTEXT_LENGTH).contains(&n)));
                let _ = ollama::parse_tags(&v);
                let _ = openai::parse_models(&v);
            }
        }
    }

    #[test]
    fn unreachable_messages_name_the_fix() {
        let msg = unreachable_message(&EndpointKind::Ollama, "ollama", "http://127.0.0.1:11434/");
        assert_eq!(
            msg,
            "Ollama is not reachable at http://127.0.0.1:11434 — start it with `ollama serve` or set OLLAMA_HOST"
        );
        let msg = unreachable_message(&EndpointKind::Openai, "vllm", "http://h:8000/v1");
        assert!(msg.contains("[endpoints.vllm] url"));
    }
}
