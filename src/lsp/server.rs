//! The `LanguageServer` implementation: capabilities, text sync, code actions and commands,
//! hover, completion, the custom `triage/*` methods, progress and status notifications.
//!
//! Handlers are short: they translate LSP types to engine requests (`from_proto`) and answers
//! back (`to_proto`), nothing more. Documents are cloned (cheap ropes) and their lock dropped
//! before any `.await`, so a hung backend never blocks another request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use tower_lsp_server::jsonrpc::{self, ErrorCode};
use tower_lsp_server::ls_types::notification::Notification;
use tower_lsp_server::ls_types::*;
use tower_lsp_server::{Client, LanguageServer};

use super::documents::{self, Documents, Encoding};
use super::{index, shell};
use crate::analyze::{self, Action};
use crate::backend::{self, FimRequest, Target};
use crate::config::{self, Config, Tier};
use crate::engine::{self, Engine, Progress};
use crate::route::Force;
use crate::vram::Monitor;

/// Command names, as DESIGN.md fixes them.
pub const COMMANDS: [(&str, &str, Action); 7] = [
    ("triage.explain", "Explain", Action::Explain),
    (
        "triage.explainShell",
        "Explain shell command",
        Action::ExplainShell,
    ),
    ("triage.fix", "Fix", Action::Fix),
    ("triage.refactor", "Refactor", Action::Refactor),
    ("triage.docstring", "Add docstring", Action::Docstring),
    ("triage.tests", "Write tests", Action::Tests),
    (
        "triage.ask",
        "Ask the heavy model (deep analysis)",
        Action::AskHeavy,
    ),
];

/// A snapshot this old is still used: the status loop refreshes every second, so a request
/// never needs to start a refresh of its own (which would compete with its model call).
const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(3);

