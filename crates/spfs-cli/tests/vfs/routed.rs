//! Routed directories (`spfs_vfs::routed`): a top-level directory made
//! while another runtime of the same user holds the name differently is
//! shown through one node for all such runtimes, answered per caller, so
//! one runtime's walk through it does not drop what the kernel caches
//! below it for another; and it stays so, so that no directory of a
//! runtime ever changes its parent under the runtime's processes.

use crate::harness::*;
use crate::require_vfs;

#[test]
fn a_name_held_differently_is_one_node_answered_per_runtime_and_across_restarts() {
    require_vfs!();
    let w = World::with_mode(Mode::Router);
    w.commit("ro/a", &[("own/a/f", b"A bytes")]);
    w.commit("ro/b", &[("own/b/g", b"B bytes")]);
    w.commit("ro/c", &[("own/c/f", b"C bytes")]);
    w.start_service();
    let (d, mnt, ds, wait) = w.steps();
    // A, the first to hold `own`, keeps its own node.
    let a = w.spawn_sh(
        "ro/a",
        &format!(
            "set -e; stat -c %i {mnt}/own > {ds}/a.ino; touch {ds}/a.1; {}",
            wait("end")
        ),
    );
    wait_file(&d.join("a.1"));
    // C: sits in own/ (routed: A holds the name) and walks own/c/f; after
    // B walked own/, walks own/c/f again (counted); after B is gone and a
    // restart, lists its working directory, reads through it and asks
    // where it is.
    let c = w.spawn_sh(
        "ro/c",
        &format!(
            "set -e; cd {mnt}/own; stat -c %i {mnt}/own > {ds}/c.ino; cat {mnt}/own/c/f >/dev/null
             touch {ds}/c.1
             {}; stat -c %s {mnt}/own/c/f > {ds}/c.again; touch {ds}/c.2
             {}; ls . > {ds}/c.ls; cat c/f > {ds}/c.cwd; pwd -P > {ds}/c.pwd
             stat -c %i {mnt}/own > {ds}/c.ino2; touch {ds}/c.3",
            wait("go.1"),
            wait("go.2"),
        ),
    );
    wait_file(&d.join("c.1"));
    // B: routed too, its own names (and, at its end, nothing of C's).
    let b = w.spawn_sh(
        "ro/b",
        &format!(
            "set -e; stat -c %i {mnt}/own > {ds}/b.ino; ls {mnt}/own > {ds}/b.ls
             cat {mnt}/own/b/g > {ds}/b.read; touch {ds}/b.1
             {}; ! test -e {mnt}/own/c",
            wait("b.end"),
        ),
    );
    wait_file(&d.join("b.1"));
    assert_eq!(read_text(&d.join("b.read")), "B bytes");
    assert_eq!(read_text(&d.join("b.ls")), "b\n");
    assert_eq!(
        read_text(&d.join("c.ino")),
        read_text(&d.join("b.ino")),
        "one node"
    );
    assert_ne!(
        read_text(&d.join("a.ino")),
        read_text(&d.join("b.ino")),
        "A's own"
    );
    assert_eq!(w.status().expect("status")["routed_dirs"], 2, "B's and C's");

    // B's walk left C's cached names below `own` alone: C's walk of
    // own/c/f asks for `own` and `c` (never cached under a routed
    // directory), not for `f`, nor for the routed directory's attributes
    // (the same for all). (With a node per view it asked 4 lookups.)
    let count = || w.lookups() + w.op_count("getattr");
    let before = count();
    std::fs::write(d.join("go.1"), "").expect("go");
    wait_file(&d.join("c.2"));
    let asked = count() - before;
    assert!(
        asked <= 2,
        "a walk after another runtime's asked {asked} lookups and getattrs"
    );
    assert_eq!(read_text(&d.join("c.again")).trim(), "7");
    // A process in no runtime sees nothing of it (after the count: its
    // miss drops the kernel's entry for the name).
    let outside = std::process::Command::new("stat")
        .arg(w.mnt.join("own"))
        .output()
        .expect("stat");
    assert!(!outside.status.success(), "seen from no runtime");

    // B goes and the service restarts: C's directory is still the routed
    // node (recorded), so its working directory keeps its path.
    std::fs::write(d.join("b.end"), "").expect("end");
    ok(&b.wait_with_output().expect("runtime b"), "runtime b");
    ok(&w.vfs(&["service", "--restart"]), "restart");
    std::fs::write(d.join("go.2"), "").expect("go");
    wait_file(&d.join("c.3"));
    std::fs::write(d.join("end"), "").expect("end");
    ok(&c.wait_with_output().expect("runtime c"), "runtime c");
    ok(&a.wait_with_output().expect("runtime a"), "runtime a");
    assert_eq!(read_text(&d.join("c.ls")), "c\n");
    assert_eq!(read_text(&d.join("c.cwd")), "C bytes");
    assert_eq!(read_text(&d.join("c.pwd")).trim(), format!("{mnt}/own"));
    assert_eq!(read_text(&d.join("c.ino2")), read_text(&d.join("c.ino")));
}

