//! The VFS service process: one FUSE mount, the control plane, cleanup.
//!
//! Start-up order makes starting race-free: the control socket is bound
//! first (a second service fails there and exits), then a stale mount is
//! cleared and the filesystem mounted, and only then are requests served, so
//! a client that connected early simply waits for its first answer.
//! SIGTERM, SIGINT or the Shutdown call stop the service and unmount.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use spfs_config::Config;
use spfs_control::Listen;
use spfs_control::proto;
use spfs_storage::{FsRepository, StorageError};
use spfs_vfs::Vfs;

use crate::cgroup::{Cgroups, Watcher};
use crate::handler::Handler;
use crate::host::FuseHost;
use crate::locks::{LockError, ServiceLocks, address_lock_path};
use crate::process::Process;
use crate::route::Router;

/// Why the service could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("a VFS service is already running (control socket {0})")]
    AlreadyRunning(String),
    #[error("invalid vfs.listen '{0}': {1}")]
    BadListen(String, String),
    #[error(transparent)]
    Control(#[from] spfs_control::ControlError),
    #[error(transparent)]
    Lock(LockError),
    #[error(transparent)]
    Metrics(#[from] crate::exporter::ExporterError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// Readahead asked of the kernel for the mount, in KiB.
const READAHEAD_KB: u32 = 1024;

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServiceError {
    let context = context.into();
    move |source| ServiceError::Io { context, source }
}

/// A runtime bound to a cgroup: its root process and the cgroup's path.
struct BoundRuntime {
    root: Process,
    cgroup: String,
}

/// Everything the control plane and the cleanup path share.
pub(crate) struct State {
    pub(crate) vfs: Arc<Vfs>,
    pub(crate) router: Arc<Router>,
    pub(crate) cgroups: Cgroups,
    pub(crate) watcher: OnceLock<Watcher>,
    mountpoint: PathBuf,
    listen: String,
    started: Instant,
    passthrough: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    stats: Arc<crate::stats::Stats>,
    pub(crate) shutdown: tokio::sync::Notify,
    pub(crate) service_uid: u32,
    /// Each runtime's root process (by pidfd: a root PID that a new
    /// process has reused never matches a runtime) and cgroup. Kept after
    /// the view was dropped while the cgroup still has processes, so that
    /// the cgroup is removed once they are gone.
    bound: Mutex<HashMap<String, BoundRuntime>>,
    /// The durable runtimes: their upper areas (and records) stay when
    /// their processes are gone.
    pub(crate) durable: Mutex<std::collections::HashSet<String>>,
    /// Editable runtimes registered (or being registered): the mount is
    /// writable while there is one.
    editing: Mutex<usize>,
    /// Tells the kernel what it must forget after a change it did not
    /// make itself (a reset, a commit).
    pub(crate) notifier: OnceLock<fuser::Notifier>,
    /// Tests widen the window between a registration's checks and its move
    /// (`SPFS_VFS_TEST_REGISTER_DELAY_MS`), to race PID reuse against it.
    pub(crate) test_register_delay: Option<std::time::Duration>,
}

impl State {
    pub(crate) fn repo(&self) -> &FsRepository {
        self.vfs.repo()
    }

    /// The runtime whose root process is `pid`, if that process still lives.
    pub(crate) fn rooted_at(&self, pid: u32) -> Option<Arc<spfs_vfs::Runtime>> {
        let bound = self.bound.lock().unwrap_or_else(|p| p.into_inner());
        bound
            .iter()
            .find(|(_, b)| b.root.pid == pid && !b.root.has_exited())
            .and_then(|(name, _)| self.vfs.registry.get(name))
    }

    /// Remember that runtime `name` is bound to cgroup `cgroup`.
    pub(crate) fn bind_runtime(&self, name: &str, root: Process, cgroup: &str) {
        self.bound.lock().unwrap_or_else(|p| p.into_inner()).insert(
            name.to_string(),
            BoundRuntime {
                root,
                cgroup: cgroup.to_string(),
            },
        );
    }

    /// Where the upper area of editable runtime `name` is: `edits/NAME`
    /// under the repository, in a directory only root may enter.
    pub(crate) fn upper_path(&self, name: &str) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let edits = self.repo().root().join("edits");
        match std::fs::create_dir(&edits) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let meta = std::fs::symlink_metadata(&edits)?;
        if !meta.is_dir() || meta.uid() != rustix::process::geteuid().as_raw() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} is not a directory of the service's user",
                    edits.display()
                ),
            ));
        }
        std::fs::set_permissions(&edits, std::fs::Permissions::from_mode(0o700))?;
        Ok(edits.join(name))
    }

    /// Remove the upper areas no durable runtime keeps: those of editable
    /// runtimes that were running when a previous service stopped (their
    /// views went with it).
    fn remove_stale_edits(&self) {
        let edits = self.repo().root().join("edits");
        let Ok(dir) = std::fs::read_dir(&edits) else {
            return;
        };
        for item in dir.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            let kept = self.repo().read_runtime(&name).is_ok_and(|r| r.keep);
            if kept || self.vfs.registry.get(&name).is_some() {
                continue;
            }
            match std::fs::remove_dir_all(item.path()) {
                Ok(()) => {
                    tracing::info!(runtime = %name, "removed the edits of a runtime that is gone")
                }
                Err(e) => tracing::warn!(runtime = %name, "cannot remove stale edits: {e}"),
            }
        }
    }

    /// One more editable runtime: the mount becomes writable with the first.
    pub(crate) fn editing_begins(&self) -> std::io::Result<()> {
        let mut n = self.editing.lock().unwrap_or_else(|p| p.into_inner());
        if *n == 0 {
            crate::mounts::set_read_only(&self.mountpoint, false)?;
            tracing::info!("mount made writable for editable runtimes");
        }
        *n += 1;
        Ok(())
    }

    /// One editable runtime fewer: the mount is read-only again after the
    /// last (unless a file is still open for writing: then at a later end).
    pub(crate) fn editing_ends(&self) {
        let mut n = self.editing.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            match crate::mounts::set_read_only(&self.mountpoint, true) {
                Ok(()) => tracing::info!("mount read-only again"),
                Err(e) => tracing::debug!("mount stays writable for now: {e}"),
            }
        }
    }

    /// Tell the kernel to forget what changed without its knowing.
    pub(crate) fn invalidate(&self, stale: &spfs_vfs::write::StaleNodes) {
        let Some(n) = self.notifier.get() else { return };
        for (parent, name) in &stale.names {
            let _ = n.inval_entry(fuser::INodeNo(*parent), std::ffi::OsStr::from_bytes(name));
        }
        for node in &stale.nodes {
            let _ = n.inval_inode(fuser::INodeNo(*node), 0, 0);
        }
    }

    /// Drop a runtime: its view, its record and (once empty) its cgroup.
    /// A durable runtime keeps its upper area and its record.
    pub(crate) fn drop_runtime(&self, name: &str, why: &str) {
        self.router.unbind(name);
        let durable = self
            .durable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(rt) = self.vfs.registry.remove(name) {
            tracing::info!(
                runtime = name,
                root_pid = rt.root_pid,
                durable,
                "view dropped: {why}"
            );
            if let Some(ed) = &rt.view.edit {
                if !durable && let Err(e) = ed.upper().destroy_contents() {
                    tracing::warn!(runtime = name, "cannot remove the upper area: {e}");
                }
                self.editing_ends();
            }
            // Only this runtime's own record: its owner wrote it.
            match self.repo().read_runtime(name) {
                Ok(_) if durable => {}
                Ok(r) if r.owner_uid == rt.owner_uid => {
                    if let Err(e) = self.repo().remove_runtime(name) {
                        tracing::warn!(runtime = name, "cannot remove runtime record: {e}");
                    }
                }
                _ => {}
            }
        }
        let mut bound = self.bound.lock().unwrap_or_else(|p| p.into_inner());
        let empty = bound
            .get(name)
            .map(|b| !self.cgroups.is_populated(&b.cgroup).unwrap_or(true));
        if empty == Some(true)
            && let Some(b) = bound.remove(name)
        {
            if let Some(w) = self.watcher.get() {
                w.unwatch(name);
            }
            let _ = self.cgroups.remove(&b.cgroup);
        }
    }

    pub(crate) fn status(&self) -> proto::StatusResponse {
        let mut status = proto::StatusResponse {
            pid: std::process::id(),
            mountpoint: self.mountpoint.display().to_string(),
            listen: self.listen.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            runtimes: self.vfs.registry.len() as u32,
            requests: self.requests.load(Ordering::Relaxed),
            passthrough: self.passthrough.load(Ordering::Relaxed),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        };
        crate::stats::report(&mut status, &self.stats, &self.vfs, &self.router);
        status
    }
}

