//! The HTTP gateway (`triage gateway`): the engine served to tools that speak Ollama's or
//! OpenAI's API (Open WebUI, Continue, aider, the `ollama` and `openai` client libraries), with
//! the model names `auto` (routed), `auto:fast|coder|heavy` (a forced tier) and real model names
//! (passed through to the endpoint that has them), plus triage's own `/health`, `/status`,
//! `/route` and the OpenAPI document at `/openapi.json`.
//!
//! Owns the wire types of both dialects (`ollama.rs`, `openai.rs`), model-name resolution
//! (`models.rs`), the bridge from the engine's deltas to a response body with backpressure and
//! cancellation by drop (`pump.rs`), bearer-token checks, body limits and errors in each
//! dialect's shape. It makes no routing decision: the engine does. No endpoint runs a command or
//! reads a file.

mod models;
mod ollama;
mod openai;
mod openapi;
mod own;
mod pump;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::config::{Config, Tier};
use crate::engine::{self, Engine};
use crate::route::{Candidate, Decision};
use crate::vram::{Monitor, Snapshot};

pub use models::Want;
use pump::{Mode, Pump};

/// The default address: loopback, one port above Ollama's.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:11435";

/// Largest request body accepted. Prompts are limited to 1 MB and selections to 8 MB
/// elsewhere; a conversation carries its history, so the whole body may be as large as the
/// largest selection.
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// How old a VRAM snapshot may be when a request is routed (it is refreshed every second).
const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(3);

/// How `triage gateway` was asked to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    /// The bearer token every request must carry, read from the variable `--token-env` names.
    pub token: Option<Token>,
    /// That variable's name, for the start-up line.
    pub token_env: Option<String>,
}

