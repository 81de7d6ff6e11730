//! Cheap, explainable signals read off raw text: is it a shell command, is it code, does it look
//! like a pasted error message, is the prose German or English, is it only a greeting.
//!
//! Every function here is a single linear pass (or bounded to a prefix) so that a 100 KB
//! selection stays far below a millisecond. Nothing here knows about tiers: the classifier in
//! `model` and the rules in `analyze` turn these signals into scores.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Longest prefix (in bytes) of a text that the word-level scanners look at. Signals that need the
/// whole text (line counts, code density) are single passes and read everything.
pub const SCAN_LIMIT: usize = 16 * 1024;

/// Natural language of the prose in a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    German,
    English,
    Mixed,
    /// No prose to judge (a bare command, only code, an emoji).
    Unknown,
}

/// Everything this module reads off one request, computed once and shared by the analyser's
/// rules and the classifier's features.
#[derive(Debug, Clone, PartialEq)]
pub struct Signals {
    pub language: Language,
    pub greeting: bool,
    pub prompt: TextSignals,
    /// `None` when there is no (non-blank) selection.
    pub selection: Option<TextSignals>,
}

/// Signals of one piece of text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextSignals {
    /// Non-empty lines.
    pub lines: usize,
    pub code_density: f32,
    pub shell: bool,
    pub error_markers: u32,
}

impl TextSignals {
    fn read(text: &str) -> TextSignals {
        TextSignals {
            lines: text.lines().filter(|l| !l.trim().is_empty()).count(),
            code_density: code_density(text),
            shell: is_shell_command(text),
            error_markers: error_markers(text),
        }
    }
}

/// Reads all signals of a prompt and its optional selection.
pub fn read(prompt: &str, selection: Option<&str>) -> Signals {
    Signals {
        language: prose_language(prompt),
        greeting: is_only_greeting(prompt),
        prompt: TextSignals::read(prompt),
        selection: selection
            .filter(|s| !s.trim().is_empty())
            .map(TextSignals::read),
    }
}

/// The prose language of `text`, from counts of German and English function words and of
/// umlauts.
pub fn prose_language(text: &str) -> Language {
    let (mut de, mut en) = (0u32, 0u32);
    let mut lower = String::new();
    // The first 80 words settle the language; reading on costs time and changes nothing.
    for word in words(prefix(text, SCAN_LIMIT)).take(80) {
        if word.len() > 13 {
            // Longer than any function word; only umlauts can count.
            de += u32::from(word.contains(['ä', 'ö', 'ü', 'ß', 'Ä', 'Ö', 'Ü']));
            continue;
        }
        lower.clear();
        if word.is_ascii() {
            lower.push_str(word);
            lower.make_ascii_lowercase();
        } else {
            lower.extend(word.chars().flat_map(char::to_lowercase));
        }
        if let Some(&(german, english)) = function_words().get(lower.as_str()) {
            de += u32::from(german);
            en += u32::from(english);
        }
        de += u32::from(!lower.is_ascii() && lower.contains(['ä', 'ö', 'ü', 'ß']));
    }
    match (de, en) {
        (0, 0) => Language::Unknown,
        (d, e) if d >= 2 && e >= 2 && d.min(e) * 3 >= d.max(e) => Language::Mixed,
        (d, e) if d > e => Language::German,
        (d, e) if e > d => Language::English,
        _ => Language::Mixed,
    }
}

fn is_german_word(w: &str) -> bool {
    function_words().get(w).is_some_and(|e| e.0)
}

fn is_english_word(w: &str) -> bool {
    function_words().get(w).is_some_and(|e| e.1)
}

/// German and English function words in one table: word → (is German, is English).
fn function_words() -> &'static HashMap<&'static str, (bool, bool)> {
    static TABLE: OnceLock<HashMap<&'static str, (bool, bool)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = HashMap::new();
        for w in GERMAN_WORDS {
            table.entry(*w).or_insert((false, false)).0 = true;
        }
        for w in ENGLISH_WORDS {
            table.entry(*w).or_insert((false, false)).1 = true;
        }
        table
    })
}

