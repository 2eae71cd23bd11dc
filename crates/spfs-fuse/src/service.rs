//! The VFS service process: one FUSE mount, the control plane, cleanup.
//!
//! Start-up order makes starting race-free: the control socket is bound
//! first (a second service fails there and exits), then a stale mount is
//! cleared and the filesystem mounted, and only then are requests served, so
//! a client that connected early simply waits for its first answer.
//! SIGTERM, SIGINT or the Shutdown call stop the service and unmount.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use spfs_config::Config;
use spfs_control::proto;
use spfs_control::{Caller, ControlHandler, Listen};
use spfs_model::EnvSpec;
use spfs_storage::{FsRepository, StorageError};
use spfs_vfs::{RuntimeSpec, Vfs};
use tonic::Status;

use crate::cgroup::{Cgroups, Watcher};
use crate::host::FuseHost;
use crate::route::{Router, has_exited, pidfd_open};

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
    Storage(#[from] StorageError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServiceError {
    let context = context.into();
    move |source| ServiceError::Io { context, source }
}

/// Everything the control plane and the cleanup path share.
struct State {
    vfs: Arc<Vfs>,
    router: Arc<Router>,
    cgroups: Cgroups,
    watcher: OnceLock<Watcher>,
    mountpoint: PathBuf,
    listen: String,
    started: Instant,
    passthrough: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    shutdown: tokio::sync::Notify,
    service_uid: u32,
    /// A pidfd of each runtime's root process: a root PID that a new
    /// process has reused never matches a runtime.
    roots: Mutex<HashMap<String, OwnedFd>>,
}

impl State {
    fn repo(&self) -> &FsRepository {
        self.vfs.repo()
    }

    /// The runtime whose root process is `pid`, if that process still lives.
    fn rooted_at(&self, pid: u32) -> Option<Arc<spfs_vfs::Runtime>> {
        let roots = self.roots.lock().unwrap_or_else(|p| p.into_inner());
        self.vfs
            .registry
            .list()
            .into_iter()
            .find(|r| r.root_pid == pid && roots.get(&r.name).is_some_and(|fd| !has_exited(fd)))
    }

    /// Drop a runtime: its view, its record and (once empty) its cgroup.
    fn drop_runtime(&self, name: &str, why: &str) {
        self.roots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(rt) = self.vfs.registry.remove(name) {
            tracing::info!(
                runtime = name,
                root_pid = rt.root_pid,
                "view dropped: {why}"
            );
        }
        if let Err(e) = self.repo().remove_runtime(name) {
            tracing::warn!(runtime = name, "cannot remove runtime record: {e}");
        }
        if !self.cgroups.is_populated(name).unwrap_or(true) {
            if let Some(w) = self.watcher.get() {
                w.unwatch(name);
            }
            let _ = self.cgroups.remove(name);
        }
    }

    fn authorize(&self, caller: &Caller, owner_uid: u32) -> Result<(), Status> {
        if caller.via_token {
            return Ok(());
        }
        match caller.uid {
            Some(0) => Ok(()),
            Some(uid) if uid == owner_uid => Ok(()),
            Some(uid) => Err(Status::permission_denied(format!(
                "user {uid} may not manage views of processes owned by user {owner_uid}"
            ))),
            None => Err(Status::unauthenticated("caller identity unknown")),
        }
    }
}

/// The real, effective, saved and filesystem uids of process `pid`.
fn process_uids(pid: u32) -> Option<[u32; 4]> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Uid:"))?;
    let mut ids = line
        .split_whitespace()
        .skip(1)
        .map(|u| u.parse::<u32>().ok());
    Some([ids.next()??, ids.next()??, ids.next()??, ids.next()??])
}

/// The parent of process `pid`.
fn parent_of(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields after its ')'.
    text.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Whether a caller may decide what a process with `uids` sees: root may;
/// anyone else only for processes that are wholly theirs (all four uids,
/// so not a setuid program they started).
fn may_manage(caller: &Caller, uids: [u32; 4]) -> bool {
    caller.via_token
        || caller.uid == Some(0)
        || caller.uid.is_some_and(|u| uids.iter().all(|id| *id == u))
}

/// The children of every thread of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    out
}

