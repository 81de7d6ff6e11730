//! The workspace index: the files under the workspace folders, walked with `.gitignore`,
//! `.ignore` and hidden files respected (the `ignore` crate), cut into overlapping chunks of
//! lines and ranked with BM25 ([`super::rank`]).
//!
//! Owns the walk, chunking, freshness and reading excerpts back. Memory stays small because the
//! index keeps no text: a chunk is its file id and line range, and an excerpt is read again from
//! disk — or from the open document's rope, which supersedes the file while it is open — when a
//! prompt wants it. Changes (edits, saves, created, deleted and renamed files, added or removed
//! folders) are queued and applied by a background thread; a search applies whatever is still
//! queued first, so an answer always sees the latest edit. Nothing here blocks an async runtime:
//! callers run [`Workspace::build`] and [`Workspace::retrieve`] on their own threads.
//!
//! Secret files are never read, and chunks holding secrets are never indexed
//! ([`super::secrets`]).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::Duration;

use ropey::Rope;
use serde::Serialize;

use super::rank::{self, Chunk, Index};
use super::secrets::{self, PathFilter, Refusal};

/// Lines per chunk, and lines shared by neighbouring chunks (so a fact near a boundary is
/// whole in one of them).
pub const CHUNK_LINES: usize = 40;
pub const CHUNK_OVERLAP: usize = 10;
/// A chunk ends early at this size (long lines: generated code, data).
pub const MAX_CHUNK_BYTES: usize = 4096;

/// What the index may take in.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Extra globs to leave out (`[context] exclude`).
    pub exclude: Vec<String>,
    /// Files beyond this many are not indexed (the report says so).
    pub max_files: usize,
    /// Larger files are skipped.
    pub max_file_bytes: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            exclude: Vec::new(),
            max_files: 50_000,
            max_file_bytes: 1024 * 1024,
        }
    }
}

/// Build progress, for `$/progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub indexed: usize,
    pub total: usize,
    pub done: bool,
}

/// The index's state, for answers and status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// `building` until the first walk is done, then `ready`.
    pub state: &'static str,
    pub roots: Vec<String>,
    pub files: usize,
    pub chunks: usize,
    /// Files or chunks left out because they hold secrets.
    pub secrets_skipped: usize,
    /// Files found beyond `max_files`, not indexed.
    pub files_over_limit: usize,
    /// Heap held by the index (postings, chunk table, file table), in bytes.
    pub index_bytes: usize,
}

/// A chunk retrieved for a query, with its current text.
#[derive(Debug, Clone, PartialEq)]
pub struct Excerpt {
    /// The file.
    pub path: PathBuf,
    /// The path relative to its workspace folder, as the prompt and the answer show it.
    pub display: String,
    /// 0-based, inclusive.
    pub start_line: u32,
    pub end_line: u32,
    pub text: String,
    /// The file is open in the editor (the text came from its buffer).
    pub open: bool,
}

/// A file's chunks with their term counts, ready to insert.
type Prepared = Vec<(Chunk, Vec<(u64, u16)>)>;

#[derive(Debug)]
enum Change {
    File(PathBuf),
    Removed(PathBuf),
    AddRoot(PathBuf),
    RemoveRoot(PathBuf),
}

struct FileEntry {
    path: Arc<Path>,
}

/// The index and its file table, behind one lock.
#[derive(Default)]
struct Files {
    index: Index,
    files: Vec<Option<FileEntry>>,
    by_path: HashMap<Arc<Path>, u32>,
    free: Vec<u32>,
}

impl Files {
    fn remove(&mut self, path: &Path) -> bool {
        let Some(id) = self.by_path.remove(path) else {
            return false;
        };
        self.index.remove_doc(id);
        self.files[id as usize] = None;
        self.free.push(id);
        true
    }

