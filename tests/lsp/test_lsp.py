"""End-to-end tests of `triage serve`: the real binary over stdio, driven by pytest-lsp (pygls),
answering from the loopback test model server. See conftest.py for the harness.

Every answer of the test backend is `Hello from MODEL, this is a test answer.`; what reached
the model is read back from its `GET /_test/requests`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException

from conftest import (
    CODER,
    FAST,
    HEAVY,
    MODELS,
    TriageClient,
    answer_for,
    answer_tokens,
    bounded,
    check_framing,
    eventually,
    initialize,
    open_document,
    position,
    range_json,
    span,
)

COMMANDS = {
    "triage.explain": "triage: Explain",
    "triage.explainShell": "triage: Explain shell command",
    "triage.fix": "triage: Fix",
    "triage.refactor": "triage: Refactor",
    "triage.docstring": "triage: Add docstring",
    "triage.tests": "triage: Write tests",
    "triage.ask": "triage: Ask the heavy model (deep analysis)",
}
EXPLAIN_SHELL = "triage.explainShell"
EDITING = {"triage.fix", "triage.refactor", "triage.docstring", "triage.tests"}
ANSWER_KEYS = {"text", "model", "tier", "confidence", "reasons", "fallbacks", "usage", "timings"}

PYTHON_URI = "file:///work/project/greet.py"
PYTHON_TEXT = 'def greet(name):\n    return "héllo " + name  # 👋\n\nprint(greet("wörld"))\n'


# --------------------------------------------------------------------------------------------
# Helpers


def units(text: str, encoding: str) -> int:
    """Length of `text` in the code units of a negotiated position encoding."""
    if encoding == "utf-8":
        return len(text.encode("utf-8"))
    if encoding == "utf-16":
        return len(text.encode("utf-16-le")) // 2
    raise ValueError(encoding)


def lsp_position(text: str, index: int, encoding: str) -> types.Position:
    """The LSP position of the character (code point) index `index` of `text`."""
    line = text.count("\n", 0, index)
    line_start = text.rfind("\n", 0, index) + 1
    return position(line, units(text[line_start:index], encoding))


def lsp_range(text: str, start: int, end: int, encoding: str) -> types.Range:
    return types.Range(
        start=lsp_position(text, start, encoding), end=lsp_position(text, end, encoding)
    )


def change(uri: str, version: int, *edits: tuple[types.Range | None, str]):
    return types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[
            types.TextDocumentContentChangeWholeDocument(text=t)
            if r is None
            else types.TextDocumentContentChangePartial(range=r, text=t)
            for r, t in edits
        ],
    )


def doc_id(uri: str) -> types.TextDocumentIdentifier:
    return types.TextDocumentIdentifier(uri=uri)


def code_action_params(uri: str, r: types.Range) -> types.CodeActionParams:
    return types.CodeActionParams(
        text_document=doc_id(uri), range=r, context=types.CodeActionContext(diagnostics=[])
    )


async def code_actions(client: TriageClient, uri: str, r: types.Range) -> list[types.CodeAction]:
    actions = await bounded(client.text_document_code_action_async(code_action_params(uri, r)))
    return list(actions or [])


async def hover(client: TriageClient, uri: str, line: int, character: int = 0):
    return await bounded(
        client.text_document_hover_async(
            types.HoverParams(text_document=doc_id(uri), position=position(line, character))
        ),
        10,
    )


async def execute(client: TriageClient, command: str, arguments: list[Any], timeout: float = 10):
    return await bounded(
        client.workspace_execute_command_async(
            types.ExecuteCommandParams(command=command, arguments=arguments)
        ),
        timeout,
    )


def whole(text: str, encoding: str) -> dict[str, Any]:
    return range_json(lsp_range(text, 0, len(text), encoding))


async def server_text(
    client: TriageClient, backend, uri: str, expected: str, encoding: str, marker: str
) -> str:
    """Asks `triage/chat` about the whole of `expected` (as the client sees the document) and
    returns what reached the model, so the server's view of the document can be compared."""
    answer = await bounded(
        client.request(
            "triage/chat",
            {
                "prompt": f"Summarize {marker}.",
                "textDocument": {"uri": uri},
                "range": whole(expected, encoding),
            },
        ),
        10,
    )
    assert answer["text"] == answer_for(answer["model"])
    requests = await backend.requests_async()
    matching = [r for r in requests if marker in r["text"]]
    assert len(matching) == 1, f"{marker} reached the backend {len(matching)} times"
    return matching[0]["text"]


def assert_selection_reached(text: str, selection: str) -> None:
    """The selection goes to the model in a fenced block: ```lang\\nSELECTION\\n```."""
    assert f"\n{selection}\n```" in text, f"selection {selection!r} not in prompt {text!r}"


def errors_logged(client: TriageClient) -> list[str]:
    return [m.message for m in client.log_messages if m.type == types.MessageType.Error]


# --------------------------------------------------------------------------------------------
# initialize


async def test_initialize_capabilities_and_utf8_negotiation(client: TriageClient):
    result = await initialize(client, encodings=["utf-16", "utf-8"])
    caps = result.capabilities
    assert caps.position_encoding == types.PositionEncodingKind.Utf8
    assert result.server_info is not None and result.server_info.name == "triage"
    sync = caps.text_document_sync
    assert isinstance(sync, types.TextDocumentSyncOptions)
    assert sync.open_close is True
    assert sync.change == types.TextDocumentSyncKind.Incremental
    assert caps.hover_provider is True
    assert caps.completion_provider is not None
    assert caps.inline_completion_provider is True
    assert isinstance(caps.code_action_provider, types.CodeActionOptions)
    assert set(caps.code_action_provider.code_action_kinds or []) >= {
        types.CodeActionKind.QuickFix,
        types.CodeActionKind.Refactor,
    }
    assert caps.execute_command_provider is not None
    assert sorted(caps.execute_command_provider.commands) == sorted(COMMANDS)


@pytest.mark.parametrize(
    "offered", [None, ["utf-16"], ["utf-32", "utf-16"]], ids=["none", "utf16", "utf32+utf16"]
)
async def test_initialize_falls_back_to_utf16(client: TriageClient, offered):
    result = await initialize(client, encodings=offered)
    assert result.capabilities.position_encoding == types.PositionEncodingKind.Utf16


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
async def test_negotiated_encoding_is_used_for_positions(client: TriageClient, backend, encoding):
    result = await initialize(client, encodings=[encoding])
    assert result.capabilities.position_encoding == encoding
    uri = "file:///work/project/emoji.py"
    text = 'x = "😀é"; y = 1\n'
    open_document(client, uri, text, "python")
    start = text.index("y")
    # In UTF-8 the emoji is 4 units and é 2; in UTF-16 the emoji is 2 and é 1.
    r = lsp_range(text, start, start + 5, encoding)
    assert r.start.character == (14 if encoding == "utf-8" else 11)
    await bounded(
        client.request(
            "triage/chat",
            {"prompt": "what is marker-enc?", "textDocument": {"uri": uri}, "range": range_json(r)},
        )
    )
    requests = await backend.requests_async()
    (sent,) = [q for q in requests if "marker-enc" in q["text"]]
    assert_selection_reached(sent["text"], "y = 1")


