//! The filesystem operations, answered from one caller's view.
//!
//! Every operation takes the caller's view (`None` for a caller in no
//! runtime, who sees an empty root) and a node id. A node id from another
//! view is refused as if it did not exist. Answers carry cache lifetimes:
//!
//! - the root is shared by every view, so the names directly in it are
//!   never cached (lifetime zero): each lookup of `/spfs/NAME` asks again,
//!   and a kernel that kept another view's answer revalidates it, sees a
//!   different node id, and drops it. The root's own attributes are the same
//!   for every view and are cached;
//! - every other node belongs to one immutable view, so its attributes,
//!   names, symlink targets and pages are cached for [`LONG_TTL`], and so
//!   are misses: a name missing from a view's directory stays missing. A
//!   top-level directory that routed views of one owner hold alike belongs
//!   to a *subtree view* they all share ([`crate::shared`]), so that the
//!   kernel's entry for it, and its cache below, stay valid whichever of
//!   them walks through it;
//! - a top-level name that one owner's routed views hold as different
//!   directories is answered with one *routed directory* node
//!   ([`crate::routed`]), whose attributes are fixed (cached as any) and
//!   which, like the root, answers each caller's names from its own view
//!   and caches none of them (lifetime zero, listing not kept). The nodes
//!   it hands out below are the caller's, cached as any.
//!
//! A *bound* view has a root directory of its own ([`node::view_root`]),
//! which its runtime's processes reach by the name [`VIEW_DOOR`] in the
//! shared root (or in any bound view's root, for a runtime nested in
//! another): the door answers each caller with their own view's root, and
//! nobody else's, and is never cached. A platform host that can give a
//! runtime a mount of its own (Linux: a mount namespace in which the mount
//! point is a bind of the door) lets the kernel cache every name of the
//! view, the top-level ones included. Through the shared root, a bound
//! runtime's processes see nothing but the door.
//!
//! A regular file with a public payload is not named by its view but by its
//! content ([`crate::content`]): one node, and so one copy of its pages in
//! the kernel, for every view that holds the same file.
//!
//! A view is shared by the runtimes of one stack and one owner (see
//! [`crate::registry`]); what it names is not everyone's to read all the
//! same: manifests are written by users and may name any digest. So the operations that serve a
//! payload's bytes ([`Vfs::open`], [`Vfs::readlink`]) also take the uid of
//! the runtime's owner, and serve only a copy of the payload that user
//! could read straight from the repository
//! ([`spfs_storage::PayloadCopy::readable_by`]); any other is
//! [`VfsError::PermissionDenied`] (EACCES).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use spfs_model::{Digest, Entry, EntryKind, Tree};
use spfs_storage::readthrough::ReadThrough;
use spfs_storage::{FsRepository, OpenedPayload, StorageError};

use crate::content::{ContentKey, ContentNodes};
use crate::handles::Handles;
use crate::node::{self, ROOT};
use crate::registry::Registry;
use crate::verify::Verifier;
use crate::view::View;

/// The name, in the shared root, of the caller's own bound view's root. It
/// is answered only by lookup, never listed, and shadows an entry of that
/// name at the top of a bound view.
pub const VIEW_DOOR: &[u8] = b".spfs-view";

/// A listing of an open directory: its node, and its names when opened.
type DirSnapshot = (u64, Arc<Vec<Vec<u8>>>);

/// How long answers about content-addressed nodes may be cached.
pub const LONG_TTL: Duration = Duration::from_secs(24 * 3600);
/// The cache lifetime of answers that differ between views.
pub const NO_TTL: Duration = Duration::ZERO;

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File,
    Symlink,
}

/// The attributes of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub node: u64,
    pub kind: NodeKind,
    /// Permission bits (no file type bits).
    pub perm: u16,
    pub size: u64,
    pub nlink: u32,
    /// The modification time (hosts show it as the access and change
    /// times too).
    pub mtime: SystemTime,
    pub uid: u32,
    pub gid: u32,
}

impl Attr {
    /// The attributes of a name that is missing (node 0), for hosts that
    /// answer a miss with a cacheable negative entry.
    pub fn missing() -> Attr {
        Attr {
            node: 0,
            kind: NodeKind::File,
            perm: 0,
            size: 0,
            nlink: 0,
            mtime: SystemTime::UNIX_EPOCH,
            uid: 0,
            gid: 0,
        }
    }
}

/// The longest symlink target served (the kernel's `PATH_MAX`).
const MAX_LINK_TARGET: u64 = 4096;

/// A reader who may read public copies only.
pub(crate) const PUBLIC_ONLY: u32 = u32::MAX;

/// Why an operation failed, in terms every platform can map.
#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("not a symbolic link")]
    NotSymlink,
    #[error("read-only filesystem")]
    ReadOnly,
    #[error("bad file handle")]
    BadHandle,
    /// The runtime's owner may not read any stored copy of the payload.
    #[error("payload {0} is private to another user")]
    PermissionDenied(Digest),
    #[error("payload {0} is not available locally")]
    MissingPayload(String),
    /// Being fetched from a remote (see [`Vfs::open_now`]).
    #[error("payload {0} is being fetched from a remote")]
    Fetching(Digest),
    /// The payload's bytes do not hash to its digest (it was quarantined).
    #[error("payload {0} is corrupt: its bytes do not match its digest")]
    Corrupt(Digest),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl VfsError {
    /// The POSIX error number.
    pub fn errno(&self) -> i32 {
        match self {
            VfsError::NotFound => libc_consts::ENOENT,
            VfsError::NotDir => libc_consts::ENOTDIR,
            VfsError::IsDir => libc_consts::EISDIR,
            VfsError::NotSymlink => libc_consts::EINVAL,
            VfsError::ReadOnly => libc_consts::EROFS,
            VfsError::BadHandle => libc_consts::EBADF,
            VfsError::PermissionDenied(_) => libc_consts::EACCES,
            VfsError::MissingPayload(_) | VfsError::Corrupt(_) | VfsError::Fetching(_) => {
                libc_consts::EIO
            }
            VfsError::Io(e) => e.raw_os_error().unwrap_or(libc_consts::EIO),
        }
    }
}

/// POSIX error numbers (identical on every Unix we target; a WinFSP host
/// maps [`VfsError`] variants to NTSTATUS values instead).
mod libc_consts {
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EBADF: i32 = 9;
    pub const EACCES: i32 = 13;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const EROFS: i32 = 30;
}

/// One entry of a directory listing.
#[derive(Clone, Copy, Debug)]
pub struct DirItem<'a> {
    pub name: &'a [u8],
    pub attr: Attr,
    /// The offset at which a listing continues after this entry.
    pub next: u64,
    /// How long the name and attributes may be cached.
    pub ttl: Duration,
}

/// Filesystem-wide numbers for `statfs`.
#[derive(Clone, Copy, Debug)]
pub struct FsStats {
    pub blocks: u64,
    /// Blocks free (and free to users), files free: zero in a read-only
    /// view, the upper area's disk in an editable one.
    pub free_blocks: u64,
    pub free_files: u64,
    pub files: u64,
    pub block_size: u32,
    pub name_max: u32,
}

