"""End-to-end tests of `triage gateway` with the official `ollama` and `openai` client libraries
(and raw httpx where the wire is the point), against the loopback test backend: routing, forced
tiers, pass-through models, fallbacks, routing headers, streaming and not, errors mid-answer,
cancellation on disconnect, backpressure, body limits, bearer tokens and start-up rules."""

from __future__ import annotations

import json
import os
import subprocess
import time

import httpx
import ollama
import openai
import pytest

from conftest import (
    CODE_TASK,
    CODER,
    FAST,
    GREETING,
    HEAVY,
    TRIAGE_BIN,
    Backend,
    Gateway,
    answer_for,
    eventually,
    gateway_env,
    write_config,
)


def ollama_client(gw: Gateway, **kwargs) -> tuple[ollama.Client, list[httpx.Headers]]:
    """An `ollama.Client` and the headers of every response it gets."""
    headers: list[httpx.Headers] = []
    client = ollama.Client(
        host=gw.url, timeout=20, event_hooks={"response": [lambda r: headers.append(r.headers)]},
        **kwargs,
    )
    return client, headers


def openai_client(gw: Gateway, api_key: str = "not-needed") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=api_key, max_retries=0, timeout=20)


def routing(headers: httpx.Headers) -> tuple[str, str, int, float]:
    return (
        headers["x-triage-tier"],
        headers["x-triage-model"],
        int(headers["x-triage-fallbacks"]),
        float(headers["x-triage-confidence"]),
    )


def ndjson(gw: Gateway, path: str, body: dict) -> tuple[httpx.Response, list[dict]]:
    response = httpx.post(gw.url + path, json=body, timeout=20)
    return response, [json.loads(line) for line in response.text.splitlines() if line.strip()]


def sse_events(text: str) -> list[dict | str]:
    events: list[dict | str] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def models_called(backend: Backend) -> list[str]:
    return [r["model"] for r in backend.requests()]


# --------------------------------------------------------------------------------------------
# Ollama dialect


def test_ollama_chat_routes_auto_and_says_so_in_headers(gateway, backend):
    client, headers = ollama_client(gateway)
    response = client.chat(model="auto", messages=[{"role": "user", "content": GREETING}], stream=False)
    assert response.message.content == answer_for(FAST)
    assert response.done and response.done_reason == "stop"
    assert response.model == FAST
    assert response.eval_count == 10 and response.prompt_eval_count == 12
    tier, model, fallbacks, confidence = routing(headers[-1])
    assert (tier, model, fallbacks) == ("fast", FAST, 0)
    assert 0.5 < confidence <= 1
    assert models_called(backend) == [FAST]


def test_ollama_chat_streams_a_code_task_to_the_coder_model(gateway, backend):
    client, headers = ollama_client(gateway)
    chunks = list(client.chat(model="auto", messages=[{"role": "user", "content": CODE_TASK}], stream=True))
    assert "".join(c.message.content for c in chunks) == answer_for(CODER)
    assert [c.done for c in chunks] == [False] * 10 + [True]
    assert all(c.model == CODER for c in chunks)
    assert routing(headers[-1])[:3] == ("coder", CODER, 0)
    assert headers[-1]["content-type"] == "application/x-ndjson"
    # The whole conversation reached the model as sent (no system prompt of triage's added).
    assert backend.requests()[0]["text"] == CODE_TASK


def test_the_final_ndjson_object_carries_triage_fields(gateway):
    response, lines = ndjson(gateway, "/api/chat", {"model": "auto", "messages": [{"role": "user", "content": GREETING}]})
    final = lines[-1]
    assert final["done"] is True and final["message"]["content"] == ""
    triage = final["triage"]
    assert triage["tier"] == "fast" and triage["model"] == FAST and triage["endpoint"] == "ollama"
    assert triage["fallbacks"] == [] and "text" not in triage
    assert triage["confidence"] == pytest.approx(float(response.headers["x-triage-confidence"]), abs=0.002)
    assert any("greeting" in r for r in triage["reasons"])


def test_ollama_generate_with_system_prompt_streaming_and_not(gateway, backend):
    client, headers = ollama_client(gateway)
    whole = client.generate(model="auto", prompt=CODE_TASK, system="answer in haiku", stream=False)
    assert whole.response == answer_for(CODER) and whole.done
    streamed = list(client.generate(model="auto:fast", prompt=CODE_TASK, stream=True))
    assert "".join(c.response for c in streamed) == answer_for(FAST)
    assert routing(headers[-1])[:2] == ("fast", FAST)
    first = backend.requests()[0]
    assert first["path"] == "/api/chat"
    assert first["text"] == f"answer in haiku\n{CODE_TASK}"


