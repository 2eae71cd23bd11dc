//! Observability: `spfs-vfs status --json` and `spfs-vfs metrics` after a
//! runtime has read known files, the loopback metrics port, and a metrics
//! address that is not loopback.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::require_vfs;

/// 100,000 bytes and 5,000 bytes: both go to the service in READs.
fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("a", (0..100_000u32).map(|i| (i % 251) as u8).collect()),
        ("sub/c", vec![b'c'; 5000]),
        ("sub/d", b"d".to_vec()),
    ]
}

fn commit(w: &World, tag: &str) {
    let files = files();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, c)| (*p, c.as_slice())).collect();
    w.commit(tag, &refs);
}

fn op<'a>(s: &'a Value, name: &str) -> &'a Value {
    &s["ops"][name]
}

fn count(s: &Value, name: &str) -> u64 {
    op(s, name)["count"].as_u64().unwrap_or(0)
}

crate::in_both_modes!(status_counts_what_a_runtime_read);

fn status_counts_what_a_runtime_read(mode: Mode) {
    let w = World::with_mode(mode);
    commit(&w, "obs/files");
    w.start_service();
    let before = w.status().expect("status");
    let mnt = w.mnt.display();
    // Read the files, list, stat, miss a name; then ask for the status
    // from inside the runtime, while its view is alive.
    let script = format!(
        "cat {mnt}/a {mnt}/sub/c > /dev/null && ls {mnt}/sub > /dev/null && stat {mnt}/sub/d > /dev/null \
         && ! test -e {mnt}/missing && \"$SPFS_VFS\" status --json"
    );
    let out = w
        .command(SPFS)
        .args(["run", "obs/files", "--", "sh", "-c", &script])
        .env("SPFS_VFS", SPFS_VFS)
        .output()
        .expect("spfs run");
    ok(&out, "spfs run");
    let after: Value = serde_json::from_slice(&out.stdout).expect("status json");

    // The old fields are still there.
    assert_eq!(after["pid"], before["pid"]);
    assert_eq!(after["mountpoint"], w.mnt.display().to_string());
    // Requests by operation: what the runtime did was counted.
    for name in ["lookup", "read"] {
        assert!(
            count(&after, name) > count(&before, name),
            "{name}: {} then {}",
            op(&before, name),
            op(&after, name)
        );
    }
    assert!(
        count(&after, "getattr") + count(&after, "open")
            > count(&before, "getattr") + count(&before, "open"),
        "neither getattr nor open: {}",
        after["ops"]
    );
    let ops = after["ops"].as_object().expect("ops");
    assert!(ops.len() >= 38, "every operation is listed: {ops:?}");
    let mut asked = 0;
    for (name, o) in ops {
        let n = o["count"].as_u64().expect("count");
        assert!(o["errors"].as_u64().expect("errors") <= n, "{name}: {o}");
        if n == 0 {
            continue;
        }
        asked += 1;
        let q = |k: &str| o[k].as_f64().unwrap_or_else(|| panic!("{name}.{k}: {o}"));
        let (p50, p90, p99, p999) = (
            q("p50_seconds"),
            q("p90_seconds"),
            q("p99_seconds"),
            q("p999_seconds"),
        );
        assert!(
            0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 < 60.0,
            "{name}: {o}"
        );
        assert!(q("sum_seconds") > 0.0, "{name}: {o}");
    }
    assert!(asked >= 3, "{ops:?}");
    // The bytes read went through the service (kernel-kept opens, the
    // default, do not use passthrough).
    let read = after["read_bytes"].as_u64().expect("read_bytes")
        - before["read_bytes"].as_u64().expect("read_bytes");
    assert!(read >= 105_000, "read_bytes grew by {read}");
    assert_eq!(after["passthrough_files"]["opens"], 0, "{after}");
    // A missing name under the shared root is answered ENOENT (an error);
    // in a bound view it is a cached negative entry (none).
    if mode == Mode::Router {
        assert!(
            op(&after, "lookup")["errors"].as_u64() > op(&before, "lookup")["errors"].as_u64(),
            "{}",
            op(&after, "lookup")
        );
    }
    // Routing.
    let r = &after["routing"];
    let routed = |s: &Value| {
        s["routing"]["cache_hits"].as_u64().unwrap_or(0)
            + s["routing"]["cache_misses"].as_u64().unwrap_or(0)
    };
    assert!(routed(&after) > routed(&before), "{r}");
    // Views and memory: the runtime's view holds a, sub, sub/c, sub/d.
    assert!(after["views"].as_u64() >= Some(1), "{after}");
    assert!(after["entries"].as_u64() >= Some(4), "{after}");
    let views = after["view_stats"].as_array().expect("view_stats");
    let view = views
        .iter()
        .find(|v| v["entries"] == 4 && v["runtimes"].as_u64() >= Some(1))
        .unwrap_or_else(|| panic!("no view of 4 entries in use: {views:?}"));
    assert_eq!(view["bound"], mode == Mode::Bound, "{view}");
    let tree = view["tree_bytes"].as_u64().expect("tree_bytes");
    assert!(tree >= 4 * 64, "{view}");
    let m = &after["memory"];
    assert!(m["rss_bytes"].as_u64() > Some(1 << 20), "{m}");
    assert!(m["trees_bytes"].as_u64() >= Some(tree), "{m}");
    assert!(m["bytes_per_entry"].as_f64() > Some(0.0), "{m}");
    // No remote is configured here.
    assert_eq!(after["remote"]["remotes"], 0, "{after}");
    assert_eq!(after["remote"]["payloads_fetched"], 0, "{after}");

    // The human form summarises the same.
    let out = w.vfs(&["status"]);
    ok(&out, "status");
    let text = stdout(&out);
    for line in [
        "views:", "memory:", "data:", "routing:", "remotes:", "lookup",
    ] {
        assert!(text.contains(line), "no {line} in: {text}");
    }
}

