//! The service's worker replaced under running programs: restarts
//! (`spfs-vfs service --restart`), crashes (`kill -9` of the worker), and a
//! new service taking over the runtimes still alive.

use std::process::{Child, Stdio};
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
