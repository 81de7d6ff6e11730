//! Rubric concepts: for each kind of request the routing rubric names (a design question, a
//! proof, a security audit, rewording given text, a definition, a command to construct …), a
//! short list of cue words in English and German, and a count of how many of them a prompt
//! uses.
//!
//! The classifier's word and n-gram features only know the words of its training data; these
//! counts let a weight learned from `threat model` also speak for `Bedrohungsmodell`, and one
//! learned from `umformulieren` for `rephrase`, whoever wrote the request. The lists follow
//! `../shared/routing/RUBRIC.md`'s categories, not any one data set. Pure and one pass (an
//! Aho–Corasick scan of the folded prompt prefix); what the counts mean is learned in `model`.

use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};

/// A rubric concept. The order is the index into [`Concepts::counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concept {
    /// Architecture and design of a system or API, choosing between technologies.
    Design,
    /// Stated scale and operating constraints: users, requests per second, regions, 24/7.
    Scale,
    /// Distributed systems: replication, consensus, consistency, exactly-once.
    Distributed,
    /// Concurrency correctness: deadlocks, races, memory ordering, linearizability.
    Concurrency,
    /// Root-cause work: why, intermittent, only in production, grows until, drifts.
    Diagnosis,
    /// Security audits, threat models, attacks, leaked credentials.
    Security,
    /// Proofs, derivations, correctness and complexity arguments.
    Proof,
    /// Migration, rollout and strategy plans.
    Plan,
    /// Long-form technical writing: design docs, RFCs, ADRs, post-mortems, blog posts.
    LongForm,
    /// Reviewing for design problems or critique.
    Review,
    /// Writing, completing or editing code: functions, classes, tests, refactoring.
    CodeTask,
    /// Constructing a command, query, regex or config file.
    Construct,
    /// Explaining given code or a given command.
    ExplainCode,
    /// Error messages and failures to interpret.
    Failure,
    /// Programming languages and code-level nouns, for follow-ups ("same but in Go").
    Language,
    /// Rewording, translating, shortening, proofreading or summarising given text.
    RewordText,
    /// Short definitions and facts: what is, stands for, default, difference between.
    Definition,
    /// Small talk, thanks, apologies, questions about the assistant.
    SmallTalk,
    /// A follow-up in a conversation about code: "same but in Go", "now add tests".
    FollowUp,
    /// Everyday life, the things technical words also name (a snake, a party, a real mouse).
    Everyday,
    /// Text about a code change: a commit message, changelog entry or pull-request description
    /// (writing one for a described change is coder work, rewording a written one is not).
    ChangeNote,
}

pub const COUNT: usize = 21;

/// How many distinct cue words of each concept a prompt uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Concepts {
    pub counts: [u8; COUNT],
}

impl Concepts {
    pub fn get(&self, concept: Concept) -> u8 {
        self.counts[concept as usize]
    }
}

/// Prefix of the prompt scanned for cues: the request itself is at its start; a long paste
/// after it is evidence, not instruction.
const SCAN: usize = 2048;