async def test_invalid_initialization_options_keep_file_config(client: TriageClient, backend):
    await initialize(client, initialization_options={"tiers": {"fast": {"model": 42}}})
    errors = [m for m in client.messages if m.type == types.MessageType.Error]
    assert errors and "initializationOptions ignored" in errors[0].message
    answer = await bounded(client.request("triage/chat", {"prompt": "hello", "tier": "fast"}))
    assert answer["model"] == FAST


# --------------------------------------------------------------------------------------------
# text sync


ALPHABET = list("abcdefgh xyz_=()") + ["é", "ß", "中", "😀", "🦀", "👍", "\u200d", "🏽", "\n"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8"])
async def test_many_incremental_edits_apply_in_order(client: TriageClient, backend, encoding):
    await initialize(client, encodings=[encoding])
    uri = "file:///work/project/edits.py"
    text = "# start 🦀\nvalue = 'naïve'\n"
    version = 1
    open_document(client, uri, text, "python", version)
    rng = random.Random(20240611)
    pending: list[asyncio.Future] = []
    for i in range(300):
        version += 1
        op = rng.random()
        if op < 0.7 or len(text) < 5:
            at = rng.randint(0, len(text))
            new = rng.choice(ALPHABET)
            r = lsp_range(text, at, at, encoding)
            text = text[:at] + new + text[at:]
        elif op < 0.93:
            at = rng.randrange(len(text))
            new = ""
            r = lsp_range(text, at, at + 1, encoding)
            text = text[:at] + text[at + 1 :]
        else:
            at = rng.randrange(len(text))
            new = rng.choice(["😀", "é", "Z"])
            r = lsp_range(text, at, at + 1, encoding)
            text = text[:at] + new + text[at + 1 :]
        client.text_document_did_change(change(uri, version, (r, new)))
        # Requests interleaved with the edits, not awaited until the end.
        if i % 10 == 5:
            kind = (i // 10) % 5
            if kind == 0:
                pending.append(client.request(
                    types.TEXT_DOCUMENT_CODE_ACTION, code_action_params(uri, span(0, 0, 0, 0))))
            elif kind == 1:
                pending.append(client.request(types.TEXT_DOCUMENT_HOVER, types.HoverParams(
                    text_document=doc_id(uri), position=position(0, 0))))
            elif kind == 2:
                pending.append(client.request(
                    "triage/route", {"prompt": "what is this?", "textDocument": {"uri": uri}}))
            elif kind == 3:
                pending.append(client.request("triage/status", None))
            else:
                pending.append(client.request(types.TEXT_DOCUMENT_COMPLETION, types.CompletionParams(
                    text_document=doc_id(uri), position=position(0, 0))))
        if i % 100 == 99:
            seen = await server_text(client, backend, uri, text, encoding, f"checkpoint-{i}")
            assert_selection_reached(seen, text)
    results = await bounded(asyncio.gather(*pending, return_exceptions=True), 15)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures
    seen = await server_text(client, backend, uri, text, encoding, "checkpoint-final")
    assert_selection_reached(seen, text)
    assert errors_logged(client) == []


# --------------------------------------------------------------------------------------------
# code actions and commands

SHELL_DOCUMENTS = {
    # name: (uri, languageId, text, lines where explain-shell is offered, lines where it is not)
    "shellscript": (
        "file:///work/project/deploy.sh",
        "shellscript",
        "#!/bin/sh\n# deploy\nset -e\nls -la /tmp | grep foo\nif true; then\nfi\n",
        [2, 3],
        [0, 1, 5],
    ),
    "markdown": (
        "file:///work/project/README.md",
        "markdown",
        "# Setup\n\nRun ls -la to see it.\n\n```bash\n$ tar -xzf archive.tar.gz -C /opt\n```\n\n"
        "```python\nprint(1)\n```\n",
        [5],
        [0, 2, 4, 8, 9],
    ),
    "dockerfile": (
        "file:///work/project/Dockerfile",
        "dockerfile",
        "FROM debian:12\nRUN apt-get update && \\\n    apt-get install -y curl\nCOPY . /app\n",
        [1, 2],
        [0, 3],
    ),
    "makefile": (
        "file:///work/project/Makefile",
        "makefile",
        "build:\n\tcargo build --release\nVAR = 1\n",
        [1],
        [0, 2],
    ),
    "yaml": (
        "file:///work/project/.github/workflows/ci.yml",
        "yaml",
        "jobs:\n  test:\n    steps:\n      - uses: actions/checkout@v4\n"
        "      - run: cargo test --locked\n      - run: |\n          cargo fmt --check\n",
        [4, 6],
        [0, 1, 3, 5],
    ),
    "python": (
        PYTHON_URI,
        "python",
        PYTHON_TEXT,
        [],
        [0, 1, 3],
    ),
}


def check_actions(actions: list[types.CodeAction], uri: str, shell: bool) -> None:
    titles = {a.title: a for a in actions}
    expected = {c: t for c, t in COMMANDS.items() if shell or c != EXPLAIN_SHELL}
    assert set(titles) == set(expected.values()), sorted(titles)
    for command, title in expected.items():
        action = titles[title]
        assert isinstance(action, types.CodeAction)
        assert action.command is not None and action.command.command == command
        (argument,) = action.command.arguments
        assert argument["uri"] == uri
        assert set(argument["range"]) == {"start", "end"}
    assert titles["triage: Fix"].kind == types.CodeActionKind.QuickFix
    assert titles["triage: Refactor"].kind == types.CodeActionKind.Refactor


async def test_code_actions_offered_per_context(client: TriageClient):
    await initialize(client)
    for uri, language, text, _, _ in SHELL_DOCUMENTS.values():
        open_document(client, uri, text, language)
    for name, (uri, _, text, shell_lines, other_lines) in SHELL_DOCUMENTS.items():
        for line in shell_lines + other_lines:
            actions = await code_actions(client, uri, span(line, 0, line, 0))
            try:
                check_actions(actions, uri, shell=line in shell_lines)
            except AssertionError as e:
                raise AssertionError(f"{name} line {line}: {text.splitlines()[line]!r}: {e}")
            # An empty range means the whole line.
            (fix,) = [a for a in actions if a.title == "triage: Fix"]
            line_text = text.split("\n")[line]
            assert fix.command.arguments[0]["range"] == range_json(
                span(line, 0, line, units(line_text, "utf-16"))
            )
    # Blank lines get no actions at all.
    assert await code_actions(client, SHELL_DOCUMENTS["python"][0], span(2, 0, 2, 0)) == []
    # Selections: a shell command selected in prose is one, code is not.
    md_uri = "file:///work/project/notes.md"
    open_document(client, md_uri, "Try ps aux | grep nginx to find it.\n", "markdown")
    check_actions(await code_actions(client, md_uri, span(0, 4, 0, 23)), md_uri, shell=True)
    check_actions(await code_actions(client, PYTHON_URI, span(0, 0, 2, 0)), PYTHON_URI, shell=False)


async def test_explain_shell_not_offered_on_markdown_fence_lines(client: TriageClient, backend):
    """The ``` lines that open and close a bash fence are Markdown, not shell commands."""
    await initialize(client)
    uri = "file:///work/project/INSTALL.md"
    text = "Install:\n\n```bash\nmake install\n```\n\nDone.\n"
    open_document(client, uri, text, "markdown")
    check_actions(await code_actions(client, uri, span(3, 0, 3, 0)), uri, shell=True)
    for line in (2, 4):
        actions = await code_actions(client, uri, span(line, 0, line, 0))
        offered = [a.title for a in actions]
        assert COMMANDS[EXPLAIN_SHELL] not in offered, (
            f"line {line} ({text.splitlines()[line]!r}) offers {COMMANDS[EXPLAIN_SHELL]!r}"
        )
    assert await hover(client, uri, 4) is None
    assert [r for r in await backend.requests_async() if r["path"] == "/api/chat"] == []


@pytest.mark.parametrize("command", list(COMMANDS))
async def test_execute_command(client: TriageClient, backend, command: str):
    await initialize(client)
    if command == EXPLAIN_SHELL:
        uri, language, text = "file:///work/project/run.sh", "shellscript", "#!/bin/sh\nrm -rf ./build/ 🧹\n"
        r = span(1, 0, 1, 0)
        selection = "rm -rf ./build/ 🧹"
    else:
        uri, language, text = PYTHON_URI, "python", PYTHON_TEXT
        r = span(0, 0, 2, 0)
        selection = 'def greet(name):\n    return "héllo " + name  # 👋\n'
    open_document(client, uri, text, language)
    actions = await code_actions(client, uri, r)
    (action,) = [a for a in actions if a.command and a.command.command == command]
    assert action.title == COMMANDS[command]

    result = await execute(client, command, action.command.arguments)

    assert ANSWER_KEYS <= set(result), result
    assert result["text"] == answer_for(result["model"])
    assert result["model"] in MODELS
    assert 0 <= result["confidence"] <= 1
    assert result["fallbacks"] == []
    assert result["usage"]["completion_tokens"] == 10
    if command == "triage.ask":
        assert (result["tier"], result["model"]) == ("heavy", HEAVY)
    (sent,) = [q for q in await backend.requests_async() if q["path"] == "/api/chat"]
    assert sent["model"] == result["model"]
    assert_selection_reached(sent["text"], selection.rstrip("\n") if command == EXPLAIN_SHELL else selection)

    # Work-done progress: created, begun, ended.
    assert len(client.created_tokens) == 1
    values = client.progress_values[client.created_tokens[0]]
    assert values[0]["kind"] == "begin" and values[0]["title"] == COMMANDS[command]
    await eventually(lambda: values[-1] == {"kind": "end", "message": "done"}, timeout=2,
                     what="the end of work-done progress")

    argument_range = action.command.arguments[0]["range"]
    if command in EDITING:
        assert result["applied"] is True and "notApplied" not in result
        (edit,) = client.applied_edits
        assert edit.edit.changes is not None
        (text_edit,) = edit.edit.changes[uri]
        if command == "triage.tests":
            end = argument_range["end"]
            assert range_json(text_edit.range) == {"start": end, "end": end}
            assert text_edit.new_text == f"\n\n{result['text']}\n"
        else:
            assert range_json(text_edit.range) == argument_range
            assert text_edit.new_text == result["text"]
    else:
        assert "applied" not in result
        assert client.applied_edits == []


async def test_execute_command_applies_to_the_selected_range_in_utf16(client: TriageClient):
    """A selection inside a line with astral characters: the edit's range is the selection."""
    await initialize(client, encodings=["utf-16"])
    uri = "file:///work/project/astral.py"
    text = "s = '🦀🦀'; t = total(s)\n"
    open_document(client, uri, text, "python")
    start = text.index("total")
    r = lsp_range(text, start, start + len("total(s)"), "utf-16")
    result = await execute(client, "triage.fix", [{"uri": uri, "range": range_json(r)}])
    assert result["applied"] is True
    (text_edit,) = client.applied_edits[0].edit.changes[uri]
    assert text_edit.range == r


# --------------------------------------------------------------------------------------------
# hover


async def test_hover_on_markdown_bash_fence(client: TriageClient, backend):
    await initialize(client)
    uri = "file:///work/project/SETUP.md"
    text = "# Setup\n\nUnpack the archive:\n\n```bash\n$ tar -xzf archive.tar.gz -C /opt\n```\n"
    open_document(client, uri, text, "markdown")

    result = await hover(client, uri, 5, 4)
    assert result is not None
    assert isinstance(result.contents, types.MarkupContent)
    assert result.contents.kind == types.MarkupKind.Markdown
    (sent,) = await backend.requests_async()
    assert sent["path"] == "/api/chat"
    assert "```shellscript\ntar -xzf archive.tar.gz -C /opt\n```" in sent["text"]
    model = sent["model"]
    assert result.contents.value.startswith(answer_for(model))
    assert model in result.contents.value

    # Cached per command: the second hover does not ask the model again.
    again = await hover(client, uri, 5, 10)
    assert again is not None and again.contents.value == result.contents.value
    assert len(await backend.requests_async()) == 1

    # Prose and the fence's info line are no commands.
    assert await hover(client, uri, 2, 3) is None
    assert await hover(client, uri, 4, 1) is None
    assert len(await backend.requests_async()) == 1


async def test_hover_on_dockerfile_run(client: TriageClient, backend):
    await initialize(client)
    uri = "file:///work/project/Dockerfile"
    text = (
        "FROM debian:12\n"
        "RUN apt-get update && \\\n"
        "    apt-get install -y --no-install-recommends curl\n"
        "WORKDIR /app\n"
    )
    open_document(client, uri, text, "dockerfile")
    # The continuation line hovers as the whole RUN instruction, without `RUN`.
    result = await hover(client, uri, 2, 8)
    assert result is not None and result.contents.kind == types.MarkupKind.Markdown
    (sent,) = await backend.requests_async()
    prompt = sent["text"]
    assert "```shellscript\napt-get update &&" in prompt
    assert "apt-get install -y --no-install-recommends curl\n```" in prompt
    assert "RUN apt-get" not in prompt
    assert result.contents.value.startswith(answer_for(sent["model"]))
    # The first line of the same instruction is the same command: served from the cache.
    first = await hover(client, uri, 1, 0)
    assert first is not None and first.contents.value == result.contents.value
    assert len(await backend.requests_async()) == 1
    assert await hover(client, uri, 0, 2) is None
    assert await hover(client, uri, 3, 2) is None
    assert len(await backend.requests_async()) == 1


# --------------------------------------------------------------------------------------------
# completion

FIM_URI = "file:///work/project/total.py"
FIM_TEXT = "def total(xs):\n    return sum(x for x in xs)  # ∑ 😀 here\n\nprint(total([1, 2]))\n"


async def test_completion_fill_in_the_middle(client: TriageClient, backend):
    await initialize(client, encodings=["utf-16"])
    open_document(client, FIM_URI, FIM_TEXT, "python")
    at = FIM_TEXT.index("sum(")
    result = await bounded(
        client.text_document_completion_async(
            types.CompletionParams(
                text_document=doc_id(FIM_URI), position=lsp_position(FIM_TEXT, at, "utf-16")
            )
        )
    )
    items = result.items if isinstance(result, types.CompletionList) else result
    (item,) = items
    assert item.insert_text == answer_for(FAST)
    assert item.label == answer_for(FAST)
    assert FAST in (item.detail or "")
    (sent,) = await backend.requests_async()
    assert sent["path"] == "/api/generate" and sent["model"] == FAST
    assert sent["text"] == FIM_TEXT[:at] + "\n" + FIM_TEXT[at:]
    assert sent["max_tokens"] == 128
    assert sent["completed"] is True


async def test_inline_completion_fill_in_the_middle(client: TriageClient, backend):
    await initialize(client, encodings=["utf-16"])
    open_document(client, FIM_URI, FIM_TEXT, "python")
    at = FIM_TEXT.index(" here")  # right after the emoji: a UTF-16 column past a surrogate pair
    where = lsp_position(FIM_TEXT, at, "utf-16")
    result = await bounded(
        client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=doc_id(FIM_URI),
                position=where,
                context=types.InlineCompletionContext(
                    trigger_kind=types.InlineCompletionTriggerKind.Automatic
                ),
            )
        )
    )
    items = result.items if isinstance(result, types.InlineCompletionList) else result
    (item,) = items
    assert item.insert_text == answer_for(FAST)
    assert item.range == types.Range(start=where, end=where)
    (sent,) = await backend.requests_async()
    assert sent["path"] == "/api/generate" and sent["model"] == FAST
    assert sent["text"] == FIM_TEXT[:at] + "\n" + FIM_TEXT[at:]


