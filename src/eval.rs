//! Labelled routing data: reading JSON Lines records (with line-numbered errors that do not stop
//! the other lines), scoring predictions against labels (accuracy, confusion matrix, severe
//! fast↔heavy misroutes, expected calibration error), the per-source table of a
//! leave-one-source-out run, and k-fold splits for cross-validation.
//!
//! A *source* is one file under `data/routing/`: one author or one voice (see the data's
//! README). Leave-one-source-out trains on every source but one and tests on the one left out,
//! which measures how the router does on requests written by someone it has not read.
//!
//! Pure functions over bytes and values; the command line reads the files and trains.

use serde::{Deserialize, Serialize};

use crate::config::Tier;

/// One input line of `route --jsonl` or `eval`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Record {
    #[serde(default, deserialize_with = "id_from_any")]
    pub id: Option<String>,
    pub prompt: String,
    #[serde(default)]
    pub selection: Option<String>,
    #[serde(default)]
    pub language: Option<String>,
    /// The label, for `eval` and training; given as a string so an unknown name gets a clear
    /// error rather than a serde message.
    #[serde(default)]
    pub tier: Option<String>,
}

/// Ids may be strings or numbers; either is echoed as given.
fn id_from_any<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match value {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    })
}

/// A line that could not be used.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// A parsed record with its line number.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub number: usize,
    pub record: Record,
}

/// Parses JSON Lines. Blank lines are skipped; every bad line becomes a [`LineError`] and the
/// rest are still returned.
pub fn parse_jsonl(bytes: &[u8]) -> (Vec<Line>, Vec<LineError>) {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let number = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                errors.push(LineError {
                    line: number,
                    message: format!("not valid UTF-8 (byte {})", e.valid_up_to()),
                });
                continue;
            }
        };
        let text = text.trim_start_matches('\u{feff}');
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(text) {
            Ok(record) => lines.push(Line { number, record }),
            Err(e) => errors.push(LineError {
                line: number,
                message: format!("not a valid record ({e}); expected {{\"prompt\": \"…\", \"selection\"?, \"language\"?, \"id\"?}}"),
            }),
        }
    }
    (lines, errors)
}

/// The label of a line, or an error naming the line.
pub fn label(line: &Line) -> Result<Tier, LineError> {
    match line.record.tier.as_deref() {
        None => Err(LineError {
            line: line.number,
            message: "has no \"tier\" label".to_string(),
        }),
        Some(t) => t.parse().map_err(|message| LineError {
            line: line.number,
            message,
        }),
    }
}

/// One prediction next to its label.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub id: String,
    pub expected: Tier,
    pub got: Tier,
    /// The probability the router gave the tier it chose (the decision's confidence).
    pub confidence: f32,
}

/// Accuracy figures for a set of outcomes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub total: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// `confusion[expected][got]`, rows and columns in fast, coder, heavy order.
    pub confusion: [[usize; 3]; 3],
    /// fast routed to heavy or heavy to fast.
    pub severe: usize,
    pub severe_rate: f64,
    /// Expected calibration error of the confidences: see [`ece`].
    pub ece: f64,
    pub misrouted: Vec<Outcome>,
}

/// Bins of the expected calibration error.
pub const ECE_BINS: usize = 10;

/// Expected calibration error: outcomes are put into ten equal-width bins by confidence; in
/// each, the gap between mean confidence and accuracy is weighted by the bin's share. 0 means
/// "80% sure" is right 80% of the time.
pub fn ece(outcomes: &[Outcome]) -> f64 {
    if outcomes.is_empty() {
        return 0.0;
    }
    let mut bins = [(0usize, 0f64, 0usize); ECE_BINS];
    for o in outcomes {
        let c = o.confidence.clamp(0.0, 1.0) as f64;
        let b = ((c * ECE_BINS as f64) as usize).min(ECE_BINS - 1);
        bins[b].0 += 1;
        bins[b].1 += c;
        bins[b].2 += usize::from(o.expected == o.got);
    }
    bins.iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|&(n, conf, correct)| {
            let n = n as f64;
            (n / outcomes.len() as f64) * (conf / n - correct as f64 / n).abs()
        })
        .sum()
}