/// Cue words: lowercase, umlauts folded (`ä` → `ae`, `ß` → `ss`), matched at the start of a
/// word, so `sicherheit` also finds `sicherheitstechnisch`. A leading `~` lets the cue start
/// inside a word too, for German compounds whose concept is the tail (`Datenbankmigration`).
#[rustfmt::skip]
const CUES: &[(Concept, &[&str])] = &[
    (Concept::Design, &[
        "architect", "architektur", "design", "entwurf", "entwerf", "trade-off", "tradeoff",
        "trade off", "abwaeg", "pros and cons", "vor- und nachteil", "vor und nachteil",
        "which would you", "what would you choose", "would you use", "should we use",
        "should we go", "sollten wir", "sollen wir", "welche wuerdest", "wuerdest du",
        "how would you build", "how would you design", "wie wuerdest du", "wie baue ich",
        "wie bauen wir", "how should we", "how do we structure", "system for", "platform",
        "plattform", "scalab", "skalier", "~aufbauen", "api design", "schema design", "data model",
        "datenmodell", "monolith", "microservice", "event-driven", "event sourcing", "cqrs",
        "multi-tenant", "mandantenf", "high availability", "hochverfueg", "failover",
        "disaster recovery", "structure the", "strukturier", "what parts", "which parts",
        "welche teile", "welche komponenten", "talk to each other", "miteinander", "should i use",
        "should i go with", "sollte ich", "~ vs ", "versus", "oder lieber", "or should",
        // In everyday words: how the pieces should fit, what the user would do in one's place.
        "fit together", "hang together", "zusammenspiel", "whole setup", "the whole thing",
        "das ganze system", "right way to", "best way to set up", "how should i set up",
        "how should i organi", "wie richte ich am besten", "was wuerdest du", "what would you do",
        "in my place", "in my shoes", "an meiner stelle", "my options", "meine optionen",
        "welche moeglichkeiten", "long term", "long-term", "langfristig", "future-proof",
        "zukunftssicher",
    ]),
    (Concept::Scale, &[
        "million", "mio", "mrd", "milliard", "billion", "rps", "req/s", "qps",
        "requests per second", "anfragen pro sekunde", "per second", "pro sekunde", "~users",
        "~nutzer", "~kunden", "customers", "regions", "regionen", "rechenzentren", "data center",
        "datacenter", "24/7", "zero-downtime", "zero downtime", "without downtime",
        "ohne downtime", "no downtime", "terabyte", "petabyte", "tb/", "at scale", "~teams",
        "developers", "entwickler",
    ]),
    (Concept::Distributed, &[
        "distributed", "verteilt", "consensus", "konsens", "leader election", "raft", "paxos",
        "replica", "replikat", "replikation", "partition", "sharding", "shard", "consisten",
        "konsisten", "eventual", "exactly once", "exactly-once", "genau einmal", "at-least-once",
        "idempoten", "crdt", "vector clock", "split brain", "split-brain", "quorum",
        "across services", "zwischen services", "multiple services", "two services",
        "zwei services", "out of sync", "~synchron", "outbox", "saga", "two-phase", "2pc",
        "clock skew",
    ]),
    (Concept::Concurrency, &[
        "deadlock", "verklemm", "race", "data race", "livelock", "starvation", "linearizab",
        "linearisier", "memory order", "ordering", "atomic", "lock-free", "lockfree", "lock free",
        "lockfrei", "wait-free", "interleav", "nebenlaeuf", "concurren", "thread-safe",
        "threadsafe", "thread safe", "threadsicher", "happens-before", "mutual exclusion",
        "gegenseitig", "isolation level", "write skew", "lost update", "serializab",
        "read committed", "repeatable read",
    ]),
    (Concept::Diagnosis, &[
        "root cause", "root-cause", "ursache", "why does", "why do", "why is", "warum", "wieso",
        "weshalb", "intermittent", "sporadisch", "sometimes", "manchmal", "occasionally",
        "once a day", "only in prod", "nur in prod", "in production", "under load", "unter last",
        "grows", "growing", "waechst", "drift", "leak", "collapse", "einbruch", "bricht ein",
        "degrad", "slower and slower", "immer langsamer", "p99", "p95", "tail latency", "latenz",
        "latency", "spikes", "where would you start", "wo fange ich an", "how do i track",
        "how do i find out", "wie finde ich", "wie finden wir", "track this down", "investigat",
        "untersuch", "mechanism", "mechanismus", "figure out why", "nach jedem", "after every",
        "after each", "since the", "seit dem", "seit der",
        // The same work in everyday words: a symptom that comes and goes, a pattern in time
        // or load, fixes already tried.
        "randomly", "at random", "now and then", "from time to time", "after a while",
        "after a few", "after an hour", "after a couple", "only when", "only if", "only on",
        "every evening", "every monday", "each night", "keeps crashing", "keeps freezing",
        "keeps dropping", "keeps restarting", "gets slow", "super slow", "really slow",
        "slows down", "grinds to a halt", "freezes", "stops responding", "stop responding",
        "unresponsive", "fixes it for", "what's going on", "whats going on", "what is going on",
        "what's causing", "whats causing", "what is causing", "what causes", "figure out what",
        "work out what", "find out what", "bottom of this", "no idea why",
        "for weeks", "for days", "ever since", "out of nowhere", "was fine", "fine until",
        "runs fine", "works fine", "tried everything", "already tried", "already swapped",
        "already replaced", "zufaellig", "ab und zu", "hin und wieder", "immer wieder",
        "nach ein paar", "nach einer weile", "nach einiger zeit", "nur wenn", "nur bei",
        "nur abends", "jeden abend", "jeden montag", "nachts", "haengt sich auf", "friert ein",
        "wird langsam", "total langsam", "super langsam", "reagiert nicht mehr", "neustart hilft",
        "was da los ist", "was ist da los", "woran kann das liegen", "keine ahnung warum",
        "seit tagen", "seit wochen", "lief bisher", "lief vorher", "lief problemlos",
        "schon alles probiert", "schon getauscht",
    ]),
    (Concept::Security, &[
        "security", "secure", "sicherheit", "sicher ", "threat", "bedrohung", "attack", "angriff",
        "angreif", "audit", "vulnerab", "schwachstell", "exploit", "leaked", "leak of", "geleakt",
        "least privilege", "privilege", "pentest", "penetration", "owasp", "xss", "csrf",
        "injection", "sandbox", "untrusted", "nicht vertrauensw", "key rotation",
        "schluesselrotation", "rotation", "credential", "zugangsdaten", "encrypt", "verschluessel",
        "authentifizier", "authoriz", "autorisier", "zero trust", "compliance", "dsgvo", "gdpr",
        "breach", "compromis", "kompromittiert", "dangerous", "gefaehrlich", "abuse", "missbrauch",
        "malicious", "boeswillig", "hacked", "gehackt", "api key", "api-key", "aws key",
        "secret key", "keys were", "schluessel lag",
        // In everyday words: someone got in, who still has access, is this safe.
        "got in", "get in", "break in", "broke in", "hack", "ddos", "on purpose", "protect",
        "what could go wrong", "is this safe", "is it safe", "safe way", "still has access",
        "still have access", "former employee", "ex-employee", "someone else's",
        "someone elses", "phishing", "ransomware", "virus", "trojan", "ehemalige", "noch zugriff",
        "zugriff auf alles", "reingekommen", "eingebrochen", "absichtlich", "schuetz", "absicher",
        "ist das sicher", "was kann schiefgehen", "was kann da passieren", "fremde",
    ]),
    (Concept::Proof, &[
        "prove", "proof", "beweis", "herleit", "derive", "derivation", "argue", "argument",
        "begruend", "justify", "correctness", "korrektheit", "correct for all",
        "fuer alle eingaben", "invariant", "np-hard", "np-schwer", "np-complete", "np-vollst",
        "np hard", "complexity", "komplexitaet", "laufzeit", "amortized", "amortis", "lower bound",
        "upper bound", "big-o", "o(n", "o(log", "theorem", "lemma", "induction", "induktion",
        "formal", "terminat", "optimal",
    ]),
    (Concept::Plan, &[
        "migrat", "migrier", "~migration", "rollout", "roll out", "roll-out", "ausroll",
        "strategy", "strategie", "plan", "vorgehen", "roadmap", "phased", "in phasen",
        "schrittweise", "step by step plan", "cutover", "canary", "rollback", "zurueckroll",
        "upgrade path", "transition", "umstellung", "umstieg", "switch from", "wechsel von",
        "move from", "moving from", "consolidat", "konsolidier",
        // In everyday words: moving everything to a new machine, keeping things running.
        "move everything", "moving everything", "umziehen", "new server", "neuen server",
        "new pc", "neuen rechner", "without losing", "backup", "back up",
        "datensicherung", "sicherung",
    ]),
    (Concept::LongForm, &[
        "blog post", "blogpost", "blog-post", "post-mortem", "postmortem", "post mortem", "rfc",
        "adr", "design doc", "designdokument", "design-dokument", "whitepaper", "white paper",
        "strategy doc", "strategiepapier", "konzept", "essay", "artikel", "article", "write-up",
        "writeup", "report", "bericht", "incident report", "~word ", "~woerter", "pages", "seiten",
        "proposal", "vorschlag", "onboarding guide", "documentation for", "dokumentation fuer",
    ]),
    (Concept::Review, &[
        "review", "critique", "kritik", "kritisch", "poke holes", "tear apart",
        "what's wrong with", "whats wrong with", "was ist falsch", "problems with", "probleme mit",
        "design problems", "designprobleme", "smell", "code smell", "maintainab", "wartbar",
        "bewerte", "bewertung", "evaluate", "assess", "einschaetz", "feedback on", "feedback zu",
        "anmerkungen", "gegenlesen",
    ]),
    (Concept::CodeTask, &[
        "function", "funktion", "method", "methode", "class", "klasse", "struct", "enum",
        "interface", "module", "modul", "script", "skript", "snippet", "implement", "implementier",
        "refactor", "refaktor", "umbau", "rename", "umbenenn", "optimi", "convert", "konvertier",
        "umwandel", "unit test", "unittest", "tests", "test for", "docstring", "doc comment",
        "type hint", "typing", "parse", "parser", "pars", "endpoint", "handler", "component",
        "komponente", "loop", "schleife", "variable", "add a flag", "flag", "argument parsing",
        "edge case", "randfall", "empty list", "leere liste", "null check", "one-liner",
        "one liner", "einzeiler", "write a", "write me", "schreib", "code", "compile", "kompilier",
        "bug", "fix", "beheb",
    ]),
    (Concept::Construct, &[
        "command", "befehl", "kommando", "cli", "one-liner", "regex", "regular expression",
        "regulaerer ausdruck", "sql", "query", "abfrage", "terraform", "kubectl", "helm",
        "dockerfile", "docker-compose", "compose file", "yaml", "toml", "json schema", "config",
        "konfig", "nginx", "systemd", "cron", "crontab", "makefile", "ffmpeg", "awk", "sed ", "jq",
        "grep", "git ", "github action", "workflow", "pipeline file", "ci job", "alert rule",
        "alerting rule", "prometheus", "promql", "ansible", "powershell", "excel formula",
        "formel", "formula", "spalte", "zelle", "column", "spreadsheet", "tabellenblatt",
        "sverweis", "vlookup", "xlookup", "countif", "zaehlenwenn", "sumif", "summewenn", "every morning", "every day at", "every night", "every hour",
        "jeden morgen", "jeden tag um", "jede nacht", "jede stunde", "schedule", "zeitgesteuert",
        "run automatically", "automatisch ausf", "on startup", "beim start",
    ]),
    (Concept::ExplainCode, &[
        "what does this", "what does that", "what's this doing", "whats this doing",
        "what is this doing", "was macht", "was tut", "explain", "erklaer", "walk me through",
        "was bedeutet diese zeile", "this line", "diese zeile", "line ", "zeile ", "what do",
        "mean here", "heisst das hier", "doing here", "macht das hier", "how does this work",
        "wie funktioniert das",
    ]),
    (Concept::Failure, &[
        "error", "fehler", "exception", "warning", "warnung", "compiler", "complain", "meckert",
        "beschwert", "stack trace", "stacktrace", "traceback", "segfault", "segmentation", "panic",
        "crash", "absturz", "stuerzt", "undefined", "cannot", "can't find", "not found",
        "nicht gefunden", "failed", "fails", "schlaegt fehl", "broken", "kaputt", "doesn't work",
        "doesnt work", "funktioniert nicht", "geht nicht", "won't build", "build fails",
        "exit code", "oomkilled", "timeout", "ora-", "sqlstate", "errno",
    ]),
    (Concept::Language, &[
        "rust", "golang", "go ", "in go", "python", "java", "kotlin", "typescript", "javascript",
        "swift", "c++", "c#", "php", "ruby", "scala", "haskell", "elixir", "bash", "zsh", "lua",
        "dart", "html", "css", "vba", "excel", "react", "vue", "django", "flask", "spring", "pandas", "numpy", "node", "deno",
        "wasm",
    ]),
    (Concept::RewordText, &[
        "reword", "rephrase", "rewrite", "re-write", "umformulier", "formulier", "umschreib",
        "shorten", "shorter", "kuerzer", "kuerz", "make it short", "translate", "translation",
        "uebersetz", "auf englisch", "ins englische", "ins deutsche", "auf deutsch",
        "into english", "into german", "in english", "proofread", "spell", "rechtschreib", "typo",
        "tippfehler", "grammar", "grammatik", "tone", "the tone", "ton ", "polish", "politer",
        "more polite", "hoeflicher", "freundlicher", "professioneller", "more professional",
        "less salesy", "less formal", "more formal", "foermlicher", "formeller", "lockerer",
        "summar", "zusammenfass", "tl;dr", "tldr", "klingt", "sounds", "wording", "phrasing",
        "cringe", "catchier", "knackiger", "smoother", "fluessiger", "flows better",
        "reads better", "liest sich", "glaett", "stil ", "style of", "schreibweise", "spelling",
        "spelled",
    ]),
    (Concept::Definition, &[
        "what is", "what's a", "whats a", "what is a", "what are", "was ist", "was sind",
        "was heisst", "what does", "stand for", "stands for", "steht fuer", "abbreviation",
        "abkuerzung", "meaning of", "bedeutet", "bedeutung", "define", "definition",
        "difference between", "unterschied zwischen", "der unterschied", "default", "standardport",
        "standard-port", "one line", "one sentence", "in einem satz", "kurz erklaert", "briefly",
        "in short", "quick question", "kurze frage", "eli5", "in simple terms",
        "in einfachen worten", "is it true", "stimmt es", "who invented", "wer hat", "when was",
        "wann wurde", "how many", "wie viele", "is it",
    ]),
    (Concept::SmallTalk, &[
        "thanks", "thank you", "thx", "dank", "vielen dank", "herzlichen dank", "merci", "cheers",
        "sorry", "entschuldig", "never mind", "nevermind", "nvm", "egal", "vergiss es",
        "hat sich erledigt", "erledigt", "figured it out", "got it", "works now", "laeuft",
        "klappt", "funktioniert jetzt", "wrong window", "falsches fenster", "lol", "haha", "hehe",
        "how are you", "wie geht", "who are you", "wer bist du", "what are you", "was bist du",
        "which model", "welches modell", "are you", "bist du", "you're", "du bist", "your name",
        "dein name", "good job", "gut gemacht", "great", "awesome", "nice", "cool", "have a nice",
        "schoenen", "weekend", "wochenende", "feierabend", "this assistant", "assistent",
        "run locally", "lokal laeuft", "leave the building", "encourag", "aufmunter",
        "cheer me up", "first time using", "type in here", "hier eintippen",
    ]),
    (Concept::FollowUp, &[
        "same thing", "same but", "the same in", "same for", "dasselbe", "das gleiche",
        "das selbe", "das ganze", "jetzt noch", "nun noch", "now add", "now make", "now write",
        "now do", "now the", "and now", "und jetzt", "und nun", "also add", "also handle",
        "can you also", "could you also", "auch noch", "noch tests", "as well", "instead of",
        "stattdessen", "anstatt", "statt ", "but async", "but with", "aber mit", "aber als",
        "one more", "noch eine", "noch ein", "next one", "naechste", "again but", "nochmal",
        "dieselbe", "the same solution", "same solution", "same code", "geht das auch",
        "can it also", "does it also", "what about", "und wenn", "and if",
    ]),
    (Concept::Everyday, &[
        "snake", "schlange", "pet", "haustier", "dog", "hund", "cat ", "katze", "mouse in",
        "maus in", "garden", "garten", "plant", "pflanze", "roses", "rosen", "recipe", "rezept",
        "cook", "kochen", "bake", "backen", "party", "birthday", "geburtstag", "gift", "geschenk",
        "vacation", "urlaub", "holiday", "weather", "wetter", "apartment", "wohnung", "umzug",
        "moving house", "kids", "kinder", "wedding", "hochzeit", "beach", "strand", "shell on",
        "muschel", "mug", "tasse", "t-shirt", "neighbour", "neighbor", "nachbar", "football",
        "fussball", "music", "musik", "movie", "film", "book", "buch", "car ", "auto ", "bike",
        "fahrrad", "doctor", "arzt", "sleep", "schlaf", "tired", "muede", "coffee", "kaffee",
        "zoo", "tierpark", "ausflug", "trip", "feier",
    ]),
    (Concept::ChangeNote, &[
        "commit message", "commit-message", "commit msg", "commitmessage", "commit-nachricht",
        "commit nachricht", "commit text", "changelog", "change log", "release notes",
        "release-notes", "versionshinweis", "pr description", "pr-beschreibung",
        "pull request description", "pull-request-beschreibung", "merge request", "pr title",
        "pr-titel",
    ]),
];

