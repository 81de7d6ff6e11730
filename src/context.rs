//! Prompt assembly: the messages a model receives for a request — a system prompt for the
//! intent, the selection in a fenced block, the user's prompt — with secrets filtered out and
//! the whole fitted into the model's context window.
//!
//! Owns the secret filter and the token budget. It does not route, and it does not talk to
//! models. Workspace retrieval joins here when the language server brings open documents.

use std::sync::OnceLock;

use regex::Regex;
use serde::Serialize;

use crate::analyze::{tokens, Action, Analysis, Intent, Language, Query};
use crate::backend::{Message, Role};

/// The assembled prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub messages: Vec<Message>,
    pub report: Report,
}

/// What assembly did to the request, for the answer's confidence and for the user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Tokens of the assembled prompt (cl100k when the encoder is ready, else an estimate).
    pub tokens: usize,
    /// The selection was cut to fit the window.
    pub cut: bool,
    /// Secrets replaced by placeholders.
    pub redacted: usize,
}

/// The token budget of one model.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// The model's context window (`num_ctx`).
    pub context_window: u32,
    /// Tokens kept free for the answer.
    pub answer: u32,
}

impl Budget {
    /// Tokens the prompt may use. cl100k counts are only estimates for Llama and Qwen
    /// vocabularies, so 15% stays free as a margin.
    fn prompt_tokens(self) -> usize {
        let available = self.context_window.saturating_sub(self.answer) as f64;
        (available * 0.85) as usize
    }
}

/// Builds the prompt for a request.
pub fn assemble(query: &Query, analysis: &Analysis, budget: Budget) -> Prompt {
    let mut redacted = 0;
    let prompt = redact(query.prompt.trim(), &mut redacted);
    let selection = query
        .selection
        .filter(|s| !s.trim().is_empty())
        .map(|s| redact(s, &mut redacted));
    let system = system_prompt(query.action, analysis);

    let fixed = count(&system) + count(&prompt) + 16;
    let limit = budget.prompt_tokens();
    let mut cut = false;
    let mut user = String::new();
    if let Some(selection) = &selection {
        let room = limit.saturating_sub(fixed);
        let fitted = fit(selection, room);
        cut = fitted.len() < selection.len();
        let fence_language = query.language_id.unwrap_or("");
        user.push_str(&format!("```{fence_language}\n{fitted}\n```\n\n"));
    }
    if prompt.is_empty() {
        user.push_str(default_instruction(query.action));
    } else {
        user.push_str(&prompt);
    }
    let tokens = count(&system) + count(&user);
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
    let cost = |m: &Message| count(&m.content) + 4;
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
            last.content = fit(&last.content, limit.saturating_sub(others + 4));
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
        },
    }
}

fn count(text: &str) -> usize {
    tokens::count(text).tokens
}

/// Keeps the head and tail of `text` within `room` tokens, marking the cut.
fn fit(text: &str, room: usize) -> String {
    if count(text) <= room {
        return text.to_string();
    }
    let lines: Vec<&str> = text.lines().collect();
    // Bytes per token of this text, to aim the cut; then shrink until it fits.
    let ratio = text.len() as f64 / count(text).max(1) as f64;
    let mut keep_bytes = ((room as f64) * ratio * 0.9) as usize;
    loop {
        let (mut head, mut tail) = (Vec::new(), Vec::new());
        let (mut used, mut i, mut j) = (0usize, 0usize, lines.len());
        // Two thirds from the top (signatures, imports), one third from the bottom.
        while i < j && used + lines[i].len() < keep_bytes * 2 / 3 {
            used += lines[i].len() + 1;
            head.push(lines[i]);
            i += 1;
        }
        while j > i && used + lines[j - 1].len() < keep_bytes {
            used += lines[j - 1].len() + 1;
            tail.push(lines[j - 1]);
            j -= 1;
        }
        tail.reverse();
        let fitted = format!(
            "{}\n[… {} lines cut to fit the context window …]\n{}",
            head.join("\n"),
            j - i,
            tail.join("\n")
        );
        if count(&fitted) <= room || keep_bytes < 64 {
            return fitted;
        }
        keep_bytes = keep_bytes * 3 / 4;
    }
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

/// Patterns of secrets that must never reach a model: the matched group is replaced.
fn secret_patterns() -> &'static [(Regex, &'static str)] {
    static PATTERNS: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        let sources: [(&str, &str); 9] = [
            (r"(?s)(-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----)", "private key"),
            (r"\b(AKIA[0-9A-Z]{16})\b", "AWS access key"),
            (r"\b(gh[pousr]_[A-Za-z0-9]{30,})\b", "GitHub token"),
            (r"\b(github_pat_[A-Za-z0-9_]{30,})\b", "GitHub token"),
            (r"\b(xox[abprs]-[A-Za-z0-9-]{10,})\b", "Slack token"),
            (r"\b(sk-[A-Za-z0-9_-]{20,})\b", "API key"),
            (r"\b(eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})\b", "JWT"),
            (r"(?i)\b[a-z0-9]+://[^/\s:@]+:([^@\s/]{3,})@", "URL password"),
            (
                r#"(?i)\b[a-z_]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key)[a-z_]*["']?\s*[:=]\s*["']?([^\s"',;]{6,})"#,
                "secret",
            ),
        ];
        sources
            .into_iter()
            .filter_map(|(pattern, label)| Regex::new(pattern).ok().map(|r| (r, label)))
            .collect()
    })
}

