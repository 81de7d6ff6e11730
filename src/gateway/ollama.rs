//! Ollama's API as the gateway serves it: `/api/chat` and `/api/generate` (streamed NDJSON by
//! default, as Ollama does, or one object with `"stream": false`), `/api/tags`, `/api/ps`,
//! `/api/show` and `/api/version`. Requests become `engine::Request`s; answers come back in
//! Ollama's shapes with a `triage` object (tier, model, endpoint, fallbacks, confidence,
//! reasons) in the final `done: true` object.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::models::{self, Want};
use super::pump::{Mode, Step};
use super::{Answered, ApiError, Dialect, Routed, Shared};
use crate::backend::{Finish, Format, Message, Role, Sampling, Target};
use crate::engine::{self, Answer, Conversation};

/// The Ollama API version whose shapes the gateway follows (clients check it for features).
pub const API_VERSION: &str = "0.12.0";

const D: Dialect = Dialect::Ollama;

#[derive(Debug, Deserialize)]
pub(crate) struct ChatBody {
    model: String,
    #[serde(default)]
    messages: Vec<InMessage>,
    /// Ollama streams unless told not to.
    stream: Option<bool>,
    #[serde(default)]
    options: Options,
    format: Option<Value>,
    tools: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InMessage {
    role: String,
    content: Option<String>,
    images: Option<Vec<Value>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Options {
    temperature: Option<f64>,
    top_p: Option<f64>,
    #[serde(default, deserialize_with = "super::whole::opt_u32")]
    top_k: Option<u32>,
    #[serde(default, deserialize_with = "super::whole::opt_i64")]
    seed: Option<i64>,
    stop: Option<Vec<String>>,
    /// -1 (no limit) and -2 (fill the window) leave the tier's `max_tokens`.
    #[serde(default, deserialize_with = "super::whole::opt_i64")]
    num_predict: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct GenerateBody {
    model: String,
    #[serde(default)]
    prompt: String,
    suffix: Option<String>,
    system: Option<String>,
    stream: Option<bool>,
    #[serde(default)]
    raw: bool,
    #[serde(default)]
    options: Options,
    format: Option<Value>,
    images: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ShowBody {
    model: Option<String>,
    /// The older name of the field.
    name: Option<String>,
}

fn role(name: &str) -> Result<Role, ApiError> {
    match name {
        "system" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        "tool" => Err(ApiError::bad_request(
            D,
            "tool messages are not supported by the triage gateway: send the conversation without tools",
        )),
        other => Err(ApiError::bad_request(
            D,
            format!("unknown message role `{other}`: use system, user or assistant"),
        )),
    }
}

fn no_images(images: &Option<Vec<Value>>) -> Result<(), ApiError> {
    match images {
        Some(i) if !i.is_empty() => Err(ApiError::bad_request(
            D,
            "images are not supported by the triage gateway: its models are text models",
        )),
        _ => Ok(()),
    }
}

/// Ollama's `format`: `"json"`, a JSON Schema object, or nothing.
fn format(value: &Option<Value>) -> Result<Option<Format>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(Format::Json)),
        Some(Value::Object(_)) => Ok(value.clone().map(Format::Schema)),
        Some(_) => Err(ApiError::bad_request(
            D,
            "`format` must be \"json\" or a JSON Schema object",
        )),
    }
}

impl Options {
    fn sampling(&self, format: Option<Format>) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            stop: self.stop.clone().unwrap_or_default(),
            format,
        }
    }

    fn max_tokens(&self) -> Option<u32> {
        self.num_predict
            .filter(|n| *n > 0)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    }
}

fn request(messages: Vec<Message>, sampling: Sampling, max_tokens: Option<u32>) -> engine::Request {
    engine::Request {
        prompt: super::routing_prompt(&messages),
        conversation: Some(Conversation {
            messages,
            sampling,
            max_tokens,
        }),
        ..engine::Request::default()
    }
}

/// Which of the two generation endpoints: their chunks differ in where the text goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Generate,
}

pub(crate) async fn chat(
    State(gateway): State<Shared>,
    body: Result<Json<ChatBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|r| ApiError::from_rejection(D, r))?;
    if body
        .tools
        .as_ref()
        .is_some_and(|t| !t.is_null() && t != &json!([]))
    {
        return Err(ApiError::bad_request(
            D,
            "tools are not supported by the triage gateway: send the request without `tools`",
        ));
    }
    let mut messages = Vec::with_capacity(body.messages.len());
    for m in &body.messages {
        no_images(&m.images)?;
        messages.push(Message {
            role: role(&m.role)?,
            content: m.content.clone().unwrap_or_default(),
        });
    }
    if !messages.iter().any(|m| super::has_text(&m.content)) {
        return Err(ApiError::bad_request(
            D,
            "`messages` has no text: send at least one message with content",
        ));
    }
    let sampling = body.options.sampling(format(&body.format)?);
    let request = request(messages, sampling, body.options.max_tokens());
    respond(&gateway, &body.model, request, body.stream, Kind::Chat).await
}