/// The server's shared state.
pub struct State {
    pub(super) docs: Mutex<Documents>,
    encoding: RwLock<Encoding>,
    sources: config::Sources,
    engine: RwLock<Arc<Engine>>,
    monitor: RwLock<Monitor>,
    hover_cache: Mutex<HashMap<String, String>>,
    fim_capable: Mutex<HashMap<String, bool>>,
    /// Per document: bumped by every change, so a running completion knows it is stale.
    generations: Mutex<HashMap<Uri, tokio::sync::watch::Sender<u64>>>,
    /// Models answering right now, for the status bar.
    at_work: Mutex<Vec<String>>,
    status_poke: tokio::sync::watch::Sender<u64>,
    warned: Mutex<(Option<Instant>, HashMap<String, Instant>)>,
    sync_errors: Mutex<Vec<String>>,
    work_done_progress: AtomicBool,
    /// Commands running under a server-created progress token, by token: the editor's Cancel
    /// button (`window/workDoneProgress/cancel`) stops them like `$/cancelRequest`.
    progress_cancels: Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    shutdown: AtomicBool,
    /// Between `initialize` and `shutdown` (as the ordering layer saw them arrive): text sync
    /// applies only then.
    session: AtomicBool,
    client: std::sync::OnceLock<Client>,
    /// The running pre-warm of each intent kind; a new intent or `active: false` aborts it.
    prewarms: Mutex<HashMap<engine::IntentKind, tokio::task::JoinHandle<()>>>,
    /// The workspace index, when the client named folders (none: no index, no memory).
    workspace: RwLock<Option<Arc<crate::context::Workspace>>>,
    /// The client registers file watchers for us (`didChangeWatchedFiles.dynamicRegistration`).
    watch_files: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn read<T: Clone>(m: &RwLock<T>) -> T {
    match m.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

fn write<T>(m: &RwLock<T>, value: T) {
    match m.write() {
        Ok(mut g) => *g = value,
        Err(p) => *p.into_inner() = value,
    }
}

impl State {
    pub fn new(
        sources: config::Sources,
        config: Config,
    ) -> Result<State, analyze::model::LoadError> {
        let client = backend::Client::new(Duration::from_secs(3));
        let (stats, stats_problem) = engine::stats::default_path()
            .map(|p| engine::Stats::load_checked(&p))
            .unwrap_or_default();
        if let Some(problem) = &stats_problem {
            tracing::warn!("{problem}");
        }
        let mut analyzer = analyze::Analyzer::builtin()?;
        let store = crate::feedback::Store::default_store().map(Arc::new);
        if let (Some(store), true) = (&store, config.feedback.enabled) {
            let (adapted, problem) = crate::feedback::adapt(analyzer, store);
            if let Some(problem) = problem {
                tracing::warn!(%problem, "feedback delta not used");
            }
            analyzer = adapted;
        }
        let mut engine = Engine::new(config.clone(), client.clone(), analyzer, stats);
        if let Some(store) = store {
            engine = engine.with_feedback(store);
        }
        let monitor = Monitor::new(&config, client.clone());
        Ok(State {
            docs: Mutex::default(),
            encoding: RwLock::new(Encoding::Utf16),
            sources,
            engine: RwLock::new(Arc::new(engine)),
            monitor: RwLock::new(monitor),
            hover_cache: Mutex::default(),
            fim_capable: Mutex::default(),
            generations: Mutex::default(),
            at_work: Mutex::default(),
            status_poke: tokio::sync::watch::channel(0).0,
            warned: Mutex::default(),
            // Shown with the first text-sync report (after `initialized`).
            sync_errors: Mutex::new(stats_problem.into_iter().collect()),
            work_done_progress: AtomicBool::new(false),
            progress_cancels: Mutex::default(),
            shutdown: AtomicBool::new(false),
            session: AtomicBool::new(false),
            client: std::sync::OnceLock::new(),
            prewarms: Mutex::default(),
            workspace: RwLock::new(None),
            watch_files: AtomicBool::new(false),
        })
    }

    fn workspace(&self) -> Option<Arc<crate::context::Workspace>> {
        read(&self.workspace)
    }

    /// Keeps the index in step with an open document (its buffer supersedes the file).
    fn follow(&self, uri: &Uri, closed: bool) {
        let Some(ws) = self.workspace() else { return };
        let Some(path) = index::file_path(uri) else {
            return;
        };
        if closed {
            ws.close(&path);
        } else if let Some(doc) = lock(&self.docs).get(uri) {
            ws.edited(&path, doc.text.clone());
        }
    }

    fn engine(&self) -> Arc<Engine> {
        read(&self.engine)
    }

    fn encoding(&self) -> Encoding {
        read(&self.encoding)
    }

    /// Applies a text-sync notification. Called by the ordering layer in the order messages
    /// arrive, before any handler runs, so edits can never be reordered.
    pub(super) fn sync(&self, method: &str, params: Option<&Value>) {
        let Some(params) = params else { return };
        let result = match method {
            "textDocument/didOpen" => DidOpenTextDocumentParams::deserialize(params)
                .map(|p| {
                    let d = p.text_document;
                    lock(&self.docs).open(d.uri.clone(), &d.text, d.version, d.language_id);
                    self.follow(&d.uri, false);
                })
                .map_err(|e| format!("didOpen: {e}")),
            "textDocument/didChange" => match DidChangeTextDocumentParams::deserialize(params) {
                Ok(p) => {
                    let uri = p.text_document.uri;
                    let applied = lock(&self.docs).change(
                        &uri,
                        p.text_document.version,
                        &p.content_changes,
                        self.encoding(),
                    );
                    if let Some(g) = lock(&self.generations).get(&uri) {
                        g.send_modify(|v| *v += 1);
                    }
                    if applied.is_ok() {
                        self.follow(&uri, false);
                    }
                    applied.map_err(|e| e.to_string())
                }
                Err(e) => Err(format!("didChange: {e}")),
            },
            "textDocument/didClose" => DidCloseTextDocumentParams::deserialize(params)
                .map(|p| {
                    lock(&self.docs).close(&p.text_document.uri);
                    lock(&self.generations).remove(&p.text_document.uri);
                    self.follow(&p.text_document.uri, true);
                })
                .map_err(|e| format!("didClose: {e}")),
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "text sync");
            // Reported at once: a notification whose params do not parse never reaches a
            // handler that could report it later.
            if let (Some(client), Ok(_)) = (
                self.client.get().cloned(),
                tokio::runtime::Handle::try_current(),
            ) {
                tokio::spawn(async move {
                    client
                        .log_message(MessageType::ERROR, format!("triage: {e}"))
                        .await;
                });
            } else {
                lock(&self.sync_errors).push(e);
            }
        }
    }

    pub(super) fn begin_session(&self) {
        if !self.shutdown.load(Ordering::Relaxed) {
            self.session.store(true, Ordering::Relaxed);
        }
    }

    pub(super) fn end_session(&self) {
        self.session.store(false, Ordering::Relaxed);
    }

    pub(super) fn in_session(&self) -> bool {
        self.session.load(Ordering::Relaxed)
    }

    /// Whether `shutdown` came before the session ended.
    pub fn shut_down_cleanly(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    fn generation(&self, uri: &Uri) -> tokio::sync::watch::Receiver<u64> {
        lock(&self.generations)
            .entry(uri.clone())
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe()
    }
}

/// The LSP front end.
pub struct Server {
    client: Client,
    state: Arc<State>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Server {
    pub fn new(client: Client, state: Arc<State>) -> Server {
        let _ = state.client.set(client.clone());
        Server {
            client,
            state,
            tasks: Mutex::default(),
        }
    }

    async fn report_sync_errors(&self) {
        let errors: Vec<String> = std::mem::take(&mut *lock(&self.state.sync_errors));
        for e in errors {
            self.client
                .log_message(MessageType::ERROR, format!("triage: {e}"))
                .await;
        }
    }

    /// A warning the user should see, at most once a minute per text and once in 5 s overall.
    async fn warn_user(&self, text: String) {
        let show = {
            let mut w = lock(&self.state.warned);
            let now = Instant::now();
            let recent_any =
                w.0.is_some_and(|t| now.duration_since(t) < Duration::from_secs(5));
            let recent_same =
                w.1.get(&text)
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60));
            if recent_any || recent_same {
                false
            } else {
                w.0 = Some(now);
                w.1.insert(text.clone(), now);
                true
            }
        };
        self.client
            .log_message(MessageType::WARNING, format!("triage: {text}"))
            .await;
        if show {
            self.client
                .show_message(MessageType::WARNING, format!("triage: {text}"))
                .await;
        }
    }

    fn apply_config(&self, overlay: Option<&Value>) -> Result<(), String> {
        let config =
            config::load_with_overlay(&self.state.sources, overlay).map_err(|e| e.to_string())?;
        let engine = self.state.engine().reconfigured(config.clone());
        write(&self.state.engine, Arc::new(engine));
        let monitor = Monitor::new(&config, self.state.engine().client().clone());
        write(&self.state.monitor, monitor);
        lock(&self.state.fim_capable).clear();
        Ok(())
    }

    /// Runs a request through the engine, streaming deltas to `on_delta` (in order) and
    /// reporting "Loading <model>… N s" on `progress` while no token has come.
    async fn run(
        &self,
        request: engine::Request,
        progress: Option<ProgressToken>,
        deltas: Option<ProgressToken>,
    ) -> Result<engine::Answer, engine::Error> {
        let engine = self.state.engine();
        let snapshot = read(&self.state.monitor).snapshot(SNAPSHOT_MAX_AGE);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        enum Event {
            Routed(Option<String>),
            Trying(String),
            FellBack(String),
            Delta(String),
        }
        let client = self.client.clone();
        let delta_token = deltas.clone();
        let work_token = progress.clone();
        // Polled in the same task as the run (no hop to another task and back): each delta
        // goes out as soon as the run yields.
        let forwarder = async move {
            let mut first = true;
            while let Some(event) = rx.recv().await {
                match event {
                    Event::Delta(text) => {
                        if let Some(token) = &delta_token {
                            send_progress(
                                &client,
                                token,
                                json!({ "kind": "report", "message": text, "delta": text }),
                            )
                            .await;
                        }
                        if first {
                            first = false;
                            if let Some(token) = &work_token {
                                if delta_token.as_ref() != Some(token) {
                                    send_progress(
                                        &client,
                                        token,
                                        json!({"kind": "report", "message": "answering…"}),
                                    )
                                    .await;
                                }
                            }
                        }
                    }
                    Event::Routed(Some(warning)) | Event::FellBack(warning) => {
                        client
                            .log_message(MessageType::WARNING, format!("triage: {warning}"))
                            .await;
                    }
                    Event::Trying(model) => {
                        if let Some(token) = &work_token {
                            send_progress(
                                &client,
                                token,
                                json!({"kind": "report", "message": format!("Asking {model}…")}),
                            )
                            .await;
                        }
                    }
                    Event::Routed(None) => {}
                }
            }
        };
        tokio::pin!(forwarder);
        let mut forwarded = false;
        let current = Arc::new(Mutex::new((String::new(), false)));
        let state = self.state.clone();
        let seen = current.clone();
        let started = Instant::now();
        // In a block, so that the progress closure (holding the sender) is gone before the
        // forwarder is awaited.
        let result = {
            let mut on_progress = move |p: Progress<'_>| {
                let event = match p {
                    Progress::Routed(d) => Event::Routed(d.warning.clone()),
                    Progress::Trying(c) => {
                        *lock(&seen) = (c.model.clone(), false);
                        mark_at_work(&state, &c.model, true);
                        Event::Trying(c.model.clone())
                    }
                    Progress::Cascading { to, reason } => {
                        *lock(&seen) = (to.model.clone(), false);
                        mark_at_work(&state, &to.model, true);
                        Event::Routed(Some(format!("{reason}: asking {} too", to.model)))
                    }
                    Progress::FellBack { from, error } => {
                        mark_at_work(&state, &from.model, false);
                        Event::FellBack(format!(
                            "{} on {} failed: {error}",
                            from.model, from.endpoint
                        ))
                    }
                    Progress::Delta(d) => {
                        lock(&seen).1 = true;
                        Event::Delta(d.to_string())
                    }
                };
                let _ = tx.send(event);
            };
            let run = engine.run(&request, &snapshot, &mut on_progress);
            tokio::pin!(run);
            // Not `interval(1 s)` + a first `tick().await`: that first tick is rounded up to
            // the timer's next millisecond and would hold every request back by up to 1 ms.
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + Duration::from_secs(1),
                Duration::from_secs(1),
            );
            loop {
                tokio::select! {
                    biased;
                    _ = &mut forwarder, if !forwarded => forwarded = true,
                    result = &mut run => break result,
                    _ = tick.tick() => {
                        let (model, answering) = lock(&current).clone();
                        if let (false, Some(token)) = (answering, &progress) {
                            // No model asked yet after a second: the request waits in a queue
                            // (every candidate is at its concurrency limit).
                            let message = if model.is_empty() {
                                format!("Waiting for a free model (all busy)… {} s", started.elapsed().as_secs())
                            } else {
                                format!("Loading {model}… {} s", started.elapsed().as_secs())
                            };
                            send_progress(&self.client, token, json!({"kind": "report", "message": message})).await;
                        }
                    }
                }
            }
        };
        if !forwarded {
            forwarder.await;
        }
        let (model, _) = lock(&current).clone();
        mark_at_work(&self.state, &model, false);
        if let Ok(answer) = &result {
            if let Some(w) = &answer.warning {
                self.warn_user(w.clone()).await;
            }
            if let Some(c) = answer
                .cascade
                .as_ref()
                .filter(|c| c.mode == config::CascadeMode::Offer)
            {
                self.warn_user(format!(
                    "{} answered with low confidence ({:.2}); ask again with tier {} ({}) for a stronger answer",
                    c.from_model, c.from_confidence, c.tier, c.model
                ))
                .await;
            }
            if !answer.fallbacks.is_empty() {
                let failed: Vec<String> = answer
                    .fallbacks
                    .iter()
                    .map(|f| format!("{} ({})", f.model, f.error))
                    .collect();
                self.warn_user(format!(
                    "answered by {} after {} failed",
                    answer.model,
                    failed.join("; ")
                ))
                .await;
            }
        }
        result
    }

    /// Starts server-initiated work-done progress, if the client supports it.
    async fn begin_progress(&self, title: &str) -> Option<ProgressToken> {
        if !self.state.work_done_progress.load(Ordering::Relaxed) {
            return None;
        }
        let token = ProgressToken::String(format!("triage/{}", uuid_like()));
        self.client
            .create_work_done_progress(token.clone())
            .await
            .ok()?;
        send_progress(
            &self.client,
            &token,
            json!({"kind": "begin", "title": title, "cancellable": true}),
        )
        .await;
        Some(token)
    }

    async fn end_progress(&self, token: Option<ProgressToken>, message: &str) {
        if let Some(token) = token {
            send_progress(
                &self.client,
                &token,
                json!({"kind": "end", "message": message}),
            )
            .await;
        }
    }

    /// The text of `range` in a document (the whole line when the range is empty), its
    /// languageId and version, with the document lock released.
    fn selection(&self, uri: &Uri, range: Range) -> jsonrpc::Result<(String, String, i32, Range)> {
        let doc = lock(&self.state.docs)
            .get(uri)
            .cloned()
            .ok_or_else(|| invalid_params(format!("{} is not open", uri.as_str())))?;
        let encoding = self.state.encoding();
        let (chars, range) = if range.start == range.end {
            let line = range.start.line as usize;
            if line >= doc.text.len_lines() {
                return Err(invalid_params(format!(
                    "line {line} is past the end of the document"
                )));
            }
            let start = doc.text.line_to_char(line);
            let end = start + documents::line_content(&doc.text, line).len_chars();
            let range = Range {
                start: documents::to_position(&doc.text, start, encoding),
                end: documents::to_position(&doc.text, end, encoding),
            };
            (start..end, range)
        } else {
            (
                documents::to_chars(&doc.text, range, encoding)
                    .map_err(|e| invalid_params(e.to_string()))?,
                range,
            )
        };
        Ok((
            doc.text.slice(chars).to_string(),
            doc.language_id,
            doc.version,
            range,
        ))
    }

    async fn status_loop(state: Arc<State>, client: Client) {
        let mut poke = state.status_poke.subscribe();
        let mut last: Option<Value> = None;
        let mut last_sent = Instant::now() - Duration::from_secs(2);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            // The tick refreshes GPU and backend readings; a poke (a model started or stopped
            // answering) only re-sends with the cached ones, so that a request starting never
            // triggers a refresh that competes with its own model call.
            let refresh = tokio::select! {
                _ = tick.tick() => true,
                changed = poke.changed() => if changed.is_err() { return } else { false },
            };
            let since = last_sent.elapsed();
            if since < Duration::from_secs(1) {
                // At most one notification a second.
                tokio::time::sleep(Duration::from_secs(1) - since).await;
            }
            let monitor = read(&state.monitor);
            let snapshot = if refresh {
                monitor.refresh().await
            } else {
                monitor.snapshot(Duration::MAX)
            };
            let engine = state.engine();
            let payload = json!({
                "vram": snapshot.gpu.map(|g| json!({"used_mb": g.total_mb.saturating_sub(g.free_mb), "total_mb": g.total_mb})),
                "level": snapshot.level(&engine.config().vram),
                "loaded": snapshot.loaded.iter().map(|m| json!({
                    "name": m.name, "endpoint": m.endpoint, "size_mb": m.size_mb, "vram_mb": m.vram_mb, "expires_at": m.expires_at,
                })).collect::<Vec<_>>(),
                "working": lock(&state.at_work).first().cloned(),
                // Requests waiting for a model at its concurrency limit (read each tick).
                "queued": engine.loads().iter().map(|l| l.queued).sum::<usize>(),
            });
            if last.as_ref() != Some(&payload) {
                client
                    .send_notification::<StatusNotification>(payload.clone())
                    .await;
                last = Some(payload);
                last_sent = Instant::now();
            }
        }
    }
}

