//! Editable and durable runtimes on a real mount: every supported POSIX
//! operation (with the mask cases), isolation from other runtimes, commit
//! from a runtime, `spfs edit`/`spfs reset`, and durable runtimes run
//! again after the service restarted.

use std::process::{Command, Output, Stdio};

use crate::harness::{Mode, SPFS, World, ok, stderr, stdout};
use crate::{in_both_modes, require_vfs};

/// The stack every test edits: a file, a nested directory, a symlink.
fn base(w: &World) {
    w.commit(
        "test/base",
        &[
            ("lib/a.txt", b"alpha\n"),
            ("dir/keep.txt", b"keep\n"),
            ("dir/sub/deep.txt", b"deep\n"),
            ("bin/tool", b"#!/bin/sh\necho tool\n"),
        ],
    );
}

/// `spfs run ARGS -- sh -euc SCRIPT` in the mount point, with `spfs` on
/// the PATH.
fn sh(w: &World, args: &[&str], script: &str) -> Output {
    let bin = std::path::Path::new(SPFS).parent().expect("bin dir");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let full = format!("cd \"$SPFS_VFS_MOUNTPOINT\"\n{script}");
    w.command(SPFS)
        .arg("run")
        .args(args)
        .args(["--", "sh", "-euc", &full])
        .env("PATH", path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("spfs run")
}

/// Run `script` in a new editable runtime of the base stack; its output.
fn edit(w: &World, script: &str) -> String {
    let out = sh(w, &["--edit", "test/base"], script);
    ok(&out, script);
    stdout(&out)
}

/// `ro` or `rw`: the mount's superblock, as /proc/self/mountinfo says.
fn superblock_mode(w: &World) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mnt = w.mnt.display().to_string();
    info.lines()
        .filter(|l| l.split_whitespace().nth(4) == Some(mnt.as_str()))
        .filter_map(|l| l.split_once(" - ").map(|(_, r)| r.to_string()))
        .filter_map(|r| r.split_whitespace().nth(2).map(|o| o[..2].to_string()))
        .next()
        .unwrap_or_default()
}

fn world(mode: Mode) -> World {
    let w = World::with_mode(mode);
    base(&w);
    w
}

fn create_write_truncate_append(mode: Mode) {
    let w = world(mode);
    let out = edit(
        &w,
        "printf hello > new.txt; printf ' world' >> new.txt; cat new.txt; echo
         stat -c '%s %U' new.txt
         printf 12345678 > lib/a.txt; cat lib/a.txt; echo
         truncate -s 3 lib/a.txt; cat lib/a.txt; echo
         : > dir/keep.txt; stat -c %s dir/keep.txt
         python3 -c 'import os; f=os.open(\"big\", os.O_CREAT|os.O_RDWR, 0o640); os.pwrite(f, b\"x\", 1<<20); os.fsync(f); print(os.fstat(f).st_size)'
         stat -c %a big",
    );
    assert_eq!(
        out, "hello world\n11 root\n12345678\n123\n0\n1048577\n640\n",
        "{out}"
    );
}
in_both_modes!(create_write_truncate_append);

fn remove_a_lower_file_and_make_it_again(mode: Mode) {
    let w = world(mode);
    let out = edit(
        &w,
        "rm lib/a.txt; ls lib | wc -l; test ! -e lib/a.txt && echo gone
         cat lib/a.txt 2>/dev/null || echo missing
         echo again > lib/a.txt; cat lib/a.txt; ls lib",
    );
    assert_eq!(out, "0\ngone\nmissing\nagain\na.txt\n", "{out}");
}
in_both_modes!(remove_a_lower_file_and_make_it_again);

fn rename_files_and_a_lower_directory(mode: Mode) {
    let w = world(mode);
    let out = edit(
        &w,
        "mv lib/a.txt lib/b.txt; cat lib/b.txt; ls lib
         mv dir moved; ls; cat moved/keep.txt moved/sub/deep.txt
         test ! -e dir && echo old-gone
         echo new > moved/sub/new.txt; mv moved dir2; ls dir2/sub
         mkdir dir; ls dir | wc -l
         echo x > x; echo y > y; mv -f x y; cat y; test ! -e x && echo replaced",
    );
    assert_eq!(
        out,
        "alpha\nb.txt\nbin\nlib\nmoved\nkeep\ndeep\nold-gone\ndeep.txt\nnew.txt\n0\nx\nreplaced\n",
        "{out}"
    );
}
in_both_modes!(rename_files_and_a_lower_directory);

