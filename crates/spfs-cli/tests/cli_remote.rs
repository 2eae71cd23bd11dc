//! Command-line tests of remotes: `spfs remote ls`, `push`, `pull` and
//! `sync` between real repositories on this host (directory remotes).
//!
//! Each test has a temporary directory holding a "studio" repository
//! (`origin`), a second remote (`backup`) and any number of hosts, each
//! with its own local repository; all share one config file naming the
//! remotes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use spfs_model::Digest;
use spfs_storage::FsRepository;

const SPFS: &str = env!("CARGO_BIN_EXE_spfs");

struct Studio {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Studio {
    fn new() -> Studio {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("spfs.toml");
        for remote in ["origin", "backup"] {
            FsRepository::create(dir.path().join(remote)).unwrap();
        }
        std::fs::write(
            &config,
            format!(
                "[remote.origin]\naddress = \"file://{0}/origin\"\n\
                 [remote.backup]\naddress = \"{0}/backup\"\n\
                 [remote.gone]\naddress = \"file:{0}/nothing\"\n\
                 [remote.bad]\naddress = \"ftp://example\"\n",
                dir.path().display()
            ),
        )
        .unwrap();
        Studio { dir, config }
    }

    /// Add `[remote.NAME]` with these `key = value` lines.
    fn add_remote(&self, name: &str, lines: &[String]) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(&format!("[remote.{name}]\n{}\n", lines.join("\n")));
        std::fs::write(&self.config, text).unwrap();
    }

