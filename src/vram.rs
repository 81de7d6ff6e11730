//! GPU memory as the router sees it: one cached [`Snapshot`] of total, used and free VRAM per
//! GPU (NVML), joined with the models each backend reports as loaded (Ollama `/api/ps`:
//! `size`, `size_vram`, `expires_at`).
//!
//! NVML is loaded at run time through `nvml-wrapper`: no driver, no NVIDIA card or a failing
//! call means "no GPU seen", a normal state, never an error — unless `[vram] total_mb` says how
//! large the GPU is (Apple Silicon, AMD, a remote Ollama): then free memory is that size minus
//! what the endpoints report loaded. The [`Monitor`] refreshes the
//! snapshot on an interval and on demand; reading it never waits for a slow backend. The
//! routing policy reads snapshots and does not know where they come from.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::{self, Target};
use crate::config::{Config, EndpointKind, VramConfig};

/// What is known about GPU memory at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// Memory summed over all visible GPUs; `None` when no GPU is visible (no driver, no NVIDIA
    /// card, NVML failed): the router then decides by analysis alone.
    pub gpu: Option<GpuMemory>,
    /// Each visible GPU.
    pub devices: Vec<GpuDevice>,
    /// Models the backends report as loaded.
    pub loaded: Vec<LoadedModel>,
    /// Why parts of the snapshot are missing (an endpoint did not answer, NVML failed).
    pub notes: Vec<String>,
}

/// Memory summed over all visible GPUs, in MB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GpuMemory {
    pub total_mb: u64,
    pub free_mb: u64,
}

/// One GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuDevice {
    pub index: u32,
    pub name: String,
    pub total_mb: u64,
    pub used_mb: u64,
    pub free_mb: u64,
    pub processes: Vec<GpuProcess>,
}

/// A process holding GPU memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuProcess {
    pub pid: u32,
    /// The process name from /proc, when readable.
    pub name: Option<String>,
    pub used_mb: Option<u64>,
}

/// A model resident in a backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LoadedModel {
    pub name: String,
    /// The endpoint that reported it.
    pub endpoint: String,
    /// Total size of the loaded model, in MB.
    pub size_mb: u64,
    /// The part of it that sits in VRAM; less than `size_mb` means partial CPU offload.
    pub vram_mb: u64,
    /// When the backend will unload it (RFC 3339).
    pub expires_at: Option<String>,
}

impl LoadedModel {
    /// Part of the model runs on the CPU: slow, and a sign that VRAM is short.
    pub fn offloaded(&self) -> bool {
        self.size_mb > 0 && self.vram_mb < self.size_mb
    }
}

/// How full the GPUs are, for the status bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Critical,
    Unknown,
}

impl Snapshot {
    /// A snapshot that says no GPU is visible.
    pub fn no_gpu() -> Snapshot {
        Snapshot::default()
    }

    /// The loaded entry for `model`, matching Ollama's rule that a name without a tag means
    /// `:latest`.
    pub fn loaded(&self, model: &str) -> Option<&LoadedModel> {
        let wanted = canonical_model_name(model);
        self.loaded
            .iter()
            .find(|m| canonical_model_name(&m.name) == wanted)
    }

    /// The warning level: the used share against the configured thresholds, raised to `warn`
    /// when a loaded model is partly offloaded to the CPU.
    pub fn level(&self, config: &VramConfig) -> Level {
        let Some(gpu) = self.gpu.filter(|g| g.total_mb > 0) else {
            return Level::Unknown;
        };
        let used =
            100.0 * (gpu.total_mb - gpu.free_mb.min(gpu.total_mb)) as f64 / gpu.total_mb as f64;
        if used >= config.critical_percent {
            Level::Critical
        } else if used >= config.warn_percent || self.loaded.iter().any(LoadedModel::offloaded) {
            Level::Warn
        } else {
            Level::Ok
        }
    }
}

