//! Naming processes safely: pidfds, what the kernel says about a pidfd, and
//! pinning a process number while the service acts on it.
//!
//! A PID is not an identity: it is reused once its process has exited and
//! been reaped, and a request carries a thread id. The service therefore
//! opens a pidfd the moment it learns a PID and asks the kernel about the
//! process *through that pidfd* (`PIDFD_GET_INFO`, Linux 6.13: user ids,
//! cgroup id, parent), so every answer belongs to the process the pidfd
//! names, never to a newcomer with the same number.
//!
//! Some kernel interfaces still take a number: moving a process into a
//! cgroup is a write of its PID to `cgroup.procs`, and there is no pidfd
//! form. For those moments [`Process::pinned`] keeps the number from being reused: it
//! attaches to the process with `PTRACE_SEIZE` (which neither stops nor
//! changes it), and a traced process that dies stays a zombie, unreapable
//! by its parent, until the tracer lets go. While it is pinned and its
//! pidfd shows the process alive, the number names that process and no
//! other.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// `PIDFD_THREAD` (Linux 6.9): a pidfd for a thread rather than a process.
const PIDFD_THREAD: libc::c_int = libc::O_EXCL;

/// Open a pidfd for a thread (or process) id.
pub fn pidfd_open(tid: u32, thread: bool) -> io::Result<OwnedFd> {
    let flags = if thread { PIDFD_THREAD } else { 0 };
    // SAFETY: plain syscall with integer arguments; a non-negative result is
    // a new file descriptor that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid as libc::pid_t, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the thread or process a pidfd names has exited.
pub fn has_exited(pidfd: &impl AsFd) -> bool {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(0) => false,
        Ok(_) => true,
        Err(_) => true,
    }
}

/// `struct pidfd_info` of `<linux/pidfd.h>`, first version (64 bytes).
#[repr(C)]
#[derive(Default)]
struct RawPidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}

const PIDFD_INFO_PID: u64 = 1 << 0;
const PIDFD_INFO_CREDS: u64 = 1 << 1;
const PIDFD_INFO_CGROUPID: u64 = 1 << 2;
/// `_IOWR(PIDFS_IOCTL_MAGIC, 11, struct pidfd_info)`.
const PIDFD_GET_INFO: libc::c_ulong =
    (3 << 30) | ((std::mem::size_of::<RawPidfdInfo>() as libc::c_ulong) << 16) | (0xFF << 8) | 11;

/// What the kernel says about the process (or thread) a pidfd names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidfdInfo {
    /// The id of its cgroup v2 (the inode number of the cgroup directory).
    pub cgroup_id: u64,
    /// Its thread-group (process) id and its parent's, in our namespace.
    pub tgid: u32,
    pub ppid: u32,
    /// Real, effective, saved and filesystem user ids.
    pub uids: [u32; 4],
    /// Its effective group id.
    pub egid: u32,
}

/// Ask the kernel about a pidfd's process. `Ok(None)`: this kernel has no
/// `PIDFD_GET_INFO` (before 6.13). An error: the process is gone.
pub fn pidfd_info(pidfd: &impl AsFd) -> io::Result<Option<PidfdInfo>> {
    let mut raw = RawPidfdInfo {
        mask: PIDFD_INFO_PID | PIDFD_INFO_CREDS | PIDFD_INFO_CGROUPID,
        ..RawPidfdInfo::default()
    };
    // SAFETY: the ioctl writes at most size_of::<RawPidfdInfo>() bytes (the
    // size is encoded in the request number) into `raw`, which lives.
    let r = unsafe {
        libc::ioctl(
            pidfd.as_fd().as_raw_fd(),
            PIDFD_GET_INFO as _,
            &mut raw as *mut RawPidfdInfo,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTTY | libc::EINVAL | libc::EOPNOTSUPP) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(PidfdInfo {
        cgroup_id: if raw.mask & PIDFD_INFO_CGROUPID != 0 {
            raw.cgroupid
        } else {
            0
        },
        tgid: raw.tgid,
        ppid: raw.ppid,
        uids: [raw.ruid, raw.euid, raw.suid, raw.fsuid],
        egid: raw.egid,
    }))
}