    /// Start `spfs server` over repository `<dir>/NAME` (made if needed)
    /// and add it as remote NAME.
    fn serve(&self, name: &str, extra: &[&str], token: Option<&str>) -> Server {
        let root = self.dir.path().join(name);
        if !root.exists() {
            FsRepository::create(&root).unwrap();
        }
        let mut c = Command::new(SPFS);
        c.args(["server", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("HOME", self.dir.path())
            .env("SPFS_CONFIG", &self.config)
            .env("SPFS_STORAGE_ROOT", &root)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        let mut lines = vec![];
        if let Some(token) = token {
            let file = self.dir.path().join(format!("{name}.token"));
            std::fs::write(&file, format!("{token}\n")).unwrap();
            c.arg("--token-file").arg(&file);
            lines.push(format!("token_file = \"{}\"", file.display()));
        }
        let mut child = c.spawn().unwrap();
        let mut first = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut first,
        )
        .unwrap();
        let address = first
            .split_whitespace()
            .find(|w| w.starts_with("grpc://"))
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_string();
        lines.insert(0, format!("address = \"{address}\""));
        self.add_remote(name, &lines);
        Server(child)
    }

    fn remote(&self, name: &str) -> FsRepository {
        FsRepository::open(self.dir.path().join(name)).unwrap()
    }

    /// `spfs ARGS` on host `host` (its repository is `<dir>/host-<host>`).
    fn spfs(&self, host: &str, args: &[&str]) -> Output {
        let mut c = Command::new(SPFS);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SPFS_") {
                c.env_remove(k);
            }
        }
        c.args(args)
            .env("HOME", self.dir.path())
            .env("SPFS_CONFIG", &self.config)
            .env(
                "SPFS_STORAGE_ROOT",
                self.dir.path().join(format!("host-{host}")),
            )
            .output()
            .unwrap()
    }

    fn ok(&self, host: &str, args: &[&str]) -> String {
        let out = self.spfs(host, args);
        assert!(
            out.status.success(),
            "spfs {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn fails(&self, host: &str, args: &[&str]) -> String {
        let out = self.spfs(host, args);
        assert!(!out.status.success(), "spfs {args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        err
    }

    /// Commit files on `host` as `tag`; the layer's digest.
    fn commit(&self, host: &str, tag: &str, files: &[(&str, &str)]) -> String {
        let src = self
            .dir
            .path()
            .join(format!("src-{}", tag.replace('/', "-")));
        for (rel, content) in files {
            let p = src.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        let out = self.ok(
            host,
            &["commit", "--path", src.to_str().unwrap(), "-t", tag],
        );
        out.lines().last().unwrap().trim().to_string()
    }
}

/// A running `s3s-fs` (a real S3 server over a directory), stopped on drop.
struct S3Server {
    child: std::process::Child,
    data: PathBuf,
    port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const S3_KEY: &str = "AKIASPFSTEST";
const S3_SECRET: &str = "very-secret-key-41";

impl Studio {
    /// Start an S3 server with bucket `bucket` and add remote NAME for
    /// `s3://bucket/prefix` on it; `None` when no S3 server is installed
    /// (and not required).
    fn s3(&self, name: &str, bucket: &str, prefix: &str) -> Option<S3Server> {
        if Command::new("s3s-fs").arg("--version").output().is_err() {
            if std::env::var("SPFS_REQUIRE_S3_TESTS").as_deref() == Ok("1") {
                panic!("s3s-fs is required (scripts/setup.sh installs it)");
            }
            eprintln!("skipping: s3s-fs is not installed (scripts/setup.sh installs it)");
            return None;
        }
        let data = self.dir.path().join(format!("s3-{name}"));
        std::fs::create_dir_all(data.join(bucket)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let up = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(25));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "s3s-fs did not start");
        self.add_remote(
            name,
            &[
                format!("address = \"s3://{bucket}/{prefix}\""),
                format!("endpoint = \"http://127.0.0.1:{port}\""),
                "region = \"us-east-1\"".into(),
                format!("access_key_id = \"{S3_KEY}\""),
                format!("secret_access_key = \"{S3_SECRET}\""),
            ],
        );
        Some(S3Server { child, data, port })
    }
}

/// A running `spfs server`, stopped on drop.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

#[test]
fn remotes_are_listed_and_bad_ones_named() {
    let s = Studio::new();
    let list = json(&s.ok("a", &["remote", "ls", "--json"]));
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}={}",
                r["name"].as_str().unwrap(),
                r["kind"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "backup=directory",
            "bad=invalid",
            "gone=directory",
            "origin=directory"
        ]
    );
    s.commit("a", "t/x", &[("f", "x")]);
    for (remote, says) in [
        ("nope", "unknown remote 'nope'"),
        ("bad", "remote 'bad'"),
        ("gone", "remote 'gone'"),
    ] {
        let err = s.fails("a", &["push", "t/x", "--to", remote]);
        assert!(err.contains(says), "{err}");
    }
    let err = s.fails("a", &["push", "no/such-tag"]);
    assert!(err.contains("no/such-tag"), "{err}");
}

#[test]
fn push_then_pull_on_another_host_and_sync_between_remotes() {
    let s = Studio::new();
    let layer = s.commit(
        "a",
        "tools/base",
        &[
            ("bin/tool", "#!/bin/sh\necho hi\n"),
            ("lib/data", &"d".repeat(100_000)),
        ],
    );
    let out = json(&s.ok("a", &["push", "tools/base", "--json"]));
    assert_eq!(out["stats"]["objects_copied"], 2, "{out}");
    assert_eq!(out["stats"]["payloads_copied"], 2, "{out}");
    assert_eq!(out["tagged"][0]["tag"], "tools/base");
    let origin = s.remote("origin");
    assert_eq!(origin.resolve_ref("tools/base").unwrap().to_string(), layer);
    // Pushing again moves nothing and adds no tag version.
    let again = json(&s.ok("a", &["push", "tools/base", "--json"]));
    assert_eq!(again["stats"]["objects_copied"], 0);
    assert_eq!(again["tagged"].as_array().unwrap().len(), 0);
    assert_eq!(origin.tag_history("tools/base").unwrap().len(), 1);
    // Another host pulls it and reads its files.
    s.ok("b", &["pull", "tools/base", "--from", "origin"]);
    let ls = s.ok("b", &["ls", "tools/base", "lib"]);
    assert!(ls.contains("data"), "{ls}");
    let bytes = s.ok("b", &["read", "tools/base", "bin/tool"]);
    assert_eq!(bytes, "#!/bin/sh\necho hi\n");
    s.ok("b", &["check", "tools/base"]);
    // Remote to remote.
    s.ok(
        "b",
        &["sync", "tools/base", "--from", "origin", "--to", "backup"],
    );
    let backup = s.remote("backup");
    let d = Digest::parse(&layer).unwrap();
    assert_eq!(backup.resolve_ref("tools/base").unwrap(), d);
    assert!(
        spfs_storage::check::check(&backup, &[d])
            .unwrap()
            .is_clean()
    );
}

