//! The control plane's requests, answered for one caller: registering a
//! process tree's view (binding it to a runtime cgroup), dropping it,
//! listing, status and shutdown.
//!
//! What a registration may do, whoever asks: the root process (and each of
//! its existing children that is adopted) is named by a pidfd from the
//! moment its PID arrives; the caller must own it wholly (all four user
//! ids) unless the caller is root; it is moved one level down, into a new
//! child of the cgroup it is in, and nowhere else (see [`crate::cgroup`]);
//! and it is pinned for the move so that the PID written can only be its
//! own. The view is built before any process is touched.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use spfs_control::proto;
use spfs_control::{Caller, ControlHandler};
use spfs_model::EnvSpec;
use spfs_storage::StorageError;
use spfs_vfs::RuntimeSpec;
use tonic::Status;

use crate::cgroup::MoveError;
use crate::process::{PinError, Process};
use crate::service::State;

/// The longest spec text a registration may carry.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// The most references a registration's spec may name.
pub const MAX_SPEC_ITEMS: usize = 1000;
/// Runtimes one (non-root) user may have at once: each holds a view.
pub const MAX_RUNTIMES_PER_USER: usize = 512;

/// Whether a caller may decide what a process with `uids` sees: root may;
/// anyone else only for processes that are wholly theirs (all four uids,
/// so not a setuid program they started).
fn may_manage(caller: &Caller, uids: [u32; 4]) -> bool {
    privileged(caller) || caller.uid.is_some_and(|u| uids.iter().all(|id| *id == u))
}

fn privileged(caller: &Caller) -> bool {
    caller.via_token || caller.uid == Some(0)
}

/// The children of every thread of `pid` (candidates only: each is then
/// checked through its own pidfd).
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
        | StorageError::WrongKind { .. }
        | StorageError::TooDeep(_) => Status::invalid_argument(e.to_string()),
        StorageError::StackTooLarge { .. } => Status::resource_exhausted(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

fn move_status(e: MoveError) -> Status {
    match e {
        MoveError::Pin(PinError::Exited(pid)) => Status::not_found(format!("process {pid} exited")),
        e => Status::failed_precondition(e.to_string()),
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

/// What a failed registration must take back: only what it made itself.
struct Undo<'a> {
    state: &'a State,
    name: &'a str,
    cgroup: Option<String>,
    /// An upper area this registration made (it goes with it).
    area: Option<std::path::PathBuf>,
    /// An editable runtime was counted ([`State::editing_begins`]).
    editing: bool,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let s = self.state;
        s.router.unbind(self.name);
        s.vfs.registry.remove(self.name);
        if !self.name.is_empty() {
            let _ = s.ledger.forget(self.name);
            s.durable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(self.name);
        }
        if self.editing {
            s.editing_ends();
        }
        if let Some(area) = &self.area {
            let _ = std::fs::remove_dir_all(area);
        }
        if let Some(path) = &self.cgroup {
            if let Some(w) = s.watcher.get() {
                w.unwatch(self.name, path);
            }
            let _ = s.cgroups.remove(path);
        }
    }
}

/// Registrations the service works on at once; more wait their turn. Each
/// may take up to a second when its process is slow to stop after the move
/// (see `Process::pinned`), or wait for `spfs clean` (the repository's
/// garbage-collection lock), and every request of the control plane shares
/// one pool of threads: this keeps `status`, `list` and `unmount`
/// answering whatever registrations users start.
const CONCURRENT_REGISTRATIONS: usize = 16;
/// Of those, what one user's take at most (so that one user's slow
/// registrations leave the others room).
const REGISTRATIONS_PER_USER: usize = 4;
/// How long a registration waits for its turn before it is refused.
const REGISTRATION_WAIT: Duration = Duration::from_secs(60);

/// A counting semaphore for registrations, with a share per user.
#[derive(Default)]
pub(crate) struct Slots {
    busy: std::sync::Mutex<SlotsBusy>,
    freed: std::sync::Condvar,
}

#[derive(Default)]
struct SlotsBusy {
    total: usize,
    by_user: HashMap<u32, usize>,
}

struct Slot<'a>(&'a Slots, u32);