pub(crate) async fn generate(
    State(gateway): State<Shared>,
    body: Result<Json<GenerateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|r| ApiError::from_rejection(D, r))?;
    no_images(&body.images)?;
    if body.raw {
        return Err(ApiError::bad_request(
            D,
            "`raw` prompts are not supported by the triage gateway: send the prompt without `raw` (triage applies each model's template)",
        ));
    }
    if body.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request(
            D,
            "`suffix` (fill-in-the-middle) is not supported by the triage gateway: use the language server's completion, or send a prompt without suffix",
        ));
    }
    if !super::has_text(&body.prompt) {
        return Err(ApiError::bad_request(
            D,
            "`prompt` is empty: triage loads models itself, send the text to answer",
        ));
    }
    let mut messages = Vec::new();
    if let Some(system) = body.system.filter(|s| super::has_text(s)) {
        messages.push(Message {
            role: Role::System,
            content: system,
        });
    }
    messages.push(Message {
        role: Role::User,
        content: body.prompt,
    });
    let sampling = body.options.sampling(format(&body.format)?);
    let request = request(messages, sampling, body.options.max_tokens());
    respond(&gateway, &body.model, request, body.stream, Kind::Generate).await
}

async fn respond(
    gateway: &Shared,
    model: &str,
    request: engine::Request,
    stream: Option<bool>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let mode = if stream.unwrap_or(true) {
        Mode::Stream
    } else {
        Mode::Whole
    };
    match super::answer(gateway, model, request, mode, D).await? {
        Answered::Whole(answer) => {
            let mut value = done_object(kind, &answer);
            set_text(kind, &mut value, &answer.text);
            Ok(super::json_response(value, &Routed::of_answer(&answer)))
        }
        Answered::Stream { pump, routed } => {
            let model = routed
                .as_ref()
                .map_or_else(|| model.to_string(), |r| r.model.clone());
            let lines = pump.map(move |step| {
                let value = match step {
                    Step::Delta(text) => {
                        let mut v =
                            json!({"model": model, "created_at": created_at(), "done": false});
                        set_text(kind, &mut v, &text);
                        v
                    }
                    Step::Done(Ok(answer)) => done_object(kind, &answer),
                    Step::Done(Err(e)) => error_line(&e),
                };
                let mut line = value.to_string();
                line.push('\n');
                Ok::<_, Infallible>(Bytes::from(line))
            });
            Ok(super::stream_response(
                "application/x-ndjson",
                routed.as_ref(),
                Body::from_stream(lines),
            ))
        }
    }
}

fn set_text(kind: Kind, value: &mut Value, text: &str) {
    match kind {
        Kind::Chat => value["message"] = json!({"role": "assistant", "content": text}),
        Kind::Generate => value["response"] = json!(text),
    }
}

/// The final object of an answer: Ollama's counters and durations, and triage's account.
fn done_object(kind: Kind, a: &Answer) -> Value {
    let ns = |ms: f64| (ms * 1_000_000.0) as u64;
    let load = a.timings.load_ms.map_or(0, ns);
    let total = ns(a.timings.total_ms);
    let first = a.timings.first_token_ms.map_or(0, ns);
    let mut value = json!({
        "model": a.model,
        "created_at": created_at(),
        "done": true,
        "done_reason": match a.finish {
            Some(Finish::Length) => "length",
            _ => "stop",
        },
        "total_duration": total,
        "load_duration": load,
        "prompt_eval_count": a.usage.prompt_tokens,
        "eval_count": a.usage.completion_tokens,
        "eval_duration": total.saturating_sub(first),
        "triage": triage_object(a),
    });
    set_text(kind, &mut value, "");
    value
}

/// How the answer came about, for clients that look: the answer JSON of `triage ask --json`
/// without the text.
pub(crate) fn triage_object(a: &Answer) -> Value {
    let mut v = engine::answer_json(a, None);
    if let Some(map) = v.as_object_mut() {
        map.remove("text");
    }
    v
}

/// Ollama reports a failure inside a stream as a line `{"error": "…"}`.
fn error_line(e: &engine::Error) -> Value {
    match e {
        engine::Error::Failed {
            message,
            partial: Some(p),
            ..
        } => json!({"error": message, "triage": triage_object(p)}),
        engine::Error::Failed {
            message, fallbacks, ..
        } => json!({"error": message, "triage": {"fallbacks": fallbacks}}),
        engine::Error::Input(message) | engine::Error::Busy { message, .. } => {
            json!({"error": message})
        }
    }
}

