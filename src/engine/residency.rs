//! Residency: which models triage has been using and when, which are answering right now, the
//! `keep_alive` each request sends, and evictions and reload ping-pong seen in the snapshots.
//!
//! The keep_alive rule is pure ([`keep_alive`]): a model the user is working with (used
//! [`WORKING_USES`] times within [`WORKING_WINDOW_S`]) is kept for `[latency]
//! working_keep_alive` (default 2 h) so it survives a meeting or lunch; otherwise the tier's
//! configured keep_alive applies (fast: for ever, coder: 30 min, heavy: 10 min, so a one-off
//! heavy request frees its VRAM soon and is what Ollama evicts first). The [`Tracker`] feeds the
//! router's latency rule ([`crate::route::Residency`]). Its clock can be set by hand, so the
//! replay benchmark runs a workday in seconds. It does no I/O.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{keep_alive_seconds, Config, Tier};
use crate::route;
use crate::vram::{canonical_model_name, Snapshot};

/// Uses within [`WORKING_WINDOW_S`] that make a model part of the user's working set.
pub const WORKING_USES: usize = 3;
/// The window for [`WORKING_USES`], in seconds.
pub const WORKING_WINDOW_S: f64 = 1800.0;
/// keep_alive of a pre-warmed model: long enough for the request that follows, short enough
/// that a pre-warm nobody used does not hold VRAM for long.
pub const PREWARM_KEEP_ALIVE: &str = "5m";

/// The keep_alive to send for `tier` after `recent_uses` uses (this one included) within the
/// working window.
pub fn keep_alive(config: &Config, tier: Tier, recent_uses: usize) -> String {
    let configured = &config.tier(tier).keep_alive;
    let working = &config.latency.working_keep_alive;
    if recent_uses >= WORKING_USES && longer(working, configured) {
        working.clone()
    } else {
        configured.clone()
    }
}

/// Whether keep_alive `a` keeps a model longer than `b` (unreadable values never win).
fn longer(a: &str, b: &str) -> bool {
    match (keep_alive_seconds(a), keep_alive_seconds(b)) {
        (Ok(None), Ok(Some(_))) => true,
        (Ok(Some(x)), Ok(Some(y))) => x > y,
        (Ok(_), Err(_)) => true,
        _ => false,
    }
}

/// Where "now" comes from: the real clock, or one set by hand (the replay benchmark).
#[derive(Debug, Clone)]
pub enum Clock {
    Real(Instant),
    Manual(Arc<AtomicU64>),
}

impl Clock {
    pub fn real() -> Clock {
        Clock::Real(Instant::now())
    }

    /// A clock that stands still until its [`ManualTime`] is set.
    pub fn manual() -> (Clock, ManualTime) {
        let ms = Arc::new(AtomicU64::new(0));
        (Clock::Manual(ms.clone()), ManualTime(ms))
    }

    /// Time since the clock's start.
    pub fn now(&self) -> Duration {
        match self {
            Clock::Real(start) => start.elapsed(),
            Clock::Manual(ms) => Duration::from_millis(ms.load(Ordering::Relaxed)),
        }
    }
}

/// The hand of a manual clock.
#[derive(Debug, Clone)]
pub struct ManualTime(Arc<AtomicU64>);

impl ManualTime {
    pub fn set(&self, now: Duration) {
        self.0.store(now.as_millis() as u64, Ordering::Relaxed);
    }
}

#[derive(Debug, Default, Clone)]
struct ModelUse {
    /// Start times of recent requests that wanted its tier (within the working window).
    uses: VecDeque<Duration>,
    last_used: Option<Duration>,
    /// When a request last wanted its tier.
    last_wanted: Option<Duration>,
    in_flight: u32,
    /// Answering (as far as the replay's simulator says) until then.
    busy_until: Option<Duration>,
    /// The keep_alive last sent, in seconds (`INFINITY`: for ever).
    keep_alive_s: Option<f64>,
    /// When it was last seen to leave VRAM before its keep_alive ran out.
    evicted_at: Option<Duration>,
}

/// Counts for status displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Models that left VRAM before their keep_alive ran out.
    pub evictions: u64,
    /// Of those, the ones loaded again within a minute.
    pub ping_pongs: u64,
}

/// Tracks model use for one engine.
#[derive(Debug)]
pub struct Tracker {
    clock: Clock,
    models: Mutex<HashMap<String, ModelUse>>,
    /// Models in the last snapshot observed.
    last_loaded: Mutex<Option<Vec<String>>>,
    /// The tier of the last typed request, the likely one of the next chat.
    last_typed: Mutex<Option<Tier>>,
    counts: Mutex<Counts>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new(Clock::real())
    }
}

/// Marks a model as answering until dropped.
pub struct InUse<'a> {
    tracker: &'a Tracker,
    model: String,
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        let now = self.tracker.clock.now();
        let mut models = self.tracker.lock();
        let m = models.entry(self.model.clone()).or_default();
        m.in_flight = m.in_flight.saturating_sub(1);
        m.last_used = Some(now);
    }
}

