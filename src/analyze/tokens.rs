//! Token counting with tiktoken's cl100k vocabulary.
//!
//! Building the encoder takes ~160 ms, so it is built once, on a background thread started by
//! [`warm_up`] (at start-up for the CLI, when the first document opens for the language server),
//! and never on a request's path: until it is ready, and for texts larger than
//! [`EXACT_LIMIT`], counts are estimates and say so. cl100k is OpenAI's vocabulary; for Llama
//! and Qwen models every count is an estimate anyway, which is why callers keep a margin.
//!
//! tiktoken-rs rather than `bpe-openai`: the latter counts 2–3× faster but adds ~47 MB to the
//! binary, and with the encoder off the request path the speed difference does not show.

use std::sync::OnceLock;

use serde::Serialize;
use tiktoken_rs::CoreBPE;

/// Texts up to this many bytes are counted exactly (once the encoder is ready); longer ones are
/// counted on a prefix of this size and extrapolated, which keeps a 100 KB selection cheap.
pub const EXACT_LIMIT: usize = 8 * 1024;

static ENCODER: OnceLock<Option<CoreBPE>> = OnceLock::new();

/// A token count and whether it is exact for cl100k.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Count {
    pub tokens: usize,
    pub estimated: bool,
}

/// Starts building the encoder in the background; returns at once. Calling it again is free.
pub fn warm_up() {
    if ENCODER.get().is_some() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("tokenizer-init".into())
        .spawn(|| {
            ENCODER.get_or_init(build);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the tokenizer thread; token counts stay estimates");
    }
}

/// Blocks until the encoder is built (building it here if nobody started it). For batch work
/// and tests, never for an interactive request.
pub fn wait_ready() -> bool {
    ENCODER.get_or_init(build).is_some()
}

fn build() -> Option<CoreBPE> {
    match tiktoken_rs::cl100k_base() {
        Ok(encoder) => Some(encoder),
        Err(e) => {
            tracing::warn!(error = %e, "the cl100k tokenizer failed to build; token counts stay estimates");
            None
        }
    }
}

/// Counts the tokens of `text` without ever waiting for the encoder.
pub fn count(text: &str) -> Count {
    match ENCODER.get() {
        Some(Some(encoder)) => count_with(encoder, text),
        _ => Count {
            tokens: estimate(text),
            estimated: true,
        },
    }
}

fn count_with(encoder: &CoreBPE, text: &str) -> Count {
    if text.len() <= EXACT_LIMIT {
        return Count {
            tokens: encoder.count_ordinary(text),
            estimated: false,
        };
    }
    let sample = super::signals::prefix(text, EXACT_LIMIT);
    let sample_tokens = encoder.count_ordinary(sample).max(1);
    let ratio = text.len() as f64 / sample.len().max(1) as f64;
    Count {
        tokens: (sample_tokens as f64 * ratio).ceil() as usize,
        estimated: true,
    }
}

/// A one-pass estimate of the cl100k count, shaped like cl100k's own pre-tokeniser: each run of
/// letters is one token plus one per `LETTERS_PER_EXTRA` letters beyond the first
/// `SHORT_WORD`, digits go three to a token, punctuation runs about three characters a token,
/// and each run of line breaks with its indentation is one token. Non-ASCII letters count double, since
/// BPE splits them more. Calibrated on the routing data (see the test below).
pub fn estimate(text: &str) -> usize {
    let mut tokens = 0f32;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphabetic() {
            let mut weight = if c.is_ascii() { 1.0 } else { 2.0 };
            while let Some(&n) = chars.peek() {
                if !n.is_alphabetic() {
                    break;
                }
                weight += if n.is_ascii() { 1.0 } else { 2.0 };
                chars.next();
            }
            tokens += 1.0 + (weight - SHORT_WORD).max(0.0) / LETTERS_PER_EXTRA;
        } else if c.is_numeric() {
            let mut len = 1;
            while chars.next_if(|n| n.is_numeric()).is_some() {
                len += 1;
            }
            tokens += (len as f32 / 3.0).ceil();
        } else if c == '\n' || c == '\r' {
            while chars.next_if(|n| *n == '\n' || *n == '\r').is_some() {}
            // Indentation after a line break mostly merges with it.
            while chars.next_if(|n| *n == ' ' || *n == '\t').is_some() {}
            tokens += 1.0;
        } else if c.is_whitespace() {
            // A single space joins the next word; longer runs are a token of their own.
            let mut len = 1;
            while chars.next_if(|n| *n == ' ' || *n == '\t').is_some() {
                len += 1;
            }
            if len > 1 {
                tokens += 1.0;
            }
        } else {
            let mut len = 1;
            while chars
                .next_if(|n| !n.is_alphanumeric() && !n.is_whitespace())
                .is_some()
            {
                len += 1;
            }
            tokens += (len as f32 / PUNCT_PER_TOKEN).ceil();
        }
    }
    tokens.round() as usize
}