fn progress_key(token: &ProgressToken) -> String {
    match token {
        ProgressToken::Number(n) => n.to_string(),
        ProgressToken::String(s) => s.clone(),
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Marks a model as answering (or done), and pokes the status notifier.
fn mark_at_work(state: &State, model: &str, working: bool) {
    if model.is_empty() {
        return;
    }
    let mut at_work = lock(&state.at_work);
    let position = at_work.iter().position(|m| m == model);
    match (working, position) {
        (true, None) => at_work.push(model.to_string()),
        (false, Some(i)) => {
            at_work.remove(i);
        }
        _ => return,
    }
    drop(at_work);
    state.status_poke.send_modify(|v| *v += 1);
}

/// `triage/status`, server → client.
pub enum StatusNotification {}

impl Notification for StatusNotification {
    type Params = Value;
    const METHOD: &'static str = "triage/status";
}

/// `$/progress` with a free-form value (work-done reports and partial results alike).
enum ProgressNotification {}

impl Notification for ProgressNotification {
    type Params = Value;
    const METHOD: &'static str = "$/progress";
}

async fn send_progress(client: &Client, token: &ProgressToken, value: Value) {
    let token = match token {
        ProgressToken::Number(n) => json!(n),
        ProgressToken::String(s) => json!(s),
    };
    client
        .send_notification::<ProgressNotification>(json!({ "token": token, "value": value }))
        .await;
}

fn invalid_params(message: String) -> jsonrpc::Error {
    jsonrpc::Error {
        code: ErrorCode::InvalidParams,
        message: message.into(),
        data: None,
    }
}

fn engine_error(e: engine::Error) -> jsonrpc::Error {
    match e {
        engine::Error::Input(message) => invalid_params(message),
        // RequestFailed, with what a client needs to say "busy, try again in N s".
        engine::Error::Busy {
            message,
            retry_after_s,
        } => jsonrpc::Error {
            code: ErrorCode::ServerError(-32803),
            data: Some(json!({ "error": message, "busy": true, "retry_after_s": retry_after_s })),
            message: message.into(),
        },
        engine::Error::Failed {
            message,
            partial,
            fallbacks,
        } => jsonrpc::Error {
            // RequestFailed (LSP 3.17).
            code: ErrorCode::ServerError(-32803),
            data: Some(match partial {
                Some(p) => engine::answer_json(&p, Some(&message)),
                None => json!({ "error": message, "fallbacks": fallbacks }),
            }),
            message: message.into(),
        },
    }
}

/// Parameters of `triage/chat` and `triage/route`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatParams {
    #[serde(default)]
    pub prompt: String,
    pub text_document: Option<TextDocumentIdentifier>,
    pub range: Option<Range>,
    pub tier: Option<String>,
    pub model: Option<String>,
    /// The longest wait to the first token, in seconds (snake case, as the contract spells it).
    #[serde(rename = "budget_s", alias = "budgetS")]
    pub budget_s: Option<f64>,
    /// `off`, `offer` or `run`: the cascade after a low-confidence answer.
    pub cascade: Option<String>,
    /// A code action's name without `triage.` (`explain`, `fix`, …): routed and prompted as
    /// that action, but streamed like a chat and never applied as an edit. Editors use it to
    /// stream an explanation into their own window.
    pub action: Option<String>,
    pub partial_result_token: Option<ProgressToken>,
    pub work_done_token: Option<ProgressToken>,
}

/// Parameters of `triage/intent`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IntentParams {
    kind: engine::IntentKind,
    active: bool,
    text_document: Option<TextDocumentIdentifier>,
    range: Option<Range>,
}

