//! The bridge from the engine to a response: the engine's run is a future the response body
//! polls itself, so
//!
//! - **backpressure** is the socket's: hyper asks the body for its next chunk only when the
//!   client has taken the last ones, and only then does the engine (and with it the backend's
//!   socket) get polled again. What waits in between is the deltas of one poll — one read of the
//!   backend's stream — not the rest of the answer;
//! - **cancellation** is by drop: a client that goes away drops the body, the body drops the
//!   run, the run drops the backend stream, which closes the model's connection;
//! - the **routing headers** can be written once the first token is there: every fallback taken
//!   before it is known by then ([`Pump::first`]).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::Stream;

use super::{Plan, Routed, Shared};
use crate::engine::{self, Answer, Progress};
use crate::route::Candidate;
use crate::vram::Snapshot;

type Run = Pin<Box<dyn Future<Output = Result<Answer, engine::Error>> + Send>>;

/// What the engine has reported so far.
#[derive(Default)]
struct Seen {
    /// The router's confidence.
    confidence: Option<f32>,
    /// The candidate being asked (the one answering, once a delta came).
    trying: Option<Candidate>,
    fallbacks: usize,
    deltas: VecDeque<String>,
    keep_deltas: bool,
}

/// One step of an answer.
#[allow(clippy::large_enum_variant)] // one `Done` per answer
pub(crate) enum Step {
    Delta(String),
    Done(Result<Answer, engine::Error>),
}

/// A running request.
pub(crate) struct Pump {
    run: Option<Run>,
    result: Option<Result<Answer, engine::Error>>,
    seen: Arc<Mutex<Seen>>,
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    match seen.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Whether the body streams the deltas or only the end matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Stream,
    Whole,
}

impl Pump {
    /// Starts nothing yet: the run begins when the pump is first polled.
    pub fn new(
        gateway: Shared,
        request: engine::Request,
        plan: Plan,
        snapshot: Snapshot,
        started: Instant,
        mode: Mode,
    ) -> Pump {
        let seen = Arc::new(Mutex::new(Seen {
            keep_deltas: mode == Mode::Stream,
            ..Seen::default()
        }));
        let reports = seen.clone();
        let run = Box::pin(async move {
            let mut progress = move |p: Progress<'_>| {
                let mut s = lock(&reports);
                match p {
                    Progress::Routed(d) => s.confidence = Some(d.confidence),
                    Progress::Trying(c) => s.trying = Some(c.clone()),
                    Progress::FellBack { .. } => s.fallbacks += 1,
                    // A second tier answers after the first (`cascade = "run"`): its text
                    // follows in the same stream, and the final object names it.
                    Progress::Cascading { .. } => {}
                    Progress::Delta(d) if s.keep_deltas => s.deltas.push_back(d.to_string()),
                    Progress::Delta(_) => {}
                }
            };
            match plan {
                Plan::Route => gateway.engine.run(&request, &snapshot, &mut progress).await,
                Plan::Pinned { analysis, decision } => {
                    gateway
                        .engine
                        .run_decided(
                            &request,
                            analysis,
                            decision,
                            started,
                            &snapshot,
                            &mut progress,
                        )
                        .await
                }
            }
        });
        Pump {
            run: Some(run),
            result: None,
            seen,
        }
    }

    /// Drives the run until its first delta or its end, taking neither.
    pub async fn first(&mut self) {
        std::future::poll_fn(|cx| {
            if self.poll_run(cx) || !lock(&self.seen).deltas.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Drives the run to its end.
    pub async fn finish(&mut self) -> Result<Answer, engine::Error> {
        std::future::poll_fn(|cx| {
            if self.poll_run(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        self.result.take().unwrap_or_else(|| {
            Err(engine::Error::Failed {
                message: "the request ended without an answer".to_string(),
                partial: None,
                fallbacks: Vec::new(),
            })
        })
    }

    /// Polls the run once unless it ended; `true` once it has.
    fn poll_run(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(run) = self.run.as_mut() {
            if let Poll::Ready(result) = run.as_mut().poll(cx) {
                self.run = None;
                self.result = Some(result);
            }
        }
        self.run.is_none()
    }

    /// Who is answering as of now: the candidate asked last, the fallbacks before it and the
    /// router's confidence lowered for them. `None` before the router decided.
    pub fn routed(&self) -> Option<Routed> {
        let s = lock(&self.seen);
        let candidate = s.trying.as_ref()?;
        Some(Routed {
            tier: candidate.tier,
            model: candidate.model.clone(),
            fallbacks: s.fallbacks,
            confidence: engine::confidence_after_fallbacks(s.confidence?, s.fallbacks),
        })
    }

    /// The run failed before its first delta: the error, so that it can be answered with an
    /// error status instead of a stream.
    pub fn failed_early(&mut self) -> Option<engine::Error> {
        if !lock(&self.seen).deltas.is_empty() || !matches!(self.result, Some(Err(_))) {
            return None;
        }
        match self.result.take() {
            Some(Err(e)) => Some(e),
            _ => None,
        }
    }
}

impl Stream for Pump {
    type Item = Step;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Step>> {
        let this = self.get_mut();
        if let Some(delta) = lock(&this.seen).deltas.pop_front() {
            return Poll::Ready(Some(Step::Delta(delta)));
        }
        let ended = this.poll_run(cx);
        // Deltas of the last poll go out before the end.
        if let Some(delta) = lock(&this.seen).deltas.pop_front() {
            return Poll::Ready(Some(Step::Delta(delta)));
        }
        if !ended {
            return Poll::Pending;
        }
        Poll::Ready(this.result.take().map(Step::Done))
    }
}
