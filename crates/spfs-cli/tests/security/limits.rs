//! Descriptor exhaustion: one user must not make the service (one process
//! serving everyone) run out of file descriptors, by holding control
//! connections or by keeping files of editable views open. Other users'
//! runtimes keep being served, and the greedy user's own files keep
//! reading and writing correctly.

use std::io::{BufRead, BufReader};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use crate::harness::{SPFS, SPFS_VFS, World, ok, stderr, stdout, wait_for};
use crate::require_vfs;
use crate::users::TestUser;

/// The system's Python (the one on root's PATH may not be reachable by
/// other users).
const PYTHON: &str = "/usr/bin/python3";

/// Connections a non-root user may hold at once
/// (`spfs_control::limits::PER_PEER`).
const PER_USER: usize = spfs_control::limits::PER_PEER;

fn shared_world() -> World {
    // Routed: users here have no capable spfs-enter.
    let w = World::with_mode(crate::harness::Mode::Router);
    let out = w.spfs(&["init", "repo", "--shared", w.repo.to_str().expect("utf8")]);
    ok(&out, "init --shared");
    w
}

/// `spfs run ARGS… -- sh -c SCRIPT` as `user`, in the mount point.
fn run_as(w: &World, user: &TestUser, args: &[&str], script: &str) -> Output {
    user.command(w, SPFS)
        .arg("run")
        .args(args)
        .args(["--", "sh", "-c"])
        .arg(format!("cd \"$SPFS_VFS_MOUNTPOINT\" && {script}"))
        .output()
        .expect("spfs run")
}

/// A child process killed and reaped when dropped (the test user's drop
/// kills whatever else it left).
struct Reaped(Option<Child>);

impl Reaped {
    fn new(child: Child) -> Reaped {
        Reaped(Some(child))
    }

    /// Wait for it to exit, with what it printed.
    fn output(mut self) -> Option<Output> {
        self.0.take()?.wait_with_output().ok()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Descriptors the process `pid` holds now.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |rd| rd.count())
}

/// Opens `n` connections to the control socket and keeps them; prints
/// how many the service holds and how many it refused (a refused one is
/// answered with a GOAWAY naming the bound, then closed), then sleeps.
const HOARD: &str = r#"
import socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
conns = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    conns.append(s)
time.sleep(0.5)
held = refused = 0
for s in conns:
    s.settimeout(0.05)
    got = b""
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
            got += b
    except socket.timeout:
        pass
    if b"connection refused" in got:
        refused += 1
    else:
        held += 1
print(held, refused, flush=True)
time.sleep(120)
"#;

