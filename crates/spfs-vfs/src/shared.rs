//! Shared subtrees: one node for a top-level directory that routed views
//! hold alike.
//!
//! The kernel keeps one cache entry per name in a directory, whoever looks
//! it up. Routed views all hang off the one shared root, so when two views
//! give `/spfs/lib` different node ids, each lookup from the other view
//! replaces the kernel's entry, and with it every name cached below: with
//! many runtimes of different stacks reading at once, nothing below the
//! root stays cached. Yet different stacks mostly hold the same top-level
//! directories (a shared base layer): when a directory, everything below
//! it, its name, mode and time are the same in two views of one owner,
//! both name it (and all it holds) by the node ids of one *subtree view*,
//! a [`View`] whose tree is that directory copied out
//! ([`spfs_model::Tree::subtree`]). The kernel's entry for the name then
//! stays valid from either view, and so does everything cached below it.
//!
//! Only routed, read-only views share (a bound view has a root of its own;
//! an editable view changes), only top-level directories (below them,
//! node ids of one view are cached already), and only within one owner, for
//! the reason views are never shared between owners (see
//! [`crate::registry`]). A subtree view lives while a view that shares it
//! does; its id comes from the views' ids, never reused, and a restarted
//! service takes it over with the id the kernel knows
//! ([`crate::RuntimeSpec::shared`]).

use std::sync::Arc;

use spfs_model::{Digest, EntryKind, Hasher, Tree};

use crate::view::View;

/// Top-level directories shared per view at most (a registration hands out
/// at most this many ids besides its view's, well inside the block of ids
/// a service reserves ahead).
pub const MAX_SHARED_DIRS: usize = 256;

/// What makes two views' top-level directories one subtree view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubtreeKey {
    /// The directory's name, mode and time, and everything below it.
    pub digest: Digest,
    pub owner_uid: u32,
}

/// The top-level directories of `tree` that may be shared (the first
/// [`MAX_SHARED_DIRS`]): each one's entry index and key.
pub fn top_dirs(tree: &Tree, owner_uid: u32) -> Vec<(u32, SubtreeKey)> {
    if !tree.children(0).iter().any(|e| e.kind == EntryKind::Dir) {
        return Vec::new();
    }
    let digests = tree.dir_digests();
    let start = tree.children_start(0);
    tree.children(0)
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == EntryKind::Dir)
        .take(MAX_SHARED_DIRS)
        .map(|(k, e)| {
            let mut h = Hasher::new();
            h.update(&(e.name.len() as u64).to_le_bytes());
            h.update(&e.name);
            h.update(&e.mode.to_le_bytes());
            h.update(&e.mtime.to_le_bytes());
            h.update(digests[e.dir as usize].as_bytes());
            let key = SubtreeKey {
                digest: h.finish(),
                owner_uid,
            };
            (start + k as u32, key)
        })
        .collect()
}

/// Subtree view `id` of `subtree` (a directory copied out of a tree by
/// [`Tree::subtree`]).
pub fn subtree_view(id: u32, subtree: Arc<Tree>, owner_uid: u32, routed: bool) -> View {
    View {
        id,
        owner_uid,
        layers: Vec::new(),
        tree: subtree,
        mtime: std::time::SystemTime::UNIX_EPOCH,
        bound: false,
        edit: None,
        shares: Shares::default(),
        routes: crate::routed::Routes::default(),
        routed,
    }
}

/// The entry index, in a subtree view's tree, of its directory.
pub const SUBTREE_TOP: u32 = 0;

/// The top-level directories a view shows through subtree views.
#[derive(Debug, Default)]
pub struct Shares {
    /// (entry index in the view's tree, subtree view), by index.
    by_index: Vec<(u32, Arc<View>)>,
    /// (subtree view id, position in `by_index`), by id.
    by_id: Vec<(u32, usize)>,
}

impl Shares {
    pub fn new(mut list: Vec<(u32, Arc<View>)>) -> Shares {
        list.sort_by_key(|(index, _)| *index);
        let mut by_id: Vec<_> = list
            .iter()
            .enumerate()
            .map(|(k, (_, v))| (v.id, k))
            .collect();
        by_id.sort_unstable();
        Shares {
            by_index: list,
            by_id,
        }
    }

