//! Editable views: a runtime's own writable layer over its stack.
//!
//! An editable view is never shared: it belongs to one runtime, whose
//! writes go to that runtime's *upper area* on local disk ([`upper`]),
//! laid over the merged tree of its stack (the *lower* tree) the way
//! overlayfs lays an upper directory over lower ones. This module owns the
//! rules; the platform host only forwards requests.
//!
//! **Inodes.** A read-only view names an entry by its index in the tree;
//! an editable view's entries move (rename), appear and go, so they are
//! named by inode numbers this module hands out: an [`Inode`] remembers
//! the names it is linked under (a parent inode and a name), and what it
//! is is found again from its path on each request, first in the upper
//! area, then below. Inode 0 is the view's root. Numbers are never reused
//! in a view's life; an inode is forgotten when the platform forgets it.
//!
//! **Copy-up.** The first change to an entry of the lower tree (a write,
//! a truncation, chmod, chown, utimens, a hard link, a rename) copies it
//! into the upper area first, with its mode, time and the runtime owner
//! as owner; a directory is copied without its children.
//!
//! **Masks.** Removing or renaming away a name that exists below leaves a
//! whiteout; renaming a directory that has contents below records where
//! they are ([`upper::Origin::Redirect`]), so nothing is copied.
//!
//! **Locking.** One lock per view orders every change of names and
//! attributes (its processes see them in one order, as on a local disk);
//! file data is read and written outside it.
//!
//! What the lower tree is changes only by [`Editable::replace_lower`]
//! (`spfs commit layer` puts the edits into a new layer of the stack and
//! empties the upper area without changing what anyone sees).

pub mod commit;
pub mod kept;
pub mod snapshot;
pub mod upper;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;
use spfs_model::{Digest, Entry, EntryKind, Tree};

use crate::vfs::{Attr, NodeKind, VfsError};
use upper::{Origin, Upper};

type Result<T, E = VfsError> = std::result::Result<T, E>;

/// The view's root directory.
pub const ROOT_INODE: u32 = 0;

/// The most inode numbers a view hands out in its life.
const MAX_INODE: u32 = u32::MAX - 2;

/// The inode number shown for a listed name nobody looked up.
pub const UNKNOWN_INODE: u32 = u32::MAX - 1;

/// What a directory is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DirInfo {
    /// Whether it exists in the upper area.
    upper: bool,
    /// The directory of the lower tree it merges with, if any.
    origin: Option<u32>,
}

/// An entry the platform knows by number.
#[derive(Debug)]
struct Inode {
    /// The names it is linked under (more than one: hard links); none once
    /// removed while the platform still knows it.
    links: Vec<(u32, Box<[u8]>)>,
    /// References the platform holds (lookups not yet forgotten).
    lookups: u64,
    /// For a directory: what it is made of (found on first use).
    dir: Option<DirInfo>,
}

/// Where a name is found.
#[derive(Clone, Debug)]
enum Found {
    Upper(Stat),
    Lower(u32),
}

/// A time to set.
#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    Now,
    At(SystemTime),
}

/// The attribute changes of a `setattr`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// What serves a file's bytes.
pub enum Source {
    /// Its copy in the upper area.
    Upper(Arc<File>),
    /// An entry of the lower tree (served from the repository).
    Lower(Entry),
}

/// Names and nodes the platform may have cached that changed without its
/// knowing (a reset, a commit): forget them.
#[derive(Debug, Default)]
pub struct Stale {
    /// Inodes whose attributes or data may differ.
    pub inodes: Vec<u32>,
    /// Names (parent inode, name) that may now name something else.
    pub names: Vec<(u32, Vec<u8>)>,
}

struct State {
    lower: Arc<Tree>,
    /// The stack `lower` is merged from, bottom first.
    stack: Vec<Digest>,
    inodes: HashMap<u32, Inode>,
    names: HashMap<(u32, Box<[u8]>), u32>,
    next: u32,
    /// Numbers below this may be handed out without asking `reserve`.
    reserved_until: u32,
    /// Records that numbers up to its argument may be handed out (in the
    /// service's ledger, so a process taking the view over after a crash
    /// starts above every number the kernel may hold); false: refused.
    reserve: Option<Arc<Reserve>>,
    /// Upper files kept open for reads and writes by inode, within the
    /// view's bound and the service-wide budget ([`kept`]): a file closed
    /// to make room is opened again by name when next used.
    files: kept::ViewKept,
}

impl State {
    /// Keep `file` open for `ino` (see [`kept`]: files that still have a
    /// name are closed first to make room; a removed one only when its
    /// view keeps nothing else, and then its readers get an error).
    fn keep_file(&mut self, ino: u32, file: Arc<File>) {
        let named = self.inodes.get(&ino).is_some_and(|n| !n.links.is_empty());
        self.files.keep(ino, file, named);
    }
}

/// Records that inode numbers below its argument may be handed out.
pub type Reserve = dyn Fn(u32) -> bool + Send + Sync;

/// Inode numbers reserved at a time (see [`Editable::reserve_inodes`]).
const INODE_BLOCK: u32 = 1 << 16;

/// Opens the payload of a lower file (verified), for copy-up.
pub type OpenLower<'a> = &'a dyn Fn(&Entry) -> Result<File>;

/// The editing state of one editable view.
pub struct Editable {
    upper: Upper,
    state: Mutex<State>,
    /// Writes of file data hold this shared (they write outside the state
    /// lock); a commit and a reset hold it alone, so no write lands in an
    /// upper file they are setting aside.
    data: std::sync::RwLock<()>,
    /// Shown as the owner of everything from the layers below, and the
    /// owner of what is copied up.
    owner: (u32, u32),
    writable: AtomicBool,
}

impl std::fmt::Debug for Editable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Editable")
            .field("upper", &self.upper.path())
            .field("owner", &self.owner)
            .finish()
    }
}

fn errno(e: Errno) -> VfsError {
    VfsError::Io(e.into())
}

fn to_timespec(t: SystemTime) -> Timespec {
    let ns = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
    };
    Timespec {
        tv_sec: ns.div_euclid(1_000_000_000) as _,
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    }
}

