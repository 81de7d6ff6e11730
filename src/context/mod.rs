//! Prompt assembly: the messages a model receives for a request — a system prompt for the
//! intent, context from the workspace and open documents, the code around the selection, the
//! selection in a fenced block, the user's prompt — with secrets filtered out and the whole
//! fitted into the target model's context window.
//!
//! `gather` collects and ranks the candidate pieces (it reads files: callers run it off the
//! async runtime); [`assemble`] is pure and decides what fits. Submodules: `workspace` (the
//! index, its walk and freshness), `rank` (BM25 and rank fusion), `secrets` (the filter),
//! `budget` (windows and token counts), `surround` (the enclosing block of a selection).
//! It does not route and does not talk to models.

pub mod budget;
mod gather;
pub mod rank;
pub mod secrets;
pub mod surround;
pub mod workspace;

use serde::Serialize;

use crate::analyze::{Action, Analysis, Intent, Language, Query};
use crate::backend::{Message, Role};

pub use budget::{Budget, Counting};
pub use gather::{fuse_with, gather, Document, Focus, Gathering, Material, Piece};
pub use secrets::redact;
pub use workspace::Workspace;

/// Where a piece of context came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// The user's selection.
    Selection,
    /// The enclosing function or block of the selection.
    Surrounding,
    /// Another open document (or a workspace file open in the editor).
    Document,
    /// A file of the workspace index.
    Workspace,
}

/// A piece of context the prompt used. Lines are 1-based and inclusive, as editors show them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    pub path: String,
    pub start_line: u32,
    pub end_line: u32,
    pub kind: SourceKind,
    /// Tokens it took.
    pub tokens: usize,
    /// Shortened to fit (head and tail kept).
    pub cut: bool,
}

/// A ranked piece left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Omitted {
    pub path: String,
    pub start_line: u32,
    pub end_line: u32,
    pub kind: SourceKind,
    pub tokens: usize,
    pub reason: String,
}

/// The assembled prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub messages: Vec<Message>,
    pub report: Report,
}

/// What assembly did, for the answer's confidence and for the user (`context` in answers).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Tokens of the assembled prompt, counted as `counting` says.
    pub tokens: usize,
    /// Something was cut or left out to fit the window (see `sources[].cut` and `omitted`).
    pub cut: bool,
    /// Secrets replaced by placeholders.
    pub redacted: usize,
    /// The context window the request ran with (the `num_ctx` sent).
    pub window: u32,
    /// Tokens the prompt was allowed (window − answer − margin).
    pub budget: usize,
    pub counting: Counting,
    /// The pieces in the prompt.
    pub sources: Vec<Source>,
    /// Ranked pieces that did not fit.
    pub omitted: Vec<Omitted>,
    /// How workspace pieces were ranked: `bm25`, or `hybrid` (BM25 and embeddings fused).
    pub ranking: Option<&'static str>,
    /// The workspace index, when there is one.
    pub workspace: Option<workspace::Status>,
    /// Anything else worth saying (an embedding model that failed, an index still building).
    pub notes: Vec<String>,
}

/// At most this many retrieved pieces go into one prompt.
const MAX_PIECES: usize = 12;
/// Share of the room left after the selection that the surrounding block may take.
const SURROUNDING_SHARE: f64 = 0.3;

