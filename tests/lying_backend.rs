//! A lying backend (negative sizes, more in VRAM than the model's size, absurd context lengths
//! and load times, lines and bodies of 100 MB, answers without end, wrong content types) gets a
//! clear error or a clamped value from the backend clients and the engine: never a panic,
//! never unbounded memory, never an unbounded wait.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::backend::{Fault, Lie, TestBackend};
use support::{json, stderr, triage};
use triage::analyze::Analyzer;
use triage::backend::{Client, Target};
use triage::config::{self, Tier};
use triage::engine::{Engine, Error, Request, Stats};
use triage::route::Force;
use triage::vram::Snapshot;

fn config_for(backend: &TestBackend, extra: &str) -> config::Config {
    let text = format!(
        "[endpoints.ollama]\nurl = \"{}\"\n[endpoints.oai]\nkind = \"openai\"\nurl = \"{}/v1\"\n\
         [tiers.coder]\nenabled = false\n[tiers.heavy]\nenabled = false\n\
         [tiers.fast.timeouts]\nfirst_token_s = 5\nidle_s = 5\ntotal_s = 30\n{extra}",
        backend.url(),
        backend.url()
    );
    config::from_toml(&text, "test", None).expect("valid config")
}

fn engine(config: config::Config) -> Engine {
    Engine::new(
        config,
        Client::new(Duration::from_secs(2)),
        Analyzer::builtin().expect("model"),
        Stats::default(),
    )
}

fn fast() -> Request {
    Request {
        prompt: "hello".to_string(),
        force: Force {
            tier: Some(Tier::Fast),
            model: None,
        },
        ..Request::default()
    }
}

