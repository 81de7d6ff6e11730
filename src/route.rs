//! Routing policy: a pure function from an [`Analysis`], a VRAM [`Snapshot`] and the [`Config`]
//! to a [`Decision`] — tier, model, endpoint, confidence, reasons, a warning for the user when
//! the choice was constrained, and the ordered fallback chain.
//!
//! The VRAM rules: a loaded model costs nothing extra; a model that is not loaded fits when its
//! `vram_mb` plus the headroom is at most the free VRAM; a tier that does not fit is skipped in
//! favour of the best-scoring tier that fits or is loaded, and the decision says so. With no GPU
//! visible the decision rests on the analysis alone. A forced tier or model is obeyed, with a
//! warning when it will not fit. No I/O here: the caller gathers the snapshot.
//!
//! With [`route_with_latency`] the choice also weighs time: the expected wait to the first
//! token of each tier (load, prompt, overhead, and the reloads its evictions would cause)
//! against the quality the analysis expects of it, under the request's budget. The rule is
//! documented at [`choose_by_latency`]; its inputs (per-model timings, who is answering, what
//! was used when) are gathered by the caller too.

use serde::Serialize;

use crate::analyze::Analysis;
use crate::config::{Config, Tier};
use crate::vram::Snapshot;

/// What the user forced, if anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Force {
    pub tier: Option<Tier>,
    pub model: Option<String>,
}

/// One model on one endpoint: something the engine can call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub tier: Tier,
    pub model: String,
    pub endpoint: String,
}

/// The router's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub tier: Tier,
    pub model: String,
    pub endpoint: String,
    /// 0..1: how sure the router is that this tier is the right one.
    pub confidence: f32,
    /// Why, in words, from the analysis on.
    pub reasons: Vec<String>,
    /// Something the user should see: the request was moved for lack of VRAM, or a forced
    /// model will not fit.
    pub warning: Option<String>,
    /// What to try next if the chosen model fails, in order.
    pub fallbacks: Vec<Candidate>,
    /// The expected wait of each enabled tier, when the latency rule decided.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expected: Vec<Expected>,
}

/// A request the router cannot serve.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("the {0} tier is disabled in the configuration: enable it (`[tiers.{0}] enabled = true`) or pick another tier")]
    TierDisabled(Tier),
}

/// Whether and why a tier's model can run now.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fit {
    /// No GPU visible: nothing is known, everything is allowed.
    Unknown,
    Loaded,
    /// Loaded, but partly on the CPU (`size_vram` < `size`): slow; prefer another model.
    Offloaded {
        vram_mb: u64,
        size_mb: u64,
    },
    Fits,
    /// Not loaded and needs more than is free: needed (with headroom) and free, in MB.
    TooBig {
        needed_mb: u64,
        free_mb: u64,
    },
}

impl Fit {
    fn ok(self) -> bool {
        !matches!(self, Fit::TooBig { .. } | Fit::Offloaded { .. })
    }
}

fn fit(config: &Config, snapshot: &Snapshot, tier: Tier) -> Fit {
    let Some(gpu) = snapshot.gpu else {
        return Fit::Unknown;
    };
    let t = config.tier(tier);
    if let Some(loaded) = snapshot.loaded(&t.model) {
        if loaded.offloaded() {
            return Fit::Offloaded {
                vram_mb: loaded.vram_mb,
                size_mb: loaded.size_mb,
            };
        }
        return Fit::Loaded;
    }
    let needed_mb = t.vram_mb.saturating_add(config.vram.headroom_mb);
    if needed_mb <= gpu.free_mb {
        Fit::Fits
    } else {
        Fit::TooBig {
            needed_mb,
            free_mb: gpu.free_mb,
        }
    }
}

/// Decides which model answers, by the analysis and the VRAM rules alone.
pub fn route(
    config: &Config,
    snapshot: &Snapshot,
    analysis: &Analysis,
    force: &Force,
) -> Result<Decision, Error> {
    route_inner(config, snapshot, analysis, force, None)
}

/// Decides which model answers, weighing the expected wait of each tier against its quality
/// (see [`choose_by_latency`]). Without a GPU reading nothing is known about evictions and the
/// decision is [`route`]'s.
pub fn route_with_latency(
    config: &Config,
    snapshot: &Snapshot,
    analysis: &Analysis,
    force: &Force,
    latency: &Latency<'_>,
) -> Result<Decision, Error> {
    route_inner(config, snapshot, analysis, force, Some(latency))
}

fn route_inner(
    config: &Config,
    snapshot: &Snapshot,
    analysis: &Analysis,
    force: &Force,
    latency: Option<&Latency<'_>>,
) -> Result<Decision, Error> {
    let latency = latency.filter(|_| snapshot.gpu.is_some());
    let mut expected = Vec::new();
    let mut reasons = analysis.reasons.clone();
    let mut warning = None;
    let order = preference_order(analysis.recommended());
    if snapshot.gpu.is_none() {
        reasons.push("no GPU seen: decided by analysis alone".to_string());
    }

    let forced_tier = force.tier.or_else(|| {
        // A forced model that is some tier's model means that tier.
        let model = force.model.as_deref()?;
        Tier::ALL
            .into_iter()
            .find(|t| config.tier(*t).model == model)
    });

    let tier = match forced_tier {
        Some(tier) => {
            if !config.tier(tier).enabled {
                return Err(Error::TierDisabled(tier));
            }
            reasons.push(format!("{tier} tier forced by the request"));
            match fit(config, snapshot, tier) {
                Fit::TooBig { needed_mb, free_mb } => {
                    warning = Some(format!(
                        "{} needs about {needed_mb} MB of VRAM but {free_mb} MB is free: it will evict other models or run partly on the CPU",
                        config.tier(tier).model
                    ));
                }
                Fit::Offloaded { vram_mb, size_mb } => {
                    warning = Some(offload_warning(&config.tier(tier).model, vram_mb, size_mb));
                }
                _ => {}
            }
            if let Some(latency) = latency {
                let e = expect(config, snapshot, analysis, latency, tier);
                reasons.push(format!(
                    "{tier} expected to answer in ~{}{}",
                    seconds(e.first_token_s()),
                    evicting(config, &e)
                ));
                if !e.blocked_by.is_empty() {
                    warning = Some(format!(
                        "{} must wait for {} to finish answering before it can load",
                        config.tier(tier).model,
                        e.blocked_by.join(", ")
                    ));
                }
                expected.push(e);
            }
            tier
        }
        None => match latency {
            Some(latency) => {
                let (tier, all) = choose_by_latency(
                    config,
                    snapshot,
                    analysis,
                    latency,
                    &mut reasons,
                    &mut warning,
                );
                expected = all;
                tier
            }
            None => choose(config, snapshot, &order, &mut reasons, &mut warning),
        },
    };

    let tier_config = config.tier(tier);
    let model = match &force.model {
        Some(m) if *m != tier_config.model => {
            reasons.push(format!(
                "model {m} forced by the request; its VRAM need is unknown"
            ));
            m.clone()
        }
        _ => tier_config.model.clone(),
    };
    match fit(config, snapshot, tier) {
        Fit::Loaded => reasons.push(format!("{} is already loaded", tier_config.model)),
        Fit::Fits => reasons.push(format!("{} fits into free VRAM", tier_config.model)),
        Fit::TooBig { .. } if latency.is_some() => reasons.push(format!(
            "{} loads by evicting idle models, as Ollama does",
            tier_config.model
        )),
        _ => {}
    }

    let endpoint = tier_config.endpoints.first().cloned().unwrap_or_default();
    let fallbacks = fallback_chain(config, snapshot, tier, &model, &order);
    let moved = tier != order[0] && forced_tier.is_none();
    let mut confidence = analysis.scores.get(tier);
    if moved {
        if latency.is_some() {
            // Chosen for time: how well it is expected to answer, not whether it is the
            // right tier (the coder model answers a heavy question half as well).
            confidence = quality(analysis, tier);
        }
        // The analysis preferred another tier; the answer may be weaker than it could be.
        confidence = confidence.min(0.5);
    }
    Ok(Decision {
        tier,
        model,
        endpoint,
        confidence: confidence.clamp(0.0, 1.0),
        reasons,
        warning,
        fallbacks,
        expected,
    })
}