/// The filesystem of one service: the repository, the runtimes, open files.
pub struct Vfs {
    repo: FsRepository,
    pub registry: std::sync::Arc<Registry>,
    pub handles: Handles,
    /// The payloads verified against their digests in this service's
    /// lifetime.
    pub verifier: Verifier,
    /// The nodes of public files, shared by every view.
    pub content: ContentNodes,
    /// The remotes read through for specs and payloads not stored locally.
    read_through: Option<std::sync::Arc<ReadThrough>>,
    /// Whether a read of a payload still being fetched is answered from a
    /// ranged fetch (see [`Vfs::open_now`]).
    ranged_reads: bool,
    started: SystemTime,
    /// The listings of open directories of editable views, by handle.
    /// Listings of open directories of editable views: handle → (node,
    /// names).
    dir_snapshots: std::sync::Mutex<std::collections::HashMap<u64, DirSnapshot>>,
    next_dir_handle: std::sync::atomic::AtomicU64,
}

/// Open directory listings of editable views kept at most.
const MAX_DIR_HANDLES: usize = 65_536;

type Result<T, E = VfsError> = std::result::Result<T, E>;

/// A resolved node: the shared root, a bound view's root, an entry of a
/// view, a routed directory (its id, and the caller's directory of its
/// name as an entry), or a public file's content node.
enum Node<'a> {
    Root,
    ViewRoot(&'a View),
    Entry(&'a View, u32, &'a Entry),
    Routed(u64, &'a View, &'a Entry),
    Content(ContentKey),
}

impl Vfs {
    pub fn new(repo: FsRepository) -> Self {
        Vfs {
            repo,
            registry: std::sync::Arc::default(),
            handles: Handles::default(),
            verifier: Verifier::default(),
            content: ContentNodes::default(),
            read_through: None,
            ranged_reads: false,
            started: SystemTime::now(),
            dir_snapshots: Default::default(),
            next_dir_handle: std::sync::atomic::AtomicU64::new(crate::handles::first_number()),
        }
    }

    pub fn repo(&self) -> &FsRepository {
        &self.repo
    }

    /// The remotes read through, if any are configured.
    pub fn read_through(&self) -> Option<&std::sync::Arc<ReadThrough>> {
        self.read_through.as_ref()
    }

    /// Read specs and payloads missing locally through these remotes;
    /// `ranged_reads`: see [`Vfs::open_now`].
    pub fn with_read_through(
        mut self,
        remotes: std::sync::Arc<ReadThrough>,
        ranged_reads: bool,
    ) -> Self {
        self.read_through = (!remotes.is_empty()).then_some(remotes);
        self.ranged_reads = ranged_reads;
        self
    }

    /// The digests `spec` names: from the local repository, else (objects
    /// copied in) from the first remote read through that has them.
    pub fn resolve_spec(&self, spec: &spfs_model::EnvSpec) -> Result<Vec<Digest>, StorageError> {
        match &self.read_through {
            Some(rt) => rt.resolve_spec(&self.repo, spec),
            None => self.repo.resolve_spec(spec),
        }
    }

