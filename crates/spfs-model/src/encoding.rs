//! The canonical binary encoding shared by all spfs objects.
//!
//! Every encoded object starts with a header: the magic bytes `SPFS`, a
//! little-endian `u16` format version and a one-byte object kind. The body
//! follows, made of little-endian integers, length-prefixed byte strings and
//! raw 32-byte digests. There is exactly one encoding for each value, so the
//! digest of an object (the SHA-256 of its encoding) is well defined.
//!
//! Versions:
//!
//! - **1**: manifests record no modification times.
//! - **2**: every manifest entry also records its modification time (an
//!   `i64` of nanoseconds since the Unix epoch) after its digest.
//!
//! Each object is written at the *lowest* version that can hold it: a
//! manifest whose entries all have mtime 0, and every layer and platform
//! (whose bodies did not change), are written at version 1, exactly as
//! before; any other manifest at version 2. A decoder refuses an object
//! written at a higher version than it needs, so the encoding stays
//! canonical, objects written by earlier builds decode (their entries get
//! mtime 0) and encode back to the very same bytes, and their digests never
//! change.
//!
//! Decoding never trusts its input: every length is checked against the bytes
//! that remain, and any inconsistency is a [`DecodeError`], never a panic.

use crate::digest::{DIGEST_SIZE, Digest};

/// The magic bytes that start every encoded object.
pub const MAGIC: &[u8; 4] = b"SPFS";
/// The newest format version this build reads and writes.
pub const FORMAT_VERSION: u16 = 2;
/// The oldest format version this build reads.
pub const OLDEST_FORMAT_VERSION: u16 = 1;
/// The version in which manifest entries gained modification times.
pub const MTIME_VERSION: u16 = 2;
/// The size of the header: magic, version and kind.
pub const HEADER_LEN: usize = 7;

/// Why bytes could not be decoded into an object.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not an spfs object (bad magic bytes)")]
    BadMagic,
    #[error(
        "object format version {0} is not supported: this build reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}"
    )]
    UnsupportedVersion(u16),
    #[error("unknown object kind {0}")]
    UnknownKind(u8),
    #[error("truncated object: needed {needed} more bytes at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    #[error("{0} trailing bytes after the object")]
    TrailingBytes(usize),
    #[error("invalid object: {0}")]
    Invalid(String),
}

/// Appends the canonical encoding of values to a buffer.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// A writer that starts with the header of an object of `kind` in
    /// format `version`.
    pub fn with_header(version: u16, kind: u8) -> Self {
        let mut w = Writer {
            buf: Vec::with_capacity(256),
        };
        w.buf.extend_from_slice(MAGIC);
        w.u16(version);
        w.u8(kind);
        w
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn digest(&mut self, d: &Digest) {
        self.buf.extend_from_slice(&d.0);
    }
    /// A `u32` length followed by the bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.buf.extend_from_slice(b);
    }
    /// A `u32` count; panics on absurd sizes that cannot come from memory.
    pub fn count(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("collections are smaller than 2^32"));
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// The header of an encoded object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The format version, between [`OLDEST_FORMAT_VERSION`] and
    /// [`FORMAT_VERSION`].
    pub version: u16,
    /// The object kind byte.
    pub kind: u8,
}

/// Reads values back out of an encoding, checking every bound.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Read and check the header (a version this build reads).
    pub fn header(&mut self) -> Result<Header, DecodeError> {
        if self.buf.len() < MAGIC.len() || &self.buf[..MAGIC.len()] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        self.pos = MAGIC.len();
        let version = self.u16()?;
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        Ok(Header {
            version,
            kind: self.u8()?,
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let remaining = self.buf.len() - self.pos;
        if remaining < n {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n - remaining,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(a))
    }
    pub fn digest(&mut self) -> Result<Digest, DecodeError> {
        let mut a = [0u8; DIGEST_SIZE];
        a.copy_from_slice(self.take(DIGEST_SIZE)?);
        Ok(Digest(a))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec())
            .map_err(|_| DecodeError::Invalid("string is not UTF-8".into()))
    }
    /// A count of items that each take at least `min_item_len` bytes; the
    /// count is checked against the remaining bytes so that corrupt data
    /// cannot make us allocate huge vectors.
    pub fn count(&mut self, min_item_len: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item_len.max(1)) > self.remaining() {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n.saturating_mul(min_item_len.max(1)) - self.remaining(),
            });
        }
        Ok(n)
    }
    /// Fail if anything is left over.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}
