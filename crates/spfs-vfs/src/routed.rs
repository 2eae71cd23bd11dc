//! Routed directories: one node for a top-level name that one user's
//! routed runtimes hold as different directories.
//!
//! The kernel keeps one cache entry per name in a directory, whoever looks
//! it up. When routed views give a top-level directory, say `/spfs/stack`,
//! different node ids, every lookup from another view replaces the kernel's
//! entry, and with it everything cached below it: with many runtimes of
//! different stacks walking the name at once, each walk races the others'
//! and costs several lookups (and as many `FORGET`s) at every level.
//!
//! A name that an owner's live routed read-only runtimes hold as
//! directories with more than one node id between them is *contested* for
//! that owner. The shared root then answers the owner's runtimes' lookups
//! of the name with one *routed directory* node, so the kernel's entry for
//! the name stays valid whichever of them walks it. Below it, a routed
//! directory answers like the root: each caller's names from the caller's
//! own directory, never cached (lifetime zero, misses too, listings not
//! kept), so a walk asks for the next name each time and gets the caller's
//! node, cached as any. A name held by one node only (one view, or views
//! sharing a subtree view, [`crate::shared`]) keeps that node, so a walk
//! through it costs what it did.
//!
//! What may differ between callers must never be an attribute of the
//! routed node itself: the kernel keeps one set of attributes per node and
//! checks permissions against them (`default_permissions`). So the node's
//! id is derived from the name *and* the directory's permission bits
//! ([`routed_node`]; read-only views show every entry as root's), and its
//! attributes are fixed: those bits, root's, one link, no size, and the
//! mount root's time, cached like any. Whether a name is contested is
//! counted per owner, so nothing a runtime sees depends on other users'
//! runtimes (two owners' views of a name still have different nodes, and
//! replace each other's entry as before).
//!
//! Node ids: the view part of a routed directory's id is in
//! [`FIRST_ROUTED_VIEW`]`..`[`crate::content::CONTENT_VIEW`], which no view
//! is given. The id is a hash, the same in every service process, so
//! nothing needs handing over to a restarted service: a view finds its
//! directory of a routed id in its [`Routes`], made with the view. Two
//! names of one view whose ids collide (a 55-bit hash) are both left
//! unrouted.

use std::collections::{HashMap, HashSet};

use spfs_model::{Digest, EntryKind, Tree};

/// The lowest view part of a routed directory's node id; no view id is
/// this high (see [`crate::registry`]).
pub const FIRST_ROUTED_VIEW: u32 = 0xFE00_0000;

/// The routed directory node id of top-level directory `name` with
/// permission bits `perm`: 0xFE in the top byte, a hash of both below, the
/// lowest bit clear (an entry index of all ones would name a bound view's
/// root).
pub fn routed_node(name: &[u8], perm: u16) -> u64 {
    let mut tagged = Vec::with_capacity(name.len() + 18);
    tagged.extend_from_slice(b"spfs routed dir\0");
    tagged.extend_from_slice(&perm.to_le_bytes());
    tagged.extend_from_slice(name);
    let d = Digest::of(&tagged);
    let mut h = [0u8; 8];
    h.copy_from_slice(&d.as_bytes()[..8]);
    let hash = u64::from_le_bytes(h) & 0x00FF_FFFF_FFFF_FFFE;
    ((FIRST_ROUTED_VIEW as u64 >> 24) << 56) | hash
}

/// Whether `node` is a routed directory's.
pub fn is_routed(node: u64) -> bool {
    (node >> 56) as u32 == FIRST_ROUTED_VIEW >> 24
}

/// A view's top-level directories by routed node id.
#[derive(Debug, Default)]
pub struct Routes {
    /// (routed node id, entry index), sorted by id.
    by_node: Vec<(u64, u32)>,
    /// (entry index, routed node id), sorted by index.
    by_index: Vec<(u32, u64)>,
}