/// Builds the prompt for a request from what [`gather`] found.
pub fn assemble(query: &Query, analysis: &Analysis, material: &Material, budget: Budget) -> Prompt {
    let mut redacted = 0;
    let prompt = redact(query.prompt.trim(), &mut redacted);
    let selection = query
        .selection
        .filter(|s| !s.trim().is_empty())
        .map(|s| redact(s, &mut redacted));
    let system = system_prompt(query.action, analysis);
    let limit = budget.prompt_tokens();
    let fixed = budget.count(&system) + budget.count(&prompt) + 16;
    let mut room = limit.saturating_sub(fixed);
    let mut sources = Vec::new();
    let mut omitted = Vec::new();

    let mut selection_block = String::new();
    if let Some(selection) = &selection {
        let (fitted, cut_lines) = budget::fit(selection, room, budget);
        let fence_language = query.language_id.unwrap_or("");
        selection_block = format!("```{fence_language}\n{fitted}\n```\n\n");
        let tokens = budget.count(&selection_block);
        room = room.saturating_sub(tokens);
        let (path, start, end) = match &material.selection {
            Some(s) => (s.path.clone(), s.start_line, s.end_line),
            None => (
                String::new(),
                0,
                selection.lines().count().max(1) as u32 - 1,
            ),
        };
        sources.push(Source {
            path,
            start_line: start + 1,
            end_line: end + 1,
            kind: SourceKind::Selection,
            tokens,
            cut: cut_lines > 0,
        });
    }

    let mut surrounding_block = String::new();
    if let Some(piece) = &material.surrounding {
        let text = redact(&piece.text, &mut redacted);
        let share = (room as f64 * SURROUNDING_SHARE) as usize;
        let header = format!(
            "The code around the selection ({}, lines {}–{}):\n",
            piece.path,
            piece.start_line + 1,
            piece.end_line + 1
        );
        let overhead = budget.count(&header) + 8;
        if share > overhead + 16 {
            let (fitted, cut_lines) = budget::fit(&text, share - overhead, budget);
            surrounding_block = format!("{header}```{}\n{fitted}\n```\n\n", fence(piece));
            let tokens = budget.count(&surrounding_block);
            room = room.saturating_sub(tokens);
            sources.push(Source {
                path: piece.path.clone(),
                start_line: piece.start_line + 1,
                end_line: piece.end_line + 1,
                kind: SourceKind::Surrounding,
                tokens,
                cut: cut_lines > 0,
            });
        } else {
            omitted.push(omit(
                piece,
                budget.count(&text),
                "no room left in the context window",
            ));
        }
    }

    // Retrieved pieces, best first, each whole or not at all.
    let mut context_block = String::new();
    let mut included = 0usize;
    for piece in &material.pieces {
        let text = redact(&piece.text, &mut redacted);
        let block = format!(
            "{} (lines {}–{}):\n```{}\n{text}\n```\n\n",
            piece.path,
            piece.start_line + 1,
            piece.end_line + 1,
            fence(piece)
        );
        let tokens = budget.count(&block);
        if included >= MAX_PIECES {
            // Lower-ranked candidates beyond what one prompt takes: not cut, just not needed.
            break;
        }
        if tokens > room {
            omitted.push(omit(piece, tokens, "does not fit the context window"));
            continue;
        }
        room -= tokens;
        included += 1;
        context_block.push_str(&block);
        sources.push(Source {
            path: piece.path.clone(),
            start_line: piece.start_line + 1,
            end_line: piece.end_line + 1,
            kind: piece.kind,
            tokens,
            cut: false,
        });
    }

    let mut user = String::new();
    if !context_block.is_empty() {
        user.push_str(
            "Context from the workspace and open files (excerpts that may be relevant; the \
             request follows):\n\n",
        );
        user.push_str(&context_block);
    }
    user.push_str(&surrounding_block);
    if !surrounding_block.is_empty() {
        user.push_str("The selection:\n");
    }
    user.push_str(&selection_block);
    if prompt.is_empty() {
        user.push_str(default_instruction(query.action));
    } else {
        user.push_str(&prompt);
    }
    let tokens = budget.count(&system) + budget.count(&user);
    let cut = sources.iter().any(|s| s.cut) || !omitted.is_empty();
    Prompt {
        messages: vec![
            Message {
                role: Role::System,
                content: system,
            },
            Message {
                role: Role::User,
                content: user,
            },
        ],
        report: Report {
            tokens,
            cut,
            redacted,
            window: budget.context_window,
            budget: limit,
            counting: budget.counting(),
            sources,
            omitted,
            ranking: material.ranking,
            workspace: material.workspace.clone(),
            notes: material.notes.clone(),
        },
    }
}

/// A whole conversation from an HTTP client (the gateway), sent as the client wrote it: secrets
/// redacted in every message, the oldest turns after the system messages dropped until it fits
/// the window (the last message is cut, head and tail kept, if it alone is too long).
pub fn conversation(messages: &[Message], budget: Budget) -> Prompt {
    let mut redacted = 0;
    let mut messages: Vec<Message> = messages
        .iter()
        .map(|m| Message {
            role: m.role,
            content: redact(&m.content, &mut redacted),
        })
        .collect();
    let limit = budget.prompt_tokens();
    // Each message costs a few tokens of framing besides its text.
    let cost = |m: &Message| budget.count(&m.content) + 4;
    let mut tokens: usize = messages.iter().map(cost).sum();
    let mut cut = false;
    while tokens > limit {
        let oldest_turn = messages.iter().position(|m| m.role != Role::System);
        match oldest_turn {
            Some(i) if i + 1 < messages.len() => {
                tokens -= cost(&messages[i]);
                messages.remove(i);
                cut = true;
            }
            _ => break,
        }
    }
    if tokens > limit {
        if let Some(last) = messages.last_mut() {
            let others = tokens - cost(last);
            last.content = budget::fit(&last.content, limit.saturating_sub(others + 4), budget).0;
            tokens = others + cost(last);
            cut = true;
        }
    }
    Prompt {
        messages,
        report: Report {
            tokens,
            cut,
            redacted,
            window: budget.context_window,
            budget: limit,
            counting: budget.counting(),
            ..Report::default()
        },
    }
}

