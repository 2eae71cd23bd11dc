//! The FUSE host: adapts `fuser` requests to the platform-neutral core.
//!
//! Each request is routed to its caller's runtime ([`crate::route`]) and
//! answered by [`spfs_vfs::Vfs`] from that runtime's view, with the cache
//! lifetimes the core chose. File contents go through FUSE passthrough when
//! the kernel offers it (reads never reach this process), and through a
//! handle table with the kernel's page cache kept otherwise.
//!
//! A view is shared by the runtimes of one owner with the same stack, and
//! so are its inodes; a payload is served to a calling process only from a
//! copy its user may read in the repository ([`PayloadCopy::readable_by`]).
//! Whatever is kept per inode for later opens — the registered passthrough
//! backing file, the files read without an open (`cache_opens`) — records
//! which copy it is, and serves a caller who may not read that copy only
//! after the caller has opened a copy of its own (see
//! [`FuseHost::open_passthrough`]); one who has none gets EACCES.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request,
};
use spfs_vfs::edit::{SetAttr, SetTime};
use spfs_vfs::{Attr, DirItem, NodeKind, OpenedPayload, PayloadCopy, Runtime, Vfs, VfsError, View};

use crate::handover::{Gate, InitRecord};
use crate::route::Router;
use crate::stats::{Op, Stats, Timer};
use spfs_vfs::journal::Journal;

/// The filesystem served on the mount.
pub struct FuseHost {
    vfs: Arc<Vfs>,
    router: Arc<Router>,
    /// Whether to try passthrough (configuration).
    want_passthrough: bool,
    /// Whether the kernel opens files without asking (configuration).
    cache_opens: bool,
    /// Payloads read without an open (with `cache_opens`), by node: the
    /// copies opened for the users who read it.
    node_files: Mutex<HashMap<u64, Vec<NodeFile>>>,
    /// Whether the kernel granted passthrough (set at init).
    passthrough: Arc<AtomicBool>,
    /// Backing files registered for passthrough, by node: the kernel
    /// requires every open file of one inode to use the same backing file.
    backing: Mutex<HashMap<u64, Backing>>,
    /// Every request answered.
    pub requests: Arc<AtomicU64>,
    /// Per-operation counts and latencies, bytes served, passthrough opens.
    stats: Arc<Stats>,
    /// Tells the kernel to forget names (set once the session runs).
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// Counts requests under way, so that a worker handing over to the
    /// next stops between requests ([`crate::handover`]).
    pub gate: Arc<Gate>,
    /// Where the registered backing files are recorded for the next worker.
    backing_journal: std::sync::OnceLock<Journal>,
    /// What the kernel offered at `INIT` (set by `init`).
    init_record: Arc<std::sync::OnceLock<InitRecord>>,
}

/// A payload file read without an open, and which copy it is.
type NodeFile = (PayloadCopy, Arc<std::fs::File>);

/// A registered backing file, which copy of the payload it is, and how
/// many open files use it.
struct Backing {
    /// The registration (`None` for one a previous worker made, until it
    /// is first used here: see `raw`).
    id: Option<BackingId>,
    /// The kernel's number for it.
    raw: u32,
    opens: u32,
    /// Only a caller whose user may read this copy may use it.
    copy: PayloadCopy,
    /// The file's size (reported with each passthrough open).
    size: u64,
}

/// Open files counted for a backing file a previous worker registered (how
/// many there are is not known): it is never unregistered.
const INHERITED_OPENS: u32 = u32::MAX / 2;

/// The bytes of a backing file's journal record: its number and its copy.
pub(crate) const BACKING_RECORD: usize = 4 + 5;

impl Backing {
    fn new(id: BackingId, copy: PayloadCopy, size: u64) -> (Backing, [u8; BACKING_RECORD]) {
        let raw = id.into_raw();
        let mut rec = [0u8; BACKING_RECORD];
        rec[..4].copy_from_slice(&raw.to_le_bytes());
        if let PayloadCopy::Private(uid) = copy {
            rec[4] = 1;
            rec[5..].copy_from_slice(&uid.to_le_bytes());
        }
        let b = Backing {
            id: None,
            raw,
            opens: 0,
            copy,
            size,
        };
        (b, rec)
    }

