//! Ranking: a code-aware term splitter, a compact in-memory BM25 index over chunks, and
//! reciprocal rank fusion of several rankings.
//!
//! Owns scoring only; it never reads files (the workspace feeds it terms) and keeps no text.
//!
//! Hand-written rather than the `bm25` crate or tantivy, for three reasons. Memory: a posting is
//! one `u32` (chunk id and term frequency packed), terms are 64-bit hashes, a chunk is 16 bytes —
//! the `bm25` crate keeps a `HashSet` of document ids per token plus a sparse vector per document
//! (several times more), and tantivy's writer alone wants a 15 MB arena. Code: identifiers are
//! split at `snake_case` and `camelCase` boundaries and kept whole, which the crate's natural-
//! language tokenizer (stemming, language detection) does not do. Freshness: chunks are replaced
//! one file at a time with live document counts and lengths, where the crate fixes `avgdl` up
//! front. The scoring itself is the textbook formula (Robertson's BM25, k1 = 1.2, b = 0.75).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// BM25 term-frequency saturation.
const K1: f32 = 1.2;
/// BM25 length normalisation.
const B: f32 = 0.75;
/// Reciprocal rank fusion's damping constant (Cormack et al. 2009).
pub const RRF_K: f32 = 60.0;

/// Chunk ids use 24 bits of a posting, term frequencies the other 8 (saturating at 255).
pub const MAX_CHUNKS: usize = 1 << 24;
const DEAD: u32 = u32::MAX;

/// Terms are already hashes: the map needs no second hash.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | *b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type TermMap<V> = HashMap<u64, V, BuildHasherDefault<IdentityHasher>>;

/// Words that carry no meaning for retrieval, in the languages prompts come in.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how",
    "i", "if", "in", "is", "it", "me", "my", "of", "on", "or", "the", "this", "that", "to", "we",
    "what", "when", "where", "which", "who", "why", "with", "you", "our", "there", "here", "der",
    "die", "das", "und", "ist", "wie", "was", "wo", "wer", "ein", "eine", "einen", "im", "in",
    "zu", "mit", "von", "für", "auf", "bei", "uns", "den", "dem", "des", "nicht", "es", "ich",
];

fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The hash of one (already lower-cased) term.
fn term_hash(term: &str) -> u64 {
    fnv1a(term.bytes())
}

/// Calls `emit` with the hash of every term of `text`: each word (letters, digits, `_`) lower-
/// cased, and, for identifiers made of several parts (`parse_invoice`, `parseInvoice`,
/// `HTTPServer`), each part as well. Single characters and stopwords are skipped.
pub fn terms(text: &str, mut emit: impl FnMut(u64)) {
    let mut start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() || c == '_' {
            start.get_or_insert(i);
        } else if let Some(s) = start.take() {
            emit_word(&text[s..i], &mut emit);
        }
    }
    if let Some(s) = start {
        emit_word(&text[s..], &mut emit);
    }
}

/// The hash of an ASCII word, lower-cased on the fly.
fn ascii_hash(word: &[u8]) -> u64 {
    fnv1a(word.iter().map(|b| b.to_ascii_lowercase()))
}

fn ascii_stopword(word: &[u8]) -> bool {
    word.len() <= 7
        && STOPWORDS
            .iter()
            .any(|s| s.as_bytes().eq_ignore_ascii_case(word))
}

/// The common case, ASCII identifiers, without allocating.
fn emit_ascii_word(word: &[u8], emit: &mut impl FnMut(u64)) {
    let start = word.iter().position(|b| *b != b'_').unwrap_or(word.len());
    let end = word
        .iter()
        .rposition(|b| *b != b'_')
        .map_or(start, |i| i + 1);
    let trimmed = &word[start..end];
    if trimmed.len() < 2 || ascii_stopword(trimmed) {
        return;
    }
    let whole = ascii_hash(trimmed);
    emit(whole);
    // The parts of a compound identifier: split at `_`, lower→upper, the last capital of a
    // run of capitals before a lower-case letter, and letter↔digit changes.
    let mut parts = 0usize;
    let mut part_start = 0usize;
    let mut flush = |from: usize, to: usize, parts: &mut usize| {
        let part = &trimmed[from..to];
        if !part.is_empty() {
            *parts += 1;
            if part.len() >= 2 && !ascii_stopword(part) {
                let h = ascii_hash(part);
                if h != whole {
                    emit(h);
                }
            }
        }
    };
    for i in 0..trimmed.len() {
        let c = trimmed[i];
        if c == b'_' {
            flush(part_start, i, &mut parts);
            part_start = i + 1;
            continue;
        }
        if i == 0 || i == part_start {
            continue;
        }
        let prev = trimmed[i - 1];
        let next_lower = trimmed.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
        let boundary = (prev.is_ascii_lowercase() && c.is_ascii_uppercase())
            || (prev.is_ascii_uppercase() && c.is_ascii_uppercase() && next_lower)
            || (prev.is_ascii_alphabetic() && c.is_ascii_digit())
            || (prev.is_ascii_digit() && c.is_ascii_alphabetic());
        if boundary {
            flush(part_start, i, &mut parts);
            part_start = i;
        }
    }
    // A single part is the word itself: nothing more to emit.
    if parts > 0 {
        flush(part_start, trimmed.len(), &mut parts);
    }
}

