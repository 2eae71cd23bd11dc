//! The host's shared repository (`spfs init repo --shared`) with two real
//! unprivileged users: what one commits stays theirs (payload read
//! permission follows the committed file; nobody else can remove, replace
//! or redirect it), both can commit, even the same bytes at once, and no
//! symlink a user plants inside the repository is followed. A private
//! payload is stored per user and served by the VFS service only to
//! runtimes whose owner may read it, whatever manifest names it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use spfs_model::{Digest, EntryKind, Object, TreeBuilder};

use crate::harness::{SPFS, World, ok, stderr, stdout, wait_for};
use crate::require_vfs;
use crate::users::TestUser;

/// A world whose repository is the shared kind (made by root).
fn shared_world() -> World {
    let w = World::new();
    let out = w.spfs(&["init", "repo", "--shared", w.repo.to_str().expect("utf8")]);
    ok(&out, "init --shared");
    w
}

/// Where the public payload of `content` is stored.
fn payload(w: &World, content: &[u8]) -> PathBuf {
    let d = Digest::of(content).to_string();
    w.repo.join("payloads").join(&d[..2]).join(&d[2..])
}

/// Where `user`'s private copy of the payload of `content` is stored.
fn private_payload(w: &World, user: &TestUser, content: &[u8]) -> PathBuf {
    private_payload_of(w, user.uid, content)
}

/// Where user `uid`'s private copy of the payload of `content` is stored.
fn private_payload_of(w: &World, uid: u32, content: &[u8]) -> PathBuf {
    let public = payload(w, content);
    let name = public.file_name().expect("name").to_string_lossy();
    public.with_file_name(format!("{name}.u{uid}"))
}

/// A source directory owned by `user` with `(name, content, mode)` files.
fn user_tree(w: &World, user: &TestUser, name: &str, files: &[(&str, &[u8], u32)]) -> PathBuf {
    let dir = w.dir.path().join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (file, content, mode) in files {
        let p = dir.join(file);
        std::fs::write(&p, content).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).expect("chmod");
        std::os::unix::fs::chown(&p, Some(user.uid), Some(user.gid)).expect("chown");
    }
    std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).expect("chown");
    dir
}

/// `spfs ARGS…` as `user`.
fn spfs_as(w: &World, user: &TestUser, args: &[&str]) -> Output {
    user.command(w, SPFS).args(args).output().expect("run spfs")
}

/// `sh -c SCRIPT` as `user`.
fn sh_as(w: &World, user: &TestUser, script: &str) -> Output {
    user.command(w, "sh")
        .args(["-c", script])
        .output()
        .expect("run sh")
}

/// Commit `dir` as `user` with tag `tag`; returns the layer's digest.
fn commit_as(w: &World, user: &TestUser, dir: &Path, tag: &str) -> String {
    let out = spfs_as(
        w,
        user,
        &["commit", "--path", dir.to_str().expect("utf8"), "-t", tag],
    );
    ok(&out, &format!("commit as {}", user.name));
    stdout(&out).lines().last().unwrap_or("").trim().to_string()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).expect("stat").mode() & 0o7777
}

fn check_clean(w: &World) {
    let out = w.spfs(&["check"]);
    ok(&out, "check");
}