#[test]
fn passthrough_opens_are_counted_and_their_reads_are_not() {
    require_vfs!();
    let w = World::with_mode(Mode::Router);
    commit(&w, "obs/files");
    // Opens asked of the service: passthrough when the kernel offers it.
    w.start_service_with(&[("SPFS_VFS_CACHE_OPENS", "false")]);
    let before = w.status().expect("status");
    let mnt = w.mnt.display();
    let out = w.run_sh("obs/files", &format!("cat {mnt}/a {mnt}/sub/c > /dev/null"));
    ok(&out, "spfs run");
    let after = w.status().expect("status");
    let grew = |k: &str| {
        after["passthrough_files"][k].as_u64().unwrap_or(0)
            - before["passthrough_files"][k].as_u64().unwrap_or(0)
    };
    let read =
        after["read_bytes"].as_u64().unwrap_or(0) - before["read_bytes"].as_u64().unwrap_or(0);
    assert!(
        count(&after, "open") >= count(&before, "open") + 2,
        "{}",
        after["ops"]
    );
    if after["passthrough"] == true {
        // Both files opened with passthrough: their sizes are reported,
        // their bytes never reach the service.
        assert!(grew("opens") >= 2, "{after}");
        assert!(grew("opened_bytes") >= 105_000, "{after}");
        assert_eq!(read, 0, "passthrough reads went through the service");
    } else {
        // No passthrough on this kernel: the bytes go through the service.
        assert_eq!(grew("opens"), 0, "{after}");
        assert!(read >= 105_000, "{after}");
    }
    // Released once the reader closed them (RELEASE comes after close).
    assert!(
        wait_for(Duration::from_secs(10), || w
            .status()
            .is_some_and(|s| s["passthrough_files"]["open_files"] == 0)),
        "{:?}",
        w.status()
    );
}

