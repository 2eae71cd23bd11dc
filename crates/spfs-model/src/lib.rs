//! The object model of spfs.
//!
//! Everything spfs stores is content-addressed: a [`Digest`] names a blob (the
//! SHA-256 of a file's bytes) or an encoded object (the SHA-256 of its
//! canonical encoding). This crate owns those types and nothing that touches
//! the filesystem:
//!
//! - [`digest`]: digests, their base32 text form and partial digests;
//! - [`encoding`]: the versioned binary encoding shared by all objects;
//! - [`tree`]: a directory tree (the body of a manifest) in a flat, shareable form;
//! - [`subtree`]: directories named by their content, and copied out of a tree;
//! - [`object`]: manifests, layers and platforms;
//! - [`merge`]: merging a stack of trees into one view (later layers win, masks delete);
//! - [`diff`]: comparing two trees;
//! - [`spec`]: parsing environment specs such as `base+my/tag~1`;
//! - [`time`]: modification times (nanoseconds since the epoch) and their text form.

pub mod diff;
pub mod digest;
pub mod encoding;
pub mod merge;
pub mod object;
pub mod spec;
pub mod subtree;
pub mod time;
pub mod tree;

pub use digest::{Digest, DigestError, Hasher, PartialDigest};
pub use encoding::DecodeError;
pub use object::{Layer, Object, ObjectKind, Platform};
pub use spec::{EnvSpec, SpecError, SpecItem, TagSpec};
pub use tree::{Entry, EntryKind, PathTarget, Tree, TreeBuilder, TreeError};