#[test]
fn init_shared_makes_root_owned_sticky_directories_whatever_the_umask() {
    require_vfs!();
    let w = World::new();
    let a = TestUser::new();
    let path = w.dir.path().join("grouped");
    let script = format!(
        "umask 077; exec {SPFS} init repo --shared --group {} {}",
        a.name,
        path.display()
    );
    ok(
        &w.command("sh").args(["-c", &script]).output().unwrap(),
        "init",
    );
    for (rel, want) in [
        ("", 0o755),
        ("objects", 0o755),
        ("payloads", 0o755),
        ("payloads/AA", 0o3775),
        ("objects/77", 0o3775),
        ("tags", 0o3775),
        ("runtimes", 0o3775),
        ("tmp", 0o3775),
    ] {
        let m = std::fs::symlink_metadata(path.join(rel)).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, a.gid), "{rel}");
        assert_eq!(m.mode() & 0o7777, want, "{rel}");
    }
    assert_eq!(
        std::fs::read_dir(path.join("payloads")).unwrap().count(),
        1024
    );
    // Only root makes one; the help explains the model.
    let out = spfs_as(
        &w,
        &a,
        &[
            "init",
            "repo",
            "--shared",
            w.dir.path().join("x").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("needs root"), "{}", stderr(&out));
    let help = stdout(&w.spfs(&["init", "repo", "--help"]));
    assert!(help.contains("sticky") && help.contains("0400"), "{help}");
}

#[test]
fn private_payloads_stay_private_and_others_cannot_touch_them() {
    require_vfs!();
    let w = shared_world();
    let (a, b) = (TestUser::new(), TestUser::new());
    let secret: &[u8] = b"A's private notes\n";
    let public: &[u8] = b"A's public readme\n";
    let src = user_tree(
        &w,
        &a,
        "a-src",
        &[("notes", secret, 0o600), ("readme", public, 0o644)],
    );
    let layer = commit_as(&w, &a, &src, "a/stuff");
    let (secret_p, public_p) = (private_payload(&w, &a, secret), payload(&w, public));
    assert!(!payload(&w, secret).exists(), "never under the public name");
    assert_eq!(mode(&secret_p), 0o400);
    assert_eq!(mode(&public_p), 0o444);
    assert_eq!(std::fs::metadata(&secret_p).unwrap().uid(), a.uid);

    // B reads the public payload, not the private one.
    let out = sh_as(&w, &b, &format!("cat {}", public_p.display()));
    ok(&out, "B reads a public payload");
    assert_eq!(stdout(&out).as_bytes(), public);
    let out = sh_as(&w, &b, &format!("cat {}", secret_p.display()));
    assert!(!out.status.success(), "B read A's private payload");
    assert!(!stdout(&out).contains("private notes"));
    let out = spfs_as(&w, &b, &["read", &Digest::of(secret).to_string()]);
    assert!(!stdout(&out).contains("private notes"), "spfs read as B");

    // B can neither remove, rename, replace nor rewrite A's files.
    let d = layer.as_str();
    let object = w.repo.join("objects").join(&d[..2]).join(&d[2..]);
    let record = w.repo.join("runtimes/rt-of-a.json");
    ok(
        &sh_as(&w, &a, &format!("echo {{}} > {}", record.display())),
        "A's record",
    );
    let tmp = w.repo.join("tmp");
    for victim in [&secret_p, &public_p, &object, &record] {
        let v = victim.display();
        for attempt in [
            format!("rm -f {v}"),
            format!("mv {v} {}/stolen", tmp.display()),
            format!(
                "echo evil > {}/evil && mv -f {}/evil {v}",
                tmp.display(),
                tmp.display()
            ),
            format!("echo evil > {v}"),
            format!("chmod 666 {v}"),
        ] {
            let _ = sh_as(&w, &b, &attempt);
            assert!(victim.exists(), "{attempt}");
            assert_ne!(std::fs::read(victim).unwrap(), b"evil\n", "{attempt}");
        }
    }
    assert_eq!(mode(&secret_p), 0o400);

    // B's tag writes cannot touch A's tag, nor put tags in A's folder.
    let out = spfs_as(&w, &b, &["tag", d, "a/stuff"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("belongs to {}", a.name)),
        "{}",
        stderr(&out)
    );
    let out = spfs_as(&w, &b, &["untag", "a/stuff", "--all"]);
    assert!(!out.status.success(), "B removed A's tag");
    let out = spfs_as(&w, &b, &["tag", d, "a/mine"]);
    assert!(stderr(&out).contains("belongs to"), "{}", stderr(&out));
    assert_eq!(stdout(&w.spfs(&["log", "a/stuff"])).lines().count(), 1);
    // Even a folder its owner opened to all takes nobody else's tags.
    let a_folder = w.repo.join("tags/a");
    ok(
        &sh_as(&w, &a, &format!("chmod 777 {}", a_folder.display())),
        "chmod",
    );
    let out = spfs_as(&w, &b, &["tag", d, "a/mine"]);
    assert!(stderr(&out).contains("belongs to"), "{}", stderr(&out));
    ok(
        &sh_as(&w, &a, &format!("chmod 755 {}", a_folder.display())),
        "chmod",
    );
    // A moves and removes its own tag; a folder root made takes anyone's.
    ok(&spfs_as(&w, &a, &["tag", d, "a/stuff"]), "A retags");
    ok(&spfs_as(&w, &a, &["untag", "a/stuff"]), "A untags");
    ok(&w.spfs(&["tag", d, "team/base"]), "root tags");
    ok(
        &spfs_as(&w, &b, &["tag", d, "team/b"]),
        "B tags in root's folder",
    );
    ok(
        &spfs_as(&w, &a, &["tag", d, "team/a"]),
        "A tags in root's folder",
    );
    let out = spfs_as(&w, &b, &["tag", d, "team/a"]);
    assert!(stderr(&out).contains("belongs to"), "{}", stderr(&out));
    // Root moving A's tag leaves it A's.
    ok(&w.spfs(&["tag", d, "team/a"]), "root moves A's tag");
    ok(&spfs_as(&w, &a, &["tag", d, "team/a"]), "A still owns it");
    assert_eq!(stdout(&w.spfs(&["log", "team/a"])).lines().count(), 3);
    check_clean(&w);
}

