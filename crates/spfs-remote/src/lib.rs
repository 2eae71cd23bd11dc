//! Remote repositories: named in the configuration, opened behind the one
//! [`spfs_storage::Repository`] interface.
//!
//! - [`address`]: what a remote's address says (`file:`, `grpc://`,
//!   `s3://`), checked before anything is contacted;
//! - [`grpc`]: `spfs server` and its client;
//! - [`s3`]: an S3-compatible object store;
//! - [`open_remote`]: a configured remote, by name, ready to use.
//!
//! A directory remote (a path or `file:` URL, e.g. on NFS) is a local
//! repository format reached through the filesystem, so it is an
//! [`spfs_storage::FsRepository`] at that path.

pub mod address;
mod chunks;
pub mod grpc;
pub mod s3;

use spfs_config::Config;
use spfs_storage::{FsRepository, Repository};

pub use address::{Address, AddressError};

/// Why a remote could not be used. Every message names the remote.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("unknown remote '{name}' (configured: {configured})")]
    Unknown { name: String, configured: String },
    #[error("remote '{name}': {source}")]
    BadAddress { name: String, source: AddressError },
    #[error("remote '{name}' ({address}) cannot be reached: {reason}")]
    Unreachable {
        name: String,
        address: String,
        reason: String,
    },
    #[error("remote '{name}': {kind} remotes are not supported by this build yet")]
    Unsupported { name: String, kind: &'static str },
}

/// The configured remote `name`.
pub fn open_remote(config: &Config, name: &str) -> Result<Box<dyn Repository>, RemoteError> {
    let remote = config
        .remote
        .get(name)
        .ok_or_else(|| RemoteError::Unknown {
            name: name.to_string(),
            configured: if config.remote.is_empty() {
                "none; add [remote.NAME] address = \"...\" to the config".into()
            } else {
                config.remote.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        })?;
    let address = Address::parse(&remote.address).map_err(|source| RemoteError::BadAddress {
        name: name.to_string(),
        source,
    })?;
    let timeout = std::time::Duration::from_secs(remote.timeout.unwrap_or(60).max(1) as u64);
    match address {
        Address::Dir(path) => FsRepository::open(&path)
            .map(|r| Box::new(r) as Box<dyn Repository>)
            .map_err(|e| RemoteError::Unreachable {
                name: name.to_string(),
                address: remote.address.clone(),
                reason: e.to_string(),
            }),
        Address::Grpc { host, port } => {
            let token = match &remote.token_file {
                Some(path) => Some(read_token(path).map_err(|e| RemoteError::Unreachable {
                    name: name.to_string(),
                    address: remote.address.clone(),
                    reason: format!("cannot read its token file {}: {e}", path.display()),
                })?),
                None => None,
            };
            grpc::client::GrpcRepository::connect(&host, port, token, timeout)
                .map(|r| Box::new(r) as Box<dyn Repository>)
                .map_err(|e| RemoteError::Unreachable {
                    name: name.to_string(),
                    address: remote.address.clone(),
                    reason: e.to_string(),
                })
        }
        Address::S3 { bucket, prefix } => {
            let options = s3::S3Options {
                bucket: &bucket,
                prefix: &prefix,
                endpoint: remote.endpoint.as_deref(),
                region: remote.region.as_deref(),
                access_key_id: remote.access_key_id.as_deref(),
                secret_access_key: remote.secret_access_key.as_deref(),
                timeout,
            };
            s3::S3Repository::open(&options)
                .map(|r| Box::new(r) as Box<dyn Repository>)
                .map_err(|e| RemoteError::Unreachable {
                    name: name.to_string(),
                    address: remote.address.clone(),
                    reason: e.to_string(),
                })
        }
    }
}

/// The remotes `config.vfs.remotes` names, opened for reading through (an
/// unconfigured `origin`, the default, is left out; another name that is
/// not configured, or a remote that cannot be opened, stays in the list as
/// unreachable, so that errors name it).
pub fn read_through(config: &Config) -> std::sync::Arc<spfs_storage::readthrough::ReadThrough> {
    let remotes = config
        .vfs
        .remotes
        .iter()
        .filter(|name| *name != "origin" || config.remote.contains_key("origin"))
        .map(|name| {
            let (config, n) = (config.clone(), name.clone());
            spfs_storage::readthrough::Remote::new(
                name.clone(),
                Box::new(move || open_remote(&config, &n).map_err(|e| e.to_string())),
            )
        })
        .collect();
    spfs_storage::readthrough::ReadThrough::new(
        remotes,
        std::time::Duration::from_secs(config.vfs.remote_timeout.max(1) as u64),
    )
}

/// A token from a file (surrounding whitespace ignored).
pub fn read_token(path: &std::path::Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(std::io::Error::other("the file is empty"));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let mut c = Config::default();
        for (name, address) in pairs {
            c.remote.insert(
                name.to_string(),
                spfs_config::RemoteConfig {
                    address: address.to_string(),
                    ..Default::default()
                },
            );
        }
        c
    }

    #[test]
    fn errors_name_the_remote() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nothing-here");
        let c = config(&[
            ("origin", "file:/x"),
            ("bad", "ftp://host"),
            ("gone", missing.to_str().unwrap()),
        ]);
        let err = open_remote(&c, "nope").err().unwrap().to_string();
        assert!(err.contains("'nope'") && err.contains("origin"), "{err}");
        let err = open_remote(&c, "bad").err().unwrap().to_string();
        assert!(err.contains("'bad'") && err.contains("ftp"), "{err}");
        let err = open_remote(&c, "gone").err().unwrap().to_string();
        assert!(
            err.contains("'gone'") && err.contains("nothing-here"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn a_directory_remote_is_a_repository() {
        let dir = tempfile::tempdir().unwrap();
        FsRepository::create(dir.path()).unwrap();
        let url = format!("file://{}", dir.path().display());
        let c = config(&[("origin", &url)]);
        let remote = open_remote(&c, "origin").unwrap();
        assert_eq!(remote.address(), format!("file:{}", dir.path().display()));
    }
}
