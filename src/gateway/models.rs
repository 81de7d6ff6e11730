//! Model names as the gateway's clients use them: `auto` (routed), `auto:fast|coder|heavy` (a
//! forced tier) and real model names, found on the endpoints that list them. The listings are
//! cached for a few seconds so that a burst of requests does not ask every server each time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{ModelEntry, Target, METADATA_TIMEOUT};
use crate::config::{Config, Tier};
use crate::engine::Engine;
use crate::vram::canonical_model_name;

/// The routed model's name.
pub const AUTO: &str = "auto";

/// What a request's `model` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    Auto,
    Tier(Tier),
    Model(String),
}

/// Why a model name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadName {
    /// No name at all: the request is malformed (400).
    Empty,
    /// `auto:` with something that is no tier: no such model (404).
    NoSuchTier(String),
}

impl BadName {
    pub(super) fn into_api(self, dialect: super::Dialect) -> super::ApiError {
        match self {
            BadName::Empty => super::ApiError::bad_request(
                dialect,
                "`model` is empty: use `auto` to let triage choose, `auto:fast`, `auto:coder`, `auto:heavy`, or a model name",
            ),
            BadName::NoSuchTier(name) => super::ApiError {
                code: Some("model_not_found"),
                ..super::ApiError::new(
                    axum::http::StatusCode::NOT_FOUND,
                    dialect,
                    format!("model `{name}` does not exist: the routed names are auto, auto:fast, auto:coder and auto:heavy"),
                )
            },
        }
    }
}

/// `auto` (also `auto:latest`, as Ollama clients may add the tag), `auto:TIER`, or a model name.
pub fn parse(model: &str) -> Result<Want, BadName> {
    if !super::has_text(model) {
        return Err(BadName::Empty);
    }
    let model = model.trim();
    let lower = model.to_ascii_lowercase();
    if lower == AUTO || lower == "auto:latest" {
        return Ok(Want::Auto);
    }
    if let Some(tier) = lower.strip_prefix("auto:") {
        return tier
            .parse::<Tier>()
            .map(Want::Tier)
            .map_err(|_| BadName::NoSuchTier(model.to_string()));
    }
    Ok(Want::Model(model.to_string()))
}

/// The names the gateway offers: `auto` and one per tier, before the real models.
pub fn routed_names() -> [&'static str; 4] {
    ["auto", "auto:fast", "auto:coder", "auto:heavy"]
}

/// What one endpoint listed, or why it could not.
#[derive(Debug, Clone)]
pub struct Listing {
    pub endpoint: String,
    pub models: Result<Vec<ModelEntry>, String>,
}

/// Endpoints that can serve `model`, in order: those listing it (a tier's own endpoints first),
/// then a tier's endpoints that could not be listed (down or slow: the engine will say which).
/// An endpoint that answered without the model is left out.
pub fn endpoints_for(config: &Config, listings: &[Listing], model: &str) -> Vec<String> {
    let wanted = canonical_model_name(model);
    let tier_endpoints: Vec<&String> = Tier::ALL
        .into_iter()
        .map(|t| config.tier(t))
        .filter(|t| canonical_model_name(&t.model) == wanted)
        .flat_map(|t| t.endpoints.iter())
        .collect();
    let lists = |l: &Listing| {
        l.models.as_ref().is_ok_and(|models| {
            models
                .iter()
                .any(|m| canonical_model_name(&m.name) == wanted)
        })
    };
    let listing = |name: &str| listings.iter().find(|l| l.endpoint == name);
    let mut out: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        if !out.iter().any(|o| o == name) {
            out.push(name.to_string());
        }
    };
    for e in &tier_endpoints {
        if listing(e).is_some_and(lists) {
            add(e);
        }
    }
    for l in listings.iter().filter(|l| lists(l)) {
        add(&l.endpoint);
    }
    for e in &tier_endpoints {
        if listing(e).is_none_or(|l| l.models.is_err()) {
            add(e);
        }
    }
    out
}

/// Cached model listings of every endpoint.
#[derive(Default)]
pub struct Catalog {
    cached: Mutex<Option<(Instant, Arc<Vec<Listing>>)>>,
}

/// How long a listing is reused.
const MAX_AGE: Duration = Duration::from_secs(10);

