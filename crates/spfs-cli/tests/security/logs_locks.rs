//! Log flooding and denial of start.
//!
//! - An unprivileged process hammering requests the filesystem does not
//!   serve (ioctl) leaves the service's log as it was; a line a user can
//!   trigger is rate limited; the log is private (0600) and rotates at its
//!   bound (`SPFS_VFS_LOG_MAX_BYTES`).
//! - The service's lock files cannot be opened by other users, a symbolic
//!   link planted at one is not followed (the start is refused), a lock
//!   directory others may write to is refused, no lock file remains once
//!   the service stopped, and a second service is still refused.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{SPFS, SPFS_VFS, World, ok, stderr, stdout, wait_for};
use crate::require_vfs;
use crate::users::TestUser;
use spfs_fuse::service::mountpoint_lock_path;

/// A system Python every test user can run.
const PYTHON: &str = "/usr/bin/python3";

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// Run a command that should exit promptly (a service refused at start);
/// one that keeps running is killed and the test fails.
fn run_briefly(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let exited = wait_for(Duration::from_secs(15), || {
        child.try_wait().map(|s| s.is_some()).unwrap_or(true)
    });
    if !exited {
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        panic!("still running after 15 s: {}", stderr(&out));
    }
    child.wait_with_output().expect("wait")
}

/// The service's two lock files in a world.
fn lock_paths(w: &World) -> [PathBuf; 2] {
    [w.sock.with_extension("lock"), mountpoint_lock_path(&w.mnt)]
}

/// Python: open argv[1] and ask it 10,000 times for terminal attributes,
/// as `isatty` does.
const IOCTL_LOOP: &str = "\
import fcntl, os, sys, termios
fd = os.open(sys.argv[1], os.O_RDONLY)
for _ in range(10000):
    try:
        fcntl.ioctl(fd, termios.TCGETS, bytes(64))
    except OSError:
        pass
    os.isatty(fd)
print('done')
";

#[test]
fn ioctl_flood_leaves_the_log_quiet() {
    require_vfs!();
    let w = World::new();
    w.commit("t/a", &[("d/f", b"data")]);
    w.start_service();
    let user = TestUser::new();
    let before = size(&w.log);
    // In a runtime, on one of its files: 20,000 FUSE ioctl requests from
    // an unprivileged process (root enters the runtime, then drops to the
    // user: the runtime holds every descendant).
    let out = w
        .command(SPFS)
        .args(["run", "t/a", "--", "setpriv"])
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .args(["--clear-groups", PYTHON, "-c", IOCTL_LOOP])
        .arg(w.path("d/f"))
        .output()
        .expect("spfs run");
    ok(&out, "ioctl loop in a runtime");
    assert!(stdout(&out).contains("done"));
    // In no runtime, on the mount root.
    let out = user
        .command(&w, PYTHON)
        .args(["-c", IOCTL_LOOP])
        .arg(&w.mnt)
        .output()
        .expect("python");
    ok(&out, "ioctl loop on the mount root");
    let grown = size(&w.log).saturating_sub(before);
    let log = w.log_text();
    assert!(
        grown < 4096,
        "the log grew by {grown} bytes:\n{}",
        &log[log.len().saturating_sub(2000)..]
    );
    assert!(!log.contains("ioctl"), "{log}");
}

#[test]
fn user_triggered_lines_are_rate_limited() {
    require_vfs!();
    let w = World::new();
    w.start_service();
    let user = TestUser::new();
    // Each shell registers a view for itself, and exits: the service logs
    // that the view was registered, then dropped.
    let runs = 60;
    let started = Instant::now();
    let script = format!(
        "i=0; while [ $i -lt {runs} ]; do sh -c '{SPFS_VFS} mount --root-process $$ - >/dev/null' || exit 1; i=$((i+1)); done"
    );
    let out = user
        .command(&w, "sh")
        .args(["-c", &script])
        .output()
        .expect("sh");
    ok(&out, "mount loop");
    let secs = started.elapsed().as_secs();
    let registered = w.log_text().matches("view registered").count() as u64;
    assert!(
        registered < runs && registered <= 5 * (secs + 2),
        "{registered} 'view registered' lines for {runs} runs in {secs} s:\n{}",
        w.log_text()
    );
    // What was dropped is counted, in one line per call site.
    assert!(
        wait_for(Duration::from_secs(5), || w
            .log_text()
            .contains("similar messages suppressed")),
        "{}",
        w.log_text()
    );
}