impl Tracker {
    pub fn new(clock: Clock) -> Tracker {
        Tracker {
            clock,
            models: Mutex::default(),
            last_loaded: Mutex::default(),
            last_typed: Mutex::default(),
            counts: Mutex::default(),
        }
    }

    pub fn now(&self) -> Duration {
        self.clock.now()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ModelUse>> {
        match self.models.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Records that a request whose analysis preferred `preferred` goes to `model` of `tier`,
    /// and returns the keep_alive to send. Only requests that wanted the tier count towards
    /// the working set: a heavy model answering coder tasks for a while is not kept for hours.
    pub fn keep_alive_for(
        &self,
        config: &Config,
        tier: Tier,
        model: &str,
        preferred: Tier,
    ) -> String {
        let now = self.now();
        let mut models = self.lock();
        let m = models.entry(canonical_model_name(model)).or_default();
        let window = Duration::from_secs_f64(WORKING_WINDOW_S);
        while m
            .uses
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > window)
        {
            m.uses.pop_front();
        }
        if preferred == tier {
            m.uses.push_back(now);
        }
        m.last_used = Some(now);
        let chosen = keep_alive(config, tier, m.uses.len());
        m.keep_alive_s = seconds_of(&chosen);
        drop(models);
        self.wanted(&config.tier(preferred).model);
        chosen
    }

    /// Records that a request wanted `model`'s tier (whatever answers it).
    pub fn wanted(&self, model: &str) {
        let now = self.now();
        self.lock()
            .entry(canonical_model_name(model))
            .or_default()
            .last_wanted = Some(now);
    }

    /// Records the keep_alive of a pre-warm (no use: nobody asked yet).
    pub fn prewarmed(&self, model: &str, keep_alive: &str) {
        let mut models = self.lock();
        let m = models.entry(canonical_model_name(model)).or_default();
        m.keep_alive_s = seconds_of(keep_alive);
    }

    /// Marks `model` as answering until the guard is dropped.
    pub fn begin(&self, model: &str) -> InUse<'_> {
        self.lock()
            .entry(canonical_model_name(model))
            .or_default()
            .in_flight += 1;
        InUse {
            tracker: self,
            model: canonical_model_name(model),
        }
    }

    /// For the replay: `model` answers (in simulated time) until `until`.
    pub fn busy_until(&self, model: &str, until: Duration) {
        let mut models = self.lock();
        let m = models.entry(canonical_model_name(model)).or_default();
        m.busy_until = Some(until);
        m.last_used = Some(m.last_used.map_or(until, |t| t.max(until)));
    }

    /// Remembers the tier of a typed request (the likely tier of the next chat).
    pub fn typed(&self, tier: Tier) {
        if let Ok(mut t) = self.last_typed.lock() {
            *t = Some(tier);
        }
    }

    pub fn last_typed(&self) -> Option<Tier> {
        self.last_typed.lock().ok().and_then(|t| *t)
    }

    /// What the router's latency rule needs to know about every model triage has used.
    pub fn residency(&self) -> Vec<route::Residency> {
        let now = self.now();
        self.lock()
            .iter()
            .map(|(model, m)| {
                let busy = m.busy_until.is_some_and(|t| t > now);
                route::Residency {
                    model: model.clone(),
                    in_use: m.in_flight > 0 || busy,
                    idle_s: m
                        .last_used
                        .map(|t| now.saturating_sub(t).as_secs_f64())
                        .map(|idle| if busy || m.in_flight > 0 { 0.0 } else { idle }),
                    wanted_s_ago: m.last_wanted.map(|t| now.saturating_sub(t).as_secs_f64()),
                    keep_alive_s: m.keep_alive_s,
                    evicted_s_ago: m.evicted_at.map(|t| now.saturating_sub(t).as_secs_f64()),
                    working: m
                        .uses
                        .iter()
                        .filter(|t| now.saturating_sub(**t).as_secs_f64() <= WORKING_WINDOW_S)
                        .count()
                        >= WORKING_USES,
                    busy_for_s: m
                        .busy_until
                        .filter(|t| *t > now)
                        .map(|t| (t - now).as_secs_f64()),
                }
            })
            .collect()
    }

