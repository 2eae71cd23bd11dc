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
//! So a top-level directory of a routed read-only view (a subtree view,
//! [`crate::shared`]) that is made while another live runtime of the same
//! owner holds the name as another directory is *routed*: every view that
//! shows it hands out, for the name, one *routed directory* node instead
//! of the directory's own, so the kernel's entry for the name stays valid
//! whichever of them walks it. Below it, a routed directory answers like
//! the root: each caller's names from the caller's own directory, never
//! cached (lifetime zero, misses too, listings not kept), so a walk asks
//! for the next name each time and gets the caller's node, cached as any.
//!
//! Whether a directory is routed is decided when its subtree view is made
//! and holds for the subtree view's life, across service restarts too (the
//! ledger records it): a directory node's parent in the kernel is then
//! always the same entry (the kernel moves a directory's entry to another
//! parent only under a lock it merely tries, and fails with `ESTALE`
//! otherwise), and a routing decision never takes a working directory's
//! path away (another view's walk of the name with another node still
//! does, as anywhere in the shared root, until the runtime walks the name
//! again). The first view of a name keeps its own node; the views that
//! came to contest it share the routed one.
//!
//! What may differ between callers must never be an attribute of the
//! routed node itself: the kernel keeps one set of attributes per node and
//! checks permissions against them (`default_permissions`). So the node's
//! id is derived from the owner, the name and the directory's permission
//! bits ([`routed_node`]; read-only views show every entry as root's), and
//! its attributes are fixed: those bits, root's, one link, no size, and the
//! mount root's time, cached like any. Only an owner's own runtimes decide
//! whether a directory of theirs is routed, so nothing a runtime sees
//! depends on other users' runtimes.
//!
//! Node ids: the view part of a routed directory's id is in
//! [`FIRST_ROUTED_VIEW`]`..`[`crate::content::CONTENT_VIEW`], which no view
//! is given. The id is a hash, the same in every service process: a view
//! finds its directory of a routed id in its [`Routes`], made with the
//! view. Two names of one view whose ids collide (a 55-bit hash; a
//! collision can be crafted) are both left unrouted, and so is a name whose
//! id a routed directory of the owner already stands for under another
//! name (the registry keeps these claims): one routed node is never two
//! names, and a directory is never shown both through a routed node and
//! as itself.

use spfs_model::{Digest, Tree};

/// The lowest view part of a routed directory's node id; no view id is
/// this high (see [`crate::registry`]).
pub const FIRST_ROUTED_VIEW: u32 = 0xFE00_0000;