impl Slots {
    /// A registration slot for user `uid`, once one is free (and the user
    /// holds fewer than [`REGISTRATIONS_PER_USER`]); refused after
    /// [`REGISTRATION_WAIT`].
    fn take(&self, uid: u32) -> Result<Slot<'_>, Status> {
        let deadline = std::time::Instant::now() + REGISTRATION_WAIT;
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let mine = busy.by_user.get(&uid).copied().unwrap_or(0);
            if busy.total < CONCURRENT_REGISTRATIONS && mine < REGISTRATIONS_PER_USER {
                break;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(Status::unavailable(format!(
                    "the VFS service is busy registering runtimes ({} at once, {mine} of them \
                     user {uid}'s); try again",
                    busy.total
                )));
            }
            busy = self
                .freed
                .wait_timeout(busy, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        busy.total += 1;
        *busy.by_user.entry(uid).or_default() += 1;
        Ok(Slot(self, uid))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut busy = self.0.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.total -= 1;
        if let Some(n) = busy.by_user.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                busy.by_user.remove(&self.1);
            }
        }
        // Waiters differ in what they wait for (a slot, or their share):
        // all look again.
        self.0.freed.notify_all();
    }
}

pub struct Handler(pub(crate) Arc<State>, pub(crate) Slots);

impl Handler {
    /// Move the existing descendants of `root` along: those still in the
    /// cgroup `from` the root was in, that the caller may manage and whose
    /// parent is who it was.
    fn adopt_descendants(&self, caller: &Caller, root: u32, from: u64, path: &str, id: u64) {
        let s = &self.0;
        let me = std::process::id();
        let mut todo = vec![root];
        while let Some(parent) = todo.pop() {
            for child in children(parent) {
                let Some(mut p) = Process::open(child) else {
                    continue;
                };
                let ok = p.info.tgid != me
                    && p.info.ppid == parent
                    && p.info.cgroup_id == from
                    && may_manage(caller, p.info.uids);
                if ok && s.cgroups.move_process(&mut p, from, path, id).is_ok() {
                    todo.push(child);
                }
            }
        }
    }

    fn check_spec(text: &str) -> Result<EnvSpec, Status> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(Status::invalid_argument(format!(
                "the spec is {} bytes; at most {MAX_SPEC_BYTES} are accepted",
                text.len()
            )));
        }
        // References only: the service never reads files for a caller.
        let spec =
            EnvSpec::parse_references(text).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if spec.items.len() > MAX_SPEC_ITEMS {
            return Err(Status::invalid_argument(format!(
                "the spec names {} references; at most {MAX_SPEC_ITEMS} are accepted",
                spec.items.len()
            )));
        }
        Ok(spec)
    }

    /// Refuse a registration after which the trees of `owner`'s runtimes
    /// would hold more than `vfs.max_entries_per_user` entries (root's
    /// requests are not bounded). Called once the runtime is registered,
    /// so that registrations under way at once each count the others (one
    /// may be refused needlessly, none gets past the bound); the runtime
    /// is then taken back.
    fn check_entries(&self, caller: &Caller, owner: u32) -> Result<(), Status> {
        let limit = self.0.max_entries_per_user;
        if privileged(caller) {
            return Ok(());
        }
        let held = self.0.vfs.registry.entries_held_by(owner);
        if held <= limit {
            return Ok(());
        }
        Err(Status::resource_exhausted(format!(
            "user {owner}'s runtimes would hold {held} entries of views; at most {limit} \
             are allowed per user (vfs.max_entries_per_user)"
        )))
    }
}

