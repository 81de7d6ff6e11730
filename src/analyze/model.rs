//! The learned part of the analyser: a multinomial logistic regression over hashed features
//! (prompt words and word pairs, character 4-grams of the first 64 words, the shape of pasted
//! logs and stack traces, quoted prose, the bucketed signals of `signals`), scoring the three
//! tiers, and a temperature that turns its scores into calibrated probabilities.
//!
//! The weights ship inside the binary (`router.bin`, built by `triage train` from the labelled
//! data under `data/routing/`) and are read in place, so loading costs nothing. The temperature
//! is fitted on out-of-fold predictions of the training data ([`train_calibrated`]): a model
//! that has seen its examples is over-sure of them, and the answer's confidence must mean what
//! it says. A [`Delta`] is the per-user layer learned from overrides (`triage train
//! --from-feedback`): sparse extra weights on the same text buckets, added to the logits.
//!
//! Training lives here too, so that cross-validation and the shipped model use the very same
//! code. No I/O: the caller reads files and hands over bytes.

use super::signals::{self, Signals};
use crate::config::Tier;
use std::ops::Range;

/// Number of hash buckets is `1 << BITS`.
const BITS: u32 = 16;
const BUCKETS: usize = 1 << BITS;
const CLASSES: usize = 3;
const MAGIC: &[u8; 4] = b"TRG2";
/// Magic, bucket bits, data fingerprint, temperature.
const HEADER_LEN: usize = 4 + 4 + 8 + 4;

/// Only the first this many prompt words become word features; the rest of a long paste adds
/// little signal and would cost time.
const MAX_WORDS: usize = 256;
/// Character n-grams are taken from the first this many words: they carry a prompt's vocabulary
/// (most requests are shorter), and each feature is a lookup in the 768 KB table, so the bound
/// keeps a 1 KB prompt within the routing budget (BENCHMARKS.md).
const MAX_GRAM_WORDS: usize = 64;
/// Length of the character n-grams taken from every word of three letters or more.
const GRAM: usize = 4;
/// Length the text part of the feature vector is scaled to. Chosen by leave-one-source-out
/// (1, 2, 4, 6, 8 tried): text outweighing the signals generalises across voices best.
const TEXT_NORM: f32 = 4.0;
/// Weight of a pasted text's words (a quoted mail, a letter to proofread, a thread) against the
/// user's own: someone else's "phishing" or "Fehler" should not speak as loudly as the ask.
/// Chosen by leave-one-source-out (0.3, 0.5, 0.7 tried).
const PASTED_WEIGHT: f32 = 0.5;

/// Bump whenever `features` (or a signal it reads) changes: the shipped model's fingerprint
/// then no longer matches and the freshness test asks for `triage train`.
pub const FEATURES_VERSION: u32 = 8;

/// The weights built into the binary.
static BUILTIN: &[u8] = include_bytes!("router.bin");

/// What the classifier looks at: the request's text and the signals already computed from it.
pub struct Input<'a> {
    pub prompt: &'a str,
    pub selection: Option<&'a str>,
    pub language_id: Option<&'a str>,
}

/// The hashed feature vector of a request: `(bucket, value)` pairs, the text features (words,
/// pairs, n-grams) first, then the signal features.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub items: Vec<(u32, f32)>,
    /// How many of `items` are text features; the rest are signals.
    pub text: usize,
}

impl Features {
    /// The text features only: what a user's [`Delta`] may learn from.
    pub fn text(&self) -> &[(u32, f32)] {
        &self.items[..self.text]
    }
}

/// A trained model: one row of three class weights per hash bucket, and its temperature.
#[derive(Clone)]
pub struct Model {
    weights: Weights,
    /// Fingerprint of the training data the model was built from.
    pub data_fingerprint: u64,
    /// Logits are divided by this before the softmax (1 = uncalibrated).
    pub temperature: f32,
}

#[derive(Clone)]
enum Weights {
    /// Little-endian f32 rows read straight out of the binary image.
    Static(&'static [u8]),
    Owned(Vec<[f32; CLASSES]>),
}

/// Why model bytes could not be used.
#[derive(Debug, thiserror::Error)]
#[error("the router model is damaged ({0}); rebuild it with `cargo run --release -- train`")]
pub struct LoadError(&'static str);

impl Model {
    /// The model built into this binary.
    pub fn builtin() -> Result<Model, LoadError> {
        Model::from_static(BUILTIN)
    }

    fn from_static(bytes: &'static [u8]) -> Result<Model, LoadError> {
        if bytes.len() != HEADER_LEN + BUCKETS * CLASSES * 4 {
            return Err(LoadError("wrong size"));
        }
        if &bytes[..4] != MAGIC {
            return Err(LoadError("bad magic"));
        }
        let bits = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if bits != BITS {
            return Err(LoadError("wrong bucket count"));
        }
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&bytes[8..16]);
        let temperature = f32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(LoadError("bad temperature"));
        }
        Ok(Model {
            weights: Weights::Static(&bytes[HEADER_LEN..]),
            data_fingerprint: u64::from_le_bytes(fp),
            temperature,
        })
    }

