//! Command-line tests of `spfs clean`, run as real processes against a
//! temporary repository each (with a directory remote `origin`, and a VFS
//! control address in the temporary directory where no service listens).
//!
//! The last test runs commits, pulls and cleans at once and checks that
//! nothing any tag reaches was lost: see `docs/clean.md`.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use spfs_model::Digest;
use spfs_storage::FsRepository;
use spfs_storage::runtimes::RuntimeRecord;

const SPFS: &str = env!("CARGO_BIN_EXE_spfs");

struct Env {
    dir: tempfile::TempDir,
    root: PathBuf,
    origin: PathBuf,
    config: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("repo");
        let origin = dir.path().join("origin");
        let config = dir.path().join("spfs.toml");
        fs::write(
            &config,
            format!(
                "[vfs]\nlisten = \"unix:{0}/vfs.sock\"\n\
                 [remote.origin]\naddress = \"file:{0}/origin\"\n",
                dir.path().display()
            ),
        )
        .unwrap();
        FsRepository::create(&origin).unwrap();
        let env = Env {
            dir,
            root,
            origin,
            config,
        };
        env.ok(&["init", "repo", env.root.to_str().unwrap()]);
        env
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `spfs ARGS` on the repository at `root`.
    fn cmd_at(&self, root: &Path, args: &[&str]) -> Command {
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
            .env("SPFS_STORAGE_ROOT", root)
            .env("SPFS_CONFIG", &self.config)
            .env("USER", "tester")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd_at(&self.root, args).output().expect("run spfs")
    }

    fn ok(&self, args: &[&str]) -> String {
        check_ok(args, &self.run(args))
    }

    fn fail(&self, args: &[&str], needles: &[&str]) -> String {
        check_fail(args, &self.run(args), needles)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{all:?}: not JSON ({e}): {text}"))
    }

    /// Make directory `rel` (emptied first) holding `files` (name, bytes,
    /// mode).
    fn tree(&self, rel: &str, files: &[(&str, &str, u32)]) -> PathBuf {
        let dir = self.path(rel);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for (name, text, mode) in files {
            let p = dir.join(name);
            fs::write(&p, text).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
        }
        dir
    }

    /// Commit `dir` with `tags`; the layer's digest.
    fn commit(&self, dir: &Path, tags: &[&str]) -> Digest {
        let mut args = vec!["commit", "--path", dir.to_str().unwrap()];
        for t in tags {
            args.extend(["-t", t]);
        }
        last_digest(&self.ok(&args))
    }

    fn repo(&self) -> FsRepository {
        FsRepository::open(&self.root).unwrap()
    }

    /// Every file under objects/, payloads/ and tags/ (not lock files).
    fn snapshot(&self) -> BTreeSet<PathBuf> {
        let mut files = BTreeSet::new();
        for area in ["objects", "payloads", "tags"] {
            walk_files(&self.root.join(area), &mut files);
        }
        files.retain(|p| !p.to_string_lossy().ends_with(".lock"));
        files
    }