    /// Compares a snapshot's loaded models with the previous one: a model gone before its
    /// keep_alive ran out was evicted; one evicted and back within a minute is ping-pong.
    pub fn observe(&self, snapshot: &Snapshot) {
        let now = self.now();
        let current: Vec<String> = snapshot
            .loaded
            .iter()
            .map(|m| canonical_model_name(&m.name))
            .collect();
        let previous = match self.last_loaded.lock() {
            Ok(mut last) => last.replace(current.clone()),
            Err(_) => return,
        };
        let Some(previous) = previous else { return };
        let mut models = self.lock();
        let mut counts = match self.counts.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        for gone in previous.iter().filter(|m| !current.contains(m)) {
            let m = models.entry(gone.clone()).or_default();
            let expired = match (m.last_used, m.keep_alive_s) {
                (Some(used), Some(k)) if k.is_finite() => {
                    now.saturating_sub(used).as_secs_f64() >= k
                }
                (None, _) => true,
                _ => false,
            };
            if !expired {
                m.evicted_at = Some(now);
                counts.evictions += 1;
            }
        }
        for back in current.iter().filter(|m| !previous.contains(m)) {
            if let Some(m) = models.get_mut(back) {
                if m.evicted_at
                    .is_some_and(|t| now.saturating_sub(t).as_secs_f64() < route::PING_PONG_S)
                {
                    counts.ping_pongs += 1;
                }
                m.evicted_at = None;
            }
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts.lock().map(|c| *c).unwrap_or_default()
    }
}

fn seconds_of(keep_alive: &str) -> Option<f64> {
    match keep_alive_seconds(keep_alive) {
        Ok(Some(s)) => Some(s),
        Ok(None) => Some(f64::INFINITY),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vram::LoadedModel;

    fn cfg() -> Config {
        crate::config::from_toml("", "t", None).expect("defaults")
    }

    #[test]
    fn keep_alive_grows_for_the_models_a_user_works_with() {
        let c = cfg();
        let cases = [
            (Tier::Fast, 1, "-1"),
            (Tier::Fast, 9, "-1"),
            (Tier::Coder, 1, "30m"),
            (Tier::Coder, 2, "30m"),
            (Tier::Coder, 3, "2h"),
            (Tier::Heavy, 1, "10m"),
            (Tier::Heavy, 3, "2h"),
        ];
        for (tier, uses, expected) in cases {
            assert_eq!(
                keep_alive(&c, tier, uses),
                expected,
                "{tier} after {uses} uses"
            );
        }
    }

    #[test]
    fn the_tracker_counts_uses_in_the_window_and_who_is_answering() {
        let (clock, hand) = Clock::manual();
        let t = Tracker::new(clock);
        let c = cfg();
        assert_eq!(
            t.keep_alive_for(&c, Tier::Coder, "qwen3-coder:30b", Tier::Coder),
            "30m"
        );
        hand.set(Duration::from_secs(600));
        assert_eq!(
            t.keep_alive_for(&c, Tier::Coder, "qwen3-coder:30b", Tier::Coder),
            "30m"
        );
        hand.set(Duration::from_secs(1200));
        assert_eq!(
            t.keep_alive_for(&c, Tier::Coder, "qwen3-coder:30b", Tier::Coder),
            "2h"
        );
        // Forty minutes later the first two uses have left the window.
        hand.set(Duration::from_secs(3600));
        assert_eq!(
            t.keep_alive_for(&c, Tier::Coder, "qwen3-coder:30b", Tier::Coder),
            "30m"
        );
        {
            let _answering = t.begin("qwen3-coder:30b");
            let r = t.residency();
            assert!(r[0].in_use);
        }
        hand.set(Duration::from_secs(3630));
        // Answering heavy requests as a stand-in does not make it part of the working set.
        for _ in 0..3 {
            assert_eq!(
                t.keep_alive_for(&c, Tier::Coder, "qwen3-coder:30b", Tier::Heavy),
                "30m"
            );
        }
        let r: Vec<_> = t
            .residency()
            .into_iter()
            .filter(|r| r.model == "qwen3-coder:30b")
            .collect();
        assert_eq!(r[0].wanted_s_ago, Some(30.0));
        assert!(!r[0].in_use);
        assert_eq!(r[0].idle_s, Some(0.0));
        assert_eq!(r[0].keep_alive_s, Some(1800.0));
        hand.set(Duration::from_secs(3640));
        t.busy_until("qwen3-coder:30b", Duration::from_secs(3700));
        let coder = |t: &Tracker| {
            t.residency()
                .into_iter()
                .find(|r| r.model == "qwen3-coder:30b")
                .expect("tracked")
        };
        assert!(coder(&t).in_use);
        hand.set(Duration::from_secs(3710));
        assert!(!coder(&t).in_use);
        assert_eq!(coder(&t).idle_s, Some(10.0));
    }

    fn snapshot(models: &[&str]) -> Snapshot {
        Snapshot {
            loaded: models
                .iter()
                .map(|m| LoadedModel {
                    name: m.to_string(),
                    ..LoadedModel::default()
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn evictions_and_ping_pong_are_counted() {
        let (clock, hand) = Clock::manual();
        let t = Tracker::new(clock);
        let c = cfg();
        t.keep_alive_for(&c, Tier::Coder, "qwen3-coder:30b", Tier::Coder);
        t.observe(&snapshot(&["qwen3-coder:30b"]));
        hand.set(Duration::from_secs(100));
        // Gone within its 30 min keep_alive: evicted.
        t.observe(&snapshot(&["llama3.1:70b"]));
        hand.set(Duration::from_secs(130));
        t.observe(&snapshot(&["qwen3-coder:30b"]));
        // The heavy model, never used by triage, leaving is not counted: its keep_alive is
        // not known.
        assert_eq!(
            t.counts(),
            Counts {
                evictions: 1,
                ping_pongs: 1
            }
        );
    }
}
