//! The open documents: ropes keyed by URI with their version and languageId, and every
//! conversion between LSP positions (UTF-16 or UTF-8 code units, as negotiated) and rope
//! offsets.
//!
//! Edits are validated as a whole on a clone of the rope and committed only if every change in
//! the batch applies, so a bad position or range is reported and ignored and never leaves a
//! half-edited document. Only `\n`, `\r\n` and `\r` break lines (ropey's `cr_lines`, without its
//! Unicode line breaks), as in LSP.

use std::collections::HashMap;

use ropey::Rope;
use tower_lsp_server::ls_types::{
    Position, PositionEncodingKind, Range, TextDocumentContentChangeEvent, Uri,
};

/// How LSP positions count characters within a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    Utf16,
}

impl Encoding {
    /// UTF-8 when the client offers it (cheaper: no re-encoding), else UTF-16, the LSP default.
    pub fn negotiate(offered: Option<&[PositionEncodingKind]>) -> Encoding {
        match offered {
            Some(kinds) if kinds.contains(&PositionEncodingKind::UTF8) => Encoding::Utf8,
            _ => Encoding::Utf16,
        }
    }

    pub fn kind(self) -> PositionEncodingKind {
        match self {
            Encoding::Utf8 => PositionEncodingKind::UTF8,
            Encoding::Utf16 => PositionEncodingKind::UTF16,
        }
    }
}

/// A position or range that does not exist in the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("line {line} is past the end of the document ({lines} lines)")]
    LineOutOfRange { line: u32, lines: usize },
    #[error("character {character} on line {line} falls inside a character")]
    InsideCharacter { line: u32, character: u32 },
    #[error("range end {end:?} is before its start {start:?}")]
    Backwards { start: Position, end: Position },
}

/// Why an edit was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("{0} is not open")]
    NotOpen(String),
    #[error("version {got} of {uri} is not newer than {have}: change ignored")]
    StaleVersion { uri: String, have: i32, got: i32 },
    #[error("change {index} to {uri} has a bad range: {error}; the document was left unchanged")]
    BadRange {
        uri: String,
        index: usize,
        error: PositionError,
    },
}

/// One open document.
#[derive(Debug, Clone)]
pub struct Document {
    pub text: Rope,
    pub version: i32,
    pub language_id: String,
}

/// Converts between LSP positions and char indices of a rope.
pub fn to_char(
    rope: &Rope,
    position: Position,
    encoding: Encoding,
) -> Result<usize, PositionError> {
    let lines = rope.len_lines();
    let line = position.line as usize;
    if line >= lines {
        return Err(PositionError::LineOutOfRange {
            line: position.line,
            lines,
        });
    }
    let start = rope.line_to_char(line);
    let content = line_content(rope, line);
    let mut units = 0usize;
    let wanted = position.character as usize;
    for (i, c) in content.chars().enumerate() {
        if units == wanted {
            return Ok(start + i);
        }
        units += match encoding {
            Encoding::Utf8 => c.len_utf8(),
            Encoding::Utf16 => c.len_utf16(),
        };
        if units > wanted {
            return Err(PositionError::InsideCharacter {
                line: position.line,
                character: position.character,
            });
        }
    }
    // At or past the end of the line: LSP says a character past the end means the end.
    Ok(start + content.len_chars())
}

/// The LSP position of a char index.
pub fn to_position(rope: &Rope, char_index: usize, encoding: Encoding) -> Position {
    let char_index = char_index.min(rope.len_chars());
    let line = rope.char_to_line(char_index);
    let start = rope.line_to_char(line);
    let character: usize = rope
        .slice(start..char_index)
        .chars()
        .map(|c| match encoding {
            Encoding::Utf8 => c.len_utf8(),
            Encoding::Utf16 => c.len_utf16(),
        })
        .sum();
    Position {
        line: line as u32,
        character: character as u32,
    }
}

/// Char range of an LSP range.
pub fn to_chars(
    rope: &Rope,
    range: Range,
    encoding: Encoding,
) -> Result<std::ops::Range<usize>, PositionError> {
    let start = to_char(rope, range.start, encoding)?;
    let end = to_char(rope, range.end, encoding)?;
    if end < start {
        return Err(PositionError::Backwards {
            start: range.start,
            end: range.end,
        });
    }
    Ok(start..end)
}

/// A line without its line break.
pub fn line_content(rope: &Rope, line: usize) -> ropey::RopeSlice<'_> {
    let slice = rope.line(line);
    let mut len = slice.len_chars();
    if len > 0 && slice.char(len - 1) == '\n' {
        len -= 1;
    }
    if len > 0 && slice.char(len - 1) == '\r' {
        len -= 1;
    }
    slice.slice(..len)
}

