//! OpenAI's API as the gateway serves it: `/v1/chat/completions` (server-sent events or one
//! object) and `/v1/models`. The chunk that carries `finish_reason` (and the usage chunk, when
//! `stream_options.include_usage` asks for one) has a `triage` object besides the standard
//! fields; a failure after the first token is an `error` event, which OpenAI's clients raise.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::models;
use super::ollama::triage_object;
use super::pump::{Mode, Step};
use super::{Answered, ApiError, Dialect, Routed, Shared};
use crate::backend::{Finish, Format, Message, Role, Sampling};
use crate::engine::{self, Answer, Conversation};

const D: Dialect = Dialect::Openai;

#[derive(Debug, Deserialize)]
pub(crate) struct CompletionBody {
    model: String,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    #[serde(default, deserialize_with = "super::whole::opt_u64")]
    max_tokens: Option<u64>,
    #[serde(default, deserialize_with = "super::whole::opt_u64")]
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    #[serde(default, deserialize_with = "super::whole::opt_i64")]
    seed: Option<i64>,
    stop: Option<Stop>,
    response_format: Option<Value>,
    #[serde(default, deserialize_with = "super::whole::opt_u64")]
    n: Option<u64>,
    tools: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InMessage {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

fn role(name: &str) -> Result<Role, ApiError> {
    match name {
        "system" | "developer" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        "tool" | "function" => Err(ApiError::bad_request(
            D,
            "tool messages are not supported by the triage gateway: send the conversation without tools",
        )),
        other => Err(ApiError::bad_request(
            D,
            format!("unknown message role `{other}`: use system, developer, user or assistant"),
        )),
    }
}

fn text(content: Option<&Content>) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(t)) => Ok(t.clone()),
        Some(Content::Parts(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => out.push_str(t),
                    ("text", None) => {}
                    (other, _) => {
                        return Err(ApiError::bad_request(
                            D,
                            format!("content parts of type `{other}` are not supported by the triage gateway: send text"),
                        ))
                    }
                }
            }
            Ok(out)
        }
    }
}

/// `response_format`: `text`, `json_object`, or `json_schema` with its `schema`.
fn format(value: &Option<Value>) -> Result<Option<Format>, ApiError> {
    let Some(v) = value.as_ref().filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    if v.get("json_schema").is_some_and(|s| !s.is_object()) {
        return Err(ApiError::bad_request(
            D,
            "`response_format.json_schema` must be an object",
        ));
    }
    match v["type"].as_str() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Format::Json)),
        Some("json_schema") => Ok(Some(Format::Schema(v["json_schema"]["schema"].clone()))),
        _ => Err(ApiError::bad_request(
            D,
            "`response_format.type` must be text, json_object or json_schema",
        )),
    }
}

