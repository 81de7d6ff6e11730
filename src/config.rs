//! Settings: the three tiers and their models, the endpoints that serve them, VRAM headroom and
//! warning thresholds, and per-tier timeouts.
//!
//! Works with no file at all (built-in defaults, one Ollama endpoint moved by `OLLAMA_HOST`
//! exactly as Ollama's CLI reads it). A TOML file, or the same schema as JSON from an LSP client,
//! overrides any part. Everything is validated here, once, with errors that name the key and the
//! fix; later stages trust a `Config`. This module does not read the GPU or talk to endpoints.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The three model tiers, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Fast,
    Coder,
    Heavy,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Fast, Tier::Coder, Tier::Heavy];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Fast => "fast",
            Tier::Coder => "coder",
            Tier::Heavy => "heavy",
        }
    }

    /// Position in `Tier::ALL` (and in score arrays).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Tier, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fast" => Ok(Tier::Fast),
            "coder" => Ok(Tier::Coder),
            "heavy" => Ok(Tier::Heavy),
            other => Err(format!(
                "unknown tier `{other}`: use one of fast, coder, heavy"
            )),
        }
    }
}

/// The wire dialect of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    /// Ollama's native `/api/*`.
    Ollama,
    /// OpenAI-compatible `/v1/*` (llama.cpp, vLLM, LM Studio, Ollama's `/v1`).
    Openai,
}

/// A model server.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub kind: EndpointKind,
    /// For `openai`, the base URL including `/v1`, as OpenAI clients take it.
    pub url: url::Url,
    /// Name of the environment variable holding a bearer key; the key itself never enters the
    /// config or a log.
    pub api_key_env: Option<String>,
    /// Requests one model may run at once here; `None`: `$OLLAMA_NUM_PARALLEL`, else 1
    /// (`engine::limits`).
    pub max_concurrent: Option<u32>,
}

/// Timeouts of one tier, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub connect_s: f64,
    /// Long enough for a cold load of the model.
    pub first_token_s: f64,
    /// The longest gap allowed between two chunks of a stream.
    pub idle_s: f64,
    pub total_s: f64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_s: 3.0,
            first_token_s: 60.0,
            idle_s: 30.0,
            total_s: 600.0,
        }
    }
}

/// One tier's model and where it runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierConfig {
    pub model: String,
    /// Endpoint names, tried in order.
    pub endpoints: Vec<String>,
    /// VRAM the model needs when loaded, in MB.
    pub vram_mb: u64,
    /// Ollama `keep_alive` (e.g. "30m", "-1" to keep resident).
    pub keep_alive: String,
    /// Context window the model runs with (Ollama `num_ctx`), fixed so that Ollama neither
    /// reloads the model per request nor truncates at its 4k default.
    pub num_ctx: u32,
    /// Most tokens one answer may have.
    pub max_tokens: u32,
    pub timeouts: Timeouts,
    pub enabled: bool,
    /// What to do when this tier's answer comes back with low confidence.
    pub cascade: CascadeMode,
    /// The confidence below which the cascade applies.
    pub cascade_below: f32,
    /// Requests this tier's model may run at once on each of its endpoints; replaces the
    /// endpoint's `max_concurrent` for it.
    pub max_concurrent: Option<u32>,
}

/// What happens after an answer whose confidence is below the tier's `cascade_below`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CascadeMode {
    /// Nothing: the answer stands.
    #[default]
    Off,
    /// The answer says which tier could do better; the user decides.
    Offer,
    /// The next tier answers too, after the first answer.
    Run,
}

impl std::str::FromStr for CascadeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<CascadeMode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(CascadeMode::Off),
            "offer" => Ok(CascadeMode::Offer),
            "run" => Ok(CascadeMode::Run),
            other => Err(format!(
                "unknown cascade mode `{other}`: use one of off, offer, run"
            )),
        }
    }
}

/// Latency-aware routing, residency and pre-warming.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyConfig {
    /// Weigh the expected wait to the first token (loads, evictions) against quality.
    pub enabled: bool,
    /// The wait a typed request (chat, `ask`, `route`) may cost, in seconds.
    pub budget_s: f64,
    /// The wait a code action or hover may cost, in seconds.
    pub interactive_budget_s: f64,
    /// Load speed assumed for a model whose load was never observed, in MB/s.
    pub load_mb_per_s: f64,
    /// Load the likely model in the background when the editor signals intent.
    pub prewarm: bool,
    /// keep_alive of a model the user is working with (used 3+ times in 30 minutes), so it
    /// stays loaded through a meeting or lunch.
    pub working_keep_alive: String,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        LatencyConfig {
            enabled: true,
            // An answer that has not started after half a minute breaks the flow; a code
            // action is waited for with the cursor.
            budget_s: 30.0,
            interactive_budget_s: 10.0,
            // ~1.3 GB/s: the seed report's cold loads (18 GB in ~15 s, 42 GB in ~30 s).
            load_mb_per_s: 1300.0,
            prewarm: true,
            working_keep_alive: "2h".to_string(),
        }
    }
}