#[test]
fn runtimes_coming_and_going_never_make_another_runtimes_names_stale() {
    require_vfs!();
    let w = World::with_mode(Mode::Router);
    w.commit(
        "st/a",
        &[
            ("lib/x/f", b"AAAA"),
            ("lib/x/sub/g", b"G"),
            ("lib/y/h", b"H"),
            ("e/d1/f", b"E"),
        ],
    );
    w.commit("st/b", &[("lib/x/f", b"BB"), ("lib/z/q", b"Q")]);
    w.start_service();
    let (d, mnt, ds, wait) = w.steps();
    // Readers of A's stack walk and list below `lib` in a loop, one of
    // them from a working directory inside it; an editable runtime of the
    // same stack renames across directories all along (the kernel moves a
    // directory's entry to another parent only if it gets the rename lock).
    let reader = |tag: &str, body: &str| {
        w.spawn_sh(
            "st/a",
            &format!(
                "touch {ds}/{tag}.up; {}; bad=0; i=0
                 while [ ! -e {ds}/stop ] && [ $i -lt 3000 ]; do
                   {body} || bad=$((bad+1)); i=$((i+1))
                 done; echo $bad > {ds}/{tag}.bad",
                wait("go")
            ),
        )
    };
    let walk = format!(
        "[ \"$(cat {mnt}/lib/x/f)\" = AAAA ] && ls {mnt}/lib/x >/dev/null && cat {mnt}/lib/x/sub/g >/dev/null"
    );
    let sit = format!(
        "cd {mnt}/lib/x && [ \"$(cat f)\" = AAAA ] && ls sub >/dev/null && [ \"$(pwd -P)\" = {mnt}/lib/x ]"
    );
    let readers = [reader("walk", &walk), reader("sit", &sit)];
    let editor = w
        .command(SPFS)
        .args(["run", "--edit", "st/a", "--", "sh", "-c"])
        .arg(format!(
            "mkdir -p {mnt}/e/d2; touch {ds}/edit.up; {}
             while [ ! -e {ds}/stop ]; do mv {mnt}/e/d1/f {mnt}/e/d2/f; mv {mnt}/e/d2/f {mnt}/e/d1/f; done",
            wait("go")
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("editor");
    for tag in ["walk", "sit", "edit"] {
        wait_file(&d.join(format!("{tag}.up")));
    }
    std::fs::write(d.join("go"), "").expect("go");
    // Runtimes of another stack that holds `lib` differently come and go.
    for _ in 0..60 {
        let out = w.run_sh(
            "st/b",
            &format!("[ \"$(cat {mnt}/lib/x/f)\" = BB ] && ls {mnt}/lib >/dev/null"),
        );
        ok(&out, "runtime of st/b");
    }
    std::fs::write(d.join("stop"), "").expect("stop");
    for r in readers {
        let out = r.wait_with_output().expect("reader");
        assert!(out.status.success(), "reader: {}", stderr(&out));
    }
    let out = editor.wait_with_output().expect("editor");
    assert!(out.status.success(), "editor: {}", stderr(&out));
    for tag in ["walk", "sit"] {
        assert_eq!(
            read_text(&d.join(format!("{tag}.bad"))).trim(),
            "0",
            "{tag}: failed walks"
        );
    }
}
