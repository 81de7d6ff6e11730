//! Per-model statistics (latency to first token, tokens per second, errors, the learned cold-load
//! time, prompt speed and first-token overhead for the latency rule) and per-endpoint circuit
//! breakers.
//!
//! Statistics can be saved to and loaded from a JSON file so that one-shot commands (`ask`,
//! `status`) share what earlier runs learned; the language server keeps them in memory.
//! The file is written whole or not at all (a temporary file, flushed to disk, renamed over it),
//! so a crash or a full disk never leaves half a file; a file that is truncated or corrupt all
//! the same (edited by hand, another program) is reported, moved aside to `stats.json.corrupt`
//! and replaced at the next save — never a reason to fail.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How many first-token latencies are kept per model for the percentiles.
const WINDOW: usize = 200;
/// How many prompt-size ratios are kept per model.
const CALIBRATION_WINDOW: usize = 8;

/// The longest cold load believed: a server that reports more is broken or lying, and a learned
/// first-token wait longer than this would leave a request hanging.
pub const MAX_LOAD: Duration = Duration::from_secs(600);

/// What is known about one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStats {
    pub requests: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Recent latencies to the first token, in ms.
    #[serde(default)]
    pub first_token_ms: VecDeque<u64>,
    /// Generation speed of the last successful answer.
    pub tokens_per_s: Option<f64>,
    /// The longest cold load seen (Ollama `load_duration`), in ms.
    pub load_ms: Option<u64>,
    /// Recent cold loads, in ms: their 90th percentile is the load the router expects.
    #[serde(default)]
    pub loads_ms: VecDeque<u64>,
    /// Prompt evaluation speed (Ollama `prompt_eval_count` / `prompt_eval_duration`), smoothed.
    #[serde(default)]
    pub prompt_tokens_per_s: Option<f64>,
    /// Recent first-token latencies less load and prompt evaluation, in ms.
    #[serde(default)]
    pub overhead_ms: VecDeque<u64>,
    /// Recent ratios of the prompt size the server reported to triage's own count: the
    /// model's tokenizer against cl100k (or the estimate), for exact budgets.
    #[serde(default)]
    pub prompt_ratios: VecDeque<f32>,
}

/// A summary for status displays.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub model: String,
    pub requests: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub first_token_p50_ms: Option<u64>,
    pub first_token_p95_ms: Option<u64>,
    pub tokens_per_s: Option<f64>,
    pub load_ms: Option<u64>,
    /// Median of recent cold loads.
    pub load_p50_ms: Option<u64>,
    pub prompt_tokens_per_s: Option<f64>,
}

/// Statistics of all models.
#[derive(Debug, Default)]
pub struct Stats {
    models: Mutex<BTreeMap<String, ModelStats>>,
}

impl Stats {
    /// Loads saved statistics; a missing file starts empty. A corrupt or unreadable one starts
    /// empty too, with a warning logged (see [`Stats::load_checked`]).
    pub fn load(path: &Path) -> Stats {
        let (stats, problem) = Stats::load_checked(path);
        if let Some(problem) = problem {
            tracing::warn!(path = %path.display(), "{problem}");
        }
        stats
    }

