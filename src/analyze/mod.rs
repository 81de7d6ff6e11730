//! Request analysis: a pure function from a [`Query`] (prompt, selection, languageId, the code
//! action that asked) to an [`Analysis`]: prose language, intent, shell and code detection,
//! complexity, token counts and a score per tier, with the reasons behind them.
//!
//! It owns the signals (`signals`), the learned tier classifier (`model`) and token counting
//! (`tokens`). It does no I/O and knows nothing of VRAM or endpoints: turning scores into a model
//! choice is `route`'s job.

pub mod model;
pub mod signals;
pub mod tokens;

use serde::{Deserialize, Serialize};

pub use signals::Language;

use crate::config::Tier;

/// Selections above this size are refused rather than analysed: no local model has a context
/// window for them, and holding them would risk the editor's memory.
pub const MAX_SELECTION_BYTES: usize = 8 * 1024 * 1024;
/// The same bound for the typed prompt.
pub const MAX_PROMPT_BYTES: usize = 1024 * 1024;

/// The code action a request came from, when it came from one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Explain,
    ExplainShell,
    Fix,
    Refactor,
    Docstring,
    Tests,
    /// "Ask the heavy model": deep analysis, always the heavy tier.
    AskHeavy,
}

/// What the user asked, as the analyser sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<'a> {
    pub prompt: &'a str,
    pub selection: Option<&'a str>,
    /// The document's LSP languageId (`rust`, `shellscript`, …).
    pub language_id: Option<&'a str>,
    pub action: Option<Action>,
}

/// What kind of request this is, for the user and for prompt assembly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    SmallTalk,
    ShortQuestion,
    CodeTask,
    ShellCommand,
    ErrorMessage,
    Design,
}

/// Code found in the request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Code {
    /// languageId when given, else a guess from the text (`unknown` when none fits).
    pub language: String,
    /// Lines of the selection (or of the prompt when the code was typed there).
    pub lines: usize,
}

/// Token counts of the parts of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tokens {
    pub prompt: usize,
    pub selection: usize,
    /// True when the counts are estimates rather than exact cl100k counts.
    pub estimated: bool,
}

/// A probability per tier, summing to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores {
    pub fast: f32,
    pub coder: f32,
    pub heavy: f32,
}

impl Scores {
    fn from_array(p: [f32; 3]) -> Scores {
        Scores {
            fast: p[0],
            coder: p[1],
            heavy: p[2],
        }
    }

    pub fn get(&self, tier: Tier) -> f32 {
        match tier {
            Tier::Fast => self.fast,
            Tier::Coder => self.coder,
            Tier::Heavy => self.heavy,
        }
    }

    /// Tiers from the highest score to the lowest; ties go to the cheaper tier.
    pub fn ranking(&self) -> [Tier; 3] {
        let mut tiers = Tier::ALL;
        tiers.sort_by(|a, b| self.get(*b).total_cmp(&self.get(*a)).then(a.cmp(b)));
        tiers
    }
}

/// Everything the router needs to know about a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    pub language: Language,
    pub intent: Intent,
    /// The prompt or the selection is a shell command or pipeline.
    pub shell: bool,
    pub code: Option<Code>,
    /// The prompt or selection carries pasted compiler, linker or runtime output.
    pub error_output: bool,
    /// 0..1: how much reasoning the request needs (the heavy score plus half the coder score).
    pub complexity: f32,
    pub tokens: Tokens,
    pub scores: Scores,
    /// Why the scores are what they are, in words.
    pub reasons: Vec<String>,
}

/// A request the analyser refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("the prompt is empty: type a question, or select code and choose an action")]
    Empty,
    #[error("the selection is {0} bytes, more than the {limit} bytes triage accepts: select a smaller part", limit = MAX_SELECTION_BYTES)]
    SelectionTooLarge(usize),
    #[error("the prompt is {0} bytes, more than the {limit} bytes triage accepts: put long text in a selection or a file", limit = MAX_PROMPT_BYTES)]
    PromptTooLarge(usize),
}

/// Analyses requests with a trained model.
#[derive(Clone)]
pub struct Analyzer {
    model: model::Model,
}

impl Analyzer {
    /// The analyser with the model built into the binary.
    pub fn builtin() -> Result<Analyzer, model::LoadError> {
        Ok(Analyzer::with_model(model::Model::builtin()?))
    }