fn emit_word(word: &str, emit: &mut impl FnMut(u64)) {
    if word.len() > 64 && word.chars().count() > 64 {
        // Hashes, base64 blobs, minified code: no retrieval value.
        return;
    }
    if word.is_ascii() {
        emit_ascii_word(word.as_bytes(), emit);
        return;
    }
    let lower = word.to_lowercase();
    let trimmed = lower.trim_matches('_');
    if trimmed.chars().count() < 2 || STOPWORDS.contains(&trimmed) {
        return;
    }
    emit(term_hash(trimmed));
    // The parts of a compound identifier.
    let mut parts: Vec<String> = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = word.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' {
            if !current.is_empty() {
                parts.push(std::mem::take(&mut current));
            }
            continue;
        }
        let boundary = i > 0 && {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            (prev.is_lowercase() && c.is_uppercase())
                || (prev.is_uppercase() && c.is_uppercase() && next_lower)
                || (prev.is_alphabetic() && c.is_numeric())
                || (prev.is_numeric() && c.is_alphabetic())
        };
        if boundary && !current.is_empty() {
            parts.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    if !current.is_empty() {
        parts.push(current);
    }
    if parts.len() > 1 {
        for part in parts {
            let part = part.to_lowercase();
            if part.chars().count() >= 2 && !STOPWORDS.contains(&part.as_str()) && part != trimmed {
                emit(term_hash(&part));
            }
        }
    }
}

/// The distinct terms of a text with their frequencies, as the index stores them.
pub fn term_counts(text: &str) -> (Vec<(u64, u16)>, u32) {
    let mut counts: TermMap<u16> = TermMap::default();
    let mut total = 0u32;
    terms(text, |t| {
        total += 1;
        let c = counts.entry(t).or_insert(0);
        *c = c.saturating_add(1);
    });
    let mut v: Vec<(u64, u16)> = counts.into_iter().collect();
    v.sort_unstable_by_key(|(t, _)| *t);
    (v, total)
}

/// The distinct terms of a query.
pub fn query_terms(text: &str) -> Vec<u64> {
    let mut v = Vec::new();
    terms(text, |t| v.push(t));
    v.sort_unstable();
    v.dedup();
    v
}

/// One indexed chunk: which document, which lines, how many terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// The owner's document id; `u32::MAX` once removed.
    pub doc: u32,
    /// 0-based, inclusive.
    pub start_line: u32,
    pub end_line: u32,
    /// Terms in the chunk (its BM25 length).
    pub len: u32,
}

/// A BM25 index over chunks.
///
/// Postings live in two parts: a frozen base in compressed-sparse-row form (sorted term hashes,
/// one offset per term, one `u32` per posting: 12 bytes a term, no per-term allocation) and a
/// small map of postings added since ([`Index::freeze`] merges it in). Removal tombstones
/// chunks; freezing after many removals drops them and renumbers the rest.
#[derive(Default)]
pub struct Index {
    chunks: Vec<Chunk>,
    base_terms: Vec<u64>,
    /// `base_terms.len() + 1` offsets into `base_postings`.
    base_offsets: Vec<u32>,
    base_postings: Vec<u32>,
    delta: TermMap<Vec<u32>>,
    delta_postings: usize,
    live: usize,
    total_len: u64,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("chunks", &self.live)
            .field("terms", &self.terms())
            .finish()
    }
}

/// A scored chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub chunk: u32,
    pub score: f32,
}

