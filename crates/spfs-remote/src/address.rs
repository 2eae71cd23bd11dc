//! Remote addresses, as written in `[remote.NAME] address = "..."`.
//!
//! - `file:/path`, `file:///path` or a plain absolute path: a directory
//!   repository;
//! - `grpc://host:port`: an `spfs server`;
//! - `s3://bucket/prefix`: an S3-compatible object store (endpoint, region
//!   and credentials are options of the remote, not of its address).

use std::path::PathBuf;

/// A parsed remote address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Dir(PathBuf),
    Grpc { host: String, port: u16 },
    S3 { bucket: String, prefix: String },
}

/// Why an address is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("bad address '{address}': {reason}")]
    Bad { address: String, reason: String },
}

impl Address {
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        let bad = |reason: &str| AddressError::Bad {
            address: text.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = text.strip_prefix("file://") {
            return Self::dir(rest).ok_or_else(|| bad("a file:// URL names an absolute path"));
        }
        if let Some(rest) = text.strip_prefix("file:") {
            return Self::dir(rest).ok_or_else(|| bad("file: names an absolute path"));
        }
        if let Some(rest) = text.strip_prefix("grpc://") {
            let rest = rest.trim_end_matches('/');
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("expected grpc://HOST:PORT"))?;
            let port = port.parse().map_err(|_| bad("the port is not a number"))?;
            if host.is_empty() || host.contains('/') {
                return Err(bad("expected grpc://HOST:PORT"));
            }
            return Ok(Address::Grpc {
                host: host.to_string(),
                port,
            });
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("expected s3://BUCKET/PREFIX"));
            }
            return Ok(Address::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        if text.starts_with('/') {
            return Ok(Address::Dir(PathBuf::from(text)));
        }
        Err(bad(
            "expected file:/PATH, an absolute path, grpc://HOST:PORT or s3://BUCKET/PREFIX",
        ))
    }

    fn dir(path: &str) -> Option<Address> {
        path.starts_with('/')
            .then(|| Address::Dir(PathBuf::from(path)))
    }

    /// The kind, for listings.
    pub fn kind(&self) -> &'static str {
        match self {
            Address::Dir(_) => "directory",
            Address::Grpc { .. } => "grpc",
            Address::S3 { .. } => "s3",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_say_why_not() {
        assert_eq!(
            Address::parse("file:///srv/spfs").unwrap(),
            Address::Dir("/srv/spfs".into())
        );
        assert_eq!(
            Address::parse("file:/srv/spfs").unwrap(),
            Address::Dir("/srv/spfs".into())
        );
        assert_eq!(
            Address::parse("/srv/spfs").unwrap(),
            Address::Dir("/srv/spfs".into())
        );
        assert_eq!(
            Address::parse("grpc://spfs.example:7737").unwrap(),
            Address::Grpc {
                host: "spfs.example".into(),
                port: 7737
            }
        );
        assert_eq!(
            Address::parse("s3://layers/studio/").unwrap(),
            Address::S3 {
                bucket: "layers".into(),
                prefix: "studio".into()
            }
        );
        for bad in [
            "relative/path",
            "file:rel",
            "grpc://host",
            "grpc://:1",
            "s3://",
            "ftp://x",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }
}
