//! Ollama's native API: request bodies and response parsing for `/api/chat`, `/api/generate`,
//! `/api/tags`, `/api/ps`, `/api/show` and `/api/embed`.

use std::time::Duration;

use serde_json::{json, Value};

use super::{
    ChatRequest, Done, Event, FimRequest, Finish, Format, LoadedEntry, ModelEntry, ModelInfo,
    ParseError, PromptEval, Sampling, Usage,
};

pub(super) fn chat_body(r: &ChatRequest) -> Value {
    let body = json!({ "model": r.model, "messages": r.messages });
    let mut body = with_settings(body, r.keep_alive.as_deref(), r.num_ctx, r.max_tokens);
    with_sampling(&mut body, &r.sampling);
    body
}

/// A client's sampling settings go into `options`, the format beside them.
fn with_sampling(body: &mut Value, s: &Sampling) {
    let options = &mut body["options"];
    if let Some(t) = s.temperature {
        options["temperature"] = json!(t);
    }
    if let Some(p) = s.top_p {
        options["top_p"] = json!(p);
    }
    if let Some(k) = s.top_k {
        options["top_k"] = json!(k);
    }
    if let Some(seed) = s.seed {
        options["seed"] = json!(seed);
    }
    if !s.stop.is_empty() {
        options["stop"] = json!(s.stop);
    }
    match &s.format {
        Some(Format::Json) => body["format"] = json!("json"),
        Some(Format::Schema(schema)) => body["format"] = schema.clone(),
        None => {}
    }
}

pub(super) fn generate_body(r: &FimRequest) -> Value {
    let body = json!({ "model": r.model, "prompt": r.prefix, "suffix": r.suffix });
    with_settings(body, r.keep_alive.as_deref(), r.num_ctx, r.max_tokens)
}

/// A request that only loads the model (Ollama's documented way to preload: no prompt).
pub(super) fn preload_body(model: &str, keep: &str) -> Value {
    json!({ "model": model, "keep_alive": keep_alive(keep), "stream": false })
}

/// What every generation request carries: streaming, `keep_alive`, and the options that keep
/// the model loaded with a fixed window (`num_ctx`) and bound the answer (`num_predict`).
fn with_settings(
    mut body: Value,
    keep: Option<&str>,
    num_ctx: Option<u32>,
    max_tokens: Option<u32>,
) -> Value {
    body["stream"] = json!(true);
    let mut options = json!({});
    if let Some(n) = num_ctx {
        options["num_ctx"] = json!(n);
    }
    if let Some(n) = max_tokens {
        options["num_predict"] = json!(n);
    }
    body["options"] = options;
    if let Some(k) = keep {
        body["keep_alive"] = keep_alive(k);
    }
    body
}

/// Ollama reads a number as seconds (negative: forever) and a string as a Go duration ("30m");
/// a bare "-1" string would be refused, so whole numbers go as numbers.
fn keep_alive(value: &str) -> Value {
    match value.trim().parse::<i64>() {
        Ok(n) => json!(n),
        Err(_) => json!(value.trim()),
    }
}

pub(super) fn parse_chat_line(line: &str) -> Result<Vec<Event>, ParseError> {
    parse_line(line, |v| v["message"]["content"].as_str())
}

pub(super) fn parse_generate_line(line: &str) -> Result<Vec<Event>, ParseError> {
    parse_line(line, |v| v["response"].as_str())
}