impl Index {
    /// Live chunks.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Distinct terms (terms only in the delta counted too).
    pub fn terms(&self) -> usize {
        self.base_terms.len()
            + self
                .delta
                .keys()
                .filter(|t| self.base_terms.binary_search(t).is_err())
                .count()
    }

    /// Postings held (tombstoned ones included until the next freeze).
    pub fn postings(&self) -> usize {
        self.base_postings.len() + self.delta_postings
    }

    pub fn chunk(&self, id: u32) -> Option<Chunk> {
        self.chunks
            .get(id as usize)
            .copied()
            .filter(|c| c.doc != DEAD)
    }

    /// Adds a chunk; `None` when the index is full.
    pub fn add(&mut self, chunk: Chunk, counts: &[(u64, u16)]) -> Option<u32> {
        if self.chunks.len() >= MAX_CHUNKS {
            return None;
        }
        let id = self.chunks.len() as u32;
        self.chunks.push(chunk);
        self.live += 1;
        self.total_len += chunk.len as u64;
        for &(term, tf) in counts {
            let packed = (id << 8) | tf.min(255) as u32;
            self.delta.entry(term).or_default().push(packed);
        }
        self.delta_postings += counts.len();
        Some(id)
    }

    /// Merges the delta into the base once it has grown to an eighth of it (or 64 K postings),
    /// so that the per-term maps never hold more than a fraction of the index.
    pub fn maybe_freeze(&mut self) {
        if self.delta_postings > (self.base_postings.len() / 8).max(65_536) {
            self.freeze();
        }
    }

    /// Removes every chunk of `doc`.
    pub fn remove_doc(&mut self, doc: u32) {
        for c in self.chunks.iter_mut().filter(|c| c.doc == doc) {
            c.doc = DEAD;
            self.live -= 1;
            self.total_len -= c.len as u64;
        }
        let dead = self.chunks.len() - self.live;
        if dead > 1024 && dead > self.live / 4 {
            self.freeze();
        }
    }

    /// Drops tombstoned chunks and merges the delta into the base (same as [`Index::freeze`]).
    pub fn compact(&mut self) {
        self.freeze();
    }

    /// Rebuilds the base from the base and the delta, without tombstoned chunks, renumbering
    /// the live ones (ids keep their order).
    pub fn freeze(&mut self) {
        let mut remap = vec![DEAD; self.chunks.len()];
        let mut kept = Vec::with_capacity(self.live);
        for (old, c) in self.chunks.iter().enumerate() {
            if c.doc != DEAD {
                remap[old] = kept.len() as u32;
                kept.push(*c);
            }
        }
        let mut delta: Vec<(u64, Vec<u32>)> = std::mem::take(&mut self.delta).into_iter().collect();
        delta.sort_unstable_by_key(|(t, _)| *t);
        let mut terms = Vec::with_capacity(self.base_terms.len() + delta.len());
        let mut offsets = Vec::with_capacity(self.base_terms.len() + delta.len() + 1);
        let mut postings = Vec::with_capacity(self.base_postings.len() + self.delta_postings);
        offsets.push(0u32);
        let relabel = |p: u32| -> Option<u32> {
            let new = remap[(p >> 8) as usize];
            (new != DEAD).then_some((new << 8) | (p & 0xff))
        };
        let (mut i, mut j) = (0usize, 0usize);
        while i < self.base_terms.len() || j < delta.len() {
            let base_term = self.base_terms.get(i).copied();
            let delta_term = delta.get(j).map(|(t, _)| *t);
            let term = match (base_term, delta_term) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            let before = postings.len();
            if base_term == Some(term) {
                let range = self.base_offsets[i] as usize..self.base_offsets[i + 1] as usize;
                postings.extend(self.base_postings[range].iter().filter_map(|p| relabel(*p)));
                i += 1;
            }
            if delta_term == Some(term) {
                postings.extend(delta[j].1.iter().filter_map(|p| relabel(*p)));
                j += 1;
            }
            if postings.len() > before {
                terms.push(term);
                offsets.push(postings.len() as u32);
            }
        }
        terms.shrink_to_fit();
        offsets.shrink_to_fit();
        postings.shrink_to_fit();
        self.chunks = kept;
        self.base_terms = terms;
        self.base_offsets = offsets;
        self.base_postings = postings;
        self.delta_postings = 0;
    }

