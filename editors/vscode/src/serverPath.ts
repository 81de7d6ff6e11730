// Finding the `triage` binary: the `triage.serverPath` setting, else `triage` on PATH. When
// neither is there, one message that says what to do. Pure apart from the injected file test.

import * as path from "path";

export type Resolved = { ok: true; command: string } | { ok: false; message: string };

export type IsExecutable = (file: string) => boolean;

export const INSTALL_HINT =
  "Install it with `cargo install --path .` in a clone of triage (or download a release) and reload, or set `triage.serverPath` to the binary.";

export function resolveServer(setting: string | null | undefined, envPath: string | undefined, isExecutable: IsExecutable, platform: string = process.platform): Resolved {
  const configured = setting?.trim();
  if (configured) {
    if (isExecutable(configured)) return { ok: true, command: configured };
    return { ok: false, message: `triage: the server binary set in triage.serverPath (${configured}) does not exist or is not executable. ${INSTALL_HINT}` };
  }
  const names = platform === "win32" ? ["triage.exe", "triage.cmd", "triage"] : ["triage"];
  for (const dir of (envPath ?? "").split(path.delimiter)) {
    if (!dir) continue;
    for (const name of names) {
      const candidate = path.join(dir, name);
      if (isExecutable(candidate)) return { ok: true, command: candidate };
    }
  }
  return { ok: false, message: `triage: the \`triage\` language server was not found on PATH. ${INSTALL_HINT}` };
}

/** Shown in the output channel from the "not found" message. */
export const INSTALL_STEPS = [
  "triage: installing the language server",
  "  1. Install a Rust toolchain (https://rustup.rs) — 1.85 or newer.",
  "  2. In a clone of the triage repository: cargo install --path .   (puts `triage` into ~/.cargo/bin)",
  "  3. Make sure ~/.cargo/bin is on PATH for VS Code (or set triage.serverPath to the binary).",
  "  4. Start a model server: `ollama serve` (and `ollama pull llama3.2:3b`, `ollama pull qwen3-coder:30b`).",
  "  5. Run “Triage: Restart the Language Server” (or reload the window).",
].join("\n");
