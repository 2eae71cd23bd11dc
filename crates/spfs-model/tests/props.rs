//! Property tests of the object model: the canonical encoding round-trips
//! (modification times included, at the lowest format version that holds
//! the object) and never panics on hostile input, and merging a stack of trees behaves
//! as the layers' semantics say (later layers win, masks delete, masks never
//! survive, merging is associative from the left, repeating a layer is
//! idempotent).

use std::collections::BTreeMap;

use proptest::prelude::*;
use spfs_model::diff::{ChangeKind, DiffOptions, diff, diff_with};
use spfs_model::merge::merge;
use spfs_model::{Digest, EntryKind, Layer, Object, PathTarget, Platform, Tree, TreeBuilder};

/// Names from a small alphabet, so that layers often touch the same paths.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c".to_string()),
        Just("bin".to_string()),
        "[a-z]{1,3}",
    ]
}

fn path() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(name(), 1..4)
}

#[derive(Clone, Debug)]
struct Item {
    path: Vec<String>,
    kind: EntryKind,
    mode: u32,
    content: u8,
    mtime: i64,
}

fn item(masks: bool) -> impl Strategy<Value = Item> {
    let kinds = if masks {
        prop_oneof![
            4 => Just(EntryKind::File),
            2 => Just(EntryKind::Dir),
            1 => Just(EntryKind::Symlink),
            2 => Just(EntryKind::Mask),
        ]
        .boxed()
    } else {
        prop_oneof![
            4 => Just(EntryKind::File),
            2 => Just(EntryKind::Dir),
            1 => Just(EntryKind::Symlink),
        ]
        .boxed()
    };
    // Times: often none (as in format version 1), often shared, sometimes
    // anything (negative and extreme values included).
    let mtimes = prop_oneof![
        3 => Just(0i64),
        3 => 0i64..4,
        1 => any::<i64>(),
    ];
    (path(), kinds, 0u32..0o7777, any::<u8>(), mtimes).prop_map(
        |(path, kind, perm, content, mtime)| Item {
            path,
            kind,
            mode: perm
                | match kind {
                    EntryKind::Dir => 0o040000,
                    EntryKind::Symlink => 0o120000,
                    EntryKind::Mask => 0,
                    EntryKind::File => 0o100000,
                },
            content,
            mtime,
        },
    )
}

/// A tree built from items in order; items that conflict with earlier ones
/// (a file where a directory is, and the reverse) are skipped.
fn build(items: &[Item], root_mode: u32) -> Tree {
    let mut b = TreeBuilder::new();
    b.set_root_mode(root_mode);
    for it in items {
        let p = it.path.join("/");
        let (size, object) = match it.kind {
            EntryKind::File | EntryKind::Symlink => {
                (u64::from(it.content) * 7, Digest::of(&[it.content]))
            }
            _ => (0, Digest::NULL),
        };
        let _ = b.add_with_mtime(p.as_bytes(), it.kind, it.mode, size, object, it.mtime);
    }
    b.build().expect("builder trees are valid")
}

fn tree(masks: bool) -> impl Strategy<Value = Tree> {
    (
        prop::collection::vec(item(masks), 0..24),
        prop_oneof![Just(0o040755u32), Just(0o040700u32)],
    )
        .prop_map(|(items, mode)| build(&items, mode))
}

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

fn object() -> impl Strategy<Value = Object> {
    prop_oneof![
        tree(true).prop_map(Object::Manifest),
        (
            digest(),
            prop::collection::btree_map("[a-z.]{1,8}", ".{0,12}", 0..4)
        )
            .prop_map(|(manifest, annotations)| Object::Layer(Layer {
                manifest,
                annotations
            })),
        prop::collection::vec(digest(), 0..6)
            .prop_map(|stack| Object::Platform(Platform { stack })),
    ]
}

fn has_masks(t: &Tree) -> bool {
    t.entries().iter().any(|e| e.kind == EntryKind::Mask)
}