    /// A backing file a previous worker recorded.
    fn inherited(rec: &[u8]) -> Option<Backing> {
        let raw = u32::from_le_bytes(rec.get(..4)?.try_into().ok()?);
        let copy = match rec.get(4)? {
            0 => PayloadCopy::Public,
            _ => PayloadCopy::Private(u32::from_le_bytes(rec.get(5..9)?.try_into().ok()?)),
        };
        Some(Backing {
            id: None,
            raw,
            opens: INHERITED_OPENS,
            copy,
            // Not recorded: a passthrough open of it counts no bytes.
            size: 0,
        })
    }

    /// Answer an open with this backing file.
    fn open(&mut self, stats: &Stats, reply: ReplyOpen) {
        self.opens = self.opens.saturating_add(1);
        Stats::add(&stats.passthrough_opens, 1);
        Stats::add(&stats.passthrough_opened_bytes, self.size);
        let raw = self.raw;
        // SAFETY: `raw` was registered on this connection (by this worker,
        // or by a previous one of this mount, which recorded it before its
        // first use and unrecords it before unregistering it), and it is
        // unregistered only when this `BackingId` is dropped.
        let id = self
            .id
            .get_or_insert_with(|| unsafe { reply.wrap_backing(raw) });
        reply.opened_passthrough(FileHandle(PASSTHROUGH_FH), FopenFlags::empty(), id);
    }
}

/// Registered backing files kept while no file uses them, at most.
const IDLE_BACKING_MAX: usize = 4096;

/// How long what an editable view's changes answer may be cached: the
/// kernel learns of every later change through its own requests (see
/// `spfs_vfs::edit`).
const LONG: std::time::Duration = spfs_vfs::vfs::LONG_TTL;

/// How long a name made in `parent` may be cached: never in the shared
/// root, whose names differ between views.
fn entry_ttl(parent: INodeNo) -> std::time::Duration {
    match parent.0 {
        spfs_vfs::node::ROOT => spfs_vfs::vfs::NO_TTL,
        _ => LONG,
    }
}

/// The file handle bit that marks a passthrough open.
const PASSTHROUGH_FH: u64 = 1 << 63;

fn errno(e: VfsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn file_attr(a: &Attr) -> FileAttr {
    let kind = match a.kind {
        NodeKind::Dir => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
    };
    FileAttr {
        ino: INodeNo(a.node),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind,
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// The view of a caller's runtime (`None`: the caller is in no runtime).
fn view_of(rt: &Option<Arc<Runtime>>) -> Option<&View> {
    rt.as_ref().map(|r| &*r.view)
}

/// The reader a caller in no runtime stands for: no user (uid -1), who may
/// read public copies only (and, with no view, is served nothing anyway).
const NO_OWNER: u32 = u32::MAX;

/// Who reads: payloads are served as the calling process's own user (its
/// filesystem uid) may read them in the repository. Not the runtime's
/// owner: a runtime started by root may run a job as a user.
fn reader_of(req: &Request, rt: &Option<Arc<Runtime>>) -> u32 {
    rt.as_ref().map_or(NO_OWNER, |_| req.uid())
}

fn file_type(k: NodeKind) -> FileType {
    match k {
        NodeKind::Dir => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
    }
}

/// Requests not served. Any user can send them as fast as they like, so
/// they are answered without a log line; the first of each kind is noted
/// once, at debug level.
#[derive(Clone, Copy, Debug)]
enum Unsupported {
    SetXattr,
    RemoveXattr,
    Fallocate,
    GetLk,
    SetLk,
    Bmap,
    Poll,
    Lseek,
    CopyFileRange,
    Ioctl,
}

impl Unsupported {
    /// The answer: `EOPNOTSUPP` for what a program can do without (extended
    /// attributes, preallocation: `posix_fallocate` then writes zeros);
    /// `ENOTTY` for an ioctl (the kernel forwards every ioctl, whatever
    /// the answer, and turns `ENOSYS` into `ENOTTY` anyway); `ENOSYS` where
    /// the kernel remembers it for the mount and answers by itself from
    /// then on (poll gives the default mask, lseek and copies use the
    /// generic code, locks stay local).
    fn answer(self) -> Errno {
        static NOTED: AtomicU32 = AtomicU32::new(0);
        use Unsupported::*;
        let errno = match self {
            SetXattr | RemoveXattr | Fallocate => Errno::EOPNOTSUPP,
            Ioctl => Errno::ENOTTY,
            GetLk | SetLk | Bmap | Poll | Lseek | CopyFileRange => Errno::ENOSYS,
        };
        let bit = 1 << self as u32;
        if NOTED.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            tracing::debug!("answering {self:?} requests with {errno:?}");
        }
        errno
    }
}

/// A `setattr` time in the core's terms.
fn set_time(t: Option<fuser::TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        fuser::TimeOrNow::Now => SetTime::Now,
        fuser::TimeOrNow::SpecificTime(t) => SetTime::At(t),
    })
}