impl Handler {
    /// The editable runtime `name`, if the caller may manage it.
    fn editable_runtime(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<Arc<spfs_vfs::Runtime>, Status> {
        let rt = self
            .0
            .vfs
            .registry
            .get(name)
            .ok_or_else(|| Status::not_found(format!("no runtime '{name}' is mounted")))?;
        if !privileged(caller) && caller.uid != Some(rt.owner_uid) {
            return Err(Status::permission_denied(format!(
                "runtime '{name}' belongs to user {}",
                rt.owner_uid
            )));
        }
        if rt.view.edit.is_none() {
            return Err(Status::failed_precondition(format!(
                "runtime '{name}' is not editable (start it with `spfs run --edit`)"
            )));
        }
        Ok(rt)
    }
}

impl Handler {
    /// Remove the kept upper area of durable runtime `name`, which is not
    /// running (`None`: it has none).
    fn remove_kept(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<Option<proto::UnmountResponse>, Status> {
        let s = &self.0;
        if !valid_runtime_name(name) {
            return Ok(None);
        }
        let upper = s
            .upper_path(name)
            .map_err(|e| Status::internal(format!("cannot find the edits of {name}: {e}")))?;
        if !upper.exists() {
            return Ok(None);
        }
        // The edits' owner, as the area says (a record anyone may write).
        let owner = area_owner(&upper);
        if !privileged(caller) && (owner.is_none() || caller.uid != owner) {
            return Err(Status::permission_denied(format!(
                "the kept edits of runtime '{name}' are not user {}'s",
                caller.uid.map(|u| u.to_string()).unwrap_or_default()
            )));
        }
        std::fs::remove_dir_all(&upper)
            .map_err(|e| Status::internal(format!("cannot remove the edits of {name}: {e}")))?;
        tracing::info!(runtime = name, "kept edits removed");
        Ok(Some(proto::UnmountResponse {
            runtime: name.to_string(),
        }))
    }
}

/// The xattr of an upper area naming the user whose edits it holds.
const AREA_OWNER: &str = spfs_vfs::edit::upper::OWNER;

/// The user whose edits the upper area at `path` holds.
fn area_owner(path: &std::path::Path) -> Option<u32> {
    let mut buf = [0u8; 16];
    let n = rustix::fs::lgetxattr(path, AREA_OWNER, &mut buf).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.parse().ok()
}

/// Make the upper area at `path` for `uid`'s edits.
fn make_area(path: &std::path::Path, uid: u32) -> std::io::Result<()> {
    std::fs::create_dir(path)?;
    rustix::fs::lsetxattr(
        path,
        AREA_OWNER,
        uid.to_string().as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )?;
    Ok(())
}

impl ControlHandler for Handler {
    fn mount(
        &self,
        caller: &Caller,
        req: proto::MountRequest,
    ) -> Result<proto::MountResponse, Status> {
        // A stopping worker lets this finish first (see `State::changes`).
        let _in = self.0.changes.enter();
        let s = &self.0;
        let pid = req.root_pid;
        if pid == 0 {
            return Err(Status::invalid_argument("root_pid must be a process id"));
        }
        let spec = Self::check_spec(&req.spec)?;
        // From here on the process is named by its pidfd.
        let no_process = || Status::not_found(format!("no process {pid}"));
        let mut root = Process::open(pid).ok_or_else(no_process)?;
        let uids = root.info.uids;
        if !may_manage(caller, uids) {
            return Err(Status::permission_denied(format!(
                "user {} may not manage views of process {pid} (user ids {uids:?})",
                caller.uid.map(|u| u.to_string()).unwrap_or_default()
            )));
        }
        if root.info.tgid == std::process::id() || root.info.tgid == s.keeper_pid() {
            return Err(Status::invalid_argument(format!(
                "process {pid} is the VFS service itself"
            )));
        }
        if !privileged(caller)
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
        // Its turn, once it is known to be the caller's to make.
        let _slot = self.1.take(uids[0])?;
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
        // A name with a record (another runtime's, live or not) is taken:
        // dropping this runtime would remove that record. Resuming a kept
        // runtime takes its own name back: the record must be the owner's.
        // (A runtime whose processes all exited a moment ago, before the
        // cgroup watcher saw it, goes now: running a durable runtime
        // again right after it ended finds its name free.)
        if s.vfs.registry.get(&name).is_some() && !s.drop_if_exited(&name, "its processes exited") {
            return Err(Status::already_exists(format!(
                "runtime name '{name}' is taken"
            )));
        }
        match s.repo().read_runtime(&name) {
            Ok(r) if req.resume && r.owner_uid == uids[0] => {}
            Ok(_) => {
                return Err(Status::already_exists(format!(
                    "runtime name '{name}' is taken"
                )));
            }
            Err(_) => {}
        }
        let mut made_area = None;
        let edit = match req.edit || req.resume {
            false => None,
            true => {
                let upper = s.upper_path(&name).map_err(|e| {
                    Status::internal(format!("cannot prepare the upper area of {name}: {e}"))
                })?;
                match (req.resume, upper.exists()) {
                    (true, false) => {
                        return Err(Status::not_found(format!(
                            "runtime '{name}' has no kept edits to resume"
                        )));
                    }
                    // Kept edits are their owner's alone, whatever record
                    // names them (anyone may write a record of a free name).
                    (true, true) if area_owner(&upper) != Some(uids[0]) => {
                        return Err(Status::permission_denied(format!(
                            "the kept edits of runtime '{name}' are not user {}'s",
                            uids[0]
                        )));
                    }
                    (false, true) => {
                        return Err(Status::already_exists(format!(
                            "runtime '{name}' has kept edits: run it again with \
                             `spfs run --rerun {name}` or remove it with `spfs runtime rm {name}`"
                        )));
                    }
                    (false, false) => {
                        make_area(&upper, uids[0]).map_err(|e| {
                            Status::internal(format!("cannot make the upper area of {name}: {e}"))
                        })?;
                        made_area = Some(upper.clone());
                    }
                    _ => {}
                }
                Some(spfs_vfs::EditSpec {
                    upper,
                    // The group its files are made with (read through the
                    // pidfd, as everything of the process is).
                    owner_gid: root.info.egid,
                    writable: true,
                })
            }
        };
        if s.rooted_at(pid).is_some() {
            return Err(Status::already_exists(format!(
                "process {pid} already roots a runtime"
            )));
        }
        // A runtime nested in a bound one sees its parent's view mounted
        // over the mount point, which routing cannot change: it must be
        // bound too.
        let from = root.info.cgroup_id;
        let current = root
            .cgroup_path()
            .ok_or_else(|| Status::not_found(format!("process {pid} exited")))?;
        if let Some(outer) = s.router.runtime_of_cgroup(from, &current)
            && outer.view.bound
            && !req.bind
        {
            return Err(Status::failed_precondition(format!(
                "process {pid} is in runtime {}, whose view is bound: a runtime nested in it \
                 must be bound too (run it with `spfs run` and vfs.bind_views = \"auto\")",
                outer.name
            )));
        }
        // The repository's garbage-collection lock, shared from resolving
        // (which may copy objects in from remotes) until the view is
        // registered and so keeps its layers (docs/clean.md).
        let gc_guard = s.repo().write_guard().map_err(storage_status)?;
        let digests = s.vfs.resolve_spec(&spec).map_err(storage_status)?;
        let layers = s.repo().flatten(&digests).map_err(storage_status)?;
        if let Some(delay) = s.test_register_delay {
            std::thread::sleep(delay);
        }
        // 0. An editable view needs a writable mount.
        let editing = edit.is_some();
        if editing {
            s.editing_begins()
                .map_err(|e| Status::internal(format!("cannot make the mount writable: {e}")))?;
        }
        let mut early = Undo {
            state: s,
            name: "",
            cgroup: None,
            area: made_area.clone(),
            editing,
            armed: true,
        };
        // 1. The view (the expensive, fallible part) before touching any
        //    process; its id reserved in the ledger first (a new worker
        //    must never hand it out again).
        s.ledger
            .reserve_view_ids(s.vfs.registry.last_view_id())
            .map_err(|e| Status::internal(format!("cannot write the service's ledger: {e}")))?;
        let rt = s
            .vfs
            .registry
            .register(
                RuntimeSpec {
                    name: name.clone(),
                    root_pid: pid,
                    owner_uid: uids[0],
                    bound: req.bind,
                    edit,
                    view_id: None,
                    shared: None,
                    routed: Vec::new(),
                },
                layers.clone(),
                s.view_builder(layers.clone()),
            )
            .map_err(|e| match e {
                spfs_vfs::registry::RegistryError::Build(e) => storage_status(e),
                spfs_vfs::registry::RegistryError::Exists(n) => {
                    Status::already_exists(format!("runtime name '{n}' is taken"))
                }
                e @ spfs_vfs::registry::RegistryError::Upper { .. } => {
                    Status::internal(e.to_string())
                }
                e => Status::internal(e.to_string()),
            })?;
        drop(gc_guard);
        early.armed = false;
        let mut undo = Undo {
            state: s,
            name: &name,
            cgroup: None,
            area: made_area,
            editing,
            armed: true,
        };
        self.check_entries(caller, uids[0])?;
        // 2. Its cgroup, a child of the root process's own, watched and
        //    routed before any process joins it.
        let path = s.cgroups.runtime_path(&current, &name);
        let id = s.cgroups.create(&path).map_err(|e| {
            Status::failed_precondition(format!("cannot create the runtime's cgroup {path}: {e}"))
        })?;
        undo.cgroup = Some(path.clone());
        if let Some(w) = s.watcher.get() {
            w.watch(&name, &path)
                .map_err(|e| Status::internal(format!("cannot watch the runtime's cgroup: {e}")))?;
        }
        s.router.bind(&name, &path, id);
        if req.keep || req.resume {
            s.durable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.clone());
        }
        // In the ledger before any process joins: a worker that dies from
        // here on leaves its successor what it needs to take over.
        if let Some(ed) = &rt.view.edit
            && !ed.reserve_inodes(0, s.inode_reserve(&name))
        {
            return Err(Status::internal("cannot write the service's ledger"));
        }
        s.ledger_record(&name, &path, pid);
        // 3. The root process, then its descendants.
        s.cgroups
            .move_process(&mut root, from, &path, id)
            .map_err(move_status)?;
        self.adopt_descendants(caller, pid, from, &path, id);
        undo.armed = false;
        drop(undo);
        s.bind_runtime(&name, Some(root), &path);
        if !s.cgroups.is_populated(&path).unwrap_or(false) {
            s.drop_runtime(&name, "its processes exited while it was mounted");
            return Err(Status::not_found(format!("process {pid} exited")));
        }
        tracing::info!(runtime = %name, root_pid = pid, cgroup = %path, layers = layers.len(), view = rt.view.id, bound = req.bind, "view registered");
        Ok(proto::MountResponse {
            runtime: name,
            layers: layers.iter().map(|d| d.to_string()).collect(),
            cgroup: path,
        })
    }

