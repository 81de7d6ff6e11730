//! The short run of the language-server fuzzer (`tests/support/fuzz.rs`; long runs with
//! `cargo run --example fuzz_lsp`, figures in BENCHMARKS.md): the corpus in `fuzz/corpus/lsp`
//! (which holds what earlier runs found), then a fixed seed's mix of hostile traffic.

mod support;

use support::fuzz;

#[test]
fn the_corpus_and_a_short_fuzz_run_find_no_panic_hang_or_lost_text() {
    let report = fuzz::run(&fuzz::Options {
        binary: env!("CARGO_BIN_EXE_triage").into(),
        seed: 20_261_202,
        messages: 4_000,
        corpus: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/lsp").into()),
        big_every: 0,
        crashes: None,
        verbose: false,
    });
    assert!(report.ok(), "seed {}: {:#?}", report.seed, report.failures);
    assert!(
        report.corpus_entries >= 10,
        "the corpus was replayed: {report:?}"
    );
    assert!(
        report.valid_edits > 500 && report.invalid_edits > 100,
        "{report:?}"
    );
    assert_eq!(report.document_mismatches, 0);
    assert_eq!(
        report.responses, report.requests,
        "every request answered once"
    );
    assert_eq!(report.exit_code, Some(0));
}
