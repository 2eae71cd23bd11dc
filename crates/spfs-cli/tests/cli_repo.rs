//! Command-line tests of the repository commands: `init`, `commit`, `write`,
//! tags, inspection, `check` and `config`, run as real processes against a
//! temporary repository each.
//!
//! Every test gets its own temporary directory used as `HOME`, with the
//! repository in `ROOT = tmp/repo` (`SPFS_STORAGE_ROOT`) and `SPFS_CONFIG`
//! naming an empty file, so no user or system configuration leaks in.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use spfs_model::{Digest, EntryKind, Layer, Object, TreeBuilder};
use spfs_storage::FsRepository;

const SPFS: &str = env!("CARGO_BIN_EXE_spfs");

struct Env {
    dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("repo");
        let config = dir.path().join("empty.toml");
        fs::write(&config, "").unwrap();
        Env { dir, root, config }
    }

    /// A new environment with a repository.
    fn with_repo() -> Env {
        let env = Env::new();
        env.ok(&["init", "repo", env.root.to_str().unwrap()]);
        env
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(SPFS);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SPFS_")
                || k == "RUST_LOG"
                || k == "SOURCE_DATE_EPOCH"
            {
                c.env_remove(k);
            }
        }
        c.args(args)
            .env("HOME", self.dir.path())
            .env("SPFS_STORAGE_ROOT", &self.root)
            .env("SPFS_CONFIG", &self.config)
            .env("USER", "tester")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run spfs")
    }

    /// Run, expect success and an empty stderr; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        check_ok(args, &out)
    }

    /// Run with `input` on stdin, expect success; returns stdout.
    fn ok_stdin(&self, args: &[&str], input: &[u8]) -> String {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        check_ok(args, &out)
    }

    /// Run, expect failure with one line on stderr containing every needle.
    fn fail(&self, args: &[&str], needles: &[&str]) -> String {
        let out = self.run(args);
        check_fail(args, &out, needles)
    }

    /// Run with `--json`, expect success, parse stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{all:?}: not JSON ({e}): {text}"))
    }

    /// Commit a directory; returns the digest (the last line of stdout).
    fn commit(&self, dir: &Path, tags: &[&str]) -> Digest {
        let mut args = vec!["commit", "--path", dir.to_str().unwrap()];
        for t in tags {
            args.extend(["-t", t]);
        }
        let out = self.ok(&args);
        last_digest(&out)
    }

    fn repo(&self) -> FsRepository {
        FsRepository::open(&self.root).unwrap()
    }

    /// Every file under objects/, payloads/ and tags/ (not lock files), and
    /// whether tmp/ holds anything.
    fn snapshot(&self) -> (BTreeSet<PathBuf>, bool) {
        let mut files = BTreeSet::new();
        for area in ["objects", "payloads", "tags"] {
            walk_files(&self.root.join(area), &mut files);
        }
        files.retain(|p| !p.to_string_lossy().ends_with(".lock"));
        let tmp_used = fs::read_dir(self.root.join("tmp"))
            .map(|mut r| r.next().is_some())
            .unwrap_or(false);
        (files, tmp_used)
    }
}

fn check_ok(args: &[&str], out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "spfs {args:?} failed ({:?}): {stderr}\nstdout: {stdout}",
        out.status
    );
    assert!(
        stderr.is_empty(),
        "spfs {args:?}: unexpected stderr: {stderr}"
    );
    stdout
}

fn check_fail(args: &[&str], out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "spfs {args:?} should fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "spfs {args:?}: expected one line on stderr, got: {stderr:?}"
    );
    assert!(
        stderr.starts_with("spfs: error: "),
        "spfs {args:?}: {stderr}"
    );
    for n in needles {
        assert!(
            stderr.contains(n),
            "spfs {args:?}: stderr does not name {n:?}: {stderr}"
        );
    }
    stderr
}

fn walk_files(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk_files(&p, out);
        } else {
            out.insert(p);
        }
    }
}

fn walk_dirs(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    out.insert(dir.to_path_buf());
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk_dirs(&e.path(), out);
        }
    }
}