const GERMAN_WORDS: &[&str] = &[
    "der",
    "die",
    "das",
    "und",
    "ist",
    "nicht",
    "ich",
    "du",
    "wie",
    "was",
    "warum",
    "wieso",
    "kannst",
    "können",
    "bitte",
    "mit",
    "für",
    "fuer",
    "auf",
    "ein",
    "eine",
    "einen",
    "einem",
    "dem",
    "den",
    "zu",
    "von",
    "sich",
    "mir",
    "mein",
    "meine",
    "dieser",
    "diese",
    "dieses",
    "wir",
    "unser",
    "unsere",
    "es",
    "auch",
    "noch",
    "schon",
    "aber",
    "oder",
    "wenn",
    "dass",
    "hier",
    "mach",
    "schreib",
    "erkläre",
    "erklär",
    "welche",
    "welcher",
    "soll",
    "sollen",
    "wird",
    "werden",
    "haben",
    "hat",
    "sind",
    "bei",
    "nach",
    "über",
    "ueber",
    "uns",
    "man",
    "kein",
    "keine",
    "gibt",
    "geht",
    "funktioniert",
    "immer",
    "jetzt",
    "danke",
    "hallo",
    "moin",
    "kurz",
    "mal",
    "sehr",
    "zwischen",
    "unterschied",
    "wo",
    "wer",
    "dafür",
    "damit",
    "dazu",
    "gerade",
];

const ENGLISH_WORDS: &[&str] = &[
    "the",
    "is",
    "are",
    "and",
    "to",
    "of",
    "what",
    "how",
    "why",
    "can",
    "you",
    "please",
    "with",
    "for",
    "this",
    "that",
    "it",
    "my",
    "we",
    "our",
    "in",
    "on",
    "a",
    "an",
    "be",
    "do",
    "does",
    "should",
    "would",
    "could",
    "i",
    "me",
    "your",
    "there",
    "when",
    "which",
    "who",
    "from",
    "at",
    "make",
    "write",
    "explain",
    "into",
    "not",
    "but",
    "or",
    "if",
    "have",
    "has",
    "get",
    "about",
    "thanks",
    "hello",
    "hey",
    "just",
    "any",
    "some",
    "way",
    "between",
    "difference",
    "they",
];

/// How much of a text is code, 0..1: the share of non-empty lines that carry code punctuation
/// or start with a code keyword. Prose scores near 0, a source file near 1.
pub fn code_density(text: &str) -> f32 {
    let (mut lines, mut code) = (0u32, 0u32);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        lines += 1;
        if looks_like_code_line(line) {
            code += 1;
        }
    }
    if lines == 0 {
        0.0
    } else {
        code as f32 / lines as f32
    }
}

fn looks_like_code_line(line: &str) -> bool {
    const ENDINGS: &[&str] = &[
        "{", "}", ";", ")", "(", ":", "[", "]", ",", "=>", "->", "\\",
    ];
    const STARTS: &[&str] = &[
        "def ",
        "fn ",
        "pub ",
        "let ",
        "const ",
        "var ",
        "func ",
        "function ",
        "class ",
        "import ",
        "from ",
        "return",
        "if ",
        "if(",
        "for ",
        "for(",
        "while ",
        "#include",
        "package ",
        "use ",
        "impl ",
        "struct ",
        "enum ",
        "type ",
        "interface ",
        "public ",
        "private ",
        "protected ",
        "static ",
        "async ",
        "await ",
        "elif ",
        "else",
        "try",
        "catch",
        "except",
        "} ",
        "//",
        "/*",
        "* ",
        "#!",
        "@",
        "SELECT ",
        "select ",
        "INSERT ",
        "UPDATE ",
        "CREATE ",
        "WITH ",
        "FROM ",
        "WHERE ",
        "local ",
        "end",
        "- name:",
        "RUN ",
        "FROM ",
        "COPY ",
        "ENV ",
        "CMD ",
        "module ",
        "namespace ",
        "template",
        "val ",
        "fun ",
        "print",
        "echo ",
        "export ",
        "require",
        "resource ",
        "<",
    ];
    if ENDINGS.iter().any(|e| line.ends_with(e)) || STARTS.iter().any(|s| line.starts_with(s)) {
        return true;
    }
    // `key: value` / `key = value` config lines and assignments.
    let symbols = line.bytes().filter(|b| CODE_SYMBOL[*b as usize]).count();
    symbols * 6 >= line.len().max(1) || line.contains("::") || line.contains("==")
}

