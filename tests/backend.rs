//! `triage ask` and `triage status` against a test model server that really speaks HTTP on
//! loopback, with every fault the engine must survive: refused connections, HTTP 500, model
//! not found, a hang before the first token, a stall mid-stream, malformed NDJSON and SSE,
//! a reset connection, a slow trickle, a length-limited answer, and cancellation.
//!
//! Timeouts in these configs are a second or two, so every fault resolves quickly; each test
//! also bounds its own run time so that a regression shows as a failure, not a hang.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::backend::{Fault, TestBackend};
use support::{bounded, json, stderr, stdout, temp_file, triage};

/// A config with all three tiers on the test backend (Ollama dialect), short timeouts.
fn ollama_config(backend: &TestBackend) -> PathBuf {
    let text = format!(
        r#"
[endpoints.ollama]
url = "{url}"

[tiers.fast.timeouts]
first_token_s = 1.5
idle_s = 1
total_s = 20
[tiers.coder.timeouts]
first_token_s = 1.5
idle_s = 1
total_s = 20
[tiers.heavy.timeouts]
first_token_s = 1.5
idle_s = 1
total_s = 20
"#,
        url = backend.url()
    );
    temp_file("ollama.toml", text.as_bytes())
}

fn ask(config: &PathBuf, args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let output = bounded(
        triage().arg("--config").arg(config).arg("ask").args(args),
        Duration::from_secs(30),
    );
    (output, started.elapsed())
}