    fn unmount(
        &self,
        caller: &Caller,
        req: proto::UnmountRequest,
    ) -> Result<proto::UnmountResponse, Status> {
        // A stopping worker lets this finish first (see `State::changes`).
        let _in = self.0.changes.enter();
        let s = &self.0;
        let rt = if !req.runtime.is_empty() {
            s.vfs.registry.get(&req.runtime)
        } else {
            s.rooted_at(req.root_pid)
        };
        if rt.is_none() && !req.runtime.is_empty() {
            // A durable runtime that is not running: its kept edits go.
            if let Some(done) = self.remove_kept(caller, &req.runtime)? {
                return Ok(done);
            }
        }
        let rt = rt.ok_or_else(|| {
            Status::not_found(if req.runtime.is_empty() {
                format!("no view is rooted at process {}", req.root_pid)
            } else {
                format!("no runtime '{}' is mounted", req.runtime)
            })
        })?;
        match caller.uid {
            _ if privileged(caller) => {}
            Some(uid) if uid == rt.owner_uid => {}
            Some(uid) => {
                return Err(Status::permission_denied(format!(
                    "user {uid} may not manage views of processes owned by user {}",
                    rt.owner_uid
                )));
            }
            None => return Err(Status::unauthenticated("caller identity unknown")),
        }
        // Removing a runtime by request removes its kept edits too.
        s.durable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&rt.name);
        s.drop_runtime(&rt.name, "unmounted by request");
        // Its tree may have exited meanwhile, its view dropped as a durable
        // one's (edits kept): removed by name, the edits go all the same.
        if !req.runtime.is_empty() {
            self.remove_kept(caller, &rt.name)?;
        }
        Ok(proto::UnmountResponse {
            runtime: rt.name.clone(),
        })
    }