@pytest.mark.parametrize("name,tier,model", [("auto:heavy", "heavy", HEAVY), ("auto:coder", "coder", CODER),
                                             ("AUTO:FAST", "fast", FAST)])
def test_auto_tier_forces_the_tier(gateway, backend, name, tier, model):
    client, headers = ollama_client(gateway)
    response = client.chat(model=name, messages=[{"role": "user", "content": GREETING}], stream=False)
    assert response.message.content == answer_for(model)
    assert routing(headers[-1])[:2] == (tier, model)
    assert models_called(backend) == [model]


def test_a_forced_tier_still_falls_back(gateway, backend):
    backend.set_fault(HEAVY, {"kind": "status", "code": 500})
    client, headers = ollama_client(gateway)
    response = client.chat(model="auto:heavy", messages=[{"role": "user", "content": GREETING}], stream=False)
    tier, model, fallbacks, _ = routing(headers[-1])
    assert fallbacks == 1 and model != HEAVY
    assert response.message.content == answer_for(model)
    assert models_called(backend)[0] == HEAVY


def test_a_real_model_name_passes_through_without_falling_back(gateway, backend):
    # A model outside the tiers that the endpoint lists (the test backend lists models it has
    # faults for).
    backend.set_fault("mistral:7b", {"kind": "ok"})
    client, headers = ollama_client(gateway)
    response = client.chat(model="mistral:7b", messages=[{"role": "user", "content": CODE_TASK}], stream=False)
    assert response.message.content == answer_for("mistral:7b")
    assert headers[-1]["x-triage-model"] == "mistral:7b"
    # A tier's own model named directly.
    response = client.chat(model=CODER, messages=[{"role": "user", "content": GREETING}], stream=False)
    assert response.message.content == answer_for(CODER)
    assert routing(headers[-1])[:2] == ("coder", CODER)
    # A named model that fails is an error, not an answer from another model.
    backend.set_fault(CODER, {"kind": "status", "code": 500})
    with pytest.raises(ollama.ResponseError) as failed:
        client.chat(model=CODER, messages=[{"role": "user", "content": GREETING}], stream=False)
    assert failed.value.status_code == 502
    assert "HTTP 500" in failed.value.error
    assert models_called(backend) == ["mistral:7b", CODER, CODER]


def test_an_unknown_model_is_404_in_both_dialects(gateway, backend):
    client, _ = ollama_client(gateway)
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="nope:1b", messages=[{"role": "user", "content": GREETING}])
    assert missing.value.status_code == 404 and "nope:1b" in missing.value.error
    with pytest.raises(ollama.ResponseError) as bad_tier:
        client.chat(model="auto:huge", messages=[{"role": "user", "content": GREETING}])
    assert bad_tier.value.status_code == 404 and "auto:coder" in bad_tier.value.error
    with pytest.raises(openai.NotFoundError) as oa:
        openai_client(gateway).chat.completions.create(model="nope:1b", messages=[{"role": "user", "content": "x"}])
    assert oa.value.code == "model_not_found"
    assert backend.requests() == []


def test_fallback_before_the_first_token_is_in_the_headers_of_a_stream(gateway, backend):
    # The coder model hangs before its first token: the stream's headers are held until the
    # fallback answers, so they name the model that really answers.
    backend.set_fault(CODER, {"kind": "hang_before_first_token"})
    started = time.monotonic()
    response, lines = ndjson(gateway, "/api/chat", {"model": "auto", "messages": [{"role": "user", "content": CODE_TASK}]})
    assert time.monotonic() - started >= 1.9  # first_token_s = 2
    tier, model, fallbacks, confidence = routing(response.headers)
    assert fallbacks == 1 and model != CODER
    assert "".join(l["message"]["content"] for l in lines) == answer_for(model)
    triage = lines[-1]["triage"]
    assert [f["model"] for f in triage["fallbacks"]] == [CODER]
    assert "first_token_s" in triage["fallbacks"][0]["error"]
    assert confidence == pytest.approx(triage["confidence"], abs=0.002)
    # The hung request was dropped: its connection closed.
    backend.wait_for(lambda r: r[0]["closed_early"], what="the hung stream to be closed")