fn ns_timespec(ns: i64) -> Timespec {
    Timespec {
        tv_sec: ns.div_euclid(1_000_000_000) as _,
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    }
}

fn set_time(t: Option<SetTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT as _,
        },
        Some(SetTime::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW as _,
        },
        Some(SetTime::At(t)) => to_timespec(t),
    }
}

fn kind_of_mode(mode: u32) -> NodeKind {
    match FileType::from_raw_mode(mode) {
        FileType::Directory => NodeKind::Dir,
        FileType::Symlink => NodeKind::Symlink,
        _ => NodeKind::File,
    }
}

/// The modification time of `st`, in nanoseconds since the epoch.
fn ns_of_stat(st: &Stat) -> i64 {
    spfs_model::time::from_unix(st.st_mtime, st.st_mtime_nsec as i64)
}

/// The attributes of an entry of the upper area (`node`: its inode).
fn stat_attr(ino: u32, st: &Stat) -> Attr {
    let kind = kind_of_mode(st.st_mode);
    Attr {
        node: ino as u64,
        kind,
        perm: (st.st_mode & 0o7777) as u16,
        size: st.st_size as u64,
        // A directory's count of subdirectories is not known without
        // merging it with the one below: 1 says "unknown" to tools that
        // would otherwise trust it (find, fts).
        nlink: if kind == NodeKind::Dir {
            1
        } else {
            st.st_nlink as u32
        },
        mtime: spfs_model::time::to_system_time(ns_of_stat(st)),
        uid: st.st_uid,
        gid: st.st_gid,
    }
}

/// The directory number of path `path` (absolute or not) of `tree`.
fn lower_dir_at(tree: &Tree, path: &[u8]) -> Option<u32> {
    let mut dir = 0u32;
    for part in path.split(|b| *b == b'/').filter(|p| !p.is_empty()) {
        let i = tree.find(dir, part)?;
        let e = &tree.entries()[i as usize];
        if e.kind != EntryKind::Dir {
            return None;
        }
        dir = e.dir;
    }
    Some(dir)
}

/// The directory of `tree` that upper directory `name`, in a directory
/// merging with `parent` (of `tree`), merges with, as its `origin` says.
fn child_origin(tree: &Tree, parent: Option<u32>, name: &[u8], origin: Origin) -> Option<u32> {
    match origin {
        Origin::Opaque => None,
        Origin::Redirect(p) => lower_dir_at(tree, &p),
        Origin::Inherit => parent
            .and_then(|d| tree.find(d, name))
            .map(|i| &tree.entries()[i as usize])
            .filter(|e| e.kind == EntryKind::Dir)
            .map(|e| e.dir),
    }
}