fn parse_line(line: &str, text: impl Fn(&Value) -> Option<&str>) -> Result<Vec<Event>, ParseError> {
    let v: Value = serde_json::from_str(line).map_err(|e| {
        ParseError::Malformed(format!(
            "not a JSON line ({e}): {}",
            crate::analyze::signals::prefix(line, 80)
        ))
    })?;
    if let Some(error) = v.get("error") {
        return Err(ParseError::Server(
            error
                .as_str()
                .map_or_else(|| error.to_string(), str::to_string),
        ));
    }
    let Some(done) = v.get("done").and_then(Value::as_bool) else {
        return Err(ParseError::Malformed("a chunk without `done`".to_string()));
    };
    let mut events = Vec::new();
    if let Some(t) = text(&v).filter(|t| !t.is_empty()) {
        events.push(Event::Delta(t.to_string()));
    }
    if done {
        let finish = match v["done_reason"].as_str() {
            Some("length") => Finish::Length,
            Some("stop") | None => Finish::Stop,
            Some(_) => Finish::Other,
        };
        let usage = match (
            byte_count(&v["prompt_eval_count"]),
            byte_count(&v["eval_count"]),
        ) {
            (None, None) => None,
            (p, c) => Some(Usage {
                prompt_tokens: p.unwrap_or(0),
                completion_tokens: c.unwrap_or(0),
            }),
        };
        events.push(Event::Done(Done {
            finish,
            usage,
            prompt_eval: match (
                byte_count(&v["prompt_eval_count"]),
                byte_count(&v["prompt_eval_duration"]),
            ) {
                (Some(tokens), Some(ns)) if tokens > 0 && ns > 0 => Some(PromptEval {
                    tokens,
                    duration: Duration::from_nanos(ns),
                }),
                _ => None,
            },
            load_duration: byte_count(&v["load_duration"]).map(Duration::from_nanos),
        }));
    }
    Ok(events)
}

fn mb(bytes: Option<u64>) -> Option<u64> {
    bytes.map(|b| b / (1024 * 1024))
}

/// A byte count as a lying or odd server may send it: a whole number, a float (taken when
/// finite and not negative), anything else (negative, a string, null) unknown.
fn byte_count(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f.min(u64::MAX as f64) as u64)
    })
}

/// The longest context window believed (16M tokens); beyond, a server's figure is clamped.
pub const MAX_CONTEXT_LENGTH: u64 = 1 << 24;

