//! Resolving references: spec items to digests, platforms to layers, and
//! layers to the trees they hold.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use spfs_model::{Digest, EnvSpec, Object, ObjectKind, SpecItem, TagSpec, Tree};

use crate::error::{Result, StorageError};
use crate::fs::FsRepository;

const MAX_DEPTH: usize = 64;

impl FsRepository {
    /// What kind of thing `digest` names in this repository.
    pub fn kind_of(&self, digest: &Digest) -> Result<ObjectKind> {
        if self.has_object(digest) {
            return Ok(self.read_object(digest)?.kind());
        }
        if self.has_payload(digest) {
            return Ok(ObjectKind::Blob);
        }
        Err(StorageError::UnknownObject(*digest))
    }

    /// The digest one spec item refers to.
    pub fn resolve_item(&self, item: &SpecItem) -> Result<Digest> {
        match item {
            SpecItem::Digest(d) => {
                if self.has_object(d) || self.has_payload(d) {
                    Ok(*d)
                } else {
                    Err(StorageError::UnknownObject(*d))
                }
            }
            SpecItem::Partial(p) => {
                // Text like `LC` may be a digest prefix and a tag name at
                // once: that must not silently pick one.
                let as_tag = TagSpec::parse(p.as_str())
                    .ok()
                    .map(|t| self.resolve_tag(&t));
                match (self.resolve_partial(p), as_tag) {
                    (Ok(d), Some(Ok(t))) if d != t => {
                        Err(StorageError::AmbiguousReference(p.to_string()))
                    }
                    (Err(StorageError::UnknownReference(_)), Some(Ok(t))) => Ok(t),
                    (
                        Err(StorageError::UnknownReference(text)),
                        Some(Err(StorageError::UnknownTag(_))),
                    ) => Err(StorageError::UnknownReference(text)),
                    (Err(StorageError::UnknownReference(_)), Some(Err(e))) => Err(e),
                    (other, _) => other,
                }
            }
            SpecItem::Tag(t) => self.resolve_tag(t),
        }
    }

    /// The digest a single reference (digest, prefix or tag) names.
    pub fn resolve_ref(&self, text: &str) -> Result<Digest> {
        self.resolve_item(&SpecItem::parse(text)?)
    }

    /// The digests a spec names, bottom first.
    pub fn resolve_spec(&self, spec: &EnvSpec) -> Result<Vec<Digest>> {
        spec.items.iter().map(|i| self.resolve_item(i)).collect()
    }

    /// Expand platforms into the layers (or bare manifests) they stack,
    /// bottom first.
    pub fn flatten(&self, stack: &[Digest]) -> Result<Vec<Digest>> {
        let mut memo = HashMap::new();
        let mut out = Vec::new();
        for d in stack {
            out.extend(self.flatten_one(d, &mut memo, 0)?);
        }
        Ok(keep_last(out))
    }

    /// The layers of one digest, each platform flattened once (memoised)
    /// and de-duplicated keeping the last occurrence: a layer repeated
    /// higher up decides every name it holds, so the lower copy changes
    /// nothing. Nested platforms therefore cost time in proportion to the
    /// distinct objects, never to the paths through them.
    fn flatten_one(
        &self,
        digest: &Digest,
        memo: &mut HashMap<Digest, Vec<Digest>>,
        depth: usize,
    ) -> Result<Vec<Digest>> {
        if depth > MAX_DEPTH {
            return Err(StorageError::TooDeep(*digest));
        }
        if let Some(done) = memo.get(digest) {
            return Ok(done.clone());
        }
        let layers = match self.read_object(digest) {
            Ok(Object::Platform(p)) => {
                let mut out = Vec::new();
                for d in &p.stack {
                    out.extend(self.flatten_one(d, memo, depth + 1)?);
                }
                let out = keep_last(out);
                if out.len() > MAX_LAYERS {
                    return Err(StorageError::TooDeep(*digest));
                }
                out
            }
            Ok(Object::Layer(_)) | Ok(Object::Manifest(_)) => vec![*digest],
            Err(StorageError::UnknownObject(d)) if self.has_payload(&d) => {
                return Err(StorageError::WrongKind {
                    digest: d,
                    found: "blob",
                    expected: "layer or platform",
                });
            }
            Err(e) => return Err(e),
        };
        memo.insert(*digest, layers.clone());
        Ok(layers)
    }

    /// The tree of a layer or manifest.
    pub fn layer_tree(&self, digest: &Digest) -> Result<Tree> {
        match self.read_object(digest)? {
            Object::Manifest(t) => Ok(t),
            Object::Layer(l) => match self.read_object(&l.manifest)? {
                Object::Manifest(t) => Ok(t),
                other => Err(StorageError::WrongKind {
                    digest: l.manifest,
                    found: kind_name(other.kind()),
                    expected: "manifest",
                }),
            },
            Object::Platform(_) => Err(StorageError::WrongKind {
                digest: *digest,
                found: "platform",
                expected: "layer",
            }),
        }
    }

    /// The merged tree of a stack of layers, platforms or manifests.
    pub fn merged_tree(&self, stack: &[Digest]) -> Result<Tree> {
        let layers = self.flatten(stack)?;
        let trees = layers
            .iter()
            .map(|d| self.layer_tree(d))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Tree> = trees.iter().collect();
        Ok(spfs_model::merge::merge(&refs))
    }

    /// The merged tree of the layers of an environment spec.
    pub fn spec_tree(&self, spec: &EnvSpec) -> Result<Arc<Tree>> {
        Ok(Arc::new(self.merged_tree(&self.resolve_spec(spec)?)?))
    }
}

/// Drop all but the last occurrence of each digest, keeping order.
fn keep_last(stack: Vec<Digest>) -> Vec<Digest> {
    let mut seen = HashSet::new();
    let mut out: Vec<Digest> = stack
        .into_iter()
        .rev()
        .filter(|d| seen.insert(*d))
        .collect();
    out.reverse();
    out
}

/// The most layers a stack may flatten to.
const MAX_LAYERS: usize = 10_000;

/// The display name of an object kind.
pub fn kind_name(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Blob => "blob",
        ObjectKind::Manifest => "manifest",
        ObjectKind::Layer => "layer",
        ObjectKind::Platform => "platform",
    }
}
