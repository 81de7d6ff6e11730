//! The HTTP gateway, measured through the real binary (`triage gateway`, release build) against
//! the loopback test backend (`tests/support/backend.rs`):
//!
//! 1. **Latency added to the first token**: a streaming request straight to the test backend
//!    ("direct") and the same request through the gateway with model `auto` (analysis,
//!    routing, the engine's stream, re-encoding), alternating, back to back; medians and p90 of
//!    each, in both dialects.
//! 2. **200 concurrent streams**, each to its own model (so a mixed-up answer would show):
//!    every answer checked word for word, the gateway's RSS sampled throughout; then the same
//!    with readers that stop for a second after the first chunk while the backend sends at full
//!    speed (backpressure: without it the gateway would hold every unread answer).
//!
//! Run: `cargo bench --bench gateway` (figures in BENCHMARKS.md).

#[path = "../tests/support/backend.rs"]
mod backend;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend::{Fault, TestBackend};

struct Gateway {
    child: Child,
    url: String,
}

impl Gateway {
    fn start(config: &std::path::Path, state: &std::path::Path) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_triage"))
            .args(["gateway", "--listen", "127.0.0.1:0"])
            .env("TRIAGE_CONFIG", config)
            .env("TRIAGE_STATE_DIR", state)
            .env_remove("RUST_LOG")
            .env_remove("OLLAMA_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the gateway");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the gateway's first line");
        let url = line
            .trim()
            .strip_prefix("triage gateway listening on ")
            .expect("listening line")
            .to_string();
        Gateway { child, url }
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Time to the first body chunk of a streaming POST, then the rest is read.
async fn first_chunk(http: &reqwest::Client, url: &str, body: &serde_json::Value) -> Duration {
    let started = Instant::now();
    let mut response = http.post(url).json(body).send().await.expect("send");
    let mut first = None;
    while let Some(_chunk) = response.chunk().await.expect("chunk") {
        first.get_or_insert_with(|| started.elapsed());
    }
    first.unwrap_or_default()
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i].as_secs_f64() * 1000.0
}