    /// Write tag `name`'s history (oldest first: target, seconds ago).
    fn write_history(&self, name: &str, versions: &[(Digest, u64)]) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let path = self.root.join("tags").join(format!("{name}.tag"));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let text: String = versions
            .iter()
            .map(|(d, ago)| format!("{d} {} tester\n", now - ago))
            .collect();
        fs::write(path, text).unwrap();
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

fn last_digest(stdout: &str) -> Digest {
    let last = stdout.lines().last().unwrap_or_default();
    Digest::parse(last).unwrap_or_else(|e| panic!("last line {last:?} is not a digest: {e}"))
}

fn uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The manifest a layer names.
fn manifest_of(repo: &FsRepository, layer: &Digest) -> Digest {
    match repo.read_object(layer).unwrap() {
        spfs_model::Object::Layer(l) => l.manifest,
        other => panic!("{layer} is a {:?}", other.kind()),
    }
}

#[test]
fn dry_run_removes_nothing_then_only_the_unreachable_goes() {
    let env = Env::new();
    let kept_dir = env.tree(
        "kept",
        &[
            ("shared", "in both layers", 0o644),
            ("kept", "kept bytes", 0o644),
            ("secret", "a private file kept", 0o600),
        ],
    );
    let kept = env.commit(&kept_dir, &["t/kept"]);
    let gone_dir = env.tree(
        "gone",
        &[
            ("shared", "in both layers", 0o644),
            ("gone", "garbage bytes", 0o644),
            ("secret", "a private file of garbage", 0o600),
        ],
    );
    let gone = env.commit(&gone_dir, &[]);
    // A blob from stdin: a private copy, tagged by nothing.
    let mut child = env
        .cmd_at(&env.root, &["write"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"a loose blob").unwrap();
    assert!(child.wait().unwrap().success());
    let repo = env.repo();
    let gone_manifest = manifest_of(&repo, &gone);
    let (public_gone, private_gone, loose) = (
        Digest::of(b"garbage bytes"),
        Digest::of(b"a private file of garbage"),
        Digest::of(b"a loose blob"),
    );
    assert!(repo.payload_path(&public_gone).exists());
    assert!(repo.private_payload_path(&private_gone, uid()).exists());
    assert!(repo.private_payload_path(&loose, uid()).exists());

    let before = env.snapshot();
    let text = env.ok(&["clean", "--dry-run"]);
    for d in [gone, gone_manifest] {
        assert!(text.contains(&format!("would remove object {d}")), "{text}");
    }
    for d in [public_gone, private_gone, loose] {
        assert!(
            text.contains(&format!("would remove payload {d}")),
            "{text}"
        );
    }
    assert!(
        text.contains(&format!("{private_gone} (private copy of user {})", uid())),
        "{text}"
    );
    assert!(!text.contains(&kept.to_string()), "{text}");
    let dry = env.json(&["clean", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        (
            dry["objects_removed"].as_u64(),
            dry["payloads_removed"].as_u64()
        ),
        (Some(2), Some(3))
    );
    assert!(dry["bytes_freed"].as_u64().unwrap() > 0);
    assert_eq!(env.snapshot(), before, "a dry run removed something");
    // Not a terminal, no --yes: refused, nothing removed.
    env.fail(&["clean"], &["not a terminal", "--yes"]);
    assert_eq!(env.snapshot(), before);

    let done = env.json(&["clean", "-y"]);
    assert_eq!(done["dry_run"], false);
    assert_eq!(done["objects_removed"], 2);
    assert_eq!(done["payloads_removed"], 3);
    assert_eq!(done["bytes_freed"], dry["bytes_freed"]);
    assert_eq!(done["tag_versions_pruned"], 0);
    let repo = env.repo();
    assert!(!repo.has_object(&gone) && !repo.has_object(&gone_manifest));
    for d in [public_gone, private_gone, loose] {
        assert!(!repo.has_payload(&d), "{d} is still stored");
    }
    // What the tag reaches is whole, the private copy included.
    assert!(env.ok(&["check"]).contains("OK"));
    assert_eq!(env.ok(&["read", "t/kept", "shared"]), "in both layers");
    assert_eq!(env.ok(&["read", "t/kept", "secret"]), "a private file kept");
    assert!(
        repo.private_payload_path(&Digest::of(b"a private file kept"), uid())
            .exists()
    );
    // Nothing more to do.
    let again = env.json(&["clean", "-y"]);
    assert_eq!(
        (
            again["objects_removed"].as_u64(),
            again["payloads_removed"].as_u64()
        ),
        (Some(0), Some(0))
    );
}

#[test]
fn runtime_records_keep_their_layers() {
    let env = Env::new();
    let dir = env.tree("rt", &[("f", "a runtime's file", 0o644)]);
    let layer = env.commit(&dir, &[]);
    let record = RuntimeRecord {
        name: "rt-clean-test".into(),
        spec: layer.to_string(),
        layers: vec![layer],
        root_pid: std::process::id(),
        owner_uid: uid(),
        created: 0,
        mountpoint: "/spfs".into(),
        command: vec!["true".into()],
        cgroup: String::new(),
        bound: false,
        editable: false,
        keep: false,
    };
    env.repo().save_runtime(&record).unwrap();
    let out = env.json(&["clean", "-y"]);
    assert_eq!(
        (
            out["objects_removed"].as_u64(),
            out["payloads_removed"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert!(env.repo().has_object(&layer));
    assert!(env.ok(&["check", &layer.to_string()]).contains("OK"));
    // A record that cannot be read stops the clean: its layers are unknown.
    fs::write(env.root.join("runtimes/rt-broken.json"), b"{ not json").unwrap();
    env.fail(
        &["clean", "-y"],
        &["rt-broken.json", "no object or payload was removed"],
    );
    fs::remove_file(env.root.join("runtimes/rt-broken.json")).unwrap();
    // The runtime ends: its layer goes.
    env.repo().remove_runtime("rt-clean-test").unwrap();
    let out = env.json(&["clean", "-y"]);
    assert_eq!(
        (
            out["objects_removed"].as_u64(),
            out["payloads_removed"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert!(!env.repo().has_object(&layer));
}

#[test]
fn tag_versions_are_pruned_as_asked() {
    let env = Env::new();
    let layer = |name: &str| {
        let dir = env.tree(&format!("src-{name}"), &[("f", name, 0o644)]);
        env.commit(&dir, &[])
    };
    let (a, b, c, d) = (layer("a"), layer("b"), layer("c"), layer("d"));
    let day = 86_400;
    // Oldest first: a (40 days), b (35), b again (20), c (2), d (now).
    env.write_history(
        "t/x",
        &[
            (a, 40 * day),
            (b, 35 * day),
            (b, 20 * day),
            (c, 2 * day),
            (d, 0),
        ],
    );
    let log = || -> Vec<String> {
        env.json(&["log", "t/x"])
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["target"].as_str().unwrap().to_string())
            .collect()
    };
    let before = env.snapshot();
    let dry = env.ok(&["clean", "--dry-run", "--prune-if-older-than", "30d"]);
    assert!(dry.contains(&format!("would prune t/x~4 -> {a}")), "{dry}");
    assert!(dry.contains(&format!("would prune t/x~3 -> {b}")), "{dry}");
    assert!(dry.contains(&format!("would remove object {a}")), "{dry}");
    assert!(
        !dry.contains(&format!("would remove object {b}")),
        "still tagged: {dry}"
    );
    assert_eq!(env.snapshot(), before);
    // Repeats only: the second b goes; every target stays tagged.
    let out = env.json(&["clean", "-y", "--prune-repeated"]);
    assert_eq!(
        (
            out["tag_versions_pruned"].as_u64(),
            out["objects_removed"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(out["pruned"][0]["back"], 2);
    assert_eq!(log(), [d, c, b, a].map(|x| x.to_string()));
    // Older than 1 day, but never below 3 versions: only a goes (with its
    // manifest and payload).
    let out = env.json(&[
        "clean",
        "-y",
        "--prune-if-older-than",
        "1d",
        "--keep-if-less-than",
        "3",
    ]);
    assert_eq!(out["tag_versions_pruned"], 1);
    assert_eq!(
        (
            out["objects_removed"].as_u64(),
            out["payloads_removed"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(log(), [d, c, b].map(|x| x.to_string()));
    assert!(!env.repo().has_object(&a) && env.repo().has_object(&b));
    // The default keeps the current version whatever its age; 0 lets the
    // tag go.
    env.json(&["clean", "-y", "--prune-if-older-than", "0s"]);
    assert_eq!(log(), [d.to_string()]);
    std::thread::sleep(Duration::from_millis(1100));
    let out = env.json(&[
        "clean",
        "-y",
        "--prune-if-older-than",
        "0s",
        "--keep-if-less-than",
        "0",
    ]);
    assert_eq!(out["tag_versions_pruned"], 1);
    env.fail(&["log", "t/x"], &["unknown tag"]);
    assert!(env.repo().objects().unwrap().is_empty());
    assert!(env.ok(&["check"]).contains("OK"));
}

#[test]
fn bad_input_is_one_line_and_removes_nothing() {
    let env = Env::new();
    let dir = env.tree("g", &[("f", "garbage", 0o644)]);
    env.commit(&dir, &[]);
    let before = env.snapshot();
    for (args, needles) in [
        (
            &["--prune-if-older-than", "3x"][..],
            &["invalid age '3x'", "30d"][..],
        ),
        (&["--prune-if-older-than", "-1d"], &["invalid age '-1d'"]),
        (&["--prune-if-older-than", "12"], &["invalid age '12'"]),
        (
            &["--keep-if-less-than", "-1", "--prune-repeated"],
            &["invalid --keep-if-less-than '-1'", "0 or more"],
        ),
        (
            &["--keep-if-less-than", "many"],
            &["invalid --keep-if-less-than 'many'"],
        ),
        (&["--lock-timeout", "-5"], &["invalid --lock-timeout '-5'"]),
    ] {
        let mut all = vec!["clean", "-y"];
        all.extend_from_slice(args);
        env.fail(&all, needles);
        assert_eq!(env.snapshot(), before, "{all:?} removed something");
    }
}

/// A writer holding the lock (another process: its own open file
/// description) keeps clean from deleting; clean says why it gave up.
#[test]
fn clean_waits_for_writers_and_names_the_lock() {
    let env = Env::new();
    let dir = env.tree("g", &[("f", "garbage", 0o644)]);
    env.commit(&dir, &[]);
    let before = env.snapshot();
    let writer = fs::File::open(env.root.join("locks/gc")).unwrap();
    spfs_storage::gc::lock(&writer, rustix::fs::FlockOperation::LockShared).unwrap();
    let start = Instant::now();
    let out = env.run(&["clean", "-y", "--lock-timeout", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(start.elapsed() >= Duration::from_secs(1));
    let last = stderr.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with(
            "spfs: error: cannot clean: timed out waiting for the garbage-collection lock"
        ) && last.contains("locks/gc")
            && last.contains("no object or payload was removed"),
        "{stderr}"
    );
    assert_eq!(env.snapshot(), before);
    drop(writer);
    let out = env.json(&["clean", "-y", "--lock-timeout", "1"]);
    assert_eq!(out["objects_removed"], 2);
}

/// Commits (of fresh trees sharing content with garbage, so they reuse
/// payloads nothing reaches), pulls (into objects nothing reaches) and
/// cleans, all at once, for a few seconds; then everything every tag
/// reaches is there and reads back.
#[test]
fn cleans_during_commits_and_pulls_lose_nothing() {
    let env = Env::new();
    let origin_tags: Vec<String> = (0..4)
        .map(|i| {
            let dir = env.tree(
                &format!("origin-src-{i}"),
                &[
                    ("common", "shared by everything", 0o644),
                    ("pool", &format!("origin pool {}", i % 2), 0o644),
                    ("own", &format!("origin own {i}"), 0o644),
                ],
            );
            let tag = format!("o/t{i}");
            let out = env
                .cmd_at(
                    &env.origin,
                    &["commit", "--path", dir.to_str().unwrap(), "-t", &tag],
                )
                .output()
                .unwrap();
            check_ok(&["commit (origin)"], &out);
            tag
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(6);
    let committers = 3;
    let results = std::thread::scope(|s| {
        let env = &env;
        let mut commits = Vec::new();
        for w in 0..committers {
            commits.push(s.spawn(move || {
                let mut tagged = Vec::new();
                let mut n = 0;
                while Instant::now() < deadline {
                    // Garbage first: an untagged layer whose payloads the
                    // tagged one below reuses.
                    let pool = format!("pool {}", n % 3);
                    let origin_pool = format!("origin pool {}", n % 2);
                    let files = |own: &str| {
                        vec![
                            ("common", "shared by everything".to_string(), 0o644),
                            ("pool", pool.clone(), 0o644),
                            ("origin-pool", origin_pool.clone(), 0o644),
                            ("private", format!("private {}", n % 2), 0o600),
                            ("own", own.to_string(), 0o644),
                        ]
                    };
                    let rel = format!("w{w}");
                    let mk = |list: &[(&str, String, u32)]| {
                        let refs: Vec<(&str, &str, u32)> =
                            list.iter().map(|(a, b, c)| (*a, b.as_str(), *c)).collect();
                        env.tree(&rel, &refs)
                    };
                    env.commit(&mk(&files(&format!("garbage {w} {n}"))), &[]);
                    let own = format!("tagged {w} {n}");
                    let tag = format!("w{w}/c{n}");
                    env.commit(&mk(&files(&own)), &[&tag]);
                    tagged.push((tag, own, pool.clone(), origin_pool.clone(), n % 2));
                    n += 1;
                }
                tagged
            }));
        }
        let puller = s.spawn(move || {
            let mut pulls = 0;
            let mut i = 0;
            while Instant::now() < deadline {
                let tag = &origin_tags[i % origin_tags.len()];
                env.ok(&["pull", tag, "--from", "origin"]);
                // Untagged again: its objects are garbage the next pull
                // finds present and reuses.
                if i % 3 != 2 {
                    env.ok(&["untag", tag, "--all"]);
                }
                pulls += 1;
                i += 1;
            }
            pulls
        });
        let cleaner = s.spawn(move || {
            let (mut cleans, mut removed) = (0, 0);
            while Instant::now() < deadline {
                // The one line a clean may print on stderr: that it waits.
                let out = env.run(&["clean", "-y", "--json"]);
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "clean failed: {stderr}");
                assert!(
                    stderr.lines().all(|l| l.starts_with("spfs: waiting up to")),
                    "{stderr}"
                );
                let out: Value = serde_json::from_slice(&out.stdout).unwrap();
                removed += out["objects_removed"].as_u64().unwrap()
                    + out["payloads_removed"].as_u64().unwrap();
                cleans += 1;
            }
            (cleans, removed)
        });
        let tagged: Vec<_> = commits
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        (tagged, puller.join().unwrap(), cleaner.join().unwrap())
    });
    let (tagged, pulls, (cleans, removed)) = results;
    eprintln!(
        "{} tagged commits, {pulls} pulls, {cleans} cleans removing {removed} files",
        tagged.len()
    );
    assert!(
        tagged.len() >= committers && pulls > 0 && cleans > 1,
        "too little ran"
    );
    assert!(
        removed > 0,
        "the cleans removed nothing: the test tested nothing"
    );
    // Everything every tag reaches is present and intact...
    let check = env.run(&["check"]);
    assert!(
        check.status.success(),
        "spfs check after concurrent cleans: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // ...and every committed tag reads back: each file of each (in this
    // process), and through `spfs read` for a few.
    let repo = env.repo();
    for (k, (tag, own, pool, origin_pool, private)) in tagged.iter().enumerate() {
        let layer = repo.resolve_ref(tag).unwrap();
        let tree = repo.layer_tree(&layer).unwrap();
        let private = format!("private {private}");
        for (path, text) in [
            ("own", own.as_str()),
            ("pool", pool),
            ("origin-pool", origin_pool),
            ("private", &private),
            ("common", "shared by everything"),
        ] {
            let Some(spfs_model::PathTarget::Entry(i)) = tree.lookup_path(path) else {
                panic!("{tag}: no {path}")
            };
            let mut bytes = String::new();
            std::io::Read::read_to_string(
                &mut repo
                    .open_payload(&tree.entries()[i as usize].object)
                    .unwrap(),
                &mut bytes,
            )
            .unwrap();
            assert_eq!(bytes, text, "{tag}: {path}");
        }
        if k % 16 == 0 {
            assert_eq!(&env.ok(&["read", tag, "own"]), own, "{tag}");
            assert_eq!(env.ok(&["read", tag, "private"]), private, "{tag}");
        }
    }
}