    /// The subtree view that shows entry `index` of the view.
    pub fn of_entry(&self, index: u32) -> Option<&View> {
        let k = self
            .by_index
            .binary_search_by_key(&index, |(i, _)| *i)
            .ok()?;
        Some(&self.by_index[k].1)
    }

    /// The subtree view `id`, if the view shares it.
    pub fn by_id(&self, id: u32) -> Option<&View> {
        let k = self.by_id.binary_search_by_key(&id, |(i, _)| *i).ok()?;
        Some(&self.by_index[self.by_id[k].1].1)
    }

    /// The ids of the subtree views shown through routed directories.
    pub fn routed_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.views().filter(|v| v.routed).map(|v| v.id).collect();
        ids.sort_unstable();
        ids
    }

    /// (entry index, subtree view id) of every shared directory.
    pub fn ids(&self) -> Vec<(u32, u32)> {
        self.by_index.iter().map(|(i, v)| (*i, v.id)).collect()
    }

    pub fn len(&self) -> usize {
        self.by_index.len()
    }

    /// The subtree views shared.
    pub fn views(&self) -> impl Iterator<Item = &View> {
        self.by_index.iter().map(|(_, v)| v.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        self.by_index.is_empty()
    }
}

/// For the crate's tests: runtimes of stacks with a directory alike.
#[cfg(test)]
pub(crate) mod testing {
    use spfs_model::{Digest, EntryKind, TreeBuilder};

    use crate::registry::register_tree_as;
    use crate::{RuntimeSpec, Vfs};

    /// A runtime whose stack holds `base/x/f` ("one", time `base_mtime`)
    /// and `own/NAME`.
    pub fn runtime(
        vfs: &Vfs,
        spec: RuntimeSpec,
        base_mtime: i64,
    ) -> std::sync::Arc<crate::Runtime> {
        let one = vfs.repo().write_blob(b"one").unwrap();
        let own = vfs.repo().write_blob(spec.name.as_bytes()).unwrap();
        let mut b = TreeBuilder::new();
        b.add_with_mtime(b"base/x/f", EntryKind::File, 0o100644, 3, one, 5)
            .unwrap();
        b.add_dir_with_mtime(b"base", 0o040755, base_mtime).unwrap();
        let path = format!("own/{}", spec.name);
        let size = spec.name.len() as u64;
        b.add(path.as_bytes(), EntryKind::File, 0o100644, size, own)
            .unwrap();
        let layers = vec![Digest::of(spec.name.as_bytes())];
        register_tree_as(&vfs.registry, spec, layers, b.build().unwrap())
    }
}

#[cfg(test)]
mod tests {
    use spfs_storage::FsRepository;

    use super::testing::runtime;

    use crate::node::{self, ROOT};
    use crate::{RuntimeSpec, Vfs, VfsError};

    use crate::registry::test_spec as spec;

    fn node(vfs: &Vfs, rt: &crate::Runtime, parent: u64, name: &[u8]) -> u64 {
        vfs.lookup(Some(&rt.view), parent, name).unwrap().0.node
    }

