//! The keeper: the one long-lived process of a VFS service.
//!
//! `spfs-vfs service` runs the keeper. It takes the service's locks, binds
//! the control socket (or takes the one systemd passes, socket
//! activation), opens `/dev/fuse` and mounts it, and then only supervises:
//! the views, the control plane and every filesystem request are served by
//! a worker process it starts (`spfs-vfs service --worker`), which inherits
//! the mount's FUSE descriptor and the control socket. Because the keeper
//! holds both, a worker can go without taking the mount or the socket with
//! it:
//!
//! - **restart and upgrade** (`SIGHUP`, sent by `spfs-vfs service
//!   --restart`): the worker is asked to stop (`SIGUSR1`: it finishes the
//!   requests it has started and keeps the tables the next one needs, see
//!   [`crate::handover`]) and a new one is started from the program's path
//!   (so an upgraded binary), which takes over the connection and the
//!   runtimes ([`crate::ledger`]);
//! - **crash**: a worker that dies is replaced at once the same way;
//!   requests it had taken are sent again by the kernel. Five crashes
//!   within a minute, or a first worker that fails before it is ready,
//!   stop the service (nothing is left mounted answering `ENOTCONN`);
//! - **stop** (`SIGTERM`, `SIGINT`, or the Shutdown call, after which the
//!   worker exits 0): the mount is detached and the locks and socket file
//!   go. The ledger stays, so the next service takes over the runtimes
//!   whose processes still live.
//!
//! Under systemd the keeper reports readiness, reloads and stopping
//! (`sd_notify`) and stays in its unit's cgroup; otherwise it moves into
//! `<cgroup_root>/service`, out of any runtime. It also puts the mount's
//! FUSE descriptor into systemd's descriptor store (`FDSTORE=1`, named
//! `fuse`): if the keeper itself dies, systemd restarts it with that
//! descriptor, and the new keeper takes the mount over instead of making
//! a new one, so even then running programs only pause. Without systemd,
//! nothing outlives the keeper: its death ends the mount (the next service
//! takes the runtimes over).

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spfs_config::Config;
use spfs_control::Listen;

use crate::cgroup::Cgroups;
use crate::locks::{LockError, ServiceLocks, address_lock_path, mountpoint_lock_path};
use crate::service::{ServiceError, io_err};

/// A worker's exit status when it stopped to hand over to the next.
pub const EXIT_HANDED_OVER: i32 = 75;

/// How long a worker asked to stop may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Crashes within [`CRASH_WINDOW`] that stop the service.
const MAX_CRASHES: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// The descriptor numbers a worker finds what it inherits at.
const WORKER_FUSE_FD: i32 = 3;
const WORKER_LISTEN_FD: i32 = 4;
const WORKER_READY_FD: i32 = 5;

/// The environment a worker learns its inheritance from.
const ENV_WORKER: &str = "SPFS_VFS_WORKER";

/// What a worker inherits from its keeper.
pub struct Inherited {
    /// The mount's FUSE connection.
    pub fuse: OwnedFd,
    /// The control socket, listening, and its address.
    pub listen_fd: OwnedFd,
    pub listen: Listen,
    /// Written once when the worker serves.
    pub ready: OwnedFd,
    /// Whether another worker served the connection before (its `INIT` is
    /// done, and its runtimes are to be taken over as they are).
    pub takeover: bool,
    pub keeper_pid: u32,
}