/// The automaton over all cues, and for each pattern its concept and whether it may start
/// inside a word.
type Matcher = (AhoCorasick, Vec<(Concept, bool)>);

fn matcher() -> Option<&'static Matcher> {
    static MATCHER: OnceLock<Option<Matcher>> = OnceLock::new();
    MATCHER
        .get_or_init(|| {
            let mut patterns = Vec::new();
            let mut meta = Vec::new();
            for (concept, cues) in CUES {
                for cue in *cues {
                    let inside = cue.starts_with('~');
                    patterns.push(cue.trim_start_matches('~'));
                    meta.push((*concept, inside));
                }
            }
            let ac = AhoCorasickBuilder::new()
                .match_kind(MatchKind::Standard)
                // A DFA rather than the default NFA: about a quarter off a 1 KB decision
                // (BENCHMARKS.md), for 1.4 MB (`memory_usage()`) and ~9 ms built once, on the
                // first request.
                .kind(Some(AhoCorasickKind::DFA))
                .build(&patterns)
                .ok()?;
            Some((ac, meta))
        })
        .as_ref()
}

/// Lowercases and folds umlauts, ß and the typographic apostrophe the way the cue lists are
/// written (as the word features do), so that "what’s" finds "what's".
fn fold(text: &str) -> String {
    let mut out = String::new();
    super::signals::fold_case(text, &mut out);
    out
}