    /// Loads saved statistics and says what was wrong with the file, if anything: a file that
    /// does not parse is moved aside (`stats.json.corrupt`) so that the next save replaces it.
    pub fn load_checked(path: &Path) -> (Stats, Option<String>) {
        let empty = |problem: Option<String>| (Stats::default(), problem);
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return empty(None),
            Err(e) => {
                return empty(Some(format!(
                    "the statistics file {} cannot be read ({e}); starting without statistics",
                    path.display()
                )))
            }
        };
        match serde_json::from_slice::<BTreeMap<String, ModelStats>>(&bytes) {
            Ok(mut models) => {
                for s in models.values_mut() {
                    let max_load = MAX_LOAD.as_millis() as u64;
                    s.load_ms = s.load_ms.map(|ms| ms.min(max_load));
                    for ms in s.loads_ms.iter_mut() {
                        *ms = (*ms).min(max_load);
                    }
                    while s.first_token_ms.len() > WINDOW {
                        s.first_token_ms.pop_front();
                    }
                    for window in [&mut s.loads_ms, &mut s.overhead_ms] {
                        while window.len() > TIMING_WINDOW {
                            window.pop_front();
                        }
                    }
                }
                (
                    Stats {
                        models: Mutex::new(models),
                    },
                    None,
                )
            }
            Err(e) => {
                let aside = path.with_extension("json.corrupt");
                let moved = std::fs::rename(path, &aside).is_ok();
                empty(Some(format!(
                    "the statistics file {} is corrupt ({e}); {}starting afresh",
                    path.display(),
                    if moved {
                        format!("it was moved to {} and ", aside.display())
                    } else {
                        String::new()
                    }
                )))
            }
        }
    }

    /// Saves to `path` atomically: a temporary file of this process in the same directory,
    /// flushed to disk, then renamed over `path`. A crash at any point leaves the old file or
    /// the new one, never a mix; two processes saving at once each rename a whole file.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let json = serde_json::to_vec_pretty(&*self.lock())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ModelStats>> {
        match self.models.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Records a successful answer.
    pub fn success(
        &self,
        model: &str,
        first_token: Duration,
        tokens: u64,
        generation: Duration,
        load: Option<Duration>,
    ) {
        let mut models = self.lock();
        let s = models.entry(model.to_string()).or_default();
        s.requests += 1;
        s.first_token_ms.push_back(first_token.as_millis() as u64);
        while s.first_token_ms.len() > WINDOW {
            s.first_token_ms.pop_front();
        }
        if tokens > 0 && generation > Duration::from_millis(1) {
            s.tokens_per_s = Some((tokens as f64 / generation.as_secs_f64() * 10.0).round() / 10.0);
        }
        if let Some(load) = load
            .filter(|l| *l > Duration::from_millis(50))
            .map(|l| l.min(MAX_LOAD))
        {
            let ms = load.as_millis() as u64;
            s.load_ms = Some(s.load_ms.map_or(ms, |old| old.max(ms)));
        }
    }

    /// Records a failed attempt.
    pub fn failure(&self, model: &str, error: &str) {
        let mut models = self.lock();
        let s = models.entry(model.to_string()).or_default();
        s.requests += 1;
        s.errors += 1;
        s.last_error = Some(error.to_string());
    }

    /// Records a usable prompt-size ratio (see `context::budget::calibration_sample`).
    pub fn calibrate(&self, model: &str, ratio: f32) {
        let mut models = self.lock();
        let s = models.entry(model.to_string()).or_default();
        s.prompt_ratios.push_back(ratio);
        while s.prompt_ratios.len() > CALIBRATION_WINDOW {
            s.prompt_ratios.pop_front();
        }
    }

    /// Model tokens per counted token for `model`: the largest recent ratio, so that budgets
    /// err on the safe side; never below 0.8 (a server that under-reports must not make
    /// prompts overflow).
    pub fn calibration(&self, model: &str) -> Option<f32> {
        self.lock()
            .get(model)
            .and_then(|s| s.prompt_ratios.iter().copied().reduce(f32::max))
            .map(|r| r.max(0.8))
    }

    /// The longest cold load seen for `model`.
    pub fn load_time(&self, model: &str) -> Option<Duration> {
        self.lock()
            .get(model)
            .and_then(|s| s.load_ms)
            .map(|ms| Duration::from_millis(ms).min(MAX_LOAD))
    }

    pub fn summaries(&self) -> Vec<Summary> {
        self.lock()
            .iter()
            .map(|(model, s)| {
                let mut sorted: Vec<u64> = s.first_token_ms.iter().copied().collect();
                sorted.sort_unstable();
                Summary {
                    model: model.clone(),
                    requests: s.requests,
                    errors: s.errors,
                    last_error: s.last_error.clone(),
                    first_token_p50_ms: percentile(&sorted, 50),
                    first_token_p95_ms: percentile(&sorted, 95),
                    tokens_per_s: s.tokens_per_s,
                    load_ms: s.load_ms,
                    load_p50_ms: median(&s.loads_ms),
                    prompt_tokens_per_s: s.prompt_tokens_per_s,
                }
            })
            .collect()
    }
}

/// How many recent loads and overheads are kept per model.
const TIMING_WINDOW: usize = 20;

impl Stats {
    /// Records what one answer tells about a model's timing: its cold load, its prompt speed and
    /// the first-token overhead left after both (what the latency rule in `route` expects).
    pub fn record_timing(
        &self,
        model: &str,
        first_token: Duration,
        load: Option<Duration>,
        prompt: Option<crate::backend::PromptEval>,
    ) {
        let mut models = self.lock();
        let s = models.entry(model.to_string()).or_default();
        let load = load
            .filter(|l| *l > Duration::from_millis(50))
            .map(|l| l.min(MAX_LOAD));
        if let Some(load) = load {
            push_bounded(&mut s.loads_ms, load.as_millis() as u64, TIMING_WINDOW);
        }
        let mut overhead = first_token.saturating_sub(load.unwrap_or_default());
        if let Some(p) = prompt.filter(|p| p.tokens > 0 && !p.duration.is_zero()) {
            let rate = p.tokens as f64 / p.duration.as_secs_f64();
            // Smoothed: one long prompt or a busy GPU does not swing the estimate.
            let smoothed = s
                .prompt_tokens_per_s
                .map_or(rate, |old| 0.7 * old + 0.3 * rate);
            s.prompt_tokens_per_s = Some((smoothed * 10.0).round() / 10.0);
            overhead = overhead.saturating_sub(p.duration);
        }
        push_bounded(
            &mut s.overhead_ms,
            overhead.as_millis() as u64,
            TIMING_WINDOW,
        );
    }

