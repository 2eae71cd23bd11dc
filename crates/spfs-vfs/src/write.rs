//! The operations of editable views ([`crate::edit`]) in node ids: what a
//! platform host calls to change a view, and the editable side of reads.
//!
//! A node of an editable view is the view's id and an inode number of its
//! [`Editable`](crate::edit::Editable); inode 0, the view's root, is the
//! shared root for a routed runtime and the view's own root for a bound
//! one. Every change is refused with [`VfsError::ReadOnly`] (EROFS) in a
//! read-only view, and with the caller's own rights checked by the
//! platform (FUSE: `default_permissions`) before it gets here.

use std::fs::File;
use std::sync::Arc;

use spfs_model::{Digest, Entry, Layer, Object};
use spfs_storage::StorageError;
use spfs_storage::commit::{StoreJob, store_files};

use crate::edit::{self, Editable, SetAttr, Source, Stale};
use crate::node::{self, ROOT, VIEW_ROOT_INDEX};
use crate::vfs::{Attr, Vfs, VfsError};
use crate::view::View;

type Result<T, E = VfsError> = std::result::Result<T, E>;

/// What a platform must forget after a change it did not make itself, in
/// node ids.
#[derive(Debug, Default)]
pub struct StaleNodes {
    pub nodes: Vec<u64>,
    pub names: Vec<(u64, Vec<u8>)>,
}

/// What `spfs commit layer` made.
#[derive(Debug)]
pub struct Committed {
    /// The new layer.
    pub layer: Digest,
    /// The runtime's stack now (the layer on top).
    pub stack: Vec<Digest>,
    /// Files and symlinks whose bytes were stored.
    pub files: usize,
    pub stale: StaleNodes,
}

/// The inode of `node` in editable view `view`, if the node is the view's.
pub fn edit_ino(view: &View, node: u64) -> Option<u32> {
    if node == ROOT {
        return (!view.bound).then_some(edit::ROOT_INODE);
    }
    let (vid, idx) = node::split(node)?;
    if vid != view.id {
        return None;
    }
    if idx == VIEW_ROOT_INDEX {
        return view.bound.then_some(edit::ROOT_INODE);
    }
    Some(idx)
}

/// The node id of inode `ino` of editable view `view`.
pub fn edit_node(view: &View, ino: u32) -> u64 {
    match ino {
        edit::ROOT_INODE if view.bound => node::view_root(view.id),
        edit::ROOT_INODE => ROOT,
        ino => node::node_id(view.id, ino),
    }
}

fn in_nodes(view: &View, mut a: Attr) -> Attr {
    a.node = edit_node(view, a.node as u32);
    a
}

impl Vfs {
    /// The editing state of `view`, if it is editable.
    pub fn editing(view: Option<&View>) -> Option<(&View, &Editable)> {
        let v = view?;
        v.edit.as_ref().map(|e| (v, e))
    }

    /// Whether `view` is editable.
    pub fn editable(view: Option<&View>) -> bool {
        Self::editing(view).is_some()
    }

    /// The editable view and inode of `node`, or why there is none.
    fn edit_target(view: Option<&View>, node: u64) -> Result<(&View, &Editable, u32)> {
        let (v, e) = Self::editing(view).ok_or(VfsError::ReadOnly)?;
        let ino = edit_ino(v, node).ok_or(VfsError::NotFound)?;
        Ok((v, e, ino))
    }