    fn insert(&mut self, path: &Path, chunks: &Prepared) {
        self.remove(path);
        if chunks.is_empty() {
            return;
        }
        let path: Arc<Path> = Arc::from(path);
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.files.push(None);
                (self.files.len() - 1) as u32
            }
        };
        self.files[id as usize] = Some(FileEntry { path: path.clone() });
        self.by_path.insert(path, id);
        for (chunk, counts) in chunks {
            let chunk = Chunk { doc: id, ..*chunk };
            if self.index.add(chunk, counts).is_none() {
                break;
            }
        }
        self.index.maybe_freeze();
    }

    fn heap_bytes(&self) -> usize {
        let paths: usize = self
            .files
            .iter()
            .flatten()
            .map(|f| f.path.as_os_str().len() + 16)
            .sum();
        let table = self.by_path.capacity() * (16 + 4 + 1) * 8 / 7
            + self.files.capacity() * std::mem::size_of::<Option<FileEntry>>();
        self.index.heap_bytes() + paths + table
    }
}

/// A workspace: its folders, index, open-document overlays and the queue of changes.
pub struct Workspace {
    filter: PathFilter,
    settings: Settings,
    roots: RwLock<Vec<PathBuf>>,
    files: RwLock<Files>,
    overlays: Mutex<HashMap<PathBuf, Rope>>,
    pending: Mutex<Vec<Change>>,
    wake: Condvar,
    /// Serialises applying changes (the background thread and searches both do it).
    applying: Mutex<()>,
    building: AtomicBool,
    secrets_skipped: AtomicUsize,
    over_limit: AtomicUsize,
    /// The index's heap, counted after each change (counting walks every posting list: too
    /// slow for every request's status).
    index_bytes: AtomicUsize,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("roots", &*read(&self.roots))
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

impl Workspace {
    /// A workspace over `roots` (nothing is read yet: call [`Workspace::build`] or
    /// [`Workspace::start`]). Fails only on a bad exclude glob, naming it.
    pub fn new(roots: Vec<PathBuf>, settings: Settings) -> Result<Workspace, String> {
        let filter =
            PathFilter::new(&settings.exclude).map_err(|e| format!("[context] exclude: {e}"))?;
        let roots = roots.into_iter().map(|r| absolute(&r)).collect();
        Ok(Workspace {
            filter,
            settings,
            roots: RwLock::new(roots),
            files: RwLock::default(),
            overlays: Mutex::default(),
            pending: Mutex::default(),
            wake: Condvar::new(),
            applying: Mutex::new(()),
            building: AtomicBool::new(true),
            secrets_skipped: AtomicUsize::new(0),
            over_limit: AtomicUsize::new(0),
            index_bytes: AtomicUsize::new(0),
        })
    }

    /// Starts a background thread that builds the index, reporting progress, and then applies
    /// queued changes as they come. The thread ends when the workspace is dropped.
    pub fn start(
        self: &Arc<Self>,
        mut progress: Box<dyn FnMut(Progress) + Send>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let weak: Weak<Workspace> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("workspace-index".into())
            .spawn(move || {
                if let Some(ws) = weak.upgrade() {
                    ws.build(&mut *progress);
                }
                loop {
                    let Some(ws) = weak.upgrade() else { return };
                    let queued = {
                        let pending = lock(&ws.pending);
                        let (pending, _) = ws
                            .wake
                            .wait_timeout_while(pending, Duration::from_secs(1), |p| p.is_empty())
                            .unwrap_or_else(|p| p.into_inner());
                        !pending.is_empty()
                    };
                    if queued {
                        // Let a burst of keystrokes or file events settle into one pass.
                        std::thread::sleep(Duration::from_millis(50));
                        ws.apply_pending();
                    }
                }
            })
    }

