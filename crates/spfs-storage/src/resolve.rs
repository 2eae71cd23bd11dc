//! Resolving references: spec items to digests, platforms to layers, and
//! layers to the trees they hold.

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
            SpecItem::Partial(p) => match self.resolve_partial(p) {
                Err(StorageError::UnknownReference(text)) => match TagSpec::parse(&text) {
                    Ok(tag) => self.resolve_tag(&tag).map_err(|e| match e {
                        StorageError::UnknownTag(_) => StorageError::UnknownReference(text),
                        e => e,
                    }),
                    Err(_) => Err(StorageError::UnknownReference(text)),
                },
                other => other,
            },
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
        let mut out = Vec::new();
        for d in stack {
            self.flatten_into(d, &mut out, 0)?;
        }
        Ok(out)
    }

    fn flatten_into(&self, digest: &Digest, out: &mut Vec<Digest>, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(StorageError::TooDeep(*digest));
        }
        match self.read_object(digest) {
            Ok(Object::Platform(p)) => {
                for d in &p.stack {
                    self.flatten_into(d, out, depth + 1)?;
                }
                Ok(())
            }
            Ok(Object::Layer(_)) | Ok(Object::Manifest(_)) => {
                out.push(*digest);
                Ok(())
            }
            Err(StorageError::UnknownObject(d)) if self.has_payload(&d) => {
                Err(StorageError::WrongKind {
                    digest: d,
                    found: "blob",
                    expected: "layer or platform",
                })
            }
            Err(e) => Err(e),
        }
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

/// The display name of an object kind.
pub fn kind_name(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Blob => "blob",
        ObjectKind::Manifest => "manifest",
        ObjectKind::Layer => "layer",
        ObjectKind::Platform => "platform",
    }
}