/// The samples of a Prometheus text exposition (format 0.0.4), by
/// `name{labels}`; panics at the first line that is not well formed, at a
/// sample of a family without HELP and TYPE before it, and at a family
/// typed twice or a sample given twice.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    fn valid_name(n: &str) -> bool {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps = HashSet::new();
    let mut samples = BTreeMap::new();
    assert!(text.ends_with('\n'), "the text ends with a newline");
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| -> ! { panic!("line {}: {why}: {line:?}", n + 1) };
        if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), Some(help)) if valid_name(name) && !help.is_empty() => {
                    if !helps.insert(name.to_string()) {
                        bad("HELP twice")
                    }
                }
                (Some("TYPE"), Some(name), Some(kind)) if valid_name(name) => {
                    if !["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind) {
                        bad("unknown type")
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        bad("TYPE twice")
                    }
                }
                _ => bad("a comment that is neither HELP nor TYPE"),
            }
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or_else(|| bad("no value"));
        let name = &line[..end];
        if !valid_name(name) {
            bad("invalid metric name")
        }
        let mut rest = &line[end..];
        let mut labels = Vec::new();
        if let Some(mut l) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = l.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = l.find('=').unwrap_or_else(|| bad("label without ="));
                let key = &l[..eq];
                if !valid_name(key) || key.contains(':') {
                    bad("invalid label name")
                }
                l = l[eq + 1..]
                    .strip_prefix('"')
                    .unwrap_or_else(|| bad("unquoted label value"));
                let mut value = String::new();
                let mut chars = l.char_indices();
                let close = loop {
                    match chars.next() {
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            _ => bad("bad escape in a label value"),
                        },
                        Some((_, c)) => value.push(c),
                        None => bad("unterminated label value"),
                    }
                };
                labels.push(format!("{key}={value:?}"));
                l = &l[close + 1..];
                if let Some(after) = l.strip_prefix(',') {
                    l = after;
                } else if !l.starts_with('}') {
                    bad("labels not separated by commas")
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| bad("no space before the value"));
        let value: f64 = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| bad("the value is not a number")),
        };
        // The family: a summary's (or histogram's) samples add suffixes.
        let family = ["_sum", "_count", "_bucket"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|f| {
                types
                    .get(*f)
                    .is_some_and(|k| k == "summary" || k == "histogram")
            })
            .unwrap_or(name);
        if !types.contains_key(family) || !helps.contains(family) {
            bad("a sample whose family has no TYPE or HELP before it")
        }
        let key = format!("{name}{{{}}}", labels.join(","));
        if samples.insert(key, value).is_some() {
            bad("a sample given twice")
        }
    }
    samples
}

#[test]
fn the_prometheus_parser_of_these_tests_refuses_what_is_malformed() {
    let good = "# HELP x_total X.\n# TYPE x_total counter\nx_total{op=\"a\\\"b\"} 3\n";
    assert_eq!(parse_prometheus(good)["x_total{op=\"a\\\"b\"}"], 3.0);
    for bad in [
        "x_total 3\n",                                               // no TYPE
        "# HELP x X.\n# TYPE x gauge\nx{op=a} 1\n",                  // unquoted
        "# HELP x X.\n# TYPE x gauge\nx 1 2 3\n",                    // not a value
        "# HELP x X.\n# TYPE x gauge\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n", // twice
        "# HELP x X.\n# TYPE x gauge\n# TYPE x gauge\nx 1\n",        // typed twice
        "# HELP x X.\n# TYPE x gauge\n1x 1\n",                       // name
        "# HELP x X.\n# TYPE x gauge\nx{a=\"1\" b=\"2\"} 1\n",       // no comma
        "# HELP x X.\n# TYPE x wobbly\nx 1\n",                       // type
    ] {
        let caught = std::panic::catch_unwind(|| parse_prometheus(bad));
        assert!(caught.is_err(), "accepted: {bad:?}");
    }
}

/// Run a runtime that reads the files, so the counts are not zero.
fn read_in_a_runtime(w: &World) {
    let mnt = w.mnt.display();
    let out = w.run_sh("obs/files", &format!("cat {mnt}/a {mnt}/sub/c > /dev/null"));
    ok(&out, "spfs run");
}

