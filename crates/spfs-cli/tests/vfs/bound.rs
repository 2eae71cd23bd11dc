//! Bound views: a runtime's own mount namespace whose mount point shows its
//! view's root, so the kernel caches every name; and what stays routed.

use std::time::Duration;

use crate::harness::*;
use crate::require_vfs;

/// Python that touches names at every level of the mount (found, missing,
/// top-level and below), warm, then counts the FUSE requests its runtime
/// caused while doing the same 200 times.
const COUNT_REQUESTS: &str = r#"
import json, os, subprocess, sys
mnt, vfs = sys.argv[1], sys.argv[2]
def requests():
    out = json.loads(subprocess.check_output([vfs, "list", "--json"]))
    me = os.environ["SPFS_RUNTIME"]
    return [r for r in out["runtimes"] if r["runtime"] == me][0]["requests"]
def walk():
    os.stat(mnt + "/dir/sub/file")
    os.stat(mnt + "/top")
    assert not os.path.exists(mnt + "/missing")
    assert not os.path.exists(mnt + "/dir/missing")
    with open(mnt + "/top", "rb") as f:
        assert f.read() == b"top"
walk()
before = requests()
for _ in range(200):
    walk()
print(requests() - before)
"#;

fn warm_requests(mode: Mode) -> u64 {
    let w = World::with_mode(mode);
    w.commit("count/a", &[("dir/sub/file", b"deep"), ("top", b"top")]);
    let script = w.dir.path().join("count.py");
    std::fs::write(&script, COUNT_REQUESTS).unwrap();
    let out = w
        .command(SPFS)
        .args(["run", "count/a", "--", "python3"])
        .arg(&script)
        .arg(&w.mnt)
        .arg(SPFS_VFS)
        .output()
        .unwrap();
    ok(&out, "count requests");
    stdout(&out).trim().parse().unwrap()
}

/// In a bound runtime a warm walk costs no request at all, top-level names
/// and misses included (opens still do, unless the kernel keeps them);
/// routed, every walk through the shared root asks the service.
#[test]
fn a_bound_runtime_walks_its_view_from_the_kernel_cache() {
    require_vfs!();
    let bound = warm_requests(Mode::Bound);
    let routed = warm_requests(Mode::Router);
    // 200 walks: 4 path walks through the root, one open (with passthrough,
    // an OPEN and a RELEASE) each.
    assert!(routed >= 800, "routed: {routed} requests");
    assert!(bound <= 200 * 2 + 10, "bound: {bound} requests");
    assert!(bound * 2 < routed, "bound {bound} vs routed {routed}");
    eprintln!("200 warm walks: {bound} requests bound, {routed} routed");
}

#[test]
fn the_door_opens_only_for_a_bound_runtime_onto_its_own_view() {
    require_vfs!();
    let w = World::new();
    w.commit("door/a", &[("a-only", b"a")]);
    w.commit("door/b", &[("b-only", b"b")]);
    let mnt = w.mnt.display().to_string();
    let mut a = w.spawn_sh("door/a", "sleep 30");
    assert!(wait_for(Duration::from_secs(10), || w.list().len() == 1));
    // The outsider (this test) sees an empty root and no door.
    assert_eq!(std::fs::read_dir(&w.mnt).unwrap().count(), 0);
    assert!(std::fs::metadata(w.path(".spfs-view")).is_err());
    // A routed runtime has no door, and sees its own view.
    let routed = w
        .command(SPFS)
        .args(["run", "door/b", "--", "sh", "-c"])
        .arg(format!(
            "ls -A {mnt}; ls {mnt}/.spfs-view 2>/dev/null || echo no-door"
        ))
        .env("SPFS_VFS_BIND_VIEWS", "never")
        .output()
        .unwrap();
    ok(&routed, "routed run");
    assert_eq!(stdout(&routed), "b-only\nno-door\n");
    // A bound runtime's mount point is its own view, whoever else is
    // bound, with no door in it (the door leads only to another view).
    let bound = w.run_sh(
        "door/b",
        &format!(
            "ls -A {mnt}; ls {mnt}/.spfs-view 2>/dev/null || echo no-door; \
             grep -c ' {mnt} ' /proc/self/mountinfo"
        ),
    );
    ok(&bound, "bound run");
    assert_eq!(stdout(&bound), "b-only\nno-door\n2\n");
    w.assert_modes(Mode::Bound);
    let _ = a.kill();
    let _ = a.wait();
    // The host's mount table is untouched by the runtimes' binds.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert_eq!(mounts.matches(&format!(" {mnt} ")).count(), 1, "{mounts}");
}

#[test]
fn runtimes_nested_in_a_bound_one_are_bound_too() {
    require_vfs!();
    let w = World::new();
    w.commit("nest/outer", &[("outer", b"o")]);
    w.commit("nest/inner", &[("inner", b"i")]);
    let mnt = w.mnt.display().to_string();
    let script = format!(
        r#"set -e
ls {mnt}
"$SPFS" run nest/inner -- sh -c 'ls {mnt}; "$SPFS_VFS" list --json | grep -c "\"mode\": \"bound\""'
ls {mnt}
SPFS_VFS_BIND_VIEWS=never "$SPFS" run nest/inner -- ls {mnt} 2>&1 || echo refused
"#
    );
    let out = w
        .command(SPFS)
        .args(["run", "nest/outer", "--", "sh", "-c", &script])
        .env("SPFS", SPFS)
        .env("SPFS_VFS", SPFS_VFS)
        .output()
        .unwrap();
    ok(&out, "nested runs");
    let text = stdout(&out);
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines[..4], ["outer", "inner", "2", "outer"], "{text}");
    assert!(
        text.contains("must be bound too") && text.ends_with("refused\n"),
        "{text}"
    );
}

#[test]
fn many_runtimes_bind_at_once() {
    require_vfs!();
    let w = World::new();
    for k in 0..3 {
        w.commit(&format!("many/{k}"), &[("who", format!("{k}").as_bytes())]);
    }
    w.start_service();
    let mnt = w.mnt.display().to_string();
    let children: Vec<_> = (0..12)
        .map(|i| {
            let k = i % 3;
            let child = w
                .command(SPFS)
                .args(["run", &format!("many/{k}"), "--", "sh", "-c"])
                .arg(format!("for i in 1 2 3 4 5; do cat {mnt}/who; done"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (k, child)
        })
        .collect();
    for (k, child) in children {
        let out = child.wait_with_output().unwrap();
        ok(&out, "concurrent bound run");
        assert_eq!(stdout(&out), format!("{k}").repeat(5));
    }
}