def test_every_model_down_is_a_502_with_what_was_tried(gateway, backend):
    for model in (FAST, CODER, HEAVY):
        backend.set_fault(model, {"kind": "status", "code": 503})
    client, headers = ollama_client(gateway)
    with pytest.raises(ollama.ResponseError) as failed:
        list(client.chat(model="auto", messages=[{"role": "user", "content": CODE_TASK}], stream=True))
    assert failed.value.status_code == 502
    assert "every model failed" in failed.value.error
    assert int(headers[-1]["x-triage-fallbacks"]) == 3
    response, _ = ndjson(gateway, "/api/chat", {"model": "auto", "messages": [{"role": "user", "content": CODE_TASK}]})
    assert [f["model"] for f in response.json()["triage"]["fallbacks"]] == [CODER, HEAVY, FAST]


def test_a_stream_that_breaks_mid_answer_ends_with_an_error(gateway, backend):
    backend.set_fault(CODER, {"kind": "stall_after", "tokens": 3})
    client, _ = ollama_client(gateway)
    received = []
    with pytest.raises(ollama.ResponseError) as broke:
        for chunk in client.chat(model="auto", messages=[{"role": "user", "content": CODE_TASK}], stream=True):
            received.append(chunk.message.content)
    assert "".join(received) == "Hello from qwen3-coder:30b"
    assert "stalled" in broke.value.error and "partial answer" in broke.value.error
    # No silent restart on another model after the first token.
    assert models_called(backend) == [CODER]
    # Without streaming the same failure is a 502 naming the model.
    with pytest.raises(ollama.ResponseError) as whole:
        client.chat(model="auto", messages=[{"role": "user", "content": CODE_TASK}], stream=False)
    assert whole.value.status_code == 502 and CODER in whole.value.error


def test_options_and_secrets(gateway, backend):
    client, _ = ollama_client(gateway)
    client.chat(
        model="auto",
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": "my key is AKIAIOSFODNN7EXAMPLE, is it valid?"}],
        options={"num_predict": 50, "temperature": 0.1},
        stream=False,
    )
    sent = backend.requests()[0]
    assert sent["max_tokens"] == 50
    assert "AKIAIOSFODNN7EXAMPLE" not in sent["text"] and "[redacted AWS access key]" in sent["text"]
    assert sent["text"].startswith("be brief\n")


def test_unsupported_requests_are_clear_400s(gateway, backend):
    client, _ = ollama_client(gateway)
    cases = [
        (lambda: client.chat(model="auto", messages=[{"role": "user", "content": "x", "images": ["aGk="]}]), "images"),
        (lambda: client.chat(model="auto", messages=[{"role": "user", "content": "x"}],
                             tools=[{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}}]), "tools"),
        (lambda: client.chat(model="auto", messages=[]), "no text"),
        (lambda: client.generate(model="auto", prompt="def f(", suffix="return 1"), "suffix"),
        (lambda: client.generate(model="auto", prompt=""), "empty"),
    ]
    for call, word in cases:
        with pytest.raises(ollama.ResponseError) as refused:
            call()
        assert refused.value.status_code == 400, word
        assert word in refused.value.error, refused.value.error
    assert backend.requests() == []


def test_tags_ps_show_version(gateway, backend):
    client, _ = ollama_client(gateway)
    names = [m.model for m in client.list().models]
    assert names[:4] == ["auto", "auto:fast", "auto:coder", "auto:heavy"]
    assert {FAST, CODER, HEAVY} <= set(names[4:])
    backend.set_loaded([{"name": FAST, "model": FAST, "size": 3 << 30, "size_vram": 3 << 30,
                         "expires_at": "2030-01-01T00:00:00Z"}])
    loaded = eventually(lambda: client.ps().models, what="/api/ps to show the loaded model")
    assert loaded[0].model == FAST and loaded[0].size_vram == 3 << 30
    shown = client.show(CODER)
    assert "insert" in shown.capabilities and shown.modelinfo["triage.context_length"] == 131072
    auto = client.show("auto")
    assert [t["tier"] for t in auto.modelinfo["triage.tiers"]] == ["fast", "coder", "heavy"]
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("nope:1b")
    assert missing.value.status_code == 404
    version = httpx.get(gateway.url + "/api/version").json()
    assert version["version"] and version["triage"]


# --------------------------------------------------------------------------------------------
# OpenAI dialect


def test_openai_chat_completion_whole(gateway, backend):
    raw = openai_client(gateway).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "developer", "content": "be brief"}, {"role": "user", "content": CODE_TASK}],
        max_tokens=64, seed=1, stop=["\n\n"],
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == answer_for(CODER)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == CODER
    assert completion.usage.prompt_tokens == 12 and completion.usage.completion_tokens == 10
    assert completion.model_extra["triage"]["tier"] == "coder"
    assert routing(raw.headers)[:3] == ("coder", CODER, 0)
    assert backend.requests()[0]["max_tokens"] == 64