    /// Serialises the model in the format `builtin` reads.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + BUCKETS * CLASSES * 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&BITS.to_le_bytes());
        out.extend_from_slice(&self.data_fingerprint.to_le_bytes());
        out.extend_from_slice(&self.temperature.to_le_bytes());
        for bucket in 0..BUCKETS {
            for w in self.row(bucket) {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        out
    }

    fn row(&self, bucket: usize) -> [f32; CLASSES] {
        match &self.weights {
            Weights::Owned(rows) => rows[bucket],
            Weights::Static(bytes) => {
                let at = bucket * CLASSES * 4;
                let f = |i: usize| {
                    let b = &bytes[at + i * 4..at + i * 4 + 4];
                    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
                };
                [f(0), f(1), f(2)]
            }
        }
    }

    /// Calibrated probabilities for fast, coder and heavy, in `Tier::ALL` order. `signals`
    /// must be `signals::read` of the same input (the analyser has them already).
    pub fn predict(&self, input: &Input, signals: &Signals) -> [f32; CLASSES] {
        self.probabilities(self.logits(&features(input, signals).items))
    }

    /// Raw scores before calibration.
    pub fn logits(&self, features: &[(u32, f32)]) -> [f32; CLASSES] {
        let mut z = [0f32; CLASSES];
        for &(bucket, value) in features {
            let row = self.row(bucket as usize);
            for c in 0..CLASSES {
                z[c] += row[c] * value;
            }
        }
        z
    }

    /// The calibrated probabilities of raw scores.
    pub fn probabilities(&self, logits: [f32; CLASSES]) -> [f32; CLASSES] {
        softmax(logits.map(|z| z / self.temperature))
    }
}

/// A user's adaptation: sparse weights over text buckets, added to the model's logits. Learned
/// from the requests the user forced to a tier, against one base model (its fingerprint).
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    /// Sorted by bucket.
    rows: Vec<(u32, [f32; CLASSES])>,
    /// `data_fingerprint` of the model this delta was trained against.
    pub base_fingerprint: u64,
    /// How many overrides it was learned from.
    pub examples: u32,
}

const DELTA_MAGIC: &[u8; 4] = b"TRGU";
/// Bounds a delta file: at most this many buckets (a few thousand requests' worth).
pub const MAX_DELTA_ROWS: usize = 1 << 15;

impl Delta {
    /// The extra logits of a request's features.
    pub fn logits(&self, features: &[(u32, f32)]) -> [f32; CLASSES] {
        let mut z = [0f32; CLASSES];
        for &(bucket, value) in features {
            if let Ok(i) = self.rows.binary_search_by_key(&bucket, |r| r.0) {
                for (c, zc) in z.iter_mut().enumerate() {
                    *zc += self.rows[i].1[c] * value;
                }
            }
        }
        z
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Serialises the delta: magic, feature version, base fingerprint, examples, row count,
    /// then rows of a bucket and three weights, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.rows.len() * 16);
        out.extend_from_slice(DELTA_MAGIC);
        out.extend_from_slice(&FEATURES_VERSION.to_le_bytes());
        out.extend_from_slice(&self.base_fingerprint.to_le_bytes());
        out.extend_from_slice(&self.examples.to_le_bytes());
        out.extend_from_slice(&(self.rows.len() as u32).to_le_bytes());
        for (bucket, w) in &self.rows {
            out.extend_from_slice(&bucket.to_le_bytes());
            for v in w {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Reads what `to_bytes` wrote; anything else (truncated, another feature version,
    /// unsorted or out-of-range buckets, non-finite weights) is an error, never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<Delta, DeltaError> {
        let word = |at: usize| -> Result<[u8; 4], DeltaError> {
            bytes
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .ok_or(DeltaError::Damaged("truncated"))
        };
        if bytes.get(..4) != Some(DELTA_MAGIC.as_slice()) {
            return Err(DeltaError::Damaged("bad magic"));
        }
        let version = u32::from_le_bytes(word(4)?);
        if version != FEATURES_VERSION {
            return Err(DeltaError::OtherVersion(version));
        }
        let lo = u32::from_le_bytes(word(8)?) as u64;
        let hi = u32::from_le_bytes(word(12)?) as u64;
        let examples = u32::from_le_bytes(word(16)?);
        let n = u32::from_le_bytes(word(20)?) as usize;
        if n > MAX_DELTA_ROWS || bytes.len() != 24 + n * 16 {
            return Err(DeltaError::Damaged("wrong size"));
        }
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            let at = 24 + i * 16;
            let bucket = u32::from_le_bytes(word(at)?);
            let w = [
                f32::from_le_bytes(word(at + 4)?),
                f32::from_le_bytes(word(at + 8)?),
                f32::from_le_bytes(word(at + 12)?),
            ];
            let sorted = rows.last().is_none_or(|(b, _)| *b < bucket);
            if bucket as usize >= BUCKETS || !sorted || w.iter().any(|v| !v.is_finite()) {
                return Err(DeltaError::Damaged("bad row"));
            }
            rows.push((bucket, w));
        }
        Ok(Delta {
            rows,
            base_fingerprint: lo | hi << 32,
            examples,
        })
    }
}

/// Why a delta file could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeltaError {
    #[error("damaged ({0})")]
    Damaged(&'static str),
    #[error("made for feature version {0}, this triage uses {v}", v = FEATURES_VERSION)]
    OtherVersion(u32),
}

/// One labelled example for training.
pub struct Example<'a> {
    pub input: Input<'a>,
    pub tier: Tier,
    /// How much the example counts in training against an ordinary one (1): the
    /// training-only contrast sets count less, so they teach the contrast without
    /// outweighing the sources' mix of requests.
    pub weight: f32,
}

/// Settings of the optimiser. The defaults were chosen by leave-one-source-out evaluation over
/// every source under `data/routing/` (`triage eval --loso`).
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    pub epochs: usize,
    pub learning_rate: f32,
    pub l2: f32,
    /// Folds of the out-of-fold predictions the temperature is fitted on.
    pub calibration_folds: usize,
    /// Share of text features dropped at random from each example in each epoch.
    pub text_dropout: f32,
    /// Training runs, each with its own shuffle and dropout draws, whose weights are averaged.
    pub runs: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 30,
            learning_rate: 0.05,
            l2: 1e-6,
            calibration_folds: 5,
            text_dropout: 0.5,
            // Chosen by leave-one-source-out (1, 4, 8 tried): one run's result moves by a
            // request or two per source with the shuffle; four average that out.
            runs: 4,
        }
    }
}

