//! Digests: the SHA-256 names of every blob and object.
//!
//! A digest is shown as RFC 4648 base32, upper case and padded (56
//! characters), as upstream SpFS does. Wherever a digest is accepted, a
//! unique prefix of its text form is accepted too: [`PartialDigest`] holds
//! such a prefix and matches full digests against it.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32;
use sha2::Digest as _;

/// The number of bytes in a digest.
pub const DIGEST_SIZE: usize = 32;
/// The length of a digest's text form.
pub const DIGEST_TEXT_LEN: usize = 56;
/// The length of the significant (unpadded) part of the text form.
const SIGNIFICANT_LEN: usize = 52;

/// The SHA-256 of a blob's bytes or of an object's canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Digest(pub [u8; DIGEST_SIZE]);

/// Why a text is not a digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("invalid digest '{0}': expected 56 characters of upper-case base32")]
    Invalid(String),
    #[error(
        "invalid partial digest '{0}': expected 1 to 52 characters of upper-case base32 (A-Z, 2-7)"
    )]
    InvalidPartial(String),
}

impl Digest {
    /// The digest of nothing (also the digest of an empty blob).
    pub fn of(bytes: &[u8]) -> Self {
        let mut h = Hasher::new();
        h.update(bytes);
        h.finish()
    }

    /// All zeros: used where an entry refers to no object (directories, masks).
    pub const NULL: Digest = Digest([0; DIGEST_SIZE]);

    pub fn is_null(&self) -> bool {
        self.0 == [0; DIGEST_SIZE]
    }

    pub fn as_bytes(&self) -> &[u8; DIGEST_SIZE] {
        &self.0
    }

    /// The first `len` characters of the text form, for compact display.
    pub fn short(&self, len: usize) -> String {
        let mut s = self.to_string();
        s.truncate(len.min(SIGNIFICANT_LEN));
        s
    }

    /// Parse the full text form.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        if text.len() != DIGEST_TEXT_LEN {
            return Err(DigestError::Invalid(text.to_string()));
        }
        let bytes = BASE32
            .decode(text.as_bytes())
            .map_err(|_| DigestError::Invalid(text.to_string()))?;
        let arr: [u8; DIGEST_SIZE] = bytes
            .try_into()
            .map_err(|_| DigestError::Invalid(text.to_string()))?;
        let d = Digest(arr);
        // Reject non-canonical encodings (trailing bits set).
        if d.to_string() != text {
            return Err(DigestError::Invalid(text.to_string()));
        }
        Ok(d)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE32.encode(&self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short(10))
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A prefix of a digest's text form, as a user may type it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PartialDigest(String);

impl PartialDigest {
    /// Parse a prefix: 1 to 52 characters of the base32 alphabet, padding
    /// allowed only as part of a full digest.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        if text.len() == DIGEST_TEXT_LEN {
            return Digest::parse(text).map(|d| PartialDigest(d.short(SIGNIFICANT_LEN)));
        }
        let ok = !text.is_empty()
            && text.len() <= SIGNIFICANT_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b));
        if !ok {
            return Err(DigestError::InvalidPartial(text.to_string()));
        }
        Ok(PartialDigest(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `digest` starts with this prefix.
    pub fn matches(&self, digest: &Digest) -> bool {
        digest.to_string().starts_with(&self.0)
    }

    /// The full digest, when the prefix is the whole significant part.
    pub fn to_full(&self) -> Option<Digest> {
        if self.0.len() == SIGNIFICANT_LEN {
            Digest::parse(&format!("{}====", self.0)).ok()
        } else {
            None
        }
    }
}

impl fmt::Display for PartialDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An incremental SHA-256 hasher (hardware-accelerated where the CPU has
/// SHA extensions).
#[derive(Clone, Default)]
pub struct Hasher(sha2::Sha256);

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl std::io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_digest_text() {
        let d = Digest::of(b"");
        let s = d.to_string();
        assert_eq!(s.len(), DIGEST_TEXT_LEN);
        assert!(s.ends_with("===="));
        assert_eq!(Digest::parse(&s), Ok(d));
    }

    #[test]
    fn known_sha256() {
        // sha256("abc")
        let d = Digest::of(b"abc");
        assert_eq!(
            d.0[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "must be plain SHA-256 of the bytes"
        );
    }

    #[test]
    fn rejects_bad_text() {
        assert!(Digest::parse("abc").is_err());
        let lower = Digest::of(b"x").to_string().to_lowercase();
        assert!(Digest::parse(&lower).is_err());
        assert!(PartialDigest::parse("").is_err());
        assert!(PartialDigest::parse("AB1").is_err());
        assert!(PartialDigest::parse("ab").is_err());
    }

    /// Hashing takes the hardware path where the CPU has one (SHA-NI on
    /// x86_64, detected at run time by sha2): run with
    /// `cargo test -p spfs-model --release -- --ignored --nocapture sha256`.
    #[test]
    #[ignore = "a measurement; run by hand"]
    fn sha256_is_accelerated() {
        let data = vec![0x5au8; 512 << 20];
        let start = std::time::Instant::now();
        let d = Digest::of(&data);
        let mib_s = 512.0 / start.elapsed().as_secs_f64();
        eprintln!("SHA-256 of 512 MiB: {mib_s:.0} MiB/s ({})", d.short(8));
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("sha") {
            // The portable code stays well under 1000 MiB/s on such CPUs.
            assert!(mib_s > 1000.0, "SHA-NI is not used: {mib_s:.0} MiB/s");
        }
    }

    #[test]
    fn partial_matches() {
        let d = Digest::of(b"hello");
        let p = PartialDigest::parse(&d.short(8)).unwrap();
        assert!(p.matches(&d));
        assert!(!p.matches(&Digest::of(b"other")));
        let full = PartialDigest::parse(&d.to_string()).unwrap();
        assert_eq!(full.to_full(), Some(d));
    }
}