fn mkdir_rmdir_and_a_lower_directory_with_children(mode: Mode) {
    let w = world(mode);
    let out = edit(
        &w,
        "mkdir -p a/b/c; rmdir a/b/c a/b a; test ! -e a && echo made-and-gone
         rmdir dir 2>/dev/null || echo not-empty
         rm dir/keep.txt dir/sub/deep.txt; rmdir dir/sub dir; test ! -e dir && echo removed
         mkdir dir; ls -A dir | wc -l",
    );
    assert_eq!(out, "made-and-gone\nnot-empty\nremoved\n0\n", "{out}");
}
in_both_modes!(mkdir_rmdir_and_a_lower_directory_with_children);

#[test]
fn symlinks_and_hard_links() {
    require_vfs!();
    let w = world(Mode::Bound);
    let out = edit(
        &w,
        "ln -s ../lib/a.txt dir/link; readlink dir/link; cat dir/link
         ln lib/a.txt hard; stat -c %h hard lib/a.txt
         test \"$(stat -c %i hard)\" = \"$(stat -c %i lib/a.txt)\" && echo same-inode
         echo more >> hard; cat lib/a.txt
         rm lib/a.txt; cat hard",
    );
    assert_eq!(
        out, "../lib/a.txt\nalpha\n2\n2\nsame-inode\nalpha\nmore\nalpha\nmore\n",
        "{out}"
    );
}

#[test]
fn chmod_chown_and_times() {
    require_vfs!();
    let w = world(Mode::Bound);
    let out = edit(
        &w,
        "chmod 700 bin/tool; stat -c %a bin/tool; ./bin/tool
         chown 4321:4322 lib/a.txt; stat -c '%u:%g' lib/a.txt
         touch -h -d '2001-02-03 04:05:06' dir/keep.txt; stat -c %Y dir/keep.txt
         chmod 750 dir; stat -c %a dir; cat dir/sub/deep.txt",
    );
    let secs = Command::new("date")
        .args(["-d", "2001-02-03 04:05:06", "+%s"])
        .output()
        .expect("date");
    let want = format!("700\ntool\n4321:4322\n{}750\ndeep\n", stdout(&secs));
    assert_eq!(out, want);
}

#[test]
fn fsync_statfs_and_unsupported_requests() {
    require_vfs!();
    let w = world(Mode::Bound);
    let out = edit(
        &w,
        "python3 -c 'import os; f=os.open(\"f\", os.O_CREAT|os.O_WRONLY); os.write(f, b\"d\"); os.fsync(f); os.fdatasync(f); print(\"synced\")'
         test \"$(stat -f -c %a .)\" -gt 0 && echo has-room
         mkfifo fifo 2>/dev/null || echo no-fifo
         setfattr -n user.x -v 1 f 2>/dev/null || echo no-xattr",
    );
    assert_eq!(out, "synced\nhas-room\nno-fifo\nno-xattr\n", "{out}");
}

