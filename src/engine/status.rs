//! The status report: endpoints (reachable, version, models present and loaded), GPU memory per
//! device with its warning level, the tiers, and per-model statistics. `triage status` prints
//! it; the language server will answer `triage/status` with the same data.

use serde::Serialize;

use super::limits::Load;
use super::stats::Summary;
use super::Engine;
use crate::backend::{LoadedEntry, ModelEntry, Target};
use crate::config::{EndpointKind, Tier};
use crate::vram::{canonical_model_name, GpuDevice, Level, Monitor};

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub endpoints: Vec<EndpointStatus>,
    pub gpu: GpuStatus,
    pub tiers: Vec<TierStatus>,
    pub stats: Vec<Summary>,
    /// Evictions and reload ping-pong seen by this process.
    pub residency: super::residency::Counts,
    /// Running and queued requests per model and endpoint, against `max_concurrent`.
    pub limits: Vec<Load>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointStatus {
    pub name: String,
    pub kind: EndpointKind,
    pub url: String,
    pub reachable: bool,
    pub version: Option<String>,
    pub error: Option<String>,
    pub models: Vec<ModelEntry>,
    pub loaded: Vec<LoadedStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadedStatus {
    #[serde(flatten)]
    pub entry: LoadedEntry,
    /// Share of the model in VRAM, in percent; below 100 means CPU offload.
    pub vram_percent: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuStatus {
    pub seen: bool,
    pub total_mb: Option<u64>,
    pub used_mb: Option<u64>,
    pub free_mb: Option<u64>,
    pub level: Level,
    pub devices: Vec<GpuDevice>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TierStatus {
    pub tier: Tier,
    pub enabled: bool,
    pub model: String,
    pub endpoints: Vec<String>,
    pub vram_mb: u64,
    /// The model is present on at least one of the tier's reachable endpoints (`None`: no
    /// endpoint answered).
    pub present: Option<bool>,
    pub loaded: bool,
}

/// Gathers the status: every endpoint is asked in parallel, each bounded by the backend's
/// metadata timeout.
pub async fn gather(engine: &Engine, monitor: &Monitor) -> Status {
    let config = engine.config();
    let client = engine.client();
    let queries = config.endpoints.iter().map(|(name, endpoint)| async move {
        let target = Target { name, endpoint };
        let version = client.version(target).await;
        let (models, loaded) = match &version {
            Ok(_) => (
                client.models(target).await.unwrap_or_default(),
                client.loaded(target).await.unwrap_or_default(),
            ),
            Err(_) => (Vec::new(), Vec::new()),
        };
        EndpointStatus {
            name: name.clone(),
            kind: endpoint.kind,
            url: endpoint.url.to_string(),
            reachable: version.is_ok(),
            version: version.as_ref().ok().cloned(),
            error: version.err().map(|e| e.to_string()),
            models,
            loaded: loaded
                .into_iter()
                .map(|entry| LoadedStatus {
                    vram_percent: (100 * entry.vram_mb)
                        .checked_div(entry.size_mb)
                        .map_or(100, |p| p.min(100) as u32),
                    entry,
                })
                .collect(),
        }
    });
    let (endpoints, snapshot) = tokio::join!(futures::future::join_all(queries), monitor.refresh());

    let tiers = Tier::ALL
        .into_iter()
        .map(|tier| {
            let t = config.tier(tier);
            let wanted = canonical_model_name(&t.model);
            let answering: Vec<&EndpointStatus> = endpoints
                .iter()
                .filter(|e| e.reachable && t.endpoints.contains(&e.name))
                .collect();
            TierStatus {
                tier,
                enabled: t.enabled,
                model: t.model.clone(),
                endpoints: t.endpoints.clone(),
                vram_mb: t.vram_mb,
                present: (!answering.is_empty()).then(|| {
                    answering.iter().any(|e| {
                        e.models
                            .iter()
                            .any(|m| canonical_model_name(&m.name) == wanted)
                    })
                }),
                loaded: answering.iter().any(|e| {
                    e.loaded
                        .iter()
                        .any(|l| canonical_model_name(&l.entry.name) == wanted)
                }),
            }
        })
        .collect();
    let gpu = GpuStatus {
        seen: snapshot.gpu.is_some(),
        total_mb: snapshot.gpu.map(|g| g.total_mb),
        used_mb: snapshot.gpu.map(|g| g.total_mb.saturating_sub(g.free_mb)),
        free_mb: snapshot.gpu.map(|g| g.free_mb),
        level: snapshot.level(&config.vram),
        devices: snapshot.devices.clone(),
        notes: snapshot.notes.clone(),
    };
    Status {
        endpoints,
        gpu,
        tiers,
        stats: engine.stats.summaries(),
        residency: engine.residency().counts(),
        limits: engine.loads(),
    }
}

impl Status {
    /// The human-readable form of `triage status`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("endpoints:\n");
        for e in &self.endpoints {
            if e.reachable {
                s.push_str(&format!(
                    "  {} ({:?}, {}) reachable, {} · {} models, {} loaded\n",
                    e.name,
                    e.kind,
                    e.url,
                    e.version.as_deref().unwrap_or("?"),
                    e.models.len(),
                    e.loaded.len()
                ));
                for l in &e.loaded {
                    s.push_str(&format!(
                        "    loaded {} · {} MB, {}% in VRAM{}\n",
                        l.entry.name,
                        l.entry.size_mb,
                        l.vram_percent,
                        l.entry
                            .expires_at
                            .as_deref()
                            .map(|t| format!(" · unloads {t}"))
                            .unwrap_or_default()
                    ));
                }
            } else {
                s.push_str(&format!(
                    "  {} ({}) NOT reachable: {}\n",
                    e.name,
                    e.url,
                    e.error.as_deref().unwrap_or("?")
                ));
            }
        }
        s.push_str("gpu:\n");
        if self.gpu.seen {
            s.push_str(&format!(
                "  {} MB used of {} MB, {} MB free · level {:?}\n",
                self.gpu.used_mb.unwrap_or(0),
                self.gpu.total_mb.unwrap_or(0),
                self.gpu.free_mb.unwrap_or(0),
                self.gpu.level
            ));
            for d in &self.gpu.devices {
                s.push_str(&format!(
                    "  [{}] {}: {} / {} MB used, {} processes\n",
                    d.index,
                    d.name,
                    d.used_mb,
                    d.total_mb,
                    d.processes.len()
                ));
            }
        } else {
            s.push_str("  no GPU seen: routing by analysis alone\n");
        }
        s.push_str("tiers:\n");
        for t in &self.tiers {
            let state = match (t.enabled, t.present, t.loaded) {
                (false, _, _) => "disabled".to_string(),
                (true, _, true) => "loaded".to_string(),
                (true, Some(true), false) => "present".to_string(),
                (true, Some(false), false) => {
                    format!("MISSING: pull it with `ollama pull {}`", t.model)
                }
                (true, None, false) => "unknown (no endpoint answered)".to_string(),
            };
            s.push_str(&format!(
                "  {:<6} {} on {} · ~{} MB · {}\n",
                t.tier.as_str(),
                t.model,
                t.endpoints.join(", "),
                t.vram_mb,
                state
            ));
        }
        if !self.limits.is_empty() {
            s.push_str("limits:\n");
            for l in &self.limits {
                s.push_str(&format!(
                    "  {} on {} · {} running, {} queued · max {} at once\n",
                    l.model, l.endpoint, l.running, l.queued, l.max_concurrent
                ));
            }
        }
        if !self.stats.is_empty() {
            s.push_str("models:\n");
            for m in &self.stats {
                s.push_str(&format!(
                    "  {} · {} requests, {} errors · first token p50 {} / p95 {} · {}{}{}\n",
                    m.model,
                    m.requests,
                    m.errors,
                    m.first_token_p50_ms
                        .map_or("-".to_string(), |v| format!("{v} ms")),
                    m.first_token_p95_ms
                        .map_or("-".to_string(), |v| format!("{v} ms")),
                    m.tokens_per_s
                        .map_or("-".to_string(), |v| format!("{v} tok/s")),
                    m.prompt_tokens_per_s
                        .map_or(String::new(), |v| format!(" · prompt {v:.0} tok/s")),
                    m.last_error
                        .as_deref()
                        .map(|e| format!(" · last error: {e}"))
                        .unwrap_or_default()
                ));
            }
        }
        if self.residency != super::residency::Counts::default() {
            s.push_str(&format!(
                "residency: {} evictions, {} reloaded within a minute (ping-pong)\n",
                self.residency.evictions, self.residency.ping_pongs
            ));
        }
        s.trim_end().to_string()
    }
}
