//! The `triage` command line: argument definitions and one function per subcommand. Turns
//! arguments, files and stdin into analyser and router inputs, and decisions into text or JSON.
//! Policy lives in `analyze` and `route`; this module only plumbs.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::analyze::{self, model, Analysis, Analyzer, Query};
use crate::backend;
use crate::config::{self, Config, Tier};
use crate::engine::{self, Engine, Progress, Stats};
use crate::eval;
use crate::route::{self, Decision, Force};
use crate::vram::{GpuMemory, LoadedModel, Snapshot};

/// How a command failed, which decides the exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments, input or configuration: exit code 2.
    Usage(String),
    /// The request itself failed: exit code 1.
    Request(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Request(_) => 1,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Usage(m) | Failure::Request(m) => m,
        }
    }
}

fn usage(message: impl std::fmt::Display) -> Failure {
    Failure::Usage(message.to_string())
}

#[derive(Debug, Parser)]
#[command(name = "triage", version, about = "Routes each editor request to the right local model", long_about = None)]
pub struct Cli {
    /// Configuration file (TOML). Default: $TRIAGE_CONFIG, else <config dir>/triage/config.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace); RUST_LOG takes precedence.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Write logs to this file instead of stderr.
    #[arg(long, global = true, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the language server on stdin/stdout (what editors start).
    Serve,
    /// Route a prompt and stream the model's answer to stdout.
    Ask(AskArgs),
    /// Endpoints, models present and loaded, GPU memory, tiers and per-model statistics.
    Status(StatusArgs),
    /// Show the routing decision for a prompt; no model is called.
    Route(RouteArgs),
    /// Measure routing accuracy on labelled JSON Lines.
    Eval(EvalArgs),
    /// Rebuild the router's model from labelled data (for developers of triage).
    Train(TrainArgs),
    /// Serve Ollama- and OpenAI-compatible HTTP endpoints with the model `auto`.
    Gateway(GatewayArgs),
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Address to listen on (IP:PORT). Anything but loopback needs --token-env.
    #[arg(long, value_name = "IP:PORT", default_value = crate::gateway::DEFAULT_LISTEN)]
    pub listen: String,
    /// Name of the environment variable holding the bearer token every request must carry.
    #[arg(long, value_name = "NAME")]
    pub token_env: Option<String>,
}

/// Simulated GPU state, overriding what the monitor would read.
#[derive(Debug, Clone, Args, Default)]
pub struct GpuArgs {
    /// Total VRAM in MB.
    #[arg(long, value_name = "N")]
    pub vram_total_mb: Option<u64>,
    /// Free VRAM in MB.
    #[arg(long, value_name = "N")]
    pub vram_free_mb: Option<u64>,
    /// Models already loaded, comma-separated.
    #[arg(long, value_name = "MODEL[,MODEL…]", value_delimiter = ',')]
    pub loaded: Vec<String>,
    /// Loaded models answering a request right now (never evicted), comma-separated.
    #[arg(long, value_name = "MODEL[,MODEL…]", value_delimiter = ',')]
    pub in_use: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RouteArgs {
    /// The prompt; `-` reads it from stdin.
    #[arg(required_unless_present = "jsonl")]
    pub prompt: Option<String>,
    /// One decision per input line of FILE (`-` for stdin): {"id"?, "prompt", "selection"?, "language"?}.
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    pub jsonl: Option<String>,
    /// Print the decision as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub request: RequestArgs,
}

#[derive(Debug, Args)]
pub struct AskArgs {
    /// The prompt; `-` reads it from stdin.
    pub prompt: String,
    /// Print one JSON object at the end instead of streaming.
    #[arg(long)]
    pub json: bool,
    /// Retrieve context from this folder's files. Default: the git work tree the current
    /// directory is in, if any.
    #[arg(long, value_name = "DIR", conflicts_with = "no_workspace")]
    pub workspace: Option<PathBuf>,
    /// No workspace context, even inside a git work tree.
    #[arg(long)]
    pub no_workspace: bool,
    #[command(flatten)]
    pub request: RequestArgs,
}

/// What `route` and `ask` share: the selection, a forced tier or model, the simulated GPU.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// A file whose text is the editor selection.
    #[arg(long, value_name = "FILE")]
    pub selection_file: Option<PathBuf>,
    /// LSP languageId of the selection (rust, python, shellscript, …).
    #[arg(long, value_name = "ID")]
    pub language: Option<String>,
    /// Force a tier (fast, coder, heavy).
    #[arg(long, value_name = "TIER")]
    pub tier: Option<String>,
    /// Force a model by name.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// The longest wait to the first token this request may cost, in seconds (default
    /// `[latency] budget_s`).
    #[arg(long, value_name = "SECONDS")]
    pub budget_s: Option<f64>,
    /// After a low-confidence answer: off, offer or run the next tier (default: the tier's
    /// `cascade` setting).
    #[arg(long, value_name = "MODE")]
    pub cascade: Option<String>,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

impl RequestArgs {
    fn force(&self) -> Result<Force, Failure> {
        Ok(Force {
            tier: self
                .tier
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(usage)?,
            model: self.model.clone(),
        })
    }

    fn budget_s(&self) -> Result<Option<f64>, Failure> {
        match self.budget_s {
            Some(b) if !(b.is_finite() && b > 0.0) => Err(usage(format!(
                "--budget-s must be a positive number of seconds, not {b}"
            ))),
            b => Ok(b),
        }
    }

    fn cascade(&self) -> Result<Option<config::CascadeMode>, Failure> {
        self.cascade
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(usage)
    }