/// VRAM policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VramConfig {
    /// Memory kept free beyond a model's own need before it counts as fitting.
    pub headroom_mb: u64,
    /// Used share (percent) from which the status level is `warn`.
    pub warn_percent: f64,
    /// Used share (percent) from which the status level is `critical`.
    pub critical_percent: f64,
    /// The GPU's memory in MB where NVML cannot read it (Apple Silicon, AMD, a remote Ollama):
    /// free memory is then this minus what the endpoints report as loaded.
    pub total_mb: Option<u64>,
}

impl Default for VramConfig {
    fn default() -> Self {
        VramConfig {
            headroom_mb: 1024,
            warn_percent: 85.0,
            critical_percent: 95.0,
            total_mb: None,
        }
    }
}

/// Inline completions (fill-in-the-middle) in the language server.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompletionConfig {
    pub enabled: bool,
    /// The tier whose model completes; it must support `insert` (fill-in-the-middle).
    pub tier: Tier,
    /// Longest completion, in tokens.
    pub max_tokens: u32,
}

impl Default for CompletionConfig {
    fn default() -> Self {
        CompletionConfig {
            enabled: true,
            tier: Tier::Fast,
            max_tokens: 128,
        }
    }
}

/// The queue in front of a busy model (`engine::limits`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Requests that may wait per model once its `max_concurrent` are running; 0: none wait.
    pub queue_len: usize,
    /// The longest a request waits in the queue before it moves on (or fails as busy).
    pub max_wait_s: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            queue_len: 64,
            max_wait_s: 60.0,
        }
    }
}

/// Learning from the user's overrides (`feedback` module): `enabled = false` records nothing
/// and ignores what was learned.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackConfig {
    pub enabled: bool,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig { enabled: true }
    }
}

/// Context for prompts (`[context]`): workspace retrieval, embeddings, extra exclusions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContextConfig {
    /// Index the workspace folders and retrieve from them.
    pub workspace: bool,
    /// An embedding model on an Ollama endpoint (`/api/embed`, e.g. "nomic-embed-text"):
    /// ranking becomes BM25 and embeddings fused. None: BM25 alone.
    pub embed_model: Option<String>,
    /// The endpoint serving `embed_model` (default: the built-in `ollama`).
    pub embed_endpoint: Option<String>,
    /// Globs never to read into a prompt, besides the built-in secret files.
    pub exclude: Vec<String>,
    /// Files beyond this many are not indexed.
    pub max_files: usize,
    /// Files larger than this (KB) are not indexed.
    pub max_file_kb: u64,
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig {
            workspace: true,
            embed_model: None,
            embed_endpoint: None,
            exclude: Vec::new(),
            max_files: 50_000,
            max_file_kb: 1024,
        }
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub endpoints: BTreeMap<String, Endpoint>,
    pub tiers: BTreeMap<Tier, TierConfig>,
    pub vram: VramConfig,
    pub completion: CompletionConfig,
    pub latency: LatencyConfig,
    pub limits: LimitsConfig,
    pub feedback: FeedbackConfig,
    pub context: ContextConfig,
}

impl Config {
    /// The tier's settings. Every tier is present after validation (possibly disabled).
    pub fn tier(&self, tier: Tier) -> &TierConfig {
        // Invariant of `build`: all three tiers are inserted.
        &self.tiers[&tier]
    }

    /// Enabled tiers, cheapest first.
    pub fn enabled_tiers(&self) -> impl Iterator<Item = Tier> + '_ {
        Tier::ALL.into_iter().filter(|t| self.tier(*t).enabled)
    }
}

/// What went wrong with a configuration; the message names the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}. Check the path given by --config or $TRIAGE_CONFIG")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("`{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// The file schema: every field optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    endpoints: BTreeMap<String, RawEndpoint>,
    #[serde(default)]
    tiers: RawTiers,
    #[serde(default)]
    vram: Option<VramConfig>,
    #[serde(default)]
    completion: Option<CompletionConfig>,
    #[serde(default)]
    latency: Option<LatencyConfig>,
    limits: Option<LimitsConfig>,
    #[serde(default)]
    feedback: Option<FeedbackConfig>,
    context: Option<ContextConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    kind: Option<EndpointKind>,
    url: String,
    api_key_env: Option<String>,
    max_concurrent: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTiers {
    fast: Option<RawTier>,
    coder: Option<RawTier>,
    heavy: Option<RawTier>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    model: Option<String>,
    endpoint: Option<OneOrMany>,
    vram_mb: Option<u64>,
    keep_alive: Option<String>,
    num_ctx: Option<u32>,
    max_tokens: Option<u32>,
    timeouts: Option<Timeouts>,
    enabled: Option<bool>,
    cascade: Option<CascadeMode>,
    cascade_below: Option<f32>,
    max_concurrent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Name of the built-in endpoint.
pub const DEFAULT_ENDPOINT: &str = "ollama";

/// Where a configuration comes from, besides the built-in defaults.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// `--config FILE`: must exist.
    pub explicit_file: Option<PathBuf>,
    /// `$TRIAGE_CONFIG`: must exist when set.
    pub env_file: Option<PathBuf>,
    /// `$OLLAMA_HOST`.
    pub ollama_host: Option<String>,
}

