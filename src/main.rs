//! The `triage` binary: parse arguments, set up logging (stderr or a file, never stdout), run
//! the command, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;
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
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => {
            EnvFilter::try_new(v).map_err(|e| format!("RUST_LOG is invalid: {e}"))?
        }
        _ => EnvFilter::try_new(level.unwrap_or("warn")).map_err(|e| {
            format!("--log-level is invalid ({e}): use error, warn, info, debug or trace")
        })?,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}
