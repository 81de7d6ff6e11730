//! The secret filter: what must never reach a model.
//!
//! Three layers. Files whose names say they hold secrets (`.env*`, keys, certificates,
//! credential stores, plus the user's `[context] exclude` globs) are never read into the index
//! or a prompt. A chunk of any other file that holds a private-key block, a cloud or API token,
//! or a high-entropy value assigned to a name like `password`/`secret`/`token` is left out
//! whole. Whatever text does go into a prompt — the typed prompt, the selection, every excerpt —
//! is redacted last (`[redacted …]`), so a secret that slipped past the first two layers is
//! still replaced.
//!
//! Owns patterns and the decision; reads no files.

use std::path::Path;
use std::sync::OnceLock;

use globset::{Glob, GlobSet, GlobSetBuilder};
use regex::Regex;

/// File globs that hold secrets by their nature. Matched against the path relative to its
/// workspace folder (and, for documents outside any folder, the whole path).
pub const SECRET_GLOBS: &[&str] = &[
    "**/.env",
    "**/.env.*",
    "**/*.env",
    "**/.envrc",
    "**/*.pem",
    "**/*.key",
    "**/*.crt.key",
    "**/id_rsa*",
    "**/id_dsa*",
    "**/id_ecdsa*",
    "**/id_ed25519*",
    "**/*.p12",
    "**/*.pfx",
    "**/*.jks",
    "**/*.keystore",
    "**/*.gpg",
    "**/.netrc",
    "**/_netrc",
    "**/.git-credentials",
    "**/.aws/credentials",
    "**/.aws/config",
    "**/.docker/config.json",
    "**/.kube/config",
    "**/kubeconfig",
    "**/*.kubeconfig",
    "**/.npmrc",
    "**/.pypirc",
    "**/.pgpass",
    "**/.htpasswd",
    "**/credentials.json",
    "**/secrets.{yml,yaml,json,toml}",
    "**/*.tfstate",
    "**/*.tfstate.*",
    "**/*.tfvars",
];

/// Files that are no secrets but never worth a prompt: lock files, minified and generated code.
pub const NOISE_GLOBS: &[&str] = &[
    "**/*.lock",
    "**/package-lock.json",
    "**/pnpm-lock.yaml",
    "**/*.min.js",
    "**/*.min.css",
    "**/*.map",
];

/// Decides which paths may be read.
#[derive(Debug, Clone)]
pub struct PathFilter {
    secret: GlobSet,
    excluded: GlobSet,
}

/// Why a path is not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A secret file by its name.
    Secret,
    /// Excluded by configuration or as noise.
    Excluded,
}

impl PathFilter {
    /// The built-in globs plus `extra` (the user's `[context] exclude`). A glob without a `/`
    /// matches at any depth (`*.sql` as `**/*.sql`), one with a `/` from the folder's root;
    /// a folder's contents go with it. Bad globs are an error naming them.
    pub fn new(extra: &[String]) -> Result<PathFilter, String> {
        let mut secret = GlobSetBuilder::new();
        for g in SECRET_GLOBS {
            secret.add(glob(g)?);
        }
        let mut excluded = GlobSetBuilder::new();
        for g in NOISE_GLOBS {
            excluded.add(glob(g)?);
        }
        for g in extra {
            // `dir/` means the folder: the same as `dir`, whose contents are excluded below.
            let g = g.trim().trim_end_matches('/');
            if g.is_empty() {
                continue;
            }
            let pattern = if g.contains('/') {
                g.trim_start_matches('/').to_string()
            } else {
                format!("**/{g}")
            };
            excluded.add(glob(&pattern)?);
            // A directory glob excludes what is inside it too.
            if !pattern.ends_with("/**") {
                excluded.add(glob(&format!("{pattern}/**"))?);
            }
        }
        Ok(PathFilter {
            secret: secret.build().map_err(|e| e.to_string())?,
            excluded: excluded.build().map_err(|e| e.to_string())?,
        })
    }

    /// Checks the user's globs without compiling any matcher (configuration is validated at
    /// start-up, where a compiled glob set would cost memory the server may never use).
    pub fn check(extra: &[String]) -> Result<(), String> {
        for g in extra {
            let g = g.trim().trim_end_matches('/');
            if !g.is_empty() {
                glob(g.trim_start_matches('/'))?;
            }
        }
        Ok(())
    }

    /// `None` when the file may be read.
    pub fn refuse(&self, relative: &Path) -> Option<Refusal> {
        if self.secret.is_match(relative) {
            Some(Refusal::Secret)
        } else if self.excluded.is_match(relative) {
            Some(Refusal::Excluded)
        } else {
            None
        }
    }
}