#[test]
fn service_log_is_private_and_rotates() {
    require_vfs!();
    let w = World::new();
    // Started on demand by a client: the log is created private.
    ok(&w.run_sh("-", "true"), "spfs run");
    assert_eq!(mode(&w.log), 0o600);
    ok(&w.vfs(&["service", "--stop"]), "stop");
    // Started with stderr on a world-readable file, chatty and with a small
    // bound: the file is made private, and rotates.
    std::fs::set_permissions(&w.log, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    w.start_service_with(&[("SPFS_VFS_LOG_MAX_BYTES", "4096"), ("RUST_LOG", "debug")]);
    assert_eq!(mode(&w.log), 0o600);
    let old = spfs_fuse::logfile::rotated_path(&w.log);
    let rotated = wait_for(Duration::from_secs(20), || {
        ok(&w.run_sh("-", "true"), "spfs run");
        old.exists()
    });
    assert!(rotated, "no rotation: {} bytes", size(&w.log));
    assert_eq!(mode(&old), 0o600);
    // Past the bound by at most one line.
    assert!(size(&old) >= 4096 && size(&old) < 8192, "{}", size(&old));
    assert!(size(&w.log) < 8192, "{}", size(&w.log));
    // The service keeps logging into the new file.
    ok(&w.run_sh("-", "true"), "spfs run");
    assert!(
        wait_for(Duration::from_secs(5), || size(&w.log) > 0),
        "nothing logged after rotation"
    );
}

#[test]
fn lock_files_are_private_and_removed_on_stop() {
    require_vfs!();
    let w = World::new();
    w.start_service();
    let user = TestUser::new();
    for lock in lock_paths(&w) {
        assert_eq!(mode(&lock), 0o600, "{}", lock.display());
        // Not even for reading: a read-only flock would win the lock.
        let out = user.command(&w, "cat").arg(&lock).output().expect("cat");
        assert!(
            !out.status.success(),
            "another user opened {}",
            lock.display()
        );
    }
    // A second service is refused: same mount point with another address,
    // and same address with another mount point.
    let other_mnt = w.dir.path().join("mnt2");
    std::fs::create_dir_all(&other_mnt).expect("mkdir");
    let other_sock = format!("unix:{}", w.dir.path().join("other.sock").display());
    for (var, value) in [
        ("SPFS_VFS_LISTEN", other_sock.as_str()),
        ("SPFS_VFS_MOUNTPOINT", other_mnt.to_str().expect("utf8")),
    ] {
        let mut cmd = w.command(SPFS_VFS);
        cmd.arg("service").env(var, value);
        let out = run_briefly(cmd);
        assert!(
            !out.status.success() && stderr(&out).contains("already running"),
            "second service with {var}={value}: {}",
            stderr(&out)
        );
    }
    assert!(!w.dir.path().join("other.lock").exists());
    assert!(!mountpoint_lock_path(&other_mnt).exists());
    ok(&w.vfs(&["service", "--stop"]), "stop");
    for lock in lock_paths(&w) {
        assert!(!lock.exists(), "{} left behind", lock.display());
    }
}

#[test]
fn planted_lock_symlinks_are_not_followed() {
    require_vfs!();
    let w = World::new();
    for lock in lock_paths(&w) {
        let target = w.dir.path().join("planted-target");
        std::fs::create_dir_all(lock.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(&target, &lock).expect("symlink");
        let mut cmd = w.command(SPFS_VFS);
        cmd.arg("service");
        let out = run_briefly(cmd);
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "started with a planted {}",
            lock.display()
        );
        assert!(
            err.contains("symbolic link") && err.contains(&*lock.to_string_lossy()),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!target.exists(), "followed {}", lock.display());
        assert!(std::fs::symlink_metadata(&lock).is_ok_and(|m| m.file_type().is_symlink()));
        std::fs::remove_file(&lock).expect("rm");
    }
}

#[test]
fn lock_directory_others_may_write_is_refused() {
    require_vfs!();
    let w = World::new();
    let open = w.dir.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let mut cmd = w.command(SPFS_VFS);
    cmd.arg("service").env(
        "SPFS_VFS_LISTEN",
        format!("unix:{}", open.join("vfs.sock").display()),
    );
    let out = run_briefly(cmd);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "started with a lock in {}",
        open.display()
    );
    assert!(
        err.contains("unsafe lock directory") && err.contains(&*open.to_string_lossy()),
        "{err}"
    );
    assert!(!open.join("vfs.lock").exists());
}