    fn list(&self, caller: &Caller) -> Result<proto::ListResponse, Status> {
        // Users see their own runtimes; root sees all.
        let all = privileged(caller);
        let runtimes = self
            .0
            .vfs
            .registry
            .list()
            .into_iter()
            .filter(|r| all || caller.uid == Some(r.owner_uid))
            .map(|r| {
                let stack = r.view.stack();
                proto::RuntimeInfo {
                    runtime: r.name.clone(),
                    root_pid: r.root_pid,
                    spec: stack
                        .iter()
                        .map(|d| d.to_string()[..12].to_string())
                        .collect::<Vec<_>>()
                        .join("+"),
                    layers: stack.iter().map(|d| d.to_string()).collect(),
                    age_seconds: r.started.elapsed().as_secs(),
                    requests: r.requests.load(Ordering::Relaxed),
                    owner_uid: r.owner_uid,
                    bound: r.view.bound,
                    editable: r.view.edit.is_some(),
                    writable: r.view.edit.as_ref().is_some_and(|e| e.is_writable()),
                }
            })
            .collect();
        Ok(proto::ListResponse { runtimes })
    }

    fn status(&self, _caller: &Caller) -> Result<proto::StatusResponse, Status> {
        Ok(self.0.status())
    }

    fn shutdown(&self, caller: &Caller) -> Result<(), Status> {
        let s = &self.0;
        if !privileged(caller) && caller.uid != Some(s.service_uid) {
            return Err(Status::permission_denied(
                "only root or the service's user may stop the service",
            ));
        }
        tracing::info!("shutdown requested");
        s.shutdown.notify_one();
        Ok(())
    }