impl Sources {
    /// Reads the variables this module cares about from the process environment.
    pub fn from_env(explicit_file: Option<PathBuf>) -> Sources {
        Sources {
            explicit_file,
            env_file: std::env::var_os("TRIAGE_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            ollama_host: std::env::var("OLLAMA_HOST").ok(),
        }
    }
}

/// The user's config file: `<config dir>/triage/config.toml`.
pub fn user_config_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("triage").join("config.toml"))
}

/// Loads the configuration: `--config`, else `$TRIAGE_CONFIG`, else the user's config file if it
/// exists, else built-in defaults alone.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let path = match (&sources.explicit_file, &sources.env_file) {
        (Some(p), _) | (None, Some(p)) => Some(p.clone()),
        (None, None) => user_config_path().filter(|p| p.is_file()),
    };
    let text = match &path {
        Some(p) => Some(
            std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let name = path.as_deref().map(Path::display).map(|d| d.to_string());
    from_toml(
        text.as_deref().unwrap_or(""),
        name.as_deref().unwrap_or("(defaults)"),
        sources.ollama_host.as_deref(),
    )
}

/// Loads the file configuration as `load` does, with `overlay` (LSP `initializationOptions` or
/// `didChangeConfiguration` settings, same schema) merged over it key by key.
pub fn load_with_overlay(
    sources: &Sources,
    overlay: Option<&serde_json::Value>,
) -> Result<Config, ConfigError> {
    let Some(overlay) = overlay.filter(|v| v.as_object().is_some_and(|o| !o.is_empty())) else {
        return load(sources);
    };
    let path = match (&sources.explicit_file, &sources.env_file) {
        (Some(p), _) | (None, Some(p)) => Some(p.clone()),
        (None, None) => user_config_path().filter(|p| p.is_file()),
    };
    let mut base = match &path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: p.display().to_string(),
                message: e.to_string().trim().replace('\n', " "),
            })?;
            serde_json::to_value(table).map_err(|e| ConfigError::Parse {
                path: p.display().to_string(),
                message: e.to_string(),
            })?
        }
        None => serde_json::json!({}),
    };
    merge(&mut base, overlay);
    from_json(&base, sources.ollama_host.as_deref())
}

/// Deep merge: objects merge key by key, anything else is replaced.
fn merge(base: &mut serde_json::Value, overlay: &serde_json::Value) {
    match (base, overlay) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Builds a configuration from TOML text over the defaults.
pub fn from_toml(
    text: &str,
    origin: &str,
    ollama_host: Option<&str>,
) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_string(),
        message: e.to_string().trim().replace('\n', " "),
    })?;
    build(raw, ollama_host)
}

/// Builds a configuration from JSON (LSP `initializationOptions`), same schema as the file.
pub fn from_json(
    value: &serde_json::Value,
    ollama_host: Option<&str>,
) -> Result<Config, ConfigError> {
    let raw: RawConfig = serde_json::from_value(value.clone()).map_err(|e| ConfigError::Parse {
        path: "initializationOptions".to_string(),
        message: e.to_string(),
    })?;
    build(raw, ollama_host)
}

/// The built-in configuration, with `OLLAMA_HOST` applied (which can be malformed).
pub fn defaults(ollama_host: Option<&str>) -> Result<Config, ConfigError> {
    build(RawConfig::default(), ollama_host)
}

fn default_tier(tier: Tier) -> TierConfig {
    let (model, vram_mb, keep_alive, num_ctx, first_token_s) = match tier {
        // The fast tier stays resident: it answers most requests and reloading costs seconds.
        Tier::Fast => ("llama3.2:3b", 2_500, "-1", 8_192, 30.0),
        Tier::Coder => ("qwen3-coder:30b", 18_000, "30m", 16_384, 90.0),
        Tier::Heavy => ("llama3.1:70b", 42_000, "10m", 8_192, 180.0),
    };
    TierConfig {
        model: model.to_string(),
        endpoints: vec![DEFAULT_ENDPOINT.to_string()],
        vram_mb,
        keep_alive: keep_alive.to_string(),
        num_ctx,
        max_tokens: 2_048,
        timeouts: Timeouts {
            first_token_s,
            ..Timeouts::default()
        },
        enabled: true,
        cascade: CascadeMode::Off,
        cascade_below: 0.5,
        max_concurrent: None,
    }
}