/// The service holds a pidfd per known caller thread and a descriptor per
/// open file: allow as many descriptors as the hard limit does.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("cannot raise the open file limit: {e}");
        }
    }
}

/// How long stopping waits for clients still connected.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub use crate::locks::mountpoint_lock_path;

/// Run the service until it is told to stop. Blocks.
pub fn run(config: &Config) -> Result<(), ServiceError> {
    let listen: Listen = config
        .vfs
        .listen
        .parse()
        .map_err(|e: spfs_control::ControlError| {
            ServiceError::BadListen(config.vfs.listen.clone(), e.to_string())
        })?;
    raise_open_file_limit();
    let repo = match FsRepository::open(&config.storage.root) {
        Err(StorageError::NoRepository(_)) => FsRepository::create(&config.storage.root)?,
        other => other?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_err("cannot start the control plane"))?;
    // 1. One service per control address and per mount point: a second
    //    one stops here, before it changes anything. The locks are released
    //    by the kernel if this process dies.
    //    The lock files go when the service stops.
    let _locks = ServiceLocks::take(
        &address_lock_path(&listen, &config.vfs.token_file),
        &mountpoint_lock_path(&config.vfs.mountpoint),
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
    let bound = match runtime.block_on(spfs_control::bind(&listen, token)) {
        Err(spfs_control::ControlError::AlreadyRunning(l)) => {
            return Err(ServiceError::AlreadyRunning(l.to_string()));
        }
        other => other?,
    };
    let metrics = crate::exporter::bind(&runtime, &config.vfs.metrics_listen)?;
    // 2. cgroups, and this process out of any runtime.
    let cgroups =
        Cgroups::open(&config.vfs.cgroup_root).map_err(io_err("cannot set up runtime cgroups"))?;
    cgroups
        .adopt_self()
        .map_err(io_err("cannot move the service into its own cgroup"))?;
    // Runtimes of a previous service on this mount point are gone: their
    // records go (not a durable runtime's: it is run again from its
    // record), and so do their cgroups once empty.
    let mut stale = cgroups.under_root();
    for record in repo.runtimes()? {
        if record.mountpoint == config.vfs.mountpoint {
            if !record.keep {
                let _ = repo.remove_runtime(&record.name);
            }
            if !record.cgroup.is_empty() {
                stale.push(record.cgroup);
            }
        }
    }
    for path in stale {
        if !cgroups.is_populated(&path).unwrap_or(true) {
            let _ = cgroups.remove(&path);
        }
    }
    // 3. The mount.
    let mountpoint = config.vfs.mountpoint.clone();
    crate::mounts::prepare_mountpoint(&mountpoint).map_err(io_err(format!(
        "cannot prepare mount point {}",
        mountpoint.display()
    )))?;
    let vfs = Arc::new(Vfs::new(repo).with_read_through(
        spfs_remote::read_through(config),
        config.vfs.remote_ranged_reads,
    ));
    let router = Arc::new(Router::new(vfs.registry.clone()));
    let host = FuseHost::new(
        vfs.clone(),
        router.clone(),
        config.vfs.passthrough,
        config.vfs.cache_opens,
    );
    let passthrough = host.passthrough_flag();
    let notifier_slot = host.notifier_slot();
    let requests = host.requests.clone();
    let stats = host.stats();
    let mut fuse_config = fuser::Config::default();
    fuse_config.mount_options = vec![
        fuser::MountOption::FSName("spfs".into()),
        fuser::MountOption::Subtype("spfs".into()),
        // Writable only while an editable runtime exists (see
        // `State::editing`): a read-only superblock also spares every read
        // and listing the kernel's atime invalidation (a GETATTR next).
        fuser::MountOption::RO,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::DefaultPermissions,
    ];
    fuse_config.acl = fuser::SessionACL::All;
    fuse_config.n_threads = Some(config.vfs.threads as usize);
    fuse_config.clone_fd = true;
    let session = fuser::Session::new(host, &mountpoint, &fuse_config)
        .map_err(io_err(format!("cannot mount {}", mountpoint.display())))?;
    let background = session
        .spawn()
        .map_err(io_err("cannot start the FUSE workers"))?;
    // The kernel's default readahead for FUSE (128 KiB) halves a cold
    // sequential read when file data goes through the service (no
    // passthrough): ask for larger reads.
    if let Err(e) = crate::mounts::set_readahead_kb(&mountpoint, READAHEAD_KB) {
        tracing::debug!("cannot raise the mount's readahead: {e}");
    }
    let state = Arc::new(State {
        vfs,
        router,
        cgroups: cgroups.clone(),
        watcher: OnceLock::new(),
        mountpoint: mountpoint.clone(),
        listen: bound.listen().to_string(),
        started: Instant::now(),
        passthrough,
        requests,
        stats,
        shutdown: tokio::sync::Notify::new(),
        service_uid: rustix::process::getuid().as_raw(),
        bound: Mutex::new(HashMap::new()),
        durable: Mutex::default(),
        editing: Mutex::new(0),
        notifier: OnceLock::new(),
        test_register_delay: std::env::var("SPFS_VFS_TEST_REGISTER_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis),
    });
    let (weak, weak2) = (Arc::downgrade(&state), Arc::downgrade(&state));
    let watcher = Watcher::start(
        cgroups,
        Arc::new(move |name: &str| {
            if let Some(s) = weak.upgrade() {
                s.drop_runtime(name, "its process tree exited");
            }
        }),
        // Without the watcher no runtime would ever be cleaned up: stop,
        // so that the next client starts a healthy service.
        Arc::new(move |error: &str| {
            tracing::error!("cannot watch runtime cgroups any more ({error}); stopping");
            if let Some(s) = weak2.upgrade() {
                s.shutdown.notify_one();
            }
        }),
    )
    .map_err(io_err("cannot watch runtime cgroups"))?;
    let _ = state.watcher.set(watcher);
    let _ = state.notifier.set(background.notifier());
    state.remove_stale_edits();
    let _ = notifier_slot.set(background.notifier());
    tracing::info!(mountpoint = %mountpoint.display(), listen = %state.listen, "VFS service ready");
    // 4. Serve until stopped. Connections in flight get a few seconds to
    //    finish; a client that never finishes cannot keep the service up.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_state = state.clone();
    let handler = Arc::new(Handler(state.clone(), Default::default()));
    if let Some(listener) = metrics {
        let s = state.clone();
        let render = move || spfs_control::metrics::render(&s.status());
        runtime.spawn(crate::exporter::serve(listener, Arc::new(render)));
    }
    let served = runtime.block_on(async move {
        tokio::spawn(async move {
            let reason =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut term) => tokio::select! {
                        _ = stop_state.shutdown.notified() => "shutdown requested",
                        _ = term.recv() => "SIGTERM received",
                        _ = tokio::signal::ctrl_c() => "SIGINT received",
                    },
                    Err(_) => {
                        stop_state.shutdown.notified().await;
                        "shutdown requested"
                    }
                };
            tracing::info!("{reason}; stopping");
            let _ = stop_tx.send(true);
        });
        let mut stopped = stop_rx.clone();
        let mut drained = stop_rx;
        let serve = bound.serve(handler, async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
        tokio::pin!(serve);
        tokio::select! {
            r = &mut serve => r,
            _ = async {
                let _ = drained.wait_for(|s| *s).await;
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            } => {
                tracing::warn!("clients did not finish within {DRAIN_TIMEOUT:?}; stopping anyway");
                Ok(())
            }
        }
    });
    // 5. Stop: drop every view and record, unmount, remove empty cgroups.
    for rt in state.vfs.registry.list() {
        state.drop_runtime(&rt.name, "the service is stopping");
    }
    drop(background);
    // A busy mount (a process's working directory in it) refuses a plain
    // unmount: detach it, so nothing is left answering ENOTCONN.
    if let Err(e) = crate::mounts::detach_fuse(&mountpoint) {
        tracing::error!("{e}");
    }
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted; VFS service stopped");
    served?;
    Ok(())
}
