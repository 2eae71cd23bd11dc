//! The S3 remote: a repository in an S3-compatible object store (AWS S3,
//! Ceph RGW, MinIO, SeaweedFS, …), through the `object_store` crate.
//!
//! Layout under the remote's prefix:
//!
//! ```text
//! objects/DIGEST            an object's encoded bytes
//! payloads/DIGEST           a payload (metadata spfs-public: 1 or 0)
//! tags/NAME/TIME-RANDOM    one version of tag NAME: "TARGET TIME USER"
//! ```
//!
//! Objects and payloads are named by content, so writing one twice is
//! harmless; each is checked against its digest before it is stored, and a
//! payload upload whose bytes hash to anything else is aborted (the store
//! shows nothing). A tag is a set of version objects, one per push, named
//! by the writer's clock in nanoseconds and 64 random bits: any number of
//! writers sharing a bucket add versions and none can overwrite another's
//! (this needs no conditional put, which not every S3 implementation
//! honours; each version is also written with `If-None-Match` where it is).
//! Versions are ordered by name, so writers' clocks decide the order of
//! pushes made within the same moment. Credentials come from the remote's config or the usual `AWS_*`
//! environment variables and are never printed or logged.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as StorePath;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, PutMode, PutOptions, PutPayload,
};
use spfs_model::{Digest, SpecItem};
use spfs_storage::tags::TagVersion;
use spfs_storage::{PayloadReader, Repository, Result, StorageError};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;

use crate::chunks::spawn_reader;

/// The metadata key that records whether a payload's copy was public.
const PUBLIC_KEY: &str = "spfs-public";

/// Where an S3 remote is and how to sign in (see [`spfs_config::RemoteConfig`]).
pub struct S3Options<'a> {
    pub bucket: &'a str,
    pub prefix: &'a str,
    pub endpoint: Option<&'a str>,
    pub region: Option<&'a str>,
    pub access_key_id: Option<&'a str>,
    pub secret_access_key: Option<&'a str>,
    /// How long a request, or a pause in a download, may last.
    pub timeout: Duration,
}

/// A repository in an S3 bucket.
pub struct S3Repository {
    address: String,
    runtime: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    timeout: Duration,
}