impl Inherited {
    /// What this process inherited as a worker (`None`: it is none).
    pub fn from_env() -> Result<Option<Inherited>, ServiceError> {
        let Ok(text) = std::env::var(ENV_WORKER) else {
            return Ok(None);
        };
        // SAFETY-free parsing: "takeover=0|1,keeper=PID,listen=ADDR".
        let bad = || ServiceError::Io {
            context: format!("invalid {ENV_WORKER}"),
            source: std::io::Error::other(text.clone()),
        };
        let mut takeover = None;
        let mut keeper = None;
        let mut listen = None;
        for part in text.splitn(3, ',') {
            match part.split_once('=') {
                Some(("takeover", v)) => takeover = Some(v == "1"),
                Some(("keeper", v)) => keeper = v.parse::<u32>().ok(),
                Some(("listen", v)) => listen = v.parse::<Listen>().ok(),
                _ => return Err(bad()),
            }
        }
        let (Some(takeover), Some(keeper_pid), Some(listen)) = (takeover, keeper, listen) else {
            return Err(bad());
        };
        // The keeper is this process's parent, and passed the descriptors.
        if rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(keeper_pid) {
            return Err(ServiceError::Io {
                context: "a worker must be started by its keeper".into(),
                source: std::io::Error::other("the parent process is not the keeper"),
            });
        }
        // SAFETY: the keeper put these descriptors at these numbers for
        // this process alone; nothing else in it owns them.
        let own = |fd| unsafe { OwnedFd::from_raw_fd(fd) };
        for fd in [WORKER_FUSE_FD, WORKER_LISTEN_FD, WORKER_READY_FD] {
            rustix::io::fcntl_getfd(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }).map_err(
                |e| ServiceError::Io {
                    context: format!("inherited descriptor {fd}"),
                    source: e.into(),
                },
            )?;
        }
        let inherited = Inherited {
            fuse: own(WORKER_FUSE_FD),
            listen_fd: own(WORKER_LISTEN_FD),
            ready: own(WORKER_READY_FD),
            listen,
            takeover,
            keeper_pid,
        };
        for fd in [&inherited.fuse, &inherited.listen_fd, &inherited.ready] {
            let _ = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC);
        }
        unsafe_remove_env();
        Ok(Some(inherited))
    }
}

/// The worker's environment variable must not reach processes it starts.
fn unsafe_remove_env() {
    // SAFETY: called at start-up of the worker, before it starts threads
    // that read the environment.
    unsafe { std::env::remove_var(ENV_WORKER) };
}

/// Tell systemd (if it started this process) about `state`.
pub fn notify_systemd(state: &str) {
    notify_systemd_with(state, &[]);
}

/// Tell systemd about `state`, passing it `fds` (for its descriptor
/// store: `FDSTORE=1`).
fn notify_systemd_with(state: &str, fds: &[BorrowedFd<'_>]) {
    use rustix::net::{
        AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
        SocketFlags, SocketType,
    };
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let addr = match path.as_encoded_bytes().strip_prefix(b"@") {
            Some(name) => SocketAddrUnix::new_abstract_name(name)?,
            None => SocketAddrUnix::new(Path::new(&path))?,
        };
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(std::io::Error::other("too many descriptors"));
        }
        rustix::net::sendmsg_addr(
            &sock,
            &addr,
            &[std::io::IoSlice::new(state.as_bytes())],
            &mut control,
            SendFlags::empty(),
        )?;
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Whether systemd runs this process as a service.
fn under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some()
}

/// The name of the FUSE descriptor in systemd's descriptor store.
const FDSTORE_NAME: &str = "fuse";

/// Take the FUSE connection out of systemd's descriptor store (it is dead,
/// not the mount's, or the mount goes).
fn unstore_connection() {
    notify_systemd(&format!("FDSTOREREMOVE=1\nFDNAME={FDSTORE_NAME}"));
}

/// The descriptors systemd passed (socket activation, and its descriptor
/// store): the control socket, and the FUSE connection of a previous
/// keeper of this service.
fn systemd_fds() -> (Option<OwnedFd>, Option<OwnedFd>) {
    let passed = || -> Option<(u32, Vec<String>)> {
        let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
        let n: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
        let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        (pid == std::process::id()).then(|| (n, names.split(':').map(String::from).collect()))
    };
    let Some((n, names)) = passed() else {
        return (None, None);
    };
    // SAFETY: systemd passed descriptors 3.. to this process (LISTEN_PID);
    // these variables must not reach a child.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let (mut control, mut fuse) = (None, None);
    for i in 0..n.min(16) {
        // SAFETY: as above; each is taken once.
        let fd = unsafe { OwnedFd::from_raw_fd(3 + i as i32) };
        let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
        match names.get(i as usize).map(String::as_str) {
            Some(FDSTORE_NAME) => fuse = Some(fd),
            _ if control.is_none() => control = Some(fd),
            _ => {}
        }
    }
    (control, fuse)
}

/// Open `/dev/fuse` and mount it at `mountpoint`: read-only (an editable
/// runtime makes it writable), every user allowed, permissions checked by
/// the kernel.
fn mount_fuse(mountpoint: &Path) -> std::io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    use rustix::mount::MountFlags;
    let fd = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
        fd.as_raw_fd()
    );
    rustix::mount::mount(
        "spfs",
        mountpoint,
        "fuse.spfs",
        MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID,
        std::ffi::CString::new(data).ok().as_deref(),
    )?;
    Ok(fd)
}