fn last_digest(stdout: &str) -> Digest {
    let last = stdout.lines().last().unwrap_or_default();
    Digest::parse(last).unwrap_or_else(|e| panic!("last line {last:?} is not a digest: {e}"))
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

/// A small tree: files with modes, a symlink, an empty directory.
fn sample_tree(dir: &Path) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("etc/conf.d")).unwrap();
    fs::create_dir_all(dir.join("empty")).unwrap();
    fs::write(dir.join("bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(dir.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("etc/conf.d/a.conf"), b"a = 1\n").unwrap();
    fs::write(dir.join("readme"), b"hello\n").unwrap();
    symlink("bin/tool", dir.join("link")).unwrap();
}

/// Write a layer with the given entries through the storage API (the CLI
/// cannot create masks).
fn write_layer(repo: &FsRepository, items: &[(&str, EntryKind, &[u8])]) -> Digest {
    let mut b = TreeBuilder::new();
    for (path, kind, content) in items {
        match kind {
            EntryKind::Dir => b.add_dir(path.as_bytes(), 0o040755).unwrap(),
            EntryKind::Mask => b.add(path.as_bytes(), *kind, 0, 0, Digest::NULL).unwrap(),
            _ => {
                let d = repo.write_blob(content).unwrap();
                let mode = if *kind == EntryKind::Symlink {
                    0o120777
                } else {
                    0o100644
                };
                b.add(path.as_bytes(), *kind, mode, content.len() as u64, d)
                    .unwrap();
            }
        }
    }
    let manifest = repo
        .write_object(&Object::Manifest(b.build().unwrap()))
        .unwrap();
    repo.write_object(&Object::Layer(Layer {
        manifest,
        annotations: Default::default(),
    }))
    .unwrap()
}

#[test]
fn init_and_missing_repository() {
    let env = Env::new();
    let root = env.root.to_str().unwrap();
    // Read commands need a repository and say where they looked.
    for args in [
        &["tags"][..],
        &["ls", "-"],
        &["layers"],
        &["check"],
        &["log", "org/x"],
    ] {
        env.fail(args, &["no spfs repository", root]);
    }
    assert!(!env.root.exists(), "a read command created the repository");
    env.ok(&["init", "repo", root]);
    assert_eq!(fs::read_to_string(env.root.join("VERSION")).unwrap(), "1\n");
    for sub in ["objects", "payloads", "tags", "tmp"] {
        assert!(env.root.join(sub).is_dir(), "{sub}");
    }
    // Again: harmless.
    env.ok(&["init", "repo", root]);
    assert_eq!(env.ok(&["tags"]), "");
    // A file where the repository should be.
    let file = env.path("file");
    fs::write(&file, "x").unwrap();
    env.fail(&["init", "repo", file.to_str().unwrap()], &["file"]);
    // Commit creates the repository when it is missing.
    let env2 = Env::new();
    let src = env2.path("src");
    sample_tree(&src);
    env2.commit(&src, &["org/base"]);
    assert!(env2.root.join("VERSION").exists());
}

#[test]
fn commit_ls_read_info() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    let out = env.ok(&[
        "commit",
        "--path",
        src.to_str().unwrap(),
        "-t",
        "org/base",
        "-t",
        "other/name",
    ]);
    let layer = last_digest(&out);
    // Top level, directories with a slash.
    assert_eq!(
        lines(&env.ok(&["ls", "org/base"])),
        ["bin/", "empty/", "etc/", "link", "readme"]
    );
    assert_eq!(
        lines(&env.ok(&["ls", "-R", "org/base"])),
        [
            "bin/",
            "bin/tool",
            "empty/",
            "etc/",
            "etc/conf.d/",
            "etc/conf.d/a.conf",
            "link",
            "readme"
        ]
    );
    assert_eq!(
        lines(&env.ok(&["ls", "-R", "org/base", "etc"])),
        ["conf.d/", "conf.d/a.conf"]
    );
    assert_eq!(
        lines(&env.ok(&["ls", "org/base", "/etc/conf.d"])),
        ["a.conf"]
    );
    // The same through the digest, a prefix and the other tag.
    let full = layer.to_string();
    for r in [&full[..], &full[..12], "other/name", "org/base~0"] {
        assert_eq!(lines(&env.ok(&["ls", r])).len(), 5, "{r}");
    }
    // -l: mode, size, digest; symlinks show their target.
    let long = env.ok(&["ls", "-l", "org/base", "bin"]);
    let tool = Digest::of(b"#!/bin/sh\necho tool\n").to_string();
    assert!(long.starts_with("-rwxr-xr-x "), "{long}");
    assert!(long.contains(" 20 ") && long.contains(&tool), "{long}");
    let long = env.ok(&["ls", "-l", "org/base"]);
    assert!(
        long.contains("lrwxrwxrwx") && long.contains("link -> bin/tool"),
        "{long}"
    );
    assert!(long.contains("drwxr-xr-x"), "{long}");
    // ls of a file shows the file.
    assert_eq!(lines(&env.ok(&["ls", "org/base", "bin/tool"])), ["tool"]);
    // read: bytes; a symlink gives its target.
    assert_eq!(
        env.ok(&["read", "org/base", "bin/tool"]),
        "#!/bin/sh\necho tool\n"
    );
    assert_eq!(
        env.ok(&["read", "org/base", "/etc/conf.d/a.conf"]),
        "a = 1\n"
    );
    assert_eq!(env.ok(&["read", "org/base", "link"]), "bin/tool");
    env.fail(&["read", "org/base", "etc"], &["etc", "directory"]);
    env.fail(&["read", "org/base", "nope"], &["nope"]);
    env.fail(&["ls", "org/base", "nope"], &["nope"]);
    // The payload is a real copy with the content.
    let repo = env.repo();
    assert_eq!(
        fs::read(repo.payload_path(&Digest::parse(&tool).unwrap())).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    // info
    let info = env.ok(&["info", "org/base"]);
    assert!(info.contains(&format!("digest:      {layer}")), "{info}");
    assert!(info.contains("kind:        layer"), "{info}");
    assert!(info.contains("size:        32 bytes"), "{info}");
    assert!(
        info.contains("org/base") && info.contains("other/name"),
        "{info}"
    );
    let j = env.json(&["info", "org/base"]);
    assert_eq!(j["kind"], "layer");
    assert_eq!(j["digest"], full);
    assert_eq!(j["size"], 32);
    assert_eq!(j["entries"], 8);
    assert_eq!(j["layers"][0], full);
    assert!(j["manifest"].is_string());
    let tags: Vec<&str> = j["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tags, ["org/base", "other/name"]);
    // Committing the same tree again gives the same digest; check is clean.
    assert_eq!(env.commit(&src, &[]), layer);
    assert!(env.ok(&["check"]).contains(": OK"));
    assert!(!env.snapshot().1, "temporary files left behind");
}

#[test]
fn ls_json_fields() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    env.commit(&src, &["org/base"]);
    let j = env.json(&["ls", "-R", "org/base"]);
    let arr = j.as_array().unwrap();
    assert_eq!(arr.len(), 8);
    let tool = arr.iter().find(|e| e["path"] == "bin/tool").unwrap();
    assert_eq!(tool["name"], "tool");
    assert_eq!(tool["kind"], "file");
    assert_eq!(tool["mode"], 0o100755);
    assert_eq!(tool["size"], 20);
    assert_eq!(
        tool["digest"],
        Digest::of(b"#!/bin/sh\necho tool\n").to_string()
    );
    let bin = arr.iter().find(|e| e["path"] == "bin").unwrap();
    assert_eq!(bin["kind"], "dir");
    assert!(bin["digest"].is_null());
    let link = arr.iter().find(|e| e["path"] == "link").unwrap();
    assert_eq!(link["kind"], "symlink");
    // Paths are from the top of the tree, also when listing below it.
    let j = env.json(&["ls", "org/base", "etc/conf.d"]);
    assert_eq!(j[0]["path"], "etc/conf.d/a.conf");
    let j = env.json(&["ls", "org/base", "readme"]);
    assert_eq!(j[0]["path"], "readme");
}

#[test]
fn write_blobs() {
    let env = Env::new();
    let data = b"some blob bytes\n".repeat(1000);
    let out = env.ok_stdin(&["write", "-t", "org/blob"], &data);
    let d = last_digest(&out);
    assert_eq!(d, Digest::of(&data));
    assert_eq!(out.lines().count(), 1);
    let file = env.path("f.bin");
    fs::write(&file, b"from a file").unwrap();
    let d2 = last_digest(&env.ok(&["write", "-f", file.to_str().unwrap()]));
    assert_eq!(d2, Digest::of(b"from a file"));
    // Reading a blob back, whole.
    assert_eq!(env.ok(&["read", &d2.to_string()]), "from a file");
    assert_eq!(env.ok(&["read", "org/blob"]).as_bytes(), &data[..]);
    // Bytes that do not hash to their name end the read with an error.
    let path = env.repo().payload_path(&d2);
    assert!(path.exists(), "a blob from a readable file is public");
    let mode = fs::metadata(&path).unwrap().permissions();
    let mut writable = mode.clone();
    std::os::unix::fs::PermissionsExt::set_mode(&mut writable, 0o644);
    fs::set_permissions(&path, writable.clone()).unwrap();
    fs::write(&path, b"FROM a file").unwrap();
    env.fail(&["read", &d2.to_string()], &["corrupt", &d2.to_string()]);
    fs::write(&path, b"from a file").unwrap();
    fs::set_permissions(&path, mode).unwrap();
    let j = env.json(&["info", "org/blob"]);
    assert_eq!(j["kind"], "blob");
    assert_eq!(j["size"], data.len());
    assert_eq!(j["tags"][0], "org/blob");
    let info = env.ok(&["info", &d2.to_string()]);
    assert!(info.contains("kind:        blob") && info.contains("size:        11 bytes"));
    // An empty blob from an empty stdin.
    assert_eq!(last_digest(&env.ok(&["write"])), Digest::of(b""));
    // A missing file is named; nothing is written.
    let before = env.snapshot();
    env.fail(&["write", "-f", "/no/such/file"], &["/no/such/file"]);
    // A bad tag is refused before anything is stored.
    let other = env.path("other.bin");
    fs::write(&other, b"never stored").unwrap();
    env.fail(
        &["write", "-f", other.to_str().unwrap(), "-t", "bad tag"],
        &["bad tag"],
    );
    env.fail(
        &["write", "-f", other.to_str().unwrap(), "-t", "org/x~1"],
        &["org/x~1"],
    );
    assert_eq!(env.snapshot(), before);
    // read of a layer without a path explains.
    let src = env.path("src");
    sample_tree(&src);
    env.commit(&src, &["org/base"]);
    env.fail(&["read", "org/base"], &["org/base", "PATH"]);
}

#[test]
fn tags_history_log_untag() {
    let env = Env::with_repo();
    let blobs: Vec<Digest> = (0..3)
        .map(|i| last_digest(&env.ok_stdin(&["write"], format!("v{i}").as_bytes())))
        .collect();
    for d in &blobs {
        env.ok(&["tag", &d.to_string(), "org/name"]);
    }
    // A prefix and a tag version as the target.
    env.ok(&["tag", &blobs[0].short(20), "org/first", "zoo/first"]);
    env.ok(&["tag", "org/name~2", "org/again"]);
    let target = |r: &str| {
        env.json(&["info", r])["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(target("org/name"), blobs[2].to_string());
    assert_eq!(target("org/name~1"), blobs[1].to_string());
    assert_eq!(target("org/name~2"), blobs[0].to_string());
    assert_eq!(target("org/again"), blobs[0].to_string());
    env.fail(&["info", "org/name~3"], &["org/name", "~3"]);
    // log: newest first, one line per version.
    let log = env.ok(&["log", "org/name"]);
    let rows = lines(&log);
    assert_eq!(rows.len(), 3, "{log}");
    for (n, row) in rows.iter().enumerate() {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols.len(), 4, "{row}");
        assert_eq!(cols[0], blobs[2 - n].short(10));
        assert_eq!(cols[1], format!("org/name~{n}"));
        assert_eq!(cols[2], "tester");
        assert!(cols[3].ends_with('Z') && cols[3].len() == 20, "{row}");
    }
    let j = env.json(&["log", "org/name"]);
    assert_eq!(j.as_array().unwrap().len(), 3);
    assert_eq!(j[0]["spec"], "org/name");
    assert_eq!(j[1]["spec"], "org/name~1");
    assert_eq!(j[1]["version"], 1);
    assert_eq!(j[1]["target"], blobs[1].to_string());
    assert_eq!(j[1]["user"], "tester");
    assert!(j[1]["time"].as_u64().unwrap() > 1_600_000_000);
    assert!(j[1]["time_utc"].is_string());
    // tags, ls-tags, search
    assert_eq!(
        lines(&env.ok(&["tags"])),
        ["org/again", "org/first", "org/name", "zoo/first"]
    );
    let j = env.json(&["tags"]);
    let name = j
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "org/name")
        .unwrap();
    assert_eq!(name["versions"], 3);
    assert_eq!(name["target"], blobs[2].to_string());
    assert_eq!(lines(&env.ok(&["ls-tags"])), ["org/", "zoo/"]);
    assert_eq!(
        lines(&env.ok(&["ls-tags", "org"])),
        ["again", "first", "name"]
    );
    let j = env.json(&["ls-tags"]);
    assert_eq!(j[0]["name"], "org");
    assert_eq!(j[0]["folder"], true);
    let j = env.json(&["ls-tags", "/org/"]);
    assert_eq!(j[2]["name"], "name");
    assert_eq!(j[2]["folder"], false);
    env.fail(&["ls-tags", "nope"], &["nope"]);
    assert_eq!(
        lines(&env.ok(&["search", "first"])),
        ["org/first", "zoo/first"]
    );
    assert_eq!(env.ok(&["search", "nothing-like-it"]), "");
    let j = env.json(&["search", "zoo"]);
    assert_eq!(j[0]["name"], "zoo/first");
    assert_eq!(j[0]["target"], blobs[0].to_string());
    // untag one version, the latest, then everything.
    env.ok(&["untag", "org/name~1"]);
    assert_eq!(env.json(&["log", "org/name"]).as_array().unwrap().len(), 2);
    assert_eq!(target("org/name~1"), blobs[0].to_string());
    env.ok(&["untag", "org/name", "--latest"]);
    assert_eq!(target("org/name"), blobs[0].to_string());
    env.ok(&["tag", &blobs[2].to_string(), "org/name"]);
    env.ok(&["untag", "org/name", "--all"]);
    env.fail(&["log", "org/name"], &["unknown tag", "org/name"]);
    env.fail(&["untag", "org/name", "--all"], &["org/name"]);
    env.fail(&["untag", "org/first~4"], &["org/first", "~4"]);
    env.fail(&["untag", "org/first~1", "--all"], &["org/first~1"]);
    // The tag can be created again after --all removed it.
    env.ok(&["tag", &blobs[1].to_string(), "org/name"]);
    assert_eq!(target("org/name"), blobs[1].to_string());
    // Tagging an unknown reference changes nothing.
    let before = env.snapshot();
    env.fail(&["tag", "org/unknown", "org/new"], &["org/unknown"]);
    env.fail(&["tag", "org/name", "bad//name"], &["bad//name"]);
    assert_eq!(env.snapshot(), before);
    env.fail(&["log", "org/name~1"], &["org/name~1"]);
}

/// Two blobs whose digests share the first two characters.
fn colliding_pair() -> (Vec<u8>, Vec<u8>) {
    let mut seen: std::collections::HashMap<String, Vec<u8>> = Default::default();
    // 32 * 32 prefixes: a collision is certain within 1025 tries.
    for i in 0..1025u32 {
        let content = format!("collide {i}\n").into_bytes();
        let prefix = Digest::of(&content).short(2);
        if let Some(other) = seen.insert(prefix, content.clone()) {
            return (other, content);
        }
    }
    unreachable!("pigeonhole")
}

#[test]
fn partial_and_ambiguous_digests() {
    let env = Env::with_repo();
    let (a, b) = colliding_pair();
    let da = last_digest(&env.ok_stdin(&["write"], &a));
    let db = last_digest(&env.ok_stdin(&["write"], &b));
    let (sa, sb) = (da.to_string(), db.to_string());
    let common = sa
        .bytes()
        .zip(sb.bytes())
        .take_while(|(x, y)| x == y)
        .count();
    assert!(common >= 2);
    let ambiguous = &sa[..common];
    env.fail(&["info", ambiguous], &["ambiguous", ambiguous]);
    env.fail(&["read", ambiguous], &["ambiguous", ambiguous]);
    env.fail(&["tag", ambiguous, "org/x"], &["ambiguous", ambiguous]);
    // One more character makes each unique.
    assert_eq!(env.ok(&["read", &sa[..common + 1]]).as_bytes(), &a[..]);
    assert_eq!(env.ok(&["read", &sb[..common + 1]]).as_bytes(), &b[..]);
    let j = env.json(&["info", &sb[..common + 1]]);
    assert_eq!(j["digest"], sb);
    // A prefix matching nothing; a malformed digest; one character.
    let none = if sa.starts_with('Z') {
        "AAAAAAAA"
    } else {
        "ZZZZZZZZ"
    };
    env.fail(&["info", none], &[none]);
    let mut bad = sa.clone();
    bad.replace_range(0..1, "1");
    env.fail(&["info", &bad], &["invalid digest", &bad]);
    let padded = format!("{}==", &sa[..50]);
    env.fail(&["info", &padded], &["invalid digest"]);
    env.fail(&["info", &sa[..1]], &[&sa[..1]]);
    // The full digest and its 52 significant characters work.
    assert_eq!(env.ok(&["read", &sa]).as_bytes(), &a[..]);
    assert_eq!(env.ok(&["read", &sa[..52]]).as_bytes(), &a[..]);
}

#[test]
fn env_specs_and_spec_files() {
    let env = Env::new();
    let base = env.path("base");
    fs::create_dir_all(base.join("bin")).unwrap();
    fs::write(base.join("bin/a"), "base a").unwrap();
    fs::write(base.join("shared"), "from base").unwrap();
    let top = env.path("top");
    fs::create_dir_all(top.join("bin")).unwrap();
    fs::write(top.join("bin/b"), "top b").unwrap();
    fs::write(top.join("shared"), "from top").unwrap();
    let dbase = env.commit(&base, &["org/base"]);
    let dtop = env.commit(&top, &["org/top"]);
    let merged = ["bin/", "bin/a", "bin/b", "shared"];
    assert_eq!(lines(&env.ok(&["ls", "-R", "org/base+org/top"])), merged);
    assert_eq!(env.ok(&["read", "org/base+org/top", "shared"]), "from top");
    assert_eq!(env.ok(&["read", "org/top+org/base", "shared"]), "from base");
    let mixed = format!("{}+{}", dbase, &dtop.to_string()[..10]);
    assert_eq!(lines(&env.ok(&["ls", "-R", &mixed])), merged);
    // The empty environment.
    assert_eq!(env.ok(&["ls", "-"]), "");
    assert_eq!(env.ok(&["ls", ""]), "");
    // Tag versions in a spec.
    env.commit(&top, &["org/base"]);
    assert_eq!(env.ok(&["read", "org/base~1", "bin/a"]), "base a");
    env.fail(&["read", "org/base", "bin/a"], &["bin/a"]);
    // A spec file, alone and inside a spec.
    let file = env.path("env.spfs.yaml");
    fs::write(
        &file,
        format!("api: spfs/v0/envspec\nlayers:\n  - org/base~1\n  - {dtop}\n"),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    assert_eq!(lines(&env.ok(&["ls", "-R", f])), merged);
    let nested = format!("{f}+org/base~1");
    assert_eq!(env.ok(&["read", &nested, "shared"]), "from base");
    // Bad specs.
    env.fail(&["ls", "org/base++org/top"], &["org/base++org/top"]);
    env.fail(&["ls", "org/base+org/nope"], &["org/nope"]);
    env.fail(&["ls", "a b"], &["a b"]);
    let missing = env.path("missing.spfs.yaml");
    env.fail(&["ls", missing.to_str().unwrap()], &["missing.spfs.yaml"]);
    fs::write(&file, "layers: [").unwrap();
    env.fail(&["ls", f], &["env.spfs.yaml"]);
    fs::write(&file, "layers:\n  - org/nope\n").unwrap();
    env.fail(&["ls", f], &["org/nope"]);
    let wrong_name = env.path("env.yaml");
    fs::write(&wrong_name, "layers: []\n").unwrap();
    env.fail(&["ls", wrong_name.to_str().unwrap()], &["env.yaml"]);
    // A blob is not a layer.
    let blob = last_digest(&env.ok_stdin(&["write"], b"just bytes"));
    env.fail(&["ls", &blob.to_string()], &[&blob.to_string(), "blob"]);
}

#[test]
fn platform_commit_and_merged_ls_with_masks() {
    let env = Env::new();
    let base = env.path("base");
    fs::create_dir_all(base.join("a/deep")).unwrap();
    fs::write(base.join("a/deep/x"), "x").unwrap();
    fs::write(base.join("a/y"), "y").unwrap();
    fs::write(base.join("f"), "file f").unwrap();
    fs::create_dir_all(base.join("d/sub")).unwrap();
    fs::write(base.join("d/sub/z"), "z").unwrap();
    fs::write(base.join("keep"), "keep").unwrap();
    fs::create_dir_all(base.join("m")).unwrap();
    fs::write(base.join("m/gone"), "gone").unwrap();
    fs::write(base.join("m/stays"), "stays").unwrap();
    let dbase = env.commit(&base, &["org/base"]);
    // The top layer masks a directory and a file, replaces a file with a
    // directory and a directory with a file.
    let repo = env.repo();
    let dtop = write_layer(
        &repo,
        &[
            ("a", EntryKind::Mask, b""),
            ("m/gone", EntryKind::Mask, b""),
            ("f/inner", EntryKind::File, b"now a dir"),
            ("d", EntryKind::File, b"now a file"),
            ("new", EntryKind::Symlink, b"keep"),
        ],
    );
    env.ok(&["tag", &dtop.to_string(), "org/mask"]);
    let out = env.ok(&["commit", "--ref", "org/base+org/mask", "-t", "org/plat"]);
    let plat = last_digest(&out);
    assert_eq!(
        repo.read_object(&plat).unwrap(),
        Object::Platform(spfs_model::Platform {
            stack: vec![dbase, dtop]
        })
    );
    let expected = ["d", "f/", "f/inner", "keep", "m/", "m/stays", "new"];
    assert_eq!(lines(&env.ok(&["ls", "-R", "org/plat"])), expected);
    assert_eq!(lines(&env.ok(&["ls", "-R", "org/base+org/mask"])), expected);
    assert_eq!(env.ok(&["read", "org/plat", "d"]), "now a file");
    assert_eq!(env.ok(&["read", "org/plat", "f/inner"]), "now a dir");
    assert_eq!(env.ok(&["read", "org/plat", "new"]), "keep");
    env.fail(&["read", "org/plat", "a/y"], &["a/y"]);
    // Masks never show, not even in the masking layer alone.
    assert_eq!(
        lines(&env.ok(&["ls", "-R", "org/mask"])),
        ["d", "f/", "f/inner", "m/", "new"]
    );
    // A platform of platforms flattens.
    let out = env.ok(&["commit", "--ref", &format!("{plat}+org/base")]);
    let plat2 = last_digest(&out);
    let j = env.json(&["info", &plat2.to_string()]);
    assert_eq!(j["kind"], "platform");
    assert_eq!(j["stack"].as_array().unwrap().len(), 2);
    let layers: Vec<&str> = j["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // A layer repeated higher up decides every name it holds, so the lower
    // copy is dropped: base+top+base flattens to top+base.
    assert_eq!(layers, [dtop.to_string(), dbase.to_string()]);
    assert_eq!(
        env.ok(&["ls", "-R", &plat2.to_string()]),
        env.ok(&["ls", "-R", &format!("{dbase}+{dtop}+{dbase}")])
    );
    let j = env.json(&["info", "org/plat"]);
    assert_eq!(j["stack"][0], dbase.to_string());
    assert_eq!(j["stack"][1], dtop.to_string());
    assert_eq!(j["tags"][0], "org/plat");
    assert_eq!(j["entries"], 7);
    let info = env.ok(&["info", "org/plat"]);
    assert!(info.contains("kind:        platform"), "{info}");
    assert!(info.contains(&format!("{dtop} org/mask")), "{info}");
    // layers / platforms
    // Listed in digest order (bytes, not base32 text): compare as sets.
    let sorted = |out: String| {
        let mut v: Vec<String> = out.lines().map(str::to_string).collect();
        v.sort();
        v
    };
    let mut want = vec![dbase.to_string(), dtop.to_string()];
    want.sort();
    assert_eq!(sorted(env.ok(&["layers"])), want);
    let mut want = vec![plat.to_string(), plat2.to_string()];
    want.sort();
    assert_eq!(sorted(env.ok(&["platforms"])), want);
    let j = env.json(&["platforms"]);
    let p = j
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["digest"] == plat.to_string())
        .unwrap();
    assert_eq!(p["tags"][0], "org/plat");
    let j = env.json(&["layers"]);
    assert_eq!(j.as_array().unwrap().len(), 2);
    // diff
    let diff = env.ok(&["diff", "org/base", "org/plat"]);
    assert_eq!(
        lines(&diff),
        [
            "- a",
            "- a/deep",
            "- a/deep/x",
            "- a/y",
            "~ d",
            "- d/sub",
            "- d/sub/z",
            "~ f",
            "+ f/inner",
            "- m/gone",
            "+ new",
        ]
    );
    let j = env.json(&["diff", "org/base", "org/plat"]);
    assert_eq!(j[0]["path"], "a");
    assert_eq!(j[0]["kind"], "removed");
    assert_eq!(j[4]["kind"], "changed");
    assert_eq!(j[8]["kind"], "added");
    assert_eq!(env.ok(&["diff", "org/plat", "org/base+org/mask"]), "");
    // Bad stacks: a blob, an unknown reference, an empty spec.
    let blob = last_digest(&env.ok_stdin(&["write"], b"bytes"));
    let before = env.snapshot();
    env.fail(
        &["commit", "--ref", &format!("org/base+{blob}")],
        &[&blob.to_string(), "blob"],
    );
    env.fail(&["commit", "--ref", "org/base+org/nope"], &["org/nope"]);
    env.fail(&["commit", "--ref", "-"], &["nothing to commit"]);
    assert_eq!(env.snapshot(), before);
    assert!(env.ok(&["check"]).contains(": OK"));
}

#[test]
fn diff_text_and_json() {
    let env = Env::new();
    let a = env.path("a");
    fs::create_dir_all(&a).unwrap();
    fs::write(a.join("same"), "1").unwrap();
    fs::write(a.join("edit"), "2").unwrap();
    fs::write(a.join("gone"), "3").unwrap();
    fs::write(a.join("mode"), "4").unwrap();
    let b = env.path("b");
    fs::create_dir_all(&b).unwrap();
    fs::write(b.join("same"), "1").unwrap();
    fs::write(b.join("edit"), "22").unwrap();
    fs::write(b.join("new"), "5").unwrap();
    fs::write(b.join("mode"), "4").unwrap();
    fs::set_permissions(b.join("mode"), fs::Permissions::from_mode(0o700)).unwrap();
    env.commit(&a, &["t/a"]);
    env.commit(&b, &["t/b"]);
    assert_eq!(
        lines(&env.ok(&["diff", "t/a", "t/b"])),
        ["~ edit", "- gone", "~ mode", "+ new"]
    );
    assert_eq!(
        lines(&env.ok(&["diff", "t/b", "t/a"])),
        ["~ edit", "+ gone", "~ mode", "- new"]
    );
    let j = env.json(&["diff", "t/a", "t/b"]);
    let got: Vec<(String, String)> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("edit".into(), "changed".into()),
            ("gone".into(), "removed".into()),
            ("mode".into(), "changed".into()),
            ("new".into(), "added".into())
        ]
    );
    assert_eq!(env.ok(&["diff", "t/a", "t/a"]), "");
    assert_eq!(env.json(&["diff", "-", "-"]), serde_json::json!([]));
    assert_eq!(lines(&env.ok(&["diff", "-", "t/a"])).len(), 4);
    env.fail(&["diff", "t/a", "t/nope"], &["t/nope"]);
}