    pub fn with_model(model: model::Model) -> Analyzer {
        Analyzer { model }
    }

    pub fn analyze(&self, query: &Query) -> Result<Analysis, Error> {
        analyze(&self.model, query)
    }
}

fn analyze(model: &model::Model, query: &Query) -> Result<Analysis, Error> {
    let selection = query.selection.filter(|s| !s.trim().is_empty());
    if query.prompt.len() > MAX_PROMPT_BYTES {
        return Err(Error::PromptTooLarge(query.prompt.len()));
    }
    if let Some(s) = selection {
        if s.len() > MAX_SELECTION_BYTES {
            return Err(Error::SelectionTooLarge(s.len()));
        }
    }
    if query.prompt.trim().is_empty() && selection.is_none() && query.action.is_none() {
        return Err(Error::Empty);
    }
    let prompt = query.prompt.trim();
    let mut reasons = Vec::new();

    let signals = signals::read(prompt, selection);
    // A bare command has no prose: `-i` is a flag, not the English "I".
    let language = if signals.prompt.shell {
        Language::Unknown
    } else {
        signals.language
    };
    match language {
        Language::German => reasons.push("prompt is German".to_string()),
        Language::English => reasons.push("prompt is English".to_string()),
        Language::Mixed => reasons.push("prompt mixes German and English".to_string()),
        Language::Unknown => {}
    }
    let prompt_shell = signals.prompt.shell;
    let selection_shell = signals.selection.is_some_and(|s| s.shell)
        || query.language_id == Some("shellscript") && selection.is_some();
    let shell = prompt_shell || selection_shell || query.action == Some(Action::ExplainShell);
    if prompt_shell {
        reasons.push("the prompt is a shell command".to_string());
    } else if selection_shell {
        reasons.push("the selection is a shell command".to_string());
    }
    let error_output = signals.prompt.error_markers >= 2
        || signals
            .selection
            .is_some_and(|s| s.error_markers >= 2 && s.code_density < 0.9);
    if error_output {
        reasons.push("contains compiler or runtime error output".to_string());
    }
    let code = detect_code(prompt, selection, query.language_id, &signals);
    if let Some(c) = &code {
        if selection.is_some() {
            reasons.push(format!("selection: {} lines of {}", c.lines, c.language));
        } else {
            reasons.push(format!("the prompt contains {} code", c.language));
        }
    } else if let Some(s) = selection {
        reasons.push(format!("selection: {} lines of prose", s.lines().count()));
    }

    let greeting = signals.greeting;
    let probabilities = model.predict(
        &model::Input {
            prompt,
            selection,
            language_id: query.language_id,
        },
        &signals,
    );
    let mut scores = Scores::from_array(probabilities);

    // Rules that override the classifier: each is certain enough that a learned weight should
    // not be able to argue with it.
    if let Some(action) = query.action {
        let tier = match action {
            Action::AskHeavy => Tier::Heavy,
            _ => Tier::Coder,
        };
        scores = certain(tier);
        reasons.push(format!(
            "code action `{}` asks for the {tier} tier",
            action_name(action)
        ));
    } else if greeting {
        scores = certain(Tier::Fast);
        reasons.push("only a greeting or thanks".to_string());
    } else if prompt_shell && selection.is_none() {
        scores = certain(Tier::Coder);
        reasons.push("a bare command means: explain it".to_string());
    } else {
        let top = scores.ranking()[0];
        reasons.push(format!(
            "classifier: {top} ({:.0}%; fast {:.0}%, coder {:.0}%, heavy {:.0}%)",
            scores.get(top) * 100.0,
            scores.fast * 100.0,
            scores.coder * 100.0,
            scores.heavy * 100.0
        ));
    }

    let intent = if greeting {
        Intent::SmallTalk
    } else {
        match scores.ranking()[0] {
            Tier::Fast => Intent::ShortQuestion,
            Tier::Heavy => Intent::Design,
            Tier::Coder if shell => Intent::ShellCommand,
            Tier::Coder if error_output => Intent::ErrorMessage,
            Tier::Coder => Intent::CodeTask,
        }
    };
    // The one-pass estimate, not the cl100k encoder: exact counting costs ~70 µs per KB, which
    // routing does not need; `context` counts exactly where a budget must hold.
    let prompt_tokens = tokens::estimate(prompt);
    let selection_tokens = selection.map_or(0, tokens::estimate);
    Ok(Analysis {
        language,
        intent,
        shell,
        code,
        error_output,
        complexity: (scores.heavy + 0.5 * scores.coder).clamp(0.0, 1.0),
        tokens: Tokens {
            prompt: prompt_tokens,
            selection: selection_tokens,
            estimated: true,
        },
        scores,
        reasons,
    })
}