impl S3Repository {
    pub fn open(options: &S3Options<'_>) -> std::io::Result<Self> {
        let plain_http = options.endpoint.is_some_and(|e| e.starts_with("http://"));
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(options.bucket)
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_timeout(options.timeout)
                    .with_allow_http(plain_http),
            );
        if let Some(endpoint) = options.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if let Some(region) = options.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = options.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = options.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        // The builder's errors name settings, never their values.
        let store = builder.build().map_err(std::io::Error::other)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let prefix = options.prefix.trim_matches('/').to_string();
        let repo = S3Repository {
            address: if prefix.is_empty() {
                format!("s3://{}", options.bucket)
            } else {
                format!("s3://{}/{prefix}", options.bucket)
            },
            runtime,
            store: Arc::new(store),
            prefix,
            timeout: options.timeout,
        };
        // Reachable, and the bucket exists: one cheap request.
        repo.runtime
            .block_on(async {
                let mut list = repo.store.list(Some(&repo.path("tags")));
                list.next().await.transpose()
            })
            .map_err(|e| std::io::Error::other(one_line(&e)))?;
        Ok(repo)
    }

    fn path(&self, rel: &str) -> StorePath {
        if self.prefix.is_empty() {
            StorePath::from(rel)
        } else {
            StorePath::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn err(&self, e: object_store::Error) -> StorageError {
        StorageError::Remote {
            address: self.address.clone(),
            message: one_line(&e),
        }
    }

    fn exists(&self, rel: &str) -> Result<bool> {
        match self.runtime.block_on(self.store.head(&self.path(rel))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// The versions of tag `name`, oldest first.
    fn tag_versions(&self, name: &str) -> Result<Vec<StorePath>> {
        let prefix = self.path(&format!("tags/{name}"));
        let listed: Vec<_> = self
            .runtime
            .block_on(async { self.store.list(Some(&prefix)).collect::<Vec<_>>().await });
        let mut versions = Vec::new();
        for item in listed {
            let meta = item.map_err(|e| self.err(e))?;
            // Only direct children: `tags/a/b` is another tag than `tags/a`.
            let Some(rest) = meta.location.as_ref().strip_prefix(prefix.as_ref()) else {
                continue;
            };
            if rest.strip_prefix('/').is_some_and(is_version_name) {
                versions.push(meta.location);
            }
        }
        versions.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        Ok(versions)
    }

    /// Read a range (`length` 0: to the end) of a payload as a reader.
    pub fn read_range(
        &self,
        digest: &Digest,
        offset: u64,
        length: u64,
    ) -> Result<(Box<dyn Read + Send>, u64, bool)> {
        let range = match length {
            0 => GetRange::Offset(offset),
            n => GetRange::Bounded(offset..offset + n),
        };
        let options = GetOptions {
            range: Some(range),
            ..Default::default()
        };
        let path = self.path(&format!("payloads/{digest}"));
        let result = self
            .runtime
            .block_on(self.store.get_opts(&path, options))
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => StorageError::UnknownObject(*digest),
                e => self.err(e),
            })?;
        let size = result.meta.size;
        let public = result
            .attributes
            .get(&Attribute::Metadata(PUBLIC_KEY.into()))
            .is_some_and(|v| v.as_ref() == "1");
        let chunks = result
            .into_stream()
            .map(|b| b.map(|b| b.to_vec()).map_err(|e| one_line(&e)));
        let reader = spawn_reader(&self.runtime, Vec::new(), chunks, self.timeout);
        Ok((Box::new(reader), size, public))
    }
}

/// How far ahead of this host's clock another writer's may be before its
/// tag versions count as from the future.
const CLOCK_SLACK: Duration = Duration::from_secs(300);

/// Whether `name` is a tag version's: `TIME-RANDOM` (20 and 16 digits).
fn is_version_name(name: &str) -> bool {
    name.split_once('-').is_some_and(|(t, r)| {
        t.len() == 20
            && r.len() == 16
            && t.bytes().all(|b| b.is_ascii_digit())
            && r.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// 64 random bits from the kernel.
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    u64::from_le_bytes(b)
}

/// An error and its causes on one line.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string().replace('\n', " ");
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string().replace('\n', " ");
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

impl Repository for S3Repository {
    fn address(&self) -> String {
        self.address.clone()
    }

    fn has_object(&self, digest: &Digest) -> Result<bool> {
        self.exists(&format!("objects/{digest}"))
    }

    fn read_object_bytes(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.path(&format!("objects/{digest}"));
        let bytes = self
            .runtime
            .block_on(async { self.store.get(&path).await?.bytes().await })
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => StorageError::UnknownObject(*digest),
                e => self.err(e),
            })?;
        spfs_storage::repository::check_object(digest, &bytes)?;
        Ok(bytes.to_vec())
    }

    fn write_object_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        spfs_storage::repository::check_object(digest, bytes)?;
        let path = self.path(&format!("objects/{digest}"));
        self.runtime
            .block_on(self.store.put(&path, PutPayload::from(bytes.to_vec())))
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn has_payload(&self, digest: &Digest) -> Result<bool> {
        self.exists(&format!("payloads/{digest}"))
    }

    fn open_payload(&self, digest: &Digest) -> Result<PayloadReader> {
        let (reader, size, public) = self.read_range(digest, 0, 0)?;
        Ok(PayloadReader {
            reader,
            size: Some(size),
            public,
        })
    }

    fn read_payload_range(
        &self,
        digest: &Digest,
        offset: u64,
        length: u64,
    ) -> Result<(Vec<u8>, bool)> {
        let (r, _, public) = self.read_range(digest, offset, length.max(1))?;
        Ok((
            crate::chunks::read_at_most(&self.address, r, length)?,
            public,
        ))
    }

    fn write_payload(&self, digest: &Digest, reader: &mut dyn Read, public: bool) -> Result<u64> {
        let path = self.path(&format!("payloads/{digest}"));
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(PUBLIC_KEY.into()),
            if public { "1" } else { "0" }.into(),
        );
        let mut writer = object_store::buffered::BufWriter::new(self.store.clone(), path)
            .with_attributes(attributes);
        let mut hasher = spfs_model::digest::Hasher::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = self.runtime.block_on(writer.abort());
                    return Err(StorageError::io("cannot read", "(payload source)")(e));
                }
            };
            hasher.update(&buf[..n]);
            size += n as u64;
            if let Err(e) = self.runtime.block_on(writer.write_all(&buf[..n])) {
                let _ = self.runtime.block_on(writer.abort());
                return Err(StorageError::Remote {
                    address: self.address.clone(),
                    message: one_line(&e),
                });
            }
        }
        let actual = hasher.finish();
        if actual != *digest {
            let _ = self.runtime.block_on(writer.abort());
            return Err(StorageError::Corrupt {
                digest: *digest,
                source: spfs_model::DecodeError::Invalid(format!(
                    "payload content hashes to {actual}"
                )),
            });
        }
        self.runtime
            .block_on(writer.shutdown())
            .map_err(|e| StorageError::Remote {
                address: self.address.clone(),
                message: one_line(&e),
            })?;
        Ok(size)
    }

    fn tag_history(&self, name: &str) -> Result<Vec<TagVersion>> {
        spfs_model::TagSpec::parse(name)?;
        let versions = self.tag_versions(name)?;
        if versions.is_empty() {
            return Err(StorageError::UnknownTag(name.to_string()));
        }
        let mut out = Vec::with_capacity(versions.len());
        for path in versions {
            let bytes = self
                .runtime
                .block_on(async { self.store.get(&path).await?.bytes().await })
                .map_err(|e| self.err(e))?;
            let text = String::from_utf8_lossy(&bytes);
            let mut fields = text.split_whitespace();
            let bad = || StorageError::Remote {
                address: self.address.clone(),
                message: format!("malformed tag version {path}"),
            };
            let target = fields
                .next()
                .and_then(|t| Digest::parse(t).ok())
                .ok_or_else(bad)?;
            let time = fields.next().and_then(|t| t.parse().ok()).unwrap_or(0);
            let user = fields.next().unwrap_or("").to_string();
            out.push(TagVersion { target, time, user });
        }
        Ok(out)
    }

    fn push_tag(&self, name: &str, target: &Digest) -> Result<()> {
        let spec = spfs_model::TagSpec::parse(name)?;
        if spec.name != name {
            return Err(StorageError::UnknownTag(name.to_string()));
        }
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        let body = format!("{target} {} {user}\n", time.as_secs());
        let path = self.path(&format!(
            "tags/{name}/{:020}-{:016x}",
            time.as_nanos(),
            random_u64()
        ));
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.runtime
            .block_on(
                self.store
                    .put_opts(&path, PutPayload::from(body.into_bytes()), options),
            )
            .map_err(|e| self.err(e))?;
        // Versions are ordered by their writers' clocks: one dated well
        // after now (a writer whose clock runs ahead) hides this one and
        // every later push; say so rather than report a push nobody sees.
        let horizon = format!("{:020}", time.as_nanos() + CLOCK_SLACK.as_nanos());
        if let Some(ahead) = self
            .tag_versions(name)?
            .into_iter()
            .find(|v| v.filename().is_some_and(|f| f > horizon.as_str()))
        {
            return Err(StorageError::Remote {
                address: self.address.clone(),
                message: format!(
                    "tag {name}: this version was stored, but {ahead} is dated later and hides it \
                     (a writer's clock runs ahead)"
                ),
            });
        }
        Ok(())
    }

    fn resolve_ref(&self, text: &str) -> Result<Digest> {
        match SpecItem::parse(text)? {
            SpecItem::Digest(d) => match self.has_object(&d)? {
                true => Ok(d),
                false => Err(StorageError::UnknownObject(d)),
            },
            SpecItem::Tag(t) => {
                let history = self.tag_history(&t.name)?;
                let available = history.len();
                history
                    .into_iter()
                    .rev()
                    .nth(t.version as usize)
                    .map(|v| v.target)
                    .ok_or(StorageError::UnknownTagVersion {
                        name: t.name,
                        available,
                        requested: t.version,
                    })
            }
            SpecItem::Partial(p) => {
                let prefix = self.path("objects");
                let listed: Vec<_> = self
                    .runtime
                    .block_on(async { self.store.list(Some(&prefix)).collect::<Vec<_>>().await });
                let mut found = Vec::new();
                for item in listed {
                    let meta = item.map_err(|e| self.err(e))?;
                    if let Some(d) = meta
                        .location
                        .filename()
                        .and_then(|n| Digest::parse(n).ok())
                        .filter(|d| p.matches(d))
                    {
                        found.push(d);
                    }
                }
                match found.as_slice() {
                    [d] => Ok(*d),
                    [] => match self.tag_history(text) {
                        Ok(h) => h
                            .last()
                            .map(|v| v.target)
                            .ok_or(StorageError::UnknownReference(text.to_string())),
                        Err(_) => Err(StorageError::UnknownReference(text.to_string())),
                    },
                    many => Err(StorageError::AmbiguousDigest {
                        prefix: p.as_str().to_string(),
                        count: many.len(),
                    }),
                }
            }
        }
    }
}