/// The analysis's preferred tier, then the others from the most capable down: when the
/// preferred model cannot run, the strongest one that can gives the best answer (a heavy
/// question goes to the coder model before the 3B one, whatever their small scores say).
fn preference_order(preferred: Tier) -> [Tier; 3] {
    let mut order = [preferred; 3];
    let rest = [Tier::Heavy, Tier::Coder, Tier::Fast]
        .into_iter()
        .filter(|t| *t != preferred);
    for (slot, tier) in order[1..].iter_mut().zip(rest) {
        *slot = tier;
    }
    order
}

/// Walks the preference order to the first enabled tier that fits or is loaded.
fn choose(
    config: &Config,
    snapshot: &Snapshot,
    ranking: &[Tier; 3],
    reasons: &mut Vec<String>,
    warning: &mut Option<String>,
) -> Tier {
    let preferred = ranking[0];
    for &tier in ranking {
        let t = config.tier(tier);
        if !t.enabled {
            reasons.push(format!("{tier} tier is disabled in the configuration"));
            continue;
        }
        match fit(config, snapshot, tier) {
            Fit::TooBig { needed_mb, free_mb } => {
                reasons.push(format!(
                    "{tier} ({}) needs {needed_mb} MB with headroom but only {free_mb} MB of VRAM is free",
                    t.model
                ));
            }
            Fit::Offloaded { vram_mb, size_mb } => {
                reasons.push(format!(
                    "{tier} ({}) is loaded with only {vram_mb} of {size_mb} MB in VRAM, the rest on the CPU",
                    t.model
                ));
            }
            _ => {
                if tier != preferred {
                    reasons.push(format!("moved from {preferred} to {tier}"));
                    if config.tier(preferred).enabled {
                        *warning = Some(format!(
                            "answered by the {tier} model ({}) because the {preferred} model ({}) does not fit into free VRAM",
                            t.model,
                            config.tier(preferred).model
                        ));
                    }
                }
                return tier;
            }
        }
    }
    // Nothing fits fully: a model already loaded, even partly on the CPU, answers at once.
    for &tier in ranking {
        if let Fit::Offloaded { vram_mb, size_mb } = fit(config, snapshot, tier) {
            if config.tier(tier).enabled {
                *warning = Some(offload_warning(&config.tier(tier).model, vram_mb, size_mb));
                return tier;
            }
        }
    }
    // Nothing fits and nothing is loaded: take the smallest enabled model, which has the best
    // chance of loading at all.
    let smallest = config
        .enabled_tiers()
        .min_by_key(|t| config.tier(*t).vram_mb)
        .unwrap_or(preferred);
    reasons.push(format!(
        "no enabled model fits into free VRAM: using the smallest, {smallest}"
    ));
    *warning = Some(format!(
        "no model fits into free VRAM; {} will evict other models or run partly on the CPU",
        config.tier(smallest).model
    ));
    smallest
}

// ---------------------------------------------------------------------------------------------
// Latency: the expected wait of each tier, and the rule that trades it against quality.

/// Prompt speed assumed for a model never measured: tokens/s ≈ this / its `vram_mb` (a 3B model
/// reads ~10 000 tokens/s, a 30B ~1 400, a 70B ~600 on one modern GPU).
const PRIOR_PROMPT_SPEED: f64 = 25_000_000.0;
/// First-token overhead (scheduling, the first decode step) assumed when none was measured.
const PRIOR_OVERHEAD_S: f64 = 0.15;
/// A model evicted and loaded again within this time is reload ping-pong.
pub const PING_PONG_S: f64 = 60.0;
/// How long a model that was used stays likely to be needed again: the reload an eviction
/// causes counts fully right after use and not at all after this long idle.
pub const REUSE_WINDOW_S: f64 = 900.0;
/// How well a tier answers a request whose right tier is another, by capability: a bigger
/// model answers a smaller tier's request well but slower and holding VRAM the right model
/// needs (a quarter); the coder model answers a heavy question half as well as the heavy one,
/// the 3B model hardly answers a coder or heavy request (a tenth). Rows: chosen tier; columns:
/// right tier (fast, coder, heavy).
const CREDIT: [[f32; 3]; 3] = [[1.0, 0.1, 0.1], [0.25, 1.0, 0.5], [0.25, 0.25, 1.0]];
/// What a wait as long as the whole budget costs, in units of expected quality: half, so a
/// design question waits the 15 s a coder load takes under a 30 s budget rather than go to the
/// 3B model, while a load that blows the budget is out anyway.
const WAIT_WEIGHT: f64 = 0.5;
/// Ollama's keep_alive when a request sets none.
const OLLAMA_DEFAULT_KEEP_ALIVE_S: f64 = 300.0;

/// What is known about a model's speed, from statistics (or nothing, then priors are used).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelTiming {
    pub model: String,
    /// The 90th percentile of its observed cold loads, in seconds.
    pub load_s: Option<f64>,
    pub prompt_tokens_per_s: Option<f64>,
    /// Median first-token time beyond load and prompt evaluation, in seconds.
    pub overhead_s: Option<f64>,
    /// Median observed time to the first token, in seconds (for display).
    pub first_token_p50_s: Option<f64>,
}