/// `llama3.2` → `llama3.2:latest`; names with a tag (or a path, as OpenAI-style servers use)
/// are kept.
pub fn canonical_model_name(name: &str) -> String {
    let name = name.trim();
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || name.contains('/') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// Reads GPU memory through NVML, if the library and a GPU are there.
struct Gpus {
    nvml: Option<nvml_wrapper::Nvml>,
    init_error: Option<String>,
}

/// NVML is opened on the first refresh, not at construction: loading the driver library costs
/// start-up time that a language server must not spend before answering `initialize`.
enum LazyGpus {
    Unopened,
    Open(Box<Gpus>),
}

impl Gpus {
    fn open() -> Gpus {
        match nvml_wrapper::Nvml::init() {
            Ok(nvml) => Gpus {
                nvml: Some(nvml),
                init_error: None,
            },
            Err(e) => {
                tracing::debug!(error = %e, "NVML not available: no GPU seen");
                Gpus {
                    nvml: None,
                    init_error: Some(format!("no GPU seen (NVML: {e})")),
                }
            }
        }
    }

    fn read(&self) -> Result<Vec<GpuDevice>, String> {
        let Some(nvml) = &self.nvml else {
            return Err(self
                .init_error
                .clone()
                .unwrap_or_else(|| "no GPU seen".to_string()));
        };
        let count = nvml
            .device_count()
            .map_err(|e| format!("NVML device count failed: {e}"))?;
        let mut devices = Vec::new();
        for index in 0..count {
            let device = nvml
                .device_by_index(index)
                .map_err(|e| format!("NVML device {index} failed: {e}"))?;
            let memory = device
                .memory_info()
                .map_err(|e| format!("NVML memory of device {index} failed: {e}"))?;
            let processes = device
                .running_compute_processes()
                .unwrap_or_default()
                .into_iter()
                .map(|p| GpuProcess {
                    pid: p.pid,
                    name: std::fs::read_to_string(format!("/proc/{}/comm", p.pid))
                        .ok()
                        .map(|s| s.trim().to_string()),
                    used_mb: match p.used_gpu_memory {
                        nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => Some(b / MB),
                        nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => None,
                    },
                })
                .collect();
            devices.push(GpuDevice {
                index,
                name: device.name().unwrap_or_else(|_| format!("GPU {index}")),
                total_mb: memory.total / MB,
                used_mb: memory.used / MB,
                free_mb: memory.free / MB,
                processes,
            });
        }
        Ok(devices)
    }
}

const MB: u64 = 1024 * 1024;

/// Keeps the current snapshot.
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

struct Inner {
    gpus: Mutex<LazyGpus>,
    client: backend::Client,
    /// Ollama endpoints to ask for loaded models: (name, endpoint).
    endpoints: Vec<(String, crate::config::Endpoint)>,
    current: RwLock<(Snapshot, Option<Instant>)>,
    refreshing: AtomicBool,
    /// `[vram] total_mb`: the GPU's size where NVML cannot read it.
    total_override: Option<u64>,
}

/// How long one endpoint may take to list its loaded models during a refresh.
pub const LOADED_TIMEOUT: Duration = Duration::from_millis(800);

impl Monitor {
    /// Opens NVML (once; failure means "no GPU seen") and remembers the endpoints to ask.
    pub fn new(config: &Config, client: backend::Client) -> Monitor {
        let endpoints = config
            .endpoints
            .iter()
            .filter(|(name, e)| {
                e.kind == EndpointKind::Ollama
                    && config
                        .tiers
                        .values()
                        .any(|t| t.enabled && t.endpoints.contains(name))
            })
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect();
        Monitor {
            inner: Arc::new(Inner {
                gpus: Mutex::new(LazyGpus::Unopened),
                client,
                endpoints,
                current: RwLock::new((Snapshot::no_gpu(), None)),
                refreshing: AtomicBool::new(false),
                total_override: config.vram.total_mb,
            }),
        }
    }

    /// The cached snapshot, at once. When it is older than `max_age`, a refresh starts in the
    /// background (one at a time) and the next reader gets the new one.
    pub fn snapshot(&self, max_age: Duration) -> Snapshot {
        let (snapshot, at) = match self.inner.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let stale = at.is_none_or(|t| t.elapsed() > max_age);
        if stale && tokio::runtime::Handle::try_current().is_ok() {
            let me = self.clone();
            tokio::spawn(async move {
                me.refresh().await;
            });
        }
        snapshot
    }

    /// Reads NVML and every Ollama endpoint now, stores and returns the snapshot. Concurrent
    /// calls do not pile up: a call that finds a refresh running returns the cached snapshot.
    pub async fn refresh(&self) -> Snapshot {
        if self.inner.refreshing.swap(true, Ordering::AcqRel) {
            return self.cached();
        }
        let inner = self.inner.clone();
        let devices = tokio::task::spawn_blocking(move || match inner.gpus.lock() {
            Ok(mut gpus) => {
                if let LazyGpus::Unopened = *gpus {
                    *gpus = LazyGpus::Open(Box::new(Gpus::open()));
                }
                match &*gpus {
                    LazyGpus::Open(g) => g.read(),
                    LazyGpus::Unopened => Err("no GPU seen".to_string()),
                }
            }
            Err(_) => Err("NVML state poisoned".to_string()),
        })
        .await
        .unwrap_or_else(|e| Err(format!("NVML read failed: {e}")));

        let mut notes = Vec::new();
        let queries = self.inner.endpoints.iter().map(|(name, endpoint)| {
            let client = self.inner.client.clone();
            async move {
                let target = Target { name, endpoint };
                let result = tokio::time::timeout(LOADED_TIMEOUT, client.loaded(target)).await;
                (name.clone(), result)
            }
        });
        let mut loaded = Vec::new();
        for (name, result) in futures::future::join_all(queries).await {
            match result {
                Ok(Ok(entries)) => loaded.extend(entries.into_iter().map(|e| LoadedModel {
                    name: e.name,
                    endpoint: name.clone(),
                    size_mb: e.size_mb,
                    vram_mb: e.vram_mb,
                    expires_at: e.expires_at,
                })),
                Ok(Err(e)) => notes.push(format!("{name}: {e}")),
                Err(_) => notes.push(format!(
                    "{name}: no answer to /api/ps within {} ms",
                    LOADED_TIMEOUT.as_millis()
                )),
            }
        }
        let mut snapshot = build_snapshot(devices, loaded, notes);
        if let (None, Some(total)) = (snapshot.gpu, self.inner.total_override) {
            snapshot.gpu = Some(configured_gpu(total, &snapshot.loaded));
            snapshot
                .notes
                .push(format!("GPU size {total} MB from `[vram] total_mb`"));
        }
        if let Ok(mut guard) = self.inner.current.write() {
            *guard = (snapshot.clone(), Some(Instant::now()));
        }
        self.inner.refreshing.store(false, Ordering::Release);
        snapshot
    }

    fn cached(&self) -> Snapshot {
        match self.inner.current.read() {
            Ok(guard) => guard.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    /// Refreshes every `every` until the returned task is aborted.
    pub fn spawn_interval(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.refresh().await;
            }
        })
    }
}