#[test]
fn commit_straight_into_a_remote() {
    let s = Studio::new();
    let src = s.dir.path().join("direct");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "direct").unwrap();
    let err = s.fails(
        "a",
        &[
            "commit",
            "--path",
            src.to_str().unwrap(),
            "--remote",
            "nope",
        ],
    );
    assert!(err.contains("'nope'"), "{err}");
    let out = s.ok(
        "a",
        &[
            "commit",
            "--path",
            src.to_str().unwrap(),
            "-t",
            "d/x",
            "--remote",
            "origin",
        ],
    );
    let digest = Digest::parse(out.trim()).unwrap();
    assert_eq!(s.remote("origin").resolve_ref("d/x").unwrap(), digest);
    assert!(
        spfs_storage::check::check(&s.remote("origin"), &[digest])
            .unwrap()
            .is_clean()
    );
}

#[test]
fn a_corrupt_remote_payload_is_named_and_not_stored() {
    let s = Studio::new();
    s.commit("a", "c/x", &[("f", &"content ".repeat(1000))]);
    s.ok("a", &["push", "c/x"]);
    let d = Digest::of("content ".repeat(1000).as_bytes());
    let path = s.remote("origin").payload_path(&d);
    make_writable(&path);
    std::fs::write(&path, "CONTENT ".repeat(1000)).unwrap();
    let err = s.fails("b", &["pull", "c/x"]);
    assert!(
        err.contains(&d.to_string()) && err.contains("run again"),
        "{err}"
    );
    let host_b = FsRepository::open(s.dir.path().join("host-b")).unwrap();
    assert!(!host_b.has_payload(&d));
    assert!(
        host_b.resolve_ref("c/x").is_err(),
        "tagged without its data"
    );
}

fn make_writable(path: &Path) {
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(path, perms).unwrap();
}

#[test]
fn concurrent_pushes_of_one_tag_lose_no_version() {
    let s = Studio::new();
    let hosts: Vec<_> = (0..6).map(|i| format!("h{i}")).collect();
    for (i, h) in hosts.iter().enumerate() {
        s.commit(h, "shared/tag", &[("who", &format!("host {i}"))]);
    }
    std::thread::scope(|scope| {
        for h in &hosts {
            let s = &s;
            scope.spawn(move || s.ok(h, &["push", "shared/tag"]));
        }
    });
    let history = s.remote("origin").tag_history("shared/tag").unwrap();
    assert_eq!(history.len(), hosts.len(), "{history:?}");
}