pub(super) fn parse_tags(v: &Value) -> Vec<ModelEntry> {
    v["models"]
        .as_array()
        .map(|models| {
            models
                .iter()
                .filter_map(|m| {
                    Some(ModelEntry {
                        name: m["name"]
                            .as_str()
                            .or_else(|| m["model"].as_str())?
                            .to_string(),
                        size_mb: mb(byte_count(&m["size"])),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn parse_ps(v: &Value) -> Vec<LoadedEntry> {
    v["models"]
        .as_array()
        .map(|models| {
            models
                .iter()
                .filter_map(|m| {
                    let size_mb = mb(byte_count(&m["size"])).unwrap_or(0);
                    let vram_mb = mb(byte_count(&m["size_vram"])).unwrap_or(0);
                    Some(LoadedEntry {
                        name: m["name"]
                            .as_str()
                            .or_else(|| m["model"].as_str())?
                            .to_string(),
                        // More in VRAM than the model's size is a lie: all of it is.
                        vram_mb: if size_mb > 0 {
                            vram_mb.min(size_mb)
                        } else {
                            vram_mb
                        },
                        size_mb,
                        expires_at: m["expires_at"].as_str().map(str::to_string),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `model_info["<arch>.context_length"]` and `capabilities`.
pub(super) fn parse_show(v: &Value) -> ModelInfo {
    let info = &v["model_info"];
    let context_length = info["general.architecture"]
        .as_str()
        .and_then(|arch| info[format!("{arch}.context_length")].as_u64())
        .or_else(|| {
            // Some models carry it under another prefix; take any `*.context_length`.
            info.as_object()?
                .iter()
                .find(|(k, _)| k.ends_with(".context_length"))
                .and_then(|(_, v)| v.as_u64())
        });
    let capabilities = v["capabilities"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ModelInfo {
        context_length: context_length
            .filter(|n| *n > 0)
            .map(|n| n.min(MAX_CONTEXT_LENGTH)),
        capabilities,
    }
}

pub(super) fn embed_body(model: &str, inputs: &[String]) -> Value {
    json!({ "model": model, "input": inputs, "truncate": true })
}

/// `{"embeddings": [[f32…]…]}`, one vector per input.
pub(super) fn parse_embed(v: &Value, expected: usize) -> Result<Vec<Vec<f32>>, String> {
    let Some(list) = v["embeddings"].as_array() else {
        return Err("no `embeddings` array".to_string());
    };
    if list.len() != expected {
        return Err(format!("{} embeddings for {expected} inputs", list.len()));
    }
    list.iter()
        .map(|e| {
            e.as_array()
                .ok_or_else(|| "an embedding is not an array".to_string())?
                .iter()
                .map(|x| {
                    x.as_f64()
                        .map(|f| f as f32)
                        .ok_or_else(|| "an embedding holds a non-number".to_string())
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_body_carries_keep_alive_and_num_ctx() {
        let r = ChatRequest {
            model: "m".into(),
            messages: vec![],
            keep_alive: Some("-1".into()),
            num_ctx: Some(8192),
            max_tokens: Some(100),
            sampling: Sampling {
                temperature: Some(0.2),
                stop: vec!["\n\n".into()],
                format: Some(Format::Json),
                ..Sampling::default()
            },
        };
        let b = chat_body(&r);
        assert_eq!(b["options"]["temperature"], 0.2);
        assert_eq!(b["options"]["stop"], json!(["\n\n"]));
        assert_eq!(b["format"], "json");
        assert_eq!(b["keep_alive"], json!(-1));
        assert_eq!(b["options"]["num_ctx"], 8192);
        assert_eq!(b["options"]["num_predict"], 100);
        assert_eq!(b["stream"], true);
        assert_eq!(keep_alive("30m"), json!("30m"));
    }

    #[test]
    fn chat_lines() {
        assert_eq!(
            parse_chat_line(r#"{"message":{"role":"assistant","content":"Hi"},"done":false}"#),
            Ok(vec![Event::Delta("Hi".into())])
        );
        let done = parse_chat_line(
            r#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"length","prompt_eval_count":5,"eval_count":7,"load_duration":2000000000}"#,
        )
        .expect("valid");
        assert_eq!(
            done,
            vec![Event::Done(Done {
                finish: Finish::Length,
                usage: Some(Usage {
                    prompt_tokens: 5,
                    completion_tokens: 7
                }),
                load_duration: Some(Duration::from_secs(2)),
                prompt_eval: None,
            })]
        );
        let timed = parse_chat_line(
            r#"{"done":true,"prompt_eval_count":400,"prompt_eval_duration":200000000}"#,
        )
        .expect("valid");
        assert!(matches!(
            &timed[0],
            Event::Done(Done { prompt_eval: Some(PromptEval { tokens: 400, duration }), .. })
                if *duration == Duration::from_millis(200)
        ));
        assert_eq!(
            preload_body("m", "5m"),
            json!({"model": "m", "keep_alive": "5m", "stream": false})
        );
        assert!(matches!(
            parse_chat_line("{oops"),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(
            parse_chat_line(r#"{"x":1}"#),
            Err(ParseError::Malformed(_))
        ));
        assert_eq!(
            parse_chat_line(r#"{"error":"out of memory"}"#),
            Err(ParseError::Server("out of memory".into()))
        );
        assert_eq!(
            parse_generate_line(r#"{"response":"fn","done":false}"#),
            Ok(vec![Event::Delta("fn".into())])
        );
    }

    #[test]
    fn metadata() {
        let ps = parse_ps(
            &json!({"models":[{"name":"llama3.2:3b","size":3221225472u64,"size_vram":2147483648u64,"expires_at":"2026-01-01T00:00:00Z"}]}),
        );
        assert_eq!(ps[0].size_mb, 3072);
        assert_eq!(ps[0].vram_mb, 2048);
        let show = parse_show(
            &json!({"model_info":{"general.architecture":"qwen3moe","qwen3moe.context_length":262144},"capabilities":["completion","insert"]}),
        );
        assert_eq!(show.context_length, Some(262_144));
        assert_eq!(show.capabilities, ["completion", "insert"]);
        assert_eq!(
            parse_tags(&json!({"models":[{"name":"a","size":1048576}]}))[0].size_mb,
            Some(1)
        );
        assert!(parse_tags(&json!({"nope":1})).is_empty());
    }

    #[test]
    fn embeddings() {
        let body = embed_body("nomic-embed-text", &["a".into(), "b".into()]);
        assert_eq!(body["input"], json!(["a", "b"]));
        assert_eq!(
            parse_embed(&json!({"embeddings": [[0.5, 1], [0, -1]]}), 2),
            Ok(vec![vec![0.5, 1.0], vec![0.0, -1.0]])
        );
        assert!(parse_embed(&json!({"embeddings": [[0.5]]}), 2).is_err());
        assert!(parse_embed(&json!({"embeddings": [["x"]]}), 1).is_err());
        assert!(parse_embed(&json!({"error": "no"}), 1).is_err());
    }
}