    /// Walks every folder and indexes what it finds (blocking). Changes queued meanwhile are
    /// applied at the end.
    pub fn build(&self, progress: &mut dyn FnMut(Progress)) {
        self.building.store(true, Ordering::Relaxed);
        let roots = read(&self.roots).clone();
        let mut paths = Vec::new();
        for root in &roots {
            paths.extend(self.walk(root));
        }
        if paths.len() > self.settings.max_files {
            self.over_limit
                .store(paths.len() - self.settings.max_files, Ordering::Relaxed);
            paths.truncate(self.settings.max_files);
        }
        let total = paths.len();
        progress(Progress {
            indexed: 0,
            total,
            done: false,
        });
        let mut indexed = 0;
        for batch in paths.chunks(64) {
            let prepared: Vec<(&PathBuf, Prepared)> =
                batch.iter().map(|p| (p, self.prepare(p, None))).collect();
            let mut files = write(&self.files);
            for (path, chunks) in &prepared {
                files.insert(path, chunks);
            }
            drop(files);
            indexed += batch.len();
            progress(Progress {
                indexed,
                total,
                done: false,
            });
        }
        write(&self.files).index.freeze();
        self.building.store(false, Ordering::Relaxed);
        self.apply_pending();
        self.count_bytes();
        progress(Progress {
            indexed,
            total,
            done: true,
        });
    }

    /// Whether the first build is still running.
    pub fn building(&self) -> bool {
        self.building.load(Ordering::Relaxed)
    }

    /// The files of one folder that may be indexed.
    fn walk(&self, root: &Path) -> Vec<PathBuf> {
        let walker = ignore::WalkBuilder::new(root)
            .hidden(true)
            .ignore(true)
            .git_ignore(true)
            .git_exclude(true)
            .git_global(true)
            .parents(true)
            // A .gitignore counts even outside a git repository.
            .require_git(false)
            .follow_links(false)
            .max_filesize(Some(self.settings.max_file_bytes))
            .build();
        let mut out = Vec::new();
        for entry in walker.flatten() {
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let path = entry.into_path();
            let relative = path.strip_prefix(root).unwrap_or(&path);
            match self.filter.refuse(relative) {
                None => out.push(path),
                Some(Refusal::Secret) => {
                    self.secrets_skipped.fetch_add(1, Ordering::Relaxed);
                }
                Some(Refusal::Excluded) => {}
            }
        }
        out.sort();
        out
    }

    /// The root a path belongs to.
    fn root_of(&self, path: &Path) -> Option<PathBuf> {
        read(&self.roots)
            .iter()
            .filter(|r| path.starts_with(r))
            .max_by_key(|r| r.as_os_str().len())
            .cloned()
    }

    /// Whether `path` is inside a workspace folder and may be indexed (not hidden, ignored,
    /// excluded or a secret file).
    pub fn admits(&self, path: &Path) -> bool {
        let Some(root) = self.root_of(path) else {
            return false;
        };
        let relative = path.strip_prefix(&root).unwrap_or(path);
        if relative
            .components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
        {
            return false;
        }
        self.filter.refuse(relative).is_none() && !ignored(&root, path)
    }

    /// Whether `path` is a secret file by its name (wherever it is).
    pub fn is_secret_path(&self, path: &Path) -> bool {
        let relative = match self.root_of(path) {
            Some(root) => path.strip_prefix(&root).unwrap_or(path).to_path_buf(),
            None => path.to_path_buf(),
        };
        self.filter.refuse(&relative) == Some(Refusal::Secret)
    }

