//! Gathering candidate context for one request: the code around the selection, ranked excerpts
//! of the workspace index and of open documents the index does not cover, fused into one
//! ranking, with secrets and duplicates of the selection left out.
//!
//! Reads files (through the workspace) and tokenizes open documents, so callers run it on a
//! blocking thread; what fits the window is decided later by [`super::assemble`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use ropey::Rope;

use super::rank::{self, Chunk, Index};
use super::secrets;
use super::surround;
use super::workspace::{self, Workspace};
use super::SourceKind;

/// An open document.
#[derive(Debug, Clone)]
pub struct Document {
    /// How prompts and answers name it: the path relative to its workspace folder, else the
    /// file path or URI.
    pub name: String,
    /// The file, when the document is one.
    pub path: Option<PathBuf>,
    pub text: Rope,
    pub language_id: String,
    /// The editor's version of the text, when there is one: chunking is cached per version.
    pub version: Option<i32>,
}

/// The document a request came from, and the selection's lines in it (0-based, inclusive).
#[derive(Debug, Clone)]
pub struct Focus {
    pub document: Document,
    pub lines: Option<(u32, u32)>,
}

/// A piece of context that may go into the prompt. Lines are 0-based and inclusive.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub path: String,
    pub start_line: u32,
    pub end_line: u32,
    pub kind: SourceKind,
    pub text: String,
    pub language: Option<String>,
}

/// What gathering found, for [`super::assemble`].
#[derive(Debug, Clone, Default)]
pub struct Material {
    /// Where the selection is (for the answer's `sources`).
    pub selection: Option<Piece>,
    pub surrounding: Option<Piece>,
    /// Ranked candidates, best first.
    pub pieces: Vec<Piece>,
    pub ranking: Option<&'static str>,
    pub workspace: Option<workspace::Status>,
    pub notes: Vec<String>,
}

/// The inputs of [`gather`].
#[derive(Debug, Clone, Default)]
pub struct Gathering {
    /// What to rank against: the prompt and the selection.
    pub query: String,
    pub focus: Option<Focus>,
    /// Other open documents.
    pub open: Vec<Document>,
    pub workspace: Option<Arc<Workspace>>,
}

/// Lines of the enclosing block shown with a selection, at most.
const SURROUNDING_LINES: usize = 120;
/// Candidates kept per ranking.
const CANDIDATES: usize = 24;
/// Open documents outside the index larger than this are not ranked (inside a workspace
/// folder the index covers them whatever their size).
const MAX_OPEN_DOCUMENT_BYTES: usize = 256 * 1024;
/// Text of open documents whose chunks are kept between requests, at most.
const MAX_CACHED_BYTES: usize = 1024 * 1024;

/// An open document cut into chunks with their term counts, and its distinct terms (sorted),
/// so a request whose words it lacks skips it at once.
struct Chunked {
    chunks: Vec<(Chunk, Vec<(u64, u16)>)>,
    terms: Vec<u64>,
    bytes: usize,
}

fn chunk_document(doc: &Document) -> Chunked {
    let text = doc.text.to_string();
    let mut chunks = Vec::new();
    let mut terms = Vec::new();
    for (start, end, range) in workspace::chunk_lines(&text) {
        let body = &text[range];
        if secrets::chunk_secret(body).is_some() {
            continue;
        }
        let (counts, len) = rank::term_counts(body);
        terms.extend(counts.iter().map(|(t, _)| *t));
        chunks.push((
            Chunk {
                doc: 0,
                start_line: start as u32,
                end_line: end as u32,
                len,
            },
            counts,
        ));
    }
    terms.sort_unstable();
    terms.dedup();
    Chunked {
        chunks,
        terms,
        bytes: text.len(),
    }
}

/// Chunked open documents by name, per version: one per process, like the editor's buffers.
/// Documents no longer open are dropped at the next request.
type DocumentCache = Mutex<HashMap<String, (i32, Arc<Chunked>)>>;

fn document_cache() -> &'static DocumentCache {
    static CACHE: OnceLock<DocumentCache> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

fn chunked(doc: &Document) -> Arc<Chunked> {
    let Some(version) = doc.version else {
        return Arc::new(chunk_document(doc));
    };
    let cache = document_cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some((v, c)) = cache.get(&doc.name) {
        if *v == version {
            return c.clone();
        }
    }
    drop(cache);
    let fresh = Arc::new(chunk_document(doc));
    let mut cache = document_cache().lock().unwrap_or_else(|p| p.into_inner());
    cache.remove(&doc.name);
    let held: usize = cache.values().map(|(_, c)| c.bytes).sum();
    if held + fresh.bytes <= MAX_CACHED_BYTES {
        cache.insert(doc.name.clone(), (version, fresh.clone()));
    }
    fresh
}

