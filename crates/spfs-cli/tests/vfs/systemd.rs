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
    assert_eq!(next(), "FDSTORE=1\nFDNAME=fuse");
    let ready = next();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={keeper}\n")), "{ready}");
    assert_eq!(
        keeper,
        activator.id(),
        "the keeper is the activated process"
    );
    ok(&w.vfs(&["service", "--restart"]), "restart");
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(next().starts_with("READY=1\n"));
    ok(&w.vfs(&["service", "--stop"]), "stop");
    assert_eq!(next(), "STOPPING=1");
    assert_eq!(next(), "FDSTOREREMOVE=1\nFDNAME=fuse");
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

/// systemd, as far as the keeper's notifications and descriptor store go:
/// a notify socket the test reads, and keepers started as systemd would.
struct Systemd<'w> {
    w: &'w World,
    path: std::path::PathBuf,
    socket: UnixDatagram,
}

impl<'w> Systemd<'w> {
    fn new(w: &'w World) -> Self {
        let path = w.dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("notify socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Systemd { w, path, socket }
    }

    /// The next notification, and the descriptors it carries.
    fn next(&self) -> (String, Vec<std::os::fd::OwnedFd>) {
        use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        let mut buf = [0u8; 512];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &self.socket,
            &mut [std::io::IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .expect("a notification");
        let mut fds = Vec::new();
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = msg {
                fds.extend(rights);
            }
        }
        (String::from_utf8_lossy(&buf[..got.bytes]).into_owned(), fds)
    }

    /// Start a keeper, with `stored` (the descriptor store's FUSE
    /// connection) as systemd passes it.
    fn start(&self, stored: Option<&std::os::fd::OwnedFd>) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.w.log)
            .expect("log");
        let mut cmd = self.w.command("sh");
        let script = match stored {
            Some(_) => "export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=fuse; exec \"$0\" service",
            None => "exec \"$0\" service",
        };
        cmd.args(["-c", script, SPFS_VFS])
            .env("NOTIFY_SOCKET", &self.path)
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(fd) = stored {
            let raw = std::os::fd::AsRawFd::as_raw_fd(fd);
            // SAFETY: dup2 is async-signal-safe; `raw` is open in the child.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    if libc::dup2(raw, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.spawn().expect("keeper")
    }

    /// Start a keeper; the FUSE descriptor it stores, once it serves.
    fn start_storing(&self) -> (std::process::Child, std::os::fd::OwnedFd) {
        let keeper = self.start(None);
        let (store, fds) = self.next();
        assert_eq!(store, "FDSTORE=1\nFDNAME=fuse");
        let fuse = fds.into_iter().next().expect("the FUSE descriptor");
        assert!(self.next().0.starts_with("READY=1\n"));
        (keeper, fuse)
    }

    /// Kill `keeper` (its worker stops with it).
    fn kill(&self, mut keeper: std::process::Child) {
        let worker = self.w.service_pid().expect("worker");
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(keeper.id() as i32).expect("pid"),
            rustix::process::Signal::KILL,
        )
        .expect("kill");
        let _ = keeper.wait();
        assert!(wait_for(Duration::from_secs(10), || !std::path::Path::new(
            &format!("/proc/{worker}")
        )
        .exists()));
    }
}

/// The keeper killed under systemd: systemd keeps the mount's FUSE
/// descriptor (the keeper put it into its descriptor store) and starts the
/// keeper again with it, which takes the mount over; readers only pause.
/// This test plays systemd: it receives the descriptor from the keeper's
/// `FDSTORE=1` and passes it to the next keeper as systemd does
/// (`LISTEN_FDS`, `LISTEN_FDNAMES=fuse`).
#[test]
fn a_killed_keeper_is_replaced_from_the_descriptor_store() {
    crate::require_vfs!();
    let w = World::with_mode(Mode::Bound);
    crate::handover::commit_stacks(&w);
    let systemd = Systemd::new(&w);
    let (keeper, fuse) = systemd.start_storing();
    let readers = vec![
        crate::handover::spawn_reader(&w, "a"),
        crate::handover::spawn_reader(&w, "b"),
    ];
    crate::handover::wait_readers(&w);
    systemd.kill(keeper);
    let mut again = systemd.start(Some(&fuse));
    let ready = systemd.next().0;
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    crate::handover::drop_caches();
    std::thread::sleep(Duration::from_millis(500));
    crate::handover::check_readers(&w, readers);
    let text = w.log_text();
    assert!(
        text.contains("taking over the mount of a previous keeper"),
        "{text}"
    );
    ok(&w.vfs(&["service", "--stop"]), "stop");
    let _ = again.wait();
    assert_eq!(systemd.next().0, "STOPPING=1");
    assert_eq!(systemd.next().0, "FDSTOREREMOVE=1\nFDNAME=fuse");
}

/// A stored connection that was aborted meanwhile (`fusectl`'s abort, an
/// administrator's way out of a hung mount) is not taken over: the new
/// keeper drops it and mounts afresh, and runtimes work.
#[test]
fn a_dead_stored_connection_is_not_taken_over() {
    crate::require_vfs!();
    let w = World::with_mode(Mode::Router);
    w.commit("sd/a", &[("hello", b"hi")]);
    let systemd = Systemd::new(&w);
    let (keeper, fuse) = systemd.start_storing();
    // The connection's number: the minor of the mount's device.
    let mnt = w.mnt.display().to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let dev = info
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some(mnt.as_str()))
        .and_then(|l| l.split_whitespace().nth(2).map(String::from))
        .expect("the mount");
    let minor = dev.split(':').nth(1).expect("minor").to_string();
    systemd.kill(keeper);
    let conns = std::path::Path::new("/sys/fs/fuse/connections");
    let mounted_ctl = !conns.join(&minor).exists()
        && Command::new("mount")
            .args(["-t", "fusectl", "none", "/sys/fs/fuse/connections"])
            .status()
            .is_ok_and(|s| s.success());
    let aborted = std::fs::write(conns.join(&minor).join("abort"), b"1");
    if mounted_ctl {
        let _ = Command::new("umount").arg(conns).status();
    }
    aborted.expect("abort the connection");
    let mut again = systemd.start(Some(&fuse));
    let (first, _) = systemd.next();
    assert_eq!(first, "FDSTOREREMOVE=1\nFDNAME=fuse");
    assert_eq!(systemd.next().0, "FDSTORE=1\nFDNAME=fuse");
    assert!(systemd.next().0.starts_with("READY=1\n"));
    let out = w.run_sh("sd/a", &format!("cat {mnt}/hello"));
    ok(&out, "a runtime on the fresh mount");
    assert_eq!(stdout(&out), "hi");
    assert!(
        w.log_text().contains("dead; mounting afresh"),
        "{}",
        w.log_text()
    );
    ok(&w.vfs(&["service", "--stop"]), "stop");
    let _ = again.wait();
}