fn build(raw: RawConfig, ollama_host: Option<&str>) -> Result<Config, ConfigError> {
    let mut endpoints = BTreeMap::new();
    endpoints.insert(
        DEFAULT_ENDPOINT.to_string(),
        Endpoint {
            kind: EndpointKind::Ollama,
            url: ollama_host_url(ollama_host.unwrap_or(""))?,
            api_key_env: None,
            max_concurrent: None,
        },
    );
    for (name, e) in raw.endpoints {
        let key = format!("endpoints.{name}.url");
        let url = parse_url(&e.url, &key)?;
        if let Some(var) = &e.api_key_env {
            if var.is_empty() || var.contains(['=', '\0']) {
                return Err(invalid(
                    format!("endpoints.{name}.api_key_env"),
                    "must be the name of an environment variable, e.g. \"VLLM_API_KEY\" (never the key itself)",
                ));
            }
        }
        if e.max_concurrent == Some(0) {
            return Err(invalid(
                format!("endpoints.{name}.max_concurrent"),
                "must be at least 1 (as many as the server runs at once, e.g. its OLLAMA_NUM_PARALLEL)",
            ));
        }
        endpoints.insert(
            name,
            Endpoint {
                kind: e.kind.unwrap_or(EndpointKind::Ollama),
                url,
                api_key_env: e.api_key_env,
                max_concurrent: e.max_concurrent,
            },
        );
    }

    let mut tiers = BTreeMap::new();
    let raw_tiers = [
        (Tier::Fast, raw.tiers.fast),
        (Tier::Coder, raw.tiers.coder),
        (Tier::Heavy, raw.tiers.heavy),
    ];
    for (tier, raw_tier) in raw_tiers {
        let mut t = default_tier(tier);
        if let Some(r) = raw_tier {
            if let Some(model) = r.model {
                if model.trim().is_empty() {
                    return Err(invalid(
                        format!("tiers.{tier}.model"),
                        "must name a model, e.g. \"llama3.2:3b\"",
                    ));
                }
                t.model = model.trim().to_string();
            }
            if let Some(e) = r.endpoint {
                t.endpoints = match e {
                    OneOrMany::One(name) => vec![name],
                    OneOrMany::Many(names) => names,
                };
            }
            if let Some(v) = r.vram_mb {
                t.vram_mb = v;
            }
            if let Some(k) = r.keep_alive {
                t.keep_alive = k;
            }
            if let Some(n) = r.num_ctx {
                t.num_ctx = n;
            }
            if let Some(n) = r.max_tokens {
                t.max_tokens = n;
            }
            if let Some(timeouts) = r.timeouts {
                t.timeouts = timeouts;
            }
            if let Some(enabled) = r.enabled {
                t.enabled = enabled;
            }
            if let Some(cascade) = r.cascade {
                t.cascade = cascade;
            }
            if let Some(below) = r.cascade_below {
                t.cascade_below = below;
            }
            if let Some(n) = r.max_concurrent {
                if n == 0 {
                    return Err(invalid(
                        format!("tiers.{tier}.max_concurrent"),
                        "must be at least 1",
                    ));
                }
                t.max_concurrent = Some(n);
            }
        }
        validate_tier(tier, &t, &endpoints)?;
        tiers.insert(tier, t);
    }
    if !tiers.values().any(|t| t.enabled) {
        return Err(invalid(
            "tiers",
            "every tier is disabled: enable at least one (`enabled = true`)",
        ));
    }
    let vram = raw.vram.unwrap_or_default();
    for (key, value) in [
        ("vram.warn_percent", vram.warn_percent),
        ("vram.critical_percent", vram.critical_percent),
    ] {
        if !(0.0..=100.0).contains(&value) {
            return Err(invalid(key, "must be a percentage between 0 and 100"));
        }
    }
    if vram.warn_percent > vram.critical_percent {
        return Err(invalid(
            "vram.warn_percent",
            "must not be above vram.critical_percent",
        ));
    }
    let completion = raw.completion.unwrap_or_default();
    if completion.max_tokens == 0 {
        return Err(invalid("completion.max_tokens", "must be at least 1"));
    }
    let latency = raw.latency.unwrap_or_default();
    validate_latency(&latency)?;
    if vram.total_mb == Some(0) {
        return Err(invalid(
            "vram.total_mb",
            "must be the GPU's memory in MB (leave it out where NVML reads it)",
        ));
    }
    let limits = raw.limits.unwrap_or_default();
    if !seconds_in_range(limits.max_wait_s) {
        return Err(invalid("limits.max_wait_s", SECONDS_RANGE));
    }
    let context = raw.context.unwrap_or_default();
    validate_context(&context, &endpoints)?;
    Ok(Config {
        endpoints,
        tiers,
        vram,
        completion,
        latency,
        limits,
        feedback: raw.feedback.unwrap_or_default(),
        context,
    })
}

