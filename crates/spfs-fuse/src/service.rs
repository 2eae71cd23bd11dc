//! The VFS service's worker: the views, the control plane, cleanup.
//!
//! The keeper ([`crate::keeper`]) holds the locks, the control socket and
//! the mount, and starts a worker with both descriptors. The worker takes
//! over the runtimes of the mount's ledger ([`crate::ledger`]) whose
//! processes still live (all of them after a restart or a crash: the
//! kernel still holds their node ids), starts serving filesystem requests,
//! and only then control requests, so a client that connected early simply
//! waits for its first answer.
//!
//! It stops on SIGTERM or the Shutdown call (exit 0: the keeper unmounts;
//! the ledger and the runtime records stay, for the next service to take
//! over the runtimes still alive), or hands over on SIGUSR1 (exit
//! [`crate::keeper::EXIT_HANDED_OVER`]: a new worker takes over; see
//! [`crate::handover`]).

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
use crate::handover::InitRecord;
use crate::host::FuseHost;
use crate::keeper::Inherited;
use crate::ledger::{EditEntry, Entry, Ledger};
use crate::locks::LockError;
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
pub(crate) const READAHEAD_KB: u32 = 1024;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServiceError {
    let context = context.into();
    move |source| ServiceError::Io { context, source }
}