/// Scores outcomes.
pub fn report(outcomes: &[Outcome]) -> Report {
    let mut confusion = [[0usize; 3]; 3];
    for o in outcomes {
        confusion[o.expected.index()][o.got.index()] += 1;
    }
    let total = outcomes.len();
    let correct = (0..3).map(|i| confusion[i][i]).sum();
    let severe = confusion[Tier::Fast.index()][Tier::Heavy.index()]
        + confusion[Tier::Heavy.index()][Tier::Fast.index()];
    let rate = |n: usize| {
        if total == 0 {
            0.0
        } else {
            n as f64 / total as f64
        }
    };
    Report {
        total,
        correct,
        accuracy: rate(correct),
        confusion,
        severe,
        severe_rate: rate(severe),
        ece: ece(outcomes),
        misrouted: outcomes
            .iter()
            .filter(|o| o.expected != o.got)
            .cloned()
            .collect(),
    }
}

impl Report {
    /// The human-readable report that `triage eval` prints.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "accuracy: {:.1}% ({}/{})\nsevere misroutes (fast<->heavy): {} ({:.1}%)\nexpected calibration error: {:.3}\n\n",
            self.accuracy * 100.0,
            self.correct,
            self.total,
            self.severe,
            self.severe_rate * 100.0,
            self.ece
        ));
        s.push_str("confusion (rows: expected, columns: routed)\n");
        s.push_str("            fast  coder  heavy\n");
        for tier in Tier::ALL {
            let row = self.confusion[tier.index()];
            s.push_str(&format!(
                "  {:<7} {:>6} {:>6} {:>6}\n",
                tier.as_str(),
                row[0],
                row[1],
                row[2]
            ));
        }
        if !self.misrouted.is_empty() {
            s.push_str("\nmisrouted:\n");
            for o in &self.misrouted {
                let severe = matches!(
                    (o.expected, o.got),
                    (Tier::Fast, Tier::Heavy) | (Tier::Heavy, Tier::Fast)
                );
                s.push_str(&format!(
                    "  {}  expected {} got {}{}\n",
                    o.id,
                    o.expected,
                    o.got,
                    if severe { "  (severe)" } else { "" }
                ));
            }
        }
        s
    }
}

/// One source's result in a leave-one-source-out run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceReport {
    /// The file's name without `.jsonl`.
    pub source: String,
    pub report: Report,
}

/// The table `triage eval --loso` prints: one row per source, then all sources together, then
/// the training-only sets (each tested by a model trained on everything else), then the
/// misrouted ids per source.
pub fn render_loso(
    rows: &[SourceReport],
    overall: &Report,
    training_only: &[SourceReport],
) -> String {
    let mut s = String::from(
        "leave-one-source-out: each source is tested by a model trained (and calibrated) on all the others\n\n",
    );
    s.push_str(&format!(
        "  {:<18} {:>5} {:>9} {:>13} {:>7}\n",
        "source", "n", "accuracy", "severe", "ECE"
    ));
    let row = |name: &str, r: &Report| {
        format!(
            "  {:<18} {:>5} {:>8.1}% {:>6} ({:>4.1}%) {:>7.3}\n",
            name,
            r.total,
            r.accuracy * 100.0,
            r.severe,
            r.severe_rate * 100.0,
            r.ece
        )
    };
    for r in rows {
        s.push_str(&row(&r.source, &r.report));
    }
    s.push_str(&row("all", overall));
    if !training_only.is_empty() {
        s.push_str(
            "\ntraining-only sets (not sources; each tested by a model trained on everything else):\n",
        );
        for r in training_only {
            s.push_str(&row(&r.source, &r.report));
        }
    }
    let worst = rows
        .iter()
        .min_by(|a, b| a.report.accuracy.total_cmp(&b.report.accuracy));
    if let Some(w) = worst {
        s.push_str(&format!(
            "\nlowest source: {} at {:.1}%; most severe: {:.1}%\n",
            w.source,
            w.report.accuracy * 100.0,
            rows.iter()
                .map(|r| r.report.severe_rate)
                .fold(0.0, f64::max)
                * 100.0
        ));
    }
    for r in rows
        .iter()
        .chain(training_only)
        .filter(|r| !r.report.misrouted.is_empty())
    {
        s.push_str(&format!("\nmisrouted in {}:\n", r.source));
        for o in &r.report.misrouted {
            let severe = matches!(
                (o.expected, o.got),
                (Tier::Fast, Tier::Heavy) | (Tier::Heavy, Tier::Fast)
            );
            s.push_str(&format!(
                "  {}  expected {} got {} ({:.0}%){}\n",
                o.id,
                o.expected,
                o.got,
                o.confidence * 100.0,
                if severe { "  (severe)" } else { "" }
            ));
        }
    }
    s
}