/// Bytes typical of code: `{}()[];=<>|&$_:#*/\"'` and backtick.
static CODE_SYMBOL: [bool; 256] = {
    let mut table = [false; 256];
    let symbols = b"{}()[];=<>|&$_:#*/\\\"'`";
    let mut i = 0;
    while i < symbols.len() {
        table[symbols[i] as usize] = true;
        i += 1;
    }
    table
};

/// Commands common enough that a line starting with one of them is most likely a shell
/// invocation. A bare `git` in prose is rescued by [`is_shell_command`]'s syntax check.
const SHELL_COMMANDS: &[&str] = &[
    "ls",
    "cd",
    "ps",
    "grep",
    "egrep",
    "rg",
    "awk",
    "sed",
    "find",
    "xargs",
    "curl",
    "wget",
    "docker",
    "podman",
    "kubectl",
    "helm",
    "git",
    "tar",
    "zip",
    "unzip",
    "gzip",
    "chmod",
    "chown",
    "sudo",
    "ssh",
    "scp",
    "rsync",
    "systemctl",
    "journalctl",
    "npm",
    "npx",
    "yarn",
    "pnpm",
    "pip",
    "pip3",
    "cargo",
    "make",
    "cat",
    "head",
    "tail",
    "sort",
    "uniq",
    "wc",
    "cut",
    "tr",
    "tee",
    "echo",
    "printf",
    "export",
    "kill",
    "pkill",
    "pgrep",
    "top",
    "htop",
    "df",
    "du",
    "free",
    "mount",
    "umount",
    "ln",
    "cp",
    "mv",
    "rm",
    "mkdir",
    "rmdir",
    "touch",
    "strace",
    "ltrace",
    "lsof",
    "netstat",
    "ss",
    "ip",
    "ifconfig",
    "ping",
    "dig",
    "nslookup",
    "nc",
    "ncat",
    "socat",
    "openssl",
    "tcpdump",
    "iptables",
    "nft",
    "ufw",
    "crontab",
    "apt",
    "apt-get",
    "dnf",
    "yum",
    "brew",
    "pacman",
    "python",
    "python3",
    "node",
    "go",
    "java",
    "mvn",
    "gradle",
    "terraform",
    "ansible",
    "ansible-playbook",
    "aws",
    "gcloud",
    "az",
    "jq",
    "yq",
    "xxd",
    "od",
    "dd",
    "nohup",
    "watch",
    "time",
    "env",
    "for",
    "while",
    "timeout",
    "nice",
    "tmux",
    "screen",
    "less",
    "more",
    "diff",
    "patch",
    "comm",
    "join",
    "paste",
    "split",
    "sha256sum",
    "md5sum",
    "base64",
    "gpg",
    "psql",
    "mysql",
    "redis-cli",
    "mongosh",
    "sqlite3",
    "ffmpeg",
    "convert",
    "parallel",
    "perl",
    "ruby",
    "bash",
    "sh",
    "zsh",
    "source",
    "set",
    "trap",
    "exec",
    "eval",
    "test",
    "stat",
    "file",
    "which",
    "whereis",
    "locate",
    "readlink",
    "realpath",
    "basename",
    "dirname",
    "date",
    "uname",
    "id",
    "whoami",
    "useradd",
    "usermod",
    "passwd",
    "chgrp",
    "umask",
    "ulimit",
    "sysctl",
    "dmesg",
    "lsblk",
    "fdisk",
    "mkfs",
    "blkid",
    "vmstat",
    "iostat",
    "sar",
    "perf",
    "gdb",
    "valgrind",
    "objdump",
    "nm",
    "ldd",
    "readelf",
    "strings",
    "hexdump",
    "column",
    "fzf",
    "fd",
    "bat",
    "exa",
    "eza",
    "tree",
    "nmap",
    "traceroute",
    "mtr",
    "iperf3",
    "certbot",
    "nginx",
    "sqlcmd",
    "ollama",
    "kubectx",
    "k9s",
    "minikube",
    "kind",
    "skopeo",
    "buildah",
    "pv",
    "bc",
];