fn certain(tier: Tier) -> Scores {
    let mut p = [0.02f32; 3];
    p[tier.index()] = 0.96;
    Scores::from_array(p)
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Explain => "explain",
        Action::ExplainShell => "explain shell",
        Action::Fix => "fix",
        Action::Refactor => "refactor",
        Action::Docstring => "docstring",
        Action::Tests => "tests",
        Action::AskHeavy => "ask heavy",
    }
}

/// languageIds that name prose rather than code.
const PROSE_IDS: &[&str] = &[
    "plaintext",
    "markdown",
    "git-commit",
    "latex",
    "restructuredtext",
];

fn detect_code(
    prompt: &str,
    selection: Option<&str>,
    language_id: Option<&str>,
    signals: &signals::Signals,
) -> Option<Code> {
    if let (Some(s), Some(sel)) = (selection, &signals.selection) {
        let is_code_id = language_id.is_some_and(|id| !PROSE_IDS.contains(&id));
        if is_code_id || sel.code_density >= 0.5 {
            let language = language_id
                .filter(|id| !PROSE_IDS.contains(id))
                .map(str::to_string)
                .unwrap_or_else(|| guess_language(s).to_string());
            return Some(Code {
                language,
                lines: sel.lines,
            });
        }
        return None;
    }
    let fenced = prompt.contains("```");
    let code_lines = signals.prompt.lines;
    if fenced || (code_lines >= 2 && signals.prompt.code_density >= 0.5) {
        return Some(Code {
            language: guess_language(prompt).to_string(),
            lines: code_lines,
        });
    }
    None
}

