//! Per-model concurrency limits with a bounded queue.
//!
//! A model server answers only so many requests for one model at once (Ollama:
//! `OLLAMA_NUM_PARALLEL`, default 1) and queues the rest itself, invisibly and without bound
//! from the client's side. triage keeps that queue on its own side instead, where it can be
//! seen (`triage status`), bounded (`[limits] queue_len`), timed (`[limits] max_wait_s`) and
//! left at once by a request that is cancelled: dropping the future that waits for a slot
//! removes it from the queue (tokio's semaphore unlinks a dropped waiter).
//!
//! One slot per (endpoint, model). Its capacity is the tier's `max_concurrent` when set, else
//! the endpoint's, else `$OLLAMA_NUM_PARALLEL`, else Ollama's default of 1. It follows
//! configuration changes in place, so requests already running keep counting against it.
//! This module owns counting and waiting; what to do when a model is busy (fall back, report
//! `Error::Busy`) is the engine's decision.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;

/// Ollama's own default for `OLLAMA_NUM_PARALLEL` (envconfig: `Uint("OLLAMA_NUM_PARALLEL", 1)`).
pub const OLLAMA_DEFAULT_PARALLEL: usize = 1;

/// Above this many idle slots (models named once by a forced `model`), idle ones are dropped.
const MAX_IDLE_SLOTS: usize = 64;

/// The default concurrency of an endpoint: `$OLLAMA_NUM_PARALLEL` when it is a positive number
/// (as Ollama reads it: anything else means its default), else 1. Read once per process.
pub fn default_max_concurrent() -> usize {
    static VALUE: OnceLock<usize> = OnceLock::new();
    *VALUE.get_or_init(|| parse_num_parallel(std::env::var("OLLAMA_NUM_PARALLEL").ok().as_deref()))
}

fn parse_num_parallel(value: Option<&str>) -> usize {
    value
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(OLLAMA_DEFAULT_PARALLEL)
}

/// How many requests `model` may run at once on `endpoint` under `config`.
pub fn capacity(config: &Config, endpoint: &str, model: &str) -> usize {
    let tier_limit = config
        .tiers
        .values()
        .filter(|t| t.model == model && t.endpoints.iter().any(|e| e == endpoint))
        .filter_map(|t| t.max_concurrent)
        .min();
    let limit = tier_limit
        .or_else(|| {
            config
                .endpoints
                .get(endpoint)
                .and_then(|e| e.max_concurrent)
        })
        .map_or_else(default_max_concurrent, |n| n as usize);
    limit.max(1)
}

/// No slot came free: the queue was full, or the wait in it ran past `max_wait_s`.
#[derive(Debug, Clone, PartialEq)]
pub struct Busy {
    pub message: String,
    /// When trying again makes sense, in seconds.
    pub retry_after_s: Option<u64>,
}

/// Running and waiting requests of one model on one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Load {
    pub endpoint: String,
    pub model: String,
    pub max_concurrent: usize,
    pub running: usize,
    pub queued: usize,
}

#[derive(Debug)]
struct Slot {
    semaphore: Arc<Semaphore>,
    /// Capacity, and permits still to be withdrawn after a shrink (taken back as running
    /// requests finish, since a running request is never interrupted).
    size: Mutex<(usize, usize)>,
    running: AtomicUsize,
    queued: AtomicUsize,
}

impl Slot {
    fn new(capacity: usize) -> Slot {
        Slot {
            semaphore: Arc::new(Semaphore::new(capacity)),
            size: Mutex::new((capacity, 0)),
            running: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
        }
    }

    fn size(&self) -> std::sync::MutexGuard<'_, (usize, usize)> {
        match self.size.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn resize(&self, capacity: usize) {
        let mut size = self.size();
        let (current, debt) = *size;
        if capacity > current {
            let grow = capacity - current;
            let paid = grow.min(debt);
            self.semaphore.add_permits(grow - paid);
            *size = (capacity, debt - paid);
        } else if capacity < current {
            let shrink = current - capacity;
            let withdrawn = self.semaphore.forget_permits(shrink);
            *size = (capacity, debt + shrink - withdrawn);
        }
    }

    fn capacity(&self) -> usize {
        self.size().0
    }
}

/// A running request's place. Dropping it frees the place for the next in the queue.
#[derive(Debug)]
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    slot: Arc<Slot>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.slot.running.fetch_sub(1, Ordering::Relaxed);
        let mut size = self.slot.size();
        if size.1 > 0 {
            // The capacity shrank while this ran: this place is withdrawn, not handed on.
            size.1 -= 1;
            if let Some(p) = self.permit.take() {
                p.forget();
            }
        }
        drop(size);
        self.permit.take();
    }
}

/// Counts a waiter in the queue for as long as it lives (a cancelled wait included).
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The queue settings: how many may wait per model, and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueuePolicy {
    pub queue_len: usize,
    pub max_wait: Duration,
}

impl QueuePolicy {
    pub fn of(config: &Config) -> QueuePolicy {
        QueuePolicy {
            queue_len: config.limits.queue_len,
            max_wait: Duration::from_secs_f64(config.limits.max_wait_s),
        }
    }
}