/// Whether `text` is a shell command or pipeline (as opposed to prose that mentions one).
///
/// A line counts when it starts with a known command (after an optional `$ ` prompt, `sudo` or
/// variable assignments) and carries shell syntax: flags, pipes, redirections, paths or
/// substitutions. A few prose words after a separator (`— was macht das?`) are tolerated.
pub fn is_shell_command(text: &str) -> bool {
    let text = text.trim();
    if text.is_empty() || text.len() > 4096 {
        return false;
    }
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if lines.is_empty() || lines.len() > 12 {
        return false;
    }
    let shell_lines = lines.iter().filter(|l| is_shell_line(l)).count();
    shell_lines * 2 > lines.len()
}

/// Whether one line is a shell invocation.
pub fn is_shell_line(line: &str) -> bool {
    let mut line = line.trim();
    for prompt in ["$ ", "# ", "> ", "% "] {
        if let Some(rest) = line.strip_prefix(prompt) {
            line = rest.trim_start();
        }
    }
    // Ignore trailing prose after a dash ("rsync -avz … — ist das gefährlich?").
    let command = line
        .split(" — ")
        .next()
        .unwrap_or(line)
        .split(" -- ")
        .next()
        .unwrap_or(line);
    let mut tokens = command.split_whitespace().peekable();
    // Skip `VAR=value` prefixes and `sudo`.
    while let Some(t) = tokens.peek() {
        if *t == "sudo" || (t.contains('=') && !t.starts_with('-') && !t.starts_with('=')) {
            tokens.next();
        } else {
            break;
        }
    }
    let Some(first) = tokens.next() else {
        return false;
    };
    let first_is_command = SHELL_COMMANDS.contains(&first)
        || first.starts_with("./")
        || (first.starts_with('/') && first.len() > 1 && !first.contains(' '));
    if !first_is_command {
        return false;
    }
    let rest: Vec<&str> = tokens.collect();
    if rest.is_empty() {
        // A bare command word: only paths (`./build.sh`) count; `git` alone is a word.
        return first.contains('/');
    }
    let syntax = rest.iter().any(|t| {
        t.starts_with('-')
            || t.contains('/')
            || t.contains('|')
            || t.contains('>')
            || t.contains('<')
            || t.contains("$(")
            || t.contains('$')
            || t.contains('*')
            || t.contains('\'')
            || t.contains('"')
            || t.contains('=')
            || *t == "&&"
            || *t == ";"
    });
    // Prose check: `find me a good book` starts with a command word but reads as English.
    let prose_words = rest
        .iter()
        .filter(|t| {
            let w = t.to_lowercase();
            is_english_word(&w) || is_german_word(&w)
        })
        .count();
    let sentence_words = rest
        .iter()
        .filter(|t| SENTENCE_MARKERS.contains(&t.to_lowercase().as_str()))
        .count();
    syntax && prose_words * 3 <= rest.len()
        || (!syntax && rest.len() <= 3 && sentence_words == 0 && is_subcommand_form(first, &rest))
}

/// Words that make `docker is cool` a sentence rather than `docker ps`.
const SENTENCE_MARKERS: &[&str] = &[
    "is", "are", "the", "a", "an", "my", "your", "ist", "sind", "der", "die", "das", "ein", "eine",
    "mein", "was", "what", "how", "why", "wie", "so", "very", "sehr", "and", "und", "not", "nicht",
    "i", "ich", "it", "es", "me", "mir",
];

