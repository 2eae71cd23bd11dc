//! Manifests, layers and platforms: the encoded objects of a repository.
//!
//! - A **manifest** is a [`Tree`]: the names, kinds, modes, sizes,
//!   modification times and blob digests of a directory tree.
//! - A **layer** is a manifest digest plus free-form annotations.
//! - A **platform** is a stack of layers (or of other platforms), bottom first.
//!
//! Blobs (file contents) are stored as raw payloads, not as encoded objects:
//! a blob's digest is the SHA-256 of exactly its bytes. The digest of every
//! other object is the SHA-256 of its canonical encoding ([`crate::encoding`]).

use std::collections::BTreeMap;
use std::fmt;

use crate::digest::Digest;
use crate::encoding::{DecodeError, OLDEST_FORMAT_VERSION, Reader, Writer};
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
        match r.header()?.kind {
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

    /// The format version this object is written at: the lowest that can
    /// hold it (see [`crate::encoding`]).
    pub fn format_version(&self) -> u16 {
        match self {
            Object::Manifest(tree) => tree.format_version(),
            Object::Layer(_) | Object::Platform(_) => OLDEST_FORMAT_VERSION,
        }
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let version = self.format_version();
        let mut w = Writer::with_header(version, self.kind().code());
        match self {
            Object::Manifest(tree) => tree.encode_into(&mut w, version),
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
        let header = r.header()?;
        let obj = match header.kind {
            1 => Object::Manifest(Tree::decode_from(&mut r, header.version)?),
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
        // One encoding per value: an object written at a higher version
        // than it needs is not canonical.
        if header.version != obj.format_version() {
            return Err(DecodeError::Invalid(format!(
                "a {} that needs format version {} is written at version {}",
                obj.kind(),
                obj.format_version(),
                header.version
            )));
        }
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

    /// A manifest as the build before mtimes (format version 1) wrote it,
    /// and its digest then.
    const V1_MANIFEST: &str = "5350465301000103000000ed41000003000000010000006102ed410000000000000000000000000000000000000000000000000000000000000000000000000000000000000100000065\
        02c041000000000000000000000000000000000000000000000000000000000000000000000000000000000000010000006c03ffa100000300000000000000c14cddc033f64b9dea80ea675cf2\
        80a015e672516090a5626781153dc68fea11ed41000001000000010000006201a481000002000000000000008f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4\
        c041000000000000";
    const V1_DIGEST: &str = "NPN3N4ZWOGITJQHUZRGHBFW5NLQ7XL224ZWPDY2H4SAAH3HV5W3A====";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn version_1_objects_read_with_mtime_0_and_keep_their_bytes() {
        let bytes = unhex(V1_MANIFEST);
        let obj = Object::decode(&bytes).unwrap();
        let Object::Manifest(tree) = &obj else {
            panic!("not a manifest")
        };
        assert_eq!(tree.len(), 4);
        assert!(tree.entries().iter().all(|e| e.mtime == 0));
        assert_eq!(obj.format_version(), 1);
        assert_eq!(obj.encode(), bytes, "re-encoding changes nothing");
        assert_eq!(obj.digest().to_string(), V1_DIGEST);
        assert_eq!(Digest::of(&bytes).to_string(), V1_DIGEST);
        // The same tree built today, without times, is the same object.
        let mut b = TreeBuilder::new();
        b.add(b"a/b", EntryKind::File, 0o100644, 2, Digest::of(b"hi"))
            .unwrap();
        b.add(b"l", EntryKind::Symlink, 0o120777, 3, Digest::of(b"a/b"))
            .unwrap();
        b.add_dir(b"e", 0o040700).unwrap();
        assert_eq!(Object::Manifest(b.build().unwrap()), obj);
    }

    #[test]
    fn manifests_with_times_are_version_2_and_nothing_else_is() {
        let mut b = TreeBuilder::new();
        b.add_with_mtime(b"f", EntryKind::File, 0o100644, 2, Digest::of(b"hi"), -7)
            .unwrap();
        let timed = Object::Manifest(b.build().unwrap());
        let bytes = timed.encode();
        assert_eq!(bytes[4], 2);
        assert_eq!(Object::decode(&bytes).unwrap(), timed);
        for o in objects() {
            assert_eq!(o.encode()[4], 1, "{:?}", o.kind());
        }
        // A layer or platform, or a manifest without times, written at
        // version 2 is not canonical.
        let untimed = Object::Manifest(Tree::empty());
        let mut up = untimed.encode();
        up[4] = 2;
        assert!(matches!(Object::decode(&up), Err(DecodeError::Invalid(_))));
        for o in &objects()[2..] {
            let mut up = o.encode();
            up[4] = 2;
            assert!(matches!(Object::decode(&up), Err(DecodeError::Invalid(_))));
        }
        // A version-2 manifest whose times are all 0 is refused too.
        let mut zeroed = bytes.clone();
        let at = zeroed.len() - 8;
        zeroed[at..].fill(0);
        let err = Object::decode(&zeroed).unwrap_err();
        assert!(err.to_string().contains("needs format version 1"), "{err}");
    }

    #[test]
    fn newer_version_and_unknown_kind() {
        let mut bytes = objects()[0].encode();
        bytes[4] = 9;
        assert_eq!(
            Object::decode(&bytes),
            Err(DecodeError::UnsupportedVersion(9))
        );
        assert_eq!(
            DecodeError::UnsupportedVersion(9).to_string(),
            "object format version 9 is not supported: this build reads versions 1 to 2"
        );
        bytes[4] = 0;
        assert_eq!(
            Object::decode(&bytes),
            Err(DecodeError::UnsupportedVersion(0))
        );
        let mut bytes = objects()[0].encode();
        bytes[6] = 77;
        assert_eq!(Object::decode(&bytes), Err(DecodeError::UnknownKind(77)));
        assert_eq!(Object::decode(b"nope"), Err(DecodeError::BadMagic));
    }
}
