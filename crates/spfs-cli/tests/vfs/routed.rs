//! Routed directories: a top-level name that routed runtimes hold as
//! different directories is one node for all of them, answered per caller
//! (`spfs_vfs::routed`), so one runtime's walk through it does not drop
//! what the kernel caches below it for another.

use crate::harness::*;
use crate::require_vfs;

#[test]
fn a_name_held_differently_is_one_node_answered_per_runtime_and_across_restarts() {
    require_vfs!();
    let w = World::with_mode(Mode::Router);
    w.commit("ro/a", &[("own/a/f", b"A bytes")]);
    w.commit("ro/b", &[("own/b/g", b"B bytes")]);
    w.start_service();
    let (d, mnt, ds, wait) = w.steps();
    // A: sits in own/ (the routed directory once B runs) and walks
    // own/a/f through it; after B walked own/, walks own/a/f again
    // (counted); after a restart, lists its
    // working directory and reads through it.
    let a = w.spawn_sh(
        "ro/a",
        &format!(
            "set -e; cat {mnt}/own/a/f > {ds}/a.read; touch {ds}/a.1
             {}; cd {mnt}/own; stat -c %i {mnt}/own > {ds}/a.ino; cat {mnt}/own/a/f >/dev/null
             touch {ds}/a.2
             {}; stat -c %s {mnt}/own/a/f > {ds}/a.again; touch {ds}/a.3
             {}; ls . > {ds}/a.ls; cat a/f > {ds}/a.cwd; touch {ds}/a.4",
            wait("go.1"),
            wait("go.2"),
            wait("go.3"),
        ),
    );
    wait_file(&d.join("a.1"));
    assert_eq!(read_text(&d.join("a.read")), "A bytes");
    // B: its own `own` (and, at its end, nothing of A's).
    let b = w.spawn_sh(
        "ro/b",
        &format!(
            "set -e; stat -c %i {mnt}/own > {ds}/b.ino; ls {mnt}/own > {ds}/b.ls
             cat {mnt}/own/b/g > {ds}/b.read; touch {ds}/b.1
             {}; ! test -e {mnt}/own/a",
            wait("b.end"),
        ),
    );
    wait_file(&d.join("b.1"));
    assert_eq!(read_text(&d.join("b.read")), "B bytes");
    assert_eq!(read_text(&d.join("b.ls")), "b\n");
    assert_eq!(w.status().expect("status")["routed_dirs"], 1);
    std::fs::write(d.join("go.1"), "").expect("go");
    wait_file(&d.join("a.2"));
    assert_eq!(
        read_text(&d.join("a.ino")),
        read_text(&d.join("b.ino")),
        "one node"
    );

    // B's walk left A's cached names below `own` alone: A's walk of
    // own/a/f asks for `own` and `a` (never cached under a routed
    // directory), not for `f`, nor for the routed directory's attributes
    // (the same for all). (With a node per view it asked 4 lookups.)
    let count = || w.lookups() + w.op_count("getattr");
    let before = count();
    std::fs::write(d.join("go.2"), "").expect("go");
    wait_file(&d.join("a.3"));
    let asked = count() - before;
    assert!(
        asked <= 2,
        "a walk after another runtime's asked {asked} lookups and getattrs"
    );
    assert_eq!(read_text(&d.join("a.again")).trim(), "7");
    // A process in no runtime sees nothing of it (after the count: its
    // miss drops the kernel's entry for the name).
    let outside = std::process::Command::new("stat")
        .arg(w.mnt.join("own"))
        .output()
        .expect("stat");
    assert!(!outside.status.success(), "seen from no runtime");

    // The routed node is the same for a new service process: A's working
    // directory stays valid across a restart and still shows A's own.
    ok(&w.vfs(&["service", "--restart"]), "restart");
    std::fs::write(d.join("go.3"), "").expect("go");
    wait_file(&d.join("a.4"));
    std::fs::write(d.join("b.end"), "").expect("end");
    let out = a.wait_with_output().expect("runtime a");
    ok(&out, "runtime a");
    ok(&b.wait_with_output().expect("runtime b"), "runtime b");
    assert_eq!(read_text(&d.join("a.ls")), "a\n");
    assert_eq!(read_text(&d.join("a.cwd")), "A bytes");
}
