//! Comparing two trees: which paths were added, changed or removed.
//!
//! An entry is changed when its kind, mode, size or content differ; a
//! change of modification time alone counts only when asked for
//! ([`DiffOptions::mtime`]).

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

/// What counts as a change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiffOptions {
    /// Report entries whose modification time alone differs.
    pub mtime: bool,
}

/// The differences from `a` to `b`, sorted by path, ignoring changes of
/// modification time alone. Names are compared as bytes (two names that
/// are not UTF-8 stay distinct); paths are shown with invalid bytes
/// replaced.
pub fn diff(a: &Tree, b: &Tree) -> Vec<Change> {
    diff_with(a, b, DiffOptions::default())
}

/// Like [`diff`], with `options` saying what counts as a change.
pub fn diff_with(a: &Tree, b: &Tree, options: DiffOptions) -> Vec<Change> {
    let mut out = Vec::new();
    compare(a, Some(0), b, Some(0), &[], options, &mut out);
    // Byte order is the order of the paths as text for UTF-8 names.
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out.into_iter()
        .map(|(path, kind)| Change {
            path: String::from_utf8_lossy(&path).into_owned(),
            kind,
        })
        .collect()
}

/// Compare directory `da` of `a` with directory `db` of `b` (`None`: the
/// directory does not exist on that side).
fn compare(
    a: &Tree,
    da: Option<u32>,
    b: &Tree,
    db: Option<u32>,
    prefix: &[u8],
    options: DiffOptions,
    out: &mut Vec<(Vec<u8>, ChangeKind)>,
) {
    let left = da.map_or(&[][..], |d| a.children(d));
    let right = db.map_or(&[][..], |d| b.children(d));
    let path_of = |e: &Entry| {
        let mut p = prefix.to_vec();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(&e.name);
        p
    };
    let dir = |e: &Entry| e.is_dir().then_some(e.dir);
    let (mut i, mut j) = (0, 0);
    while i < left.len() || j < right.len() {
        let order = match (left.get(i), right.get(j)) {
            (Some(l), Some(r)) => l.name.cmp(&r.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let l = &left[i];
                let path = path_of(l);
                compare(a, dir(l), b, None, &path, options, out);
                out.push((path, ChangeKind::Removed));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let r = &right[j];
                let path = path_of(r);
                compare(a, None, b, dir(r), &path, options, out);
                out.push((path, ChangeKind::Added));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (l, r) = (&left[i], &right[j]);
                let path = path_of(l);
                compare(a, dir(l), b, dir(r), &path, options, out);
                if !l.same_content(r) || (options.mtime && l.mtime != r.mtime) {
                    out.push((path, ChangeKind::Changed));
                }
                i += 1;
                j += 1;
            }
        }
    }
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

    #[test]
    fn mtime_only_changes_need_asking() {
        let tree = |file: i64, dir: i64| {
            let mut t = TreeBuilder::new();
            t.add_dir_with_mtime(b"d", 0o040755, dir).unwrap();
            t.add_with_mtime(b"d/f", EntryKind::File, 0o100644, 1, Digest::of(b"1"), file)
                .unwrap();
            t.build().unwrap()
        };
        let (a, b) = (tree(1, 5), tree(2, 6));
        assert!(diff(&a, &b).is_empty());
        let d = diff_with(&a, &b, DiffOptions { mtime: true });
        let got: Vec<_> = d.iter().map(|c| (c.path.as_str(), c.kind)).collect();
        assert_eq!(
            got,
            [("d", ChangeKind::Changed), ("d/f", ChangeKind::Changed)]
        );
        assert!(diff_with(&a, &a, DiffOptions { mtime: true }).is_empty());
    }

    #[test]
    fn names_that_are_not_utf8_stay_distinct() {
        let tree = |second: &[u8]| {
            let mut t = TreeBuilder::new();
            t.add(b"d/\xff", EntryKind::File, 0o100644, 1, Digest::of(b"1"))
                .unwrap();
            t.add(b"d/\xfe", EntryKind::File, 0o100644, 1, Digest::of(second))
                .unwrap();
            t.build().unwrap()
        };
        let d = diff(&tree(b"2"), &tree(b"3"));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].kind, ChangeKind::Changed);
    }

    #[test]
    fn a_directory_replacing_a_file_lists_its_children() {
        let mut a = TreeBuilder::new();
        a.add(b"x", EntryKind::File, 0o100644, 1, Digest::of(b"1"))
            .unwrap();
        let mut b = TreeBuilder::new();
        b.add(b"x/y", EntryKind::File, 0o100644, 1, Digest::of(b"1"))
            .unwrap();
        let d = diff(&a.build().unwrap(), &b.build().unwrap());
        let got: Vec<_> = d.iter().map(|c| (c.path.as_str(), c.kind)).collect();
        assert_eq!(
            got,
            [("x", ChangeKind::Changed), ("x/y", ChangeKind::Added)]
        );
    }
}