/// Replaces secrets with `[redacted <kind>]`, counting them.
pub fn redact(text: &str, count: &mut usize) -> String {
    let mut out = text.to_string();
    for (pattern, label) in secret_patterns() {
        if !pattern.is_match(&out) {
            continue;
        }
        let mut result = String::with_capacity(out.len());
        let mut last = 0;
        for caps in pattern.captures_iter(&out) {
            let Some(secret) = caps.get(1) else { continue };
            // Values that are clearly placeholders or variable references are no secrets.
            let value = secret.as_str();
            if value.starts_with('$')
                || value.starts_with("{{")
                || value.starts_with("<")
                || value.contains("***")
            {
                continue;
            }
            result.push_str(&out[last..secret.start()]);
            result.push_str(&format!("[redacted {label}]"));
            last = secret.end();
            *count += 1;
        }
        result.push_str(&out[last..]);
        out = result;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::Analyzer;

    fn analysis(query: &Query) -> Analysis {
        Analyzer::builtin()
            .expect("model")
            .analyze(query)
            .expect("valid")
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
        let budget = Budget {
            context_window: 4096,
            answer: 512,
        };
        let prompt = conversation(&messages, budget);
        assert!(prompt.report.cut);
        assert_eq!(prompt.report.redacted, 1);
        let roles = |p: &Prompt| p.messages.iter().map(|m| m.role).collect::<Vec<_>>();
        assert_eq!(roles(&prompt), [Role::System, Role::Assistant, Role::User]);
        let smaller = Budget {
            context_window: 2048,
            answer: 512,
        };
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
    fn secrets_never_reach_the_prompt() {
        let cases = [
            "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
            "export GITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "DATABASE_URL=postgres://app:hunter2secret@db:5432/app",
            "password: \"correct-horse-battery\"",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "client = OpenAI(api_key=\"sk-proj-abcdefghijklmnopqrstuvwx\")",
        ];
        for text in cases {
            let mut n = 0;
            let out = redact(text, &mut n);
            assert!(n >= 1 && out.contains("[redacted"), "{text} → {out}");
            for secret in [
                "AKIAIOSFODNN7EXAMPLE",
                "ghp_abc",
                "hunter2secret",
                "correct-horse",
                "b3BlbnNzaC1rZXkt",
                "dozjgNryP4J3",
                "sk-proj-abc",
            ] {
                assert!(!out.contains(secret), "{secret} leaked: {out}");
            }
        }
        let mut n = 0;
        assert_eq!(
            redact("password = $DB_PASSWORD", &mut n),
            "password = $DB_PASSWORD"
        );
        assert_eq!(
            redact("the token limit is small", &mut n),
            "the token limit is small"
        );
        assert_eq!(n, 0);
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
            Budget {
                context_window: 8192,
                answer: 1024,
            },
        );
        assert_eq!(p.messages.len(), 2);
        assert!(p.messages[0].content.contains("Do not run it"));
        assert!(p.messages[0].content.contains("German"));
        assert!(p.messages[1].content.starts_with("```shellscript\n"));
        assert!(!p.report.cut);
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
        let budget = Budget {
            context_window: 2048,
            answer: 512,
        };
        let p = assemble(&query, &analysis(&query), budget);
        assert!(p.report.cut);
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
            Budget {
                context_window: 4096,
                answer: 512,
            },
        );
        assert!(p.messages[1]
            .content
            .ends_with("Add documentation comments to this code."));
    }
}
