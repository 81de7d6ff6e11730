//! Workspace retrieval on a generated workspace of 10,000 files (~30 MB of code-like text in
//! 100 folders): the first index build (files/s, MB/s), the index's memory (resident growth and
//! the index's own count of its heap), BM25 retrieval latency (p50/p95 over varied questions,
//! excerpts read back included), and the cost of following one edit.
//!
//! Run: `cargo bench --bench context` (prints a table, then criterion's figures for retrieval
//! and updates; the table goes into BENCHMARKS.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ropey::Rope;
use triage::context::workspace::{Settings, Workspace};

const FILES: usize = 10_000;
const LINES: usize = 90;

/// A deterministic generator (xorshift), so every run indexes the same workspace.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[(self.next() % words.len() as u64) as usize]
    }
}

const NOUNS: &[&str] = &[
    "invoice",
    "ledger",
    "account",
    "session",
    "widget",
    "frame",
    "buffer",
    "request",
    "response",
    "payload",
    "cursor",
    "token",
    "queue",
    "worker",
    "schedule",
    "report",
    "metric",
    "cache",
    "record",
    "batch",
    "order",
    "customer",
    "address",
    "shipment",
    "payment",
    "refund",
    "tax",
    "currency",
    "price",
    "discount",
    "inventory",
    "warehouse",
    "supplier",
    "route",
    "vehicle",
    "driver",
    "sensor",
    "reading",
    "alert",
    "threshold",
    "profile",
    "permission",
    "role",
    "tenant",
    "region",
    "cluster",
    "node",
    "shard",
    "replica",
    "snapshot",
    "backup",
    "archive",
];
const VERBS: &[&str] = &[
    "load", "store", "parse", "render", "compute", "validate", "merge", "split", "send", "receive",
    "encode", "decode", "apply", "revert", "schedule", "cancel", "retry", "flush", "resolve",
    "index", "lookup", "update", "delete", "create", "sync", "publish", "notify",
];

/// Writes the workspace; returns its root and its size in bytes.
fn generate(root: &Path) -> u64 {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut bytes = 0u64;
    for i in 0..FILES {
        let dir = root.join(format!("pkg_{:02}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&dir).expect("dir");
        }
        let mut text = String::with_capacity(LINES * 40);
        for line in 0..LINES {
            let (v, n, m) = (rng.pick(VERBS), rng.pick(NOUNS), rng.pick(NOUNS));
            match line % 6 {
                0 => text.push_str(&format!("/// {v} the {n} of a {m}.\n")),
                1 => text.push_str(&format!(
                    "pub fn {v}_{n}_{i}({m}: &{}) -> Result<(), Error> {{\n",
                    camel(n)
                )),
                2 => text.push_str(&format!("    let {n} = self.{m}.{v}()?;\n")),
                3 => text.push_str(&format!(
                    "    if {n}.len() > {} {{ return Err(Error::{}); }}\n",
                    rng.next() % 1000,
                    camel(m)
                )),
                4 => text.push_str(&format!("    {v}_{m}(&{n})\n")),
                _ => text.push_str("}\n"),
            }
        }
        bytes += text.len() as u64;
        std::fs::write(dir.join(format!("{}_{i}.rs", rng.pick(NOUNS))), text).expect("write");
    }
    bytes
}

fn camel(word: &str) -> String {
    let mut c = word.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

const QUESTIONS: &[&str] = &[
    "where do we retry the payment refund?",
    "how is the invoice tax computed?",
    "which function validates the customer address?",
    "wie wird der warehouse inventory snapshot gespeichert?",
    "what happens when the sensor reading is over the threshold?",
    "fn decode_payload_4711",
    "where is the shard replica synced to the cluster?",
    "render the widget frame buffer",
];

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root: PathBuf = dir.path().to_path_buf();
    let bytes = generate(&root);
    trim_heap();

    // First build, measured three times on fresh workspaces (the files stay in the page cache:
    // what is measured is walking, reading, chunking and indexing, not the disk).
    let mut builds = Vec::new();
    let mut rss_growth = 0;
    let mut ws = None;
    for _ in 0..3 {
        drop(ws.take());
        trim_heap();
        let before = rss_kb();
        let w = Workspace::new(vec![root.clone()], Settings::default()).expect("workspace");
        let started = Instant::now();
        w.build(&mut |_| {});
        builds.push(started.elapsed());
        trim_heap();
        rss_growth = rss_kb().saturating_sub(before);
        ws = Some(w);
    }
    let ws = ws.expect("built");
    builds.sort();
    let build = builds[1];
    let status = ws.status();
    assert_eq!(status.files, FILES);

    // Retrieval latency over varied questions (excerpts read back from disk included).
    let mut times = Vec::new();
    for round in 0..25 {
        for q in QUESTIONS {
            let started = Instant::now();
            let hits = ws.retrieve(q, 24);
            times.push(started.elapsed());
            if round == 0 {
                assert!(!hits.is_empty(), "{q}");
            }
        }
    }
    times.sort();

    // One edit of an open 90-line file, applied (re-chunked and re-indexed).
    let file = std::fs::read_dir(root.join("pkg_42"))
        .expect("dir")
        .flatten()
        .next()
        .expect("a file")
        .path();
    let text = std::fs::read_to_string(&file).expect("read");
    let mut edits = Vec::new();
    for i in 0..50 {
        let rope = Rope::from_str(&format!("{text}// edit {i}\n"));
        let started = Instant::now();
        ws.edited(&file, rope);
        ws.apply_pending();
        edits.push(started.elapsed());
    }
    edits.sort();

    let mb = bytes as f64 / (1024.0 * 1024.0);
    println!("\n| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| first index build, {FILES} files ({mb:.1} MB, {} chunks), median of 3 | {:.2} s: {:.0} files/s, {:.1} MB/s | |",
        status.chunks,
        build.as_secs_f64(),
        FILES as f64 / build.as_secs_f64(),
        mb / build.as_secs_f64()
    );
    println!(
        "| index memory: resident growth / the index's own heap count | {:.1} MB / {:.1} MB | |",
        rss_growth as f64 / 1024.0,
        status.index_bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "| BM25 retrieval, 24 excerpts read back ({} queries) | p50 {:.2} ms, p95 {:.2} ms | ≤ 5 ms p50 |",
        times.len(),
        percentile(&times, 50).as_secs_f64() * 1000.0,
        percentile(&times, 95).as_secs_f64() * 1000.0
    );
    println!(
        "| one edit of a 90-line file applied (50 edits) | p50 {:.3} ms, p95 {:.3} ms | |",
        percentile(&edits, 50).as_secs_f64() * 1000.0,
        percentile(&edits, 95).as_secs_f64() * 1000.0
    );
    println!();

    let mut group = c.benchmark_group("workspace (10,000 files)");
    group.sample_size(50);
    group.bench_function("retrieve 24 excerpts (BM25)", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            ws.retrieve(QUESTIONS[i % QUESTIONS.len()], 24)
        })
    });
    group.bench_function("edit one file and apply", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            ws.edited(&file, Rope::from_str(&format!("{text}// edit {i}\n")));
            ws.apply_pending();
        })
    });
    group.finish();
    drop(dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
