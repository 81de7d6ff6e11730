//! Runs one request end to end: analyze → route → context → backend, with timeouts and
//! fallbacks, producing an [`Answer`] while streaming its text to the caller.
//!
//! Failure rules: before the first token, any failure (refused, HTTP error, model not found,
//! timeout, malformed stream) moves on to the next candidate of the decision's chain, and the
//! answer records what was tried and why. After the first token there is no silent restart: the
//! stream ends with a clear error and the partial text is kept. Keeps per-model statistics and
//! per-endpoint circuit breakers. Each attempt first takes a place under its model's concurrency
//! limit (`limits`): a model whose queue is full, or whose wait runs out, is passed over like a
//! failed one (without counting against its breaker), and when every candidate was busy the
//! request fails with [`Error::Busy`]. Protocol front ends (CLI, LSP) call [`Engine::run`] and
//! render [`Progress`]; they make no decisions of their own.
//!
//! Latency: the engine gathers what the router's latency rule needs (per-model timings from
//! the statistics, residency from its [`residency::Tracker`], the request's budget), sends the
//! keep_alive residency chooses, pre-warms the likely model on an editor's intent
//! ([`Engine::prewarm`]) and runs the cascade to the next tier when an answer's confidence is low.

pub mod limits;
pub mod residency;
pub mod stats;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::analyze::{Action, Analysis, Analyzer, Query};
use crate::backend::{self, ChatRequest, Event, Finish, Message, Sampling, Target, Usage};
use crate::config::{CascadeMode, Config, EndpointKind, Tier, TierConfig};
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
    /// The wait to the first token this request may cost, in seconds; `None`: the configured
    /// budget for its urgency.
    pub budget_s: Option<f64>,
    pub urgency: Urgency,
    /// Overrides the answering tier's `cascade` setting.
    pub cascade: Option<CascadeMode>,
    /// A conversation sent whole by an HTTP client (the gateway); `None` for editor requests.
    pub conversation: Option<Conversation>,
    /// The document the request came from, with the selection's lines.
    pub focus: Option<context::Focus>,
    /// Other open documents.
    pub open_documents: Vec<context::Document>,
    /// The workspace index to retrieve from.
    pub workspace: Option<Arc<context::Workspace>>,
}

/// How soon the user expects an answer, which sets the default latency budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Urgency {
    /// A typed question (chat, `ask`): `[latency] budget_s`.
    #[default]
    Typed,
    /// A code action or hover, waited for with the cursor: `[latency] interactive_budget_s`.
    Interactive,
}

/// A conversation an HTTP client sent whole: it replaces the prompt `context` would assemble
/// (its messages go to the model as they are, secrets redacted, oldest turns dropped to fit).
/// `Request::prompt` is then its last user message, which is what the router reads.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    pub messages: Vec<Message>,
    pub sampling: Sampling,
    /// Overrides the tier's `max_tokens`.
    pub max_tokens: Option<u32>,
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
    /// The answer's confidence was low: the next tier answers too (its text follows).
    Cascading { to: &'a Candidate, reason: &'a str },
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
    /// The cascade to the next tier, offered or run, when the confidence was low.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cascade: Option<Cascade>,
    #[serde(skip)]
    pub analysis: Option<Analysis>,
}

/// What the cascade did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cascade {
    pub mode: CascadeMode,
    /// The tier that answered first and its confidence.
    pub from_tier: Tier,
    pub from_model: String,
    pub from_confidence: f32,
    /// The next tier: offered, or the one that answered second.
    pub tier: Tier,
    pub model: String,
    /// With `run`: where the second answer starts in `text` (bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second_answer_at: Option<usize>,
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
    /// Every candidate model was at its concurrency limit with a full queue, or no place came
    /// free within `limits.max_wait_s`.
    #[error("{message}")]
    Busy {
        message: String,
        retry_after_s: Option<u64>,
    },
}

