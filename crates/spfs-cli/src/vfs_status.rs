//! `spfs-vfs status`: the service's status as one JSON document with stable
//! field names, or summarised for people. The figures are described in
//! `docs/observability.md`.

use spfs_control::proto;

/// The JSON document of `spfs-vfs status --json`.
pub fn to_json(s: &proto::StatusResponse) -> serde_json::Value {
    use serde_json::json;
    let ops: serde_json::Map<String, serde_json::Value> = s
        .ops
        .iter()
        .map(|o| {
            (
                o.op.clone(),
                json!({
                    "count": o.count, "errors": o.errors, "sum_seconds": o.sum_seconds,
                    "p50_seconds": o.p50_seconds, "p90_seconds": o.p90_seconds,
                    "p99_seconds": o.p99_seconds, "p999_seconds": o.p999_seconds,
                }),
            )
        })
        .collect();
    let p = s.passthrough_stats.unwrap_or_default();
    let r = s.routing.unwrap_or_default();
    let m = s.memory.unwrap_or_default();
    let rm = s.remote.unwrap_or_default();
    let views: Vec<_> = s
        .view_stats
        .iter()
        .map(|v| {
            json!({
                "id": v.id, "runtimes": v.runtimes, "layers": v.layers, "entries": v.entries,
                "tree_bytes": v.tree_bytes, "shared_tree": v.shared_tree, "bound": v.bound,
                "editable": v.editable,
            })
        })
        .collect();
    json!({
        "pid": s.pid, "keeper_pid": s.keeper_pid, "mountpoint": s.mountpoint, "listen": s.listen,
        "uptime_seconds": s.uptime_seconds, "runtimes": s.runtimes,
        "requests": s.requests, "passthrough": s.passthrough, "version": s.version,
        "views": s.views, "shared_dirs": s.shared_dirs, "routed_dirs": s.routed_dirs, "entries": s.entries, "content_nodes": s.content_nodes,
        "open_handles": s.open_handles,
        "read_bytes": s.read_bytes, "write_bytes": s.write_bytes,
        "ops": ops,
        "passthrough_files": {
            "opens": p.opens, "opened_bytes": p.opened_bytes, "open_files": p.open_files,
            "backing_registered": p.backing_registered,
        },
        "routing": {
            "cache_hits": r.cache_hits, "cache_misses": r.cache_misses, "uncached": r.uncached,
            "unrouted": r.unrouted, "cached_threads": r.cached_threads,
        },
        "memory": {
            "rss_bytes": m.rss_bytes, "trees_bytes": m.trees_bytes,
            "bytes_per_entry": m.bytes_per_entry,
        },
        "remote": {
            "remotes": rm.remotes, "payloads_fetched": rm.payloads_fetched,
            "fetched_bytes": rm.fetched_bytes, "fetch_failures": rm.fetch_failures,
            "ranged_reads": rm.ranged_reads, "ranged_bytes": rm.ranged_bytes,
            "references_resolved": rm.references_resolved,
        },
        "view_stats": views,
    })
}

/// Bytes for people: `12.3 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{v:.1} {}", UNITS[unit]),
    }
}

/// Seconds for people: `12 µs`, `3.4 ms`, `1.2 s`.
fn duration(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// The status summarised for people.
pub fn print_human(s: &proto::StatusResponse) {
    let p = s.passthrough_stats.unwrap_or_default();
    let r = s.routing.unwrap_or_default();
    let m = s.memory.unwrap_or_default();
    let rm = s.remote.unwrap_or_default();
    println!("pid:         {} (worker; keeper {})", s.pid, s.keeper_pid);
    println!("mountpoint:  {}", s.mountpoint);
    println!("listen:      {}", s.listen);
    println!("uptime:      {} s", s.uptime_seconds);
    println!("runtimes:    {}", s.runtimes);
    println!("requests:    {}", s.requests);
    println!("passthrough: {}", s.passthrough);
    println!("version:     {}", s.version);
    println!(
        "views:       {} ({} entries, {} shared directories, {} routed directories, {} content nodes, {} open handles)",
        s.views, s.entries, s.shared_dirs, s.routed_dirs, s.content_nodes, s.open_handles
    );
    println!(
        "memory:      {} resident; trees ~{} (~{:.0} B per entry)",
        bytes(m.rss_bytes),
        bytes(m.trees_bytes),
        m.bytes_per_entry
    );
    println!(
        "data:        {} read and {} written through the service; {} passthrough opens of {} (their reads are not seen), {} open",
        bytes(s.read_bytes),
        bytes(s.write_bytes),
        p.opens,
        bytes(p.opened_bytes),
        p.open_files
    );
    println!(
        "routing:     {} cache hits, {} misses ({} uncached), {} requests from outside any runtime",
        r.cache_hits, r.cache_misses, r.uncached, r.unrouted
    );
    if rm.remotes == 0 {
        println!("remotes:     none read through");
    } else {
        println!(
            "remotes:     {}: {} payloads fetched ({}), {} failed, {} ranged reads ({}), {} references resolved",
            rm.remotes,
            rm.payloads_fetched,
            bytes(rm.fetched_bytes),
            rm.fetch_failures,
            rm.ranged_reads,
            bytes(rm.ranged_bytes),
            rm.references_resolved
        );
    }
    let asked: Vec<_> = s.ops.iter().filter(|o| o.count > 0).collect();
    if !asked.is_empty() {
        println!(
            "{:<16} {:>10} {:>8} {:>9} {:>9} {:>9}",
            "OPERATION", "COUNT", "ERRORS", "P50", "P99", "P99.9"
        );
        for o in asked {
            println!(
                "{:<16} {:>10} {:>8} {:>9} {:>9} {:>9}",
                o.op,
                o.count,
                o.errors,
                duration(o.p50_seconds),
                duration(o.p99_seconds),
                duration(o.p999_seconds)
            );
        }
    }
}