fn storage_status(e: StorageError) -> Status {
    match e {
        StorageError::UnknownTag(_)
        | StorageError::UnknownReference(_)
        | StorageError::UnknownObject(_)
        | StorageError::UnknownTagVersion { .. } => Status::not_found(e.to_string()),
        StorageError::AmbiguousDigest { .. }
        | StorageError::Spec(_)
        | StorageError::WrongKind { .. } => Status::invalid_argument(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

fn valid_runtime_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "service"
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

struct Handler(Arc<State>);

impl Handler {
    /// Move the descendants of `root` into the cgroup of `name`: those the
    /// caller may manage and that are in no runtime yet. Each is named by a
    /// pidfd and checked to still be a child of its parent, so a reused PID
    /// cannot drag in an unrelated process.
    fn adopt_descendants(&self, caller: &Caller, name: &str, root: u32) {
        let s = &self.0;
        let me = std::process::id();
        let mut todo = vec![root];
        while let Some(parent) = todo.pop() {
            for child in children(parent) {
                if child == me {
                    continue; // The service itself (a client may have started it).
                }
                let Ok(fd) = pidfd_open(child, false) else {
                    continue;
                };
                let ok = parent_of(child) == Some(parent)
                    && process_uids(child).is_some_and(|u| may_manage(caller, u))
                    && crate::route::cgroup_of(child)
                        .is_some_and(|c| !c.starts_with(s.cgroups.prefix()));
                if ok && !has_exited(&fd) && s.cgroups.add_process(name, child).is_ok() {
                    todo.push(child);
                }
            }
        }
    }
}

impl ControlHandler for Handler {
    fn mount(
        &self,
        caller: &Caller,
        req: proto::MountRequest,
    ) -> Result<proto::MountResponse, Status> {
        let s = &self.0;
        let pid = req.root_pid;
        if pid == 0 {
            return Err(Status::invalid_argument("root_pid must be a process id"));
        }
        let no_process = || Status::not_found(format!("no process {pid}"));
        let pidfd = pidfd_open(pid, false).map_err(|_| no_process())?;
        let uids = process_uids(pid).ok_or_else(no_process)?;
        if !may_manage(caller, uids) {
            return Err(Status::permission_denied(format!(
                "user {} may not manage views of process {pid} (user ids {uids:?})",
                caller.uid.map(|u| u.to_string()).unwrap_or_default()
            )));
        }
        let privileged = caller.via_token || caller.uid == Some(0);
        if !privileged
            && s.vfs
                .registry
                .list()
                .iter()
                .filter(|r| r.owner_uid == uids[0])
                .count()
                >= MAX_RUNTIMES_PER_USER
        {
            return Err(Status::resource_exhausted(format!(
                "user {} already has {MAX_RUNTIMES_PER_USER} runtimes",
                uids[0]
            )));
        }
        // References only: the service never reads files for a caller.
        let spec = EnvSpec::parse_references(&req.spec)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let digests = s.repo().resolve_spec(&spec).map_err(storage_status)?;
        let layers = s.repo().flatten(&digests).map_err(storage_status)?;
        let name = if req.runtime.is_empty() {
            spfs_storage::runtimes::new_runtime_name()
        } else if valid_runtime_name(&req.runtime) {
            req.runtime.clone()
        } else {
            return Err(Status::invalid_argument(format!(
                "invalid runtime name '{}'",
                req.runtime
            )));
        };
        if s.rooted_at(pid).is_some() {
            return Err(Status::already_exists(format!(
                "process {pid} already roots a runtime"
            )));
        }
        // 1. The view (the expensive, fallible part) before touching any process.
        let repo = s.repo().clone();
        let build_layers = layers.clone();
        let rt = s
            .vfs
            .registry
            .register(
                RuntimeSpec {
                    name: name.clone(),
                    spec: req.spec.clone(),
                    root_pid: pid,
                    owner_uid: uids[0],
                },
                layers.clone(),
                move || {
                    let tree = repo.merged_tree(&build_layers)?;
                    let mtime = build_layers
                        .iter()
                        .filter_map(|d| {
                            std::fs::metadata(repo.object_path(d))
                                .and_then(|m| m.modified())
                                .ok()
                        })
                        .max()
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    Ok::<_, StorageError>((tree, mtime))
                },
            )
            .map_err(|e| match e {
                spfs_vfs::registry::RegistryError::Build(e) => storage_status(e),
                spfs_vfs::registry::RegistryError::Exists(n) => {
                    Status::already_exists(format!("runtime '{n}' is already mounted"))
                }
                e => Status::internal(e.to_string()),
            })?;
        // 2. Its cgroup, watched before anything can join it.
        let undo = |status: Status| {
            s.vfs.registry.remove(&name);
            if let Some(w) = s.watcher.get() {
                w.unwatch(&name);
            }
            let _ = s.cgroups.remove(&name);
            status
        };
        s.cgroups.create(&name).map_err(|e| {
            undo(Status::internal(format!(
                "cannot create the runtime's cgroup: {e}"
            )))
        })?;
        if let Some(w) = s.watcher.get() {
            w.watch(&name).map_err(|e| {
                undo(Status::internal(format!(
                    "cannot watch the runtime's cgroup: {e}"
                )))
            })?;
        }
        // 3. The root process, then its descendants.
        s.cgroups.add_process(&name, pid).map_err(|e| {
            undo(Status::failed_precondition(format!(
                "cannot bind process {pid}: {e}"
            )))
        })?;
        self.adopt_descendants(caller, &name, pid);
        s.roots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), pidfd);
        s.router.forget_all();
        if !s.cgroups.is_populated(&name).unwrap_or(false) {
            s.drop_runtime(&name, "its processes exited while it was mounted");
            return Err(Status::not_found(format!("process {pid} exited")));
        }
        tracing::info!(runtime = %name, root_pid = pid, layers = layers.len(), view = rt.view.id, "view registered");
        Ok(proto::MountResponse {
            runtime: name,
            layers: layers.iter().map(|d| d.to_string()).collect(),
        })
    }

    fn unmount(
        &self,
        caller: &Caller,
        req: proto::UnmountRequest,
    ) -> Result<proto::UnmountResponse, Status> {
        let s = &self.0;
        let rt = if !req.runtime.is_empty() {
            s.vfs.registry.get(&req.runtime)
        } else {
            s.rooted_at(req.root_pid)
        };
        let rt = rt.ok_or_else(|| {
            Status::not_found(if req.runtime.is_empty() {
                format!("no view is rooted at process {}", req.root_pid)
            } else {
                format!("no runtime '{}' is mounted", req.runtime)
            })
        })?;
        s.authorize(caller, rt.owner_uid)?;
        s.drop_runtime(&rt.name, "unmounted by request");
        Ok(proto::UnmountResponse {
            runtime: rt.name.clone(),
        })
    }

    fn list(&self, caller: &Caller) -> Result<proto::ListResponse, Status> {
        // Users see their own runtimes; root sees all.
        let all = caller.via_token || caller.uid == Some(0);
        let runtimes = self
            .0
            .vfs
            .registry
            .list()
            .into_iter()
            .filter(|r| all || caller.uid == Some(r.owner_uid))
            .map(|r| proto::RuntimeInfo {
                runtime: r.name.clone(),
                root_pid: r.root_pid,
                spec: r.spec.clone(),
                layers: r.view.layers.iter().map(|d| d.to_string()).collect(),
                age_seconds: r.started.elapsed().as_secs(),
                requests: r.requests.load(Ordering::Relaxed),
                owner_uid: r.owner_uid,
            })
            .collect();
        Ok(proto::ListResponse { runtimes })
    }

    fn status(&self, _caller: &Caller) -> Result<proto::StatusResponse, Status> {
        let s = &self.0;
        Ok(proto::StatusResponse {
            pid: std::process::id(),
            mountpoint: s.mountpoint.display().to_string(),
            listen: s.listen.clone(),
            uptime_seconds: s.started.elapsed().as_secs(),
            runtimes: s.vfs.registry.len() as u32,
            requests: s.requests.load(Ordering::Relaxed),
            passthrough: s.passthrough.load(Ordering::Relaxed),
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
    }

    fn shutdown(&self, caller: &Caller) -> Result<(), Status> {
        let s = &self.0;
        if !caller.via_token && !matches!(caller.uid, Some(0)) && caller.uid != Some(s.service_uid)
        {
            return Err(Status::permission_denied(
                "only root or the service's user may stop the service",
            ));
        }
        tracing::info!("shutdown requested");
        s.shutdown.notify_one();
        Ok(())
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

/// Runtimes one (non-root) user may have at once: each holds a view.
const MAX_RUNTIMES_PER_USER: usize = 512;

/// How long stopping waits for clients still connected.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The lock that allows one service per mount point, whatever its address.
pub fn mountpoint_lock_path(mountpoint: &std::path::Path) -> PathBuf {
    let escaped: String = mountpoint
        .to_string_lossy()
        .chars()
        .map(|c| match c {
            '/' => "%2F".to_string(),
            '%' => "%25".to_string(),
            c => c.to_string(),
        })
        .collect();
    PathBuf::from("/run/spfs/mounts").join(format!("{escaped}.lock"))
}

/// Hold an exclusive lock on `path` for this process's life.
fn take_service_lock(path: &std::path::Path) -> Result<std::fs::File, ServiceError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(format!("cannot open lock {}", path.display())))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => {
            Err(ServiceError::AlreadyRunning(path.display().to_string()))
        }
        Err(e) => Err(io_err(format!("cannot lock {}", path.display()))(e.into())),
    }
}

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
    let lock_path = match &listen {
        Listen::Unix(p) => p.with_extension("lock"),
        Listen::Tcp(_) => config.vfs.token_file.with_extension("lock"),
    };
    let _lock = take_service_lock(&lock_path)?;
    let _mount_lock = take_service_lock(&mountpoint_lock_path(&config.vfs.mountpoint))?;
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
    // 2. cgroups, and this process out of any runtime.
    let cgroups =
        Cgroups::open(&config.vfs.cgroup_root).map_err(io_err("cannot set up runtime cgroups"))?;
    cgroups
        .adopt_self()
        .map_err(io_err("cannot move the service into its own cgroup"))?;
    for name in cgroups.existing() {
        if !cgroups.is_populated(&name).unwrap_or(true) {
            let _ = cgroups.remove(&name);
        }
    }
    // Records of runtimes of a previous service on this mount point are stale.
    for record in repo.runtimes()? {
        if record.mountpoint == config.vfs.mountpoint {
            let _ = repo.remove_runtime(&record.name);
        }
    }
    // 3. The mount.
    let mountpoint = config.vfs.mountpoint.clone();
    crate::mounts::prepare_mountpoint(&mountpoint).map_err(io_err(format!(
        "cannot prepare mount point {}",
        mountpoint.display()
    )))?;
    let vfs = Arc::new(Vfs::new(repo));
    let router = Arc::new(Router::new(
        cgroups.prefix().to_string(),
        vfs.registry.clone(),
    ));
    let host = FuseHost::new(
        vfs.clone(),
        router.clone(),
        config.vfs.passthrough,
        config.vfs.cache_opens,
    );
    let passthrough = host.passthrough_flag();
    let requests = host.requests.clone();
    let mut fuse_config = fuser::Config::default();
    fuse_config.mount_options = vec![
        fuser::MountOption::FSName("spfs".into()),
        fuser::MountOption::Subtype("spfs".into()),
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
        shutdown: tokio::sync::Notify::new(),
        service_uid: rustix::process::getuid().as_raw(),
        roots: Mutex::new(HashMap::new()),
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
    tracing::info!(mountpoint = %mountpoint.display(), listen = %state.listen, "VFS service ready");
    // 4. Serve until stopped. Connections in flight get a few seconds to
    //    finish; a client that never finishes cannot keep the service up.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_state = state.clone();
    let handler = Arc::new(Handler(state.clone()));
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