fn glob(pattern: &str) -> Result<Glob, String> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("`{pattern}` is not a valid glob: {e}"))
}

/// Patterns of secrets that must never reach a model: the matched group is replaced.
fn secret_patterns() -> &'static [(Regex, &'static str)] {
    static PATTERNS: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        let sources: [(&str, &str); 15] = [
            (r"(?s)(-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----)", "private key"),
            (r"\b((?:AKIA|ASIA)[0-9A-Z]{16})\b", "AWS access key"),
            (r"\b(gh[pousr]_[A-Za-z0-9]{30,})\b", "GitHub token"),
            (r"\b(github_pat_[A-Za-z0-9_]{30,})\b", "GitHub token"),
            (r"\b(glpat-[A-Za-z0-9_-]{20,})\b", "GitLab token"),
            (r"\b(xox[abprs]-[A-Za-z0-9-]{10,})\b", "Slack token"),
            (r"\b(AIza[0-9A-Za-z_-]{35})\b", "Google API key"),
            (r"\b((?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,})\b", "Stripe key"),
            (r"\b(npm_[A-Za-z0-9]{36})\b", "npm token"),
            (r"\b(hf_[A-Za-z0-9]{30,})\b", "Hugging Face token"),
            (r"\b(sk-[A-Za-z0-9_-]{20,})\b", "API key"),
            (r"\b(eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})\b", "JWT"),
            (r"(?i)\bAccountKey=([A-Za-z0-9+/=]{20,})", "Azure storage key"),
            (r"(?i)\b[a-z0-9+.-]+://[^/\s:@]+:([^@\s/]{3,})@", "URL password"),
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

/// Values that are clearly placeholders or variable references are no secrets.
fn placeholder(value: &str) -> bool {
    value.starts_with('$')
        || value.starts_with("{{")
        || value.starts_with('<')
        || value.starts_with("process.env")
        || value.starts_with("os.environ")
        || value.starts_with("env(")
        || value.contains("***")
        || value.contains("xxxx")
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
            if placeholder(secret.as_str()) {
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

/// Assignments to secret-sounding names: a quoted value anywhere, or an unquoted one on a line
/// of its own (`.env`, YAML, INI style).
fn assignment_patterns() -> &'static [Regex] {
    static PATTERNS: OnceLock<Vec<Regex>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        let name = r"[A-Za-z0-9_.-]*(?i:password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|client[_-]?secret|credentials?|auth)[A-Za-z0-9_.-]*";
        [
            format!(r#"{name}["']?\s*[:=]\s*["']([^"'\s]{{8,}})["']"#),
            format!(r#"(?m)^\s*(?:export\s+)?{name}\s*[:=]\s*([^\s"'#]{{8,}})\s*$"#),
        ]
        .iter()
        .filter_map(|p| Regex::new(p).ok())
        .collect()
    })
}

/// Shannon entropy of a string, in bits per character.
pub fn entropy(value: &str) -> f64 {
    let mut counts = std::collections::HashMap::new();
    let mut n = 0usize;
    for c in value.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    counts
        .values()
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.log2()
        })
        .sum()
}

/// A value that looks generated rather than written: long enough, varied, and not an
/// identifier path or a sentence.
fn high_entropy(value: &str) -> bool {
    if placeholder(value) || value.len() < 8 {
        return false;
    }
    let has_digit = value.chars().any(|c| c.is_ascii_digit());
    let has_alpha = value.chars().any(|c| c.is_alphabetic());
    let code_like = value.contains('(') || value.contains("::") || value.contains("->");
    !code_like && (has_digit || value.len() >= 16) && has_alpha && entropy(value) >= 3.0
}

/// Substrings without which no pattern can match: one pass over a chunk decides whether the
/// regexes need to run at all (most chunks of code have none of them).
fn triggers() -> Option<&'static (aho_corasick::AhoCorasick, aho_corasick::AhoCorasick)> {
    static TRIGGERS: OnceLock<Option<(aho_corasick::AhoCorasick, aho_corasick::AhoCorasick)>> =
        OnceLock::new();
    TRIGGERS
        .get_or_init(|| {
            let tokens = aho_corasick::AhoCorasick::new([
                "AKIA",
                "ASIA",
                "ghp_",
                "gho_",
                "ghu_",
                "ghs_",
                "ghr_",
                "github_pat_",
                "glpat-",
                "xox",
                "AIza",
                "sk_live_",
                "sk_test_",
                "rk_live_",
                "rk_test_",
                "npm_",
                "hf_",
                "sk-",
                "eyJ",
                "://",
            ])
            .ok()?;
            let names = aho_corasick::AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .build(["pass", "pwd", "secret", "token", "key", "cred", "auth"])
                .ok()?;
            Some((tokens, names))
        })
        .as_ref()
}

