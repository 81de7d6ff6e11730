//! Finding shell commands inside documents: shell scripts, fenced `sh`/`bash` blocks in
//! Markdown, Dockerfile `RUN` instructions, Makefile recipes and `run:` steps of CI YAML files.
//! Pure functions over a rope; nothing here executes anything.

use ropey::Rope;

use super::documents::line_content;
use crate::analyze::signals;

/// The shell command on `line` of a document, in the document's own terms, or `None` when the
/// line is not a shell command there. Continuation lines (`\` at the end) are joined.
pub fn command_at(text: &Rope, line: usize, language_id: &str) -> Option<String> {
    if line >= text.len_lines() {
        return None;
    }
    let current = line_content(text, line).to_string();
    let trimmed = current.trim();
    if trimmed.is_empty() {
        return None;
    }
    match language_id {
        "shellscript" | "sh" | "bash" | "zsh" => {
            if trimmed.starts_with('#') || is_structure(trimmed) {
                return None;
            }
            Some(join_continuations(text, line, trimmed))
        }
        "markdown" => {
            let is_fence = trimmed.starts_with("```") || trimmed.starts_with("~~~");
            if is_fence || !inside_shell_fence(text, line) {
                return None;
            }
            let command = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
            (!command.starts_with('#')).then(|| command.to_string())
        }
        "dockerfile" => {
            let instruction = run_instruction_start(text, line)?;
            let joined = join_continuations(
                text,
                instruction,
                line_content(text, instruction).to_string().trim(),
            );
            let command = joined
                .trim_start()
                .strip_prefix("RUN")
                .or_else(|| joined.trim_start().strip_prefix("run"))?;
            Some(command.trim().to_string())
        }
        "makefile" => {
            // Recipe lines start with a tab.
            current
                .starts_with('\t')
                .then(|| trimmed.trim_start_matches(['@', '-']).to_string())
        }
        "yaml" | "github-actions-workflow" => yaml_run_command(text, line),
        _ => signals::is_shell_line(trimmed).then(|| trimmed.to_string()),
    }
}

/// Whether a selection is a shell command in its document's context.
pub fn selection_is_command(selection: &str, language_id: &str) -> bool {
    match language_id {
        "shellscript" | "sh" | "bash" | "zsh" | "makefile" | "dockerfile" => {
            !selection.trim().is_empty()
        }
        _ => signals::is_shell_command(selection),
    }
}

fn is_structure(line: &str) -> bool {
    matches!(
        line,
        "then" | "fi" | "do" | "done" | "else" | "esac" | "{" | "}" | ";;" | "in"
    ) || line.ends_with(") {")
        || line.starts_with("function ")
}

fn join_continuations(text: &Rope, line: usize, first: &str) -> String {
    let mut command = first.to_string();
    let mut l = line;
    while command.ends_with('\\') && l + 1 < text.len_lines() && l < line + 50 {
        command.pop();
        l += 1;
        command.push(' ');
        command.push_str(line_content(text, l).to_string().trim());
    }
    command
}

fn inside_shell_fence(text: &Rope, line: usize) -> bool {
    let mut open: Option<bool> = None;
    for l in 0..line {
        let content = line_content(text, l).to_string();
        let t = content.trim_start();
        if let Some(info) = t.strip_prefix("```").or_else(|| t.strip_prefix("~~~")) {
            open = match open {
                Some(_) => None,
                None => {
                    let info = info.trim().to_ascii_lowercase();
                    Some(matches!(
                        info.split_whitespace().next().unwrap_or(""),
                        "sh" | "bash"
                            | "shell"
                            | "zsh"
                            | "console"
                            | "shellsession"
                            | "shell-session"
                    ))
                }
            };
        }
    }
    open == Some(true)
}

/// The line where the `RUN` instruction covering `line` starts.
fn run_instruction_start(text: &Rope, line: usize) -> Option<usize> {
    let mut start = line;
    while start > 0
        && line_content(text, start - 1)
            .to_string()
            .trim_end()
            .ends_with('\\')
    {
        start -= 1;
    }
    let first = line_content(text, start).to_string();
    first
        .trim_start()
        .to_ascii_uppercase()
        .starts_with("RUN ")
        .then_some(start)
}