impl Routes {
    /// The routes of a routed read-only view of `tree`: the top-level
    /// directories it may share ([`crate::shared::top_dirs`], the first
    /// [`crate::shared::MAX_SHARED_DIRS`]), but the name of the bound
    /// views' door (see [`crate::vfs::VIEW_DOOR`]).
    pub fn of(tree: &Tree) -> Routes {
        let start = tree.children_start(0);
        let mut by_node: Vec<(u64, u32)> = tree
            .children(0)
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == EntryKind::Dir)
            .take(crate::shared::MAX_SHARED_DIRS)
            .filter(|(_, e)| *e.name != *crate::vfs::VIEW_DOOR)
            .map(|(k, e)| {
                (
                    routed_node(&e.name, (e.mode & 0o7777) as u16),
                    start + k as u32,
                )
            })
            .collect();
        by_node.sort_unstable();
        // Colliding names: neither is routed.
        let mut kept: Vec<(u64, u32)> = Vec::with_capacity(by_node.len());
        let mut k = 0;
        while k < by_node.len() {
            let n = by_node[k].0;
            let same = by_node[k..].iter().take_while(|(m, _)| *m == n).count();
            if same == 1 {
                kept.push(by_node[k]);
            }
            k += same;
        }
        let mut by_index: Vec<(u32, u64)> = kept.iter().map(|(n, i)| (*i, *n)).collect();
        by_index.sort_unstable();
        Routes {
            by_node: kept,
            by_index,
        }
    }

    /// The entry index of the view's directory of routed node `node`.
    pub fn index_of(&self, node: u64) -> Option<u32> {
        let k = self.by_node.binary_search_by_key(&node, |(n, _)| *n).ok()?;
        Some(self.by_node[k].1)
    }

    /// The routed node id of the view's top-level directory `index`.
    pub fn node_of(&self, index: u32) -> Option<u64> {
        let k = self
            .by_index
            .binary_search_by_key(&index, |(i, _)| *i)
            .ok()?;
        Some(self.by_index[k].1)
    }

    /// (routed node id, entry index) of every routed directory.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.by_node.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }
}

/// A routed name of one owner: (owner uid, routed directory node id).
pub type OwnedName = (u32, u64);

/// Which routed names are contested: for each, how many live runtimes
/// hand out each node id for it.
#[derive(Debug, Default)]
pub struct Contests {
    held: HashMap<OwnedName, HashMap<u64, u32>>,
}

impl Contests {
    /// A runtime handing out `node` for routed name `routed` came (`add`)
    /// or went. Returns whether the name is contested now, if that changed.
    pub fn count(&mut self, routed: OwnedName, node: u64, add: bool) -> Option<bool> {
        let nodes = self.held.entry(routed).or_default();
        let before = nodes.len() > 1;
        match add {
            true => *nodes.entry(node).or_default() += 1,
            false => {
                if let Some(n) = nodes.get_mut(&node) {
                    *n -= 1;
                    if *n == 0 {
                        nodes.remove(&node);
                    }
                }
            }
        }
        let after = nodes.len() > 1;
        if nodes.is_empty() {
            self.held.remove(&routed);
        }
        (before != after).then_some(after)
    }
}

/// The contested names, read on every lookup in the shared root.
#[derive(Debug, Default)]
pub struct Contested(std::sync::RwLock<HashSet<OwnedName>>);