def test_openai_streaming_with_usage_and_triage_in_the_last_chunks(gateway, backend):
    client = openai_client(gateway)
    with client.chat.completions.with_streaming_response.create(
        model="auto", messages=[{"role": "user", "content": [{"type": "text", "text": GREETING}]}],
        stream=True, stream_options={"include_usage": True},
    ) as response:
        assert routing(response.headers)[:3] == ("fast", FAST, 0)
        assert response.headers["content-type"] == "text/event-stream"
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer_for(FAST)
    assert chunks[0].choices[0].delta.role == "assistant"
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finished) == 1 and finished[0].choices[0].finish_reason == "stop"
    assert finished[0].model_extra["triage"]["model"] == FAST
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].model_extra["triage"]["fallbacks"] == []


def test_openai_stream_without_usage_ends_with_the_finish_chunk(gateway):
    response = httpx.post(gateway.url + "/v1/chat/completions", timeout=20, json={
        "model": "auto", "stream": True, "messages": [{"role": "user", "content": GREETING}]})
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    last = events[-2]
    assert last["choices"][0]["finish_reason"] == "stop" and last["triage"]["tier"] == "fast"
    assert all(e["choices"] for e in events[:-1]), "no empty-choices chunk unless usage is asked for"


def test_openai_fallback_and_a_broken_stream(gateway, backend):
    client = openai_client(gateway)
    backend.set_fault(CODER, {"kind": "status", "code": 500})
    with client.chat.completions.with_streaming_response.create(
        model="auto", messages=[{"role": "user", "content": CODE_TASK}], stream=True,
    ) as response:
        tier, model, fallbacks, _ = routing(response.headers)
        chunks = list(response.parse())
    assert fallbacks == 1 and model != CODER
    last = [c for c in chunks if c.choices and c.choices[0].finish_reason][0]
    assert [f["model"] for f in last.model_extra["triage"]["fallbacks"]] == [CODER]
    backend.set_fault(CODER, {"kind": "reset_after", "tokens": 2})
    received = []
    with pytest.raises(openai.APIError) as broke:
        for chunk in client.chat.completions.create(
            model="auto:coder", messages=[{"role": "user", "content": CODE_TASK}], stream=True
        ):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Hello from"
    assert "mid-answer" in broke.value.message


def test_openai_models_and_unsupported_fields(gateway, backend):
    client = openai_client(gateway)
    ids = [m.id for m in client.models.list()]
    assert ids[:4] == ["auto", "auto:fast", "auto:coder", "auto:heavy"] and CODER in ids
    with pytest.raises(openai.BadRequestError) as n:
        client.chat.completions.create(model="auto", n=2, messages=[{"role": "user", "content": "x"}])
    assert "`n`" in n.value.message
    with pytest.raises(openai.BadRequestError) as image:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}]}])
    assert "image_url" in image.value.message
    assert backend.requests() == []


# --------------------------------------------------------------------------------------------
# Cancellation, backpressure, limits


def test_a_client_that_disconnects_cancels_the_backend_request(gateway, backend):
    for model in (FAST, CODER):
        backend.set_fault(model, {"kind": "trickle", "ms": 100, "tokens": 500})
    # Ollama client, streaming: read two chunks and close.
    client, _ = ollama_client(gateway)
    stream = client.chat(model="auto", messages=[{"role": "user", "content": GREETING}], stream=True)
    assert next(stream).message.content == "Hello"
    assert next(stream).message.content == " from"
    stream.close()
    backend.wait_for(lambda r: len(r) == 1 and r[0]["closed_early"], what="the backend to see the close")
    # OpenAI client, streaming.
    oa = openai_client(gateway).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": CODE_TASK}], stream=True)
    assert next(iter(oa)).choices[0].delta.content == "Hello"
    oa.close()
    backend.wait_for(lambda r: len(r) == 2 and r[1]["closed_early"], what="the close of the OpenAI stream")
    # Not streaming: a client that gives up waiting.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.url + "/api/chat", timeout=0.5, json={
            "model": "auto", "stream": False, "messages": [{"role": "user", "content": GREETING}]})
    backend.wait_for(lambda r: len(r) == 3 and r[2]["closed_early"], what="the close of the whole answer")
    assert not any(r["completed"] for r in backend.requests())


