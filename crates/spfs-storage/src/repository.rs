//! The repository interface: what every place that stores spfs data can do.
//!
//! [`Repository`] is the one interface that graph transfers
//! ([`crate::transfer`]), and later the VFS's read-through, use. The local
//! repository ([`FsRepository`]) implements it, and so does every remote
//! kind (another directory is an [`FsRepository`] too; the gRPC and S3
//! backends live in `spfs-remote`). The interface moves bytes, not decoded
//! objects, and every writer checks what it receives against its digest:
//! nothing that does not hash to its name is ever stored.

use std::io::Read;

use spfs_model::{Digest, Object};

use crate::fs::{FsRepository, Readers};
use crate::tags::TagVersion;
use crate::{PayloadCopy, Result, StorageError};

/// A payload being read from a repository.
pub struct PayloadReader {
    pub reader: Box<dyn Read + Send>,
    /// Its size, when the repository knows it up front.
    pub size: Option<u64>,
    /// Whether the copy read is readable by every user (a private copy is
    /// written as private again: see [`crate::payload`]).
    pub public: bool,
}

/// A payload on its way into a repository.
pub struct IncomingPayload {
    pub digest: Digest,
    pub from: PayloadReader,
}

/// What every repository, local or remote, offers.
pub trait Repository: Send + Sync {
    /// Where it is, for messages (never holds a secret).
    fn address(&self) -> String;
    fn has_object(&self, digest: &Digest) -> Result<bool>;
    /// The encoded bytes of an object, checked against its digest.
    fn read_object_bytes(&self, digest: &Digest) -> Result<Vec<u8>>;
    /// Store an encoded object under `digest`; bytes that do not hash to
    /// `digest` or do not decode are refused ([`StorageError::Corrupt`]).
    fn write_object_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<()>;
    fn has_payload(&self, digest: &Digest) -> Result<bool>;
    fn open_payload(&self, digest: &Digest) -> Result<PayloadReader>;
    /// Bytes `offset..offset + length` of a payload (fewer at its end), and
    /// whether its copy is public. Not checked against the digest: only a
    /// whole payload can be.
    fn read_payload_range(
        &self,
        digest: &Digest,
        offset: u64,
        length: u64,
    ) -> Result<(Vec<u8>, bool)> {
        let mut from = self.open_payload(digest)?;
        let io = |e| StorageError::io("cannot read", "(payload range)")(e);
        std::io::copy(&mut (&mut from.reader).take(offset), &mut std::io::sink()).map_err(io)?;
        let mut out = Vec::new();
        (&mut from.reader)
            .take(length)
            .read_to_end(&mut out)
            .map_err(io)?;
        Ok((out, from.public))
    }
    /// Store a payload read from `reader` under `digest`, checked while it
    /// is written; bytes that hash to anything else are refused and leave
    /// nothing behind. Returns the size stored.
    fn write_payload(&self, digest: &Digest, reader: &mut dyn Read, public: bool) -> Result<u64>;
    /// Store the payloads `next` yields, each checked like
    /// [`Repository::write_payload`], durable together by the time this
    /// returns (a directory repository syncs once per batch, not once per
    /// payload). On an error, none of the batch is stored. Returns the
    /// digests and sizes stored.
    fn write_payload_batch(
        &self,
        next: &mut dyn FnMut() -> Option<Result<IncomingPayload>>,
    ) -> Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        while let Some(item) = next() {
            let mut p = item?;
            let size = self.write_payload(&p.digest, &mut p.from.reader, p.from.public)?;
            out.push((p.digest, size));
        }
        Ok(out)
    }
    /// The history of a tag, oldest first.
    fn tag_history(&self, name: &str) -> Result<Vec<TagVersion>>;
    /// Remove what writers that died left half-written; how many.
    fn clean_stale(&self) -> Result<usize> {
        Ok(0)
    }
    /// Hold this repository's garbage-collection lock shared for one
    /// write operation, where it has one (a local directory: see
    /// [`crate::gc`]); `None` elsewhere.
    fn gc_guard(&self) -> Result<Option<crate::GcGuard>> {
        Ok(None)
    }
    /// Add a version to a tag (never losing a concurrent writer's).
    fn push_tag(&self, name: &str, target: &Digest) -> Result<()>;
    /// A reference (tag, `tag~N`, digest) as this repository resolves it.
    fn resolve_ref(&self, text: &str) -> Result<Digest>;
}

