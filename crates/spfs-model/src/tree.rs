//! Directory trees: the body of a manifest, and the merged view of a stack.
//!
//! A [`Tree`] is flat: one vector of [`Entry`] values in which the children of
//! every directory are contiguous and sorted by name, plus one small span per
//! directory. Directories are numbered breadth first (the root is 0), which is
//! also the order of the canonical encoding, so a child directory's number is
//! implied by its position and never stored. Loading a tree of a million
//! entries is one pass over the bytes with no per-directory copies, and an
//! entry's index is a stable identifier that a filesystem can hand out.
//!
//! [`TreeBuilder`] builds a tree from nested paths (a directory walk, tests).
//!
//! Every entry records its modification time ([`Entry::mtime`], nanoseconds
//! since the Unix epoch); entries of manifests written before times were
//! kept (format version 1) have mtime 0, the epoch.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use crate::digest::Digest;
use crate::encoding::{DecodeError, MTIME_VERSION, OLDEST_FORMAT_VERSION, Reader, Writer};

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file; `object` is the digest of its bytes.
    File,
    /// A directory; its children are in the tree.
    Dir,
    /// A symbolic link; `object` is the digest of the target's bytes.
    Symlink,
    /// A deletion marker: hides the same name in the layers below.
    Mask,
}

impl EntryKind {
    pub(crate) fn code(self) -> u8 {
        match self {
            EntryKind::File => 1,
            EntryKind::Dir => 2,
            EntryKind::Symlink => 3,
            EntryKind::Mask => 4,
        }
    }
    fn from_code(c: u8) -> Result<Self, DecodeError> {
        Ok(match c {
            1 => EntryKind::File,
            2 => EntryKind::Dir,
            3 => EntryKind::Symlink,
            4 => EntryKind::Mask,
            _ => return Err(DecodeError::Invalid(format!("unknown entry kind {c}"))),
        })
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Mask => "mask",
        })
    }
}

/// One named entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: Box<[u8]>,
    /// The blob (file content or symlink target); null for dirs and masks.
    pub object: Digest,
    /// Bytes of content (file) or of the target (symlink); 0 otherwise.
    pub size: u64,
    /// Unix mode bits including the file type bits.
    pub mode: u32,
    pub kind: EntryKind,
    /// For directories: the directory's number in the tree.
    pub dir: u32,
    /// Modification time in nanoseconds since the Unix epoch (negative:
    /// before it). 0 in manifests of format version 1, which kept none.
    pub mtime: i64,
}

impl Entry {
    pub fn name_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.name)
    }
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }
    /// Whether two entries describe the same content (ignoring where their
    /// children are stored, and their modification times).
    pub fn same_content(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.mode == other.mode
            && self.size == other.size
            && self.object == other.object
    }
}

/// The children of one directory: `entries[start..start + len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirSpan {
    pub start: u32,
    pub len: u32,
    /// The parent directory's number (the root is its own parent).
    pub parent: u32,
    /// The unix mode of the directory itself.
    pub mode: u32,
}

/// What a path names in a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathTarget {
    /// The root directory.
    Root,
    /// The entry with this index.
    Entry(u32),
}

/// Why a tree could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("invalid entry name {0:?}")]
    InvalidName(String),
    #[error("path {0:?} is both a directory and a file")]
    Conflict(String),
    #[error("tree is too large (more than 2^32 entries)")]
    TooLarge,
}

/// A directory tree in flat form (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    entries: Vec<Entry>,
    dirs: Vec<DirSpan>,
}

/// The mode of a directory nobody described (the root, implied parents).
pub const DEFAULT_DIR_MODE: u32 = 0o040755;

impl Default for Tree {
    fn default() -> Self {
        Tree {
            entries: Vec::new(),
            dirs: vec![DirSpan {
                start: 0,
                len: 0,
                parent: 0,
                mode: DEFAULT_DIR_MODE,
            }],
        }
    }
}

/// Checks that a name can be a directory entry.
pub fn validate_name(name: &[u8]) -> Result<(), TreeError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(TreeError::InvalidName(String::from_utf8_lossy(name).into()));
    }
    Ok(())
}

