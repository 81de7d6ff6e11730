"""Fixtures for the end-to-end tests of `triage serve`.

Every test gets its own loopback test model server (`examples/test_backend`) and its own
`triage serve` process, driven over stdio by pytest-lsp's `LanguageClient` (pygls). The client
records everything the server sends that the tests check: `$/progress` values (raw, in order),
`triage/status` notifications, `workspace/applyEdit` requests, shown and logged messages, and
every byte of the server's stdout, which is checked at teardown to be nothing but framed
JSON-RPC messages.

Binaries: `$TRIAGE_BIN` (default `target/debug/triage`) and `$TRIAGE_TEST_BACKEND` (default
`target/debug/examples/test_backend`), relative paths taken from the repository root. Build them
with `cargo build --bin triage --examples`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import select
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Union

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.io_ import run_async
from pygls.protocol import (
    JsonRPCNotification,
    JsonRPCRequestMessage,
    JsonRPCResponseMessage,
    default_converter,
)
from pytest_lsp import ClientServerConfig, LanguageClient
from pytest_lsp.client import DEFAULT_CLIENT_FEATURES

REPO_ROOT = Path(__file__).resolve().parents[2]

FAST = "llama3.2:3b"
CODER = "qwen3-coder:30b"
HEAVY = "llama3.1:70b"
MODELS = (FAST, CODER, HEAVY)

logger = logging.getLogger("triage-lsp-tests")


def _binary(variable: str, default: str) -> Path:
    value = os.environ.get(variable) or default
    path = Path(value)
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


TRIAGE_BIN = _binary("TRIAGE_BIN", "target/debug/triage")
TRIAGE_TEST_BACKEND = _binary("TRIAGE_TEST_BACKEND", "target/debug/examples/test_backend")


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [str(p) for p in (TRIAGE_BIN, TRIAGE_TEST_BACKEND) if not p.is_file()]
    if missing:
        raise pytest.UsageError(
            f"missing binaries {missing}: run `cargo build --bin triage --examples` in "
            f"{REPO_ROOT}, or point TRIAGE_BIN / TRIAGE_TEST_BACKEND at them"
        )


def answer_tokens(model: str, tokens: int = 10) -> list[str]:
    """The chunks the test backend streams: `Hello from MODEL, this is a test answer.`
    (repeated when a trickle fault asks for more than ten)."""
    base = ["Hello", " from", f" {model}", ",", " this", " is", " a", " test", " answer", "."]
    return [base[i % len(base)] for i in range(tokens)]


def answer_for(model: str, tokens: int = 10) -> str:
    """The whole answer of the test backend."""
    return "".join(answer_tokens(model, tokens))


async def bounded(awaitable: Awaitable[Any], seconds: float = 10.0) -> Any:
    """Every wait on the server is bounded: a hang fails the test instead of the run."""
    return await asyncio.wait_for(awaitable, seconds)


async def eventually(
    predicate: Callable[[], Any],
    timeout: float = 5.0,
    interval: float = 0.02,
    what: str | Callable[[], str] = "",
) -> Any:
    """Polls `predicate` (sync or async) until it returns a truthy value, bounded in time.
    `what` (or what it returns, when callable) names the awaited thing in the failure."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {described or predicate}")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------------------------
# The test model server


class Backend:
    """`examples/test_backend` on a free loopback port, steered over its `/_test/*` API."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [str(TRIAGE_TEST_BACKEND), "127.0.0.1:0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 15)
        if not ready:
            self.close()
            raise RuntimeError("test_backend printed nothing within 15 s")
        line = self.process.stdout.readline().decode().strip()
        prefix = "listening on "
        if not line.startswith(prefix):
            self.close()
            raise RuntimeError(f"unexpected first line from test_backend: {line!r}")
        self.url = line[len(prefix) :]

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                if self.process.stdin:
                    self.process.stdin.close()
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        for stream in (self.process.stdin, self.process.stdout):
            if stream and not stream.closed:
                stream.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read()
        return json.loads(text) if text else None

    def set_fault(self, model: str, fault: dict[str, Any]) -> None:
        self._call("POST", "/_test/fault", {"model": model, "fault": fault})

    def set_loaded(self, models: list[dict[str, Any]]) -> None:
        self._call("POST", "/_test/loaded", models)

    def requests(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_test/requests")

    async def requests_async(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.requests)

    async def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], Any], timeout: float = 5.0, what: str = ""
    ) -> list[dict[str, Any]]:
        async def check():
            requests = await self.requests_async()
            return requests if predicate(requests) else None

        return await eventually(check, timeout=timeout, what=what or "backend requests")


@pytest.fixture
def backend():
    server = Backend()
    try:
        yield server
    finally:
        server.close()


# --------------------------------------------------------------------------------------------
# The language client


class TapReader:
    """Wraps the server's stdout stream and keeps every byte that the client reads."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.data = bytearray()

    async def readline(self) -> bytes:
        line = await self.reader.readline()
        self.data += line
        return line

    async def readexactly(self, n: int) -> bytes:
        chunk = await self.reader.readexactly(n)
        self.data += chunk
        return chunk