/// A best guess at a snippet's language from tell-tale tokens; `unknown` when nothing fits.
fn guess_language(text: &str) -> &'static str {
    let t = signals::prefix(text, signals::SCAN_LIMIT);
    const RULES: &[(&str, &[&str])] = &[
        (
            "rust",
            &["fn ", "let mut ", "impl ", "::new(", "&self", "pub struct"],
        ),
        ("go", &["func ", ":= ", "package ", "err != nil"]),
        ("python", &["def ", "import ", "self.", "elif ", "print("]),
        (
            "typescript",
            &["interface ", ": string", ": number", "export const"],
        ),
        ("javascript", &["function ", "const ", "=> {", "require("]),
        (
            "java",
            &["public class", "private final", "System.out", "@Override"],
        ),
        ("c", &["#include", "printf(", "malloc(", "int main("]),
        (
            "sql",
            &["SELECT ", "select ", "INSERT ", "CREATE TABLE", "WHERE "],
        ),
        ("shellscript", &["#!/bin/", "echo ", "fi\n", "$(", " | "]),
        ("yaml", &["apiVersion:", "- name:", "steps:", "services:"]),
        ("dockerfile", &["FROM ", "RUN ", "WORKDIR ", "ENTRYPOINT"]),
    ];
    RULES
        .iter()
        .map(|(lang, marks)| (lang, marks.iter().filter(|m| t.contains(*m)).count()))
        .filter(|(_, hits)| *hits > 0)
        .max_by_key(|(_, hits)| *hits)
        .map(|(lang, _)| *lang)
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyzer() -> Analyzer {
        Analyzer::builtin().expect("builtin model")
    }

    fn analyze_prompt(prompt: &str) -> Analysis {
        analyzer()
            .analyze(&Query {
                prompt,
                ..Query::default()
            })
            .expect("valid query")
    }

    #[test]
    fn refuses_empty_and_oversized_input() {
        let a = analyzer();
        assert_eq!(
            a.analyze(&Query {
                prompt: "   ",
                ..Query::default()
            }),
            Err(Error::Empty)
        );
        let huge = "x".repeat(MAX_SELECTION_BYTES + 1);
        let q = Query {
            prompt: "explain",
            selection: Some(&huge),
            ..Query::default()
        };
        assert_eq!(a.analyze(&q), Err(Error::SelectionTooLarge(huge.len())));
        let long_prompt = "y".repeat(MAX_PROMPT_BYTES + 1);
        let q = Query {
            prompt: &long_prompt,
            ..Query::default()
        };
        assert!(matches!(a.analyze(&q), Err(Error::PromptTooLarge(_))));
        // An empty prompt is fine when a selection or an action says what to do.
        let q = Query {
            prompt: "",
            selection: Some("ls -la"),
            ..Query::default()
        };
        assert!(a.analyze(&q).is_ok());
    }

    #[test]
    fn greetings_are_small_talk_on_the_fast_tier() {
        let a = analyze_prompt("Guten Morgen ☀️");
        assert_eq!(a.intent, Intent::SmallTalk);
        assert_eq!(a.scores.ranking()[0], Tier::Fast);
    }

    #[test]
    fn bare_pipeline_means_explain_it() {
        let a = analyze_prompt("ps aux | grep -v grep | awk '{print $2}'");
        assert!(a.shell);
        assert_eq!(a.intent, Intent::ShellCommand);
        assert_eq!(a.scores.ranking()[0], Tier::Coder);
        assert!(
            a.reasons.iter().any(|r| r.contains("explain it")),
            "{:?}",
            a.reasons
        );
    }

    #[test]
    fn actions_decide_the_tier() {
        let a = analyzer();
        let q = Query {
            prompt: "",
            selection: Some("fn a() {}"),
            language_id: Some("rust"),
            action: Some(Action::Docstring),
        };
        assert_eq!(
            a.analyze(&q).map(|x| x.scores.ranking()[0]),
            Ok(Tier::Coder)
        );
        let q = Query {
            action: Some(Action::AskHeavy),
            ..q
        };
        let analysis = a.analyze(&q).expect("valid");
        assert_eq!(analysis.scores.ranking()[0], Tier::Heavy);
        assert_eq!(analysis.intent, Intent::Design);
    }

    #[test]
    fn code_language_from_id_or_text() {
        let a = analyzer();
        let q = Query {
            prompt: "what does this do",
            selection: Some("x = 1"),
            language_id: Some("python"),
            action: None,
        };
        let analysis = a.analyze(&q).expect("valid");
        assert_eq!(
            analysis.code.map(|c| c.language),
            Some("python".to_string())
        );
        let q = Query {
            prompt: "what does this do",
            selection: Some("fn main() {\n    let mut x = 1;\n}\n"),
            language_id: None,
            action: None,
        };
        assert_eq!(
            a.analyze(&q).expect("valid").code.map(|c| c.language),
            Some("rust".to_string())
        );
        let q = Query {
            prompt: "summarise",
            selection: Some("The meeting is moved to Tuesday.\nPlease bring the slides."),
            language_id: Some("plaintext"),
            action: None,
        };
        assert_eq!(a.analyze(&q).expect("valid").code, None);
    }

    #[test]
    fn error_output_is_detected() {
        let a = analyze_prompt("Traceback (most recent call last):\n  File \"app.py\", line 3, in <module>\nModuleNotFoundError: No module named 'requests'");
        assert!(a.error_output);
        assert_eq!(a.intent, Intent::ErrorMessage);
    }

    #[test]
    fn scores_are_probabilities_and_complexity_follows_them() {
        let a = analyze_prompt("design a sharded rate limiter for 1M rps across three regions");
        let sum = a.scores.fast + a.scores.coder + a.scores.heavy;
        assert!((sum - 1.0).abs() < 1e-3);
        assert!((0.0..=1.0).contains(&a.complexity));
        assert_eq!(a.scores.ranking()[0], Tier::Heavy);
        assert!(a.complexity > 0.5);
    }

    #[test]
    fn ranking_breaks_ties_towards_the_cheaper_tier() {
        let s = Scores {
            fast: 0.4,
            coder: 0.4,
            heavy: 0.2,
        };
        assert_eq!(s.ranking(), [Tier::Fast, Tier::Coder, Tier::Heavy]);
    }
}