/// Decode `bytes` as the object `digest` names, checking both.
pub fn check_object(digest: &Digest, bytes: &[u8]) -> Result<Object> {
    let actual = Digest::of(bytes);
    if actual != *digest {
        return Err(StorageError::Corrupt {
            digest: *digest,
            source: spfs_model::DecodeError::Invalid(format!("content hashes to {actual}")),
        });
    }
    Object::decode(bytes).map_err(|source| crate::fs::decode_error(*digest, source))
}

impl Repository for FsRepository {
    fn address(&self) -> String {
        format!("file:{}", self.root().display())
    }

    fn has_object(&self, digest: &Digest) -> Result<bool> {
        Ok(FsRepository::has_object(self, digest))
    }

    fn read_object_bytes(&self, digest: &Digest) -> Result<Vec<u8>> {
        self.read_object_raw(digest)
    }

    fn write_object_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let object = check_object(digest, bytes)?;
        // Re-encoding a decoded object gives the same bytes (the encoding
        // is canonical), so this stores exactly what was checked.
        self.write_object(&object).map(|_| ())
    }

    fn has_payload(&self, digest: &Digest) -> Result<bool> {
        Ok(FsRepository::has_payload(self, digest))
    }

    fn open_payload(&self, digest: &Digest) -> Result<PayloadReader> {
        let opened = self.open_payload_as(digest, rustix::process::geteuid().as_raw())?;
        let size = opened.file.metadata().ok().map(|m| m.len());
        Ok(PayloadReader {
            public: opened.copy == PayloadCopy::Public,
            reader: Box::new(opened.file),
            size,
        })
    }

    fn write_payload(&self, digest: &Digest, reader: &mut dyn Read, public: bool) -> Result<u64> {
        let readers = if public {
            Readers::Everyone
        } else {
            Readers::Owner
        };
        let staged = self.stage_payload(reader, None, readers)?;
        if staged.digest != *digest {
            let actual = staged.digest;
            self.discard_staged(vec![staged]);
            return Err(StorageError::Corrupt {
                digest: *digest,
                source: spfs_model::DecodeError::Invalid(format!(
                    "payload content hashes to {actual}"
                )),
            });
        }
        let size = staged.size;
        self.commit_staged(vec![staged])?;
        Ok(size)
    }

    fn write_payload_batch(
        &self,
        next: &mut dyn FnMut() -> Option<Result<IncomingPayload>>,
    ) -> Result<Vec<(Digest, u64)>> {
        let mut staged = Vec::new();
        let result = (|| {
            while let Some(item) = next() {
                let mut p = item?;
                let readers = if p.from.public {
                    Readers::Everyone
                } else {
                    Readers::Owner
                };
                // A source may claim a size; never read (into memory, for
                // small ones) more than one byte past it: a longer payload
                // then fails its digest.
                let one = match p.from.size {
                    Some(size) => {
                        let mut limited = (&mut p.from.reader).take(size.saturating_add(1));
                        self.stage_payload(&mut limited, Some(size), readers)?
                    }
                    None => self.stage_payload(&mut p.from.reader, None, readers)?,
                };
                let actual = one.digest;
                staged.push(one);
                if actual != p.digest {
                    return Err(StorageError::Corrupt {
                        digest: p.digest,
                        source: spfs_model::DecodeError::Invalid(format!(
                            "payload content hashes to {actual}"
                        )),
                    });
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.discard_staged(staged);
            return Err(e);
        }
        let out = staged.iter().map(|p| (p.digest, p.size)).collect();
        self.commit_staged(staged)?;
        Ok(out)
    }

    fn tag_history(&self, name: &str) -> Result<Vec<TagVersion>> {
        FsRepository::tag_history(self, name)
    }

    fn clean_stale(&self) -> Result<usize> {
        self.remove_stale_temp_files()
    }

    fn gc_guard(&self) -> Result<Option<crate::GcGuard>> {
        self.write_guard().map(Some)
    }

    fn push_tag(&self, name: &str, target: &Digest) -> Result<()> {
        FsRepository::push_tag(self, name, target)
    }

    fn resolve_ref(&self, text: &str) -> Result<Digest> {
        FsRepository::resolve_ref(self, text)
    }
}
