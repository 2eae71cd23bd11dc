//! The service's worker replaced under running programs: restarts
//! (`spfs-vfs service --restart`), crashes (`kill -9` of the worker), and a
//! new service taking over the runtimes still alive.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::*;
use crate::in_both_modes;

/// Reads a view in a loop until `STOP` exists, checking every byte: small
/// files by absolute and relative path (its working directory is inside
/// the mount), a big file kept open across everything, stats and
/// listings. Prints `reads errors wrong` and the first problems.
const READER: &str = r#"
import os, sys, time
mnt, tag, stop = sys.argv[1], sys.argv[2], sys.argv[3]
period = bytes((i * 7 + len(tag)) % 251 for i in range(251))
big = (period * ((1 << 22) // 251 + 1))[: 1 << 22]
os.chdir(os.path.join(mnt, "dir"))
held = os.open(os.path.join(mnt, "big"), os.O_RDONLY)
open(stop + "." + tag, "w").close()
reads = errors = wrong = 0
notes = []
def note(s):
    if len(notes) < 5:
        notes.append(s)
k = 0
while not os.path.exists(stop):
    k += 1
    try:
        i = k % 20
        path = f"f{i}" if k % 2 else os.path.join(mnt, "dir", f"f{i}")
        with open(path, "rb") as f:
            if f.read() != f"{tag}-{i}".encode():
                wrong += 1; note(f"wrong {path}")
        off = (k * 65537) % ((1 << 22) - 4096)
        if os.pread(held, 4096, off) != big[off:off + 4096]:
            wrong += 1; note(f"wrong big@{off}")
        if os.stat("f3").st_size != len(f"{tag}-3"):
            wrong += 1; note("wrong stat")
        if len(os.listdir(".")) != 20:
            wrong += 1; note("wrong listing")
        reads += 4
    except OSError as e:
        errors += 1; note(repr(e))
        time.sleep(0.01)
print(reads, errors, wrong, notes)
"#;

/// Stacks `hand/a` and `hand/b`, with contents told apart by their tag.
pub fn commit_stacks(w: &World) {
    for tag in ["a", "b"] {
        let big: Vec<u8> = (0..1u32 << 22)
            .map(|i| ((i * 7 + tag.len() as u32) % 251) as u8)
            .collect();
        let names: Vec<(String, Vec<u8>)> = (0..20)
            .map(|i| (format!("dir/f{i}"), format!("{tag}-{i}").into_bytes()))
            .chain([("big".to_string(), big)])
            .collect();
        let files: Vec<(&str, &[u8])> = names
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        w.commit(&format!("hand/{tag}"), &files);
    }
}

/// A reader of `hand/TAG` (see [`READER`]).
pub fn spawn_reader(w: &World, tag: &str) -> Child {
    let stop = w.dir.path().join("stop");
    w.command(SPFS)
        .args(["run", &format!("hand/{tag}"), "--", "python3", "-c", READER])
        .arg(&w.mnt)
        .arg(tag)
        .arg(&stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn reader")
}

/// Wait until each reader is in its loop, its working directory and big
/// file held.
pub fn wait_readers(w: &World) {
    let stop = w.dir.path().join("stop");
    assert!(
        wait_for(Duration::from_secs(20), || ["a", "b"]
            .iter()
            .all(|t| stop.with_extension(t).exists())),
        "readers started: {}",
        w.log_text()
    );
    std::thread::sleep(Duration::from_millis(200));
}

/// Stop the readers and check what they saw.
pub fn check_readers(w: &World, readers: Vec<Child>) {
    std::fs::write(w.dir.path().join("stop"), b"").expect("stop file");
    for mut r in readers {
        // A request lost in a handover would hang its reader for good.
        if !wait_for(Duration::from_secs(30), || {
            matches!(r.try_wait(), Ok(Some(_)))
        }) {
            let _ = r.kill();
            panic!("a reader hung: {}", w.log_text());
        }
        let out = r.wait_with_output().expect("reader");
        ok(&out, "reader");
        let text = stdout(&out);
        let mut it = text.split_whitespace();
        let mut num = || it.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        let (reads, errors, wrong) = (num(), num(), num());
        eprintln!("reader: {text}");
        assert!(reads > 100, "too few reads: {text}");
        assert_eq!((errors, wrong), (0, 0), "readers saw problems: {text}");
    }
}

/// Make the kernel forget what it cached of the mount (names, attributes,
/// pages), except what is in use (the readers' working directories and open
/// files): it asks the new worker about the node ids it kept.
pub fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", b"3").expect("drop caches");
}

fn kill9(pid: u32) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).expect("pid"),
        rustix::process::Signal::KILL,
    );
}