    /// Reads (or takes from `text`) and chunks one file; empty when it cannot or may not be
    /// indexed.
    fn prepare(&self, path: &Path, text: Option<String>) -> Prepared {
        let text = match text {
            Some(t) => t,
            None => match read_text(path, self.settings.max_file_bytes) {
                Some(t) => t,
                None => return Vec::new(),
            },
        };
        let mut out = Vec::new();
        for (start, end, range) in chunk_lines(&text) {
            let body = &text[range];
            if secrets::chunk_secret(body).is_some() {
                self.secrets_skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let (counts, len) = rank::term_counts(body);
            if counts.is_empty() {
                continue;
            }
            out.push((
                Chunk {
                    doc: 0,
                    start_line: start as u32,
                    end_line: end as u32,
                    len,
                },
                counts,
            ));
        }
        out
    }

    fn queue(&self, change: Change) {
        lock(&self.pending).push(change);
        self.wake.notify_one();
    }

    /// A file was created, changed or saved on disk.
    pub fn changed(&self, path: &Path) {
        self.queue(Change::File(path.to_path_buf()));
    }

    /// A file or folder was deleted (a rename is a deletion and a creation).
    pub fn removed(&self, path: &Path) {
        self.queue(Change::Removed(path.to_path_buf()));
    }

    pub fn add_root(&self, root: &Path) {
        self.queue(Change::AddRoot(root.to_path_buf()));
    }

    pub fn remove_root(&self, root: &Path) {
        self.queue(Change::RemoveRoot(root.to_path_buf()));
    }

    /// An open document's text, which supersedes the file on disk until [`close`] is called.
    ///
    /// [`close`]: Workspace::close
    pub fn edited(&self, path: &Path, text: Rope) {
        if self.root_of(path).is_none() {
            return;
        }
        lock(&self.overlays).insert(path.to_path_buf(), text);
        self.queue(Change::File(path.to_path_buf()));
    }

    /// The document was closed: the file on disk counts again.
    pub fn close(&self, path: &Path) {
        if lock(&self.overlays).remove(path).is_some() {
            self.queue(Change::File(path.to_path_buf()));
        }
    }

    /// Applies queued changes (not while the first build runs: it applies them at its end).
    pub fn apply_pending(&self) {
        if self.building() {
            return;
        }
        let _serial = lock(&self.applying);
        let changes: Vec<Change> = std::mem::take(&mut *lock(&self.pending));
        if changes.is_empty() {
            return;
        }
        // The last word per path wins; folder changes go in order.
        let mut files: BTreeSet<PathBuf> = BTreeSet::new();
        let mut removed: Vec<PathBuf> = Vec::new();
        for change in changes {
            match change {
                Change::File(p) => {
                    files.insert(p);
                }
                Change::Removed(p) => {
                    files.remove(&p);
                    removed.push(p);
                }
                Change::AddRoot(root) => {
                    let root = absolute(&root);
                    {
                        let mut roots = write(&self.roots);
                        if !roots.contains(&root) {
                            roots.push(root.clone());
                        }
                    }
                    files.extend(self.walk(&root));
                }
                Change::RemoveRoot(root) => {
                    let root = absolute(&root);
                    write(&self.roots).retain(|r| *r != root);
                    removed.push(root);
                }
            }
        }
        for path in removed {
            let mut index = write(&self.files);
            let under: Vec<Arc<Path>> = index
                .by_path
                .keys()
                .filter(|p| p.starts_with(&path))
                .cloned()
                .collect();
            for p in under {
                index.remove(&p);
            }
        }
        for path in files {
            // Clone the rope (cheap) and let go before turning it into text: the language
            // server's thread takes this lock on every keystroke.
            let rope = lock(&self.overlays).get(&path).cloned();
            let overlay = rope.map(|r| r.to_string());
            let chunks = if (overlay.is_some() || path.is_file()) && self.admits(&path) {
                self.prepare(&path, overlay)
            } else {
                Vec::new()
            };
            write(&self.files).insert(&path, &chunks);
        }
        self.count_bytes();
    }

    fn count_bytes(&self) {
        let bytes = read(&self.files).heap_bytes();
        self.index_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The best excerpts for `query`, best first, at most `k`, with their current text:
    /// overlapping chunks of one file are merged, chunks that hold secrets now are dropped.
    pub fn retrieve(&self, query: &str, k: usize) -> Vec<Excerpt> {
        self.apply_pending();
        let terms = rank::query_terms(query);
        let hits: Vec<(PathBuf, u32, u32)> = {
            let files = read(&self.files);
            files
                .index
                .search(&terms, k * 2)
                .into_iter()
                .filter_map(|s| {
                    let c = files.index.chunk(s.chunk)?;
                    let f = files.files.get(c.doc as usize)?.as_ref()?;
                    Some((f.path.to_path_buf(), c.start_line, c.end_line))
                })
                .collect()
        };
        // Merge hits of one file whose ranges touch, keeping the better rank.
        let mut merged: Vec<(PathBuf, u32, u32)> = Vec::new();
        for (path, start, end) in hits {
            if let Some(m) = merged
                .iter_mut()
                .find(|(p, s, e)| *p == path && start <= *e + 1 && end + 1 >= *s)
            {
                m.1 = m.1.min(start);
                m.2 = m.2.max(end);
                continue;
            }
            merged.push((path, start, end));
        }
        let mut texts: HashMap<PathBuf, Option<(Rope, bool)>> = HashMap::new();
        let mut out = Vec::new();
        for (path, start, end) in merged {
            if out.len() >= k {
                break;
            }
            let source = texts.entry(path.clone()).or_insert_with(|| {
                if let Some(rope) = lock(&self.overlays).get(&path) {
                    return Some((rope.clone(), true));
                }
                read_text(&path, self.settings.max_file_bytes).map(|t| (Rope::from_str(&t), false))
            });
            let Some((rope, open)) = source else { continue };
            let Some(text) = lines(rope, start as usize, end as usize) else {
                continue;
            };
            if secrets::chunk_secret(&text).is_some() {
                continue;
            }
            out.push(Excerpt {
                display: self.display(&path),
                path,
                start_line: start,
                end_line: end.min(rope.len_lines().saturating_sub(1) as u32),
                text,
                open: *open,
            });
        }
        out
    }

    /// The path as prompts and answers show it: relative to its folder.
    pub fn display(&self, path: &Path) -> String {
        match self.root_of(path) {
            Some(root) => path
                .strip_prefix(&root)
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned(),
            None => path.to_string_lossy().into_owned(),
        }
    }

    pub fn status(&self) -> Status {
        let files = read(&self.files);
        Status {
            state: if self.building() { "building" } else { "ready" },
            roots: read(&self.roots)
                .iter()
                .map(|r| r.to_string_lossy().into_owned())
                .collect(),
            files: files.by_path.len(),
            chunks: files.index.len(),
            secrets_skipped: self.secrets_skipped.load(Ordering::Relaxed),
            files_over_limit: self.over_limit.load(Ordering::Relaxed),
            index_bytes: self.index_bytes.load(Ordering::Relaxed),
        }
    }
}

/// A folder as given, made absolute but not resolved: editors name files under the folder
/// they opened, symbolic links included.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Lines `start..=end` of a rope, or `None` when the range is gone.
fn lines(rope: &Rope, start: usize, end: usize) -> Option<String> {
    let count = rope.len_lines();
    if start >= count {
        return None;
    }
    let end = end.min(count - 1);
    let from = rope.line_to_char(start);
    let to = if end + 1 < count {
        rope.line_to_char(end + 1)
    } else {
        rope.len_chars()
    };
    let text = rope.slice(from..to).to_string();
    let text = text.trim_end_matches(['\n', '\r']).to_string();
    (!text.trim().is_empty()).then_some(text)
}

/// A file's text when it is UTF-8, not binary and not too large.
fn read_text(path: &Path, max_bytes: u64) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > max_bytes {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    if bytes[..bytes.len().min(8192)].contains(&0) {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// Chunks of a text: `(first line, last line, byte range)`, 0-based inclusive lines,
/// `CHUNK_LINES` lines each, neighbours sharing `CHUNK_OVERLAP`, cut early at
/// `MAX_CHUNK_BYTES`.
pub fn chunk_lines(text: &str) -> Vec<(usize, usize, std::ops::Range<usize>)> {
    // Byte offset of the start of each line.
    let mut starts = vec![0usize];
    for (i, b) in text.bytes().enumerate() {
        if b == b'\n' && i + 1 < text.len() {
            starts.push(i + 1);
        }
    }
    let line_end = |line: usize| -> usize { starts.get(line + 1).copied().unwrap_or(text.len()) };
    let n = starts.len();
    let mut out = Vec::new();
    let mut first = 0usize;
    while first < n {
        let mut last = (first + CHUNK_LINES - 1).min(n - 1);
        while last > first && line_end(last) - starts[first] > MAX_CHUNK_BYTES {
            last -= 1;
        }
        let mut end_byte = line_end(last);
        if end_byte - starts[first] > MAX_CHUNK_BYTES {
            // One very long line: index its head only.
            end_byte = floor_char_boundary(text, starts[first] + MAX_CHUNK_BYTES);
        }
        out.push((first, last, starts[first]..end_byte));
        if last + 1 >= n {
            break;
        }
        let span = last + 1 - first;
        let step = if span > CHUNK_OVERLAP * 2 {
            span - CHUNK_OVERLAP
        } else {
            span
        };
        first += step;
    }
    out
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Whether `.ignore`/`.gitignore` files between `root` and `path` ignore it (the deepest file
/// that has a say decides, as git does).
fn ignored(root: &Path, path: &Path) -> bool {
    let mut dir = path.parent();
    while let Some(d) = dir {
        for name in [".ignore", ".gitignore"] {
            let file = d.join(name);
            if file.is_file() {
                let (matcher, _) = ignore::gitignore::Gitignore::new(&file);
                let m = matcher.matched_path_or_any_parents(path, false);
                if m.is_ignore() {
                    return true;
                }
                if m.is_whitelist() {
                    return false;
                }
            }
        }
        if d == root {
            break;
        }
        dir = d.parent();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(root: &Path, relative: &str, text: &str) -> PathBuf {
        let path = root.join(relative);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("dir");
        }
        std::fs::write(&path, text).expect("write");
        path
    }

    /// A small project with planted facts, noise and secrets.
    fn project() -> (tempfile::TempDir, Arc<Workspace>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for i in 0..30 {
            let body: String = (0..60)
                .map(|j| format!("fn helper_{i}_{j}(x: u32) -> u32 {{ x + {j} }}\n"))
                .collect();
            write_file(root, &format!("src/noise_{i}.rs"), &body);
        }
        let mut billing: String = (0..50).map(|j| format!("// filler line {j}\n")).collect();
        billing.push_str("/// The retry budget for the payment gateway.\npub const GATEWAY_RETRY_LIMIT: u32 = 7;\n");
        billing.push_str(
            &(0..50)
                .map(|j| format!("// more filler {j}\n"))
                .collect::<String>(),
        );
        write_file(root, "src/billing/gateway.rs", &billing);
        write_file(
            root,
            ".env",
            "GATEWAY_RETRY_LIMIT=99\nSTRIPE_KEY=sk_live_4eC39HqLyjWDarjtT1zdp7dc\n",
        );
        write_file(
            root,
            "src/config.rs",
            "// gateway settings\nconst GATEWAY_TOKEN: &str = \"ghp_abcdefghijklmnopqrstuvwxyz0123456789\";\n",
        );
        write_file(root, ".gitignore", "target/\n");
        write_file(
            root,
            "target/debug/gateway.rs",
            "GATEWAY_RETRY_LIMIT = 1000\n",
        );
        let ws = Workspace::new(vec![root.to_path_buf()], Settings::default()).expect("ws");
        ws.build(&mut |_| {});
        (dir, Arc::new(ws))
    }

    #[test]
    fn the_planted_fact_is_retrieved_and_secrets_and_ignored_files_are_not() {
        let (_dir, ws) = project();
        let hits = ws.retrieve("what is the retry limit of the payment gateway?", 5);
        assert!(!hits.is_empty());
        assert_eq!(hits[0].display, "src/billing/gateway.rs");
        assert!(hits[0].text.contains("GATEWAY_RETRY_LIMIT: u32 = 7"));
        for h in &hits {
            assert!(!h.text.contains("sk_live"), "{h:?}");
            assert!(!h.text.contains("ghp_"), "{h:?}");
            assert!(!h.display.contains("target"), "{h:?}");
            assert!(!h.display.contains(".env"), "{h:?}");
        }
        let status = ws.status();
        assert_eq!(status.state, "ready");
        assert_eq!(status.files, 31, "{status:?}");
        assert!(status.secrets_skipped >= 1, "{status:?}");
    }

    #[test]
    fn edits_deletions_and_renames_are_followed() {
        let (dir, ws) = project();
        let gateway = dir.path().join("src/billing/gateway.rs");
        // An unsaved edit in the editor wins over the file.
        ws.edited(
            &gateway,
            Rope::from_str("pub const GATEWAY_RETRY_LIMIT: u32 = 12; // payment gateway retry\n"),
        );
        let hits = ws.retrieve("payment gateway retry limit", 3);
        assert!(hits[0].open && hits[0].text.contains("= 12"), "{hits:?}");
        ws.close(&gateway);
        assert!(ws.retrieve("payment gateway retry limit", 3)[0]
            .text
            .contains("= 7"));
        // Rename: deleted here, created there.
        let moved = dir.path().join("src/payments/gateway.rs");
        std::fs::create_dir_all(moved.parent().expect("parent")).expect("dir");
        std::fs::rename(&gateway, &moved).expect("rename");
        ws.removed(&gateway);
        ws.changed(&moved);
        let hits = ws.retrieve("payment gateway retry limit", 3);
        assert_eq!(hits[0].display, "src/payments/gateway.rs");
        // Deletion.
        std::fs::remove_file(&moved).expect("rm");
        ws.removed(&moved);
        let hits = ws.retrieve("payment gateway retry limit", 3);
        assert!(
            hits.iter()
                .all(|h| !h.text.contains("GATEWAY_RETRY_LIMIT: u32")),
            "{hits:?}"
        );
        // A created secret or ignored file is never indexed.
        let env = write_file(dir.path(), "src/.env.local", "payment gateway retry 5\n");
        ws.changed(&env);
        let ignored_file = write_file(dir.path(), "target/new.rs", "payment gateway retry 5\n");
        ws.changed(&ignored_file);
        let hits = ws.retrieve("payment gateway retry", 10);
        assert!(
            hits.iter()
                .all(|h| !h.display.contains(".env") && !h.display.starts_with("target")),
            "{hits:?}"
        );
    }

    #[test]
    fn folders_come_and_go() {
        let (dir, ws) = project();
        let other = tempfile::tempdir().expect("tempdir");
        write_file(
            other.path(),
            "lib/quux.py",
            "def frobnicate_quux():\n    return 42\n",
        );
        ws.add_root(other.path());
        assert_eq!(ws.retrieve("frobnicate quux", 2).len(), 1);
        ws.remove_root(other.path());
        assert!(ws.retrieve("frobnicate quux", 2).is_empty());
        drop(dir);
    }

    #[test]
    fn chunks_overlap_and_cover_everything() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let chunks = chunk_lines(&text);
        assert_eq!(chunks[0].0, 0);
        assert_eq!(chunks[0].1, CHUNK_LINES - 1);
        assert_eq!(chunks[1].0, CHUNK_LINES - CHUNK_OVERLAP);
        assert_eq!(chunks.last().map(|c| c.1), Some(99));
        for w in chunks.windows(2) {
            assert!(w[1].0 <= w[0].1, "{chunks:?}");
        }
        let long = "x".repeat(10_000) + "é\nshort\n";
        let chunks = chunk_lines(&long);
        assert!(chunks.iter().all(|c| c.2.len() <= MAX_CHUNK_BYTES));
        assert_eq!(chunk_lines("").len(), 1);
        assert_eq!(chunk_lines("one line").len(), 1);
    }

    #[test]
    fn a_bad_exclude_glob_is_an_error() {
        let settings = Settings {
            exclude: vec!["src/[".into()],
            ..Settings::default()
        };
        let e = Workspace::new(vec![], settings).expect_err("bad glob");
        assert!(e.contains("[context] exclude"), "{e}");
    }
}