#[test]
fn a_grpc_server_takes_pushes_and_serves_pulls() {
    let s = Studio::new();
    let _server = s.serve("central", &[], Some("s3cret-token"));
    let big = "0123456789abcdef".repeat(200_000); // 3.2 MB: several chunks
    let layer = s.commit("a", "g/tool", &[("big", &big), ("small", "s")]);
    let out = json(&s.ok("a", &["push", "g/tool", "--to", "central", "--json"]));
    assert_eq!(out["stats"]["payloads_copied"], 2, "{out}");
    assert_eq!(
        s.remote("central")
            .resolve_ref("g/tool")
            .unwrap()
            .to_string(),
        layer
    );
    s.ok("b", &["pull", "g/tool", "--from", "central"]);
    assert_eq!(s.ok("b", &["read", "g/tool", "big"]), big);
    s.ok("b", &["check", "g/tool"]);
    // Server to directory remote.
    s.ok(
        "b",
        &["sync", "g/tool", "--from", "central", "--to", "backup"],
    );
    assert_eq!(
        s.remote("backup")
            .resolve_ref("g/tool")
            .unwrap()
            .to_string(),
        layer
    );
    // Concurrent pushes of one tag through the server lose no version.
    let hosts: Vec<_> = (0..4).map(|i| format!("p{i}")).collect();
    for (i, h) in hosts.iter().enumerate() {
        s.commit(h, "g/shared", &[("who", &format!("{i}"))]);
    }
    std::thread::scope(|scope| {
        for h in &hosts {
            let s = &s;
            scope.spawn(move || s.ok(h, &["push", "g/shared", "--to", "central"]));
        }
    });
    assert_eq!(
        s.remote("central").tag_history("g/shared").unwrap().len(),
        hosts.len()
    );
}