#[test]
fn check_finds_missing_and_corrupt() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    let layer = env.commit(&src, &["org/base"]);
    let out = env.ok(&["check"]);
    assert!(out.trim_end().ends_with(": OK"), "{out}");
    let j = env.json(&["check"]);
    assert_eq!(j["clean"], true);
    assert_eq!(j["objects"], 2);
    assert_eq!(j["blobs"], 4);
    assert_eq!(j["missing"], serde_json::json!([]));
    assert_eq!(j["corrupt"], serde_json::json!([]));
    assert_eq!(env.json(&["check", "org/base"])["clean"], true);
    assert_eq!(env.json(&["check", "--all"])["clean"], true);
    let repo = env.repo();
    // A blob whose bytes changed.
    let readme = Digest::of(b"hello\n");
    let path = repo.payload_path(&readme);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&path, b"tampered\n").unwrap();
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("corrupt {readme}")), "{text}");
    let out = env.run(&["check", "--json"]);
    assert!(!out.status.success());
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["clean"], false);
    assert_eq!(j["corrupt"][0]["digest"], readme.to_string());
    assert!(
        j["corrupt"][0]["problem"]
            .as_str()
            .unwrap()
            .contains("hashes to")
    );
    // A missing blob.
    fs::remove_file(&path).unwrap();
    let out = env.run(&["check", "--json"]);
    assert!(!out.status.success());
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["missing"][0], readme.to_string());
    // A missing root given by full digest is reported, not an error.
    let absent = Digest::of(b"never stored");
    let out = env.run(&["check", &absent.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("missing {absent}")));
    // A corrupt object: check reports it; reading it is a one-line error.
    fs::write(&path, b"hello\n").unwrap();
    let manifest = match repo.read_object(&layer).unwrap() {
        Object::Layer(l) => l.manifest,
        _ => unreachable!(),
    };
    let mpath = repo.object_path(&manifest);
    let mut bytes = fs::read(&mpath).unwrap();
    bytes.truncate(bytes.len() - 3);
    fs::write(&mpath, &bytes).unwrap();
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("corrupt {manifest}")));
    env.fail(&["ls", "org/base"], &["corrupt", &manifest.to_string()]);
    env.fail(&["info", "org/base"], &["corrupt", &manifest.to_string()]);
    // Garbage that is not an object at all.
    fs::write(&mpath, b"not an object").unwrap();
    env.fail(&["ls", "org/base"], &["corrupt", &manifest.to_string()]);
    env.fail(&["layers"], &["corrupt", &manifest.to_string()]);
    env.fail(&["check", "org/nope"], &["org/nope"]);
}