fn omit(piece: &Piece, tokens: usize, reason: &str) -> Omitted {
    Omitted {
        path: piece.path.clone(),
        start_line: piece.start_line + 1,
        end_line: piece.end_line + 1,
        kind: piece.kind,
        tokens,
        reason: reason.to_string(),
    }
}

/// The line-comment marker of a language, for context put in front of a completion.
fn line_comment(language_id: &str) -> Option<&'static str> {
    Some(match language_id {
        "rust" | "c" | "cpp" | "csharp" | "go" | "java" | "javascript" | "javascriptreact"
        | "typescript" | "typescriptreact" | "kotlin" | "scala" | "swift" | "dart" | "php"
        | "zig" | "proto" | "groovy" => "//",
        "python" | "shellscript" | "ruby" | "perl" | "r" | "yaml" | "toml" | "dockerfile"
        | "makefile" | "elixir" | "julia" | "nix" | "powershell" | "cmake" => "#",
        "lua" | "sql" | "haskell" | "elm" => "--",
        _ => return None,
    })
}

/// Retrieved pieces as comments to put in front of a fill-in-the-middle prefix (the way
/// completion models are shown neighbouring files), within `max_bytes`, secrets redacted.
/// Empty when the language has no known line comment or nothing fits.
pub fn completion_preamble(pieces: &[Piece], language_id: &str, max_bytes: usize) -> String {
    let Some(marker) = line_comment(language_id) else {
        return String::new();
    };
    let mut out = String::new();
    let mut redacted = 0;
    for piece in pieces {
        let mut block = format!("{marker} Path: {}\n", piece.path);
        for line in redact(&piece.text, &mut redacted).lines() {
            block.push_str(&format!("{marker} {line}\n"));
        }
        if out.len() + block.len() > max_bytes {
            continue;
        }
        out.push_str(&block);
    }
    out
}