    /// What the router needs to expect `model`'s time to first token.
    pub fn timing(&self, model: &str) -> crate::route::ModelTiming {
        let models = self.lock();
        let s = models.get(model);
        crate::route::ModelTiming {
            model: model.to_string(),
            // The 90th percentile: a request that found the model already loading reports only
            // the rest of that load, which must not make loads look quick.
            load_s: s
                .and_then(|s| high(&s.loads_ms).or(s.load_ms))
                .map(|ms| ms as f64 / 1000.0),
            prompt_tokens_per_s: s.and_then(|s| s.prompt_tokens_per_s),
            overhead_s: s
                .and_then(|s| median(&s.overhead_ms))
                .map(|ms| ms as f64 / 1000.0),
            first_token_p50_s: s
                .and_then(|s| {
                    let mut v: Vec<u64> = s.first_token_ms.iter().copied().collect();
                    v.sort_unstable();
                    percentile(&v, 50)
                })
                .map(|ms| ms as f64 / 1000.0),
        }
    }
}

fn push_bounded(values: &mut VecDeque<u64>, value: u64, window: usize) {
    values.push_back(value);
    while values.len() > window {
        values.pop_front();
    }
}

fn high(values: &VecDeque<u64>) -> Option<u64> {
    let mut sorted: Vec<u64> = values.iter().copied().collect();
    sorted.sort_unstable();
    percentile(&sorted, 90)
}

fn median(values: &VecDeque<u64>) -> Option<u64> {
    let mut sorted: Vec<u64> = values.iter().copied().collect();
    sorted.sort_unstable();
    percentile(&sorted, 50)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: usize) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// Where statistics are saved: `$TRIAGE_STATE_DIR`, else the user's state (or data) dir.
pub fn default_path() -> Option<PathBuf> {
    let dir = std::env::var_os("TRIAGE_STATE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            dirs::state_dir()
                .or_else(dirs::data_local_dir)
                .map(|d| d.join("triage"))
        })?;
    Some(dir.join("stats.json"))
}

/// Consecutive failures after which an endpoint is skipped for a while (LiteLLM's default).
pub const BREAKER_FAILURES: u32 = 3;
/// How long a tripped endpoint is skipped.
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(5);

/// Per-endpoint circuit breakers.
#[derive(Debug, Default)]
pub struct Breakers {
    state: Mutex<HashMap<String, (u32, Option<Instant>)>>,
}

