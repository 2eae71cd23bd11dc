//! How the command line talks to people and scripts: error lines, JSON
//! documents, logging (rate limited: [`logging`]) and progress bars.

#[path = "logging.rs"]
mod logging;

use std::io::{IsTerminal, Write};

use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Print an error as one line on stderr: the message and its causes.
pub fn report_error(err: &anyhow::Error) {
    let mut line = format!("spfs: error: {err}");
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Log to stderr; `-v` shows info, `-vv` debug. `RUST_LOG` overrides.
pub fn init_logging(verbose: u8) {
    init(
        verbose,
        BoxMakeWriter::new(std::io::stderr),
        std::io::stderr().is_terminal(),
    );
}

/// The service's logging: as [`init_logging`], but when stderr is a file
/// (a service started by a client, or with `2>>FILE`) the file is made
/// private and rotated past `max_bytes`.
#[allow(dead_code)] // Used by spfs-vfs only.
pub fn init_service_logging(verbose: u8, max_bytes: u32) {
    match spfs_fuse::logfile::LogFile::from_stderr(max_bytes.into()) {
        Ok(Some(log)) => {
            // The service logs until it exits.
            let log: &'static spfs_fuse::logfile::LogFile = Box::leak(Box::new(log));
            init(verbose, BoxMakeWriter::new(move || log), false);
        }
        Ok(None) => init_logging(verbose),
        Err(e) => {
            init_logging(verbose);
            tracing::warn!("cannot bound the log file on stderr: {e}");
        }
    }
}

/// Install the global subscriber: a level filter, the rate limit, and
/// lines written to `writer`.
fn init(verbose: u8, writer: BoxMakeWriter, ansi: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(false)
        .with_ansi(ansi);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logging::RateLimit::default())
        .with(lines)
        .try_init();
}

/// Print one JSON document on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// A progress bar on stderr when it is a terminal; hidden otherwise.
pub fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}