/// The fence language of a piece: its languageId, else its file extension.
fn fence(piece: &Piece) -> String {
    if let Some(l) = &piece.language {
        return l.clone();
    }
    std::path::Path::new(&piece.path)
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn system_prompt(action: Option<Action>, analysis: &Analysis) -> String {
    let task = match (action, analysis.intent) {
        (Some(Action::ExplainShell), _) | (None, Intent::ShellCommand) => {
            "Explain what the shell command does, part by part: each program, flag, pipe and \
             redirection. Point out anything destructive or risky. Do not run it, and do not \
             suggest running it blindly."
        }
        (Some(Action::Explain), _) => "Explain what the selected code does, concisely and concretely.",
        (Some(Action::Fix), _) => {
            "Fix the problems in the selected code. Answer with the corrected code in one fenced \
             block, then a short list of what changed."
        }
        (Some(Action::Refactor), _) => {
            "Refactor the selected code for clarity without changing behaviour. Answer with the \
             new code in one fenced block, then a short list of what changed."
        }
        (Some(Action::Docstring), _) => {
            "Add documentation comments in the language's idiom to the selected code. Answer with \
             the documented code in one fenced block, the code itself unchanged."
        }
        (Some(Action::Tests), _) => "Write unit tests for the selected code in the language's usual test framework.",
        (Some(Action::AskHeavy), _) | (None, Intent::Design) => {
            "Think the problem through step by step: state assumptions, weigh the options and their \
             trade-offs, and end with a clear recommendation."
        }
        (None, Intent::ErrorMessage) => "Explain the error message: its cause and the fix, concretely.",
        (None, Intent::CodeTask) => "Help with the code task. Put code in fenced blocks.",
        (None, Intent::SmallTalk) | (None, Intent::ShortQuestion) => "Answer briefly and directly.",
    };
    let language = match analysis.language {
        Language::German => " Answer in German.",
        _ => "",
    };
    format!("You are a coding assistant inside the user's editor. {task}{language}")
}

fn default_instruction(action: Option<Action>) -> &'static str {
    match action {
        Some(Action::ExplainShell) => "Explain this shell command.",
        Some(Action::Fix) => "Fix this code.",
        Some(Action::Refactor) => "Refactor this code.",
        Some(Action::Docstring) => "Add documentation comments to this code.",
        Some(Action::Tests) => "Write tests for this code.",
        Some(Action::AskHeavy) => "Analyse this in depth.",
        Some(Action::Explain) | None => "Explain this.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::{tokens, Analyzer};

    fn analysis(query: &Query) -> Analysis {
        Analyzer::builtin()
            .expect("model")
            .analyze(query)
            .expect("valid")
    }

    fn piece(path: &str, line: u32, text: &str) -> Piece {
        Piece {
            path: path.to_string(),
            start_line: line,
            end_line: line + text.lines().count() as u32 - 1,
            kind: SourceKind::Workspace,
            text: text.to_string(),
            language: None,
        }
    }

    #[test]
    fn conversations_are_redacted_and_fitted_oldest_turn_first() {
        let message = |role, content: &str| Message {
            role,
            content: content.to_string(),
        };
        let long = "word ".repeat(2000);
        let messages = vec![
            message(Role::System, "be brief"),
            message(Role::User, &long),
            message(Role::Assistant, &long),
            message(Role::User, "and my key is AKIAIOSFODNN7EXAMPLE?"),
        ];
        let budget = Budget::new(4096, 512);
        let prompt = conversation(&messages, budget);
        assert!(prompt.report.cut);
        assert_eq!(prompt.report.redacted, 1);
        let roles = |p: &Prompt| p.messages.iter().map(|m| m.role).collect::<Vec<_>>();
        assert_eq!(roles(&prompt), [Role::System, Role::Assistant, Role::User]);
        let smaller = Budget::new(2048, 512);
        let prompt = conversation(&messages, smaller);
        assert_eq!(roles(&prompt), [Role::System, Role::User]);
        assert!(prompt.report.tokens <= smaller.prompt_tokens());
        assert_eq!(
            prompt.messages[1].content,
            "and my key is [redacted AWS access key]?"
        );

        // A single message over the window is cut, head and tail kept.
        let alone = conversation(&[message(Role::User, &"line\n".repeat(20_000))], budget);
        assert!(alone.report.cut);
        assert!(alone.messages[0].content.contains("lines cut to fit"));

        let small = conversation(&messages[..1], budget);
        assert!(!small.report.cut);
        assert_eq!(small.messages, messages[..1]);
    }

    #[test]
    fn completion_preambles_are_comments_within_bounds() {
        let pieces = [
            piece(
                "billing/gateway.py",
                3,
                "LIMIT = 7\ntoken = \"ghp_abcdefghijklmnopqrstuvwxyz0123456789\"",
            ),
            piece("big.py", 0, &"x = 1\n".repeat(500)),
        ];
        let p = completion_preamble(&pieces, "python", 400);
        assert!(
            p.starts_with("# Path: billing/gateway.py\n# LIMIT = 7\n"),
            "{p}"
        );
        assert!(!p.contains("ghp_") && !p.contains("big.py"), "{p}");
        assert_eq!(completion_preamble(&pieces, "plaintext", 400), "");
        assert!(completion_preamble(&pieces, "rust", 400).starts_with("// Path:"));
    }

    #[test]
    fn selection_is_fenced_and_secrets_counted() {
        let query = Query {
            prompt: "was macht das?",
            selection: Some("curl -u admin:s3cr3tpass https://x.example/api"),
            language_id: Some("shellscript"),
            action: None,
        };
        let p = assemble(
            &query,
            &analysis(&query),
            &Material::default(),
            Budget::new(8192, 1024),
        );
        assert_eq!(p.messages.len(), 2);
        assert!(p.messages[0].content.contains("Do not run it"));
        assert!(p.messages[0].content.contains("German"));
        assert!(p.messages[1].content.starts_with("```shellscript\n"));
        assert!(!p.report.cut);
        assert_eq!(p.report.sources.len(), 1);
        assert_eq!(p.report.sources[0].kind, SourceKind::Selection);
        assert_eq!(p.report.window, 8192);
    }

    #[test]
    fn oversized_selections_are_cut_to_the_window_and_say_so() {
        let selection: String = (0..5000)
            .map(|i| format!("let value_{i} = compute({i});\n"))
            .collect();
        let query = Query {
            prompt: "explain",
            selection: Some(&selection),
            language_id: Some("rust"),
            action: None,
        };
        let budget = Budget::new(2048, 512);
        let p = assemble(&query, &analysis(&query), &Material::default(), budget);
        assert!(p.report.cut);
        assert!(p.report.sources[0].cut);
        assert!(p.messages[1]
            .content
            .contains("lines cut to fit the context window"));
        assert!(
            p.messages[1].content.contains("value_0 "),
            "the head is kept"
        );
        assert!(
            p.messages[1].content.contains("value_4999 "),
            "the tail is kept"
        );
        let total: usize = p
            .messages
            .iter()
            .map(|m| tokens::count(&m.content).tokens)
            .sum();
        assert!(total <= budget.prompt_tokens() + 64, "{total}");
    }

    #[test]
    fn an_action_without_prompt_gets_an_instruction() {
        let query = Query {
            prompt: "",
            selection: Some("fn a() {}"),
            language_id: Some("rust"),
            action: Some(Action::Docstring),
        };
        let p = assemble(
            &query,
            &analysis(&query),
            &Material::default(),
            Budget::new(4096, 512),
        );
        assert!(p.messages[1]
            .content
            .ends_with("Add documentation comments to this code."));
    }

    #[test]
    fn pieces_go_in_by_rank_until_the_window_is_full_and_the_rest_is_recorded() {
        let query = Query {
            prompt: "where is the retry limit set?",
            ..Query::default()
        };
        let big: String = (0..300)
            .map(|i| format!("let filler_{i} = {i};\n"))
            .collect();
        let material = Material {
            pieces: vec![
                piece("src/gateway.rs", 9, "pub const RETRY_LIMIT: u32 = 7;\n"),
                piece("src/big.rs", 0, &big),
                piece("src/other.rs", 99, "fn retry() {}\n"),
            ],
            ranking: Some("bm25"),
            ..Material::default()
        };
        let budget = Budget::new(1024, 256);
        let p = assemble(&query, &analysis(&query), &material, budget);
        let user = &p.messages[1].content;
        assert!(user.contains("src/gateway.rs (lines 10–10):\n```rs\npub const RETRY_LIMIT"));
        assert!(user.contains("src/other.rs (lines 100–100)"));
        assert!(!user.contains("filler_299"));
        assert!(user.ends_with("where is the retry limit set?"));
        assert!(p.report.cut);
        let kinds: Vec<&str> = p.report.sources.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(kinds, ["src/gateway.rs", "src/other.rs"]);
        assert_eq!(p.report.omitted.len(), 1);
        assert_eq!(p.report.omitted[0].path, "src/big.rs");
        assert_eq!(
            p.report.omitted[0].reason,
            "does not fit the context window"
        );
        assert!(p.report.tokens <= budget.prompt_tokens(), "{:?}", p.report);
    }

    #[test]
    fn secrets_in_pieces_are_redacted_as_a_last_line() {
        let query = Query {
            prompt: "how do we connect?",
            ..Query::default()
        };
        let material = Material {
            pieces: vec![piece(
                "src/db.rs",
                0,
                "let url = \"postgres://app:hunter2secret@db/app\";\n",
            )],
            ..Material::default()
        };
        let p = assemble(&query, &analysis(&query), &material, Budget::new(4096, 512));
        assert!(!p.messages[1].content.contains("hunter2secret"));
        assert_eq!(p.report.redacted, 1);
    }

    #[test]
    fn the_surrounding_block_is_shown_once_with_the_selection() {
        let query = Query {
            prompt: "explain",
            selection: Some("    sum += i;"),
            language_id: Some("rust"),
            action: None,
        };
        let material = Material {
            selection: Some(Piece {
                path: "src/sum.rs".into(),
                start_line: 5,
                end_line: 5,
                kind: SourceKind::Selection,
                text: String::new(),
                language: None,
            }),
            surrounding: Some(Piece {
                path: "src/sum.rs".into(),
                start_line: 4,
                end_line: 6,
                kind: SourceKind::Surrounding,
                text: "for i in items {\n[… the selection, shown below …]\n}".into(),
                language: Some("rust".into()),
            }),
            ..Material::default()
        };
        let p = assemble(&query, &analysis(&query), &material, Budget::new(4096, 512));
        let user = &p.messages[1].content;
        assert!(user.starts_with(
            "The code around the selection (src/sum.rs, lines 5–7):\n```rust\nfor i in items {"
        ));
        assert!(user.contains("The selection:\n```rust\n    sum += i;\n```"));
        let s: Vec<(SourceKind, u32, u32)> = p
            .report
            .sources
            .iter()
            .map(|s| (s.kind, s.start_line, s.end_line))
            .collect();
        assert_eq!(
            s,
            [
                (SourceKind::Selection, 6, 6),
                (SourceKind::Surrounding, 5, 7)
            ]
        );
    }
}
