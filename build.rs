//! Build script: one link option, only where the toolchain and the C library support it.
//!
//! Packed relative relocations (DT_RELR) shrink the table the dynamic loader walks at every
//! start of `triage` from ~620 KB to ~8 KB and leave its pages untouched: the language server
//! starts with about 1 MB less resident. They need a linker that knows
//! `-z pack-relative-relocs` (GNU ld ≥ 2.38, lld, mold) and glibc ≥ 2.36 where the binary runs,
//! so the option is added only to native Linux/glibc builds that have both; every other build
//! links exactly as before.

use std::path::Path;
use std::process::Command;

const OPTION: &str = "-Wl,-z,pack-relative-relocs";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let native_linux_glibc = var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        // Cross builds: the C library the binary will meet is unknown here.
        && var("TARGET") == var("HOST");
    if native_linux_glibc && glibc_at_least(2, 36) && linker_accepts(&var("OUT_DIR")) {
        println!("cargo:rustc-link-arg-bins={OPTION}");
    }
}

/// The C library of this machine, from `getconf GNU_LIBC_VERSION` ("glibc 2.36").
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(output) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let mut numbers = text
        .trim()
        .trim_start_matches("glibc")
        .trim()
        .split('.')
        .map(|n| n.parse::<u32>().ok());
    match (numbers.next().flatten(), numbers.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// Links an empty C program with the option, warnings fatal (an older GNU ld only warns about
/// an unknown `-z` keyword).
fn linker_accepts(out_dir: &str) -> bool {
    if out_dir.is_empty() {
        return false;
    }
    let dir = Path::new(out_dir);
    let source = dir.join("relr_probe.c");
    if std::fs::write(&source, "int main(void) { return 0; }\n").is_err() {
        return false;
    }
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    Command::new(compiler)
        .arg(&source)
        .arg(OPTION)
        .arg("-Wl,--fatal-warnings")
        .arg("-o")
        .arg(dir.join("relr_probe"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