#[test]
fn bad_inputs_fail_cleanly() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    env.commit(&src, &["org/base"]);
    let before = env.snapshot();
    // Unknown tags and versions, malformed digests and specs.
    env.fail(&["ls", "org/unknown"], &["unknown tag", "org/unknown"]);
    env.fail(&["info", "org/base~9"], &["org/base", "~9"]);
    env.fail(&["ls", "ABCDEFGH1="], &["invalid digest", "ABCDEFGH1="]);
    env.fail(&["ls", "+"], &["'+'"]);
    env.fail(&["ls", "org/base~x"], &["org/base~x"]);
    env.fail(&["diff", "org/base", "../etc"], &["../etc"]);
    env.fail(&["info", "org/base+org/base"], &["one"]);
    env.fail(&["tag", "org/base", "bad/"], &["bad/"]);
    // A fifo in the tree: named, and nothing is stored.
    let fifo_dir = env.path("withfifo");
    sample_tree(&fifo_dir);
    fs::write(fifo_dir.join("unique"), "only here").unwrap();
    let fifo = fifo_dir.join("etc/pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    env.fail(
        &[
            "commit",
            "--path",
            fifo_dir.to_str().unwrap(),
            "-t",
            "org/fifo",
        ],
        &["etc/pipe", "fifo"],
    );
    // A socket too.
    let sock_dir = env.path("withsock");
    fs::create_dir_all(&sock_dir).unwrap();
    fs::write(sock_dir.join("file"), "content of sock dir").unwrap();
    let _l = std::os::unix::net::UnixListener::bind(sock_dir.join("sock")).unwrap();
    env.fail(
        &[
            "commit",
            "--path",
            sock_dir.to_str().unwrap(),
            "-t",
            "org/sock",
        ],
        &["withsock/sock"],
    );
    // Not a directory, missing directory, bad tag name.
    env.fail(
        &["commit", "--path", src.join("readme").to_str().unwrap()],
        &["readme", "not a directory"],
    );
    env.fail(&["commit", "--path", "/no/such/dir"], &["/no/such/dir"]);
    env.fail(
        &["commit", "--path", src.to_str().unwrap(), "-t", "no spaces"],
        &["no spaces"],
    );
    // A usage error (clap's own message) is an error too.
    let out = env.run(&["commit"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(env.snapshot(), before, "a failed command wrote something");
    // A missing repository.
    let env2 = Env::new();
    env2.fail(&["ls", "org/base"], &["no spfs repository"]);
    // A newer repository format.
    fs::create_dir_all(&env2.root).unwrap();
    fs::write(env2.root.join("VERSION"), "9\n").unwrap();
    env2.fail(&["tags"], &["format version 9"]);
    env2.fail(
        &["commit", "--path", src.to_str().unwrap()],
        &["format version 9"],
    );
}

/// An unreadable directory or file in the tree is an error naming it, and
/// nothing is stored. Root reads everything, so as root the command runs as
/// `nobody` through `setpriv`.
#[test]
fn unreadable_paths_fail_cleanly() {
    let env = Env::with_repo();
    let is_root = unsafe { libc::geteuid() } == 0;
    if is_root && !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: running as root without setpriv");
        return;
    }
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let run_as_user = |args: &[&str]| -> Output {
        let mut c = env.cmd(args);
        if is_root {
            let inner = c;
            let mut outer = Command::new("/usr/bin/setpriv");
            outer.args(["--reuid=65534", "--regid=65534", "--clear-groups", SPFS]);
            outer.args(inner.get_args());
            for (k, v) in inner.get_envs() {
                match v {
                    Some(v) => outer.env(k, v),
                    None => outer.env_remove(k),
                };
            }
            c = outer;
        }
        c.output().unwrap()
    };
    // The repository is writable by the unprivileged user, so that only the
    // source tree is in the way.
    let mut dirs = BTreeSet::new();
    walk_dirs(&env.root, &mut dirs);
    for d in dirs {
        fs::set_permissions(d, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let before = env.snapshot();
    let src = env.path("src");
    sample_tree(&src);
    fs::create_dir_all(src.join("locked")).unwrap();
    fs::write(src.join("locked/secret"), "s").unwrap();
    fs::set_permissions(src.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    let args = ["commit", "--path", src.to_str().unwrap(), "-t", "org/x"];
    check_fail(&args, &run_as_user(&args), &["locked", "denied"]);
    assert_eq!(env.snapshot(), before);
    fs::set_permissions(src.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(src.join("readme"), fs::Permissions::from_mode(0o000)).unwrap();
    check_fail(&args, &run_as_user(&args), &["readme", "denied"]);
    // The staged payloads of the batch were discarded, not left in tmp/.
    assert_eq!(env.snapshot(), before);
}

#[test]
fn config_command() {
    let env = Env::new();
    let toml = env.ok(&["config"]);
    assert!(
        toml.contains(&format!("root = \"{}\"", env.root.display())),
        "{toml}"
    );
    assert!(toml.contains("[vfs]"), "{toml}");
    let j = env.json(&["config"]);
    assert_eq!(j["storage"]["root"], env.root.to_str().unwrap());
    assert_eq!(j["vfs"]["threads"], 4);
    assert!(j["vfs"]["mountpoint"].is_string());
    // A file value, then the environment over it.
    fs::write(&env.config, "[vfs]\nthreads = 7\n").unwrap();
    assert_eq!(env.json(&["config"])["vfs"]["threads"], 7);
    let out = env
        .cmd(&["config", "--json"])
        .env("SPFS_VFS_THREADS", "9")
        .output()
        .unwrap();
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["vfs"]["threads"], 9);
    // Bad values name the file and the key, on one line.
    fs::write(&env.config, "[vfs]\nthreads = \"many\"\n").unwrap();
    let cfg = env.config.to_str().unwrap();
    env.fail(&["config"], &[cfg, "vfs.threads"]);
    env.fail(&["tags"], &[cfg, "vfs.threads"]);
    fs::write(&env.config, "[storage]\nrot = \"/x\"\n").unwrap();
    env.fail(&["config"], &[cfg, "rot"]);
    fs::write(&env.config, "[storage\n").unwrap();
    env.fail(&["config"], &[cfg, "line 1"]);
    fs::write(&env.config, "").unwrap();
    let out = env
        .cmd(&["config"])
        .env("SPFS_VFS_PASSTHROUGH", "maybe")
        .output()
        .unwrap();
    check_fail(
        &["config"],
        &out,
        &["SPFS_VFS_PASSTHROUGH", "vfs.passthrough"],
    );
    let out = env
        .cmd(&["config"])
        .env("SPFS_CONFIG", env.path("absent.toml"))
        .output()
        .unwrap();
    check_fail(&["config"], &out, &["absent.toml"]);
}

/// Twenty processes tag the same name at once; no version is lost.
#[test]
fn concurrent_tagging_loses_no_version() {
    let env = Env::with_repo();
    let repo = env.repo();
    let targets: Vec<Digest> = (0..20)
        .map(|i| repo.write_blob(format!("target {i}").as_bytes()).unwrap())
        .collect();
    let children: Vec<Child> = targets
        .iter()
        .map(|d| {
            env.cmd(&["tag", &d.to_string(), "org/race"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        check_ok(&["tag"], &out);
    }
    let log = env.ok(&["log", "org/race"]);
    assert_eq!(lines(&log).len(), 20, "{log}");
    let j = env.json(&["log", "org/race"]);
    let got: BTreeSet<String> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["target"].as_str().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = targets.iter().map(|d| d.to_string()).collect();
    assert_eq!(got, want);
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A process holding a tag's lock is killed; the next tagger gets through
/// at once.
#[test]
fn lock_of_killed_process_blocks_nobody() {
    let env = Env::with_repo();
    let repo = env.repo();
    let d = repo.write_blob(b"locked target").unwrap();
    env.ok(&["tag", &d.to_string(), "org/locked"]);
    let lock = env.root.join("tags/org/locked.tag.lock");
    assert!(lock.exists(), "the lock file is where the test expects it");
    // The holder: a shell that takes the flock on fd 9 and becomes `sleep`,
    // so a single process holds the lock.
    let mut holder = Command::new("sh")
        .args([
            "-c",
            "exec 9>>\"$0\" && flock -x 9 && echo locked && exec sleep 30",
        ])
        .arg(&lock)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    // While the holder lives, the tagger waits.
    let d2 = repo.write_blob(b"second target").unwrap();
    let mut tagger = env
        .cmd(&["tag", &d2.to_string(), "org/locked"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_timeout(&mut tagger, Duration::from_millis(300)).is_none(),
        "the tagger did not wait for the lock"
    );
    holder.kill().unwrap(); // SIGKILL
    holder.wait().unwrap();
    let killed = Instant::now();
    let status = wait_timeout(&mut tagger, Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "tagging after the holder died: {status:?}"
    );
    assert!(killed.elapsed() < Duration::from_secs(3));
    // A new tagger after the death is not blocked either.
    let start = Instant::now();
    env.ok(&["tag", &d.to_string(), "org/locked"]);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(
        env.json(&["log", "org/locked"]).as_array().unwrap().len(),
        3
    );
}

/// `len` bytes distinct for each seed: a pseudo-random block, repeated,
/// with every 4 KiB stamped with the seed and its offset.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    static BLOCK: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let block = BLOCK.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut block = Vec::with_capacity(1 << 20);
        while block.len() < 1 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            block.extend_from_slice(&x.to_le_bytes());
        }
        block
    });
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        out.extend_from_slice(block);
    }
    out.truncate(len);
    for (i, chunk) in out.chunks_mut(4096).enumerate() {
        let stamp = seed.wrapping_mul(1 << 32) ^ i as u64;
        let n = chunk.len().min(8);
        chunk[..n].copy_from_slice(&stamp.to_le_bytes()[..n]);
    }
    out
}

/// Every file under objects/ decodes and hashes to its name; every payload
/// hashes to its name.
fn assert_store_intact(root: &Path) {
    let mut files = BTreeSet::new();
    walk_files(&root.join("objects"), &mut files);
    for p in &files {
        let name = stored_name(p);
        let bytes = fs::read(p).unwrap();
        assert_eq!(
            Digest::of(&bytes),
            name,
            "object {} hashes wrong",
            p.display()
        );
        Object::decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    let mut files = BTreeSet::new();
    walk_files(&root.join("payloads"), &mut files);
    for p in &files {
        let mut h = spfs_model::Hasher::new();
        let mut f = fs::File::open(p).unwrap();
        std::io::copy(&mut f, &mut h).unwrap();
        assert_eq!(
            h.finish(),
            stored_name(p),
            "payload {} hashes wrong",
            p.display()
        );
    }
}

fn stored_name(p: &Path) -> Digest {
    let shard = p.parent().unwrap().file_name().unwrap().to_str().unwrap();
    let rest = p.file_name().unwrap().to_str().unwrap();
    Digest::parse(&format!("{shard}{rest}")).unwrap()
}

/// A commit killed while it writes leaves no partial object; the store
/// checks clean and a new commit succeeds.
#[test]
fn killed_commit_leaves_no_partial_object() {
    let env = Env::with_repo();
    let big = env.path("big");
    fs::create_dir_all(big.join("sub")).unwrap();
    // 300 MiB: six files of 48 MiB and many small ones.
    for i in 0..6u64 {
        fs::write(big.join(format!("sub/large{i}")), noise(i + 1, 48 << 20)).unwrap();
    }
    for i in 0..200u64 {
        fs::write(big.join(format!("small{i}")), noise(1000 + i, 64 << 10)).unwrap();
    }
    let tmp = env.root.join("tmp");
    let mut child = env
        .cmd(&["commit", "--path", big.to_str().unwrap(), "-t", "org/big"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut running = false;
    while Instant::now() < deadline {
        if fs::read_dir(&tmp).unwrap().next().is_some() {
            running = child.try_wait().unwrap().is_none();
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // It has started writing (300 MiB take far longer than the poll): kill.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(running, "the commit ended before it could be killed");
    assert!(!status.success());
    // No tag, nothing partial, check clean.
    env.fail(&["log", "org/big"], &["org/big"]);
    assert!(env.ok(&["check"]).contains(": OK"));
    let j = env.json(&["check", "--all"]);
    assert_eq!(j["clean"], true, "{j}");
    assert_store_intact(&env.root);
    // Committing again succeeds and cleans what the dead process left.
    let layer = env.commit(&big, &["org/big"]);
    assert_eq!(env.json(&["check", "org/big"])["clean"], true);
    assert_eq!(env.json(&["info", "org/big"])["digest"], layer.to_string());
    assert_store_intact(&env.root);
    assert!(
        fs::read_dir(&tmp).unwrap().next().is_none(),
        "temporary files of the killed commit are left"
    );
    let out = env.run(&["read", "org/big", "sub/large3"]);
    assert!(out.status.success());
    assert!(out.stdout == noise(4, 48 << 20), "content is complete");
}

/// Output into a closed pipe ends quietly.
#[test]
fn closed_stdout_is_not_an_error() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..3000 {
        fs::write(src.join(format!("file{i:05}")), format!("{i}")).unwrap();
    }
    env.commit(&src, &["org/many"]);
    for args in [&["ls", "-l", "org/many"][..], &["ls", "org/many", "--json"]] {
        let mut child = env
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(
            out.stderr.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Set the modification time of `path` itself (a symlink is not followed).
fn set_mtime(path: &Path, secs: i64, nanos: u32) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: nanos.into(),
    };
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Modification times: kept by commit, shown by `ls -l`, `ls --json` and
/// `info`, compared by `diff --mtime` only, clamped by `--mtime-clamp` or
/// `SOURCE_DATE_EPOCH`; layers written before times were kept show the
/// epoch.
#[test]
fn modification_times() {
    let env = Env::new();
    let src = env.path("src");
    sample_tree(&src);
    // 1_000_000_000 s is 2001-09-09T01:46:40Z.
    set_mtime(&src.join("bin/tool"), 1_000_000_000, 5);
    set_mtime(&src.join("link"), 1_000_000_001, 0);
    set_mtime(&src.join("bin"), 1_000_000_002, 0);
    let first = env.commit(&src, &["t/a"]);
    let long = env.ok(&["ls", "-l", "t/a", "bin"]);
    assert!(
        long.contains(" 2001-09-09T01:46:40.000000005Z ") && long.contains("tool"),
        "{long}"
    );
    let long = env.ok(&["ls", "-l", "t/a"]);
    assert!(
        long.lines().any(|l| l.starts_with("drwx")
            && l.contains(" 2001-09-09T01:46:42.000000000Z ")
            && l.ends_with(" bin/")),
        "{long}"
    );
    assert!(
        long.lines()
            .any(|l| l.contains(" 2001-09-09T01:46:41.000000000Z ")
                && l.contains("link -> bin/tool")),
        "a symlink's own time: {long}"
    );
    let j = env.json(&["ls", "-R", "t/a"]);
    let tool = j
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "bin/tool")
        .unwrap();
    assert_eq!(tool["mtime"], "2001-09-09T01:46:40.000000005Z");
    // info: the newest entry's time (the files just written are newest).
    let newest = env.json(&["info", "t/a"])["mtime"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(newest.as_str() > "2020", "{newest}");
    assert!(
        env.ok(&["info", "t/a"])
            .contains(&format!("mtime:       {newest} (newest entry)")),
        "info text"
    );

    // Touching a file changes the layer, but diff shows it only on request.
    set_mtime(&src.join("bin/tool"), 1_100_000_000, 0);
    let touched = env.commit(&src, &["t/b"]);
    assert_ne!(touched, first);
    assert_eq!(env.ok(&["diff", "t/a", "t/b"]), "");
    assert_eq!(
        lines(&env.ok(&["diff", "--mtime", "t/a", "t/b"])),
        ["~ bin/tool"]
    );
    assert_eq!(
        env.json(&["diff", "--mtime", "t/a", "t/b"]),
        serde_json::json!([{"path": "bin/tool", "kind": "changed"}])
    );

    // Clamped: every time after the clamp becomes the clamp, so both
    // states of the tree give one layer; the flag wins over the variable.
    let path = src.to_str().unwrap();
    set_mtime(&src.join("bin/tool"), 1_000_000_000, 5);
    let clamp = |extra: &[&str], epoch: Option<&str>| {
        let mut args = vec!["commit", "--path", path];
        args.extend_from_slice(extra);
        let mut cmd = env.cmd(&args);
        if let Some(e) = epoch {
            cmd.env("SOURCE_DATE_EPOCH", e);
        }
        last_digest(&check_ok(&args, &cmd.output().unwrap()))
    };
    let clamped = clamp(&["--mtime-clamp", "900000000"], None);
    set_mtime(&src.join("bin/tool"), 1_100_000_000, 0);
    assert_eq!(clamp(&["--mtime-clamp", "900000000"], None), clamped);
    assert_eq!(clamp(&[], Some("900000000")), clamped);
    assert_eq!(
        clamp(&["--mtime-clamp", "900000000"], Some("1000000000")),
        clamped
    );
    assert_ne!(clamp(&[], Some("1000000000")), clamped);
    assert_eq!(clamp(&[], None), touched, "unclamped again");
    let long = env.ok(&["ls", "-l", &clamped.to_string(), "bin"]);
    assert!(long.contains(" 1998-07-09T16:00:00.000000000Z "), "{long}");
    let out = env
        .cmd(&["commit", "--path", path])
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .output()
        .unwrap();
    check_fail(&["commit"], &out, &["SOURCE_DATE_EPOCH", "yesterday"]);
    let out = env
        .cmd(&["commit", "--ref", "t/a"])
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .output()
        .unwrap();
    check_ok(&["commit", "--ref"], &out);

    // A layer written without times (as before they were kept) shows the
    // epoch; its manifest is stored at format version 1.
    let repo = env.repo();
    let old = write_layer(&repo, &[("f", EntryKind::File, b"x")]);
    let long = env.ok(&["ls", "-l", &old.to_string()]);
    assert!(long.contains(" 1970-01-01T00:00:00.000000000Z "), "{long}");
    let Object::Layer(l) = repo.read_object(&old).unwrap() else {
        panic!("not a layer")
    };
    assert_eq!(fs::read(repo.object_path(&l.manifest)).unwrap()[4], 1);
    let Object::Layer(l) = repo.read_object(&first).unwrap() else {
        panic!("not a layer")
    };
    assert_eq!(fs::read(repo.object_path(&l.manifest)).unwrap()[4], 2);
    assert!(env.ok(&["check"]).contains(": OK"));

    // --help says how times are shown and where the clamp comes from.
    assert!(env.ok(&["ls", "--help"]).contains("RFC 3339"));
    assert!(env.ok(&["info", "--help"]).contains("\"mtime\""));
    assert!(env.ok(&["diff", "--help"]).contains("--mtime"));
    assert!(env.ok(&["commit", "--help"]).contains("SOURCE_DATE_EPOCH"));
}

/// `--help` documents the JSON fields of each inspection command.
#[test]
fn help_documents_json_fields() {
    let env = Env::new();
    for (cmd, field) in [
        ("ls", "\"mtime\""),
        ("info", "\"kind\""),
        ("diff", "\"path\""),
        ("layers", "\"tags\""),
        ("platforms", "\"digest\""),
        ("search", "\"target\""),
        ("tags", "\"versions\""),
        ("ls-tags", "\"folder\""),
        ("log", "\"time_utc\""),
        ("check", "\"corrupt\""),
        ("config", "\"storage\""),
    ] {
        let help = env.ok(&[cmd, "--help"]);
        assert!(
            help.contains(field),
            "spfs {cmd} --help lacks {field}: {help}"
        );
    }
}