fn yaml_run_command(text: &Rope, line: usize) -> Option<String> {
    let current = line_content(text, line).to_string();
    let t = current.trim_start().trim_start_matches("- ").trim_start();
    for key in ["run:", "script:", "command:"] {
        if let Some(rest) = t.strip_prefix(key) {
            let rest = rest.trim();
            if !rest.is_empty() && !rest.starts_with('|') && !rest.starts_with('>') {
                return Some(rest.trim_matches(['"', '\'']).to_string());
            }
            return None;
        }
    }
    // A line inside a `run: |` block: find the block's header above with smaller indentation.
    let indent = current.len() - current.trim_start().len();
    for l in (0..line).rev() {
        let above = line_content(text, l).to_string();
        if above.trim().is_empty() {
            continue;
        }
        let above_indent = above.len() - above.trim_start().len();
        if above_indent < indent {
            let header = above.trim_start().trim_start_matches("- ").trim_start();
            let is_block = ["run:", "script:"].iter().any(|k| {
                header.strip_prefix(k).is_some_and(|rest| {
                    rest.trim().starts_with('|')
                        || rest.trim().starts_with('>')
                        || rest.trim().is_empty()
                })
            });
            if is_block && !current.trim().starts_with('#') {
                return Some(current.trim().trim_start_matches("- ").to_string());
            }
            // `script:` lists in GitLab CI: `- cmd` items under `script:`.
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, line: usize, language: &str) -> Option<String> {
        command_at(&Rope::from_str(text), line, language)
    }

    #[test]
    fn shell_scripts() {
        let script = "#!/bin/bash\n# backup\ntar -czf /tmp/a.tgz \\\n  /etc\nif true; then\nfi\n";
        assert_eq!(at(script, 0, "shellscript"), None);
        assert_eq!(at(script, 1, "shellscript"), None);
        assert_eq!(
            at(script, 2, "shellscript").as_deref(),
            Some("tar -czf /tmp/a.tgz  /etc")
        );
        assert_eq!(at(script, 5, "shellscript"), None);
    }

    #[test]
    fn markdown_fences() {
        let md =
            "# Setup\nrun ls -la here\n```bash\n$ ls -la | wc -l\n```\n```python\nprint(1)\n```\n";
        assert_eq!(at(md, 1, "markdown"), None);
        assert_eq!(at(md, 3, "markdown").as_deref(), Some("ls -la | wc -l"));
        assert_eq!(at(md, 6, "markdown"), None);
        // Neither fence line is a command.
        assert_eq!(at(md, 2, "markdown"), None);
        assert_eq!(at(md, 4, "markdown"), None);
    }

    #[test]
    fn dockerfiles() {
        let df =
            "FROM debian\nRUN apt-get update && \\\n    apt-get install -y curl\nCOPY . /app\n";
        assert_eq!(
            at(df, 1, "dockerfile").as_deref(),
            Some("apt-get update &&  apt-get install -y curl")
        );
        assert_eq!(
            at(df, 2, "dockerfile").as_deref(),
            Some("apt-get update &&  apt-get install -y curl")
        );
        assert_eq!(at(df, 0, "dockerfile"), None);
        assert_eq!(at(df, 3, "dockerfile"), None);
    }

    #[test]
    fn makefiles_and_ci_yaml() {
        let mk = "build:\n\t@cargo build --release\nVAR = 1\n";
        assert_eq!(
            at(mk, 1, "makefile").as_deref(),
            Some("cargo build --release")
        );
        assert_eq!(at(mk, 2, "makefile"), None);
        let yml = "steps:\n  - uses: actions/checkout@v4\n  - run: cargo test --locked\n  - name: lint\n    run: |\n      cargo fmt --check\n      cargo clippy\n";
        assert_eq!(at(yml, 2, "yaml").as_deref(), Some("cargo test --locked"));
        assert_eq!(at(yml, 1, "yaml"), None);
        assert_eq!(at(yml, 5, "yaml").as_deref(), Some("cargo fmt --check"));
        assert_eq!(at(yml, 6, "yaml").as_deref(), Some("cargo clippy"));
        assert_eq!(at(yml, 99, "yaml"), None);
    }

    #[test]
    fn prose_and_code_are_not_commands() {
        assert_eq!(at("find me a good book", 0, "plaintext"), None);
        assert_eq!(at("let x = 1;", 0, "rust"), None);
        assert!(selection_is_command("ps aux | grep x", "markdown"));
        assert!(!selection_is_command("fn main() {}", "rust"));
    }
}
