//! Fuzz `Object::decode`: any bytes must decode or fail cleanly, never
//! panic; whatever decodes is canonical (it encodes back to the same bytes)
//! and a decoded tree can be walked, looked up and merged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spfs_model::{Object, ObjectKind};

fuzz_target!(|data: &[u8]| {
    let peeked = ObjectKind::peek(data);
    let Ok(obj) = Object::decode(data) else {
        return;
    };
    assert_eq!(peeked.ok(), Some(obj.kind()));
    assert_eq!(obj.encode(), data, "decoded objects are canonical");
    if let Object::Manifest(tree) = &obj {
        // Paths are shown lossily; only exact (UTF-8) names can be looked up.
        if tree
            .entries()
            .iter()
            .all(|e| std::str::from_utf8(&e.name).is_ok())
        {
            for (path, _) in tree.walk() {
                assert!(tree.lookup_path(&path).is_some(), "{path} not found");
            }
        }
        let merged = spfs_model::merge::merge(&[tree, tree]);
        assert!(
            !merged
                .entries()
                .iter()
                .any(|e| e.kind == spfs_model::EntryKind::Mask)
        );
        let _ = spfs_model::diff::diff(tree, &merged);
    }
});
