//! Analysis + routing latency (criterion). Targets from the routing issue: ≤ 50 µs median for a
//! 1 KB prompt, ≤ 2 ms for a 100 KB selection. The tokenizer is built before measuring, as it is
//! in the running program (in the background, off the request path); its build time is measured
//! on its own.
//!
//! Run: `cargo bench --bench route`

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

use triage::analyze::{tokens, Analyzer, Query};
use triage::config;
use triage::route::{route, Force};
use triage::vram::{GpuMemory, Snapshot};

fn prompt_1kb() -> String {
    let base = "Our checkout service times out under load since we moved sessions to Redis. \
                The p99 went from 120 ms to 2 s, CPU is fine, and the Redis cluster shows no \
                slow log entries. We run 12 pods behind an nginx ingress with keep-alive on. ";
    let mut p = String::new();
    while p.len() < 1024 {
        p.push_str(base);
    }
    p.truncate(1024);
    p
}

fn selection_100kb() -> String {
    let function = "fn parse_line(line: &str) -> Option<(String, u64)> {\n    let (key, value) = line.split_once('=')?;\n    let value = value.trim().parse().ok()?;\n    Some((key.trim().to_string(), value))\n}\n\n";
    let mut s = String::new();
    while s.len() < 100 * 1024 {
        s.push_str(function);
    }
    s
}

fn bench(c: &mut Criterion) {
    assert!(tokens::wait_ready(), "tokenizer builds");
    let analyzer = Analyzer::builtin().expect("built-in model");
    let config = config::defaults(None).expect("defaults");
    let snapshot = Snapshot {
        gpu: Some(GpuMemory {
            total_mb: 81_920,
            free_mb: 30_000,
        }),
        ..Snapshot::default()
    };
    let force = Force::default();

    let prompt = prompt_1kb();
    c.bench_function("analyze+route 1 KB prompt", |b| {
        b.iter(|| {
            let q = Query {
                prompt: black_box(&prompt),
                ..Query::default()
            };
            let a = analyzer.analyze(&q).expect("valid");
            black_box(route(&config, &snapshot, &a, &force).expect("routable"))
        })
    });

    let selection = selection_100kb();
    c.bench_function("analyze+route 100 KB selection", |b| {
        b.iter(|| {
            let q = Query {
                prompt: "review this module for design problems",
                selection: Some(black_box(&selection)),
                language_id: Some("rust"),
                action: None,
            };
            let a = analyzer.analyze(&q).expect("valid");
            black_box(route(&config, &snapshot, &a, &force).expect("routable"))
        })
    });

    let mut slow = c.benchmark_group("tokenizer");
    slow.sample_size(10);
    slow.bench_function("cl100k encoder build (off the request path)", |b| {
        b.iter(|| black_box(tiktoken_rs::cl100k_base().expect("builds")))
    });
    slow.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
