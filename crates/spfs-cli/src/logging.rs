//! Logging that nobody can turn into a flood.
//!
//! Any user can make the VFS service log (by what their processes do), so
//! every line is rate limited where it is logged: [`RateLimit`] lets
//! through at most [`BURST`] events of one call site per [`WINDOW`], counts
//! the others, and a reporter thread then logs "N similar messages
//! suppressed (file:line)" once per window for each site that dropped some.
//! Events bridged from the `log` crate (the FUSE library logs that way)
//! share one call site per level; their own file and line tell them apart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Lines one call site may log per window.
pub const BURST: u32 = 5;

/// The rate-limiting window.
pub const WINDOW: Duration = Duration::from_secs(1);

/// The target of the "suppressed" lines, which are never limited.
const SUMMARY_TARGET: &str = "spfs::log_limit";

/// One call site: its code location, and a bridged `log` record's own.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SiteKey {
    callsite: Identifier,
    location: Option<(String, u64)>,
}

struct Site {
    name: String,
    level: Level,
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
}

/// The per-site counts, separate from tracing so it can be tested alone.
#[derive(Default)]
struct Limiter {
    sites: HashMap<SiteKey, Site>,
}

impl Limiter {
    /// Whether an event of `key` at `now` may be logged.
    fn admit(
        &mut self,
        key: SiteKey,
        name: impl FnOnce() -> String,
        level: Level,
        now: Instant,
    ) -> bool {
        let site = self.sites.entry(key).or_insert_with(|| Site {
            name: name(),
            level,
            window_start: now,
            in_window: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(site.window_start) >= WINDOW {
            site.window_start = now;
            site.in_window = 0;
        }
        if site.in_window < BURST {
            site.in_window += 1;
            true
        } else {
            site.suppressed += 1;
            false
        }
    }

    /// The sites that dropped events since the last call, with how many.
    fn take_suppressed(&mut self) -> Vec<(String, Level, u64)> {
        self.sites
            .values_mut()
            .filter(|s| s.suppressed > 0)
            .map(|s| (s.name.clone(), s.level, std::mem::take(&mut s.suppressed)))
            .collect()
    }
}

/// A layer that drops events past [`BURST`] per call site and [`WINDOW`].
#[derive(Default)]
pub struct RateLimit {
    limiter: Arc<Mutex<Limiter>>,
    reporter: OnceLock<()>,
}

/// The file and line of an event bridged from the `log` crate.
#[derive(Default)]
struct LogLocation {
    file: Option<String>,
    line: Option<u64>,
}

impl Visit for LogLocation {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log.file" {
            self.file = Some(value.to_string());
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "log.line" {
            self.line = Some(value);
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

impl RateLimit {
    /// Log the suppressed counts once per window, from a thread of its own
    /// (an event cannot be logged from inside the logging of another).
    fn start_reporter(&self) {
        let limiter = Arc::downgrade(&self.limiter);
        let _ = std::thread::Builder::new()
            .name("log-limit".into())
            .spawn(move || {
                while let Some(limiter) = limiter.upgrade() {
                    std::thread::sleep(WINDOW);
                    let suppressed = limiter
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take_suppressed();
                    drop(limiter);
                    for (site, level, n) in suppressed {
                        report(level, n, &site);
                    }
                }
            });
    }
}

/// Log that `n` events of `site` were dropped, at their level.
fn report(level: Level, n: u64, site: &str) {
    match level {
        Level::ERROR => {
            tracing::error!(target: SUMMARY_TARGET, "{n} similar messages suppressed ({site})")
        }
        Level::WARN => {
            tracing::warn!(target: SUMMARY_TARGET, "{n} similar messages suppressed ({site})")
        }
        Level::INFO => {
            tracing::info!(target: SUMMARY_TARGET, "{n} similar messages suppressed ({site})")
        }
        Level::DEBUG => {
            tracing::debug!(target: SUMMARY_TARGET, "{n} similar messages suppressed ({site})")
        }
        _ => tracing::trace!(target: SUMMARY_TARGET, "{n} similar messages suppressed ({site})"),
    }
}

impl<S: Subscriber> Layer<S> for RateLimit {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if meta.target() == SUMMARY_TARGET {
            return true;
        }
        let location = meta.fields().field("log.line").map(|_| {
            let mut loc = LogLocation::default();
            event.record(&mut loc);
            (loc.file.unwrap_or_default(), loc.line.unwrap_or_default())
        });
        let name = || match &location {
            Some((file, line)) => format!("{file}:{line}"),
            None => format!(
                "{}:{}",
                meta.file().unwrap_or("?"),
                meta.line().unwrap_or(0)
            ),
        };
        let key = SiteKey {
            callsite: meta.callsite(),
            location: location.clone(),
        };
        let admitted = self
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(key, name, *meta.level(), Instant::now());
        if !admitted {
            self.reporter.get_or_init(|| self.start_reporter());
        }
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> SiteKey {
        // One real call site stands for every test key; the location tells
        // them apart, as for the fuser library's lines.
        let callsite = tracing::callsite! {
            name: "test",
            kind: tracing::metadata::Kind::EVENT,
            fields: []
        };
        SiteKey {
            callsite: tracing::callsite::Callsite::metadata(callsite).callsite(),
            location: Some(("x.rs".into(), n)),
        }
    }

    #[test]
    fn a_burst_per_site_and_window_then_counts() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let admitted = (0..100)
            .filter(|_| l.admit(key(1), || "x.rs:1".into(), Level::WARN, t0))
            .count();
        assert_eq!(admitted, BURST as usize);
        // Another site has its own budget.
        assert!(l.admit(key(2), || "x.rs:2".into(), Level::INFO, t0));
        assert_eq!(
            l.take_suppressed(),
            vec![("x.rs:1".to_string(), Level::WARN, 100 - BURST as u64)]
        );
        assert!(l.take_suppressed().is_empty());
        // A new window, a new budget.
        assert!(!l.admit(key(1), || unreachable!(), Level::WARN, t0 + WINDOW / 2));
        assert!(l.admit(key(1), || unreachable!(), Level::WARN, t0 + WINDOW));
    }
}