impl FuseHost {
    pub fn new(
        vfs: Arc<Vfs>,
        router: Arc<Router>,
        want_passthrough: bool,
        cache_opens: bool,
    ) -> Self {
        FuseHost {
            vfs,
            router,
            want_passthrough: want_passthrough && !cache_opens,
            cache_opens,
            node_files: Mutex::new(HashMap::new()),
            passthrough: Arc::new(AtomicBool::new(false)),
            backing: Mutex::new(HashMap::new()),
            requests: Arc::new(AtomicU64::new(0)),
            stats: Arc::default(),
            notifier: Arc::default(),
            gate: Arc::default(),
            backing_journal: std::sync::OnceLock::new(),
            init_record: Arc::default(),
        }
    }

    /// Record backing files in `journal` from now on, taking over those a
    /// previous worker of this mount recorded there.
    pub fn keep_backing_in(&self, journal: Journal) {
        let mut backing = self.backing.lock().unwrap_or_else(|p| p.into_inner());
        for (node, rec) in journal.entries() {
            if let Some(b) = Backing::inherited(&rec) {
                backing.insert(node, b);
            }
        }
        let _ = self.backing_journal.set(journal);
    }

    /// Where `init` puts what the kernel offered.
    pub fn init_record_slot(&self) -> Arc<std::sync::OnceLock<InitRecord>> {
        self.init_record.clone()
    }

    /// Unregister the backing file of `node` (unrecorded first: the next
    /// worker must never use a number that may name another file).
    fn drop_backing(&self, backing: &mut HashMap<u64, Backing>, node: u64) {
        if let Some(j) = self.backing_journal.get()
            && let Err(e) = j.remove(node)
        {
            tracing::warn!("cannot unrecord a backing file: {e}");
        }
        backing.remove(&node);
    }

    /// The request-path figures (see [`crate::stats`]).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Where the session's notifier goes once the session runs.
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// Whether passthrough is in use (known after the mount's init).
    pub fn passthrough_flag(&self) -> Arc<AtomicBool> {
        self.passthrough.clone()
    }

