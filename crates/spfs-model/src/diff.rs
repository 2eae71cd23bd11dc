//! Comparing two trees: which paths were added, changed or removed.

use std::collections::BTreeMap;

use crate::tree::{Entry, Tree};

/// How a path differs between two trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Changed,
    Removed,
}

/// One difference.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
}

/// The differences from `a` to `b`, sorted by path.
pub fn diff(a: &Tree, b: &Tree) -> Vec<Change> {
    let left: BTreeMap<String, &Entry> = a.walk().into_iter().collect();
    let right: BTreeMap<String, &Entry> = b.walk().into_iter().collect();
    let mut out = Vec::new();
    for (path, l) in &left {
        match right.get(path) {
            None => out.push(Change {
                path: path.clone(),
                kind: ChangeKind::Removed,
            }),
            Some(r) if !l.same_content(r) => out.push(Change {
                path: path.clone(),
                kind: ChangeKind::Changed,
            }),
            Some(_) => {}
        }
    }
    for path in right.keys() {
        if !left.contains_key(path) {
            out.push(Change {
                path: path.clone(),
                kind: ChangeKind::Added,
            });
        }
    }
    out.sort_by(|x, y| x.path.cmp(&y.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::tree::{EntryKind, TreeBuilder};

    #[test]
    fn added_changed_removed() {
        let mut a = TreeBuilder::new();
        a.add(b"same", EntryKind::File, 0o100644, 1, Digest::of(b"1"))
            .unwrap();
        a.add(b"gone", EntryKind::File, 0o100644, 1, Digest::of(b"2"))
            .unwrap();
        a.add(b"edit", EntryKind::File, 0o100644, 1, Digest::of(b"3"))
            .unwrap();
        let mut b = TreeBuilder::new();
        b.add(b"same", EntryKind::File, 0o100644, 1, Digest::of(b"1"))
            .unwrap();
        b.add(b"edit", EntryKind::File, 0o100644, 1, Digest::of(b"4"))
            .unwrap();
        b.add(b"new", EntryKind::File, 0o100644, 1, Digest::of(b"5"))
            .unwrap();
        let d = diff(&a.build().unwrap(), &b.build().unwrap());
        let got: Vec<_> = d.iter().map(|c| (c.path.as_str(), c.kind)).collect();
        assert_eq!(
            got,
            [
                ("edit", ChangeKind::Changed),
                ("gone", ChangeKind::Removed),
                ("new", ChangeKind::Added)
            ]
        );
    }
}