async def test_completion_dropped_when_the_document_changes(client: TriageClient, backend):
    """A keystroke makes a running completion stale: it answers nothing at once and the
    model's stream is closed."""
    await initialize(client, encodings=["utf-16"])
    open_document(client, FIM_URI, FIM_TEXT, "python")
    backend.set_fault(FAST, {"kind": "trickle", "ms": 300, "tokens": 50})
    completion = client.request(types.TEXT_DOCUMENT_COMPLETION, types.CompletionParams(
        text_document=doc_id(FIM_URI), position=position(1, 11)))
    await backend.wait_for(lambda rs: any(r["path"] == "/api/generate" for r in rs),
                           timeout=3, what="the FIM request")
    client.text_document_did_change(change(FIM_URI, 2, (span(1, 11, 1, 11), "s")))
    started = time.monotonic()
    result = await bounded(completion, 3)
    assert time.monotonic() - started < 0.5
    items = result.items if isinstance(result, types.CompletionList) else result
    assert not items
    await backend.wait_for(
        lambda rs: [r for r in rs if r["path"] == "/api/generate"][0]["closed_early"],
        timeout=3, what="the FIM stream closed",
    )


# --------------------------------------------------------------------------------------------
# triage/chat, triage/route, triage/status


@pytest.mark.parametrize("tokens", ["partial", "workDone", "both"])
async def test_chat_streams_deltas_in_order(client: TriageClient, backend, tokens: str):
    await initialize(client)
    backend.set_fault(FAST, {"kind": "trickle", "ms": 10, "tokens": 40})
    params: dict[str, Any] = {"prompt": "hello", "tier": "fast"}
    if tokens in ("partial", "both"):
        params["partialResultToken"] = "chat-partial"
    if tokens in ("workDone", "both"):
        params["workDoneToken"] = "chat-work"
    answer = await bounded(client.request("triage/chat", params))
    assert ANSWER_KEYS <= set(answer)
    assert answer["model"] == FAST and answer["tier"] == "fast"
    assert answer["text"] == answer_for(FAST, 40)
    delta_token = "chat-work" if tokens == "workDone" else "chat-partial"
    # (Whether they all come before the response is the next test's business.)
    await eventually(lambda: len(client.deltas(delta_token)) >= 40, timeout=2, what="40 deltas")
    deltas = client.deltas(delta_token)
    assert deltas == answer_tokens(FAST, 40)
    assert "".join(deltas) == answer["text"]
    assert all(v["message"] == v["delta"] for v in client.progress_values[delta_token]
               if "delta" in v)
    if tokens == "both":
        messages = [v.get("message") for v in client.progress_values["chat-work"]]
        assert f"Asking {FAST}…" in messages
        assert all("delta" not in v for v in client.progress_values["chat-work"])


