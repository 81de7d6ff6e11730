//! Runs one request end to end: analyze → route → context → backend, with timeouts and
//! fallbacks, producing an [`Answer`] while streaming its text to the caller.
//!
//! Failure rules: before the first token, any failure (refused, HTTP error, model not found,
//! timeout, malformed stream) moves on to the next candidate of the decision's chain, and the
//! answer records what was tried and why. After the first token there is no silent restart: the
//! stream ends with a clear error and the partial text is kept. Keeps per-model statistics and
//! per-endpoint circuit breakers. Protocol front ends (CLI, LSP) call [`Engine::run`] and
//! render [`Progress`]; they make no decisions of their own.

pub mod stats;
pub mod status;

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::analyze::{Action, Analysis, Analyzer, Query};
use crate::backend::{self, ChatRequest, Event, Finish, Target, Usage};
use crate::config::{Config, Tier, TierConfig};
use crate::context::{self, Budget};
use crate::route::{self, Candidate, Decision, Force};
use crate::vram::Snapshot;

pub use stats::{Breakers, Stats};

/// One request from a front end.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub prompt: String,
    pub selection: Option<String>,
    pub language_id: Option<String>,
    pub action: Option<Action>,
    pub force: Force,
}

impl Request {
    fn query(&self) -> Query<'_> {
        Query {
            prompt: &self.prompt,
            selection: self.selection.as_deref(),
            language_id: self.language_id.as_deref(),
            action: self.action,
        }
    }
}

/// What happens while a request runs, for the front end to show.
#[derive(Debug)]
pub enum Progress<'a> {
    /// The router decided.
    Routed(&'a Decision),
    /// A model is being asked.
    Trying(&'a Candidate),
    /// A model failed before its first token; the next one will be tried.
    FellBack { from: &'a Candidate, error: &'a str },
    /// Answer text.
    Delta(&'a str),
}

/// A model that was tried and failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fallback {
    pub tier: Tier,
    pub model: String,
    pub endpoint: String,
    pub error: String,
}

/// How long things took, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Analysis and routing.
    pub route_ms: f64,
    /// From the start of the request to the first token of the answer (fallbacks included).
    pub first_token_ms: Option<f64>,
    pub total_ms: f64,
    /// Model load time the server reported.
    pub load_ms: Option<f64>,
}

/// A finished (or partly finished) answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    pub text: String,
    pub model: String,
    pub tier: Tier,
    pub endpoint: String,
    /// 0..1: the router's confidence, lowered by fallbacks, a cut answer or cut context.
    pub confidence: f32,
    pub reasons: Vec<String>,
    pub fallbacks: Vec<Fallback>,
    pub usage: Usage,
    pub timings: Timings,
    /// Why the model stopped: `stop`, `length` (cut by the token limit), `other`.
    pub finish: Option<Finish>,
    pub context: context::Report,
    /// A warning from routing (moved for lack of VRAM …).
    pub warning: Option<String>,
    #[serde(skip)]
    pub analysis: Option<Analysis>,
}

/// Why a request produced no complete answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is unusable (empty, too large, a disabled tier forced).
    #[error("{0}")]
    Input(String),
    /// Every candidate failed before answering, or the stream broke after the first token
    /// (then `partial` holds what arrived).
    #[error("{message}")]
    Failed {
        message: String,
        partial: Option<Box<Answer>>,
        fallbacks: Vec<Fallback>,
    },
}

/// Runs requests. One per process: it owns the HTTP client's connection pool.
pub struct Engine {
    config: Config,
    client: backend::Client,
    analyzer: Analyzer,
    pub stats: std::sync::Arc<Stats>,
    breakers: std::sync::Arc<Breakers>,
}

/// How one attempt ended badly.
enum AttemptError {
    /// `unreachable`: the endpoint itself is down, so its other models need not be tried.
    BeforeFirstToken {
        error: String,
        unreachable: bool,
    },
    AfterFirstToken {
        error: String,
        usage: Usage,
    },
}