def test_a_client_that_disconnects_before_the_first_token_cancels_too(gateway, backend):
    backend.set_fault(FAST, {"kind": "cold_load", "ms": 1500})
    with pytest.raises(httpx.ReadTimeout):
        with httpx.stream("POST", gateway.url + "/api/chat", timeout=0.5, json={
                "model": "auto", "messages": [{"role": "user", "content": GREETING}]}) as r:
            r.read()
    backend.wait_for(lambda r: len(r) == 1 and r[0]["closed_early"], what="the close before the first token")


def test_a_slow_reader_does_not_make_the_gateway_buffer_the_answer(launch, backend):
    # A debug build on a busy two-core machine needs well over 30 s for 200 000 tokens: the
    # total timeout is not what this test is about.
    gateway = launch(total_s=600)
    tokens = 200_000  # ~26 MB of NDJSON
    backend.set_fault(FAST, {"kind": "trickle", "ms": 0, "tokens": tokens})
    baseline = gateway.rss_kb()
    with httpx.stream("POST", gateway.url + "/api/chat", timeout=60, json={
            "model": "auto", "messages": [{"role": "user", "content": GREETING}]}) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["message"]["content"] == "Hello"
        # Stop reading for a while: the gateway must hold back, not take the whole answer.
        time.sleep(2)
        paused = gateway.rss_kb()
        backend_done_while_paused = backend.requests()[0]["completed"]
        received = 1
        done = None
        for line in lines:
            chunk = json.loads(line)
            if chunk["done"]:
                done = chunk
            else:
                received += 1
    assert paused - baseline < 12_000, f"RSS grew by {paused - baseline} kB while the client paused"
    assert not backend_done_while_paused, "the backend finished while the client was not reading"
    assert received == tokens and done is not None and done["eval_count"] == tokens


def test_a_model_at_its_limit_with_a_full_queue_is_503_with_retry_after(launch, backend):
    gw = launch(endpoint="max_concurrent = 1\n", toml="[limits]\nqueue_len = 0\nmax_wait_s = 7\n")
    backend.set_fault(FAST, {"kind": "trickle", "ms": 50, "tokens": 30})
    with httpx.stream("POST", gw.url + "/api/chat", timeout=20, json={
            "model": FAST, "messages": [{"role": "user", "content": GREETING}]}) as running:
        lines = running.iter_lines()
        assert json.loads(next(lines))["message"]["content"] == "Hello"
        # The only place for the fast model is taken and nobody may wait: a named model has no
        # fallback, so this is a 503 in both dialects.
        client, _ = ollama_client(gw)
        with pytest.raises(ollama.ResponseError) as busy:
            client.chat(model=FAST, messages=[{"role": "user", "content": GREETING}], stream=False)
        assert busy.value.status_code == 503 and "busy" in busy.value.error
        raw = httpx.post(gw.url + "/v1/chat/completions", timeout=10, json={
            "model": FAST, "messages": [{"role": "user", "content": GREETING}]})
        assert raw.status_code == 503 and raw.headers["retry-after"] == "7"
        assert "busy" in raw.json()["error"]["message"]
        # `auto` passes a busy model over like a failed one.
        routed = httpx.post(gw.url + "/api/chat", timeout=10, json={
            "model": "auto:fast", "stream": False, "messages": [{"role": "user", "content": GREETING}]})
        assert routed.status_code == 200 and int(routed.headers["x-triage-fallbacks"]) == 1
        assert routed.headers["x-triage-model"] != FAST
        rest = [json.loads(line) for line in lines]
    # The running stream lost nothing.
    assert "".join(c["message"]["content"] for c in rest[:-1]) == answer_for(FAST, 30)[len("Hello"):]
    assert rest[-1]["done"] is True
    # With the place free again the model answers.
    client, _ = ollama_client(gw)
    assert client.chat(model=FAST, messages=[{"role": "user", "content": GREETING}], stream=False).message.content
    assert models_called(backend).count(FAST) == 2


def test_an_oversized_body_is_413_in_the_dialect(gateway, backend):
    huge = "a" * (9 * 1024 * 1024)
    client, _ = ollama_client(gateway)
    with pytest.raises(ollama.ResponseError) as too_big:
        client.chat(model="auto", messages=[{"role": "user", "content": huge}])
    assert too_big.value.status_code == 413 and "8 MB" in too_big.value.error
    with pytest.raises(openai.APIStatusError) as oa:
        openai_client(gateway).chat.completions.create(model="auto", messages=[{"role": "user", "content": huge}])
    assert oa.value.status_code == 413 and "8 MB" in oa.value.message
    assert backend.requests() == []