/// Assigns each of `n` items to one of `k` folds, shuffled with a fixed seed so that runs are
/// repeatable while folds stay mixed.
pub fn folds(n: usize, k: usize) -> Vec<usize> {
    let k = k.max(2);
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..n).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let mut fold = vec![0; n];
    for (position, &item) in order.iter().enumerate() {
        fold[item] = position % k;
    }
    fold
}

/// A stable fingerprint of training data: FNV-1a over the bytes.
pub fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_reported_and_the_rest_kept() {
        let input = b"{\"id\": \"a\", \"prompt\": \"hi\"}\nnot json\n\n{\"prompt\": 5}\n\xff\xfe\n{\"id\": 7, \"prompt\": \"ls\", \"tier\": \"coder\"}\r\n";
        let (lines, errors) = parse_jsonl(input);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].record.id.as_deref(), Some("a"));
        assert_eq!(lines[1].number, 6);
        assert_eq!(lines[1].record.id.as_deref(), Some("7"));
        let numbers: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(numbers, [2, 4, 5]);
        assert!(errors[2].message.contains("UTF-8"));
    }

    #[test]
    fn labels_must_be_tiers() {
        let (lines, _) =
            parse_jsonl(b"{\"prompt\": \"x\", \"tier\": \"medium\"}\n{\"prompt\": \"x\"}");
        assert!(label(&lines[0])
            .unwrap_err()
            .message
            .contains("unknown tier `medium`"));
        assert!(label(&lines[1])
            .unwrap_err()
            .message
            .contains("no \"tier\""));
    }

    #[test]
    fn report_counts_confusion_and_severe_misroutes() {
        let o = |id: &str, expected, got| Outcome {
            id: id.into(),
            expected,
            got,
            confidence: 0.9,
        };
        let r = report(&[
            o("1", Tier::Fast, Tier::Fast),
            o("2", Tier::Fast, Tier::Heavy),
            o("3", Tier::Heavy, Tier::Coder),
            o("4", Tier::Coder, Tier::Coder),
        ]);
        assert_eq!((r.total, r.correct, r.severe), (4, 2, 1));
        assert_eq!(r.confusion[0], [1, 0, 1]);
        assert_eq!(r.misrouted.len(), 2);
        let text = r.render();
        assert!(text.contains("accuracy: 50.0% (2/4)"), "{text}");
        assert!(
            text.contains("2  expected fast got heavy  (severe)"),
            "{text}"
        );
        assert_eq!(report(&[]).accuracy, 0.0);
    }

    #[test]
    fn folds_are_balanced_and_repeatable() {
        let f = folds(103, 5);
        assert_eq!(f, folds(103, 5));
        for k in 0..5 {
            let size = f.iter().filter(|&&x| x == k).count();
            assert!((20..=21).contains(&size));
        }
    }

    #[test]
    fn fingerprint_separates_parts() {
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
    }
}
