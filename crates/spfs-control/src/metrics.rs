//! The service's status in the Prometheus text exposition format (0.0.4).
//!
//! One function, [`render`], turns a [`StatusResponse`] into the text that
//! `spfs-vfs metrics` prints, the `Metrics` call answers and the loopback
//! port of `vfs.metrics_listen` serves, so the three always agree. Every
//! family has a `# HELP` and a `# TYPE` line; names carry their units
//! (`_seconds`, `_bytes`) and counters end in `_total`. Request latencies
//! are a summary per operation (`quantile` 0.5, 0.9, 0.99, 0.999, given
//! for operations that were asked at least once, with `_sum` and `_count`).
//! The figures are described in `docs/observability.md`.

use std::fmt::{Display, Write as _};

use crate::proto::StatusResponse;

/// The content type of the text this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metric families, written in order.
struct Out(String);

/// `counter`, `gauge` or `summary`.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Summary,
}

impl Out {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family of one sample without labels.
    fn one(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A float as Prometheus reads it.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// The status `s` in the Prometheus text format.
pub fn render(s: &StatusResponse) -> String {
    use Kind::*;
    let mut o = Out(String::with_capacity(16 * 1024));
    o.family(
        "spfs_vfs_info",
        Gauge,
        "The service: its version and whether FUSE passthrough is in use (always 1).",
    );
    o.sample(
        "spfs_vfs_info",
        &[
            ("version", &s.version),
            ("passthrough", if s.passthrough { "true" } else { "false" }),
        ],
        1,
    );
    o.one(
        "spfs_vfs_uptime_seconds",
        Gauge,
        "Seconds since the service started.",
        s.uptime_seconds,
    );
    o.one(
        "spfs_vfs_runtimes",
        Gauge,
        "Runtimes registered.",
        s.runtimes,
    );
    o.one(
        "spfs_vfs_views",
        Gauge,
        "Views alive (of runtimes, and recently dropped ones kept warm).",
        s.views,
    );
    o.one(
        "spfs_vfs_entries",
        Gauge,
        "Entries in the trees of the live views, summed over views.",
        s.entries,
    );
    o.one(
        "spfs_vfs_shared_dirs",
        Gauge,
        "Subtree views alive (top-level directories of routed views named by their content, one node for every view of one owner that holds the same).",
        s.shared_dirs as u64,
    );
    o.one(
        "spfs_vfs_routed_dirs",
        Gauge,
        "Subtree views alive that are shown through routed directories (a user's top-level directories brought while another of theirs held the name differently).",
        s.routed_dirs as u64,
    );
    o.one(
        "spfs_vfs_content_nodes",
        Gauge,
        "Content nodes alive (one per distinct public file the kernel holds).",
        s.content_nodes,
    );
    o.one(
        "spfs_vfs_open_handles",
        Gauge,
        "Files open through the service's handle table.",
        s.open_handles,
    );
    o.one(
        "spfs_vfs_identified_requests_total",
        Counter,
        "Requests whose caller's runtime was looked up.",
        s.requests,
    );

    // Per operation.
    o.family(
        "spfs_vfs_requests_total",
        Counter,
        "FUSE requests answered, by operation.",
    );
    for op in &s.ops {
        o.sample("spfs_vfs_requests_total", &[("op", &op.op)], op.count);
    }
    o.family(
        "spfs_vfs_request_errors_total",
        Counter,
        "FUSE requests answered with an error, by operation.",
    );
    for op in &s.ops {
        o.sample(
            "spfs_vfs_request_errors_total",
            &[("op", &op.op)],
            op.errors,
        );
    }
    o.family(
        "spfs_vfs_request_duration_seconds",
        Summary,
        "Time the service took to answer a FUSE request, by operation (quantiles: upper edges of log-scale buckets, at most 12.5% above the true value).",
    );
    for op in &s.ops {
        if op.count > 0 {
            for (q, v) in [
                ("0.5", op.p50_seconds),
                ("0.9", op.p90_seconds),
                ("0.99", op.p99_seconds),
                ("0.999", op.p999_seconds),
            ] {
                o.sample(
                    "spfs_vfs_request_duration_seconds",
                    &[("op", &op.op), ("quantile", q)],
                    float(v),
                );
            }
        }
        o.sample(
            "spfs_vfs_request_duration_seconds_sum",
            &[("op", &op.op)],
            float(op.sum_seconds),
        );
        o.sample(
            "spfs_vfs_request_duration_seconds_count",
            &[("op", &op.op)],
            op.count,
        );
    }

    // File data.
    o.one(
        "spfs_vfs_read_bytes_total",
        Counter,
        "File data answered by READ requests (through the service, not passthrough).",
        s.read_bytes,
    );
    o.one(
        "spfs_vfs_write_bytes_total",
        Counter,
        "File data taken by WRITE requests (editable views).",
        s.write_bytes,
    );
    let p = s.passthrough_stats.unwrap_or_default();
    o.one(
        "spfs_vfs_passthrough_enabled",
        Gauge,
        "Whether the kernel granted FUSE passthrough (1) or not (0).",
        u8::from(s.passthrough),
    );
    o.one(
        "spfs_vfs_passthrough_opens_total",
        Counter,
        "Opens answered with a passthrough backing file (their reads never reach the service).",
        p.opens,
    );
    o.one(
        "spfs_vfs_passthrough_opened_bytes_total",
        Counter,
        "Sizes of the files opened with passthrough, summed (not bytes read: those are not seen).",
        p.opened_bytes,
    );
    o.one(
        "spfs_vfs_passthrough_open_files",
        Gauge,
        "Passthrough opens not yet released.",
        p.open_files,
    );
    o.one(
        "spfs_vfs_passthrough_backing_registered_total",
        Counter,
        "Backing files registered with the kernel for passthrough.",
        p.backing_registered,
    );

    // Routing.
    let r = s.routing.unwrap_or_default();
    o.one(
        "spfs_vfs_route_cache_hits_total",
        Counter,
        "Requests routed from the per-thread cache.",
        r.cache_hits,
    );
    o.one(
        "spfs_vfs_route_cache_misses_total",
        Counter,
        "Requests whose thread's cgroup had to be looked up.",
        r.cache_misses,
    );
    o.one(
        "spfs_vfs_route_uncached_total",
        Counter,
        "Lookups that could not be cached (no pidfd).",
        r.uncached,
    );
    o.one(
        "spfs_vfs_unrouted_requests_total",
        Counter,
        "Requests from callers in no runtime.",
        r.unrouted,
    );
    o.one(
        "spfs_vfs_route_cached_threads",
        Gauge,
        "Threads the router remembers.",
        r.cached_threads,
    );

    // Memory.
    let m = s.memory.unwrap_or_default();
    o.one(
        "spfs_vfs_resident_memory_bytes",
        Gauge,
        "The service's resident set size.",
        m.rss_bytes,
    );
    o.one(
        "spfs_vfs_trees_bytes",
        Gauge,
        "Estimated heap of the live views' trees (a shared tree counted once).",
        m.trees_bytes,
    );
    o.one(
        "spfs_vfs_tree_entry_bytes",
        Gauge,
        "Estimated heap per tree entry (trees bytes over their entries).",
        float(m.bytes_per_entry),
    );
    for (name, help) in [
        ("spfs_vfs_view_runtimes", "Runtimes using a view."),
        ("spfs_vfs_view_entries", "Entries of a view's tree."),
        (
            "spfs_vfs_view_tree_bytes",
            "Estimated heap of a view's tree (shared or not).",
        ),
    ] {
        o.family(name, Gauge, help);
        for v in &s.view_stats {
            let id = v.id.to_string();
            let value = match name {
                "spfs_vfs_view_runtimes" => u64::from(v.runtimes),
                "spfs_vfs_view_entries" => v.entries,
                _ => v.tree_bytes,
            };
            o.sample(name, &[("view", &id)], value);
        }
    }

    // Remotes.
    let rm = s.remote.unwrap_or_default();
    o.one(
        "spfs_vfs_remotes",
        Gauge,
        "Remotes read through (vfs.remotes).",
        rm.remotes,
    );
    o.one(
        "spfs_vfs_remote_payloads_fetched_total",
        Counter,
        "Payloads fetched whole from a remote and stored.",
        rm.payloads_fetched,
    );
    o.one(
        "spfs_vfs_remote_fetched_bytes_total",
        Counter,
        "Bytes of the payloads fetched from remotes.",
        rm.fetched_bytes,
    );
    o.one(
        "spfs_vfs_remote_fetch_failures_total",
        Counter,
        "Payload fetches that failed.",
        rm.fetch_failures,
    );
    o.one(
        "spfs_vfs_remote_ranged_reads_total",
        Counter,
        "Reads answered from a ranged fetch (vfs.remote_ranged_reads).",
        rm.ranged_reads,
    );
    o.one(
        "spfs_vfs_remote_ranged_bytes_total",
        Counter,
        "Bytes of those ranged reads.",
        rm.ranged_bytes,
    );
    o.one(
        "spfs_vfs_remote_references_resolved_total",
        Counter,
        "References resolved on a remote (their objects copied in).",
        rm.references_resolved,
    );
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{OpStats, ViewStats};

    #[test]
    fn every_sample_has_a_typed_family_and_labels_are_escaped() {
        let s = StatusResponse {
            version: "1.0 \"odd\"\\".into(),
            ops: vec![
                OpStats {
                    op: "lookup".into(),
                    count: 3,
                    errors: 1,
                    sum_seconds: 0.00003,
                    p50_seconds: 0.000008,
                    p90_seconds: 0.00001,
                    p99_seconds: 0.00001,
                    p999_seconds: 0.00001,
                },
                OpStats {
                    op: "read".into(),
                    ..Default::default()
                },
            ],
            view_stats: vec![ViewStats {
                id: 7,
                entries: 4,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&s);
        assert!(
            text.contains(
                "spfs_vfs_info{version=\"1.0 \\\"odd\\\"\\\\\",passthrough=\"false\"} 1\n"
            )
        );
        assert!(text.contains("spfs_vfs_requests_total{op=\"lookup\"} 3\n"));
        assert!(text.contains("spfs_vfs_request_errors_total{op=\"lookup\"} 1\n"));
        assert!(
            text.contains(
                "spfs_vfs_request_duration_seconds{op=\"lookup\",quantile=\"0.5\"} 0.000008\n"
            ),
            "{text}"
        );
        // An operation never asked has a count but no quantiles.
        assert!(text.contains("spfs_vfs_request_duration_seconds_count{op=\"read\"} 0\n"));
        assert!(!text.contains("{op=\"read\",quantile"));
        assert!(text.contains("spfs_vfs_view_entries{view=\"7\"} 4\n"));
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(typed.insert(name.to_string()), "TYPE twice: {name}");
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let family = ["_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "no TYPE before {line}");
        }
    }
}