/// Trains a model with AdaGrad on the log loss (temperature 1). Deterministic: the same
/// examples in the same order give the same bytes.
pub fn train(examples: &[Example], options: TrainOptions, data_fingerprint: u64) -> Model {
    let encoded = encode(examples);
    let all: Vec<usize> = (0..encoded.len()).collect();
    Model {
        weights: Weights::Owned(fit(&encoded, &all, options)),
        data_fingerprint,
        temperature: 1.0,
    }
}

/// Trains a model and calibrates it: the temperature is fitted on out-of-fold logits (each
/// fold scored by a model trained without it), then the weights are trained on everything.
pub fn train_calibrated(
    examples: &[Example],
    options: TrainOptions,
    data_fingerprint: u64,
) -> Model {
    let encoded = encode(examples);
    let k = options.calibration_folds.clamp(2, encoded.len().max(2));
    let fold_of = folds(encoded.len(), k);
    let mut logits = vec![[0f32; CLASSES]; encoded.len()];
    for fold in 0..k {
        let train: Vec<usize> = (0..encoded.len()).filter(|&i| fold_of[i] != fold).collect();
        let weights = fit(&encoded, &train, options);
        let model = Model {
            weights: Weights::Owned(weights),
            data_fingerprint,
            temperature: 1.0,
        };
        for i in (0..encoded.len()).filter(|&i| fold_of[i] == fold) {
            logits[i] = model.logits(&encoded[i].features.items);
        }
    }
    let labels: Vec<usize> = encoded.iter().map(|e| e.label).collect();
    let temperature = fit_temperature(&logits, &labels);
    let all: Vec<usize> = (0..encoded.len()).collect();
    Model {
        weights: Weights::Owned(fit(&encoded, &all, options)),
        data_fingerprint,
        temperature,
    }
}

fn encode(examples: &[Example]) -> Vec<Encoded> {
    examples
        .iter()
        .map(|e| {
            let signals = signals::read(e.input.prompt, e.input.selection);
            Encoded {
                features: features(&e.input, &signals),
                label: e.tier.index(),
                weight: e.weight.clamp(0.0, 1e3),
            }
        })
        .collect()
}

/// An example as training sees it.
struct Encoded {
    features: Features,
    label: usize,
    weight: f32,
}

/// Fits the weights: the mean of `options.runs` training runs.
fn fit(encoded: &[Encoded], subset: &[usize], options: TrainOptions) -> Vec<[f32; CLASSES]> {
    let runs = options.runs.max(1);
    let mut mean = vec![[0f32; CLASSES]; BUCKETS];
    for run in 0..runs {
        let weights = fit_once(encoded, subset, options, run as u64);
        for (m, w) in mean.iter_mut().zip(&weights) {
            for c in 0..CLASSES {
                m[c] += w[c] / runs as f32;
            }
        }
    }
    mean
}

/// One training run; `run` seeds its shuffle and dropout.
fn fit_once(
    encoded: &[Encoded],
    subset: &[usize],
    options: TrainOptions,
    run: u64,
) -> Vec<[f32; CLASSES]> {
    let mut weights = vec![[0f32; CLASSES]; BUCKETS];
    let mut grad_sq = vec![[1e-6f32; CLASSES]; BUCKETS];
    let mut order: Vec<usize> = subset.to_vec();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ run.wrapping_mul(0x2545_F491_4F6C_DD1D);
    let mut drop_rng = 0xD1B5_4A32_D192_ED03u64 ^ run.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let keep = (1.0 - options.text_dropout).clamp(0.05, 1.0);
    let mut feats: Vec<(u32, f32)> = Vec::with_capacity(1024);
    for _ in 0..options.epochs {
        shuffle(&mut order, &mut rng);
        for &i in &order {
            let Encoded {
                features: example,
                label,
                weight,
            } = &encoded[i];
            feats.clear();
            if keep < 1.0 {
                // Dropping text features at random keeps the model from memorising its
                // examples' wording, so the signals and concepts carry weight of their own.
                for (j, &(b, v)) in example.items.iter().enumerate() {
                    if j >= example.text {
                        feats.push((b, v));
                    } else if next_unit(&mut drop_rng) < keep {
                        feats.push((b, v / keep));
                    }
                }
            } else {
                feats.extend_from_slice(&example.items);
            }
            let mut z = [0f32; CLASSES];
            for &(b, v) in &feats {
                for c in 0..CLASSES {
                    z[c] += weights[b as usize][c] * v;
                }
            }
            let p = softmax(z);
            for &(b, v) in &feats {
                let b = b as usize;
                for c in 0..CLASSES {
                    let target = if c == *label { 1.0 } else { 0.0 };
                    let g = weight * (p[c] - target) * v + options.l2 * weights[b][c];
                    grad_sq[b][c] += g * g;
                    weights[b][c] -= options.learning_rate * g / grad_sq[b][c].sqrt();
                }
            }
        }
    }
    weights
}

/// A uniform number in [0, 1) from a xorshift state.
fn next_unit(state: &mut u64) -> f32 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 40) as f32 / (1u64 << 24) as f32
}

