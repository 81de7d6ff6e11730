//! The OpenAI-compatible API: `/v1/chat/completions` with server-sent events, and `/v1/models`.

use serde_json::{json, Value};

use super::{ChatRequest, Done, Event, Finish, Format, ModelEntry, ParseError, Usage};

pub(super) fn chat_body(r: &ChatRequest) -> Value {
    let mut body = json!({
        "model": r.model,
        "messages": r.messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(n) = r.max_tokens {
        body["max_tokens"] = json!(n);
    }
    let s = &r.sampling;
    if let Some(t) = s.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(p) = s.top_p {
        body["top_p"] = json!(p);
    }
    if let Some(seed) = s.seed {
        body["seed"] = json!(seed);
    }
    if !s.stop.is_empty() {
        body["stop"] = json!(s.stop);
    }
    match &s.format {
        Some(Format::Json) => body["response_format"] = json!({"type": "json_object"}),
        Some(Format::Schema(schema)) => {
            body["response_format"] = json!({"type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema}})
        }
        None => {}
    }
    body
}

/// One SSE line. `finish` and `usage` carry state across chunks: servers send the finish
/// reason, then (with `include_usage`) a usage-only chunk, then `[DONE]`.
pub(super) fn parse_sse_line(
    line: &str,
    finish: &mut Option<Finish>,
    usage: &mut Option<Usage>,
) -> Result<Vec<Event>, ParseError> {
    if line.starts_with(':')
        || line.starts_with("event:")
        || line.starts_with("id:")
        || line.starts_with("retry:")
    {
        return Ok(Vec::new());
    }
    let Some(data) = line.strip_prefix("data:") else {
        return Err(ParseError::Malformed(format!(
            "not a server-sent event line: {}",
            crate::analyze::signals::prefix(line, 80)
        )));
    };
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(vec![Event::Done(Done {
            finish: finish.unwrap_or(Finish::Stop),
            usage: *usage,
            load_duration: None,
            prompt_eval: None,
        })]);
    }
    let v: Value = serde_json::from_str(data)
        .map_err(|e| ParseError::Malformed(format!("an event is not JSON ({e})")))?;
    if let Some(error) = v.get("error") {
        let message = error["message"]
            .as_str()
            .map_or_else(|| error.to_string(), str::to_string);
        return Err(ParseError::Server(message));
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        *usage = Some(Usage {
            prompt_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
            completion_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
        });
    }
    let mut events = Vec::new();
    let Some(choices) = v.get("choices").and_then(Value::as_array) else {
        if v.get("usage").is_some() {
            return Ok(events);
        }
        return Err(ParseError::Malformed(
            "an event without `choices`".to_string(),
        ));
    };
    if let Some(choice) = choices.first() {
        if let Some(text) = choice["delta"]["content"]
            .as_str()
            .filter(|t| !t.is_empty())
        {
            events.push(Event::Delta(text.to_string()));
        }
        match choice["finish_reason"].as_str() {
            Some("stop") | Some("eos") => *finish = Some(Finish::Stop),
            Some("length") => *finish = Some(Finish::Length),
            Some(_) => *finish = Some(Finish::Other),
            None => {}
        }
    }
    Ok(events)
}

pub(super) fn parse_models(v: &Value) -> Vec<ModelEntry> {
    v["data"]
        .as_array()
        .map(|models| {
            models
                .iter()
                .filter_map(|m| {
                    Some(ModelEntry {
                        name: m["id"].as_str()?.to_string(),
                        size_mb: None,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Result<Vec<Event>, ParseError> {
        let (mut f, mut u) = (None, None);
        let mut out = Vec::new();
        for l in lines {
            out.extend(parse_sse_line(l, &mut f, &mut u)?);
        }
        Ok(out)
    }

    #[test]
    fn a_stream_with_finish_and_usage() {
        let events = parse(&[
            ": keep-alive",
            r#"data: {"choices":[{"delta":{"role":"assistant"}}]}"#,
            r#"data: {"choices":[{"delta":{"content":"Hel"}}]}"#,
            r#"data:{"choices":[{"delta":{"content":"lo"},"finish_reason":"length"}]}"#,
            r#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
            "data: [DONE]",
        ])
        .expect("valid");
        assert_eq!(
            events,
            vec![
                Event::Delta("Hel".into()),
                Event::Delta("lo".into()),
                Event::Done(Done {
                    finish: Finish::Length,
                    usage: Some(Usage {
                        prompt_tokens: 3,
                        completion_tokens: 2
                    }),
                    load_duration: None,
                    prompt_eval: None,
                })
            ]
        );
    }

    #[test]
    fn malformed_and_error_events() {
        assert!(matches!(
            parse(&["data: {nope"]),
            Err(ParseError::Malformed(_))
        ));
        assert!(matches!(parse(&["garbage"]), Err(ParseError::Malformed(_))));
        assert_eq!(
            parse(&[r#"data: {"error":{"message":"overloaded"}}"#]),
            Err(ParseError::Server("overloaded".into()))
        );
    }

    #[test]
    fn body_asks_for_usage_and_limits_tokens() {
        let r = ChatRequest {
            model: "m".into(),
            messages: vec![],
            keep_alive: None,
            num_ctx: None,
            max_tokens: Some(32),
            sampling: super::super::Sampling {
                seed: Some(7),
                format: Some(Format::Schema(json!({"type": "object"}))),
                ..Default::default()
            },
        };
        let b = chat_body(&r);
        assert_eq!(b["max_tokens"], 32);
        assert_eq!(b["seed"], 7);
        assert_eq!(
            b["response_format"]["json_schema"]["schema"]["type"],
            "object"
        );
        assert_eq!(b["stream_options"]["include_usage"], true);
    }
}