#[test]
fn a_user_holding_control_connections_leaves_others_served() {
    require_vfs!();
    let w = shared_world();
    w.start_service();
    w.commit("limits/data", &[("data", b"hello\n")]);
    let (greedy, other) = (TestUser::new(), TestUser::new());
    let tries = PER_USER * 3;
    let mut hoard = Reaped::new(
        greedy
            .command(&w, PYTHON)
            .args(["-c", HOARD])
            .arg(&w.sock)
            .arg(tries.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python"),
    );
    let mut line = String::new();
    if let Some(out) = hoard.0.as_mut().and_then(|c| c.stdout.take()) {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let counts: Vec<usize> = line
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(counts.len(), 2, "the hoarder said {line:?}");
    // While they are held, the other user runs and reads its files, and
    // the greedy user's own client says why it is refused.
    let served = run_as(&w, &other, &["limits/data"], "cat data");
    ok(&served, "the other user's run");
    assert_eq!(stdout(&served), "hello\n");
    let refused = greedy
        .command(&w, SPFS_VFS)
        .arg("list")
        .output()
        .expect("spfs");
    assert_eq!(
        counts,
        [PER_USER, tries - PER_USER],
        "connections held and refused, of {tries}"
    );
    assert!(!refused.status.success(), "a client past the bound got in");
    let err = stderr(&refused);
    assert!(
        err.contains("refused the connection")
            && err.contains(&format!("user {}", greedy.uid))
            && err.trim().lines().count() == 1,
        "{err}"
    );
}

/// In an editable runtime: opens `n` new files and keeps them open,
/// writes to each, says it is ready (`$SYNC/ready-NAME`), waits for
/// `$SYNC/go`, then reads each back through its open descriptor, writes
/// again and reads again; prints `ok` or what differed.
const KEEP_OPEN: &str = r#"
import os, sys, time
sync, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
fds = [os.open(f"f{i}", os.O_RDWR | os.O_CREAT, 0o644) for i in range(n)]
for i, fd in enumerate(fds):
    os.pwrite(fd, f"{name} {i} first\n".encode(), 0)
open(f"{sync}/ready-{name}", "w").close()
while not os.path.exists(f"{sync}/go"):
    time.sleep(0.05)
bad = []
for i, fd in enumerate(fds):
    if os.pread(fd, 100, 0) != f"{name} {i} first\n".encode():
        bad.append(i)
    os.pwrite(fd, f"{name} {i} again\n".encode(), 0)
for i, fd in enumerate(fds):
    if os.pread(fd, 100, 0) != f"{name} {i} again\n".encode():
        bad.append(i)
for i in range(n):
    with open(f"f{i}", "rb") as f:
        if f.read() != f"{name} {i} again\n".encode():
            bad.append(i)
print("ok" if not bad else f"differ: {bad[:10]}", flush=True)
"#;

#[test]
fn files_kept_open_in_editable_views_stay_within_the_budget() {
    require_vfs!();
    let w = shared_world();
    // A budget far below what the greedy user opens (`vfs.kept_files`).
    let budget = 32;
    w.start_service_with(&[("SPFS_VFS_KEPT_FILES", &budget.to_string())]);
    w.commit("limits/data", &[("data", b"hello\n")]);
    let worker = w.service_pid().expect("the worker's pid");
    let before = descriptors(worker);
    let sync = w.dir.path().join("sync");
    std::fs::create_dir(&sync).expect("sync dir");
    std::fs::set_permissions(&sync, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
        .expect("chmod");
    let (greedy, other) = (TestUser::new(), TestUser::new());
    let (views, per_view) = (3, 100);
    let runs: Vec<Reaped> = (0..views)
        .map(|v| {
            Reaped::new(
                greedy
                    .command(&w, SPFS)
                    .args(["run", "--edit", "-", "--", "sh", "-c"])
                    .arg(format!(
                        "cd \"$SPFS_VFS_MOUNTPOINT\" && exec {PYTHON} -c '{KEEP_OPEN}' {} v{v} {per_view}",
                        sync.display()
                    ))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spfs run"),
            )
        })
        .collect();
    let ready = wait_for(Duration::from_secs(60), || {
        (0..views).all(|v| sync.join(format!("ready-v{v}")).exists())
    });
    let during = descriptors(worker);
    // Another user's runtimes, read-only and editable, are served.
    let served = run_as(&w, &other, &["limits/data"], "cat data");
    let edited = run_as(
        &w,
        &other,
        &["--edit", "limits/data"],
        "echo more >> data && cat data",
    );
    std::fs::write(sync.join("go"), "").expect("go");
    let mut said = Vec::new();
    for run in runs {
        let out = run.output().expect("wait");
        said.push((out.status.success(), stdout(&out), stderr(&out)));
    }
    assert!(ready, "the greedy runs did not get ready: {said:?}");
    ok(&served, "the other user's run");
    assert_eq!(stdout(&served), "hello\n");
    ok(&edited, "the other user's editable run");
    assert_eq!(stdout(&edited), "hello\nmore\n");
    for (success, out, err) in &said {
        assert!(*success && out.trim() == "ok", "{out} {err}");
    }
    // The service kept at most the budget of upper files open (and a few
    // descriptors for the runtimes themselves), not one per open file.
    let opened = views * per_view;
    assert!(
        during < before + budget + opened / 2,
        "the service went from {before} to {during} descriptors while {opened} files were open"
    );
}

/// Opens of read-only views that the service holds a descriptor for
/// (`vfs.cache_opens = false` without passthrough) are bounded per user:
/// a user opening a file thousands of times is refused (`EMFILE`) long
/// before the service runs out of descriptors, and others are served.
#[test]
fn files_held_open_through_the_service_are_bounded_per_user() {
    require_vfs!();
    let w = shared_world();
    w.start_service_with(&[
        ("SPFS_VFS_CACHE_OPENS", "false"),
        ("SPFS_VFS_PASSTHROUGH", "false"),
    ]);
    w.commit("held/data", &[("data", b"hello\n")]);
    let worker = w.service_pid().expect("the worker's pid");
    let (greedy, other) = (TestUser::new(), TestUser::new());
    let hold = r#"
import errno, resource, sys
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
files = []
try:
    for _ in range(6000):
        files.append(open("data"))
    print("all", len(files))
except OSError as e:
    print("refused", len(files), errno.errorcode.get(e.errno))
"#;
    let out = run_as(
        &w,
        &greedy,
        &["held/data"],
        &format!("{PYTHON} -c '{hold}'"),
    );
    ok(&out, "the greedy run");
    let said = stdout(&out);
    assert!(
        said.starts_with("refused") && said.contains("EMFILE"),
        "{said}"
    );
    let held: usize = said
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!((64..6000).contains(&held), "{said}");
    let served = run_as(&w, &other, &["held/data"], "cat data");
    ok(&served, "the other user's run");
    assert_eq!(stdout(&served), "hello\n");
    assert!(
        descriptors(worker) < 1000,
        "the greedy user's files are still held"
    );
}
