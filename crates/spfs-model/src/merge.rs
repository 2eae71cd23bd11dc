//! Merging a stack of trees into the single tree a runtime sees.
//!
//! Layers are given bottom first. For every name, the highest layer that
//! mentions it decides: a file or symlink replaces whatever was below (a
//! directory included), a directory replaces a file below it and merges with
//! a directory below it, and a mask deletes the name (and everything under it)
//! from the layers below. Masks themselves never appear in the result.
//!
//! Every entry keeps its own modification time: a file or symlink that of
//! the layer it comes from, a directory that of the highest layer naming it
//! (the same layer that gives it its mode).

use std::collections::{BTreeMap, VecDeque};

use crate::tree::{DirSpan, Entry, EntryKind, Tree};

enum Slot<'a> {
    Leaf(&'a Entry),
    /// A directory (its mode and mtime, from the highest layer naming it)
    /// and the (layer, dir) pairs that contribute to it, bottom first.
    Dir(u32, i64, Vec<(usize, u32)>),
    Masked,
}

/// Merge `layers` (bottom first) into one tree.
pub fn merge(layers: &[&Tree]) -> Tree {
    match layers {
        [] => return Tree::empty(),
        [only] if !only.entries().iter().any(|e| e.kind == EntryKind::Mask) => {
            return (*only).clone();
        }
        _ => {}
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut dirs: Vec<DirSpan> = Vec::new();
    let root_mode = layers
        .last()
        .map(|t| t.dirs()[0].mode)
        .unwrap_or(crate::tree::DEFAULT_DIR_MODE);
    // (contributing (layer, dir) pairs, parent dir, mode) per directory.
    type Pending = (Vec<(usize, u32)>, u32, u32);
    let mut queue: VecDeque<Pending> = VecDeque::new();
    queue.push_back(((0..layers.len()).map(|l| (l, 0)).collect(), 0, root_mode));
    let mut next_dir: u32 = 1;
    while let Some((contributors, parent, mode)) = queue.pop_front() {
        let this_dir = dirs.len() as u32;
        let mut slots: BTreeMap<&[u8], Slot<'_>> = BTreeMap::new();
        for (layer, dir) in contributors {
            for e in layers[layer].children(dir) {
                match e.kind {
                    EntryKind::Mask => {
                        slots.insert(&e.name, Slot::Masked);
                    }
                    EntryKind::Dir => match slots.get_mut(e.name.as_ref()) {
                        Some(Slot::Dir(m, t, list)) => {
                            *m = e.mode;
                            *t = e.mtime;
                            list.push((layer, e.dir));
                        }
                        _ => {
                            slots.insert(&e.name, Slot::Dir(e.mode, e.mtime, vec![(layer, e.dir)]));
                        }
                    },
                    EntryKind::File | EntryKind::Symlink => {
                        slots.insert(&e.name, Slot::Leaf(e));
                    }
                }
            }
        }
        let start = entries.len() as u32;
        for (name, slot) in slots {
            match slot {
                Slot::Masked => {}
                Slot::Leaf(e) => entries.push(Entry {
                    dir: 0,
                    ..e.clone()
                }),
                Slot::Dir(mode, mtime, list) => {
                    entries.push(Entry {
                        name: name.into(),
                        object: crate::Digest::NULL,
                        size: 0,
                        mode,
                        kind: EntryKind::Dir,
                        dir: next_dir,
                        mtime,
                    });
                    next_dir += 1;
                    queue.push_back((list, this_dir, mode));
                }
            }
        }
        dirs.push(DirSpan {
            start,
            len: entries.len() as u32 - start,
            parent,
            mode,
        });
    }
    Tree::from_parts(entries, dirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::tree::TreeBuilder;

    fn tree(items: &[(&str, EntryKind)]) -> Tree {
        let mut b = TreeBuilder::new();
        for (p, k) in items {
            let mode = match k {
                EntryKind::Dir => 0o040755,
                EntryKind::Symlink => 0o120777,
                _ => 0o100644,
            };
            b.add(
                p.as_bytes(),
                *k,
                mode,
                p.len() as u64,
                Digest::of(p.as_bytes()),
            )
            .unwrap();
        }
        b.build().unwrap()
    }

    fn paths(t: &Tree) -> Vec<String> {
        t.walk().into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn later_overrides_and_masks_delete() {
        use EntryKind::*;
        let base = tree(&[
            ("bin/a", File),
            ("bin/b", File),
            ("lib/x", File),
            ("f", File),
        ]);
        let top = tree(&[
            ("bin/b", Symlink),
            ("lib", Mask),
            ("f/inner", File),
            ("new", File),
        ]);
        let m = merge(&[&base, &top]);
        assert_eq!(paths(&m), ["bin", "bin/a", "bin/b", "f", "f/inner", "new"]);
        let Some(crate::PathTarget::Entry(i)) = m.lookup_path("bin/b") else {
            panic!()
        };
        assert_eq!(m.entries()[i as usize].kind, Symlink);
        // A file replaces a directory.
        let top2 = tree(&[("bin", File)]);
        assert_eq!(paths(&merge(&[&base, &top2])), ["bin", "f", "lib", "lib/x"]);
    }

    #[test]
    fn entries_keep_the_winning_layers_mtime() {
        let mut base = TreeBuilder::new();
        base.add_dir_with_mtime(b"d", 0o040755, 10).unwrap();
        base.add_with_mtime(b"d/a", EntryKind::File, 0o100644, 1, Digest::of(b"a"), 11)
            .unwrap();
        base.add_with_mtime(b"d/b", EntryKind::File, 0o100644, 1, Digest::of(b"b"), 12)
            .unwrap();
        let mut top = TreeBuilder::new();
        top.add_dir_with_mtime(b"d", 0o040700, 20).unwrap();
        top.add_with_mtime(b"d/b", EntryKind::File, 0o100644, 1, Digest::of(b"b"), 22)
            .unwrap();
        let m = merge(&[&base.build().unwrap(), &top.build().unwrap()]);
        let times: Vec<_> = m.walk().into_iter().map(|(p, e)| (p, e.mtime)).collect();
        assert_eq!(
            times,
            [
                ("d".to_string(), 20),
                ("d/a".to_string(), 11),
                ("d/b".to_string(), 22)
            ]
        );
    }

    #[test]
    fn empty_and_single() {
        assert!(merge(&[]).is_empty());
        let t = tree(&[("a/b", EntryKind::File)]);
        assert_eq!(merge(&[&t]), t);
    }
}