/// The absolute path of directory `dir` of `tree`.
fn lower_dir_path(tree: &Tree, mut dir: u32) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    while dir != 0 {
        let parent = tree.dirs()[dir as usize].parent;
        match tree
            .children(parent)
            .iter()
            .find(|e| e.kind == EntryKind::Dir && e.dir == dir)
        {
            Some(e) => parts.push(&e.name),
            None => break,
        }
        dir = parent;
    }
    let mut out = Vec::new();
    for p in parts.iter().rev() {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl Editable {
    /// The editing state of a view over `lower`, whose edits are in the
    /// upper area at `upper`, owned by `owner` (uid, gid).
    pub fn new(upper: Upper, stack: Vec<Digest>, lower: Arc<Tree>, owner: (u32, u32)) -> Editable {
        let mut inodes = HashMap::new();
        inodes.insert(
            ROOT_INODE,
            Inode {
                links: Vec::new(),
                lookups: u64::MAX / 2,
                dir: None,
            },
        );
        Editable {
            upper,
            state: Mutex::new(State {
                lower,
                stack,
                inodes,
                names: HashMap::new(),
                next: 1,
                reserved_until: u32::MAX,
                reserve: None,
                files: kept::ViewKept::new(owner.0),
            }),
            owner,
            data: std::sync::RwLock::new(()),
            writable: AtomicBool::new(true),
        }
    }

    /// The runtime owner's user id.
    pub fn owner_uid(&self) -> u32 {
        self.owner.0
    }

    /// The group shown as the owner of the layers' entries.
    pub fn owner_gid(&self) -> u32 {
        self.owner.1
    }

    /// Hand out inode numbers from `floor` up only (a previous service
    /// process may have handed out every number below it), each block
    /// recorded by `reserve` first. False if `reserve` refused.
    pub fn reserve_inodes(&self, floor: u32, reserve: Arc<Reserve>) -> bool {
        let mut st = self.lock();
        st.next = st.next.max(floor);
        let until = st.next.saturating_add(INODE_BLOCK).min(MAX_INODE);
        if !reserve(until) {
            return false;
        }
        st.reserved_until = until;
        st.reserve = Some(reserve);
        true
    }

    /// No inode number at or above this was handed out.
    pub fn inodes_reserved(&self) -> u32 {
        let st = self.lock();
        match st.reserve {
            Some(_) => st.reserved_until,
            None => st.next,
        }
    }

    pub fn upper(&self) -> &Upper {
        &self.upper
    }

    /// Whether changes are taken (`spfs edit --off` stops them).
    pub fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    pub fn set_writable(&self, on: bool) {
        self.writable.store(on, Ordering::Relaxed)
    }

    /// The lower tree now.
    pub fn lower(&self) -> Arc<Tree> {
        self.lock().lower.clone()
    }

    /// The stack below now, bottom first.
    pub fn stack(&self) -> Vec<Digest> {
        self.lock().stack.clone()
    }

    /// The directory holding `ino`'s first name.
    pub fn parent_of(&self, ino: u32) -> Option<u32> {
        self.lock()
            .inodes
            .get(&ino)
            .and_then(|n| n.links.first().map(|l| l.0))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_writable(&self) -> Result<()> {
        match self.is_writable() {
            true => Ok(()),
            false => Err(VfsError::ReadOnly),
        }
    }

    // ----- paths and what they name -----

    /// The first name `ino` is linked under: (parent, name).
    fn first_link(st: &State, ino: u32) -> Result<(u32, Box<[u8]>)> {
        st.inodes
            .get(&ino)
            .and_then(|n| n.links.first().cloned())
            .ok_or(VfsError::NotFound)
    }

    /// The path of `ino` from the root (`""` for the root).
    fn path(st: &State, ino: u32) -> Result<Vec<u8>> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut cur = ino;
        let mut depth = 0;
        while cur != ROOT_INODE {
            let node = st.inodes.get(&cur).ok_or(VfsError::NotFound)?;
            let (parent, name) = node.links.first().ok_or(VfsError::NotFound)?;
            parts.push(name);
            cur = *parent;
            depth += 1;
            if depth > 4096 {
                return Err(VfsError::Io(Errno::LOOP.into()));
            }
        }
        let mut out = Vec::new();
        for p in parts.iter().rev() {
            if !out.is_empty() {
                out.push(b'/');
            }
            out.extend_from_slice(p);
        }
        Ok(out)
    }

    /// What directory `ino` is made of.
    fn dir_info(&self, st: &mut State, ino: u32) -> Result<DirInfo> {
        if let Some(info) = st.inodes.get(&ino).and_then(|n| n.dir) {
            return Ok(info);
        }
        let info = if ino == ROOT_INODE {
            DirInfo {
                upper: true,
                origin: Some(0),
            }
        } else {
            let (parent, name) = Self::first_link(st, ino)?;
            match self.find_in(st, parent, &name)?.1 {
                Some((_, Some(info))) => info,
                Some(_) => return Err(VfsError::NotDir),
                None => return Err(VfsError::NotFound),
            }
        };
        if let Some(n) = st.inodes.get_mut(&ino) {
            n.dir = Some(info);
        }
        Ok(info)
    }

    /// What `name` names in the directory at `ppath` made of `pinfo`
    /// (and, for a directory, what it is made of).
    fn find(
        &self,
        st: &State,
        pinfo: DirInfo,
        ppath: &[u8],
        name: &[u8],
    ) -> Result<Option<(Found, Option<DirInfo>)>> {
        let dir = match pinfo.upper {
            true => Some(self.upper.dir(ppath)?),
            false => None,
        };
        Self::find_at(st, pinfo, dir.as_ref(), name)
    }

    /// [`Editable::find`] in a directory whose upper side (if it has one)
    /// is open as `dir`.
    fn find_at(
        st: &State,
        pinfo: DirInfo,
        dir: Option<&OwnedFd>,
        name: &[u8],
    ) -> Result<Option<(Found, Option<DirInfo>)>> {
        if let Some(dir) = dir {
            match upper::stat(dir, name)? {
                Some(s) if upper::is_whiteout(&s) => return Ok(None),
                Some(s) if FileType::from_raw_mode(s.st_mode) == FileType::Directory => {
                    let sub = upper::subdir(dir, name)?;
                    let info = DirInfo {
                        upper: true,
                        origin: child_origin(&st.lower, pinfo.origin, name, upper::origin(&sub)?),
                    };
                    return Ok(Some((Found::Upper(s), Some(info))));
                }
                Some(s) => return Ok(Some((Found::Upper(s), None))),
                None => {}
            }
        }
        Ok(Self::lower_child(st, pinfo, name).map(|i| {
            let e = &st.lower.entries()[i as usize];
            let info = (e.kind == EntryKind::Dir).then_some(DirInfo {
                upper: false,
                origin: Some(e.dir),
            });
            (Found::Lower(i), info)
        }))
    }

    /// The entry named `name` below a directory made of `pinfo`.
    fn lower_child(st: &State, pinfo: DirInfo, name: &[u8]) -> Option<u32> {
        let i = st.lower.find(pinfo.origin?, name)?;
        (st.lower.entries()[i as usize].kind != EntryKind::Mask).then_some(i)
    }

    /// What `name` names in directory `parent`, and what the parent is
    /// made of.
    #[allow(clippy::type_complexity)]
    fn find_in(
        &self,
        st: &mut State,
        parent: u32,
        name: &[u8],
    ) -> Result<(DirInfo, Option<(Found, Option<DirInfo>)>)> {
        let pinfo = self.dir_info(st, parent)?;
        let ppath = Self::path(st, parent)?;
        Ok((pinfo, self.find(st, pinfo, &ppath, name)?))
    }

    /// What `ino` names now.
    fn found(&self, st: &mut State, ino: u32) -> Result<Found> {
        if ino == ROOT_INODE {
            let dir = self.upper.dir(b"")?;
            return Ok(Found::Upper(rustix::fs::fstat(&dir).map_err(errno)?));
        }
        let (parent, name) = Self::first_link(st, ino)?;
        self.find_in(st, parent, &name)?
            .1
            .map(|(f, _)| f)
            .ok_or(VfsError::NotFound)
    }

    /// The attributes of `ino`, found at `found`.
    fn attr(&self, st: &State, ino: u32, found: &Found) -> Attr {
        match found {
            Found::Upper(s) if ino == ROOT_INODE => Attr {
                perm: 0o755,
                uid: self.owner.0,
                gid: self.owner.1,
                ..stat_attr(ino, s)
            },
            Found::Upper(s) => stat_attr(ino, s),
            Found::Lower(i) => {
                let e = &st.lower.entries()[*i as usize];
                let kind = match e.kind {
                    EntryKind::Dir => NodeKind::Dir,
                    EntryKind::Symlink => NodeKind::Symlink,
                    _ => NodeKind::File,
                };
                Attr {
                    node: ino as u64,
                    kind,
                    perm: (e.mode & 0o7777) as u16,
                    size: e.size,
                    nlink: 1,
                    mtime: spfs_model::time::to_system_time(e.mtime),
                    uid: self.owner.0,
                    gid: self.owner.1,
                }
            }
        }
    }

    /// The inode of `name` in `parent`, made if new (`counted`: one more
    /// reference the platform holds).
    fn intern(
        st: &mut State,
        parent: u32,
        name: &[u8],
        info: Option<DirInfo>,
        counted: bool,
    ) -> Result<u32> {
        let key = (parent, Box::<[u8]>::from(name));
        let ino = match st.names.get(&key) {
            Some(ino) => *ino,
            None => {
                if st.next >= MAX_INODE {
                    return Err(VfsError::Io(Errno::NOSPC.into()));
                }
                if st.next >= st.reserved_until {
                    let until = st.next.saturating_add(INODE_BLOCK).min(MAX_INODE);
                    match &st.reserve {
                        Some(reserve) if !reserve(until) => {
                            return Err(VfsError::Io(Errno::IO.into()));
                        }
                        _ => st.reserved_until = until,
                    }
                }
                let ino = st.next;
                st.next += 1;
                st.inodes.insert(
                    ino,
                    Inode {
                        links: vec![key.clone()],
                        lookups: 0,
                        dir: None,
                    },
                );
                st.names.insert(key, ino);
                ino
            }
        };
        if let Some(n) = st.inodes.get_mut(&ino) {
            if counted {
                n.lookups += 1;
            }
            if info.is_some() {
                n.dir = info;
            }
        }
        Ok(ino)
    }

    /// Take name (`parent`, `name`) off whatever inode has it.
    fn unlink_name(st: &mut State, parent: u32, name: &[u8]) {
        if let Some(ino) = st.names.remove(&(parent, Box::<[u8]>::from(name)))
            && let Some(n) = st.inodes.get_mut(&ino)
        {
            n.links.retain(|(p, nm)| !(*p == parent && &**nm == name));
            if n.links.is_empty() {
                n.dir = None;
                if n.lookups == 0 {
                    // Nobody holds it: gone.
                    st.inodes.remove(&ino);
                    st.files.remove(ino);
                } else {
                    st.files.mark_removed(ino);
                }
            }
        }
    }

    // ----- reading -----

    /// Find `name` in directory `parent` (one more reference to it).
    pub fn lookup(&self, parent: u32, name: &[u8]) -> Result<Attr> {
        let mut st = self.lock();
        let st = &mut *st;
        let (found, info) = self
            .find_in(st, parent, name)?
            .1
            .ok_or(VfsError::NotFound)?;
        let ino = Self::intern(st, parent, name, info, true)?;
        Ok(self.attr(st, ino, &found))
    }

    /// The attributes of `name` in directory `parent` now, without a
    /// reference (the inode number shown is [`UNKNOWN_INODE`] for a name
    /// nobody looked up).
    pub fn peek(&self, parent: u32, name: &[u8]) -> Result<Attr> {
        let mut st = self.lock();
        let st = &mut *st;
        let (found, _) = self
            .find_in(st, parent, name)?
            .1
            .ok_or(VfsError::NotFound)?;
        let ino = st
            .names
            .get(&(parent, Box::<[u8]>::from(name)))
            .copied()
            .unwrap_or(UNKNOWN_INODE);
        Ok(self.attr(st, ino, &found))
    }

    /// The attributes of `ino`.
    pub fn getattr(&self, ino: u32) -> Result<Attr> {
        let mut st = self.lock();
        let st = &mut *st;
        match self.found(st, ino) {
            Ok(found) => Ok(self.attr(st, ino, &found)),
            // Removed while open: its open copy still answers.
            Err(VfsError::NotFound) => match st.files.get(ino) {
                Some(f) => Ok(stat_attr(ino, &rustix::fs::fstat(&*f).map_err(errno)?)),
                None => Err(VfsError::NotFound),
            },
            Err(e) => Err(e),
        }
    }

    /// Whether `ino` is a directory (for opendir).
    pub fn check_dir(&self, ino: u32) -> Result<()> {
        let mut st = self.lock();
        self.dir_info(&mut st, ino).map(|_| ())
    }

    /// The names in directory `ino` now (the merged listing), sorted.
    pub fn names(&self, ino: u32) -> Result<Vec<Vec<u8>>> {
        let mut st = self.lock();
        Ok(self
            .merged(&mut st, ino)?
            .into_iter()
            .map(|(name, _, _)| name)
            .collect())
    }

    /// The entries of directory `ino`: name, where, what a directory is.
    #[allow(clippy::type_complexity)]
    fn merged(&self, st: &mut State, ino: u32) -> Result<Vec<(Vec<u8>, Found, Option<DirInfo>)>> {
        let info = self.dir_info(st, ino)?;
        let path = Self::path(st, ino)?;
        let mut out: Vec<(Vec<u8>, Found, Option<DirInfo>)> = Vec::new();
        let mut hidden: std::collections::HashSet<Vec<u8>> = Default::default();
        if info.upper {
            let dir = self.upper.dir(&path)?;
            for name in upper::names(&dir)? {
                match Self::find_at(st, info, Some(&dir), &name)? {
                    Some((found @ Found::Upper(_), i)) => {
                        hidden.insert(name.clone());
                        out.push((name, found, i));
                    }
                    // A whiteout (or a race): hides the name below.
                    _ => {
                        hidden.insert(name);
                    }
                }
            }
        }
        if let Some(d) = info.origin {
            let start = st.lower.children_start(d);
            for (k, e) in st.lower.children(d).iter().enumerate() {
                if e.kind == EntryKind::Mask || hidden.contains(&*e.name) {
                    continue;
                }
                let i = (e.kind == EntryKind::Dir).then_some(DirInfo {
                    upper: false,
                    origin: Some(e.dir),
                });
                out.push((e.name.to_vec(), Found::Lower(start + k as u32), i));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// What serves the bytes of file `ino`.
    pub fn source(&self, ino: u32) -> Result<Source> {
        let mut st = self.lock();
        let st = &mut *st;
        if let Some(f) = st.files.get(ino) {
            return Ok(Source::Upper(f));
        }
        match self.found(st, ino)? {
            Found::Upper(s) => match kind_of_mode(s.st_mode) {
                NodeKind::Dir => Err(VfsError::IsDir),
                NodeKind::Symlink => Err(VfsError::NotSymlink),
                NodeKind::File => Ok(Source::Upper(self.upper_file(st, ino)?)),
            },
            Found::Lower(i) => Ok(Source::Lower(st.lower.entries()[i as usize].clone())),
        }
    }

    /// The target of symlink `ino`: `Ok(None)` when it is below (served
    /// from the repository).
    pub fn readlink(&self, ino: u32) -> Result<std::result::Result<Vec<u8>, Entry>> {
        let mut st = self.lock();
        let st = &mut *st;
        match self.found(st, ino)? {
            Found::Upper(s) if kind_of_mode(s.st_mode) == NodeKind::Symlink => {
                let (dir, name) = self.parent_dir(st, ino)?;
                let target = rustix::fs::readlinkat(&dir, OsStr::from_bytes(&name), Vec::new())
                    .map_err(errno)?;
                Ok(Ok(target.into_bytes()))
            }
            Found::Lower(i) if st.lower.entries()[i as usize].kind == EntryKind::Symlink => {
                Ok(Err(st.lower.entries()[i as usize].clone()))
            }
            _ => Err(VfsError::NotSymlink),
        }
    }

    /// The upper directory holding `ino`'s first name, and that name.
    fn parent_dir(&self, st: &State, ino: u32) -> Result<(OwnedFd, Box<[u8]>)> {
        let (parent, name) = Self::first_link(st, ino)?;
        Ok((self.upper.dir(&Self::path(st, parent)?)?, name))
    }

    /// The open upper file of `ino` (which is in the upper area).
    fn upper_file(&self, st: &mut State, ino: u32) -> Result<Arc<File>> {
        if let Some(f) = st.files.get(ino) {
            return Ok(f);
        }
        let (dir, name) = self.parent_dir(st, ino)?;
        let f = Arc::new(upper::open_file(&dir, &name)?);
        st.keep_file(ino, f.clone());
        Ok(f)
    }

    /// Filesystem numbers of the upper area.
    pub fn statvfs(&self) -> Result<rustix::fs::StatVfs> {
        Ok(self.upper.statvfs()?)
    }

    /// The platform dropped `n` references to `ino`.
    pub fn forget(&self, ino: u32, n: u64) {
        if ino == ROOT_INODE {
            return;
        }
        let mut st = self.lock();
        let st = &mut *st;
        let gone = match st.inodes.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if gone && let Some(node) = st.inodes.remove(&ino) {
            for link in node.links {
                st.names.remove(&link);
            }
            st.files.remove(ino);
        }
    }

    // ----- changing -----

    /// Make sure directory `ino` is in the upper area; returns it open.
    fn upper_dir(&self, st: &mut State, ino: u32) -> Result<OwnedFd> {
        let info = self.dir_info(st, ino)?;
        if info.upper {
            return Ok(self.upper.dir(&Self::path(st, ino)?)?);
        }
        let (parent, name) = Self::first_link(st, ino)?;
        let pdir = self.upper_dir(st, parent)?;
        let pinfo = self.dir_info(st, parent)?;
        let i = Self::lower_child(st, pinfo, &name).ok_or(VfsError::NotFound)?;
        let e = st.lower.entries()[i as usize].clone();
        rustix::fs::mkdirat(&pdir, OsStr::from_bytes(&name), Mode::from_raw_mode(0o700))
            .map_err(errno)?;
        let dir = upper::subdir(&pdir, &name)?;
        self.settle(&dir, e.mode, e.mtime)?;
        if let Some(n) = st.inodes.get_mut(&ino) {
            n.dir = Some(DirInfo {
                upper: true,
                origin: info.origin,
            });
        }
        Ok(dir)
    }

    /// Give a copied-up file or directory its mode, owner and time.
    fn settle(&self, fd: &impl AsFd, mode: u32, mtime: i64) -> Result<()> {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777)).map_err(errno)?;
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(self.owner.0)),
            Some(rustix::fs::Gid::from_raw(self.owner.1)),
        )
        .map_err(errno)?;
        // chown clears set-id bits: set the mode again.
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777)).map_err(errno)?;
        let t = ns_timespec(mtime);
        rustix::fs::futimens(
            fd,
            &Timestamps {
                last_access: t,
                last_modification: t,
            },
        )
        .map_err(errno)
    }

    /// Make sure `ino` (any kind) is in the upper area: copy it up.
    fn copy_up(&self, st: &mut State, ino: u32, open_lower: OpenLower<'_>) -> Result<()> {
        let e = match self.found(st, ino)? {
            Found::Upper(_) => return Ok(()),
            Found::Lower(i) => st.lower.entries()[i as usize].clone(),
        };
        if e.kind == EntryKind::Dir {
            return self.upper_dir(st, ino).map(|_| ());
        }
        let (parent, name) = Self::first_link(st, ino)?;
        let pdir = self.upper_dir(st, parent)?;
        match e.kind {
            EntryKind::Symlink => {
                let mut target = Vec::new();
                io::Read::read_to_end(&mut open_lower(&e)?, &mut target)?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &pdir, OsStr::from_bytes(&name))
                    .map_err(errno)?;
                let n = OsStr::from_bytes(&name);
                rustix::fs::chownat(
                    &pdir,
                    n,
                    Some(rustix::fs::Uid::from_raw(self.owner.0)),
                    Some(rustix::fs::Gid::from_raw(self.owner.1)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(errno)?;
                let t = ns_timespec(e.mtime);
                rustix::fs::utimensat(
                    &pdir,
                    n,
                    &Timestamps {
                        last_access: t,
                        last_modification: t,
                    },
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(errno)?;
            }
            _ => {
                let mut src = open_lower(&e)?;
                // Made unnamed, filled, then named: a crash leaves no half copy.
                let tmp = rustix::fs::openat(
                    &pdir,
                    c".",
                    OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(errno)?;
                let mut dst = File::from(tmp);
                io::copy(&mut src, &mut dst)?;
                self.settle(&dst, e.mode, e.mtime)?;
                rustix::fs::linkat(
                    &dst,
                    c"",
                    &pdir,
                    OsStr::from_bytes(&name),
                    AtFlags::EMPTY_PATH,
                )
                .map_err(errno)?;
                st.keep_file(ino, Arc::new(dst));
            }
        }
        Ok(())
    }

    /// Whether `name` is visible in directory `parent`.
    fn exists(&self, st: &mut State, parent: u32, name: &[u8]) -> Result<bool> {
        Ok(self.find_in(st, parent, name)?.1.is_some())
    }

    /// Prepare to make `name` in `parent`: it must not be visible; the
    /// parent is copied up and a whiteout of the name removed.
    fn prepare_new(&self, st: &mut State, parent: u32, name: &[u8]) -> Result<(OwnedFd, bool)> {
        Self::check_new_name(parent, name)?;
        if self.exists(st, parent, name)? {
            return Err(VfsError::Io(Errno::EXIST.into()));
        }
        let pdir = self.upper_dir(st, parent)?;
        let pinfo = self.dir_info(st, parent)?;
        let below = Self::lower_child(st, pinfo, name).is_some();
        if upper::stat(&pdir, name)?.is_some() {
            // A whiteout: the new entry takes its place.
            rustix::fs::unlinkat(&pdir, OsStr::from_bytes(name), AtFlags::empty())
                .map_err(errno)?;
        }
        Ok((pdir, below))
    }

    /// A name an entry may be given in `parent`: a valid one, and not the
    /// name of the door to bound views at the top (it could never be
    /// reached).
    fn check_new_name(parent: u32, name: &[u8]) -> Result<()> {
        spfs_model::tree::validate_name(name).map_err(|_| VfsError::Io(Errno::INVAL.into()))?;
        if parent == ROOT_INODE && name == crate::vfs::VIEW_DOOR {
            return Err(VfsError::Io(Errno::PERM.into()));
        }
        Ok(())
    }

    /// Hand out the new entry `name` of `parent`.
    fn made(
        &self,
        st: &mut State,
        parent: u32,
        name: &[u8],
        pdir: &OwnedFd,
        info: Option<DirInfo>,
    ) -> Result<Attr> {
        let s = upper::stat(pdir, name)?.ok_or(VfsError::NotFound)?;
        let ino = Self::intern(st, parent, name, info, true)?;
        Ok(stat_attr(ino, &s))
    }

    fn chown_new(pdir: &OwnedFd, name: &[u8], uid: u32, gid: u32) -> Result<()> {
        rustix::fs::chownat(
            pdir,
            OsStr::from_bytes(name),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(errno)
    }

    /// Create regular file `name` in `parent`, owned by `uid`:`gid`.
    pub fn create(
        &self,
        parent: u32,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(Attr, Arc<File>)> {
        self.check_writable()?;
        let mut st = self.lock();
        let st = &mut *st;
        let (pdir, _) = self.prepare_new(st, parent, name)?;
        let fd = rustix::fs::openat(
            &pdir,
            OsStr::from_bytes(name),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(errno)?;
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(errno)?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777)).map_err(errno)?;
        let s = rustix::fs::fstat(&fd).map_err(errno)?;
        let ino = Self::intern(st, parent, name, None, true)?;
        let file = Arc::new(File::from(fd));
        st.keep_file(ino, file.clone());
        Ok((stat_attr(ino, &s), file))
    }

    /// Make directory `name` in `parent`.
    pub fn mkdir(&self, parent: u32, name: &[u8], mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        self.check_writable()?;
        let mut st = self.lock();
        let st = &mut *st;
        let (pdir, below) = self.prepare_new(st, parent, name)?;
        rustix::fs::mkdirat(&pdir, OsStr::from_bytes(name), Mode::from_raw_mode(0o700))
            .map_err(errno)?;
        let dir = upper::subdir(&pdir, name)?;
        if below {
            // Where a directory was removed, a new one starts empty.
            upper::set_origin(&dir, &Origin::Opaque)?;
        }
        rustix::fs::fchown(
            &dir,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(errno)?;
        rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode & 0o7777)).map_err(errno)?;
        let info = DirInfo {
            upper: true,
            origin: None,
        };
        self.made(st, parent, name, &pdir, Some(info))
    }

    /// Make symlink `name` in `parent` pointing at `target`.
    pub fn symlink(
        &self,
        parent: u32,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        self.check_writable()?;
        if target.is_empty() || target.len() > 4095 || target.contains(&0) {
            return Err(VfsError::Io(Errno::INVAL.into()));
        }
        let mut st = self.lock();
        let st = &mut *st;
        let (pdir, _) = self.prepare_new(st, parent, name)?;
        rustix::fs::symlinkat(OsStr::from_bytes(target), &pdir, OsStr::from_bytes(name))
            .map_err(errno)?;
        Self::chown_new(&pdir, name, uid, gid)?;
        self.made(st, parent, name, &pdir, None)
    }

    /// Link `ino` as `name` in `parent` too.
    pub fn link(
        &self,
        ino: u32,
        parent: u32,
        name: &[u8],
        open_lower: OpenLower<'_>,
    ) -> Result<Attr> {
        self.check_writable()?;
        let mut st = self.lock();
        let st = &mut *st;
        if let Found::Lower(i) = self.found(st, ino)?
            && st.lower.entries()[i as usize].kind == EntryKind::Dir
        {
            return Err(VfsError::Io(Errno::PERM.into()));
        }
        if let Found::Upper(s) = self.found(st, ino)?
            && kind_of_mode(s.st_mode) == NodeKind::Dir
        {
            return Err(VfsError::Io(Errno::PERM.into()));
        }
        self.copy_up(st, ino, open_lower)?;
        let (sdir, sname) = self.parent_dir(st, ino)?;
        let (pdir, _) = self.prepare_new(st, parent, name)?;
        rustix::fs::linkat(
            &sdir,
            OsStr::from_bytes(&sname),
            &pdir,
            OsStr::from_bytes(name),
            AtFlags::empty(),
        )
        .map_err(errno)?;
        let key = (parent, Box::<[u8]>::from(name));
        st.names.insert(key.clone(), ino);
        if let Some(n) = st.inodes.get_mut(&ino) {
            n.links.push(key);
            n.lookups += 1;
        }
        let s = upper::stat(&pdir, name)?.ok_or(VfsError::NotFound)?;
        Ok(stat_attr(ino, &s))
    }

    /// Remove name `name` of `parent` (a file, symlink or, with `dir`, an
    /// empty directory).
    pub fn remove(&self, parent: u32, name: &[u8], dir: bool) -> Result<()> {
        self.check_writable()?;
        let mut st = self.lock();
        let st = &mut *st;
        let (pinfo, found) = self.find_in(st, parent, name)?;
        let (found, info) = found.ok_or(VfsError::NotFound)?;
        match (dir, info.is_some()) {
            (false, true) => return Err(VfsError::IsDir),
            (true, false) => return Err(VfsError::NotDir),
            _ => {}
        }
        if dir {
            let child = Self::intern(st, parent, name, info, false)?;
            if !self.merged(st, child)?.is_empty() {
                return Err(VfsError::Io(Errno::NOTEMPTY.into()));
            }
        }
        let below = Self::lower_child(st, pinfo, name).is_some();
        let pdir = self.upper_dir(st, parent)?;
        if let Found::Upper(s) = found {
            // Open files of it keep reading and writing it.
            if let Some(ino) = st.names.get(&(parent, Box::<[u8]>::from(name))).copied()
                && FileType::from_raw_mode(s.st_mode) == FileType::RegularFile
                && !st.files.contains(ino)
                && let Ok(f) = upper::open_file(&pdir, name)
            {
                st.keep_file(ino, Arc::new(f));
            }
            upper::remove(&pdir, name)?;
        }
        if below {
            upper::whiteout(&pdir, name)?;
        }
        Self::unlink_name(st, parent, name);
        Ok(())
    }

    /// Rename `name` of `parent` to `new_name` of `new_parent`.
    /// `no_replace`: fail if the new name exists.
    #[allow(clippy::too_many_arguments)]
    pub fn rename(
        &self,
        parent: u32,
        name: &[u8],
        new_parent: u32,
        new_name: &[u8],
        no_replace: bool,
        open_lower: OpenLower<'_>,
    ) -> Result<()> {
        self.check_writable()?;
        Self::check_new_name(new_parent, new_name)?;
        let mut st = self.lock();
        let st = &mut *st;
        let (pinfo, found) = self.find_in(st, parent, name)?;
        let (_, sinfo) = found.ok_or(VfsError::NotFound)?;
        let src = Self::intern(st, parent, name, sinfo, false)?;
        let dst = self.find_in(st, new_parent, new_name)?.1;
        if let Some((_, dinfo)) = &dst {
            if no_replace {
                return Err(VfsError::Io(Errno::EXIST.into()));
            }
            let dst_ino = Self::intern(st, new_parent, new_name, *dinfo, false)?;
            if dst_ino == src {
                return Ok(());
            }
            match (sinfo.is_some(), dinfo.is_some()) {
                (true, false) => return Err(VfsError::NotDir),
                (false, true) => return Err(VfsError::IsDir),
                (true, true) if !self.merged(st, dst_ino)?.is_empty() => {
                    return Err(VfsError::Io(Errno::NOTEMPTY.into()));
                }
                _ => {}
            }
        }
        // A directory never moves into itself.
        if sinfo.is_some() {
            let mut cur = new_parent;
            while cur != ROOT_INODE {
                if cur == src {
                    return Err(VfsError::Io(Errno::INVAL.into()));
                }
                cur = st
                    .inodes
                    .get(&cur)
                    .and_then(|n| n.links.first().map(|l| l.0))
                    .unwrap_or(ROOT_INODE);
            }
        }
        // The source, in the upper area, with its contents below pinned.
        self.copy_up(st, src, open_lower)?;
        if let Some(info) = sinfo {
            let dir = self.upper_dir(st, src)?;
            let origin = match info.origin {
                Some(d) => Origin::Redirect(lower_dir_path(&st.lower, d)),
                None => Origin::Opaque,
            };
            upper::set_origin(&dir, &origin)?;
        }
        let below = Self::lower_child(st, pinfo, name).is_some();
        // The name's own directory (a hard link's other names may be
        // elsewhere).
        let sdir = self.upper_dir(st, parent)?;
        let ndir = self.upper_dir(st, new_parent)?;
        // What the new name has in the upper area goes (an empty
        // directory's whiteouts, a whiteout).
        if let Some(s) = upper::stat(&ndir, new_name)?
            && (FileType::from_raw_mode(s.st_mode) == FileType::Directory || upper::is_whiteout(&s))
        {
            upper::remove(&ndir, new_name)?;
        }
        rustix::fs::renameat(
            &sdir,
            OsStr::from_bytes(name),
            &ndir,
            OsStr::from_bytes(new_name),
        )
        .map_err(errno)?;
        if below {
            upper::whiteout(&sdir, name)?;
        }
        Self::unlink_name(st, new_parent, new_name);
        let old = (parent, Box::<[u8]>::from(name));
        let new = (new_parent, Box::<[u8]>::from(new_name));
        st.names.remove(&old);
        st.names.insert(new.clone(), src);
        if let Some(n) = st.inodes.get_mut(&src) {
            for l in n.links.iter_mut() {
                if *l == old {
                    *l = new.clone();
                }
            }
        }
        Ok(())
    }

    /// Change attributes of `ino`.
    pub fn setattr(&self, ino: u32, set: &SetAttr, open_lower: OpenLower<'_>) -> Result<Attr> {
        self.check_writable()?;
        if ino == ROOT_INODE {
            return Err(VfsError::Io(Errno::PERM.into()));
        }
        let mut st = self.lock();
        let st = &mut *st;
        if set.size == Some(0)
            && let Found::Lower(i) = self.found(st, ino)?
            && st.lower.entries()[i as usize].kind == EntryKind::File
        {
            // Truncated whole: nothing to copy.
            let empty = |_: &Entry| -> Result<File> { Ok(tempfile_empty()?) };
            self.copy_up(st, ino, &empty)?;
        } else {
            self.copy_up(st, ino, open_lower)?;
        }
        let (pdir, name) = self.parent_dir(st, ino)?;
        let n = OsStr::from_bytes(&name);
        let s = upper::stat(&pdir, &name)?.ok_or(VfsError::NotFound)?;
        let kind = kind_of_mode(s.st_mode);
        if set.uid.is_some() || set.gid.is_some() {
            rustix::fs::chownat(
                &pdir,
                n,
                set.uid.map(rustix::fs::Uid::from_raw),
                set.gid.map(rustix::fs::Gid::from_raw),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(errno)?;
        }
        if let Some(mode) = set.mode
            && kind != NodeKind::Symlink
        {
            rustix::fs::chmodat(
                &pdir,
                n,
                Mode::from_raw_mode(mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(errno)?;
        }
        if let Some(size) = set.size {
            if kind != NodeKind::File {
                return Err(if kind == NodeKind::Dir {
                    VfsError::IsDir
                } else {
                    VfsError::Io(Errno::INVAL.into())
                });
            }
            self.upper_file(st, ino)?.set_len(size)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            rustix::fs::utimensat(
                &pdir,
                n,
                &Timestamps {
                    last_access: set_time(set.atime),
                    last_modification: set_time(set.mtime),
                },
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(errno)?;
        }
        let s = upper::stat(&pdir, &name)?.ok_or(VfsError::NotFound)?;
        Ok(stat_attr(ino, &s))
    }

    /// Write `data` at `offset` of file `ino` (copied up first).
    pub fn write(
        &self,
        ino: u32,
        offset: u64,
        data: &[u8],
        open_lower: OpenLower<'_>,
    ) -> Result<usize> {
        self.check_writable()?;
        let _writing = self.data.read().unwrap_or_else(|p| p.into_inner());
        let file = {
            let mut st = self.lock();
            let st = &mut *st;
            if !st.files.contains(ino) {
                self.copy_up(st, ino, open_lower)?;
            }
            match self.found(st, ino) {
                Ok(Found::Upper(s)) if kind_of_mode(s.st_mode) != NodeKind::File => {
                    return Err(VfsError::IsDir);
                }
                _ => {}
            }
            self.upper_file(st, ino)?
        };
        file.write_all_at(data, offset)?;
        Ok(data.len())
    }

    /// Make file `ino`'s data durable.
    pub fn fsync(&self, ino: u32) -> Result<()> {
        let file = self.lock().files.get(ino);
        if let Some(f) = file {
            f.sync_all()?;
        }
        Ok(())
    }

    // ----- whole-view changes -----

    /// Every name and inode the platform may have cached, and the names
    /// hidden by the whiteouts in the upper area (so that dropping them
    /// shows the name below again).
    fn everything(&self, st: &State) -> Stale {
        let mut stale = Stale::default();
        for (ino, node) in &st.inodes {
            // Not the root: its attributes do not change, and a routed
            // view's root is the mount's, which the kernel must keep.
            if *ino != ROOT_INODE {
                stale.inodes.push(*ino);
            }
            for (p, n) in &node.links {
                stale.names.push((*p, n.to_vec()));
            }
        }
        // Names hidden by whiteouts in known directories.
        for (ino, node) in &st.inodes {
            if node.dir.is_some_and(|d| d.upper)
                && let Ok(path) = Self::path(st, *ino)
                && let Ok(dir) = self.upper.dir(&path)
                && let Ok(names) = upper::names(&dir)
            {
                for name in names {
                    if let Ok(Some(s)) = upper::stat(&dir, &name)
                        && upper::is_whiteout(&s)
                    {
                        stale.names.push((*ino, name));
                    }
                }
            }
        }
        stale
    }

    /// Drop the edits under `paths` (relative to the root; none: all).
    pub fn reset(&self, paths: &[Vec<u8>]) -> Result<Stale> {
        let _alone = self.data.write().unwrap_or_else(|p| p.into_inner());
        let mut st = self.lock();
        let st = &mut *st;
        let stale = self.everything(st);
        if paths.is_empty() {
            self.upper.clear()?;
        } else {
            for p in paths {
                let p: Vec<u8> = p
                    .split(|b| *b == b'/')
                    .filter(|c| !c.is_empty() && *c != b".")
                    .collect::<Vec<_>>()
                    .join(&b'/');
                if p.is_empty() {
                    self.upper.clear()?;
                    continue;
                }
                let (parent, name) = match p.iter().rposition(|b| *b == b'/') {
                    Some(i) => (&p[..i], &p[i + 1..]),
                    None => (&b""[..], &p[..]),
                };
                match self.upper.dir(parent) {
                    Ok(dir) => upper::remove(&dir, name)?,
                    Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {}
                    Err(e) if e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Self::forget_where(st);
        Ok(stale)
    }

    /// Forget what was found about every inode (it is found again).
    fn forget_where(st: &mut State) {
        for node in st.inodes.values_mut() {
            node.dir = None;
        }
        let orphans: Vec<u32> = st
            .inodes
            .iter()
            .filter(|(_, n)| n.links.is_empty())
            .map(|(i, _)| *i)
            .collect();
        st.files.retain(|i| orphans.contains(&i));
    }

    /// Freeze the view's names while `f` runs (a commit reads the upper
    /// area in a consistent state), then, if `f` gave a new lower tree,
    /// make it the lower tree and empty the upper area: nothing anyone
    /// sees changes, but the edits now live in the stack.
    #[allow(clippy::type_complexity)]
    pub fn replace_lower<T>(
        &self,
        f: impl FnOnce(&Tree, &[Digest], &Upper) -> Result<Option<(Arc<Tree>, Vec<Digest>, T)>>,
    ) -> Result<Option<(T, Vec<Digest>, Stale)>> {
        let _alone = self.data.write().unwrap_or_else(|p| p.into_inner());
        let mut st = self.lock();
        let st = &mut *st;
        let Some((tree, stack, out)) = f(&st.lower, &st.stack, &self.upper)? else {
            return Ok(None);
        };
        let stale = self.everything(st);
        st.lower = tree;
        st.stack = stack.clone();
        self.upper.renew()?;
        Self::forget_where(st);
        Ok(Some((out, stack, stale)))
    }
}

/// An empty file to copy up from (a truncation to zero).
fn tempfile_empty() -> io::Result<File> {
    File::open("/dev/null")
}