/// Parameters of `triage/document`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentParams {
    pub text_document: TextDocumentIdentifier,
}

/// The argument of every `triage.*` command.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommandArgs {
    uri: Uri,
    range: Range,
    #[serde(default)]
    prompt: Option<String>,
}

impl Server {
    fn request_from_chat(&self, p: &ChatParams) -> jsonrpc::Result<engine::Request> {
        let (selection, language_id, lines) = match (&p.text_document, p.range) {
            (Some(doc), Some(range)) => {
                let (text, language, _, range) = self.selection(&doc.uri, range)?;
                (Some(text), Some(language), Some(index::lines_of(range)))
            }
            (Some(doc), None) => (
                None,
                lock(&self.state.docs)
                    .get(&doc.uri)
                    .map(|d| d.language_id.clone()),
                None,
            ),
            _ => (None, None, None),
        };
        let (focus, open_documents, workspace) =
            self.context_for(p.text_document.as_ref().map(|d| (&d.uri, lines)));
        let tier = p
            .tier
            .as_deref()
            .map(str::parse::<Tier>)
            .transpose()
            .map_err(invalid_params)?;
        let action = p
            .action
            .as_deref()
            .map(|name| {
                COMMANDS
                    .iter()
                    .find(|(command, _, _)| command.strip_prefix("triage.") == Some(name))
                    .map(|(_, _, action)| *action)
                    .ok_or_else(|| {
                        invalid_params(format!(
                            "unknown action `{name}`: one of explain, explainShell, fix, refactor, docstring, tests, ask"
                        ))
                    })
            })
            .transpose()?;
        Ok(engine::Request {
            prompt: p.prompt.clone(),
            selection,
            language_id,
            action,
            force: Force {
                tier,
                model: p.model.clone(),
            },
            budget_s: match p.budget_s {
                Some(b) if !(b.is_finite() && b > 0.0) => {
                    return Err(invalid_params(format!(
                        "budget_s must be a positive number of seconds, not {b}"
                    )))
                }
                b => b,
            },
            // A code action streamed into an editor's window is waited for as the command
            // would be.
            urgency: match action {
                Some(a) if a != Action::AskHeavy => engine::Urgency::Interactive,
                _ => engine::Urgency::Typed,
            },
            cascade: p
                .cascade
                .as_deref()
                .map(str::parse::<config::CascadeMode>)
                .transpose()
                .map_err(invalid_params)?,
            conversation: None,
            focus,
            open_documents,
            workspace,
        })
    }

    /// The open documents and the workspace for a request (ropes cloned, no lock kept).
    fn context_for(
        &self,
        focus: Option<(&Uri, Option<(u32, u32)>)>,
    ) -> (
        Option<crate::context::Focus>,
        Vec<crate::context::Document>,
        Option<Arc<crate::context::Workspace>>,
    ) {
        // `[context] workspace = false` from the editor's settings takes effect at once.
        let workspace = self
            .state
            .workspace()
            .filter(|_| self.state.engine().config().context.workspace);
        let (focus, open) = index::documents(&lock(&self.state.docs), focus, workspace.as_deref());
        (focus, open, workspace)
    }