/// A completed attempt.
struct Completed {
    first_token: Duration,
    done: backend::Done,
    /// Chunks received: the completion count when the server reports no usage.
    chunks: u64,
}

impl Engine {
    pub fn new(
        config: Config,
        client: backend::Client,
        analyzer: Analyzer,
        stats: impl Into<std::sync::Arc<Stats>>,
    ) -> Engine {
        Engine {
            config,
            client,
            analyzer,
            stats: stats.into(),
            breakers: std::sync::Arc::default(),
        }
    }

    /// The same engine with a new configuration: statistics, breakers and the connection pool
    /// carry over.
    pub fn reconfigured(&self, config: Config) -> Engine {
        Engine {
            config,
            client: self.client.clone(),
            analyzer: self.analyzer.clone(),
            stats: self.stats.clone(),
            breakers: self.breakers.clone(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn client(&self) -> &backend::Client {
        &self.client
    }

    /// Analyses and routes without calling a model.
    pub fn decide(
        &self,
        request: &Request,
        snapshot: &Snapshot,
    ) -> Result<(Analysis, Decision), Error> {
        let analysis = self
            .analyzer
            .analyze(&request.query())
            .map_err(|e| Error::Input(e.to_string()))?;
        let decision = route::route(&self.config, snapshot, &analysis, &request.force)
            .map_err(|e| Error::Input(e.to_string()))?;
        Ok((analysis, decision))
    }

    /// Runs a request to its answer. Dropping the returned future cancels it: the open stream
    /// is dropped and its connection closed, so the model server stops generating.
    pub async fn run(
        &self,
        request: &Request,
        snapshot: &Snapshot,
        progress: &mut (dyn FnMut(Progress<'_>) + Send),
    ) -> Result<Answer, Error> {
        let started = Instant::now();
        let (analysis, decision) = self.decide(request, snapshot)?;
        let route_ms = ms(started.elapsed());
        info!(
            tier = %decision.tier,
            model = %decision.model,
            endpoint = %decision.endpoint,
            confidence = decision.confidence,
            reasons = ?decision.reasons,
            warning = decision.warning.as_deref(),
            "routed"
        );
        tracing::trace!(prompt = %request.prompt, "prompt");
        progress(Progress::Routed(&decision));

        let primary = Candidate {
            tier: decision.tier,
            model: decision.model.clone(),
            endpoint: decision.endpoint.clone(),
        };
        let candidates: Vec<Candidate> = std::iter::once(primary)
            .chain(decision.fallbacks.iter().cloned())
            .collect();
        let mut fallbacks: Vec<Fallback> = Vec::new();
        let mut unreachable: Vec<&str> = Vec::new();
        let last = candidates.len().saturating_sub(1);
        for (i, candidate) in candidates.iter().enumerate() {
            if unreachable.contains(&candidate.endpoint.as_str()) {
                // Already found down in this request: its other models are down too.
                continue;
            }
            // A tripped endpoint is skipped, unless it is the last hope.
            if i < last && self.breakers.is_open(&candidate.endpoint) {
                let error = format!(
                    "`{}` skipped: it failed repeatedly and is cooling down",
                    candidate.endpoint
                );
                progress(Progress::FellBack {
                    from: candidate,
                    error: &error,
                });
                fallbacks.push(fallback(candidate, error));
                continue;
            }
            let tier_config = self.config.tier(candidate.tier);
            let Some(endpoint) = self.config.endpoints.get(&candidate.endpoint) else {
                continue;
            };
            let target = Target {
                name: &candidate.endpoint,
                endpoint,
            };
            let prompt = context::assemble(
                &request.query(),
                &analysis,
                Budget {
                    context_window: tier_config.num_ctx,
                    answer: tier_config.max_tokens,
                },
            );
            let chat = ChatRequest {
                model: candidate.model.clone(),
                messages: prompt.messages,
                keep_alive: Some(tier_config.keep_alive.clone()),
                num_ctx: Some(tier_config.num_ctx),
                max_tokens: Some(tier_config.max_tokens),
            };
            let limits = self.limits(tier_config, &candidate.model, snapshot);
            progress(Progress::Trying(candidate));
            debug!(model = %candidate.model, endpoint = %candidate.endpoint, first_token_s = limits.first_token.as_secs_f64(), "asking");
            let mut text = String::new();
            let attempt_started = Instant::now();
            match self
                .attempt(target, &chat, limits, &mut text, progress)
                .await
            {
                Ok(done) => {
                    self.breakers.success(&candidate.endpoint);
                    let generation = attempt_started.elapsed().saturating_sub(done.first_token);
                    let usage = done.done.usage.unwrap_or(Usage {
                        prompt_tokens: prompt.report.tokens as u64,
                        completion_tokens: done.chunks,
                    });
                    self.stats.success(
                        &candidate.model,
                        done.first_token,
                        usage.completion_tokens,
                        generation,
                        done.done.load_duration,
                    );
                    let first_token_ms =
                        ms(attempt_started.duration_since(started) + done.first_token);
                    let answer = self.answer(
                        text,
                        candidate,
                        &decision,
                        fallbacks,
                        prompt.report,
                        Some(done.done.finish),
                        usage,
                        Timings {
                            route_ms,
                            first_token_ms: Some(first_token_ms),
                            total_ms: ms(started.elapsed()),
                            load_ms: done.done.load_duration.map(ms),
                        },
                        analysis,
                    );
                    info!(
                        model = %answer.model,
                        fallbacks = answer.fallbacks.len(),
                        first_token_ms,
                        total_ms = answer.timings.total_ms,
                        completion_tokens = usage.completion_tokens,
                        "answered"
                    );
                    return Ok(answer);
                }
                Err(AttemptError::BeforeFirstToken {
                    error,
                    unreachable: down,
                }) => {
                    info!(model = %candidate.model, endpoint = %candidate.endpoint, %error, "failed before the first token; falling back");
                    if down {
                        unreachable.push(&candidate.endpoint);
                    }
                    self.breakers.failure(&candidate.endpoint);
                    self.stats.failure(&candidate.model, &error);
                    progress(Progress::FellBack {
                        from: candidate,
                        error: &error,
                    });
                    fallbacks.push(fallback(candidate, error));
                }
                Err(AttemptError::AfterFirstToken { error, usage }) => {
                    warn!(model = %candidate.model, endpoint = %candidate.endpoint, %error, "stream broke after the first token");
                    self.stats.failure(&candidate.model, &error);
                    let message = format!(
                        "{} stopped mid-answer: {error}. The partial answer is kept; ask again to retry",
                        candidate.model
                    );
                    let partial = self.answer(
                        text,
                        candidate,
                        &decision,
                        fallbacks.clone(),
                        prompt.report,
                        None,
                        usage,
                        Timings {
                            route_ms,
                            first_token_ms: None,
                            total_ms: ms(started.elapsed()),
                            load_ms: None,
                        },
                        analysis,
                    );
                    return Err(Error::Failed {
                        message,
                        partial: Some(Box::new(partial)),
                        fallbacks,
                    });
                }
            }
        }
        let message = match fallbacks.as_slice() {
            [] => "no model could be asked: check the tiers and endpoints in the configuration"
                .to_string(),
            [only] => only.error.clone(),
            many => format!(
                "every model failed: {}",
                many.iter()
                    .map(|f| format!("{} on {}: {}", f.model, f.endpoint, f.error))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        };
        Err(Error::Failed {
            message,
            partial: None,
            fallbacks,
        })
    }

    /// The timeouts for one attempt. A model that is not loaded gets at least its learned cold
    /// load time (×1.5, plus 5 s) to produce a first token.
    fn limits(&self, tier: &TierConfig, model: &str, snapshot: &Snapshot) -> Limits {
        let t = tier.timeouts;
        let mut first_token = Duration::from_secs_f64(t.first_token_s);
        if snapshot.loaded(model).is_none() {
            if let Some(load) = self.stats.load_time(model) {
                first_token = first_token.max(load.mul_f64(1.5) + Duration::from_secs(5));
            }
        }
        Limits {
            first_token,
            idle: Duration::from_secs_f64(t.idle_s),
            total: Duration::from_secs_f64(t.total_s),
        }
    }

    async fn attempt(
        &self,
        target: Target<'_>,
        chat: &ChatRequest,
        limits: Limits,
        text: &mut String,
        progress: &mut (dyn FnMut(Progress<'_>) + Send),
    ) -> Result<Completed, AttemptError> {
        let started = Instant::now();
        let opening = tokio::time::timeout(limits.first_token, async {
            let mut stream = self.client.chat(target, chat).await?;
            let first = stream.next().await;
            Ok::<_, backend::Error>((stream, first))
        })
        .await;
        let (mut stream, first) = match opening {
            Err(_) => {
                return Err(AttemptError::BeforeFirstToken {
                    error: format!(
                        "no first token within {:.0} s (first_token_s): the model may still be loading or the server hangs",
                        limits.first_token.as_secs_f64()
                    ),
                    unreachable: false,
                })
            }
            Ok(Err(e)) | Ok(Ok((_, Some(Err(e))))) => {
                return Err(AttemptError::BeforeFirstToken {
                    unreachable: matches!(e, backend::Error::Unreachable { .. }),
                    error: e.to_string(),
                })
            }
            Ok(Ok((_, None))) => {
                return Err(AttemptError::BeforeFirstToken {
                    error: "the stream ended at once".into(),
                    unreachable: false,
                })
            }
            Ok(Ok((stream, Some(Ok(event))))) => (stream, event),
        };
        let first_token = started.elapsed();
        let deadline = started + limits.total;
        let mut usage = Usage::default();
        let mut event = first;
        loop {
            match event {
                Event::Delta(delta) => {
                    text.push_str(&delta);
                    usage.completion_tokens += 1;
                    progress(Progress::Delta(&delta));
                }
                Event::Done(done) => {
                    stream.finish().await;
                    return Ok(Completed {
                        first_token,
                        done,
                        chunks: usage.completion_tokens,
                    });
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(AttemptError::AfterFirstToken {
                    error: format!(
                        "the answer took longer than {:.0} s (total_s)",
                        limits.total.as_secs_f64()
                    ),
                    usage,
                });
            }
            let wait = limits.idle.min(deadline - now);
            event = match tokio::time::timeout(wait, stream.next()).await {
                Err(_) if Instant::now() >= deadline => {
                    return Err(AttemptError::AfterFirstToken {
                        error: format!(
                            "the answer took longer than {:.0} s (total_s)",
                            limits.total.as_secs_f64()
                        ),
                        usage,
                    })
                }
                Err(_) => {
                    return Err(AttemptError::AfterFirstToken {
                        error: format!(
                            "the stream stalled: nothing for {:.0} s (idle_s)",
                            limits.idle.as_secs_f64()
                        ),
                        usage,
                    })
                }
                Ok(None) => {
                    return Err(AttemptError::AfterFirstToken {
                        error: "the stream ended before the model finished".into(),
                        usage,
                    })
                }
                Ok(Some(Err(e))) => {
                    return Err(AttemptError::AfterFirstToken {
                        error: e.to_string(),
                        usage,
                    })
                }
                Ok(Some(Ok(event))) => event,
            };
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn answer(
        &self,
        text: String,
        candidate: &Candidate,
        decision: &Decision,
        fallbacks: Vec<Fallback>,
        context: context::Report,
        finish: Option<Finish>,
        usage: Usage,
        timings: Timings,
        analysis: Analysis,
    ) -> Answer {
        let mut reasons = decision.reasons.clone();
        let mut confidence = decision.confidence;
        if candidate.tier != decision.tier || candidate.model != decision.model {
            reasons.push(format!(
                "answered by the fallback {} ({}) after {} failed",
                candidate.model,
                candidate.tier,
                fallbacks.len()
            ));
        }
        if !fallbacks.is_empty() {
            confidence *= 0.85f32.powi(fallbacks.len() as i32);
            reasons.push(format!("{} fallback(s) taken", fallbacks.len()));
        }
        match finish {
            Some(Finish::Length) => {
                confidence *= 0.7;
                reasons.push("the answer hit the token limit (max_tokens) and is cut".to_string());
            }
            Some(Finish::Stop) => reasons.push("the model finished by itself".to_string()),
            Some(Finish::Other) => reasons.push("the model stopped for another reason".to_string()),
            None => {
                confidence *= 0.5;
                reasons.push("the answer is incomplete".to_string());
            }
        }
        if context.cut {
            confidence *= 0.8;
            reasons.push("the selection was cut to fit the context window".to_string());
        }
        if context.redacted > 0 {
            reasons.push(format!(
                "{} secret(s) were redacted from the prompt",
                context.redacted
            ));
        }
        Answer {
            text,
            model: candidate.model.clone(),
            tier: candidate.tier,
            endpoint: candidate.endpoint.clone(),
            confidence: confidence.clamp(0.0, 1.0),
            reasons,
            fallbacks,
            usage,
            timings,
            finish,
            context,
            warning: decision.warning.clone(),
            analysis: Some(analysis),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    first_token: Duration,
    idle: Duration,
    total: Duration,
}

fn fallback(candidate: &Candidate, error: String) -> Fallback {
    Fallback {
        tier: candidate.tier,
        model: candidate.model.clone(),
        endpoint: candidate.endpoint.clone(),
        error,
    }
}

/// The JSON shape of a decision, shared by `triage route --json` and `triage/route`.
pub fn decision_json(
    id: Option<&str>,
    d: &Decision,
    a: &Analysis,
    config: &Config,
) -> serde_json::Value {
    let mut value = json!({
        "tier": d.tier,
        "model": d.model,
        "endpoint": d.endpoint,
        "url": config.endpoints.get(&d.endpoint).map(|e| e.url.as_str()),
        "confidence": round3(d.confidence),
        "reasons": d.reasons,
        "warning": d.warning,
        "fallbacks": d.fallbacks,
        "analysis": {
            "language": a.language,
            "intent": a.intent,
            "shell": a.shell,
            "code": a.code,
            "error_output": a.error_output,
            "complexity": round3(a.complexity),
            "tokens": a.tokens,
            "scores": {
                "fast": round3(a.scores.fast),
                "coder": round3(a.scores.coder),
                "heavy": round3(a.scores.heavy),
            },
        },
    });
    if let (Some(id), Some(map)) = (id, value.as_object_mut()) {
        map.insert("id".to_string(), json!(id));
    }
    value
}

/// The JSON shape of an answer, shared by `triage ask --json` and `triage/chat`; `error` is set
/// when the answer is partial.
pub fn answer_json(answer: &Answer, error: Option<&str>) -> serde_json::Value {
    let mut value = serde_json::to_value(answer).unwrap_or_else(|_| json!({}));
    if let Some(map) = value.as_object_mut() {
        map.insert("confidence".to_string(), json!(round3(answer.confidence)));
        if let Some(e) = error {
            map.insert("error".to_string(), json!(e));
        }
    }
    value
}

/// Rounds to three decimals for display.
pub fn round3(x: f32) -> f64 {
    (x as f64 * 1000.0).round() / 1000.0
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}