/// The temperature that minimises the log loss of `logits` against `labels`. The loss is
/// convex in 1/T, so a golden-section search over 1/T in [0.05, 20] finds it.
pub fn fit_temperature(logits: &[[f32; CLASSES]], labels: &[usize]) -> f32 {
    if logits.is_empty() {
        return 1.0;
    }
    let loss = |beta: f64| -> f64 {
        logits
            .iter()
            .zip(labels)
            .map(|(z, &y)| {
                let scaled = z.map(|v| v as f64 * beta);
                let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scaled.iter().map(|v| (v - max).exp()).sum();
                -(scaled[y.min(CLASSES - 1)] - max - sum.ln())
            })
            .sum()
    };
    let (mut a, mut b) = (0.05f64, 20.0f64);
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = b - ratio * (b - a);
    let mut d = a + ratio * (b - a);
    let (mut fc, mut fd) = (loss(c), loss(d));
    for _ in 0..80 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - ratio * (b - a);
            fc = loss(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + ratio * (b - a);
            fd = loss(d);
        }
    }
    (1.0 / ((a + b) / 2.0)) as f32
}

/// Settings for learning a user's [`Delta`].
#[derive(Debug, Clone, Copy)]
pub struct DeltaOptions {
    pub epochs: usize,
    pub learning_rate: f32,
    /// Pulls every delta weight towards zero, per update: a few overrides should move similar
    /// requests, not rewrite the router.
    pub l2: f32,
}

impl Default for DeltaOptions {
    fn default() -> Self {
        DeltaOptions {
            epochs: 40,
            learning_rate: 0.3,
            l2: 0.02,
        }
    }
}

/// Learns a user's delta from overrides: `(features, tier)` pairs, where only the text
/// features are adapted (signals such as "no selection" are shared by almost every request,
/// and a weight on them would move everything). The base model's calibrated logits stay fixed.
pub fn train_delta(model: &Model, overrides: &[(Features, Tier)], options: DeltaOptions) -> Delta {
    use std::collections::BTreeMap;
    let mut index: BTreeMap<u32, usize> = BTreeMap::new();
    for (f, _) in overrides {
        for &(b, _) in f.text() {
            let next = index.len();
            if next < MAX_DELTA_ROWS {
                index.entry(b).or_insert(next);
            }
        }
    }
    let mut weights = vec![[0f32; CLASSES]; index.len()];
    let mut grad_sq = vec![[1e-6f32; CLASSES]; index.len()];
    // Per override: (local row, value) pairs, the fixed calibrated base logits, the label.
    type Encoded = (Vec<(usize, f32)>, [f32; CLASSES], usize);
    let encoded: Vec<Encoded> = overrides
        .iter()
        .map(|(f, tier)| {
            let local = f
                .text()
                .iter()
                .filter_map(|&(b, v)| index.get(&b).map(|&i| (i, v)))
                .collect();
            let base = model.logits(&f.items).map(|z| z / model.temperature);
            (local, base, tier.index())
        })
        .collect();
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..options.epochs {
        shuffle(&mut order, &mut rng);
        for &i in &order {
            let (feats, base, label) = &encoded[i];
            let mut z = *base;
            for &(j, v) in feats {
                for c in 0..CLASSES {
                    z[c] += weights[j][c] * v;
                }
            }
            let p = softmax(z);
            for &(j, v) in feats {
                for c in 0..CLASSES {
                    let target = if c == *label { 1.0 } else { 0.0 };
                    let g = (p[c] - target) * v + options.l2 * weights[j][c];
                    grad_sq[j][c] += g * g;
                    weights[j][c] -= options.learning_rate * g / grad_sq[j][c].sqrt();
                }
            }
        }
    }
    // The temperature divides the base logits only: delta weights are learned on the
    // calibrated scale, and `Analyzer` adds them after dividing.
    let rows = index
        .into_iter()
        .map(|(bucket, i)| (bucket, weights[i]))
        .filter(|(_, w)| w.iter().any(|v| v.abs() > 1e-6))
        .collect();
    Delta {
        rows,
        base_fingerprint: model.data_fingerprint,
        examples: overrides.len().min(u32::MAX as usize) as u32,
    }
}

/// Assigns `n` items to `k` folds, shuffled with a fixed seed.
fn folds(n: usize, k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, &mut 0x5851_F42D_4C95_7F2Du64);
    let mut fold = vec![0; n];
    for (position, &item) in order.iter().enumerate() {
        fold[item] = position % k;
    }
    fold
}