    /// The postings of a term: its base part and its delta part.
    fn postings_of(&self, term: u64) -> (&[u32], &[u32]) {
        let base = match self.base_terms.binary_search(&term) {
            Ok(i) => {
                &self.base_postings
                    [self.base_offsets[i] as usize..self.base_offsets[i + 1] as usize]
            }
            Err(_) => &[],
        };
        let delta = self.delta.get(&term).map_or(&[][..], Vec::as_slice);
        (base, delta)
    }

    /// The `k` best chunks for `query` (distinct term hashes), best first.
    pub fn search(&self, query: &[u64], k: usize) -> Vec<Scored> {
        if self.live == 0 || k == 0 {
            return Vec::new();
        }
        let n = self.live as f32;
        let avg = (self.total_len as f32 / n).max(1.0);
        // Dense accumulator: chunk ids are small integers, and a query touches many of them.
        let mut scores = vec![0f32; self.chunks.len()];
        let mut touched: Vec<u32> = Vec::new();
        for term in query {
            let (base, delta) = self.postings_of(*term);
            if base.is_empty() && delta.is_empty() {
                continue;
            }
            // Document frequency counts tombstones until the next freeze: close enough, and
            // it keeps removal O(chunks).
            let df = (base.len() + delta.len()) as f32;
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln().max(0.0);
            for p in base.iter().chain(delta) {
                let id = p >> 8;
                let chunk = self.chunks[id as usize];
                if chunk.doc == DEAD {
                    continue;
                }
                let tf = (p & 0xff) as f32;
                let norm = K1 * (1.0 - B + B * chunk.len as f32 / avg);
                let slot = &mut scores[id as usize];
                if *slot == 0.0 {
                    touched.push(id);
                }
                *slot += idf * tf * (K1 + 1.0) / (tf + norm) + f32::MIN_POSITIVE;
            }
        }
        let mut ranked: Vec<Scored> = touched
            .into_iter()
            .map(|chunk| Scored {
                chunk,
                score: scores[chunk as usize],
            })
            .collect();
        let by_score =
            |a: &Scored, b: &Scored| b.score.total_cmp(&a.score).then(a.chunk.cmp(&b.chunk));
        if ranked.len() > k {
            ranked.select_nth_unstable_by(k - 1, by_score);
            ranked.truncate(k);
        }
        ranked.sort_unstable_by(by_score);
        ranked
    }

    /// Bytes held on the heap (capacity, not length), for the memory report.
    pub fn heap_bytes(&self) -> usize {
        let chunks = self.chunks.capacity() * std::mem::size_of::<Chunk>();
        let base = self.base_terms.capacity() * 8
            + self.base_offsets.capacity() * 4
            + self.base_postings.capacity() * 4;
        let lists: usize = self.delta.values().map(|l| l.capacity() * 4).sum();
        // hashbrown: key + value + one control byte per bucket, buckets ≈ capacity × 8/7.
        let table = self.delta.capacity() * (8 + std::mem::size_of::<Vec<u32>>() + 1) * 8 / 7;
        chunks + base + lists + table
    }
}

/// Fuses rankings (each a list of keys, best first) by reciprocal rank fusion: a key scores
/// Σ 1/(k + rank) over the rankings it appears in. Returns keys best first; ties keep the order
/// of first appearance.
pub fn fuse<T: Copy + Eq + std::hash::Hash>(rankings: &[Vec<T>]) -> Vec<T> {
    let mut score: HashMap<T, (f32, usize)> = HashMap::new();
    let mut order = 0usize;
    for ranking in rankings {
        for (rank, key) in ranking.iter().enumerate() {
            let entry = score.entry(*key).or_insert_with(|| {
                order += 1;
                (0.0, order)
            });
            entry.0 += 1.0 / (RRF_K + rank as f32 + 1.0);
        }
    }
    let mut keys: Vec<(T, f32, usize)> = score.into_iter().map(|(k, (s, o))| (k, s, o)).collect();
    keys.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
    keys.into_iter().map(|(k, _, _)| k).collect()
}

