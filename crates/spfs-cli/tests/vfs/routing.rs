//! Routing: recycled PIDs, reparented daemons and threads.

use std::time::Duration;

use crate::harness::*;
use crate::require_vfs;

crate::in_both_modes!(recycled_root_pid_does_not_inherit_the_view);

fn recycled_root_pid_does_not_inherit_the_view(mode: Mode) {
    let w = World::with_mode(mode);
    w.commit("reuse/a", &[("data", b"view-a")]);
    let d = w.dir.path().join("reuse");
    std::fs::create_dir_all(&d).unwrap();
    let (d, mnt) = (d.display().to_string(), w.mnt.display().to_string());
    // Everything happens in a fresh PID namespace, where this test controls
    // which PID the next process gets (ns_last_pid).
    let script = format!(
        r#"
set -u
"$SPFS_VFS" service >/dev/null 2>&1 &
i=0; until "$SPFS_VFS" status >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 500 ] || exit 90; sleep 0.02; done
"$SPFS" run reuse/a -- sh -c 'echo $$ > {d}/root_pid; cat {mnt}/data > {d}/root_saw; (setsid sh -c "sleep 2; cat {mnt}/data > {d}/keeper_saw" &)' || exit 91
root=$(cat {d}/root_pid)
try=0
while [ $try -lt 20 ]; do
  echo $((root-1)) > /proc/sys/kernel/ns_last_pid
  sh -c 'echo $$ > {d}/out_pid; ls -A {mnt} > {d}/out_ls; cat {mnt}/data > {d}/out_cat 2>&1; "$SPFS_VFS" list > {d}/out_list'
  [ "$(cat {d}/out_pid)" = "$root" ] && break
  try=$((try+1))
done
i=0; until [ -s {d}/keeper_saw ]; do i=$((i+1)); [ $i -lt 500 ] || break; sleep 0.02; done
"$SPFS_VFS" service --stop >/dev/null
"#
    );
    let out = w
        .command("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c", &script])
        .env("SPFS", SPFS)
        .env("SPFS_VFS", SPFS_VFS)
        .output()
        .unwrap();
    ok(&out, "pid namespace script");
    let read = |f: &str| std::fs::read_to_string(format!("{d}/{f}")).unwrap_or_default();
    assert_eq!(read("root_saw"), "view-a");
    assert_eq!(
        read("out_pid"),
        read("root_pid"),
        "the outsider got the root's recycled PID"
    );
    assert!(
        read("out_list").contains(read("root_pid").trim()),
        "the runtime was still registered: {}",
        read("out_list")
    );
    let shown = if mode == Mode::Bound {
        " bound "
    } else {
        " router "
    };
    assert!(read("out_list").contains(shown), "{}", read("out_list"));
    assert_eq!(
        read("out_ls"),
        "",
        "the outsider with the recycled PID sees an empty root"
    );
    assert!(
        read("out_cat").contains("No such file"),
        "{}",
        read("out_cat")
    );
    assert_eq!(
        read("keeper_saw"),
        "view-a",
        "the runtime's daemon still sees its view"
    );
}

crate::in_both_modes!(daemonized_grandchild_keeps_its_view_until_it_exits);

fn daemonized_grandchild_keeps_its_view_until_it_exits(mode: Mode) {
    let w = World::with_mode(mode);
    w.commit("grand/a", &[("data", b"grand-view")]);
    let (d, mnt) = (
        w.dir.path().display().to_string(),
        w.mnt.display().to_string(),
    );
    let out = w.run_sh(
        "grand/a",
        &format!("(setsid sh -c 'sleep 1; cat {mnt}/data > {d}/gc_saw; ls {mnt} > {d}/gc_ls; touch {d}/gc_done; sleep 1' </dev/null >/dev/null 2>&1 &); exit 0"),
    );
    ok(&out, "spfs run");
    // The root has exited; its reparented grandchild keeps the runtime alive.
    assert_eq!(
        w.list().len(),
        1,
        "runtime registered while its daemon lives"
    );
    w.assert_modes(mode);
    assert!(wait_for(Duration::from_secs(10), || std::path::Path::new(
        &format!("{d}/gc_done")
    )
    .exists()));
    assert_eq!(
        std::fs::read_to_string(format!("{d}/gc_saw")).unwrap(),
        "grand-view"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{d}/gc_ls")).unwrap(),
        "data\n"
    );
    // When the daemon exits, the view and the record go.
    assert!(
        wait_for(Duration::from_secs(10), || w.list().is_empty()),
        "view dropped after the tree exited"
    );
    assert!(wait_for(Duration::from_secs(5), || std::fs::read_dir(
        w.repo.join("runtimes")
    )
    .unwrap()
    .count()
        == 0));
}

#[test]
fn requests_from_threads_route_like_their_process() {
    require_vfs!();
    let w = World::new();
    w.commit("thr/a", &[("data", b"thread-view")]);
    let mnt = w.mnt.display().to_string();
    let py = format!(
        "import threading\nres=[]\ndef r():\n    res.append(open('{mnt}/data').read())\n\
         ts=[threading.Thread(target=r) for _ in range(8)]\n[t.start() for t in ts]\n[t.join() for t in ts]\nprint(sorted(set(res)))"
    );
    let out = w
        .command(SPFS)
        .args(["run", "thr/a", "--", "python3", "-c", &py])
        .output()
        .unwrap();
    ok(&out, "threads");
    assert_eq!(stdout(&out).trim(), "['thread-view']");
}