@pytest.mark.parametrize("pace", ["trickle", "burst"])
async def test_chat_deltas_all_arrive_before_the_response(client: TriageClient, backend,
                                                          pace: str):
    """A client streams the answer from the deltas and stops listening on the token when the
    response comes: every delta must be sent before the response, or the shown answer is cut.
    The race is timing-dependent (closest when the whole answer comes in one burst), so the
    same chat runs 30 times."""
    await initialize(client)
    count = 20
    if pace == "trickle":
        backend.set_fault(FAST, {"kind": "trickle", "ms": 10, "tokens": count})
    else:
        count = 10  # the test backend's default answer, sent at once
    late = []
    for i in range(30):
        token = f"race-{i}"
        answer = await bounded(client.request(
            "triage/chat", {"prompt": "hello", "tier": "fast", "partialResultToken": token},
            msg_id=token))
        assert answer["text"] == answer_for(FAST, count)
        before = "".join(client.deltas_before_response(token, token))
        if before != answer["text"]:
            late.append(f"{token}: {before!r} when the response came")
    assert late == [], f"{len(late)} of 30 responses overtook their last deltas: {late[:3]}"


async def test_chat_with_document_selection(client: TriageClient, backend):
    await initialize(client)
    open_document(client, PYTHON_URI, PYTHON_TEXT, "python")
    answer = await bounded(
        client.request(
            "triage/chat",
            {
                "prompt": "Why is this so polite?",
                "textDocument": {"uri": PYTHON_URI},
                "range": range_json(span(1, 4, 1, 26)),
            },
        )
    )
    assert answer["text"] == answer_for(answer["model"])
    (sent,) = await backend.requests_async()
    assert "```python\nreturn \"héllo \" + name\n```" in sent["text"]
    assert sent["text"].endswith("Why is this so polite?")