    /// Read a node's payload without a handle (the kernel opened the file
    /// itself). The caller's view must hold the node.
    fn read_node(
        &self,
        req: &Request,
        node: u64,
        offset: u64,
        size: usize,
    ) -> Result<Vec<u8>, Errno> {
        let rt = self.caller(req);
        let (view, owner) = (view_of(&rt), reader_of(req, &rt));
        if Vfs::editable(view) {
            return self
                .vfs
                .read_edit(view, owner, node, offset, size)
                .map_err(errno);
        }
        self.vfs.getattr(view, node).map_err(errno)?;
        // A copy opened for another runtime's owner serves this one only
        // if this one's owner may read it too.
        let cached = self
            .node_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .and_then(|files| files.iter().find(|(copy, _)| copy.readable_by(owner)))
            .map(|(_, f)| f.clone());
        let file = match cached {
            Some(f) => f,
            None => {
                let opened = match self.vfs.open_now(view, owner, node) {
                    Ok(opened) => opened,
                    // Coming from a remote: this read is served from a
                    // ranged fetch while the whole payload arrives.
                    Err(VfsError::Fetching(_)) => {
                        return self
                            .vfs
                            .read_remote(view, owner, node, offset, size)
                            .map_err(errno);
                    }
                    Err(e) => return Err(errno(e)),
                };
                let f = Arc::new(opened.file);
                let mut files = self.node_files.lock().unwrap_or_else(|p| p.into_inner());
                if files.len() >= IDLE_BACKING_MAX {
                    files.clear();
                }
                let copies = files.entry(node).or_default();
                if !copies.iter().any(|(copy, _)| *copy == opened.copy) {
                    copies.push((opened.copy, f.clone()));
                }
                f
            }
        };
        spfs_vfs::handles::read_at(&file, offset, size).map_err(Errno::from)
    }

    /// List a directory for `readdir` and `readdirplus`.
    fn list(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        plus: bool,
        add: impl FnMut(DirItem<'_>) -> bool,
    ) -> Result<(), Errno> {
        let rt = self.caller(req);
        self.vfs
            .readdir(view_of(&rt), ino.0, offset, plus, fh.0, add)
            .map_err(errno)
    }

    /// Answer an open of `node` by `owner` with a handle of `file`, unless
    /// the handle table is full (for that user, or in total): then
    /// `EMFILE` (`ENFILE`), and the service keeps its descriptors.
    fn open_handle(
        &self,
        node: u64,
        owner: u32,
        file: std::fs::File,
        t: crate::stats::Timer<'_>,
        reply: ReplyOpen,
    ) {
        match self.vfs.handles.insert(node, owner, file) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(full) => {
                // (Rate limited per call site, like every line a user can cause.)
                tracing::warn!("open refused: {full}");
                let e = match full {
                    spfs_vfs::handles::Full::User(_) => Errno::EMFILE,
                    spfs_vfs::handles::Full::Total => Errno::ENFILE,
                };
                t.fail(reply, e)
            }
        }
    }

    /// Answer an open of `node` with `opened`, a copy `owner` may read,
    /// just registered as backing file `id`. The registered backing file
    /// (if another open registered one meanwhile) is used when `owner` may
    /// read its copy, or when open files use it: the kernel allows one
    /// backing file per inode while any is open, and refuses opens without
    /// passthrough beside it. Serving it then gives the caller nothing it
    /// may not read: the caller has just opened and verified a copy of its
    /// own, and the registered file was verified against the same digest.
    /// An idle one of a copy `owner` may not read is replaced by `id`.
    fn open_passthrough(
        &self,
        node: u64,
        owner: u32,
        opened: OpenedPayload,
        id: BackingId,
        reply: ReplyOpen,
    ) {
        Stats::add(&self.stats.backing_registered, 1);
        let size = opened.file.metadata().map_or(0, |m| m.len());
        let mut backing = self.backing.lock().unwrap_or_else(|p| p.into_inner());
        let copy = opened.copy;
        let use_new = match backing.get(&node) {
            Some(b) => b.opens == 0 && !b.copy.readable_by(owner),
            None => true,
        };
        if !use_new {
            // Another open registered one meanwhile: `id` goes unused.
            if let Some(b) = backing.get_mut(&node) {
                b.open(&self.stats, reply);
            }
            return;
        }
        let (new, rec) = Backing::new(id, copy, size);
        // Recorded before the kernel learns of it.
        if let Some(j) = self.backing_journal.get()
            && let Err(e) = j.put(node, &rec)
        {
            tracing::warn!("cannot record a backing file: {e}");
        }
        // An idle one replaced is unregistered when dropped.
        let old = backing.insert(node, new);
        if let Some(b) = backing.get_mut(&node) {
            b.open(&self.stats, reply);
        }
        drop(old);
    }

