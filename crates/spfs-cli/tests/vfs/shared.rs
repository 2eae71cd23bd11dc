//! Shared subtrees: routed runtimes of different stacks see a top-level
//! directory they hold alike as one node, so one runtime's lookups do not
//! drop what the kernel caches for another (`spfs_vfs::shared`).

use crate::harness::*;
use crate::require_vfs;

#[test]
fn alike_top_level_directories_keep_their_cache_across_runtimes_and_restarts() {
    require_vfs!();
    let w = World::with_mode(Mode::Router);
    w.commit("sh/base", &[("base/x/f", b"base bytes"), ("base/y", b"y")]);
    w.commit("sh/a", &[("own/a", b"A")]);
    w.commit("sh/b", &[("own/b", b"B")]);
    w.start_service();
    let (d, mnt, ds, wait) = w.steps();
    // A: warms base/x/f, holds it open and sits in base/x; after B looked
    // it up, stats it again (counted); after a restart, reads it through
    // the descriptor, the working directory and the path.
    let a = w.spawn_sh(
        "sh/base+sh/a",
        &format!(
            "set -e; cd {mnt}/base/x; exec 3< f
             stat -c %i {mnt}/base {mnt}/base/x {mnt}/base/x/f {mnt}/own > {ds}/a.ino
             cat {mnt}/base/x/f {mnt}/own/a > {ds}/a.read; touch {ds}/a.1
             {}; stat -c %i {mnt}/base/x/f > {ds}/a.again; touch {ds}/a.2
             {}; stat -c %i {mnt}/base {mnt}/base/x/f > {ds}/a.after
             cat <&3 > {ds}/a.fd; cat f > {ds}/a.cwd; cat {mnt}/base/x/f > {ds}/a.path; touch {ds}/a.3",
            wait("go.1"),
            wait("go.2"),
        ),
    );
    wait_file(&d.join("a.1"));
    let b = w.run_sh(
        "sh/base+sh/b",
        &format!(
            "stat -c %i {mnt}/base {mnt}/base/x {mnt}/base/x/f {mnt}/own > {ds}/b.ino && \
             cat {mnt}/base/x/f && ! test -e {mnt}/own/a"
        ),
    );
    ok(&b, "runtime b");
    assert_eq!(stdout(&b), "base bytes");
    assert_eq!(read_text(&d.join("a.read")), "base bytesA");
    let (ia, ib) = (read_text(&d.join("a.ino")), read_text(&d.join("b.ino")));
    let (ia, ib): (Vec<&str>, Vec<&str>) = (ia.lines().collect(), ib.lines().collect());
    assert_eq!(ia.len(), 4, "{ia:?}");
    assert_eq!(ia[..3], ib[..3], "base, base/x, base/x/f: one node each");
    // `own` differs: a's own node while a ran alone, then the routed
    // directory of the name (crate::routed, tests/vfs/routed.rs).
    assert_ne!(ia[3], ib[3], "own differs");
    // base, a's own and b's own (b's view is kept warm).
    assert_eq!(w.status().expect("status")["shared_dirs"], 3);

    // B's lookups left A's cached names below the root alone: A's walk
    // asks for the root's name only.
    let before = w.lookups();
    std::fs::write(d.join("go.1"), "").expect("go");
    wait_file(&d.join("a.2"));
    let asked = w.lookups() - before;
    assert!(
        asked <= 1,
        "a walk after another view's asked {asked} lookups (the root's name only is asked)"
    );
    assert_eq!(read_text(&d.join("a.again")).trim(), ia[2]);

    // A restart keeps the shared node ids: held descriptors, working
    // directories and the kernel's names stay valid.
    ok(&w.vfs(&["service", "--restart"]), "restart");
    std::fs::write(d.join("go.2"), "").expect("go");
    wait_file(&d.join("a.3"));
    let out = a.wait_with_output().expect("runtime a");
    ok(&out, "runtime a");
    let after = read_text(&d.join("a.after"));
    assert_eq!(after.lines().collect::<Vec<_>>(), [ia[0], ia[2]]);
    for f in ["a.fd", "a.cwd", "a.path"] {
        assert_eq!(read_text(&d.join(f)), "base bytes", "{f}");
    }
    assert!(
        !w.log_text().contains("cannot take the runtime over"),
        "{}",
        w.log_text()
    );
}
