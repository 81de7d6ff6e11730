//! The token budget of one model: its window, the room kept for the answer, and how tokens are
//! counted for it.
//!
//! Counting is cl100k (tiktoken-rs, once its encoder is built; `triage ask` builds it at start)
//! or the one-pass estimate (the language server, which does not hold the 18 MB table), times a
//! per-model calibration learned from what the model server reported as the prompt's real size
//! (`prompt_eval_count`): that is the model's own tokenizer, which no endpoint of Ollama exposes
//! directly. Llama 3 and Qwen vocabularies are close relatives of cl100k, so the raw count is
//! already near; the calibration corrects the rest, and the safety margin shrinks from 15% to 5%
//! once a model is calibrated.

use serde::Serialize;

use crate::analyze::tokens;

/// How prompt tokens were counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Counting {
    /// The one-pass estimate of cl100k.
    #[default]
    Estimate,
    /// tiktoken's cl100k.
    Cl100k,
    /// cl100k or the estimate, scaled to the model's tokenizer by its reported prompt sizes.
    Calibrated,
}

/// The token budget of one model.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// The model's context window (`num_ctx`), already capped at what the model supports.
    pub context_window: u32,
    /// Tokens kept free for the answer.
    pub answer: u32,
    /// Model tokens per counted token, when the model server has told us.
    pub calibration: Option<f32>,
}

impl Budget {
    /// A budget without calibration.
    pub fn new(context_window: u32, answer: u32) -> Budget {
        Budget {
            context_window,
            answer,
            calibration: None,
        }
    }

    /// Tokens the prompt may use: the window minus the answer, minus a margin for counting
    /// error (15% uncalibrated, 5% calibrated).
    pub fn prompt_tokens(self) -> usize {
        let available = self.context_window.saturating_sub(self.answer) as f64;
        let margin = if self.calibration.is_some() {
            0.95
        } else {
            0.85
        };
        (available * margin) as usize
    }

    /// Counts `text` as the target model would see it.
    pub fn count(self, text: &str) -> usize {
        let raw = tokens::count(text).tokens;
        match self.calibration {
            Some(ratio) => (raw as f64 * ratio as f64).ceil() as usize,
            None => raw,
        }
    }

    /// How this budget counts right now.
    pub fn counting(self) -> Counting {
        if self.calibration.is_some() {
            Counting::Calibrated
        } else if tokens::count("a").estimated {
            Counting::Estimate
        } else {
            Counting::Cl100k
        }
    }
}

/// A model's reported prompt size against our count: `Some(ratio)` when the observation is
/// usable. Prompts under 64 tokens are dominated by the chat template; a ratio outside 0.5–2
/// means a prompt served from the model's cache or a server that does not count honestly.
pub fn calibration_sample(counted: usize, reported: u64) -> Option<f32> {
    if counted < 64 || reported == 0 {
        return None;
    }
    let ratio = reported as f64 / counted as f64;
    (0.5..=2.0).contains(&ratio).then_some(ratio as f32)
}

/// Keeps the head and tail of `text` within `room` tokens, marking the cut. Returns the text
/// and how many lines were cut (0: it fitted).
pub fn fit(text: &str, room: usize, budget: Budget) -> (String, usize) {
    let total = budget.count(text);
    if total <= room {
        return (text.to_string(), 0);
    }
    let lines: Vec<&str> = text.lines().collect();
    // Bytes per token of this text, to aim the cut; then shrink until it fits.
    let ratio = text.len() as f64 / total.max(1) as f64;
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
        let cut = (j - i).max(1);
        let fitted = format!(
            "{}\n[… {cut} lines cut to fit the context window …]\n{}",
            head.join("\n"),
            tail.join("\n")
        );
        if budget.count(&fitted) <= room || keep_bytes < 64 {
            return (fitted, cut);
        }
        keep_bytes = keep_bytes * 3 / 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margins_and_calibration() {
        let plain = Budget::new(8192, 1024);
        assert_eq!(plain.prompt_tokens(), (7168.0 * 0.85) as usize);
        let calibrated = Budget {
            calibration: Some(1.2),
            ..plain
        };
        assert_eq!(calibrated.prompt_tokens(), (7168.0 * 0.95) as usize);
        let text = "fn main() { println!(\"hello\"); }";
        assert!(calibrated.count(text) > plain.count(text));
        assert_eq!(calibrated.counting(), Counting::Calibrated);
        assert_eq!(Budget::new(100, 200).prompt_tokens(), 0);
    }

    #[test]
    fn calibration_samples_are_sane() {
        assert_eq!(calibration_sample(100, 110), Some(1.1));
        assert_eq!(calibration_sample(30, 40), None, "too small to tell");
        assert_eq!(calibration_sample(1000, 12), None, "cached or lying");
        assert_eq!(calibration_sample(1000, 0), None);
    }
}