    /// Answer a request that made an entry in `parent`: a name in the
    /// shared root is never cached (another view may not have it).
    fn entry(
        &self,
        t: &Timer<'_>,
        parent: INodeNo,
        made: Result<Attr, VfsError>,
        reply: ReplyEntry,
    ) {
        match made {
            Ok(attr) => {
                reply.entry_with_ttls(&LONG, &entry_ttl(parent), &file_attr(&attr), Generation(0))
            }
            Err(e) => t.fail(reply, errno(e)),
        }
    }

    /// Answer a request that changed something.
    fn done(&self, t: &Timer<'_>, done: Result<(), VfsError>, reply: ReplyEmpty) {
        match done {
            Ok(()) => reply.ok(),
            Err(e) => t.fail(reply, errno(e)),
        }
    }

    /// The caller's runtime, counting the request.
    fn caller(&self, req: &Request) -> Option<Arc<Runtime>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let rt = self.router.route(req.pid());
        match &rt {
            Some(rt) => rt.count_request(),
            None => Stats::add(&self.stats.unrouted, 1),
        }
        rt
    }
}

impl Filesystem for FuseHost {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let abi = config.kernel_abi();
        let _ = self.init_record.set(InitRecord {
            major: abi.0,
            minor: abi.1,
            capabilities: config.capabilities().bits(),
        });
        // Requests of up to 1 MiB (the kernel sizes its pages per request by
        // the larger of max_write and readahead): reads that go through the
        // service (no passthrough) come in a quarter as many round trips.
        let _ = config.set_max_write(1 << 20);
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        if self.want_passthrough
            && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.store(true, Ordering::Relaxed);
        }
        tracing::info!(
            passthrough = self.passthrough.load(Ordering::Relaxed),
            abi = ?abi,
            capabilities = format_args!("{:#x}", config.capabilities().bits()),
            "FUSE session initialised"
        );
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Lookup);
        let rt = self.caller(req);
        let view = view_of(&rt);
        match self.vfs.lookup(view, parent.0, name.as_bytes()) {
            Ok((attr, entry_ttl, attr_ttl)) => {
                reply.entry_with_ttls(&attr_ttl, &entry_ttl, &file_attr(&attr), Generation(0))
            }
            Err(VfsError::NotFound) => match self.vfs.miss_ttl(view, parent.0, name.as_bytes()) {
                ttl if ttl.is_zero() => t.fail(reply, Errno::ENOENT),
                // A negative entry (node id 0): the kernel remembers the
                // miss and stops asking.
                ttl => reply.entry_with_ttls(
                    &std::time::Duration::ZERO,
                    &ttl,
                    &file_attr(&Attr::missing()),
                    Generation(0),
                ),
            },
            Err(e) => t.fail(reply, errno(e)),
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Getattr);
        let rt = self.caller(req);
        match self.vfs.getattr(view_of(&rt), ino.0) {
            Ok((attr, ttl)) => reply.attr(&ttl, &file_attr(&attr)),
            Err(e) => t.fail(reply, errno(e)),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Readlink);
        let rt = self.caller(req);
        match self.vfs.readlink(view_of(&rt), ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => t.fail(reply, errno(e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Open);
        if self.cache_opens {
            // The kernel takes ENOSYS as "opens always succeed": it never
            // asks again, and keeps each node's pages cached.
            return t.fail(reply, Errno::ENOSYS);
        }
        let rt = self.caller(req);
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let (view, owner) = (view_of(&rt), reader_of(req, &rt));
        if Vfs::editable(view) {
            // Reads and writes come by node (handle 0), like with
            // kernel-kept opens: one inode, one way to its data.
            return match self.vfs.open_edit(view, ino.0, write) {
                Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
                Err(e) => t.fail(reply, errno(e)),
            };
        }
        if write {
            return t.fail(reply, Errno::EROFS);
        }
        if self.passthrough.load(Ordering::Relaxed) {
            // The kernel wants every open file of an inode to use the same
            // backing file: reuse the registered one while any is open, if
            // the caller's runtime owner may read that copy. (The lock is
            // held across replies so that a concurrent release cannot
            // unregister an id between lookup and reply.)
            {
                let mut backing = self.backing.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(b) = backing.get_mut(&ino.0) {
                    // Registered means: a file of a view. Check it is the caller's.
                    if let Err(e) = self.vfs.getattr(view, ino.0) {
                        return t.fail(reply, errno(e));
                    }
                    if write {
                        return t.fail(reply, Errno::EROFS);
                    }
                    if b.copy.readable_by(owner) {
                        return b.open(&self.stats, reply);
                    }
                }
            }
            let opened = match self.vfs.open(view, owner, ino.0, write) {
                Ok(f) => f,
                Err(e) => return t.fail(reply, errno(e)),
            };
            match reply.open_backing(&opened.file) {
                Ok(id) => return self.open_passthrough(ino.0, owner, opened, id, reply),
                Err(e) => {
                    tracing::warn!(
                        "passthrough refused ({e}); serving reads in user space from now on"
                    );
                    self.passthrough.store(false, Ordering::Relaxed);
                    return self.open_handle(ino.0, owner, opened.file, t, reply);
                }
            }
        }
        // Without passthrough: the caller's own copy, through a handle. (The
        // page cache kept across opens holds the digest's bytes, which every
        // caller who gets this far may read from a copy of their own.)
        let opened = match self.vfs.open(view, owner, ino.0, write) {
            Ok(f) => f,
            Err(e) => return t.fail(reply, errno(e)),
        };
        self.open_handle(ino.0, owner, opened.file, t, reply)
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Read);
        let handle = match self.cache_opens || fh.0 == 0 {
            true => None,
            false => self.vfs.handles.get(fh.0, ino.0),
        };
        let res = match handle {
            // The handle was made for this caller's view at open.
            Some(file) => {
                spfs_vfs::handles::read_at(&file, offset, size as usize).map_err(Errno::from)
            }
            // No handle, or one a previous worker made: by node, checked
            // against the caller's view.
            None => self.read_node(req, ino.0, offset, size as usize),
        };
        match res {
            Ok(data) => {
                Stats::add(&self.stats.read_bytes, data.len() as u64);
                reply.data(&data)
            }
            Err(e) => t.fail(reply, e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _in = self.gate.enter();
        let _t = self.stats.start(Op::Release);
        if fh.0 & PASSTHROUGH_FH != 0 {
            Stats::add(&self.stats.passthrough_releases, 1);
            let mut backing = self.backing.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = backing.get_mut(&ino.0) {
                b.opens = b.opens.saturating_sub(1);
                // An idle backing file stays registered until the kernel
                // forgets the inode, so reopening it costs no file open and
                // no registration; past a bound, idle ones go at once.
                if b.opens == 0 && backing.len() > IDLE_BACKING_MAX {
                    // Dropping the id unregisters the backing file.
                    self.drop_backing(&mut backing, ino.0);
                }
            }
        } else {
            self.vfs.handles.remove(fh.0, ino.0);
        }
        reply.ok();
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Opendir);
        let rt = self.caller(req);
        let opened = self
            .vfs
            .opendir(view_of(&rt), ino.0)
            .and_then(|()| self.vfs.open_dir_handle(view_of(&rt), ino.0));
        match opened {
            Ok(fh) => {
                let flags = if self.vfs.dir_listing_cacheable(view_of(&rt), ino.0) {
                    FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(fh), flags)
            }
            Err(e) => t.fail(reply, errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _in = self.gate.enter();
        let _t = self.stats.start(Op::Releasedir);
        self.vfs.release_dir_handle(fh.0, ino.0);
        reply.ok();
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Readdir);
        let res = self.list(req, ino, fh, offset, false, |item| {
            reply.add(
                INodeNo(item.attr.node),
                item.next,
                file_type(item.attr.kind),
                OsStr::from_bytes(item.name),
            )
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => t.fail(reply, e),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Readdirplus);
        // Names and attributes in one answer: a `find`-style walk needs no
        // separate lookup per entry.
        let res = self.list(req, ino, fh, offset, true, |item| {
            let attr = file_attr(&item.attr);
            reply.add(
                INodeNo(item.attr.node),
                item.next,
                OsStr::from_bytes(item.name),
                &item.ttl,
                &attr,
                Generation(0),
            )
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => t.fail(reply, e),
        }
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _in = self.gate.enter();
        let _t = self.stats.start(Op::Statfs);
        let rt = self.caller(req);
        let s = self.vfs.statfs(view_of(&rt));
        reply.statfs(
            s.blocks,
            s.free_blocks,
            s.free_blocks,
            s.files,
            s.free_files,
            s.block_size,
            s.name_max,
            s.block_size,
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _in = self.gate.enter();
        let _t = self.stats.start(Op::Forget);
        // The kernel evicted the inode: what is kept for it goes, under the
        // lock an open of it takes (a content node's id may name other
        // content next; see spfs_vfs::content).
        let mut backing = self.backing.lock().unwrap_or_else(|p| p.into_inner());
        let mut node_files = self.node_files.lock().unwrap_or_else(|p| p.into_inner());
        // The backing file is unrecorded before the content slot is freed:
        // a worker that dies in between must not leave the next one a
        // backing file for a slot that names other content.
        if backing.get(&ino.0).is_some_and(|b| b.opens == 0) {
            self.drop_backing(&mut backing, ino.0);
        }
        self.vfs.forget(ino.0, nlookup);
        node_files.remove(&ino.0);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Flush);
        // Writes reach the upper area as they come: nothing to flush.
        // ENOSYS makes the kernel stop asking.
        t.fail(reply, Errno::ENOSYS);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Getxattr);
        // No extended attributes: ENOSYS makes the kernel stop asking.
        t.fail(reply, Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Listxattr);
        t.fail(reply, Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Access);
        t.fail(reply, Errno::ENOSYS);
    }

    // Changes: served in editable views, EROFS in read-only ones.

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<fuser::TimeOrNow>,
        mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Setattr);
        let rt = self.caller(req);
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        match self
            .vfs
            .setattr(view_of(&rt), reader_of(req, &rt), ino.0, &set)
        {
            Ok(attr) => reply.attr(&LONG, &file_attr(&attr)),
            Err(e) => t.fail(reply, errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Mknod);
        // Regular files only (a fifo or device has no place in a layer).
        if mode & libc::S_IFMT != libc::S_IFREG {
            return t.fail(reply, Errno::EPERM);
        }
        let rt = self.caller(req);
        let made = self.vfs.create(
            view_of(&rt),
            parent.0,
            name.as_bytes(),
            mode & !umask,
            req.uid(),
            req.gid(),
        );
        self.entry(&t, parent, made, reply)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Mkdir);
        let rt = self.caller(req);
        let made = self.vfs.mkdir(
            view_of(&rt),
            parent.0,
            name.as_bytes(),
            mode & !umask,
            req.uid(),
            req.gid(),
        );
        self.entry(&t, parent, made, reply)
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Unlink);
        let rt = self.caller(req);
        self.done(
            &t,
            self.vfs
                .remove(view_of(&rt), parent.0, name.as_bytes(), false),
            reply,
        )
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Rmdir);
        let rt = self.caller(req);
        self.done(
            &t,
            self.vfs
                .remove(view_of(&rt), parent.0, name.as_bytes(), true),
            reply,
        )
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Symlink);
        let rt = self.caller(req);
        let made = self.vfs.symlink(
            view_of(&rt),
            parent.0,
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
            req.uid(),
            req.gid(),
        );
        self.entry(&t, parent, made, reply)
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Rename);
        // Exchanging and whiteouts are not offered (`mv` does not need them).
        if flags
            .intersects(fuser::RenameFlags::RENAME_EXCHANGE | fuser::RenameFlags::RENAME_WHITEOUT)
        {
            return t.fail(reply, Errno::EINVAL);
        }
        let rt = self.caller(req);
        let done = self.vfs.rename(
            view_of(&rt),
            reader_of(req, &rt),
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            flags.contains(fuser::RenameFlags::RENAME_NOREPLACE),
        );
        let into_root = done.is_ok() && newparent.0 == spfs_vfs::node::ROOT;
        self.done(&t, done, reply);
        if into_root && let Some(n) = self.notifier.get() {
            // The kernel moved its cached name, lifetime and all, into the
            // shared root: make it ask again (once the rename is done,
            // which holds the directory this takes).
            let (n, name) = (n.clone(), newname.to_owned());
            std::thread::spawn(move || {
                let _ = n.inval_entry(INodeNo(spfs_vfs::node::ROOT), &name);
            });
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Link);
        let rt = self.caller(req);
        let made = self.vfs.link(
            view_of(&rt),
            reader_of(req, &rt),
            ino.0,
            newparent.0,
            newname.as_bytes(),
        );
        self.entry(&t, newparent, made, reply)
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Create);
        let rt = self.caller(req);
        match self.vfs.create(
            view_of(&rt),
            parent.0,
            name.as_bytes(),
            mode & !umask,
            req.uid(),
            req.gid(),
        ) {
            Ok(attr) => reply.created(
                &entry_ttl(parent),
                &file_attr(&attr),
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => t.fail(reply, errno(e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Write);
        let rt = self.caller(req);
        let written = match (&rt, req.pid()) {
            // The kernel writing back pages of a shared writable mapping
            // (no caller: pid 0): the node names its editable view, whose
            // process mapped the file for writing when it could.
            (None, 0) => {
                let view =
                    spfs_vfs::node::split(ino.0).and_then(|(v, _)| self.vfs.registry.view(v));
                let owner = view
                    .as_ref()
                    .and_then(|v| v.edit.as_ref())
                    .map_or(NO_OWNER, |e| e.owner_uid());
                self.vfs.write(view.as_deref(), owner, ino.0, offset, data)
            }
            _ => self
                .vfs
                .write(view_of(&rt), reader_of(req, &rt), ino.0, offset, data),
        };
        match written {
            Ok(n) => {
                Stats::add(&self.stats.write_bytes, n as u64);
                reply.written(n as u32)
            }
            Err(e) => t.fail(reply, errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Setxattr);
        t.fail(reply, Unsupported::SetXattr.answer());
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Removexattr);
        t.fail(reply, Unsupported::RemoveXattr.answer());
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Fallocate);
        t.fail(reply, Unsupported::Fallocate.answer());
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Fsync);
        let rt = self.caller(req);
        self.done(&t, self.vfs.fsync(view_of(&rt), ino.0), reply)
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _in = self.gate.enter();
        let _t = self.stats.start(Op::Fsyncdir);
        // Names change under the service's lock, on the upper area's disk.
        reply.ok()
    }

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        reply: fuser::ReplyLock,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Getlk);
        t.fail(reply, Unsupported::GetLk.answer());
    }

    fn setlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        _sleep: bool,
        reply: ReplyEmpty,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Setlk);
        t.fail(reply, Unsupported::SetLk.answer());
    }

    fn bmap(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _blocksize: u32,
        _idx: u64,
        reply: fuser::ReplyBmap,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Bmap);
        t.fail(reply, Unsupported::Bmap.answer());
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Ioctl);
        t.fail(reply, Unsupported::Ioctl.answer());
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Poll);
        t.fail(reply, Unsupported::Poll.answer());
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::Lseek);
        t.fail(reply, Unsupported::Lseek.answer());
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: fuser::ReplyWrite,
    ) {
        let _in = self.gate.enter();
        let t = self.stats.start(Op::CopyFileRange);
        t.fail(reply, Unsupported::CopyFileRange.answer());
    }
}