/// Why a chunk of text must stay out of every prompt, or `None` when it may go in.
pub fn chunk_secret(text: &str) -> Option<&'static str> {
    if text.contains("PRIVATE KEY-----") {
        return Some("private key");
    }
    let (tokens, names) = match triggers() {
        Some((t, n)) => (t.is_match(text), n.is_match(text)),
        None => (true, true),
    };
    if !tokens && !names {
        return None;
    }
    for (pattern, label) in secret_patterns() {
        if *label == "secret" || (!tokens && *label != "Azure storage key") {
            // The loose name pattern is for redaction; whole chunks go on entropy below.
            continue;
        }
        for caps in pattern.captures_iter(text) {
            if caps.get(1).is_some_and(|m| !placeholder(m.as_str())) {
                return Some(label);
            }
        }
    }
    if !names {
        return None;
    }
    for pattern in assignment_patterns() {
        for caps in pattern.captures_iter(text) {
            if caps.get(1).is_some_and(|m| high_entropy(m.as_str())) {
                return Some("high-entropy secret assignment");
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
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
    fn secret_files_by_name() {
        let filter =
            PathFilter::new(&["fixtures/".to_string(), "*.sql".to_string()]).expect("valid globs");
        for path in [
            ".env",
            "app/.env.production",
            "deploy/prod.env",
            "certs/server.pem",
            "certs/server.key",
            "home/.ssh/id_rsa",
            "home/.ssh/id_ed25519.pub",
            "store.p12",
            "store.pfx",
            ".netrc",
            ".git-credentials",
            "home/.aws/credentials",
            "home/.docker/config.json",
            "home/.kube/config",
            "ops/kubeconfig",
            ".npmrc",
            ".pypirc",
        ] {
            assert_eq!(
                filter.refuse(Path::new(path)),
                Some(Refusal::Secret),
                "{path}"
            );
        }
        for path in ["fixtures/a.json", "db/dump.sql", "Cargo.lock"] {
            assert_eq!(
                filter.refuse(Path::new(path)),
                Some(Refusal::Excluded),
                "{path}"
            );
        }
        for path in [
            "src/main.rs",
            "src/env.rs",
            "docs/secrets.md",
            "src/keys.rs",
        ] {
            assert_eq!(filter.refuse(Path::new(path)), None, "{path}");
        }
        assert!(PathFilter::new(&["a[".to_string()]).is_err());
        assert!(PathFilter::check(&["a[".to_string()]).is_err());
        assert!(PathFilter::check(&["*.sql".to_string(), "fixtures/".to_string()]).is_ok());
    }

    #[test]
    fn chunks_with_secrets_are_recognised() {
        for (text, label) in [
            (
                "key = '''\n-----BEGIN RSA PRIVATE KEY-----\nMIIE",
                "private key",
            ),
            ("aws = \"AKIAIOSFODNN7EXAMPLE\"", "AWS access key"),
            (
                "let t = \"ghp_abcdefghijklmnopqrstuvwxyz0123456789\";",
                "GitHub token",
            ),
            ("STRIPE = 'sk_live_4eC39HqLyjWDarjtT1zdp7dc'", "Stripe key"),
            (
                "const dbPassword = \"Zr8q!vT2mK9xLp4w\";",
                "high-entropy secret assignment",
            ),
            (
                "API_TOKEN=9f8e7d6c5b4a3f2e1d0c",
                "high-entropy secret assignment",
            ),
            (
                "  client_secret: a8F3kL9qPz2mX7vB",
                "high-entropy secret assignment",
            ),
        ] {
            assert_eq!(chunk_secret(text), Some(label), "{text}");
        }
        for text in [
            "let token = self.next_token();",
            "password = os.environ[\"DB_PASSWORD\"]",
            "password: ${DB_PASSWORD}",
            "// the token budget is 8192",
            "fn api_key(&self) -> &str { &self.key }",
            "secret_name = \"database\"",
        ] {
            assert_eq!(chunk_secret(text), None, "{text}");
        }
    }

    #[test]
    fn entropy_of_strings() {
        assert_eq!(entropy(""), 0.0);
        assert_eq!(entropy("aaaa"), 0.0);
        assert!((entropy("abcd") - 2.0).abs() < 1e-9);
    }
}