    fn selection(&self) -> Result<Option<String>, Failure> {
        match &self.selection_file {
            Some(path) => Ok(Some(utf8(
                read_input(&path.to_string_lossy())?,
                &path.display().to_string(),
            )?)),
            None => Ok(None),
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Labelled JSON Lines: the route input plus "tier".
    #[arg(required_unless_present = "loso")]
    pub file: Option<String>,
    /// Leave-one-source-out over every *.jsonl in DIR (one file per source, holdout included):
    /// each source is tested by a model trained and calibrated on all the others. The
    /// training-only sets in DIR/contrast/ join every training run and get a table of their own.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["file", "cv", "train_files"])]
    pub loso: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Instead of the built-in model, k-fold cross-validate: train on k-1 folds of FILE (plus
    /// --train files) and test on the held-out fold.
    #[arg(long, value_name = "K")]
    pub cv: Option<usize>,
    /// Training data: with --cv, added to every fold's training part; without, a fresh model
    /// trained on these files alone is tested on FILE.
    #[arg(long = "train", value_name = "FILE")]
    pub train_files: Vec<PathBuf>,
    #[command(flatten)]
    pub options: TrainingFlags,
    #[command(flatten)]
    pub gpu: GpuArgs,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Labelled JSON Lines files. Default: every data/routing/*.jsonl except holdout files, and
    /// the training-only sets in data/routing/contrast/.
    #[arg(conflicts_with = "from_feedback")]
    pub files: Vec<PathBuf>,
    /// Instead: adapt the router to you, from the tiers you forced (recorded under
    /// $TRIAGE_STATE_DIR); the result is saved there and loaded at start.
    #[arg(long, conflicts_with = "out")]
    pub from_feedback: bool,
    /// Where to write the model.
    #[arg(long, default_value = "src/analyze/router.bin")]
    pub out: PathBuf,
    #[command(flatten)]
    pub options: TrainingFlags,
}

/// Optimiser settings for `train` and `eval --cv`; the defaults are the shipped model's.
#[derive(Debug, Clone, Args)]
pub struct TrainingFlags {
    /// Passes over the training data.
    #[arg(long, hide_short_help = true)]
    pub epochs: Option<usize>,
    /// AdaGrad learning rate.
    #[arg(long, hide_short_help = true)]
    pub learning_rate: Option<f32>,
    /// L2 regularisation per update.
    #[arg(long, hide_short_help = true)]
    pub l2: Option<f32>,
}

impl TrainingFlags {
    fn options(&self) -> model::TrainOptions {
        let d = model::TrainOptions::default();
        model::TrainOptions {
            epochs: self.epochs.unwrap_or(d.epochs),
            learning_rate: self.learning_rate.unwrap_or(d.learning_rate),
            l2: self.l2.unwrap_or(d.l2),
            calibration_folds: d.calibration_folds,
            text_dropout: d.text_dropout,
            runs: d.runs,
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Serve => {
            let sources = config::Sources::from_env(cli.config);
            match server_runtime()?
                .block_on(crate::lsp::serve(sources))
                .map_err(usage)?
            {
                true => Ok(()),
                false => Err(Failure::Request(
                    "the session ended (`exit` or end of input) without `shutdown`".to_string(),
                )),
            }
        }
        Command::Ask(args) => {
            // The exact tokenizer builds while configuration, GPU and backends are read.
            analyze::tokens::warm_up();
            let config = load_config(cli.config)?;
            ask_command(config, args)
        }
        Command::Status(args) => {
            let config = load_config(cli.config)?;
            status_command(config, args)
        }
        Command::Route(args) => {
            let config = load_config(cli.config)?;
            route_command(&config, args)
        }
        Command::Eval(args) => {
            let config = load_config(cli.config)?;
            eval_command(&config, args)
        }
        Command::Train(args) if args.from_feedback => {
            let config = load_config(cli.config)?;
            train_from_feedback(&config)
        }
        Command::Train(args) => train_command(args),
        Command::Gateway(args) => {
            let config = load_config(cli.config)?;
            gateway_command(config, args)
        }
    }
}

fn gateway_command(config: Config, args: GatewayArgs) -> Result<(), Failure> {
    let options = crate::gateway::options(&args.listen, args.token_env.as_deref(), |name| {
        std::env::var(name).ok()
    })
    .map_err(usage)?;
    let (engine, _) = engine(config)?;
    let token_env = options.token_env.clone();
    server_runtime()?
        .block_on(crate::gateway::serve(engine, options, |addr| {
            // The address goes to stdout (a script may have asked for port 0); the rest is
            // for the person starting it.
            print_line(&format!("triage gateway listening on http://{addr}"));
            match (&token_env, addr.ip().is_loopback()) {
                (Some(name), true) => eprintln!(
                    "triage: loopback only; every request needs the bearer token from ${name}"
                ),
                (Some(name), false) => eprintln!(
                    "triage: listening on {addr}, NOT loopback: reachable from the network; every request needs the bearer token from ${name}"
                ),
                (None, _) => eprintln!("triage: loopback only, no token required"),
            }
        }))
        .map_err(Failure::Request)
}

fn load_config(explicit: Option<PathBuf>) -> Result<Config, Failure> {
    config::load(&config::Sources::from_env(explicit)).map_err(usage)
}

fn analyzer() -> Result<Analyzer, Failure> {
    Analyzer::builtin().map_err(|e| Failure::Request(e.to_string()))
}

/// The built-in analyser, adapted to the user by their feedback delta when feedback is on.
fn user_analyzer(config: &Config) -> Result<Analyzer, Failure> {
    let base = analyzer()?;
    if !config.feedback.enabled {
        return Ok(base);
    }
    let Some(store) = crate::feedback::Store::default_store() else {
        return Ok(base);
    };
    let (adapted, problem) = crate::feedback::adapt(base, &store);
    if let Some(p) = problem {
        eprintln!("warning: {p}");
    }
    Ok(adapted)
}

impl GpuArgs {
    fn given(&self) -> bool {
        self.vram_total_mb.is_some()
            || self.vram_free_mb.is_some()
            || !self.loaded.is_empty()
            || !self.in_use.is_empty()
    }

    /// What `--in-use` says about residency: those models are answering.
    fn residency(&self) -> Vec<route::Residency> {
        self.in_use
            .iter()
            .map(|m| m.trim())
            .filter(|m| !m.is_empty())
            .map(|m| route::Residency {
                model: m.to_string(),
                in_use: true,
                idle_s: Some(0.0),
                wanted_s_ago: Some(0.0),
                keep_alive_s: None,
                evicted_s_ago: None,
                working: false,
                busy_for_s: None,
            })
            .collect()
    }

    /// The simulated snapshot; "no GPU seen" unless a VRAM size is given.
    fn snapshot(&self, config: &Config) -> Result<Snapshot, Failure> {
        let gpu = match (self.vram_total_mb, self.vram_free_mb) {
            (None, None) => None,
            (Some(total), None) => Some(GpuMemory {
                total_mb: total,
                free_mb: total,
            }),
            (None, Some(free)) => Some(GpuMemory {
                total_mb: free,
                free_mb: free,
            }),
            (Some(total), Some(free)) if free > total => {
                return Err(usage(format!(
                    "--vram-free-mb ({free}) cannot exceed --vram-total-mb ({total})"
                )))
            }
            (Some(total), Some(free)) => Some(GpuMemory {
                total_mb: total,
                free_mb: free,
            }),
        };
        if let Some(m) = self
            .in_use
            .iter()
            .find(|m| !self.loaded.iter().any(|l| l.trim() == m.trim()))
        {
            return Err(usage(format!(
                "--in-use {m}: a model answering must be loaded too (add it to --loaded)"
            )));
        }
        let loaded = self
            .loaded
            .iter()
            .map(|name| name.trim())
            .filter(|name| !name.is_empty())
            .map(|name| {
                // A configured tier's model is as large as its config says; others are unknown.
                let size_mb = Tier::ALL
                    .into_iter()
                    .map(|t| config.tier(t))
                    .find(|t| t.model == name)
                    .map_or(0, |t| t.vram_mb);
                LoadedModel {
                    name: name.to_string(),
                    size_mb,
                    vram_mb: size_mb,
                    ..LoadedModel::default()
                }
            })
            .collect();
        Ok(Snapshot {
            gpu,
            loaded,
            notes: vec!["GPU state simulated by command-line flags".to_string()],
            ..Snapshot::default()
        })
    }
}

fn read_input(source: &str) -> Result<Vec<u8>, Failure> {
    if source == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| usage(format!("cannot read stdin: {e}")))?;
        Ok(bytes)
    } else {
        std::fs::read(source).map_err(|e| usage(format!("cannot read {source}: {e}")))
    }
}

fn utf8(bytes: Vec<u8>, what: &str) -> Result<String, Failure> {
    String::from_utf8(bytes).map_err(|e| {
        usage(format!(
            "{what} is not valid UTF-8 (first bad byte at offset {}): convert it to UTF-8 first",
            e.utf8_error().valid_up_to()
        ))
    })
}

fn route_command(config: &Config, args: RouteArgs) -> Result<(), Failure> {
    let snapshot = args.request.gpu.snapshot(config)?;
    let force = args.request.force()?;
    let analyzer = user_analyzer(config)?;
    if let Some(source) = &args.jsonl {
        return route_jsonl(config, &snapshot, &force, &analyzer, source, &args.request);
    }
    let prompt = match args.prompt.as_deref() {
        Some("-") => utf8(read_input("-")?, "stdin")?,
        Some(p) => p.to_string(),
        None => return Err(usage("give a PROMPT, `-` for stdin, or --jsonl FILE")),
    };
    let selection = args.request.selection()?;
    let query = Query {
        prompt: &prompt,
        selection: selection.as_deref(),
        language_id: args.request.language.as_deref(),
        action: None,
    };
    let analysis = analyzer.analyze(&query).map_err(usage)?;
    let decision = route_one(config, &snapshot, &analysis, &force, &args.request)?;
    let mut out = std::io::stdout().lock();
    let text = if args.json {
        engine::decision_json(None, &decision, &analysis, config).to_string()
    } else {
        render_decision(&decision, &analysis, config)
    };
    writeln!(out, "{text}").map_err(|e| Failure::Request(format!("cannot write to stdout: {e}")))
}

/// Routes with the latency rule when it is on: timings from earlier runs' statistics, the
/// models `--in-use` names as answering, the budget from `--budget-s`.
fn route_one(
    config: &Config,
    snapshot: &Snapshot,
    analysis: &Analysis,
    force: &Force,
    request: &RequestArgs,
) -> Result<Decision, Failure> {
    if !config.latency.enabled {
        return route::route(config, snapshot, analysis, force).map_err(usage);
    }
    let stats = engine::stats::default_path()
        .map(|p| Stats::load(&p))
        .unwrap_or_default();
    let timings: Vec<route::ModelTiming> = Tier::ALL
        .into_iter()
        .map(|t| stats.timing(&config.tier(t).model))
        .collect();
    let residency = request.gpu.residency();
    let latency = route::Latency {
        timings: &timings,
        residency: &residency,
        budget_s: request.budget_s()?.unwrap_or(config.latency.budget_s),
        hard_budget: request.budget_s()?.is_some(),
        load_mb_per_s: config.latency.load_mb_per_s,
    };
    route::route_with_latency(config, snapshot, analysis, force, &latency).map_err(usage)
}

fn route_jsonl(
    config: &Config,
    snapshot: &Snapshot,
    force: &Force,
    analyzer: &Analyzer,
    source: &str,
    request: &RequestArgs,
) -> Result<(), Failure> {
    let bytes = read_input(source)?;
    let (lines, mut errors) = eval::parse_jsonl(&bytes);
    let mut results: Vec<(usize, serde_json::Value)> = Vec::with_capacity(lines.len());
    for line in &lines {
        let r = &line.record;
        let query = Query {
            prompt: &r.prompt,
            selection: r.selection.as_deref(),
            language_id: r.language.as_deref(),
            action: None,
        };
        let decided = analyzer
            .analyze(&query)
            .map_err(|e| e.to_string())
            .and_then(|a| {
                route_one(config, snapshot, &a, force, request)
                    .map(|d| (a, d))
                    .map_err(|e| e.message().to_string())
            });
        match decided {
            Ok((analysis, decision)) => {
                results.push((
                    line.number,
                    engine::decision_json(r.id.as_deref(), &decision, &analysis, config),
                ));
            }
            Err(message) => errors.push(eval::LineError {
                line: line.number,
                message,
            }),
        }
    }
    // Errors are also emitted in place, so the output keeps one line per input line.
    for e in &errors {
        results.push((e.line, json!({"line": e.line, "error": e.message})));
    }
    results.sort_by_key(|(n, _)| *n);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (_, value) in &results {
        writeln!(out, "{value}")
            .map_err(|e| Failure::Request(format!("cannot write to stdout: {e}")))?;
    }
    out.flush()
        .map_err(|e| Failure::Request(format!("cannot write to stdout: {e}")))?;
    if errors.is_empty() {
        return Ok(());
    }
    errors.sort_by_key(|e| e.line);
    let listed: Vec<String> = errors.iter().map(|e| format!("{source}: {e}")).collect();
    Err(usage(format!(
        "{} of {} lines could not be routed (the others were):\n{}",
        errors.len(),
        errors.len() + results.len() - errors.len(),
        listed.join("\n")
    )))
}

fn render_decision(d: &Decision, a: &Analysis, config: &Config) -> String {
    let url = config
        .endpoints
        .get(&d.endpoint)
        .map(|e| e.url.as_str())
        .unwrap_or("?");
    let mut s =
        format!(
        "{} → {} on {} ({url})\nconfidence {:.2} · intent {:?} · complexity {:.2} · {} tokens{}\n",
        d.tier,
        d.model,
        d.endpoint,
        d.confidence,
        a.intent,
        a.complexity,
        a.tokens.prompt + a.tokens.selection,
        if a.tokens.estimated { " (estimate)" } else { "" },
    );
    if let Some(w) = &d.warning {
        s.push_str(&format!("warning: {w}\n"));
    }
    s.push_str("reasons:\n");
    for r in &d.reasons {
        s.push_str(&format!("  - {r}\n"));
    }
    if !d.fallbacks.is_empty() {
        let chain: Vec<String> = d
            .fallbacks
            .iter()
            .map(|c| format!("{} ({} on {})", c.tier, c.model, c.endpoint))
            .collect();
        s.push_str(&format!("fallbacks: {}\n", chain.join(" → ")));
    }
    s.trim_end().to_string()
}

/// A line with its label.
type Labelled = (eval::Line, Tier);

/// Labelled lines of a file, and the lines that could not be used.
fn labelled(source: &str) -> Result<(Vec<Labelled>, Vec<eval::LineError>), Failure> {
    let bytes = read_input(source)?;
    let (lines, mut errors) = eval::parse_jsonl(&bytes);
    let mut out = Vec::with_capacity(lines.len());
    for line in lines {
        match eval::label(&line) {
            Ok(tier) => out.push((line, tier)),
            Err(e) => errors.push(e),
        }
    }
    errors.sort_by_key(|e| e.line);
    Ok((out, errors))
}

fn line_id(line: &eval::Line) -> String {
    line.record
        .id
        .clone()
        .unwrap_or_else(|| format!("line {}", line.number))
}

fn query_of(record: &eval::Record) -> Query<'_> {
    Query {
        prompt: &record.prompt,
        selection: record.selection.as_deref(),
        language_id: record.language.as_deref(),
        action: None,
    }
}

fn model_input(record: &eval::Record) -> model::Input<'_> {
    model::Input {
        prompt: &record.prompt,
        selection: record.selection.as_deref(),
        language_id: record.language.as_deref(),
    }
}

/// A training-only example: it counts [`TRAINING_ONLY_WEIGHT`] of an ordinary one.
fn training_only_example(labelled: &Labelled) -> model::Example<'_> {
    model::Example {
        weight: TRAINING_ONLY_WEIGHT,
        ..example(labelled)
    }
}

fn example((line, tier): &Labelled) -> model::Example<'_> {
    model::Example {
        input: model_input(&line.record),
        tier: *tier,
        weight: 1.0,
    }
}

fn eval_command(config: &Config, args: EvalArgs) -> Result<(), Failure> {
    let snapshot = args.gpu.snapshot(config)?;
    if let Some(dir) = &args.loso {
        return loso_command(config, &snapshot, dir, args.options.options(), args.json);
    }
    let file = args.file.clone().unwrap_or_default();
    let (lines, errors) = labelled(&file)?;
    for e in &errors {
        eprintln!("{file}: {e}");
    }
    let extra: Vec<Labelled> = args
        .train_files
        .iter()
        .map(|p| labelled(&p.to_string_lossy()).map(|(l, _)| l))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let options = args.options.options();
    let mut adapted = None;
    let outcomes = match args.cv {
        None if extra.is_empty() => {
            let user = user_analyzer(config)?;
            if user.has_delta() {
                adapted = Some(eval::report(&predict_all(config, &snapshot, &user, &lines)));
            }
            predict_all(config, &snapshot, &user.without_delta(), &lines)
        }
        None => {
            let examples: Vec<model::Example> = extra.iter().map(example).collect();
            let analyzer = Analyzer::with_model(model::train_calibrated(&examples, options, 0));
            predict_all(config, &snapshot, &analyzer, &lines)
        }
        Some(k) => {
            if !(2..=lines.len().max(2)).contains(&k) {
                return Err(usage(format!(
                    "--cv needs between 2 and {} folds",
                    lines.len().max(2)
                )));
            }
            cross_validate(config, &snapshot, &lines, &extra, k, options)
        }
    };
    let report = eval::report(&outcomes);
    let text = if args.json {
        let mut value = serde_json::to_value(&report).unwrap_or_default();
        if let (Some(a), Some(map)) = (&adapted, value.as_object_mut()) {
            map.insert(
                "with_feedback".to_string(),
                serde_json::to_value(a).unwrap_or_default(),
            );
        }
        serde_json::to_string_pretty(&value).unwrap_or_default()
    } else if let Some(a) = &adapted {
        format!(
            "built-in model on {file}\n{}\nwith your feedback delta (`triage train --from-feedback`): accuracy {:.1}% ({:+.1} points), severe {} ({:.1}%), ECE {:.3}\n(`[feedback] enabled = false` turns it off)",
            report.render().trim_end(),
            a.accuracy * 100.0,
            (a.accuracy - report.accuracy) * 100.0,
            a.severe,
            a.severe_rate * 100.0,
            a.ece
        )
    } else {
        let header = match (args.cv, args.train_files.len()) {
            (Some(k), _) => format!("{k}-fold cross-validation on {file}\n"),
            (None, 0) => format!("built-in model on {file}\n"),
            (None, n) => format!("model trained on {n} given files, tested on {file}\n"),
        };
        header + &report.render()
    };
    print_line(&text);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(usage(format!(
            "{} lines of {file} were skipped (see above)",
            errors.len(),
        )))
    }
}

/// The folder under a data directory whose files are training material only: every training run
/// uses them (each fold of `eval --loso`, and `train`), but they are not sources whose
/// accuracy measures the router across authors (`data/routing/README.md` says why).
pub const TRAINING_ONLY_DIR: &str = "contrast";
/// How much a training-only example counts against a source's (see [`model::Example`]).
/// Chosen by leave-one-source-out (1, 0.5, 0.25, 0.15, 0.1 tried; BENCHMARKS.md): at full
/// weight the topic-balanced triples outweigh the sources' own mix of requests.
pub const TRAINING_ONLY_WEIGHT: f32 = 0.25;

/// The labelled `*.jsonl` files directly in `dir`, sorted by name, each with its stem.
fn labelled_files(dir: &Path) -> Result<Vec<(String, Vec<Labelled>)>, Failure> {
    let mut out = Vec::new();
    for path in jsonl_files(dir)? {
        let (lines, errors) = labelled(&path.to_string_lossy())?;
        if let Some(e) = errors.first() {
            return Err(usage(format!("{}: {e}", path.display())));
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((name, lines));
    }
    Ok(out)
}

/// The `*.jsonl` files directly in `dir`, sorted.
fn jsonl_files(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| usage(format!("cannot list {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    Ok(files)
}

/// Whether a training file is training-only material: it lies in a `contrast/` folder.
fn is_training_only(path: &Path) -> bool {
    path.parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == TRAINING_ONLY_DIR)
}

/// The training-only files of a data directory (none when it has no such folder).
fn training_only_files(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let extra = dir.join(TRAINING_ONLY_DIR);
    if extra.is_dir() {
        jsonl_files(&extra)
    } else {
        Ok(Vec::new())
    }
}

/// Every labelled source under `dir`: one `*.jsonl` file each, sorted by name.
fn sources(dir: &Path) -> Result<Vec<(String, Vec<Labelled>)>, Failure> {
    let out = labelled_files(dir)?;
    if out.len() < 2 {
        return Err(usage(format!(
            "{} holds {} labelled *.jsonl files; leave-one-source-out needs at least two",
            dir.display(),
            out.len()
        )));
    }
    Ok(out)
}

fn loso_command(
    config: &Config,
    snapshot: &Snapshot,
    dir: &Path,
    options: model::TrainOptions,
    json: bool,
) -> Result<(), Failure> {
    let sources = sources(dir)?;
    let extra_dir = dir.join(TRAINING_ONLY_DIR);
    let training_only = if extra_dir.is_dir() {
        labelled_files(&extra_dir)?
    } else {
        Vec::new()
    };
    // Each source is tested by a model trained on every other source and on all the
    // training-only sets; each training-only set, by one trained on everything but itself.
    let test = |lines: &[Labelled], skip_source: Option<usize>, skip_extra: Option<usize>| {
        let examples: Vec<model::Example> = sources
            .iter()
            .enumerate()
            .filter(|(j, _)| Some(*j) != skip_source)
            .flat_map(|(_, (_, l))| l.iter().map(example))
            .chain(
                training_only
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| Some(*j) != skip_extra)
                    .flat_map(|(_, (_, l))| l.iter().map(training_only_example)),
            )
            .collect();
        let analyzer = Analyzer::with_model(model::train_calibrated(&examples, options, 0));
        predict_all(config, snapshot, &analyzer, lines)
    };
    let mut rows = Vec::with_capacity(sources.len());
    let mut all = Vec::new();
    for (i, (name, lines)) in sources.iter().enumerate() {
        let outcomes = test(lines, Some(i), None);
        all.extend(outcomes.iter().cloned());
        rows.push(eval::SourceReport {
            source: name.clone(),
            report: eval::report(&outcomes),
        });
    }
    let extra_rows: Vec<eval::SourceReport> = training_only
        .iter()
        .enumerate()
        .map(|(i, (name, lines))| eval::SourceReport {
            source: name.clone(),
            report: eval::report(&test(lines, None, Some(i))),
        })
        .collect();
    let overall = eval::report(&all);
    let text = if json {
        serde_json::to_string_pretty(
            &json!({"sources": rows, "all": overall, "training_only": extra_rows}),
        )
        .unwrap_or_default()
    } else {
        eval::render_loso(&rows, &overall, &extra_rows)
    };
    print_line(&text);
    Ok(())
}

fn predict_all(
    config: &Config,
    snapshot: &Snapshot,
    analyzer: &Analyzer,
    lines: &[Labelled],
) -> Vec<eval::Outcome> {
    lines
        .iter()
        .map(|(line, expected)| {
            let decided = analyzer
                .analyze(&query_of(&line.record))
                .ok()
                .and_then(|a| route::route(config, snapshot, &a, &Force::default()).ok());
            eval::Outcome {
                id: line_id(line),
                expected: *expected,
                // A request that cannot be routed counts as wrong.
                got: decided.as_ref().map_or(
                    match expected {
                        Tier::Fast => Tier::Heavy,
                        _ => Tier::Fast,
                    },
                    |d| d.tier,
                ),
                confidence: decided.as_ref().map_or(1.0, |d| d.confidence),
            }
        })
        .collect()
}

fn cross_validate(
    config: &Config,
    snapshot: &Snapshot,
    lines: &[Labelled],
    extra: &[Labelled],
    k: usize,
    options: model::TrainOptions,
) -> Vec<eval::Outcome> {
    let fold_of = eval::folds(lines.len(), k);
    let mut outcomes = Vec::with_capacity(lines.len());
    for fold in 0..k {
        let examples: Vec<model::Example> = lines
            .iter()
            .zip(&fold_of)
            .filter(|(_, f)| **f != fold)
            .map(|(l, _)| l)
            .chain(extra)
            .map(example)
            .collect();
        let analyzer = Analyzer::with_model(model::train_calibrated(&examples, options, 0));
        let held_out: Vec<Labelled> = lines
            .iter()
            .zip(&fold_of)
            .filter(|(_, f)| **f == fold)
            .map(|(l, _)| l.clone())
            .collect();
        outcomes.extend(predict_all(config, snapshot, &analyzer, &held_out));
    }
    outcomes
}

/// The default training files: `data/routing/*.jsonl` without holdout sets, then the
/// training-only sets under `data/routing/contrast/`, each group sorted.
pub fn default_training_files(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let mut files: Vec<PathBuf> = jsonl_files(dir)?
        .into_iter()
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("holdout"))
        })
        .collect();
    files.extend(training_only_files(dir)?);
    Ok(files)
}

/// Fingerprint of training data as the shipped model records it: the feature version and the
/// files' bytes.
pub fn training_fingerprint(contents: &[Vec<u8>]) -> u64 {
    let version = model::FEATURES_VERSION.to_le_bytes();
    let mut parts: Vec<&[u8]> = vec![&version];
    parts.extend(contents.iter().map(Vec::as_slice));
    eval::fingerprint(&parts)
}

fn train_command(args: TrainArgs) -> Result<(), Failure> {
    let files = if args.files.is_empty() {
        default_training_files(Path::new("data/routing"))?
    } else {
        args.files
    };
    let mut contents = Vec::new();
    for f in &files {
        contents.push(
            std::fs::read(f).map_err(|e| usage(format!("cannot read {}: {e}", f.display())))?,
        );
    }
    let mut lines = Vec::new();
    for (path, bytes) in files.iter().zip(&contents) {
        let (parsed, errors) = eval::parse_jsonl(bytes);
        if let Some(e) = errors.first() {
            return Err(usage(format!("{}: {e}", path.display())));
        }
        let training_only = is_training_only(path);
        for line in parsed {
            let tier = eval::label(&line).map_err(|e| usage(format!("{}: {e}", path.display())))?;
            lines.push(((line, tier), training_only));
        }
    }
    let examples: Vec<model::Example> = lines
        .iter()
        .map(|(labelled, training_only)| {
            if *training_only {
                training_only_example(labelled)
            } else {
                example(labelled)
            }
        })
        .collect();
    let trained = model::train_calibrated(
        &examples,
        args.options.options(),
        training_fingerprint(&contents),
    );
    std::fs::write(&args.out, trained.to_bytes())
        .map_err(|e| usage(format!("cannot write {}: {e}", args.out.display())))?;
    eprintln!(
        "trained on {} examples from {} files; wrote {} (rebuild triage to use it)",
        examples.len(),
        files.len(),
        args.out.display()
    );
    Ok(())
}

fn train_from_feedback(config: &Config) -> Result<(), Failure> {
    let store = crate::feedback::Store::default_store().ok_or_else(|| {
        usage("no state directory: set TRIAGE_STATE_DIR to where feedback is recorded")
    })?;
    let loaded = store.load();
    if let Some(p) = &loaded.problem {
        eprintln!("warning: {p}");
    }
    if loaded.records.is_empty() {
        return Err(usage(format!(
            "no overrides recorded in {} yet: force a tier (`triage ask --tier heavy …`, the editor's tier choice or \"Ask the heavy model\") and train again",
            store.path().display()
        )));
    }
    let base = analyzer()?;
    let delta = crate::feedback::learn(base.model(), &loaded.records);
    store.save_delta(&delta).map_err(|e| {
        usage(format!(
            "cannot write {}: {e}",
            store.delta_path().display()
        ))
    })?;
    let moved = loaded.records.iter().filter(|r| r.tier != r.routed).count();
    eprintln!(
        "learned from {} overrides ({moved} against the router's choice); wrote {} — triage loads it at start{}",
        loaded.records.len(),
        store.delta_path().display(),
        if config.feedback.enabled {
            ""
        } else {
            " (but `[feedback] enabled = false` in your configuration: it is not applied)"
        }
    );
    Ok(())
}

/// The language server runs on one thread: its work is waiting on pipes and sockets, and every
/// hop between worker threads (a futex wake, often of an idle CPU) adds tens of microseconds to
/// each streamed token. NVML reads still go to tokio's blocking pool.
fn server_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Request(format!("cannot start the async runtime: {e}")))
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Request(format!("cannot start the async runtime: {e}")))
}

/// The engine for one-shot commands, with statistics from earlier runs.
fn engine(config: Config) -> Result<(Engine, backend::Client), Failure> {
    let connect = config
        .tiers
        .values()
        .map(|t| t.timeouts.connect_s)
        .fold(1.0f64, f64::max);
    let client = backend::Client::new(std::time::Duration::from_secs_f64(connect));
    let (stats, problem) = engine::stats::default_path()
        .map(|p| Stats::load_checked(&p))
        .unwrap_or_default();
    if let Some(problem) = problem {
        eprintln!("triage: {problem}");
    }
    let analyzer = user_analyzer(&config)?;
    let mut engine = Engine::new(config, client.clone(), analyzer, stats);
    if let Some(store) = crate::feedback::Store::default_store() {
        engine = engine.with_feedback(std::sync::Arc::new(store));
    }
    Ok((engine, client))
}

fn save_stats(engine: &Engine) {
    if let Some(path) = engine::stats::default_path() {
        if let Err(e) = engine.stats.save(&path) {
            tracing::debug!(error = %e, path = %path.display(), "could not save statistics");
        }
    }
}

fn ask_command(config: Config, args: AskArgs) -> Result<(), Failure> {
    let prompt = if args.prompt == "-" {
        utf8(read_input("-")?, "stdin")?
    } else {
        args.prompt.clone()
    };
    let workspace = ask_workspace(&config, &args)?;
    let selection = args.request.selection()?;
    let focus = match (&selection, &args.request.selection_file) {
        (Some(text), Some(path)) => {
            let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            let name = match &workspace {
                Some(ws) => ws.display(&absolute),
                None => path.display().to_string(),
            };
            let lines = text.lines().count().max(1) as u32 - 1;
            Some(crate::context::Focus {
                document: crate::context::Document {
                    name,
                    path: Some(absolute),
                    text: ropey::Rope::from_str(text),
                    language_id: args.request.language.clone().unwrap_or_default(),
                    version: None,
                },
                lines: Some((0, lines)),
            })
        }
        _ => None,
    };
    let request = engine::Request {
        prompt,
        selection,
        language_id: args.request.language.clone(),
        action: None,
        force: args.request.force()?,
        budget_s: args.request.budget_s()?,
        urgency: engine::Urgency::Typed,
        cascade: args.request.cascade()?,
        conversation: None,
        focus,
        open_documents: Vec::new(),
        workspace: workspace.clone(),
    };
    let simulated = if args.request.gpu.given() {
        Some(args.request.gpu.snapshot(&config)?)
    } else {
        None
    };
    let (engine, client) = engine(config)?;
    let json = args.json;
    let in_use = args.request.gpu.in_use.clone();
    let result = runtime()?.block_on(async {
        // The index builds while the GPU and backends are read.
        let building = workspace.clone().map(|ws| {
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                ws.build(&mut |_| {});
                tracing::info!(
                    files = ws.status().files,
                    ms = started.elapsed().as_millis() as u64,
                    "workspace indexed"
                );
            })
        });
        let snapshot = match simulated {
            Some(s) => s,
            None => {
                crate::vram::Monitor::new(engine.config(), client)
                    .refresh()
                    .await
            }
        };
        // `--in-use`: those models count as answering for the whole request.
        let _answering: Vec<_> = in_use
            .iter()
            .map(|m| engine.residency().begin(m.trim()))
            .collect();
        if let Some(building) = building {
            let _ = building.await;
        }
        let mut stdout = std::io::stdout();
        let mut attempts = 0;
        let mut progress = |p: Progress<'_>| match p {
            Progress::Trying(c) => {
                attempts += 1;
                if attempts > 1 && !json {
                    eprintln!(
                        "→ falling back to {} ({}) on {}",
                        c.model, c.tier, c.endpoint
                    );
                }
            }
            Progress::Routed(d) if !json => {
                eprintln!("→ {} ({}) on {}", d.model, d.tier, d.endpoint);
                if let Some(w) = &d.warning {
                    eprintln!("! {w}");
                }
            }
            Progress::FellBack { from, error } if !json => {
                eprintln!("! {} on {} failed: {error}", from.model, from.endpoint);
            }
            Progress::Cascading { to, reason } if !json => {
                eprintln!("→ {reason}: asking {} ({}) too", to.model, to.tier);
            }
            Progress::Delta(text) if !json => {
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
            _ => {}
        };
        tokio::select! {
            result = engine.run(&request, &snapshot, &mut progress) => Some(result),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    save_stats(&engine);
    let Some(result) = result else {
        // Dropping the run closed the model's connection: the server stops generating.
        if !json {
            print_line("");
        }
        return Err(Failure::Request("cancelled".to_string()));
    };
    match result {
        Ok(answer) => {
            if json {
                print_line(&engine::answer_json(&answer, None).to_string());
            } else {
                print_line("");
                eprintln!("{}", answer_summary(&answer));
            }
            Ok(())
        }
        Err(engine::Error::Input(message)) => Err(usage(message)),
        Err(engine::Error::Busy {
            message,
            retry_after_s,
        }) => {
            if json {
                print_line(
                    &json!({ "error": message, "busy": true, "retry_after_s": retry_after_s })
                        .to_string(),
                );
            }
            Err(Failure::Request(message))
        }
        Err(engine::Error::Failed {
            message,
            partial,
            fallbacks,
        }) => {
            if json {
                let value = match &partial {
                    Some(p) => engine::answer_json(p, Some(&message)),
                    None => json!({ "error": message, "fallbacks": fallbacks }),
                };
                print_line(&value.to_string());
            } else if partial.is_some() {
                print_line("");
            }
            Err(Failure::Request(message))
        }
    }
}

/// The workspace `ask` retrieves from: `--workspace DIR`, else the git work tree around the
/// current directory, unless `--no-workspace` or `[context] workspace = false`.
fn ask_workspace(
    config: &Config,
    args: &AskArgs,
) -> Result<Option<std::sync::Arc<crate::context::Workspace>>, Failure> {
    // An explicit --workspace wins over `[context] workspace = false`.
    if args.no_workspace || (args.workspace.is_none() && !config.context.workspace) {
        return Ok(None);
    }
    let root = match &args.workspace {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(usage(format!(
                    "--workspace {}: not a directory",
                    dir.display()
                )));
            }
            dir.clone()
        }
        None => {
            let Ok(cwd) = std::env::current_dir() else {
                return Ok(None);
            };
            match git_work_tree(&cwd) {
                Some(root) => root,
                None => return Ok(None),
            }
        }
    };
    let settings = crate::context::workspace::Settings {
        exclude: config.context.exclude.clone(),
        max_files: config.context.max_files,
        max_file_bytes: config.context.max_file_kb * 1024,
    };
    crate::context::Workspace::new(vec![root], settings)
        .map(|ws| Some(std::sync::Arc::new(ws)))
        .map_err(usage)
}

/// The top of the git work tree `dir` is in (the nearest folder with a `.git` entry).
fn git_work_tree(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|d| d.join(".git").exists())
        .map(Path::to_path_buf)
}

fn answer_summary(a: &engine::Answer) -> String {
    let mut s = format!(
        "[{} · {} · confidence {:.2} · first token {} · total {:.0} ms",
        a.model,
        a.tier,
        a.confidence,
        a.timings
            .first_token_ms
            .map_or("-".to_string(), |t| format!("{t:.0} ms")),
        a.timings.total_ms
    );
    if !a.fallbacks.is_empty() {
        let tried: Vec<String> = a
            .fallbacks
            .iter()
            .map(|f| format!("{} on {}", f.model, f.endpoint))
            .collect();
        s.push_str(&format!(" · fell back from {}", tried.join(", ")));
    }
    if a.finish == Some(backend::Finish::Length) {
        s.push_str(" · cut at max_tokens");
    }
    s.push(']');
    let used: Vec<String> = a
        .context
        .sources
        .iter()
        .filter(|c| c.kind != crate::context::SourceKind::Selection)
        .map(|c| format!("{}:{}–{}", c.path, c.start_line, c.end_line))
        .collect();
    if !used.is_empty() {
        s.push_str(&format!("\ncontext: {}", used.join(", ")));
    }
    if !a.context.omitted.is_empty() {
        s.push_str(&format!(
            " ({} more left out to fit the window)",
            a.context.omitted.len()
        ));
    }
    s
}

fn status_command(config: Config, args: StatusArgs) -> Result<(), Failure> {
    let (engine, client) = engine(config)?;
    let status = runtime()?.block_on(async {
        let monitor = crate::vram::Monitor::new(engine.config(), client);
        engine::status::gather(&engine, &monitor).await
    });
    let text = if args.json {
        serde_json::to_string_pretty(&status).map_err(|e| Failure::Request(e.to_string()))?
    } else {
        status.render()
    };
    print_line(&text);
    Ok(())
}

/// Writes a line to stdout. A reader that went away (`triage eval … | head`) is not an error
/// worth a panic: the rest of the output is simply not wanted.
fn print_line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}