    fn resolve<'a>(&self, view: Option<&'a View>, node: u64) -> Result<Node<'a>> {
        if node == ROOT {
            return Ok(Node::Root);
        }
        if crate::routed::is_routed(node) {
            // The caller's own directory of the name: the top of the
            // subtree view it shows through the routed directory.
            let sub = view
                .filter(|v| !v.bound && v.edit.is_none())
                .and_then(|v| v.routed_subtree(node))
                .ok_or(VfsError::NotFound)?;
            let top = crate::shared::SUBTREE_TOP as usize;
            return match sub.tree.entries().get(top) {
                Some(e) if e.kind == EntryKind::Dir => Ok(Node::Routed(node, sub, e)),
                _ => Err(VfsError::NotFound),
            };
        }
        let (vid, index) = node::split(node).ok_or(VfsError::NotFound)?;
        if vid == crate::content::CONTENT_VIEW {
            // Public bytes: whoever reached the node may have them.
            return self
                .content
                .get(node)
                .map(Node::Content)
                .ok_or(VfsError::NotFound);
        }
        // The caller's own view, or a subtree view it shares.
        let view = view
            .and_then(|v| v.holding(vid))
            .ok_or(VfsError::NotFound)?;
        if index == node::VIEW_ROOT_INDEX {
            return match view.bound {
                true => Ok(Node::ViewRoot(view)),
                false => Err(VfsError::NotFound),
            };
        }
        let entry = view
            .tree
            .entries()
            .get(index as usize)
            .ok_or(VfsError::NotFound)?;
        Ok(Node::Entry(view, index, entry))
    }

    /// The view whose tree holds node `n`'s entries: a subtree view's for
    /// a node of one, else the caller's.
    fn tree_view<'a>(n: &Node<'a>, caller: &'a View) -> &'a View {
        match n {
            Node::Entry(v, _, _) | Node::ViewRoot(v) | Node::Routed(_, v, _) => v,
            Node::Root | Node::Content(_) => caller,
        }
    }

    /// The directory number (in the view's tree) of a directory node.
    fn dir_of(node: &Node<'_>) -> Result<u32> {
        match node {
            Node::Root | Node::ViewRoot(_) => Ok(0),
            Node::Entry(_, _, e) | Node::Routed(_, _, e) if e.kind == EntryKind::Dir => Ok(e.dir),
            Node::Entry(..) | Node::Routed(..) | Node::Content(_) => Err(VfsError::NotDir),
        }
    }

    fn subdirs(tree: &Tree, dir: u32) -> u32 {
        tree.children(dir)
            .iter()
            .filter(|e| e.kind == EntryKind::Dir)
            .count() as u32
    }

    /// The root's attributes: the same for every view, so the kernel may
    /// cache them (every path walk through the mount checks them). Sticky
    /// and writable by all, like `/tmp`: a routed editable runtime's
    /// processes make names in it (only ever in their own view; a
    /// read-only view refuses every change).
    fn root_attr(&self) -> Attr {
        Attr {
            node: ROOT,
            kind: NodeKind::Dir,
            perm: 0o1777,
            size: 0,
            nlink: 2,
            mtime: self.started,
            uid: 0,
            gid: 0,
        }
    }

    /// A bound view's root: like the shared root, but of one view.
    fn view_root_attr(view: &View) -> Attr {
        Attr {
            node: node::view_root(view.id),
            kind: NodeKind::Dir,
            perm: 0o755,
            size: 0,
            nlink: 2 + Self::subdirs(&view.tree, 0),
            mtime: view.mtime,
            uid: 0,
            gid: 0,
        }
    }

    /// The attributes of a content node.
    fn content_attr(node: u64, key: &ContentKey) -> Attr {
        Attr {
            node,
            kind: NodeKind::File,
            perm: key.perm,
            size: key.size,
            nlink: 1,
            mtime: spfs_model::time::to_system_time(key.mtime),
            uid: 0,
            gid: 0,
        }
    }

    /// The content key of a regular file whose payload has a public copy
    /// this service has verified. Anyone may put a file under a digest's
    /// public name while it is free (a digest is no secret), so only a copy
    /// whose bytes were checked against the digest makes a node that every
    /// view shares; and a content node is served from that public copy
    /// alone (see [`Vfs::open`]), never from a reader's private copy.
    fn public_content(&self, e: &Entry) -> Option<ContentKey> {
        // Cheap first (memory only): most entries listed were never served.
        if e.kind != EntryKind::File || !self.verifier.any_verified(&e.object) {
            return None;
        }
        let (dev, ino) = self.repo.public_payload_id(&e.object)?;
        let file = crate::verify::VerifiedFile {
            digest: e.object,
            dev,
            ino,
        };
        if !self.verifier.is_verified(&file) {
            return None;
        }
        Some(ContentKey {
            digest: e.object,
            size: e.size,
            perm: (e.mode & 0o7777) as u16,
            mtime: e.mtime,
        })
    }

    /// The attributes an entry is handed out with: its content node's for
    /// a public file (`counted`: as a reference the kernel will forget),
    /// else its own node's.
    /// A top-level directory shown through a subtree view
    /// ([`crate::shared`]) is handed out as that view's.
    fn handed_attr(&self, view: &View, index: u32, e: &Entry, counted: bool) -> Attr {
        if let Some(sub) = view.shares.of_entry(index) {
            let top = crate::shared::SUBTREE_TOP;
            if let Some(t) = sub.tree.entries().get(top as usize) {
                return Self::entry_attr(sub, top, t);
            }
        }
        match self.public_content(e) {
            Some(key) => Self::content_attr(self.content.intern(key, counted), &key),
            None => Self::entry_attr(view, index, e),
        }
    }

    /// What the shared root hands out for its entry `index` (`e`, `attr`
    /// as [`Vfs::handed_attr`] gives it) to routed read-only view `caller`:
    /// the routed directory, if the directory is routed.
    fn routed_attr(&self, caller: &View, index: u32, e: &Entry, attr: Attr) -> Attr {
        match caller.routed_node_of(index) {
            Some(routed) => self.routed_dir_attr(routed, e),
            None => attr,
        }
    }

    /// The attributes of routed directory `node` of directory entry `e`:
    /// the same for every caller who reaches it (see [`crate::routed`]).
    fn routed_dir_attr(&self, node: u64, e: &Entry) -> Attr {
        Attr {
            node,
            kind: NodeKind::Dir,
            perm: (e.mode & 0o7777) as u16,
            size: 0,
            // Unknown (a count of subdirectories would differ per caller).
            nlink: 1,
            mtime: self.started,
            uid: 0,
            gid: 0,
        }
    }

    /// The kernel dropped `n` references to `node` (FUSE `FORGET`).
    /// Returns whether the node is gone (a content node whose id may now
    /// name other content: whatever a host keeps by node id must go).
    pub fn forget(&self, node: u64, n: u64) -> bool {
        if let Some((vid, ino)) = node::split(node)
            && vid != crate::content::CONTENT_VIEW
        {
            if ino != node::VIEW_ROOT_INDEX
                && let Some(v) = self.registry.view(vid)
                && let Some(ed) = &v.edit
            {
                ed.forget(ino, n);
            }
            return false;
        }
        self.content.forget(node, n)
    }

    fn entry_attr(view: &View, index: u32, e: &Entry) -> Attr {
        let kind = match e.kind {
            EntryKind::Dir => NodeKind::Dir,
            EntryKind::Symlink => NodeKind::Symlink,
            _ => NodeKind::File,
        };
        Attr {
            node: node::node_id(view.id, index),
            kind,
            perm: (e.mode & 0o7777) as u16,
            size: e.size,
            nlink: match kind {
                NodeKind::Dir => 2 + Self::subdirs(&view.tree, e.dir),
                _ => 1,
            },
            // The entry's own time (the epoch in layers committed before
            // times were kept); a host shows it as atime and ctime too.
            mtime: spfs_model::time::to_system_time(e.mtime),
            uid: 0,
            gid: 0,
        }
    }

    /// Find `name` in directory `parent`. Returns the attributes, the
    /// lifetime of the name and the lifetime of the attributes.
    pub fn lookup(
        &self,
        view: Option<&View>,
        parent: u64,
        name: &[u8],
    ) -> Result<(Attr, Duration, Duration)> {
        if name == VIEW_DOOR && (parent == ROOT || node::is_view_root(parent)) {
            // The door answers each caller with their own bound view, so
            // the kernel must ask again every time.
            // (Never onto the directory it is in: that would be a loop.)
            let view = view
                .filter(|v| v.bound && parent != node::view_root(v.id))
                .ok_or(VfsError::NotFound)?;
            return Ok((Self::view_root_attr(view), NO_TTL, LONG_TTL));
        }
        if let Some((v, ed)) = Self::editing(view) {
            if parent == ROOT && v.bound {
                return Err(VfsError::NotFound);
            }
            let attr = self.edit_lookup(v, ed, parent, name)?;
            let entry_ttl = if parent == ROOT { NO_TTL } else { LONG_TTL };
            return Ok((attr, entry_ttl, LONG_TTL));
        }
        let p = self.resolve(view, parent)?;
        let dir = Self::dir_of(&p)?;
        let caller = view.ok_or(VfsError::NotFound)?;
        if matches!(p, Node::Root) && caller.bound {
            return Err(VfsError::NotFound);
        }
        // The tree the parent is in: the caller's, or a subtree view's.
        let view = Self::tree_view(&p, caller);
        let index = view.tree.find(dir, name).ok_or(VfsError::NotFound)?;
        let e = &view.tree.entries()[index as usize];
        let attr = self.handed_attr(view, index, e, true);
        match p {
            Node::Root => Ok((self.routed_attr(caller, index, e, attr), NO_TTL, LONG_TTL)),
            Node::Routed(..) => Ok((attr, NO_TTL, LONG_TTL)),
            _ => Ok((attr, LONG_TTL, LONG_TTL)),
        }
    }

    /// How long the kernel may remember that a name is missing from
    /// directory `parent`, after [`Vfs::lookup`] found nothing there. Views
    /// are immutable, so below the root a miss holds for as long as a name
    /// does. Never at the shared root (another view may have the name), and
    /// never under a node that is not the caller's own: a miss remembered
    /// there would hide the name from that node's view.
    pub fn miss_ttl(&self, view: Option<&View>, parent: u64, name: &[u8]) -> Duration {
        if name == VIEW_DOOR {
            return NO_TTL;
        }
        if let Some((v, _)) = Self::editing(view) {
            // Every change of names goes through the platform, which
            // drops a remembered miss itself; a reset says so.
            return match parent != ROOT && crate::write::edit_ino(v, parent).is_some() {
                true => LONG_TTL,
                false => NO_TTL,
            };
        }
        match self.resolve(view, parent) {
            Ok(Node::ViewRoot(_)) => LONG_TTL,
            Ok(Node::Entry(_, _, e)) if e.kind == EntryKind::Dir => LONG_TTL,
            _ => NO_TTL,
        }
    }

    /// The attributes of a node and how long they may be cached.
    pub fn getattr(&self, view: Option<&View>, node: u64) -> Result<(Attr, Duration)> {
        if let Some((v, ed)) = Self::editing(view)
            && node != ROOT
            && !crate::content::is_content(node)
        {
            return Ok((self.edit_getattr(v, ed, node)?, LONG_TTL));
        }
        match self.resolve(view, node)? {
            Node::Root => Ok((self.root_attr(), LONG_TTL)),
            Node::ViewRoot(v) => Ok((Self::view_root_attr(v), LONG_TTL)),
            Node::Entry(v, i, e) => Ok((Self::entry_attr(v, i, e), LONG_TTL)),
            Node::Routed(r, _, e) => Ok((self.routed_dir_attr(r, e), LONG_TTL)),
            Node::Content(key) => Ok((Self::content_attr(node, &key), LONG_TTL)),
        }
    }

    /// Whether a directory's listing may be cached (it is the same for
    /// every caller who can reach it).
    pub fn dir_listing_cacheable(&self, view: Option<&View>, node: u64) -> bool {
        node != ROOT && !crate::routed::is_routed(node) && Self::editing(view).is_none()
    }

    /// Check that `node` is a directory the caller can list.
    pub fn opendir(&self, view: Option<&View>, node: u64) -> Result<()> {
        if let Some((v, ed)) = Self::editing(view)
            && !(node == ROOT && v.bound)
        {
            let ino = crate::write::edit_ino(v, node).ok_or(VfsError::NotFound)?;
            return ed.check_dir(ino);
        }
        Self::dir_of(&self.resolve(view, node)?).map(|_| ())
    }

    /// List a directory from `offset` on. `add` receives each entry (`.`
    /// and `..` first) and returns true when the platform's buffer is full
    /// (that entry was not taken). `plus`: the entries after `.` and `..`
    /// are handed to the kernel as references (FUSE `READDIRPLUS`).
    pub fn readdir(
        &self,
        view: Option<&View>,
        node: u64,
        offset: u64,
        plus: bool,
        fh: u64,
        mut add: impl FnMut(DirItem<'_>) -> bool,
    ) -> Result<()> {
        if let Some((v, ed)) = Self::editing(view)
            && !(node == ROOT && v.bound)
        {
            return self.readdir_edit(v, ed, node, offset, plus, fh, add);
        }
        let n = self.resolve(view, node)?;
        let dir = Self::dir_of(&n)?;
        let ttl = match n {
            Node::Root | Node::Routed(..) => NO_TTL,
            _ => LONG_TTL,
        };
        let mut pos = offset;
        if pos == 0 {
            let (attr, _) = self.getattr(view, node)?;
            if add(DirItem {
                name: b".",
                attr,
                next: 1,
                ttl,
            }) {
                return Ok(());
            }
            pos = 1;
        }
        if pos == 1 {
            let parent = match &n {
                Node::Entry(v, _, _) => Self::parent_node(v, dir),
                Node::ViewRoot(v) => node::view_root(v.id),
                Node::Root | Node::Routed(..) | Node::Content(_) => ROOT,
            };
            let (attr, _) = self.getattr(view, parent)?;
            if add(DirItem {
                name: b"..",
                attr,
                next: 2,
                ttl,
            }) {
                return Ok(());
            }
            pos = 2;
        }
        let Some(caller) = view else { return Ok(()) };
        if matches!(n, Node::Root) && caller.bound {
            // Through the shared root, a bound runtime sees only the door.
            return Ok(());
        }
        let view = Self::tree_view(&n, caller);
        let start = view.tree.children_start(dir);
        let kids = view.tree.children(dir);
        let top = matches!(n, Node::Root | Node::ViewRoot(_));
        for (k, e) in kids.iter().enumerate().skip((pos - 2) as usize) {
            if top && *e.name == *VIEW_DOOR {
                // Shadowed by the door: listed, it could not be looked up.
                continue;
            }
            let index = start + k as u32;
            let mut attr = self.handed_attr(view, index, e, plus);
            if matches!(n, Node::Root) {
                attr = self.routed_attr(caller, index, e, attr);
            }
            if add(DirItem {
                name: &e.name,
                attr,
                next: k as u64 + 3,
                ttl,
            }) {
                if plus {
                    self.forget(attr.node, 1);
                }
                break;
            }
        }
        Ok(())
    }

    /// [`Vfs::readdir`] of a directory of an editable view.
    #[allow(clippy::too_many_arguments)]
    fn readdir_edit(
        &self,
        v: &View,
        ed: &crate::edit::Editable,
        node: u64,
        offset: u64,
        plus: bool,
        fh: u64,
        mut add: impl FnMut(DirItem<'_>) -> bool,
    ) -> Result<()> {
        let ttl = if node == ROOT { NO_TTL } else { LONG_TTL };
        // The names as the directory was opened (offsets stay valid while
        // entries come and go: a loop that removes what it lists sees
        // every entry once), each with what it is now (skipped if gone).
        let names: Arc<Vec<Vec<u8>>> = match self.dir_snapshot(fh, node) {
            Some(names) => names,
            None => Arc::new(self.edit_names(v, ed, node)?),
        };
        let parent = self.edit_parent(v, ed, node);
        let dot = self.getattr(Some(v), node)?.0;
        let dotdot = self.getattr(Some(v), parent).map(|a| a.0).unwrap_or(dot);
        let mut pos = offset;
        for (at, name, attr) in [(0, &b"."[..], dot), (1, &b".."[..], dotdot)] {
            if pos != at {
                continue;
            }
            if add(DirItem {
                name,
                attr,
                next: at + 1,
                ttl,
            }) {
                return Ok(());
            }
            pos += 1;
        }
        for (k, name) in names.iter().enumerate().skip((pos - 2) as usize) {
            // Handed out as a reference (READDIRPLUS): counted first. A
            // name gone since the directory was opened is skipped.
            let attr = match plus {
                true => self.edit_lookup(v, ed, node, name),
                false => self.edit_peek(v, ed, node, name),
            };
            let Ok(attr) = attr else { continue };
            if add(DirItem {
                name,
                attr,
                next: k as u64 + 3,
                ttl,
            }) {
                // Not taken.
                if plus && let Some(ino) = crate::write::edit_ino(v, attr.node) {
                    ed.forget(ino, 1);
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// The names of directory handle `fh` of an editable view's directory
    /// `node`, as it was opened (none for a handle of another node: one a
    /// previous service process made).
    fn dir_snapshot(&self, fh: u64, node: u64) -> Option<Arc<Vec<Vec<u8>>>> {
        self.dir_snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .filter(|(n, _)| *n == node)
            .map(|(_, names)| names.clone())
    }

    /// Open directory `node` of an editable view: a handle whose listing
    /// is the names it has now (see [`Vfs::readdir`]); 0 for any other.
    pub fn open_dir_handle(&self, view: Option<&View>, node: u64) -> Result<u64> {
        let Some((v, ed)) = Self::editing(view).filter(|(v, _)| !(node == ROOT && v.bound)) else {
            return Ok(0);
        };
        let names = Arc::new(self.edit_names(v, ed, node)?);
        let fh = self
            .next_dir_handle
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let mut snaps = self.dir_snapshots.lock().unwrap_or_else(|p| p.into_inner());
        if snaps.len() >= MAX_DIR_HANDLES {
            // A runaway opener: the oldest listings restart from now.
            let oldest = *snaps.keys().min().unwrap_or(&0);
            snaps.retain(|k, _| *k > oldest + (MAX_DIR_HANDLES as u64 / 2));
        }
        snaps.insert(fh, (node, names));
        Ok(fh)
    }

    /// Close directory handle `fh` of `node` ([`Vfs::open_dir_handle`]).
    pub fn release_dir_handle(&self, fh: u64, node: u64) {
        let mut snaps = self.dir_snapshots.lock().unwrap_or_else(|p| p.into_inner());
        if fh != 0 && snaps.get(&fh).is_some_and(|(n, _)| *n == node) {
            snaps.remove(&fh);
        }
    }

    /// The node id of the parent of directory `dir` of a view.
    fn parent_node(view: &View, dir: u32) -> u64 {
        let span = view.tree.dirs()[dir as usize];
        if span.parent == 0 {
            return match view.bound {
                true => node::view_root(view.id),
                false => ROOT,
            };
        }
        let grand = view.tree.dirs()[span.parent as usize].parent;
        let start = view.tree.children_start(grand);
        view.tree
            .children(grand)
            .iter()
            .position(|e| e.kind == EntryKind::Dir && e.dir == span.parent)
            .map(|k| node::node_id(view.id, start + k as u32))
            .unwrap_or(ROOT)
    }

    /// The target of a symbolic link.
    pub fn readlink(&self, view: Option<&View>, node: u64) -> Result<Vec<u8>> {
        if let Some((v, ed)) = Self::editing(view) {
            return self.edit_readlink(v, ed, node);
        }
        match self.resolve(view, node)? {
            Node::Entry(_, _, e) if e.kind == EntryKind::Symlink => self.lower_link_target(e),
            _ => Err(VfsError::NotSymlink),
        }
    }

    /// The target of symlink entry `e` of a stack.
    pub(crate) fn lower_link_target(&self, e: &Entry) -> Result<Vec<u8>> {
        if e.size > MAX_LINK_TARGET {
            return Err(VfsError::Corrupt(e.object));
        }
        // Targets come from public copies only (a committed symlink is
        // readable by all): the kernel caches a target for every process
        // of the view, whoever they run as.
        let mut target = Vec::with_capacity(e.size as usize);
        let mut link = self.payload(&e.object, e.size, PUBLIC_ONLY)?.file;
        std::io::Read::read_to_end(&mut link, &mut target)?;
        Ok(target)
    }

    /// Open the payload of a file for reading, for a runtime owned by
    /// `owner`: a copy that user may read, and which one it is.
    pub fn open(
        &self,
        view: Option<&View>,
        owner: u32,
        node: u64,
        write: bool,
    ) -> Result<OpenedPayload> {
        let (digest, size, reader) = self.file_of(view, owner, node)?;
        if write {
            return Err(VfsError::ReadOnly);
        }
        self.payload(&digest, size, reader)
    }

    /// Like [`Vfs::open`] for reading, but a payload that must come from a
    /// remote is not waited for: its fetch starts (once) and the answer is
    /// [`VfsError::Fetching`], so that the caller can serve the bytes it
    /// needs now with [`Vfs::read_remote`].
    pub fn open_now(&self, view: Option<&View>, owner: u32, node: u64) -> Result<OpenedPayload> {
        let (digest, size, reader) = self.file_of(view, owner, node)?;
        self.payload_with(&digest, size, reader, !self.ranged_reads)
    }

    /// Bytes `offset..offset + size` of a file whose payload is being
    /// fetched, read from the remote directly (not yet checked against its
    /// digest: only the whole payload can be, which the fetch does). Only
    /// a public copy is served to users other than root.
    pub fn read_remote(
        &self,
        view: Option<&View>,
        owner: u32,
        node: u64,
        offset: u64,
        size: usize,
    ) -> Result<Vec<u8>> {
        let (digest, _, reader) = self.file_of(view, owner, node)?;
        let rt = self
            .read_through
            .as_ref()
            .ok_or_else(|| VfsError::MissingPayload(digest.to_string()))?;
        let (bytes, public) = rt
            .read_range(&digest, offset, size as u64)
            .and_then(|found| match rt.failed(&digest) {
                // The whole payload failed its digest: its bytes are bad.
                Some(why) => Err(StorageError::Remote {
                    address: "read-through".into(),
                    message: why,
                }),
                None => Ok(found),
            })
            .map_err(|e| {
                tracing::warn!("payload {digest} could not be read through: {e}");
                VfsError::MissingPayload(format!("{digest} ({e})"))
            })?;
        if !public && reader != 0 {
            return Err(VfsError::PermissionDenied(digest));
        }
        Ok(bytes)
    }

    /// The payload a file node reads (digest, size) and whose copies may
    /// serve it (the reader: `owner`, or for a content node, whose pages
    /// reach every view that holds the file, public copies only).
    fn file_of(&self, view: Option<&View>, owner: u32, node: u64) -> Result<(Digest, u64, u32)> {
        match self.resolve(view, node)? {
            Node::Root | Node::ViewRoot(_) => Err(VfsError::IsDir),
            Node::Entry(_, _, e) if e.kind == EntryKind::Dir => Err(VfsError::IsDir),
            Node::Routed(..) => Err(VfsError::IsDir),
            Node::Entry(_, _, e) => Ok((e.object, e.size, owner)),
            Node::Content(key) => Ok((key.digest, key.size, PUBLIC_ONLY)),
        }
    }

    /// Open the payload of an entry as `owner` may be served it (see
    /// [`spfs_storage::payload`]), verified against its digest the first
    /// time this service serves that file (see [`crate::verify`]).
    fn payload(&self, digest: &Digest, size: u64, owner: u32) -> Result<OpenedPayload> {
        self.payload_with(digest, size, owner, true)
    }

    /// [`Vfs::payload`] for the editable views' operations.
    pub(crate) fn payload_for(
        &self,
        digest: &Digest,
        size: u64,
        owner: u32,
    ) -> Result<OpenedPayload> {
        self.payload(digest, size, owner)
    }

    /// [`Vfs::payload`]; `wait`: for a fetch from a remote, else
    /// [`VfsError::Fetching`].
    fn payload_with(
        &self,
        digest: &Digest,
        size: u64,
        owner: u32,
        wait: bool,
    ) -> Result<OpenedPayload> {
        let mut opened = self.repo.open_payload_as(digest, owner);
        // Not stored here: fetched from a remote (once, however many ask),
        // then opened like any local payload.
        if let (Err(StorageError::UnknownObject(_)), Some(rt)) = (&opened, &self.read_through) {
            if !wait {
                rt.start_fetch(&self.repo, digest);
                return Err(VfsError::Fetching(*digest));
            }
            if let Err(e) = rt.fetch_payload(&self.repo, digest) {
                tracing::warn!("payload {digest} could not be read through: {e}");
                return Err(VfsError::MissingPayload(format!("{digest} ({e})")));
            }
            opened = self.repo.open_payload_as(digest, owner);
        }
        let opened = opened.map_err(|err| match err {
            StorageError::UnknownObject(d) => VfsError::MissingPayload(d.to_string()),
            StorageError::PayloadNotReadable(d) => VfsError::PermissionDenied(d),
            StorageError::Io { source, .. } => VfsError::Io(source),
            other => VfsError::Io(std::io::Error::other(other.to_string())),
        })?;
        self.verifier.check(&self.repo, digest, size, &opened)?;
        Ok(opened)
    }

    /// Numbers for `statfs`: the caller's view's size.
    pub fn statfs(&self, view: Option<&View>) -> FsStats {
        if let Some((_, ed)) = Self::editing(view)
            && let Ok(s) = ed.statvfs()
        {
            // The disk the edits go to.
            let in_4k = |n: u64| (n as u128 * s.f_frsize.max(1) as u128 / 4096) as u64;
            return FsStats {
                blocks: in_4k(s.f_blocks),
                free_blocks: in_4k(s.f_bavail),
                free_files: s.f_favail,
                files: s.f_files,
                block_size: 4096,
                name_max: 255,
            };
        }
        let (bytes, files) = view
            .map(|v| (v.tree.total_size(), v.tree.len() as u64))
            .unwrap_or((0, 0));
        FsStats {
            blocks: bytes.div_ceil(4096),
            free_blocks: 0,
            free_files: 0,
            files,
            block_size: 4096,
            name_max: 255,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spfs_model::{Digest, TreeBuilder};

    fn view_with(vfs: &Vfs, name: &str, content: &[u8]) -> std::sync::Arc<crate::Runtime> {
        let d = vfs.repo().write_blob(content).unwrap();
        let mut b = TreeBuilder::new();
        b.add_with_mtime(
            b"dir/file",
            EntryKind::File,
            0o100644,
            content.len() as u64,
            d,
            -1_500_000_000,
        )
        .unwrap();
        b.add_dir_with_mtime(b"dir", 0o040755, 1_700_000_000_000_000_007)
            .unwrap();
        let tree = b.build().unwrap();
        crate::registry::register_tree(&vfs.registry, name, 0, vec![Digest::of(content)], tree)
    }

    #[test]
    fn views_are_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Vfs::new(FsRepository::create(dir.path()).unwrap());
        let a = view_with(&vfs, "a", b"alpha");
        // Alone, a's `dir` is handed out as its own node.
        let (da, ttl, _) = vfs.lookup(Some(&a.view), ROOT, b"dir").unwrap();
        assert_eq!(ttl, NO_TTL, "names in the shared root are never cached");
        let b = view_with(&vfs, "b", b"beta!!");
        // b's differs and came while a ran: b is handed the routed
        // directory of the name (crate::routed); a keeps its own node.
        let (db, _, _) = vfs.lookup(Some(&b.view), ROOT, b"dir").unwrap();
        assert_eq!(db.node, crate::routed::routed_node(0, b"dir", 0o755));
        let db = b.view.dir_node(b.view.tree.find(0, b"dir").unwrap());
        assert_ne!(da.node, db);
        let (fa, ttl, _) = vfs.lookup(Some(&a.view), da.node, b"file").unwrap();
        assert_eq!(ttl, LONG_TTL);
        assert_eq!(fa.size, 5);
        // Misses are remembered only in the caller's own directories.
        assert_eq!(vfs.miss_ttl(Some(&a.view), da.node, b"x"), LONG_TTL);
        assert_eq!(vfs.miss_ttl(Some(&a.view), ROOT, b"x"), NO_TTL);
        assert_eq!(vfs.miss_ttl(Some(&b.view), da.node, b"x"), NO_TTL);
        assert_eq!(vfs.miss_ttl(Some(&b.view), db, b"x"), LONG_TTL);
        assert_eq!(vfs.miss_ttl(Some(&a.view), fa.node, b"x"), NO_TTL);
        assert_eq!(vfs.miss_ttl(None, da.node, b"x"), NO_TTL);
        // Every entry shows its own time.
        assert_eq!(
            da.mtime,
            SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 7)
        );
        assert_eq!(
            fa.mtime,
            SystemTime::UNIX_EPOCH - Duration::from_millis(1500)
        );
        // b's process presenting a's node is refused.
        assert!(matches!(
            vfs.lookup(Some(&b.view), da.node, b"file"),
            Err(VfsError::NotFound)
        ));
        assert!(matches!(
            vfs.getattr(None, fa.node),
            Err(VfsError::NotFound)
        ));
        // An outsider sees an empty root.
        assert!(matches!(
            vfs.lookup(None, ROOT, b"dir"),
            Err(VfsError::NotFound)
        ));
        let mut names = Vec::new();
        vfs.readdir(None, ROOT, 0, false, 0, |item| {
            names.push(item.name.to_vec());
            false
        })
        .unwrap();
        assert_eq!(names, [b".".to_vec(), b"..".to_vec()]);
        let mut f = vfs.open(Some(&a.view), 0, fa.node, false).unwrap().file;
        let mut s = String::new();
        std::io::Read::read_to_string(&mut f, &mut s).unwrap();
        assert_eq!(s, "alpha");
        assert!(matches!(
            vfs.open(Some(&a.view), 0, fa.node, true),
            Err(VfsError::ReadOnly)
        ));
    }
    fn bound_view(vfs: &Vfs, name: &str, content: &[u8]) -> std::sync::Arc<crate::Runtime> {
        let d = vfs.repo().write_blob(content).unwrap();
        let mut b = TreeBuilder::new();
        b.add(
            b"dir/file",
            EntryKind::File,
            0o100644,
            content.len() as u64,
            d,
        )
        .unwrap();
        let spec = crate::RuntimeSpec {
            name: name.into(),
            root_pid: 1,
            owner_uid: 0,
            bound: true,
            edit: None,
            view_id: None,
            shared: None,
            routed: Vec::new(),
        };
        crate::registry::register_tree_as(&vfs.registry, spec, vec![d], b.build().unwrap())
    }

    fn names(vfs: &Vfs, view: Option<&View>, node: u64) -> Vec<String> {
        let mut names = Vec::new();
        vfs.readdir(view, node, 0, false, 0, |item| {
            names.push(String::from_utf8_lossy(item.name).into_owned());
            false
        })
        .unwrap();
        names
    }

    #[test]
    fn a_top_level_entry_named_like_the_door_is_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Vfs::new(FsRepository::create(dir.path()).unwrap());
        let mut b = TreeBuilder::new();
        b.add_dir(VIEW_DOOR, 0o040755).unwrap();
        b.add_dir(b"dir", 0o040755).unwrap();
        let rt = crate::registry::register_tree(
            &vfs.registry,
            "door",
            0,
            vec![Digest::of(b"door")],
            b.build().unwrap(),
        );
        let v = Some(&*rt.view);
        assert_eq!(names(&vfs, v, ROOT), [".", "..", "dir"]);
        assert!(matches!(
            vfs.lookup(v, ROOT, VIEW_DOOR),
            Err(VfsError::NotFound)
        ));
    }

    #[test]
    fn a_bound_view_is_reached_through_its_door_only() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Vfs::new(FsRepository::create(dir.path()).unwrap());
        let routed = view_with(&vfs, "routed", b"alpha");
        let bound = bound_view(&vfs, "bound", b"beta");
        let nested = bound_view(&vfs, "nested", b"gamma");
        let (a, b, c) = (Some(&*routed.view), Some(&*bound.view), Some(&*nested.view));
        // The door opens for bound callers only, each on their own root,
        // and is never cached.
        for view in [a, None] {
            assert!(matches!(
                vfs.lookup(view, ROOT, VIEW_DOOR),
                Err(VfsError::NotFound)
            ));
            assert_eq!(vfs.miss_ttl(view, ROOT, VIEW_DOOR), NO_TTL);
        }
        let (root_b, ttl, _) = vfs.lookup(b, ROOT, VIEW_DOOR).unwrap();
        assert_eq!(ttl, NO_TTL);
        assert_eq!(root_b.node, node::view_root(bound.view.id));
        assert_eq!(root_b.kind, NodeKind::Dir);
        // Through the shared root a bound caller sees only the door.
        assert!(matches!(
            vfs.lookup(b, ROOT, b"dir"),
            Err(VfsError::NotFound)
        ));
        assert_eq!(names(&vfs, b, ROOT), [".", ".."]);
        // Below its own root, every name and miss is cached.
        let (d, ttl, _) = vfs.lookup(b, root_b.node, b"dir").unwrap();
        assert_eq!(ttl, LONG_TTL);
        assert_eq!(vfs.miss_ttl(b, root_b.node, b"missing"), LONG_TTL);
        assert_eq!(vfs.miss_ttl(b, root_b.node, VIEW_DOOR), NO_TTL);
        assert_eq!(names(&vfs, b, root_b.node), [".", "..", "dir"]);
        let mut parent = None;
        vfs.readdir(b, d.node, 0, false, 0, |item| {
            if item.name == b".." {
                parent = Some(item.attr.node);
            }
            false
        })
        .unwrap();
        assert_eq!(
            parent,
            Some(root_b.node),
            "the top's parent is the view root"
        );
        // A runtime nested in the bound one finds its own root through the
        // door of its parent's, and nothing else of its parent's.
        assert!(matches!(
            vfs.lookup(b, root_b.node, VIEW_DOOR),
            Err(VfsError::NotFound)
        ));
        let (root_c, _, _) = vfs.lookup(c, root_b.node, VIEW_DOOR).unwrap();
        assert_eq!(root_c.node, node::view_root(nested.view.id));
        assert!(matches!(
            vfs.lookup(c, root_b.node, b"dir"),
            Err(VfsError::NotFound)
        ));
        assert_eq!(vfs.miss_ttl(c, root_b.node, b"dir"), NO_TTL);
        // Nobody else may use a bound view's root, and a routed view has none.
        assert!(vfs.getattr(a, root_b.node).is_err());
        assert!(vfs.getattr(None, root_b.node).is_err());
        assert!(vfs.getattr(a, node::view_root(routed.view.id)).is_err());
        assert!(matches!(
            vfs.open(b, 0, root_b.node, false),
            Err(VfsError::IsDir)
        ));
    }

    /// Two stacks holding the same public file share one node for it (and
    /// so the kernel's pages); a different mode or time is another node;
    /// a file without a public copy keeps its view's own node.
    #[test]
    fn public_files_are_one_node_in_every_view() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Vfs::new(FsRepository::create(dir.path()).unwrap());
        let public = |bytes: &[u8]| {
            let readers = spfs_storage::Readers::Everyone;
            vfs.repo()
                .write_blob_from(&mut &bytes[..], readers)
                .unwrap()
                .0
        };
        let d = public(b"shared bytes");
        assert!(vfs.repo().has_public_payload(&d));
        // Not yet verified: a node of the view's own; once this service
        // has served (and so verified) the public copy, a content node.
        let first = {
            let o = public(b"first");
            let mut b = TreeBuilder::new();
            b.add(b"shared", EntryKind::File, 0o100644, 12, d).unwrap();
            crate::registry::register_tree(&vfs.registry, "first", 0, vec![o], b.build().unwrap())
        };
        let (f, _, _) = vfs.lookup(Some(&first.view), ROOT, b"shared").unwrap();
        assert!(!crate::content::is_content(f.node), "unverified");
        vfs.open(Some(&first.view), 0, f.node, false).unwrap();
        let view = |name: &str, other: &[u8], mode: u32| {
            // Private (written only for this user): a node per view.
            let o = vfs.repo().write_blob(other).unwrap();
            let mut b = TreeBuilder::new();
            b.add(b"lib/shared", EntryKind::File, mode, 12, d).unwrap();
            b.add(b"lib/own", EntryKind::File, 0o100644, other.len() as u64, o)
                .unwrap();
            crate::registry::register_tree(&vfs.registry, name, 0, vec![o], b.build().unwrap())
        };
        let (a, b, c) = (
            view("a", b"a", 0o100644),
            view("b", b"b", 0o100644),
            view("c", b"c", 0o100755),
        );
        let file = |rt: &crate::Runtime, name: &[u8]| {
            let v = Some(&*rt.view);
            let (lib, _, _) = vfs.lookup(v, ROOT, b"lib").unwrap();
            vfs.lookup(v, lib.node, name).unwrap().0
        };
        let (sa, sb, sc) = (
            file(&a, b"shared"),
            file(&b, b"shared"),
            file(&c, b"shared"),
        );
        assert!(crate::content::is_content(sa.node));
        assert_eq!(sa.node, sb.node, "one node for one file in two views");
        assert_ne!(sa.node, sc.node, "another mode is another node");
        assert_eq!(sc.perm, 0o755);
        let (oa, ob) = (file(&a, b"own"), file(&b, b"own"));
        assert!(!crate::content::is_content(oa.node) && oa.node != ob.node);
        // Listing (READDIRPLUS) hands out the same node.
        let (lib, _, _) = vfs.lookup(Some(&b.view), ROOT, b"lib").unwrap();
        let mut listed = None;
        vfs.readdir(Some(&b.view), lib.node, 0, true, 0, |item| {
            if item.name == b"shared" {
                listed = Some(item.attr.node);
            }
            false
        })
        .unwrap();
        assert_eq!(listed, Some(sa.node));
        // Readable by anyone who reached it, with its own attributes.
        let mut f = vfs.open(None, 1234, sa.node, false).unwrap().file;
        let mut s = String::new();
        std::io::Read::read_to_string(&mut f, &mut s).unwrap();
        assert_eq!(s, "shared bytes");
        assert_eq!(vfs.getattr(None, sa.node).unwrap().0.size, 12);
        assert!(matches!(
            vfs.open(None, 0, sa.node, true),
            Err(VfsError::ReadOnly)
        ));
        // Forgotten once every reference handed out is dropped: two
        // lookups and one listing.
        vfs.forget(sa.node, 3);
        assert!(vfs.getattr(None, sa.node).is_err());
    }

    /// Someone puts other bytes under the public name of a digest that
    /// only alice has (privately): no content node is ever made of it, so
    /// alice's bytes never reach a node another view shares, and alice
    /// keeps reading her own copy.
    #[test]
    fn a_squatted_public_name_makes_no_shared_node() {
        if !can_give_files_away() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let vfs = Vfs::new(FsRepository::create(dir.path()).unwrap());
        let (alice, bob) = (64_211, 64_212);
        let d = private_copy(vfs.repo(), alice, b"alice's secret");
        let text = d.to_string();
        let public_path = dir
            .path()
            .join("payloads")
            .join(&text[..2])
            .join(&text[2..]);
        std::fs::write(&public_path, b"bob's garbage!").unwrap();
        std::fs::set_permissions(
            &public_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o444),
        )
        .unwrap();
        assert!(vfs.repo().has_public_payload(&d));
        let mut b = TreeBuilder::new();
        b.add(b"secret", EntryKind::File, 0o100644, 14, d).unwrap();
        let tree = b.build().unwrap();
        let a = crate::registry::register_tree(&vfs.registry, "a", alice, vec![d], tree.clone());
        let bv = crate::registry::register_tree(&vfs.registry, "b", bob, vec![d], tree);
        for _ in 0..2 {
            let (fa, _, _) = vfs.lookup(Some(&a.view), ROOT, b"secret").unwrap();
            let (fb, _, _) = vfs.lookup(Some(&bv.view), ROOT, b"secret").unwrap();
            assert!(!crate::content::is_content(fa.node) && !crate::content::is_content(fb.node));
            assert_ne!(fa.node, fb.node);
            let opened = vfs.open(Some(&a.view), alice, fa.node, false).unwrap();
            assert_eq!(opened.copy, spfs_storage::PayloadCopy::Private(alice));
            // Bob gets the squatted bytes refused (and quarantined), never alice's.
            assert!(vfs.open(Some(&bv.view), bob, fb.node, false).is_err());
        }
    }

    /// Whether this process may give files to other users (root); tests
    /// that need it print why they skip.
    fn can_give_files_away() -> bool {
        // The owner of what this process makes is its user.
        let probe = tempfile::tempfile().unwrap();
        let root = std::os::unix::fs::MetadataExt::uid(&probe.metadata().unwrap()) == 0;
        if !root {
            eprintln!("skipping: giving files to other users needs root");
        }
        root
    }

    /// Put `bytes` in `repo` as `uid`'s private copy (0400, `uid`'s).
    fn private_copy(repo: &FsRepository, uid: u32, bytes: &[u8]) -> Digest {
        let d = Digest::of(bytes);
        let path = repo.private_payload_path(&d, uid);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        std::os::unix::fs::chown(&path, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o400))
            .unwrap();
        d
    }

    /// A manifest anyone may write naming another user's private payload,
    /// as a file readable by all and as a symlink: the payload is served
    /// to its owner's runtimes and root's, and to nobody else's.
    #[test]
    fn a_private_payload_is_served_only_to_its_owner() {
        if !can_give_files_away() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let vfs = Vfs::new(FsRepository::create(dir.path()).unwrap());
        let (alice, bob) = (64_201, 64_202);
        let d = private_copy(vfs.repo(), alice, b"alice's secret");
        let mut b = TreeBuilder::new();
        b.add(b"secret", EntryKind::File, 0o100644, 14, d).unwrap();
        b.add(b"link", EntryKind::Symlink, 0o120777, 14, d).unwrap();
        let tree = b.build().unwrap();
        let rt = crate::registry::register_tree(
            &vfs.registry,
            "forged",
            bob,
            vec![Digest::of(b"forged stack")],
            tree,
        );
        let view = Some(&*rt.view);
        let (file, _, _) = vfs.lookup(view, ROOT, b"secret").unwrap();
        let (link, _, _) = vfs.lookup(view, ROOT, b"link").unwrap();
        let err = vfs.open(view, bob, file.node, false).unwrap_err();
        assert!(matches!(err, VfsError::PermissionDenied(_)), "{err}");
        assert_eq!(err.errno(), 13, "EACCES");
        let err = vfs.readlink(view, link.node).unwrap_err();
        assert!(matches!(err, VfsError::PermissionDenied(_)), "{err}");
        assert_eq!(vfs.verifier.hashed(), 0, "nothing of it was read");
        for owner in [alice, 0] {
            let opened = vfs.open(view, owner, file.node, false).unwrap();
            assert_eq!(opened.copy, spfs_storage::PayloadCopy::Private(alice));
            // A target comes from a public copy only, whoever asks: the
            // kernel caches it for every process of the view.
            assert!(matches!(
                vfs.readlink(view, link.node),
                Err(VfsError::PermissionDenied(_))
            ));
        }
        // Verified for alice: still refused to bob.
        assert!(matches!(
            vfs.open(view, bob, file.node, false),
            Err(VfsError::PermissionDenied(_))
        ));
        // Bob's own copy of the same bytes is bob's to read, and is
        // verified on its own: a corrupt one is refused, alice's stays.
        let bobs = vfs.repo().private_payload_path(&d, bob);
        std::fs::write(&bobs, b"alice's secreT").unwrap();
        std::os::unix::fs::chown(&bobs, Some(bob), Some(bob)).unwrap();
        let err = vfs.open(view, bob, file.node, false).unwrap_err();
        assert!(matches!(err, VfsError::Corrupt(_)), "{err}");
        assert!(!bobs.exists(), "bob's corrupt copy is quarantined");
        assert!(vfs.open(view, alice, file.node, false).is_ok());
        private_copy(vfs.repo(), bob, b"alice's secret");
        let opened = vfs.open(view, bob, file.node, false).unwrap();
        assert_eq!(opened.copy, spfs_storage::PayloadCopy::Private(bob));
    }

    #[test]
    fn a_symlink_entry_claiming_a_huge_target_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Vfs::new(FsRepository::create(dir.path()).unwrap());
        let d = vfs.repo().write_blob(b"target").unwrap();
        let mut b = TreeBuilder::new();
        b.add(b"huge", EntryKind::Symlink, 0o120777, 1 << 62, d)
            .unwrap();
        let tree = b.build().unwrap();
        let rt = crate::registry::register_tree(&vfs.registry, "huge", 0, vec![d], tree);
        let (link, _, _) = vfs.lookup(Some(&rt.view), ROOT, b"huge").unwrap();
        assert!(matches!(
            vfs.readlink(Some(&rt.view), link.node),
            Err(VfsError::Corrupt(_))
        ));
    }
}
