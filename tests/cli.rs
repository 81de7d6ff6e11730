//! Drives the real `triage` binary: `route`, `route --jsonl`, `eval`, configuration errors and
//! bad input. Every test runs the built executable with a clean environment for the variables
//! triage reads, so the developer's own config cannot leak in.

mod support;

use support::{json, run, run_stdin, stderr, stdout, temp_file, triage};

#[test]
fn route_prints_a_readable_decision() {
    let o = run(&["route", "write a python function that parses ISO dates"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("coder → qwen3-coder:30b on ollama (http://127.0.0.1:11434/)"),
        "{out}"
    );
    assert!(
        out.contains("reasons:") && out.contains("no GPU seen"),
        "{out}"
    );
    assert!(out.contains("fallbacks:"), "{out}");
}

#[test]
fn route_json_has_the_contract_fields() {
    let o = run(&["route", "--json", "hi there!"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["tier"], "fast");
    assert_eq!(v["model"], "llama3.2:3b");
    let confidence = v["confidence"].as_f64().expect("confidence is a number");
    assert!((0.0..=1.0).contains(&confidence));
    assert!(v["reasons"].as_array().is_some_and(|r| !r.is_empty()));
    assert_eq!(v["analysis"]["intent"], "small_talk");
    assert!(v["fallbacks"].is_array());
}

#[test]
fn route_reads_the_prompt_and_selection() {
    let selection = temp_file(
        "sel.sh",
        b"tar -czf - . | ssh backup@nas 'cat > /backups/site.tgz'\n",
    );
    let o = run_stdin(
        &[
            "route",
            "--json",
            "--selection-file",
            selection.to_str().expect("utf-8 path"),
            "--language",
            "shellscript",
            "-",
        ],
        "was macht das?".as_bytes(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["tier"], "coder");
    assert_eq!(v["analysis"]["shell"], true);
    assert_eq!(v["analysis"]["language"], "german");
}

#[test]
fn vram_flags_move_a_request_that_does_not_fit() {
    let prompt = "design a multi-region active-active architecture for our payments ledger, with the trade-offs";
    // Nothing is loaded: heavy must load (~32 s), which a 120 s budget allows.
    let free = run(&[
        "route",
        "--json",
        "--budget-s",
        "120",
        "--vram-total-mb",
        "81920",
        "--vram-free-mb",
        "80000",
        prompt,
    ]);
    assert_eq!(json(&free)["tier"], "heavy", "{}", stdout(&free));

    let tight = run(&[
        "route",
        "--json",
        "--vram-total-mb",
        "32768",
        "--vram-free-mb",
        "24000",
        prompt,
    ]);
    let v = json(&tight);
    assert_eq!(v["tier"], "coder");
    assert!(
        v["warning"]
            .as_str()
            .is_some_and(|w| w.contains("does not fit")),
        "{v}"
    );

    let loaded = run(&[
        "route",
        "--json",
        "--vram-free-mb",
        "2000",
        "--loaded",
        "llama3.1:70b",
        prompt,
    ]);
    let v = json(&loaded);
    assert_eq!(v["tier"], "heavy");
    assert!(v["warning"].is_null(), "{v}");

    let forced = run(&[
        "route",
        "--json",
        "--tier",
        "heavy",
        "--vram-free-mb",
        "4000",
        "hi",
    ]);
    let v = json(&forced);
    assert_eq!(v["tier"], "heavy");
    assert!(
        v["warning"]
            .as_str()
            .is_some_and(|w| w.contains("llama3.1:70b")),
        "{v}"
    );
}

#[test]
fn jsonl_routes_every_good_line_and_names_the_bad_ones() {
    let input = "{\"id\": \"a\", \"prompt\": \"hi\"}\nnot json at all\n{\"id\": 2, \"prompt\": \"ls -la | wc -l\"}\n{\"prompt\": \"\"}\n";
    let o = run_stdin(&["route", "--jsonl", "-"], input.as_bytes());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each output line is JSON"))
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        (lines[0]["id"].as_str(), lines[0]["tier"].as_str()),
        (Some("a"), Some("fast"))
    );
    assert_eq!(lines[1]["line"], 2);
    assert!(lines[1]["error"].is_string());
    assert_eq!(
        (lines[2]["id"].as_str(), lines[2]["tier"].as_str()),
        (Some("2"), Some("coder"))
    );
    assert!(lines[3]["error"]
        .as_str()
        .is_some_and(|e| e.contains("empty")));
    let err = stderr(&o);
    assert!(err.contains("line 2:") && err.contains("line 4:"), "{err}");
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let o = run_stdin(&["route", "-"], b"caf\xe9 au lait");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not valid UTF-8"), "{}", stderr(&o));

    let o = run(&["route", "   "]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("prompt is empty"), "{}", stderr(&o));

    let big = temp_file("big.txt", &vec![b'a'; 10 * 1024 * 1024]);
    let o = run(&[
        "route",
        "--selection-file",
        big.to_str().expect("utf-8 path"),
        "explain",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("select a smaller part"),
        "{}",
        stderr(&o)
    );

    let o = run(&["route", "--tier", "medium", "hi"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown tier `medium`"),
        "{}",
        stderr(&o)
    );

    let o = run(&[
        "route",
        "--vram-total-mb",
        "100",
        "--vram-free-mb",
        "200",
        "hi",
    ]);
    assert_eq!(o.status.code(), Some(2));

    let o = run(&["route", "--selection-file", "/nonexistent/file", "hi"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("cannot read /nonexistent/file"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn configuration_errors_name_the_key_and_exit_2() {
    let bad = temp_file("bad.toml", b"[tiers.heavy]\nendpoint = \"cluster\"\n");
    let o = run(&["--config", bad.to_str().expect("utf-8 path"), "route", "hi"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("tiers.heavy.endpoint"),
        "{}",
        stderr(&o)
    );

    let o = triage()
        .args(["route", "hi"])
        .env("TRIAGE_CONFIG", "/nonexistent/triage.toml")
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/triage.toml"),
        "{}",
        stderr(&o)
    );

    let good = temp_file(
        "good.toml",
        b"[endpoints.gpu]\nkind = \"openai\"\nurl = \"http://127.0.0.1:8000/v1\"\n[tiers.coder]\nmodel = \"qwen2.5-coder:7b\"\nendpoint = \"gpu\"\n",
    );
    let o = run(&[
        "--config",
        good.to_str().expect("utf-8 path"),
        "route",
        "--json",
        "write a rust function that reverses a singly linked list in place",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(
        (v["model"].as_str(), v["endpoint"].as_str()),
        (Some("qwen2.5-coder:7b"), Some("gpu"))
    );
    assert_eq!(v["url"], "http://127.0.0.1:8000/v1");
}

#[test]
fn ollama_host_moves_the_default_endpoint() {
    let o = triage()
        .args(["route", "--json", "hi"])
        .env("OLLAMA_HOST", "gpu-box:9999")
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["url"], "http://gpu-box:9999/");
}

#[test]
fn eval_prints_accuracy_confusion_and_misroutes() {
    let data = temp_file(
        "labelled.jsonl",
        b"{\"id\": \"g\", \"prompt\": \"hello!\", \"tier\": \"fast\"}\n{\"id\": \"s\", \"prompt\": \"ps aux | grep nginx\", \"tier\": \"heavy\"}\n{\"prompt\": \"x\", \"tier\": \"medium\"}\n",
    );
    let o = run(&["eval", data.to_str().expect("utf-8 path")]);
    // One line has an unknown tier: reported, the rest still evaluated, exit code 2.
    assert_eq!(o.status.code(), Some(2));
    let out = stdout(&o);
    assert!(out.contains("accuracy: 50.0% (1/2)"), "{out}");
    assert!(out.contains("confusion"), "{out}");
    assert!(out.contains("s  expected heavy got coder"), "{out}");
    assert!(
        stderr(&o).contains("line 3: unknown tier `medium`"),
        "{}",
        stderr(&o)
    );
}

/// The shipped model must generalise to data it was not trained on: the holdout set was written
/// by other hands and is never used for training.
#[test]
fn builtin_model_is_accurate_on_the_holdout_set() {
    let o = run(&["eval", "--json", "data/routing/holdout.jsonl"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    let accuracy = v["accuracy"].as_f64().expect("accuracy");
    let severe = v["severe_rate"].as_f64().expect("severe_rate");
    assert!(accuracy >= 0.93, "holdout accuracy fell to {accuracy}");
    assert!(severe <= 0.01, "severe misroutes rose to {severe}");
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["route", "eval", "train"] {
        let o = run(&[sub, "--help"]);
        assert!(o.status.success());
        assert!(
            stdout(&o).contains("Usage: triage"),
            "{sub}: {}",
            stdout(&o)
        );
    }
    let o = run(&["--version"]);
    assert!(stdout(&o).starts_with("triage "));
}

/// The shipped `router.bin` was trained on the data in the repository as it is now, with the
/// current feature extraction. If this fails, run `cargo run --release -- train`.
#[test]
fn shipped_model_matches_the_training_data() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/routing");
    let files =
        triage::cli::default_training_files(&dir).unwrap_or_else(|f| panic!("{}", f.message()));
    assert!(
        files.len() >= 3,
        "expected dev and the written training sets, got {files:?}"
    );
    assert!(files
        .iter()
        .all(|f| !f.to_string_lossy().contains("holdout")));
    let contents: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("readable"))
        .collect();
    let model = triage::analyze::model::Model::builtin().expect("loads");
    assert_eq!(
        model.data_fingerprint,
        triage::cli::training_fingerprint(&contents),
        "router.bin is stale: run `cargo run --release -- train` and rebuild"
    );
}

/// `train` without files reads the sources (not holdout sets) and the training-only sets.
#[test]
fn default_training_files_are_the_sources_and_the_training_only_sets() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["b.jsonl", "a.jsonl", "holdout.jsonl", "notes.md"] {
        std::fs::write(dir.path().join(name), "").expect("write");
    }
    std::fs::create_dir_all(dir.path().join("contrast")).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("second-labels")).expect("mkdir");
    std::fs::write(dir.path().join("contrast/c.jsonl"), "").expect("write");
    std::fs::write(dir.path().join("second-labels/a.jsonl"), "").expect("write");
    let files = triage::cli::default_training_files(dir.path())
        .unwrap_or_else(|f| panic!("{}", f.message()));
    let names: Vec<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(dir.path())
                .expect("inside")
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    assert_eq!(names, ["a.jsonl", "b.jsonl", "contrast/c.jsonl"]);
}

/// A 48 GB card with the fast and coder models loaded (default sizes: 2 500 + 18 000 MB).
const CARD: [&str; 6] = [
    "--vram-total-mb",
    "49152",
    "--vram-free-mb",
    "28652",
    "--loaded",
    "llama3.2:3b,qwen3-coder:30b",
];
const DESIGN: &str =
    "design a multi-region active-active architecture for our payments ledger, with the trade-offs";

fn route_on_card(extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["route", "--json"];
    args.extend(CARD);
    args.extend(extra);
    args.push(DESIGN);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    json(&o)
}

fn reasons(v: &serde_json::Value) -> String {
    v["reasons"].to_string()
}

#[test]
fn route_weighs_a_cold_load_against_the_budget() {
    // The default 30 s budget cannot hold the heavy model's ~32 s load.
    let v = route_on_card(&[]);
    assert_eq!(v["tier"], "coder", "{v}");
    assert!(
        reasons(&v).contains(
            "heavy would load for ~32 s and evict coder, over the 30 s budget; coder is loaded and fits the task"
        ),
        "{v}"
    );
    let heavy_wait = v["expected_wait_s"]["heavy"]
        .as_f64()
        .expect("expected wait");
    assert!((30.0..35.0).contains(&heavy_wait), "{v}");
    assert_eq!(
        v["expected_wait_s"]["coder"].as_f64().map(|w| w < 1.0),
        Some(true)
    );
    // Two minutes allowed: the quality margin is worth the load.
    let v = route_on_card(&["--budget-s", "120"]);
    assert_eq!(v["tier"], "heavy", "{v}");
    assert!(reasons(&v).contains("heavy is worth loading"), "{v}");
}

#[test]
fn route_never_evicts_a_model_that_is_answering() {
    let v = route_on_card(&["--budget-s", "3600", "--in-use", "qwen3-coder:30b"]);
    assert_ne!(v["tier"], "heavy", "{v}");
    assert!(
        reasons(&v).contains("would have to evict coder, which is answering: never done"),
        "{v}"
    );
    // Forced, heavy is obeyed, with a warning that it waits for the coder model.
    let v = route_on_card(&["--tier", "heavy", "--in-use", "qwen3-coder:30b"]);
    assert_eq!(v["tier"], "heavy");
    assert!(
        v["warning"]
            .as_str()
            .is_some_and(|w| w.contains("must wait for qwen3-coder:30b")),
        "{v}"
    );
}

#[test]
fn latency_flags_are_checked() {
    let mut args = vec!["route"];
    args.extend(CARD);
    args.extend(["--in-use", "mistral:7b", "hi"]);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--in-use mistral:7b"), "{}", stderr(&o));
    let o = run(&["route", "--budget-s", "0", "hi"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--budget-s"), "{}", stderr(&o));
    let o = run(&["ask", "--cascade", "sometimes", "hi"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cascade"), "{}", stderr(&o));
    // Without a GPU reading nothing is known about loads: the analysis decides alone.
    let o = run(&["route", "--json", DESIGN]);
    let v = json(&o);
    assert_eq!(v["tier"], "heavy");
    assert!(
        v.get("expected_wait_s")
            .is_some_and(|e| e.as_object().is_some_and(|m| m.is_empty())),
        "{v}"
    );
}

/// `eval --loso DIR`: one row per source file, each tested by a model trained on the others,
/// with severe misroutes and the calibration error; fewer than two sources is a usage error.
#[test]
fn eval_loso_reports_every_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let line = |id: &str, prompt: &str, tier: &str| {
        format!(
            "{}\n",
            serde_json::json!({"id": id, "prompt": prompt, "tier": tier})
        )
    };
    let sets = [
        (
            "alpha",
            [
                "hello there",
                "write a rust function that sorts names",
                "design a sharded queue for 1M rps",
            ],
        ),
        (
            "beta",
            [
                "hi, thanks a lot",
                "regex for email addresses",
                "threat model our upload service",
            ],
        ),
        (
            "gamma",
            [
                "good morning",
                "fix this python loop",
                "plan our monolith migration across 40 services",
            ],
        ),
    ];
    for (name, prompts) in sets {
        let text: String = prompts
            .iter()
            .zip(["fast", "coder", "heavy"])
            .enumerate()
            .map(|(i, (p, t))| line(&format!("{name}-{i}"), p, t))
            .collect();
        std::fs::write(dir.path().join(format!("{name}.jsonl")), text).expect("write");
    }
    let path = dir.path().to_str().expect("utf-8");
    let o = run(&["eval", "--loso", path]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("leave-one-source-out"), "{text}");
    for name in ["alpha", "beta", "gamma", "all"] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(name)),
            "{name} row missing: {text}"
        );
    }
    assert!(text.contains("ECE"), "{text}");
    let o = run(&["eval", "--loso", path, "--json"]);
    let v = json(&o);
    assert_eq!(v["sources"].as_array().map(Vec::len), Some(3));
    assert_eq!(v["all"]["total"], 9);
    assert!(v["all"]["ece"].is_number());
    assert_eq!(v["training_only"].as_array().map(Vec::len), Some(0));

    // Training-only sets join every fold's training and get rows of their own, outside `all`.
    std::fs::create_dir(dir.path().join("contrast")).expect("mkdir");
    let contrast: String = [
        "what does bash mean at a party?",
        "bash loop over files",
        "design our bash-based deploy system for 300 hosts",
    ]
    .iter()
    .zip(["fast", "coder", "heavy"])
    .enumerate()
    .map(|(i, (p, t))| line(&format!("contrast-{i}"), p, t))
    .collect();
    std::fs::write(dir.path().join("contrast/pairs.jsonl"), contrast).expect("write");
    let o = run(&["eval", "--loso", path, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["sources"].as_array().map(Vec::len), Some(3));
    assert_eq!(v["all"]["total"], 9);
    assert_eq!(v["training_only"][0]["source"], "pairs");
    assert_eq!(v["training_only"][0]["report"]["total"], 3);
    let text = stdout(&run(&["eval", "--loso", path]));
    assert!(text.contains("training-only sets"), "{text}");
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("pairs")),
        "{text}"
    );

    let one = tempfile::tempdir().expect("tempdir");
    std::fs::write(one.path().join("only.jsonl"), line("x", "hi", "fast")).expect("write");
    let o = run(&["eval", "--loso", one.path().to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("at least two"), "{}", stderr(&o));
}

/// The shipped model's confidences mean what they say on data it was not trained on.
#[test]
fn builtin_model_is_calibrated_on_the_holdout_set() {
    let o = run(&["eval", "--json", "data/routing/holdout.jsonl"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ece = json(&o)["ece"].as_f64().expect("ece");
    assert!(ece <= 0.05, "expected calibration error rose to {ece}");
}
