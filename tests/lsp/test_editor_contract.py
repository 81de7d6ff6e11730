"""What the editor clients (editors/vscode, editors/nvim) rely on beyond the base contract:
`triage/chat` with an `action` (an explanation streamed into the editor's own window), and
notifications the server does not know (`triage/intent` from newer clients) being ignored
without an answer.
"""

from __future__ import annotations

import pytest
from pygls.exceptions import JsonRpcException

from conftest import (
    CODER,
    HEAVY,
    TriageClient,
    answer_for,
    answer_tokens,
    bounded,
    check_framing,
    eventually,
    initialize,
    open_document,
    range_json,
    span,
)

PYTHON_URI = "file:///work/project/greet.py"
PYTHON_TEXT = 'def greet(name):\n    return "héllo " + name\n\nprint(greet("wörld"))\n'


async def test_chat_with_an_action_streams_it_without_editing(client: TriageClient, backend):
    await initialize(client)
    open_document(client, PYTHON_URI, PYTHON_TEXT, "python")
    backend.set_fault(CODER, {"kind": "trickle", "ms": 5, "tokens": 12})
    answer = await bounded(client.request("triage/chat", {
        "textDocument": {"uri": PYTHON_URI},
        "range": range_json(span(0, 0, 2, 0)),
        "action": "explain",
        "partialResultToken": "explain-1",
    }))
    # A code action is routed to the coder model (the analyser's rule for code actions), as
    # `workspace/executeCommand triage.explain` would be.
    assert (answer["tier"], answer["model"]) == ("coder", CODER)
    assert client.deltas("explain-1") == answer_tokens(CODER, 12)
    assert "".join(client.deltas("explain-1")) == answer["text"]
    (sent,) = [r for r in await backend.requests_async() if r["path"] == "/api/chat"]
    assert 'def greet(name):\n    return "héllo " + name\n' in sent["text"]
    # Never applied, even for an editing action.
    backend.set_fault(CODER, {"kind": "ok"})
    fixed = await bounded(client.request("triage/chat", {
        "textDocument": {"uri": PYTHON_URI}, "range": range_json(span(1, 0, 1, 0)),
        "action": "fix"}))
    assert fixed["text"] == answer_for(fixed["model"]) and "applied" not in fixed
    assert client.applied_edits == []
    heavy = await bounded(client.request("triage/chat", {
        "textDocument": {"uri": PYTHON_URI}, "range": range_json(span(1, 0, 1, 0)),
        "action": "ask"}))
    assert (heavy["tier"], heavy["model"]) == ("heavy", HEAVY)


async def test_chat_with_an_unknown_action_is_refused(client: TriageClient, backend):
    await initialize(client)
    with pytest.raises(JsonRpcException) as error:
        await bounded(client.request("triage/chat", {"prompt": "hi", "action": "summon"}))
    assert error.value.code == -32602 and "summon" in error.value.message
    assert await backend.requests_async() == []


async def test_unknown_triage_notifications_are_ignored(client: TriageClient, backend):
    """Clients send `triage/intent` (and may send other `triage/*` notifications a server
    version does not know yet): no answer, no error, and the session goes on."""
    await initialize(client)
    open_document(client, PYTHON_URI, PYTHON_TEXT, "python")
    for params in (
        {"kind": "chat", "active": True},
        {"kind": "selection", "active": True, "textDocument": {"uri": PYTHON_URI},
         "range": range_json(span(0, 0, 3, 0))},
        {"kind": "selection", "active": False},
        "not even an object",
    ):
        client.send_raw({"jsonrpc": "2.0", "method": "triage/intent", "params": params})
    client.send_raw({"jsonrpc": "2.0", "method": "triage/somethingNew", "params": {}})
    answer = await bounded(client.request("triage/chat", {"prompt": "hello", "tier": "fast"}))
    assert answer["text"] == answer_for(answer["model"])
    await eventually(lambda: client.status_notifications, timeout=3, what="triage/status")
    messages = check_framing(bytes(client.stdout_tap.data))
    assert [m for m in messages if "error" in m] == []
    assert [m for m in messages if m.get("id") is None and "result" in m] == []


async def test_progress_cancel_button_stops_a_command(client: TriageClient, backend):
    """VS Code's progress notification has a Cancel button: `window/workDoneProgress/cancel`
    on the server-created token stops the command like `$/cancelRequest`, nothing is edited."""
    await initialize(client)
    open_document(client, PYTHON_URI, PYTHON_TEXT, "python")
    backend.set_fault(CODER, {"kind": "trickle", "ms": 200, "tokens": 200})
    request = client.raw_request("workspace/executeCommand", {
        "command": "triage.fix",
        "arguments": [{"uri": PYTHON_URI, "range": range_json(span(0, 0, 2, 0))}],
    })
    await backend.wait_for(lambda rs: any(r["path"] == "/api/chat" for r in rs), what="the model asked")
    (token,) = client.created_tokens
    client.send_raw({"jsonrpc": "2.0", "method": "window/workDoneProgress/cancel",
                     "params": {"token": token}})
    with pytest.raises(JsonRpcException) as error:
        await bounded(request, 3)
    assert error.value.code == -32800  # RequestCancelled
    requests = await backend.wait_for(
        lambda rs: rs and rs[-1]["closed_early"], timeout=3, what="the model's stream closed")
    assert requests[-1]["model"] == CODER and requests[-1]["completed"] is False
    await eventually(lambda: client.progress_values[token][-1] == {"kind": "end", "message": "cancelled"},
                     timeout=2, what="the progress ended as cancelled")
    assert client.applied_edits == []
    # A cancel for a token that is not running (or no longer) is ignored.
    client.send_raw({"jsonrpc": "2.0", "method": "window/workDoneProgress/cancel",
                     "params": {"token": "nothing-runs-here"}})
    backend.set_fault(CODER, {"kind": "ok"})
    answer = await bounded(client.request("triage/chat", {"prompt": "hello", "tier": "coder"}))
    assert answer["text"] == answer_for(CODER)