/// Runs requests. One per process: it owns the HTTP client's connection pool.
pub struct Engine {
    config: Config,
    client: backend::Client,
    analyzer: Analyzer,
    pub stats: std::sync::Arc<Stats>,
    breakers: std::sync::Arc<Breakers>,
    residency: std::sync::Arc<residency::Tracker>,
    limiter: std::sync::Arc<limits::Limiter>,
    /// Where overrides are recorded (`feedback`); `None` records nothing.
    feedback: Option<std::sync::Arc<crate::feedback::Store>>,
    models: Arc<ModelWindows>,
}

/// Context lengths the model servers reported (`/api/show`), per endpoint and model; a failed
/// lookup is retried after [`WINDOW_RETRY`]. Also when the embedding endpoint last failed.
#[derive(Default)]
struct ModelWindows {
    lengths: Mutex<HashMap<ModelKey, (Arc<LengthCell>, Instant)>>,
    embed_failed: Mutex<Option<Instant>>,
}

/// An endpoint name and a model.
type ModelKey = (String, String);
/// A model's context length, looked up once (`None`: unknown, retried later).
type LengthCell = tokio::sync::OnceCell<Option<u64>>;

/// How long a failed `/api/show` or `/api/embed` is not tried again.
const WINDOW_RETRY: Duration = Duration::from_secs(30);
/// `/api/show` on a request's path: a slow server costs at most this once per model.
const SHOW_TIMEOUT: Duration = Duration::from_millis(800);
/// Embeddings for hybrid ranking: beyond this, BM25 alone.
const EMBED_TIMEOUT: Duration = Duration::from_secs(3);

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
            residency: std::sync::Arc::default(),
            limiter: std::sync::Arc::default(),
            feedback: None,
            models: Arc::default(),
        }
    }

    /// The same engine recording forced requests into `store` (when `[feedback] enabled`).
    pub fn with_feedback(self, store: std::sync::Arc<crate::feedback::Store>) -> Engine {
        Engine {
            feedback: Some(store),
            ..self
        }
    }

    /// The same engine with residency timed by `clock` (the replay benchmark's simulated day).
    pub fn with_clock(mut self, clock: residency::Clock) -> Engine {
        self.residency = std::sync::Arc::new(residency::Tracker::new(clock));
        self
    }

    /// Which models this engine has been using, and when.
    pub fn residency(&self) -> &residency::Tracker {
        &self.residency
    }

    /// The same engine with a new configuration: statistics, breakers, residency, concurrency
    /// slots (with the requests running in them) and the connection pool carry over.
    pub fn reconfigured(&self, config: Config) -> Engine {
        Engine {
            config,
            client: self.client.clone(),
            analyzer: self.analyzer.clone(),
            stats: self.stats.clone(),
            breakers: self.breakers.clone(),
            residency: self.residency.clone(),
            limiter: self.limiter.clone(),
            feedback: self.feedback.clone(),
            models: self.models.clone(),
        }
    }

    /// Waits for a place to run `model` on `endpoint` under the configured limits (for callers
    /// that talk to a backend directly, such as fill-in-the-middle). Dropping the future leaves
    /// the queue; dropping the permit frees the place.
    pub async fn slot(&self, endpoint: &str, model: &str) -> Result<limits::Permit, limits::Busy> {
        self.limiter
            .acquire(
                endpoint,
                model,
                limits::capacity(&self.config, endpoint, model),
                limits::QueuePolicy::of(&self.config),
            )
            .await
    }

    /// Running and queued requests per model (every configured model, idle ones included).
    pub fn loads(&self) -> Vec<limits::Load> {
        self.limiter.report(&self.config)
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
        // With feedback off, what was learned from the user's overrides is not applied either.
        let plain;
        let analyzer = if self.config.feedback.enabled || !self.analyzer.has_delta() {
            &self.analyzer
        } else {
            plain = self.analyzer.without_delta();
            &plain
        };
        let analysis = analyzer
            .analyze(&request.query())
            .map_err(|e| Error::Input(e.to_string()))?;
        let decision = self
            .route(request, snapshot, &analysis)
            .map_err(|e| Error::Input(e.to_string()))?;
        Ok((analysis, decision))
    }

    /// Records a forced request's features and tier (`feedback`), off the async thread.
    async fn record_override(&self, request: &Request) {
        let Some(store) = self
            .feedback
            .clone()
            .filter(|_| self.config.feedback.enabled)
        else {
            return;
        };
        // A forced model that is some tier's model means that tier (as `route` reads it).
        let model_tier = request.force.model.as_deref().and_then(|m| {
            Tier::ALL
                .into_iter()
                .find(|t| self.config.tier(*t).model == m)
        });
        let Some(tier) = crate::feedback::forced_tier(
            request.force.tier,
            request.force.model.as_deref(),
            model_tier,
            request.action == Some(Action::AskHeavy),
        ) else {
            return;
        };
        let Ok(analysis) = self.analyzer.analyze(&request.query()) else {
            return;
        };
        let features = self.analyzer.features(&request.query());
        let record = crate::feedback::Record::new(
            &features,
            tier,
            analysis.recommended(),
            crate::feedback::now(),
        );
        match tokio::task::spawn_blocking(move || store.record(record)).await {
            Ok(Ok(None)) => debug!(%tier, "override recorded"),
            Ok(Ok(Some(problem))) => warn!(%problem, "feedback file replaced"),
            Ok(Err(e)) => warn!(error = %e, "could not record the override"),
            Err(e) => warn!(error = %e, "could not record the override"),
        }
    }

    /// The request's latency budget in seconds.
    pub fn budget_s(&self, request: &Request) -> f64 {
        request.budget_s.unwrap_or(match request.urgency {
            Urgency::Typed => self.config.latency.budget_s,
            Urgency::Interactive => self.config.latency.interactive_budget_s,
        })
    }

    /// Routes with the latency rule's inputs gathered: timings of every tier's model, what
    /// residency knows, the budget.
    fn route(
        &self,
        request: &Request,
        snapshot: &Snapshot,
        analysis: &Analysis,
    ) -> Result<Decision, route::Error> {
        if !self.config.latency.enabled {
            return route::route(&self.config, snapshot, analysis, &request.force);
        }
        self.residency.observe(snapshot);
        let timings: Vec<route::ModelTiming> = Tier::ALL
            .into_iter()
            .map(|t| self.stats.timing(&self.config.tier(t).model))
            .collect();
        let residency = self.residency.residency();
        let latency = route::Latency {
            timings: &timings,
            residency: &residency,
            budget_s: self.budget_s(request),
            hard_budget: request.budget_s.is_some() || request.urgency == Urgency::Interactive,
            load_mb_per_s: self.config.latency.load_mb_per_s,
        };
        route::route_with_latency(&self.config, snapshot, analysis, &request.force, &latency)
    }

    /// Runs a request to its answer, and the cascade when it applies. Dropping the returned
    /// future cancels it: the open stream is dropped and its connection closed, so the model
    /// server stops generating.
    pub async fn run(
        &self,
        request: &Request,
        snapshot: &Snapshot,
        progress: &mut (dyn FnMut(Progress<'_>) + Send),
    ) -> Result<Answer, Error> {
        // Only the user's own request counts as an override, not a cascade's second ask.
        self.record_override(request).await;
        let answer = self.run_once(request, snapshot, progress).await?;
        if request.urgency == Urgency::Typed {
            self.residency.typed(answer.tier);
        }
        Ok(self.cascade(request, snapshot, progress, answer).await)
    }

    async fn run_once(
        &self,
        request: &Request,
        snapshot: &Snapshot,
        progress: &mut (dyn FnMut(Progress<'_>) + Send),
    ) -> Result<Answer, Error> {
        let started = Instant::now();
        let (analysis, decision) = self.decide(request, snapshot)?;
        self.run_decided(request, analysis, decision, started, snapshot, progress)
            .await
    }

    /// [`Engine::run`] with a decision the caller made or adjusted (the gateway pins a model its
    /// client named to the endpoints that have it). `started` is when the request arrived.
    pub async fn run_decided(
        &self,
        request: &Request,
        analysis: Analysis,
        decision: Decision,
        started: Instant,
        snapshot: &Snapshot,
        progress: &mut (dyn FnMut(Progress<'_>) + Send),
    ) -> Result<Answer, Error> {
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
        let material = self.gather(request).await;

        let primary = Candidate {
            tier: decision.tier,
            model: decision.model.clone(),
            endpoint: decision.endpoint.clone(),
        };
        let candidates: Vec<Candidate> = std::iter::once(primary)
            .chain(decision.fallbacks.iter().cloned())
            .collect();
        let mut fallbacks: Vec<Fallback> = Vec::new();
        let mut busy: Vec<limits::Busy> = Vec::new();
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
            let conversation = request.conversation.as_ref();
            let max_tokens = conversation
                .and_then(|c| c.max_tokens)
                .unwrap_or(tier_config.max_tokens);
            // The window is the configured num_ctx, capped at what the model supports; the
            // same number goes to Ollama, so nothing is truncated behind our back.
            let window = self.window(target, &candidate.model, tier_config).await;
            let budget = Budget {
                context_window: window,
                // A client asking for more than half the window still leaves room for its prompt.
                answer: max_tokens.min(window / 2),
                calibration: self.stats.calibration(&candidate.model),
            };
            let prompt = match conversation {
                Some(c) => context::conversation(&c.messages, budget),
                None => context::assemble(&request.query(), &analysis, &material, budget),
            };
            let keep_alive = self.keep_alive(candidate, &analysis);
            let chat = ChatRequest {
                model: candidate.model.clone(),
                messages: prompt.messages,
                keep_alive: Some(keep_alive),
                num_ctx: Some(window),
                max_tokens: Some(max_tokens),
                sampling: conversation.map(|c| c.sampling.clone()).unwrap_or_default(),
            };
            // Held until this attempt ends, whichever way; a dropped run frees it at once.
            let _permit = match self.slot(&candidate.endpoint, &candidate.model).await {
                Ok(permit) => permit,
                Err(b) => {
                    info!(model = %candidate.model, endpoint = %candidate.endpoint, error = %b.message, "busy; moving on");
                    progress(Progress::FellBack {
                        from: candidate,
                        error: &b.message,
                    });
                    fallbacks.push(fallback(candidate, b.message.clone()));
                    busy.push(b);
                    continue;
                }
            };
            let limits = self.limits(tier_config, &candidate.model, snapshot);
            progress(Progress::Trying(candidate));
            debug!(model = %candidate.model, endpoint = %candidate.endpoint, first_token_s = limits.first_token.as_secs_f64(), "asking");
            let mut text = String::new();
            let attempt_started = Instant::now();
            let in_use = self.residency.begin(&candidate.model);
            let attempt = self
                .attempt(target, &chat, limits, &mut text, progress)
                .await;
            drop(in_use);
            match attempt {
                Ok(done) => {
                    self.stats.record_timing(
                        &candidate.model,
                        done.first_token,
                        done.done.load_duration,
                        done.done.prompt_eval,
                    );
                    self.breakers.success(&candidate.endpoint);
                    let generation = attempt_started.elapsed().saturating_sub(done.first_token);
                    if let Some(reported) = done.done.usage.map(|u| u.prompt_tokens) {
                        // Our uncalibrated count of what was sent, against the server's.
                        let counted: usize = chat
                            .messages
                            .iter()
                            .map(|m| crate::analyze::tokens::count(&m.content).tokens)
                            .sum();
                        if let Some(ratio) = context::budget::calibration_sample(counted, reported)
                        {
                            self.stats.calibrate(&candidate.model, ratio);
                        }
                    }
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
                        prompt.report.clone(),
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
                        prompt.report.clone(),
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
        if !busy.is_empty() && busy.len() == fallbacks.len() {
            let retry_after_s = busy.iter().filter_map(|b| b.retry_after_s).min();
            let message = match busy.as_slice() {
                [only] => only.message.clone(),
                many => format!(
                    "every model is busy: {}",
                    many.iter()
                        .map(|b| b.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            };
            return Err(Error::Busy {
                message,
                retry_after_s,
            });
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
                    if text.len() + delta.len() > MAX_ANSWER_BYTES {
                        // A server that ignores max_tokens and streams without end must not
                        // fill the memory; what came so far is kept.
                        return Err(AttemptError::AfterFirstToken {
                            error: format!(
                                "the answer grew past {} MB: the server ignores max_tokens",
                                MAX_ANSWER_BYTES / (1024 * 1024)
                            ),
                            usage,
                        });
                    }
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
            confidence = confidence_after_fallbacks(confidence, fallbacks.len());
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
        let selection_cut = context
            .sources
            .iter()
            .any(|s| s.kind == context::SourceKind::Selection && s.cut);
        if selection_cut {
            confidence *= 0.8;
            reasons.push("the selection was cut to fit the context window".to_string());
        } else if context.cut {
            confidence *= 0.9;
            let cut = context.sources.iter().filter(|s| s.cut).count();
            reasons.push(format!(
                "context was cut to fit the {}-token window: {} piece(s) shortened, {} left out",
                context.window,
                cut,
                context.omitted.len()
            ));
        }
        let retrieved = context
            .sources
            .iter()
            .filter(|s| {
                matches!(
                    s.kind,
                    context::SourceKind::Workspace | context::SourceKind::Document
                )
            })
            .count();
        if retrieved > 0 {
            reasons.push(format!(
                "{retrieved} piece(s) of the workspace and open files in the prompt, ranked by {}",
                context.ranking.unwrap_or("bm25")
            ));
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
            cascade: None,
            analysis: Some(analysis),
        }
    }
}

/// What an editor's intent is about to ask (`triage/intent`).
#[derive(Debug, Clone, Default)]
pub struct Intent {
    pub kind: IntentKind,
    pub selection: Option<String>,
    pub language_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum IntentKind {
    /// A chat panel was focused.
    #[default]
    Chat,
    /// A (large) selection was made.
    Selection,
    /// A code action menu was opened.
    CodeAction,
}

/// What a pre-warm did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Prewarm {
    /// The model was asked to load, and answered that it is loaded.
    Loaded { tier: Tier, model: String },
    /// Nothing was loaded, and why.
    Skipped { reason: String },
}

/// A selection shorter than this is no reason to pre-warm: the request will be quick anyway.
pub const PREWARM_MIN_SELECTION_CHARS: usize = 200;
/// The budget a pre-warm routes the selection with, in seconds.
const PREWARM_HORIZON_S: f64 = 600.0;

impl Engine {
    /// The keep_alive for one attempt: chosen by residency and recorded there, or the tier's
    /// own when the latency rule is off.
    fn keep_alive(&self, candidate: &Candidate, analysis: &Analysis) -> String {
        if !self.config.latency.enabled {
            return self.config.tier(candidate.tier).keep_alive.clone();
        }
        self.residency.keep_alive_for(
            &self.config,
            candidate.tier,
            &candidate.model,
            analysis.scores.ranking()[0],
        )
    }

    /// The cascade: when the answer's confidence is below its tier's `cascade_below` and the
    /// mode (the request's, else the tier's) is `offer` or `run`, the next enabled tier up is
    /// offered in the answer, or asked too and its answer appended. A forced tier or model
    /// never cascades.
    async fn cascade(
        &self,
        request: &Request,
        snapshot: &Snapshot,
        progress: &mut (dyn FnMut(Progress<'_>) + Send),
        mut first: Answer,
    ) -> Answer {
        let tier_config = self.config.tier(first.tier);
        let mode = request.cascade.unwrap_or(tier_config.cascade);
        let forced = request.force.tier.is_some() || request.force.model.is_some();
        if mode == CascadeMode::Off || forced || first.confidence >= tier_config.cascade_below {
            return first;
        }
        let Some(next) = Tier::ALL
            .into_iter()
            .find(|t| *t > first.tier && self.config.tier(*t).enabled)
        else {
            return first;
        };
        let next_model = self.config.tier(next).model.clone();
        let reason = format!(
            "confidence {:.2} of {} ({}) is below {:.2}",
            first.confidence, first.tier, first.model, tier_config.cascade_below
        );
        let mut note = Cascade {
            mode,
            from_tier: first.tier,
            from_model: first.model.clone(),
            from_confidence: first.confidence,
            tier: next,
            model: next_model.clone(),
            second_answer_at: None,
        };
        if mode == CascadeMode::Offer {
            first.reasons.push(format!(
                "{reason}: the {next} tier ({next_model}) is offered for a stronger answer"
            ));
            first.cascade = Some(note);
            return first;
        }
        let candidate = Candidate {
            tier: next,
            model: next_model.clone(),
            endpoint: self
                .config
                .tier(next)
                .endpoints
                .first()
                .cloned()
                .unwrap_or_default(),
        };
        let separator = format!(
            "

---
*{next} ({next_model}) answers too: {reason}.*

"
        );
        progress(Progress::Cascading {
            to: &candidate,
            reason: &reason,
        });
        progress(Progress::Delta(&separator));
        let second_request = Request {
            force: Force {
                tier: Some(next),
                model: None,
            },
            cascade: Some(CascadeMode::Off),
            ..request.clone()
        };
        match self.run_once(&second_request, snapshot, progress).await {
            Ok(mut second) => {
                let at = first.text.len() + separator.len();
                second.text = format!("{}{separator}{}", first.text, second.text);
                let mut reasons = first.reasons;
                reasons.push(format!("{reason}: the {next} tier answered too"));
                reasons.extend(second.reasons);
                second.reasons = reasons;
                note.second_answer_at = Some(at);
                second.cascade = Some(note);
                second.timings.first_token_ms = first.timings.first_token_ms;
                second
            }
            Err(e) => {
                first.reasons.push(format!(
                    "{reason}: the {next} tier was asked too but failed: {e}"
                ));
                first.text.push_str(&separator);
                first.text.push_str(&format!("({next_model} failed: {e})"));
                note.second_answer_at = None;
                first.cascade = Some(note);
                first
            }
        }
    }

    /// Pre-warms the model an intent is likely to need: the route of the selection for a
    /// selection or code-action intent (none under `PREWARM_MIN_SELECTION_CHARS`), the tier of
    /// the last typed request for a chat (the coder by default). It loads only
    /// when that model is not loaded, fits by evicting nothing in use or used in the last
    /// `REUSE_WINDOW_S`, and its endpoint is Ollama (an empty request with keep_alive).
    /// Dropping the future cancels the request.
    pub async fn prewarm(&self, intent: &Intent, snapshot: &Snapshot) -> Prewarm {
        let skipped = |reason: String| Prewarm::Skipped { reason };
        if !self.config.latency.prewarm {
            return skipped("pre-warming is off (`[latency] prewarm = false`)".to_string());
        }
        if snapshot.gpu.is_none() {
            return skipped(
                "no GPU reading: cannot tell whether the model fits (set `[vram] total_mb`)"
                    .to_string(),
            );
        }
        let selection = intent
            .selection
            .as_deref()
            .filter(|s| s.trim().chars().count() >= PREWARM_MIN_SELECTION_CHARS);
        let urgency = match intent.kind {
            IntentKind::Chat => Urgency::Typed,
            IntentKind::Selection | IntentKind::CodeAction => Urgency::Interactive,
        };
        let (tier, analysis) = match selection {
            Some(text) => {
                // Ahead of the request a load is what pre-warming hides: the likely model is
                // the one the request would want if it had time for a load.
                let request = Request {
                    selection: Some(text.to_string()),
                    language_id: intent.language_id.clone(),
                    urgency,
                    budget_s: Some(PREWARM_HORIZON_S),
                    ..Request::default()
                };
                match self.decide(&request, snapshot) {
                    Ok((analysis, decision)) => (decision.tier, analysis),
                    Err(e) => return skipped(format!("the selection cannot be routed: {e}")),
                }
            }
            None if intent.kind != IntentKind::Chat => {
                return skipped("the selection is small: no need to pre-warm".to_string())
            }
            None => {
                let tier = self
                    .residency
                    .last_typed()
                    .filter(|t| self.config.tier(*t).enabled)
                    .or_else(|| {
                        [Tier::Coder, Tier::Fast, Tier::Heavy]
                            .into_iter()
                            .find(|t| self.config.tier(*t).enabled)
                    })
                    .unwrap_or(Tier::Fast);
                let analysis = match self.analyzer.analyze(&Query {
                    prompt: "…",
                    ..Query::default()
                }) {
                    Ok(a) => a,
                    Err(e) => return skipped(e.to_string()),
                };
                (tier, analysis)
            }
        };
        let t = self.config.tier(tier);
        let timings = [self.stats.timing(&t.model)];
        let residency = self.residency.residency();
        let latency = route::Latency {
            timings: &timings,
            residency: &residency,
            budget_s: self.config.latency.budget_s,
            hard_budget: true,
            load_mb_per_s: self.config.latency.load_mb_per_s,
        };
        let expected = route::expect(&self.config, snapshot, &analysis, &latency, tier);
        if expected.loaded {
            return skipped(format!("{} is already loaded", t.model));
        }
        if !expected.blocked_by.is_empty() {
            return skipped(format!(
                "{} would evict {}, which is answering",
                t.model,
                expected.blocked_by.join(", ")
            ));
        }
        if expected.never_fits {
            return skipped(format!("{} does not fit into VRAM", t.model));
        }
        if expected.eviction_cost_s > 0.0 || !expected.ping_pong.is_empty() {
            return skipped(format!(
                "{} would evict {}, in recent use",
                t.model,
                expected.evicts.join(", ")
            ));
        }
        let Some((name, endpoint)) = t
            .endpoints
            .iter()
            .find_map(|n| self.config.endpoints.get(n).map(|e| (n, e)))
        else {
            return skipped(format!("the {tier} tier has no endpoint"));
        };
        let target = Target { name, endpoint };
        self.residency
            .prewarmed(&t.model, residency::PREWARM_KEEP_ALIVE);
        // As long as a cold load may take before a first token.
        let timeout = self.limits(t, &t.model, snapshot).first_token;
        match self
            .client
            .preload(target, &t.model, residency::PREWARM_KEEP_ALIVE, timeout)
            .await
        {
            Ok(()) => {
                info!(model = %t.model, %tier, "pre-warmed");
                Prewarm::Loaded {
                    tier,
                    model: t.model.clone(),
                }
            }
            Err(e) => skipped(format!("{} could not be pre-warmed: {e}", t.model)),
        }
    }
}
/// The longest answer kept: 2048 tokens are ~10 KB of text; far beyond is a broken server.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

impl Engine {
    /// Collects the request's context: off the async runtime, since it reads files.
    async fn gather(&self, request: &Request) -> context::Material {
        let workspace = request.workspace.clone();
        if request.focus.is_none() && request.open_documents.is_empty() && workspace.is_none() {
            return context::Material::default();
        }
        let mut query = request.prompt.clone();
        if let Some(selection) = &request.selection {
            query.push('\n');
            query.push_str(crate::analyze::signals::prefix(selection, 4096));
        }
        let gathering = context::Gathering {
            query: query.clone(),
            focus: request.focus.clone(),
            open: request.open_documents.clone(),
            workspace,
        };
        let mut material =
            match tokio::task::spawn_blocking(move || context::gather(&gathering)).await {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "gathering context failed");
                    context::Material::default()
                }
            };
        self.rerank(&mut material, &query).await;
        material
    }

    /// Hybrid ranking: when an embedding model is configured, the BM25 candidates are embedded
    /// with the query and the two rankings fused; any failure leaves BM25's order.
    async fn rerank(&self, material: &mut context::Material, query: &str) {
        let Some(model) = &self.config.context.embed_model else {
            return;
        };
        if material.pieces.len() < 2 {
            return;
        }
        let name = self
            .config
            .context
            .embed_endpoint
            .as_deref()
            .unwrap_or(crate::config::DEFAULT_ENDPOINT);
        let Some(endpoint) = self.config.endpoints.get(name) else {
            return;
        };
        let failed_recently =
            lock(&self.models.embed_failed).is_some_and(|t| t.elapsed() < WINDOW_RETRY);
        if failed_recently {
            material.notes.push(format!(
                "embedding model `{model}` failed recently: ranked by BM25 alone"
            ));
            return;
        }
        let target = Target { name, endpoint };
        let mut inputs = vec![crate::analyze::signals::prefix(query, 2048).to_string()];
        inputs.extend(
            material
                .pieces
                .iter()
                .map(|p| crate::analyze::signals::prefix(&p.text, 2048).to_string()),
        );
        match self
            .client
            .embed(target, model, &inputs, EMBED_TIMEOUT)
            .await
        {
            Ok(vectors) => {
                let query_vector = &vectors[0];
                let mut order: Vec<(usize, f32)> = vectors[1..]
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i, context::rank::cosine(query_vector, v)))
                    .collect();
                order.sort_by(|a, b| b.1.total_cmp(&a.1));
                let dense: Vec<usize> = order.into_iter().map(|(i, _)| i).collect();
                context::fuse_with(material, &dense);
            }
            Err(e) => {
                info!(model = %model, error = %e, "embedding failed; BM25 alone");
                *lock(&self.models.embed_failed) = Some(Instant::now());
                material.notes.push(format!(
                    "embedding model `{model}` on `{name}` failed ({e}): ranked by BM25 alone"
                ));
            }
        }
    }

    /// The context window for a model: the tier's `num_ctx`, capped at the context length the
    /// model server reports (Ollama `/api/show`, looked up once per model).
    async fn window(&self, target: Target<'_>, model: &str, tier: &TierConfig) -> u32 {
        if target.endpoint.kind != EndpointKind::Ollama {
            return tier.num_ctx;
        }
        let key = (target.name.to_string(), model.to_string());
        // One lookup per model even when many requests start at once (each would otherwise
        // open its own connection, left idle in the pool afterwards).
        let cell = {
            let mut lengths = lock(&self.models.lengths);
            let entry = lengths
                .entry(key)
                .or_insert_with(|| (Arc::new(LengthCell::new()), Instant::now()));
            let failed = matches!(entry.0.get(), Some(None));
            if failed && entry.1.elapsed() >= WINDOW_RETRY {
                *entry = (Arc::new(LengthCell::new()), Instant::now());
            }
            entry.0.clone()
        };
        let length = *cell
            .get_or_init(|| async {
                match tokio::time::timeout(SHOW_TIMEOUT, self.client.show(target, model)).await {
                    Ok(Ok(info)) => info.context_length.filter(|n| *n > 0),
                    _ => None,
                }
            })
            .await;
        match length {
            Some(n) if n < tier.num_ctx as u64 => n as u32,
            _ => tier.num_ctx,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    first_token: Duration,
    idle: Duration,
    total: Duration,
}

/// The router's confidence lowered for each fallback taken: what is known of an answer's
/// confidence at its first token (the finish and a cut context lower it further at the end).
pub fn confidence_after_fallbacks(confidence: f32, fallbacks: usize) -> f32 {
    confidence * 0.85f32.powi(fallbacks.min(64) as i32)
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
        "expected_wait_s": d.expected.iter().map(|e| (e.tier.as_str().to_string(), json!((e.cost_s() * 10.0).round() / 10.0))).collect::<serde_json::Map<String, serde_json::Value>>(),
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