    pub async fn chat(&self, params: ChatParams) -> jsonrpc::Result<Value> {
        let request = self.request_from_chat(&params)?;
        let deltas = params
            .partial_result_token
            .clone()
            .or(params.work_done_token.clone());
        // Every delta is queued before `run` returns; the transport writes them before this
        // response.
        let result = self
            .run(request, params.work_done_token.clone(), deltas)
            .await;
        Ok(engine::answer_json(&result.map_err(engine_error)?, None))
    }

    pub async fn route(&self, params: ChatParams) -> jsonrpc::Result<Value> {
        let request = self.request_from_chat(&params)?;
        let engine = self.state.engine();
        let snapshot = read(&self.state.monitor).snapshot(SNAPSHOT_MAX_AGE);
        let (analysis, decision) = engine.decide(&request, &snapshot).map_err(engine_error)?;
        Ok(engine::decision_json(
            None,
            &decision,
            &analysis,
            engine.config(),
        ))
    }

    /// `triage/intent` (client → server): `{kind: "chat"|"selection"|"codeAction", active,
    /// textDocument?: {uri}, range?}`. `active: true` pre-warms the likely model, `false`
    /// cancels a running pre-warm of that kind.
    pub async fn intent(&self, params: Value) {
        let parsed: Result<IntentParams, _> = serde_json::from_value(params);
        let p = match parsed {
            Ok(p) => p,
            Err(e) => {
                self.client
                    .log_message(
                        MessageType::ERROR,
                        format!("triage: triage/intent ignored, its params are not valid: {e}"),
                    )
                    .await;
                return;
            }
        };
        let kind = p.kind;
        let running = lock(&self.state.prewarms).remove(&kind);
        if let Some(running) = running {
            running.abort();
            if !p.active {
                self.client
                    .log_message(
                        MessageType::INFO,
                        format!("triage: pre-warm for {kind:?} cancelled"),
                    )
                    .await;
            }
        }
        if !p.active {
            return;
        }
        let (selection, language_id) = match (&p.text_document, p.range) {
            (Some(doc), Some(range)) => match self.selection(&doc.uri, range) {
                Ok((text, language, _, _)) => (Some(text), Some(language)),
                Err(_) => (None, None),
            },
            (Some(doc), None) => (
                None,
                lock(&self.state.docs)
                    .get(&doc.uri)
                    .map(|d| d.language_id.clone()),
            ),
            _ => (None, None),
        };
        self.start_prewarm(engine::Intent {
            kind,
            selection,
            language_id,
        });
    }

    /// Starts a pre-warm for `intent` in the background, replacing one of the same kind.
    fn start_prewarm(&self, intent: engine::Intent) {
        let engine = self.state.engine();
        if !engine.config().latency.prewarm {
            return;
        }
        let snapshot = read(&self.state.monitor).snapshot(SNAPSHOT_MAX_AGE);
        let client = self.client.clone();
        let kind = intent.kind;
        let task = tokio::spawn(async move {
            let outcome = engine.prewarm(&intent, &snapshot).await;
            let text = match outcome {
                engine::Prewarm::Loaded { tier, model } => {
                    format!("triage: pre-warmed {model} ({tier}) for {kind:?}")
                }
                engine::Prewarm::Skipped { reason } => {
                    format!("triage: no pre-warm for {kind:?}: {reason}")
                }
            };
            client.log_message(MessageType::INFO, text).await;
        });
        if let Some(old) = lock(&self.state.prewarms).insert(kind, task) {
            old.abort();
        }
    }

    /// `window/workDoneProgress/cancel`: the editor's Cancel button on a command's progress.
    pub async fn work_done_progress_cancel(&self, params: WorkDoneProgressCancelParams) {
        let sender = lock(&self.state.progress_cancels).remove(&progress_key(&params.token));
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }

    pub async fn status(&self) -> jsonrpc::Result<Value> {
        let engine = self.state.engine();
        let monitor = read(&self.state.monitor);
        let status = engine::status::gather(&engine, &monitor).await;
        let mut value = serde_json::to_value(status)
            .map_err(|e| jsonrpc::Error::invalid_params(e.to_string()))?;
        if let Some(map) = value.as_object_mut() {
            // The server's own load, for leak checks: tasks alive (the status loop and each
            // request in progress), open documents.
            let tasks = tokio::runtime::Handle::try_current()
                .map(|h| h.metrics().num_alive_tasks())
                .ok();
            map.insert(
                "process".to_string(),
                json!({ "tasks": tasks, "documents": lock(&self.state.docs).len() }),
            );
            // The index, for a status view: building or ready, files, chunks, memory.
            let index = self.state.workspace().map(|ws| ws.status());
            map.insert("workspace".to_string(), json!(index));
        }
        Ok(value)
    }

    /// `triage/document`: the server's copy of an open document (`null` when it is not open), so
    /// that a client or a test can check that text sync kept it equal to the editor's.
    pub async fn document(&self, params: DocumentParams) -> jsonrpc::Result<Value> {
        let uri = params.text_document.uri;
        let doc = lock(&self.state.docs).get(&uri).cloned();
        Ok(match doc {
            Some(d) => json!({
                "uri": uri,
                "version": d.version,
                "languageId": d.language_id,
                "text": d.text.to_string(),
            }),
            None => Value::Null,
        })
    }