async def test_route(client: TriageClient, backend):
    await initialize(client)
    open_document(client, PYTHON_URI, PYTHON_TEXT, "python")
    decision = await bounded(
        client.request(
            "triage/route",
            {
                "prompt": "Refactor this function",
                "textDocument": {"uri": PYTHON_URI},
                "range": range_json(span(0, 0, 2, 0)),
            },
        )
    )
    for key in ("tier", "model", "endpoint", "url", "confidence", "reasons", "fallbacks", "analysis"):
        assert key in decision, key
    assert decision["tier"] in ("fast", "coder", "heavy")
    assert decision["model"] in MODELS
    assert decision["url"].rstrip("/") == backend.url
    assert decision["analysis"]["code"]["language"] == "python"
    assert {f["model"] for f in decision["fallbacks"]} | {decision["model"]} == set(MODELS)

    forced = await bounded(client.request("triage/route", {"prompt": "hi", "tier": "heavy"}))
    assert (forced["tier"], forced["model"]) == ("heavy", HEAVY)
    forced_model = await bounded(client.request("triage/route", {"prompt": "hi", "model": "mistral:7b"}))
    assert forced_model["model"] == "mistral:7b"

    with pytest.raises(JsonRpcException) as error:
        await bounded(client.request("triage/route", {"prompt": "hi", "tier": "gigantic"}))
    assert error.value.code == -32602 and "gigantic" in error.value.message
    # Routing never asks a model.
    assert [r for r in await backend.requests_async() if r["path"] != "/api/show"] == []


async def test_status_request(client: TriageClient, backend):
    await initialize(client)
    status = await bounded(client.request("triage/status", None))
    assert {"endpoints", "gpu", "tiers", "stats"} <= set(status)
    (endpoint,) = status["endpoints"]
    assert endpoint["name"] == "ollama" and endpoint["reachable"] is True
    assert endpoint["url"].rstrip("/") == backend.url
    assert {m["name"] for m in endpoint["models"]} >= set(MODELS)
    assert [(t["tier"], t["model"]) for t in status["tiers"]] == [
        ("fast", FAST),
        ("coder", CODER),
        ("heavy", HEAVY),
    ]


async def test_status_notifications(client: TriageClient, backend):
    await initialize(client)
    # The first one comes soon after `initialized`.
    await eventually(lambda: client.status_notifications, timeout=3, what="first triage/status")
    first = client.status_notifications[0][1]
    assert {"vram", "level", "loaded", "working"} <= set(first)
    assert first["loaded"] == [] and first["working"] is None

    # A model loaded on the endpoint shows up.
    backend.set_loaded(
        [{"name": FAST, "model": FAST, "size": 2 << 30, "size_vram": 2 << 30,
          "expires_at": "2030-01-01T00:00:00Z"}]
    )
    await eventually(
        lambda: any(n["loaded"] and n["loaded"][0]["name"] == FAST
                    for _, n in client.status_notifications),
        timeout=4, what="loaded model in triage/status",
    )
    # A model that is slow to start answering is reported as working (with room for a cold
    # load of 1.5 s, which the status loop sees after 1 s).
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"tiers": {"fast": {"timeouts": {"first_token_s": 5}}}}))
    await eventually(
        lambda: any("configuration updated" in m.message for m in client.log_messages),
        timeout=3, what="configuration updated",
    )
    backend.set_fault(FAST, {"kind": "cold_load", "ms": 1500})
    answer = await bounded(client.request("triage/chat", {"prompt": "hello", "tier": "fast"}))
    assert answer["model"] == FAST
    await eventually(
        lambda: any(n["working"] == FAST for _, n in client.status_notifications),
        timeout=3, what="working model in triage/status",
    )
    await eventually(
        lambda: client.status_notifications[-1][1]["working"] is None,
        timeout=3, what="working cleared",
    )
    # At most one a second, and only on change.
    times = [t for t, _ in client.status_notifications]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g >= 0.8 for g in gaps), gaps
    payloads = [n for _, n in client.status_notifications]
    assert all(a != b for a, b in zip(payloads, payloads[1:])), payloads


async def test_status_working_cleared_after_a_fallback(client: TriageClient, backend):
    """`working` names the model being waited for; once the request is answered (here by a
    fallback, after the first model hung), no model is working any more."""
    await initialize(client)
    backend.set_fault(FAST, {"kind": "hang_before_first_token"})
    answer = await bounded(client.request("triage/chat", {"prompt": "hello", "tier": "fast"}))
    assert answer["model"] != FAST and answer["fallbacks"][0]["model"] == FAST
    await eventually(
        lambda: any(n["working"] == FAST for _, n in client.status_notifications),
        timeout=3, what="the hanging model reported as working",
    )
    await eventually(
        lambda: client.status_notifications[-1][1]["working"] is None,
        timeout=3,
        what=lambda: f"working cleared (last triage/status: {client.status_notifications[-1][1]})",
    )


# --------------------------------------------------------------------------------------------
# cancellation, fallbacks, timeouts


async def test_cancel_chat_drops_the_model_stream(client: TriageClient, backend):
    await initialize(client)
    backend.set_fault(FAST, {"kind": "trickle", "ms": 200, "tokens": 200})
    request = client.request(
        "triage/chat",
        {"prompt": "hello", "tier": "fast", "partialResultToken": "cancel-me"},
        msg_id="chat-to-cancel",
    )
    await eventually(lambda: client.deltas("cancel-me"), timeout=5, what="first delta")
    client.cancel("chat-to-cancel")
    with pytest.raises(JsonRpcException) as error:
        await bounded(request, 3)
    assert error.value.code == -32800  # RequestCancelled
    requests = await backend.wait_for(
        lambda rs: rs and rs[0]["closed_early"], timeout=3, what="closed_early"
    )
    assert requests[0]["model"] == FAST and requests[0]["completed"] is False
    received = len(client.deltas("cancel-me"))
    await asyncio.sleep(0.6)
    assert len(client.deltas("cancel-me")) <= received + 1  # the stream stopped
    # The server goes on answering.
    backend.set_fault(FAST, {"kind": "ok"})
    answer = await bounded(client.request("triage/chat", {"prompt": "hello", "tier": "fast"}))
    assert answer["text"] == answer_for(FAST)