/// How triage has been using a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Residency {
    pub model: String,
    /// A request is being answered by it right now: it is never evicted.
    pub in_use: bool,
    /// Seconds since triage last used it; `None` when triage never did.
    pub idle_s: Option<f64>,
    /// Seconds since a request last needed its tier (the analysis preferred it): how likely it is
    /// to be needed again, whatever answered meanwhile. `None`: never.
    pub wanted_s_ago: Option<f64>,
    /// Seconds since it was seen leaving VRAM before its keep_alive ran out.
    pub evicted_s_ago: Option<f64>,
    /// Part of the user's working set (wanted several times lately): its reload after an
    /// eviction is expected for sure.
    pub working: bool,
    /// Seconds until it finishes what it is answering, where known: a request to it queues.
    pub busy_for_s: Option<f64>,
    /// The keep_alive triage last sent for it, in seconds (`f64::INFINITY` for ever).
    pub keep_alive_s: Option<f64>,
}

/// The latency rule's inputs besides config, snapshot and analysis.
#[derive(Debug, Clone, Copy)]
pub struct Latency<'a> {
    pub timings: &'a [ModelTiming],
    pub residency: &'a [Residency],
    /// The wait this request may cost, in seconds.
    pub budget_s: f64,
    /// Whether the budget is a hard bound (set by the request, or an interactive code action) or
    /// only the scale of the wait's cost (the default for a typed question: a user who asked a
    /// design question with nothing loaded rather waits for the heavy model's load than get the
    /// coder model's answer sooner).
    pub hard_budget: bool,
    /// Load speed for models never seen loading (`[latency] load_mb_per_s`).
    pub load_mb_per_s: f64,
}

impl Latency<'_> {
    fn timing(&self, model: &str) -> Option<&ModelTiming> {
        self.timings.iter().find(|t| t.model == model)
    }

    fn residency(&self, model: &str) -> Option<&Residency> {
        let wanted = crate::vram::canonical_model_name(model);
        self.residency
            .iter()
            .find(|r| crate::vram::canonical_model_name(&r.model) == wanted)
    }

    fn load_s(&self, model: &str, size_mb: u64) -> f64 {
        self.timing(model)
            .and_then(|t| t.load_s)
            .unwrap_or(size_mb as f64 / self.load_mb_per_s)
    }
}

/// The expected wait to the first token if `tier` answers now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Expected {
    pub tier: Tier,
    pub loaded: bool,
    pub load_s: f64,
    /// Waiting for the model to finish another answer (it answers one at a time).
    pub queue_s: f64,
    pub prompt_s: f64,
    pub overhead_s: f64,
    /// Models that loading it would unload, in the order Ollama picks them (idle ones, the
    /// shortest keep_alive first).
    pub evicts: Vec<String>,
    /// Their reload time, weighted by how recently they were used.
    pub eviction_cost_s: f64,
    /// Models answering right now that would have to make room: never evicted.
    pub blocked_by: Vec<String>,
    /// Evicted models used within the last minute: loading now would be reload ping-pong.
    pub ping_pong: Vec<String>,
    /// Loaded, but partly on the CPU.
    pub offloaded: bool,
    /// Does not fit even with every idle model unloaded.
    pub never_fits: bool,
}

impl Expected {
    /// Seconds until the first token.
    pub fn first_token_s(&self) -> f64 {
        self.load_s + self.queue_s + self.prompt_s + self.overhead_s
    }

    /// The wait to the first token plus the reloads its evictions will cost later.
    pub fn cost_s(&self) -> f64 {
        self.first_token_s() + self.eviction_cost_s
    }

    fn eligible(&self) -> bool {
        self.blocked_by.is_empty()
            && self.ping_pong.is_empty()
            && !self.offloaded
            && !self.never_fits
    }
}

/// The keep_alive a loaded model runs under, for Ollama's eviction order.
fn keep_alive_of(config: &Config, latency: &Latency<'_>, model: &str) -> f64 {
    if let Some(k) = latency.residency(model).and_then(|r| r.keep_alive_s) {
        return k;
    }
    Tier::ALL
        .into_iter()
        .map(|t| config.tier(t))
        .find(|t| t.model == model)
        .and_then(|t| crate::config::keep_alive_seconds(&t.keep_alive).ok())
        .map_or(OLLAMA_DEFAULT_KEEP_ALIVE_S, |k| k.unwrap_or(f64::INFINITY))
}

/// The expected wait for one tier: its load (observed, or size ÷ load speed) unless loaded, the
/// prompt at its prompt speed, its first-token overhead; and what making room would unload.
pub fn expect(
    config: &Config,
    snapshot: &Snapshot,
    analysis: &Analysis,
    latency: &Latency<'_>,
    tier: Tier,
) -> Expected {
    let t = config.tier(tier);
    let timing = latency.timing(&t.model);
    let tokens = (analysis.tokens.prompt + analysis.tokens.selection) as f64;
    let speed = timing
        .and_then(|t| t.prompt_tokens_per_s)
        .unwrap_or(PRIOR_PROMPT_SPEED / t.vram_mb.max(1) as f64);
    let mut e = Expected {
        tier,
        loaded: false,
        load_s: 0.0,
        queue_s: 0.0,
        prompt_s: tokens / speed,
        overhead_s: timing
            .and_then(|t| t.overhead_s)
            .unwrap_or(PRIOR_OVERHEAD_S),
        evicts: Vec::new(),
        eviction_cost_s: 0.0,
        blocked_by: Vec::new(),
        ping_pong: Vec::new(),
        offloaded: false,
        never_fits: false,
    };
    if let Some(loaded) = snapshot.loaded(&t.model) {
        e.loaded = true;
        e.offloaded = loaded.offloaded();
        e.queue_s = latency
            .residency(&t.model)
            .filter(|r| r.in_use)
            .and_then(|r| r.busy_for_s)
            .unwrap_or(0.0);
        return e;
    }
    e.load_s = latency.load_s(&t.model, t.vram_mb);
    if latency
        .residency(&t.model)
        .and_then(|r| r.evicted_s_ago)
        .is_some_and(|ago| ago < PING_PONG_S)
    {
        e.ping_pong.push(t.model.clone());
    }
    let Some(gpu) = snapshot.gpu else {
        return e;
    };
    let need = t.vram_mb.saturating_add(config.vram.headroom_mb);
    let mut free = gpu.free_mb;
    if need <= free {
        return e;
    }
    // Ollama unloads idle models, the one with the shortest keep_alive first (ties by name),
    // one at a time until the new model fits; a model answering is never unloaded.
    let mut victims: Vec<&crate::vram::LoadedModel> = snapshot.loaded.iter().collect();
    victims.sort_by(|a, b| {
        keep_alive_of(config, latency, &a.name)
            .total_cmp(&keep_alive_of(config, latency, &b.name))
            .then(a.name.cmp(&b.name))
    });
    let mut busy = Vec::new();
    for victim in victims {
        if free >= need {
            break;
        }
        let residency = latency.residency(&victim.name);
        if residency.is_some_and(|r| r.in_use) {
            busy.push(victim.name.clone());
            continue;
        }
        free = free.saturating_add(victim.vram_mb);
        // Answering for another tier (a loaded heavy model taking coder tasks) does not make a
        // model likely to be needed: only requests that wanted its tier do.
        let reuse = match residency {
            Some(r) if r.working => 1.0,
            Some(r) => r
                .wanted_s_ago
                .map_or(0.0, |ago| (1.0 - ago / REUSE_WINDOW_S).clamp(0.0, 1.0)),
            None => 0.0,
        };
        e.eviction_cost_s +=
            reuse * latency.load_s(&victim.name, victim.vram_mb.max(victim.size_mb));
        if residency
            .and_then(|r| r.idle_s)
            .is_some_and(|idle| idle < PING_PONG_S)
        {
            e.ping_pong.push(victim.name.clone());
        }
        e.evicts.push(victim.name.clone());
    }
    if free < need {
        if busy.is_empty() {
            e.never_fits = true;
        } else {
            e.blocked_by = busy;
        }
    }
    e
}