    pub async fn inline_completion(
        &self,
        params: InlineCompletionParams,
    ) -> jsonrpc::Result<Option<InlineCompletionResponse>> {
        let position = params.text_document_position;
        let Some(text) = self
            .fill_in_middle(&position.text_document.uri, position.position)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(InlineCompletionResponse::Array(vec![
            InlineCompletionItem {
                insert_text: text,
                filter_text: None,
                range: Some(Range {
                    start: position.position,
                    end: position.position,
                }),
                command: None,
                insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
            },
        ])))
    }

    /// A fill-in-the-middle completion at `position`, or `None` when completion is off, the
    /// model cannot insert, or the document changed meanwhile.
    async fn fill_in_middle(
        &self,
        uri: &Uri,
        position: Position,
    ) -> jsonrpc::Result<Option<String>> {
        let engine = self.state.engine();
        let completion = engine.config().completion;
        if !completion.enabled {
            return Ok(None);
        }
        let mut generation = self.state.generation(uri);
        let started_at = *generation.borrow_and_update();
        let doc = lock(&self.state.docs).get(uri).cloned();
        let Some(doc) = doc else { return Ok(None) };
        let at = documents::to_char(&doc.text, position, self.state.encoding())
            .map_err(|e| invalid_params(e.to_string()))?;
        let prefix_start = at.saturating_sub(4000);
        let suffix_end = (at + 2000).min(doc.text.len_chars());
        let tier = engine.config().tier(completion.tier).clone();
        let Some((name, endpoint)) = tier.endpoints.iter().find_map(|n| {
            engine
                .config()
                .endpoints
                .get(n)
                .map(|e| (n.clone(), e.clone()))
        }) else {
            return Ok(None);
        };
        let target = Target {
            name: &name,
            endpoint: &endpoint,
        };
        if !self.can_insert(engine.client(), target, &tier.model).await {
            return Ok(None);
        }
        let prefix = doc.text.slice(prefix_start..at).to_string();
        let preamble = self
            .completion_context(uri, &prefix, &doc.language_id)
            .await;
        let request = FimRequest {
            model: tier.model.clone(),
            prefix: preamble + &prefix,
            suffix: doc.text.slice(at..suffix_end).to_string(),
            keep_alive: Some(tier.keep_alive.clone()),
            num_ctx: Some(tier.num_ctx),
            max_tokens: Some(completion.max_tokens),
        };
        let collect = async {
            // Waits its turn behind the model's running requests; a keystroke leaves the queue.
            let _permit = engine.slot(&name, &tier.model).await.ok()?;
            let mut stream = engine
                .client()
                .fill_in_middle(target, &request)
                .await
                .ok()?;
            let mut text = String::new();
            let deadline =
                Instant::now() + Duration::from_secs_f64(tier.timeouts.first_token_s.min(15.0));
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, stream.next()).await {
                    Ok(Some(Ok(backend::Event::Delta(d)))) => {
                        if text.len() + d.len() > engine::MAX_ANSWER_BYTES {
                            return None;
                        }
                        text.push_str(&d)
                    }
                    Ok(Some(Ok(backend::Event::Done(_)))) => return Some(text),
                    _ => return (!text.is_empty()).then_some(text),
                }
            }
        };
        tokio::select! {
            text = collect => Ok(text.filter(|t| !t.trim().is_empty())),
            // A keystroke (a newer document version) makes this completion stale: drop it,
            // which closes the model's stream.
            _ = async {
                while generation.changed().await.is_ok() {
                    if *generation.borrow() != started_at {
                        return;
                    }
                }
                std::future::pending::<()>().await
            } => Ok(None),
        }
    }

    /// Workspace excerpts related to the code before the cursor, as comments for the front of
    /// a completion's prefix (other files only; bounded to ~1.5 KB so completions stay fast).
    async fn completion_context(&self, uri: &Uri, prefix: &str, language_id: &str) -> String {
        let Some(ws) = self.state.workspace() else {
            return String::new();
        };
        let own = index::file_path(uri).map(|p| ws.display(&p));
        let tail: String = {
            let start = prefix.len().saturating_sub(1500);
            let start = (start..=prefix.len())
                .find(|i| prefix.is_char_boundary(*i))
                .unwrap_or(prefix.len());
            prefix[start..].to_string()
        };
        let found = tokio::task::spawn_blocking(move || ws.retrieve(&tail, 4)).await;
        let pieces: Vec<crate::context::Piece> = found
            .unwrap_or_default()
            .into_iter()
            .filter(|e| Some(&e.display) != own.as_ref())
            .take(2)
            .map(|e| crate::context::Piece {
                path: e.display,
                start_line: e.start_line,
                end_line: e.end_line,
                kind: crate::context::SourceKind::Workspace,
                text: e.text,
                language: None,
            })
            .collect();
        crate::context::completion_preamble(&pieces, language_id, 1536)
    }

    async fn can_insert(&self, client: &backend::Client, target: Target<'_>, model: &str) -> bool {
        if let Some(known) = lock(&self.state.fim_capable).get(model) {
            return *known;
        }
        let capable = match client.show(target, model).await {
            Ok(info) => info.capabilities.iter().any(|c| c == "insert"),
            Err(_) => false,
        };
        if !capable {
            self.client
                .log_message(
                    MessageType::INFO,
                    format!(
                        "triage: {model} cannot fill in the middle; completions are off for it"
                    ),
                )
                .await;
        }
        lock(&self.state.fim_capable).insert(model.to_string(), capable);
        capable
    }
}

/// The first fenced code block of an answer, or the whole answer when it has none.
pub fn code_of(answer: &str) -> String {
    let mut inside = false;
    let mut code = Vec::new();
    for line in answer.lines() {
        if line.trim_start().starts_with("```") {
            if inside {
                return code.join("\n");
            }
            inside = true;
            continue;
        }
        if inside {
            code.push(line);
        }
    }
    if inside && !code.is_empty() {
        return code.join("\n");
    }
    answer.trim().to_string()
}

impl LanguageServer for Server {
    async fn initialize(&self, params: InitializeParams) -> jsonrpc::Result<InitializeResult> {
        let general = params.capabilities.general.as_ref();
        let encoding = Encoding::negotiate(general.and_then(|g| g.position_encodings.as_deref()));
        write(&self.state.encoding, encoding);
        let work_done = params
            .capabilities
            .window
            .as_ref()
            .and_then(|w| w.work_done_progress)
            .unwrap_or(false);
        self.state
            .work_done_progress
            .store(work_done, Ordering::Relaxed);
        let watch = params
            .capabilities
            .workspace
            .as_ref()
            .and_then(|w| w.did_change_watched_files.as_ref())
            .and_then(|w| w.dynamic_registration)
            .unwrap_or(false);
        self.state.watch_files.store(watch, Ordering::Relaxed);
        let folders = index::folders(&params);
        if let Err(e) = self.apply_config(params.initialization_options.as_ref()) {
            // Keep the file (or built-in) configuration and say why.
            let _ = self.apply_config(None);
            self.client
                .show_message(
                    MessageType::ERROR,
                    format!("triage: initializationOptions ignored: {e}"),
                )
                .await;
        }
        // Created here, built from `initialized` on: documents opened in between already feed it.
        let workspace = index::workspace_for(folders, self.state.engine().config());
        write(&self.state.workspace, workspace);
        let commands = COMMANDS
            .iter()
            .map(|(name, _, _)| name.to_string())
            .collect();
        Ok(InitializeResult {
            server_info: Some(ServerInfo {
                name: "triage".to_string(),
                version: Some(env!("CARGO_PKG_VERSION").to_string()),
            }),
            capabilities: ServerCapabilities {
                position_encoding: Some(encoding.kind()),
                text_document_sync: Some(TextDocumentSyncCapability::Options(
                    TextDocumentSyncOptions {
                        open_close: Some(true),
                        change: Some(TextDocumentSyncKind::INCREMENTAL),
                        save: Some(TextDocumentSyncSaveOptions::Supported(true)),
                        ..TextDocumentSyncOptions::default()
                    },
                )),
                hover_provider: Some(HoverProviderCapability::Simple(true)),
                completion_provider: Some(CompletionOptions::default()),
                inline_completion_provider: Some(OneOf::Left(true)),
                code_action_provider: Some(CodeActionProviderCapability::Options(
                    CodeActionOptions {
                        code_action_kinds: Some(vec![
                            CodeActionKind::QUICKFIX,
                            CodeActionKind::REFACTOR,
                            CodeActionKind::EMPTY,
                        ]),
                        ..CodeActionOptions::default()
                    },
                )),
                execute_command_provider: Some(ExecuteCommandOptions {
                    commands,
                    ..ExecuteCommandOptions::default()
                }),
                workspace: Some(WorkspaceServerCapabilities {
                    workspace_folders: Some(WorkspaceFoldersServerCapabilities {
                        supported: Some(true),
                        change_notifications: Some(OneOf::Left(true)),
                    }),
                    file_operations: None,
                }),
                ..ServerCapabilities::default()
            },
            offset_encoding: None,
        })
    }