/// Collects and ranks the candidate pieces.
pub fn gather(g: &Gathering) -> Material {
    let mut material = Material::default();
    let secret_document = |d: &Document| {
        let path = d.path.clone().unwrap_or_else(|| PathBuf::from(&d.name));
        match &g.workspace {
            Some(ws) => ws.is_secret_path(&path),
            None => {
                default_filter().is_some_and(|f| f.refuse(&path) == Some(secrets::Refusal::Secret))
            }
        }
    };

    // The focus region: the selection and the block around it, which retrieved pieces must
    // not repeat.
    let mut focus_region: Option<(String, u32, u32)> = None;
    if let Some(focus) = &g.focus {
        if let Some((first, last)) = focus.lines {
            let doc = &focus.document;
            material.selection = Some(Piece {
                path: doc.name.clone(),
                start_line: first,
                end_line: last,
                kind: SourceKind::Selection,
                text: String::new(),
                language: Some(doc.language_id.clone()),
            });
            focus_region = Some((doc.name.clone(), first, last));
            if !secret_document(doc) {
                let (start, end) = surround::enclosing(
                    &doc.text,
                    first as usize,
                    last as usize,
                    SURROUNDING_LINES,
                );
                let before = line_range(&doc.text, start, first as usize);
                let after = line_range(&doc.text, last as usize + 1, end + 1);
                if !before.trim().is_empty() || !after.trim().is_empty() {
                    let text = format!(
                        "{}[… the selection, shown below …]\n{}",
                        before,
                        after.trim_end_matches(['\n', '\r'])
                    );
                    focus_region = Some((doc.name.clone(), start as u32, end as u32));
                    if secrets::chunk_secret(&text).is_none() {
                        material.surrounding = Some(Piece {
                            path: doc.name.clone(),
                            start_line: start as u32,
                            end_line: end as u32,
                            kind: SourceKind::Surrounding,
                            text,
                            language: Some(doc.language_id.clone()),
                        });
                    }
                }
            }
        }
    }
    let repeats_focus = |p: &Piece| {
        focus_region
            .as_ref()
            .is_some_and(|(path, s, e)| *path == p.path && p.start_line <= *e && p.end_line >= *s)
    };

    let mut rankings: Vec<Vec<usize>> = Vec::new();
    let mut pieces: Vec<Piece> = Vec::new();

    // The workspace index.
    if let Some(ws) = &g.workspace {
        if ws.building() {
            let status = ws.status();
            material.notes.push(format!(
                "the workspace index is still being built ({} files so far): workspace context may be incomplete",
                status.files
            ));
        }
        let mut ranking = Vec::new();
        for e in ws.retrieve(&g.query, CANDIDATES) {
            let piece = Piece {
                path: e.display,
                start_line: e.start_line,
                end_line: e.end_line,
                kind: if e.open {
                    SourceKind::Document
                } else {
                    SourceKind::Workspace
                },
                text: e.text,
                language: None,
            };
            if repeats_focus(&piece) {
                continue;
            }
            ranking.push(pieces.len());
            pieces.push(piece);
        }
        rankings.push(ranking);
        material.workspace = Some(ws.status());
    }

    // Open documents the index does not cover, ranked among themselves.
    let uncovered: Vec<&Document> = g
        .focus
        .iter()
        .map(|f| &f.document)
        .chain(g.open.iter())
        .filter(|d| {
            let covered = match (&g.workspace, &d.path) {
                (Some(ws), Some(p)) => ws.admits(p),
                _ => false,
            };
            !covered && !secret_document(d) && d.text.len_bytes() <= MAX_OPEN_DOCUMENT_BYTES
        })
        .collect();
    // Forget documents that were closed.
    {
        let open: std::collections::HashSet<&str> = g
            .focus
            .iter()
            .map(|f| f.document.name.as_str())
            .chain(g.open.iter().map(|d| d.name.as_str()))
            .collect();
        let mut cache = document_cache().lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|name, _| open.contains(name.as_str()));
    }
    if !uncovered.is_empty() {
        let query = rank::query_terms(&g.query);
        let mut index = Index::default();
        let mut owners: Vec<(usize, Chunk)> = Vec::new();
        for (doc_id, doc) in uncovered.iter().enumerate() {
            let chunked = chunked(doc);
            if !query.iter().any(|t| chunked.terms.binary_search(t).is_ok()) {
                continue;
            }
            for (chunk, counts) in &chunked.chunks {
                let chunk = Chunk {
                    doc: doc_id as u32,
                    ..*chunk
                };
                if index.add(chunk, counts).is_some() {
                    owners.push((doc_id, chunk));
                }
            }
        }
        let mut ranking = Vec::new();
        for hit in index.search(&query, CANDIDATES) {
            let Some((doc_id, chunk)) = owners.get(hit.chunk as usize) else {
                continue;
            };
            let doc = uncovered[*doc_id];
            let text = line_range(
                &doc.text,
                chunk.start_line as usize,
                chunk.end_line as usize + 1,
            )
            .trim_end()
            .to_string();
            let piece = Piece {
                path: doc.name.clone(),
                start_line: chunk.start_line,
                end_line: chunk.end_line,
                kind: SourceKind::Document,
                text,
                language: Some(doc.language_id.clone()),
            };
            if repeats_focus(&piece) || piece.text.trim().is_empty() {
                continue;
            }
            ranking.push(pieces.len());
            pieces.push(piece);
        }
        rankings.push(ranking);
    }

    if !pieces.is_empty() {
        material.ranking = Some("bm25");
    }
    let order = rank::fuse(&rankings);
    let mut slots: Vec<Option<Piece>> = pieces.into_iter().map(Some).collect();
    material.pieces = order
        .into_iter()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect();
    material
}

