//! The service under systemd: the shipped units, socket activation,
//! readiness and reload notifications, and journal logging. systemd is
//! not this machine's init, so its own tools stand in: `systemd-analyze
//! verify` checks the units, and `systemd-socket-activate` starts the
//! service on the first connection to its socket as systemd would.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// The units as `scripts/install.sh` renders them, with programs in `bin`.
fn render_units(dir: &std::path::Path, bin: &std::path::Path) {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/systemd");
    for unit in ["spfs-vfs.service", "spfs-vfs.socket"] {
        let text = std::fs::read_to_string(src.join(unit)).expect("unit");
        let text = text
            .replace("@BINDIR@", &bin.display().to_string())
            .replace("@DOCDIR@", "/usr/share/doc/spfs");
        std::fs::write(dir.join(unit), text).expect("write unit");
    }
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_units_verify() {
    crate::require_vfs!();
    if !have("systemd-analyze") {
        assert!(
            std::env::var_os("SPFS_REQUIRE_VFS_TESTS").is_none(),
            "systemd-analyze is missing (scripts/setup.sh installs it)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = std::path::Path::new(SPFS_VFS).parent().expect("bin dir");
    render_units(dir.path(), bin);
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("spfs-vfs.socket"))
        .arg(dir.path().join("spfs-vfs.service"))
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        stderr(&out)
    );
}

/// Started by its socket on the first `spfs run`; READY=1 once it serves
/// (from the keeper, MAINPID), RELOADING=1 then READY=1 around a restart,
/// STOPPING=1; journal lines carry syslog priorities and no time.
#[test]
fn socket_activation_notifications_and_journal() {
    crate::require_vfs!();
    if !have("systemd-socket-activate") {
        assert!(
            std::env::var_os("SPFS_REQUIRE_VFS_TESTS").is_none(),
            "systemd-socket-activate is missing (scripts/setup.sh installs it)"
        );
        return;
    }
    let w = World::with_mode(Mode::Router);
    w.commit("sd/a", &[("hello", b"hi")]);
    let notify_path = w.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let journal = std::fs::File::create(w.dir.path().join("journal")).expect("journal");
    let st = rustix::fs::fstat(&journal).expect("fstat");
    let mut cmd = w.command("systemd-socket-activate");
    cmd.arg("-l").arg(&w.sock);
    for var in [
        "SPFS_CONFIG",
        "HOME",
        "SPFS_STORAGE_ROOT",
        "SPFS_VFS_MOUNTPOINT",
        "SPFS_VFS_LISTEN",
        "SPFS_VFS_CGROUP_ROOT",
        "SPFS_VFS_TOKEN_FILE",
        "SPFS_VFS_BIND_VIEWS",
    ] {
        cmd.args(["-E", var]);
    }
    let mut activator = cmd
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .arg("-E")
        .arg(format!("JOURNAL_STREAM={}:{}", st.st_dev, st.st_ino))
        .args([SPFS_VFS, "service"])
        .stdout(Stdio::null())
        .stderr(journal)
        .spawn()
        .expect("systemd-socket-activate");
    // Nothing runs until someone connects.
    assert!(wait_for(Duration::from_secs(10), || w.sock.exists()));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        spfs_fuse::mounts::mounted_type(&w.mnt)
            .expect("mountinfo")
            .is_none(),
        "mounted before the first connection"
    );
    let out = w.run_sh("sd/a", &format!("cat {}/hello", w.mnt.display()));
    ok(&out, "spfs run through an activated service");
    assert_eq!(stdout(&out), "hi");
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let keeper = w.keeper_pid().expect("keeper");
    let ready = next();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={keeper}\n")), "{ready}");
    assert_eq!(
        keeper,
        activator.id(),
        "the keeper is the activated process"
    );
    ok(&w.vfs(&["service", "--restart"]), "restart");
    assert_eq!(next(), "RELOADING=1");
    assert!(next().starts_with("READY=1\n"));
    ok(&w.vfs(&["service", "--stop"]), "stop");
    assert_eq!(next(), "STOPPING=1");
    assert!(wait_for(Duration::from_secs(10), || matches!(
        activator.try_wait(),
        Ok(Some(_))
    )));
    let log = std::fs::read_to_string(w.dir.path().join("journal")).expect("journal");
    assert!(log.lines().any(|l| l.starts_with("<6>")), "{log}");
    // Every line but the activator's own has a priority and no time.
    let activator_line = |l: &str| {
        ["Listening", "Communication", "Execing"]
            .iter()
            .any(|p| l.starts_with(p))
    };
    assert!(
        log.lines()
            .filter(|l| !activator_line(l))
            .all(|l| l.starts_with('<') && !l.contains("Z ")),
        "{log}"
    );
}