    fn edit(
        &self,
        caller: &Caller,
        req: proto::EditRequest,
    ) -> Result<proto::EditResponse, Status> {
        // A stopping worker lets this finish first (see `State::changes`).
        let _in = self.0.changes.enter();
        let rt = self.editable_runtime(caller, &req.runtime)?;
        if let Some(ed) = &rt.view.edit {
            ed.set_writable(req.on);
        }
        self.0.ledger_update(&rt.name);
        tracing::info!(runtime = %rt.name, on = req.on, "editing switched");
        Ok(proto::EditResponse {})
    }

    fn reset(
        &self,
        caller: &Caller,
        req: proto::ResetRequest,
    ) -> Result<proto::ResetResponse, Status> {
        // A stopping worker lets this finish first (see `State::changes`).
        let _in = self.0.changes.enter();
        let rt = self.editable_runtime(caller, &req.runtime)?;
        let paths: Vec<Vec<u8>> = req.paths.iter().map(|p| p.as_bytes().to_vec()).collect();
        if paths
            .iter()
            .any(|p| p.split(|b| *b == b'/').any(|c| c == b".."))
        {
            return Err(Status::invalid_argument(
                "a path to reset may not contain '..'",
            ));
        }
        let stale = self
            .0
            .vfs
            .reset(&rt.view, &paths)
            .map_err(|e| Status::internal(format!("cannot reset {}: {e}", rt.name)))?;
        self.0.invalidate(&stale);
        tracing::info!(runtime = %rt.name, paths = paths.len(), "edits reset");
        Ok(proto::ResetResponse {})
    }

    fn commit(
        &self,
        caller: &Caller,
        req: proto::CommitRequest,
    ) -> Result<proto::CommitResponse, Status> {
        // A stopping worker lets this finish first (see `State::changes`).
        let _in = self.0.changes.enter();
        let rt = self.editable_runtime(caller, &req.runtime)?;
        if let Some(delay) = self.0.test_commit_delay {
            std::thread::sleep(delay);
        }
        let committed = self.0.vfs.commit_edits(&rt.view).map_err(|e| {
            Status::internal(format!("cannot commit the edits of {}: {e}", rt.name))
        })?;
        let Some(c) = committed else {
            // Nothing to commit: the stack as it is.
            return Ok(proto::CommitResponse {
                stack: rt.view.stack().iter().map(|d| d.to_string()).collect(),
                ..Default::default()
            });
        };
        self.0.invalidate(&c.stale);
        tracing::info!(runtime = %rt.name, layer = %c.layer, files = c.files, "edits committed");
        self.0.ledger_update(&rt.name);
        // The record follows the stack, for `spfs run --rerun` (it stays
        // its owner's).
        if let Ok(mut record) = self.0.repo().read_runtime(&rt.name)
            && record.owner_uid == rt.owner_uid
        {
            record.layers = c.stack.clone();
            let saved = self
                .0
                .repo()
                .save_runtime_as(&record, Some(record.owner_uid));
            if let Err(e) = saved {
                tracing::warn!(runtime = %rt.name, "cannot update the runtime's record: {e}");
            }
        }
        Ok(proto::CommitResponse {
            layer: c.layer.to_string(),
            stack: c.stack.iter().map(|d| d.to_string()).collect(),
            files: c.files as u64,
        })
    }
}