#[test]
fn streams_the_answer_and_sends_keep_alive_and_num_ctx() {
    let backend = TestBackend::start();
    let config = ollama_config(&backend);
    let (o, _) = ask(&config, &["--tier", "fast", "Say hello"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        "Hello from llama3.2:3b, this is a test answer."
    );
    let err = stderr(&o);
    assert!(err.contains("→ llama3.2:3b (fast) on ollama"), "{err}");
    assert!(err.contains("first token"), "{err}");
    let requests = backend.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(
        (r.path.as_str(), r.model.as_str()),
        ("/api/chat", "llama3.2:3b")
    );
    assert_eq!(
        r.keep_alive,
        serde_json::json!(-1),
        "the fast tier stays resident"
    );
    assert_eq!(r.num_ctx, Some(8192));
    assert_eq!(r.max_tokens, Some(2048));
    assert!(r.text.contains("Say hello"));
    assert!(r.completed && !r.closed_early);
}

#[test]
fn json_answer_has_the_contract_fields() {
    let backend = TestBackend::start();
    let config = ollama_config(&backend);
    let (o, _) = ask(
        &config,
        &[
            "--json",
            "--tier",
            "coder",
            "write a function that adds two numbers",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(
        v["text"],
        "Hello from qwen3-coder:30b, this is a test answer."
    );
    assert_eq!(
        (v["model"].as_str(), v["tier"].as_str()),
        (Some("qwen3-coder:30b"), Some("coder"))
    );
    assert!(v["confidence"]
        .as_f64()
        .is_some_and(|c| (0.0..=1.0).contains(&c)));
    assert!(v["reasons"].as_array().is_some_and(|r| !r.is_empty()));
    assert_eq!(v["fallbacks"], serde_json::json!([]));
    assert_eq!(v["usage"]["completion_tokens"], 10);
    assert_eq!(v["usage"]["prompt_tokens"], 12);
    assert!(v["timings"]["first_token_ms"].as_f64().is_some());
    assert!(v["timings"]["total_ms"].as_f64().is_some());
    assert_eq!(v["finish"], "stop");
    assert_eq!(backend.requests()[0].keep_alive, serde_json::json!("30m"));
    assert_eq!(backend.requests()[0].num_ctx, Some(16384));
}

#[test]
fn refused_endpoint_falls_back_to_the_next_endpoint() {
    let backend = TestBackend::start();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let text = format!(
        "[endpoints.dead]\nurl = \"http://127.0.0.1:{dead_port}\"\n[endpoints.live]\nurl = \"{}\"\n[tiers.fast]\nendpoint = [\"dead\", \"live\"]\n",
        backend.url()
    );
    let config = temp_file("refused.toml", text.as_bytes());
    let (o, _) = ask(&config, &["--json", "--tier", "fast", "hello?"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["endpoint"], "live");
    let fallbacks = v["fallbacks"].as_array().expect("fallbacks");
    assert_eq!(fallbacks.len(), 1);
    assert_eq!(fallbacks[0]["endpoint"], "dead");
    assert!(
        fallbacks[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not reachable")),
        "{v}"
    );
    assert!(v["reasons"].as_array().is_some_and(|r| r
        .iter()
        .any(|x| x.as_str().is_some_and(|x| x.contains("fallback")))));
}

#[test]
fn every_endpoint_down_is_one_clear_error_and_exit_1() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = dead.local_addr().expect("addr").port();
    drop(dead);
    let config = temp_file(
        "down.toml",
        format!("[endpoints.ollama]\nurl = \"http://127.0.0.1:{port}\"\n").as_bytes(),
    );
    let (o, elapsed) = ask(&config, &["hi"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("triage: Ollama is not reachable at http://127.0.0.1:{port} — start it with `ollama serve` or set OLLAMA_HOST")),
        "{err}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "a refused connection must fail fast, took {elapsed:?}"
    );
}

#[test]
fn http_500_falls_back_to_another_tier() {
    let backend = TestBackend::start();
    backend.set_fault("llama3.2:3b", Fault::Status { code: 500 });
    let config = ollama_config(&backend);
    let (o, _) = ask(&config, &["--json", "--tier", "fast", "hi"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_ne!(v["model"], "llama3.2:3b");
    assert!(
        v["fallbacks"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP 500") && e.contains("injected failure")),
        "{v}"
    );
    let models: Vec<String> = backend.requests().into_iter().map(|r| r.model).collect();
    assert_eq!(models[0], "llama3.2:3b");
    assert_eq!(models.len(), 2);
}

#[test]
fn model_not_found_falls_back_and_says_how_to_fix_it() {
    let backend = TestBackend::start();
    backend.set_fault("qwen3-coder:30b", Fault::NotFound);
    let config = ollama_config(&backend);
    let (o, _) = ask(&config, &["--json", "--tier", "coder", "write a bash loop"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let error = v["fallbacks"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("ollama pull qwen3-coder:30b"), "{error}");
}

#[test]
fn hang_before_the_first_token_falls_back_at_the_first_token_timeout() {
    for fault in [Fault::HangBeforeFirstToken, Fault::HangBeforeHeaders] {
        let backend = TestBackend::start();
        backend.set_fault("llama3.2:3b", fault.clone());
        let config = ollama_config(&backend);
        let (o, elapsed) = ask(&config, &["--json", "--tier", "fast", "hi"]);
        assert!(o.status.success(), "{fault:?}: {}", stderr(&o));
        let v = json(&o);
        assert!(
            v["fallbacks"][0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("no first token within 2 s")),
            "{v}"
        );
        assert!(
            elapsed < Duration::from_secs(15),
            "{fault:?} took {elapsed:?}"
        );
        // The hung request's connection was closed by triage, not left open.
        assert!(
            backend.wait_for(Duration::from_secs(5), |r| r[0].closed_early
                || fault == Fault::HangBeforeHeaders),
            "{fault:?}: {:?}",
            backend.requests()
        );
    }
}

#[test]
fn a_stall_mid_stream_keeps_the_partial_text_and_fails_clearly() {
    let backend = TestBackend::start();
    backend.set_fault("llama3.2:3b", Fault::StallAfter { tokens: 3 });
    let config = ollama_config(&backend);
    let (o, elapsed) = ask(&config, &["--tier", "fast", "hi"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        "Hello from llama3.2:3b",
        "the partial answer is kept"
    );
    let err = stderr(&o);
    assert!(
        err.contains("stopped mid-answer") && err.contains("stalled"),
        "{err}"
    );
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    assert_eq!(
        backend.requests().len(),
        1,
        "no silent restart after the first token"
    );

    let (o, _) = ask(&config, &["--json", "--tier", "fast", "hi"]);
    assert_eq!(o.status.code(), Some(1));
    let v = json(&o);
    assert_eq!(v["text"], "Hello from llama3.2:3b");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("stalled")),
        "{v}"
    );
}

#[test]
fn malformed_stream_before_and_after_the_first_token() {
    let backend = TestBackend::start();
    backend.set_fault("llama3.2:3b", Fault::Malformed { after: 0 });
    let config = ollama_config(&backend);
    let (o, _) = ask(&config, &["--json", "--tier", "fast", "hi"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(json(&o)["fallbacks"][0]["error"]
        .as_str()
        .is_some_and(|e| e.contains("malformed")));

    backend.set_fault("llama3.2:3b", Fault::Malformed { after: 2 });
    let (o, _) = ask(&config, &["--tier", "fast", "hi"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o).trim(), "Hello from");
    assert!(stderr(&o).contains("malformed"), "{}", stderr(&o));
}

#[test]
fn a_reset_connection_keeps_the_partial_text() {
    let backend = TestBackend::start();
    backend.set_fault("llama3.2:3b", Fault::ResetAfter { tokens: 2 });
    let config = ollama_config(&backend);
    let (o, _) = ask(&config, &["--tier", "fast", "hi"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o).trim(), "Hello from");
    assert!(stderr(&o).contains("stopped mid-answer"), "{}", stderr(&o));
}

#[test]
fn a_slow_trickle_within_the_idle_timeout_is_not_a_stall() {
    let backend = TestBackend::start();
    backend.set_fault("llama3.2:3b", Fault::Trickle { ms: 300, tokens: 5 });
    let config = ollama_config(&backend);
    let (o, _) = ask(&config, &["--tier", "fast", "hi"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "Hello from llama3.2:3b, this");
}

#[test]
fn a_length_limited_answer_lowers_confidence_and_says_why() {
    let backend = TestBackend::start();
    let config = ollama_config(&backend);
    let (o, _) = ask(
        &config,
        &["--json", "--tier", "fast", "hi there, how are you today?"],
    );
    let normal = json(&o)["confidence"].as_f64().expect("confidence");
    backend.set_fault("llama3.2:3b", Fault::Length);
    let (o, _) = ask(
        &config,
        &["--json", "--tier", "fast", "hi there, how are you today?"],
    );
    assert!(o.status.success());
    let v = json(&o);
    assert_eq!(v["finish"], "length");
    assert!(v["confidence"].as_f64().expect("confidence") < normal);
    assert!(v["reasons"].as_array().is_some_and(|r| r
        .iter()
        .any(|x| x.as_str().is_some_and(|x| x.contains("token limit")))));
}

#[test]
fn openai_dialect_streams_sse_with_the_bearer_key() {
    let backend = TestBackend::start();
    let text = format!(
        "[endpoints.vllm]\nkind = \"openai\"\nurl = \"{}/v1\"\napi_key_env = \"TRIAGE_TEST_KEY\"\n[tiers.heavy]\nmodel = \"meta-llama/Llama-3.1-70B\"\nendpoint = \"vllm\"\n",
        backend.url()
    );
    let config = temp_file("openai.toml", text.as_bytes());
    let o = bounded(
        triage().env("TRIAGE_TEST_KEY", "sk-test-123").args([
            "--config",
            config.to_str().expect("utf-8"),
            "ask",
            "--json",
            "--tier",
            "heavy",
            "design a thing",
        ]),
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(
        v["text"],
        "Hello from meta-llama/Llama-3.1-70B, this is a test answer."
    );
    assert_eq!(v["usage"]["completion_tokens"], 10);
    let r = &backend.requests()[0];
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.authorization.as_deref(), Some("Bearer sk-test-123"));
    assert_eq!(r.max_tokens, Some(2048));

    // The key variable unset: a clear error, and the key is never needed in the config.
    let o = bounded(
        triage().env_remove("TRIAGE_TEST_KEY").args([
            "--config",
            config.to_str().expect("utf-8"),
            "ask",
            "--tier",
            "heavy",
            "x",
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("TRIAGE_TEST_KEY"), "{}", stderr(&o));

    backend.set_fault("meta-llama/Llama-3.1-70B", Fault::Malformed { after: 1 });
    let o = bounded(
        triage().env("TRIAGE_TEST_KEY", "k").args([
            "--config",
            config.to_str().expect("utf-8"),
            "ask",
            "--tier",
            "heavy",
            "x",
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o).trim(), "Hello");
    assert!(stderr(&o).contains("malformed"), "{}", stderr(&o));
}

#[test]
fn ctrl_c_cancels_and_closes_the_model_connection() {
    let backend = TestBackend::start();
    backend.set_fault(
        "llama3.2:3b",
        Fault::Trickle {
            ms: 200,
            tokens: 200,
        },
    );
    let config = ollama_config(&backend);
    let mut child = triage()
        .args([
            "--config",
            config.to_str().expect("utf-8"),
            "ask",
            "--tier",
            "fast",
            "tell me a long story",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(
        backend.wait_for(Duration::from_secs(10), |r| !r.is_empty()),
        "the request arrived"
    );
    std::thread::sleep(Duration::from_millis(600));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let o = child.wait_with_output().expect("output");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("cancelled"), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("Hello"),
        "what arrived was printed: {}",
        stdout(&o)
    );
    assert!(
        backend.wait_for(Duration::from_secs(5), |r| r[0].closed_early
            && !r[0].completed),
        "the backend saw the connection close: {:?}",
        backend.requests()
    );
}

#[test]
fn status_reports_endpoints_models_loaded_share_and_tiers() {
    let backend = TestBackend::start();
    backend.set_loaded(&[
        ("llama3.2:3b", 3000, 3000),
        ("qwen3-coder:30b", 20000, 15000),
    ]);
    backend.set_fault("llama3.1:70b", Fault::NotFound);
    let config = ollama_config(&backend);
    let o = bounded(
        triage().args([
            "--config",
            config.to_str().expect("utf-8"),
            "status",
            "--json",
        ]),
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let endpoint = &v["endpoints"][0];
    assert_eq!(endpoint["reachable"], true);
    assert_eq!(endpoint["version"], "0.0.0-test");
    let loaded = endpoint["loaded"].as_array().expect("loaded");
    assert_eq!(loaded.len(), 2);
    assert_eq!(
        loaded[1]["vram_percent"], 75,
        "qwen3-coder runs partly on the CPU"
    );
    let tiers = v["tiers"].as_array().expect("tiers");
    assert_eq!(
        (tiers[0]["loaded"].as_bool(), tiers[2]["present"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(v["gpu"]["level"].is_string());

    let o = bounded(
        triage().args(["--config", config.to_str().expect("utf-8"), "status"]),
        Duration::from_secs(30),
    );
    let text = stdout(&o);
    assert!(
        text.contains("MISSING: pull it with `ollama pull llama3.1:70b`"),
        "{text}"
    );
    assert!(text.contains("75% in VRAM"), "{text}");
}

#[test]
fn status_shows_each_models_concurrency_limit_from_ollama_num_parallel() {
    let backend = TestBackend::start();
    let config = ollama_config(&backend);
    let limits = |env: Option<&str>| {
        let mut cmd = triage();
        if let Some(n) = env {
            cmd.env("OLLAMA_NUM_PARALLEL", n);
        }
        let o = bounded(
            cmd.args([
                "--config",
                config.to_str().expect("utf-8"),
                "status",
                "--json",
            ]),
            Duration::from_secs(30),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        json(&o)["limits"].as_array().expect("limits").clone()
    };
    let default = limits(None);
    assert_eq!(default.len(), 3, "{default:?}");
    for l in &default {
        assert_eq!(
            (
                l["max_concurrent"].as_u64(),
                l["running"].as_u64(),
                l["queued"].as_u64()
            ),
            (Some(1), Some(0), Some(0)),
            "Ollama's default is one at a time: {l}"
        );
    }
    let raised = limits(Some("3"));
    assert!(
        raised.iter().all(|l| l["max_concurrent"] == 3),
        "{raised:?}"
    );
    let o = bounded(
        triage().env("OLLAMA_NUM_PARALLEL", "3").args([
            "--config",
            config.to_str().expect("utf-8"),
            "status",
        ]),
        Duration::from_secs(30),
    );
    let text = stdout(&o);
    assert!(
        text.contains("llama3.2:3b on ollama · 0 running, 0 queued · max 3 at once"),
        "{text}"
    );
}

#[test]
fn statistics_accumulate_across_runs() {
    let backend = TestBackend::start();
    let config = ollama_config(&backend);
    let state = tempfile::tempdir().expect("tempdir");
    for _ in 0..2 {
        let o = bounded(
            triage().env("TRIAGE_STATE_DIR", state.path()).args([
                "--config",
                config.to_str().expect("utf-8"),
                "ask",
                "--tier",
                "fast",
                "hi",
            ]),
            Duration::from_secs(30),
        );
        assert!(o.status.success());
    }
    let o = bounded(
        triage().env("TRIAGE_STATE_DIR", state.path()).args([
            "--config",
            config.to_str().expect("utf-8"),
            "status",
            "--json",
        ]),
        Duration::from_secs(30),
    );
    let v = json(&o);
    let stats = v["stats"].as_array().expect("stats");
    let fast = stats
        .iter()
        .find(|s| s["model"] == "llama3.2:3b")
        .expect("fast model stats");
    assert_eq!(fast["requests"], 2);
    assert!(fast["first_token_p50_ms"].is_number());
}

#[test]
fn a_corrupt_state_file_is_reported_and_replaced_never_fatal() {
    let backend = TestBackend::start();
    let config = ollama_config(&backend);
    let state = tempfile::tempdir().expect("tempdir");
    let file = state.path().join("stats.json");
    // What a crash in the middle of a naive write leaves.
    std::fs::write(
        &file,
        br#"{"llama3.2:3b": {"requests": 4, "errors": 0, "first_token_ms": [12, 3"#,
    )
    .expect("write");
    let o = bounded(
        triage().env("TRIAGE_STATE_DIR", state.path()).args([
            "--config",
            config.to_str().expect("utf-8"),
            "ask",
            "--tier",
            "fast",
            "hi",
        ]),
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("statistics file")
            && err.contains("is corrupt")
            && err.contains("stats.json.corrupt"),
        "{err}"
    );
    assert!(state.path().join("stats.json.corrupt").is_file());
    // Replaced by a whole file with this run's statistics; no warning the next time.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("replaced")).expect("whole JSON");
    assert_eq!(saved["llama3.2:3b"]["requests"], 1);
    let o = bounded(
        triage().env("TRIAGE_STATE_DIR", state.path()).args([
            "--config",
            config.to_str().expect("utf-8"),
            "status",
        ]),
        Duration::from_secs(30),
    );
    assert!(o.status.success());
    assert!(!stderr(&o).contains("corrupt"), "{}", stderr(&o));
}
