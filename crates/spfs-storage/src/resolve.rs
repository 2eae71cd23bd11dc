//! Resolving references: spec items to digests, platforms to layers, and
//! layers to the trees they hold.

use std::collections::HashSet;
use std::sync::Arc;

use spfs_model::{Digest, EnvSpec, Object, ObjectKind, SpecItem, TagSpec, Tree};

use crate::error::{Result, StorageError};
use crate::fs::FsRepository;

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
    /// bottom first, each layer once: where the expansion names a layer
    /// more than once, its last (highest) occurrence stays, since it
    /// decides every name it holds and a lower copy changes nothing.
    ///
    /// The expansion is walked top first, so a layer's first visit is its
    /// last occurrence, and a platform (or a digest of `stack`) met a
    /// second time adds nothing and is skipped: the work is proportional
    /// to the distinct objects, never to the paths through them or to
    /// repeats in a spec. It is bounded all the same: at most
    /// [`MAX_STACK_LAYERS`] layers, [`MAX_FLATTEN_VISITS`] references
    /// visited and [`MAX_DEPTH`] levels of platforms, each an error as
    /// soon as it is passed.
    pub fn flatten(&self, stack: &[Digest]) -> Result<Vec<Digest>> {
        let mut walk = Flattening::default();
        for d in stack.iter().rev() {
            self.flatten_into(d, &mut walk, 0)?;
        }
        let mut layers = walk.layers;
        layers.reverse();
        Ok(layers)
    }

    /// Add the layers of `digest` that `walk` has not met yet, top first.
    fn flatten_into(&self, digest: &Digest, walk: &mut Flattening, depth: usize) -> Result<()> {
        walk.visits += 1;
        if walk.visits > MAX_FLATTEN_VISITS {
            return Err(StorageError::StackTooLarge {
                what: "references visited (counting every platform's stack)",
                limit: MAX_FLATTEN_VISITS,
            });
        }
        if depth > MAX_DEPTH {
            return Err(StorageError::TooDeep(*digest));
        }
        if !walk.met.insert(*digest) {
            return Ok(());
        }
        match self.read_object(digest) {
            Ok(Object::Platform(p)) => {
                for d in p.stack.iter().rev() {
                    self.flatten_into(d, walk, depth + 1)?;
                }
            }
            Ok(Object::Layer(_)) | Ok(Object::Manifest(_)) => {
                if walk.layers.len() >= MAX_STACK_LAYERS {
                    return Err(StorageError::StackTooLarge {
                        what: "layers",
                        limit: MAX_STACK_LAYERS,
                    });
                }
                walk.layers.push(*digest);
            }
            Err(StorageError::UnknownObject(d)) if self.has_payload(&d) => {
                return Err(StorageError::WrongKind {
                    digest: d,
                    found: "blob",
                    expected: "layer or platform",
                });
            }
            Err(e) => return Err(e),
        }
        Ok(())
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

/// The most levels of platforms within platforms a stack may nest.
pub const MAX_DEPTH: usize = 64;
/// The most layers one stack may flatten to. Studio environments stack
/// tens to a few hundred layers; every layer of a registered stack costs
/// the VFS service a tree to merge and a line in its ledger, so one user's
/// stack of many thousands would cost every other user.
pub const MAX_STACK_LAYERS: usize = 1_000;
/// The most references one flattening visits: each digest of the stack
/// and of every distinct platform's stack, repeats included (a repeat is
/// skipped, but counted). A hundred times the layers allowed, so that no
/// stack within [`MAX_STACK_LAYERS`] comes near it, while many platforms
/// that name the same layers over and over still stop early.
pub const MAX_FLATTEN_VISITS: usize = 100 * MAX_STACK_LAYERS;

/// A flattening under way: the layers found (top first) and what was met.
#[derive(Default)]
struct Flattening {
    layers: Vec<Digest>,
    /// Every digest met (layers and platforms): met again, it adds nothing.
    met: HashSet<Digest>,
    visits: usize,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use spfs_model::{Layer, Platform};

    use super::*;

    /// `n` distinct layers (each its own annotation, one empty manifest).
    fn layers(repo: &FsRepository, n: usize) -> Vec<Digest> {
        let manifest = repo
            .write_object(&Object::Manifest(Tree::empty()))
            .expect("manifest");
        (0..n)
            .map(|i| {
                let layer = Layer {
                    manifest,
                    annotations: BTreeMap::from([("n".to_string(), i.to_string())]),
                };
                repo.write_object(&Object::Layer(layer)).expect("layer")
            })
            .collect()
    }

    fn platform(repo: &FsRepository, stack: Vec<Digest>) -> Digest {
        repo.write_object(&Object::Platform(Platform { stack }))
            .expect("platform")
    }

    fn repo() -> (tempfile::TempDir, FsRepository) {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = FsRepository::create(dir.path().join("repo")).expect("repo");
        (dir, repo)
    }

    #[test]
    fn nested_platforms_keep_each_layers_last_occurrence() {
        let (_dir, repo) = repo();
        let l = layers(&repo, 4);
        let inner = platform(&repo, vec![l[0], l[1]]);
        let outer = platform(&repo, vec![inner, l[2], l[0]]);
        assert_eq!(repo.flatten(&[outer]).unwrap(), vec![l[1], l[2], l[0]]);
        // Repeats in the stack itself: the highest one counts.
        assert_eq!(
            repo.flatten(&[l[3], outer, inner, l[3], inner]).unwrap(),
            vec![l[2], l[3], l[0], l[1]]
        );
    }

    #[test]
    fn a_platform_of_many_layers_repeated_is_refused_at_once() {
        let (_dir, repo) = repo();
        let many = platform(&repo, layers(&repo, MAX_STACK_LAYERS + 1));
        let spec = vec![many; 1000];
        let started = Instant::now();
        let err = repo.flatten(&spec).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::StackTooLarge {
                    limit: MAX_STACK_LAYERS,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("1000 layers"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_platform_at_the_bound_repeated_flattens_once() {
        let (_dir, repo) = repo();
        let all = layers(&repo, MAX_STACK_LAYERS);
        let full = platform(&repo, all.clone());
        let started = Instant::now();
        assert_eq!(repo.flatten(&vec![full; 1000]).unwrap(), all);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn platforms_naming_the_same_layers_over_and_over_stop_early() {
        let (_dir, repo) = repo();
        let few = layers(&repo, 10);
        // Distinct platforms (each names the same layers, and its index so
        // that it is an object of its own) within a few layers' bound, but
        // far more references than a stack may visit.
        let marks = layers(&repo, 200);
        let tops: Vec<Digest> = marks
            .iter()
            .map(|m| {
                let mut stack = few.repeat(100);
                stack.push(*m);
                platform(&repo, stack)
            })
            .collect();
        let err = repo.flatten(&tops).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::StackTooLarge {
                    limit: MAX_FLATTEN_VISITS,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn platforms_nested_too_deeply_are_refused() {
        let (_dir, repo) = repo();
        let mut top = layers(&repo, 1)[0];
        for _ in 0..=MAX_DEPTH {
            top = platform(&repo, vec![top]);
        }
        assert!(matches!(
            repo.flatten(&[top]),
            Err(StorageError::TooDeep(_))
        ));
    }
}
