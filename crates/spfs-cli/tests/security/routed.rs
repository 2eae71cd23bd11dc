//! Routed directories (`spfs_vfs::routed`): one node for a top-level name
//! that a user's routed runtimes hold as different directories. The kernel
//! keeps one set of attributes per node and checks permissions against it,
//! and it is shared by every process: nothing about the node may differ
//! between callers, nor depend on other users' runtimes.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};

use crate::harness::*;
use crate::require_vfs;
use crate::users::TestUser;

fn shared_world() -> World {
    let w = World::with_mode(Mode::Router);
    let out = w.spfs(&["init", "repo", "--shared", w.repo.to_str().expect("utf8")]);
    ok(&out, "init --shared");
    w
}

/// The world's step directory, writable by the test users.
fn open_steps(w: &World) -> (std::path::PathBuf, String, String, impl Fn(&str) -> String) {
    let steps = w.steps();
    std::fs::set_permissions(&steps.0, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    steps
}

fn run_as(w: &World, user: &TestUser, spec: &str, script: &str) -> Child {
    user.command(w, SPFS)
        .args(["run", spec, "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spfs run")
}

#[test]
fn a_routed_directory_is_checked_against_each_runtimes_own_permissions() {
    require_vfs!();
    let w = shared_world();
    // Two users, each with two stacks holding `own` differently (so that
    // the second is routed): alice's open (0755), bob's shut (0700, root's
    // like every entry of a read-only view).
    w.commit_with_dirs("perm/open", &[("own/a/f", b"A")], &[("own", 0o755)]);
    w.commit_with_dirs("perm/open2", &[("own/c/f", b"C")], &[("own", 0o755)]);
    w.commit_with_dirs("perm/shut", &[("own/b/f", b"B")], &[("own", 0o700)]);
    w.commit_with_dirs("perm/shut2", &[("own/d/f", b"D")], &[("own", 0o700)]);
    w.start_service();
    let (d, mnt, ds, wait) = open_steps(&w);
    let (alice, bob) = (TestUser::new(), TestUser::new());
    let hold = |tag: &str| format!("touch {ds}/{tag}.up; {}", wait("end"));
    let loop_over = |tag: &str, path: &str| {
        format!(
            "touch {ds}/{tag}.up; {}; ok=0; fail=0; i=0
             while [ $i -lt 1000 ]; do
               if cat {mnt}/{path} >/dev/null 2>>{ds}/{tag}.err; then ok=$((ok+1)); else fail=$((fail+1)); fi
               stat {mnt}/own >/dev/null 2>&1; i=$((i+1))
             done; echo \"ok=$ok fail=$fail\" > {ds}/{tag}.res",
            wait("go")
        )
    };
    // The first of each keeps its own node; the second, started once the
    // first runs, is routed: its reads go through the routed node.
    let holders = [
        run_as(&w, &alice, "perm/open2", &hold("open2")),
        run_as(&w, &bob, "perm/shut2", &hold("shut2")),
    ];
    for tag in ["open2", "shut2"] {
        wait_file(&d.join(format!("{tag}.up")));
    }
    let open = run_as(&w, &alice, "perm/open", &loop_over("open", "own/a/f"));
    let shut = run_as(&w, &bob, "perm/shut", &loop_over("shut", "own/b/f"));
    for tag in ["open", "open2", "shut", "shut2"] {
        wait_file(&d.join(format!("{tag}.up")));
    }
    let routed = w.status().expect("status")["routed_dirs"].clone();
    std::fs::write(d.join("go"), "").expect("go");
    let open = open.wait_with_output().expect("open");
    let shut = shut.wait_with_output().expect("shut");
    std::fs::write(d.join("end"), "").expect("end");
    for h in holders {
        ok(&h.wait_with_output().expect("holder"), "holder");
    }
    ok(&open, "open runtime");
    ok(&shut, "shut runtime");
    let err = read_text(&d.join("open.err"));
    assert_eq!(
        read_text(&d.join("open.res")).trim(),
        "ok=1000 fail=0",
        "alice's own directory is open to her: {}",
        err.lines().next().unwrap_or("")
    );
    assert_eq!(
        read_text(&d.join("shut.res")).trim(),
        "ok=0 fail=1000",
        "bob's own directory is root's alone"
    );
    assert_eq!(routed, 2, "`own` routed for each user");
}

#[test]
fn what_a_runtime_sees_of_a_name_does_not_depend_on_other_users_runtimes() {
    require_vfs!();
    let w = shared_world();
    w.commit("seen/mine", &[("secret/m", b"m")]);
    w.commit("seen/theirs", &[("secret/t", b"t")]);
    w.commit("seen/theirs2", &[("secret/u", b"u")]);
    w.start_service();
    let (d, mnt, ds, wait) = open_steps(&w);
    let (mallory, bob) = (TestUser::new(), TestUser::new());
    let look =
        |n: u32| format!("stat -c '%i %Y %h %a' {mnt}/secret > {ds}/m.{n}; touch {ds}/m.{n}.done");
    let m = run_as(
        &w,
        &mallory,
        "seen/mine",
        &format!("{}; {}; {}", look(1), wait("go"), look(2)),
    );
    wait_file(&d.join("m.1.done"));
    // Bob runs two stacks that hold `secret` differently (and mallory's
    // own stack, too).
    let bobs: Vec<Child> = ["seen/theirs", "seen/theirs2", "seen/mine"]
        .iter()
        .enumerate()
        .map(|(k, spec)| {
            run_as(
                &w,
                &bob,
                spec,
                &format!(
                    "stat {mnt}/secret >/dev/null; touch {ds}/b{k}.up; {}",
                    wait("end")
                ),
            )
        })
        .collect();
    for k in 0..3 {
        wait_file(&d.join(format!("b{k}.up")));
    }
    std::fs::write(d.join("go"), "").expect("go");
    wait_file(&d.join("m.2.done"));
    std::fs::write(d.join("end"), "").expect("end");
    for b in bobs {
        ok(&b.wait_with_output().expect("bob"), "bob's runtime");
    }
    ok(&m.wait_with_output().expect("mallory"), "mallory's runtime");
    let (before, during) = (read_text(&d.join("m.1")), read_text(&d.join("m.2")));
    assert!(!before.is_empty());
    assert_eq!(
        before, during,
        "mallory's `secret` changed with bob's runtimes"
    );
}