/// Now, as RFC 3339 in UTC (what Ollama writes in `created_at`).
fn created_at() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        now.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn tag(name: &str, size_mb: Option<u64>, endpoint: Option<&str>, family: &str) -> Value {
    json!({
        "name": name,
        "model": name,
        "modified_at": "1970-01-01T00:00:00Z",
        "size": size_mb.unwrap_or(0) * 1024 * 1024,
        "digest": "",
        "details": {"format": "", "family": family, "families": [family], "parameter_size": "", "quantization_level": ""},
        "endpoint": endpoint,
    })
}

/// `auto`, `auto:fast|coder|heavy`, then each real model once (from the first endpoint
/// listing it).
pub(crate) async fn tags(State(gateway): State<Shared>) -> Json<Value> {
    let mut models: Vec<Value> = models::routed_names()
        .iter()
        .map(|n| tag(n, None, None, "triage"))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for listing in gateway.catalog.listings(&gateway.engine).await.iter() {
        for m in listing.models.iter().flatten() {
            if seen.insert(crate::vram::canonical_model_name(&m.name)) {
                models.push(tag(&m.name, m.size_mb, Some(&listing.endpoint), ""));
            }
        }
    }
    Json(json!({ "models": models }))
}

/// Models loaded in memory, as the VRAM monitor last saw them (refreshed every second).
pub(crate) async fn ps(State(gateway): State<Shared>) -> Json<Value> {
    let snapshot = gateway.snapshot();
    let models: Vec<Value> = snapshot
        .loaded
        .iter()
        .map(|m| {
            json!({
                "name": m.name, "model": m.name,
                "size": m.size_mb * 1024 * 1024, "size_vram": m.vram_mb * 1024 * 1024,
                "expires_at": m.expires_at, "digest": "", "details": {},
                "endpoint": m.endpoint,
            })
        })
        .collect();
    Json(json!({ "models": models }))
}

pub(crate) async fn show(
    State(gateway): State<Shared>,
    body: Result<Json<ShowBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|r| ApiError::from_rejection(D, r))?;
    let given = |n: &Option<String>| n.clone().filter(|n| super::has_text(n));
    let name = given(&body.model).or(given(&body.name)).unwrap_or_default();
    let details = |family: &str| json!({"format": "", "family": family, "families": [family], "parameter_size": "", "quantization_level": ""});
    match models::parse(&name).map_err(|e| e.into_api(D))? {
        Want::Auto | Want::Tier(_) => {
            let config = gateway.config();
            let tiers: Vec<Value> = config
                .enabled_tiers()
                .map(|t| json!({"tier": t, "model": config.tier(t).model, "endpoints": config.tier(t).endpoints}))
                .collect();
            Ok(Json(json!({
                "modelfile": "", "parameters": "", "template": "",
                "license": "",
                "details": details("triage"),
                "model_info": {"general.architecture": "triage", "triage.tiers": tiers},
                "capabilities": ["completion"],
            }))
            .into_response())
        }
        Want::Model(model) => {
            let endpoints = gateway.catalog.endpoints_for(&gateway.engine, &model).await;
            let Some(endpoint) = endpoints.first() else {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    D,
                    format!("model `{model}` not found on any endpoint"),
                ));
            };
            let config = gateway.config();
            let info = match config.endpoints.get(endpoint) {
                Some(e) => gateway
                    .engine
                    .client()
                    .show(
                        Target {
                            name: endpoint,
                            endpoint: e,
                        },
                        &model,
                    )
                    .await
                    .ok(),
                None => None,
            };
            let info = info.unwrap_or_default();
            Ok(Json(json!({
                "modelfile": "", "parameters": "", "template": "", "license": "",
                "details": details(""),
                "model_info": {"triage.endpoint": endpoint, "triage.context_length": info.context_length},
                "capabilities": if info.capabilities.is_empty() { vec!["completion".to_string()] } else { info.capabilities },
            }))
            .into_response())
        }
    }
}

pub(crate) async fn version() -> Json<Value> {
    Json(json!({"version": API_VERSION, "triage": env!("CARGO_PKG_VERSION")}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_424), (2025, 12, 2));
        assert!(created_at().ends_with('Z'));
    }

    #[test]
    fn options_become_sampling() {
        let o: Options = serde_json::from_value(
            json!({"temperature": 0.1, "num_predict": -1, "stop": ["x"], "num_ctx": 99}),
        )
        .expect("options");
        assert_eq!(o.max_tokens(), None);
        assert_eq!(o.sampling(None).stop, ["x"]);
        let big: Options = serde_json::from_value(json!({"num_predict": 1u64 << 40})).expect("o");
        assert_eq!(big.max_tokens(), Some(u32::MAX));
        assert!(format(&Some(json!("yaml"))).is_err());
        assert_eq!(format(&Some(json!("json"))).ok(), Some(Some(Format::Json)));
        assert!(role("tool").is_err() && role("robot").is_err());
    }
}