/// The cgroup v2 path of a thread, from `/proc/TID/cgroup`.
pub fn cgroup_path_of(tid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The real, effective, saved and filesystem uids, the effective gid and
/// the parent of `pid`, from `/proc` (for kernels without
/// `PIDFD_GET_INFO`).
fn proc_status(pid: u32) -> Option<([u32; 4], u32, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name));
    let mut ids = field("Uid:")?
        .split_whitespace()
        .map(|u| u.parse::<u32>().ok());
    let uids = [ids.next()??, ids.next()??, ids.next()??, ids.next()??];
    let egid = field("Gid:")?.split_whitespace().nth(1)?.parse().ok()?;
    let ppid = field("PPid:")?.trim().parse().ok()?;
    Some((uids, egid, ppid))
}

/// A process named by a pidfd, and what is known about it.
pub struct Process {
    pub pid: u32,
    pub pidfd: OwnedFd,
    pub info: PidfdInfo,
}

impl Process {
    /// Open process `pid` and learn its ids and cgroup through the pidfd.
    /// `None`: there is no such process (or it exited meanwhile).
    pub fn open(pid: u32) -> Option<Process> {
        let pidfd = pidfd_open(pid, false).ok()?;
        let info = Self::describe(pid, &pidfd)?;
        Some(Process { pid, pidfd, info })
    }

    /// Ask again (the process may have changed cgroup or ids).
    pub fn refresh(&mut self) -> Option<&PidfdInfo> {
        self.info = Self::describe(self.pid, &self.pidfd)?;
        Some(&self.info)
    }

    pub fn has_exited(&self) -> bool {
        has_exited(&self.pidfd)
    }

    fn describe(pid: u32, pidfd: &OwnedFd) -> Option<PidfdInfo> {
        if let Some(info) = pidfd_info(pidfd).ok()? {
            return (!has_exited(pidfd)).then_some(info);
        }
        // Older kernels: read /proc, then prove with the pidfd that the
        // process we read about was still the one it names.
        let (uids, egid, ppid) = proc_status(pid)?;
        let cgroup_id = cgroup_path_of(pid)
            .and_then(|p| crate::cgroup::cgroup_id(&p).ok())
            .unwrap_or(0);
        (!has_exited(pidfd)).then_some(PidfdInfo {
            cgroup_id,
            tgid: pid,
            ppid,
            uids,
            egid,
        })
    }

    /// Its cgroup v2 path, checked against the cgroup id the pidfd gave (so
    /// the path read from `/proc` is the process's, and current).
    pub fn cgroup_path(&self) -> Option<String> {
        let path = cgroup_path_of(self.pid)?;
        let id = crate::cgroup::cgroup_id(&path).ok()?;
        let now = pidfd_info(&self.pidfd).ok()?.map(|i| i.cgroup_id);
        (id == self.info.cgroup_id && now.is_none_or(|n| n == id) && !self.has_exited())
            .then_some(path)
    }
}

/// Why a process could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("process {0} exited")]
    Exited(u32),
    #[error("cannot pin process {pid} while acting on it (ptrace: {source})")]
    Refused { pid: u32, source: io::Error },
}

impl Process {
    /// Run `f` while this process is pinned: its number cannot be reused
    /// until `f` returns (see the module documentation). Fails if the
    /// process exited, or if the kernel refuses the trace (another tracer,
    /// a security module).
    ///
    /// The trace lives on a thread of its own that ends when `f` returns;
    /// see [`release`] for how it lets go without ever waiting long.
    pub fn pinned<R: Send>(
        &mut self,
        f: impl FnOnce(&mut Process) -> R + Send,
    ) -> Result<R, PinError> {
        let pid = self.pid;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    if self.has_exited() {
                        return Err(PinError::Exited(pid));
                    }
                    // SAFETY: PTRACE_SEIZE with null addr and data (no options).
                    let r = unsafe {
                        libc::ptrace(
                            libc::PTRACE_SEIZE,
                            pid as libc::pid_t,
                            std::ptr::null_mut::<libc::c_void>(),
                            std::ptr::null_mut::<libc::c_void>(),
                        )
                    };
                    if r < 0 {
                        let source = io::Error::last_os_error();
                        return Err(if self.has_exited() {
                            PinError::Exited(pid)
                        } else {
                            PinError::Refused { pid, source }
                        });
                    }
                    // We traced whatever had the number when we asked. The
                    // pidfd's process held it before; if it is still alive
                    // now, it held it all along, so it is the one we traced.
                    if self.has_exited() {
                        release(pid);
                        return Err(PinError::Exited(pid));
                    }
                    let result = f(self);
                    release(pid);
                    Ok(result)
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(PinError::Refused {
                        pid,
                        source: io::Error::other("the pinning thread panicked"),
                    })
                })
        })
    }
}

