//! Workspace context through the real binary: `triage ask --workspace DIR --json` on a
//! generated workspace with planted facts and planted secrets, against the loopback test
//! backend, asserting on what the backend received and on the answer's `context`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use support::backend::{Fault, Recorded, TestBackend};
use support::{bounded, json, stderr, temp_file, triage};

const FACT: &str = "pub const GATEWAY_RETRY_LIMIT: u32 = 7;";
const QUESTION: &str = "What is the retry limit of the payment gateway?";

/// Secrets planted where the question would find them; none may reach the backend.
const SECRETS: &[&str] = &[
    "sk_live_51HqLyjWDarjtT1zdp7dcXYZ",
    "PRIVATE KEY",
    "MIIEpAIBAAKCAQEA",
    "Zr8q!vT2mK9xLp4w",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "GATEWAY_RETRY_LIMIT = 99",
    "GATEWAY_RETRY_LIMIT = 55",
];

fn write(root: &Path, relative: &str, text: &str) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    std::fs::write(path, text).expect("write");
}

/// A workspace of `noise` unrelated files, the planted fact, and planted secrets in secret
/// files, ignored files, excluded files and chunks of ordinary files.
fn workspace(noise: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for i in 0..noise {
        let body: String = (0..40)
            .map(|j| {
                format!("fn render_widget_{i}_{j}(frame: &mut Frame) {{ frame.draw({j}); }}\n")
            })
            .collect();
        write(root, &format!("src/ui/widget_{i}.rs"), &body);
    }
    let mut gateway: String = (0..60)
        .map(|j| format!("// settlement note {j}\n"))
        .collect();
    gateway.push_str(&format!(
        "/// The payment gateway gives up after this many retries.\n{FACT}\n"
    ));
    gateway.push_str(
        &(0..60)
            .map(|j| format!("// ledger note {j}\n"))
            .collect::<String>(),
    );
    write(root, "src/billing/gateway.rs", &gateway);
    // Secret files by name, with the question's words in them.
    write(
        root,
        "deploy/prod.env",
        "PAYMENT_GATEWAY_RETRY=3\nPAYMENT_GATEWAY_KEY=sk_live_51HqLyjWDarjtT1zdp7dcXYZ\n",
    );
    write(root, "certs/gateway.pem", "payment gateway retry\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n");
    write(
        root,
        "ops/id_rsa",
        "payment gateway retry MIIEpAIBAAKCAQEA\n",
    );
    write(
        root,
        ".aws/credentials",
        "[default]\n# payment gateway retry\naws_secret_access_key = Zr8q!vT2mK9xLp4w\n",
    );
    // Ordinary files whose relevant chunks hold secrets.
    write(root, "src/billing/credentials.rs", "// payment gateway retry limit credentials\nlet gateway_password = \"Zr8q!vT2mK9xLp4w\";\n");
    write(
        root,
        "src/billing/notify.rs",
        "// payment gateway retry limit alerts go out with AKIAIOSFODNN7EXAMPLE\n",
    );
    write(
        root,
        "src/billing/ci.rs",
        "// payment gateway retry limit: token ghp_abcdefghijklmnopqrstuvwxyz0123456789\n",
    );
    // Ignored and excluded copies with other values.
    write(root, ".gitignore", "build/\n");
    write(
        root,
        "build/gateway.rs",
        "// payment gateway retry limit\nGATEWAY_RETRY_LIMIT = 99\n",
    );
    write(
        root,
        "vendor/gateway.rs",
        "// payment gateway retry limit\nGATEWAY_RETRY_LIMIT = 55\n",
    );
    dir
}

fn config(backend: &TestBackend, extra: &str) -> PathBuf {
    let text = format!(
        r#"
[endpoints.ollama]
url = "{url}"

[tiers.fast.timeouts]
first_token_s = 5
idle_s = 2
total_s = 20
[tiers.coder.timeouts]
first_token_s = 5
idle_s = 2
total_s = 20
[tiers.heavy.timeouts]
first_token_s = 5
idle_s = 2
total_s = 20

[context]
exclude = ["vendor/"]
{extra}
"#,
        url = backend.url()
    );
    temp_file("context.toml", text.as_bytes())
}

fn ask(config: &Path, args: &[&str]) -> Output {
    ask_in(config, args, None)
}

fn ask_in(config: &Path, args: &[&str], cwd: Option<&Path>) -> Output {
    let mut cmd = triage();
    cmd.arg("--config").arg(config).arg("ask").args(args);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    bounded(&mut cmd, Duration::from_secs(60))
}

fn chats(backend: &TestBackend) -> Vec<Recorded> {
    backend
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/chat")
        .collect()
}