pub(crate) async fn chat_completions(
    State(gateway): State<Shared>,
    body: Result<Json<CompletionBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|r| ApiError::from_rejection(D, r))?;
    if body.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request(
            D,
            "`n` other than 1 is not supported by the triage gateway: ask once per answer",
        ));
    }
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
        messages.push(Message {
            role: role(&m.role)?,
            content: text(m.content.as_ref())?,
        });
    }
    if !messages.iter().any(|m| super::has_text(&m.content)) {
        return Err(ApiError::bad_request(
            D,
            "`messages` has no text: send at least one message with content",
        ));
    }
    let sampling = Sampling {
        temperature: body.temperature,
        top_p: body.top_p,
        top_k: None,
        seed: body.seed,
        stop: match body.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        },
        format: format(&body.response_format)?,
    };
    let max_tokens = body
        .max_completion_tokens
        .or(body.max_tokens)
        .filter(|n| *n > 0)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    let request = engine::Request {
        prompt: super::routing_prompt(&messages),
        conversation: Some(Conversation {
            messages,
            sampling,
            max_tokens,
        }),
        ..engine::Request::default()
    };
    let mode = if body.stream {
        Mode::Stream
    } else {
        Mode::Whole
    };
    let include_usage = body.stream_options.is_some_and(|o| o.include_usage);
    let id = completion_id();
    let created = super::unix_now();
    match super::answer(&gateway, &body.model, request, mode, D).await? {
        Answered::Whole(answer) => {
            let value = json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": answer.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text},
                    "finish_reason": finish_reason(&answer),
                    "logprobs": null,
                }],
                "usage": usage(&answer),
                "triage": triage_object(&answer),
            });
            Ok(super::json_response(value, &Routed::of_answer(&answer)))
        }
        Answered::Stream { pump, routed } => {
            let model = routed
                .as_ref()
                .map_or_else(|| body.model.clone(), |r| r.model.clone());
            let chunk = move |choices: Value| {
                let mut v = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                                   "model": model, "choices": choices});
                if include_usage {
                    v["usage"] = Value::Null;
                }
                v
            };
            let mut first = true;
            let events = pump.map(move |step| {
                let mut out = String::new();
                let mut event = |v: &Value| {
                    out.push_str("data: ");
                    out.push_str(&v.to_string());
                    out.push_str("\n\n");
                };
                match step {
                    Step::Delta(text) => {
                        let delta = if first {
                            json!({"role": "assistant", "content": text})
                        } else {
                            json!({"content": text})
                        };
                        first = false;
                        event(&chunk(
                            json!([{"index": 0, "delta": delta, "finish_reason": null}]),
                        ));
                    }
                    Step::Done(Ok(answer)) => {
                        let delta = if first {
                            json!({"role": "assistant", "content": ""})
                        } else {
                            json!({})
                        };
                        let mut last = chunk(json!([{"index": 0, "delta": delta,
                                                     "finish_reason": finish_reason(&answer)}]));
                        last["triage"] = triage_object(&answer);
                        event(&last);
                        if include_usage {
                            let mut u = chunk(json!([]));
                            u["usage"] = usage(&answer);
                            u["triage"] = triage_object(&answer);
                            event(&u);
                        }
                        out.push_str("data: [DONE]\n\n");
                    }
                    Step::Done(Err(e)) => event(&error_event(&e)),
                }
                Ok::<_, Infallible>(Bytes::from(out))
            });
            Ok(super::stream_response(
                "text/event-stream",
                routed.as_ref(),
                Body::from_stream(events),
            ))
        }
    }
}

fn finish_reason(a: &Answer) -> &'static str {
    match a.finish {
        Some(Finish::Length) => "length",
        _ => "stop",
    }
}

fn usage(a: &Answer) -> Value {
    json!({
        "prompt_tokens": a.usage.prompt_tokens,
        "completion_tokens": a.usage.completion_tokens,
        "total_tokens": a.usage.prompt_tokens + a.usage.completion_tokens,
    })
}

fn error_event(e: &engine::Error) -> Value {
    let (message, triage) = match e {
        engine::Error::Failed {
            message,
            partial: Some(p),
            ..
        } => (message.as_str(), triage_object(p)),
        engine::Error::Failed {
            message, fallbacks, ..
        } => (message.as_str(), json!({"fallbacks": fallbacks})),
        engine::Error::Input(message) | engine::Error::Busy { message, .. } => {
            (message.as_str(), json!({}))
        }
    };
    json!({"error": {"message": message, "type": "server_error", "param": null, "code": null},
           "triage": triage})
}

fn completion_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "chatcmpl-triage-{nanos:x}-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The routed names, then each real model once.
pub(crate) async fn models(State(gateway): State<Shared>) -> Json<Value> {
    let mut data: Vec<Value> = models::routed_names()
        .iter()
        .map(|n| json!({"id": n, "object": "model", "created": 0, "owned_by": "triage"}))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for listing in gateway.catalog.listings(&gateway.engine).await.iter() {
        for m in listing.models.iter().flatten() {
            if seen.insert(crate::vram::canonical_model_name(&m.name)) {
                data.push(json!({"id": m.name, "object": "model", "created": 0,
                                 "owned_by": listing.endpoint}));
            }
        }
    }
    Json(json!({"object": "list", "data": data}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_parts_and_formats() {
        let parts: Content = serde_json::from_value(
            json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
        )
        .expect("parts");
        assert_eq!(text(Some(&parts)).ok().as_deref(), Some("ab"));
        let image: Content =
            serde_json::from_value(json!([{"type": "image_url", "image_url": {"url": "x"}}]))
                .expect("parts");
        assert!(text(Some(&image)).is_err());
        assert_eq!(
            format(&Some(json!({"type": "json_object"}))).ok(),
            Some(Some(Format::Json))
        );
        assert_eq!(format(&Some(json!({"type": "text"}))).ok(), Some(None));
        assert!(format(&Some(json!({"type": "xml"}))).is_err());
        assert_eq!(role("developer").ok(), Some(Role::System));
        assert!(completion_id().starts_with("chatcmpl-"));
    }
}
