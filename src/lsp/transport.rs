//! The wire: LSP base-protocol framing over stdin/stdout, in place of tower-lsp-server's own
//! `Server` loop.
//!
//! It owns reading frames, answering malformed ones, handing messages to the service in arrival
//! order, and writing responses and server→client messages. It does not know any LSP method
//! beyond `exit`. What the framework's loop lacks, and why this exists:
//! - a malformed message is answered (JSON-RPC error, id null) and the session goes on; the
//!   framework stops reading for good at the first undecodable frame;
//! - a response is written after every message its handler sent before returning (the
//!   framework merges its two queues round-robin, so a chat result could overtake its last
//!   streamed delta);
//! - the reader never waits for a free handler slot, so handlers waiting on the client
//!   (`workDoneProgress/create`, `applyEdit`) always get its answer, and notifications such as
//!   `$/cancelRequest` take effect at once;
//! - a closed input cancels what is still running, as `exit` does, and the process ends.

use std::task::Context;
use std::time::Duration;

use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use serde::{Deserialize, Deserializer};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};
use tower::{Service, ServiceExt};
use tower_lsp_server::jsonrpc::{Error, Id, Request, Response};
use tower_lsp_server::ClientSocket;

/// Longest message accepted (a 10 MB file opened in the editor fits with room to spare).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Longest header line accepted: real ones are a few dozen bytes.
const MAX_HEADER_LINE: usize = 8 * 1024;

/// How long requests still running may take to answer once the input has ended (`exit` or a
/// closed pipe has cancelled them; this bounds the rest).
const DRAIN_AFTER_INPUT: Duration = Duration::from_secs(2);

pub type Input = Box<dyn AsyncRead + Unpin + Send>;
pub type Output = Box<dyn AsyncWrite + Unpin + Send>;

type Handler = futures::future::BoxFuture<'static, Option<Response>>;

/// Serves `service` on `input`/`output` until the client sends `exit` or closes `input`, then
/// writes what the requests still running answer within [`DRAIN_AFTER_INPUT`].
pub async fn serve<S>(
    input: Input,
    output: Output,
    socket: ClientSocket,
    service: S,
    concurrency: usize,
) where
    S: Service<Request, Response = Option<Response>> + Send + 'static,
    S::Error: std::fmt::Display,
    S::Future: Send + 'static,
{
    let (to_client, from_client) = socket.split();
    // Unbounded, so that the reader never waits for room: handlers waiting on an answer from
    // the client (workDoneProgress/create, applyEdit) get it even when many are running.
    let (handlers_tx, handlers_rx) = futures::channel::mpsc::unbounded();
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    let read = async move {
        read_input(input, service, handlers_tx, from_client).await;
        let _ = ended_tx.send(());
    };
    let write = write_output(
        output,
        to_client,
        handlers_rx.buffer_unordered(concurrency),
        ended_rx,
    );
    futures::join!(read, write);
}

/// Reads frames in order: requests and notifications go to the service (its `call` runs here,
/// so the order of calls is the order of arrival), responses to the client socket.
async fn read_input<S>(
    input: Input,
    mut service: S,
    handlers: futures::channel::mpsc::UnboundedSender<Handler>,
    mut from_client: impl Sink<Response, Error = impl std::fmt::Display> + Unpin,
) where
    S: Service<Request, Response = Option<Response>> + Send + 'static,
    S::Error: std::fmt::Display,
    S::Future: Send + 'static,
{
    let answer = |error: Error| {
        // JSON-RPC: answered with id null, since the id could not be read.
        tracing::error!(reason = %error.message, "dropped a malformed message");
        let response = Response::from_error(Id::Null, error);
        handlers
            .unbounded_send(futures::future::ready(Some(response)).boxed())
            .is_ok()
    };
    let mut input = tokio::io::BufReader::new(input);
    let mut exited = false;
    loop {
        let body = match read_frame(&mut input).await {
            Frame::Body(body) => body,
            Frame::Skip(error) => {
                if answer(error) {
                    continue;
                }
                break;
            }
            Frame::End => break,
        };
        match parse(&body) {
            Ok(Incoming::Request(request)) => {
                exited = request.method() == "exit";
                let notification = request.id().is_none();
                let Some(mut handler) = call(&mut service, request).await else {
                    break;
                };
                // A notification runs at once, here, as far as it can without waiting:
                // `$/cancelRequest` then takes effect even when every handler slot is busy.
                if notification {
                    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
                    if handler.poll_unpin(&mut cx).is_ready() {
                        if exited {
                            break;
                        }
                        continue;
                    }
                }
                if handlers.unbounded_send(handler).is_err() || exited {
                    break;
                }
            }
            Ok(Incoming::Response(response)) => {
                if let Err(e) = from_client.send(response).await {
                    tracing::error!(error = %e, "a response from the client could not be delivered");
                }
            }
            Ok(Incoming::Unanswerable(reason)) => {
                tracing::error!(%reason, "dropped a message that must not be answered");
            }
            Err(error) => {
                if !answer(error) {
                    break;
                }
            }
        }
    }
    if !exited {
        // The client is gone without `exit`: the same, so that requests still running (some
        // maybe waiting on the client) are cancelled and their model streams closed.
        if let Some(handler) = call(&mut service, Request::build("exit").finish()).await {
            handler.await;
        }
    }
    // No more requests: the writer ends once the handlers still running have answered.
    handlers.close_channel();
}