fn shuffle(items: &mut [usize], state: &mut u64) {
    for i in (1..items.len()).rev() {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let j = (*state % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// Byte ranges of `text` that are pasted material rather than the user's own words: `>`-quoted
/// lines, the middle paragraphs of a prompt of three or more (the ask stands first or last), and
/// the second of two paragraphs when the first introduces it with a colon ("proofread this:").
fn pasted_material(text: &str) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut paragraphs: Vec<Range<usize>> = Vec::new();
    let mut start = None;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('>') {
            // Consecutive quoted lines make one range: a long thread stays cheap to look up.
            match out.last_mut() {
                Some(last) if last.end == at => last.end = at + line.len(),
                _ => out.push(at..at + line.len()),
            }
        }
        if trimmed.is_empty() {
            if let Some(s) = start.take() {
                paragraphs.push(s..at);
            }
        } else if start.is_none() {
            start = Some(at);
        }
        at += line.len();
    }
    if let Some(s) = start {
        paragraphs.push(s..at);
    }
    match paragraphs.as_slice() {
        [first, .., last] if paragraphs.len() >= 3 => out.push(first.end..last.start),
        [first, second] if text[first.clone()].trim_end().ends_with(':') => {
            out.push(second.clone())
        }
        _ => {}
    }
    out
}

/// Softmax of three scores.
pub fn softmax(z: [f32; CLASSES]) -> [f32; CLASSES] {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e = z.map(|v| (v - max).exp());
    let sum: f32 = e.iter().sum();
    e.map(|v| v / sum)
}

/// FNV-1a over a namespace byte and the parts of a key, folded into the bucket range.
#[derive(Clone, Copy)]
struct Key(u64);

impl Key {
    fn new(namespace: u8) -> Key {
        Key(0xcbf2_9ce4_8422_2325).bytes(&[namespace])
    }

    fn bytes(mut self, bytes: &[u8]) -> Key {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    fn number(self, n: u32) -> Key {
        self.bytes(&n.to_le_bytes())
    }

    fn bucket(self) -> u32 {
        // Fold the high bits in: FNV's low bits alone are weak for short keys.
        ((self.0 ^ (self.0 >> 29)) as u32) & (BUCKETS as u32 - 1)
    }
}

/// The hashed feature vector of a request. Text features are scaled to a fixed length
/// ([`TEXT_NORM`]) so that a long prompt does not shout; signal features keep weight 1.
pub fn features(input: &Input, signals: &Signals) -> Features {
    let mut out: Vec<(u32, f32)> = Vec::with_capacity(1024);
    let mut word = String::new();
    // The pair key hashed up to the previous word and the space: FNV runs left to right, so
    // each word is hashed once as a pair's first half.
    let mut pair_start: Option<Key> = None;
    let mut gram = Vec::with_capacity(64);
    let prompt = signals::prefix(input.prompt, signals::SCAN_LIMIT);
    let mut word_count = 0usize;
    let pasted = pasted_material(prompt);
    for raw in signals::words(prompt).take(MAX_WORDS) {
        signals::fold_case(raw, &mut word);
        word_count += 1;
        let at = raw.as_ptr() as usize - prompt.as_ptr() as usize;
        // Relative weight for now; the length scale is applied once all features are known.
        let weight = if pasted.iter().any(|r| r.contains(&at)) {
            PASTED_WEIGHT
        } else {
            1.0
        };
        out.push((Key::new(b'w').bytes(word.as_bytes()).bucket(), weight));
        if let Some(start) = pair_start {
            out.push((start.bytes(word.as_bytes()).bucket(), weight));
        }
        pair_start = Some(Key::new(b'b').bytes(word.as_bytes()).bytes(b" "));
        // Character n-grams of each word: compounds such as `Speicherleck` share pieces with
        // `Leck` and `Speicher`, inflected forms and typos share their stem, and the same
        // technical word reads alike in German and English prose.
        if word.len() >= 3 && word_count <= MAX_GRAM_WORDS {
            gram.clear();
            gram.push(b'<');
            gram.extend_from_slice(word.as_bytes());
            gram.push(b'>');
            for piece in gram.windows(GRAM) {
                out.push((Key::new(b'c').bytes(piece).bucket(), weight));
            }
        }
    }
    if !out.is_empty() {
        let scale = TEXT_NORM / (out.len() as f32).sqrt();
        for f in &mut out {
            f.1 *= scale;
        }
    }
    let text = out.len();

    // Rubric concepts, alone and by selection size: "review" on 200 lines is a design review,
    // on 5 lines an explanation; "plan" with no selection is a rollout plan.
    let sel_size = signals.selection.as_ref().map_or(0, |sel| match sel.lines {
        0..=29 => 1,
        30..=149 => 2,
        _ => 3,
    });
    let concepts = super::concepts::read(prompt);
    // "what does `set -e` do" is an explanation of code, not a definition: the concepts read
    // differently next to quoted code.
    let inline = inline_code(prompt);
    if inline {
        out.push((Key::new(b's').bytes(b"p:inline").bucket(), 1.0));
    }
    for (i, &n) in concepts.counts.iter().enumerate() {
        if n > 0 {
            let k = Key::new(b'k').number(i as u32);
            out.push((k.number(u32::from(n.min(3))).bucket(), 1.0));
            out.push((k.bytes(b"sel").number(sel_size).bucket(), 1.0));
            if inline {
                out.push((k.bytes(b"inline").bucket(), 1.0));
            }
        }
    }

    let mut signal = |key: Key| out.push((key.bucket(), 1.0));
    let s = |name: &str| Key::new(b's').bytes(name.as_bytes());
    signal(s("bias"));
    signal(s("p:words").number(log2_bucket(word_count)));
    let p = &signals.prompt;
    signal(s("p:lines").number(log2_bucket(p.lines)));
    signal(s("p:lang").number(signals.language as u32));
    if p.shell {
        signal(s("p:shell"));
    }
    if signals.greeting {
        signal(s("p:greeting"));
    }
    if p.error_markers > 0 {
        signal(s("p:errors").number(p.error_markers.min(4)));
    }
    signal(s("p:code").number((p.code_density * 4.0).round() as u32));
    if prompt.contains("```") {
        signal(s("p:fence"));
    }
    if prompt.contains('?') {
        signal(s("p:question"));
    }
    signal(s("p:numbers").number(quantities(prompt).min(4) as u32));
    // A quoted sentence is text to reword, translate or correct, whatever it mentions.
    let quoted = quoted_words(prompt);
    if quoted > 0 {
        signal(s("p:quoted").number(log2_bucket(quoted)));
        if p.code_density < 0.25 {
            signal(s("p:quoted:prose").number(log2_bucket(quoted)));
        }
    }
    // Pasted output with little prose around it is evidence to read; with much prose it is a
    // diagnosis to reason about.
    let logs = log_lines(prompt);
    if logs > 0 {
        signal(s("p:log").number(log2_bucket(logs)));
        signal(
            s("p:log:words")
                .number(log2_bucket(logs))
                .number(log2_bucket(word_count)),
        );
    }

    match &signals.selection {
        None => signal(s("s:none")),
        Some(sel) => {
            let bucket = log2_bucket(sel.lines);
            signal(s("s:lines").number(bucket));
            let code = (sel.code_density * 4.0).round() as u32;
            signal(s("s:code").number(code));
            signal(
                s("s:lines:code")
                    .number(bucket)
                    .number(u32::from(code >= 2)),
            );
            if sel.shell {
                signal(s("s:shell"));
            }
            if sel.error_markers > 0 {
                signal(s("s:errors").number(sel.error_markers.min(4)));
            }
            // Prompt length matters differently with a selection: "review this" on 200 lines
            // is a design review, on 5 lines an explanation.
            signal(
                s("s:lines:pwords")
                    .number(bucket)
                    .number(log2_bucket(word_count)),
            );
        }
    }
    if let Some(id) = input.language_id {
        signal(Key::new(b'l').bytes(id.to_ascii_lowercase().as_bytes()));
    }
    Features { items: out, text }
}

/// Code quoted inside prose: a backtick span, or a shell command after a colon or on a line
/// of its own (`what does this do: curl … | sudo bash`). Asking what such a fragment means
/// is explaining code, however much it reads like a definition question.
fn inline_code(prompt: &str) -> bool {
    let prompt = signals::prefix(prompt, 4096);
    // Pieces at odd positions lie between a pair of backticks; the last piece has no closing one.
    let pieces: Vec<&str> = prompt.split('`').collect();
    let quoted = pieces
        .iter()
        .enumerate()
        .skip(1)
        .step_by(2)
        .any(|(i, span)| i + 1 < pieces.len() && !span.trim().is_empty() && !span.contains('\n'));
    if quoted {
        return true;
    }
    prompt.lines().any(|line| {
        signals::is_shell_line(line)
            || line
                .split_once(": ")
                .is_some_and(|(_, rest)| signals::is_shell_line(rest))
    })
}

/// Words inside quotation marks (`"…"`, `'…'`, `„…“`, `“…”`, `«…»`) that read as prose: a
/// sentence given to reword, translate or correct is text to work on, whatever it mentions.
fn quoted_words(text: &str) -> usize {
    let mut count = 0;
    let mut inside: Option<char> = None;
    let mut words = 0;
    let mut in_word = false;
    for c in signals::prefix(text, 4096).chars() {
        match inside {
            None => {
                inside = match c {
                    '"' => Some('"'),
                    '\'' => Some('\''),
                    '„' | '“' => Some('“'),
                    '«' => Some('»'),
                    _ => None,
                };
                words = 0;
                in_word = false;
            }
            Some(close) => {
                let closes = c == close || (close == '“' && c == '”');
                if closes {
                    if words >= 4 {
                        count += words;
                    }
                    inside = None;
                } else if c.is_alphabetic() {
                    if !in_word {
                        words += 1;
                    }
                    in_word = true;
                } else {
                    in_word = false;
                }
            }
        }
    }
    count
}

/// Lines shaped like log or stack-trace output: a timestamp or level up front, a frame
/// (`at …`, `File "…"`, `#3 0x…`), or a tool's error prefix. Pasted output is read, not the
/// prose around it; many such lines with little prose is a diagnosis to make from evidence.
fn log_lines(text: &str) -> usize {
    text.lines()
        .take(400)
        .filter(|line| {
            let t = line.trim_start();
            let indented = t.len() < line.len();
            let first = t.split_whitespace().next().unwrap_or("");
            let stamp = first.len() >= 8
                && first.as_bytes()[0].is_ascii_digit()
                && first.bytes().filter(|b| b.is_ascii_digit()).count() >= 4
                && first
                    .bytes()
                    .any(|b| matches!(b, b':' | b'-' | b'/' | b'.'));
            let level = ["ERROR", "WARN", "INFO", "DEBUG", "FATAL", "[error]"]
                .iter()
                .any(|l| t.contains(l));
            let frame = (indented && (first == "at" || first == "File"))
                || (first.starts_with('#')
                    && first[1..].bytes().all(|b| b.is_ascii_digit())
                    && first.len() > 1)
                || first.starts_with('[') && first.ends_with(']');
            stamp || level || frame
        })
        .count()
}

/// 0 for 0, 1 for 1, 2 for 2–3, 3 for 4–7 …, capped at 9.
fn log2_bucket(n: usize) -> u32 {
    (usize::BITS - n.leading_zeros()).min(9)
}

/// Numbers with units or scale ("1M rps", "200 ms", "3 TB", "50k users"): stated constraints are
/// typical of design questions.
fn quantities(text: &str) -> usize {
    let mut count = 0;
    let mut tokens = text.split_whitespace().peekable();
    while let Some(token) = tokens.next() {
        let starts_with_digit = token.chars().next().is_some_and(|c| c.is_ascii_digit());
        if !starts_with_digit {
            continue;
        }
        let suffix: String = token
            .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c == ',')
            .to_lowercase();
        let unit = if suffix.is_empty() {
            tokens.peek().map(|t| t.to_lowercase()).unwrap_or_default()
        } else {
            suffix
        };
        // Scale, not measurement: "1M rps" and "50k users" describe systems to design, while
        // "80 %" or "5 ms" are just as common in a config snippet.
        const UNITS: &[&str] = &[
            "k",
            "m",
            "mio",
            "b",
            "rps",
            "qps",
            "tb",
            "pb",
            "req/s",
            "users",
            "nutzer",
            "requests",
            "anfragen",
            "regionen",
            "regions",
            "services",
            "microservices",
            "repos",
            "devs",
            "teams",
            "nodes",
            "tenants",
            "million",
            "millionen",
            "billion",
            "milliarden",
            "kunden",
            "customers",
            "clients",
            "instances",
            "instanzen",
        ];
        let unit = unit.trim_end_matches([',', '.', ';', ')']);
        if UNITS.contains(&unit) {
            count += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(prompt: &str) -> Input<'_> {
        Input {
            prompt,
            selection: None,
            language_id: None,
        }
    }

    #[test]
    fn builtin_model_loads() {
        let model = Model::builtin().expect("the shipped router.bin must load");
        let p = model.predict(&input("hi"), &signals::read("hi", None));
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert!(
            model.temperature > 0.0 && model.temperature != 1.0,
            "the shipped model is calibrated"
        );
    }

    #[test]
    fn code_quoted_in_prose_is_inline_code() {
        for text in [
            "was macht `set -euo pipefail` eigentlich",
            "what is this doing? i dont want to run it: curl -fsSL https://x.example/s.sh | sudo bash",
            "what does\ngrep -rn TODO src/ | wc -l\nprint",
        ] {
            assert!(inline_code(text), "inline code: {text}");
        }
        for text in [
            "what is a mutex",
            "an unclosed ` backtick is not a span",
            "Cron is the name of my dwarf blacksmith: suggest a surname",
        ] {
            assert!(!inline_code(text), "no inline code: {text}");
        }
    }

    #[test]
    fn an_example_counts_by_its_weight() {
        let example = |p: &'static str, tier, weight| Example {
            input: input(p),
            tier,
            weight,
        };
        let heavy_share = |weight: f32| {
            let examples = [
                example("hello there", Tier::Fast, 1.0),
                example("write a rust function to parse dates", Tier::Coder, 1.0),
                example("design a globally replicated database", Tier::Heavy, 1.0),
                // A contradicting example: how far it pulls "hello there" depends on its weight.
                example("hello there", Tier::Heavy, weight),
            ];
            let model = train(&examples, TrainOptions::default(), 0);
            let p = model.predict(&input("hello there"), &signals::read("hello there", None));
            p[Tier::Heavy.index()]
        };
        let (full, light) = (heavy_share(1.0), heavy_share(0.1));
        assert!(full > light + 0.1, "full {full}, light {light}");
    }

    #[test]
    fn damaged_bytes_are_an_error_not_a_panic() {
        assert!(Model::from_static(b"nonsense").is_err());
    }

    #[test]
    fn round_trip_through_bytes() {
        let examples = [
            Example {
                input: input("hello there"),
                tier: Tier::Fast,
                weight: 1.0,
            },
            Example {
                input: input("write a rust function to parse dates"),
                tier: Tier::Coder,
                weight: 1.0,
            },
            Example {
                input: input("design a globally replicated database"),
                tier: Tier::Heavy,
                weight: 1.0,
            },
        ];
        let model = train(&examples, TrainOptions::default(), 7);
        let bytes: &'static [u8] = Box::leak(model.to_bytes().into_boxed_slice());
        let loaded = Model::from_static(bytes).expect("own bytes load");
        assert_eq!(loaded.data_fingerprint, 7);
        let signals = signals::read("design a database", None);
        let a = model.predict(&input("design a database"), &signals);
        let b = loaded.predict(&input("design a database"), &signals);
        assert_eq!(a, b);
        assert_eq!(argmax(b), Tier::Heavy.index());
    }

    fn argmax(p: [f32; 3]) -> usize {
        (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0)
    }

    #[test]
    fn temperature_scaling_calibrates_over_sure_scores() {
        // Scores that are right 70% of the time but claim ~99%: the fitted temperature
        // softens them, and the calibration error drops.
        let mut logits = Vec::new();
        let mut labels = Vec::new();
        for i in 0..200 {
            let predicted = i % 3;
            let right = if i % 10 < 7 {
                predicted
            } else {
                (predicted + 1) % 3
            };
            let mut z = [0f32; 3];
            z[predicted] = 5.0;
            logits.push(z);
            labels.push(right);
        }
        let t = fit_temperature(&logits, &labels);
        assert!(
            t > 2.0,
            "over-sure scores need a temperature above 1, got {t}"
        );
        let ece_at = |t: f32| {
            let outcomes: Vec<crate::eval::Outcome> = logits
                .iter()
                .zip(&labels)
                .map(|(z, &y)| {
                    let p = softmax(z.map(|v| v / t));
                    let got = (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
                    crate::eval::Outcome {
                        id: String::new(),
                        expected: Tier::ALL[y],
                        got: Tier::ALL[got],
                        confidence: p[got],
                    }
                })
                .collect();
            crate::eval::ece(&outcomes)
        };
        assert!(ece_at(1.0) > 0.25, "{}", ece_at(1.0));
        assert!(ece_at(t) < 0.05, "{}", ece_at(t));
        // Already calibrated scores keep a temperature near 1.
        assert_eq!(fit_temperature(&[], &[]), 1.0);
    }

    #[test]
    fn calibrated_training_records_its_temperature() {
        let prompts = [
            ("hello there", Tier::Fast),
            ("thanks a lot", Tier::Fast),
            ("what is json", Tier::Fast),
            ("write a rust function to parse dates", Tier::Coder),
            ("fix this python loop", Tier::Coder),
            ("regex for email addresses", Tier::Coder),
            ("design a globally replicated database", Tier::Heavy),
            ("threat model our upload service", Tier::Heavy),
            ("plan the migration of our monolith", Tier::Heavy),
        ];
        let examples: Vec<Example> = prompts
            .iter()
            .map(|(p, t)| Example {
                input: input(p),
                tier: *t,
                weight: 1.0,
            })
            .collect();
        let options = TrainOptions {
            calibration_folds: 3,
            ..TrainOptions::default()
        };
        let model = train_calibrated(&examples, options, 1);
        assert!(model.temperature.is_finite() && model.temperature > 0.0);
        assert_ne!(model.temperature, 1.0);
        let bytes: &'static [u8] = Box::leak(model.to_bytes().into_boxed_slice());
        let loaded = Model::from_static(bytes).expect("loads");
        assert_eq!(loaded.temperature, model.temperature);
    }

    #[test]
    fn a_delta_moves_similar_requests_and_round_trips() {
        let examples = [
            Example {
                input: input("write a python function that parses dates"),
                tier: Tier::Coder,
                weight: 1.0,
            },
            Example {
                input: input("write a go function that sorts users"),
                tier: Tier::Coder,
                weight: 1.0,
            },
            Example {
                input: input("hello how are you"),
                tier: Tier::Fast,
                weight: 1.0,
            },
            Example {
                input: input("design our billing architecture"),
                tier: Tier::Heavy,
                weight: 1.0,
            },
        ];
        let model = train(&examples, TrainOptions::default(), 9);
        let feats = |p: &str| features(&input(p), &signals::read(p, None));
        let similar = "write a python function that parses ISO dates";
        let before = model.probabilities(model.logits(&feats(similar).items));
        assert_eq!(argmax(before), Tier::Coder.index());
        let overrides: Vec<(Features, Tier)> = [
            "write a python function that parses ISO week dates",
            "write a python function that parses ISO ordinal dates",
        ]
        .iter()
        .map(|p| (feats(p), Tier::Heavy))
        .collect();
        let delta = train_delta(&model, &overrides, DeltaOptions::default());
        assert_eq!((delta.base_fingerprint, delta.examples), (9, 2));
        let adapted = |p: &str| {
            let f = feats(p);
            let base = model.logits(&f.items).map(|z| z / model.temperature);
            let extra = delta.logits(f.text());
            softmax([0, 1, 2].map(|c| base[c] + extra[c]))
        };
        assert_eq!(argmax(adapted(similar)), Tier::Heavy.index());
        assert_eq!(argmax(adapted("hello how are you")), Tier::Fast.index());
        let back = Delta::from_bytes(&delta.to_bytes()).expect("round trip");
        assert_eq!(back, delta);
        let mut damaged = delta.to_bytes();
        damaged.truncate(damaged.len() - 3);
        assert!(Delta::from_bytes(&damaged).is_err());
        assert!(Delta::from_bytes(b"").is_err());
    }

    #[test]
    fn quoted_prose_is_counted() {
        assert_eq!(
            quoted_words("reword this: \"fix stuff with the thing that breaks\""),
            7
        );
        assert_eq!(
            quoted_words("übersetz: „Der Kunde kann sich nicht einloggen“"),
            6
        );
        // Short quotes (a name, a flag) are not text to work on.
        assert_eq!(quoted_words("what does 'deprecated' mean"), 0);
        assert_eq!(quoted_words("no quotes here at all"), 0);
    }

    #[test]
    fn pasted_material_is_found_between_the_users_own_words() {
        let pasted = |text: &str| -> Vec<String> {
            pasted_material(text)
                .into_iter()
                .map(|r| text[r].trim().to_string())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        // A quoted thread, and the middle of three paragraphs: the ask stands first or last.
        let thread = "Slack from our CISO:\n\n> Do NOT click links about password expiry.\n\nIs she asking me to do anything?";
        assert_eq!(
            pasted(thread),
            ["> Do NOT click links about password expiry."]
        );
        // A colon introduces the text to work on.
        let letter =
            "Rechtschreibung checken bitte:\n\nHallo Frau Yilmaz,\nder Fehler ist behoben.";
        assert_eq!(
            pasted(letter),
            ["Hallo Frau Yilmaz,\nder Fehler ist behoben."]
        );
        // One paragraph, or two without a colon, is all the user's own.
        assert!(pasted("why does the cache miss only on mondays?").is_empty());
        assert!(pasted("fix this\n\nand add a test").is_empty());
        assert!(pasted("").is_empty());
    }

    #[test]
    fn pasted_words_weigh_less_than_the_users_own() {
        let weight_of = |prompt: &str, word: &str| {
            let features = features(&input(prompt), &signals::read(prompt, None));
            let bucket = Key::new(b'w').bytes(word.as_bytes()).bucket();
            features
                .items
                .iter()
                .find(|f| f.0 == bucket)
                .map(|f| f.1)
                .unwrap_or_default()
        };
        let prompt = "summarise this for me:\n\nthe phishing campaign is over, phishing ended";
        let own = weight_of(prompt, "summarise");
        let pasted = weight_of(prompt, "phishing");
        assert!(
            own > 0.0 && (pasted - own * PASTED_WEIGHT).abs() < 1e-6,
            "{own} {pasted}"
        );
    }

    #[test]
    fn log_lines_are_counted() {
        let trace = "12:01:03.112 INFO published\n    at com.acme.Main.main(Main.java:12)\n#0 0x7f3a malloc\nplain prose here";
        assert_eq!(log_lines(trace), 3);
        assert_eq!(log_lines("Wie baue ich einen Cache?"), 0);
    }

    #[test]
    fn umlauts_fold_to_ascii_spellings() {
        let mut a = String::new();
        let mut b = String::new();
        signals::fold_case("Größenänderung", &mut a);
        signals::fold_case("groessenaenderung", &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn quantities_are_counted() {
        assert_eq!(quantities("design a rate limiter for 1M rps"), 1);
        assert_eq!(
            quantities("200 ms latency and 3 TB of data across 5 regions"),
            2
        );
        assert_eq!(quantities("alert when disk > 85 % for 10 minutes"), 0);
        assert_eq!(quantities("what is python"), 0);
    }

    #[test]
    fn log_buckets() {
        assert_eq!(log2_bucket(0), 0);
        assert_eq!(log2_bucket(1), 1);
        assert_eq!(log2_bucket(3), 2);
        assert_eq!(log2_bucket(200), 8);
        assert_eq!(log2_bucket(1 << 30), 9);
    }
}