/// `git status`, `docker ps`, `kubectl get pods`: a tool and a lowercase subcommand.
fn is_subcommand_form(first: &str, rest: &[&str]) -> bool {
    const TOOLS: &[&str] = &[
        "git",
        "docker",
        "podman",
        "kubectl",
        "helm",
        "cargo",
        "npm",
        "yarn",
        "pnpm",
        "systemctl",
        "terraform",
        "go",
        "pip",
        "apt",
        "apt-get",
        "brew",
        "ollama",
        "make",
        "gradle",
        "mvn",
    ];
    TOOLS.contains(&first)
        && rest.iter().all(|t| {
            t.chars()
                .all(|c| c.is_ascii_lowercase() || c == '-' || c == ':')
        })
}

/// How strongly `text` looks like pasted compiler, linker or runtime output: the number of
/// distinct error markers found in its first [`SCAN_LIMIT`] bytes, in one pass.
pub fn error_markers(text: &str) -> u32 {
    static MATCHER: OnceLock<Option<aho_corasick::AhoCorasick>> = OnceLock::new();
    let Some(matcher) = MATCHER.get_or_init(|| aho_corasick::AhoCorasick::new(ERROR_MARKERS).ok())
    else {
        return 0;
    };
    let mut seen = [false; ERROR_MARKERS.len()];
    for m in matcher.find_overlapping_iter(prefix(text, SCAN_LIMIT)) {
        seen[m.pattern().as_usize()] = true;
    }
    seen.iter().filter(|s| **s).count() as u32
}

const ERROR_MARKERS: &[&str] = &[
    "error:",
    "error[",
    "error ts",
    "error cs",
    "Error:",
    "ERROR",
    "Exception",
    "exception",
    "Traceback (most recent call last)",
    "panicked at",
    "Segmentation fault",
    "segfault",
    "core dumped",
    "undefined reference",
    "npm ERR!",
    "fatal:",
    "FATAL",
    "No such file",
    "Permission denied",
    "command not found",
    "ModuleNotFoundError",
    "ImportError",
    "NullPointerException",
    "TypeError",
    "SyntaxError",
    "ValueError",
    "KeyError",
    "AttributeError",
    "ReferenceError",
    "unresolved import",
    "mismatched types",
    "CrashLoopBackOff",
    "OOMKilled",
    "exit code",
    "exit status",
    "Caused by:",
    "    at ",
    "  File \"",
    "failed to",
    "Failed to",
    "cannot find",
    "Cannot find",
    "not found",
    "warning:",
    "E: ",
    "ERR_",
    "errno",
    "EACCES",
    "ECONNREFUSED",
    "ENOENT",
    "denied",
    "stack trace",
    "Stack trace",
    "unexpected token",
    "Unexpected token",
    "E0",
    "is not assignable",
    "cannot borrow",
    "does not live long enough",
    "borrowed value",
    "collect2:",
    "ld returned",
    "Killed",
    "Aborted",
    "deadlock detected",
    "timed out",
    "Uncaught",
    "unhandled",
    "Unhandled",
    "line ",
    ":in `",
    "raise ",
    "Errno",
];