/// How well `tier` is expected to answer: the analysis's probability of each right tier
/// times the credit `tier` earns for it ([`CREDIT`]).
fn quality(analysis: &Analysis, tier: Tier) -> f32 {
    Tier::ALL
        .into_iter()
        .map(|right| analysis.scores.get(right) * CREDIT[tier.index()][right.index()])
        .sum()
}

/// The latency rule. For every enabled tier: the expected wait `w` to its first token (load if
/// not loaded, prompt ÷ prompt speed, overhead) plus the weighted reloads of what it would evict,
/// and its quality `q` (see [`quality`]). Tiers that would evict a model in use, or one used in
/// the last minute (ping-pong), or that run partly on the CPU, are out; of the rest, those
/// within the budget `B` if any, when the budget is hard (see [`Latency::hard_budget`]). The choice maximises `q − ½·w / B`: a slower tier is accepted
/// only when its quality margin over a quicker one outweighs the extra wait as a share of the
/// budget — with a 30 s budget, 0.1 of expected quality buys 6 s.
fn choose_by_latency(
    config: &Config,
    snapshot: &Snapshot,
    analysis: &Analysis,
    latency: &Latency<'_>,
    reasons: &mut Vec<String>,
    warning: &mut Option<String>,
) -> (Tier, Vec<Expected>) {
    let preferred = analysis.recommended();
    let budget = latency.budget_s.max(0.1);
    let all: Vec<Expected> = config
        .enabled_tiers()
        .map(|tier| expect(config, snapshot, analysis, latency, tier))
        .collect();
    for tier in Tier::ALL {
        if !config.tier(tier).enabled {
            reasons.push(format!("{tier} tier is disabled in the configuration"));
        }
    }
    for e in &all {
        let model = &config.tier(e.tier).model;
        if !e.blocked_by.is_empty() {
            reasons.push(format!(
                "{} ({model}) would have to evict {}, which is answering: never done",
                e.tier,
                names(config, &e.blocked_by)
            ));
        } else if e.ping_pong.iter().any(|m| m == model) {
            reasons.push(format!(
                "{} ({model}) was evicted less than a minute ago: no reload ping-pong",
                e.tier
            ));
        } else if !e.ping_pong.is_empty() {
            reasons.push(format!(
                "{} ({model}) would evict {}, used less than a minute ago: no reload ping-pong",
                e.tier,
                names(config, &e.ping_pong)
            ));
        } else if e.offloaded {
            reasons.push(format!("{} ({model}) is loaded partly on the CPU", e.tier));
        } else if e.never_fits {
            reasons.push(format!(
                "{} ({model}) does not fit into VRAM even with every idle model unloaded",
                e.tier
            ));
        }
    }
    let eligible: Vec<&Expected> = all.iter().filter(|e| e.eligible()).collect();
    if eligible.is_empty() {
        // Nothing can start cleanly: the VRAM rules decide, as without latency awareness.
        let order = preference_order(preferred);
        return (choose(config, snapshot, &order, reasons, warning), all);
    }
    let within: Vec<&Expected> = eligible
        .iter()
        .copied()
        .filter(|e| !latency.hard_budget || e.cost_s() <= budget)
        .collect();
    let pool = if within.is_empty() {
        reasons.push(format!(
            "no model can answer within the {} budget: taking the best trade",
            seconds(budget)
        ));
        eligible
    } else {
        within
    };
    let value = |e: &Expected| quality(analysis, e.tier) as f64 - WAIT_WEIGHT * e.cost_s() / budget;
    let chosen = pool
        .iter()
        .copied()
        .fold(None::<&Expected>, |best, e| match best {
            Some(b) if value(b) >= value(e) => Some(b),
            _ => Some(e),
        })
        .map_or(preferred, |e| e.tier);
    reasons.push(format!(
        "expected wait to the first token: {} (budget {})",
        all.iter()
            .map(|e| format!("{} {}", e.tier, seconds(e.cost_s())))
            .collect::<Vec<_>>()
            .join(", "),
        seconds(budget)
    ));
    let find = |tier: Tier| all.iter().find(|e| e.tier == tier);
    if chosen != preferred {
        let chosen_e = find(chosen);
        let ready = match chosen_e {
            Some(c) if c.loaded => format!("{chosen} is loaded and fits the task"),
            Some(c) => format!("{chosen} is ready in ~{}", seconds(c.first_token_s())),
            None => String::new(),
        };
        let over = |p: &Expected| {
            if p.cost_s() > budget {
                format!(", over the {} budget", seconds(budget))
            } else {
                String::new()
            }
        };
        match find(preferred) {
            Some(p) if !p.eligible() => {
                reasons.push(format!("moved from {preferred} to {chosen}"));
                let why = if p.never_fits {
                    "does not fit into VRAM".to_string()
                } else if !p.blocked_by.is_empty() {
                    format!(
                        "would have to evict {}, which is answering",
                        names(config, &p.blocked_by)
                    )
                } else if p.offloaded {
                    "runs partly on the CPU".to_string()
                } else {
                    "would cause reload ping-pong".to_string()
                };
                *warning = Some(format!(
                    "answered by the {chosen} model ({}) because the {preferred} model ({}) {why}",
                    config.tier(chosen).model,
                    config.tier(preferred).model
                ));
            }
            Some(p) if !p.loaded => reasons.push(format!(
                "{preferred} would load for ~{}{}{}; {ready}",
                seconds(p.load_s),
                evicting(config, p),
                over(p)
            )),
            Some(p) if p.cost_s() > budget => reasons.push(format!(
                "{preferred} would take ~{}{}; {ready}",
                seconds(p.cost_s()),
                over(p)
            )),
            _ => reasons.push(format!(
                "{chosen} answers sooner for almost the same expected quality"
            )),
        }
    } else if let Some(c) = find(chosen).filter(|c| !c.loaded) {
        if let Some(quick) = eligible_quicker(&all, c, analysis) {
            reasons.push(format!(
                "{chosen} is worth loading (~{}{}): its quality margin over {} outweighs the wait",
                seconds(c.load_s),
                evicting(config, c),
                quick.tier
            ));
        }
    }
    (chosen, all)
}

