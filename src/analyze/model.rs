//! The learned part of the analyser: a multinomial logistic regression over hashed features
//! (prompt words and word pairs, character n-grams of long words for German compounds, and the
//! bucketed signals of `signals`), scoring the three tiers.
//!
//! The weights ship inside the binary (`router.bin`, built by `triage train` from the labelled
//! data under `data/routing/`) and are read in place, so loading costs nothing. Training lives
//! here too, so that cross-validation and the shipped model use the very same code. No I/O: the
//! caller reads files and hands over bytes.

use super::signals::{self, Signals};
use crate::config::Tier;

/// Number of hash buckets is `1 << BITS`.
const BITS: u32 = 16;
const BUCKETS: usize = 1 << BITS;
const CLASSES: usize = 3;
const MAGIC: &[u8; 4] = b"TRG1";
const HEADER_LEN: usize = 4 + 4 + 8;

/// Only the first this many prompt words become word features; the rest of a long paste adds
/// little signal and would cost time.
const MAX_WORDS: usize = 256;

/// Bump whenever `features` (or a signal it reads) changes: the shipped model's fingerprint
/// then no longer matches and the freshness test asks for `triage train`.
pub const FEATURES_VERSION: u32 = 2;

/// The weights built into the binary.
static BUILTIN: &[u8] = include_bytes!("router.bin");

/// What the classifier looks at: the request's text and the signals already computed from it.
pub struct Input<'a> {
    pub prompt: &'a str,
    pub selection: Option<&'a str>,
    pub language_id: Option<&'a str>,
}

/// A trained model: one row of three class weights per hash bucket.
#[derive(Clone)]
pub struct Model {
    weights: Weights,
    /// Fingerprint of the training data the model was built from.
    pub data_fingerprint: u64,
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
        Ok(Model {
            weights: Weights::Static(&bytes[HEADER_LEN..]),
            data_fingerprint: u64::from_le_bytes(fp),
        })
    }

    /// Serialises the model in the format `builtin` reads.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + BUCKETS * CLASSES * 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&BITS.to_le_bytes());
        out.extend_from_slice(&self.data_fingerprint.to_le_bytes());
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

    /// Probabilities for fast, coder and heavy, in `Tier::ALL` order. `signals` must be
    /// `signals::read` of the same input (the analyser has them already).
    pub fn predict(&self, input: &Input, signals: &Signals) -> [f32; CLASSES] {
        softmax(self.logits(&features(input, signals)))
    }

    fn logits(&self, features: &[(u32, f32)]) -> [f32; CLASSES] {
        let mut z = [0f32; CLASSES];
        for &(bucket, value) in features {
            let row = self.row(bucket as usize);
            for c in 0..CLASSES {
                z[c] += row[c] * value;
            }
        }
        z
    }
}

/// One labelled example for training.
pub struct Example<'a> {
    pub input: Input<'a>,
    pub tier: Tier,
}

/// Settings of the optimiser. The defaults were chosen by cross-validation on the dev set.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    pub epochs: usize,
    pub learning_rate: f32,
    pub l2: f32,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 30,
            learning_rate: 0.4,
            l2: 1e-6,
        }
    }
}

/// Trains a model with AdaGrad on the log loss. Deterministic: the same examples in the same
/// order give the same bytes.
pub fn train(examples: &[Example], options: TrainOptions, data_fingerprint: u64) -> Model {
    let encoded: Vec<(Vec<(u32, f32)>, usize)> = examples
        .iter()
        .map(|e| {
            let signals = signals::read(e.input.prompt, e.input.selection);
            (features(&e.input, &signals), e.tier.index())
        })
        .collect();
    let mut weights = vec![[0f32; CLASSES]; BUCKETS];
    let mut grad_sq = vec![[1e-6f32; CLASSES]; BUCKETS];
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..options.epochs {
        shuffle(&mut order, &mut rng);
        for &i in &order {
            let (feats, label) = &encoded[i];
            let mut z = [0f32; CLASSES];
            for &(b, v) in feats {
                for c in 0..CLASSES {
                    z[c] += weights[b as usize][c] * v;
                }
            }
            let p = softmax(z);
            for &(b, v) in feats {
                let b = b as usize;
                for c in 0..CLASSES {
                    let target = if c == *label { 1.0 } else { 0.0 };
                    let g = (p[c] - target) * v + options.l2 * weights[b][c];
                    grad_sq[b][c] += g * g;
                    weights[b][c] -= options.learning_rate * g / grad_sq[b][c].sqrt();
                }
            }
        }
    }
    Model {
        weights: Weights::Owned(weights),
        data_fingerprint,
    }
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

fn softmax(z: [f32; CLASSES]) -> [f32; CLASSES] {
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

/// Lowercases and folds German umlauts and ß, so that `Größe` and `groesse` meet.
fn normalise_word(word: &str, out: &mut String) {
    out.clear();
    if word
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        out.push_str(word);
        return;
    }
    for c in word.chars() {
        match c {
            'ä' | 'Ä' => out.push_str("ae"),
            'ö' | 'Ö' => out.push_str("oe"),
            'ü' | 'Ü' => out.push_str("ue"),
            'ß' => out.push_str("ss"),
            c => out.extend(c.to_lowercase()),
        }
    }
}

/// The hashed feature vector of a request. Text features are scaled to unit length so that a
/// long prompt does not shout; signal features keep weight 1.
fn features(input: &Input, signals: &Signals) -> Vec<(u32, f32)> {
    let mut out: Vec<(u32, f32)> = Vec::with_capacity(640);
    let mut word = String::new();
    let mut previous = String::new();
    let mut gram = Vec::with_capacity(64);
    let prompt = signals::prefix(input.prompt, signals::SCAN_LIMIT);
    let mut word_count = 0usize;
    for raw in signals::words(prompt).take(MAX_WORDS) {
        normalise_word(raw, &mut word);
        word_count += 1;
        out.push((Key::new(b'w').bytes(word.as_bytes()).bucket(), 0.0));
        if !previous.is_empty() {
            let pair = Key::new(b'b')
                .bytes(previous.as_bytes())
                .bytes(b" ")
                .bytes(word.as_bytes());
            out.push((pair.bucket(), 0.0));
        }
        // Character 5-grams of long words: compounds such as `Speicherleck` share pieces with
        // `Leck` and `Speicher`, and inflected forms share their stem.
        if word.len() >= 7 && word.is_ascii() {
            gram.clear();
            gram.push(b'<');
            gram.extend_from_slice(word.as_bytes());
            gram.push(b'>');
            for piece in gram.windows(5) {
                out.push((Key::new(b'c').bytes(piece).bucket(), 0.0));
            }
        }
        std::mem::swap(&mut previous, &mut word);
    }
    if !out.is_empty() {
        let scale = 2.0 / (out.len() as f32).sqrt();
        for f in &mut out {
            f.1 = scale;
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
    out
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
            },
            Example {
                input: input("write a rust function to parse dates"),
                tier: Tier::Coder,
            },
            Example {
                input: input("design a globally replicated database"),
                tier: Tier::Heavy,
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
    fn umlauts_fold_to_ascii_spellings() {
        let mut a = String::new();
        let mut b = String::new();
        normalise_word("Größenänderung", &mut a);
        normalise_word("groessenaenderung", &mut b);
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