def check_framing(data: bytes) -> list[dict[str, Any]]:
    """Parses stdout strictly as LSP base protocol: headers, a blank line, exactly
    Content-Length bytes of a JSON-RPC 2.0 object; nothing else anywhere. Returns the
    messages, raises AssertionError on the first stray byte."""
    messages = []
    position = 0
    while position < len(data):
        end = data.find(b"\r\n\r\n", position)
        assert end != -1, f"stdout has bytes that are not an LSP header at {position}: {bytes(data[position:position + 200])!r}"
        headers = data[position:end].split(b"\r\n")
        length = None
        for header in headers:
            name, sep, value = header.partition(b": ")
            assert sep, f"stdout has a line that is not an LSP header: {header[:200]!r}"
            if name.lower() == b"content-length":
                length = int(value)
            else:
                assert name.lower() == b"content-type", f"unexpected header {header!r}"
        assert length is not None, f"message without Content-Length at {position}"
        body = data[end + 4 : end + 4 + length]
        assert len(body) == length, "stdout ends inside a message"
        message = json.loads(body.decode("utf-8"))
        assert message.get("jsonrpc") == "2.0", f"not JSON-RPC 2.0: {message}"
        messages.append(message)
        position = end + 4 + length
    return messages


class TriageClient(LanguageClient):
    """pytest-lsp's client, recording what `triage serve` sends."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.progress_values: dict[Any, list[dict[str, Any]]] = {}
        self.progress_log: list[tuple[Any, dict[str, Any]]] = []
        self.status_notifications: list[tuple[float, dict[str, Any]]] = []
        self.applied_edits: list[types.ApplyWorkspaceEditParams] = []
        self.created_tokens: list[Any] = []
        self.progress_before_response: dict[str, int] = {}
        self.registrations: list[types.Registration] = []
        self.stdout_tap: TapReader | None = None
        self.stderr_data = bytearray()
        self._stderr_task: asyncio.Task | None = None

    async def start_io(self, cmd: str, *args, **kwargs):
        # As pygls' JsonRPCClient.start_io, with the server's stdout read through a tap and its
        # stderr collected (and forwarded, as pytest-lsp does).
        server = await asyncio.create_subprocess_exec(
            cmd,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            **kwargs,
        )
        assert server.stdout is not None and server.stdin is not None
        self.protocol.set_writer(server.stdin)
        self.stdout_tap = TapReader(server.stdout)
        connection = asyncio.create_task(
            run_async(
                stop_event=self._stop_event,
                reader=self.stdout_tap,
                protocol=self.protocol,
                logger=logger,
                error_handler=self.report_server_error,
            )
        )
        notify_exit = asyncio.create_task(self._server_exit())
        self._server = server
        self._async_tasks.extend([connection, notify_exit])
        self._stderr_task = asyncio.create_task(self._collect_stderr(server))

    async def _collect_stderr(self, server: asyncio.subprocess.Process) -> None:
        assert server.stderr is not None
        while line := await server.stderr.readline():
            self.stderr_data += line

    @property
    def process(self) -> asyncio.subprocess.Process:
        assert self._server is not None
        return self._server

    # -- sending

    def send_raw(self, message: Any) -> None:
        """Writes one framed message as given (bytes are sent as the body verbatim)."""
        body = message if isinstance(message, bytes) else json.dumps(message).encode("utf-8")
        self.protocol.writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def raw_request(self, method: str, params: Any, msg_id: str | None = None) -> asyncio.Future:
        """A request whose params are sent exactly as given (no lsprotocol typing), so that
        malformed params can be tested; the answer resolves the returned future."""
        msg_id = msg_id or f"raw-{uuid.uuid4()}"
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.protocol._request_futures[msg_id] = future
        self.send_raw({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return asyncio.wrap_future(future)

    def request(self, method: str, params: Any, msg_id: str | None = None) -> asyncio.Future:
        """Sends a request now (written before this returns, so requests interleave with
        notifications exactly in call order) and returns a future for its result. Typed
        (lsprotocol) params and results work as with the generated `*_async` methods."""
        msg_id = msg_id or str(uuid.uuid4())
        future = self.protocol.send_request(method, params, msg_id=msg_id)
        # Runs inside the handling of the response: how many $/progress had come before it.
        future.add_done_callback(
            lambda _: self.progress_before_response.__setitem__(msg_id, len(self.progress_log))
        )
        return asyncio.wrap_future(future)

    def deltas_before_response(self, token: Any, msg_id: str) -> list[str]:
        """The deltas on `token` that had arrived when the response to `msg_id` did."""
        before = self.progress_log[: self.progress_before_response[msg_id]]
        return [v["delta"] for t, v in before if t == token and "delta" in v]

    def cancel(self, msg_id: Any) -> None:
        self.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))

    def deltas(self, token: Any) -> list[str]:
        return [
            v["delta"]
            for v in self.progress_values.get(token, [])
            if v.get("kind") == "report" and "delta" in v
        ]


def raw_converter():
    """pygls' converter, except that untyped payloads (custom methods, LSPAny results) stay
    plain JSON (dicts and lists) instead of namedtuples."""
    converter = default_converter()
    for cls in (JsonRPCRequestMessage, JsonRPCResponseMessage, JsonRPCNotification):
        converter.register_structure_hook(cls, lambda obj, cls: cls(**obj))

    # lsprotocol 2025.0.0 takes every object with a `command` key for a Command, but a
    # CodeAction's `command` is an object: only a string `command` makes a Command.
    def command_or_code_action(obj: Any, _: type):
        if isinstance(obj.get("command"), str):
            return converter.structure(obj, types.Command)
        return converter.structure(obj, types.CodeAction)

    converter.register_structure_hook(
        Union[types.Command, types.CodeAction], command_or_code_action
    )
    return converter


def make_client() -> TriageClient:
    client = TriageClient(converter_factory=raw_converter)
    for method, handler in DEFAULT_CLIENT_FEATURES.items():
        if method in (types.PROGRESS, types.WINDOW_WORK_DONE_PROGRESS_CREATE):
            continue
        client.feature(method)(handler)

    @client.feature(types.PROGRESS)
    def on_progress(params: types.ProgressParams):
        value = params.value if isinstance(params.value, dict) else {"raw": params.value}
        client.progress_values.setdefault(params.token, []).append(value)
        client.progress_log.append((params.token, value))

    @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
    def on_create(params: types.WorkDoneProgressCreateParams):
        client.created_tokens.append(params.token)
        return None

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    def on_apply_edit(params: types.ApplyWorkspaceEditParams):
        client.applied_edits.append(params)
        return types.ApplyWorkspaceEditResult(applied=True)

    @client.feature(types.CLIENT_REGISTER_CAPABILITY)
    def on_register(params: types.RegistrationParams):
        client.registrations.extend(params.registrations)
        return None

    @client.feature("triage/status")
    def on_status(params: Any):
        client.status_notifications.append((time.monotonic(), params))

    return client


def write_config(directory: Path, url: str, extra: str = "") -> Path:
    tiers = "".join(
        f"[tiers.{tier}.timeouts]\nfirst_token_s = 1.5\nidle_s = 1\ntotal_s = 20\n\n"
        for tier in ("fast", "coder", "heavy")
    )
    path = directory / "config.toml"
    path.write_text(f'[endpoints.ollama]\nurl = "{url}"\n\n{tiers}{extra}')
    return path


def server_env(directory: Path, config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_HOST", "RUST_LOG")}
    state = directory / "state"
    xdg = directory / "xdg"
    state.mkdir(exist_ok=True)
    xdg.mkdir(exist_ok=True)
    env.update(
        TRIAGE_CONFIG=str(config),
        TRIAGE_STATE_DIR=str(state),
        XDG_CONFIG_HOME=str(xdg),
        XDG_STATE_HOME=str(xdg / "state"),
        XDG_DATA_HOME=str(xdg / "data"),
    )
    return env


async def stop_client(client: TriageClient) -> int | None:
    """Shuts the server down (shutdown + exit) if it still runs, killing it if it will not go;
    returns its exit code."""
    process = client._server
    if process is None:
        return None
    if process.returncode is None and client.error is None and client.capabilities is not None:
        try:
            await bounded(client.shutdown_session(), 5)
        except Exception as e:  # noqa: BLE001 - teardown must go on
            logger.warning("shutdown failed: %r", e)
    if process.returncode is None:
        try:
            await bounded(process.wait(), 5)
        except asyncio.TimeoutError:
            process.kill()
            await bounded(process.wait(), 5)
    try:
        await bounded(client.stop(), 5)
    except Exception as e:  # noqa: BLE001
        logger.warning("client stop failed: %r", e)
    if client._stderr_task:
        try:
            await bounded(client._stderr_task, 2)
        except Exception:  # noqa: BLE001
            client._stderr_task.cancel()
    return process.returncode


@pytest_asyncio.fixture
async def launch(backend: Backend, tmp_path: Path):
    """Starts `triage serve` processes pointed at this test's backend; each is shut down (or
    killed) at teardown, and then checked: no panic on stderr, nothing but framed JSON-RPC on
    stdout."""
    started: list[TriageClient] = []

    async def start(
        env: dict[str, str] | None = None, toml: str = "", name: str = "server"
    ) -> TriageClient:
        directory = tmp_path / name
        directory.mkdir()
        server_environment = server_env(directory, write_config(directory, backend.url, toml))
        server_environment.update(env or {})
        config = ClientServerConfig(
            server_command=[str(TRIAGE_BIN), "serve"],
            server_env=server_environment,
            client_factory=make_client,
        )
        lsp_client: TriageClient = await bounded(config.start(), 10)  # type: ignore[assignment]
        started.append(lsp_client)
        return lsp_client

    yield start

    for lsp_client in started:
        await stop_client(lsp_client)
    for lsp_client in started:
        stderr = bytes(lsp_client.stderr_data).decode("utf-8", "replace")
        assert "panicked" not in stderr, f"the server panicked:\n{stderr}"
        assert lsp_client.stdout_tap is not None
        check_framing(bytes(lsp_client.stdout_tap.data))


@pytest_asyncio.fixture
async def client(launch) -> TriageClient:
    """A started (not yet initialized) `triage serve` pointed at this test's backend."""
    return await launch()


