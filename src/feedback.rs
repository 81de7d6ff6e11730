//! Learning from the user: when a request is forced to a tier — `--tier`/`--model` on the
//! command line, `tier`/`model` in `triage/chat`, the "Ask the heavy model" code action — the
//! request's hashed feature ids and the tier chosen are recorded under the state directory;
//! `triage train --from-feedback` learns a per-user [`Delta`] from them (see
//! `analyze::model::train_delta`), which is saved beside them and loaded at start.
//!
//! What is stored, and what is not: bucket numbers of hashed features (16-bit hashes of words,
//! word pairs and character n-grams, and of the signals) — never the prompt, the selection or
//! any text a secret could be read back from — plus the tier forced, the tier the router would
//! have chosen, and when. Nothing leaves the machine.
//!
//! Bounds: the newest [`MAX_RECORDS`] records of at most [`MAX_IDS`] ids each. Every write
//! goes to a temporary file that is then renamed over the old one, so a crash never leaves
//! half a file; a file that cannot be read back (damaged, another format) is reported and
//! replaced by the next write. Concurrent writers in one process are serialised; two processes
//! writing at the same instant can lose one record, never the file.
//!
//! `[feedback] enabled = false` turns all of it off: nothing is recorded and a learned delta
//! is not applied. This module owns the files; the learning itself is `analyze::model`'s.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::analyze::model::{self, Delta, Features, Model};
use crate::analyze::Analyzer;
use crate::config::Tier;

/// The overrides.
pub const FILE: &str = "feedback.json";
/// The learned delta.
pub const DELTA_FILE: &str = "router-user.bin";
/// Records kept; older ones are dropped first.
pub const MAX_RECORDS: usize = 500;
/// Feature ids kept per record (a 1 KB prompt has about 600).
pub const MAX_IDS: usize = 1024;
/// Largest feedback file read back; anything bigger is not ours.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
const FORMAT: u32 = 1;

/// The state directory: `$TRIAGE_STATE_DIR`, else the user's state (or local data) dir.
pub fn default_dir() -> Option<PathBuf> {
    std::env::var_os("TRIAGE_STATE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            dirs::state_dir()
                .or_else(dirs::data_local_dir)
                .map(|d| d.join("triage"))
        })
}

/// Text features that share one value (all words of a prompt have the same weight).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub value: f32,
    pub ids: Vec<u32>,
}

/// One override.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The tier the user forced.
    pub tier: Tier,
    /// The tier the router recommended.
    pub routed: Tier,
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub text: Vec<Group>,
    /// Signal features (value 1).
    pub signals: Vec<u32>,
}

impl Record {
    /// The record of a forced request's features.
    pub fn new(features: &Features, tier: Tier, routed: Tier, at: u64) -> Record {
        let mut text: Vec<Group> = Vec::new();
        let mut kept = 0;
        for &(id, value) in features.text() {
            if kept == MAX_IDS {
                break;
            }
            match text.last_mut() {
                Some(g) if g.value == value => g.ids.push(id),
                _ => text.push(Group {
                    value,
                    ids: vec![id],
                }),
            }
            kept += 1;
        }
        let signals = features.items[features.text..]
            .iter()
            .map(|&(id, _)| id)
            .take(MAX_IDS - kept)
            .collect();
        Record {
            tier,
            routed,
            at,
            text,
            signals,
        }
    }

    /// The features back, as the model reads them.
    pub fn features(&self) -> Features {
        let mut items: Vec<(u32, f32)> = self
            .text
            .iter()
            .flat_map(|g| g.ids.iter().map(move |&id| (id, g.value)))
            .collect();
        let text = items.len();
        items.extend(self.signals.iter().map(|&id| (id, 1.0)));
        Features { items, text }
    }

    fn valid(&self) -> bool {
        let ids = self.text.iter().map(|g| g.ids.len()).sum::<usize>() + self.signals.len();
        ids <= MAX_IDS && self.text.iter().all(|g| g.value.is_finite())
    }
}

