//! The `triage` binary: parse arguments, set up logging (stderr or a file, never stdout), run
//! the command, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;
use std::str::FromStr;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = triage::cli::Cli::parse();
    if let Err(message) = init_logging(cli.log_level.as_deref(), cli.log_file.as_deref()) {
        eprintln!("triage: {message}");
        return ExitCode::from(2);
    }
    match triage::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("triage: {}", failure.message());
            ExitCode::from(failure.exit_code())
        }
    }
}

/// Logs go to stderr or `--log-file`; `RUST_LOG` wins over `--log-level`; default `warn`.
fn init_logging(level: Option<&str>, file: Option<&std::path::Path>) -> Result<(), String> {
    // `RUST_LOG` gets the full directive syntax. A plain level is a `LevelFilter`: building an
    // `EnvFilter` costs a noticeable share of the language server's start-up.
    let (directives, plain) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => (
            Some(EnvFilter::try_new(v).map_err(|e| format!("RUST_LOG is invalid: {e}"))?),
            None,
        ),
        _ => {
            let level = level.unwrap_or("warn");
            let parsed = LevelFilter::from_str(level).map_err(|_| {
                format!("--log-level `{level}` is invalid: use error, warn, info, debug or trace")
            })?;
            (None, Some(parsed))
        }
    };
    let writer = match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))?;
            BoxMakeWriter::new(std::sync::Mutex::new(f))
        }
        None => BoxMakeWriter::new(std::io::stderr),
    };
    tracing_subscriber::registry()
        .with(directives)
        .with(plain)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(file.is_none())
                .with_writer(writer),
        )
        .init();
    Ok(())
}