async def test_fallback_on_http_500(client: TriageClient, backend):
    await initialize(client)
    decision = await bounded(client.request("triage/route", {"prompt": "hello"}))
    chosen = decision["model"]
    assert decision["fallbacks"], decision
    backend.set_fault(chosen, {"kind": "status", "code": 500})
    answer = await bounded(client.request("triage/chat", {"prompt": "hello"}))
    assert answer["model"] != chosen
    assert answer["model"] == decision["fallbacks"][0]["model"]
    assert answer["text"] == answer_for(answer["model"])
    (failed,) = answer["fallbacks"]
    assert failed["model"] == chosen and "500" in failed["error"]
    models = [r["model"] for r in await backend.requests_async() if r["path"] == "/api/chat"]
    assert models == [chosen, answer["model"]]
    await eventually(
        lambda: any(chosen in m.message for m in client.log_messages
                    if m.type == types.MessageType.Warning),
        timeout=2, what="a warning naming the failed model",
    )


async def test_hang_before_first_token_falls_back_without_blocking(client: TriageClient, backend):
    await initialize(client)
    open_document(client, PYTHON_URI, PYTHON_TEXT, "python")
    backend.set_fault(FAST, {"kind": "hang_before_first_token"})
    started = time.monotonic()
    chat = asyncio.ensure_future(
        client.request("triage/chat", {"prompt": "hello", "tier": "fast"})
    )
    await backend.wait_for(lambda rs: rs, timeout=3, what="the hanging request")
    # While the model hangs, everything else answers at once.
    for request in (
        client.request("triage/route", {"prompt": "hello"}),
        client.request("triage/status", None),
        client.text_document_code_action_async(code_action_params(PYTHON_URI, span(0, 0, 0, 0))),
        client.text_document_hover_async(
            types.HoverParams(text_document=doc_id(PYTHON_URI), position=position(0, 0))),
    ):
        t = time.monotonic()
        await bounded(request, 1.0)
        assert time.monotonic() - t < 0.5
    assert not chat.done()
    answer = await bounded(chat, 6)
    elapsed = time.monotonic() - started
    assert 1.3 <= elapsed < 5, elapsed
    assert answer["model"] != FAST
    (failed,) = answer["fallbacks"]
    assert failed["model"] == FAST and "first_token_s" in failed["error"]
    await backend.wait_for(
        lambda rs: rs[0]["closed_early"], timeout=3, what="the hung stream closed"
    )


# --------------------------------------------------------------------------------------------
# guarded applyEdit


async def test_apply_edit_refused_after_concurrent_change(client: TriageClient, backend):
    await initialize(client)
    open_document(client, PYTHON_URI, PYTHON_TEXT, "python")
    decision = await bounded(
        client.request(
            "triage/route",
            {"prompt": "", "textDocument": {"uri": PYTHON_URI}, "range": range_json(span(0, 0, 2, 0))},
        )
    )
    for model in MODELS:
        backend.set_fault(model, {"kind": "trickle", "ms": 100, "tokens": 20})
    command = asyncio.ensure_future(
        execute(client, "triage.fix", [{"uri": PYTHON_URI, "range": range_json(span(0, 0, 2, 0))}])
    )
    await eventually(
        lambda: any(v.get("message") == "answering…" for _, v in client.progress_log),
        timeout=5, what="the first token",
    )
    client.text_document_did_change(change(PYTHON_URI, 2, (span(3, 0, 3, 0), "# edited\n")))
    result = await bounded(command, 8)
    assert result["applied"] is False
    assert "changed" in result["notApplied"]
    assert result["text"] == answer_for(result["model"], 20)
    assert client.applied_edits == []
    await eventually(
        lambda: any(m.type == types.MessageType.Warning and "changed" in m.message
                    for m in client.messages),
        timeout=2, what="the warning that nothing was changed",
    )
    assert decision["model"] == result["model"]
    # The user's edit is in, the model's is not.
    expected = PYTHON_TEXT.replace('print(', '# edited\nprint(')
    for model in MODELS:
        backend.set_fault(model, {"kind": "ok"})
    seen = await server_text(client, backend, PYTHON_URI, expected, "utf-16", "after-refusal")
    assert_selection_reached(seen, expected)
    # Without a concurrent change the same command applies.
    result = await execute(
        client, "triage.fix", [{"uri": PYTHON_URI, "range": range_json(span(0, 0, 2, 0))}]
    )
    assert result["applied"] is True and len(client.applied_edits) == 1


# --------------------------------------------------------------------------------------------
# configuration


async def test_invalid_configuration_is_refused_and_the_last_good_one_kept(client: TriageClient, backend):
    await initialize(client)
    # Valid, under a "triage" key: the fast tier's model changes.
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"triage": {"tiers": {"fast": {"model": "tiny:1b"}}}})
    )
    await eventually(
        lambda: any("configuration updated" in m.message for m in client.log_messages),
        timeout=3, what="configuration updated",
    )
    assert (await bounded(client.request("triage/route", {"prompt": "hi", "tier": "fast"})))["model"] == "tiny:1b"

    # Invalid, the schema directly: an error is shown, the last good settings stay.
    for settings in (
        {"tiers": {"fast": {"model": ""}}},
        {"tiers": {"fast": {"colour": "blue"}}},
        {"triage": {"vram": {"warn_percent": 150}}},
        {"endpoints": {"ollama": {"url": "not a url"}}},
    ):
        shown = len(client.messages)
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=settings))
        await eventually(lambda: len(client.messages) > shown, timeout=3, what=f"error for {settings}")
        message = client.messages[-1]
        assert message.type == types.MessageType.Error, message
        assert "not applied" in message.message
        decision = await bounded(client.request("triage/route", {"prompt": "hi", "tier": "fast"}))
        assert decision["model"] == "tiny:1b", settings
    assert "tiers.fast.model" in client.messages[0].message

    answer = await bounded(client.request("triage/chat", {"prompt": "hello", "tier": "fast"}))
    assert answer["model"] == "tiny:1b" and answer["text"] == answer_for("tiny:1b")


# --------------------------------------------------------------------------------------------
# robustness