/// Every slot of the process; shared by an engine and its reconfigured successors.
#[derive(Debug, Default)]
pub struct Limiter {
    slots: Mutex<HashMap<(String, String), Arc<Slot>>>,
}

impl Limiter {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Slot>>> {
        match self.slots.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn slot(&self, endpoint: &str, model: &str, capacity: usize) -> Arc<Slot> {
        let mut slots = self.slots();
        if slots.len() > MAX_IDLE_SLOTS {
            // Slots held by nobody and with nothing running or waiting carry no state.
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let slot = slots
            .entry((endpoint.to_string(), model.to_string()))
            .or_insert_with(|| Arc::new(Slot::new(capacity)))
            .clone();
        drop(slots);
        slot.resize(capacity);
        slot
    }

    /// Waits for a place to run `model` on `endpoint`: at once when one is free, else in the
    /// queue (when it has room) for at most `policy.max_wait`. Dropping the future leaves the
    /// queue at once.
    pub async fn acquire(
        &self,
        endpoint: &str,
        model: &str,
        capacity: usize,
        policy: QueuePolicy,
    ) -> Result<Permit, Busy> {
        let slot = self.slot(endpoint, model, capacity);
        let granted = |permit: OwnedSemaphorePermit, slot: &Arc<Slot>| {
            slot.running.fetch_add(1, Ordering::Relaxed);
            Permit {
                permit: Some(permit),
                slot: slot.clone(),
            }
        };
        if let Ok(permit) = slot.semaphore.clone().try_acquire_owned() {
            return Ok(granted(permit, &slot));
        }
        let retry_after_s = Some(policy.max_wait.as_secs().clamp(1, 3600));
        let waiting = slot.queued.fetch_add(1, Ordering::Relaxed);
        let queued = Queued(&slot.queued);
        if waiting >= policy.queue_len {
            drop(queued);
            return Err(Busy {
                message: format!(
                    "{model} on `{endpoint}` is busy: {} running and {waiting} waiting, the queue is full (limits.queue_len = {}); try again shortly or raise max_concurrent",
                    slot.running.load(Ordering::Relaxed),
                    policy.queue_len
                ),
                retry_after_s,
            });
        }
        let wait = tokio::time::timeout(policy.max_wait, slot.semaphore.clone().acquire_owned());
        let result = match wait.await {
            Ok(Ok(permit)) => Ok(granted(permit, &slot)),
            // The semaphore is never closed; treated like a timeout all the same.
            Ok(Err(_)) | Err(_) => Err(Busy {
                message: format!(
                    "{model} on `{endpoint}` is busy: no place came free within {:.0} s (limits.max_wait_s); try again shortly or raise max_concurrent",
                    policy.max_wait.as_secs_f64()
                ),
                retry_after_s,
            }),
        };
        drop(queued);
        result
    }

    /// Running and queued requests of every slot in use, sorted by endpoint and model.
    pub fn loads(&self) -> Vec<Load> {
        let mut loads: Vec<Load> = self
            .slots()
            .iter()
            .map(|((endpoint, model), slot)| Load {
                endpoint: endpoint.clone(),
                model: model.clone(),
                max_concurrent: slot.capacity(),
                running: slot.running.load(Ordering::Relaxed),
                queued: slot.queued.load(Ordering::Relaxed),
            })
            .collect();
        loads.sort_by(|a, b| (&a.endpoint, &a.model).cmp(&(&b.endpoint, &b.model)));
        loads
    }

    /// The load of every model the configuration names (idle ones included) and of any other
    /// slot in use.
    pub fn report(&self, config: &Config) -> Vec<Load> {
        let mut loads = self.loads();
        for tier in config.tiers.values().filter(|t| t.enabled) {
            for endpoint in &tier.endpoints {
                let known = loads
                    .iter()
                    .any(|l| &l.endpoint == endpoint && l.model == tier.model);
                if !known {
                    loads.push(Load {
                        endpoint: endpoint.clone(),
                        model: tier.model.clone(),
                        max_concurrent: capacity(config, endpoint, &tier.model),
                        running: 0,
                        queued: 0,
                    });
                }
            }
        }
        loads.sort_by(|a, b| (&a.endpoint, &a.model).cmp(&(&b.endpoint, &b.model)));
        loads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(queue_len: usize, max_wait_ms: u64) -> QueuePolicy {
        QueuePolicy {
            queue_len,
            max_wait: Duration::from_millis(max_wait_ms),
        }
    }

    fn load(l: &Limiter) -> (usize, usize) {
        let loads = l.loads();
        (loads[0].running, loads[0].queued)
    }

    #[test]
    fn num_parallel_is_read_as_ollama_reads_it() {
        assert_eq!(parse_num_parallel(None), 1);
        assert_eq!(parse_num_parallel(Some("4")), 4);
        assert_eq!(parse_num_parallel(Some(" 8 ")), 8);
        assert_eq!(parse_num_parallel(Some("0")), 1);
        assert_eq!(parse_num_parallel(Some("-2")), 1);
        assert_eq!(parse_num_parallel(Some("many")), 1);
    }

    #[test]
    fn capacity_prefers_the_tier_then_the_endpoint() {
        let config = crate::config::from_toml(
            "[endpoints.gpu]\nurl = \"http://h:1\"\nmax_concurrent = 3\n\
             [tiers.heavy]\nendpoint = [\"gpu\", \"ollama\"]\nmax_concurrent = 2\n\
             [tiers.coder]\nendpoint = \"gpu\"\n",
            "t",
            None,
        )
        .expect("valid");
        assert_eq!(capacity(&config, "gpu", "llama3.1:70b"), 2);
        assert_eq!(capacity(&config, "gpu", "qwen3-coder:30b"), 3);
        assert_eq!(capacity(&config, "gpu", "other"), 3);
        assert_eq!(
            capacity(&config, "ollama", "llama3.2:3b"),
            default_max_concurrent()
        );
    }

    #[tokio::test]
    async fn the_limit_holds_and_a_freed_place_goes_to_the_queue() {
        let l = Limiter::default();
        let a = l.acquire("e", "m", 2, policy(4, 1000)).await.expect("free");
        let _b = l.acquire("e", "m", 2, policy(4, 1000)).await.expect("free");
        let waiting = l.acquire("e", "m", 2, policy(4, 1000));
        tokio::pin!(waiting);
        assert!(
            futures::poll!(waiting.as_mut()).is_pending(),
            "a third must wait"
        );
        assert_eq!(load(&l), (2, 1));
        drop(a);
        let c = waiting.await.expect("the freed place");
        assert_eq!(load(&l), (2, 0));
        drop(c);
        assert_eq!(load(&l), (1, 0));
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy_at_once() {
        let l = Limiter::default();
        let _a = l
            .acquire("e", "m", 1, policy(1, 60_000))
            .await
            .expect("free");
        let queued = l.acquire("e", "m", 1, policy(1, 60_000));
        tokio::pin!(queued);
        assert!(futures::poll!(queued.as_mut()).is_pending());
        let busy = l
            .acquire("e", "m", 1, policy(1, 60_000))
            .await
            .expect_err("queue full");
        assert!(busy.message.contains("queue is full"), "{}", busy.message);
        assert_eq!(busy.retry_after_s, Some(60));
        assert_eq!(load(&l), (1, 1), "the refused one left no trace");
        let no_queue = l.acquire("e", "m", 1, policy(0, 60_000)).await;
        assert!(no_queue.is_err());
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_the_queue_at_once() {
        let l = Limiter::default();
        let a = l
            .acquire("e", "m", 1, policy(8, 60_000))
            .await
            .expect("free");
        {
            let waiting = l.acquire("e", "m", 1, policy(8, 60_000));
            tokio::pin!(waiting);
            assert!(futures::poll!(waiting.as_mut()).is_pending());
            assert_eq!(load(&l), (1, 1));
        }
        assert_eq!(load(&l), (1, 0), "dropped: out of the queue");
        drop(a);
        // The dropped waiter did not swallow the freed place.
        let b = l.acquire("e", "m", 1, policy(0, 10)).await;
        assert!(b.is_ok());
    }

    #[tokio::test]
    async fn the_wait_is_bounded() {
        let l = Limiter::default();
        let _a = l.acquire("e", "m", 1, policy(8, 10)).await.expect("free");
        let busy = l
            .acquire("e", "m", 1, policy(8, 30))
            .await
            .expect_err("timed out");
        assert!(busy.message.contains("max_wait_s"), "{}", busy.message);
        assert_eq!(load(&l), (1, 0));
    }

    #[tokio::test]
    async fn capacity_follows_configuration_without_interrupting() {
        let l = Limiter::default();
        let a = l.acquire("e", "m", 2, policy(0, 10)).await.expect("free");
        let b = l.acquire("e", "m", 2, policy(0, 10)).await.expect("free");
        // Shrunk to 1 while two run: nothing new until both have finished.
        drop(a);
        assert!(l.acquire("e", "m", 1, policy(0, 10)).await.is_err());
        drop(b);
        let c = l
            .acquire("e", "m", 1, policy(0, 10))
            .await
            .expect("one place");
        assert!(l.acquire("e", "m", 1, policy(0, 10)).await.is_err());
        // Grown to 3: two more.
        let d = l.acquire("e", "m", 3, policy(0, 10)).await.expect("grown");
        let e = l.acquire("e", "m", 3, policy(0, 10)).await.expect("grown");
        assert!(l.acquire("e", "m", 3, policy(0, 10)).await.is_err());
        assert_eq!(l.loads()[0].max_concurrent, 3);
        drop((c, d, e));
        assert_eq!(load(&l), (0, 0));
    }

    #[tokio::test]
    async fn idle_slots_do_not_pile_up() {
        let l = Limiter::default();
        for i in 0..500 {
            let _p = l
                .acquire("e", &format!("m{i}"), 1, policy(0, 10))
                .await
                .expect("free");
        }
        assert!(l.loads().len() <= MAX_IDLE_SLOTS + 1, "{}", l.loads().len());
    }
}