/// Whether the prompt is nothing but a greeting, thanks or other small talk.
pub fn is_only_greeting(prompt: &str) -> bool {
    if prompt.len() > 160 {
        return false;
    }
    const PHRASES: &[&str] = &[
        "hi",
        "hello",
        "hey",
        "hallo",
        "moin",
        "servus",
        "gruezi",
        "grüezi",
        "good morning",
        "guten morgen",
        "guten tag",
        "good evening",
        "guten abend",
        "thanks",
        "thank you",
        "thx",
        "danke",
        "vielen dank",
        "danke schön",
        "danke schoen",
        "merci",
        "cheers",
        "bye",
        "tschüss",
        "tschuess",
        "ciao",
        "ok",
        "okay",
        "cool",
        "super",
        "great",
        "nice",
        "perfect",
        "perfekt",
        "top",
        "yo",
        "sup",
        "gn8",
        "good night",
        "gute nacht",
        "na",
        "wie gehts",
        "wie geht's",
        "how are you",
        "what's up",
        "whats up",
        "morgen",
        "tag",
        "n abend",
    ];
    let cleaned: String = prompt
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' || c.is_whitespace() {
                c.to_lowercase().next().unwrap_or(c)
            } else {
                ' '
            }
        })
        .collect();
    let cleaned = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if cleaned.is_empty() {
        // Only emoji (👍, 🙏) is thanks; bare punctuation ("?", "...") asks what something means.
        return prompt.chars().count() <= 16
            && !prompt.contains('?')
            && prompt.chars().any(|c| !c.is_ascii() && !c.is_whitespace());
    }
    if cleaned.split(' ').count() > 8 {
        return false;
    }
    const FILLER: &[&str] = &[
        "so",
        "much",
        "a",
        "lot",
        "again",
        "there",
        "all",
        "you",
        "dir",
        "euch",
        "for",
        "the",
        "help",
        "hilfe",
        "für",
        "fuer",
        "die",
        "very",
        "mega",
        "echt",
        "really",
        "man",
        "mate",
        "dude",
        "triage",
        "bot",
        "zusammen",
        "leute",
        "folks",
        "team",
        "erstmal",
        "first",
        "and",
        "und",
        "auch",
        "dear",
        "my",
        "friend",
        "lieber",
        "liebe",
        "bro",
        "buddy",
        "wow",
        "awesome",
        "klasse",
        "toll",
        "genial",
        "prima",
        "das",
        "war",
        "was",
        "it",
        "that",
        "works",
        "klappt",
        "funktioniert",
        "jetzt",
        "now",
        "hilfreich",
        "helpful",
        "explained",
        "erklärt",
        "erklaert",
        "gut",
        "good",
        "hat",
        "geklappt",
        "that's",
        "thats",
        "today",
        "heute",
        "bis",
        "später",
        "spaeter",
        "later",
        "see",
        "morgen",
        "s",
        "it's",
        "its",
    ];
    // Walk the words: every one must belong to a greeting phrase (longest match first) or be
    // filler ("thanks a lot, that works now").
    let words: Vec<&str> = cleaned.split(' ').collect();
    let mut i = 0;
    'words: while i < words.len() {
        for take in (1..=3).rev() {
            if i + take <= words.len() && PHRASES.contains(&words[i..i + take].join(" ").as_str()) {
                i += take;
                continue 'words;
            }
        }
        if !FILLER.contains(&words[i]) {
            return false;
        }
        i += 1;
    }
    // Filler alone ("for the") is not a greeting.
    words.iter().any(|w| !FILLER.contains(w))
}