/// A bearer token. Its text never enters a log or an error.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// Compares in constant time in the token's contents, so the answer's timing does not tell
    /// how much of a guess was right.
    fn matches(&self, presented: &str) -> bool {
        bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// Checks the command line: the address parses; a non-loopback address needs a token; a named
/// token variable must hold a token. `lookup` reads the environment (a parameter for tests).
pub fn options(
    listen: &str,
    token_env: Option<&str>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Options, String> {
    let addr: SocketAddr = listen.trim().parse().map_err(|_| {
        format!("--listen `{listen}` is not an address: give IP:PORT, e.g. {DEFAULT_LISTEN}")
    })?;
    let token = match token_env {
        Some(name) => match lookup(name).map(|t| t.trim().to_string()) {
            Some(t) if !t.is_empty() => Some(Token(t)),
            _ => {
                return Err(format!(
                    "--token-env {name}: the variable `{name}` is not set or empty: export the bearer token in it"
                ))
            }
        },
        None => None,
    };
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(format!(
            "--listen {addr} is not a loopback address: anyone on the network could use your models, so give a bearer token with --token-env NAME (or listen on 127.0.0.1)"
        ));
    }
    Ok(Options {
        listen: addr,
        token,
        token_env: token_env.map(str::to_string),
    })
}

/// What every handler shares.
pub(crate) struct Gateway {
    pub engine: Engine,
    pub monitor: Monitor,
    pub catalog: models::Catalog,
    token: Option<Token>,
}

pub(crate) type Shared = Arc<Gateway>;

impl Gateway {
    pub fn snapshot(&self) -> Snapshot {
        self.monitor.snapshot(SNAPSHOT_MAX_AGE)
    }

    pub fn config(&self) -> &Config {
        self.engine.config()
    }
}

/// Serves until SIGINT or SIGTERM. `ready` is told the bound address (port 0 picks a free one).
pub async fn serve(
    engine: Engine,
    options: Options,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    let monitor = Monitor::new(engine.config(), engine.client().clone());
    let ticker = monitor.spawn_interval(Duration::from_secs(1));
    let gateway = Arc::new(Gateway {
        engine,
        monitor,
        catalog: models::Catalog::default(),
        token: options.token.clone(),
    });
    let saver = tokio::spawn(save_stats_every(gateway.clone(), Duration::from_secs(30)));
    ready(addr);
    let app = router(gateway.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = accept_loop(listener, app, stop_rx);
    let result = tokio::select! {
        r = server => r,
        () = async {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
            // Streams still open get a moment to finish, then the process ends anyway.
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => Ok(()),
    };
    ticker.abort();
    saver.abort();
    save_stats(&gateway.engine);
    result
}

/// The most a connection's write buffer holds before the body is asked for more: small, so that
/// a client that reads slowly holds the model's stream back (through the engine, which the body
/// polls) instead of having its answer pile up here as many small frames. hyper's default is
/// ~400 KB per connection; `axum::serve` does not let it be set, hence this loop.
const WRITE_BUFFER: usize = 16 * 1024;

/// Accepts connections until `stop` turns true, then lets open ones finish (graceful).
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Nagle's algorithm would hold a streamed token back for the client's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .max_buf_size(WRITE_BUFFER)
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

async fn save_stats_every(gateway: Shared, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        save_stats(&gateway.engine);
    }
}

fn save_stats(engine: &Engine) {
    if let Some(path) = engine::stats::default_path() {
        if let Err(e) = engine.stats.save(&path) {
            tracing::debug!(error = %e, path = %path.display(), "could not save statistics");
        }
    }
}

pub(crate) fn router(gateway: Shared) -> Router {
    Router::new()
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/show", post(ollama::show))
        .route("/api/version", get(ollama::version))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route("/health", get(own::health))
        .route("/status", get(own::status))
        .route("/route", post(own::route))
        .route("/openapi.json", get(openapi::document))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            gateway.clone(),
            authorise,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(gateway)
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path().to_string();
    ApiError::new(
        StatusCode::NOT_FOUND,
        Dialect::of_path(&path),
        format!("no endpoint {path}: see /openapi.json for what the gateway serves"),
    )
    .into_response()
}

/// With a token configured, every request must carry `Authorization: Bearer <token>`.
async fn authorise(State(gateway): State<Shared>, request: Request, next: Next) -> Response {
    let Some(token) = &gateway.token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(p) if token.matches(p) => next.run(request).await,
        _ => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                Dialect::of_path(request.uri().path()),
                "a bearer token is required: send `Authorization: Bearer <token>` with the token the gateway was started with",
            )
            .into_response();
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

/// Which API's error shape an answer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `{"error": "…"}` (Ollama's, and triage's own endpoints).
    Ollama,
    /// `{"error": {"message", "type", "param", "code"}}`.
    Openai,
}

impl Dialect {
    fn of_path(path: &str) -> Dialect {
        if path.starts_with("/v1/") {
            Dialect::Openai
        } else {
            Dialect::Ollama
        }
    }
}

/// An error answer in the dialect's shape, with the routing headers when a decision was made.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub dialect: Dialect,
    pub message: String,
    /// OpenAI's `error.code` (`model_not_found`).
    pub code: Option<&'static str>,
    pub retry_after_s: Option<u64>,
    pub routed: Option<Box<Routed>>,
    /// What was tried before the failure: `[{tier, model, endpoint, error}]`.
    pub fallbacks: Vec<engine::Fallback>,
}