impl Contested {
    pub fn contains(&self, routed: OwnedName) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&routed)
    }

    pub fn set(&self, routed: OwnedName, contested: bool) {
        let mut set = self.0.write().unwrap_or_else(|p| p.into_inner());
        match contested {
            true => set.insert(routed),
            false => set.remove(&routed),
        };
    }

    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::ROOT;
    use crate::registry::test_spec as spec;
    use crate::vfs::{LONG_TTL, NO_TTL};
    use crate::{RuntimeSpec, Vfs, VfsError};
    use spfs_storage::FsRepository;

    /// A runtime whose stack holds `base/x/f` (alike in every view) and
    /// `own/NAME` (NAME: the runtime's name).
    fn runtime(vfs: &Vfs, spec: RuntimeSpec) -> std::sync::Arc<crate::Runtime> {
        crate::shared::testing::runtime(vfs, spec, 9)
    }

    fn names(vfs: &Vfs, rt: &crate::Runtime, node: u64) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        vfs.readdir(Some(&rt.view), node, 0, true, 0, |item| {
            out.push((
                String::from_utf8_lossy(item.name).into_owned(),
                item.attr.node,
            ));
            false
        })
        .unwrap();
        out
    }

    /// The routed node id of `rt`'s top-level directory `name`.
    fn routed_of(rt: &crate::Runtime, name: &[u8]) -> u64 {
        let index = rt.view.tree.find(0, name).unwrap();
        rt.view.routes.node_of(index).unwrap()
    }

    #[test]
    fn a_name_views_hold_differently_is_one_node_answered_per_caller() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Vfs::new(FsRepository::create(dir.path()).unwrap());
        let a = runtime(&vfs, spec("a", 0));
        let r = routed_of(&a, b"own");
        // Alone, a view hands out its own node, cached as before.
        let (alone, entry_ttl, attr_ttl) = vfs.lookup(Some(&a.view), ROOT, b"own").unwrap();
        assert_ne!(alone.node, r);
        assert_eq!((entry_ttl, attr_ttl), (NO_TTL, LONG_TTL));
        // Other users' runtimes change nothing of what it sees, even when
        // they hold the name differently (or its base alike).
        let c = runtime(&vfs, spec("c", 1000));
        let d = runtime(&vfs, spec("d", 1001));
        assert_eq!(vfs.registry.contested_count(), 0);
        assert_eq!(vfs.lookup(Some(&a.view), ROOT, b"own").unwrap().0, alone);
        // Another view of the owner's holds `own` differently: both are
        // answered with the routed node, whose attributes are the same for
        // every caller.
        let b = runtime(&vfs, spec("b", 0));
        assert_eq!(vfs.registry.contested_count(), 1);
        // `base`, alike within the owner's views, keeps its shared node.
        let base = vfs.lookup(Some(&a.view), ROOT, b"base").unwrap().0.node;
        assert!(!is_routed(base));
        assert_eq!(
            vfs.lookup(Some(&b.view), ROOT, b"base").unwrap().0.node,
            base
        );
        // Another owner's views contest the name for that owner only, and
        // are answered through the same routed node.
        let c2 = runtime(&vfs, spec("c2", 1000));
        assert_eq!(vfs.registry.contested_count(), 2);
        let d_own = vfs.lookup(Some(&d.view), ROOT, b"own").unwrap().0.node;
        assert!(!is_routed(d_own), "1001 holds it once");
        let fixed = vfs.lookup(Some(&a.view), ROOT, b"own").unwrap().0;
        assert_eq!(
            (fixed.node, fixed.nlink, fixed.size, fixed.uid),
            (r, 1, 0, 0)
        );
        for rt in [&a, &b, &c, &c2] {
            let (attr, entry_ttl, attr_ttl) = vfs.lookup(Some(&rt.view), ROOT, b"own").unwrap();
            assert_eq!((attr, entry_ttl, attr_ttl), (fixed, NO_TTL, LONG_TTL));
            assert_eq!(vfs.getattr(Some(&rt.view), r).unwrap(), (fixed, LONG_TTL));
            assert!(names(&vfs, rt, ROOT).contains(&("own".into(), r)));
            // Below it: the caller's own names, never cached, misses
            // neither.
            let own = &rt.name;
            let (f, entry_ttl, _) = vfs.lookup(Some(&rt.view), r, own.as_bytes()).unwrap();
            assert_eq!(entry_ttl, NO_TTL);
            assert_eq!(f.size, own.len() as u64);
            let mut s = String::new();
            let mut file = vfs.open(Some(&rt.view), 0, f.node, false).unwrap().file;
            std::io::Read::read_to_string(&mut file, &mut s).unwrap();
            assert_eq!(&s, own);
            for other in ["a", "b", "c", "c2", "d"].into_iter().filter(|n| n != own) {
                assert!(matches!(
                    vfs.lookup(Some(&rt.view), r, other.as_bytes()),
                    Err(VfsError::NotFound)
                ));
                assert_eq!(vfs.miss_ttl(Some(&rt.view), r, other.as_bytes()), NO_TTL);
            }
            let listed = names(&vfs, rt, r);
            let listed: Vec<_> = listed.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(listed, [".", "..", own.as_str()]);
            assert!(!vfs.dir_listing_cacheable(Some(&rt.view), r));
        }
        // Nobody else reaches it: no runtime, a bound view, an editable one.
        let bound = runtime(
            &vfs,
            RuntimeSpec {
                bound: true,
                ..spec("bound", 0)
            },
        );
        let upper = tempfile::tempdir().unwrap();
        let edit = runtime(
            &vfs,
            RuntimeSpec {
                edit: Some(crate::EditSpec {
                    upper: upper.path().join("upper"),
                    owner_gid: 0,
                    writable: true,
                }),
                ..spec("edit", 0)
            },
        );
        assert_ne!(
            vfs.lookup(Some(&edit.view), ROOT, b"own").unwrap().0.node,
            r
        );
        for v in [None, Some(&*bound.view), Some(&*edit.view)] {
            assert!(vfs.getattr(v, r).is_err());
            assert!(vfs.lookup(v, r, b"a").is_err());
        }
        // When b goes, `a` hands out its own node again; the routed one
        // still answers it (the kernel may hold it).
        vfs.registry.remove("b");
        assert_eq!(vfs.registry.contested_count(), 1, "1000's still");
        assert_eq!(vfs.lookup(Some(&a.view), ROOT, b"own").unwrap().0, alone);
        assert_eq!(vfs.getattr(Some(&a.view), r).unwrap().0.node, r);
        assert!(vfs.lookup(Some(&a.view), r, b"a").is_ok());
    }

    #[test]
    fn a_directory_of_other_permissions_is_another_routed_node() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Vfs::new(FsRepository::create(dir.path()).unwrap());
        let tree = |mode: u32, file: &[u8]| {
            let mut b = spfs_model::TreeBuilder::new();
            let blob = vfs.repo().write_blob(file).unwrap();
            b.add(b"own/f", EntryKind::File, 0o100644, file.len() as u64, blob)
                .unwrap();
            b.add_dir_with_mtime(b"own", mode, 0).unwrap();
            b.build().unwrap()
        };
        let reg = |name: &str, mode: u32| {
            let layers = vec![Digest::of(name.as_bytes())];
            let t = tree(mode, name.as_bytes());
            crate::registry::register_tree_as(&vfs.registry, spec(name, 0), layers, t)
        };
        let (open, open2) = (reg("open", 0o040755), reg("open2", 0o040755));
        let (shut, _shut2) = (reg("shut", 0o040700), reg("shut2", 0o040700));
        let node = |rt: &crate::Runtime| vfs.lookup(Some(&rt.view), ROOT, b"own").unwrap().0;
        let (o, o2, s) = (node(&open), node(&open2), node(&shut));
        assert_eq!(o.node, o2.node);
        assert!(is_routed(o.node) && is_routed(s.node));
        assert_ne!(o.node, s.node, "each mode its own node");
        assert_eq!((o.perm, s.perm), (0o755, 0o700));
        // A view of the other mode does not reach it.
        assert!(vfs.getattr(Some(&shut.view), o.node).is_err());
        assert!(vfs.getattr(Some(&open.view), s.node).is_err());
    }

    #[test]
    fn routed_ids_are_apart_from_views_content_and_view_roots() {
        for name in [&b"bin"[..], b"lib", b"", b"\xff\xff"] {
            let n = routed_node(name, 0o755);
            assert!(is_routed(n));
            let (view, index) = crate::node::split(n).unwrap();
            assert!((FIRST_ROUTED_VIEW..crate::content::CONTENT_VIEW).contains(&view));
            assert_ne!(index, crate::node::VIEW_ROOT_INDEX);
            assert!(!crate::node::is_view_root(n));
        }
        assert_ne!(routed_node(b"bin", 0o755), routed_node(b"lib", 0o755));
        assert_ne!(routed_node(b"bin", 0o755), routed_node(b"bin", 0o700));
        assert_eq!(routed_node(b"bin", 0o755), routed_node(b"bin", 0o755));
        assert!(!is_routed(crate::node::node_id(FIRST_ROUTED_VIEW - 1, 7)));
        assert!(!is_routed(crate::node::ROOT));
    }

    #[test]
    fn a_name_is_contested_while_two_nodes_hold_it() {
        let mut c = Contests::default();
        assert_eq!(c.count((0, 1), 10, true), None);
        assert_eq!(c.count((0, 1), 10, true), None, "one node, twice");
        assert_eq!(c.count((7, 1), 11, true), None, "another owner's");
        assert_eq!(c.count((0, 1), 11, true), Some(true));
        assert_eq!(c.count((0, 1), 10, false), None, "10 still held once");
        assert_eq!(c.count((0, 1), 10, false), Some(false));
        assert_eq!(c.count((0, 1), 11, false), None);
        assert_eq!(c.count((7, 1), 11, false), None);
        assert!(c.held.is_empty());
        // A node that was never counted changes nothing.
        assert_eq!(c.count((0, 2), 5, false), None);
        assert!(c.held.is_empty());
    }
}