fn lookup<'a>(t: &'a Tree, path: &str) -> Option<&'a spfs_model::Entry> {
    match t.lookup_path(path)? {
        PathTarget::Entry(i) => Some(&t.entries()[i as usize]),
        PathTarget::Root => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encoding_round_trips(obj in object()) {
        let bytes = obj.encode();
        let back = Object::decode(&bytes).expect("own encoding decodes");
        prop_assert_eq!(&back, &obj);
        prop_assert_eq!(back.encode(), bytes.clone());
        prop_assert_eq!(back.digest(), obj.digest());
        // Written at the lowest version that holds it: 2 only for a
        // manifest with a time.
        let timed = matches!(&obj, Object::Manifest(t) if t.entries().iter().any(|e| e.mtime != 0));
        prop_assert_eq!(bytes[4], if timed { 2 } else { 1 });
        if let Object::Manifest(t) = &obj {
            let times: Vec<i64> = t.entries().iter().map(|e| e.mtime).collect();
            let Object::Manifest(b) = &back else { unreachable!() };
            prop_assert_eq!(b.entries().iter().map(|e| e.mtime).collect::<Vec<_>>(), times);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Object::decode(&bytes);
        for version in [1u8, 2] {
            let mut with_header = vec![b'S', b'P', b'F', b'S', version, 0];
            with_header.extend_from_slice(&bytes);
            if let Ok(obj) = Object::decode(&with_header) {
                // Whatever decodes is canonical: it encodes to the same bytes.
                prop_assert_eq!(obj.encode(), with_header);
            }
        }
    }

    /// Changing one entry's time changes the manifest's digest (times are
    /// part of the identity of a layer).
    #[test]
    fn times_are_part_of_the_digest(t in tree(false), pick in any::<prop::sample::Index>(), delta in 1i64..1000) {
        prop_assume!(!t.is_empty());
        let i = pick.index(t.len());
        let (path, e) = t.walk().into_iter().nth(i).unwrap();
        let mut b = TreeBuilder::new();
        b.set_root_mode(t.dirs()[0].mode);
        for (p, x) in t.walk() {
            let mtime = if p == path { e.mtime.wrapping_add(delta) } else { x.mtime };
            b.add_with_mtime(p.as_bytes(), x.kind, x.mode, x.size, x.object, mtime).unwrap();
        }
        let changed = b.build().unwrap();
        prop_assert_ne!(Object::Manifest(changed.clone()).digest(), Object::Manifest(t.clone()).digest());
        prop_assert!(diff(&t, &changed).is_empty());
        let d = diff_with(&t, &changed, DiffOptions { mtime: true });
        prop_assert_eq!(d.len(), 1);
        prop_assert_eq!(&d[0].path, &path);
        prop_assert_eq!(d[0].kind, ChangeKind::Changed);
    }

    #[test]
    fn mutated_encodings_never_panic(
        obj in object(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
    ) {
        let mut bytes = obj.encode();
        for (at, value, op) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = value,
                1 => bytes[i] ^= 1 << (value % 8),
                2 => bytes.truncate(i),
                _ => bytes.insert(i, value),
            }
        }
        if let Ok(decoded) = Object::decode(&bytes) {
            prop_assert_eq!(decoded.encode(), bytes);
        }
    }

    #[test]
    fn merging_one_tree_without_masks_is_identity(t in tree(false)) {
        prop_assert_eq!(merge(&[&t]), t);
    }

    #[test]
    fn merged_trees_never_hold_masks(layers in prop::collection::vec(tree(true), 0..4)) {
        let refs: Vec<&Tree> = layers.iter().collect();
        let m = merge(&refs);
        prop_assert!(!has_masks(&m));
        // The result is a well-formed tree: it survives its own encoding.
        let obj = Object::Manifest(m);
        prop_assert_eq!(Object::decode(&obj.encode()).unwrap(), obj);
    }

    #[test]
    fn top_layer_wins_and_its_masks_delete(
        lower in prop::collection::vec(tree(true), 0..3),
        top in tree(true),
    ) {
        let mut refs: Vec<&Tree> = lower.iter().collect();
        refs.push(&top);
        let m = merge(&refs);
        for (path, e) in top.walk() {
            match e.kind {
                EntryKind::File | EntryKind::Symlink => {
                    let got = lookup(&m, &path);
                    prop_assert!(got.is_some_and(|g| g.same_content(e) && g.mtime == e.mtime), "{} lost", path);
                }
                EntryKind::Dir => {
                    let got = lookup(&m, &path);
                    prop_assert!(got.is_some_and(|g| g.kind == EntryKind::Dir && g.mode == e.mode && g.mtime == e.mtime), "{} not a dir", path);
                }
                EntryKind::Mask => {
                    prop_assert!(m.lookup_path(&path).is_none(), "{} survived its mask", path);
                }
            }
        }
        prop_assert_eq!(m.dirs()[0].mode, top.dirs()[0].mode);
    }

    #[test]
    fn paths_come_from_some_layer(layers in prop::collection::vec(tree(true), 1..4)) {
        let refs: Vec<&Tree> = layers.iter().collect();
        let m = merge(&refs);
        for (path, e) in m.walk() {
            // Every merged entry is the entry of the highest layer naming it.
            let top = layers.iter().rev().find_map(|l| lookup(l, &path));
            prop_assert!(top.is_some(), "{} from nowhere", path);
            let top = top.unwrap();
            prop_assert_eq!(top.kind, e.kind);
            prop_assert!(top.same_content(e) || e.kind == EntryKind::Dir);
            // Each entry keeps its own time: the winning layer's.
            prop_assert_eq!(top.mtime, e.mtime);
        }
    }

    #[test]
    fn merge_is_associative_from_the_left(
        a in tree(true),
        b in tree(true),
        c in tree(true),
    ) {
        let ab = merge(&[&a, &b]);
        prop_assert_eq!(merge(&[&a, &b, &c]), merge(&[&ab, &c]));
    }

    /// Stacking a layer twice changes nothing. (Grouping from the right,
    /// `merge(a, merge(b, c))`, is *not* the same: a file in `b` that
    /// replaces a directory of `a` is forgotten once `c` puts a directory
    /// back, so the proptest found it false and it is not claimed.)
    #[test]
    fn stacking_a_layer_twice_changes_nothing(a in tree(true), b in tree(true)) {
        prop_assert_eq!(merge(&[&a, &b, &b]), merge(&[&a, &b]));
        prop_assert_eq!(merge(&[&b, &b]), merge(&[&b]));
    }

    /// What flattening platforms relies on: a lower copy of a layer that is
    /// repeated higher up can be dropped.
    #[test]
    fn a_lower_copy_of_a_repeated_layer_changes_nothing(
        a in tree(true), b in tree(true), c in tree(true)
    ) {
        prop_assert_eq!(merge(&[&a, &b, &a]), merge(&[&b, &a]));
        prop_assert_eq!(merge(&[&a, &b, &c, &a, &c]), merge(&[&b, &a, &c]));
    }

    #[test]
    fn diff_is_empty_on_itself_and_mirrors(a in tree(false), b in tree(false)) {
        prop_assert!(diff(&a, &a).is_empty());
        let forward: BTreeMap<String, ChangeKind> =
            diff(&a, &b).into_iter().map(|c| (c.path, c.kind)).collect();
        let backward: BTreeMap<String, ChangeKind> =
            diff(&b, &a).into_iter().map(|c| (c.path, c.kind)).collect();
        prop_assert_eq!(forward.len(), backward.len());
        for (path, kind) in &forward {
            let mirrored = match kind {
                ChangeKind::Added => ChangeKind::Removed,
                ChangeKind::Removed => ChangeKind::Added,
                ChangeKind::Changed => ChangeKind::Changed,
            };
            prop_assert_eq!(backward.get(path), Some(&mirrored));
        }
    }
}
