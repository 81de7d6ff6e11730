//! The language server (`triage serve`): LSP over stdio on tower-lsp-server.
//!
//! `documents` holds the open texts and every position conversion; `shell` finds shell commands
//! inside documents; `server` implements the protocol. This module wires them up and guarantees
//! the one ordering rule the framework does not: text-sync notifications are applied in the
//! order they arrive (tower-lsp runs handlers concurrently), by the [`Ordered`] layer that sees
//! each message before it is dispatched.

pub mod documents;
pub mod server;
pub mod shell;

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_lsp_server::jsonrpc::{Request, Response};
use tower_lsp_server::{LspService, Server as Transport};

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
        self.state.sync(request.method(), request.params());
        self.inner.call(request)
    }
}

/// How many requests may run at once. Generation requests wait on models for seconds; a low
/// limit would let a few of them stall every other message, `$/cancelRequest` included.
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
    .custom_method("textDocument/inlineCompletion", Server::inline_completion)
    .finish();
    let service = Ordered {
        inner: service,
        state: state.clone(),
    };
    let (input, output) = stdio();
    Transport::new(only_valid_messages(input), output, socket)
        .concurrency_level(CONCURRENCY)
        .serve(service)
        .await;
    Ok(state.shut_down_cleanly())
}

/// Longest message accepted (a 10 MB file opened in the editor fits with room to spare).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Passes on only well-formed JSON-RPC 2.0 messages. The framework's reader stops for good at
/// the first undecodable message, which would end the session over one bad byte; here such a
/// message is logged and dropped, and the next one is read as usual.
fn only_valid_messages(input: Input) -> Input {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (reader, mut writer) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let mut input = tokio::io::BufReader::new(input);
        loop {
            let mut length: Option<usize> = None;
            loop {
                let mut line = Vec::new();
                match input.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => return, // end of input: the server sees EOF
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&line);
                let line = line.trim();
                if line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.trim().eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().ok();
                    }
                }
            }
            let Some(length) = length.filter(|l| *l <= MAX_MESSAGE) else {
                tracing::error!("dropped a message without a valid Content-Length header");
                continue;
            };
            let mut body = vec![0u8; length];
            if input.read_exact(&mut body).await.is_err() {
                return;
            }
            match check_message(&body) {
                Ok(()) => {
                    let header = format!("Content-Length: {length}\r\n\r\n");
                    if writer.write_all(header.as_bytes()).await.is_err()
                        || writer.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
                Err(reason) => tracing::error!(%reason, "dropped a malformed message"),
            }
        }
    });
    Box::new(reader)
}

/// A JSON-RPC 2.0 request, notification or response, checked without copying its params.
fn check_message(body: &[u8]) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        jsonrpc: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        method: Option<std::borrow::Cow<'a, str>>,
        id: Option<serde::de::IgnoredAny>,
    }
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| format!("not JSON-RPC: {e}"))?;
    if envelope.jsonrpc != "2.0" {
        return Err(format!("jsonrpc is `{}`, not `2.0`", envelope.jsonrpc));
    }
    // A response has an id and no method (its `result` may be null, so its presence is not
    // checked here; the framework reads the rest).
    if envelope.method.is_none() && envelope.id.is_none() {
        return Err("neither a request, a notification nor a response".to_string());
    }
    Ok(())
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

type Input = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
type Output = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// stdin and stdout for the protocol. Editors connect through pipes: those are driven by the
/// event loop directly (tokio's `Stdin`/`Stdout` hop through a blocking thread for every read and
/// write, which costs up to a millisecond per message on a busy machine). Anything else (a
/// terminal, a file) falls back to tokio's own.
fn stdio() -> (Input, Output) {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use tokio::net::unix::pipe;
        let input = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .and_then(|fd| pipe::Receiver::from_file(std::fs::File::from(fd)).ok());
        let output = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .and_then(|fd| pipe::Sender::from_file(std::fs::File::from(fd)).ok());
        if let (Some(input), Some(output)) = (input, output) {
            return (Box::new(input), Box::new(output));
        }
    }
    (Box::new(tokio::io::stdin()), Box::new(tokio::io::stdout()))
}

#[cfg(test)]
mod tests {
    use super::check_message;

    #[test]
    fn malformed_messages_are_recognised() {
        assert!(
            check_message(br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#).is_ok()
        );
        assert!(check_message(br#"{"jsonrpc":"2.0","method":"initialized"}"#).is_ok());
        assert!(check_message(br#"{"jsonrpc":"2.0","id":3,"result":null}"#).is_ok());
        for bad in [
            &b"{this is not json"[..],
            br#"{"hello":"world"}"#,
            br#"{"jsonrpc":"1.0","method":"x"}"#,
            b"[]",
            br#"{"jsonrpc":"2.0"}"#,
            b"\xff\xfe",
        ] {
            assert!(
                check_message(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