    /// Copy-up's reader of lower payloads, as the runtime's owner.
    fn lower_opener(&self, owner: u32) -> impl Fn(&Entry) -> Result<File> + '_ {
        move |e: &Entry| match e.kind {
            spfs_model::EntryKind::Symlink => Ok(self
                .payload_for(&e.object, e.size, crate::vfs::PUBLIC_ONLY)?
                .file),
            _ => Ok(self.payload_for(&e.object, e.size, owner)?.file),
        }
    }

    pub(crate) fn edit_lookup(
        &self,
        view: &View,
        ed: &Editable,
        parent: u64,
        name: &[u8],
    ) -> Result<Attr> {
        let ino = edit_ino(view, parent).ok_or(VfsError::NotFound)?;
        Ok(in_nodes(view, ed.lookup(ino, name)?))
    }

    pub(crate) fn edit_getattr(&self, view: &View, ed: &Editable, node: u64) -> Result<Attr> {
        let ino = edit_ino(view, node).ok_or(VfsError::NotFound)?;
        Ok(in_nodes(view, ed.getattr(ino)?))
    }

    /// The names in directory `node` now, sorted.
    pub(crate) fn edit_names(&self, view: &View, ed: &Editable, node: u64) -> Result<Vec<Vec<u8>>> {
        let ino = edit_ino(view, node).ok_or(VfsError::NotFound)?;
        ed.names(ino)
    }

    /// The node of the directory holding directory `node` (the root: itself).
    pub(crate) fn edit_parent(&self, view: &View, ed: &Editable, node: u64) -> u64 {
        match edit_ino(view, node) {
            Some(edit::ROOT_INODE) | None => node,
            Some(ino) => edit_node(view, ed.parent_of(ino).unwrap_or(edit::ROOT_INODE)),
        }
    }

    /// The attributes of `name` in directory `parent` now, not handed out
    /// as a reference.
    pub(crate) fn edit_peek(
        &self,
        view: &View,
        ed: &Editable,
        parent: u64,
        name: &[u8],
    ) -> Result<Attr> {
        let ino = edit_ino(view, parent).ok_or(VfsError::NotFound)?;
        Ok(in_nodes(view, ed.peek(ino, name)?))
    }

    pub(crate) fn edit_readlink(&self, view: &View, ed: &Editable, node: u64) -> Result<Vec<u8>> {
        let ino = edit_ino(view, node).ok_or(VfsError::NotFound)?;
        match ed.readlink(ino)? {
            Ok(target) => Ok(target),
            Err(e) => self.lower_link_target(&e),
        }
    }

    /// Read bytes of file `node` of an editable view, for a caller whose
    /// user is `owner`.
    pub fn read_edit(
        &self,
        view: Option<&View>,
        owner: u32,
        node: u64,
        offset: u64,
        size: usize,
    ) -> Result<Vec<u8>> {
        let (_, ed, ino) = Self::edit_target(view, node)?;
        match ed.source(ino)? {
            Source::Upper(f) => Ok(crate::handles::read_at(&f, offset, size)?),
            Source::Lower(e) => {
                let opened = self.payload_for(&e.object, e.size, owner)?;
                Ok(crate::handles::read_at(&opened.file, offset, size)?)
            }
        }
    }

    /// Whether `node` may be opened (for writing: `write`) in an editable view.
    pub fn open_edit(&self, view: Option<&View>, node: u64, write: bool) -> Result<()> {
        let (_, ed, ino) = Self::edit_target(view, node)?;
        let a = ed.getattr(ino)?;
        if a.kind == crate::vfs::NodeKind::Dir {
            return Err(VfsError::IsDir);
        }
        if write && !ed.is_writable() {
            return Err(VfsError::ReadOnly);
        }
        Ok(())
    }

    pub fn create(
        &self,
        view: Option<&View>,
        parent: u64,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        let (v, ed, ino) = Self::edit_target(view, parent)?;
        let (attr, _) = ed.create(ino, name, mode, uid, gid)?;
        Ok(in_nodes(v, attr))
    }

    pub fn mkdir(
        &self,
        view: Option<&View>,
        parent: u64,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        let (v, ed, ino) = Self::edit_target(view, parent)?;
        Ok(in_nodes(v, ed.mkdir(ino, name, mode, uid, gid)?))
    }

    pub fn symlink(
        &self,
        view: Option<&View>,
        parent: u64,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        let (v, ed, ino) = Self::edit_target(view, parent)?;
        Ok(in_nodes(v, ed.symlink(ino, name, target, uid, gid)?))
    }

    pub fn link(
        &self,
        view: Option<&View>,
        owner: u32,
        node: u64,
        parent: u64,
        name: &[u8],
    ) -> Result<Attr> {
        let (v, ed, ino) = Self::edit_target(view, node)?;
        let pino = edit_ino(v, parent).ok_or(VfsError::NotFound)?;
        let open = self.lower_opener(owner);
        Ok(in_nodes(v, ed.link(ino, pino, name, &open)?))
    }

    /// Remove a file or symlink (`dir`: an empty directory).
    pub fn remove(&self, view: Option<&View>, parent: u64, name: &[u8], dir: bool) -> Result<()> {
        let (_, ed, ino) = Self::edit_target(view, parent)?;
        ed.remove(ino, name, dir)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn rename(
        &self,
        view: Option<&View>,
        owner: u32,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        no_replace: bool,
    ) -> Result<()> {
        let (v, ed, ino) = Self::edit_target(view, parent)?;
        let nino = edit_ino(v, new_parent).ok_or(VfsError::NotFound)?;
        let open = self.lower_opener(owner);
        ed.rename(ino, name, nino, new_name, no_replace, &open)
    }

    pub fn setattr(
        &self,
        view: Option<&View>,
        owner: u32,
        node: u64,
        set: &SetAttr,
    ) -> Result<Attr> {
        let (v, ed, ino) = Self::edit_target(view, node)?;
        let open = self.lower_opener(owner);
        Ok(in_nodes(v, ed.setattr(ino, set, &open)?))
    }

    pub fn write(
        &self,
        view: Option<&View>,
        owner: u32,
        node: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<usize> {
        let (_, ed, ino) = Self::edit_target(view, node)?;
        let open = self.lower_opener(owner);
        ed.write(ino, offset, data, &open)
    }

    pub fn fsync(&self, view: Option<&View>, node: u64) -> Result<()> {
        match Self::edit_target(view, node) {
            Ok((_, ed, ino)) => ed.fsync(ino),
            // Nothing of a read-only view is ever written.
            Err(_) => Ok(()),
        }
    }

    fn stale_nodes(view: &View, stale: Stale) -> StaleNodes {
        StaleNodes {
            nodes: stale
                .inodes
                .into_iter()
                .map(|i| edit_node(view, i))
                .collect(),
            names: stale
                .names
                .into_iter()
                .map(|(p, n)| (edit_node(view, p), n))
                .collect(),
        }
    }

    /// Drop the edits of `view` under `paths` (all when empty).
    pub fn reset(&self, view: &View, paths: &[Vec<u8>]) -> Result<StaleNodes> {
        let ed = view.edit.as_ref().ok_or(VfsError::ReadOnly)?;
        Ok(Self::stale_nodes(view, ed.reset(paths)?))
    }

    /// Turn the edits of `view` into a layer put on top of its stack
    /// (`Ok(None)`: there were none). The view shows the same files before
    /// and after.
    pub fn commit_edits(&self, view: &View) -> Result<Option<Committed>> {
        let ed = view.edit.as_ref().ok_or(VfsError::ReadOnly)?;
        let repo = self.repo();
        let storage = |e: StorageError| VfsError::Io(std::io::Error::other(e.to_string()));
        // A writer (see docs/clean.md) until the view's stack names the
        // layer: the service's views are roots of a clean.
        let _guard = repo.write_guard().map_err(storage)?;
        let done = ed.replace_lower(|lower, stack, area| {
            let planned = edit::commit::plan(lower, area)?;
            if planned.is_empty() {
                return Ok(None);
            }
            let jobs: Vec<StoreJob> = planned
                .iter()
                .filter_map(|p| match p {
                    edit::commit::Planned::Store(f) => Some(StoreJob {
                        rel: f.rel.clone(),
                        abs: f.abs.clone(),
                        kind: f.kind,
                        mode: f.mode,
                        size: f.size,
                        mtime: f.mtime,
                        // A file only its owner may read stays the
                        // runtime owner's.
                        owner: Some(ed.owner_uid()),
                    }),
                    _ => None,
                })
                .collect();
            let stored = store_files(repo, &jobs, &()).map_err(storage)?;
            let root_mode = lower
                .dirs()
                .first()
                .map_or(spfs_model::tree::DEFAULT_DIR_MODE, |d| d.mode);
            let tree = edit::commit::build(&planned, root_mode, &stored)
                .map_err(|e| VfsError::Io(std::io::Error::other(e.to_string())))?;
            let manifest = repo
                .write_object(&Object::Manifest(tree))
                .map_err(storage)?;
            let layer = repo
                .write_object(&Object::Layer(Layer {
                    manifest,
                    annotations: Default::default(),
                }))
                .map_err(storage)?;
            let mut new_stack = stack.to_vec();
            new_stack.push(layer);
            let merged = repo.merged_tree(&new_stack).map_err(storage)?;
            Ok(Some((Arc::new(merged), new_stack, (layer, jobs.len()))))
        })?;
        Ok(done.map(|((layer, files), stack, stale)| Committed {
            layer,
            stack,
            files,
            stale: Self::stale_nodes(view, stale),
        }))
    }
}