impl Breakers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Option<Instant>)>> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether `endpoint` is cooling down after repeated failures.
    pub fn is_open(&self, endpoint: &str) -> bool {
        self.lock()
            .get(endpoint)
            .and_then(|(_, until)| *until)
            .is_some_and(|until| Instant::now() < until)
    }

    pub fn success(&self, endpoint: &str) {
        self.lock().remove(endpoint);
    }

    pub fn failure(&self, endpoint: &str) {
        let mut state = self.lock();
        let entry = state.entry(endpoint.to_string()).or_insert((0, None));
        entry.0 += 1;
        if entry.0 >= BREAKER_FAILURES {
            entry.1 = Some(Instant::now() + BREAKER_COOLDOWN);
            entry.0 = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_takes_the_largest_recent_ratio_and_a_floor() {
        let stats = Stats::default();
        assert_eq!(stats.calibration("m"), None);
        stats.calibrate("m", 1.1);
        stats.calibrate("m", 1.3);
        stats.calibrate("m", 0.9);
        assert_eq!(stats.calibration("m"), Some(1.3));
        for _ in 0..CALIBRATION_WINDOW {
            stats.calibrate("m", 0.6);
        }
        assert_eq!(
            stats.calibration("m"),
            Some(0.8),
            "old ratios age out; 0.8 is the floor"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stats.json");
        stats.save(&path).expect("save");
        assert_eq!(
            Stats::load(&path).calibration("m"),
            Some(0.8),
            "kept between runs"
        );
    }

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 95), Some(7));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 95), Some(95));
    }

    #[test]
    fn stats_summarise_and_survive_a_round_trip() {
        let stats = Stats::default();
        stats.success(
            "m",
            Duration::from_millis(100),
            50,
            Duration::from_secs(1),
            Some(Duration::from_secs(3)),
        );
        stats.success("m", Duration::from_millis(300), 0, Duration::ZERO, None);
        stats.failure("m", "HTTP 500");
        let s = &stats.summaries()[0];
        assert_eq!((s.requests, s.errors), (3, 1));
        assert_eq!(s.first_token_p50_ms, Some(100));
        assert_eq!(s.first_token_p95_ms, Some(300));
        assert_eq!(s.tokens_per_s, Some(50.0));
        assert_eq!(stats.load_time("m"), Some(Duration::from_secs(3)));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/stats.json");
        stats.save(&path).expect("saved");
        assert_eq!(Stats::load(&path).summaries(), stats.summaries());
        std::fs::write(&path, b"{broken").expect("write");
        assert!(Stats::load(&path).summaries().is_empty());
    }

    #[test]
    fn timing_learns_loads_prompt_speed_and_overhead() {
        let stats = Stats::default();
        assert_eq!(stats.timing("m").load_s, None);
        let prompt = |tokens, ms| {
            Some(crate::backend::PromptEval {
                tokens,
                duration: Duration::from_millis(ms),
            })
        };
        // 10 s load, 1000 tokens in 0.5 s, first token at 10.6 s: 100 ms overhead.
        stats.record_timing(
            "m",
            Duration::from_millis(10_600),
            Some(Duration::from_secs(10)),
            prompt(1000, 500),
        );
        // Warm: 2000 tokens/s again, 80 ms overhead.
        stats.record_timing("m", Duration::from_millis(330), None, prompt(500, 250));
        stats.record_timing(
            "m",
            Duration::from_millis(12_000),
            Some(Duration::from_secs(12)),
            None,
        );
        let t = stats.timing("m");
        assert_eq!(t.load_s, Some(12.0), "the 90th percentile of 10 s and 12 s");
        assert_eq!(t.prompt_tokens_per_s, Some(2000.0));
        assert_eq!(t.overhead_s, Some(0.08));
        let s = &stats.summaries()[0];
        assert_eq!(s.load_p50_ms, Some(10_000));
        assert_eq!(s.prompt_tokens_per_s, Some(2000.0));
        // Old state files without the new fields still load.
        let old: ModelStats = serde_json::from_str(
            r#"{"requests":1,"errors":0,"last_error":null,"tokens_per_s":null,"load_ms":5000}"#,
        )
        .expect("old format");
        assert!(old.loads_ms.is_empty());
    }

    #[test]
    fn a_truncated_or_corrupt_state_file_is_reported_moved_aside_and_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stats.json");
        let stats = Stats::default();
        stats.success(
            "m",
            Duration::from_millis(100),
            5,
            Duration::from_secs(1),
            None,
        );
        stats.save(&path).expect("saved");
        let whole = std::fs::read(&path).expect("read");
        let corrupt: [&[u8]; 5] = [
            &whole[..whole.len() / 2],     // a crash mid-write of a naive writer
            b"",                           // an empty file
            b"\xff\xfe not json",          // garbage
            br#"{"m": {"requests": -1}}"#, // JSON of the wrong shape
            br#"[1, 2, 3]"#,
        ];
        for bytes in corrupt {
            std::fs::write(&path, bytes).expect("write");
            let (loaded, problem) = Stats::load_checked(&path);
            assert!(loaded.summaries().is_empty());
            let problem = problem.expect("reported");
            assert!(
                problem.contains("corrupt") && problem.contains("moved to"),
                "{problem}"
            );
            assert_eq!(
                std::fs::read(path.with_extension("json.corrupt")).expect("kept aside"),
                bytes
            );
            assert!(!path.exists(), "moved aside, so the next save replaces it");
            loaded.save(&path).expect("replaced");
            assert_eq!(Stats::load_checked(&path).1, None, "the new file is whole");
        }
        // A missing file is no problem; no temporary file is left behind.
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(Stats::load_checked(&path).1, None);
        stats.save(&path).expect("saved");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn a_lying_load_duration_is_clamped() {
        let stats = Stats::default();
        stats.success(
            "m",
            Duration::from_millis(10),
            1,
            Duration::from_secs(1),
            Some(Duration::from_nanos(u64::MAX)),
        );
        assert_eq!(stats.load_time("m"), Some(MAX_LOAD));
        stats.record_timing(
            "m",
            Duration::from_secs(1),
            Some(Duration::from_nanos(u64::MAX)),
            None,
        );
        assert_eq!(stats.timing("m").load_s, Some(MAX_LOAD.as_secs_f64()));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stats.json");
        std::fs::write(&path, br#"{"m": {"requests": 1, "errors": 0, "last_error": null, "tokens_per_s": null, "load_ms": 18446744073709551615}}"#).expect("write");
        assert_eq!(Stats::load(&path).load_time("m"), Some(MAX_LOAD));
    }

    #[test]
    fn breaker_opens_after_three_failures_and_closes_on_success() {
        let b = Breakers::default();
        b.failure("gpu");
        b.failure("gpu");
        assert!(!b.is_open("gpu"));
        b.failure("gpu");
        assert!(b.is_open("gpu"));
        b.success("gpu");
        assert!(!b.is_open("gpu"));
    }
}