/// The routed directory node id of user `owner_uid`'s top-level directory
/// `name` with permission bits `perm`: 0xFE in the top byte, a hash of the
/// three below, the lowest bit clear (an entry index of all ones would name
/// a bound view's root).
pub fn routed_node(owner_uid: u32, name: &[u8], perm: u16) -> u64 {
    let mut tagged = Vec::with_capacity(name.len() + 22);
    tagged.extend_from_slice(b"spfs routed dir\0");
    tagged.extend_from_slice(&owner_uid.to_le_bytes());
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
    /// The routes of a view of `tree` for `owner_uid` that shares its
    /// top-level directories `top` ([`crate::shared::top_dirs`]; none for
    /// a bound or editable view): all of them but the name of the bound
    /// views' door (see [`crate::vfs::VIEW_DOOR`]).
    pub fn of(tree: &Tree, top: &[(u32, crate::shared::SubtreeKey)], owner_uid: u32) -> Routes {
        let mut by_node: Vec<(u64, u32)> = top
            .iter()
            .filter_map(|(index, _)| {
                let e = tree.entries().get(*index as usize)?;
                (*e.name != *crate::vfs::VIEW_DOOR).then(|| {
                    (
                        routed_node(owner_uid, &e.name, (e.mode & 0o7777) as u16),
                        *index,
                    )
                })
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

    /// Keep only the routes `keep` (routed node id, entry index) accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(u64, u32) -> bool) {
        self.by_node.retain(|(n, i)| keep(*n, *i));
        self.by_index
            .retain(|(i, n)| self.by_node.binary_search(&(*n, *i)).is_ok());
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
}

/// A routed name of one owner: (owner uid, routed directory node id).
pub type OwnedName = (u32, u64);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::ROOT;
    use crate::registry::test_spec as spec;
    use crate::vfs::{LONG_TTL, NO_TTL};
    use crate::{RuntimeSpec, Vfs, VfsError};
    use spfs_model::EntryKind;
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
    fn a_directory_made_while_another_holds_its_name_is_routed_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Vfs::new(FsRepository::create(dir.path()).unwrap());
        let a = runtime(&vfs, spec("a", 0));
        let r = routed_of(&a, b"own");
        // Alone, a view hands out its own node, cached as before.
        let (alone, entry_ttl, attr_ttl) = vfs.lookup(Some(&a.view), ROOT, b"own").unwrap();
        assert!(!is_routed(alone.node));
        assert_eq!((entry_ttl, attr_ttl), (NO_TTL, LONG_TTL));
        // Other users' runtimes change nothing of what it sees, and are
        // not routed for it either: each is its owner's first.
        let c = runtime(&vfs, spec("c", 1000));
        let d = runtime(&vfs, spec("d", 1001));
        assert_eq!(vfs.registry.routed_count(), 0);
        assert_eq!(vfs.lookup(Some(&a.view), ROOT, b"own").unwrap().0, alone);
        // Another view of the owner's, whose `own` differs: routed. The
        // first keeps its own node for good.
        let b = runtime(&vfs, spec("b", 0));
        assert_eq!(vfs.registry.routed_count(), 1);
        assert_eq!(vfs.lookup(Some(&a.view), ROOT, b"own").unwrap().0, alone);
        assert!(vfs.getattr(Some(&a.view), r).is_err(), "a's is not routed");
        // `base`, alike in both, keeps its one shared node.
        let base = vfs.lookup(Some(&a.view), ROOT, b"base").unwrap().0.node;
        assert!(!is_routed(base));
        assert_eq!(
            vfs.lookup(Some(&b.view), ROOT, b"base").unwrap().0.node,
            base
        );
        // Another owner's second view is routed through a node of theirs.
        let c2 = runtime(&vfs, spec("c2", 1000));
        assert_eq!(vfs.registry.routed_count(), 2);
        let r1000 = routed_of(&c2, b"own");
        assert_ne!(r1000, r, "routed nodes are per owner");
        let d_own = vfs.lookup(Some(&d.view), ROOT, b"own").unwrap().0.node;
        assert!(!is_routed(d_own));
        let e = runtime(&vfs, spec("e", 0));
        for (rt, r) in [(&b, r), (&e, r), (&c2, r1000)] {
            let (attr, entry_ttl, attr_ttl) = vfs.lookup(Some(&rt.view), ROOT, b"own").unwrap();
            assert_eq!((attr.node, entry_ttl, attr_ttl), (r, NO_TTL, LONG_TTL));
            // The same attributes for every caller.
            assert_eq!((attr.nlink, attr.size, attr.uid, attr.gid), (1, 0, 0, 0));
            assert_eq!(vfs.getattr(Some(&rt.view), r).unwrap(), (attr, LONG_TTL));
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
            for other in ["a", "b", "c", "c2", "d", "e"]
                .into_iter()
                .filter(|n| n != own)
            {
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
        assert_eq!(
            vfs.lookup(Some(&b.view), ROOT, b"own").unwrap().0,
            vfs.lookup(Some(&e.view), ROOT, b"own").unwrap().0
        );
        // Nobody else reaches it: no runtime, another owner, a bound view,
        // an editable one.
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
        for v in [None, Some(&*c2.view), Some(&*bound.view), Some(&*edit.view)] {
            assert!(vfs.getattr(v, r).is_err());
            assert!(vfs.lookup(v, r, b"b").is_err());
        }
        // Routed for good: when a and b go, e still hands it out.
        vfs.registry.remove("a");
        vfs.registry.remove("b");
        assert_eq!(vfs.lookup(Some(&e.view), ROOT, b"own").unwrap().0.node, r);
        // (b's view is kept warm among the recent ones, and so its
        // subtree view.)
        assert_eq!(vfs.registry.routed_count(), 3);
        assert!(c.view.shares.routed_ids().is_empty());
        assert_eq!(e.view.shares.routed_ids().len(), 1);
    }

    #[test]
    fn a_runtime_alone_is_not_routed_after_another_went() {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Vfs::new(FsRepository::create(dir.path()).unwrap());
        let _a = runtime(&vfs, spec("a", 0));
        vfs.registry.remove("a");
        // a's view (and its subtree views) are kept warm, but no runtime
        // holds `own` any more.
        let b = runtime(&vfs, spec("b", 0));
        let own = vfs.lookup(Some(&b.view), ROOT, b"own").unwrap().0.node;
        assert!(!is_routed(own));
        assert_eq!(vfs.registry.routed_count(), 0);
    }

    /// Two names whose routed ids collide for owner 0 and mode 0755 (found
    /// by a reviewer with 6.7e7 hashes).
    const N1: &[u8] = b"d5672e15d83aa50";
    const N2: &[u8] = b"d465a221e3abe64";

    #[test]
    fn colliding_names_never_share_a_routed_node_nor_a_directory_two_parents() {
        assert_eq!(routed_node(0, N1, 0o755), routed_node(0, N2, 0o755));
        let dir = tempfile::tempdir().unwrap();
        let vfs = Vfs::new(FsRepository::create(dir.path()).unwrap());
        let reg = |name: &str, files: &[(&[u8], &[u8])]| {
            let mut b = spfs_model::TreeBuilder::new();
            for (path, bytes) in files {
                let blob = vfs.repo().write_blob(bytes).unwrap();
                b.add(path, EntryKind::File, 0o100644, bytes.len() as u64, blob)
                    .unwrap();
            }
            let layers = vec![Digest::of(name.as_bytes())];
            let t = b.build().unwrap();
            crate::registry::register_tree_as(&vfs.registry, spec(name, 0), layers, t)
        };
        let path = |top: &[u8], rest: &str| [top, rest.as_bytes()].concat();
        let (n1a, n1b, n2) = (path(N1, "/x/f"), path(N1, "/x/g"), path(N2, "/y"));
        // The first of N1 keeps its node; the second is routed.
        let _first = reg("first", &[(&n1a, b"1")]);
        let routed = reg("routed", &[(&n1b, b"2")]);
        let r = vfs.lookup(Some(&routed.view), ROOT, N1).unwrap().0.node;
        assert!(is_routed(r));
        // N2's id is N1's: N2 is not routed (a node is never two names).
        let other = reg("other", &[(&n2, b"3")]);
        let n2_node = vfs.lookup(Some(&other.view), ROOT, N2).unwrap().0.node;
        assert!(!is_routed(n2_node));
        assert!(vfs.getattr(Some(&other.view), r).is_err());
        // A view holding both names (neither routable in it) with N1 as
        // the routed view's does not show N1 through the routed subtree
        // view's own node either (that directory would have two parents).
        let both = reg("both", &[(&n1b, b"2"), (&n2, b"3")]);
        let n1_node = vfs.lookup(Some(&both.view), ROOT, N1).unwrap().0.node;
        assert!(!is_routed(n1_node));
        let sub = routed.view.shares.views().next().unwrap().id;
        assert_ne!(crate::node::split(n1_node).unwrap().0, sub);
        let x = vfs.lookup(Some(&both.view), n1_node, b"x").unwrap().0.node;
        assert_eq!(crate::node::split(x).unwrap().0, both.view.id);
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
        // The first of each mode keeps its own node; the second is routed,
        // through a node of its mode.
        let (_open, open2) = (reg("open", 0o040755), reg("open2", 0o040755));
        let (_shut, shut2) = (reg("shut", 0o040700), reg("shut2", 0o040700));
        let node = |rt: &crate::Runtime| vfs.lookup(Some(&rt.view), ROOT, b"own").unwrap().0;
        let (o, s) = (node(&open2), node(&shut2));
        assert!(is_routed(o.node) && is_routed(s.node));
        assert_ne!(o.node, s.node, "each mode its own node");
        assert_eq!((o.perm, s.perm), (0o755, 0o700));
        // A view of the other mode does not reach it.
        assert!(vfs.getattr(Some(&shut2.view), o.node).is_err());
        assert!(vfs.getattr(Some(&open2.view), s.node).is_err());
    }

    #[test]
    fn routed_ids_are_apart_from_views_content_and_view_roots() {
        for name in [&b"bin"[..], b"lib", b"", b"\xff\xff"] {
            let n = routed_node(0, name, 0o755);
            assert!(is_routed(n));
            let (view, index) = crate::node::split(n).unwrap();
            assert!((FIRST_ROUTED_VIEW..crate::content::CONTENT_VIEW).contains(&view));
            assert_ne!(index, crate::node::VIEW_ROOT_INDEX);
            assert!(!crate::node::is_view_root(n));
        }
        let n = |owner, name: &[u8], perm| routed_node(owner, name, perm);
        assert_ne!(n(0, b"bin", 0o755), n(0, b"lib", 0o755));
        assert_ne!(n(0, b"bin", 0o755), n(0, b"bin", 0o700));
        assert_ne!(n(0, b"bin", 0o755), n(1000, b"bin", 0o755));
        assert_eq!(n(0, b"bin", 0o755), n(0, b"bin", 0o755));
        assert!(!is_routed(crate::node::node_id(FIRST_ROUTED_VIEW - 1, 7)));
        assert!(!is_routed(crate::node::ROOT));
    }
}