/// Hands one message to the service; `None` when the service has stopped.
async fn call<S>(service: &mut S, request: Request) -> Option<Handler>
where
    S: Service<Request, Response = Option<Response>> + Send + 'static,
    S::Error: std::fmt::Display,
    S::Future: Send + 'static,
{
    match service.ready().await {
        Ok(service) => Some(
            service
                .call(request)
                .map(|result| {
                    result.unwrap_or_else(|e| {
                        tracing::debug!(error = %e, "a handler ended without an answer");
                        None
                    })
                })
                .boxed(),
        ),
        Err(e) => {
            tracing::debug!(error = %e, "the service stopped");
            None
        }
    }
}

/// Writes server→client messages and responses. Before a response goes out, every
/// server→client message already queued is written: a handler's notifications are queued
/// before it returns, so they reach the client before its response.
async fn write_output(
    mut output: Output,
    mut to_client: impl Stream<Item = Request> + Unpin,
    responses: impl Stream<Item = Option<Response>>,
    mut input_ended: tokio::sync::oneshot::Receiver<()>,
) {
    futures::pin_mut!(responses);
    // The client socket reports its end on every poll after `exit` without ever counting
    // itself terminated: it is polled only while open.
    let mut client_open = true;
    let mut ended = false;
    // Armed (reset) when the input ends; not polled before.
    let deadline = tokio::time::sleep(DRAIN_AFTER_INPUT);
    tokio::pin!(deadline);
    let mut frame = Vec::new();
    loop {
        let written = tokio::select! {
            biased;
            message = to_client.next(), if client_open => match message {
                Some(message) => write_frame(&mut output, &mut frame, &message).await,
                None => {
                    client_open = false;
                    true
                }
            },
            response = responses.next() => match response {
                Some(response) => {
                    let mut ok = true;
                    while client_open {
                        match to_client.next().now_or_never() {
                            Some(Some(message)) => {
                                ok &= write_frame(&mut output, &mut frame, &message).await;
                            }
                            Some(None) => client_open = false,
                            None => break,
                        }
                    }
                    match response {
                        Some(response) => ok && write_frame(&mut output, &mut frame, &response).await,
                        None => ok, // a notification: nothing to answer
                    }
                }
                None => break,
            },
            _ = &mut input_ended, if !ended => {
                ended = true;
                deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN_AFTER_INPUT);
                true
            }
            () = &mut deadline, if ended => {
                tracing::warn!("input ended; requests still running are dropped unanswered");
                break;
            }
        };
        if !written {
            tracing::error!("stdout is closed: the client is gone");
            break;
        }
    }
}

/// Serialises one message with its header into `buffer` and writes it in one call.
async fn write_frame(
    output: &mut Output,
    buffer: &mut Vec<u8>,
    message: &impl serde::Serialize,
) -> bool {
    let body = match serde_json::to_vec(message) {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(error = %e, "a message could not be serialised");
            return true;
        }
    };
    buffer.clear();
    buffer.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    buffer.extend_from_slice(&body);
    tracing::trace!(message = %String::from_utf8_lossy(&body), "->");
    output.write_all(buffer).await.is_ok() && output.flush().await.is_ok()
}