/// Cosine similarity of two vectors (0 for mismatched or empty ones).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(words: &[&str]) -> Vec<u64> {
        let mut v: Vec<u64> = words.iter().map(|w| term_hash(w)).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn identifiers_are_split_and_kept_whole() {
        let mut got = query_terms("parseInvoice HTTPServer max_retry_count v2 a the");
        got.sort_unstable();
        let want = hashes(&[
            "parseinvoice",
            "parse",
            "invoice",
            "httpserver",
            "http",
            "server",
            "max_retry_count",
            "max",
            "retry",
            "count",
            "v2",
        ]);
        assert_eq!(got, want);
        assert!(query_terms("Nebenläufigkeit").contains(&term_hash("nebenläufigkeit")));
    }

    fn index(texts: &[&str]) -> Index {
        let mut index = Index::default();
        for (i, text) in texts.iter().enumerate() {
            let (counts, len) = term_counts(text);
            index.add(
                Chunk {
                    doc: i as u32,
                    start_line: 0,
                    end_line: 0,
                    len,
                },
                &counts,
            );
        }
        index
    }

    #[test]
    fn bm25_prefers_rare_matching_terms() {
        let idx = index(&[
            "fn render_page(ctx) { layout(ctx) }",
            "fn compute_vat(amount) { amount * VAT_RATE }",
            "const VAT_RATE: f64 = 0.19; // the German VAT rate",
            "fn main() { render_page(ctx) }",
        ]);
        let hits = idx.search(&query_terms("what is the VAT rate?"), 2);
        assert_eq!(hits.len(), 2);
        assert_eq!(idx.chunk(hits[0].chunk).map(|c| c.doc), Some(2));
        assert_eq!(idx.chunk(hits[1].chunk).map(|c| c.doc), Some(1));
        assert!(idx
            .search(&query_terms("nothing matches zebra"), 5)
            .is_empty());
    }

    #[test]
    fn removal_and_compaction_keep_results_right() {
        let mut idx = index(&["alpha beta", "beta gamma", "gamma delta"]);
        idx.remove_doc(1);
        assert_eq!(idx.len(), 2);
        let hits = idx.search(&query_terms("beta gamma"), 5);
        let docs: Vec<u32> = hits
            .iter()
            .filter_map(|h| idx.chunk(h.chunk))
            .map(|c| c.doc)
            .collect();
        assert!(!docs.contains(&1), "{docs:?}");
        idx.compact();
        let hits = idx.search(&query_terms("delta"), 5);
        assert_eq!(hits.len(), 1);
        assert_eq!(idx.chunk(hits[0].chunk).map(|c| c.doc), Some(2));
        assert!(idx.search(&query_terms("alpha"), 5).len() == 1);
    }

    #[test]
    fn frozen_and_fresh_postings_rank_alike() {
        let texts = [
            "alpha beta gamma",
            "beta beta delta",
            "gamma epsilon",
            "alpha alpha alpha zeta",
        ];
        let fresh = index(&texts);
        let mut frozen = index(&texts);
        frozen.freeze();
        let q = query_terms("alpha beta gamma");
        assert_eq!(fresh.search(&q, 4), frozen.search(&q, 4));
        assert_eq!(frozen.terms(), fresh.terms());
        // Additions after a freeze land in the delta and are found with the base.
        let (counts, len) = term_counts("omega alpha");
        let id = frozen
            .add(
                Chunk {
                    doc: 9,
                    start_line: 0,
                    end_line: 0,
                    len,
                },
                &counts,
            )
            .expect("room");
        let hits = frozen.search(&query_terms("omega"), 3);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].chunk, id);
        assert_eq!(frozen.search(&query_terms("alpha"), 10).len(), 3);
        // Removal, then a freeze that renumbers.
        frozen.remove_doc(0);
        frozen.freeze();
        let hits = frozen.search(&query_terms("alpha"), 10);
        let docs: Vec<u32> = hits
            .iter()
            .filter_map(|h| frozen.chunk(h.chunk))
            .map(|c| c.doc)
            .collect();
        assert_eq!(docs.len(), 2);
        assert!(docs.contains(&3) && docs.contains(&9), "{docs:?}");
        assert_eq!(frozen.postings(), 2 + 2 + 2 + 2);
    }

    #[test]
    fn rrf_rewards_agreement() {
        let fused = fuse(&[vec![1, 2, 3], vec![3, 1, 4]]);
        assert_eq!(fused[0], 1, "{fused:?}");
        assert_eq!(fused[1], 3, "{fused:?}");
        assert_eq!(fused.len(), 4);
        assert_eq!(fuse::<u8>(&[]), Vec::<u8>::new());
    }

    #[test]
    fn cosine_of_vectors() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 1.0]), 0.0);
        assert_eq!(cosine(&[1.0], &[1.0, 2.0]), 0.0);
    }
}
