//! Load and soak of one `triage serve` against the loopback test backend (figures in
//! BENCHMARKS.md).
//!
//! `cargo run --example load_lsp -- [--streams 200] [--max-concurrent 8] [--soak-s 600]
//! [--cancel 0.2] [--seed N] [--token-ms 5] [--settle-s 3] [--bin target/debug/triage]
//! [--verbose]`
//!
//! Without `--soak-s`: one burst of `--streams` concurrent `triage/chat` streams mixed with
//! edits and cancels. With it: `--streams` kept in flight for that long while faults (HTTP
//! 500, hangs, stalls, resets, malformed streams, an endpoint going down) change every 3 s.
//! Prints a JSON report; exits 1 when a check failed.

#[path = "../tests/support/backend.rs"]
mod backend;
#[path = "../tests/support/load.rs"]
mod load;
#[path = "../tests/support/lsp.rs"]
mod lsp;

use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let mut options = load::Options {
        binary: default_binary(),
        streams: 200,
        max_concurrent: 8,
        soak: Duration::ZERO,
        cancel_share: 0.2,
        seed: 1,
        token_ms: 5,
        settle: Duration::from_secs(3),
        verbose: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match arg.as_str() {
            "--streams" => options.streams = value().parse().unwrap_or(options.streams),
            "--max-concurrent" => {
                options.max_concurrent = value().parse().unwrap_or(options.max_concurrent)
            }
            "--soak-s" => options.soak = Duration::from_secs(value().parse().unwrap_or(0)),
            "--cancel" => options.cancel_share = value().parse().unwrap_or(options.cancel_share),
            "--seed" => options.seed = value().parse().unwrap_or(options.seed),
            "--token-ms" => options.token_ms = value().parse().unwrap_or(options.token_ms),
            "--settle-s" => options.settle = Duration::from_secs(value().parse().unwrap_or(3)),
            "--bin" => options.binary = PathBuf::from(value()),
            "--verbose" => options.verbose = true,
            other => {
                eprintln!(
                    "load_lsp: unknown argument `{other}`; see the source's header for usage"
                );
                std::process::exit(2);
            }
        }
    }
    let report = load::run(&options);
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    if !report.ok() {
        eprintln!("load_lsp: FAILED: {}", report.failures.join("; "));
        std::process::exit(1);
    }
}

/// `target/<profile>/triage`, next to `target/<profile>/examples/load_lsp`.
fn default_binary() -> PathBuf {
    std::env::var_os("TRIAGE_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.join("triage"))
        })
        .unwrap_or_else(|| PathBuf::from("target/debug/triage"))
}
