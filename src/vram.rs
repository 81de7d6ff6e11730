//! GPU memory as the router sees it: one `Snapshot` of total and free VRAM and of the models a
//! backend has loaded.
//!
//! This module owns the snapshot type. Reading NVML and the backends' loaded-model lists to fill
//! it is the monitor's job (it lands with the backends); until then a snapshot comes from the
//! command line's simulation flags, or says "no GPU seen".

use serde::Serialize;

/// What is known about GPU memory at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// `None` when no GPU is visible (no driver, no NVIDIA card, NVML failed): the router then
    /// decides by analysis alone.
    pub gpu: Option<GpuMemory>,
    /// Models the backends report as loaded.
    pub loaded: Vec<LoadedModel>,
}

/// Memory summed over all visible GPUs, in MB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GpuMemory {
    pub total_mb: u64,
    pub free_mb: u64,
}

/// A model resident in a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadedModel {
    pub name: String,
    /// Total size of the loaded model, in MB.
    pub size_mb: u64,
    /// The part of it that sits in VRAM; less than `size_mb` means partial CPU offload.
    pub vram_mb: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_models_match_with_and_without_tag() {
        let s = Snapshot {
            gpu: None,
            loaded: vec![LoadedModel {
                name: "mistral:latest".into(),
                size_mb: 5000,
                vram_mb: 5000,
            }],
        };
        assert!(s.loaded("mistral").is_some());
        assert!(s.loaded("mistral:latest").is_some());
        assert!(s.loaded("mistral:7b").is_none());
        assert_eq!(
            canonical_model_name("meta-llama/Llama-3.1-70B"),
            "meta-llama/Llama-3.1-70B"
        );
    }
}
