"""Workspace context in `triage serve`: the folders from `initialize` are indexed in the
background, the index follows edits (didChange), saves and file events
(`workspace/didChangeWatchedFiles`: create, delete, rename), and every answer lists the
context it used. What reached the model is read back from the test backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lsprotocol import types

from conftest import (
    TriageClient,
    bounded,
    capabilities,
    eventually,
    open_document,
    span,
)

FACT = "GATEWAY_RETRY_LIMIT = 7"
QUESTION = "What is the retry limit of the payment gateway?"
SECRET = "sk_live_51HqLyjWDarjtT1zdp7dcXYZ"


def make_workspace(root: Path, noise: int = 30) -> None:
    for i in range(noise):
        body = "".join(f"def render_widget_{i}_{j}(frame):\n    frame.draw({j})\n" for j in range(20))
        (root / "ui").mkdir(parents=True, exist_ok=True)
        (root / "ui" / f"widget_{i}.py").write_text(body)
    billing = root / "billing"
    billing.mkdir(parents=True, exist_ok=True)
    filler = "".join(f"# settlement note {j}\n" for j in range(30))
    (billing / "gateway.py").write_text(
        f"{filler}# The payment gateway gives up after this many retries.\n{FACT}\n"
    )


async def start(client: TriageClient, root: Path, watch: bool = True) -> None:
    caps = capabilities()
    assert caps.workspace is not None
    caps.workspace.did_change_watched_files = types.DidChangeWatchedFilesClientCapabilities(
        dynamic_registration=watch
    )
    await bounded(
        client.initialize_session(
            types.InitializeParams(
                capabilities=caps,
                root_uri=None,
                workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name="ws")],
            )
        ),
        10,
    )
    await eventually(
        lambda: any("workspace indexed" in m.message for m in client.log_messages),
        timeout=20,
        what="the first index build",
    )


async def chat(client: TriageClient, params: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"prompt": QUESTION, "tier": "coder"}
    body.update(params or {})
    return await bounded(client.request("triage/chat", body), 20)


def sources(answer: dict[str, Any]) -> list[tuple[str, int, int, str]]:
    return [
        (s["path"], s["start_line"], s["end_line"], s["kind"])
        for s in answer["context"]["sources"]
    ]


def last_text(backend) -> str:
    chats = [r for r in backend.requests() if r["path"] == "/api/chat"]
    return chats[-1]["text"]


def watched(client: TriageClient, *events: tuple[Path, types.FileChangeType]) -> None:
    client.workspace_did_change_watched_files(
        types.DidChangeWatchedFilesParams(
            changes=[types.FileEvent(uri=path.as_uri(), type=kind) for path, kind in events]
        )
    )


async def test_workspace_context_follows_edits_and_file_events(client: TriageClient, backend,
                                                              tmp_path: Path):
    root = tmp_path / "ws"
    make_workspace(root)
    await start(client, root)
    # File watching was registered dynamically.
    await eventually(
        lambda: any(r.method == "workspace/didChangeWatchedFiles" for r in client.registrations),
        what="a didChangeWatchedFiles registration",
    )

    status = await bounded(client.request("triage/status", None))
    assert status["workspace"]["state"] == "ready"
    assert status["workspace"]["files"] == 31, status["workspace"]
    assert status["workspace"]["index_bytes"] > 0

    answer = await chat(client)
    assert FACT in last_text(backend)
    assert ("billing/gateway.py", 1, 32, "workspace") in sources(answer), sources(answer)
    assert answer["context"]["workspace"]["state"] == "ready"
    assert answer["context"]["ranking"] == "bm25"

    # An unsaved edit is what the next answer sees; the open file counts as a document.
    gateway = root / "billing" / "gateway.py"
    uri = gateway.as_uri()
    text = gateway.read_text()
    open_document(client, uri, text, "python")
    last = text.count("\n")
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=span(last - 1, 0, last - 1, len(FACT)), text="GATEWAY_RETRY_LIMIT = 12"
                )
            ],
        )
    )
    answer = await chat(client)
    sent = last_text(backend)
    assert "GATEWAY_RETRY_LIMIT = 12" in sent and FACT not in sent, sent
    assert any(p == "billing/gateway.py" and k == "document" for p, _, _, k in sources(answer))
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
    )

    # Rename on disk: the old path is deleted, the new one created.
    moved = root / "payments" / "gateway.py"
    moved.parent.mkdir()
    gateway.rename(moved)
    moved.write_text(moved.read_text().replace(FACT, "GATEWAY_RETRY_LIMIT = 21"))
    watched(client, (gateway, types.FileChangeType.Deleted), (moved, types.FileChangeType.Created))
    answer = await chat(client)
    sent = last_text(backend)
    assert "GATEWAY_RETRY_LIMIT = 21" in sent and FACT not in sent, sent
    paths = [p for p, *_ in sources(answer)]
    assert "payments/gateway.py" in paths and "billing/gateway.py" not in paths, paths

    # A created secret file and a file with a secret in its relevant chunk never reach a prompt.
    (root / "deploy").mkdir()
    (root / "deploy" / "prod.env").write_text(f"PAYMENT_GATEWAY_RETRY=3\nKEY={SECRET}\n")
    (root / "billing" / "keys.py").write_text(
        f"# payment gateway retry limit keys\nSTRIPE = '{SECRET}'\n"
    )
    watched(
        client,
        (root / "deploy" / "prod.env", types.FileChangeType.Created),
        (root / "billing" / "keys.py", types.FileChangeType.Created),
    )
    # Deletion.
    moved.unlink()
    watched(client, (moved, types.FileChangeType.Deleted))
    answer = await chat(client)
    sent = last_text(backend)
    assert "GATEWAY_RETRY_LIMIT" not in sent, sent
    assert all(SECRET not in r["text"] for r in backend.requests())
    assert all(not p.endswith(("prod.env", "keys.py")) for p, *_ in sources(answer))


async def test_selection_surroundings_and_sources_in_commands(client: TriageClient, backend,
                                                             tmp_path: Path):
    root = tmp_path / "ws"
    make_workspace(root, noise=5)
    code = (
        "def total(items):\n"
        "    result = 0\n"
        "    for item in items:\n"
        "        result += item.price\n"
        "    return result\n"
        "\n"
        "def unrelated():\n"
        "    pass\n"
    )
    (root / "cart.py").write_text(code)
    await start(client, root)
    uri = (root / "cart.py").as_uri()
    open_document(client, uri, code, "python")
    answer = await chat(client, {"prompt": "why is the price summed here?",
                                 "textDocument": {"uri": uri},
                                 "range": {"start": {"line": 3, "character": 0},
                                           "end": {"line": 3, "character": 28}}})
    listed = sources(answer)
    assert ("cart.py", 4, 4, "selection") in listed, listed
    # The `for` block is short, so its function is shown around the selection.
    assert ("cart.py", 1, 5, "surrounding") in listed, listed
    sent = last_text(backend)
    assert "for item in items:" in sent and "[… the selection, shown below …]" in sent
    assert "def total(items):" in sent
    # The rest of the file repeats the focus region's chunk and is not sent again.
    assert "def unrelated" not in sent

    # Commands carry the same context object.
    result = await bounded(
        client.workspace_execute_command_async(
            types.ExecuteCommandParams(
                command="triage.explain",
                arguments=[{"uri": uri, "range": {"start": {"line": 3, "character": 0},
                                                  "end": {"line": 3, "character": 28}}}],
            )
        ),
        20,
    )
    assert ("cart.py", 4, 4, "selection") in sources(result)


async def test_a_large_first_build_reports_progress(client: TriageClient, backend,
                                                   tmp_path: Path):
    root = tmp_path / "ws"
    make_workspace(root, noise=260)
    await start(client, root)
    await eventually(
        lambda: any(
            any(v.get("kind") == "end" for v in values)
            for token, values in client.progress_values.items()
            if str(token).startswith("triage/index")
        ),
        what="the end of the indexing progress",
    )
    token, values = next(
        (t, v) for t, v in client.progress_values.items() if str(t).startswith("triage/index")
    )
    assert token in client.created_tokens
    assert values[0]["kind"] == "begin" and values[0]["title"] == "triage: Indexing workspace"
    assert values[-1]["kind"] == "end" and values[-1]["message"] == "261 files indexed"
    percentages = [v["percentage"] for v in values if v.get("kind") == "report"]
    assert percentages == sorted(percentages) and percentages[-1] == 100


async def test_without_a_workspace_folder_there_is_no_index(client: TriageClient, backend):
    await bounded(
        client.initialize_session(types.InitializeParams(capabilities=capabilities(), root_uri=None)),
        10,
    )
    answer = await chat(client, {"tier": "fast"})
    assert answer["context"]["workspace"] is None
    assert answer["context"]["sources"] == []
    assert not client.registrations
    assert "Context from the workspace" not in last_text(backend)
    status = await bounded(client.request("triage/status", None))
    assert status["workspace"] is None


async def test_completion_is_shown_related_workspace_code(client: TriageClient, backend,
                                                          tmp_path: Path):
    root = tmp_path / "ws"
    make_workspace(root, noise=5)
    await start(client, root)
    uri = (root / "client.py").as_uri()
    text = "def send_payment(gateway):\n    # retry up to the payment gateway retry limit\n    for attempt in range("
    (root / "client.py").write_text(text)
    open_document(client, uri, text, "python")
    lines = text.split("\n")
    result = await bounded(
        client.text_document_completion_async(
            types.CompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=types.Position(line=len(lines) - 1, character=len(lines[-1])),
            )
        ),
        20,
    )
    assert result
    (sent,) = [r for r in backend.requests() if r["path"] == "/api/generate"]
    assert sent["text"].startswith("# Path: billing/gateway.py\n"), sent["text"]
    assert f"# {FACT}\n" in sent["text"]
    assert sent["text"].endswith(text + "\n")
