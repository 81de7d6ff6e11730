//! The OpenAPI 3.1 document of every endpoint, served at `/openapi.json`.
//!
//! Written by hand as one `serde_json` value rather than derived (utoipa): the wire types are
//! deliberately loose — unknown fields are accepted and ignored as Ollama and OpenAI do, answers
//! are built as JSON values — so a derive would describe little beyond what is written here, at
//! the price of a proc-macro build. `schemathesis` checks this document against the running
//! gateway in CI (`tests/gateway/run_schemathesis.sh`), which is what keeps the two in step.

use axum::Json;
use serde_json::{json, Value};

/// The error answer of both dialects.
fn errors(openai: bool) -> Value {
    let schema = if openai {
        json!({"$ref": "#/components/schemas/OpenaiError"})
    } else {
        json!({"$ref": "#/components/schemas/Error"})
    };
    let response = |what: &str| json!({"description": what, "content": {"application/json": {"schema": schema}}});
    json!({
        "400": response("The request is not usable (empty, unsupported field, bad model name)."),
        "401": response("A bearer token is configured and the request did not carry it."),
        "404": response("The model is not served by any endpoint."),
        "413": response("The body is larger than 8 MB."),
        "415": response("The body is not `application/json`."),
        "502": response("Every model tried failed before answering, or the answer broke off."),
        "503": response("The model's concurrency limit and queue are full; retry after `Retry-After` seconds."),
    })
}

fn routing_headers() -> Value {
    let header = |d: &str| json!({"description": d, "schema": {"type": "string"}});
    json!({
        "X-Triage-Tier": header("The tier that answers: fast, coder or heavy."),
        "X-Triage-Model": header("The model that answers."),
        "X-Triage-Fallbacks": header("How many models failed before it (known at the first token)."),
        "X-Triage-Confidence": header("0..1: the router's confidence, lowered per fallback (final value in the body's `triage`)."),
    })
}

fn with(mut responses: Value, status: &str, response: Value) -> Value {
    responses[status] = response;
    responses
}

fn answer(description: &str, json_schema: Value, stream_type: &str, stream_schema: Value) -> Value {
    json!({
        "description": description,
        "headers": routing_headers(),
        "content": {
            "application/json": {"schema": json_schema},
            stream_type: {"schema": stream_schema},
        }
    })
}

