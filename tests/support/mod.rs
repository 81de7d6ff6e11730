//! Shared helpers for the integration tests: running the real binary with a clean
//! environment, and the loopback test backend.

#![allow(dead_code)]

pub mod backend;
pub mod fuzz;
pub mod load;
pub mod lsp;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn triage() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_triage"));
    cmd.env_remove("OLLAMA_HOST")
        .env_remove("TRIAGE_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("OLLAMA_NUM_PARALLEL")
        // No user config file can be found in an empty config home.
        .env(
            "XDG_CONFIG_HOME",
            std::env::temp_dir().join("triage-tests-no-config"),
        )
        .env("HOME", std::env::temp_dir().join("triage-tests-no-home"))
        // Statistics of one test must not leak into another.
        .env(
            "TRIAGE_STATE_DIR",
            std::env::temp_dir().join(format!("triage-tests-state-{}", std::process::id())),
        )
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

pub fn run(args: &[&str]) -> Output {
    triage()
        .args(args)
        .output()
        .expect("the triage binary runs")
}

pub fn run_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = triage()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the triage binary runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("triage finishes")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)))
}

pub fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write temp file");
    path
}

/// Runs a command, killing it if it outlives `limit` (then the test fails on its output).
pub fn bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("triage runs");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().expect("output")
}