    async fn initialized(&self, _: InitializedParams) {
        let task = tokio::spawn(Server::status_loop(self.state.clone(), self.client.clone()));
        lock(&self.tasks).push(task);
        // A corrupt statistics file, found at start-up.
        self.report_sync_errors().await;
        if let Some(ws) = self.state.workspace() {
            let work_done = self.state.work_done_progress.load(Ordering::Relaxed);
            index::start(&ws, self.client.clone(), work_done);
            if self.state.watch_files.load(Ordering::Relaxed) {
                let client = self.client.clone();
                tokio::spawn(async move { index::watch_files(&client).await });
            }
        }
    }

    async fn did_save(&self, params: DidSaveTextDocumentParams) {
        if let (Some(ws), Some(path)) = (
            self.state.workspace(),
            index::file_path(&params.text_document.uri),
        ) {
            ws.changed(&path);
        }
    }

    async fn did_change_watched_files(&self, params: DidChangeWatchedFilesParams) {
        if let Some(ws) = self.state.workspace() {
            index::files_changed(&ws, &params.changes);
        }
    }

    async fn did_change_workspace_folders(&self, params: DidChangeWorkspaceFoldersParams) {
        let added: Vec<_> = params
            .event
            .added
            .iter()
            .filter_map(|f| index::file_path(&f.uri))
            .collect();
        let removed: Vec<_> = params
            .event
            .removed
            .iter()
            .filter_map(|f| index::file_path(&f.uri))
            .collect();
        match self.state.workspace() {
            Some(ws) => {
                for root in &added {
                    ws.add_root(root);
                }
                for root in &removed {
                    ws.remove_root(root);
                }
            }
            None => {
                let engine = self.state.engine();
                if let Some(ws) = index::workspace_for(added, engine.config()) {
                    write(&self.state.workspace, Some(ws.clone()));
                    let work_done = self.state.work_done_progress.load(Ordering::Relaxed);
                    index::start(&ws, self.client.clone(), work_done);
                }
            }
        }
    }

