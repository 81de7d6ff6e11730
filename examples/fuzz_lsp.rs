//! Fuzzes the real `triage serve` with a seeded mix of valid and hostile LSP traffic
//! (`tests/support/fuzz.rs` says what is sent and checked). Figures in BENCHMARKS.md.
//!
//! `cargo run --example fuzz_lsp -- [--seed N] [--messages 100000] [--corpus fuzz/corpus/lsp]
//! [--big-every N] [--bin target/debug/triage] [--verbose]`
//!
//! Prints a JSON report; exits 1 when a check failed, after writing the last frames sent to
//! `$TRIAGE_FUZZ_CRASHES` (default `fuzz/crashes/`) so that the run can be studied; the same seed
//! sends the same traffic again.

#[path = "../tests/support/backend.rs"]
mod backend;
#[path = "../tests/support/fuzz.rs"]
mod fuzz;
#[path = "../tests/support/lsp.rs"]
mod lsp;

use std::path::PathBuf;

fn main() {
    let mut options = fuzz::Options {
        binary: default_binary(),
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1),
        messages: 100_000,
        corpus: Some(PathBuf::from("fuzz/corpus/lsp")),
        big_every: 50_000,
        crashes: None,
        verbose: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match arg.as_str() {
            "--seed" => options.seed = value().parse().unwrap_or(options.seed),
            "--messages" => options.messages = value().parse().unwrap_or(options.messages),
            "--corpus" => options.corpus = Some(PathBuf::from(value())),
            "--big-every" => options.big_every = value().parse().unwrap_or(options.big_every),
            "--bin" => options.binary = PathBuf::from(value()),
            "--verbose" => options.verbose = true,
            other => {
                eprintln!(
                    "fuzz_lsp: unknown argument `{other}`; see the source's header for usage"
                );
                std::process::exit(2);
            }
        }
    }
    if std::env::var_os("TRIAGE_FUZZ_CRASHES").is_none() {
        std::env::set_var("TRIAGE_FUZZ_CRASHES", "fuzz/crashes");
    }
    eprintln!(
        "fuzz_lsp: seed {} ({} messages)",
        options.seed, options.messages
    );
    let report = fuzz::run(&options);
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    if !report.ok() {
        eprintln!(
            "fuzz_lsp: FAILED with seed {}: {}",
            report.seed,
            report.failures.join("; ")
        );
        std::process::exit(1);
    }
}

/// `target/<profile>/triage`, next to `target/<profile>/examples/fuzz_lsp`.
fn default_binary() -> PathBuf {
    std::env::var_os("TRIAGE_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.join("triage"))
        })
        .unwrap_or_else(|| PathBuf::from("target/debug/triage"))
}