async def test_bad_edits_are_reported_and_leave_the_document_intact(client: TriageClient, backend):
    await initialize(client, encodings=["utf-16"])
    uri = "file:///work/project/intact.py"
    text = "a = '😀'\nb = 2\n"
    open_document(client, uri, text, "python")
    bad = [
        change(uri, 2, (span(99, 0, 99, 1), "x")),              # line past the end
        change(uri, 3, (span(1, 3, 0, 1), "x")),                # end before start
        change(uri, 4, (span(0, 6, 0, 6), "x")),                # inside the surrogate pair
        change(uri, 5, (span(0, 0, 0, 0), "ok"), (span(50, 0, 50, 0), "x")),  # one bad of two
        change(uri, 1, (span(0, 0, 0, 0), "stale")),            # version not newer
        change("file:///work/project/never-opened.py", 2, (span(0, 0, 0, 0), "x")),
    ]
    for params in bad:
        client.text_document_did_change(params)
    await eventually(lambda: len(errors_logged(client)) >= len(bad), timeout=3,
                     what="an error log per bad change")
    errors = errors_logged(client)
    assert len(errors) == len(bad), errors
    # (Handlers run concurrently: the logs may come in any order.)
    for expected in (
        "change 0 to file:///work/project/intact.py has a bad range: line 99 is past the end",
        "before its start",
        "character 6 on line 0 falls inside a character",
        "change 1 to file:///work/project/intact.py has a bad range: line 50",
        "version 1 of file:///work/project/intact.py is not newer than 1",
        "never-opened.py is not open",
    ):
        assert sum(expected in e for e in errors) == 1, (expected, errors)
    seen = await server_text(client, backend, uri, text, "utf-16", "intact-1")
    assert_selection_reached(seen, text)
    # A good edit after the bad ones applies (a character past the line's end means its end).
    client.text_document_did_change(change(uri, 6, (span(1, 99, 1, 99), " + 1")))
    text = "a = '😀'\nb = 2 + 1\n"
    seen = await server_text(client, backend, uri, text, "utf-16", "intact-2")
    assert_selection_reached(seen, text)
    # A change without a range replaces the whole text.
    text = "whole = '🦀'\n"
    client.text_document_did_change(change(uri, 7, (None, text)))
    seen = await server_text(client, backend, uri, text, "utf-16", "intact-3")
    assert_selection_reached(seen, text)
    assert len(errors_logged(client)) == len(bad)


async def test_bad_requests_get_errors_and_the_server_keeps_working(client: TriageClient, backend):
    await initialize(client)
    open_document(client, PYTHON_URI, PYTHON_TEXT, "python")

    async def error_of(future, code: int | None = -32602) -> JsonRpcException:
        with pytest.raises(JsonRpcException) as error:
            await bounded(future, 5)
        if code is not None:
            assert error.value.code == code, error.value
        return error.value

    good = {"uri": PYTHON_URI, "range": range_json(span(0, 0, 1, 0))}
    e = await error_of(client.raw_request("workspace/executeCommand", {"command": "triage.nope", "arguments": [good]}))
    assert "unknown command" in e.message
    await error_of(client.raw_request("workspace/executeCommand", {"command": "triage.fix", "arguments": []}))
    await error_of(client.raw_request("workspace/executeCommand", {"command": "triage.fix", "arguments": [{"uri": 5}]}))
    await error_of(client.raw_request("workspace/executeCommand", {"command": "triage.fix", "arguments": ["just text"]}))
    await error_of(execute(client, "triage.fix", [{"uri": PYTHON_URI, "range": range_json(span(40, 0, 40, 0))}]))
    await error_of(execute(client, "triage.fix", [{"uri": PYTHON_URI, "range": range_json(span(1, 5, 0, 0))}]))
    await error_of(execute(client, "triage.fix", [{"uri": "file:///work/project/closed.py", "range": good["range"]}]))
    await error_of(client.request("triage/chat", {"prompt": "x", "textDocument": {"uri": PYTHON_URI},
                                                  "range": range_json(span(99, 0, 99, 1))}))
    await error_of(client.raw_request("triage/chat", {"prompt": 42}))
    await error_of(client.raw_request("textDocument/hover", {"foo": 1}))
    await error_of(client.raw_request("triage/no-such-method", {}), code=-32601)
    await error_of(client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=doc_id(PYTHON_URI), position=position(77, 0),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked))))
    assert await hover(client, PYTHON_URI, 77) is None

    # Notifications whose params do not parse are dropped and reported.
    client.send_raw({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": 7}})
    client.send_raw({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {"contentChanges": "x"}})
    client.send_raw({"jsonrpc": "2.0", "method": "textDocument/didClose", "params": None})
    # A response to a request the server never made is ignored.
    client.send_raw({"jsonrpc": "2.0", "id": 424242, "result": None})

    # Nothing was applied, nothing crashed, and the document is as it was.
    assert client.applied_edits == []
    assert [r for r in await backend.requests_async() if r["path"] == "/api/chat"] == []
    status = await bounded(client.request("triage/status", None))
    assert status["endpoints"][0]["reachable"] is True
    seen = await server_text(client, backend, PYTHON_URI, PYTHON_TEXT, "utf-16", "still-intact")
    assert_selection_reached(seen, PYTHON_TEXT)
    assert client.process.returncode is None


# --------------------------------------------------------------------------------------------
# lifecycle and stdout


async def test_shutdown_and_exit_code_zero(client: TriageClient):
    await initialize(client)
    open_document(client, PYTHON_URI, PYTHON_TEXT, "python")
    await bounded(client.request("triage/status", None))
    assert await bounded(client.shutdown_async(None)) is None
    client.exit(None)
    assert await bounded(client.process.wait(), 5) == 0


async def test_requests_before_initialize_are_refused(client: TriageClient):
    with pytest.raises(JsonRpcException) as error:
        await bounded(client.request("triage/status", None), 3)
    assert error.value.code == -32002  # ServerNotInitialized
    await initialize(client)
    assert "endpoints" in await bounded(client.request("triage/status", None))


async def test_exit_without_shutdown_exits_with_code_1(client: TriageClient):
    """LSP: on `exit` the server exits with 0 if `shutdown` came before, else with 1."""
    await initialize(client)
    client.exit(None)
    assert await bounded(client.process.wait(), 5) == 1


async def test_stdout_carries_only_protocol(launch, backend):
    # Even with every log level on, logs go to stderr and stdout stays protocol.
    client = await launch(env={"RUST_LOG": "trace"})
    await initialize(client)
    open_document(client, PYTHON_URI, PYTHON_TEXT, "python")
    await bounded(client.request("triage/chat", {"prompt": "hello", "partialResultToken": "p"}))
    await execute(client, "triage.fix", [{"uri": PYTHON_URI, "range": range_json(span(0, 0, 2, 0))}])
    await hover(client, PYTHON_URI, 0)
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"tiers": {"fast": {"model": ""}}}))
    client.text_document_did_change(change(PYTHON_URI, 2, (span(99, 0, 99, 0), "x")))
    with pytest.raises(JsonRpcException):
        await bounded(client.raw_request("workspace/executeCommand", {"command": "nope"}))
    await eventually(lambda: client.status_notifications and errors_logged(client), timeout=3)
    await bounded(client.shutdown_async(None))
    client.exit(None)
    assert await bounded(client.process.wait(), 5) == 0
    await bounded(client.stop(), 5)
    messages = check_framing(bytes(client.stdout_tap.data))
    methods = {m.get("method") for m in messages}
    assert {"$/progress", "triage/status", "window/logMessage", "window/showMessage",
            "workspace/applyEdit"} <= methods
    assert len(client.stderr_data) > 0  # the logs went somewhere, and not to stdout


