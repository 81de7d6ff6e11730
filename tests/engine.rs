//! The engine and backend clients in-process against the loopback test backend: cancellation by
//! drop, fill-in-the-middle, model metadata, and the cold-load time learned from Ollama.

mod support;

use std::time::Duration;

use serde_json::json;

use support::backend::{Fault, TestBackend};
use triage::analyze::Analyzer;
use triage::backend::{Client, Event, FimRequest, Target};
use triage::config::{self, Tier};
use triage::engine::{Engine, Progress, Request, Stats};
use triage::route::Force;
use triage::vram::Snapshot;

fn config_for(backend: &TestBackend, extra: &str) -> config::Config {
    let text = format!("[endpoints.ollama]\nurl = \"{}\"\n{extra}", backend.url());
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

fn request(prompt: &str, tier: Tier) -> Request {
    Request {
        prompt: prompt.to_string(),
        force: Force {
            tier: Some(tier),
            model: None,
        },
        ..Request::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_run_closes_the_connection() {
    let backend = TestBackend::start();
    backend.set_fault(
        "llama3.2:3b",
        Fault::Trickle {
            ms: 100,
            tokens: 500,
        },
    );
    let engine = engine(config_for(&backend, ""));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let run = async {
        let mut progress = |p: Progress<'_>| {
            if let Progress::Delta(d) = p {
                let _ = tx.send(d.to_string());
            }
        };
        engine
            .run(
                &request("story", Tier::Fast),
                &Snapshot::no_gpu(),
                &mut progress,
            )
            .await
    };
    tokio::select! {
        _ = run => panic!("the run should not finish: 500 tokens at 100 ms"),
        first = rx.recv() => assert_eq!(first.as_deref(), Some("Hello")),
    }
    // The run future is dropped here; the backend must notice.
    let closed = tokio::task::spawn_blocking(move || {
        backend.wait_for(Duration::from_secs(5), |r| {
            r.len() == 1 && r[0].closed_early
        })
    })
    .await
    .expect("join");
    assert!(closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_in_the_middle_sends_prefix_and_suffix() {
    let backend = TestBackend::start();
    let config = config_for(&backend, "");
    let client = Client::new(Duration::from_secs(2));
    let target = Target {
        name: "ollama",
        endpoint: &config.endpoints["ollama"],
    };
    let mut stream = client
        .fill_in_middle(
            target,
            &FimRequest {
                model: "llama3.2:3b".into(),
                prefix: "fn add(a: i32, b: i32) -> i32 {\n    ".into(),
                suffix: "\n}\n".into(),
                keep_alive: Some("-1".into()),
                num_ctx: Some(4096),
                max_tokens: Some(64),
            },
        )
        .await
        .expect("stream");
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event.expect("valid event") {
            Event::Delta(d) => text.push_str(&d),
            Event::Done(_) => break,
        }
    }
    assert!(text.starts_with("Hello"));
    let r = &backend.requests()[0];
    assert_eq!(r.path, "/api/generate");
    assert!(r.text.contains("fn add") && r.text.contains("\n}\n"));
    assert_eq!(r.num_ctx, Some(4096));

    let info = client.show(target, "llama3.2:3b").await.expect("show");
    assert_eq!(info.context_length, Some(131_072));
    assert!(info.capabilities.iter().any(|c| c == "insert"));
    assert!(client.show(target, "llama3.2:3b").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learned_cold_load_extends_the_first_token_timeout() {
    let backend = TestBackend::start();
    // The model takes 1.2 s to "load"; the configured first-token timeout is 1 s.
    backend.set_fault("llama3.2:3b", Fault::ColdLoad { ms: 1200 });
    let config = config_for(&backend, "[tiers.fast.timeouts]\nfirst_token_s = 1\n[tiers.coder]\nenabled = false\n[tiers.heavy]\nenabled = false\n");
    let engine = engine(config);
    let mut ignore = |_: Progress<'_>| {};
    let first = engine
        .run(&request("hi", Tier::Fast), &Snapshot::no_gpu(), &mut ignore)
        .await;
    assert!(
        first.is_err(),
        "1.2 s load with a 1 s timeout fails the first time"
    );

    // Once a load of 1.2 s has been seen, a cold model gets 1.5 × that + 5 s.
    engine.stats.success(
        "llama3.2:3b",
        Duration::from_millis(1300),
        10,
        Duration::from_secs(1),
        Some(Duration::from_millis(1200)),
    );
    let second = engine
        .run(&request("hi", Tier::Fast), &Snapshot::no_gpu(), &mut ignore)
        .await;
    let answer = second.expect("the learned load time is used");
    assert_eq!(answer.timings.load_ms, Some(1200.0));
    assert!(answer.timings.first_token_ms.is_some_and(|t| t >= 1200.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_grows_for_the_model_the_user_works_with() {
    let backend = TestBackend::start();
    let engine = engine(config_for(&backend, ""));
    let mut ignore = |_: Progress<'_>| {};
    let coder_task = "write a python function that parses ISO dates";
    for _ in 0..3 {
        engine
            .run(
                &request(coder_task, Tier::Coder),
                &Snapshot::no_gpu(),
                &mut ignore,
            )
            .await
            .expect("answer");
    }
    let sent: Vec<serde_json::Value> = backend
        .requests()
        .iter()
        .map(|r| r.keep_alive.clone())
        .collect();
    // The tier's 30 minutes twice, then the working set's 2 hours.
    assert_eq!(sent, [json!("30m"), json!("30m"), json!("2h")]);
    // With the latency rule off, the tier's keep_alive is sent as configured.
    let plain = engine_with(&backend, "[latency]\nenabled = false\n");
    for _ in 0..3 {
        plain
            .run(
                &request(coder_task, Tier::Coder),
                &Snapshot::no_gpu(),
                &mut ignore,
            )
            .await
            .expect("answer");
    }
    assert_eq!(backend.requests()[5].keep_alive, json!("30m"));
}

fn engine_with(backend: &TestBackend, extra: &str) -> Engine {
    engine(config_for(backend, extra))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_confidence_answer_offers_or_runs_the_next_tier() {
    let backend = TestBackend::start();
    // Every fast answer counts as low confidence here.
    let offer = engine_with(
        &backend,
        "[tiers.fast]\ncascade = \"offer\"\ncascade_below = 1.0\n",
    );
    let mut ignore = |_: Progress<'_>| {};
    let hi = Request {
        prompt: "hi".to_string(),
        ..Request::default()
    };
    let answer = offer
        .run(&hi, &Snapshot::no_gpu(), &mut ignore)
        .await
        .expect("answer");
    assert_eq!(answer.tier, Tier::Fast);
    let cascade = answer.cascade.as_ref().expect("offered");
    assert_eq!(
        (cascade.tier, cascade.second_answer_at),
        (Tier::Coder, None)
    );
    assert!(
        answer.reasons.iter().any(|r| r.contains("is offered")),
        "{:?}",
        answer.reasons
    );
    assert_eq!(backend.requests().len(), 1, "offering asks nothing more");

    let run = engine_with(
        &backend,
        "[tiers.fast]\ncascade = \"run\"\ncascade_below = 1.0\n",
    );
    let mut deltas = String::new();
    let mut collect = |p: Progress<'_>| {
        if let Progress::Delta(d) = p {
            deltas.push_str(d);
        }
    };
    let answer = run
        .run(&hi, &Snapshot::no_gpu(), &mut collect)
        .await
        .expect("answer");
    assert_eq!(
        (answer.tier, answer.model.as_str()),
        (Tier::Coder, "qwen3-coder:30b")
    );
    let at = answer
        .cascade
        .as_ref()
        .and_then(|c| c.second_answer_at)
        .expect("ran");
    assert!(
        answer.text.starts_with("Hello from llama3.2:3b"),
        "{}",
        answer.text
    );
    assert!(
        answer.text[at..].starts_with("Hello from qwen3-coder:30b"),
        "{}",
        answer.text
    );
    assert_eq!(deltas, answer.text, "what streamed is the whole answer");
    // A request may turn the cascade off, and a forced tier never cascades.
    let off = Request {
        cascade: Some(triage::config::CascadeMode::Off),
        ..hi.clone()
    };
    let answer = run
        .run(&off, &Snapshot::no_gpu(), &mut ignore)
        .await
        .expect("answer");
    assert!(answer.cascade.is_none());
    let answer = run
        .run(&request("hi", Tier::Fast), &Snapshot::no_gpu(), &mut ignore)
        .await
        .expect("answer");
    assert!(answer.cascade.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_needs_a_gpu_reading_and_skips_a_loaded_model() {
    let backend = TestBackend::start();
    let engine = engine(config_for(&backend, ""));
    let chat = triage::engine::Intent::default();
    let outcome = engine.prewarm(&chat, &Snapshot::no_gpu()).await;
    assert!(
        matches!(&outcome, triage::engine::Prewarm::Skipped { reason } if reason.contains("no GPU reading")),
        "{outcome:?}"
    );
    let snapshot = Snapshot {
        gpu: Some(triage::vram::GpuMemory {
            total_mb: 49_152,
            free_mb: 31_152,
        }),
        loaded: vec![triage::vram::LoadedModel {
            name: "qwen3-coder:30b".into(),
            size_mb: 18_000,
            vram_mb: 18_000,
            ..Default::default()
        }],
        ..Snapshot::default()
    };
    let outcome = engine.prewarm(&chat, &snapshot).await;
    assert!(
        matches!(&outcome, triage::engine::Prewarm::Skipped { reason } if reason.contains("already loaded")),
        "{outcome:?}"
    );
    assert!(backend.requests().is_empty());
    // Not loaded and it fits: loaded by an empty request with a short keep_alive.
    let outcome = engine
        .prewarm(
            &chat,
            &Snapshot {
                loaded: vec![],
                ..snapshot
            },
        )
        .await;
    assert_eq!(
        outcome,
        triage::engine::Prewarm::Loaded {
            tier: Tier::Coder,
            model: "qwen3-coder:30b".into()
        }
    );
    let r = &backend.requests()[0];
    assert!(r.preload && r.completed);
    assert_eq!(r.keep_alive, json!("5m"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_limited_per_model_and_a_full_queue_is_busy() {
    let backend = TestBackend::start();
    backend.set_fault("llama3.2:3b", Fault::Trickle { ms: 20, tokens: 5 });
    let config = config_for(
        &backend,
        "max_concurrent = 2\n[tiers.coder]\nenabled = false\n[tiers.heavy]\nenabled = false\n\
         [limits]\nqueue_len = 3\nmax_wait_s = 30\n",
    );
    let engine = std::sync::Arc::new(engine(config));
    let spawn_run = || {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .run(
                    &request("hello", Tier::Fast),
                    &Snapshot::no_gpu(),
                    &mut |_| {},
                )
                .await
        })
    };
    // Five at once: two run, three wait their turn; all are answered.
    let runs = (0..5).map(|_| spawn_run());
    for result in futures::future::join_all(runs).await {
        let answer = result.expect("join").expect("answered");
        assert_eq!(answer.text, "Hello from llama3.2:3b, this");
    }
    assert_eq!(
        backend.load("llama3.2:3b"),
        (0, 2),
        "never more than two at once"
    );

    // Two running and three queued: a sixth is refused at once, naming the limit.
    backend.set_fault(
        "llama3.2:3b",
        Fault::Trickle {
            ms: 100,
            tokens: 50,
        },
    );
    // The two that run first, then the three that queue behind them: spawned apart, so the
    // test knows which is which when it cancels them.
    let wait_for = |running: usize, queued: usize| {
        let engine = engine.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                let load = &engine.loads()[0];
                if (load.running, load.queued) == (running, queued) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let running: Vec<_> = (0..2).map(|_| spawn_run()).collect();
    wait_for(2, 0).await;
    let queued: Vec<_> = (0..3).map(|_| spawn_run()).collect();
    wait_for(2, 3).await;
    let load = engine
        .loads()
        .into_iter()
        .find(|l| l.model == "llama3.2:3b")
        .expect("the fast model's slot");
    assert_eq!((load.running, load.queued, load.max_concurrent), (2, 3, 2));
    let started = std::time::Instant::now();
    let busy = engine
        .run(
            &request("hello", Tier::Fast),
            &Snapshot::no_gpu(),
            &mut |_| {},
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    match busy {
        Err(triage::engine::Error::Busy {
            message,
            retry_after_s,
        }) => {
            assert!(message.contains("queue is full"), "{message}");
            assert_eq!(retry_after_s, Some(30));
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    // Cancelling the queued ones takes them out of the queue at once; nothing reached the model.
    // (They go first: a cancelled running request frees its place for the next in the queue.)
    for task in &queued {
        task.abort();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let load = engine.loads()[0].clone();
    assert_eq!((load.running, load.queued), (2, 0));
    for task in &running {
        task.abort();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let load = engine.loads()[0].clone();
    assert_eq!((load.running, load.queued), (0, 0));
    let asked = backend
        .requests()
        .iter()
        .filter(|r| r.text.contains("hello"))
        .count();
    assert_eq!(
        asked,
        5 + 2,
        "the queued requests never reached the backend"
    );
}
