//! Routing policy: a pure function from an [`Analysis`], a VRAM [`Snapshot`] and the [`Config`]
//! to a [`Decision`] — tier, model, endpoint, confidence, reasons, a warning for the user when
//! the choice was constrained, and the ordered fallback chain.
//!
//! The VRAM rules: a loaded model costs nothing extra; a model that is not loaded fits when its
//! `vram_mb` plus the headroom is at most the free VRAM; a tier that does not fit is skipped in
//! favour of the best-scoring tier that fits or is loaded, and the decision says so. With no GPU
//! visible the decision rests on the analysis alone. A forced tier or model is obeyed, with a
//! warning when it will not fit. No I/O here: the caller gathers the snapshot.

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

/// Decides which model answers.
pub fn route(
    config: &Config,
    snapshot: &Snapshot,
    analysis: &Analysis,
    force: &Force,
) -> Result<Decision, Error> {
    let mut reasons = analysis.reasons.clone();
    let mut warning = None;
    let order = preference_order(analysis.scores.ranking()[0]);
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
            tier
        }
        None => choose(config, snapshot, &order, &mut reasons, &mut warning),
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
        _ => {}
    }

    let endpoint = tier_config.endpoints.first().cloned().unwrap_or_default();
    let fallbacks = fallback_chain(config, snapshot, tier, &model, &order);
    let moved = tier != order[0] && forced_tier.is_none();
    let mut confidence = analysis.scores.get(tier);
    if moved {
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
}
