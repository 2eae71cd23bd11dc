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
    if stderr_is_journal() {
        return init_journal(verbose);
    }
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

/// Whether stderr is systemd's journal (`JOURNAL_STREAM` names it).
#[allow(dead_code)]
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", st.st_dev, st.st_ino)
}

/// Lines for the journal: a syslog priority prefix (`<3>` error … `<7>`
/// debug), which the journal keeps as the entry's priority, and no time
/// (the journal records it).
#[allow(dead_code)]
struct JournalFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing::Level;
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The service's logging under systemd: to the journal, on stderr.
#[allow(dead_code)]
fn init_journal(verbose: u8) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .event_format(JournalFormat);
    let _ = tracing_subscriber::registry()
        .with(level_filter(verbose))
        .with(logging::RateLimit::default())
        .with(lines)
        .try_init();
}

/// The level filter: `RUST_LOG`, else by `-v` count.
fn level_filter(verbose: u8) -> tracing_subscriber::EnvFilter {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
}

/// Install the global subscriber: a level filter, the rate limit, and
/// lines written to `writer`.
fn init(verbose: u8, writer: BoxMakeWriter, ansi: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = level_filter(verbose);
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