/// A GPU of `total_mb` holding what the endpoints report loaded (in VRAM).
fn configured_gpu(total_mb: u64, loaded: &[LoadedModel]) -> GpuMemory {
    let used: u64 = loaded.iter().map(|m| m.vram_mb).sum();
    GpuMemory {
        total_mb,
        free_mb: total_mb.saturating_sub(used),
    }
}

fn build_snapshot(
    devices: Result<Vec<GpuDevice>, String>,
    loaded: Vec<LoadedModel>,
    mut notes: Vec<String>,
) -> Snapshot {
    let devices = match devices {
        Ok(d) => d,
        Err(note) => {
            notes.push(note);
            Vec::new()
        }
    };
    let gpu = (!devices.is_empty()).then(|| GpuMemory {
        total_mb: devices.iter().map(|d| d.total_mb).sum(),
        free_mb: devices.iter().map(|d| d.free_mb).sum(),
    });
    Snapshot {
        gpu,
        devices,
        loaded,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(name: &str, size_mb: u64, vram_mb: u64) -> LoadedModel {
        LoadedModel {
            name: name.into(),
            size_mb,
            vram_mb,
            ..LoadedModel::default()
        }
    }

    #[test]
    fn loaded_models_match_with_and_without_tag() {
        let s = Snapshot {
            loaded: vec![loaded("mistral:latest", 5000, 5000)],
            ..Snapshot::default()
        };
        assert!(s.loaded("mistral").is_some());
        assert!(s.loaded("mistral:latest").is_some());
        assert!(s.loaded("mistral:7b").is_none());
        assert_eq!(
            canonical_model_name("meta-llama/Llama-3.1-70B"),
            "meta-llama/Llama-3.1-70B"
        );
    }

    #[test]
    fn levels_follow_thresholds_and_offload() {
        let config = VramConfig::default();
        let at = |free_mb| Snapshot {
            gpu: Some(GpuMemory {
                total_mb: 1000,
                free_mb,
            }),
            ..Snapshot::default()
        };
        assert_eq!(Snapshot::no_gpu().level(&config), Level::Unknown);
        assert_eq!(at(500).level(&config), Level::Ok);
        assert_eq!(at(100).level(&config), Level::Warn);
        assert_eq!(at(20).level(&config), Level::Critical);
        let offloaded = Snapshot {
            loaded: vec![loaded("big", 40_000, 30_000)],
            ..at(500)
        };
        assert!(offloaded.loaded[0].offloaded());
        assert_eq!(offloaded.level(&config), Level::Warn);
    }

    #[test]
    fn devices_are_summed_and_failures_noted() {
        let device = |index, total_mb, free_mb| GpuDevice {
            index,
            name: "GPU".into(),
            total_mb,
            used_mb: total_mb - free_mb,
            free_mb,
            processes: vec![],
        };
        let s = build_snapshot(
            Ok(vec![device(0, 100, 40), device(1, 200, 10)]),
            vec![],
            vec![],
        );
        assert_eq!(
            s.gpu,
            Some(GpuMemory {
                total_mb: 300,
                free_mb: 50
            })
        );
        let s = build_snapshot(
            Err("no GPU seen (NVML: library not found)".into()),
            vec![],
            vec![],
        );
        assert_eq!(s.gpu, None);
        assert_eq!(s.notes, ["no GPU seen (NVML: library not found)"]);
    }

    #[test]
    fn a_configured_gpu_size_subtracts_what_is_loaded() {
        let g = configured_gpu(
            49_152,
            &[loaded("a", 3000, 3000), loaded("b", 20_000, 18_000)],
        );
        assert_eq!(
            g,
            GpuMemory {
                total_mb: 49_152,
                free_mb: 28_152
            }
        );
        assert_eq!(configured_gpu(100, &[loaded("x", 500, 500)]).free_mb, 0);
    }

    #[tokio::test]
    async fn monitor_without_a_gpu_or_endpoints_says_no_gpu() {
        let config =
            crate::config::from_toml("[endpoints.x]\nurl = \"http://127.0.0.1:9\"", "t", None)
                .expect("valid");
        let monitor = Monitor::new(&config, backend::Client::new(Duration::from_millis(200)));
        let s = monitor.refresh().await;
        // This machine has no NVIDIA driver; where one exists the snapshot has devices instead.
        if s.devices.is_empty() {
            assert_eq!(s.gpu, None);
            assert!(
                s.notes.iter().any(|n| n.contains("no GPU seen")),
                "{:?}",
                s.notes
            );
        }
        // The default Ollama endpoint is not running in tests: noted, not an error.
        assert_eq!(monitor.snapshot(Duration::from_secs(60)), s);
    }
}