impl Tree {
    /// The empty tree.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Assemble a tree from parts already in canonical order. Used by the
    /// builders of this crate, which guarantee the invariants.
    pub(crate) fn from_parts(entries: Vec<Entry>, dirs: Vec<DirSpan>) -> Self {
        Tree { entries, dirs }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
    pub fn dirs(&self) -> &[DirSpan] {
        &self.dirs
    }
    /// The number of entries in the whole tree.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The children of directory `dir`.
    pub fn children(&self, dir: u32) -> &[Entry] {
        match self.dirs.get(dir as usize) {
            Some(span) => &self.entries[span.start as usize..(span.start + span.len) as usize],
            None => &[],
        }
    }

    /// The index (in [`Tree::entries`]) of the first child of `dir`.
    pub fn children_start(&self, dir: u32) -> u32 {
        self.dirs.get(dir as usize).map(|s| s.start).unwrap_or(0)
    }

    /// Find `name` in directory `dir`; returns the entry's index.
    pub fn find(&self, dir: u32, name: &[u8]) -> Option<u32> {
        let span = self.dirs.get(dir as usize)?;
        let kids = &self.entries[span.start as usize..(span.start + span.len) as usize];
        kids.binary_search_by(|e| e.name.as_ref().cmp(name))
            .ok()
            .map(|i| span.start + i as u32)
    }

    /// Resolve a slash-separated path (leading and repeated slashes ignored);
    /// `None` when it does not exist.
    pub fn lookup_path(&self, path: &str) -> Option<PathTarget> {
        let mut dir = 0u32;
        let mut found = PathTarget::Root;
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if let PathTarget::Entry(idx) = found {
                let e = &self.entries[idx as usize];
                if e.kind != EntryKind::Dir {
                    return None;
                }
                dir = e.dir;
            }
            found = PathTarget::Entry(self.find(dir, part.as_bytes())?);
        }
        Some(found)
    }

    /// Every entry with its path, depth first, children in name order.
    pub fn walk(&self) -> Vec<(String, &Entry)> {
        let mut out = Vec::with_capacity(self.entries.len());
        self.walk_dir(0, String::new(), &mut out);
        out
    }

    /// Like [`Tree::walk`] for the subtree below directory `dir`, with paths
    /// starting at `prefix`.
    pub fn walk_dir<'a>(&'a self, dir: u32, prefix: String, out: &mut Vec<(String, &'a Entry)>) {
        // An explicit stack keeps deep trees from overflowing ours.
        let mut stack: Vec<(u32, String, usize)> = vec![(dir, prefix, 0)];
        while let Some((d, pre, i)) = stack.pop() {
            let kids = self.children(d);
            if i >= kids.len() {
                continue;
            }
            let e = &kids[i];
            let path = if pre.is_empty() {
                e.name_lossy().into_owned()
            } else {
                format!("{pre}/{}", e.name_lossy())
            };
            stack.push((d, pre, i + 1));
            out.push((path.clone(), e));
            if e.kind == EntryKind::Dir {
                stack.push((e.dir, path, 0));
            }
        }
    }

    /// Total bytes of file content.
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| e.size)
            .sum()
    }

    /// The newest modification time of any entry; `None` for a tree
    /// without entries.
    pub fn newest_mtime(&self) -> Option<i64> {
        self.entries.iter().map(|e| e.mtime).max()
    }

    /// The format version the tree is written at: the lowest that holds it
    /// (see [`crate::encoding`]).
    pub fn format_version(&self) -> u16 {
        if self.entries.iter().any(|e| e.mtime != 0) {
            MTIME_VERSION
        } else {
            OLDEST_FORMAT_VERSION
        }
    }

    /// Digests of every blob the tree refers to (files and symlinks).
    pub fn blobs(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File | EntryKind::Symlink))
    }

    /// Encode the body at format `version` (mtimes from version 2 on).
    pub(crate) fn encode_into(&self, w: &mut Writer, version: u16) {
        w.count(self.dirs.len());
        for span in &self.dirs {
            w.u32(span.mode);
            w.count(span.len as usize);
            for e in self.children_of_span(span) {
                w.bytes(&e.name);
                w.u8(e.kind.code());
                w.u32(e.mode);
                w.u64(e.size);
                w.digest(&e.object);
                if version >= MTIME_VERSION {
                    w.i64(e.mtime);
                }
            }
        }
    }

    fn children_of_span(&self, span: &DirSpan) -> &[Entry] {
        &self.entries[span.start as usize..(span.start + span.len) as usize]
    }

    /// Decode a tree body of format `version`, checking that it is
    /// canonical: names valid and strictly sorted, every directory but the
    /// root referred to exactly once in breadth-first order. (Whether the
    /// version is the one the tree needs is checked by [`crate::Object`].)
    pub(crate) fn decode_from(r: &mut Reader<'_>, version: u16) -> Result<Self, DecodeError> {
        let timed = version >= MTIME_VERSION;
        // Smallest possible directory: mode + count.
        let ndirs = r.count(8)?;
        if ndirs == 0 {
            return Err(DecodeError::Invalid("tree has no root directory".into()));
        }
        let mut dirs = Vec::with_capacity(ndirs);
        let mut entries: Vec<Entry> = Vec::new();
        let mut next_dir: u32 = 1;
        let mut parents: Vec<u32> = vec![0; ndirs];
        for d in 0..ndirs {
            if d as u32 >= next_dir {
                return Err(DecodeError::Invalid(format!(
                    "directory {d} is not referenced"
                )));
            }
            let mode = r.u32()?;
            // Smallest entry: name length + kind + mode + size + digest
            // (+ mtime).
            let n = r.count(4 + 1 + 4 + 8 + 32 + if timed { 8 } else { 0 })?;
            let start = u32::try_from(entries.len())
                .map_err(|_| DecodeError::Invalid("too many entries".into()))?;
            entries.reserve(n);
            for _ in 0..n {
                let name = r.bytes()?;
                validate_name(name).map_err(|e| DecodeError::Invalid(e.to_string()))?;
                if let Some(prev) = entries.last()
                    && entries.len() > start as usize
                    && prev.name.as_ref() >= name
                {
                    return Err(DecodeError::Invalid("entries are not sorted".into()));
                }
                let kind = EntryKind::from_code(r.u8()?)?;
                let mode = r.u32()?;
                let size = r.u64()?;
                let object = r.digest()?;
                let mtime = if timed { r.i64()? } else { 0 };
                let mut dir = 0;
                if kind == EntryKind::Dir {
                    if next_dir as usize >= ndirs {
                        return Err(DecodeError::Invalid("directory count mismatch".into()));
                    }
                    dir = next_dir;
                    parents[next_dir as usize] = d as u32;
                    next_dir += 1;
                }
                entries.push(Entry {
                    name: name.into(),
                    object,
                    size,
                    mode,
                    kind,
                    dir,
                    mtime,
                });
            }
            dirs.push(DirSpan {
                start,
                len: n as u32,
                parent: parents[d],
                mode,
            });
        }
        if next_dir as usize != ndirs {
            return Err(DecodeError::Invalid("directory count mismatch".into()));
        }
        Ok(Tree { entries, dirs })
    }
}

