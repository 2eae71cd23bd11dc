//! Command-line tests of `spfs check` and its repair, `spfs check --pull
//! [REMOTE]`, against real remotes: a directory, a running `spfs server`
//! and a running S3 server (`s3s-fs`).
//!
//! Each test has a temporary directory holding the remotes and one host's
//! repository (`host`), all named in one config file. The host commits,
//! pushes, then loses or damages objects and payloads in its repository.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use spfs_model::{Digest, Object};
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
        FsRepository::create(dir.path().join("origin")).unwrap();
        std::fs::write(
            &config,
            format!(
                "[remote.origin]\naddress = \"file://{0}/origin\"\n\
                 [remote.gone]\naddress = \"file:{0}/nothing\"\n\
                 [remote.bad]\naddress = \"ftp://example\"\n",
                dir.path().display()
            ),
        )
        .unwrap();
        Studio { dir, config }
    }

    fn add_remote(&self, name: &str, lines: &[String]) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(&format!("[remote.{name}]\n{}\n", lines.join("\n")));
        std::fs::write(&self.config, text).unwrap();
    }

    fn host_root(&self) -> PathBuf {
        self.dir.path().join("host")
    }

    fn host(&self) -> FsRepository {
        FsRepository::open(self.host_root()).unwrap()
    }

    fn remote(&self, name: &str) -> FsRepository {
        FsRepository::open(self.dir.path().join(name)).unwrap()
    }

    /// `spfs ARGS` on the host, with a repository root of its own.
    fn spfs_in(&self, root: &Path, args: &[&str]) -> Output {
        let mut c = Command::new(SPFS);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SPFS_") {
                c.env_remove(k);
            }
        }
        c.args(args)
            .env("HOME", self.dir.path())
            .env("SPFS_CONFIG", &self.config)
            .env("SPFS_STORAGE_ROOT", root)
            .output()
            .unwrap()
    }

    fn spfs(&self, args: &[&str]) -> Output {
        self.spfs_in(&self.host_root(), args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.spfs(args);
        assert!(
            out.status.success(),
            "spfs {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `spfs ARGS` that exits with `code`; its stdout.
    fn exits(&self, code: i32, args: &[&str]) -> String {
        let out = self.spfs(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "spfs {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Commit files (path, content, mode) as `tag`; the layer's digest.
    fn commit(&self, tag: &str, files: &[(&str, &str, u32)]) -> Digest {
        let src = self
            .dir
            .path()
            .join(format!("src-{}", tag.replace('/', "-")));
        for (rel, content, mode) in files {
            let p = src.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        let out = self.ok(&["commit", "--path", src.to_str().unwrap(), "-t", tag]);
        Digest::parse(out.lines().last().unwrap().trim()).unwrap()
    }

    /// The manifest of layer `layer` on the host.
    fn manifest_of(&self, layer: &Digest) -> Digest {
        match self.host().read_object(layer).unwrap() {
            Object::Layer(l) => l.manifest,
            other => panic!("not a layer: {other:?}"),
        }
    }

    /// The names in the host's quarantine directory.
    fn quarantined(&self) -> Vec<String> {
        match std::fs::read_dir(self.host_root().join("quarantine")) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn digest(text: &str) -> Digest {
    Digest::of(text.as_bytes())
}

/// Overwrite a stored (read-only) file.
fn damage(path: &Path, bytes: &[u8]) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Flip the first byte of a stored file; its new bytes.
fn flip(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[0] ^= 0x20;
    damage(path, &bytes);
    bytes
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The digests of a JSON list of {"digest", …}.
fn digests(list: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["digest"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn pull_repairs_missing_and_corrupt_objects_and_payloads_from_a_directory_remote() {
    let s = Studio::new();
    let one = s.commit(
        "t/one",
        &[
            ("gone", "a payload that goes missing", 0o644),
            ("flipped", "a payload whose byte flips", 0o644),
            ("secret", "a private payload that flips", 0o600),
            ("fine", "untouched", 0o644),
        ],
    );
    let two = s.commit(
        "t/two",
        &[
            ("child", "reached only through a lost manifest", 0o644),
            ("sibling", "still here", 0o644),
        ],
    );
    s.ok(&["push", "t/one", "t/two"]);
    let host = s.host();
    let (gone, flipped, secret) = (
        digest("a payload that goes missing"),
        digest("a payload whose byte flips"),
        digest("a private payload that flips"),
    );
    let child = digest("reached only through a lost manifest");
    let manifest = s.manifest_of(&two);
    let private = host.private_payload_path(&secret, uid());
    assert!(private.exists() && !host.payload_path(&secret).exists());
    std::fs::remove_file(host.payload_path(&gone)).unwrap();
    std::fs::remove_file(host.object_path(&manifest)).unwrap();
    std::fs::remove_file(host.payload_path(&child)).unwrap();
    let flipped_bytes = flip(&host.payload_path(&flipped));
    let secret_bytes = flip(&private);

    let out = s.exits(1, &["check"]);
    for line in [
        format!("missing {gone}"),
        format!("missing {manifest}"),
        format!("corrupt {flipped}: content hashes to"),
        format!("corrupt {secret}: private copy of user {}", uid()),
    ] {
        assert!(out.contains(&line), "{line:?} not in {out}");
    }

    let out = s.exits(0, &["check", "--pull"]);
    for line in [
        format!("repaired {gone} (missing) from origin"),
        format!("repaired {manifest} (missing) from origin"),
        format!("repaired {flipped} (corrupt) from origin"),
        format!("repaired {secret} (corrupt) from origin"),
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} not in {out}");
    }
    assert!(
        out.trim_end().ends_with("OK") && out.contains("repaired 4, unrepaired 0"),
        "{out}"
    );
    let out = s.exits(0, &["check"]);
    assert!(out.trim_end().ends_with(": OK"), "{out}");
    // The lost manifest's missing child came with it.
    assert!(host.has_payload(&child));
    assert_eq!(
        s.ok(&["read", "t/two", "child"]),
        "reached only through a lost manifest"
    );
    // Public stays public, private stays private (the remote's copy is).
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&host.payload_path(&gone)), 0o444);
    assert_eq!(mode(&host.payload_path(&flipped)), 0o444);
    assert_eq!(mode(&private), 0o400);
    assert_eq!(std::fs::metadata(&private).unwrap().uid(), uid());
    assert!(
        !host.payload_path(&secret).exists(),
        "a private payload went public"
    );
    assert_eq!(
        s.ok(&["read", "t/one", "secret"]),
        "a private payload that flips"
    );
    // The corrupt copies were moved to quarantine, not overwritten.
    let q = s.quarantined();
    let kept = |prefix: String| {
        let name = q
            .iter()
            .find(|n| n.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{prefix} not in quarantine: {q:?}"));
        std::fs::read(s.host_root().join("quarantine").join(name)).unwrap()
    };
    assert_eq!(kept(format!("{flipped}.")), flipped_bytes);
    assert_eq!(kept(format!("{secret}.u{}.", uid())), secret_bytes);
    assert_eq!(q.len(), 2, "{q:?}");
    assert_eq!(
        std::fs::read_dir(s.host_root().join("tmp"))
            .unwrap()
            .count(),
        0,
        "temporary files left"
    );
    // Nothing to do: nothing changes, and the answer is the same.
    let again = json(&s.ok(&["check", "--pull", "--json", &one.to_string()]));
    assert_eq!(again["clean"], true, "{again}");
    assert_eq!(again["repaired"].as_array().unwrap().len(), 0, "{again}");
}

#[test]
fn a_remote_lacking_an_object_or_serving_corrupt_bytes_repairs_nothing() {
    let s = Studio::new();
    s.commit(
        "t/pushed",
        &[
            ("local-corrupt", "bad on both sides", 0o644),
            ("lost", "lost here, bad there", 0o644),
        ],
    );
    s.ok(&["push", "t/pushed"]);
    let unpushed = s.commit("t/unpushed", &[("f", "never pushed", 0o644)]);
    let host = s.host();
    let origin = s.remote("origin");
    let (both, lost) = (digest("bad on both sides"), digest("lost here, bad there"));
    let manifest = s.manifest_of(&unpushed);
    std::fs::remove_file(host.object_path(&manifest)).unwrap();
    std::fs::remove_file(host.payload_path(&lost)).unwrap();
    let local_bytes = flip(&host.payload_path(&both));
    damage(&origin.payload_path(&both), b"the remote's own bad bytes");
    damage(&origin.payload_path(&lost), b"LOST HERE, BAD THERE");

    let report = json(&s.exits(1, &["check", "--pull", "origin", "--json"]));
    assert_eq!(report["clean"], false, "{report}");
    assert_eq!(report["repaired"].as_array().unwrap().len(), 0, "{report}");
    let mut expected = vec![both.to_string(), lost.to_string(), manifest.to_string()];
    expected.sort();
    assert_eq!(digests(&report["unrepaired"]), expected, "{report}");
    let reason = |d: &Digest| {
        report["unrepaired"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["digest"] == d.to_string())
            .unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(reason(&manifest), "not on origin");
    for d in [both, lost] {
        let why = reason(&d);
        assert!(
            why.contains("origin served corrupt bytes") && why.contains("hashes to"),
            "{why}"
        );
    }
    // The check after the repair is in the same document.
    assert!(
        report["missing"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == &lost.to_string())
    );
    assert_eq!(report["corrupt"][0]["digest"], both.to_string(), "{report}");
    // Nothing changed: the corrupt copy stays where it was, nothing was stored.
    assert_eq!(
        std::fs::read(host.payload_path(&both)).unwrap(),
        local_bytes
    );
    assert!(!host.has_payload(&lost) && !host.has_object(&manifest));
    assert!(s.quarantined().is_empty(), "{:?}", s.quarantined());
    assert_eq!(
        std::fs::read_dir(s.host_root().join("tmp"))
            .unwrap()
            .count(),
        0
    );
    // The text says the same, one line each.
    let out = s.exits(1, &["check", "--pull"]);
    assert!(
        out.lines()
            .any(|l| l == format!("unrepaired {manifest}: not on origin")),
        "{out}"
    );
    assert!(out.contains("repaired 0, unrepaired 3"), "{out}");
}

#[test]
fn an_unknown_or_unusable_remote_is_one_line_exit_2_and_changes_nothing() {
    let s = Studio::new();
    s.commit("t/x", &[("a", "aaaa", 0o644), ("b", "bbbb", 0o644)]);
    s.ok(&["push", "t/x"]);
    let host = s.host();
    std::fs::remove_file(host.payload_path(&digest("aaaa"))).unwrap();
    let bad = flip(&host.payload_path(&digest("bbbb")));
    for (remote, says) in [
        ("nope", "unknown remote 'nope'"),
        ("bad", "remote 'bad'"),
        ("gone", "remote 'gone'"),
    ] {
        let out = s.spfs(&["check", "--pull", remote]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(says), "{err}");
        assert!(out.stdout.is_empty(), "{out:?}");
    }
    assert!(!host.has_payload(&digest("aaaa")));
    assert_eq!(
        std::fs::read(host.payload_path(&digest("bbbb"))).unwrap(),
        bad
    );
    assert!(s.quarantined().is_empty());
    // Known before anything is read: even a clean repository says so.
    let clean = s.dir.path().join("clean-host");
    FsRepository::create(&clean).unwrap();
    let out = s.spfs_in(&clean, &["check", "--pull", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// A running child process (a server), stopped on drop.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn pull_repairs_over_grpc() {
    let s = Studio::new();
    let central = s.dir.path().join("central");
    FsRepository::create(&central).unwrap();
    let token = s.dir.path().join("central.token");
    std::fs::write(&token, "tok\n").unwrap();
    let mut c = Command::new(SPFS);
    c.args(["server", "--listen", "127.0.0.1:0", "--token-file"])
        .arg(&token)
        .env("HOME", s.dir.path())
        .env("SPFS_CONFIG", &s.config)
        .env("SPFS_STORAGE_ROOT", &central)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    let mut child = c.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = Running(child);
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first).unwrap();
    let address = first
        .split_whitespace()
        .find(|w| w.starts_with("grpc://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    s.add_remote(
        "central",
        &[
            format!("address = \"{address}\""),
            format!("token_file = \"{}\"", token.display()),
        ],
    );
    let big = "over the wire ".repeat(150_000); // 2.1 MB: several chunks
    s.commit(
        "g/x",
        &[("big", &big, 0o644), ("small", "small one", 0o644)],
    );
    s.ok(&["push", "g/x", "--to", "central"]);
    let host = s.host();
    std::fs::remove_file(host.payload_path(&digest("small one"))).unwrap();
    flip(&host.payload_path(&Digest::of(big.as_bytes())));
    s.exits(1, &["check"]);
    let out = s.exits(0, &["check", "--pull", "central"]);
    assert!(
        out.contains("(missing) from central") && out.contains("(corrupt) from central"),
        "{out}"
    );
    s.exits(0, &["check"]);
    assert_eq!(s.ok(&["read", "g/x", "big"]), big);
}

#[test]
fn pull_repairs_over_s3() {
    let s = Studio::new();
    if Command::new("s3s-fs").arg("--version").output().is_err() {
        if std::env::var("SPFS_REQUIRE_S3_TESTS").as_deref() == Ok("1") {
            panic!("s3s-fs is required (scripts/setup.sh installs it)");
        }
        eprintln!("skipping: s3s-fs is not installed (scripts/setup.sh installs it)");
        return;
    }
    let data = s.dir.path().join("s3");
    std::fs::create_dir_all(data.join("layers")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (key, secret) = ("AKIASPFSCHECK", "check-secret-key-99");
    let _server = Running(
        Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", key, "--secret-key", secret])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let up = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(25));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "s3s-fs did not start");
    s.add_remote(
        "store",
        &[
            "address = \"s3://layers/studio\"".into(),
            format!("endpoint = \"http://127.0.0.1:{port}\""),
            "region = \"us-east-1\"".into(),
            format!("access_key_id = \"{key}\""),
            format!("secret_access_key = \"{secret}\""),
        ],
    );
    let layer = s.commit("s3/x", &[("f", "in a bucket", 0o644), ("g", "also", 0o644)]);
    s.ok(&["push", "s3/x", "--to", "store"]);
    let host = s.host();
    let manifest = s.manifest_of(&layer);
    std::fs::remove_file(host.object_path(&manifest)).unwrap();
    std::fs::remove_file(host.payload_path(&digest("in a bucket"))).unwrap();
    flip(&host.payload_path(&digest("also")));
    let out = s.exits(0, &["check", "--pull", "store"]);
    for line in [
        format!("repaired {manifest} (missing) from store"),
        format!("repaired {} (corrupt) from store", digest("also")),
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} not in {out}");
    }
    assert!(!out.contains(secret), "{out}");
    s.exits(0, &["check"]);
    assert_eq!(s.ok(&["read", "s3/x", "f"]), "in a bucket");
}