/// Five restarts and two crashes of the worker while two runtimes of
/// different stacks read: no error, no wrong byte.
fn restarts_and_crashes_are_invisible(w: &World) {
    commit_stacks(w);
    let readers = vec![spawn_reader(w, "a"), spawn_reader(w, "b")];
    wait_readers(w);
    let keeper = w.keeper_pid().expect("keeper");
    for _ in 0..5 {
        let out = w.vfs(&["service", "--restart"]);
        ok(&out, "restart");
        assert!(stdout(&out).contains("restarted"), "{}", stdout(&out));
        drop_caches();
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..2 {
        let worker = w.service_pid().expect("worker");
        kill9(worker);
        assert!(
            wait_for(Duration::from_secs(10), || w
                .service_pid()
                .is_some_and(|p| p != worker)),
            "no new worker after a crash: {}",
            w.log_text()
        );
        drop_caches();
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(w.keeper_pid(), Some(keeper), "one keeper throughout");
    assert_eq!(w.list().len(), 2, "both runtimes still registered");
    check_readers(w, readers);
    let log = w.log_text();
    assert!(log.matches("runtime taken over").count() >= 14, "{log}");
}

fn restarts_and_crashes(mode: Mode) {
    let w = World::with_mode(mode);
    w.start_service();
    restarts_and_crashes_are_invisible(&w);
}
in_both_modes!(restarts_and_crashes);

/// The same with passthrough opens (the kernel reads the repository's
/// files itself): backing files registered by one worker are used by the
/// next for files still open.
#[test]
fn restarts_and_crashes_with_passthrough() {
    crate::require_vfs!();
    let w = World::new();
    w.start_service_with(&[("SPFS_VFS_CACHE_OPENS", "false")]);
    assert_eq!(w.status().expect("status")["passthrough"], true);
    restarts_and_crashes_are_invisible(&w);
}

/// An editable runtime keeps every name the kernel knows across a
/// restart: its working directory (made in the runtime), its files, and
/// what it commits.
fn editable_across_a_restart(mode: Mode) {
    let w = World::with_mode(mode);
    w.commit("hand/e", &[("lib/a.txt", b"alpha")]);
    w.start_service();
    let (ready, go) = (w.dir.path().join("ready"), w.dir.path().join("go"));
    let script = format!(
        "cd \"$SPFS_VFS_MOUNTPOINT\" && mkdir -p new/sub && cd new/sub && echo one > f
         exec 3< f
         touch {ready}; while [ ! -e {go} ]; do sleep 0.05; done
         cat f; cat <&3; echo two > g; cat g; ls; cd ..; ls sub; cat ../lib/a.txt; echo
         {SPFS} commit layer > /dev/null && echo committed; cat sub/g",
        ready = ready.display(),
        go = go.display()
    );
    let child = w
        .command(SPFS)
        .args(["run", "--edit", "hand/e", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(wait_for(Duration::from_secs(20), || ready.exists()));
    ok(&w.vfs(&["service", "--restart"]), "restart");
    ok(&w.vfs(&["service", "--restart"]), "restart");
    drop_caches();
    std::fs::write(&go, b"").expect("go");
    let out = child.wait_with_output().expect("wait");
    ok(&out, "editable runtime");
    assert_eq!(
        stdout(&out),
        "one\none\ntwo\nf\ng\nf\ng\nalpha\ncommitted\ntwo\n",
        "{}",
        stderr(&out)
    );
}
in_both_modes!(editable_across_a_restart);

/// A service started after another stopped takes over the runtimes whose
/// processes still live (routed ones see the new mount at once) and drops
/// the records of those that exited meanwhile.
#[test]
fn a_new_service_takes_over_live_runtimes_and_drops_gone_ones() {
    crate::require_vfs!();
    let w = World::with_mode(Mode::Router);
    commit_stacks(&w);
    w.start_service();
    let d = w.dir.path().display().to_string();
    let mnt = w.mnt.display().to_string();
    let named = |name: &str, spec: &str, script: String| {
        w.command(SPFS)
            .args([
                "run",
                "--runtime-name",
                name,
                spec,
                "--",
                "sh",
                "-c",
                &script,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spfs run")
    };
    let live = named(
        "live-rt",
        "hand/a",
        format!(
            "touch {d}/live; while [ ! -e {d}/go ]; do sleep 0.05; done; cat {mnt}/dir/f1; echo"
        ),
    );
    let gone = named(
        "gone-rt",
        "hand/b",
        format!("touch {d}/gone; while [ ! -e {d}/go-gone ]; do sleep 0.05; done"),
    );
    assert!(wait_for(Duration::from_secs(20), || {
        w.list().len() == 2 && std::path::Path::new(&format!("{d}/gone")).exists()
    }));
    // The service stops (its records stay); one runtime exits meanwhile.
    ok(&w.vfs(&["service", "--stop"]), "stop");
    let ls = stdout(&w.spfs(&["runtime", "ls"]));
    assert!(ls.contains("live-rt") && ls.contains("gone-rt"), "{ls}");
    std::fs::write(format!("{d}/go-gone"), b"").expect("go");
    let out = gone.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", stderr(&out));
    // With no service, `spfs runtime prune` keeps the runtime whose
    // processes live (the next service takes it over).
    let prune = w.spfs(&["runtime", "prune", "--dry-run"]);
    ok(&prune, "prune");
    assert_eq!(stdout(&prune), "would remove gone-rt\n");
    w.start_service();
    let listed: Vec<String> = w
        .list()
        .iter()
        .map(|r| r["runtime"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(listed, vec!["live-rt".to_string()], "{}", w.log_text());
    let ls = stdout(&w.spfs(&["runtime", "ls"]));
    assert!(ls.contains("live-rt") && !ls.contains("gone-rt"), "{ls}");
    // The live runtime reads through the new mount.
    std::fs::write(format!("{d}/go"), b"").expect("go");
    let out = live.wait_with_output().expect("wait");
    ok(&out, "live runtime");
    assert_eq!(stdout(&out), "a-1\n");
}

/// A worker that cannot start stops the service: nothing stays mounted.
#[test]
fn a_worker_that_cannot_start_leaves_nothing_mounted() {
    crate::require_vfs!();
    let w = World::new();
    // The keeper mounts; the worker cannot open the repository.
    let not_a_dir = w.dir.path().join("file");
    std::fs::write(&not_a_dir, b"").expect("file");
    let out = w
        .command(SPFS_VFS)
        .arg("service")
        .env("SPFS_STORAGE_ROOT", &not_a_dir)
        .output()
        .expect("service");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("could not start"), "{}", stderr(&out));
    assert!(
        spfs_fuse::mounts::mounted_type(&w.mnt)
            .expect("mountinfo")
            .is_none(),
        "left mounted"
    );
}

/// The review's cases: handles and listings opened before a restart serve
/// their own file and directory (handle numbers of two workers may meet);
/// an editable runtime's files held open across a crash never read or
/// write another file; a commit under way when a restart comes finishes
/// and keeps every edit; two quick restarts hand over cleanly.
#[test]
fn handles_listings_and_commits_across_restarts_and_crashes() {
    crate::require_vfs!();
    let w = World::with_mode(Mode::Router);
    let files: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (format!("l{i}"), format!("low-{i}\n").into_bytes()))
        .chain([
            ("a.bin".to_string(), vec![b'A'; 1 << 20]),
            ("b.bin".to_string(), vec![b'B'; 1 << 20]),
        ])
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    w.commit("rv/e", &refs);
    // Handles through the service: no passthrough, opens asked for.
    w.start_service_with(&[
        ("SPFS_VFS_PASSTHROUGH", "false"),
        ("SPFS_VFS_CACHE_OPENS", "false"),
        ("SPFS_VFS_TEST_COMMIT_DELAY_MS", "6500"),
    ]);
    let d = w.dir.path().display().to_string();
    let step = |n: u32| {
        let path = format!("{d}/step{n}");
        assert!(
            wait_for(Duration::from_secs(30), || std::path::Path::new(&path)
                .exists()),
            "step {n}: {}",
            w.log_text()
        );
    };
    let go = |n: u32| std::fs::write(format!("{d}/go{n}"), b"").expect("go");
    let script = format!(
        r#"
import os, time
d = "{d}"
def step(n):
    open(f"{{d}}/step{{n}}", "w").close()
    while not os.path.exists(f"{{d}}/go{{n}}"):
        time.sleep(0.02)
os.chdir(os.environ["SPFS_VFS_MOUNTPOINT"])
fa = os.open("a.bin", os.O_RDONLY)
os.makedirs("d1"); os.makedirs("d2")
for i in range(5):
    open(f"d1/a{{i}}", "w").close(); open(f"d2/b{{i}}", "w").close()
fd1 = os.open("d1", os.O_RDONLY | os.O_DIRECTORY)
held = []
for i in range(10):
    with open(f"n{{i}}", "w") as f:
        f.write(f"new-{{i}}\n")
    held.append(os.open(f"n{{i}}", os.O_RDWR))
step(1)  # restarted twice, quickly
fb = os.open("b.bin", os.O_RDONLY)
fd2 = os.open("d2", os.O_RDONLY | os.O_DIRECTORY)
print("a", os.pread(fa, 8, 1 << 19))
print("d1", sorted(os.listdir(fd1)))
step(2)  # the worker crashed
for i, fd in enumerate(held):
    try:
        print("held", i, os.pread(fd, 16, 0))
    except OSError as e:
        print("held", i, "error", e.errno)
try:
    os.pwrite(held[0], b"XXXX", 0)
except OSError as e:
    print("write error", e.errno)
print("l0", open("l0", "rb").read())
os.makedirs("many")
for i in range(200):
    with open(f"many/f{{i}}", "w") as f:
        f.write(f"m{{i}}")
step(3)  # a restart during the commit
print("commit", os.system("{spfs} commit layer > /dev/null"))
print("many", len(os.listdir("many")), open("many/f7").read())
"#,
        spfs = SPFS
    );
    let child = w
        .command(SPFS)
        .args(["run", "--edit", "rv/e", "--", "python3", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    step(1);
    let keeper = w.keeper_pid().expect("keeper");
    let hup = || {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(keeper as i32).expect("pid"),
            rustix::process::Signal::HUP,
        )
        .expect("hup")
    };
    let first = w.service_pid().expect("worker");
    hup();
    std::thread::sleep(Duration::from_millis(10));
    hup();
    assert!(wait_for(Duration::from_secs(20), || w
        .log_text()
        .matches("worker ready")
        .count()
        >= 3));
    assert_ne!(w.service_pid(), Some(first));
    drop_caches();
    go(1);
    step(2);
    kill9(w.service_pid().expect("worker"));
    assert!(wait_for(Duration::from_secs(20), || w
        .log_text()
        .matches("worker ready")
        .count()
        >= 4));
    drop_caches();
    go(2);
    step(3);
    go(3);
    // The commit is under way (slowed down): restart now.
    std::thread::sleep(Duration::from_millis(1500));
    ok(&w.vfs(&["service", "--restart"]), "restart during a commit");
    let out = child.wait_with_output().expect("wait");
    ok(&out, "runtime");
    let text = stdout(&out);
    let log = w.log_text();
    assert!(!log.contains("did not hand over cleanly"), "{log}");
    assert!(text.contains("a b'AAAAAAAA'"), "{text}");
    assert!(text.contains("d1 ['a0', 'a1', 'a2', 'a3', 'a4']"), "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("held") && l.contains("low-")),
        "a held file read another's bytes: {text}"
    );
    assert!(
        text.contains("l0 b'low-0\\n'"),
        "a stack file changed: {text}"
    );
    assert!(text.contains("commit 0"), "{text}");
    assert!(text.contains("many 200 m7"), "{text}");
}

/// A runtime record names a cgroup; the service never removes a cgroup
/// for a record's word (anyone may write a record).
#[test]
fn a_record_cannot_make_the_service_remove_a_cgroup() {
    crate::require_vfs!();
    let w = World::with_mode(Mode::Router);
    let victim = w.cgroups.join("victim");
    std::fs::create_dir_all(&victim).expect("victim cgroup");
    let cg_root = spfs_fuse::cgroup::cgroup2_mount().expect("cgroup2");
    let rel = format!(
        "/{}",
        victim.strip_prefix(&cg_root).expect("under").display()
    );
    for keep in [false, true] {
        let record = serde_json::json!({
            "name": format!("evil-{keep}"), "spec": "-", "layers": [], "root_pid": 1,
            "owner_uid": 1001, "created": 0, "mountpoint": w.mnt, "command": ["x"],
            "cgroup": rel, "keep": keep,
        });
        std::fs::create_dir_all(w.repo.join("runtimes")).expect("runtimes");
        std::fs::write(
            w.repo.join(format!("runtimes/evil-{keep}.json")),
            record.to_string(),
        )
        .expect("record");
    }
    w.start_service();
    ok(&w.vfs(&["service", "--restart"]), "restart");
    assert!(
        victim.exists(),
        "the service removed a cgroup a record named"
    );
    let _ = std::fs::remove_dir(&victim);
}

/// A cgroup made again at a runtime's path (by a user it is delegated
/// to, say) is not that runtime's: a new service does not take it over.
#[test]
fn a_cgroup_made_again_is_not_taken_over() {
    crate::require_vfs!();
    let w = World::with_mode(Mode::Router);
    commit_stacks(&w);
    w.start_service();
    let d = w.dir.path().display().to_string();
    let mut rt = w
        .command(SPFS)
        .args(["run", "--runtime-name", "orig", "hand/a", "--", "sh", "-c"])
        .arg(format!("touch {d}/up; exec sleep 60"))
        .spawn()
        .expect("spawn");
    assert!(wait_for(Duration::from_secs(20), || std::path::Path::new(
        &format!("{d}/up")
    )
    .exists()));
    let info = stdout(&w.spfs(&["runtime", "info", "orig", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&info).expect("json");
    let cgroup = v["cgroup"].as_str().expect("cgroup").to_string();
    ok(&w.vfs(&["service", "--stop"]), "stop");
    let _ = rt.kill();
    let _ = rt.wait();
    let dir = spfs_fuse::cgroup::cgroup_dir(&cgroup).expect("dir");
    assert!(wait_for(Duration::from_secs(10), || std::fs::remove_dir(
        &dir
    )
    .is_ok()));
    std::fs::create_dir(&dir).expect("made again");
    let mut squatter = Command::new("sleep").arg("60").spawn().expect("sleep");
    std::fs::write(dir.join("cgroup.procs"), squatter.id().to_string()).expect("move");
    w.start_service();
    let listed = w.list();
    let _ = squatter.kill();
    let _ = squatter.wait();
    assert!(listed.is_empty(), "taken over: {listed:?}");
}