/// Applies a batch of changes to a copy of `rope`: a change without range replaces the whole
/// text, ranged changes apply in order. Returns the new rope, or the index and error of the
/// first change that does not apply.
pub fn apply_changes(
    rope: &Rope,
    changes: &[TextDocumentContentChangeEvent],
    encoding: Encoding,
) -> Result<Rope, (usize, PositionError)> {
    let mut text = rope.clone();
    for (index, change) in changes.iter().enumerate() {
        match change.range {
            None => text = Rope::from_str(&change.text),
            Some(range) => {
                let chars = to_chars(&text, range, encoding).map_err(|e| (index, e))?;
                text.remove(chars.clone());
                text.insert(chars.start, &change.text);
            }
        }
    }
    Ok(text)
}

/// All open documents.
#[derive(Debug, Default)]
pub struct Documents {
    open: HashMap<Uri, Document>,
}

impl Documents {
    pub fn open(&mut self, uri: Uri, text: &str, version: i32, language_id: String) {
        self.open.insert(
            uri,
            Document {
                text: Rope::from_str(text),
                version,
                language_id,
            },
        );
    }

    pub fn close(&mut self, uri: &Uri) -> bool {
        self.open.remove(uri).is_some()
    }

    pub fn get(&self, uri: &Uri) -> Option<&Document> {
        self.open.get(uri)
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Every open document.
    pub fn iter(&self) -> impl Iterator<Item = (&Uri, &Document)> {
        self.open.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Applies a `didChange`: the version must be newer, and every change must apply, else the
    /// document stays as it was.
    pub fn change(
        &mut self,
        uri: &Uri,
        version: i32,
        changes: &[TextDocumentContentChangeEvent],
        encoding: Encoding,
    ) -> Result<(), EditError> {
        let Some(doc) = self.open.get_mut(uri) else {
            return Err(EditError::NotOpen(uri.as_str().to_string()));
        };
        if version <= doc.version {
            return Err(EditError::StaleVersion {
                uri: uri.as_str().to_string(),
                have: doc.version,
                got: version,
            });
        }
        let text = apply_changes(&doc.text, changes, encoding).map_err(|(index, error)| {
            EditError::BadRange {
                uri: uri.as_str().to_string(),
                index,
                error,
            }
        })?;
        doc.text = text;
        doc.version = version;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(line: u32, character: u32) -> Position {
        Position { line, character }
    }

    fn change(range: Option<(u32, u32, u32, u32)>, text: &str) -> TextDocumentContentChangeEvent {
        TextDocumentContentChangeEvent {
            range: range.map(|(a, b, c, d)| Range {
                start: pos(a, b),
                end: pos(c, d),
            }),
            range_length: None,
            text: text.to_string(),
        }
    }

    #[test]
    fn utf16_positions_count_surrogate_pairs() {
        // "a😀b": 😀 is two UTF-16 units and four UTF-8 bytes.
        let rope = Rope::from_str("a😀b\nzweite Zeile");
        assert_eq!(to_char(&rope, pos(0, 3), Encoding::Utf16), Ok(2));
        assert_eq!(to_char(&rope, pos(0, 5), Encoding::Utf8), Ok(2));
        assert_eq!(
            to_char(&rope, pos(0, 2), Encoding::Utf16),
            Err(PositionError::InsideCharacter {
                line: 0,
                character: 2
            })
        );
        assert_eq!(to_position(&rope, 2, Encoding::Utf16), pos(0, 3));
        assert_eq!(to_position(&rope, 2, Encoding::Utf8), pos(0, 5));
        // Past the end of a line means its end, not the next line.
        assert_eq!(to_char(&rope, pos(0, 99), Encoding::Utf16), Ok(3));
        assert!(matches!(
            to_char(&rope, pos(5, 0), Encoding::Utf16),
            Err(PositionError::LineOutOfRange { .. })
        ));
    }

    #[test]
    fn only_lsp_line_breaks_count() {
        let rope = Rope::from_str("a\r\nb\rc\nd\u{2028}e\u{c}f");
        assert_eq!(rope.len_lines(), 4);
        assert_eq!(line_content(&rope, 0).to_string(), "a");
        assert_eq!(line_content(&rope, 1).to_string(), "b");
        assert_eq!(line_content(&rope, 3).to_string(), "d\u{2028}e\u{c}f");
        // The end of a CRLF line is before the CR.
        assert_eq!(to_char(&rope, pos(0, 5), Encoding::Utf16), Ok(1));
    }

    #[test]
    fn empty_document_and_end_position() {
        let rope = Rope::from_str("");
        assert_eq!(to_char(&rope, pos(0, 0), Encoding::Utf16), Ok(0));
        let rope = Rope::from_str("x\n");
        assert_eq!(to_char(&rope, pos(1, 0), Encoding::Utf16), Ok(2));
    }

    #[test]
    fn batches_apply_in_order_and_fail_whole() {
        let uri: Uri = "untitled:Untitled-1".parse().expect("uri");
        let mut docs = Documents::default();
        docs.open(uri.clone(), "hello world", 1, "plaintext".into());
        docs.change(
            &uri,
            2,
            &[
                change(Some((0, 0, 0, 5)), "goodbye"),
                change(Some((0, 8, 0, 13)), "moon"),
            ],
            Encoding::Utf16,
        )
        .expect("applies");
        assert_eq!(
            docs.get(&uri).map(|d| d.text.to_string()),
            Some("goodbye moon".into())
        );
        let bad = docs.change(
            &uri,
            3,
            &[
                change(Some((0, 0, 0, 1)), "G"),
                change(Some((7, 0, 7, 1)), "x"),
            ],
            Encoding::Utf16,
        );
        assert!(matches!(bad, Err(EditError::BadRange { index: 1, .. })));
        assert_eq!(
            docs.get(&uri).map(|d| (d.text.to_string(), d.version)),
            Some(("goodbye moon".into(), 2))
        );
        let backwards = docs.change(&uri, 3, &[change(Some((0, 5, 0, 1)), "")], Encoding::Utf16);
        assert!(matches!(
            backwards,
            Err(EditError::BadRange {
                error: PositionError::Backwards { .. },
                ..
            })
        ));
        let stale = docs.change(&uri, 2, &[change(None, "x")], Encoding::Utf16);
        assert!(matches!(
            stale,
            Err(EditError::StaleVersion {
                have: 2,
                got: 2,
                ..
            })
        ));
        docs.change(&uri, 9, &[change(None, "replaced\r\nall")], Encoding::Utf16)
            .expect("full sync");
        assert_eq!(
            docs.get(&uri).map(|d| d.text.to_string()),
            Some("replaced\r\nall".into())
        );
        assert!(matches!(
            docs.change(
                &"file:///nope".parse().expect("uri"),
                1,
                &[],
                Encoding::Utf16
            ),
            Err(EditError::NotOpen(_))
        ));
    }

    /// Random edit sequences against a reference `String` edited by UTF-16 offsets: the rope
    /// always equals the reference, bad ranges never change it, nothing panics.
    #[test]
    fn random_edits_match_the_reference_text() {
        const PIECES: &[&str] = &[
            "a", "ß", "😀", "\n", "\r\n", "\r", "é", "x y", "", "\u{2028}", "中文", "\t",
        ];
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n.max(1) as u64) as usize
        };
        let uri: Uri = "file:///fuzz.txt".parse().expect("uri");
        for round in 0..300 {
            let mut docs = Documents::default();
            let mut reference = String::from("start\n");
            docs.open(uri.clone(), &reference, 0, "plaintext".into());
            for step in 1..=40 {
                let encoding = if round % 2 == 0 {
                    Encoding::Utf16
                } else {
                    Encoding::Utf8
                };
                let rope = Rope::from_str(&reference);
                let len = rope.len_chars();
                // LSP cannot address the point between the CR and LF of one line break.
                let between_cr_lf =
                    |i: usize| i > 0 && i < len && rope.char(i - 1) == '\r' && rope.char(i) == '\n';
                let (mut a, mut b) = (next(len + 1), next(len + 1));
                if a > b {
                    std::mem::swap(&mut a, &mut b);
                }
                if between_cr_lf(a) {
                    a -= 1;
                }
                if between_cr_lf(b) {
                    b -= 1;
                }
                let inserted: String = (0..next(4)).map(|_| PIECES[next(PIECES.len())]).collect();
                let mut range = Range {
                    start: to_position(&rope, a, encoding),
                    end: to_position(&rope, b, encoding),
                };
                let malformed = next(8) == 0;
                if malformed {
                    range.start.line += 1000;
                }
                let result = docs.change(
                    &uri,
                    step,
                    &[change(
                        Some((
                            range.start.line,
                            range.start.character,
                            range.end.line,
                            range.end.character,
                        )),
                        &inserted,
                    )],
                    encoding,
                );
                if malformed {
                    assert!(result.is_err());
                    // Keep versions moving as a client would.
                    docs.change(&uri, step, &[change(None, &reference)], encoding)
                        .ok();
                } else {
                    result.expect("valid edit applies");
                    let start = rope.char_to_byte(a);
                    let end = rope.char_to_byte(b);
                    reference.replace_range(start..end, &inserted);
                }
                let text = docs
                    .get(&uri)
                    .map(|d| d.text.to_string())
                    .unwrap_or_default();
                assert_eq!(text, reference, "round {round} step {step}");
            }
        }
    }
}
