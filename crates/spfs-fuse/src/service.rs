//! The VFS service process: one FUSE mount, the control plane, cleanup.
//!
//! Start-up order makes starting race-free: the control socket is bound
//! first (a second service fails there and exits), then a stale mount is
//! cleared and the filesystem mounted, and only then are requests served, so
//! a client that connected early simply waits for its first answer.
//! SIGTERM, SIGINT or the Shutdown call stop the service and unmount.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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
}

impl State {
    fn repo(&self) -> &FsRepository {
        self.vfs.repo()
    }

    /// Drop a runtime: its view, its record and (once empty) its cgroup.
    fn drop_runtime(&self, name: &str, why: &str) {
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

/// The real uid of process `pid`.
fn process_uid(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
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
        let pidfd =
            pidfd_open(pid, false).map_err(|_| Status::not_found(format!("no process {pid}")))?;
        let owner =
            process_uid(pid).ok_or_else(|| Status::not_found(format!("no process {pid}")))?;
        s.authorize(caller, owner)?;
        let spec =
            EnvSpec::parse(&req.spec).map_err(|e| Status::invalid_argument(e.to_string()))?;
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
        if s.vfs.registry.get(&name).is_some() {
            return Err(Status::already_exists(format!(
                "runtime '{name}' is already mounted"
            )));
        }
        if s.vfs.registry.by_root_pid(pid).is_some() {
            return Err(Status::already_exists(format!(
                "process {pid} already roots a runtime"
            )));
        }
        s.cgroups
            .create(&name)
            .map_err(|e| Status::internal(format!("cannot create the runtime's cgroup: {e}")))?;
        let fail = |status: Status| {
            let _ = s.cgroups.remove(&name);
            status
        };
        // The root and any children it already has join the cgroup.
        // (Never the service itself, which a client may have started.)
        let me = std::process::id();
        let mut todo = vec![pid];
        while let Some(p) = todo.pop() {
            if p == me {
                continue;
            }
            if let Err(e) = s.cgroups.add_process(&name, p) {
                if p == pid {
                    return Err(fail(Status::failed_precondition(format!(
                        "cannot bind process {pid}: {e}"
                    ))));
                }
                continue;
            }
            todo.extend(children(p));
        }
        if has_exited(&pidfd) {
            return Err(fail(Status::not_found(format!("process {pid} exited"))));
        }
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
                    owner_uid: owner,
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
            .map_err(|e| {
                let status = match e {
                    spfs_vfs::registry::RegistryError::Build(e) => storage_status(e),
                    e => Status::internal(e.to_string()),
                };
                fail(status)
            })?;
        s.router.forget_all();
        if let Some(w) = s.watcher.get() {
            match w.watch(&name) {
                Ok(true) => {}
                Ok(false) => s.drop_runtime(&name, "its processes exited before it was watched"),
                Err(e) => tracing::warn!(runtime = %name, "cannot watch cgroup: {e}"),
            }
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
            s.vfs.registry.by_root_pid(req.root_pid)
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

    fn list(&self, _caller: &Caller) -> Result<proto::ListResponse, Status> {
        let runtimes = self
            .0
            .vfs
            .registry
            .list()
            .into_iter()
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
    let token = match &listen {
        Listen::Tcp(_) => Some(
            spfs_control::create_token_file(&config.vfs.token_file).map_err(io_err(format!(
                "cannot write token file {}",
                config.vfs.token_file.display()
            )))?,
        ),
        Listen::Unix(_) => None,
    };
    // 1. One service per control address: a second one stops here. The
    //    lock is released by the kernel if this process dies.
    let lock_path = match &listen {
        Listen::Unix(p) => p.with_extension("lock"),
        Listen::Tcp(_) => config.vfs.token_file.with_extension("lock"),
    };
    let _lock = take_service_lock(&lock_path)?;
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
    let host = FuseHost::new(vfs.clone(), router.clone(), config.vfs.passthrough);
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
    });
    let weak = Arc::downgrade(&state);
    let watcher = Watcher::start(
        cgroups,
        Arc::new(move |name: &str| {
            if let Some(s) = weak.upgrade() {
                s.drop_runtime(name, "its process tree exited");
            }
        }),
    )
    .map_err(io_err("cannot watch runtime cgroups"))?;
    let _ = state.watcher.set(watcher);
    tracing::info!(mountpoint = %mountpoint.display(), listen = %state.listen, "VFS service ready");
    // 4. Serve until stopped.
    let stop_state = state.clone();
    let stopped = async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return stop_state.shutdown.notified().await,
            };
        tokio::select! {
            _ = stop_state.shutdown.notified() => {}
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    };
    let served = runtime.block_on(bound.serve(Arc::new(Handler(state.clone())), stopped));
    // 5. Stop: drop every view and record, unmount, remove empty cgroups.
    for rt in state.vfs.registry.list() {
        state.drop_runtime(&rt.name, "the service is stopping");
    }
    drop(background);
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted; VFS service stopped");
    served?;
    Ok(())
}