/// A runtime bound to a cgroup: its root process (none when a worker took
/// the runtime over after its root process exited) and the cgroup's path.
struct BoundRuntime {
    root: Option<Process>,
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
    /// Tests make a commit slow (`SPFS_VFS_TEST_COMMIT_DELAY_MS`), to
    /// restart the service during one.
    pub(crate) test_commit_delay: Option<std::time::Duration>,
    /// The service's own record of its runtimes, for the next worker.
    pub(crate) ledger: Arc<Ledger>,
    /// `vfs.max_entries_per_user`: the most tree entries one non-root
    /// user's runtimes may hold (see `Handler::check_entries`).
    pub(crate) max_entries_per_user: usize,
    /// The keeper's process id (0: none).
    keeper_pid: u32,
    /// Control requests that change runtimes (register, drop, edit,
    /// reset, commit) under way: a stopping worker waits for them, however
    /// long a commit takes, so that none is cut short.
    pub(crate) changes: crate::handover::Gate,
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
            .find(|(_, b)| {
                b.root
                    .as_ref()
                    .is_some_and(|r| r.pid == pid && !r.has_exited())
            })
            .and_then(|(name, _)| self.vfs.registry.get(name))
    }

    /// Remember that runtime `name` is bound to cgroup `cgroup`.
    pub(crate) fn bind_runtime(&self, name: &str, root: Option<Process>, cgroup: &str) {
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

    /// The keeper's process id (0: none).
    pub(crate) fn keeper_pid(&self) -> u32 {
        self.keeper_pid
    }

    /// Record runtime `name` in the ledger as it is now (its cgroup and
    /// root process as bound, or `cgroup` and `root_pid` before that).
    pub(crate) fn ledger_record(&self, name: &str, cgroup: &str, root_pid: u32) {
        let Some(rt) = self.vfs.registry.get(name) else {
            return;
        };
        let durable = self
            .durable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name);
        let entry = Entry {
            name: name.to_string(),
            view_id: rt.view.id,
            layers: rt.view.stack().iter().map(|d| d.to_string()).collect(),
            owner_uid: rt.owner_uid,
            bound: rt.view.bound,
            edit: rt.view.edit.as_ref().map(|ed| EditEntry {
                upper: ed.upper().path().to_path_buf(),
                owner_gid: ed.owner_gid(),
                writable: ed.is_writable(),
                inodes_below: ed.inodes_reserved(),
            }),
            cgroup: cgroup.to_string(),
            cgroup_id: crate::cgroup::cgroup_id(cgroup).unwrap_or(0),
            root_pid,
            durable,
            shared: Some(rt.view.shares.ids()),
            routed: rt.view.shares.routed_ids(),
        };
        if let Err(e) = self.ledger.record(entry) {
            tracing::error!(runtime = name, "cannot write the ledger: {e}");
        }
    }

    /// What records the inode numbers editable runtime `name` may hand
    /// out (see `Editable::reserve_inodes`).
    pub(crate) fn inode_reserve(&self, name: &str) -> Arc<spfs_vfs::edit::Reserve> {
        let (ledger, name) = (self.ledger.clone(), name.to_string());
        Arc::new(move |until| match ledger.reserve_inodes(&name, until) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(runtime = %name, "cannot write the ledger: {e}");
                false
            }
        })
    }

    /// The cgroup runtime `name` is bound to, and its root process's pid
    /// (0 when it is gone).
    fn binding(&self, name: &str) -> Option<(String, u32)> {
        self.bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|b| (b.cgroup.clone(), b.root.as_ref().map_or(0, |r| r.pid)))
    }

    /// Record runtime `name` again after a change of its view.
    pub(crate) fn ledger_update(&self, name: &str) {
        if let Some((cgroup, pid)) = self.binding(name) {
            self.ledger_record(name, &cgroup, pid);
        }
    }

    /// Take over the runtimes of the ledger whose processes still live
    /// (with the view ids the kernel knows, and the inode tables in
    /// `tables` for editable ones); drop the others, and the records of
    /// runtimes of this mount point that nothing serves.
    fn take_over(&self, tables: &[(String, Vec<u8>)]) {
        self.vfs
            .registry
            .skip_view_ids_to(self.ledger.view_ids_below());
        for entry in self.ledger.runtimes() {
            // Its own cgroup still (not one made again at its path), with
            // processes in it.
            let ours = crate::cgroup::cgroup_id(&entry.cgroup).ok() == Some(entry.cgroup_id)
                && entry.cgroup_id != 0;
            let alive = ours && self.cgroups.is_populated(&entry.cgroup).unwrap_or(false);
            let taken = alive
                && match self.take_over_one(&entry, tables) {
                    Ok(view) => {
                        tracing::info!(runtime = %entry.name, view, "runtime taken over");
                        true
                    }
                    Err(e) => {
                        tracing::error!(runtime = %entry.name, "cannot take the runtime over: {e}");
                        false
                    }
                };
            if taken {
                continue;
            }
            let _ = self.ledger.forget(&entry.name);
            match self.repo().read_runtime(&entry.name) {
                Ok(r) if !r.keep && r.owner_uid == entry.owner_uid => {
                    let _ = self.repo().remove_runtime(&entry.name);
                }
                _ => {}
            }
            if ours && !self.cgroups.is_populated(&entry.cgroup).unwrap_or(true) {
                let _ = self.cgroups.remove(&entry.cgroup);
            }
        }
        // Records of this mount point's runtimes that nothing serves now
        // go (a durable runtime's stays, to be run again). Their cgroups
        // are not touched: a record is its user's word, not the service's.
        for record in self.repo().runtimes().unwrap_or_default() {
            if record.mountpoint == self.mountpoint
                && self.vfs.registry.get(&record.name).is_none()
                && !record.keep
            {
                let _ = self.repo().remove_runtime(&record.name);
            }
        }
        // The service's own empty runtime cgroups under its root.
        for path in self.cgroups.under_root() {
            let serving = self
                .bound
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .any(|b| b.cgroup == path);
            if !serving && !self.cgroups.is_populated(&path).unwrap_or(true) {
                let _ = self.cgroups.remove(&path);
            }
        }
    }

    /// Drop the runtimes whose processes exited while they were taken over
    /// (their cgroups are watched from then on; they emptied before). Once
    /// the session serves: dropping may remount.
    fn drop_exited(&self) {
        for rt in self.vfs.registry.list() {
            self.drop_if_exited(&rt.name, "its processes exited while it was taken over");
        }
    }

    /// Drop runtime `name` now if its processes have all exited (the
    /// cgroup watcher may not have seen it yet); whether it did.
    pub(crate) fn drop_if_exited(&self, name: &str, why: &str) -> bool {
        match self.binding(name) {
            Some((cgroup, _)) if !self.cgroups.is_populated(&cgroup).unwrap_or(true) => {
                self.drop_runtime(name, why);
                true
            }
            _ => false,
        }
    }

    /// Take over one runtime of the ledger; its view's id.
    fn take_over_one(&self, e: &Entry, tables: &[(String, Vec<u8>)]) -> Result<u32, String> {
        let layers = e
            .layers
            .iter()
            .map(|d| spfs_model::Digest::parse(d).map_err(|err| err.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let spec = spfs_vfs::RuntimeSpec {
            name: e.name.clone(),
            root_pid: e.root_pid,
            owner_uid: e.owner_uid,
            bound: e.bound,
            edit: e.edit.as_ref().map(|ed| spfs_vfs::EditSpec {
                upper: ed.upper.clone(),
                owner_gid: ed.owner_gid,
                writable: ed.writable,
            }),
            view_id: Some(e.view_id),
            shared: Some(e.shared.clone().unwrap_or_default()),
            routed: e.routed.clone(),
        };
        let rt = self
            .vfs
            .registry
            .register(spec, layers.clone(), self.view_builder(layers))
            .map_err(|err| err.to_string())?;
        if let Some(ed) = &rt.view.edit {
            if let Some((_, table)) = tables.iter().find(|(n, _)| *n == e.name)
                && let Err(err) = ed.import_inodes(table)
            {
                tracing::warn!(runtime = %e.name, "{err}; names the kernel holds answer ENOENT");
            }
            // Above every number the kernel may hold (with no table, after
            // a crash: those it holds answer ENOENT, never another file).
            let floor = e.edit.as_ref().map_or(0, |ed| ed.inodes_below);
            if !ed.reserve_inodes(floor, self.inode_reserve(&e.name)) {
                self.vfs.registry.remove(&e.name);
                return Err("cannot write the ledger".into());
            }
            *self.editing.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        }
        let id = crate::cgroup::cgroup_id(&e.cgroup).map_err(|err| err.to_string())?;
        self.router.bind(&e.name, &e.cgroup, id);
        if let Some(w) = self.watcher.get() {
            w.watch(&e.name, &e.cgroup).map_err(|err| err.to_string())?;
        }
        if e.durable {
            self.durable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(e.name.clone());
        }
        // The root process, if it is still the one in the runtime's cgroup
        // (its PID may name another process now).
        let root = Process::open(e.root_pid).filter(|p| {
            p.cgroup_path()
                .is_some_and(|c| c == e.cgroup || c.starts_with(&format!("{}/", e.cgroup)))
        });
        self.bind_runtime(&e.name, root, &e.cgroup);
        Ok(rt.view.id)
    }

    /// What builds the merged tree of `layers` for a view.
    pub(crate) fn view_builder(
        &self,
        layers: Vec<spfs_model::Digest>,
    ) -> impl FnOnce() -> Result<(spfs_model::Tree, std::time::SystemTime), StorageError> + use<>
    {
        let repo = self.repo().clone();
        move || {
            let tree = repo.merged_tree(&layers)?;
            let mtime = layers
                .iter()
                .filter_map(|d| repo.object_mtime(d).ok())
                .max()
                .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
            Ok((tree, mtime))
        }
    }

    /// Make the mount writable if an editable runtime exists, read-only if
    /// none does.
    fn settle_read_only(&self) {
        let n = *self.editing.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = crate::mounts::set_read_only(&self.mountpoint, n == 0) {
            tracing::warn!("cannot set the mount's read-only state: {e}");
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
        if let Err(e) = self.ledger.forget(name) {
            tracing::error!(runtime = name, "cannot write the ledger: {e}");
        }
        // Whoever takes the runtime out of the registry decides what goes
        // with it: a drop racing another (the watcher's and a
        // registration's) finds it gone, and never reads its durability
        // after the first took it.
        if let Some(rt) = self.vfs.registry.remove(name) {
            let durable = self
                .durable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(name);
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
                w.unwatch(name, &b.cgroup);
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
            keeper_pid: self.keeper_pid,
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

/// Run the service: the keeper, which runs workers (see [`crate::keeper`]),
/// or the worker if this process is one. Blocks until stopped.
pub fn run(config: &Config, worker_args: Vec<String>) -> Result<(), ServiceError> {
    match Inherited::from_env()? {
        Some(inherited) => run_worker(config, inherited),
        None => crate::keeper::run(config, worker_args),
    }
}

/// How the worker stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Asked to stop: the keeper unmounts.
    Stop,
    /// Asked to hand over to a new worker.
    HandOver,
}

/// Serve as a worker until told to stop or hand over.
fn run_worker(config: &Config, inherited: Inherited) -> Result<(), ServiceError> {
    // A panic anywhere is a crash: the keeper replaces the worker (a FUSE
    // thread that unwound would leave its request unanswered for good).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("worker panicked: {info}");
        default_hook(info);
        std::process::abort();
    }));
    raise_open_file_limit();
    spfs_vfs::edit::kept::set_budget(config.vfs.kept_files as usize);
    let repo = match FsRepository::open(&config.storage.root) {
        Err(StorageError::NoRepository(_)) => FsRepository::create(&config.storage.root)?,
        other => other?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_err("cannot start the control plane"))?;
    // The signals that stop or hand over are caught from now on (one that
    // comes while this worker starts is acted on once it serves).
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        let _in = runtime.enter();
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::user_defined1()),
        )
    };
    let Inherited {
        fuse,
        listen_fd,
        listen,
        ready,
        takeover,
        keeper_pid,
    } = inherited;
    let token = match &listen {
        Listen::Tcp(_) => Some(
            spfs_control::read_token_file(&config.vfs.token_file).map_err(io_err(format!(
                "cannot read token file {}",
                config.vfs.token_file.display()
            )))?,
        ),
        Listen::Unix(_) => None,
    };
    let bound = {
        let _in = runtime.enter();
        spfs_control::adopt(listen, token, listen_fd)?
    };
    let metrics = crate::exporter::bind(&runtime, &config.vfs.metrics_listen)?;
    let cgroups =
        Cgroups::open(&config.vfs.cgroup_root).map_err(io_err("cannot set up runtime cgroups"))?;
    let mountpoint = config.vfs.mountpoint.clone();
    let state_dir = crate::ledger::state_dir(&mountpoint).map_err(io_err(format!(
        "cannot prepare the state directory of {}",
        mountpoint.display()
    )))?;
    let journal = |name: &str, len| {
        spfs_vfs::journal::Journal::open(&state_dir.join(name), len)
            .map_err(io_err(format!("cannot open the journal {name}")))
    };
    let vfs = Arc::new(Vfs::new(repo).with_read_through(
        spfs_remote::read_through(config),
        config.vfs.remote_ranged_reads,
    ));
    vfs.content
        .keep_in(journal("content.journal", spfs_vfs::content::KEY_BYTES)?);
    let router = Arc::new(Router::new(vfs.registry.clone()));
    let host = FuseHost::new(
        vfs.clone(),
        router.clone(),
        config.vfs.passthrough,
        config.vfs.cache_opens,
    );
    host.keep_backing_in(journal("backing.journal", crate::host::BACKING_RECORD)?);
    let passthrough = host.passthrough_flag();
    let notifier_slot = host.notifier_slot();
    let init_slot = host.init_record_slot();
    let gate = host.gate.clone();
    let requests = host.requests.clone();
    let stats = host.stats();
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
        test_commit_delay: std::env::var("SPFS_VFS_TEST_COMMIT_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis),
        ledger: Arc::new(Ledger::open(&state_dir)),
        max_entries_per_user: config.vfs.max_entries_per_user as usize,
        keeper_pid,
        changes: Default::default(),
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
    // The runtimes still alive, before any request is read: requests the
    // kernel sends again are answered from their views.
    let tables = match takeover {
        true => crate::handover::take_edit_tables(&state_dir),
        false => Vec::new(),
    };
    state.take_over(&tables);
    state.remove_stale_edits();
    // The FUSE session: a new connection's INIT, or the first worker's
    // replayed (see crate::handover).
    let mut fuse_config = fuser::Config::default();
    fuse_config.acl = fuser::SessionACL::All;
    fuse_config.n_threads = Some(config.vfs.threads as usize);
    // Every worker reads the keeper's descriptor, never a clone: a
    // clone's unanswered requests would fail when this process goes.
    fuse_config.clone_fd = false;
    let session = match takeover {
        false => {
            let session = fuser::Session::from_fd(host, fuse, fuser::SessionACL::All, fuse_config)
                .map_err(io_err("cannot start the FUSE session"))?;
            if let Some(record) = init_slot.get()
                && let Err(e) = record.save(&state_dir)
            {
                tracing::warn!("cannot keep the FUSE session's parameters: {e}");
            }
            session
        }
        true => {
            let record = InitRecord::load(&state_dir)
                .map_err(io_err("cannot read the FUSE session's parameters"))?;
            let session = crate::handover::adopt_session(&fuse, &record, |fd| {
                fuser::Session::from_fd(host, fd, fuser::SessionACL::All, fuse_config)
            })
            .map_err(io_err("cannot take over the FUSE session"))?;
            drop(fuse);
            crate::handover::resend_pending(&session)
                .map_err(io_err("cannot ask the kernel for pending requests"))?;
            session
        }
    };
    let background = session
        .spawn()
        .map_err(io_err("cannot start the FUSE workers"))?;
    let _ = state.notifier.set(background.notifier());
    let _ = notifier_slot.set(background.notifier());
    // The mount is writable while an editable runtime exists (changed only
    // now: a remount may need the session).
    state.drop_exited();
    state.settle_read_only();
    tracing::info!(mountpoint = %mountpoint.display(), listen = %state.listen, takeover, runtimes = state.vfs.registry.len(), "VFS service ready");
    let _ = rustix::io::write(&ready, b"r");
    drop(ready);
    // Serve until stopped. Connections in flight get a few seconds to
    // finish; a client that never finishes cannot keep the service up.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_state = state.clone();
    let handler = Arc::new(Handler(state.clone(), Default::default()));
    let how = Arc::new(Mutex::new(Stop::Stop));
    let how2 = how.clone();
    let state_for_drain = state.clone();
    // When changes under way must have finished: CHANGES_TIMEOUT after the
    // stop was asked (set then, if the control plane had to drain).
    let changes_by: Arc<OnceLock<Instant>> = Arc::default();
    let changes_by2 = changes_by.clone();
    if let Some(listener) = metrics {
        let s = state.clone();
        let render = move || spfs_control::metrics::render(&s.status());
        runtime.spawn(crate::exporter::serve(listener, Arc::new(render)));
    }
    let served = runtime.block_on(async move {
        tokio::spawn(async move {
            let reason = match signals {
                (Ok(mut term), Ok(mut usr1)) => tokio::select! {
                    _ = stop_state.shutdown.notified() => "shutdown requested",
                    _ = term.recv() => "SIGTERM received",
                    _ = tokio::signal::ctrl_c() => "SIGINT received",
                    _ = usr1.recv() => {
                        *how2.lock().unwrap_or_else(|p| p.into_inner()) = Stop::HandOver;
                        "handing over to a new worker"
                    }
                },
                _ => {
                    stop_state.shutdown.notified().await;
                    "shutdown requested"
                }
            };
            tracing::info!("{reason}; stopping");
            let _ = stop_tx.send(true);
        });
        let mut stopped = stop_rx.clone();
        let mut drained = stop_rx;
        let busy = state_for_drain;
        let serve = bound.serve(handler, async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
        tokio::pin!(serve);
        tokio::select! {
            r = &mut serve => r,
            _ = async {
                let _ = drained.wait_for(|s| *s).await;
                let until = *changes_by2.get_or_init(|| Instant::now() + CHANGES_TIMEOUT);
                tokio::time::sleep(DRAIN_TIMEOUT).await;
                // A change under way (a long commit) is answered first.
                while busy.changes.busy() && Instant::now() < until {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            } => {
                tracing::warn!("clients did not finish within {DRAIN_TIMEOUT:?}; stopping anyway");
                Ok(())
            }
        }
    });
    // Changes under way finish (a commit may take long). A change that
    // arrives now is never started: its client's connection drops and it
    // reports the error (docs/service.md, Limits).
    let until = *changes_by.get_or_init(|| Instant::now() + CHANGES_TIMEOUT);
    if !state
        .changes
        .close(until.saturating_duration_since(Instant::now()))
    {
        tracing::warn!(
            "control requests still under way after {CHANGES_TIMEOUT:?}; stopping anyway"
        );
    }
    // Stop between requests: those under way are answered, those read
    // from now on are left for the next worker (the kernel sends them
    // again). Runtimes, records and the ledger stay.
    if !gate.close(GATE_TIMEOUT) {
        tracing::warn!("requests still under way after {GATE_TIMEOUT:?}; stopping anyway");
    }
    let how = *how.lock().unwrap_or_else(|p| p.into_inner());
    if how == Stop::HandOver {
        let tables: Vec<(String, Vec<u8>)> = state
            .vfs
            .registry
            .list()
            .iter()
            .filter_map(|rt| Some((rt.name.clone(), rt.view.edit.as_ref()?.export_inodes())))
            .collect();
        if let Err(e) = crate::handover::write_edit_tables(&state_dir, &tables) {
            tracing::error!("cannot keep the inode tables of editable views: {e}");
        }
        tracing::info!("handed over");
        std::process::exit(crate::keeper::EXIT_HANDED_OVER);
    }
    served?;
    tracing::info!("worker stopped");
    // Exit now: the FUSE threads are parked or reading.
    std::process::exit(0);
}

/// How long a stopping worker waits for changes of runtimes under way.
const CHANGES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a stopping worker waits for requests under way.
const GATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