/// Resident memory of this test process, in KB.
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_metadata_is_clamped_or_refused() {
    let backend = TestBackend::start();
    let config = config_for(&backend, "");
    let client = Client::new(Duration::from_secs(2));
    let ollama = Target {
        name: "ollama",
        endpoint: &config.endpoints["ollama"],
    };
    let oai = Target {
        name: "oai",
        endpoint: &config.endpoints["oai"],
    };

    backend.lie(
        "/api/ps",
        Lie::Json {
            body: json!({"models": [
                {"name": "negative", "size": -3_000_000_000i64, "size_vram": -1},
                {"name": "more-in-vram", "size": 1_073_741_824u64, "size_vram": 9_999_999_999_999u64},
                {"name": "floats", "size": 2.5e9, "size_vram": 1e300},
                {"name": "strings", "size": "big", "size_vram": null, "expires_at": 42},
                {"size": 1},
                "not an object",
            ]}),
        },
    );
    let loaded = client.loaded(ollama).await.expect("parsed");
    let by_name = |n: &str| loaded.iter().find(|l| l.name == n).expect(n).clone();
    assert_eq!(
        (by_name("negative").size_mb, by_name("negative").vram_mb),
        (0, 0)
    );
    let more = by_name("more-in-vram");
    assert_eq!(
        (more.size_mb, more.vram_mb),
        (1024, 1024),
        "clamped to its size"
    );
    let floats = by_name("floats");
    assert_eq!(floats.size_mb, 2384);
    assert_eq!(floats.vram_mb, floats.size_mb);
    assert_eq!(by_name("strings").expires_at, None);
    assert_eq!(loaded.len(), 4, "entries without a name are skipped");

    backend.lie(
        "/api/show",
        Lie::Json {
            body: json!({"model_info": {"general.architecture": "llama", "llama.context_length": u64::MAX}, "capabilities": "insert"}),
        },
    );
    let info = client.show(ollama, "m").await.expect("parsed");
    assert_eq!(info.context_length, Some(1 << 24), "clamped to 16M tokens");
    assert!(info.capabilities.is_empty());
    backend.lie(
        "/api/show",
        Lie::Json {
            body: json!({"model_info": {"general.architecture": "llama", "llama.context_length": -1}}),
        },
    );
    assert_eq!(
        client
            .show(ollama, "m")
            .await
            .expect("parsed")
            .context_length,
        None
    );

    // Wrong content types and bodies that are not JSON: a clear error naming the endpoint.
    backend.lie(
        "/v1/models",
        Lie::Bytes {
            len: 300,
            content_type: "text/html".into(),
        },
    );
    let e = client.models(oai).await.expect_err("not JSON").to_string();
    assert!(
        e.contains("`oai` sent a malformed stream") && e.contains("not JSON"),
        "{e}"
    );

    // 100 MB bodies: refused after 8 MB, without reading (or keeping) the rest.
    for path in ["/api/tags", "/api/ps", "/v1/models", "/api/show"] {
        backend.lie(
            path,
            Lie::Bytes {
                len: 100 * 1024 * 1024,
                content_type: "application/json".into(),
            },
        );
    }
    let before = rss_kb();
    let started = Instant::now();
    let errors = [
        client
            .models(ollama)
            .await
            .expect_err("too big")
            .to_string(),
        client
            .loaded(ollama)
            .await
            .expect_err("too big")
            .to_string(),
        client.models(oai).await.expect_err("too big").to_string(),
        client
            .show(ollama, "m")
            .await
            .expect_err("too big")
            .to_string(),
    ];
    for e in &errors {
        assert!(e.contains("larger than 8 MB"), "{e}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        rss_kb() < before + 64 * 1024,
        "memory stayed bounded: {} KB → {} KB",
        before,
        rss_kb()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_streams_end_in_clear_errors_with_bounded_memory() {
    let backend = TestBackend::start();
    let engine = engine(config_for(&backend, ""));
    let (request, snapshot) = (fast(), Snapshot::no_gpu());
    let run = |fault: Fault| {
        backend.set_fault("llama3.2:3b", fault);
        async { engine.run(&request, &snapshot, &mut |_| {}).await }
    };
    let failed = |r: Result<triage::engine::Answer, Error>| match r {
        Err(Error::Failed { message, .. }) => message,
        other => panic!("expected a failure, got {other:?}"),
    };

    // A line of 100 MB: refused at 4 MB.
    let before = rss_kb();
    let started = Instant::now();
    let message = failed(run(Fault::HugeLine { mb: 100 }).await);
    assert!(message.contains("a line longer than 4 MB"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(20));
    // An answer without end: cut at 4 MB, the partial text kept.
    backend.set_fault("llama3.2:3b", Fault::Flood);
    match engine.run(&fast(), &Snapshot::no_gpu(), &mut |_| {}).await {
        Err(Error::Failed {
            message,
            partial: Some(partial),
            ..
        }) => {
            assert!(message.contains("grew past 4 MB"), "{message}");
            assert!(partial.text.len() <= triage::engine::MAX_ANSWER_BYTES);
            assert!(partial.text.starts_with("yyyy"));
        }
        other => panic!("expected a cut answer, got {other:?}"),
    }
    assert!(
        rss_kb() < before + 96 * 1024,
        "memory stayed bounded: {before} KB → {} KB",
        rss_kb()
    );
    // HTML instead of a stream.
    let message = failed(run(Fault::Html).await);
    assert!(
        message.contains("malformed stream") && message.contains("not a JSON line"),
        "{message}"
    );

    // Absurd counts and load times in the final chunk: an answer, with the load time clamped so
    // that a later cold start does not wait for ever.
    backend.set_fault("llama3.2:3b", Fault::LyingDone);
    let answer = engine
        .run(&fast(), &Snapshot::no_gpu(), &mut |_| {})
        .await
        .expect("answered");
    assert_eq!(
        answer.text,
        "Hello from llama3.2:3b, this is a test answer."
    );
    assert_eq!(
        engine.stats.load_time("llama3.2:3b"),
        Some(triage::engine::stats::MAX_LOAD)
    );
}

#[test]
fn status_shows_a_lying_ps_clamped() {
    let backend = TestBackend::start();
    backend.lie(
        "/api/ps",
        Lie::Json {
            body: json!({"models": [{"name": "llama3.2:3b", "size": 1_073_741_824u64, "size_vram": 5_000_000_000_000u64}]}),
        },
    );
    let config = support::temp_file(
        "lying.toml",
        format!("[endpoints.ollama]\nurl = \"{}\"\n", backend.url()).as_bytes(),
    );
    let o = triage()
        .args([
            "--config",
            config.to_str().expect("utf-8"),
            "status",
            "--json",
        ])
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let loaded = &v["endpoints"][0]["loaded"][0];
    assert_eq!(
        (
            loaded["size_mb"].as_u64(),
            loaded["vram_mb"].as_u64(),
            loaded["vram_percent"].as_u64()
        ),
        (Some(1024), Some(1024), Some(100))
    );
}
