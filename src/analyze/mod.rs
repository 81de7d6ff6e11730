//! Request analysis: a pure function from a [`Query`] (prompt, selection, languageId, the code
//! action that asked) to an [`Analysis`]: prose language, intent, shell and code detection,
//! complexity, token counts and a score per tier, with the reasons behind them.
//!
//! It owns the signals (`signals`), the learned tier classifier (`model`, with calibrated
//! probabilities and an optional per-user [`model::Delta`]), token counting (`tokens`) and the
//! expected-cost rule that turns probabilities into the tier the analysis recommends
//! ([`Analysis::recommended`]). It does no I/O and knows nothing of VRAM or endpoints: turning
//! the recommendation into a model that can run now is `route`'s job.
//!
//! ## The cost rule
//!
//! The recommended tier is the one with the least expected cost under the calibrated
//! probabilities, `Σ_t p(t) · COST[t][chosen]`, with this matrix (rows: the right tier,
//! columns: the tier chosen):
//!
//! | right ↓ / chosen → | fast | coder | heavy |
//! |---|---|---|---|
//! | fast  | 0 | 1 | 4 |
//! | coder | 1 | 0 | 1 |
//! | heavy | 4 | 1 | 0 |
//!
//! A neighbour mistake (one tier too big: slower, more VRAM; one too small: a weaker answer)
//! costs 1. A fast↔heavy mistake costs 4: a 70B model loaded for "hello", or a 3B model
//! answering a concurrency bug. So when the probabilities split between fast and heavy the
//! coder tier wins (at fast 45% / heavy 45% coder costs 0.9, the others 1.9), and heavy needs a
//! clear lead over fast to be chosen. Between equal costs the more probable tier wins, then the
//! cheaper one. Heavier severe costs (6, 8)
//! were tried: they cut few more severe misroutes and cost more neighbour mistakes in the
//! leave-one-source-out evaluation (BENCHMARKS.md).

pub mod concepts;
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

    fn as_array(&self) -> [f32; 3] {
        [self.fast, self.coder, self.heavy]
    }

    /// The expected cost of choosing each tier, in `Tier::ALL` order (see the module docs).
    pub fn expected_costs(&self) -> [f32; 3] {
        let p = self.as_array();
        let mut cost = [0f32; 3];
        for (chosen, c) in cost.iter_mut().enumerate() {
            *c = (0..3).map(|right| p[right] * COST[right][chosen]).sum();
        }
        cost
    }

    /// The tier of least expected cost; between equal costs the more probable tier, then the
    /// cheaper one.
    pub fn cheapest_expected(&self) -> Tier {
        let cost = self.expected_costs();
        let mut best = Tier::Fast;
        for tier in Tier::ALL {
            let (c, b) = (cost[tier.index()], cost[best.index()]);
            if c < b - 1e-6 || (c <= b + 1e-6 && self.get(tier) > self.get(best)) {
                best = tier;
            }
        }
        best
    }
}

/// `COST[right][chosen]`: what routing a request whose right tier is `right` to `chosen` costs,
/// in units of one over-serving neighbour mistake. See the module docs for the reasoning.
pub const COST: [[f32; 3]; 3] = [[0.0, 1.0, 4.0], [1.0, 0.0, 1.0], [4.0, 1.0, 0.0]];

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

impl Analysis {
    /// The tier the analysis recommends: the least expected cost under the calibrated scores.
    /// `route` starts from it and moves only for VRAM, configuration or a forced choice.
    pub fn recommended(&self) -> Tier {
        self.scores.cheapest_expected()
    }
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

/// Analyses requests with a trained model and, when the user has taught it, their delta.
#[derive(Clone)]
pub struct Analyzer {
    model: model::Model,
    delta: Option<std::sync::Arc<model::Delta>>,
}

impl Analyzer {
    /// The analyser with the model built into the binary.
    pub fn builtin() -> Result<Analyzer, model::LoadError> {
        Ok(Analyzer::with_model(model::Model::builtin()?))
    }

    pub fn with_model(model: model::Model) -> Analyzer {
        Analyzer { model, delta: None }
    }

    /// The same analyser adapted by a user's delta. A delta trained against another model (an
    /// older triage) would move the wrong weights, so it is refused: `Err` gives it back.
    pub fn with_delta(self, delta: model::Delta) -> Result<Analyzer, model::Delta> {
        if delta.base_fingerprint != self.model.data_fingerprint {
            return Err(delta);
        }
        Ok(Analyzer {
            delta: (!delta.is_empty()).then(|| std::sync::Arc::new(delta)),
            ..self
        })
    }

    /// This analyser without the user's delta.
    pub fn without_delta(&self) -> Analyzer {
        Analyzer::with_model(self.model.clone())
    }

    pub fn has_delta(&self) -> bool {
        self.delta.is_some()
    }

    pub fn model(&self) -> &model::Model {
        &self.model
    }

    pub fn analyze(&self, query: &Query) -> Result<Analysis, Error> {
        analyze(&self.model, self.delta.as_deref(), query)
    }