/// Reorders `material.pieces` by fusing their current order with a second ranking (indices
/// into `pieces`, best first), as hybrid retrieval does with embeddings.
pub fn fuse_with(material: &mut Material, dense: &[usize]) {
    let current: Vec<usize> = (0..material.pieces.len()).collect();
    let order = rank::fuse(&[current, dense.to_vec()]);
    let mut slots: Vec<Option<Piece>> = std::mem::take(&mut material.pieces)
        .into_iter()
        .map(Some)
        .collect();
    material.pieces = order
        .into_iter()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect();
    material.ranking = Some("hybrid");
}

fn default_filter() -> Option<&'static secrets::PathFilter> {
    static FILTER: std::sync::OnceLock<Option<secrets::PathFilter>> = std::sync::OnceLock::new();
    FILTER
        .get_or_init(|| secrets::PathFilter::new(&[]).ok())
        .as_ref()
}

/// Lines `from..to` (0-based, `to` exclusive) of a rope, with their line breaks.
fn line_range(rope: &Rope, from: usize, to: usize) -> String {
    let n = rope.len_lines();
    let to = to.min(n);
    if from >= to {
        return String::new();
    }
    let a = rope.line_to_char(from);
    let b = if to < n {
        rope.line_to_char(to)
    } else {
        rope.len_chars()
    };
    rope.slice(a..b).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str, text: &str) -> Document {
        Document {
            name: name.to_string(),
            path: None,
            text: Rope::from_str(text),
            language_id: "rust".to_string(),
            version: Some(1),
        }
    }

    #[test]
    fn surrounding_and_open_documents() {
        let focus_text = "fn checkout(cart: &Cart) -> Money {\n    let total = cart.sum();\n    apply_discount(total)\n}\n";
        let other = "fn apply_discount(total: Money) -> Money {\n    total * DISCOUNT_FACTOR\n}\nconst DISCOUNT_FACTOR: f64 = 0.85;\n";
        let g = Gathering {
            query: "why is the discount applied twice? apply_discount(total)".into(),
            focus: Some(Focus {
                document: doc("src/cart.rs", focus_text),
                lines: Some((2, 2)),
            }),
            open: vec![
                doc("src/discount.rs", other),
                doc(".env", "apply_discount=SECRETVALUE1"),
            ],
            workspace: None,
        };
        let m = gather(&g);
        let s = m.surrounding.expect("surrounding");
        assert_eq!((s.start_line, s.end_line), (0, 3));
        assert!(s.text.contains("let total") && s.text.contains("the selection, shown below"));
        assert!(!s.text.contains("apply_discount(total)\n}"), "{}", s.text);
        assert_eq!(m.pieces[0].path, "src/discount.rs");
        assert_eq!(m.pieces[0].kind, SourceKind::Document);
        assert!(m
            .pieces
            .iter()
            .all(|p| p.path != ".env" && p.path != "src/cart.rs"));
        assert_eq!(m.ranking, Some("bm25"));
    }

    #[test]
    fn hybrid_fusion_reorders() {
        let mut m = Material {
            pieces: (0..3)
                .map(|i| Piece {
                    path: format!("f{i}"),
                    start_line: 0,
                    end_line: 0,
                    kind: SourceKind::Workspace,
                    text: String::new(),
                    language: None,
                })
                .collect(),
            ..Material::default()
        };
        fuse_with(&mut m, &[2, 1, 0]);
        assert_eq!(m.ranking, Some("hybrid"));
        assert_eq!(m.pieces.len(), 3);
        // Agreement on f1's middle rank ties with the extremes; f0 and f2 split first place.
        assert_ne!(m.pieces[0].path, "f1");
        fuse_with(&mut m, &[]);
        assert_eq!(m.pieces.len(), 3);
    }
}