/// Whether the FUSE connection `fd` is alive (not aborted: a dead one
/// polls as an error).
fn connection_alive(fd: &OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags};
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut fds, Some(&now)) {
        Ok(_) => !fds[0]
            .revents()
            .intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL),
        Err(_) => false,
    }
}

/// Whether the mount at `mountpoint` answers (through a worker that
/// serves): a connection taken over from systemd's store must be the one
/// mounted there.
async fn mount_answers(mountpoint: &Path) -> bool {
    let path = mountpoint.to_path_buf();
    let probe = tokio::task::spawn_blocking(move || std::fs::metadata(path).is_ok());
    matches!(
        tokio::time::timeout(Duration::from_secs(10), probe).await,
        Ok(Ok(true))
    )
}

/// A worker and how to hear that it serves.
struct Worker {
    child: tokio::process::Child,
    pid: u32,
    ready: tokio::sync::mpsc::UnboundedReceiver<()>,
    was_ready: bool,
}

/// What the keeper holds.
struct Keeper {
    program: PathBuf,
    args: Vec<String>,
    fuse: OwnedFd,
    listen: Listen,
    listen_fd: OwnedFd,
}

impl Keeper {
    /// Start a worker; `takeover`: the connection was served before.
    fn spawn(&self, takeover: bool) -> Result<Worker, ServiceError> {
        use std::os::unix::process::CommandExt;
        let (ready_rx, ready_tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| io_err("cannot make a pipe")(e.into()))?;
        // Above the numbers the child's are put at, so that no move
        // overwrites another's source.
        let high = |fd: &OwnedFd| {
            rustix::io::fcntl_dupfd_cloexec(fd, 64)
                .map_err(|e| io_err("cannot pass descriptors")(e.into()))
        };
        let (fuse, listen, ready) = (high(&self.fuse)?, high(&self.listen_fd)?, high(&ready_tx)?);
        drop(ready_tx);
        let moves = [
            (fuse.as_raw_fd(), WORKER_FUSE_FD),
            (listen.as_raw_fd(), WORKER_LISTEN_FD),
            (ready.as_raw_fd(), WORKER_READY_FD),
        ];
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args).env(
            ENV_WORKER,
            format!(
                "takeover={},keeper={},listen={}",
                u8::from(takeover),
                std::process::id(),
                self.listen
            ),
        );
        // SAFETY: prctl and dup2 are async-signal-safe; the sources are
        // open in the child (inherited across fork) and above every target.
        // A worker whose keeper died stops (and the mount with it): nothing
        // would replace it, and a new service could not take the mount
        // point over while it serves.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for (from, to) in moves {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = tokio::process::Command::from(cmd)
            .kill_on_drop(false)
            .spawn()
            .map_err(io_err(format!("cannot start {}", self.program.display())))?;
        drop((fuse, listen, ready));
        let pid = child.id().unwrap_or(0);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            if matches!(rustix::io::read(&ready_rx, &mut b), Ok(1)) {
                let _ = tx.send(());
            }
        });
        tracing::info!(worker = pid, takeover, "worker started");
        Ok(Worker {
            child,
            pid,
            ready: rx,
            was_ready: false,
        })
    }
}

/// Signal `pid` (a child of this process, not yet reaped).
fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Stop `worker` with `sig`, killing it if it takes too long.
async fn stop_worker(worker: &mut Worker, sig: rustix::process::Signal) -> Option<i32> {
    signal(worker.pid, sig);
    match tokio::time::timeout(STOP_TIMEOUT, worker.child.wait()).await {
        Ok(Ok(status)) => status.code(),
        _ => {
            tracing::error!(
                worker = worker.pid,
                "the worker did not stop in time; killing it"
            );
            let _ = worker.child.kill().await;
            None
        }
    }
}

/// Files of the state directory that describe one mount's connection
/// (meaningless for a new mount).
const CONNECTION_FILES: [&str; 4] = [
    "init.json",
    "content.journal",
    "backing.journal",
    "edit-tables.bin",
];

