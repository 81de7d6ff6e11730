//! The language server (`triage serve`): LSP over stdio on tower-lsp-server.
//!
//! `documents` holds the open texts and every position conversion; `shell` finds shell commands
//! inside documents; `server` implements the protocol. This module wires them up and guarantees
//! the one ordering rule the framework does not: text-sync notifications are applied in the
//! order they arrive (tower-lsp runs handlers concurrently), by the [`Ordered`] layer that sees
//! each message before it is dispatched.

pub mod documents;
pub mod index;
pub mod server;
pub mod shell;
mod transport;

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_lsp_server::jsonrpc::{Request, Response};
use tower_lsp_server::LspService;

use crate::config;
use server::{Server, State};

/// Wraps the LSP service: applies `didOpen`/`didChange`/`didClose` to the document store in
/// `call`, which the transport invokes strictly in message order, then passes the message on.
struct Ordered<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> tower::Service<Request> for Ordered<S>
where
    S: tower::Service<Request, Response = Option<Response>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // LSP: before `initialize` and after `shutdown`, notifications other than `exit` are
        // dropped; text sync included (the framework refuses the requests itself).
        match request.method() {
            "initialize" => self.state.begin_session(),
            "shutdown" => self.state.end_session(),
            method if self.state.in_session() => self.state.sync(method, request.params()),
            _ => {}
        }
        self.inner.call(request)
    }
}

/// How many requests may run at once; more wait their turn (the transport keeps reading, and
/// notifications such as `$/cancelRequest` do not wait). Generation requests wait on models for
/// seconds, so a low limit would queue quick requests behind them.
const CONCURRENCY: usize = 64;

/// Serves LSP on stdin/stdout until the client says `exit`. Returns whether `shutdown` came
/// before it (the exit code is 0 then, 1 otherwise, as LSP asks).
pub async fn serve(sources: config::Sources) -> Result<bool, String> {
    limit_heap_retention();
    let config = config::load(&sources).map_err(|e| e.to_string())?;
    let state = Arc::new(State::new(sources, config).map_err(|e| e.to_string())?);
    let (service, socket) = LspService::build({
        let state = state.clone();
        move |client| Server::new(client, state)
    })
    .custom_method("triage/chat", Server::chat)
    .custom_method("triage/route", Server::route)
    .custom_method("triage/status", Server::status)
    .custom_method("triage/intent", Server::intent)
    .custom_method(
        "window/workDoneProgress/cancel",
        Server::work_done_progress_cancel,
    )
    .custom_method("triage/document", Server::document)
    .custom_method("textDocument/inlineCompletion", Server::inline_completion)
    .finish();
    let service = Ordered {
        inner: service,
        state: state.clone(),
    };
    let (input, output) = transport::stdio();
    transport::serve(input, output, socket, service, CONCURRENCY).await;
    Ok(state.shut_down_cleanly())
}

/// Opening a large document allocates its JSON, its text and its rope, and frees all but the
/// rope at once. glibc's malloc raises its mmap threshold after such frees and then keeps the
/// freed memory in the heap for good; a fixed threshold returns large blocks to the system, so
/// memory follows the documents that are open.
fn limit_heap_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; it is called before the server
    // starts handling messages.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns freed heap pages to the system after a large document came in (its JSON and copies
/// are gone by then, only its rope stays).
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}
