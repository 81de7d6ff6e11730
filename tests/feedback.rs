//! Learning from the user, end to end with the real binary and the loopback test backend:
//! forcing a tier records the request's features (never its text) under `$TRIAGE_STATE_DIR`,
//! `triage train --from-feedback` learns from them, and a later similar request is routed the
//! way the user wanted; `[feedback] enabled = false` records nothing and applies nothing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use support::backend::TestBackend;
use support::{bounded, json, stderr, stdout, temp_file, triage};

fn config(backend: &TestBackend, feedback: bool) -> PathBuf {
    let text = format!(
        "[endpoints.ollama]\nurl = \"{url}\"\n\n[feedback]\nenabled = {feedback}\n",
        url = backend.url()
    );
    temp_file("triage.toml", text.as_bytes())
}

fn in_state(state: &Path, config: &Path, args: &[&str]) -> Output {
    bounded(
        triage()
            .env("TRIAGE_STATE_DIR", state)
            .arg("--config")
            .arg(config)
            .args(args),
        Duration::from_secs(60),
    )
}

fn routed_tier(state: &Path, config: &Path, prompt: &str) -> (String, serde_json::Value) {
    let o = in_state(state, config, &["route", "--json", prompt]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    (v["tier"].as_str().unwrap_or_default().to_string(), v)
}

fn records(state: &Path) -> usize {
    let Ok(bytes) = std::fs::read(state.join("feedback.json")) else {
        return 0;
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("feedback file is JSON");
    v["records"].as_array().map_or(0, Vec::len)
}

const OVERRIDDEN: [&str; 3] = [
    "write a python function that parses ISO 8601 dates with time zones",
    "write a python function that parses ISO week dates like 2024-W05-3",
    "write a python function that parses ISO ordinal dates like 2024-032",
];
const SIMILAR: &str = "write a python function that parses ISO dates";
const UNRELATED: &str = "what does JSON stand for?";

#[test]
fn an_override_changes_a_later_similar_decision() {
    let backend = TestBackend::start();
    let cfg = config(&backend, true);
    let state = tempfile::tempdir().expect("tempdir");
    let (before, _) = routed_tier(state.path(), &cfg, SIMILAR);
    assert_eq!(
        before, "coder",
        "the rubric's own example starts on the coder tier"
    );
    let (unrelated_before, _) = routed_tier(state.path(), &cfg, UNRELATED);

    // Nothing to learn from yet: a clear usage error.
    let o = in_state(state.path(), &cfg, &["train", "--from-feedback"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no overrides recorded"),
        "{}",
        stderr(&o)
    );

    for prompt in OVERRIDDEN {
        let o = in_state(state.path(), &cfg, &["ask", "--tier", "heavy", prompt]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(records(state.path()), 3);
    let text = std::fs::read_to_string(state.path().join("feedback.json")).expect("file");
    assert!(
        !text.contains("python") && !text.contains("ISO"),
        "only hashed feature ids are stored: {text}"
    );

    let o = in_state(state.path(), &cfg, &["train", "--from-feedback"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("learned from 3 overrides"),
        "{}",
        stderr(&o)
    );

    let (after, v) = routed_tier(state.path(), &cfg, SIMILAR);
    assert_eq!(after, "heavy", "{v}");
    let reasons = v["reasons"].to_string();
    assert!(
        reasons.contains("adapted to your 3 earlier overrides"),
        "{reasons}"
    );
    let (unrelated_after, _) = routed_tier(state.path(), &cfg, UNRELATED);
    assert_eq!(
        unrelated_after, unrelated_before,
        "an unrelated request keeps its tier"
    );

    // `triage eval` shows what the delta does on a labelled set.
    let o = in_state(
        state.path(),
        &cfg,
        &["eval", "data/routing/holdout.jsonl", "--json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert!(
        v["accuracy"].is_number() && v["with_feedback"]["accuracy"].is_number(),
        "{v}"
    );
    let o = in_state(state.path(), &cfg, &["eval", "data/routing/holdout.jsonl"]);
    assert!(
        stdout(&o).contains("with your feedback delta"),
        "{}",
        stdout(&o)
    );

    // The off switch: the delta is not applied and nothing more is recorded.
    let off = config(&backend, false);
    let (disabled, _) = routed_tier(state.path(), &off, SIMILAR);
    assert_eq!(disabled, "coder");
    let o = in_state(state.path(), &off, &["ask", "--tier", "heavy", SIMILAR]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(records(state.path()), 3);
}

#[test]
fn damaged_feedback_files_are_reported_and_replaced() {
    let backend = TestBackend::start();
    let cfg = config(&backend, true);
    let state = tempfile::tempdir().expect("tempdir");
    std::fs::write(state.path().join("feedback.json"), b"{\"format\": 1, \"rec").expect("write");
    std::fs::write(state.path().join("router-user.bin"), b"TRGU garbage").expect("write");

    // A damaged delta is a warning, not a failure: routing goes on with the built-in model.
    let o = in_state(state.path(), &cfg, &["route", SIMILAR]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("router-user.bin cannot be used"),
        "{}",
        stderr(&o)
    );

    let o = in_state(state.path(), &cfg, &["train", "--from-feedback"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("damaged"), "{}", stderr(&o));

    let o = in_state(
        state.path(),
        &cfg,
        &["ask", "--model", "llama3.1:70b", SIMILAR],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(records(state.path()), 1, "the damaged file was replaced");
    let o = in_state(state.path(), &cfg, &["train", "--from-feedback"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = in_state(state.path(), &cfg, &["route", SIMILAR]);
    assert!(!stderr(&o).contains("cannot be used"), "{}", stderr(&o));
}
