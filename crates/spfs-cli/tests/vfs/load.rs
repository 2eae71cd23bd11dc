//! Many runtimes of different stacks reading through the one mount at once,
//! with the worker restarted twice under them: every byte right, no error
//! (the correctness part of `bench/load.sh`, short enough for CI).

use std::process::{Child, Stdio};
use std::time::Duration;

use crate::harness::*;
use crate::in_both_modes;

/// Runtimes started at once, each of its own stack.
const RUNTIMES: usize = 16;
/// Files of the shared base layer (`dA/fB`, A = i / 10, B = i % 10).
const BASE_FILES: usize = 60;
/// Files of each stack's own layer (`stack/fI`).
const STACK_FILES: usize = 5;

/// Reads its view in a loop until `STOP` exists, checking every byte and
/// size: one of its stack's files (by absolute path, and by a path relative
/// to its working directory in the mount), one base file (`d0/f0` is
/// replaced by its stack), the stat of both, and every 10th round the
/// listing of `stack`. Prints `reads reads_after_restarts errors wrong`
/// and the first problems. The contents must match those of
/// [`commit_stacks`].
const READER: &str = r#"
import os, sys, time
mnt, k, ctl = sys.argv[1], int(sys.argv[2]), sys.argv[3]
stop, restarted = os.path.join(ctl, "stop"), os.path.join(ctl, "restarted")
def base(i): return (f"base file {i}\n" * (1 + i % 7)).encode()
def stack(i): return (f"stack {k} file {i}\n" * (1 + k)).encode()
over = (f"override {k}\n" * (2 + k)).encode()
os.chdir(os.path.join(mnt, "stack"))
open(os.path.join(ctl, f"ready.{k}"), "w").close()
reads = after = errors = wrong = 0
notes = []
def note(s):
    if len(notes) < 5:
        notes.append(s)
j = 0
while not os.path.exists(stop):
    j += 1
    late = os.path.exists(restarted)
    i, b = j % STACK_FILES, (j * 7 + k) % BASE_FILES
    spath = f"f{i}" if j % 2 else os.path.join(mnt, "stack", f"f{i}")
    bpath = os.path.join(mnt, f"d{b // 10}", f"f{b % 10}")
    bwant = over if b == 0 else base(b)
    try:
        with open(spath, "rb") as f:
            if f.read() != stack(i):
                wrong += 1; note(f"wrong {spath}")
        with open(bpath, "rb") as f:
            if f.read() != bwant:
                wrong += 1; note(f"wrong {bpath}")
        if os.stat(spath).st_size != len(stack(i)):
            wrong += 1; note(f"wrong stat {spath}")
        if os.stat(bpath).st_size != len(bwant):
            wrong += 1; note(f"wrong stat {bpath}")
        if j % 10 == 0 and sorted(os.listdir(".")) != [f"f{n}" for n in range(STACK_FILES)]:
            wrong += 1; note("wrong listing")
        reads += 2
        after += 2 if late else 0
    except OSError as e:
        errors += 1; note(repr(e))
        time.sleep(0.01)
print(reads, after, errors, wrong, notes)
"#;

fn base_bytes(i: usize) -> Vec<u8> {
    format!("base file {i}\n").repeat(1 + i % 7).into_bytes()
}

fn stack_bytes(k: usize, i: usize) -> Vec<u8> {
    format!("stack {k} file {i}\n").repeat(1 + k).into_bytes()
}

fn override_bytes(k: usize) -> Vec<u8> {
    format!("override {k}\n").repeat(2 + k).into_bytes()
}

/// `load/base` and `load/s0` .. `load/s{RUNTIMES-1}`: each stack's files
/// (and its replacement of `d0/f0`) name it, and their sizes differ.
fn commit_stacks(w: &World) {
    let base: Vec<(String, Vec<u8>)> = (0..BASE_FILES)
        .map(|i| (format!("d{}/f{}", i / 10, i % 10), base_bytes(i)))
        .collect();
    let files: Vec<(&str, &[u8])> = base.iter().map(|(n, b)| (n.as_str(), &b[..])).collect();
    w.commit("load/base", &files);
    for k in 0..RUNTIMES {
        let own: Vec<(String, Vec<u8>)> = (0..STACK_FILES)
            .map(|i| (format!("stack/f{i}"), stack_bytes(k, i)))
            .chain([("d0/f0".to_string(), override_bytes(k))])
            .collect();
        let files: Vec<(&str, &[u8])> = own.iter().map(|(n, b)| (n.as_str(), &b[..])).collect();
        w.commit(&format!("load/s{k}"), &files);
    }
}

fn spawn_reader(w: &World, k: usize) -> Child {
    let program = READER
        .replace("STACK_FILES", &STACK_FILES.to_string())
        .replace("BASE_FILES", &BASE_FILES.to_string());
    w.command(SPFS)
        .args([
            "run",
            &format!("load/base+load/s{k}"),
            "--",
            "python3",
            "-c",
        ])
        .arg(program)
        .arg(&w.mnt)
        .arg(k.to_string())
        .arg(w.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn reader")
}

/// Make the kernel forget what it cached of the mount (except what is in
/// use), so that the new worker is asked about the node ids it took over.
fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", b"3").expect("drop caches");
}

fn many_runtimes_read_at_once_across_restarts(mode: Mode) {
    let w = World::with_mode(mode);
    commit_stacks(&w);
    w.start_service();
    let readers: Vec<Child> = (0..RUNTIMES).map(|k| spawn_reader(&w, k)).collect();
    let ctl = w.dir.path();
    assert!(
        wait_for(Duration::from_secs(40), || (0..RUNTIMES)
            .all(|k| ctl.join(format!("ready.{k}")).exists())),
        "readers started: {}",
        w.log_text()
    );
    assert_eq!(w.list().len(), RUNTIMES, "every runtime registered");
    let keeper = w.keeper_pid().expect("keeper");
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..2 {
        let out = w.vfs(&["service", "--restart"]);
        ok(&out, "restart");
        assert!(stdout(&out).contains("restarted"), "{}", stdout(&out));
        drop_caches();
        std::thread::sleep(Duration::from_millis(1500));
    }
    std::fs::write(ctl.join("restarted"), b"").expect("marker");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(w.keeper_pid(), Some(keeper), "one keeper throughout");
    assert_eq!(w.list().len(), RUNTIMES, "every runtime still registered");
    std::fs::write(ctl.join("stop"), b"").expect("stop file");
    let mut total = 0;
    for (k, mut r) in readers.into_iter().enumerate() {
        // A request lost in a restart would hang its reader for good.
        if !wait_for(Duration::from_secs(30), || {
            matches!(r.try_wait(), Ok(Some(_)))
        }) {
            let _ = r.kill();
            panic!("reader {k} hung: {}", w.log_text());
        }
        let out = r.wait_with_output().expect("reader");
        ok(&out, "reader");
        let text = stdout(&out);
        let mut it = text.split_whitespace();
        let mut num = || it.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        let (reads, after, errors, wrong) = (num(), num(), num(), num());
        eprintln!("reader {k}: {}", text.trim());
        assert_eq!((errors, wrong), (0, 0), "reader {k} saw problems: {text}");
        assert!(reads >= 20, "reader {k} did too little: {text}");
        assert!(
            after > 0,
            "reader {k} did nothing after the restarts: {text}"
        );
        total += reads;
    }
    eprintln!("{RUNTIMES} runtimes, {total} reads in all");
}
in_both_modes!(many_runtimes_read_at_once_across_restarts);