    async fn shutdown(&self) -> jsonrpc::Result<()> {
        self.state.shutdown.store(true, Ordering::Relaxed);
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        if let Some(path) = engine::stats::default_path() {
            let _ = self.state.engine().stats.save(&path);
        }
        Ok(())
    }

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        // The text itself was stored by the ordering layer. The exact cl100k encoder is not
        // built here: it would hold ~18 MB for counts that are estimates for Llama and Qwen
        // vocabularies anyway; prompt budgets use the one-pass estimate with a 15% margin.
        let large = params.text_document.text.len() > 64 * 1024;
        drop(params);
        if large {
            super::release_free_memory();
        }
        self.report_sync_errors().await;
    }

    async fn did_change(&self, _: DidChangeTextDocumentParams) {
        self.report_sync_errors().await;
    }

    async fn did_close(&self, _: DidCloseTextDocumentParams) {
        self.report_sync_errors().await;
    }

    async fn did_change_configuration(&self, params: DidChangeConfigurationParams) {
        let settings = match params.settings.get("triage") {
            Some(inner) => inner.clone(),
            None => params.settings,
        };
        match self.apply_config(Some(&settings)) {
            Ok(()) => {
                self.client
                    .log_message(MessageType::INFO, "triage: configuration updated")
                    .await
            }
            Err(e) => {
                self.client
                    .show_message(
                        MessageType::ERROR,
                        format!("triage: settings not applied, the previous ones stay: {e}"),
                    )
                    .await
            }
        }
    }

    async fn code_action(
        &self,
        params: CodeActionParams,
    ) -> jsonrpc::Result<Option<CodeActionResponse>> {
        let uri = params.text_document.uri;
        let Ok((text, language, _, range)) = self.selection(&uri, params.range) else {
            return Ok(None);
        };
        if text.trim().is_empty() {
            return Ok(None);
        }
        // The menu opening is the intent to run one of these actions. Editors ask for code
        // actions on every cursor move: a pre-warm already running is left to finish.
        let running = lock(&self.state.prewarms)
            .get(&engine::IntentKind::CodeAction)
            .is_some_and(|t| !t.is_finished());
        if !running {
            self.start_prewarm(engine::Intent {
                kind: engine::IntentKind::CodeAction,
                selection: Some(text.clone()),
                language_id: Some(language.clone()),
            });
        }
        let is_shell = if params.range.start == params.range.end {
            let doc = lock(&self.state.docs).get(&uri).map(|d| d.text.clone());
            doc.and_then(|rope| shell::command_at(&rope, range.start.line as usize, &language))
                .is_some()
        } else {
            shell::selection_is_command(&text, &language)
        };
        let actions = COMMANDS
            .iter()
            .filter(|(name, _, _)| *name != "triage.explainShell" || is_shell)
            .map(|(name, title, _)| {
                let kind = match *name {
                    "triage.fix" => CodeActionKind::QUICKFIX,
                    "triage.refactor" | "triage.docstring" => CodeActionKind::REFACTOR,
                    _ => CodeActionKind::EMPTY,
                };
                CodeActionOrCommand::CodeAction(CodeAction {
                    title: format!("triage: {title}"),
                    kind: Some(kind),
                    command: Some(Command {
                        title: title.to_string(),
                        command: name.to_string(),
                        arguments: Some(vec![json!({ "uri": uri, "range": range })]),
                    }),
                    ..CodeAction::default()
                })
            })
            .collect();
        Ok(Some(actions))
    }

    async fn execute_command(
        &self,
        params: ExecuteCommandParams,
    ) -> jsonrpc::Result<Option<Value>> {
        let Some((_, title, action)) = COMMANDS.iter().find(|(name, _, _)| *name == params.command)
        else {
            return Err(invalid_params(format!(
                "unknown command `{}`",
                params.command
            )));
        };
        let args: CommandArgs = params
            .arguments
            .first()
            .cloned()
            .ok_or_else(|| invalid_params("missing argument {uri, range}".to_string()))
            .and_then(|v| {
                serde_json::from_value(v).map_err(|e| invalid_params(format!("bad argument: {e}")))
            })?;
        let (selection, language, version, range) = self.selection(&args.uri, args.range)?;
        let (focus, open_documents, workspace) =
            self.context_for(Some((&args.uri, Some(index::lines_of(range)))));
        let request = engine::Request {
            prompt: args.prompt.clone().unwrap_or_default(),
            selection: Some(selection),
            language_id: Some(language),
            action: Some(*action),
            force: Force::default(),
            // Code actions are waited for with the cursor; "ask the heavy model" is a
            // deliberate deep question.
            urgency: if *action == Action::AskHeavy {
                engine::Urgency::Typed
            } else {
                engine::Urgency::Interactive
            },
            focus,
            open_documents,
            workspace,
            ..engine::Request::default()
        };
        let token = self.begin_progress(&format!("triage: {title}")).await;
        let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel();
        let key = token.as_ref().map(progress_key);
        if let Some(key) = &key {
            lock(&self.state.progress_cancels).insert(key.clone(), cancel_tx);
        }
        // The progress's Cancel button drops the run (and so the model's stream), as
        // `$/cancelRequest` does.
        let result = tokio::select! {
            result = self.run(request, token.clone(), None) => Some(result),
            Ok(()) = cancel_rx => None,
        };
        if let Some(key) = &key {
            lock(&self.state.progress_cancels).remove(key);
        }
        let Some(result) = result else {
            self.end_progress(token, "cancelled").await;
            return Err(jsonrpc::Error::request_cancelled());
        };
        self.end_progress(token, if result.is_ok() { "done" } else { "failed" })
            .await;
        let answer = result.map_err(engine_error)?;
        let mut value = engine::answer_json(&answer, None);
        let edit_kind = match action {
            Action::Fix | Action::Refactor | Action::Docstring => Some(false),
            Action::Tests => Some(true),
            _ => None,
        };
        if let Some(append) = edit_kind {
            // After a cascade that ran, the edit is the second (stronger) answer's.
            let text = answer
                .cascade
                .as_ref()
                .and_then(|c| c.second_answer_at)
                .and_then(|at| answer.text.get(at..))
                .unwrap_or(&answer.text);
            let applied = self
                .apply_answer(&args.uri, version, range, text, append)
                .await;
            if let Some(map) = value.as_object_mut() {
                map.insert("applied".to_string(), json!(applied.is_ok()));
                if let Err(reason) = applied {
                    map.insert("notApplied".to_string(), json!(reason));
                }
            }
        }
        Ok(Some(value))
    }

    async fn hover(&self, params: HoverParams) -> jsonrpc::Result<Option<Hover>> {
        let position = params.text_document_position_params;
        let doc = lock(&self.state.docs)
            .get(&position.text_document.uri)
            .cloned();
        let Some(doc) = doc else { return Ok(None) };
        let Some(command) =
            shell::command_at(&doc.text, position.position.line as usize, &doc.language_id)
        else {
            return Ok(None);
        };
        let cached = lock(&self.state.hover_cache).get(&command).cloned();
        let explanation = match cached {
            Some(text) => text,
            None => {
                let request = engine::Request {
                    prompt: String::new(),
                    selection: Some(command.clone()),
                    language_id: Some("shellscript".to_string()),
                    action: Some(Action::ExplainShell),
                    force: Force::default(),
                    urgency: engine::Urgency::Interactive,
                    // A shell command is explained on its own: no retrieval on every hover.
                    ..engine::Request::default()
                };
                // A cursor that moves on cancels this request, which drops the model's stream.
                let answer = self.run(request, None, None).await.map_err(engine_error)?;
                let text = format!(
                    "{}\n\n_{} · {}_",
                    answer.text.trim(),
                    answer.model,
                    answer.tier
                );
                let mut cache = lock(&self.state.hover_cache);
                if cache.len() >= 256 {
                    cache.clear();
                }
                cache.insert(command.clone(), text.clone());
                text
            }
        };
        Ok(Some(Hover {
            contents: HoverContents::Markup(MarkupContent {
                kind: MarkupKind::Markdown,
                value: explanation,
            }),
            range: None,
        }))
    }

    async fn completion(
        &self,
        params: CompletionParams,
    ) -> jsonrpc::Result<Option<CompletionResponse>> {
        let position = params.text_document_position;
        let Some(text) = self
            .fill_in_middle(&position.text_document.uri, position.position)
            .await?
        else {
            return Ok(None);
        };
        let label: String = text
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .chars()
            .take(60)
            .collect();
        let model = self
            .state
            .engine()
            .config()
            .tier(self.state.engine().config().completion.tier)
            .model
            .clone();
        Ok(Some(CompletionResponse::Array(vec![CompletionItem {
            label: if label.is_empty() {
                "…".to_string()
            } else {
                label
            },
            kind: Some(CompletionItemKind::TEXT),
            detail: Some(format!("triage · {model}")),
            insert_text: Some(text),
            insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
            ..CompletionItem::default()
        }])))
    }
}

impl Server {
    /// Applies an answer's code to the document through `workspace/applyEdit`, unless the
    /// document changed since the request started: then nothing is touched.
    async fn apply_answer(
        &self,
        uri: &Uri,
        version: i32,
        range: Range,
        answer: &str,
        append: bool,
    ) -> Result<(), String> {
        let current = lock(&self.state.docs).get(uri).map(|d| d.version);
        if current != Some(version) {
            let reason = "the document changed while the model was answering; nothing was changed (run the action again)".to_string();
            self.client
                .show_message(MessageType::WARNING, format!("triage: {reason}"))
                .await;
            return Err(reason);
        }
        let code = code_of(answer);
        let edit = if append {
            TextEdit {
                range: Range {
                    start: range.end,
                    end: range.end,
                },
                new_text: format!("\n\n{code}\n"),
            }
        } else {
            TextEdit {
                range,
                new_text: code,
            }
        };
        let mut changes = HashMap::new();
        changes.insert(uri.clone(), vec![edit]);
        let workspace_edit = WorkspaceEdit {
            changes: Some(changes),
            ..WorkspaceEdit::default()
        };
        match self.client.apply_edit(workspace_edit).await {
            Ok(response) if response.applied => Ok(()),
            Ok(response) => Err(response
                .failure_reason
                .unwrap_or_else(|| "the editor refused the edit".to_string())),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_is_taken_from_the_first_fence() {
        assert_eq!(
            code_of("Here:\n```rust\nfn a() {}\n```\nDone."),
            "fn a() {}"
        );
        assert_eq!(code_of("no fence"), "no fence");
        assert_eq!(code_of("```\nunclosed\nfence"), "unclosed\nfence");
    }
}
