//! The wire: LSP base-protocol framing over stdin/stdout, in place of tower-lsp-server's own
//! `Server` loop.
//!
//! It owns reading frames, dropping malformed ones, handing requests to the service in arrival
//! order, and writing responses and server→client messages. It does not know any LSP method.
//! Two guarantees the framework's loop lacks are why it exists:
//! - a malformed frame is logged and dropped; the framework stops reading for good at the first
//!   one, which would end the session over one bad byte;
//! - a response is written after every message its handler sent before returning (the
//!   framework merges its two queues round-robin, so a chat result could overtake its last
//!   streamed delta).

use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tower::{Service, ServiceExt};
use tower_lsp_server::jsonrpc::{Error, Id, Request, Response};
use tower_lsp_server::ClientSocket;

/// Longest message accepted (a 10 MB file opened in the editor fits with room to spare).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

pub type Input = Box<dyn AsyncRead + Unpin + Send>;
pub type Output = Box<dyn AsyncWrite + Unpin + Send>;

/// Serves `service` on `input`/`output` until the client sends `exit` or closes `input`, then
/// lets requests still running finish and writes their responses.
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
    let (handlers_tx, handlers_rx) = futures::channel::mpsc::channel(concurrency);
    let read = read_input(input, service, handlers_tx, from_client);
    let write = write_output(output, to_client, handlers_rx.buffer_unordered(concurrency));
    futures::join!(read, write);
}

/// Reads frames in order: requests and notifications go to the service (its `call` runs here,
/// so the order of calls is the order of arrival), responses to the client socket.
async fn read_input<S>(
    input: Input,
    mut service: S,
    mut handlers: futures::channel::mpsc::Sender<
        futures::future::BoxFuture<'static, Option<Response>>,
    >,
    mut from_client: impl Sink<Response, Error = impl std::fmt::Display> + Unpin,
) where
    S: Service<Request, Response = Option<Response>> + Send + 'static,
    S::Error: std::fmt::Display,
    S::Future: Send + 'static,
{
    let mut input = tokio::io::BufReader::new(input);
    loop {
        let body = match read_frame(&mut input).await {
            Frame::Body(body) => body,
            Frame::Skip(reason) => {
                tracing::error!(%reason, "dropped a message");
                continue;
            }
            Frame::End => break,
        };
        match parse(&body) {
            Ok(Incoming::Request(request)) => {
                let exit = request.method() == "exit";
                let service = match service.ready().await {
                    Ok(service) => service,
                    Err(e) => {
                        tracing::error!(error = %e, "the service stopped");
                        break;
                    }
                };
                let handler = service.call(request).map(|result| {
                    result.unwrap_or_else(|e| {
                        tracing::error!(error = %e, "a handler failed");
                        None
                    })
                });
                if handlers.send(handler.boxed()).await.is_err() || exit {
                    break;
                }
            }
            Ok(Incoming::Response(response)) => {
                if let Err(e) = from_client.send(response).await {
                    tracing::error!(error = %e, "a response from the client could not be delivered");
                }
            }
            Err(error) => {
                // JSON-RPC: answered with id null, since the id could not be read.
                tracing::error!(reason = %error.message, "dropped a malformed message");
                let answer = Response::from_error(Id::Null, error);
                if handlers
                    .send(futures::future::ready(Some(answer)).boxed())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    // No more requests: the writer ends once the handlers still running have answered.
    handlers.close_channel();
}

/// Writes server→client messages and responses. Before a response goes out, every
/// server→client message already queued is written: a handler's notifications are queued
/// before it returns, so they reach the client before its response.
async fn write_output(
    output: Output,
    to_client: impl Stream<Item = Request> + Unpin,
    responses: impl Stream<Item = Option<Response>>,
) {
    let mut output = output;
    // Fused here: the client socket reports its end on every poll after `exit` without ever
    // counting itself terminated.
    let mut to_client = to_client.fuse();
    let responses = responses.fuse();
    futures::pin_mut!(responses);
    let mut frame = Vec::new();
    loop {
        let written = futures::select_biased! {
            message = to_client.next() => match message {
                Some(message) => write_frame(&mut output, &mut frame, &message).await,
                None => continue,
            },
            response = responses.next() => match response {
                Some(response) => {
                    let mut ok = true;
                    while let Some(Some(message)) = to_client.next().now_or_never() {
                        ok &= write_frame(&mut output, &mut frame, &message).await;
                    }
                    match response {
                        Some(response) => ok && write_frame(&mut output, &mut frame, &response).await,
                        None => ok, // a notification: nothing to answer
                    }
                }
                None => break,
            },
            complete => break,
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
    Skip(String),
    End,
}

/// Reads one `Content-Length`-framed message (other headers are ignored, as LSP allows).
async fn read_frame(input: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> Frame {
    let mut length: Option<usize> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return Frame::End,
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
        return Frame::Skip("no valid Content-Length header".to_string());
    };
    if length > MAX_MESSAGE {
        // Read past it, so that the next frame starts where it should.
        let mut rest = (&mut *input).take(length as u64);
        let skipped = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await;
        return match skipped {
            Ok(n) if n == length as u64 => Frame::Skip(format!(
                "a message of {length} bytes is over the limit of {MAX_MESSAGE}"
            )),
            _ => Frame::End,
        };
    }
    let mut body = vec![0u8; length];
    match input.read_exact(&mut body).await {
        Ok(_) => Frame::Body(body),
        Err(_) => Frame::End,
    }
}

enum Incoming {
    Request(Request),
    Response(Response),
}

/// A JSON-RPC 2.0 request, notification or response; otherwise the error to answer with
/// (parse error for bytes that are not JSON, invalid request for JSON that is not JSON-RPC).
fn parse(body: &[u8]) -> Result<Incoming, Error> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        jsonrpc: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        method: Option<std::borrow::Cow<'a, str>>,
        id: Option<serde::de::IgnoredAny>,
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
    if envelope.jsonrpc != "2.0" {
        return Err(invalid(format!(
            "jsonrpc is `{}`, not `2.0`",
            envelope.jsonrpc
        )));
    }
    match (envelope.method, envelope.id) {
        (Some(_), _) => serde_json::from_slice(body)
            .map(Incoming::Request)
            .map_err(|e| invalid(format!("not a valid request: {e}"))),
        (None, Some(_)) => serde_json::from_slice(body)
            .map(Incoming::Response)
            .map_err(|e| invalid(format!("not a valid response: {e}"))),
        (None, None) => Err(invalid(
            "neither a request, a notification nor a response".to_string(),
        )),
    }
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
        let (service, socket) = LspService::build(|client| Burst { client })
            .custom_method("test/burst", Burst::burst)
            .finish();
        let (mut to_server, server_input) = tokio::io::duplex(1 << 16);
        let (server_output, from_server) = tokio::io::duplex(1 << 16);
        let mut from_server = tokio::io::BufReader::new(from_server);
        let server = tokio::spawn(serve(
            Box::new(server_input),
            Box::new(server_output),
            socket,
            service,
            4,
        ));
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}});
        send(&mut to_server, init).await;
        assert_eq!(receive(&mut from_server).await["id"], 1);
        send(
            &mut to_server,
            json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}),
        )
        .await;
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
}