/// How long letting go of a pinned process may wait for it to stop.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Let go of the traced process `pid`, on the tracing thread.
///
/// A trace is detached cleanly only from a stop: interrupt the process,
/// wait for the stop (polling, at most [`RELEASE_WAIT`]) and detach,
/// handing back the signal it was stopped for, if any (else that signal
/// would be lost). A tracee that died meanwhile is reaped here as its
/// tracer, which hands it to its real parent. A process that does not stop
/// in time (uninterruptible sleep) is let go when the tracing thread ends:
/// the kernel then detaches it, and it has no stop whose signal could be
/// lost.
fn release(pid: u32) {
    let pid = pid as libc::pid_t;
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: ptrace and waitpid on our own tracee, integer arguments.
    unsafe {
        libc::ptrace(libc::PTRACE_INTERRUPT, pid, null, null);
    }
    let deadline = std::time::Instant::now() + RELEASE_WAIT;
    let mut pause = std::time::Duration::from_micros(20);
    loop {
        let mut status = 0;
        // SAFETY: as above.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL | libc::WNOHANG) };
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if r < 0 || libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return;
        }
        if r > 0 && libc::WIFSTOPPED(status) {
            // An event stop (our interrupt, or a group stop) carries no
            // signal to hand back; a signal-delivery stop does.
            let event = (status >> 16) & 0xff;
            let signal = if event == 0 {
                libc::WSTOPSIG(status)
            } else {
                0
            };
            // SAFETY: as above.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_DETACH,
                    pid,
                    null,
                    signal as usize as *mut libc::c_void,
                );
            }
            return;
        }
        if std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_through_the_pidfd() {
        let me = Process::open(std::process::id()).expect("self");
        assert_eq!(me.info.tgid, std::process::id());
        let uid = rustix::process::getuid().as_raw();
        assert_eq!(me.info.uids[0], uid);
        let path = me.cgroup_path().expect("cgroup path");
        assert!(path.starts_with('/'));
    }

    #[test]
    fn pinning_keeps_a_dead_process_number_until_released() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        use std::io::BufRead;
        // `sh` is the real parent of `sleep`; this test only pins it.
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait $!; echo reaped"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(sh.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let pid: u32 = line.trim().parse().unwrap();
        let mut p = Process::open(pid).unwrap();
        p.pinned(|p| {
            rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            )
            .unwrap();
            // Its parent waits for it but cannot reap it: the number stays taken.
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert!(p.has_exited());
            assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        })
        .unwrap();
        // Released: the parent reaps it as usual.
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "reaped");
        sh.wait().unwrap();
    }

    #[test]
    fn a_pinned_process_runs_on_and_keeps_its_signals() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let child = std::process::Command::new("sh")
            .args([
                "-c",
                "trap 'u2=1' USR2; trap 'exit $((7 + ${u2:-0}))' USR1; while :; do sleep 0.01; done",
            ])
            .spawn()
            .unwrap();
        // Let the shell set its traps first.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut p = Process::open(child.id()).unwrap();
        // A signal that arrives while pinned is delivered after.
        p.pinned(|p| {
            rustix::process::kill_process(
                rustix::process::Pid::from_raw(p.pid as i32).unwrap(),
                rustix::process::Signal::USR2,
            )
            .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
        })
        .unwrap();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
            rustix::process::Signal::USR1,
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(8),
            "USR2 lost or USR1 not delivered"
        );
    }
}