/// Counts the distinct cue words of each concept in the prompt's first [`SCAN`] bytes.
pub fn read(prompt: &str) -> Concepts {
    let mut concepts = Concepts::default();
    let Some((ac, meta)) = matcher() else {
        return concepts;
    };
    let text = fold(super::signals::prefix(prompt, SCAN));
    let bytes = text.as_bytes();
    // Distinct patterns only: "error error error" is one cue.
    let mut seen: Vec<u32> = Vec::with_capacity(16);
    for m in ac.find_overlapping_iter(&text) {
        let id = m.pattern().as_u32();
        let (concept, inside) = meta[id as usize];
        let at_word_start = m.start() == 0 || !bytes[m.start() - 1].is_ascii_alphanumeric();
        if !(inside || at_word_start) || seen.contains(&id) {
            continue;
        }
        seen.push(id);
        let count = &mut concepts.counts[concept as usize];
        *count = count.saturating_add(1);
    }
    concepts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cues_speak_for_both_languages() {
        let en = read("write a threat model for our login flow");
        let de = read("Bedrohungsmodell für unseren Login bitte");
        assert!(en.get(Concept::Security) >= 1);
        assert!(de.get(Concept::Security) >= 1);
        let reword = read("kannst du das umformulieren, klingt holprig");
        assert!(reword.get(Concept::RewordText) >= 2, "{reword:?}");
        assert_eq!(reword.get(Concept::Security), 0);
    }

    #[test]
    fn everyday_wording_finds_the_rubric_concept() {
        let c = read(
            "my bot randomly stops responding after a few days, a reboot fixes it for a while",
        );
        assert!(c.get(Concept::Diagnosis) >= 3, "{c:?}");
        let c = read(
            "Ein ehemaliger Mitarbeiter hat vielleicht noch Zugriff auf alles, ist das sicher?",
        );
        assert!(c.get(Concept::Security) >= 2, "{c:?}");
        let c = read("schreib mir eine Commit-Message für die Änderung");
        assert_eq!(c.get(Concept::ChangeNote), 1, "{c:?}");
    }

    #[test]
    fn cues_start_at_word_boundaries_unless_marked() {
        // `race` must not fire inside `embrace`, `plan` not inside `explanation`.
        let c = read("embrace the explanation");
        assert_eq!(c.get(Concept::Concurrency), 0);
        assert_eq!(c.get(Concept::Plan), 0);
        // A compound's tail counts where the cue is marked for it.
        let c = read("Die Datenbankmigration am Wochenende");
        assert!(c.get(Concept::Plan) >= 1, "{c:?}");
    }

    #[test]
    fn repeated_cues_count_once_and_empty_text_is_fine() {
        assert_eq!(read("error error error").get(Concept::Failure), 1);
        assert_eq!(read(""), Concepts::default());
        // Invalid positions cannot arise: folding changes lengths, but matching runs on the
        // folded text only.
        let odd = read("ÄÖÜßẞ İstanbul ﬃ \u{0}");
        assert!(odd.counts.iter().all(|&n| n < 4));
    }

    #[test]
    fn every_cue_is_folded_like_the_text() {
        for (_, cues) in CUES {
            for cue in *cues {
                let bare = cue.trim_start_matches('~');
                assert_eq!(fold(bare), bare, "cue {cue:?} is not lowercase and folded");
            }
        }
    }
}