fn body(schema: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn ok_json(description: &str, schema: Value) -> Value {
    json!({"200": {"description": description, "content": {"application/json": {"schema": schema}}}})
}

fn plain_errors() -> Value {
    json!({
        "401": {"description": "A bearer token is configured and the request did not carry it.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// The document.
pub(crate) fn spec() -> Value {
    let model_name = json!({"type": "string", "pattern": "\\S",
        "description": "`auto` (routed), `auto:fast`, `auto:coder`, `auto:heavy` (a forced tier; VRAM checks and fallbacks still apply), or a model name (passed through to the endpoint that has it)",
        "examples": ["auto"]});
    // "Has text": at least one character that is not whitespace (see `super::has_text`).
    let text = json!({"type": "string", "pattern": "\\S"});
    let options = json!({
        "type": "object",
        "description": "Sampling options; others (num_ctx, …) are ignored: the tier's settings apply.",
        "properties": {
            "temperature": {"type": ["number", "null"]},
            "top_p": {"type": ["number", "null"]},
            "top_k": {"type": ["integer", "null"], "minimum": 0, "maximum": 4_294_967_295u64},
            "seed": {"type": ["integer", "null"], "minimum": i64::MIN, "maximum": 9_223_372_036_854_775_807i64},
            "stop": {"type": ["array", "null"], "items": {"type": "string"}},
            "num_predict": {"type": ["integer", "null"], "minimum": i64::MIN, "maximum": 9_223_372_036_854_775_807i64,
                            "description": "Most tokens to generate; -1 or -2 keep the tier's max_tokens."},
        }
    });
    let format = json!({"description": "\"json\" or a JSON Schema object",
                        "oneOf": [{"type": "string", "enum": ["", "json"]}, {"type": "object"}, {"type": "null"}]});
    let triage = json!({"type": "object", "description": "How the answer came about: tier, model, endpoint, confidence, reasons, fallbacks, usage, timings, finish, context, warning.",
                        "properties": {"tier": {"type": "string"}, "model": {"type": "string"}, "endpoint": {"type": "string"},
                                       "confidence": {"type": "number"}, "fallbacks": {"type": "array"}, "reasons": {"type": "array", "items": {"type": "string"}}}});
    let ollama_done = |text_field: Value| {
        json!({"type": "object", "required": ["model", "created_at", "done"],
               "properties": merge(json!({
                   "model": {"type": "string"}, "created_at": {"type": "string"}, "done": {"type": "boolean"},
                   "done_reason": {"type": "string"}, "total_duration": {"type": "integer"}, "load_duration": {"type": "integer"},
                   "prompt_eval_count": {"type": "integer"}, "eval_count": {"type": "integer"}, "eval_duration": {"type": "integer"},
                   "triage": {"$ref": "#/components/schemas/Triage"},
               }), text_field)})
    };
    let ndjson = |what: &str| json!({"type": "string", "description": format!("Newline-delimited JSON: {what} objects with `done: false`, then one with `done: true` and `triage` (or `{{\"error\": …}}` when the answer broke off).")});
    let schemas = json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}, "triage": {"type": "object"}}},
        "OpenaiError": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["message", "type"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "param": {}, "code": {}}}, "triage": {"type": "object"}}},
        "Triage": triage,
        "OllamaMessage": {"type": "object", "required": ["role"], "properties": {
            "role": {"type": "string", "enum": ["system", "user", "assistant"]},
            "content": {"type": ["string", "null"]},
            "images": {"type": ["array", "null"], "maxItems": 0, "description": "Not supported: text models only."}}},
        "OllamaChatRequest": {"type": "object", "required": ["model", "messages"], "properties": {
            "model": model_name,
            "messages": {"type": "array", "items": {"$ref": "#/components/schemas/OllamaMessage"},
                         "description": "At least one message has text.",
                         "contains": {"type": "object", "required": ["content"], "properties": {"content": text}}},
            "stream": {"type": ["boolean", "null"], "description": "Default true, as in Ollama."},
            "options": options,
            "format": format,
            "tools": {"type": ["array", "null"], "maxItems": 0, "description": "Not supported."},
            "keep_alive": {"description": "Ignored: the tier's keep_alive applies."}}},
        "OllamaGenerateRequest": {"type": "object", "required": ["model", "prompt"], "properties": {
            "model": model_name,
            "prompt": text,
            "system": {"type": ["string", "null"]},
            "suffix": {"type": ["string", "null"], "maxLength": 0, "description": "Fill-in-the-middle is not supported through the gateway."},
            "raw": {"type": "boolean", "enum": [false], "description": "Raw prompts are not supported."},
            "stream": {"type": ["boolean", "null"]},
            "options": options,
            "format": format,
            "images": {"type": ["array", "null"], "maxItems": 0}}},
        "OllamaChatResponse": ollama_done(json!({"message": {"type": "object", "properties": {"role": {"type": "string"}, "content": {"type": "string"}}}})),
        "OllamaGenerateResponse": ollama_done(json!({"response": {"type": "string"}})),
        "OllamaTags": {"type": "object", "required": ["models"], "properties": {"models": {"type": "array", "items": {"type": "object", "required": ["name", "model"],
            "properties": {"name": {"type": "string"}, "model": {"type": "string"}, "size": {"type": "integer"}, "endpoint": {"type": ["string", "null"]}}}}}},
        "OllamaShowRequest": {"type": "object", "properties": {"model": {"type": ["string", "null"]}, "name": {"type": ["string", "null"]}},
            "description": "`model` (or the older `name`) names the model.",
            "anyOf": [{"required": ["model"], "properties": {"model": model_name}}, {"required": ["name"], "properties": {"name": model_name}}]},
        "OpenaiMessage": {"type": "object", "required": ["role"], "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
            "content": {"oneOf": [{"type": "string"}, {"type": "null"},
                {"type": "array", "items": {"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": ["string", "null"]}}}}]}}},
        "ChatCompletionRequest": {"type": "object", "required": ["model", "messages"], "properties": {
            "model": model_name,
            "messages": {"type": "array", "items": {"$ref": "#/components/schemas/OpenaiMessage"},
                         "description": "At least one message has text.",
                         "contains": {"type": "object", "required": ["content"], "properties": {"content": {"anyOf": [
                             text,
                             {"type": "array", "contains": {"type": "object", "required": ["text"], "properties": {"text": text}}}]}}}},
            "stream": {"type": "boolean"},
            "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
            "max_tokens": {"type": ["integer", "null"], "minimum": 0, "maximum": u64::MAX},
            "max_completion_tokens": {"type": ["integer", "null"], "minimum": 0, "maximum": u64::MAX},
            "temperature": {"type": ["number", "null"]},
            "top_p": {"type": ["number", "null"]},
            "seed": {"type": ["integer", "null"], "minimum": i64::MIN, "maximum": 9_223_372_036_854_775_807i64},
            "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
            "response_format": {"oneOf": [{"type": "null"}, {"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "enum": ["text", "json_object", "json_schema"]}, "json_schema": {"type": "object"}}}]},
            "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 1},
            "tools": {"type": ["array", "null"], "maxItems": 0, "description": "Not supported."}}},
        "ChatCompletion": {"type": "object", "required": ["id", "object", "created", "model", "choices"], "properties": {
            "id": {"type": "string"}, "object": {"const": "chat.completion"}, "created": {"type": "integer"}, "model": {"type": "string"},
            "choices": {"type": "array"}, "usage": {"type": "object"}, "triage": {"$ref": "#/components/schemas/Triage"}}},
        "RouteRequest": {"type": "object", "required": ["prompt"], "properties": {
            "prompt": text, "selection": {"type": ["string", "null"]}, "language": {"type": ["string", "null"]},
            "tier": {"enum": ["fast", "coder", "heavy", null]},
            "model": {"oneOf": [{"type": "null"}, model_name], "description": "As in the chat endpoints; default auto."}}},
        "Decision": {"type": "object", "required": ["tier", "model", "endpoint", "confidence", "reasons", "fallbacks", "analysis"], "properties": {
            "tier": {"type": "string"}, "model": {"type": "string"}, "endpoint": {"type": "string"}, "url": {"type": ["string", "null"]},
            "confidence": {"type": "number"}, "reasons": {"type": "array", "items": {"type": "string"}}, "warning": {"type": ["string", "null"]},
            "fallbacks": {"type": "array"}, "analysis": {"type": "object"}}},
    });
    let paths = json!({
        "/api/chat": {"post": {
            "summary": "Ollama chat: the conversation goes to the model `model` names (`auto`: the router's choice).",
            "requestBody": body("OllamaChatRequest"),
            "responses": with(errors(false), "200", answer("The answer: one object, or NDJSON chunks when streaming (the default). Headers are written at the first token.",
                json!({"$ref": "#/components/schemas/OllamaChatResponse"}), "application/x-ndjson", ndjson("chat")))}},
        "/api/generate": {"post": {
            "summary": "Ollama generate: one prompt (and an optional system prompt).",
            "requestBody": body("OllamaGenerateRequest"),
            "responses": with(errors(false), "200", answer("The answer: one object, or NDJSON chunks when streaming (the default).",
                json!({"$ref": "#/components/schemas/OllamaGenerateResponse"}), "application/x-ndjson", ndjson("generate")))}},
        "/api/tags": {"get": {"summary": "`auto`, `auto:fast|coder|heavy` and every model the endpoints list.",
            "responses": merge(ok_json("Models.", json!({"$ref": "#/components/schemas/OllamaTags"})), plain_errors())}},
        "/api/ps": {"get": {"summary": "Models loaded in memory on the Ollama endpoints.",
            "responses": merge(ok_json("Loaded models.", json!({"$ref": "#/components/schemas/OllamaTags"})), plain_errors())}},
        "/api/show": {"post": {"summary": "What is known of a model (for `auto`: the tiers).",
            "requestBody": body("OllamaShowRequest"),
            "responses": merge(ok_json("Model information.", json!({"type": "object", "properties": {"details": {"type": "object"}, "model_info": {"type": "object"}, "capabilities": {"type": "array"}}})), errors(false))}},
        "/api/version": {"get": {"summary": "The Ollama API version the gateway follows, and triage's.",
            "responses": merge(ok_json("Versions.", json!({"type": "object", "required": ["version"], "properties": {"version": {"type": "string"}, "triage": {"type": "string"}}})), plain_errors())}},
        "/v1/chat/completions": {"post": {
            "summary": "OpenAI chat completions.",
            "requestBody": body("ChatCompletionRequest"),
            "responses": with(errors(true), "200", answer("The completion: one object, or server-sent events with `stream: true` (the chunk with `finish_reason` carries `triage`).",
                json!({"$ref": "#/components/schemas/ChatCompletion"}), "text/event-stream",
                json!({"type": "object", "description": "One server-sent event: `data` is a chunk (JSON), then `[DONE]`; a chunk with `error` when the answer broke off.",
                       "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}}})))}},
        "/v1/models": {"get": {"summary": "The same model names as /api/tags.",
            "responses": merge(ok_json("Models.", json!({"type": "object", "required": ["object", "data"], "properties": {"object": {"const": "list"}, "data": {"type": "array"}}})),
                json!({"401": errors(true)["401"]}))}},
        "/health": {"get": {"summary": "Liveness, and which backends answer.",
            "responses": merge(ok_json("Always 200 while the gateway runs.", json!({"type": "object", "required": ["status", "backends"], "properties": {"status": {"const": "ok"}, "backends": {"type": "array"}}})), plain_errors())}},
        "/status": {"get": {"summary": "The status, as `triage status --json`.",
            "responses": merge(ok_json("Endpoints, GPU, tiers and per-model statistics.", json!({"type": "object", "required": ["endpoints", "gpu", "tiers", "stats"]})), plain_errors())}},
        "/route": {"post": {"summary": "The routing decision for a prompt, as `triage route --json`; no model is called.",
            "requestBody": body("RouteRequest"),
            "responses": with(errors(false), "200", json!({"description": "The decision.", "headers": routing_headers(),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Decision"}}}}))}},
        "/openapi.json": {"get": {"summary": "This document.",
            "responses": merge(ok_json("OpenAPI 3.1.", json!({"type": "object"})), plain_errors())}},
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "triage gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Ollama- and OpenAI-compatible endpoints served by triage's router, with the model `auto`. With `--token-env`, every request needs `Authorization: Bearer <token>`.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "security": [{}, {"bearer": []}],
        "paths": paths,
    })
}

pub(crate) async fn document() -> Json<Value> {
    Json(spec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented() {
        let spec = spec();
        let paths = spec["paths"].as_object().expect("paths");
        for path in [
            "/api/chat",
            "/api/generate",
            "/api/tags",
            "/api/ps",
            "/api/show",
            "/api/version",
            "/v1/chat/completions",
            "/v1/models",
            "/health",
            "/status",
            "/route",
            "/openapi.json",
        ] {
            assert!(paths.contains_key(path), "{path} is not in the document");
        }
        // Every reference resolves.
        let text = spec.to_string();
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').expect("closing quote")];
            assert!(
                spec["components"]["schemas"].get(name).is_some(),
                "{name} is referenced but not defined"
            );
        }
    }
}