enum Frame {
    Body(Vec<u8>),
    /// Not a readable message: the error to answer it with.
    Skip(Error),
    End,
}

/// Reads one `Content-Length`-framed message (other headers are ignored, as LSP allows).
async fn read_frame(input: &mut (impl AsyncBufRead + Unpin)) -> Frame {
    let mut length: Option<usize> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line_bounded(input, &mut line).await {
            Ok(0) | Err(_) => return Frame::End,
            Ok(_) if line.len() == MAX_HEADER_LINE && !line.ends_with(b"\n") => {
                // Not a header: skip to the end of the line, a bounded piece at a time.
                loop {
                    line.clear();
                    match read_line_bounded(input, &mut line).await {
                        Ok(0) | Err(_) => return Frame::End,
                        Ok(_) if line.ends_with(b"\n") => break,
                        Ok(_) => {}
                    }
                }
                return Frame::Skip(Error {
                    message: format!("a header line is longer than {MAX_HEADER_LINE} bytes").into(),
                    ..Error::parse_error()
                });
            }
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            break;
        }
        // Found anywhere in the line: after a frame without a header, its body runs into the
        // next frame's header line, and the reader gets back in step there.
        if let Some(at) = text.to_ascii_lowercase().rfind("content-length:") {
            length = text[at + "content-length:".len()..].trim().parse().ok();
        }
    }
    let Some(length) = length else {
        return Frame::Skip(Error {
            message: "a message without a valid Content-Length header".into(),
            ..Error::parse_error()
        });
    };
    if length > MAX_MESSAGE {
        // Read past it, so that the next frame starts where it should.
        let mut rest = (&mut *input).take(length as u64);
        let skipped = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await;
        return match skipped {
            Ok(n) if n == length as u64 => Frame::Skip(Error {
                message: format!("a message of {length} bytes is over the limit of {MAX_MESSAGE}")
                    .into(),
                ..Error::invalid_request()
            }),
            _ => Frame::End,
        };
    }
    let mut body = vec![0u8; length];
    match input.read_exact(&mut body).await {
        Ok(_) => Frame::Body(body),
        Err(_) => Frame::End,
    }
}

/// Appends at most [`MAX_HEADER_LINE`] bytes, up to and including the next `\n`, to `line`.
async fn read_line_bounded(
    input: &mut (impl AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    (&mut *input)
        .take(MAX_HEADER_LINE as u64)
        .read_until(b'\n', line)
        .await
}

enum Incoming {
    Request(Request),
    Response(Response),
    /// Malformed, but a response (it has `result` or `error`): JSON-RPC forbids answering it.
    Unanswerable(String),
}

/// Whether a field is there at all, whatever its value (`Option` would read `null` as absent,
/// and `"id": null` or `"result": null` are meaningful).
#[derive(Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer).map(|_| Present(true))
    }
}

/// A JSON-RPC 2.0 request, notification or response; otherwise the error to answer with
/// (parse error for bytes that are not JSON, invalid request for JSON that is not JSON-RPC).
fn parse(body: &[u8]) -> Result<Incoming, Error> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        jsonrpc: std::borrow::Cow<'a, str>,
        #[serde(default)]
        method: Present,
        #[serde(default)]
        id: Present,
        #[serde(default)]
        result: Present,
        #[serde(default)]
        error: Present,
    }
    let invalid = |message: String| Error {
        message: message.into(),
        ..Error::invalid_request()
    };
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => invalid(format!("not JSON-RPC 2.0: {e}")),
        _ => Error {
            message: format!("not JSON: {e}").into(),
            ..Error::parse_error()
        },
    })?;
    let is_response = envelope.result.0 || envelope.error.0;
    if envelope.jsonrpc != "2.0" {
        let reason = format!("jsonrpc is `{}`, not `2.0`", envelope.jsonrpc);
        return match is_response {
            true => Ok(Incoming::Unanswerable(reason)),
            false => Err(invalid(reason)),
        };
    }
    if envelope.method.0 {
        return serde_json::from_slice(body)
            .map(Incoming::Request)
            .map_err(|e| invalid(format!("not a valid request: {e}")));
    }
    if is_response || envelope.id.0 {
        return Ok(match serde_json::from_slice(body) {
            Ok(response) => Incoming::Response(response),
            Err(e) => Incoming::Unanswerable(format!("not a valid response: {e}")),
        });
    }
    Err(invalid(
        "neither a request, a notification nor a response".to_string(),
    ))
}