# --------------------------------------------------------------------------------------------
# triage's own endpoints


def test_health_status_route_and_openapi(gateway, backend):
    health = httpx.get(gateway.url + "/health").json()
    assert health["status"] == "ok" and health["backends"][0]["reachable"] is True
    status = httpx.get(gateway.url + "/status").json()
    assert [t["tier"] for t in status["tiers"]] == ["fast", "coder", "heavy"]
    assert status["endpoints"][0]["version"] == "0.0.0-test"
    route = httpx.post(gateway.url + "/route", json={"prompt": "design a multi-region payments ledger"})
    decision = route.json()
    assert decision["tier"] == "heavy" and decision["model"] == HEAVY and decision["reasons"]
    assert route.headers["x-triage-tier"] == "heavy"
    forced = httpx.post(gateway.url + "/route", json={"prompt": GREETING, "model": "auto:coder"}).json()
    assert forced["tier"] == "coder"
    spec = httpx.get(gateway.url + "/openapi.json").json()
    assert {"/api/chat", "/v1/chat/completions", "/route", "/health"} <= set(spec["paths"])
    assert backend.requests() == [], "no model was called"
    missing = httpx.get(gateway.url + "/api/nope")
    assert missing.status_code == 404 and "openapi.json" in missing.json()["error"]


def test_an_endpoint_down_is_reported_by_health(launch, backend):
    gw = launch(toml='[endpoints.down]\nurl = "http://127.0.0.1:9"\n')
    health = httpx.get(gw.url + "/health", timeout=10).json()
    down = [b for b in health["backends"] if b["name"] == "down"][0]
    assert down["reachable"] is False and "not reachable" in down["error"]


# --------------------------------------------------------------------------------------------
# Security and start-up


def test_a_token_is_required_when_configured(launch, backend):
    gw = launch(args=["--listen", "127.0.0.1:0", "--token-env", "GW_TOKEN"], env={"GW_TOKEN": "s3cret-value"})
    client, _ = ollama_client(gw)
    with pytest.raises(ollama.ResponseError) as refused:
        client.list()
    assert refused.value.status_code == 401
    denied = httpx.get(gw.url + "/health", headers={"authorization": "Bearer s3cret-valuX"})
    assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
    authorised, _ = ollama_client(gw, headers={"Authorization": "Bearer s3cret-value"})
    assert authorised.chat(model="auto", messages=[{"role": "user", "content": GREETING}], stream=False).message.content
    with pytest.raises(openai.AuthenticationError):
        openai_client(gw, api_key="wrong").models.list()
    assert openai_client(gw, api_key="s3cret-value").models.list().data
    assert gw.stop() == 0
    assert "s3cret-value" not in gw.stderr()


def _run_gateway(tmp_path, backend, args, env=None):
    config = write_config(tmp_path, backend.url)
    return subprocess.run([str(TRIAGE_BIN), "gateway", *args], capture_output=True, text=True,
                          timeout=15, env=gateway_env(tmp_path, config, env))


def test_a_non_loopback_address_needs_a_token(tmp_path, backend):
    refused = _run_gateway(tmp_path, backend, ["--listen", "0.0.0.0:0"])
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1 and "--token-env" in refused.stderr
    unset = _run_gateway(tmp_path, backend, ["--listen", "0.0.0.0:0", "--token-env", "GW_UNSET_TOKEN"])
    assert unset.returncode == 2 and "GW_UNSET_TOKEN" in unset.stderr
    bad = _run_gateway(tmp_path, backend, ["--listen", "localhost"])
    assert bad.returncode == 2 and "IP:PORT" in bad.stderr


def test_a_non_loopback_gateway_says_so_and_checks_the_token(launch, backend):
    gw = launch(args=["--listen", "0.0.0.0:0", "--token-env", "GW_TOKEN"], env={"GW_TOKEN": "t0ken"})
    url = gw.url.replace("0.0.0.0", "127.0.0.1")
    assert httpx.get(url + "/health").status_code == 401
    assert httpx.get(url + "/health", headers={"authorization": "Bearer t0ken"}).status_code == 200
    assert gw.stop() == 0
    assert "NOT loopback" in gw.stderr()


def test_sigterm_stops_the_gateway_cleanly(gateway):
    assert httpx.get(gateway.url + "/health").status_code == 200
    assert gateway.stop() == 0