    /// The hashed features the classifier reads for a query: what feedback records (never the
    /// text).
    pub fn features(&self, query: &Query) -> model::Features {
        let selection = query.selection.filter(|s| !s.trim().is_empty());
        let prompt = query.prompt.trim();
        let signals = signals::read(prompt, selection);
        model::features(
            &model::Input {
                prompt,
                selection,
                language_id: query.language_id,
            },
            &signals,
        )
    }
}

fn analyze(
    model: &model::Model,
    delta: Option<&model::Delta>,
    query: &Query,
) -> Result<Analysis, Error> {
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
    let features = model::features(
        &model::Input {
            prompt,
            selection,
            language_id: query.language_id,
        },
        &signals,
    );
    let base = model.logits(&features.items);
    let mut scores = Scores::from_array(model.probabilities(base));
    let mut adapted = None;
    if let Some(delta) = delta {
        let extra = delta.logits(features.text());
        if extra.iter().any(|z| z.abs() > 1e-3) {
            let calibrated = base.map(|z| z / model.temperature);
            let z = [0, 1, 2].map(|c| calibrated[c] + extra[c]);
            let before = scores;
            scores = Scores::from_array(model::softmax(z));
            adapted = Some((before, delta.examples));
        }
    }

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
    } else if selection.is_some()
        && (code.is_some() || error_output)
        && signals::words(prompt).next().is_none()
    {
        // "?" or an empty chat box on selected code or error output asks what it means.
        scores = certain(Tier::Coder);
        reasons.push("no words on selected code or error output means: explain it".to_string());
    } else {
        let top = scores.ranking()[0];
        reasons.push(format!(
            "classifier: {top} ({:.0}%; fast {:.0}%, coder {:.0}%, heavy {:.0}%, calibrated)",
            scores.get(top) * 100.0,
            scores.fast * 100.0,
            scores.coder * 100.0,
            scores.heavy * 100.0
        ));
        if let Some((before, examples)) = adapted {
            reasons.push(format!(
                "adapted to your {examples} earlier override{}: before them fast {:.0}%, coder {:.0}%, heavy {:.0}%",
                if examples == 1 { "" } else { "s" },
                before.fast * 100.0,
                before.coder * 100.0,
                before.heavy * 100.0
            ));
        }
        let chosen = scores.cheapest_expected();
        let cost = scores.expected_costs();
        if chosen != top {
            reasons.push(format!(
                "expected cost picks {chosen} over {top}: fast {:.2}, coder {:.2}, heavy {:.2} (a fast↔heavy mistake costs 4, a neighbour one 1)",
                cost[0], cost[1], cost[2]
            ));
        } else {
            reasons.push(format!(
                "expected cost: {chosen} is cheapest (fast {:.2}, coder {:.2}, heavy {:.2})",
                cost[0], cost[1], cost[2]
            ));
        }
    }

    let intent = if greeting {
        Intent::SmallTalk
    } else {
        match scores.cheapest_expected() {
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
    fn a_bare_question_mark_on_selected_code_means_explain_it() {
        let a = analyzer();
        for (prompt, selection) in [
            (
                "?",
                "evens = [n * n for n in range(1, 21) if n % 2 == 0]\nprint(evens)",
            ),
            ("", "fn main() {\n    let v: Vec<u8> = Vec::new();\n}"),
        ] {
            let q = Query {
                prompt,
                selection: Some(selection),
                language_id: Some("python"),
                action: None,
            };
            let analysis = a.analyze(&q).expect("a selection is a request");
            assert_eq!(analysis.scores.ranking()[0], Tier::Coder, "{prompt:?}");
            assert!(
                analysis.reasons.iter().any(|r| r.contains("no words")),
                "{:?}",
                analysis.reasons
            );
        }
        // On prose, "?" is no code question: the classifier decides.
        let q = Query {
            prompt: "?",
            selection: Some("Dear team, the offsite moves to Friday. Lunch is at noon."),
            language_id: Some("plaintext"),
            action: None,
        };
        let analysis = a.analyze(&q).expect("valid");
        assert!(!analysis.reasons.iter().any(|r| r.contains("no words")));
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
    fn expected_cost_avoids_the_severe_mistake() {
        let split = Scores {
            fast: 0.45,
            coder: 0.10,
            heavy: 0.45,
        };
        // The top probabilities are fast and heavy, but either is a gamble on a severe
        // mistake: coder costs 0.9 against 1.9 for each of the others.
        assert_eq!(split.cheapest_expected(), Tier::Coder);
        let cost = split.expected_costs();
        assert!(
            (cost[1] - 0.9).abs() < 1e-5 && (cost[0] - 1.9).abs() < 1e-5,
            "{cost:?}"
        );
        // A clear lead wins.
        let sure = Scores {
            fast: 0.7,
            coder: 0.25,
            heavy: 0.05,
        };
        assert_eq!(sure.cheapest_expected(), Tier::Fast);
        // Heavy with a fast runner-up needs more of a lead than with a coder runner-up.
        let heavy_vs_fast = Scores {
            fast: 0.40,
            coder: 0.05,
            heavy: 0.55,
        };
        assert_eq!(heavy_vs_fast.ranking()[0], Tier::Heavy);
        assert_eq!(heavy_vs_fast.cheapest_expected(), Tier::Coder);
        let heavy_vs_coder = Scores {
            fast: 0.05,
            coder: 0.35,
            heavy: 0.60,
        };
        assert_eq!(heavy_vs_coder.cheapest_expected(), Tier::Heavy);
        // Equal costs: the more probable tier, then the cheaper one.
        let even = Scores {
            fast: 0.1,
            coder: 0.3,
            heavy: 0.6,
        };
        assert_eq!(even.cheapest_expected(), Tier::Heavy);
        let tie = Scores {
            fast: 0.5,
            coder: 0.5,
            heavy: 0.0,
        };
        assert_eq!(tie.cheapest_expected(), Tier::Fast);
    }

    #[test]
    fn the_analysis_recommends_by_cost_and_says_so() {
        let a = analyze_prompt("design a sharded rate limiter for 1M rps across three regions");
        assert_eq!(a.recommended(), a.scores.cheapest_expected());
        assert!(
            a.reasons.iter().any(|r| r.starts_with("expected cost")),
            "{:?}",
            a.reasons
        );
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