/// One node while building a tree from nested paths.
#[derive(Clone, Debug)]
enum BuildNode {
    Leaf(Entry),
    Dir {
        mode: u32,
        mtime: i64,
        children: BTreeMap<Box<[u8]>, BuildNode>,
    },
}

/// Builds a [`Tree`] from entries added by path in any order.
#[derive(Clone, Debug)]
pub struct TreeBuilder {
    root_mode: u32,
    root: BTreeMap<Box<[u8]>, BuildNode>,
}

impl Default for TreeBuilder {
    fn default() -> Self {
        TreeBuilder {
            root_mode: DEFAULT_DIR_MODE,
            root: BTreeMap::new(),
        }
    }
}

impl TreeBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_root_mode(&mut self, mode: u32) {
        self.root_mode = mode;
    }

    fn dir_at(
        &mut self,
        parents: &[&[u8]],
    ) -> Result<&mut BTreeMap<Box<[u8]>, BuildNode>, TreeError> {
        let mut cur = &mut self.root;
        for (i, p) in parents.iter().enumerate() {
            validate_name(p)?;
            let node = cur.entry((*p).into()).or_insert_with(|| BuildNode::Dir {
                mode: DEFAULT_DIR_MODE,
                mtime: 0,
                children: BTreeMap::new(),
            });
            match node {
                BuildNode::Dir { children, .. } => cur = children,
                BuildNode::Leaf(_) => {
                    let path: Vec<_> = parents[..=i]
                        .iter()
                        .map(|s| String::from_utf8_lossy(s))
                        .collect();
                    return Err(TreeError::Conflict(path.join("/")));
                }
            }
        }
        Ok(cur)
    }

    fn split(path: &[u8]) -> Vec<&[u8]> {
        path.split(|b| *b == b'/')
            .filter(|p| !p.is_empty())
            .collect()
    }

    /// Add a directory (with its mode, mtime 0); parents are created as
    /// needed.
    pub fn add_dir(&mut self, path: &[u8], mode: u32) -> Result<(), TreeError> {
        self.add_dir_with_mtime(path, mode, 0)
    }

    /// Add a directory with its mode and modification time (nanoseconds
    /// since the epoch); parents are created as needed (mode
    /// [`DEFAULT_DIR_MODE`], mtime 0, until they are added themselves).
    /// The root's mtime is not recorded.
    pub fn add_dir_with_mtime(
        &mut self,
        path: &[u8],
        mode: u32,
        mtime: i64,
    ) -> Result<(), TreeError> {
        let parts = Self::split(path);
        let Some((name, parents)) = parts.split_last() else {
            self.root_mode = mode;
            return Ok(());
        };
        validate_name(name)?;
        let dir = self.dir_at(parents)?;
        match dir.entry((*name).into()).or_insert_with(|| BuildNode::Dir {
            mode,
            mtime,
            children: BTreeMap::new(),
        }) {
            BuildNode::Dir {
                mode: m, mtime: t, ..
            } => {
                *m = mode;
                *t = mtime;
                Ok(())
            }
            BuildNode::Leaf(_) => Err(TreeError::Conflict(String::from_utf8_lossy(path).into())),
        }
    }

    /// Add a file, symlink or mask at `path` (mtime 0); parents are created
    /// as needed.
    pub fn add(
        &mut self,
        path: &[u8],
        kind: EntryKind,
        mode: u32,
        size: u64,
        object: Digest,
    ) -> Result<(), TreeError> {
        self.add_with_mtime(path, kind, mode, size, object, 0)
    }

    /// Like [`TreeBuilder::add`], with the entry's modification time
    /// (nanoseconds since the epoch).
    pub fn add_with_mtime(
        &mut self,
        path: &[u8],
        kind: EntryKind,
        mode: u32,
        size: u64,
        object: Digest,
        mtime: i64,
    ) -> Result<(), TreeError> {
        if kind == EntryKind::Dir {
            return self.add_dir_with_mtime(path, mode, mtime);
        }
        let parts = Self::split(path);
        let Some((name, parents)) = parts.split_last() else {
            return Err(TreeError::InvalidName(String::from_utf8_lossy(path).into()));
        };
        validate_name(name)?;
        let dir = self.dir_at(parents)?;
        let entry = Entry {
            name: (*name).into(),
            object,
            size,
            mode,
            kind,
            dir: 0,
            mtime,
        };
        if let Some(BuildNode::Dir { .. }) = dir.get(*name) {
            return Err(TreeError::Conflict(String::from_utf8_lossy(path).into()));
        }
        dir.insert((*name).into(), BuildNode::Leaf(entry));
        Ok(())
    }

    /// Flatten into a [`Tree`] (breadth first).
    pub fn build(self) -> Result<Tree, TreeError> {
        let mut entries = Vec::new();
        let mut dirs = Vec::new();
        // (children, parent dir, mode) per directory.
        type Pending = (BTreeMap<Box<[u8]>, BuildNode>, u32, u32);
        let mut queue: VecDeque<Pending> = VecDeque::new();
        queue.push_back((self.root, 0, self.root_mode));
        let mut next_dir: u32 = 1;
        let mut this_dir: u32 = 0;
        while let Some((children, parent, mode)) = queue.pop_front() {
            let start = u32::try_from(entries.len()).map_err(|_| TreeError::TooLarge)?;
            let len = children.len() as u32;
            for (name, node) in children {
                match node {
                    BuildNode::Leaf(e) => entries.push(e),
                    BuildNode::Dir {
                        mode,
                        mtime,
                        children,
                    } => {
                        entries.push(Entry {
                            name,
                            object: Digest::NULL,
                            size: 0,
                            mode,
                            kind: EntryKind::Dir,
                            dir: next_dir,
                            mtime,
                        });
                        queue.push_back((children, this_dir, mode));
                        next_dir = next_dir.checked_add(1).ok_or(TreeError::TooLarge)?;
                    }
                }
            }
            dirs.push(DirSpan {
                start,
                len,
                parent,
                mode,
            });
            this_dir += 1;
        }
        Ok(Tree { entries, dirs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Tree {
        let mut b = TreeBuilder::new();
        b.add(
            b"bin/tool",
            EntryKind::File,
            0o100755,
            3,
            Digest::of(b"abc"),
        )
        .unwrap();
        b.add(b"etc/conf", EntryKind::File, 0o100644, 1, Digest::of(b"x"))
            .unwrap();
        b.add(
            b"link",
            EntryKind::Symlink,
            0o120777,
            8,
            Digest::of(b"bin/tool"),
        )
        .unwrap();
        b.add_dir(b"empty", 0o040700).unwrap();
        b.build().unwrap()
    }

    #[test]
    fn build_and_lookup() {
        let t = sample();
        assert_eq!(t.len(), 6);
        let Some(PathTarget::Entry(i)) = t.lookup_path("/bin/tool") else {
            panic!("missing")
        };
        assert_eq!(t.entries()[i as usize].size, 3);
        assert!(t.lookup_path("bin/missing").is_none());
        assert_eq!(t.lookup_path("bin/tool/x"), None);
        assert_eq!(t.lookup_path("/"), Some(PathTarget::Root));
        let paths: Vec<_> = t.walk().into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            ["bin", "bin/tool", "empty", "etc", "etc/conf", "link"]
        );
    }

    #[test]
    fn conflicts_and_bad_names() {
        let mut b = TreeBuilder::new();
        b.add(b"a", EntryKind::File, 0o100644, 0, Digest::NULL)
            .unwrap();
        assert!(matches!(
            b.add(b"a/b", EntryKind::File, 0o100644, 0, Digest::NULL),
            Err(TreeError::Conflict(_))
        ));
        assert!(
            b.add(b"x/../y", EntryKind::File, 0o100644, 0, Digest::NULL)
                .is_err()
        );
    }
}