impl Catalog {
    /// Every endpoint's models, asked in parallel (each bounded by the metadata timeout),
    /// reused for a few seconds.
    pub async fn listings(&self, engine: &Engine) -> Arc<Vec<Listing>> {
        self.listings_within(engine, MAX_AGE).await
    }

    async fn listings_within(&self, engine: &Engine, max_age: Duration) -> Arc<Vec<Listing>> {
        if let Some((at, listings)) = self.lock().as_ref() {
            if at.elapsed() <= max_age {
                return listings.clone();
            }
        }
        let config = engine.config();
        let client = engine.client();
        let queries = config.endpoints.iter().map(|(name, endpoint)| async move {
            let target = Target { name, endpoint };
            let models = match tokio::time::timeout(METADATA_TIMEOUT, client.models(target)).await {
                Ok(Ok(models)) => Ok(models),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "`{name}` did not list its models within {} s",
                    METADATA_TIMEOUT.as_secs()
                )),
            };
            Listing {
                endpoint: name.clone(),
                models,
            }
        });
        let listings = Arc::new(futures::future::join_all(queries).await);
        *self.lock() = Some((Instant::now(), listings.clone()));
        listings
    }

    /// The endpoints for `model`; a name not found in the cached listings is looked up afresh
    /// (it may have just been pulled).
    pub async fn endpoints_for(&self, engine: &Engine, model: &str) -> Vec<String> {
        let found = endpoints_for(engine.config(), &self.listings(engine).await, model);
        if !found.is_empty() {
            return found;
        }
        let fresh = self.listings_within(engine, Duration::from_secs(1)).await;
        endpoints_for(engine.config(), &fresh, model)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Arc<Vec<Listing>>)>> {
        match self.cached.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    #[test]
    fn names() {
        let cases = [
            ("auto", Ok(Want::Auto)),
            (" Auto:latest ", Ok(Want::Auto)),
            ("auto:fast", Ok(Want::Tier(Tier::Fast))),
            ("AUTO:Heavy", Ok(Want::Tier(Tier::Heavy))),
            ("llama3.2:3b", Ok(Want::Model("llama3.2:3b".into()))),
            ("meta/Llama-3", Ok(Want::Model("meta/Llama-3".into()))),
        ];
        for (input, expected) in cases {
            assert_eq!(parse(input), expected, "{input}");
        }
        assert_eq!(
            parse("auto:huge"),
            Err(BadName::NoSuchTier("auto:huge".into()))
        );
        assert_eq!(parse("  "), Err(BadName::Empty));
        assert_eq!(parse("\u{1c}\u{85}"), Err(BadName::Empty));
    }

    fn entry(name: &str) -> ModelEntry {
        ModelEntry {
            name: name.to_string(),
            size_mb: None,
        }
    }

    #[test]
    fn a_model_goes_to_the_endpoints_that_have_it() {
        let config = config::from_toml(
            "[endpoints.box]\nurl = \"http://box:11434\"\n[endpoints.vllm]\nkind = \"openai\"\nurl = \"http://v:8000/v1\"\n[tiers.coder]\nendpoint = [\"ollama\", \"box\"]\n",
            "test",
            None,
        )
        .expect("config");
        let listings = vec![
            Listing {
                endpoint: "box".into(),
                models: Ok(vec![entry("qwen3-coder:30b"), entry("mistral:latest")]),
            },
            Listing {
                endpoint: "ollama".into(),
                models: Err("down".into()),
            },
            Listing {
                endpoint: "vllm".into(),
                models: Ok(vec![entry("mistral")]),
            },
        ];
        // The tier's endpoints: the one listing it first, the one that could not be asked last.
        assert_eq!(
            endpoints_for(&config, &listings, "qwen3-coder:30b"),
            ["box", "ollama"]
        );
        // `mistral` and `mistral:latest` are one model.
        assert_eq!(
            endpoints_for(&config, &listings, "mistral"),
            ["box", "vllm"]
        );
        assert!(endpoints_for(&config, &listings, "nope:1b").is_empty());
        // The fast tier's endpoint could not be listed: it may have its model.
        assert_eq!(endpoints_for(&config, &listings, "llama3.2:3b"), ["ollama"]);
    }
}