async def test_malformed_notification_params_are_reported(client: TriageClient):
    """A text-sync notification whose params do not parse is logged to the client
    (window/logMessage, Error) when it arrives, not only once some later edit comes."""
    await initialize(client)
    open_document(client, PYTHON_URI, PYTHON_TEXT, "python")
    await bounded(client.request("triage/status", None))
    client.send_raw({"jsonrpc": "2.0", "method": "textDocument/didChange",
                     "params": {"textDocument": {"uri": PYTHON_URI, "version": 2},
                                "contentChanges": "not a list"}})
    await eventually(
        lambda: any("didChange" in e for e in errors_logged(client)),
        timeout=2, what="window/logMessage about the malformed didChange",
    )


@pytest.mark.parametrize(
    "body",
    [
        b"{this is not json",
        b'{"hello": "world"}',
        b'{"jsonrpc": "1.0", "method": "initialized", "params": {}}',
        b"[]",
    ],
    ids=["invalid-json", "not-json-rpc", "wrong-version", "batch"],
)
async def test_malformed_message_does_not_stop_the_server(client: TriageClient, backend, body: bytes):
    """JSON-RPC: a message that cannot be parsed gets an error response (id null) and the
    server reads on. It must not end the session."""
    await initialize(client)
    open_document(client, PYTHON_URI, PYTHON_TEXT, "python")
    await bounded(client.request("triage/status", None))
    client.send_raw(body)
    await asyncio.sleep(0.5)
    assert client.process.returncode is None, (
        f"the server exited with code {client.process.returncode} after {body!r}; stderr: "
        f"{bytes(client.stderr_data).decode(errors='replace')[-400:]}"
    )
    status = await bounded(client.request("triage/status", None), 3)
    assert status["endpoints"][0]["reachable"] is True
    seen = await server_text(client, backend, PYTHON_URI, PYTHON_TEXT, "utf-16", "after-garbage")
    assert_selection_reached(seen, PYTHON_TEXT)


# --------------------------------------------------------------------------------------------
# concurrency limits and the queue


def fast_load(status: dict) -> dict:
    (load,) = [l for l in status["limits"] if l["model"] == FAST and l["endpoint"] == "ollama"]
    return load


async def test_busy_model_queues_refuses_past_the_queue_and_a_cancelled_wait_leaves_it(
    client: TriageClient, backend
):
    await initialize(client, initialization_options={
        "tiers": {"fast": {"max_concurrent": 1}, "coder": {"enabled": False},
                  "heavy": {"enabled": False}},
        "limits": {"queue_len": 1, "max_wait_s": 30},
    })
    backend.set_fault(FAST, {"kind": "trickle", "ms": 100, "tokens": 300})
    running = client.request("triage/chat", {"prompt": "first", "tier": "fast"}, msg_id="running")
    await backend.wait_for(lambda rs: len(rs) == 1, timeout=3, what="the running request")
    queued = client.request(
        "triage/chat", {"prompt": "second", "tier": "fast", "workDoneToken": "waiting"},
        msg_id="queued")

    async def queue_depth():
        return fast_load(await client.request("triage/status", None))["queued"] == 1

    await eventually(queue_depth, timeout=3, what="one request in the queue")
    await eventually(
        lambda: client.status_notifications and client.status_notifications[-1][1].get("queued") == 1,
        timeout=4, what="a status notification with queued = 1")
    load = fast_load(await bounded(client.request("triage/status", None)))
    assert (load["running"], load["queued"], load["max_concurrent"]) == (1, 1, 1)
    # Past the queue: refused at once, with a clear error a client can act on.
    started = time.monotonic()
    with pytest.raises(JsonRpcException) as error:
        await bounded(client.request("triage/chat", {"prompt": "third", "tier": "fast"}), 3)
    assert time.monotonic() - started < 1.5
    assert error.value.code == -32803  # RequestFailed
    assert "busy" in error.value.message and "queue_len" in error.value.message
    assert error.value.data["busy"] is True and error.value.data["retry_after_s"] == 30
    # The queued request says that it waits.
    await eventually(
        lambda: any("Waiting for a free model" in v.get("message", "")
                    for v in client.progress_values.get("waiting", [])),
        timeout=3, what="a 'waiting' progress report")
    # Cancelling the queued request takes it out of the queue at once; it never reached the model.
    client.cancel("queued")
    with pytest.raises(JsonRpcException) as error:
        await bounded(queued, 3)
    assert error.value.code == -32800
    load = fast_load(await bounded(client.request("triage/status", None)))
    assert (load["running"], load["queued"]) == (1, 0)
    assert not any("second" in r["text"] for r in await backend.requests_async())
    client.cancel("running")
    with pytest.raises(JsonRpcException):
        await bounded(running, 3)
    backend.set_fault(FAST, {"kind": "ok"})
    answer = await bounded(client.request("triage/chat", {"prompt": "again", "tier": "fast"}))
    assert answer["text"] == answer_for(FAST)


# --------------------------------------------------------------------------------------------
# feedback: forced tiers are recorded (hashed features only) unless `[feedback] enabled = false`


async def test_forced_tiers_are_recorded_as_feedback_unless_off(launch, backend, tmp_path):
    client = await launch()
    await initialize(client)
    open_document(client, PYTHON_URI, PYTHON_TEXT, "python")
    await bounded(client.request("triage/chat", {"prompt": "explain secretmarker", "tier": "heavy"}))
    await execute(client, "triage.ask", [{"uri": PYTHON_URI, "range": range_json(span(0, 0, 2, 0))}])
    await bounded(client.request("triage/chat", {"prompt": "hello"}))  # not forced: not recorded
    path = tmp_path / "server" / "state" / "feedback.json"

    def recorded() -> list[dict[str, Any]]:
        return json.loads(path.read_text())["records"] if path.exists() else []

    await eventually(lambda: len(recorded()) == 2, timeout=5, what="two feedback records")
    assert [r["tier"] for r in recorded()] == ["heavy", "heavy"]
    text = path.read_text()
    assert "secretmarker" not in text and "greet" not in text, "only hashed feature ids are kept"

    off = await launch(toml="[feedback]\nenabled = false\n", name="off")
    await initialize(off)
    answer = await bounded(off.request("triage/chat", {"prompt": "hello", "tier": "heavy"}))
    assert answer["tier"] == "heavy"
    assert not (tmp_path / "off" / "state" / "feedback.json").exists()