// Fitted by grid search against cl100k on data/routing (mean relative error 12.6%).
const SHORT_WORD: f32 = 7.0;
const LETTERS_PER_EXTRA: f32 = 3.0;
const PUNCT_PER_TOKEN: f32 = 3.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_after_warm_up() {
        assert!(wait_ready());
        let c = count("hello world");
        assert_eq!(
            c,
            Count {
                tokens: 2,
                estimated: false
            }
        );
        assert_eq!(
            count(""),
            Count {
                tokens: 0,
                estimated: false
            }
        );
    }

    #[test]
    fn large_texts_are_extrapolated_and_flagged() {
        assert!(wait_ready());
        let text = "fn main() { println!(\"hi\"); }\n".repeat(2000);
        let c = count(&text);
        assert!(c.estimated);
        let exact = match ENCODER.get() {
            Some(Some(e)) => e.count_ordinary(&text),
            _ => panic!("encoder ready"),
        };
        let error = (c.tokens as f64 - exact as f64).abs() / exact as f64;
        assert!(error < 0.05, "estimate {} vs exact {exact}", c.tokens);
    }

    #[test]
    fn estimate_of_simple_texts() {
        assert_eq!(estimate(""), 0);
        assert_eq!(estimate("hello world"), 2);
        assert_eq!(estimate("x = 12345;"), 1 + 1 + 2 + 1);
        assert_eq!(estimate("a\n    b"), 3);
    }

    /// The estimate stays close to cl100k on real requests: within 10% over the whole routing
    /// data set, and within 35% for nine texts in ten.
    #[test]
    fn estimate_tracks_cl100k_on_the_routing_data() {
        assert!(wait_ready());
        let Some(Some(encoder)) = ENCODER.get() else {
            panic!("encoder ready")
        };
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/routing");
        let (mut exact_total, mut estimate_total, mut close, mut texts) =
            (0usize, 0usize, 0usize, 0usize);
        let files = [dir.clone(), dir.join("contrast")]
            .into_iter()
            .flat_map(|d| std::fs::read_dir(d).expect("data/routing exists"))
            .map(|entry| entry.expect("entry").path())
            .filter(|path| path.is_file() && path.extension().is_some_and(|x| x == "jsonl"));
        for path in files {
            let bytes = std::fs::read(path).expect("readable");
            let (lines, _) = crate::eval::parse_jsonl(&bytes);
            for line in lines {
                for text in
                    std::iter::once(&line.record.prompt).chain(line.record.selection.as_ref())
                {
                    let exact = encoder.count_ordinary(text);
                    let guess = estimate(text);
                    exact_total += exact;
                    estimate_total += guess;
                    texts += 1;
                    if (guess as f64 - exact as f64).abs() <= 0.35 * exact.max(4) as f64 {
                        close += 1;
                    }
                }
            }
        }
        let total_error = (estimate_total as f64 - exact_total as f64).abs() / exact_total as f64;
        assert!(
            total_error < 0.10,
            "total {estimate_total} vs exact {exact_total}"
        );
        assert!(close * 10 >= texts * 9, "{close} of {texts} within 35%");
    }
}