/// Run the service (the keeper and its workers) until it is stopped.
pub fn run(config: &Config, program_args: Vec<String>) -> Result<(), ServiceError> {
    let listen: Listen = config
        .vfs
        .listen
        .parse()
        .map_err(|e: spfs_control::ControlError| {
            ServiceError::BadListen(config.vfs.listen.clone(), e.to_string())
        })?;
    let mountpoint = config.vfs.mountpoint.clone();
    let _locks = ServiceLocks::take(
        &address_lock_path(&listen, &config.vfs.token_file),
        &mountpoint_lock_path(&mountpoint),
    )
    .map_err(|e| match e {
        LockError::AlreadyRunning(p) => ServiceError::AlreadyRunning(p.display().to_string()),
        e => ServiceError::Lock(e),
    })?;
    let token = match &listen {
        Listen::Tcp(_) => Some(
            spfs_control::create_token_file(&config.vfs.token_file).map_err(io_err(format!(
                "cannot write token file {}",
                config.vfs.token_file.display()
            )))?,
        ),
        Listen::Unix(_) => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("cannot start the keeper"))?;
    // The control socket: systemd's, or bound here (a second service
    // fails here, before it changes anything).
    let (systemd_control, stored_fuse) = systemd_fds();
    let (listen, listen_fd, _socket) = match systemd_control {
        Some(fd) => (listen, fd, None),
        None => {
            let bound = match runtime.block_on(spfs_control::bind(&listen, token)) {
                Err(spfs_control::ControlError::AlreadyRunning(l)) => {
                    return Err(ServiceError::AlreadyRunning(l.to_string()));
                }
                other => other?,
            };
            let inheritable = bound.into_inheritable()?;
            let fd = inheritable
                .fd
                .try_clone()
                .map_err(io_err("cannot keep the control socket"))?;
            (inheritable.listen.clone(), fd, Some(inheritable))
        }
    };
    if !under_systemd() {
        Cgroups::open(&config.vfs.cgroup_root)
            .and_then(|c| c.adopt_self())
            .map_err(io_err("cannot move the service into its own cgroup"))?;
    }
    let state_dir = crate::ledger::state_dir(&mountpoint).map_err(io_err(format!(
        "cannot prepare the state directory of {}",
        mountpoint.display()
    )))?;
    // The connection a previous keeper left in systemd's descriptor store
    // (it died): taken over while its mount lives. Otherwise a new mount,
    // whose connection goes into the store.
    let mounted = crate::mounts::mounted_type(&mountpoint)
        .ok()
        .flatten()
        .is_some_and(|t| t == "fuse.spfs");
    let stored_fuse = stored_fuse.filter(|fd| {
        let alive = connection_alive(fd);
        if !alive {
            tracing::warn!("the FUSE connection in systemd's store is dead; mounting afresh");
            unstore_connection();
        }
        alive
    });
    let (fuse, takeover) = match stored_fuse.filter(|_| mounted) {
        Some(fd) => {
            tracing::warn!(mountpoint = %mountpoint.display(), "taking over the mount of a previous keeper");
            (fd, true)
        }
        None => {
            crate::mounts::prepare_mountpoint(&mountpoint).map_err(io_err(format!(
                "cannot prepare mount point {}",
                mountpoint.display()
            )))?;
            for f in CONNECTION_FILES {
                let _ = std::fs::remove_file(state_dir.join(f));
            }
            let fuse = mount_fuse(&mountpoint)
                .map_err(io_err(format!("cannot mount {}", mountpoint.display())))?;
            notify_systemd_with(
                &format!("FDSTORE=1\nFDNAME={FDSTORE_NAME}"),
                &[fuse.as_fd()],
            );
            (fuse, false)
        }
    };
    // The program's path as started: a restart runs what is there now.
    let program = std::env::current_exe()
        .ok()
        .map(|p| {
            let s = p.to_string_lossy();
            PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s))
        })
        .unwrap_or_else(crate::launch::service_program);
    let keeper = Keeper {
        program,
        args: program_args,
        fuse,
        listen,
        listen_fd,
    };
    let result = runtime.block_on(supervise(&keeper, &mountpoint, takeover));
    // Stopped: nothing is left answering ENOTCONN, nor kept for a next
    // keeper.
    unstore_connection();
    if let Err(e) = crate::mounts::detach_fuse(&mountpoint) {
        tracing::error!("{e}");
    }
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted; VFS service stopped");
    result
}

