"""Fixtures for the end-to-end tests of `triage gateway`.

Every test gets its own loopback test model server (`examples/test_backend`) and its own
`triage gateway --listen 127.0.0.1:0` process (the real binary), whose address it reads from
the first line of the gateway's stdout. Clients are the official `ollama` and `openai` Python
libraries, plus raw `httpx` where the wire itself is what is checked.

Binaries: `$TRIAGE_BIN` (default `target/debug/triage`) and `$TRIAGE_TEST_BACKEND` (default
`target/debug/examples/test_backend`), relative paths taken from the repository root. Build them
with `cargo build --bin triage --examples`.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

FAST = "llama3.2:3b"
CODER = "qwen3-coder:30b"
HEAVY = "llama3.1:70b"

GREETING = "hi there"
CODE_TASK = "write a rust function that parses a toml file"


def _binary(variable: str, default: str) -> Path:
    path = Path(os.environ.get(variable) or default)
    return path if path.is_absolute() else REPO_ROOT / path


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
    """The chunks the test backend streams: `Hello from MODEL, this is a test answer.`"""
    base = ["Hello", " from", f" {model}", ",", " this", " is", " a", " test", " answer", "."]
    return [base[i % len(base)] for i in range(tokens)]


def answer_for(model: str, tokens: int = 10) -> str:
    return "".join(answer_tokens(model, tokens))


def eventually(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """Polls `predicate` until it returns something truthy, bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.02)


def _first_line(process: subprocess.Popen, what: str, seconds: float = 15) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], seconds)
    if not ready:
        raise RuntimeError(f"{what} printed nothing within {seconds} s")
    return process.stdout.readline().decode().strip()


class Backend:
    """`examples/test_backend` on a free loopback port, steered over its `/_test/*` API."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [str(TRIAGE_TEST_BACKEND), "127.0.0.1:0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        line = _first_line(self.process, "test_backend")
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
        if self.process.stdout:
            self.process.stdout.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"content-type": "application/json"}
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

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], Any], timeout: float = 5.0,
                 what: str = "") -> list[dict[str, Any]]:
        def check():
            requests = self.requests()
            return requests if predicate(requests) else None

        return eventually(check, timeout, what or "backend requests")


@pytest.fixture
def backend():
    server = Backend()
    try:
        yield server
    finally:
        server.close()


def write_config(directory: Path, url: str, extra: str = "", endpoint: str = "",
                 total_s: int = 30) -> Path:
    """One Ollama endpoint (the test backend; `endpoint` adds keys to its table) and short
    timeouts, so faults resolve fast. Each model may run 32 requests at once unless `endpoint`
    says otherwise."""
    tiers = "".join(
        f"[tiers.{tier}.timeouts]\nfirst_token_s = 2\nidle_s = 1\ntotal_s = {total_s}\n\n"
        for tier in ("fast", "coder", "heavy")
    )
    path = directory / "config.toml"
    endpoint = endpoint or "max_concurrent = 32\n"
    path.write_text(f'[endpoints.ollama]\nurl = "{url}"\n{endpoint}\n{tiers}{extra}')
    return path


def gateway_env(directory: Path, config: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_HOST", "RUST_LOG", "TRIAGE_CONFIG")}
    state = directory / "state"
    xdg = directory / "xdg"
    state.mkdir(exist_ok=True)
    xdg.mkdir(exist_ok=True)
    env.update(TRIAGE_CONFIG=str(config), TRIAGE_STATE_DIR=str(state), XDG_CONFIG_HOME=str(xdg))
    env.update(extra or {})
    return env


class Gateway:
    """A running `triage gateway`."""

    def __init__(self, args: list[str], env: dict[str, str], stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        # A file, not a pipe: a pipe nobody reads could fill and block the gateway.
        with open(stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [str(TRIAGE_BIN), "gateway", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
            )
        line = _first_line(self.process, "triage gateway")
        prefix = "triage gateway listening on "
        if not line.startswith(prefix):
            self.stop()
            raise RuntimeError(f"unexpected first line from the gateway: {line!r}")
        self.url = line[len(prefix) :]
        self.host = self.url

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self) -> int:
        """SIGTERM, as a service manager would; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stdout and not self.process.stdout.closed:
            self.process.stdout.close()
        return self.process.returncode

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@pytest.fixture
def launch(backend: Backend, tmp_path: Path):
    """Starts gateways (`launch(toml=..., args=[...], env={...}, total_s=...)`), stopping them at
    the end."""
    started: list[Gateway] = []

    def start(toml: str = "", args: list[str] | None = None, env: dict[str, str] | None = None,
              name: str = "gw", endpoint: str = "", total_s: int = 30) -> Gateway:
        directory = tmp_path / name
        directory.mkdir(exist_ok=True)
        config = write_config(directory, backend.url, toml, endpoint, total_s)
        gateway = Gateway(args or ["--listen", "127.0.0.1:0"], gateway_env(directory, config, env),
                          directory / "stderr.log")
        started.append(gateway)
        return gateway

    yield start
    for g in started:
        g.stop()


@pytest.fixture
def gateway(launch) -> Gateway:
    return launch()