    #[test]
    fn alike_top_level_directories_of_one_owner_are_one_node() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Vfs::new(FsRepository::create(dir.path()).unwrap());
        let a = runtime(&vfs, spec("a", 0), 9);
        let b = runtime(&vfs, spec("b", 0), 9);
        let base = node(&vfs, &a, ROOT, b"base");
        assert_eq!(node(&vfs, &b, ROOT, b"base"), base, "alike: one node");
        // `own` differs: each view's own directory, handed out through the
        // routed directory of the name (crate::routed).
        let own_index = |rt: &crate::Runtime| rt.view.tree.find(0, b"own").unwrap();
        let (own_a, own_b) = (
            a.view.dir_node(own_index(&a)),
            b.view.dir_node(own_index(&b)),
        );
        assert_ne!(own_a, own_b);
        let routed = b.view.routes.node_of(own_index(&b)).unwrap();
        assert_eq!(
            node(&vfs, &a, ROOT, b"own"),
            own_a,
            "the first keeps its own"
        );
        assert_eq!(node(&vfs, &b, ROOT, b"own"), routed);
        // Everything below is one node too, reached from either view.
        let x = node(&vfs, &a, base, b"x");
        assert_eq!(node(&vfs, &b, base, b"x"), x);
        let f = node(&vfs, &b, x, b"f");
        assert_eq!(node(&vfs, &a, x, b"f"), f);
        for rt in [&a, &b] {
            let mut file = vfs.open(Some(&rt.view), 0, f, false).unwrap().file;
            let mut s = String::new();
            std::io::Read::read_to_string(&mut file, &mut s).unwrap();
            assert_eq!(s, "one");
        }
        // Listed as it is looked up; its parent is the root.
        let mut listed = Vec::new();
        vfs.readdir(Some(&b.view), ROOT, 0, true, 0, |item| {
            listed.push((item.name.to_vec(), item.attr.node));
            false
        })
        .unwrap();
        assert!(listed.contains(&(b"base".to_vec(), base)), "{listed:?}");
        let mut parent = 0;
        vfs.readdir(Some(&a.view), base, 1, false, 0, |item| {
            parent = item.attr.node;
            true
        })
        .unwrap();
        assert_eq!(parent, ROOT);
        // Not another owner's, nor a directory that differs (its time), nor
        // a bound view's; and none of them reaches the shared node.
        let other = runtime(&vfs, spec("c", 1000), 9);
        let later = runtime(&vfs, spec("d", 0), 10);
        let bound = runtime(
            &vfs,
            RuntimeSpec {
                bound: true,
                ..spec("e", 0)
            },
            9,
        );
        assert!(bound.view.shares.is_empty());
        for rt in [&other, &later] {
            assert_ne!(node(&vfs, rt, ROOT, b"base"), base);
            assert!(matches!(
                vfs.lookup(Some(&rt.view), base, b"x"),
                Err(VfsError::NotFound)
            ));
        }
        for v in [None, Some(&*bound.view)] {
            assert!(matches!(vfs.getattr(v, x), Err(VfsError::NotFound)));
        }
        // b's own directory stays b's.
        assert!(matches!(
            vfs.getattr(Some(&a.view), own_b),
            Err(VfsError::NotFound)
        ));
        // The subtree view lives while a view shares it.
        let (sid, _) = node::split(base).unwrap();
        assert!(vfs.registry.view(sid).is_some());
    }

    #[test]
    fn a_view_taken_over_keeps_its_subtree_ids_or_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Vfs::new(FsRepository::create(dir.path()).unwrap());
        let probe = runtime(
            &vfs,
            RuntimeSpec {
                bound: true,
                ..spec("probe", 0)
            },
            9,
        );
        let base_index = match probe.view.tree.lookup_path("base") {
            Some(spfs_model::PathTarget::Entry(i)) => i,
            _ => panic!("no base"),
        };
        let kept = RuntimeSpec {
            view_id: Some(50),
            shared: Some(vec![(base_index, 77)]),
            ..spec("kept", 0)
        };
        let kept = runtime(&vfs, kept, 9);
        assert_eq!(node(&vfs, &kept, ROOT, b"base"), node::node_id(77, 0));
        // A new view of the same directory shares that subtree view.
        let fresh = runtime(&vfs, spec("fresh", 0), 9);
        assert_eq!(node(&vfs, &fresh, ROOT, b"base"), node::node_id(77, 0));
        assert!(fresh.view.id > 77, "ids above those taken over");
        // Recorded without: its own node, as before.
        let own = RuntimeSpec {
            view_id: Some(60),
            shared: Some(Vec::new()),
            ..spec("own", 0)
        };
        let own = runtime(&vfs, own, 9);
        assert_eq!(
            node(&vfs, &own, ROOT, b"base"),
            node::node_id(60, base_index)
        );
        // Recorded as routed: routed again (the others as they were).
        let routed = RuntimeSpec {
            view_id: Some(90),
            shared: Some(vec![(base_index, 91)]),
            routed: vec![91],
            ..spec("routed", 0)
        };
        let routed = runtime(&vfs, routed, 10);
        let r = routed.view.routes.node_of(base_index).unwrap();
        assert_eq!(node(&vfs, &routed, ROOT, b"base"), r);
        assert!(crate::routed::is_routed(r));
        assert_eq!(node(&vfs, &fresh, ROOT, b"base"), node::node_id(77, 0));
    }
}