fn validate_latency(l: &LatencyConfig) -> Result<(), ConfigError> {
    for (key, value) in [
        ("latency.budget_s", l.budget_s),
        ("latency.interactive_budget_s", l.interactive_budget_s),
        ("latency.load_mb_per_s", l.load_mb_per_s),
    ] {
        if !(value.is_finite() && value > 0.0) {
            return Err(invalid(key, "must be a positive number"));
        }
    }
    if !valid_keep_alive(&l.working_keep_alive) {
        return Err(invalid(
            "latency.working_keep_alive",
            "must be a duration Ollama reads: seconds (\"3600\", \"-1\" for ever) or \"90m\", \"2h\"",
        ));
    }
    Ok(())
}

/// Seconds of an Ollama `keep_alive` ("-1" and other negatives: for ever → `None`; "30m",
/// "2h", "90s", "3600"); `Err` when Ollama would refuse it.
pub fn keep_alive_seconds(value: &str) -> Result<Option<f64>, String> {
    let bad = || format!("`{value}` is not a keep_alive duration");
    let v = value.trim();
    if let Ok(n) = v.parse::<f64>() {
        return Ok((n >= 0.0).then_some(n));
    }
    let mut total = 0.0;
    let mut number = String::new();
    let mut seen_unit = false;
    for c in v.chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let n: f64 = number.parse().map_err(|_| bad())?;
        number.clear();
        total += n * match c {
            'h' => 3600.0,
            'm' => 60.0,
            's' => 1.0,
            _ => return Err(bad()),
        };
        seen_unit = true;
    }
    if !number.is_empty() || !seen_unit {
        return Err(bad());
    }
    Ok(Some(total))
}

fn valid_keep_alive(value: &str) -> bool {
    keep_alive_seconds(value).is_ok()
}

fn validate_context(
    c: &ContextConfig,
    endpoints: &BTreeMap<String, Endpoint>,
) -> Result<(), ConfigError> {
    if c.max_files == 0 {
        return Err(invalid("context.max_files", "must be at least 1"));
    }
    if c.max_file_kb == 0 {
        return Err(invalid("context.max_file_kb", "must be at least 1"));
    }
    if let Some(model) = &c.embed_model {
        if model.trim().is_empty() {
            return Err(invalid(
                "context.embed_model",
                "must name an embedding model, e.g. \"nomic-embed-text\", or be left out",
            ));
        }
    }
    let name = c.embed_endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT);
    match endpoints.get(name) {
        None => {
            return Err(invalid(
                "context.embed_endpoint",
                format!("names no endpoint `{name}`: define [endpoints.{name}] or fix the name"),
            ))
        }
        Some(e) if e.kind != EndpointKind::Ollama && c.embed_model.is_some() => {
            return Err(invalid(
                "context.embed_endpoint",
                format!("`{name}` is not an Ollama endpoint: embeddings use Ollama's /api/embed"),
            ))
        }
        Some(_) => {}
    }
    crate::context::secrets::PathFilter::check(&c.exclude)
        .map_err(|e| invalid("context.exclude", e))?;
    Ok(())
}

fn validate_tier(
    tier: Tier,
    t: &TierConfig,
    endpoints: &BTreeMap<String, Endpoint>,
) -> Result<(), ConfigError> {
    if t.endpoints.is_empty() {
        return Err(invalid(
            format!("tiers.{tier}.endpoint"),
            "names no endpoint",
        ));
    }
    for name in &t.endpoints {
        if !endpoints.contains_key(name) {
            let known: Vec<&str> = endpoints.keys().map(String::as_str).collect();
            return Err(invalid(
                format!("tiers.{tier}.endpoint"),
                format!(
                    "names the endpoint `{name}`, which is not defined: add an [endpoints.{name}] table or use one of {}",
                    known.join(", ")
                ),
            ));
        }
    }
    if !(512..=1_048_576).contains(&t.num_ctx) {
        return Err(invalid(
            format!("tiers.{tier}.num_ctx"),
            "must be between 512 and 1048576 tokens",
        ));
    }
    if !(0.0..=1.0).contains(&t.cascade_below) {
        return Err(invalid(
            format!("tiers.{tier}.cascade_below"),
            "must be a confidence between 0 and 1",
        ));
    }
    if t.max_tokens == 0 || t.max_tokens >= t.num_ctx {
        return Err(invalid(
            format!("tiers.{tier}.max_tokens"),
            format!("must be at least 1 and below num_ctx ({})", t.num_ctx),
        ));
    }
    let ts = t.timeouts;
    for (key, value) in [
        ("connect_s", ts.connect_s),
        ("first_token_s", ts.first_token_s),
        ("idle_s", ts.idle_s),
        ("total_s", ts.total_s),
    ] {
        if !seconds_in_range(value) {
            return Err(invalid(
                format!("tiers.{tier}.timeouts.{key}"),
                SECONDS_RANGE,
            ));
        }
    }
    Ok(())
}