/// stdin and stdout for the protocol. Editors connect through pipes: those are driven by the
/// event loop directly (tokio's `Stdin`/`Stdout` hop through a blocking thread for every read and
/// write, which costs up to a millisecond per message on a busy machine). Anything else (a
/// terminal, a file) falls back to tokio's own.
pub fn stdio() -> (Input, Output) {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use tokio::net::unix::pipe;
        let input = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .and_then(|fd| pipe::Receiver::from_file(std::fs::File::from(fd)).ok())
            .map(|p| Box::new(p) as Input)
            .unwrap_or_else(|| Box::new(tokio::io::stdin()));
        let output = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .and_then(|fd| pipe::Sender::from_file(std::fs::File::from(fd)).ok())
            .map(|p| Box::new(p) as Output)
            .unwrap_or_else(|| Box::new(tokio::io::stdout()));
        (input, output)
    }
    #[cfg(not(unix))]
    (Box::new(tokio::io::stdin()), Box::new(tokio::io::stdout()))
}

#[cfg(test)]
mod tests {
    use super::{parse, read_frame, serve, Frame, Incoming};
    use serde_json::{json, Value};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    use tower_lsp_server::jsonrpc::Result;
    use tower_lsp_server::ls_types::notification::LogMessage;
    use tower_lsp_server::ls_types::*;
    use tower_lsp_server::{Client, LanguageServer, LspService};

    /// A server with one method that sends notifications and returns without waiting on
    /// anything else, so that its response is ready in the same poll as its last notification.
    struct Burst {
        client: Client,
    }

    impl LanguageServer for Burst {
        async fn initialize(&self, _: InitializeParams) -> Result<InitializeResult> {
            Ok(InitializeResult::default())
        }
        async fn shutdown(&self) -> Result<()> {
            Ok(())
        }
    }

    impl Burst {
        async fn burst(&self) -> Result<Value> {
            for i in 0..20 {
                let message = format!("note {i}");
                self.client
                    .send_notification::<LogMessage>(LogMessageParams {
                        typ: MessageType::INFO,
                        message,
                    })
                    .await;
            }
            Ok(json!("done"))
        }

        /// Waits on an answer from the client, as `workDoneProgress/create` does in the server.
        async fn ask(&self) -> Result<Value> {
            let token = NumberOrString::String("t".into());
            self.client
                .send_request::<request::WorkDoneProgressCreate>(WorkDoneProgressCreateParams {
                    token,
                })
                .await?;
            Ok(json!("asked"))
        }
    }

