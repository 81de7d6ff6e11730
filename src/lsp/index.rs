//! The language server's side of workspace retrieval: the folders from `initialize`, the index
//! built in the background with `$/progress` for a large first build, file watching registered
//! dynamically (`workspace/didChangeWatchedFiles`), and open documents turned into context.
//!
//! Owns the plumbing between LSP and [`crate::context::Workspace`]; ranking and the index
//! itself live in `context`. Nothing here blocks the server's one thread: the build and every
//! change run on the index's own thread.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tower_lsp_server::ls_types::*;
use tower_lsp_server::Client;

use crate::config::Config;
use crate::context::{self, workspace, Workspace};

use super::documents::Documents;

/// A first build of at least this many files reports `$/progress`; smaller ones finish before
/// a user could read a progress bar.
pub const LARGE_WORKSPACE_FILES: usize = 200;

/// The folders an `initialize` names: `workspaceFolders`, else the deprecated `rootUri`.
#[allow(deprecated)]
pub fn folders(params: &InitializeParams) -> Vec<PathBuf> {
    let uris: Vec<&Uri> = match &params.workspace_folders {
        Some(folders) if !folders.is_empty() => folders.iter().map(|f| &f.uri).collect(),
        _ => params.root_uri.iter().collect(),
    };
    uris.into_iter().filter_map(file_path).collect()
}

/// The file a URI names (`file:` only).
pub fn file_path(uri: &Uri) -> Option<PathBuf> {
    uri.to_file_path().map(|p| p.into_owned())
}

/// A workspace over `roots` with the configured settings, or `None` (no folders, retrieval
/// switched off, or a bad setting, which is logged).
pub fn workspace_for(roots: Vec<PathBuf>, config: &Config) -> Option<Arc<Workspace>> {
    if roots.is_empty() || !config.context.workspace {
        return None;
    }
    let settings = workspace::Settings {
        exclude: config.context.exclude.clone(),
        max_files: config.context.max_files,
        max_file_bytes: config.context.max_file_kb * 1024,
    };
    match Workspace::new(roots, settings) {
        Ok(ws) => Some(Arc::new(ws)),
        Err(e) => {
            tracing::warn!(error = %e, "workspace retrieval off");
            None
        }
    }
}

/// Starts the background build. A large first build reports work-done progress (when the
/// client supports it) as "Indexing workspace: N of M files".
pub fn start(ws: &Arc<Workspace>, client: Client, work_done_progress: bool) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<workspace::Progress>();
    let started = ws.start(Box::new(move |p| {
        let _ = tx.send(p);
    }));
    if let Err(e) = started {
        tracing::warn!(error = %e, "could not start the workspace index thread");
        return;
    }
    let ws = ws.clone();
    tokio::spawn(async move {
        let mut token: Option<ProgressToken> = None;
        let mut last_report = Instant::now();
        let started = Instant::now();
        while let Some(p) = rx.recv().await {
            if p.done {
                let status = ws.status();
                tracing::info!(
                    files = status.files,
                    chunks = status.chunks,
                    ms = started.elapsed().as_millis() as u64,
                    "workspace indexed"
                );
                if let Some(token) = token.take() {
                    let message = format!("{} files indexed", status.files);
                    progress(&client, &token, json!({"kind": "end", "message": message})).await;
                }
                client
                    .log_message(
                        MessageType::INFO,
                        format!(
                            "triage: workspace indexed: {} files, {} chunks in {:.1} s",
                            status.files,
                            status.chunks,
                            started.elapsed().as_secs_f64()
                        ),
                    )
                    .await;
                break;
            }
            if token.is_none() && work_done_progress && p.total >= LARGE_WORKSPACE_FILES {
                let t = ProgressToken::String(format!("triage/index-{}", std::process::id()));
                if client.create_work_done_progress(t.clone()).await.is_ok() {
                    progress(
                        &client,
                        &t,
                        json!({"kind": "begin", "title": "triage: Indexing workspace", "percentage": 0, "cancellable": false,
                               "message": format!("0 of {} files", p.total)}),
                    )
                    .await;
                    token = Some(t);
                }
            }
            if let Some(t) = &token {
                if last_report.elapsed() >= Duration::from_millis(200) || p.indexed == p.total {
                    last_report = Instant::now();
                    let percentage = (p.indexed * 100).checked_div(p.total).unwrap_or(100);
                    progress(
                        &client,
                        t,
                        json!({"kind": "report", "percentage": percentage,
                               "message": format!("{} of {} files", p.indexed, p.total)}),
                    )
                    .await;
                }
            }
        }
    });
}

/// `$/progress` with a free-form value.
enum ProgressNotification {}

impl notification::Notification for ProgressNotification {
    type Params = serde_json::Value;
    const METHOD: &'static str = "$/progress";
}

async fn progress(client: &Client, token: &ProgressToken, value: serde_json::Value) {
    let token = match token {
        ProgressToken::Number(n) => json!(n),
        ProgressToken::String(s) => json!(s),
    };
    client
        .send_notification::<ProgressNotification>(json!({"token": token, "value": value}))
        .await;
}

/// Asks the client to report file changes under the workspace folders.
pub async fn watch_files(client: &Client) {
    let registration = Registration {
        id: "triage/watched-files".to_string(),
        method: "workspace/didChangeWatchedFiles".to_string(),
        register_options: Some(json!({"watchers": [{"globPattern": "**/*"}]})),
    };
    if let Err(e) = client.register_capability(vec![registration]).await {
        tracing::info!(error = %e, "the client does not watch files for us; the index follows edits and saves only");
    }
}

/// Applies file events to the index.
pub fn files_changed(ws: &Workspace, changes: &[FileEvent]) {
    for change in changes {
        let Some(path) = file_path(&change.uri) else {
            continue;
        };
        if change.typ == FileChangeType::DELETED {
            ws.removed(&path);
        } else {
            ws.changed(&path);
        }
    }
}

/// How a document is named in prompts and answers.
fn name(uri: &Uri, ws: Option<&Workspace>) -> (String, Option<PathBuf>) {
    match file_path(uri) {
        Some(path) => {
            let name = match ws {
                Some(ws) => ws.display(&path),
                None => path.to_string_lossy().into_owned(),
            };
            (name, Some(path))
        }
        None => (uri.as_str().to_string(), None),
    }
}

/// The request's context from the open documents: the focus document (with the selection's
/// lines) and the others. Ropes are cloned (cheap), the store is not held.
pub fn documents(
    docs: &Documents,
    focus: Option<(&Uri, Option<(u32, u32)>)>,
    ws: Option<&Workspace>,
) -> (Option<context::Focus>, Vec<context::Document>) {
    let mut open = Vec::new();
    let mut found = None;
    for (uri, doc) in docs.iter() {
        let (name, path) = name(uri, ws);
        let document = context::Document {
            name,
            path,
            text: doc.text.clone(),
            language_id: doc.language_id.clone(),
            version: Some(doc.version),
        };
        match focus {
            Some((f, lines)) if f == uri => {
                found = Some(context::Focus { document, lines });
            }
            _ => open.push(document),
        }
    }
    (found, open)
}

/// The 0-based lines a range covers (a range ending at the start of a line does not cover it).
pub fn lines_of(range: Range) -> (u32, u32) {
    let end = if range.end.character == 0 && range.end.line > range.start.line {
        range.end.line - 1
    } else {
        range.end.line
    };
    (range.start.line, end.max(range.start.line))
}