/// The longest timeout or wait accepted: a day. Longer means "never" in an editor, and a value
/// like 1e300 cannot even be a `Duration`.
pub const MAX_SECONDS: f64 = 86_400.0;

const SECONDS_RANGE: &str = "must be a positive number of seconds, at most 86400 (a day)";

fn seconds_in_range(value: f64) -> bool {
    value.is_finite() && value > 0.0 && value <= MAX_SECONDS
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

fn parse_url(text: &str, key: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(text.trim()).map_err(|e| {
        invalid(
            key,
            format!("`{text}` is not a URL ({e}); write it like \"http://127.0.0.1:11434\""),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(
            key,
            format!("`{text}` must be an http:// or https:// URL with a host"),
        ));
    }
    Ok(url)
}

/// Reads `OLLAMA_HOST` the way Ollama's own `envconfig.Host()` does: optional quotes, optional
/// scheme (default http; an explicit http/https changes the default port to 80/443), a host, an
/// optional port (default 11434), an optional path. Empty means `http://127.0.0.1:11434`.
pub fn ollama_host_url(value: &str) -> Result<url::Url, ConfigError> {
    let value = value.trim().trim_matches(['"', '\'']).trim();
    let (scheme, hostport, default_port) = match value.split_once("://") {
        None => ("http", value, "11434"),
        Some(("http", rest)) => ("http", rest, "80"),
        Some(("https", rest)) => ("https", rest, "443"),
        Some((other, rest)) => (other, rest, "11434"),
    };
    let (hostport, path) = hostport.split_once('/').unwrap_or((hostport, ""));
    let (host, port) = split_host_port(hostport).unwrap_or_else(|| {
        let bare = hostport.trim_matches(['[', ']']);
        let host = if bare.is_empty() { "127.0.0.1" } else { bare };
        (host.to_string(), default_port.to_string())
    });
    let port = match port.parse::<u16>() {
        Ok(_) => port,
        Err(_) => default_port.to_string(),
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else if host.is_empty() {
        "127.0.0.1".to_string()
    } else {
        host
    };
    let text = format!("{scheme}://{host}:{port}/{path}");
    parse_url(&text, "OLLAMA_HOST")
}

/// Go's `net.SplitHostPort`: `host:port` or `[v6]:port`; None when there is no port.
fn split_host_port(s: &str) -> Option<(String, String)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return Some((host.to_string(), port.to_string()));
    }
    let (host, port) = s.rsplit_once(':')?;
    if host.contains(':') {
        return None; // a bare IPv6 address
    }
    Some((host.to_string(), port.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match from_toml(text, "test.toml", None) {
            Ok(_) => panic!("expected an error for {text:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_need_no_file() {
        let c = from_toml("", "(defaults)", None).expect("defaults");
        assert_eq!(c.tier(Tier::Fast).model, "llama3.2:3b");
        assert_eq!(c.tier(Tier::Coder).model, "qwen3-coder:30b");
        assert_eq!(c.tier(Tier::Heavy).model, "llama3.1:70b");
        assert_eq!(c.tier(Tier::Heavy).vram_mb, 42_000);
        assert_eq!(
            c.endpoints[DEFAULT_ENDPOINT].url.as_str(),
            "http://127.0.0.1:11434/"
        );
        assert_eq!(c.enabled_tiers().count(), 3);
    }

    #[test]
    fn ollama_host_forms() {
        let cases = [
            ("", "http://127.0.0.1:11434/"),
            ("0.0.0.0", "http://0.0.0.0:11434/"),
            ("gpu-box", "http://gpu-box:11434/"),
            ("gpu-box:9999", "http://gpu-box:9999/"),
            ("\"gpu-box:9999\"", "http://gpu-box:9999/"),
            ("http://gpu-box", "http://gpu-box/"),
            ("https://gpu-box", "https://gpu-box/"),
            ("https://gpu-box:8443/ollama", "https://gpu-box:8443/ollama"),
            ("[::1]:4000", "http://[::1]:4000/"),
            ("::1", "http://[::1]:11434/"),
            ("host:notaport", "http://host:11434/"),
        ];
        for (input, expected) in cases {
            let url = ollama_host_url(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(url.as_str(), expected, "OLLAMA_HOST={input}");
        }
        let c = defaults(Some("gpu-box:9999")).expect("valid host");
        assert_eq!(
            c.endpoints[DEFAULT_ENDPOINT].url.as_str(),
            "http://gpu-box:9999/"
        );
    }

    #[test]
    fn file_overrides_tiers_and_endpoints() {
        let c = from_toml(
            r#"
            [endpoints.vllm]
            kind = "openai"
            url = "http://10.0.0.5:8000/v1"
            api_key_env = "VLLM_KEY"

            [tiers.heavy]
            model = "meta-llama/Llama-3.1-70B-Instruct"
            endpoint = ["vllm", "ollama"]
            vram_mb = 0

            [tiers.coder]
            enabled = false

            [tiers.fast.timeouts]
            first_token_s = 5

            [vram]
            headroom_mb = 2048
            "#,
            "t.toml",
            None,
        )
        .expect("valid");
        let heavy = c.tier(Tier::Heavy);
        assert_eq!(heavy.endpoints, ["vllm", "ollama"]);
        assert_eq!(c.endpoints["vllm"].kind, EndpointKind::Openai);
        assert_eq!(c.endpoints["vllm"].api_key_env.as_deref(), Some("VLLM_KEY"));
        assert!(!c.tier(Tier::Coder).enabled);
        assert_eq!(c.tier(Tier::Fast).timeouts.first_token_s, 5.0);
        assert_eq!(c.tier(Tier::Fast).timeouts.idle_s, 30.0);
        assert_eq!(c.vram.headroom_mb, 2048);
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(c.endpoints["vllm"].max_concurrent, None);
        let l = from_toml(
            "[endpoints.ollama]\nurl = \"http://h:1\"\nmax_concurrent = 4\n\
             [tiers.heavy]\nmax_concurrent = 1\n[limits]\nqueue_len = 0\nmax_wait_s = 2.5\n",
            "t.toml",
            None,
        )
        .expect("valid");
        assert_eq!(l.endpoints[DEFAULT_ENDPOINT].max_concurrent, Some(4));
        assert_eq!(l.tier(Tier::Heavy).max_concurrent, Some(1));
        assert_eq!(l.tier(Tier::Fast).max_concurrent, None);
        assert_eq!((l.limits.queue_len, l.limits.max_wait_s), (0, 2.5));
        assert_eq!(
            c.enabled_tiers().collect::<Vec<_>>(),
            [Tier::Fast, Tier::Heavy]
        );
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        let e = err("[tiers.fast]\nmodle = \"x\"");
        assert!(e.contains("modle"), "{e}");
        let e = err("[tiers.medium]\nmodel = \"x\"");
        assert!(e.contains("medium") && e.contains("fast"), "{e}");
        let e = err("[endpoints.gpu]\nurl = \"not a url\"");
        assert!(e.contains("endpoints.gpu.url"), "{e}");
        let e = err("[endpoints.gpu]\nurl = \"ftp://host\"");
        assert!(e.contains("http"), "{e}");
        let e = err("[tiers.heavy]\nendpoint = \"cluster\"");
        assert!(
            e.contains("tiers.heavy.endpoint") && e.contains("[endpoints.cluster]"),
            "{e}"
        );
        let e = err("[tiers.fast]\nenabled = false\n[tiers.coder]\nenabled = false\n[tiers.heavy]\nenabled = false");
        assert!(e.contains("enable at least one"), "{e}");
        let e = err("[tiers.fast]\nnum_ctx = 100");
        assert!(e.contains("tiers.fast.num_ctx"), "{e}");
        let e = err("[tiers.fast]\nmax_tokens = 9000");
        assert!(e.contains("tiers.fast.max_tokens"), "{e}");
        let e = err("[tiers.fast.timeouts]\nidle_s = -1");
        assert!(e.contains("tiers.fast.timeouts.idle_s"), "{e}");
        // Found by the LSP fuzzer: 1e308 seconds made `Duration::from_secs_f64` panic.
        let e = err("[tiers.heavy.timeouts]\ntotal_s = 1e308");
        assert!(
            e.contains("tiers.heavy.timeouts.total_s") && e.contains("86400"),
            "{e}"
        );
        let e = err("[limits]\nmax_wait_s = 1e300");
        assert!(e.contains("limits.max_wait_s"), "{e}");
        assert!(from_toml("[tiers.fast.timeouts]\ntotal_s = 86400", "t", None).is_ok());
        let e = err("[vram]\nwarn_percent = 150");
        assert!(e.contains("vram.warn_percent"), "{e}");
        let e = err("this is = = not toml");
        assert!(e.contains("test.toml"), "{e}");
        let e = err("[endpoints.k]\nurl = \"http://h\"\napi_key_env = \"\"");
        assert!(e.contains("api_key_env"), "{e}");
        let e = err("[endpoints.k]\nurl = \"http://h\"\nmax_concurrent = 0");
        assert!(e.contains("endpoints.k.max_concurrent"), "{e}");
        let e = err("[tiers.fast]\nmax_concurrent = 0");
        assert!(e.contains("tiers.fast.max_concurrent"), "{e}");
        let e = err("[limits]\nmax_wait_s = 0");
        assert!(e.contains("limits.max_wait_s"), "{e}");
        let e = err("[limits]\nqueue_len = -1");
        assert!(e.contains("queue_len"), "{e}");
        let e = err("[limits]\nqueue_size = 3");
        assert!(e.contains("queue_size"), "{e}");
    }

    #[test]
    fn context_settings() {
        let c = from_toml(
            "[context]\nembed_model = \"nomic-embed-text\"\nexclude = [\"*.sql\", \"fixtures/\"]\nmax_files = 10",
            "test.toml",
            None,
        )
        .expect("valid");
        assert_eq!(c.context.embed_model.as_deref(), Some("nomic-embed-text"));
        assert_eq!(c.context.exclude, ["*.sql", "fixtures/"]);
        assert_eq!(c.context.max_files, 10);
        assert!(c.context.workspace);
        let e = err("[context]\nexclude = [\"src/[\"]");
        assert!(e.contains("context.exclude") && e.contains("src/["), "{e}");
        let e = err("[context]\nembed_model = \"m\"\nembed_endpoint = \"nowhere\"");
        assert!(
            e.contains("context.embed_endpoint") && e.contains("[endpoints.nowhere]"),
            "{e}"
        );
        let e = err("[endpoints.v]\nkind = \"openai\"\nurl = \"http://h/v1\"\n[context]\nembed_model = \"m\"\nembed_endpoint = \"v\"");
        assert!(e.contains("not an Ollama endpoint"), "{e}");
        let e = err("[context]\nmax_files = 0");
        assert!(e.contains("context.max_files"), "{e}");
        let e = err("[context]\nembedding = \"x\"");
        assert!(e.contains("embedding"), "{e}");
    }

    #[test]
    fn json_schema_matches_the_file() {
        let c = from_json(
            &serde_json::json!({"tiers": {"fast": {"model": "phi3"}}}),
            None,
        )
        .expect("valid");
        assert_eq!(c.tier(Tier::Fast).model, "phi3");
        assert!(from_json(&serde_json::json!({"tierz": {}}), None).is_err());
    }

    #[test]
    fn lsp_settings_merge_over_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[tiers.fast]\nmodel = \"from-file\"\nvram_mb = 100\n",
        )
        .expect("write");
        let sources = Sources {
            explicit_file: Some(file),
            ..Sources::default()
        };
        let overlay = serde_json::json!({"tiers": {"fast": {"model": "from-editor"}}, "completion": {"tier": "coder"}});
        let c = load_with_overlay(&sources, Some(&overlay)).expect("valid");
        assert_eq!(c.tier(Tier::Fast).model, "from-editor");
        assert_eq!(c.tier(Tier::Fast).vram_mb, 100);
        assert_eq!(c.completion.tier, Tier::Coder);
        let bad = serde_json::json!({"tiers": {"fast": {"modle": "x"}}});
        assert!(load_with_overlay(&sources, Some(&bad)).is_err());
        assert_eq!(
            load_with_overlay(&sources, Some(&serde_json::json!({})))
                .expect("valid")
                .tier(Tier::Fast)
                .model,
            "from-file"
        );
    }

    #[test]
    fn latency_settings_and_keep_alive_durations() {
        let c = from_toml(
            "[latency]\nbudget_s = 45\nprewarm = false\n[tiers.fast]\ncascade = \"run\"\ncascade_below = 0.4\n[vram]\ntotal_mb = 49152",
            "t",
            None,
        )
        .expect("valid");
        assert_eq!(c.latency.budget_s, 45.0);
        assert!(!c.latency.prewarm);
        assert_eq!(c.latency.interactive_budget_s, 10.0);
        assert_eq!(c.tier(Tier::Fast).cascade, CascadeMode::Run);
        assert_eq!(c.tier(Tier::Coder).cascade, CascadeMode::Off);
        assert_eq!(c.vram.total_mb, Some(49_152));
        assert!(err("[latency]\nbudget_s = 0").contains("latency.budget_s"));
        assert!(err("[latency]\nworking_keep_alive = \"soon\"").contains("working_keep_alive"));
        assert!(err("[tiers.coder]\ncascade = \"maybe\"").contains("cascade"));
        assert!(err("[tiers.coder]\ncascade_below = 2").contains("tiers.coder.cascade_below"));
        assert!(err("[vram]\ntotal_mb = 0").contains("vram.total_mb"));
        for (text, seconds) in [
            ("-1", None),
            ("0", Some(0.0)),
            ("3600", Some(3600.0)),
            ("30m", Some(1800.0)),
            ("1h30m", Some(5400.0)),
            ("90s", Some(90.0)),
        ] {
            assert_eq!(keep_alive_seconds(text), Ok(seconds), "{text}");
        }
        assert!(keep_alive_seconds("2 weeks").is_err());
        assert!(keep_alive_seconds("").is_err());
    }

    #[test]
    fn tier_names_parse() {
        assert_eq!(" Heavy ".parse::<Tier>(), Ok(Tier::Heavy));
        assert!("medium"
            .parse::<Tier>()
            .unwrap_err()
            .contains("fast, coder, heavy"));
    }
}