#[test]
fn metrics_are_prometheus_text() {
    require_vfs!();
    let w = World::with_mode(Mode::Router);
    commit(&w, "obs/files");
    w.start_service();
    read_in_a_runtime(&w);
    let out = w.vfs(&["metrics"]);
    ok(&out, "metrics");
    let text = stdout(&out);
    let samples = parse_prometheus(&text);
    assert!(
        samples["spfs_vfs_requests_total{op=\"lookup\"}"] > 0.0,
        "{text}"
    );
    assert!(
        samples["spfs_vfs_requests_total{op=\"read\"}"] > 0.0,
        "{text}"
    );
    assert!(
        samples["spfs_vfs_read_bytes_total{}"] >= 105_000.0,
        "{text}"
    );
    assert!(samples["spfs_vfs_resident_memory_bytes{}"] > 1e6, "{text}");
    let q = |q: &str| {
        samples[&format!("spfs_vfs_request_duration_seconds{{op=\"lookup\",quantile=\"{q}\"}}")]
    };
    assert!(0.0 < q("0.5") && q("0.5") <= q("0.9") && q("0.9") <= q("0.99"));
    assert!(q("0.99") <= q("0.999"));
    assert_eq!(
        samples["spfs_vfs_request_duration_seconds_count{op=\"lookup\"}"],
        samples["spfs_vfs_requests_total{op=\"lookup\"}"]
    );
    for family in [
        "spfs_vfs_request_errors_total",
        "spfs_vfs_passthrough_opens_total",
        "spfs_vfs_route_cache_hits_total",
        "spfs_vfs_unrouted_requests_total",
        "spfs_vfs_views",
        "spfs_vfs_entries",
        "spfs_vfs_trees_bytes",
        "spfs_vfs_remote_fetched_bytes_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "no {family}: {text}"
        );
    }
}

/// Send `request` to `port`; the whole answer.
fn http(port: u16, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(request).expect("send");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn the_loopback_port_serves_the_same_metrics() {
    require_vfs!();
    let w = World::with_mode(Mode::Router);
    commit(&w, "obs/files");
    let port = free_port();
    w.start_service_with(&[("SPFS_VFS_METRICS_LISTEN", &format!("127.0.0.1:{port}"))]);
    read_in_a_runtime(&w);
    // A connection that sends nothing does not hold up a scrape.
    let _idle = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let answer = http(port, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    let served = parse_prometheus(body);
    let out = w.vfs(&["metrics"]);
    ok(&out, "metrics");
    let asked = parse_prometheus(&stdout(&out));
    // The same samples (values move on between the two, and an operation
    // first asked meanwhile gains quantiles).
    let samples = |m: &BTreeMap<String, f64>| -> Vec<String> {
        m.keys()
            .filter(|k| !k.contains("quantile="))
            .cloned()
            .collect()
    };
    assert_eq!(samples(&served), samples(&asked));
    for q in ["0.5", "0.9", "0.99", "0.999"] {
        let key = format!("spfs_vfs_request_duration_seconds{{op=\"read\",quantile=\"{q}\"}}");
        assert!(
            served.contains_key(&key) && asked.contains_key(&key),
            "{key}"
        );
    }
    assert!(
        served["spfs_vfs_requests_total{op=\"read\"}"] > 0.0,
        "{body}"
    );
    // Other paths, methods, and oversized requests are refused.
    assert!(http(port, b"GET / HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 404 "));
    assert!(http(port, b"POST /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 405 "));
    let huge = format!("GET /metrics HTTP/1.0\r\nX: {}\r\n\r\n", "x".repeat(20_000));
    assert!(
        http(port, huge.as_bytes()).starts_with("HTTP/1.0 431 "),
        "an oversized request was served"
    );
    let head_only = http(port, b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert!(
        head_only.starts_with("HTTP/1.0 200 ") && head_only.ends_with("\r\n\r\n"),
        "{head_only}"
    );
}

#[test]
fn a_metrics_address_that_is_not_loopback_is_refused() {
    require_vfs!();
    let w = World::new();
    for addr in ["0.0.0.0:9464", "192.0.2.1:9464"] {
        let out = w
            .command(SPFS_VFS)
            .arg("service")
            .env("SPFS_VFS_METRICS_LISTEN", addr)
            .output()
            .expect("spfs-vfs service");
        assert!(!out.status.success(), "a service started with {addr}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("vfs.metrics_listen") && err.contains("not a loopback address"),
            "{err}"
        );
        assert!(w.status().is_none(), "a service answers");
    }
}