/// Edits in one runtime are seen by nobody else: not another editable
/// runtime of the same stack, not a read-only one, not a later one.
fn edits_are_private_to_their_runtime(mode: Mode) {
    let w = world(mode);
    let mut first = w
        .command(SPFS)
        .args([
            "run",
            "--edit",
            "test/base",
            "--",
            "sh",
            "-c",
            "cd \"$SPFS_VFS_MOUNTPOINT\"; echo mine > lib/a.txt; rm dir/keep.txt; touch made; mv bin/tool top; ls top; exec sleep 30",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // The first runtime has made its edits once its file exists for it.
    let mut made = false;
    for _ in 0..200 {
        let out = w
            .command(SPFS)
            .args(["runtime", "ls", "--json"])
            .output()
            .expect("ls");
        if stdout(&out).contains("test/base") {
            made = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(made, "first runtime never started");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let other = edit(
        &w,
        "cat lib/a.txt dir/keep.txt; test ! -e made && test ! -e top && echo no-made",
    );
    let ro = sh(
        &w,
        &["test/base"],
        "cat lib/a.txt; echo x > lib/a.txt 2>/dev/null || echo read-only",
    );
    // The mount is writable while an editable runtime exists, and
    // read-only again once none does.
    assert_eq!(superblock_mode(&w), "rw");
    let _ = first.kill();
    let _ = first.wait();
    assert!(
        crate::harness::wait_for(std::time::Duration::from_secs(10), || superblock_mode(&w)
            == "ro"),
        "the mount stays writable"
    );
    assert_eq!(other, "alpha\nkeep\nno-made\n");
    ok(&ro, "read-only run");
    assert_eq!(stdout(&ro), "alpha\nread-only\n");
}
in_both_modes!(edits_are_private_to_their_runtime);

/// `spfs commit layer` inside the runtime: the processes keep running and
/// see the same files; a new runtime of the tag sees them; `spfs diff`
/// names them.
fn commit_round_trip(mode: Mode) {
    let w = world(mode);
    let out = edit(
        &w,
        "echo new > new.txt; echo changed > lib/a.txt; rm dir/keep.txt; mv dir/sub sub2
         (sleep 1; cat new.txt sub2/deep.txt > /tmp/x-$$ 2>&1) &
         spfs commit layer -t test/edited > /dev/null
         cat new.txt lib/a.txt sub2/deep.txt; test ! -e dir/keep.txt && echo masked
         wait; echo more > new.txt; spfs commit platform -t test/platform > /dev/null
         spfs runtime info --json \"$SPFS_RUNTIME\" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)[\"layers\"]))'",
    );
    assert_eq!(out, "new\nchanged\ndeep\nmasked\n3\n", "{out}");
    let seen = sh(
        &w,
        &["test/platform"],
        "cat new.txt lib/a.txt sub2/deep.txt; test ! -e dir/keep.txt && test ! -e dir/sub && echo masked",
    );
    ok(&seen, "run the platform");
    assert_eq!(stdout(&seen), "more\nchanged\ndeep\nmasked\n");
    let diff = w.spfs(&["diff", "test/base", "test/platform"]);
    ok(&diff, "diff");
    let d = stdout(&diff);
    for line in [
        "+ new.txt",
        "~ lib/a.txt",
        "- dir/keep.txt",
        "- dir/sub",
        "+ sub2/deep.txt",
    ] {
        assert!(d.contains(line), "{line} missing from:\n{d}");
    }
    // Nothing to commit is an error, and nothing is written.
    let empty = sh(&w, &["--edit", "test/base"], "spfs commit layer");
    assert!(!empty.status.success());
    assert!(
        stderr(&empty).contains("nothing to commit"),
        "{}",
        stderr(&empty)
    );
}
in_both_modes!(commit_round_trip);

#[test]
fn edit_off_and_reset() {
    require_vfs!();
    let w = world(Mode::Bound);
    let out = edit(
        &w,
        "echo one > one; echo changed > lib/a.txt; rm dir/keep.txt; mkdir -p d/e; echo x > d/e/f
         spfs edit --off > /dev/null; echo no > two 2>/dev/null || echo refused; spfs edit > /dev/null
         spfs reset lib/a.txt \"$SPFS_VFS_MOUNTPOINT/dir\"; cat lib/a.txt dir/keep.txt one d/e/f
         spfs reset; ls; test ! -e one && echo all-gone",
    );
    assert_eq!(
        out, "refused\nalpha\nkeep\none\nx\nbin\ndir\nlib\nall-gone\n",
        "{out}"
    );
}

#[test]
fn read_only_runtimes_refuse_changes_and_non_editable_commands_say_so() {
    require_vfs!();
    let w = world(Mode::Bound);
    let out = sh(
        &w,
        &["test/base"],
        "touch x 2>/dev/null || echo refused; spfs commit layer 2>&1 | tail -1; spfs edit 2>&1 | tail -1",
    );
    ok(&out, "read-only run");
    let text = stdout(&out);
    assert!(text.starts_with("refused\n"), "{text}");
    assert!(text.contains("not editable"), "{text}");
    let outside = w.spfs(&["commit", "layer"]);
    assert!(!outside.status.success());
    assert!(
        stderr(&outside).contains("not in a runtime"),
        "{}",
        stderr(&outside)
    );
}

/// An empty spec is editable unless told otherwise.
#[test]
fn an_empty_spec_is_editable_by_default() {
    require_vfs!();
    let w = World::new();
    let out = sh(&w, &["-"], "echo x > f; cat f");
    ok(&out, "empty spec");
    assert_eq!(stdout(&out), "x\n");
    let out = sh(
        &w,
        &["--no-edit", "-"],
        "echo x > f 2>/dev/null || echo refused",
    );
    ok(&out, "empty read-only spec");
    assert_eq!(stdout(&out), "refused\n");
}

/// A durable runtime keeps its edits after exit and across a service
/// restart; `--rerun` resumes it; prune keeps it; `runtime rm` removes it.
#[test]
fn durable_runtimes_resume_after_a_service_restart() {
    require_vfs!();
    let w = world(Mode::Bound);
    let out = sh(
        &w,
        &["--keep-runtime", "--runtime-name", "dur", "test/base"],
        "echo kept > kept.txt; rm lib/a.txt; spfs commit layer > /dev/null; echo post > post.txt",
    );
    ok(&out, "durable run");
    let stop = w.vfs(&["service", "--stop"]);
    ok(&stop, "stop the service");
    // Edits of a runtime that was running when the service stopped (not
    // durable) go when the next service starts; kept ones stay.
    let ghost = w.repo.join("edits/ghost");
    std::fs::create_dir_all(ghost.join("d")).expect("ghost edits");
    let info = w.spfs(&["runtime", "info", "dur"]);
    ok(&info, "the record stays");
    assert!(stdout(&info).contains("durable"), "{}", stdout(&info));
    let again = sh(
        &w,
        &["--rerun", "dur"],
        "cat kept.txt post.txt; test ! -e lib/a.txt && echo masked; echo second >> kept.txt",
    );
    ok(&again, "rerun");
    assert_eq!(stdout(&again), "kept\npost\nmasked\n");
    assert!(!ghost.exists(), "stale edits removed at start");
    // The record names the committed layer (base + 1).
    let info = w.spfs(&["runtime", "info", "dur", "--json"]);
    let record: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    assert_eq!(
        record["layers"].as_array().map(Vec::len),
        Some(2),
        "{record}"
    );
    // The name is taken while kept: a new runtime may not use it.
    let taken = sh(
        &w,
        &["--runtime-name", "dur", "--edit", "test/base"],
        "true",
    );
    assert!(!taken.status.success(), "{}", stdout(&taken));
    let prune = w.spfs(&["runtime", "prune"]);
    ok(&prune, "prune");
    let third = w
        .command(SPFS)
        .args(["run", "--rerun", "dur", "--", "sh", "-c"])
        .arg("cat \"$SPFS_VFS_MOUNTPOINT/kept.txt\"")
        .output()
        .expect("rerun");
    ok(&third, "third run");
    assert_eq!(stdout(&third), "kept\nsecond\n");
    ok(&w.spfs(&["runtime", "rm", "dur"]), "remove");
    assert!(!w.repo.join("edits/dur").exists(), "kept edits removed");
    let gone = w
        .command(SPFS)
        .args(["run", "--rerun", "dur", "--", "true"])
        .output()
        .expect("rerun");
    assert!(!gone.status.success());
}

/// `spfs runtime prune` removes records whose processes are gone and keeps
/// live and durable ones.
#[test]
fn prune_removes_records_of_runtimes_that_are_gone() {
    require_vfs!();
    let w = world(Mode::Bound);
    let out = sh(
        &w,
        &["--keep-runtime", "--runtime-name", "kept", "test/base"],
        "true",
    );
    ok(&out, "durable");
    let mut live = w
        .command(SPFS)
        .args([
            "run",
            "--runtime-name",
            "live",
            "test/base",
            "--",
            "sleep",
            "30",
        ])
        .spawn()
        .expect("spawn");
    assert!(crate::harness::wait_for(
        std::time::Duration::from_secs(10),
        || w.spfs(&["runtime", "info", "live"]).status.success()
    ));
    let stale = serde_json::json!({
        "name": "stale", "spec": "test/base", "layers": [], "root_pid": 999999,
        "owner_uid": 0, "created": 0, "mountpoint": w.mnt, "command": ["x"],
    });
    std::fs::write(w.repo.join("runtimes/stale.json"), stale.to_string()).expect("record");
    let prune = w.spfs(&["runtime", "prune"]);
    let _ = live.kill();
    let _ = live.wait();
    ok(&prune, "prune");
    assert_eq!(stdout(&prune), "removed stale\n");
    assert!(w.spfs(&["runtime", "info", "kept"]).status.success());
}

/// Files made in a runtime do not each keep a descriptor of the service
/// open (it serves every runtime with one descriptor table).
#[test]
fn many_new_files_do_not_hold_a_descriptor_each() {
    require_vfs!();
    let w = world(Mode::Bound);
    let mut child = w
        .command(SPFS)
        .args(["run", "--edit", "test/base", "--", "sh", "-c"])
        .arg(
            "cd \"$SPFS_VFS_MOUNTPOINT\"; mkdir m; i=0
             while [ $i -lt 6000 ]; do : > m/f$i; i=$((i+1)); done
             ls m | wc -l; exec sleep 30",
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    let stdout_pipe = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout_pipe), &mut line)
        .expect("read");
    // While the runtime lives (its view and files are the service's).
    let pid = w.service_pid().expect("service pid");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(line, "6000\n");
    assert!(fds < 4096 + 512, "the service holds {fds} descriptors");
}

/// Writes through a shared writable mapping reach the upper area (the
/// kernel writes them back without a caller); a hard link renamed in
/// another directory; the door's name is not a name for an entry.
#[test]
fn mapped_writes_links_elsewhere_and_the_reserved_name() {
    require_vfs!();
    let w = world(Mode::Router);
    let out = edit(
        &w,
        "python3 -c '
import mmap, os
f = os.open(\"lib/a.txt\", os.O_RDWR)
m = mmap.mmap(f, 6)
m[0:5] = b\"ALPHA\"
m.flush(); m.close(); os.close(f)'
         spfs commit layer > /dev/null; cat lib/a.txt
         mkdir h1 h2; echo x > h1/x; ln h1/x h2/y; mv h2/y h2/z; cat h2/z; ls h2
         echo no > .spfs-view 2>/dev/null || echo reserved",
    );
    assert_eq!(out, "ALPHA\nx\nz\nreserved\n", "{out}");
}

/// Data written while commits run is never lost (a commit sets the upper
/// area aside only between writes).
#[test]
fn writes_during_commits_are_kept() {
    require_vfs!();
    let w = world(Mode::Bound);
    let out = edit(
        &w,
        "(i=0; while [ $i -lt 400 ]; do echo line$i >> log; i=$((i+1)); done) &
         j=0; while [ $j -lt 15 ]; do spfs commit layer > /dev/null 2>&1 || true; j=$((j+1)); done
         wait; spfs commit layer > /dev/null 2>&1 || true
         wc -l < log; tr -d '\\n[:alnum:]' < log | wc -c",
    );
    assert_eq!(out, "400\n0\n", "lines, and bytes that are not text");
}

/// A loop that removes what it lists, chunk by chunk, sees every entry
/// once (listings are taken when the directory is opened), as Rust's
/// `remove_dir_all` and Python's `os.scandir` loops need.
#[test]
fn removing_while_listing_sees_every_entry() {
    require_vfs!();
    let w = world(Mode::Bound);
    let out = edit(
        &w,
        "mkdir d; cd d; i=0; while [ $i -lt 3000 ]; do : > f$i; i=$((i+1)); done; cd ..
         python3 -c '
import os
n = 0
with os.scandir(\"d\") as it:
    for e in it:
        os.unlink(e.path); n += 1
print(n, len(os.listdir(\"d\")))'
         rmdir d && echo removed",
    );
    assert_eq!(out, "3000 0\nremoved\n", "{out}");
}
