//! The code around a selection: the enclosing function or block where it can be found cheaply,
//! else a few lines either side.
//!
//! Heuristics on indentation and braces, no parser: the nearest line above the selection that
//! is indented less and opens a block (ends in `{` or `:`, or starts a definition) is the
//! block's head; its end is where the braces balance again, or — for indentation languages —
//! the next line indented no deeper than the head. Bounded in lines either way, so a
//! 10,000-line document costs no more than a small one.

use ropey::Rope;

/// Lines either side when no enclosing block is found.
const PLAIN_MARGIN: usize = 10;

fn indentation(line: &str) -> Option<usize> {
    if line.trim().is_empty() {
        return None;
    }
    Some(
        line.chars()
            .take_while(|c| *c == ' ' || *c == '\t')
            .map(|c| if c == '\t' { 4 } else { 1 })
            .sum(),
    )
}

fn opens_block(line: &str) -> bool {
    let t = line.trim();
    let t_end = t.trim_end_matches(|c: char| c == '\\' || c.is_whitespace());
    const HEADS: &[&str] = &[
        "fn ",
        "pub fn",
        "pub(crate) fn",
        "async fn",
        "impl",
        "def ",
        "async def",
        "class ",
        "func ",
        "function",
        "export function",
        "sub ",
        "proc ",
        "module ",
        "struct ",
        "enum ",
        "trait ",
        "interface ",
    ];
    t_end.ends_with('{') || t_end.ends_with(':') || HEADS.iter().any(|h| t.starts_with(h))
}

fn line(rope: &Rope, i: usize) -> String {
    rope.line(i).to_string()
}

/// Blocks shorter than this grow to the next enclosing one (a two-line `for` says little
/// without its function).
const SMALL_BLOCK: usize = 8;

/// The 0-based inclusive line range to show around the selection `first..=last`, at most
/// `max_lines` lines in all (the selection included).
pub fn enclosing(rope: &Rope, first: usize, last: usize, max_lines: usize) -> (usize, usize) {
    let n = rope.len_lines();
    if n == 0 || first >= n {
        return (0, 0);
    }
    let last = last.min(n - 1).max(first);
    let selection_indent = (first..=last)
        .filter_map(|i| indentation(&line(rope, i)))
        .min()
        .unwrap_or(0);
    let (mut start, mut end) = match block(rope, first, last, selection_indent, max_lines) {
        Some((start, end, mut indent)) => {
            let (mut start, mut end) = (start, end);
            while end - start + 1 < SMALL_BLOCK && indent > 0 {
                match block(rope, start, end, indent, max_lines) {
                    Some((s, e, i)) => (start, end, indent) = (s, e, i),
                    None => break,
                }
            }
            (start, end)
        }
        None => (
            first.saturating_sub(PLAIN_MARGIN),
            (last + PLAIN_MARGIN).min(n - 1),
        ),
    };
    while end > last && line(rope, end).trim().is_empty() {
        end -= 1;
    }
    while start < first && line(rope, start).trim().is_empty() {
        start += 1;
    }
    // Too long: keep the part nearest the selection.
    if end - start + 1 > max_lines {
        let spare = max_lines.saturating_sub(last - first + 1) / 2;
        let start = start.max(first.saturating_sub(spare));
        let end = end.min(last + spare);
        return (start, end);
    }
    (start, end)
}

/// The block enclosing lines `first..=last` (indented at least `inner`): its first and last
/// line and the indentation of its head.
fn block(
    rope: &Rope,
    first: usize,
    last: usize,
    inner: usize,
    max_lines: usize,
) -> Option<(usize, usize, usize)> {
    let n = rope.len_lines();
    let lowest = first.saturating_sub(max_lines);
    let mut head = None;
    for i in (lowest..first).rev() {
        let text = line(rope, i);
        let Some(indent) = indentation(&text) else {
            continue;
        };
        if indent < inner && opens_block(&text) {
            head = Some((i, indent, text.trim_end().ends_with('{')));
            break;
        }
        if indent == 0 && !opens_block(&text) && i + 1 < first {
            // Top-level code that opens nothing: no block encloses the selection.
            break;
        }
    }
    let (start, indent, braces) = head?;
    let limit = (last + max_lines).min(n - 1);
    let mut end = limit;
    if braces {
        let mut depth = 0i64;
        'scan: for i in start..=limit {
            for c in line(rope, i).chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth <= 0 {
                            end = i;
                            break 'scan;
                        }
                    }
                    _ => {}
                }
            }
        }
    } else {
        for i in (last + 1)..=limit {
            if indentation(&line(rope, i)).is_some_and(|d| d <= indent) {
                end = i - 1;
                break;
            }
        }
    }
    Some((start, end.max(last), indent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, first: usize, last: usize, expected: (usize, usize)) {
        assert_eq!(
            enclosing(&Rope::from_str(text), first, last, 200),
            expected,
            "{text}"
        );
    }

    #[test]
    fn enclosing_blocks() {
        let rust = "use std::io;\n\nfn total(items: &[u32]) -> u32 {\n    let mut sum = 0;\n    for i in items {\n        sum += i;\n    }\n    sum\n}\n\nfn other() {}\n";
        // The `for` loop is short: its function is shown.
        check(rust, 5, 5, (2, 8));
        check(rust, 3, 3, (2, 8));
        let python = "import os\n\nclass Store:\n    def get(self, key):\n        value = self.data[key]\n        return value\n\n    def put(self):\n        pass\n";
        check(python, 4, 4, (2, 8));
        let long_method: String = std::iter::once("class A:\n    def run(self):\n".to_string())
            .chain((0..10).map(|i| format!("        step_{i}()\n")))
            .chain(std::iter::once(
                "    def other(self):\n        pass\n".to_string(),
            ))
            .collect();
        check(&long_method, 5, 5, (1, 11)); // the method is long enough on its own
                                            // Top-level code without a block: lines either side.
        let flat: String = (0..40).map(|i| format!("x{i} = {i}\n")).collect();
        check(&flat, 20, 20, (10, 30));
        // Out of range and empty documents never panic.
        check("", 0, 0, (0, 0));
        check("a\n", 5, 9, (0, 0));
    }

    #[test]
    fn long_blocks_are_bounded() {
        let mut text = String::from("fn long() {\n");
        for i in 0..1000 {
            text.push_str(&format!("    step({i});\n"));
        }
        text.push_str("}\n");
        let (start, end) = enclosing(&Rope::from_str(&text), 500, 500, 41);
        assert!(end - start < 41, "{start}..{end}");
        assert!(start <= 500 && end >= 500);
    }
}