/// Run workers until the service stops.
async fn supervise(keeper: &Keeper, mountpoint: &Path, takeover: bool) -> Result<(), ServiceError> {
    use tokio::signal::unix::{SignalKind, signal as on};
    let sig = |kind| on(kind).map_err(io_err("cannot handle signals"));
    let (mut hup, mut term, mut int) = (
        sig(SignalKind::hangup())?,
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
    );
    let mut worker = keeper.spawn(takeover)?;
    let mut ever_ready = false;
    // A restart asked while the worker is still starting waits until it
    // serves (it cannot hand over before).
    let mut restart_pending = false;
    let mut crashes: VecDeque<Instant> = VecDeque::new();
    loop {
        tokio::select! {
            status = worker.child.wait() => {
                let status = status.map_err(io_err("cannot wait for the worker"))?;
                if status.code() == Some(0) {
                    tracing::info!(worker = worker.pid, "the worker stopped; stopping");
                    notify_systemd("STOPPING=1");
                    return Ok(());
                }
                if !ever_ready {
                    return Err(ServiceError::Io {
                        context: "the VFS service could not start".into(),
                        source: std::io::Error::other(format!("its worker exited ({status})")),
                    });
                }
                let now = Instant::now();
                crashes.push_back(now);
                crashes.retain(|t| now.duration_since(*t) < CRASH_WINDOW);
                if crashes.len() >= MAX_CRASHES {
                    tracing::error!("the worker died {MAX_CRASHES} times within {CRASH_WINDOW:?}; stopping");
                    return Err(ServiceError::Io {
                        context: "the VFS service keeps crashing".into(),
                        source: std::io::Error::other(format!("last worker exit: {status}")),
                    });
                }
                tracing::error!(worker = worker.pid, "the worker died ({status}); starting another, which takes over");
                worker = keeper.spawn(true)?;
            }
            Some(()) = worker.ready.recv(), if !worker.was_ready => {
                worker.was_ready = true;
                if !ever_ready {
                    ever_ready = true;
                    if takeover && !mount_answers(mountpoint).await {
                        // The stored connection is not the one mounted
                        // here: start afresh (systemd starts the keeper
                        // again, with nothing stored).
                        tracing::error!("the FUSE connection taken over does not serve {}; starting afresh", mountpoint.display());
                        unstore_connection();
                        stop_worker(&mut worker, rustix::process::Signal::TERM).await;
                        return Err(ServiceError::Io {
                            context: "the VFS service could not take the mount over".into(),
                            source: std::io::Error::other("its connection does not serve the mount point"),
                        });
                    }
                    // Larger reads when file data goes through the service
                    // (no passthrough): the default 128 KiB halves a cold read.
                    if let Err(e) = crate::mounts::set_readahead_kb(mountpoint, crate::service::READAHEAD_KB) {
                        tracing::debug!("cannot raise the mount's readahead: {e}");
                    }
                }
                tracing::info!(worker = worker.pid, "worker ready");
                notify_systemd(&format!("READY=1\nMAINPID={}\nSTATUS=serving (worker {})", std::process::id(), worker.pid));
                if std::mem::take(&mut restart_pending) {
                    worker = hand_over(keeper, worker).await?;
                }
            }
            _ = hup.recv() => {
                if worker.was_ready {
                    worker = hand_over(keeper, worker).await?;
                } else {
                    restart_pending = true;
                }
            }
            _ = term.recv() => return stop(&mut worker).await,
            _ = int.recv() => return stop(&mut worker).await,
        }
    }
}

/// Hand over from `worker` to a new one (unless the program to run does
/// not run: then `worker` goes on).
async fn hand_over(keeper: &Keeper, mut worker: Worker) -> Result<Worker, ServiceError> {
    let runs = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(&keeper.program)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status(),
    )
    .await;
    if !matches!(runs, Ok(Ok(s)) if s.success()) {
        tracing::error!(
            program = %keeper.program.display(),
            "restart refused: the program does not run; the current worker goes on"
        );
        return Ok(worker);
    }
    tracing::info!(
        worker = worker.pid,
        "restart requested: handing over to a new worker"
    );
    notify_systemd(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    let code = stop_worker(&mut worker, rustix::process::Signal::USR1).await;
    if code != Some(EXIT_HANDED_OVER) {
        tracing::warn!(
            worker = worker.pid,
            ?code,
            "the worker did not hand over cleanly"
        );
    }
    keeper.spawn(true)
}

/// CLOCK_MONOTONIC in microseconds (systemd's `MONOTONIC_USEC`).
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

async fn stop(worker: &mut Worker) -> Result<(), ServiceError> {
    tracing::info!(worker = worker.pid, "stopping");
    notify_systemd("STOPPING=1");
    stop_worker(worker, rustix::process::Signal::TERM).await;
    Ok(())
}