async fn latency(http: &reqwest::Client, backend: &str, gateway: &str) {
    let rounds = 400;
    let cases = [
        (
            "Ollama /api/chat",
            format!("{backend}/api/chat"),
            serde_json::json!({"model": "llama3.2:3b", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
            format!("{gateway}/api/chat"),
            serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "OpenAI /v1/chat/completions",
            format!("{backend}/v1/chat/completions"),
            serde_json::json!({"model": "llama3.2:3b", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
            format!("{gateway}/v1/chat/completions"),
            serde_json::json!({"model": "auto", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ];
    println!("first token, {rounds} alternating rounds after 50 warm-up rounds (ms)");
    println!("| dialect | direct p50 | gateway p50 | added p50 | direct p90 | gateway p90 |");
    println!("|---|---|---|---|---|---|");
    for (name, direct_url, direct_body, gw_url, gw_body) in &cases {
        for _ in 0..50 {
            first_chunk(http, direct_url, direct_body).await;
            first_chunk(http, gw_url, gw_body).await;
        }
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            direct.push(first_chunk(http, direct_url, direct_body).await);
            through.push(first_chunk(http, gw_url, gw_body).await);
        }
        let (d50, g50) = (percentile(&mut direct, 0.5), percentile(&mut through, 0.5));
        let (d90, g90) = (percentile(&mut direct, 0.9), percentile(&mut through, 0.9));
        println!(
            "| {name} | {d50:.3} | {g50:.3} | **{:+.3}** | {d90:.3} | {g90:.3} |",
            g50 - d50
        );
    }
}

/// `Hello from MODEL, this is a test answer.` repeated, as the test backend streams it.
fn expected(model: &str, tokens: usize) -> String {
    let base = [
        "Hello",
        " from",
        &format!(" {model}"),
        ",",
        " this",
        " is",
        " a",
        " test",
        " answer",
        ".",
    ];
    (0..tokens).map(|i| base[i % base.len()]).collect()
}

/// Streams one answer, optionally pausing after the first chunk; returns the text.
async fn stream_text(
    http: &reqwest::Client,
    gateway: &str,
    model: &str,
    pause: Duration,
) -> Result<String, String> {
    let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let mut response = http
        .post(format!("{gateway}/api/chat"))
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut bytes = Vec::new();
    let mut paused = false;
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        bytes.extend_from_slice(&chunk);
        if !paused && !pause.is_zero() {
            paused = true;
            tokio::time::sleep(pause).await;
        }
    }
    let mut text = String::new();
    let mut done = false;
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        if let Some(e) = v.get("error") {
            return Err(e.to_string());
        }
        text.push_str(v["message"]["content"].as_str().unwrap_or(""));
        done |= v["done"] == true;
    }
    if done {
        Ok(text)
    } else {
        Err("no final object".to_string())
    }
}

async fn concurrent(
    http: &reqwest::Client,
    gw: &Gateway,
    label: &str,
    tokens: usize,
    pause: Duration,
) {
    let streams = 200;
    let before = gw.rss_kb();
    let peak = Arc::new(AtomicU64::new(before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        let pid = gw.child.id();
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kb) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    peak.fetch_max(kb, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|i| {
            let http = http.clone();
            let url = gw.url.clone();
            tokio::spawn(async move {
                let model = format!("c{i}:1b");
                (
                    stream_text(&http, &url, &model, pause).await,
                    expected(&model, tokens),
                )
            })
        })
        .collect();
    let (mut ok, mut wrong, mut failed) = (0, 0, Vec::new());
    for t in tasks {
        match t.await.expect("task") {
            (Ok(text), want) if text == want => ok += 1,
            (Ok(_), _) => wrong += 1,
            (Err(e), _) => failed.push(e),
        }
    }
    let wall = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = gw.rss_kb();
    println!(
        "| {label} | {ok}/{streams} | {wrong} | {} | {:.2} s | {:.1} MB | {:.1} MB | {:.1} MB |",
        failed.len(),
        wall.as_secs_f64(),
        before as f64 / 1024.0,
        peak.load(Ordering::Relaxed) as f64 / 1024.0,
        after as f64 / 1024.0
    );
    if let Some(e) = failed.first() {
        println!("  first failure: {e}");
    }
}

fn main() {
    let server = TestBackend::start();
    server.set_fault("llama3.2:3b", Fault::Ok);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[endpoints.ollama]\nurl = \"{}\"\nmax_concurrent = 4\n",
            server.url()
        ),
    )
    .expect("config");
    let gateway = Gateway::start(&config, &dir.path().join("state"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .no_proxy()
        .pool_max_idle_per_host(256)
        .build()
        .expect("client");
    runtime.block_on(latency(&http, &server.url(), &gateway.url));

    println!();
    println!("200 concurrent streams through one gateway, each to its own model");
    println!(
        "| run | answers exact | mixed up | failed | wall | RSS before | RSS peak | RSS after |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for i in 0..200 {
        server.set_fault(&format!("c{i}:1b"), Fault::Trickle { ms: 20, tokens: 50 });
    }
    runtime.block_on(async {
        concurrent(
            &http,
            &gateway,
            "50 tokens at 20 ms each",
            50,
            Duration::ZERO,
        )
        .await;
        concurrent(&http, &gateway, "again (memory back?)", 50, Duration::ZERO).await;
    });
    // Unread answers of 2,000, 6,000 and 12,000 tokens (≈ 52, 156 and 312 MB in all): what the gateway holds
    // must not grow with them.
    for tokens in [2000, 6000, 12000] {
        for i in 0..200 {
            server.set_fault(&format!("c{i}:1b"), Fault::Trickle { ms: 0, tokens });
        }
        runtime.block_on(concurrent(
            &http,
            &gateway,
            &format!("{tokens} tokens at full speed, readers pause 1 s"),
            tokens,
            Duration::from_secs(1),
        ));
    }
}