#[test]
fn a_grpc_server_refuses_without_its_token_when_read_only_and_when_corrupt() {
    let s = Studio::new();
    let _server = s.serve("central", &[], Some("right"));
    // Writable without a token: refused, with the way out named.
    let out = s.spfs("a", &["server", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--token-file") && err.contains("--read-only"),
        "{err}"
    );
    s.commit("a", "t/x", &[("f", &"payload ".repeat(1000))]);
    s.ok("a", &["push", "t/x", "--to", "central"]);
    // A wrong token.
    let wrong = s.dir.path().join("wrong.token");
    std::fs::write(&wrong, "wrong").unwrap();
    let address = std::fs::read_to_string(&s.config)
        .unwrap()
        .lines()
        .find(|l| l.contains("grpc://"))
        .unwrap()
        .to_string();
    s.add_remote(
        "impostor",
        &[
            address.clone(),
            format!("token_file = \"{}\"", wrong.display()),
        ],
    );
    let err = s.fails("b", &["pull", "t/x", "--from", "impostor"]);
    assert!(err.contains("token"), "{err}");
    // Read-only.
    let _ro = s.serve("mirror", &["--read-only"], None);
    let err = s.fails("a", &["push", "t/x", "--to", "mirror"]);
    assert!(err.contains("read-only"), "{err}");
    // A corrupt payload on the server is named and not stored.
    let d = Digest::of("payload ".repeat(1000).as_bytes());
    let path = s.remote("central").payload_path(&d);
    make_writable(&path);
    std::fs::write(&path, "PAYLOAD ".repeat(1000)).unwrap();
    let err = s.fails("b", &["pull", "t/x", "--from", "central"]);
    assert!(err.contains(&d.to_string()), "{err}");
    let host_b = FsRepository::open(s.dir.path().join("host-b")).unwrap();
    assert!(!host_b.has_payload(&d));
    // Nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    s.add_remote("down", &[format!("address = \"grpc://127.0.0.1:{port}\"")]);
    let err = s.fails("b", &["pull", "t/x", "--from", "down"]);
    assert!(
        err.contains("remote 'down'") && err.contains("cannot be reached"),
        "{err}"
    );
}

#[test]
fn an_s3_remote_takes_pushes_serves_pulls_and_keeps_every_tag_version() {
    let s = Studio::new();
    let Some(server) = s.s3("store", "layers", "studio/main") else {
        return;
    };
    // 12 MiB: uploaded in parts.
    let big: String = (0..(12u32 << 20) / 8)
        .map(|i| format!("{:08x}", i))
        .collect();
    let layer = s.commit("a", "s3/tool", &[("big", &big), ("small", "s")]);
    let out = json(&s.ok("a", &["push", "s3/tool", "--to", "store", "--json"]));
    assert_eq!(out["stats"]["payloads_copied"], 2, "{out}");
    let again = json(&s.ok("a", &["push", "s3/tool", "--to", "store", "--json"]));
    assert_eq!(again["stats"]["objects_copied"], 0, "{again}");
    s.ok("b", &["pull", "s3/tool", "--from", "store"]);
    assert_eq!(s.ok("b", &["read", "s3/tool", "big"]), big);
    s.ok("b", &["check", "s3/tool"]);
    s.ok(
        "b",
        &["sync", "s3/tool", "--from", "store", "--to", "backup"],
    );
    assert_eq!(
        s.remote("backup")
            .resolve_ref("s3/tool")
            .unwrap()
            .to_string(),
        layer
    );
    // Many writers of one tag lose no version.
    let hosts: Vec<_> = (0..6).map(|i| format!("w{i}")).collect();
    for (i, h) in hosts.iter().enumerate() {
        s.commit(h, "s3/shared", &[("who", &format!("{i}"))]);
    }
    std::thread::scope(|scope| {
        for h in &hosts {
            let s = &s;
            scope.spawn(move || s.ok(h, &["push", "s3/shared", "--to", "store"]));
        }
    });
    let log = s.ok("b", &["pull", "s3/shared", "--from", "store", "--json"]);
    assert!(json(&log)["tagged"].as_array().is_some());
    let versions = std::fs::read_dir(server.data.join("layers/studio/main/tags/s3/shared"))
        .unwrap()
        .count();
    assert_eq!(versions, hosts.len());
    // A version from a writer whose clock runs far ahead hides later
    // pushes: the push says so instead of reporting success.
    let skew = server.data.join("layers/studio/main/tags/s3/tool");
    std::fs::write(
        skew.join("09999999999999999999-0000000000000000"),
        format!("{layer} 9999999999 future\n"),
    )
    .unwrap();
    s.commit("a", "s3/tool", &[("big", "changed")]);
    let err = s.fails("a", &["push", "s3/tool", "--to", "store"]);
    assert!(err.contains("clock runs ahead"), "{err}");
    // Secrets are never shown.
    for args in [&["config"][..], &["remote", "ls"][..]] {
        let out = s.ok("a", args);
        assert!(!out.contains(S3_SECRET) && !out.contains(S3_KEY), "{out}");
    }
}

#[test]
fn a_corrupt_or_unreachable_s3_remote_is_named() {
    let s = Studio::new();
    let Some(server) = s.s3("store", "layers", "") else {
        return;
    };
    s.commit("a", "s3/c", &[("f", &"bytes ".repeat(1000))]);
    s.ok("a", &["push", "s3/c", "--to", "store"]);
    let d = Digest::of("bytes ".repeat(1000).as_bytes());
    std::fs::write(
        server.data.join(format!("layers/payloads/{d}")),
        "BYTES ".repeat(1000),
    )
    .unwrap();
    let err = s.fails("b", &["pull", "s3/c", "--from", "store"]);
    assert!(err.contains(&d.to_string()), "{err}");
    assert!(!err.contains(S3_SECRET), "{err}");
    // Wrong credentials.
    s.add_remote(
        "wrongkey",
        &[
            "address = \"s3://layers\"".into(),
            format!("endpoint = \"http://127.0.0.1:{}\"", server.port),
            "region = \"us-east-1\"".into(),
            format!("access_key_id = \"{S3_KEY}\""),
            "secret_access_key = \"not-the-secret\"".into(),
        ],
    );
    let err = s.fails("b", &["pull", "s3/c", "--from", "wrongkey"]);
    assert!(err.contains("remote 'wrongkey'"), "{err}");
    assert!(!err.contains("not-the-secret"), "{err}");
    drop(server);
    let err = s.fails("b", &["pull", "s3/c", "--from", "store"]);
    assert!(
        err.contains("remote 'store'") && err.contains("cannot be reached"),
        "{err}"
    );
}

#[test]
fn a_push_killed_midway_resumes_and_leaves_no_partial_object() {
    let s = Studio::new();
    let files: Vec<(String, String)> = (0..1200)
        .map(|i| (format!("d{}/f{i}", i % 30), format!("file {i} ").repeat(50)))
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let layer = s.commit("a", "big/tree", &refs);
    let origin_payloads = s.dir.path().join("origin/payloads");
    let count = || walk_files(&origin_payloads);
    let mut child = Command::new(SPFS)
        .args(["push", "big/tree", "--jobs", "2"])
        .env("HOME", s.dir.path())
        .env("SPFS_CONFIG", &s.config)
        .env("SPFS_STORAGE_ROOT", s.dir.path().join("host-a"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once some payloads, but not all, have arrived.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while count() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    let before = count();
    assert!(before > 0, "nothing arrived before the kill");
    let d = Digest::parse(&layer).unwrap();
    let origin = s.remote("origin");
    assert!(before < files.len(), "the push ended before it was killed");
    // Children first: the layer (the root) is not there without its data.
    assert!(!origin.has_object(&d), "the root arrived before its data");
    let out = json(&s.ok("a", &["push", "big/tree", "--json"]));
    let copied = out["stats"]["payloads_copied"].as_u64().unwrap();
    let present = out["stats"]["payloads_present"].as_u64().unwrap();
    assert_eq!(copied + present, files.len() as u64, "{out}");
    assert!(
        present >= before as u64 - 2,
        "the rerun copied again what was there: {out}"
    );
    assert!(
        spfs_storage::check::check(&origin, &[d])
            .unwrap()
            .is_clean()
    );
    assert_eq!(origin.resolve_ref("big/tree").unwrap(), d);
    assert_eq!(
        walk_files(&s.dir.path().join("origin/tmp")),
        0,
        "the killed transfer's temporary files stayed"
    );
}

/// Regular files under `dir`, recursively (0 if it does not exist).
fn walk_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => walk_files(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

/// A loopback relay to `upstream` that stops passing the server's bytes
/// after `limit` of them (and keeps every connection open): a server that
/// stalls mid-stream. Runs until the process ends.
fn stalling_relay(upstream: String, limit: usize) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                continue;
            };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                let mut passed = 0;
                while let Ok(n) = s_in.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let n = n.min(limit.saturating_sub(passed));
                    if n > 0 && c_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    passed += n;
                }
                // Hold the connection open, silent.
                std::thread::sleep(std::time::Duration::from_secs(3600));
            });
        }
    });
    port
}

#[test]
fn a_server_that_stalls_mid_payload_gives_an_error_not_a_hang() {
    let s = Studio::new();
    let _server = s.serve("central", &[], Some("tok"));
    let big = "stall me ".repeat(400_000); // 3.6 MB
    s.commit("a", "st/x", &[("big", &big)]);
    s.ok("a", &["push", "st/x", "--to", "central"]);
    let text = std::fs::read_to_string(&s.config).unwrap();
    let address = text.lines().find(|l| l.contains("grpc://")).unwrap();
    let upstream = address
        .split("grpc://")
        .nth(1)
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    let port = stalling_relay(upstream, 1_500_000);
    let token = s.dir.path().join("central.token");
    s.add_remote(
        "stall",
        &[
            format!("address = \"grpc://127.0.0.1:{port}\""),
            format!("token_file = \"{}\"", token.display()),
            "timeout = 2".into(),
        ],
    );
    let start = std::time::Instant::now();
    let err = s.fails("b", &["pull", "st/x", "--from", "stall"]);
    assert!(
        start.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    assert!(
        err.contains("no data") || err.contains("timed out") || err.contains("deadline"),
        "{err}"
    );
    assert!(!err.contains("corrupt"), "a stall is not corruption: {err}");
}