/// The best of the quicker alternatives to `than`, for the reasons.
fn eligible_quicker<'a>(
    all: &'a [Expected],
    than: &Expected,
    analysis: &Analysis,
) -> Option<&'a Expected> {
    all.iter()
        .filter(|e| e.eligible() && e.cost_s() < than.cost_s())
        .max_by(|a, b| quality(analysis, a.tier).total_cmp(&quality(analysis, b.tier)))
}

/// Tier names for the models (the model's name when it is no tier's).
fn names(config: &Config, models: &[String]) -> String {
    models
        .iter()
        .map(|m| {
            Tier::ALL
                .into_iter()
                .find(|t| config.tier(*t).model == *m)
                .map_or(m.clone(), |t| t.to_string())
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

fn evicting(config: &Config, e: &Expected) -> String {
    if e.evicts.is_empty() {
        String::new()
    } else {
        format!(" and evict {}", names(config, &e.evicts))
    }
}

/// "~34 s", "0.3 s".
fn seconds(s: f64) -> String {
    if s >= 10.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

fn offload_warning(model: &str, vram_mb: u64, size_mb: u64) -> String {
    format!(
        "{model} runs partly on the CPU ({vram_mb} of {size_mb} MB in VRAM): answers will be slow"
    )
}

/// The chosen tier's other endpoints, then the other enabled tiers that fit, in preference order.
fn fallback_chain(
    config: &Config,
    snapshot: &Snapshot,
    chosen: Tier,
    model: &str,
    ranking: &[Tier; 3],
) -> Vec<Candidate> {
    let mut chain: Vec<Candidate> = config
        .tier(chosen)
        .endpoints
        .iter()
        .skip(1)
        .map(|endpoint| Candidate {
            tier: chosen,
            model: model.to_string(),
            endpoint: endpoint.clone(),
        })
        .collect();
    for &tier in ranking {
        let t = config.tier(tier);
        if tier == chosen || !t.enabled || !fit(config, snapshot, tier).ok() {
            continue;
        }
        chain.extend(t.endpoints.iter().map(|endpoint| Candidate {
            tier,
            model: t.model.clone(),
            endpoint: endpoint.clone(),
        }));
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::{Intent, Language, Scores, Tokens};
    use crate::config;
    use crate::vram::{GpuMemory, LoadedModel};

    fn analysis(fast: f32, coder: f32, heavy: f32) -> Analysis {
        Analysis {
            language: Language::English,
            intent: Intent::CodeTask,
            shell: false,
            code: None,
            error_output: false,
            complexity: 0.5,
            tokens: Tokens {
                prompt: 10,
                selection: 0,
                estimated: false,
            },
            scores: Scores { fast, coder, heavy },
            reasons: vec![],
        }
    }

    fn cfg(toml: &str) -> Config {
        config::from_toml(toml, "test", None).expect("valid config")
    }

    fn gpu(free_mb: u64, loaded: &[&str]) -> Snapshot {
        Snapshot {
            gpu: Some(GpuMemory {
                total_mb: 81_920,
                free_mb,
            }),
            loaded: loaded
                .iter()
                .map(|name| LoadedModel {
                    name: name.to_string(),
                    size_mb: 1,
                    vram_mb: 1,
                    ..LoadedModel::default()
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    fn decide(config: &Config, snapshot: &Snapshot, a: &Analysis) -> Decision {
        route(config, snapshot, a, &Force::default()).expect("routable")
    }

    #[test]
    fn no_gpu_follows_the_analysis_and_says_so() {
        let d = decide(&cfg(""), &Snapshot::no_gpu(), &analysis(0.1, 0.2, 0.7));
        assert_eq!((d.tier, d.model.as_str()), (Tier::Heavy, "llama3.1:70b"));
        assert!(d.reasons.iter().any(|r| r.contains("no GPU seen")));
        assert_eq!(d.warning, None);
        assert!((d.confidence - 0.7).abs() < 1e-6);
        let chain: Vec<Tier> = d.fallbacks.iter().map(|c| c.tier).collect();
        assert_eq!(chain, [Tier::Coder, Tier::Fast]);
    }

    #[test]
    fn a_tier_that_does_not_fit_moves_to_the_next_best_that_does() {
        // 30 GB free: coder (18 GB + 1 GB headroom) fits, heavy (42 GB) does not.
        let d = decide(&cfg(""), &gpu(30_000, &[]), &analysis(0.1, 0.3, 0.6));
        assert_eq!(d.tier, Tier::Coder);
        assert!(
            d.warning
                .as_deref()
                .is_some_and(|w| w.contains("does not fit")),
            "{:?}",
            d.warning
        );
        assert!(
            d.reasons
                .iter()
                .any(|r| r.contains("43024 MB") && r.contains("30000 MB")),
            "{:?}",
            d.reasons
        );
        assert!(d.confidence <= 0.5);
        // The heavy model does not fit, so it is no fallback either.
        assert!(d.fallbacks.iter().all(|c| c.tier != Tier::Heavy));
    }

    #[test]
    fn preference_order_goes_down_by_capability() {
        assert_eq!(
            preference_order(Tier::Heavy),
            [Tier::Heavy, Tier::Coder, Tier::Fast]
        );
        assert_eq!(
            preference_order(Tier::Coder),
            [Tier::Coder, Tier::Heavy, Tier::Fast]
        );
        assert_eq!(
            preference_order(Tier::Fast),
            [Tier::Fast, Tier::Heavy, Tier::Coder]
        );
        // A heavy request whose coder score is tiny still moves to coder, not fast.
        let d = decide(
            &cfg(""),
            &gpu(24_000, &[]),
            &analysis(0.001, 0.0005, 0.9985),
        );
        assert_eq!(d.tier, Tier::Coder);
    }

    #[test]
    fn headroom_counts() {
        // 18.5 GB free: coder needs 18 GB + 1 GB headroom → does not fit.
        let d = decide(&cfg(""), &gpu(18_500, &[]), &analysis(0.1, 0.8, 0.1));
        assert_eq!(d.tier, Tier::Fast);
        let d = decide(
            &cfg("[vram]\nheadroom_mb = 0"),
            &gpu(18_500, &[]),
            &analysis(0.1, 0.8, 0.1),
        );
        assert_eq!(d.tier, Tier::Coder);
    }

    #[test]
    fn a_loaded_model_costs_nothing_extra() {
        let d = decide(
            &cfg(""),
            &gpu(500, &["llama3.1:70b"]),
            &analysis(0.1, 0.2, 0.7),
        );
        assert_eq!(d.tier, Tier::Heavy);
        assert_eq!(d.warning, None);
        assert!(d.reasons.iter().any(|r| r.contains("already loaded")));
    }

    #[test]
    fn a_loaded_lower_tier_wins_over_one_that_does_not_fit() {
        // Heavy preferred but does not fit; coder neither; fast is loaded.
        let d = decide(
            &cfg(""),
            &gpu(1_000, &["llama3.2:3b"]),
            &analysis(0.1, 0.3, 0.6),
        );
        assert_eq!(d.tier, Tier::Fast);
        assert!(d.warning.is_some());
    }

    #[test]
    fn an_offloaded_model_is_avoided_when_another_fits() {
        let mut snapshot = gpu(30_000, &[]);
        snapshot.loaded.push(LoadedModel {
            name: "llama3.1:70b".into(),
            size_mb: 42_000,
            vram_mb: 20_000,
            ..LoadedModel::default()
        });
        let d = decide(&cfg(""), &snapshot, &analysis(0.1, 0.2, 0.7));
        assert_eq!(d.tier, Tier::Coder);
        assert!(
            d.reasons.iter().any(|r| r.contains("20000 of 42000 MB")),
            "{:?}",
            d.reasons
        );
        // With nothing else fitting, the offloaded model still answers, with a warning.
        snapshot.gpu = Some(GpuMemory {
            total_mb: 81_920,
            free_mb: 100,
        });
        let d = decide(&cfg(""), &snapshot, &analysis(0.1, 0.2, 0.7));
        assert_eq!(d.tier, Tier::Heavy);
        assert!(d
            .warning
            .as_deref()
            .is_some_and(|w| w.contains("partly on the CPU")));
    }

    #[test]
    fn nothing_fits_takes_the_smallest_model_with_a_warning() {
        let d = decide(&cfg(""), &gpu(100, &[]), &analysis(0.1, 0.2, 0.7));
        assert_eq!(d.tier, Tier::Fast);
        assert!(d
            .warning
            .as_deref()
            .is_some_and(|w| w.contains("no model fits")));
        assert!(d.fallbacks.is_empty());
    }

    #[test]
    fn disabled_tiers_are_skipped() {
        let c = cfg("[tiers.coder]\nenabled = false");
        let d = decide(&c, &Snapshot::no_gpu(), &analysis(0.1, 0.6, 0.3));
        assert_eq!(d.tier, Tier::Heavy);
        assert!(d
            .reasons
            .iter()
            .any(|r| r.contains("coder tier is disabled")));
        assert_eq!(
            d.warning, None,
            "a disabled tier is the user's choice, not a VRAM problem"
        );
        assert!(d.fallbacks.iter().all(|f| f.tier != Tier::Coder));
    }

    #[test]
    fn forced_tier_is_obeyed_and_warned_about() {
        let force = Force {
            tier: Some(Tier::Heavy),
            model: None,
        };
        let d = route(
            &cfg(""),
            &gpu(10_000, &[]),
            &analysis(0.9, 0.05, 0.05),
            &force,
        )
        .expect("ok");
        assert_eq!(d.tier, Tier::Heavy);
        assert!(d
            .warning
            .as_deref()
            .is_some_and(|w| w.contains("llama3.1:70b")));
        assert!(d.reasons.iter().any(|r| r.contains("forced")));
        let c = cfg("[tiers.heavy]\nenabled = false");
        assert_eq!(
            route(&c, &Snapshot::no_gpu(), &analysis(0.9, 0.05, 0.05), &force),
            Err(Error::TierDisabled(Tier::Heavy))
        );
    }

    #[test]
    fn forced_model_uses_its_tier_or_replaces_the_model() {
        let force = Force {
            tier: None,
            model: Some("qwen3-coder:30b".into()),
        };
        let d = route(
            &cfg(""),
            &Snapshot::no_gpu(),
            &analysis(0.9, 0.05, 0.05),
            &force,
        )
        .expect("ok");
        assert_eq!((d.tier, d.model.as_str()), (Tier::Coder, "qwen3-coder:30b"));
        let force = Force {
            tier: None,
            model: Some("mistral:7b".into()),
        };
        let d = route(
            &cfg(""),
            &Snapshot::no_gpu(),
            &analysis(0.9, 0.05, 0.05),
            &force,
        )
        .expect("ok");
        assert_eq!((d.tier, d.model.as_str()), (Tier::Fast, "mistral:7b"));
        assert!(d.reasons.iter().any(|r| r.contains("mistral:7b forced")));
    }

    #[test]
    fn several_endpoints_per_tier_become_fallbacks_first() {
        let c = cfg("[endpoints.team]\nurl = \"http://127.0.0.1:9\"\n[tiers.heavy]\nendpoint = [\"ollama\", \"team\"]");
        let d = decide(&c, &Snapshot::no_gpu(), &analysis(0.1, 0.2, 0.7));
        assert_eq!(d.endpoint, "ollama");
        assert_eq!(
            d.fallbacks[0],
            Candidate {
                tier: Tier::Heavy,
                model: "llama3.1:70b".into(),
                endpoint: "team".into()
            }
        );
    }
    // ---- the latency rule ----

    /// A 48 GB card with the sizes the replay benchmark uses.
    const SIZES: &str = "[tiers.fast]\nvram_mb = 3000\n[tiers.coder]\nvram_mb = 20000\n[tiers.heavy]\nvram_mb = 44000\n";
    const TOTAL_MB: u64 = 49_152;

    fn card(loaded: &[(&str, u64)]) -> Snapshot {
        let used: u64 = loaded.iter().map(|(_, mb)| mb).sum();
        Snapshot {
            gpu: Some(GpuMemory {
                total_mb: TOTAL_MB,
                free_mb: TOTAL_MB - used,
            }),
            loaded: loaded
                .iter()
                .map(|(name, mb)| LoadedModel {
                    name: name.to_string(),
                    size_mb: *mb,
                    vram_mb: *mb,
                    ..LoadedModel::default()
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    /// Used (for its own tier) `idle_s` ago.
    fn used(model: &str, idle_s: f64) -> Residency {
        Residency {
            model: model.into(),
            in_use: false,
            idle_s: Some(idle_s),
            wanted_s_ago: Some(idle_s),
            keep_alive_s: None,
            evicted_s_ago: None,
            working: false,
            busy_for_s: None,
        }
    }

    fn latency<'a>(
        timings: &'a [ModelTiming],
        residency: &'a [Residency],
        budget_s: f64,
    ) -> Latency<'a> {
        Latency {
            timings,
            residency,
            budget_s,
            hard_budget: true,
            load_mb_per_s: 1300.0,
        }
    }

    fn decide_timed(snapshot: &Snapshot, a: &Analysis, l: &Latency<'_>) -> Decision {
        route_with_latency(&cfg(SIZES), snapshot, a, &Force::default(), l).expect("routable")
    }

    fn has(d: &Decision, text: &str) -> bool {
        d.reasons.iter().any(|r| r.contains(text))
    }

    const FAST_CODER: [(&str, u64); 2] = [("llama3.2:3b", 3000), ("qwen3-coder:30b", 20_000)];

    #[test]
    fn expected_wait_adds_load_prompt_and_overhead() {
        let config = cfg(SIZES);
        let mut a = analysis(0.1, 0.8, 0.1);
        a.tokens.selection = 1990; // 2000 tokens in all
        let timings = [ModelTiming {
            model: "qwen3-coder:30b".into(),
            load_s: Some(12.0),
            prompt_tokens_per_s: Some(1000.0),
            overhead_s: Some(0.5),
            first_token_p50_s: None,
        }];
        let l = latency(&timings, &[], 60.0);
        let cold = expect(&config, &card(&[]), &a, &l, Tier::Coder);
        assert_eq!(
            (cold.load_s, cold.prompt_s, cold.overhead_s),
            (12.0, 2.0, 0.5)
        );
        assert_eq!(cold.first_token_s(), 14.5);
        let warm = expect(&config, &card(&FAST_CODER), &a, &l, Tier::Coder);
        assert!(warm.loaded);
        assert_eq!(warm.first_token_s(), 2.5);
        // Never observed: size ÷ load speed, prompt speed from size, default overhead.
        let heavy = expect(&config, &card(&FAST_CODER), &a, &l, Tier::Heavy);
        assert!((heavy.load_s - 44_000.0 / 1300.0).abs() < 1e-9);
        assert!((heavy.prompt_s - 2000.0 / (25_000_000.0 / 44_000.0)).abs() < 1e-9);
        assert_eq!(heavy.overhead_s, PRIOR_OVERHEAD_S);
        // Room for 44 GB + headroom: Ollama unloads the coder (30 min keep_alive) before the
        // fast model (kept for ever).
        assert_eq!(heavy.evicts, ["qwen3-coder:30b"]);
        // The coder was never used by triage: its reload is not expected to be needed.
        assert_eq!(heavy.eviction_cost_s, 0.0);
        let r = [used("qwen3-coder:30b", 90.0)];
        let l = latency(&timings, &r, 60.0);
        let heavy = expect(&config, &card(&FAST_CODER), &a, &l, Tier::Heavy);
        assert!((heavy.eviction_cost_s - 12.0 * (1.0 - 90.0 / REUSE_WINDOW_S)).abs() < 1e-9);
    }

    #[test]
    fn a_loaded_model_that_fits_the_task_beats_a_slow_load() {
        let r = [used("qwen3-coder:30b", 120.0)];
        let d = decide_timed(
            &card(&FAST_CODER),
            &analysis(0.02, 0.2, 0.78),
            &latency(&[], &r, 60.0),
        );
        assert_eq!(d.tier, Tier::Coder);
        assert!(
            has(
                &d,
                "heavy would load for ~34 s and evict coder; coder is loaded and fits the task"
            ),
            "{:?}",
            d.reasons
        );
        assert!(
            has(&d, "expected wait to the first token: fast"),
            "{:?}",
            d.reasons
        );
        assert_eq!(d.expected.len(), 3);
        // No warning: nothing was constrained, the trade was made.
        assert_eq!(d.warning, None);
    }

    #[test]
    fn a_default_budget_is_soft_an_explicit_one_is_a_bound() {
        // A design question, nothing loaded: heavy's ~34 s load is over the 30 s budget, but
        // the coder model would load too (~15 s) and answer it half as well.
        let a = analysis(0.02, 0.1, 0.88);
        let empty = card(&[]);
        let mut soft = latency(&[], &[], 30.0);
        soft.hard_budget = false;
        let d = decide_timed(&empty, &a, &soft);
        assert_eq!(d.tier, Tier::Heavy, "{:?}", d.reasons);
        assert!(has(&d, "heavy is worth loading"), "{:?}", d.reasons);
        // The same budget set by the request bounds the wait.
        let d = decide_timed(&empty, &a, &latency(&[], &[], 30.0));
        assert_eq!(d.tier, Tier::Coder, "{:?}", d.reasons);
        // A soft budget still keeps a loaded coder model over a heavy load that evicts it.
        let r = [used("qwen3-coder:30b", 120.0)];
        let mut soft = latency(&[], &r, 30.0);
        soft.hard_budget = false;
        let d = decide_timed(&card(&FAST_CODER), &analysis(0.02, 0.2, 0.78), &soft);
        assert_eq!(d.tier, Tier::Coder, "{:?}", d.reasons);
    }

    #[test]
    fn the_budget_decides_whether_a_load_is_worth_it() {
        let a = analysis(0.02, 0.2, 0.78);
        // The coder has been idle for 20 minutes: evicting it costs nothing expected.
        let r = [used("qwen3-coder:30b", 1200.0)];
        let quick = decide_timed(&card(&FAST_CODER), &a, &latency(&[], &r, 10.0));
        assert_eq!(quick.tier, Tier::Coder, "{:?}", quick.reasons);
        let patient = decide_timed(&card(&FAST_CODER), &a, &latency(&[], &r, 300.0));
        assert_eq!(patient.tier, Tier::Heavy, "{:?}", patient.reasons);
        assert!(
            has(&patient, "heavy is worth loading (~34 s and evict coder)"),
            "{:?}",
            patient.reasons
        );
        // A coder task with only the fast model loaded: an interactive budget of 10 s cannot
        // hold a 15 s load, a 60 s one can.
        let a = analysis(0.1, 0.85, 0.05);
        let only_fast = card(&[("llama3.2:3b", 3000)]);
        let d = decide_timed(&only_fast, &a, &latency(&[], &[], 10.0));
        assert_eq!(d.tier, Tier::Fast, "{:?}", d.reasons);
        assert!(
            has(
                &d,
                "coder would load for ~15 s, over the 10 s budget; fast is loaded and fits the task"
            ),
            "{:?}",
            d.reasons
        );
        let d = decide_timed(&only_fast, &a, &latency(&[], &[], 60.0));
        assert_eq!(d.tier, Tier::Coder, "{:?}", d.reasons);
    }

    #[test]
    fn a_learned_fast_load_makes_the_heavy_model_affordable() {
        let timings = [ModelTiming {
            model: "llama3.1:70b".into(),
            load_s: Some(6.0),
            ..ModelTiming::default()
        }];
        let r = [used("qwen3-coder:30b", 1200.0)];
        let d = decide_timed(
            &card(&FAST_CODER),
            &analysis(0.02, 0.2, 0.78),
            &latency(&timings, &r, 60.0),
        );
        assert_eq!(d.tier, Tier::Heavy, "{:?}", d.reasons);
    }

    #[test]
    fn a_model_in_use_is_never_evicted() {
        let r = [Residency {
            in_use: true,
            ..used("qwen3-coder:30b", 0.0)
        }];
        // Even a request that wants heavy for sure, with all the time in the world.
        let d = decide_timed(
            &card(&FAST_CODER),
            &analysis(0.0, 0.01, 0.99),
            &latency(&[], &r, 3600.0),
        );
        assert_ne!(d.tier, Tier::Heavy);
        assert!(
            has(
                &d,
                "would have to evict coder, which is answering: never done"
            ),
            "{:?}",
            d.reasons
        );
        let heavy = d
            .expected
            .iter()
            .find(|e| e.tier == Tier::Heavy)
            .expect("heavy");
        assert_eq!(heavy.blocked_by, ["qwen3-coder:30b"]);
        // Forced, it is obeyed, with a warning that it must wait.
        let forced = route_with_latency(
            &cfg(SIZES),
            &card(&FAST_CODER),
            &analysis(0.0, 0.01, 0.99),
            &Force {
                tier: Some(Tier::Heavy),
                model: None,
            },
            &latency(&[], &r, 60.0),
        )
        .expect("ok");
        assert_eq!(forced.tier, Tier::Heavy);
        assert!(
            forced
                .warning
                .as_deref()
                .is_some_and(|w| w.contains("must wait for qwen3-coder:30b")),
            "{:?}",
            forced.warning
        );
    }

    #[test]
    fn evicting_a_model_used_a_moment_ago_is_ping_pong() {
        let r = [used("qwen3-coder:30b", 20.0)];
        let d = decide_timed(
            &card(&FAST_CODER),
            &analysis(0.0, 0.01, 0.99),
            &latency(&[], &r, 3600.0),
        );
        assert_eq!(d.tier, Tier::Coder);
        assert!(
            has(&d, "used less than a minute ago: no reload ping-pong"),
            "{:?}",
            d.reasons
        );
        // After a minute it may go, when the budget allows the load.
        let r = [used("qwen3-coder:30b", 61.0)];
        let d = decide_timed(
            &card(&FAST_CODER),
            &analysis(0.0, 0.01, 0.99),
            &latency(&[], &r, 3600.0),
        );
        assert_eq!(d.tier, Tier::Heavy, "{:?}", d.reasons);
    }

    #[test]
    fn a_bigger_loaded_model_answers_rather_than_a_long_load() {
        // After a heavy session the coder was evicted; a coder task in a code action.
        let snapshot = card(&[("llama3.2:3b", 3000), ("llama3.1:70b", 44_000)]);
        let r = [used("llama3.1:70b", 120.0)];
        let d = decide_timed(
            &snapshot,
            &analysis(0.05, 0.9, 0.05),
            &latency(&[], &r, 10.0),
        );
        assert_eq!(d.tier, Tier::Heavy, "{:?}", d.reasons);
        assert!(
            has(&d, "coder would load for ~15 s and evict heavy, over the 10 s budget; heavy is loaded and fits the task"),
            "{:?}",
            d.reasons
        );
        // With time to spare the right model loads.
        let r = [used("llama3.1:70b", 1200.0)];
        let d = decide_timed(
            &snapshot,
            &analysis(0.05, 0.9, 0.05),
            &latency(&[], &r, 60.0),
        );
        assert_eq!(d.tier, Tier::Coder, "{:?}", d.reasons);
    }

    #[test]
    fn answering_for_another_tier_does_not_make_a_model_sticky() {
        // The heavy model has been answering coder tasks for a while; nobody wanted heavy for
        // 20 minutes: the coder model comes back for a typed request.
        let snapshot = card(&[("llama3.2:3b", 3000), ("llama3.1:70b", 44_000)]);
        let r = [Residency {
            wanted_s_ago: Some(1200.0),
            ..used("llama3.1:70b", 90.0)
        }];
        let d = decide_timed(
            &snapshot,
            &analysis(0.05, 0.9, 0.05),
            &latency(&[], &r, 60.0),
        );
        assert_eq!(d.tier, Tier::Coder, "{:?}", d.reasons);
        // A model evicted 30 s ago is not loaded again at once.
        let r = [
            Residency {
                evicted_s_ago: Some(30.0),
                ..used("qwen3-coder:30b", 30.0)
            },
            used("llama3.1:70b", 90.0),
        ];
        let d = decide_timed(
            &snapshot,
            &analysis(0.05, 0.9, 0.05),
            &latency(&[], &r, 60.0),
        );
        assert_eq!(d.tier, Tier::Heavy, "{:?}", d.reasons);
        assert!(
            has(&d, "was evicted less than a minute ago"),
            "{:?}",
            d.reasons
        );
    }

    #[test]
    fn without_a_gpu_reading_latency_changes_nothing() {
        let a = analysis(0.1, 0.2, 0.7);
        let plain = route(&cfg(SIZES), &Snapshot::no_gpu(), &a, &Force::default()).expect("ok");
        let timed = route_with_latency(
            &cfg(SIZES),
            &Snapshot::no_gpu(),
            &a,
            &Force::default(),
            &latency(&[], &[], 1.0),
        )
        .expect("ok");
        assert_eq!(plain, timed);
    }
}
