//! A small load test of the real `triage serve` (the long runs are `examples/load_lsp.rs`, with
//! figures in BENCHMARKS.md): concurrent `triage/chat` streams through one server against the
//! loopback test backend, mixed with edits and cancels.

mod support;

use std::time::Duration;

use support::load;

fn options(streams: usize, max_concurrent: usize) -> load::Options {
    load::Options {
        binary: env!("CARGO_BIN_EXE_triage").into(),
        streams,
        max_concurrent,
        soak: Duration::ZERO,
        cancel_share: 0.2,
        seed: 42,
        token_ms: 5,
        settle: Duration::from_secs(3),
        verbose: false,
    }
}

#[test]
fn concurrent_streams_with_edits_and_cancels_lose_nothing_and_respect_the_limit() {
    let report = load::run(&options(60, 3));
    assert!(report.ok(), "{:#?}", report.failures);
    assert_eq!(report.requests, 60);
    assert_eq!(
        report.answered + report.cancelled,
        60,
        "every request answered or cancelled: {report:?}"
    );
    assert!(report.cancelled > 0, "some cancels landed: {report:?}");
    assert!(report.edits > 0 && report.documents_equal);
    assert!(
        report.peak_per_model.values().all(|p| *p == 3),
        "each model ran exactly at its limit: {:?}",
        report.peak_per_model
    );
}