def capabilities(
    encodings: list[str] | None = None, work_done: bool = True
) -> types.ClientCapabilities:
    general = None
    if encodings is not None:
        general = types.GeneralClientCapabilities(
            position_encodings=[types.PositionEncodingKind(e) for e in encodings]
        )
    return types.ClientCapabilities(
        general=general,
        window=types.WindowClientCapabilities(work_done_progress=work_done),
        workspace=types.WorkspaceClientCapabilities(
            apply_edit=True,
            configuration=False,
            did_change_configuration=types.DidChangeConfigurationClientCapabilities(),
            execute_command=types.ExecuteCommandClientCapabilities(),
        ),
        text_document=types.TextDocumentClientCapabilities(
            synchronization=types.TextDocumentSyncClientCapabilities(),
            hover=types.HoverClientCapabilities(
                content_format=[types.MarkupKind.Markdown, types.MarkupKind.PlainText]
            ),
            completion=types.CompletionClientCapabilities(),
            code_action=types.CodeActionClientCapabilities(),
            inline_completion=types.InlineCompletionClientCapabilities(),
        ),
    )


async def initialize(
    client: TriageClient, encodings: list[str] | None = None, work_done: bool = True, **kwargs
) -> types.InitializeResult:
    return await bounded(
        client.initialize_session(
            types.InitializeParams(
                capabilities=capabilities(encodings, work_done),
                root_uri=None,
                **kwargs,
            )
        ),
        10,
    )


def open_document(
    client: TriageClient, uri: str, text: str, language: str, version: int = 1
) -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(
                uri=uri, language_id=language, version=version, text=text
            )
        )
    )


def position(line: int, character: int) -> types.Position:
    return types.Position(line=line, character=character)


def span(l1: int, c1: int, l2: int, c2: int) -> types.Range:
    return types.Range(start=position(l1, c1), end=position(l2, c2))


def range_json(r: types.Range) -> dict[str, Any]:
    return {
        "start": {"line": r.start.line, "character": r.start.character},
        "end": {"line": r.end.line, "character": r.end.character},
    }