#[test]
fn two_users_commit_into_one_repository_even_the_same_bytes_at_once() {
    require_vfs!();
    let w = shared_world();
    let (a, b) = (TestUser::new(), TestUser::new());
    for round in 0..4 {
        // Small files (staged in batches) and a large one (streamed).
        let big: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 + round) as u8).collect();
        let smalls: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("round {round} file {i}\n").into_bytes())
            .collect();
        let tree = |user: &TestUser, mode: u32| {
            let mut files: Vec<(String, &[u8], u32)> = smalls
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("f{i}"), &c[..], mode))
                .collect();
            files.push(("big".into(), &big[..], mode));
            let files: Vec<(&str, &[u8], u32)> =
                files.iter().map(|(n, c, m)| (n.as_str(), *c, *m)).collect();
            user_tree(&w, user, &format!("src-{}-{round}", user.name), &files)
        };
        let (sa, sb) = (tree(&a, 0o600), tree(&b, 0o644));
        let spawn = |user: &TestUser, dir: &Path, tag: &str| {
            user.command(&w, SPFS)
                .args(["commit", "--path", dir.to_str().unwrap(), "-t", tag])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let ca = spawn(&a, &sa, "one");
        let cb = spawn(&b, &sb, "two");
        let (oa, ob) = (
            ca.wait_with_output().unwrap(),
            cb.wait_with_output().unwrap(),
        );
        ok(&oa, "A's commit");
        ok(&ob, "B's commit");
        // B's public copy and A's private one, each its writer's.
        let big_p = payload(&w, &big);
        let m = std::fs::metadata(&big_p).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (b.uid, 0o444));
        // A's private copy is written unless B's public one came first
        // (then A's commit had nothing to store); either way A reads it.
        if let Ok(m) = std::fs::metadata(private_payload(&w, &a, &big)) {
            assert_eq!((m.uid(), m.mode() & 0o7777), (a.uid, 0o400));
        }
        let out = spfs_as(&w, &a, &["read", "one", "big"]);
        ok(&out, "A reads its file");
        assert!(out.stdout == big, "A's bytes");
    }
    // Each user's tag: `one` is A's, `two` is B's, both readable.
    ok(&spfs_as(&w, &b, &["log", "one"]), "B reads A's tag");
    ok(&spfs_as(&w, &a, &["ls", "two"]), "A lists B's layer");
    check_clean(&w);
    let leftovers = std::fs::read_dir(w.repo.join("tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "temporary files left");
}

#[test]
fn symlinks_a_user_plants_in_the_repository_are_not_followed() {
    require_vfs!();
    let w = shared_world();
    let b = TestUser::new();
    // A file only root may read, and a directory only root may write.
    let secret: &[u8] = b"root's secret\n";
    let secret_file = w.dir.path().join("root-only");
    std::fs::write(&secret_file, secret).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let elsewhere = w.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let s = secret_file.display();
    // B plants: a payload, an object and a tag naming the secret, and a
    // tag folder leading outside the repository.
    let digest = Digest::of(secret).to_string();
    let planted = [
        payload(&w, secret),
        w.repo.join("objects").join(&digest[..2]).join(&digest[2..]),
        w.repo.join("tags/evil.tag"),
        w.repo.join("runtimes/rt-evil.json"),
    ];
    for link in &planted {
        ok(
            &sh_as(&w, &b, &format!("ln -s {s} {}", link.display())),
            "plant",
        );
    }
    ok(
        &sh_as(
            &w,
            &b,
            &format!(
                "ln -s {} {}",
                elsewhere.display(),
                w.repo.join("tags/out").display()
            ),
        ),
        "plant a folder",
    );
    // Root reads none of them.
    for args in [
        vec!["read", digest.as_str()],
        vec!["info", digest.as_str()],
        vec!["log", "evil"],
        vec!["runtime", "info", "rt-evil"],
    ] {
        let out = w.spfs(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!all.contains("secret"), "{args:?} leaked: {all}");
    }
    // Root's tag write does not go through B's folder link.
    let layer = w.commit("fine/layer", &[("data", b"fine")]);
    let out = w.spfs(&["tag", &layer, "out/x"]);
    assert!(!out.status.success(), "tagged through a symlink");
    assert!(stderr(&out).contains("symlink"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    // A user's commit of the planted bytes refuses the link rather than
    // using it; root's replaces it with the bytes.
    let a = TestUser::new();
    let src = user_tree(&w, &a, "src-secret", &[("s", secret, 0o644)]);
    let out = spfs_as(&w, &a, &["commit", "--path", src.to_str().unwrap()]);
    assert!(!out.status.success(), "committed onto a planted symlink");
    assert!(stderr(&out).contains("cannot store"), "{}", stderr(&out));
    ok(
        &w.spfs(&[
            "commit",
            "--path",
            src.to_str().unwrap(),
            "-t",
            "fine/secret",
        ]),
        "root commits",
    );
    assert!(
        std::fs::symlink_metadata(payload(&w, secret))
            .unwrap()
            .is_file()
    );
    assert_eq!(std::fs::read(&secret_file).unwrap(), secret);
    ok(&w.spfs(&["check", "fine/layer", "fine/secret"]), "check");
}

#[test]
fn a_private_repository_works_as_before_with_private_payloads() {
    require_vfs!();
    let w = World::new();
    let tmp = w.repo.join("tmp");
    assert_eq!(mode(&tmp) & 0o1000, 0, "not sticky");
    let src = w.dir.path().join("src-private");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("secret"), b"only mine\n").unwrap();
    std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(src.join("open"), b"anyone's\n").unwrap();
    std::fs::set_permissions(src.join("open"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = w.spfs(&["commit", "--path", src.to_str().unwrap(), "-t", "p/one"]);
    ok(&out, "commit");
    assert_eq!(mode(&private_payload_of(&w, 0, b"only mine\n")), 0o400);
    assert!(!payload(&w, b"only mine\n").exists());
    assert_eq!(mode(&payload(&w, b"anyone's\n")), 0o444);
    let out = w.spfs(&["read", "p/one", "secret"]);
    ok(&out, "read");
    assert_eq!(stdout(&out), "only mine\n");
    ok(&w.spfs(&["tag", "p/one", "p/two"]), "tag");
    ok(&w.spfs(&["untag", "p/two"]), "untag");
    check_clean(&w);
    // Another user cannot write into root's private repository.
    let a = TestUser::new();
    let asrc = user_tree(&w, &a, "a-src", &[("x", b"x", 0o644)]);
    let out = spfs_as(&w, &a, &["commit", "--path", asrc.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "a user wrote into root's private repository"
    );
}

#[test]
fn users_run_their_layers_from_the_shared_repository_without_root() {
    require_vfs!();
    let w = shared_world();
    w.start_service();
    let (a, b) = (TestUser::new(), TestUser::new());
    let src = user_tree(
        &w,
        &a,
        "a-run",
        &[
            ("tool", b"a's tool", 0o644),
            ("secret", b"a's secret", 0o600),
        ],
    );
    commit_as(&w, &a, &src, "a/run");
    let mnt = w.mnt.display().to_string();
    let repo = w.repo.display().to_string();
    // A runs its layer; its record is A's and private while it runs.
    let out = sh_as(
        &w,
        &a,
        &format!(
            "{SPFS} run a/run -- sh -c 'cat {mnt}/tool; echo; stat -c \"%u %a\" {repo}/runtimes/$SPFS_RUNTIME.json'"
        ),
    );
    ok(&out, "spfs run as A");
    assert_eq!(stdout(&out), format!("a's tool\n{} 600\n", a.uid));
    // B runs A's layer: the public file reads; the private one is root's
    // in the view, as it is root's and A's alone in the repository.
    let out = sh_as(
        &w,
        &b,
        &format!("{SPFS} run a/run -- sh -c 'cat {mnt}/tool; echo; cat {mnt}/secret'"),
    );
    assert_eq!(stdout(&out), "a's tool\n");
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    // The records went with the runtimes.
    assert!(
        crate::harness::wait_for(std::time::Duration::from_secs(5), || {
            std::fs::read_dir(w.repo.join("runtimes"))
                .map(|rd| rd.count() == 0)
                .unwrap_or(false)
        }),
        "runtime records left behind"
    );
}

/// Start the world's service with `SPFS_VFS_CACHE_OPENS=1` or without.
fn start_service(w: &World, cache_opens: bool) {
    w.start_service_with(&[("SPFS_VFS_CACHE_OPENS", if cache_opens { "1" } else { "0" })]);
}

/// Write, as `user`, a manifest (made with the project's own encoding)
/// whose `secret.txt` (mode 0644) and `link` (a symlink) both name the
/// payload of `content`; returns its digest.
fn forge_manifest(w: &World, user: &TestUser, content: &[u8]) -> String {
    let digest = Digest::of(content);
    let size = content.len() as u64;
    let mut tree = TreeBuilder::new();
    tree.add(b"secret.txt", EntryKind::File, 0o100644, size, digest)
        .expect("file entry");
    tree.add(b"link", EntryKind::Symlink, 0o120777, size, digest)
        .expect("link entry");
    let bytes = Object::Manifest(tree.build().expect("tree")).encode();
    let d = Digest::of(&bytes).to_string();
    let staged = w.dir.path().join(format!("forged-{d}"));
    std::fs::write(&staged, &bytes).expect("write");
    let object = w.repo.join("objects").join(&d[..2]).join(&d[2..]);
    let script = format!(
        "cp {} {o} && chmod 0444 {o}",
        staged.display(),
        o = object.display()
    );
    ok(&sh_as(w, user, &script), "write the forged manifest");
    d
}

/// The attack: B learns the digest of A's private payload (objects are
/// public), writes a manifest naming it with mode 0644 (and as a symlink),
/// runs it and reads A's secret. The service must refuse (EACCES) both,
/// with passthrough and with `cache_opens`; A itself reads the file through
/// the same manifest; the payload stays unreadable to B from `payloads/`.
fn forged_manifest_reads_nothing(cache_opens: bool) {
    let w = shared_world();
    start_service(&w, cache_opens);
    let (a, b) = (TestUser::new(), TestUser::new());
    let secret: &[u8] = b"A's secret, not B's\n";
    let src = user_tree(&w, &a, "a-secret", &[("secret.txt", secret, 0o600)]);
    commit_as(&w, &a, &src, "a/secret");
    let forged = forge_manifest(&w, &b, secret);
    let mnt = w.mnt.display().to_string();
    let script =
        format!("{SPFS} run {forged} -- sh -c 'cat {mnt}/secret.txt; readlink {mnt}/link'");
    let out = sh_as(&w, &b, &script);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains("A's secret"), "B read A's secret: {all}");
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    for path in [payload(&w, secret), private_payload(&w, &a, secret)] {
        let out = sh_as(&w, &b, &format!("cat {}", path.display()));
        assert!(!stdout(&out).contains("A's secret"), "B read {path:?}");
    }
    let out = spfs_as(&w, &b, &["read", &Digest::of(secret).to_string()]);
    assert!(!out.status.success() && !stdout(&out).contains("A's secret"));
    assert!(stderr(&out).contains("private"), "{}", stderr(&out));
    // The manifest is right: its author's victim reads the file through
    // it. A symlink target comes from a public copy only, whoever reads
    // (the kernel caches targets for every process of a view), so not even
    // A is served a private payload as a target.
    let out = sh_as(&w, &a, &script);
    assert_eq!(stdout(&out), "A's secret, not B's\n", "{}", stderr(&out));
    check_clean(&w);
}

#[test]
fn a_forged_manifest_cannot_read_another_users_private_payload() {
    require_vfs!();
    forged_manifest_reads_nothing(false);
}

#[test]
fn a_forged_manifest_cannot_read_another_users_private_payload_with_cache_opens() {
    require_vfs!();
    forged_manifest_reads_nothing(true);
}

/// A and B run the same stack (one view, one set of inodes); A opens its
/// private payload first and keeps it open (its backing file registered
/// for the inode). B's open must be refused, not served A's copy.
#[test]
fn a_backing_file_of_one_users_copy_never_serves_another() {
    require_vfs!();
    let w = shared_world();
    w.start_service();
    let (a, b) = (TestUser::new(), TestUser::new());
    let secret: &[u8] = b"A's backing secret\n";
    let src = user_tree(&w, &a, "a-backing", &[("secret.txt", secret, 0o600)]);
    commit_as(&w, &a, &src, "a/backing");
    let stack = forge_manifest(&w, &a, secret);
    let mnt = w.mnt.display().to_string();
    // A's runtime says when it holds the file open.
    let ready_dir = user_tree(&w, &a, "a-ready", &[]);
    let ready = ready_dir.join("ready");
    let mut holder = a
        .command(&w, SPFS)
        .args(["run", &stack, "--", "sh", "-c"])
        .arg(format!(
            "exec 3< {mnt}/secret.txt; head -c 3 <&3 > /dev/null && : > {} && sleep 30",
            ready.display()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("A's runtime");
    assert!(
        wait_for(std::time::Duration::from_secs(15), || ready.exists()),
        "A never opened its file"
    );
    for script in [
        format!("cat {mnt}/secret.txt"),
        format!("exec 3< {mnt}/secret.txt && cat <&3"),
    ] {
        let out = sh_as(&w, &b, &format!("{SPFS} run {stack} -- sh -c '{script}'"));
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!all.contains("backing secret"), "B read A's copy: {all}");
        assert!(stderr(&out).contains("Permission denied"), "{all}");
    }
    // B with a copy of its own reads it while A's is still open (the
    // kernel allows one backing file per inode: the same bytes, verified).
    let bsrc = user_tree(&w, &b, "b-backing", &[("mine", secret, 0o600)]);
    commit_as(&w, &b, &bsrc, "b/backing");
    assert!(private_payload(&w, &b, secret).exists());
    let out = sh_as(
        &w,
        &b,
        &format!("{SPFS} run {stack} -- cat {mnt}/secret.txt"),
    );
    ok(&out, "B reads its own copy");
    assert_eq!(stdout(&out).as_bytes(), secret);
    let _ = holder.kill();
    let _ = holder.wait();
    check_clean(&w);
}

/// The same bytes committed privately by one user and publicly by the
/// other, in both orders: the public file is stored public (a private copy
/// first does not make it unreadable), the private one is its committer's
/// (a public copy first is used, nothing is written), each reads their own
/// file in their own runtime.
#[test]
fn the_same_bytes_private_and_public_in_either_order() {
    require_vfs!();
    let w = shared_world();
    w.start_service();
    let (a, b) = (TestUser::new(), TestUser::new());
    let mnt = w.mnt.display().to_string();
    for (round, private_first) in [(0, true), (1, false)] {
        let bytes = format!("shared bytes of round {round}\n").into_bytes();
        let bytes = &bytes[..];
        let private_src = user_tree(&w, &a, &format!("priv-{round}"), &[("f", bytes, 0o600)]);
        let public_src = user_tree(&w, &b, &format!("pub-{round}"), &[("f", bytes, 0o644)]);
        let public_tag = format!("b/pub{round}");
        if private_first {
            commit_as(&w, &a, &private_src, &format!("a/priv{round}"));
            commit_as(&w, &b, &public_src, &public_tag);
            let m = std::fs::metadata(private_payload(&w, &a, bytes)).unwrap();
            assert_eq!((m.uid(), m.mode() & 0o7777), (a.uid, 0o400));
        } else {
            commit_as(&w, &b, &public_src, &public_tag);
            commit_as(&w, &a, &private_src, &format!("a/priv{round}"));
            assert!(
                !private_payload(&w, &a, bytes).exists(),
                "a public copy serves private files too"
            );
        }
        let m = std::fs::metadata(payload(&w, bytes)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (b.uid, 0o444));
        // B reads its public file straight from payloads/ and in its runtime.
        let out = sh_as(&w, &b, &format!("cat {}", payload(&w, bytes).display()));
        ok(&out, "B reads its public payload");
        assert_eq!(stdout(&out).as_bytes(), bytes);
        let out = sh_as(&w, &b, &format!("{SPFS} run {public_tag} -- cat {mnt}/f"));
        ok(&out, "B runs its layer");
        assert_eq!(stdout(&out).as_bytes(), bytes);
        // A reads its copy in its runtime (a manifest of its own showing
        // the file to it).
        let own = forge_manifest(&w, &a, bytes);
        let out = sh_as(&w, &a, &format!("{SPFS} run {own} -- cat {mnt}/secret.txt"));
        ok(&out, "A reads its file");
        assert_eq!(stdout(&out).as_bytes(), bytes);
    }
    // Genuinely private bytes stay A's, from payloads/ and through views.
    let secret: &[u8] = b"only A has these bytes\n";
    let src = user_tree(&w, &a, "only-a", &[("s", secret, 0o600)]);
    commit_as(&w, &a, &src, "a/only");
    let out = sh_as(
        &w,
        &b,
        &format!("cat {}", private_payload(&w, &a, secret).display()),
    );
    assert!(!out.status.success() && !stdout(&out).contains("only A"));
    let forged = forge_manifest(&w, &b, secret);
    let out = sh_as(
        &w,
        &b,
        &format!("{SPFS} run {forged} -- cat {mnt}/secret.txt"),
    );
    assert!(!stdout(&out).contains("only A"), "{}", stdout(&out));
    check_clean(&w);
}
