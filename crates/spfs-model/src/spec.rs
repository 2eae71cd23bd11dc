//! Environment specs: the stack of references a runtime is built from.
//!
//! A spec is a `+`-separated list, bottom first: `base+my/tag~1+A7US…`.
//! Each item is a full digest, a digest prefix, a tag (`org/name`, with `~N`
//! for the version N steps back), or an absolute path to a `*.spfs.yaml` file
//! whose `layers:` list holds more items. `-` or the empty string is the
//! empty environment.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, PartialDigest};

/// Why a spec could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "invalid tag '{0}': tags are names like 'org/name' of letters, digits, '.', '_' and '-', optionally with '~N'"
    )]
    InvalidTag(String),
    #[error("invalid reference '{0}' in environment spec")]
    InvalidItem(String),
    #[error("spec files are not accepted here ('{0}'): expand them first (spfs does this for you)")]
    FileNotAllowed(String),
    #[error(transparent)]
    InvalidDigest(#[from] crate::digest::DigestError),
    #[error("cannot read spec file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid spec file {path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("spec files nest too deeply at {0}")]
    TooDeep(PathBuf),
}

/// A tag name and how many versions back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TagSpec {
    pub name: String,
    pub version: u64,
}

impl TagSpec {
    /// Parse `org/name` or `org/name~N`.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::InvalidTag(text.to_string());
        let (name, version) = match text.split_once('~') {
            Some((n, v)) => (n, v.parse::<u64>().map_err(|_| bad())?),
            None => (text, 0),
        };
        // `.tag` and `.lock` endings are how tags are stored: a folder named
        // so would collide with a tag.
        let valid_part = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && !p.ends_with(".tag")
                && !p.ends_with(".lock")
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if name.is_empty() || !name.split('/').all(valid_part) {
            return Err(bad());
        }
        Ok(TagSpec {
            name: name.to_string(),
            version,
        })
    }
}

impl fmt::Display for TagSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            0 => f.write_str(&self.name),
            v => write!(f, "{}~{v}", self.name),
        }
    }
}

/// One reference in a spec.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SpecItem {
    Digest(Digest),
    /// A digest prefix; if no object matches, it may still name a tag.
    Partial(PartialDigest),
    Tag(TagSpec),
}

impl SpecItem {
    /// Parse one item (not a file path).
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        if let Ok(d) = Digest::parse(text) {
            return Ok(SpecItem::Digest(d));
        }
        if text.len() >= 2
            && let Ok(p) = PartialDigest::parse(text)
        {
            return Ok(SpecItem::Partial(p));
        }
        // Padding, or the length of a digest in digest-like characters: a
        // mistyped digest, not a tag.
        let digest_like = text.len() == crate::digest::DIGEST_TEXT_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'=');
        if text.contains('=') || digest_like {
            return Err(SpecError::InvalidDigest(
                crate::digest::DigestError::Invalid(text.to_string()),
            ));
        }
        TagSpec::parse(text)
            .map(SpecItem::Tag)
            .map_err(|_| SpecError::InvalidItem(text.to_string()))
    }
}

impl fmt::Display for SpecItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecItem::Digest(d) => d.fmt(f),
            SpecItem::Partial(p) => p.fmt(f),
            SpecItem::Tag(t) => t.fmt(f),
        }
    }
}

/// A parsed environment spec: items bottom first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EnvSpec {
    pub items: Vec<SpecItem>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    #[serde(default)]
    #[allow(dead_code)]
    api: Option<String>,
    #[serde(default)]
    layers: Vec<String>,
}

impl EnvSpec {
    /// Parse a spec; `*.spfs.yaml` paths are read and expanded (with the
    /// caller's own permissions: only a client should do this).
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let mut items = Vec::new();
        Self::parse_into(text, &mut items, 0, true)?;
        Ok(EnvSpec { items })
    }

    /// Parse a spec of references only: a file path is an error. A service
    /// that parses specs for other users must use this, so that it never
    /// reads files on their behalf.
    pub fn parse_references(text: &str) -> Result<Self, SpecError> {
        let mut items = Vec::new();
        Self::parse_into(text, &mut items, 0, false)?;
        Ok(EnvSpec { items })
    }

    fn parse_into(
        text: &str,
        items: &mut Vec<SpecItem>,
        depth: usize,
        files: bool,
    ) -> Result<(), SpecError> {
        let text = text.trim();
        if text.is_empty() || text == "-" {
            return Ok(());
        }
        for part in text.split('+') {
            let part = part.trim();
            if part.is_empty() {
                return Err(SpecError::InvalidItem(text.to_string()));
            }
            if part.starts_with('/') {
                if !files {
                    return Err(SpecError::FileNotAllowed(part.to_string()));
                }
                Self::parse_file(Path::new(part), items, depth)?;
            } else {
                items.push(SpecItem::parse(part)?);
            }
        }
        Ok(())
    }

    fn parse_file(path: &Path, items: &mut Vec<SpecItem>, depth: usize) -> Result<(), SpecError> {
        if depth >= 8 {
            return Err(SpecError::TooDeep(path.to_path_buf()));
        }
        if !path.to_string_lossy().ends_with(".spfs.yaml") {
            return Err(SpecError::BadFile {
                path: path.to_path_buf(),
                message: "spec files must be named *.spfs.yaml".into(),
            });
        }
        let read_err = |source| SpecError::ReadFile {
            path: path.to_path_buf(),
            source,
        };
        // Only a small regular file: never a device, fifo or huge file.
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if !meta.is_file() || meta.len() > 1 << 20 {
            return Err(SpecError::BadFile {
                path: path.to_path_buf(),
                message: "not a regular file of at most 1 MiB".into(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let file: SpecFile = serde_yaml::from_str(&text).map_err(|e| SpecError::BadFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        for layer in file.layers {
            Self::parse_into(&layer, items, depth + 1, true)?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl fmt::Display for EnvSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.items.is_empty() {
            return f.write_str("-");
        }
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            item.fmt(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_items() {
        let d = Digest::of(b"x");
        let spec = EnvSpec::parse(&format!("base+my/tag~2+{d}+{}", d.short(6))).unwrap();
        assert_eq!(spec.items.len(), 4);
        assert_eq!(
            spec.items[1],
            SpecItem::Tag(TagSpec {
                name: "my/tag".into(),
                version: 2
            })
        );
        assert_eq!(spec.items[2], SpecItem::Digest(d));
        assert!(matches!(spec.items[3], SpecItem::Partial(_)));
        assert!(EnvSpec::parse("-").unwrap().is_empty());
        assert!(EnvSpec::parse("").unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in ["a++b", "my/tag~x", "a b", "my//tag", "../x", "+"] {
            assert!(EnvSpec::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn reads_spec_files() {
        let dir = std::env::temp_dir().join(format!("spfs-spec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("env.spfs.yaml");
        std::fs::write(
            &path,
            "api: spfs/v0/envspec\nlayers:\n  - base\n  - my/tag~1\n",
        )
        .unwrap();
        let spec = EnvSpec::parse(&format!("first+{}", path.display())).unwrap();
        assert_eq!(spec.to_string(), "first+base+my/tag~1");
        std::fs::write(&path, "layers: [").unwrap();
        assert!(matches!(
            EnvSpec::parse(path.to_str().unwrap()),
            Err(SpecError::BadFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