fn sources(answer: &Value) -> Vec<(String, u64, u64, String)> {
    answer["context"]["sources"]
        .as_array()
        .expect("context.sources")
        .iter()
        .map(|s| {
            (
                s["path"].as_str().unwrap_or("").to_string(),
                s["start_line"].as_u64().unwrap_or(0),
                s["end_line"].as_u64().unwrap_or(0),
                s["kind"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn assert_no_secrets(requests: &[Recorded]) {
    for r in requests {
        for secret in SECRETS {
            assert!(
                !r.text.contains(secret),
                "{secret} reached the backend ({}):\n{}",
                r.path,
                r.text
            );
        }
    }
}

#[test]
fn the_planted_fact_is_retrieved_and_listed_and_no_secret_is_sent() {
    let backend = TestBackend::start();
    let ws = workspace(300);
    let config = config(&backend, "");
    let root = ws.path().to_string_lossy().to_string();
    let o = ask(
        &config,
        &["--json", "--tier", "coder", "--workspace", &root, QUESTION],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let answer = json(&o);
    let requests = chats(&backend);
    assert_eq!(requests.len(), 1);
    let sent = &requests[0].text;
    assert!(sent.contains(FACT), "the fact was not sent:\n{sent}");
    assert!(sent.contains("src/billing/gateway.rs"), "{sent}");
    assert!(sent.ends_with(QUESTION), "the question comes last:\n{sent}");
    assert_no_secrets(&backend.requests());
    // The answer lists what it used: the fact is on line 62 of gateway.rs.
    let listed = sources(&answer);
    assert!(
        listed
            .iter()
            .any(|(path, start, end, kind)| path == "src/billing/gateway.rs"
                && *start <= 62
                && *end >= 62
                && kind == "workspace"),
        "{listed:?}"
    );
    assert!(listed.iter().all(|(p, ..)| !p.contains("env")
        && !p.contains("pem")
        && !p.contains("build/")
        && !p.contains("vendor/")
        && !p.contains("id_rsa")));
    let context = &answer["context"];
    assert_eq!(context["ranking"], "bm25");
    assert_eq!(context["workspace"]["state"], "ready");
    assert_eq!(
        context["workspace"]["files"].as_u64(),
        Some(301),
        "{context}"
    );
    assert!(
        context["workspace"]["secrets_skipped"]
            .as_u64()
            .unwrap_or(0)
            >= 5,
        "{context}"
    );
    assert_eq!(context["window"], 16384);
    assert!(answer["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .any(|r| r
            .as_str()
            .unwrap_or("")
            .contains("piece(s) of the workspace")));
}

#[test]
fn a_prompt_over_budget_is_cut_to_fit_and_says_so() {
    let backend = TestBackend::start();
    let ws = workspace(10);
    // Many pieces that all match the question.
    for i in 0..40 {
        let body: String = (0..10)
            .map(|j| {
                format!(
                    "// payment gateway retry limit, variant {i}.{j}: keep retrying the gateway\n"
                )
            })
            .collect();
        write(ws.path(), &format!("src/retry/variant_{i}.rs"), &body);
    }
    let root = ws.path().to_string_lossy().to_string();
    let small = config(
        &backend,
        "[tiers.fast]\nnum_ctx = 2048\nmax_tokens = 512\n[tiers.coder]\nnum_ctx = 2048\nmax_tokens = 512\n[tiers.heavy]\nnum_ctx = 2048\nmax_tokens = 512",
    );
    let o = ask(&small, &["--json", "--workspace", &root, QUESTION]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cut = json(&o);
    let context = &cut["context"];
    assert_eq!(context["cut"], true, "{context}");
    assert!(!context["omitted"].as_array().expect("omitted").is_empty());
    assert_eq!(
        context["omitted"][0]["reason"],
        "does not fit the context window"
    );
    assert_eq!(context["window"], 2048);
    let budget = context["budget"].as_u64().expect("budget");
    assert!(budget < 2048 - 512, "{budget}");
    assert!(
        context["tokens"].as_u64().expect("tokens") <= budget,
        "{context}"
    );
    let requests = chats(&backend);
    assert_eq!(
        requests[0].num_ctx,
        Some(2048),
        "num_ctx matches the budget"
    );
    assert!(cut["reasons"].as_array().expect("reasons").iter().any(|r| r
        .as_str()
        .unwrap_or("")
        .contains("context was cut to fit the 2048-token window")));
    // The same request with room to spare is more confident.
    let roomy = config(&backend, "");
    let o = ask(&roomy, &["--json", "--workspace", &root, QUESTION]);
    let full = json(&o);
    assert_eq!(full["context"]["cut"], false, "{}", full["context"]);
    assert_eq!(full["tier"], cut["tier"]);
    assert!(
        full["confidence"].as_f64() > cut["confidence"].as_f64(),
        "{} vs {}",
        full["confidence"],
        cut["confidence"]
    );
}

#[test]
fn num_ctx_is_capped_at_the_models_context_length() {
    let backend = TestBackend::start();
    backend.set_context_length("llama3.2:3b", 4096);
    let ws = workspace(5);
    let root = ws.path().to_string_lossy().to_string();
    let o = ask(
        &config(&backend, ""),
        &["--json", "--tier", "fast", "--workspace", &root, QUESTION],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["context"]["window"], 4096);
    assert_eq!(chats(&backend)[0].num_ctx, Some(4096));
}

#[test]
fn hybrid_ranking_with_an_embedding_model_and_bm25_when_it_fails() {
    let backend = TestBackend::start();
    let ws = workspace(20);
    for i in 0..5 {
        write(
            ws.path(),
            &format!("src/billing/retry_{i}.rs"),
            &format!("// how the payment gateway client retries, part {i}\nfn retry_{i}() {{}}\n"),
        );
    }
    let root = ws.path().to_string_lossy().to_string();
    let config = config(&backend, "embed_model = \"nomic-embed-text\"");
    let o = ask(
        &config,
        &["--json", "--tier", "coder", "--workspace", &root, QUESTION],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let answer = json(&o);
    assert_eq!(
        answer["context"]["ranking"], "hybrid",
        "{}",
        answer["context"]
    );
    let embeds: Vec<Recorded> = backend
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/embed")
        .collect();
    assert_eq!(embeds.len(), 1);
    assert_eq!(embeds[0].model, "nomic-embed-text");
    assert!(embeds[0].text.starts_with(QUESTION));
    assert!(chats(&backend)[0].text.contains(FACT));
    assert_no_secrets(&backend.requests());

    backend.set_fault("nomic-embed-text", Fault::Status { code: 500 });
    let o = ask(
        &config,
        &["--json", "--tier", "coder", "--workspace", &root, QUESTION],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let answer = json(&o);
    assert_eq!(answer["context"]["ranking"], "bm25");
    let notes = answer["context"]["notes"].to_string();
    assert!(notes.contains("ranked by BM25 alone"), "{notes}");
    assert!(chats(&backend)[1].text.contains(FACT));
}

#[test]
fn the_git_work_tree_is_the_default_workspace() {
    let backend = TestBackend::start();
    let ws = workspace(5);
    std::fs::create_dir_all(ws.path().join(".git")).expect("git dir");
    let config = config(&backend, "");
    let inside = ws.path().join("src/ui");
    let o = ask_in(
        &config,
        &["--json", "--tier", "coder", QUESTION],
        Some(&inside),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(sources(&json(&o))
        .iter()
        .any(|(p, ..)| p == "src/billing/gateway.rs"));
    // Opted out, or outside any work tree: no workspace context.
    let o = ask_in(
        &config,
        &["--json", "--tier", "coder", "--no-workspace", QUESTION],
        Some(&inside),
    );
    let answer = json(&o);
    assert!(answer["context"]["workspace"].is_null());
    assert!(sources(&answer).is_empty());
    let plain = tempfile::tempdir().expect("tempdir");
    let o = ask_in(
        &config,
        &["--json", "--tier", "coder", QUESTION],
        Some(plain.path()),
    );
    assert!(sources(&json(&o)).is_empty());
    assert!(!chats(&backend)[2].text.contains(FACT));
    // A missing folder is a usage error.
    let o = ask(
        &config,
        &["--workspace", "/nonexistent/triage-ws", QUESTION],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn edits_and_deletions_show_in_the_next_answer() {
    let backend = TestBackend::start();
    let ws = workspace(5);
    let root = ws.path().to_string_lossy().to_string();
    let config = config(&backend, "");
    let gateway = ws.path().join("src/billing/gateway.rs");
    let edited = std::fs::read_to_string(&gateway)
        .expect("read")
        .replace("u32 = 7", "u32 = 12");
    std::fs::write(&gateway, edited).expect("write");
    let o = ask(
        &config,
        &["--json", "--tier", "coder", "--workspace", &root, QUESTION],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(chats(&backend)[0]
        .text
        .contains("GATEWAY_RETRY_LIMIT: u32 = 12"));
    std::fs::remove_file(&gateway).expect("rm");
    let o = ask(
        &config,
        &["--json", "--tier", "coder", "--workspace", &root, QUESTION],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!chats(&backend)[1].text.contains("GATEWAY_RETRY_LIMIT: u32"));
    assert!(sources(&json(&o))
        .iter()
        .all(|(p, ..)| p != "src/billing/gateway.rs"));
}

#[test]
fn the_text_summary_names_the_context_used() {
    let backend = TestBackend::start();
    let ws = workspace(5);
    let root = ws.path().to_string_lossy().to_string();
    let o = ask(
        &config(&backend, ""),
        &["--tier", "coder", "--workspace", &root, QUESTION],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("context: src/billing/gateway.rs:"), "{err}");
}
