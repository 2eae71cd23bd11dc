//! Walking the object graph: everything a set of roots reaches.
//!
//! One walk serves [`crate::check`] (which verifies what it reaches) and
//! [`crate::clean`] (which keeps what it reaches): platforms reach the
//! layers, platforms or manifests they stack, layers their manifest, and
//! manifests the blobs of their files and symlinks. A root may also be a
//! blob (a tag made by `spfs write -t`).

use std::collections::HashSet;

use spfs_model::{Digest, Object};

use crate::error::{Result, StorageError};
use crate::fs::FsRepository;

/// What the walk found at one digest.
pub enum Reached<'a> {
    /// A stored object, decoded.
    Object(Digest, &'a Object),
    /// A blob: named by a manifest (stored or not: it is not looked up), or
    /// a root stored as a payload.
    Blob(Digest),
    /// Named (as a root, or by an object) but stored as neither object nor
    /// payload.
    Missing(Digest),
    /// A stored object that does not decode, and why.
    Corrupt(Digest, String),
}

/// The objects `obj` names directly, and the blobs it names.
pub fn children(obj: &Object) -> (Vec<Digest>, Vec<Digest>) {
    match obj {
        Object::Platform(p) => (p.stack.clone(), Vec::new()),
        Object::Layer(l) => (vec![l.manifest], Vec::new()),
        Object::Manifest(t) => (Vec::new(), t.blobs().map(|e| e.object).collect()),
    }
}

/// Walk everything reachable from `roots` that is not in `seen` yet,
/// telling `visit` about each object (once) and each blob a manifest
/// names (once per manifest). Every digest looked up is added to `seen`
/// (the blobs manifests name are not: they are never looked up). An object
/// of a newer format than this build reads is an error: what it reaches
/// is unknown.
pub fn walk(
    repo: &FsRepository,
    roots: impl IntoIterator<Item = Digest>,
    seen: &mut HashSet<Digest>,
    mut visit: impl FnMut(Reached<'_>),
) -> Result<()> {
    let mut queue: Vec<Digest> = roots.into_iter().collect();
    while let Some(d) = queue.pop() {
        if !seen.insert(d) {
            continue;
        }
        if !repo.has_object(&d) {
            visit(if repo.has_payload(&d) {
                Reached::Blob(d)
            } else {
                Reached::Missing(d)
            });
            continue;
        }
        match repo.read_object(&d) {
            Ok(obj) => {
                let (objects, blobs) = children(&obj);
                queue.extend(objects);
                visit(Reached::Object(d, &obj));
                for b in blobs {
                    visit(Reached::Blob(b));
                }
            }
            Err(StorageError::Corrupt { source, .. }) => {
                visit(Reached::Corrupt(d, source.to_string()))
            }
            // Removed since it was seen (by a clean of something unreachable).
            Err(StorageError::UnknownObject(_)) => visit(Reached::Missing(d)),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
