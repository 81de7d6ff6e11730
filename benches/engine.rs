//! Latency triage adds to the first token, against calling the backend directly, and streaming
//! throughput — both on loopback against the test backend (`tests/support/backend.rs`), so the
//! figures measure triage, not a model.
//!
//! Run: `cargo bench --bench engine`

#[path = "../tests/support/backend.rs"]
mod backend;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

use backend::{Fault, TestBackend};
use triage::analyze::Analyzer;
use triage::config::{self, Tier};
use triage::engine::{Engine, Progress, Request, Stats};
use triage::route::Force;
use triage::vram::Snapshot;

/// Time to the first chunk with a plain reqwest call, the way a client without triage would.
async fn direct_first_token(http: &reqwest::Client, url: &str, model: &str) -> (Duration, usize) {
    let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": true});
    let started = Instant::now();
    let mut response = http.post(url).json(&body).send().await.expect("send");
    let mut first = None;
    let mut lines = 0;
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        if first.is_none() {
            first = Some(started.elapsed());
        }
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    (first.unwrap_or_default(), lines)
}

async fn triage_first_token(engine: &Engine, request: &Request) -> (Duration, usize) {
    let started = Instant::now();
    let mut first = None;
    let mut chunks = 0;
    let mut progress = |p: Progress<'_>| {
        if let Progress::Delta(_) = p {
            first.get_or_insert_with(|| started.elapsed());
            chunks += 1;
        }
    };
    engine
        .run(request, &Snapshot::no_gpu(), &mut progress)
        .await
        .expect("answer");
    (first.unwrap_or_default(), chunks)
}

fn bench(c: &mut Criterion) {
    let server = TestBackend::start();
    let long = "bench-long:1b";
    server.set_fault(
        long,
        Fault::Trickle {
            ms: 0,
            tokens: 2000,
        },
    );
    let text = format!(
        "[endpoints.ollama]\nurl = \"{}\"\n[tiers.fast]\nmodel = \"llama3.2:3b\"\n",
        server.url()
    );
    let config = config::from_toml(&text, "bench", None).expect("config");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let engine = Engine::new(
        config,
        triage::backend::Client::new(Duration::from_secs(2)),
        Analyzer::builtin().expect("model"),
        Stats::default(),
    );
    // The direct client gets the same socket options triage's own client uses.
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .no_proxy()
        .build()
        .expect("client");
    let chat_url = format!("{}/api/chat", server.url());
    let request = |model: &str| Request {
        prompt: "hi".into(),
        force: Force {
            tier: Some(Tier::Fast),
            model: Some(model.to_string()),
        },
        ..Request::default()
    };

    let mut group = c.benchmark_group("first token (loopback test backend)");
    group.bench_function("direct HTTP call", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += direct_first_token(&http, &chat_url, "llama3.2:3b").await.0;
                }
                total
            })
        })
    });
    let short = request("llama3.2:3b");
    group.bench_function("through triage (analyze, route, prompt, stream)", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += triage_first_token(&engine, &short).await.0;
                }
                total
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("stream of 2000 chunks");
    group.sample_size(20);
    group.throughput(criterion::Throughput::Elements(2000));
    group.bench_function("direct HTTP call", |b| {
        b.to_async_like(&runtime, || direct_first_token(&http, &chat_url, long))
    });
    let long_request = request(long);
    group.bench_function("through triage", |b| {
        b.to_async_like(&runtime, || triage_first_token(&engine, &long_request))
    });
    group.finish();
}

/// `iter` for an async body on our runtime, without criterion's async feature.
trait AsyncLike {
    fn to_async_like<F, Fut, T>(&mut self, runtime: &tokio::runtime::Runtime, body: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = T>;
}

impl AsyncLike for criterion::Bencher<'_> {
    fn to_async_like<F, Fut, T>(&mut self, runtime: &tokio::runtime::Runtime, mut body: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        self.iter(|| runtime.block_on(body()));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
