//! Turning an upper area into a layer.
//!
//! The layer holds exactly what makes the stack below look like the view:
//! for every directory of the upper area, at path `P`, the view's entries
//! of `P` are compared with the entries of `P` in the stack below
//! ([`plan`]):
//!
//! - an entry of the upper area is in the layer (a file or symlink whose
//!   bytes must be stored, or a directory, walked in turn);
//! - an entry the view shows from below, from the same path, needs nothing
//!   (the layer merges over it);
//! - an entry the view shows from another path below (a renamed directory
//!   is redirected, see [`super::upper::Origin`]) is copied into the layer
//!   by reference: the same digests, nothing read;
//! - a name the stack below has at `P` that the view does not show (a
//!   whiteout, an opaque directory) becomes a mask.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::FileType;
use spfs_model::{Digest, Entry, EntryKind, Tree};

use super::upper::{self, Upper};
use super::{child_origin, lower_dir_at, ns_of_stat};

/// An entry of the layer to be.
#[derive(Clone, Debug)]
pub enum Planned {
    /// A directory (path, mode, mtime).
    Dir(Vec<u8>, u32, i64),
    /// A file or symlink whose bytes are in the upper area at `abs`.
    Store(UpperFile),
    /// An entry whose bytes are stored already (copied from below).
    Stored(Vec<u8>, Entry),
    /// A mask hiding the name below.
    Mask(Vec<u8>),
}

/// A file or symlink of the upper area to store.
#[derive(Clone, Debug)]
pub struct UpperFile {
    pub rel: Vec<u8>,
    pub abs: PathBuf,
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    pub mtime: i64,
}

/// The layer that makes `lower` look like `lower` under `upper`: its
/// entries, parents first. Empty when there is nothing to commit.
pub fn plan(lower: &Tree, area: &Upper) -> io::Result<Vec<Planned>> {
    let mut out = Vec::new();
    let root = area.dir(b"")?;
    walk(lower, area, &root, Vec::new(), Some(0), &mut out)?;
    Ok(out)
}

fn child_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    super::join(dir, name)
}

/// Plan directory `path` of the upper area (open as `dir`), whose view
/// merges with directory `origin` below.
fn walk(
    lower: &Tree,
    area: &Upper,
    dir: &OwnedFd,
    path: Vec<u8>,
    origin: Option<u32>,
    out: &mut Vec<Planned>,
) -> io::Result<()> {
    // What the stack below has at this path (the layer merges over it).
    let below = lower_dir_at(lower, &path);
    let mut shown: HashSet<Vec<u8>> = HashSet::new();
    let mut whited: HashSet<Vec<u8>> = HashSet::new();
    let mut names = upper::names(dir)?;
    names.sort();
    for name in names {
        let Some(st) = upper::stat(dir, &name)? else {
            continue;
        };
        let rel = child_path(&path, &name);
        if upper::is_whiteout(&st) {
            // Hides the name of the directory's origin.
            whited.insert(name);
            continue;
        }
        shown.insert(name.clone());
        let mtime = ns_of_stat(&st);
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                out.push(Planned::Dir(rel.clone(), st.st_mode, mtime));
                let sub = upper::subdir(dir, &name)?;
                let child = child_origin(lower, origin, &name, upper::origin(&sub)?);
                walk(lower, area, &sub, rel, child, out)?;
            }
            FileType::RegularFile | FileType::Symlink => {
                let kind = if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                    EntryKind::Symlink
                } else {
                    EntryKind::File
                };
                out.push(Planned::Store(UpperFile {
                    abs: area.path().join(OsStr::from_bytes(&rel)),
                    rel,
                    kind,
                    mode: st.st_mode,
                    size: st.st_size as u64,
                    mtime,
                }));
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: not a file, directory or symlink",
                        String::from_utf8_lossy(&rel)
                    ),
                ));
            }
        }
    }
    if let Some(o) = origin {
        for e in lower.children(o) {
            if e.kind == EntryKind::Mask || shown.contains(&*e.name) || whited.contains(&*e.name) {
                continue;
            }
            shown.insert(e.name.to_vec());
            if Some(o) != below {
                // Shown from elsewhere below: copied by reference.
                copy_lower(lower, e, child_path(&path, &e.name), out);
            }
        }
    }
    if let Some(b) = below {
        for e in lower.children(b) {
            if e.kind != EntryKind::Mask && !shown.contains(&*e.name) {
                out.push(Planned::Mask(child_path(&path, &e.name)));
            }
        }
    }
    Ok(())
}

/// Put entry `e` of the lower tree (and everything below it) at `rel`.
fn copy_lower(lower: &Tree, e: &Entry, rel: Vec<u8>, out: &mut Vec<Planned>) {
    if e.kind == EntryKind::Dir {
        out.push(Planned::Dir(rel.clone(), e.mode, e.mtime));
        for c in lower.children(e.dir) {
            copy_lower(lower, c, child_path(&rel, &c.name), out);
        }
    } else {
        out.push(Planned::Stored(rel, e.clone()));
    }
}

/// The tree of a planned layer, once the upper files are stored
/// (`stored`: the digest and size of each [`Planned::Store`], in order).
pub fn build(
    planned: &[Planned],
    root_mode: u32,
    stored: &[(Digest, u64)],
) -> Result<Tree, spfs_model::TreeError> {
    let mut b = spfs_model::TreeBuilder::new();
    b.set_root_mode(root_mode);
    let mut next = stored.iter();
    for p in planned {
        match p {
            Planned::Dir(rel, mode, mtime) => b.add_dir_with_mtime(rel, *mode, *mtime)?,
            Planned::Store(f) => {
                let (digest, size) = next.next().copied().unwrap_or((Digest::NULL, 0));
                b.add_with_mtime(&f.rel, f.kind, f.mode, size, digest, f.mtime)?
            }
            Planned::Stored(rel, e) => {
                b.add_with_mtime(rel, e.kind, e.mode, e.size, e.object, e.mtime)?
            }
            Planned::Mask(rel) => b.add_with_mtime(rel, EntryKind::Mask, 0, 0, Digest::NULL, 0)?,
        }
    }
    b.build()
}