/// Alphanumeric words of `text`, in order (apostrophes and hyphens split words).
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// The longest prefix of `text` of at most `max` bytes that ends on a char boundary.
pub fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Lowercases and folds German umlauts and ß, so that `Größe` and `groesse` meet, and a
/// typographic apostrophe to `'`, so that "what’s" reads like "what's".
pub fn fold_case(text: &str, out: &mut String) {
    out.clear();
    out.reserve(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        // Prompts are mostly ASCII: copy each ASCII run at once and lowercase it in place,
        // which is several times cheaper than going through `char::to_lowercase` per letter.
        let ascii = rest
            .bytes()
            .position(|b| !b.is_ascii())
            .unwrap_or(rest.len());
        let start = out.len();
        out.push_str(&rest[..ascii]);
        out[start..].make_ascii_lowercase();
        rest = &rest[ascii..];
        let Some(c) = rest.chars().next() else {
            break;
        };
        rest = &rest[c.len_utf8()..];
        match c {
            'ä' | 'Ä' => out.push_str("ae"),
            'ö' | 'Ö' => out.push_str("oe"),
            'ü' | 'Ü' => out.push_str("ue"),
            'ß' => out.push_str("ss"),
            '’' => out.push('\''),
            c => out.extend(c.to_lowercase()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_commands_and_pipelines() {
        for text in [
            "ps aux | grep -v grep | grep -i nginx | awk '{print $2}'",
            "du -sh * .[^.]* 2>/dev/null | sort -h | tail -20",
            "lsof -nP -iTCP -sTCP:LISTEN",
            "$ find . -name '*.log' -mtime +7 -print0 | xargs -0 gzip -9",
            "sudo systemctl restart nginx",
            "git status",
            "kubectl get pods",
            "rsync -avz --delete ./dist/ deploy@web01:/var/www/app/ — ist das gefährlich?",
            "./build.sh",
            "FOO=1 make -j8 test",
        ] {
            assert!(is_shell_command(text), "should be shell: {text}");
        }
    }

    #[test]
    fn prose_is_not_shell() {
        for text in [
            "find me a good book about the sea",
            "git is a nice tool, how do I learn it?",
            "make it faster please",
            "echo chamber effects in social media",
            "My python is not eating",
            "Was ist ein Mutex?",
            "",
            "top 10 reasons to learn rust",
            "docker is cool",
        ] {
            assert!(!is_shell_command(text), "should not be shell: {text}");
        }
    }

    #[test]
    fn languages() {
        assert_eq!(
            prose_language("Was ist der Unterschied zwischen TCP und UDP?"),
            Language::German
        );
        assert_eq!(
            prose_language("What is the difference between TCP and UDP?"),
            Language::English
        );
        assert_eq!(
            prose_language(
                "kannst du das in idiomatic Go umschreiben? it is from a Java dev and it is old"
            ),
            Language::Mixed
        );
        assert_eq!(prose_language("ls -la"), Language::Unknown);
        assert_eq!(prose_language("Größe"), Language::German);
    }

    #[test]
    fn code_density_separates_code_from_prose() {
        let code = "def f(x):\n    return x * 2\n\nclass A:\n    pass\n";
        let prose = "The quick brown fox jumps over the lazy dog.\nIt was a sunny day.\n";
        assert!(code_density(code) > 0.6, "{}", code_density(code));
        assert!(code_density(prose) < 0.3, "{}", code_density(prose));
        assert_eq!(code_density(""), 0.0);
    }

    #[test]
    fn error_shapes() {
        assert!(
            error_markers(
                "Traceback (most recent call last):\n  File \"a.py\", line 3\nKeyError: 'x'"
            ) >= 3
        );
        assert!(error_markers("/usr/bin/ld: undefined reference to `sqlite3_open'\ncollect2: error: ld returned 1 exit status") >= 3);
        assert_eq!(error_markers("How do I bake bread?"), 0);
    }

    #[test]
    fn greetings() {
        for text in [
            "hi",
            "Guten Morgen ☀️",
            "Danke, super erklärt! 🙏",
            "thanks a lot!",
            "👋",
            "moin moin",
        ] {
            assert!(is_only_greeting(text), "greeting: {text}");
        }
        for text in [
            "hi, can you write a bash script that backs up /etc?",
            "danke, und jetzt als async?",
            "how do I exit vim",
            "for the",
            "?",
            "...",
            "🤔?",
        ] {
            assert!(!is_only_greeting(text), "not only a greeting: {text}");
        }
    }

    #[test]
    fn fold_case_matches_the_char_by_char_fold() {
        let mut out = String::new();
        fold_case("Größe ÄNDERN: what’s up, İstanbul ﬃ OK", &mut out);
        assert_eq!(out, "groesse aendern: what's up, i\u{307}stanbul ﬃ ok");
        fold_case("", &mut out);
        assert_eq!(out, "");
        fold_case("ÜBER", &mut out);
        assert_eq!(out, "ueber");
    }

    #[test]
    fn prefix_respects_char_boundaries() {
        assert_eq!(prefix("äöü", 3), "ä");
        assert_eq!(prefix("abc", 10), "abc");
    }
}
