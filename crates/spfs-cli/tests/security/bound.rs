//! Bound views for users: the `spfs-enter` helper, installed with the
//! `cap_sys_admin` file capability, binds a user's own view and nothing
//! else, and leaves the command no capability.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::harness::*;
use crate::require_vfs;
use crate::users::TestUser;

const SPFS_ENTER: &str = env!("CARGO_BIN_EXE_spfs-enter");

/// A copy of the helper with the file capability, as `scripts/install.sh`
/// installs it.
fn capable_helper(w: &World) -> PathBuf {
    let dir = w.dir.path().join("helper");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let helper = dir.join("spfs-enter");
    std::fs::copy(SPFS_ENTER, &helper).unwrap();
    let out = std::process::Command::new("setcap")
        .arg("cap_sys_admin+ep")
        .arg(&helper)
        .output()
        .expect("setcap (libcap2-bin; scripts/setup.sh installs it)");
    ok(&out, "setcap");
    helper
}

#[test]
fn a_user_binds_only_their_own_view_through_the_helper() {
    require_vfs!();
    let w = World::new();
    ok(
        &w.spfs(&["init", "repo", "--shared", w.repo.to_str().unwrap()]),
        "init --shared",
    );
    w.commit("helper/a", &[("file", b"user view")]);
    w.start_service();
    let helper = capable_helper(&w);
    let user = TestUser::new();
    let mnt = w.mnt.display().to_string();
    let run = |helper: &std::path::Path, script: &str| {
        user.command(&w, SPFS)
            .args(["run", "helper/a", "--", "sh", "-c", script])
            .env("SPFS_VFS_ENTER_HELPER", helper)
            .output()
            .unwrap()
    };
    // With the capable helper: bound, and the command has no capability.
    let out = run(
        &helper,
        &format!(
            "cat {mnt}/file; echo; grep -c ' {mnt} ' /proc/self/mountinfo; \
             grep CapEff /proc/self/status"
        ),
    );
    let text = stdout(&out);
    assert!(
        text.starts_with("user view\n2\nCapEff:\t0000000000000000\n"),
        "{text} / {}",
        stderr(&out)
    );
    // The same helper without the capability is not used: routed.
    let out = run(
        std::path::Path::new(SPFS_ENTER),
        &format!("cat {mnt}/file; echo; grep -c ' {mnt} ' /proc/self/mountinfo"),
    );
    ok(&out, "routed run");
    assert_eq!(stdout(&out), "user view\n1\n");
    // Mode as the service and the record say, while one runs.
    assert!(wait_for(Duration::from_secs(10), || w.list().is_empty()));
    let mut child = user
        .command(&w, SPFS)
        .args(["run", "helper/a", "--", "sleep", "30"])
        .env("SPFS_VFS_ENTER_HELPER", &helper)
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(10), || w.list().len() == 1));
    w.assert_modes(Mode::Bound);
    let _ = child.kill();
    let _ = child.wait();
    // By hand, the helper binds nothing for a process without a bound
    // view, and nothing but an spfs service's own mount point.
    let by_hand = |mountpoint: &str| {
        user.command(&w, helper.to_str().unwrap())
            .args([mountpoint, "--", "true"])
            .output()
            .unwrap()
    };
    let out = by_hand(&mnt);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no bound view"), "{}", stderr(&out));
    let out = by_hand("/tmp");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not the mount point of an spfs VFS service"),
        "{}",
        stderr(&out)
    );
    // Named through a symlink, the mount point is refused: what is checked
    // must be what the mount lands on.
    let link = w.dir.path().join("helper/mnt-link");
    std::os::unix::fs::symlink(&w.mnt, &link).unwrap();
    let out = by_hand(link.to_str().unwrap());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not the mount point of an spfs VFS service"),
        "{}",
        stderr(&out)
    );
    let out = by_hand(&format!("{mnt}/file"));
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    // Nor for a routed runtime of the user's.
    let out = user
        .command(&w, SPFS)
        .args(["run", "helper/a", "--"])
        .arg(&helper)
        .args([&mnt, "--", "true"])
        .env("SPFS_VFS_BIND_VIEWS", "never")
        .output()
        .unwrap();
    assert!(stderr(&out).contains("no bound view"), "{}", stderr(&out));
}