impl ApiError {
    pub fn new(status: StatusCode, dialect: Dialect, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            dialect,
            message: message.into(),
            code: None,
            retry_after_s: None,
            routed: None,
            fallbacks: Vec::new(),
        }
    }

    pub fn bad_request(dialect: Dialect, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, dialect, message)
    }

    /// A body that did not parse, was too large or was not JSON.
    pub fn from_rejection(dialect: Dialect, rejection: JsonRejection) -> ApiError {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                status,
                dialect,
                format!(
                    "the request body is larger than the gateway's limit of {} MB: send a shorter conversation",
                    BODY_LIMIT / (1024 * 1024)
                ),
            );
        }
        let status = match status {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => status,
            _ => StatusCode::BAD_REQUEST,
        };
        let message = match &rejection {
            JsonRejection::MissingJsonContentType(_) => {
                "the body must be JSON with `Content-Type: application/json`".to_string()
            }
            other => format!("the request body is not valid: {}", other.body_text()),
        };
        ApiError::new(status, dialect, message)
    }

    /// The engine's failure: bad input is the client's (400), failed models are the gateway's
    /// upstream (502), models at their concurrency limit are 503 with `Retry-After`.
    pub fn from_engine(dialect: Dialect, error: engine::Error, routed: Option<Routed>) -> ApiError {
        match error {
            engine::Error::Input(message) => ApiError {
                routed: routed.map(Box::new),
                ..ApiError::bad_request(dialect, message)
            },
            engine::Error::Failed {
                message, fallbacks, ..
            } => ApiError {
                routed: routed.map(Box::new),
                fallbacks,
                ..ApiError::new(StatusCode::BAD_GATEWAY, dialect, message)
            },
            // Every candidate at its concurrency limit with a full queue: the client may retry.
            engine::Error::Busy {
                message,
                retry_after_s,
            } => ApiError {
                routed: routed.map(Box::new),
                retry_after_s: Some(retry_after_s.unwrap_or(1).max(1)),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, dialect, message)
            },
        }
    }

    pub fn body(&self) -> serde_json::Value {
        let mut body = match self.dialect {
            Dialect::Ollama => json!({ "error": self.message }),
            Dialect::Openai => json!({ "error": {
                "message": self.message,
                "type": if self.status.is_server_error() { "server_error" } else { "invalid_request_error" },
                "param": null,
                "code": self.code,
            }}),
        };
        if !self.fallbacks.is_empty() {
            body["triage"] = json!({ "fallbacks": self.fallbacks });
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(r) = &self.routed {
            r.write(response.headers_mut());
        }
        if let Some(s) = self.retry_after_s {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

/// What the routing headers say: which tier and model answer, how many fallbacks were taken
/// before, and the confidence.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Routed {
    pub tier: Tier,
    pub model: String,
    pub fallbacks: usize,
    pub confidence: f32,
}

pub(crate) const TIER_HEADER: &str = "x-triage-tier";
pub(crate) const MODEL_HEADER: &str = "x-triage-model";
pub(crate) const FALLBACKS_HEADER: &str = "x-triage-fallbacks";
pub(crate) const CONFIDENCE_HEADER: &str = "x-triage-confidence";

impl Routed {
    pub fn of_answer(a: &engine::Answer) -> Routed {
        Routed {
            tier: a.tier,
            model: a.model.clone(),
            fallbacks: a.fallbacks.len(),
            confidence: a.confidence,
        }
    }

    pub fn of_decision(d: &Decision) -> Routed {
        Routed {
            tier: d.tier,
            model: d.model.clone(),
            fallbacks: 0,
            confidence: d.confidence,
        }
    }

    pub fn write(&self, headers: &mut HeaderMap) {
        let mut put = |name: &'static str, value: String| {
            // Model names come from configuration and servers: one that is no valid header
            // value is left out rather than mangled.
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        put(TIER_HEADER, self.tier.to_string());
        put(MODEL_HEADER, self.model.clone());
        put(FALLBACKS_HEADER, self.fallbacks.to_string());
        put(
            CONFIDENCE_HEADER,
            format!("{:.3}", engine::round3(self.confidence)),
        );
    }
}

/// How a request will be run: routed by the engine, or pinned to a named model's endpoints.
#[allow(clippy::large_enum_variant)] // one per request, moved once
pub(crate) enum Plan {
    Route,
    Pinned {
        analysis: crate::analyze::Analysis,
        decision: Decision,
    },
}

/// Turns the request's model name into a plan: `auto` routes, `auto:TIER` forces the tier (the
/// router still checks VRAM and keeps the fallback chain), a real name is pinned to the
/// endpoints that have it and does not fall back to other models.
pub(crate) async fn plan(
    gateway: &Gateway,
    model: &str,
    request: &mut engine::Request,
    snapshot: &Snapshot,
    dialect: Dialect,
) -> Result<Plan, ApiError> {
    let wanted = models::parse(model).map_err(|e| e.into_api(dialect))?;
    match wanted {
        Want::Auto => Ok(Plan::Route),
        Want::Tier(tier) => {
            request.force.tier = Some(tier);
            Ok(Plan::Route)
        }
        Want::Model(name) => {
            let endpoints = gateway.catalog.endpoints_for(&gateway.engine, &name).await;
            if endpoints.is_empty() {
                return Err(ApiError {
                    code: Some("model_not_found"),
                    ..ApiError::new(
                        StatusCode::NOT_FOUND,
                        dialect,
                        format!(
                            "model `{name}` not found on any endpoint: use `auto`, `auto:fast`, `auto:coder`, `auto:heavy` or a model that GET /api/tags lists"
                        ),
                    )
                });
            }
            request.force.model = Some(name.clone());
            let (analysis, mut decision) = gateway
                .engine
                .decide(request, snapshot)
                .map_err(|e| ApiError::from_engine(dialect, e, None))?;
            decision.model = name.clone();
            decision.endpoint = endpoints[0].clone();
            decision.fallbacks = endpoints[1..]
                .iter()
                .map(|endpoint| Candidate {
                    tier: decision.tier,
                    model: name.clone(),
                    endpoint: endpoint.clone(),
                })
                .collect();
            decision.reasons.push(format!(
                "model {name} named by the request: served by {} without falling back to other models",
                endpoints.join(", ")
            ));
            Ok(Plan::Pinned { analysis, decision })
        }
    }
}

/// A conversation's outcome for a handler to encode.
pub(crate) enum Answered {
    Whole(engine::Answer),
    /// The first token has arrived (or the answer was empty); the rest streams from the pump.
    Stream {
        pump: Pump,
        routed: Option<Routed>,
    },
}

/// Runs a conversation: resolves the model name, then either waits for the whole answer or,
/// for a stream, until the first token (so that a failure before it is still an HTTP error
/// status, and the routing headers know every fallback taken).
pub(crate) async fn answer(
    gateway: &Shared,
    model: &str,
    mut request: engine::Request,
    mode: Mode,
    dialect: Dialect,
) -> Result<Answered, ApiError> {
    let started = Instant::now();
    let snapshot = gateway.snapshot();
    let plan = plan(gateway, model, &mut request, &snapshot, dialect).await?;
    let mut pump = Pump::new(gateway.clone(), request, plan, snapshot, started, mode);
    match mode {
        Mode::Whole => match pump.finish().await {
            Ok(answer) => Ok(Answered::Whole(answer)),
            Err(engine::Error::Failed {
                message,
                partial: Some(partial),
                fallbacks,
            }) => Err(ApiError {
                routed: Some(Box::new(Routed::of_answer(&partial))),
                fallbacks,
                ..ApiError::new(StatusCode::BAD_GATEWAY, dialect, message)
            }),
            Err(e) => Err(ApiError::from_engine(dialect, e, pump.routed())),
        },
        Mode::Stream => {
            pump.first().await;
            let routed = pump.routed();
            match pump.failed_early() {
                Some(e) => Err(ApiError::from_engine(dialect, e, routed)),
                None => Ok(Answered::Stream { pump, routed }),
            }
        }
    }
}

/// Whether `text` has anything but whitespace. Whitespace is Unicode's (what `str::trim` and the
/// analyser use) plus U+001C–U+001F, which Python's `\s` also counts: the OpenAPI document says
/// "at least one non-whitespace character" as the pattern `\S`, and schemathesis reads patterns
/// with Python's semantics, so both sides must draw the line at the same place.
pub(crate) fn has_text(text: &str) -> bool {
    text.chars()
        .any(|c| !c.is_whitespace() && !('\u{1c}'..='\u{1f}').contains(&c))
}

/// The last user message with text (else the last message with text): what the router reads
/// of a conversation.
pub(crate) fn routing_prompt(messages: &[crate::backend::Message]) -> String {
    use crate::backend::Role;
    let with_text = || messages.iter().rev().filter(|m| has_text(&m.content));
    with_text()
        .find(|m| m.role == Role::User)
        .or_else(|| with_text().next())
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

/// A streaming response with the routing headers.
pub(crate) fn stream_response(
    content_type: &'static str,
    routed: Option<&Routed>,
    body: axum::body::Body,
) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    // Proxies must pass each chunk on as it comes.
    headers.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    if let Some(r) = routed {
        r.write(headers);
    }
    response
}

/// A JSON response with the routing headers.
pub(crate) fn json_response(value: serde_json::Value, routed: &Routed) -> Response {
    let mut response = Json(value).into_response();
    routed.write(response.headers_mut());
    response
}

/// Integers as JSON Schema counts them: `3` and `3.0` alike (clients and fuzzers send both), in
/// the target type's range; anything else is refused as serde would refuse it.
pub(crate) mod whole {
    use serde::de::{Deserializer, Error};
    use serde::Deserialize;

    /// The float path: a whole float (or an integer literal beyond the native forms, which
    /// serde_json reads as a float) within `fits`, whose bounds exclude the edge floats that a
    /// literal just outside the range rounds to.
    fn whole_float<E: Error>(n: &serde_json::Number, fits: impl Fn(f64) -> bool) -> Result<f64, E> {
        match n.as_f64() {
            Some(f) if f.fract() == 0.0 && fits(f) => Ok(f),
            Some(f) if f.fract() == 0.0 => Err(E::custom(format!("{n} is out of range"))),
            _ => Err(E::custom(format!("{n} is not a whole number"))),
        }
    }

    /// Exact for every `i64` spelled as an integer.
    pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
            return Ok(None);
        };
        if let Some(i) = n.as_i64() {
            return Ok(Some(i));
        }
        const EDGE: f64 = 9_223_372_036_854_775_808.0;
        whole_float(&n, |f| f > -EDGE && f < EDGE).map(|f| Some(f as i64))
    }

    /// Exact for every `u64` spelled as an integer.
    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
            return Ok(None);
        };
        if let Some(u) = n.as_u64() {
            return Ok(Some(u));
        }
        whole_float(&n, |f| (0.0..18_446_744_073_709_551_616.0).contains(&f))
            .map(|f| Some(f as u64))
    }

    pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        match opt_u64(d)? {
            None => Ok(None),
            Some(u) => u32::try_from(u)
                .map(Some)
                .map_err(|_| D::Error::custom(format!("{u} is out of range"))),
        }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "GOOD" => Some("s3cret-token".to_string()),
            "EMPTY" => Some("  ".to_string()),
            _ => None,
        }
    }

    #[test]
    fn loopback_needs_no_token_anything_else_does() {
        let o = options("127.0.0.1:11435", None, env).expect("loopback");
        assert!(o.token.is_none());
        assert!(options("[::1]:0", None, env).is_ok());
        let err = options("0.0.0.0:11435", None, env).expect_err("needs a token");
        assert!(err.contains("--token-env"), "{err}");
        let o = options("0.0.0.0:11435", Some("GOOD"), env).expect("token given");
        assert!(o.token.as_ref().is_some_and(|t| t.matches("s3cret-token")));
        assert!(!o.token.as_ref().is_some_and(|t| t.matches("s3cret-tokem")));
        assert!(!o.token.as_ref().is_some_and(|t| t.matches("s3cret")));
        for missing in ["EMPTY", "UNSET"] {
            let err = options("127.0.0.1:1", Some(missing), env).expect_err("no token");
            assert!(err.contains(missing), "{err}");
        }
        let err = options("localhost", None, env).expect_err("not an address");
        assert!(err.contains("IP:PORT"), "{err}");
        assert_eq!(format!("{:?}", Token("x".into())), "Token(…)");
    }

    #[test]
    fn whole_numbers_in_either_spelling() {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "whole::opt_i64")]
            i: Option<i64>,
            #[serde(default, deserialize_with = "whole::opt_u32")]
            u: Option<u32>,
        }
        let t = |v: serde_json::Value| serde_json::from_value::<T>(v).map(|t| (t.i, t.u));
        assert_eq!(t(json!({"i": -3, "u": 4})).ok(), Some((Some(-3), Some(4))));
        assert_eq!(
            t(json!({"i": -3.0, "u": 4.0})).ok(),
            Some((Some(-3), Some(4)))
        );
        assert_eq!(t(json!({"i": null})).ok(), Some((None, None)));
        assert_eq!(t(json!({"i": i64::MIN})).ok(), Some((Some(i64::MIN), None)));
        assert!(t(json!({"i": 1.5})).is_err());
        assert!(t(json!({"i": 9.3e18})).is_err());
        // A literal just below i64::MIN arrives as the float -2^63: refused.
        let below: T = serde_json::from_str(r#"{"i": -9223372036854775808}"#).expect("min");
        assert_eq!(below.i, Some(i64::MIN));
        assert!(serde_json::from_str::<T>(r#"{"i": -9223372036854775809}"#).is_err());
        assert!(t(json!({"u": -1})).is_err());
        assert!(t(json!({"u": 4_294_967_296u64})).is_err());
        assert!(t(json!({"u": "3"})).is_err());
        assert!(has_text(" a ") && !has_text(" \t\u{1f}\u{85}\u{3000}"));
    }

    #[test]
    fn errors_take_the_dialect_shape() {
        let e = ApiError::new(StatusCode::NOT_FOUND, Dialect::Openai, "nope");
        assert_eq!(e.body()["error"]["message"], "nope");
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        let e = ApiError::new(StatusCode::BAD_GATEWAY, Dialect::Ollama, "down");
        assert_eq!(e.body(), json!({"error": "down"}));
        assert_eq!(Dialect::of_path("/v1/models"), Dialect::Openai);
        assert_eq!(Dialect::of_path("/api/chat"), Dialect::Ollama);
    }
}
