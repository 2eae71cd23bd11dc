//! Manifests, layers and platforms: the encoded objects of a repository.
//!
//! - A **manifest** is a [`Tree`]: the names, kinds, modes, sizes and blob
//!   digests of a directory tree.
//! - A **layer** is a manifest digest plus free-form annotations.
//! - A **platform** is a stack of layers (or of other platforms), bottom first.
//!
//! Blobs (file contents) are stored as raw payloads, not as encoded objects:
//! a blob's digest is the SHA-256 of exactly its bytes. The digest of every
//! other object is the SHA-256 of its canonical encoding ([`crate::encoding`]).

use std::collections::BTreeMap;
use std::fmt;

use crate::digest::Digest;
use crate::encoding::{DecodeError, Reader, Writer};
use crate::tree::Tree;

/// What kind of thing a digest names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Blob,
    Manifest,
    Layer,
    Platform,
}

impl ObjectKind {
    fn code(self) -> u8 {
        match self {
            ObjectKind::Manifest => 1,
            ObjectKind::Layer => 2,
            ObjectKind::Platform => 3,
            ObjectKind::Blob => 0,
        }
    }
}

impl ObjectKind {
    /// The kind of an encoded object from its header alone, without
    /// decoding the body (a cheap way to list objects by kind).
    pub fn peek(bytes: &[u8]) -> Result<ObjectKind, DecodeError> {
        let mut r = Reader::new(bytes);
        match r.header()? {
            1 => Ok(ObjectKind::Manifest),
            2 => Ok(ObjectKind::Layer),
            3 => Ok(ObjectKind::Platform),
            k => Err(DecodeError::UnknownKind(k)),
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Blob => "blob",
            ObjectKind::Manifest => "manifest",
            ObjectKind::Layer => "layer",
            ObjectKind::Platform => "platform",
        })
    }
}

/// A manifest plus annotations.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Layer {
    pub manifest: Digest,
    pub annotations: BTreeMap<String, String>,
}

/// A stack of layers or platforms, bottom first.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Platform {
    pub stack: Vec<Digest>,
}

/// Any encoded object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Manifest(Tree),
    Layer(Layer),
    Platform(Platform),
}

impl Object {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Manifest(_) => ObjectKind::Manifest,
            Object::Layer(_) => ObjectKind::Layer,
            Object::Platform(_) => ObjectKind::Platform,
        }
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_header(self.kind().code());
        match self {
            Object::Manifest(tree) => tree.encode_into(&mut w),
            Object::Layer(layer) => {
                w.digest(&layer.manifest);
                w.count(layer.annotations.len());
                for (k, v) in &layer.annotations {
                    w.bytes(k.as_bytes());
                    w.bytes(v.as_bytes());
                }
            }
            Object::Platform(p) => {
                w.count(p.stack.len());
                for d in &p.stack {
                    w.digest(d);
                }
            }
        }
        w.finish()
    }

    /// The digest of the canonical encoding.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.encode())
    }

    /// Decode an object; corrupt, truncated or unknown input is an error.
    pub fn decode(bytes: &[u8]) -> Result<Object, DecodeError> {
        let mut r = Reader::new(bytes);
        let kind = r.header()?;
        let obj = match kind {
            1 => Object::Manifest(Tree::decode_from(&mut r)?),
            2 => {
                let manifest = r.digest()?;
                let n = r.count(8)?;
                let mut annotations = BTreeMap::new();
                let mut last: Option<String> = None;
                for _ in 0..n {
                    let k = r.string()?;
                    let v = r.string()?;
                    if last.as_ref().is_some_and(|l| *l >= k) {
                        return Err(DecodeError::Invalid("annotations are not sorted".into()));
                    }
                    last = Some(k.clone());
                    annotations.insert(k, v);
                }
                Object::Layer(Layer {
                    manifest,
                    annotations,
                })
            }
            3 => {
                let n = r.count(32)?;
                let stack = (0..n).map(|_| r.digest()).collect::<Result<_, _>>()?;
                Object::Platform(Platform { stack })
            }
            k => return Err(DecodeError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{EntryKind, TreeBuilder};

    fn objects() -> Vec<Object> {
        let mut b = TreeBuilder::new();
        b.add(b"a/b", EntryKind::File, 0o100644, 2, Digest::of(b"hi"))
            .unwrap();
        let mut ann = BTreeMap::new();
        ann.insert("author".to_string(), "me".to_string());
        vec![
            Object::Manifest(b.build().unwrap()),
            Object::Manifest(Tree::empty()),
            Object::Layer(Layer {
                manifest: Digest::of(b"m"),
                annotations: ann,
            }),
            Object::Platform(Platform {
                stack: vec![Digest::of(b"1"), Digest::of(b"2")],
            }),
        ]
    }

    #[test]
    fn roundtrip() {
        for o in objects() {
            let bytes = o.encode();
            assert_eq!(&bytes[..4], b"SPFS");
            assert_eq!(Object::decode(&bytes).unwrap(), o);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for o in objects() {
            let bytes = o.encode();
            for n in 0..bytes.len() {
                assert!(Object::decode(&bytes[..n]).is_err(), "prefix {n} decoded");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(
                Object::decode(&longer),
                Err(DecodeError::TrailingBytes(1))
            ));
        }
    }

    #[test]
    fn newer_version_and_unknown_kind() {
        let mut bytes = objects()[0].encode();
        bytes[4] = 9;
        assert_eq!(
            Object::decode(&bytes),
            Err(DecodeError::UnsupportedVersion(9))
        );
        let mut bytes = objects()[0].encode();
        bytes[6] = 77;
        assert_eq!(Object::decode(&bytes), Err(DecodeError::UnknownKind(77)));
        assert_eq!(Object::decode(b"nope"), Err(DecodeError::BadMagic));
    }
}
