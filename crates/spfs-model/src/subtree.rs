//! Subtrees: what a directory of a tree holds, named by its content.
//!
//! Two trees (two merged stacks, say) often hold the very same directory:
//! the same names, kinds, modes, sizes, times and blobs all the way down.
//! [`Tree::dir_digests`] names each directory by a digest of everything
//! below it, so that equal directories of different trees are found by
//! comparing one digest; [`Tree::subtree`] copies one directory out into a
//! tree of its own, whose entry indices depend on that content alone (the
//! same directory, copied out of any tree, numbers its entries the same).

use std::collections::VecDeque;

use crate::digest::{Digest, Hasher};
use crate::tree::{DirSpan, EntryKind, Tree};

impl Tree {
    /// A digest of every directory's content, by directory number (the
    /// root is 0): each child's name, kind, mode, size, blob and time, and
    /// for a child directory its own digest, in name order. Two directories
    /// have the same digest exactly when everything below them is the same
    /// (SHA-256; names are length-prefixed, so no two listings encode
    /// alike). One pass over the entries, children before parents.
    pub fn dir_digests(&self) -> Vec<Digest> {
        let dirs = self.dirs();
        let mut digests = vec![Digest::NULL; dirs.len()];
        // Directories are numbered breadth first: a child's number is
        // above its parent's, so from the last to the first, every child
        // is done before its parent.
        for d in (0..dirs.len()).rev() {
            let mut h = Hasher::new();
            h.update(&dirs[d].mode.to_le_bytes());
            for e in self.children(d as u32) {
                h.update(&(e.name.len() as u64).to_le_bytes());
                h.update(&e.name);
                h.update(&[e.kind.code()]);
                h.update(&e.mode.to_le_bytes());
                h.update(&e.size.to_le_bytes());
                h.update(&e.mtime.to_le_bytes());
                match e.kind {
                    EntryKind::Dir => h.update(
                        digests
                            .get(e.dir as usize)
                            .unwrap_or(&Digest::NULL)
                            .as_bytes(),
                    ),
                    _ => h.update(e.object.as_bytes()),
                }
            }
            digests[d] = h.finish();
        }
        digests
    }

    /// A tree whose root holds one entry: entry `index` of this tree (a
    /// copy), with everything below it when it is a directory. `None` if
    /// there is no such entry. Its entries are numbered by the subtree's
    /// content alone: the copied entry is index 0, its children follow.
    pub fn subtree(&self, index: u32) -> Option<Tree> {
        let top = self.entries().get(index as usize)?;
        let mut entries = vec![top.clone()];
        let mut dirs = vec![DirSpan {
            start: 0,
            len: 1,
            parent: 0,
            mode: crate::tree::DEFAULT_DIR_MODE,
        }];
        if top.kind != EntryKind::Dir {
            entries[0].dir = 0;
            return Some(Tree::from_parts(entries, dirs));
        }
        // (directory number here, its number in the copy), breadth first
        // as in every tree.
        entries[0].dir = 1;
        let mut queue = VecDeque::from([(top.dir, 0u32)]);
        while let Some((old, parent)) = queue.pop_front() {
            let span = self.dirs().get(old as usize)?;
            let start = u32::try_from(entries.len()).ok()?;
            for e in self.children(old) {
                let mut copy = e.clone();
                if e.kind == EntryKind::Dir {
                    // Numbered in the order found, after those queued.
                    copy.dir = u32::try_from(dirs.len() + queue.len() + 1).ok()?;
                    queue.push_back((e.dir, dirs.len() as u32));
                }
                entries.push(copy);
            }
            dirs.push(DirSpan {
                start,
                len: span.len,
                parent,
                mode: span.mode,
            });
        }
        Some(Tree::from_parts(entries, dirs))
    }
}

#[cfg(test)]
mod tests {
    use crate::tree::{EntryKind, PathTarget, TreeBuilder};
    use crate::{Digest, Tree};

    fn tree(files: &[(&str, &[u8])]) -> Tree {
        let mut b = TreeBuilder::new();
        for (path, bytes) in files {
            b.add_with_mtime(
                path.as_bytes(),
                EntryKind::File,
                0o100644,
                bytes.len() as u64,
                Digest::of(bytes),
                7,
            )
            .unwrap();
        }
        b.build().unwrap()
    }

    fn top(t: &Tree, name: &str) -> u32 {
        match t.lookup_path(name) {
            Some(PathTarget::Entry(i)) => i,
            _ => panic!("no {name}"),
        }
    }

    #[test]
    fn equal_directories_of_different_trees_have_one_digest() {
        let a = tree(&[("lib/x/a", b"1"), ("lib/y", b"2"), ("bin/t", b"3")]);
        let b = tree(&[
            ("lib/x/a", b"1"),
            ("lib/y", b"2"),
            ("bin/t", b"4"),
            ("z", b""),
        ]);
        let (da, db) = (a.dir_digests(), b.dir_digests());
        let dir = |t: &Tree, n| t.entries()[top(t, n) as usize].dir as usize;
        assert_eq!(da[dir(&a, "lib")], db[dir(&b, "lib")]);
        assert_ne!(da[dir(&a, "bin")], db[dir(&b, "bin")]);
        assert_ne!(da[0], db[0]);
        // A name, a mode or a time below changes the digest.
        let renamed = tree(&[("lib/x/b", b"1"), ("lib/y", b"2")]);
        assert_ne!(
            da[dir(&a, "lib")],
            renamed.dir_digests()[dir(&renamed, "lib")]
        );
        let mut later = TreeBuilder::new();
        later
            .add_with_mtime(
                b"lib/x/a",
                EntryKind::File,
                0o100644,
                1,
                Digest::of(b"1"),
                8,
            )
            .unwrap();
        later
            .add_with_mtime(b"lib/y", EntryKind::File, 0o100644, 1, Digest::of(b"2"), 7)
            .unwrap();
        let later = later.build().unwrap();
        assert_ne!(da[dir(&a, "lib")], later.dir_digests()[dir(&later, "lib")]);
    }

    #[test]
    fn a_subtree_is_numbered_by_its_content_alone() {
        let a = tree(&[
            ("lib/x/a", b"1"),
            ("lib/x/b", b"5"),
            ("lib/y", b"2"),
            ("bin/t", b"3"),
        ]);
        let b = tree(&[
            ("aaa/q", b"9"),
            ("lib/x/a", b"1"),
            ("lib/x/b", b"5"),
            ("lib/y", b"2"),
        ]);
        let (sa, sb) = (
            a.subtree(top(&a, "lib")).unwrap(),
            b.subtree(top(&b, "lib")).unwrap(),
        );
        assert_eq!(sa, sb);
        let paths: Vec<_> = sa.walk().into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["lib", "lib/x", "lib/x/a", "lib/x/b", "lib/y"]);
        assert_eq!(sa.entries()[0].name.as_ref(), b"lib");
        // Its own digests agree with the tree it came from.
        let lib = a.entries()[top(&a, "lib") as usize].dir as usize;
        assert_eq!(sa.dir_digests()[1], a.dir_digests()[lib]);
        let Some(PathTarget::Entry(i)) = sa.lookup_path("lib/x/b") else {
            panic!("lost lib/x/b")
        };
        assert_eq!(sa.entries()[i as usize].object, Digest::of(b"5"));
        assert!(a.subtree(1000).is_none());
    }
}