    /// A session with the [`Burst`] server on in-memory pipes, initialized.
    async fn session(
        concurrency: usize,
    ) -> (
        tokio::io::DuplexStream,
        tokio::io::BufReader<tokio::io::DuplexStream>,
        tokio::task::JoinHandle<()>,
    ) {
        let (service, socket) = LspService::build(|client| Burst { client })
            .custom_method("test/burst", Burst::burst)
            .custom_method("test/ask", Burst::ask)
            .finish();
        let (mut to_server, server_input) = tokio::io::duplex(1 << 16);
        let (server_output, from_server) = tokio::io::duplex(1 << 16);
        let mut from_server = tokio::io::BufReader::new(from_server);
        let server = tokio::spawn(serve(
            Box::new(server_input),
            Box::new(server_output),
            socket,
            service,
            concurrency,
        ));
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}});
        send(&mut to_server, init).await;
        assert_eq!(receive(&mut from_server).await["id"], 1);
        send(
            &mut to_server,
            json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}),
        )
        .await;
        (to_server, from_server, server)
    }

    #[tokio::test]
    async fn many_handlers_waiting_on_the_client_all_get_their_answers() {
        // Far more than the concurrency: the reader must keep reading the client's answers.
        let (mut to_server, mut from_server, _server) = session(4).await;
        let asks = 60;
        for id in 0..asks {
            send(
                &mut to_server,
                json!({"jsonrpc": "2.0", "id": 1000 + id, "method": "test/ask"}),
            )
            .await;
        }
        let mut answered = 0;
        let all = async {
            while answered < asks {
                let message = receive(&mut from_server).await;
                if message["method"] == "window/workDoneProgress/create" {
                    let reply = json!({"jsonrpc": "2.0", "id": message["id"], "result": null});
                    send(&mut to_server, reply).await;
                } else {
                    assert_eq!(message["result"], "asked", "{message}");
                    answered += 1;
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), all)
            .await
            .expect("every request answered: the reader must not wait for handler slots");
    }

    #[tokio::test]
    async fn a_closed_input_ends_the_session_even_with_a_request_waiting_on_the_client() {
        let (mut to_server, mut from_server, server) = session(4).await;
        send(
            &mut to_server,
            json!({"jsonrpc": "2.0", "id": 7, "method": "test/ask"}),
        )
        .await;
        let create = receive(&mut from_server).await;
        assert_eq!(create["method"], "window/workDoneProgress/create");
        drop(to_server); // the editor is gone, the request is never answered
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("the transport ends when its input ends")
            .unwrap();
    }

    async fn send(to: &mut (impl AsyncWriteExt + Unpin), message: Value) {
        let body = message.to_string();
        let frame = format!("Content-Length: {}\r\n\r\n{body}", body.len());
        to.write_all(frame.as_bytes()).await.unwrap();
    }

    async fn receive(from: &mut (impl AsyncBufReadExt + Unpin)) -> Value {
        let mut length = 0;
        loop {
            let mut line = String::new();
            from.read_line(&mut line).await.unwrap();
            match line.trim() {
                "" => break,
                header => {
                    if let Some(n) = header.strip_prefix("Content-Length: ") {
                        length = n.parse().unwrap();
                    }
                }
            }
        }
        let mut body = vec![0; length];
        from.read_exact(&mut body).await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn an_endless_header_line_is_skipped_in_bounded_pieces() {
        let mut stream = vec![b'x'; 3 * super::MAX_HEADER_LINE + 10];
        stream.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\n{}");
        let mut input = tokio::io::BufReader::new(&stream[..]);
        assert!(matches!(read_frame(&mut input).await, Frame::Skip(e) if e.code.code() == -32700));
        assert!(matches!(read_frame(&mut input).await, Frame::Body(b) if b == b"{}"));
        assert!(matches!(read_frame(&mut input).await, Frame::End));
    }

    #[tokio::test]
    async fn the_reader_gets_back_in_step_after_a_frame_without_a_header() {
        let stream = b"{\"no\":\"header\"}Content-Length: 2\r\n\r\n{}\
Content-Type: application/vscode-jsonrpc; charset=utf-8\r\ncontent-length: 3\r\n\r\n[1]";
        let mut input = tokio::io::BufReader::new(&stream[..]);
        // The body without a header swallows the next header line, so that frame is lost too…
        assert!(matches!(read_frame(&mut input).await, Frame::Body(b) if b == b"{}"));
        // …no: it is recovered from the end of the line it ran into. Then headers in any case.
        assert!(matches!(read_frame(&mut input).await, Frame::Body(b) if b == b"[1]"));
        assert!(matches!(read_frame(&mut input).await, Frame::End));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_response_follows_every_notification_its_handler_sent() {
        let (mut to_server, mut from_server, server) = session(4).await;
        // A malformed frame in between is answered with a parse error (id null); the session
        // goes on.
        to_server
            .write_all(b"Content-Length: 5\r\n\r\n{oops")
            .await
            .unwrap();
        let error = receive(&mut from_server).await;
        assert_eq!(error["id"], Value::Null);
        assert_eq!(error["error"]["code"], -32700);
        for round in 0..20 {
            let id = 100 + round;
            send(
                &mut to_server,
                json!({"jsonrpc": "2.0", "id": id, "method": "test/burst"}),
            )
            .await;
            let mut notes = 0;
            loop {
                let message = receive(&mut from_server).await;
                if message["id"] == id {
                    assert_eq!(message["result"], "done");
                    break;
                }
                assert_eq!(message["method"], "window/logMessage");
                notes += 1;
            }
            assert_eq!(
                notes, 20,
                "round {round}: the response overtook notifications"
            );
        }
        send(
            &mut to_server,
            json!({"jsonrpc": "2.0", "id": 2, "method": "shutdown"}),
        )
        .await;
        assert_eq!(receive(&mut from_server).await["id"], 2);
        send(&mut to_server, json!({"jsonrpc": "2.0", "method": "exit"})).await;
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("the transport ends after exit")
            .unwrap();
    }

    #[test]
    fn messages_are_told_apart_and_malformed_ones_refused() {
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#),
            Ok(Incoming::Request(_))
        ));
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","method":"initialized"}"#),
            Ok(Incoming::Request(_))
        ));
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","id":3,"result":null}"#),
            Ok(Incoming::Response(_))
        ));
        let code = |body: &[u8]| parse(body).err().map(|e| e.code.code());
        assert_eq!(code(b"{this is not json"), Some(-32700));
        assert_eq!(code(br#"{"jsonrpc":"2.0","method":5}"#), Some(-32600));
        assert_eq!(code(br#"{"hello":"world"}"#), Some(-32600));
        // Responses are never answered, even malformed ones or those with id null.
        for response in [
            &br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"x"}}"#[..],
            br#"{"jsonrpc":"2.0","result":5}"#,
            br#"{"jsonrpc":"1.0","id":4,"result":5}"#,
            br#"{"jsonrpc":"2.0","id":{"no":1},"error":"x"}"#,
        ] {
            assert!(
                matches!(
                    parse(response),
                    Ok(Incoming::Response(_) | Incoming::Unanswerable(_))
                ),
                "{}",
                String::from_utf8_lossy(response)
            );
        }
        for bad in [
            &b"{this is not json"[..],
            br#"{"hello":"world"}"#,
            br#"{"jsonrpc":"1.0","method":"x"}"#,
            br#"{"jsonrpc":"2.0","method":5}"#,
            b"[]",
            br#"{"jsonrpc":"2.0"}"#,
            b"\xff\xfe",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// Property (seeded, in-process): in any stream of valid frames mixed with broken ones (no
    /// length, a bad length, a header line over the limit, garbage before a header), every
    /// valid frame is read, in order, and nothing panics; `parse` never panics on any body.
    #[tokio::test]
    async fn random_streams_of_good_and_broken_frames_resynchronise() {
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..300 {
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for i in 0..rng.usize(1..25) {
                match rng.u32(0..7) {
                    0 => bytes.extend_from_slice(b"Content-Type: x\r\n\r\n{\"a\":1}"),
                    1 => {
                        let length = ["abc", "-1", "", "99999999999999999999999"][rng.usize(..4)];
                        bytes.extend_from_slice(
                            format!("Content-Length: {length}\r\n\r\n").as_bytes(),
                        );
                        bytes.extend_from_slice(b"{\"b\":2}");
                    }
                    2 => {
                        let junk = "j".repeat(rng.usize(8_200..20_000));
                        bytes.extend_from_slice(format!("X-Junk: {junk}\r\n").as_bytes());
                    }
                    3 => bytes.extend(
                        (0..rng.usize(0..500))
                            .map(|_| rng.u8(..))
                            .filter(|b| *b != b'\n' && *b != b'\r'),
                    ),
                    _ => {
                        let body = json!({"jsonrpc": "2.0", "id": i, "method": "m"}).to_string();
                        let header = if rng.bool() {
                            "Content-Length"
                        } else {
                            "content-length"
                        };
                        let end = if rng.bool() { "\r\n\r\n" } else { "\n\n" };
                        bytes.extend_from_slice(
                            format!("{header}: {}{end}{body}", body.len()).as_bytes(),
                        );
                        expected.push(i as i64);
                    }
                }
            }
            let mut input = tokio::io::BufReader::new(&bytes[..]);
            let mut seen = Vec::new();
            loop {
                match read_frame(&mut input).await {
                    Frame::End => break,
                    Frame::Skip(_) => {}
                    Frame::Body(body) => {
                        if let Ok(Incoming::Request(r)) = parse(&body) {
                            if let Some(tower_lsp_server::jsonrpc::Id::Number(n)) = r.id() {
                                seen.push(*n);
                            }
                        }
                    }
                }
            }
            assert_eq!(seen, expected, "round {round}");
        }
        for _ in 0..20_000 {
            let body: Vec<u8> = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect();
            let _ = parse(&body);
        }
    }
}