#[derive(Serialize, Deserialize)]
struct File {
    format: u32,
    features_version: u32,
    records: Vec<Record>,
}

/// What reading the overrides found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<Record>,
    /// Why the file (or some of it) could not be used; the next write replaces it.
    pub problem: Option<String>,
}

/// The feedback files of one state directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Serialises read-modify-write within this process.
    lock: Mutex<()>,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store {
            dir: dir.into(),
            lock: Mutex::new(()),
        }
    }

    /// The store in [`default_dir`], if there is one.
    pub fn default_store() -> Option<Store> {
        default_dir().map(Store::new)
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    pub fn delta_path(&self) -> PathBuf {
        self.dir.join(DELTA_FILE)
    }

    /// Reads the overrides. A missing file is no records; a damaged one is no records and a
    /// problem to report.
    pub fn load(&self) -> Loaded {
        let path = self.path();
        let bytes = match read_bounded(&path) {
            Ok(Some(b)) => b,
            Ok(None) => return Loaded::default(),
            Err(e) => {
                return Loaded {
                    records: Vec::new(),
                    problem: Some(format!("cannot read {}: {e}", path.display())),
                }
            }
        };
        match serde_json::from_slice::<File>(&bytes) {
            Ok(f) if f.format != FORMAT || f.features_version != model::FEATURES_VERSION => {
                Loaded {
                    records: Vec::new(),
                    problem: Some(format!(
                    "{} was written for another version of triage's features; it will be replaced",
                    path.display()
                )),
                }
            }
            Ok(f) => {
                let total = f.records.len();
                let records: Vec<Record> = f.records.into_iter().filter(Record::valid).collect();
                let problem = (records.len() < total).then(|| {
                    format!(
                        "{}: {} damaged records skipped",
                        path.display(),
                        total - records.len()
                    )
                });
                Loaded { records, problem }
            }
            Err(e) => Loaded {
                records: Vec::new(),
                problem: Some(format!(
                    "{} is damaged ({e}); it will be replaced",
                    path.display()
                )),
            },
        }
    }

    /// Appends an override, keeping the newest [`MAX_RECORDS`]; returns the problem found
    /// with the old file, if any (it has then been replaced).
    pub fn record(&self, record: Record) -> std::io::Result<Option<String>> {
        let _guard = match self.lock.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Loaded {
            mut records,
            problem,
        } = self.load();
        records.push(record);
        if records.len() > MAX_RECORDS {
            records.drain(..records.len() - MAX_RECORDS);
        }
        let file = File {
            format: FORMAT,
            features_version: model::FEATURES_VERSION,
            records,
        };
        let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        write_atomically(&self.path(), &bytes)?;
        Ok(problem)
    }

    /// The learned delta, if one was saved. `Err` says why a saved one cannot be used.
    pub fn load_delta(&self) -> Result<Option<Delta>, String> {
        let path = self.delta_path();
        match read_bounded(&path) {
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => Delta::from_bytes(&bytes).map(Some).map_err(|e| {
                format!(
                    "{} cannot be used: {e}; run `triage train --from-feedback` again",
                    path.display()
                )
            }),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    pub fn save_delta(&self, delta: &Delta) -> std::io::Result<()> {
        write_atomically(&self.delta_path(), &delta.to_bytes())
    }
}

/// `base` adapted by the delta saved in `store`, when there is one that fits; the message says
/// why a saved delta was not used (damaged, or learned against another model: train again).
pub fn adapt(base: Analyzer, store: &Store) -> (Analyzer, Option<String>) {
    match store.load_delta() {
        Ok(None) => (base, None),
        Err(problem) => (base, Some(problem)),
        Ok(Some(delta)) => {
            let fallback = base.clone();
            match base.with_delta(delta) {
                Ok(adapted) => (adapted, None),
                Err(_) => (
                    fallback,
                    Some(format!(
                        "{} was learned against another router model; run `triage train --from-feedback` again",
                        store.delta_path().display()
                    )),
                ),
            }
        }
    }
}

/// Learns a delta from overrides against `model`.
pub fn learn(model: &Model, records: &[Record]) -> Delta {
    let examples: Vec<(Features, Tier)> = records.iter().map(|r| (r.features(), r.tier)).collect();
    model::train_delta(model, &examples, model::DeltaOptions::default())
}

/// The tier a request was forced to, if it was: an explicit tier, a forced model that is a
/// tier's model (`model_tier`), or the "Ask the heavy model" action. A forced model that is no
/// tier's model says nothing about tiers.
pub fn forced_tier(
    force_tier: Option<Tier>,
    force_model: Option<&str>,
    model_tier: Option<Tier>,
    heavy_action: bool,
) -> Option<Tier> {
    if force_tier.is_some() {
        return force_tier;
    }
    if force_model.is_some() {
        return model_tier;
    }
    heavy_action.then_some(Tier::Heavy)
}

fn read_bounded(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            return Err(std::io::Error::other(format!(
                "{} bytes is more than a feedback file can be",
                m.len()
            )))
        }
        Ok(_) => {}
    }
    std::fs::read(path).map(Some)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::Query;

    fn features(prompt: &str) -> Features {
        let a = Analyzer::with_model(model::train(&[], model::TrainOptions::default(), 0));
        a.features(&Query {
            prompt,
            ..Query::default()
        })
    }

    #[test]
    fn records_round_trip_without_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        let f = features("my secret password is hunter2, explain this");
        store
            .record(Record::new(&f, Tier::Heavy, Tier::Coder, 7))
            .expect("written");
        let bytes = std::fs::read(store.path()).expect("file");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("hunter2") && !text.contains("secret"),
            "{text}"
        );
        let loaded = store.load();
        assert!(loaded.problem.is_none());
        assert_eq!(loaded.records.len(), 1);
        assert_eq!(loaded.records[0].features(), f);
        assert_eq!(loaded.records[0].tier, Tier::Heavy);
    }

    #[test]
    fn the_file_stays_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        let f = features("hello");
        for i in 0..MAX_RECORDS + 7 {
            store
                .record(Record::new(&f, Tier::Fast, Tier::Coder, i as u64))
                .expect("written");
        }
        let loaded = store.load();
        assert_eq!(loaded.records.len(), MAX_RECORDS);
        assert_eq!(loaded.records[0].at, 7, "the oldest are dropped first");
        let long = "word ".repeat(5000);
        let r = Record::new(&features(&long), Tier::Fast, Tier::Fast, 0);
        let ids: usize = r.text.iter().map(|g| g.ids.len()).sum::<usize>() + r.signals.len();
        assert!(ids <= MAX_IDS);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(FILE)]);
    }

    #[test]
    fn a_damaged_file_is_reported_and_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        std::fs::write(store.path(), b"{ not json").expect("write");
        let loaded = store.load();
        assert!(loaded.records.is_empty());
        assert!(loaded
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("damaged")));
        let problem = store
            .record(Record::new(&features("hi"), Tier::Fast, Tier::Fast, 1))
            .expect("written");
        assert!(problem.is_some(), "the replaced file is reported");
        let again = store.load();
        assert!(again.problem.is_none());
        assert_eq!(again.records.len(), 1);
    }

    #[test]
    fn a_damaged_delta_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        assert_eq!(store.load_delta(), Ok(None));
        std::fs::write(store.delta_path(), b"TRGU\x03\x00").expect("write");
        assert!(store.load_delta().is_err());
    }

    #[test]
    fn forced_tiers() {
        assert_eq!(
            forced_tier(Some(Tier::Fast), None, None, false),
            Some(Tier::Fast)
        );
        assert_eq!(
            forced_tier(None, Some("llama3.1:70b"), Some(Tier::Heavy), false),
            Some(Tier::Heavy)
        );
        // A model that is no tier's model says nothing about tiers.
        assert_eq!(forced_tier(None, Some("other"), None, true), None);
        assert_eq!(forced_tier(None, None, None, true), Some(Tier::Heavy));
        assert_eq!(forced_tier(None, None, None, false), None);
    }
}
