//! The local repository: a directory of objects, payloads, tags and runtimes.
//!
//! ```text
//! ROOT/VERSION             format version of the repository ("1")
//! ROOT/objects/AB/CDEF…    encoded manifests, layers, platforms (sharded by digest)
//! ROOT/payloads/AB/CDEF…   blob bytes
//! ROOT/tags/org/name.tag   tag history, one version a line, newest last
//! ROOT/runtimes/NAME.json  records of running environments
//! ROOT/tmp/                temporary files, renamed into place when complete
//! ```
//!
//! Every write goes to a temporary file under `tmp/` (same filesystem), is
//! made durable, then renamed into place, so a crash never leaves a partial
//! object visible and concurrent writers of the same object are harmless:
//! both write identical bytes and the last rename wins.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use spfs_model::{Digest, Hasher, Object, PartialDigest};

use crate::error::{Result, StorageError};

/// The repository format this build writes.
pub const REPO_FORMAT: u32 = 1;

/// Files at most this large are read whole and hashed before anything is
/// written, so an existing payload costs no write at all.
pub const SMALL_FILE: u64 = 1 << 20;

/// A local repository.
#[derive(Debug, Clone)]
pub struct FsRepository {
    root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A payload written to a temporary file, not yet renamed into place.
#[derive(Debug)]
pub struct PendingPayload {
    pub digest: Digest,
    pub size: u64,
    tmp: Option<PathBuf>,
}

impl FsRepository {
    /// Create a repository at `root` (or open it if one is there).
    pub fn create(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        for sub in ["objects", "payloads", "tags", "runtimes", "tmp"] {
            fs::create_dir_all(root.join(sub))
                .map_err(StorageError::io("cannot create", root.join(sub)))?;
        }
        let version = root.join("VERSION");
        if !version.exists() {
            let repo = FsRepository {
                root: root.to_path_buf(),
            };
            repo.write_atomic(&version, format!("{REPO_FORMAT}\n").as_bytes())?;
        }
        Self::open(root)
    }

    /// Open an existing repository.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let version = root.join("VERSION");
        let text = match fs::read_to_string(&version) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::NoRepository(root.to_path_buf()));
            }
            Err(e) => return Err(StorageError::io("cannot read", &version)(e)),
        };
        let found: u32 = text
            .trim()
            .split('.')
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| StorageError::BadRecord {
                path: version.clone(),
                message: format!("not a format version: {:?}", text.trim()),
            })?;
        if found > REPO_FORMAT {
            return Err(StorageError::NewerFormat {
                path: root.to_path_buf(),
                found,
                supported: REPO_FORMAT,
            });
        }
        Ok(FsRepository {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn sharded(&self, area: &str, digest: &Digest) -> PathBuf {
        let text = digest.to_string();
        self.root.join(area).join(&text[..2]).join(&text[2..])
    }

    /// Where the encoded object `digest` is stored.
    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        self.sharded("objects", digest)
    }

    /// Where the bytes of blob `digest` are stored.
    pub fn payload_path(&self, digest: &Digest) -> PathBuf {
        self.sharded("payloads", digest)
    }

    pub fn has_object(&self, digest: &Digest) -> bool {
        self.object_path(digest).exists()
    }

    pub fn has_payload(&self, digest: &Digest) -> bool {
        self.payload_path(digest).exists()
    }

    /// A fresh temporary file in `tmp/`, created exclusively.
    pub(crate) fn temp_file(&self) -> Result<(File, PathBuf)> {
        let dir = self.root.join("tmp");
        loop {
            let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("{}-{n}", std::process::id()));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
            {
                Ok(f) => return Ok((f, path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    fs::create_dir_all(&dir).map_err(StorageError::io("cannot create", &dir))?;
                }
                Err(e) => return Err(StorageError::io("cannot create temporary file in", &dir)(e)),
            }
        }
    }

    /// Rename a complete temporary file to `dest`, creating the shard
    /// directory if needed. The caller has made the contents durable.
    fn place(&self, tmp: &Path, dest: &Path) -> Result<()> {
        match fs::rename(tmp, dest) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = dest.parent().unwrap_or(&self.root);
                fs::create_dir_all(parent).map_err(StorageError::io("cannot create", parent))?;
                fs::rename(tmp, dest).map_err(StorageError::io("cannot store", dest))
            }
            Err(e) => Err(StorageError::io("cannot store", dest)(e)),
        }
    }

    /// Write `bytes` to `dest` atomically and durably.
    pub fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let (mut f, tmp) = self.temp_file()?;
        let res = f
            .write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(StorageError::io("cannot write", &tmp))
            .and_then(|_| self.place(&tmp, dest));
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res?;
        sync_dir(dest.parent().unwrap_or(&self.root));
        Ok(())
    }

    /// Store an object; returns its digest. Storing an object that is already
    /// present writes nothing.
    pub fn write_object(&self, obj: &Object) -> Result<Digest> {
        let bytes = obj.encode();
        let digest = Digest::of(&bytes);
        let dest = self.object_path(&digest);
        if !dest.exists() {
            self.write_atomic(&dest, &bytes)?;
        }
        Ok(digest)
    }

    /// Read and decode an object.
    pub fn read_object(&self, digest: &Digest) -> Result<Object> {
        let path = self.object_path(digest);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::UnknownObject(*digest));
            }
            Err(e) => return Err(StorageError::io("cannot read", &path)(e)),
        };
        Object::decode(&bytes).map_err(|source| StorageError::Corrupt {
            digest: *digest,
            source,
        })
    }

    /// Open the bytes of a blob.
    pub fn open_payload(&self, digest: &Digest) -> Result<File> {
        let path = self.payload_path(digest);
        File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StorageError::UnknownObject(*digest),
            _ => StorageError::io("cannot open", &path)(e),
        })
    }

    /// Store a blob from memory, durably.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        let dest = self.payload_path(&digest);
        if !dest.exists() {
            self.write_atomic(&dest, bytes)?;
        }
        Ok(digest)
    }

    /// Store a blob from a reader, durably, reading it once.
    pub fn write_blob_from(&self, reader: &mut dyn Read) -> Result<(Digest, u64)> {
        let pending = self.stage_payload(reader, None)?;
        if let Some(tmp) = &pending.tmp {
            File::open(tmp)
                .and_then(|f| f.sync_all())
                .map_err(StorageError::io("cannot sync", tmp))?;
        }
        let out = (pending.digest, pending.size);
        self.commit_staged(vec![pending])?;
        Ok(out)
    }

    /// Hash `reader` while copying it to a temporary file (not yet durable).
    /// With a size hint at most [`SMALL_FILE`], the bytes are read whole and
    /// nothing is written when the payload already exists.
    pub fn stage_payload(
        &self,
        reader: &mut dyn Read,
        size_hint: Option<u64>,
    ) -> Result<PendingPayload> {
        let tmp_err = |path: &Path| StorageError::io("cannot write", path.to_path_buf());
        if let Some(hint) = size_hint.filter(|h| *h <= SMALL_FILE) {
            let mut buf = Vec::with_capacity(hint as usize + 1);
            reader
                .read_to_end(&mut buf)
                .map_err(|e| StorageError::io("cannot read", "(input)")(e))?;
            let digest = Digest::of(&buf);
            if self.has_payload(&digest) {
                return Ok(PendingPayload {
                    digest,
                    size: buf.len() as u64,
                    tmp: None,
                });
            }
            let (mut f, tmp) = self.temp_file()?;
            f.write_all(&buf).map_err(tmp_err(&tmp))?;
            return Ok(PendingPayload {
                digest,
                size: buf.len() as u64,
                tmp: Some(tmp),
            });
        }
        let (mut f, tmp) = self.temp_file()?;
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        let res: Result<()> = (|| loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StorageError::io("cannot read", "(input)")(e)),
            };
            hasher.update(&buf[..n]);
            f.write_all(&buf[..n]).map_err(tmp_err(&tmp))?;
            size += n as u64;
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let digest = hasher.finish();
        if self.has_payload(&digest) {
            let _ = fs::remove_file(&tmp);
            return Ok(PendingPayload {
                digest,
                size,
                tmp: None,
            });
        }
        Ok(PendingPayload {
            digest,
            size,
            tmp: Some(tmp),
        })
    }

    /// Make staged payloads durable (one `syncfs` for the whole batch) and
    /// rename them into place.
    pub fn commit_staged(&self, staged: Vec<PendingPayload>) -> Result<()> {
        if staged.iter().all(|p| p.tmp.is_none()) {
            return Ok(());
        }
        self.sync_filesystem()?;
        for p in staged {
            if let Some(tmp) = p.tmp {
                self.place(&tmp, &self.payload_path(&p.digest))?;
            }
        }
        // Make the renames themselves durable before anything refers to them.
        self.sync_filesystem()
    }

    /// Remove the temporary files of staged payloads that will not be used.
    pub fn discard_staged(&self, staged: Vec<PendingPayload>) {
        for p in staged {
            if let Some(tmp) = p.tmp {
                let _ = fs::remove_file(tmp);
            }
        }
    }

    /// Flush everything written to the repository's filesystem.
    pub fn sync_filesystem(&self) -> Result<()> {
        let f = File::open(&self.root).map_err(StorageError::io("cannot open", &self.root))?;
        rustix::fs::syncfs(&f).map_err(|e| StorageError::io("cannot sync", &self.root)(e.into()))
    }

    /// Every digest stored in `area` ("objects" or "payloads").
    fn list_area(&self, area: &str, prefix: &str) -> Result<Vec<Digest>> {
        let base = self.root.join(area);
        let mut out = Vec::new();
        let shards = match fs::read_dir(&base) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(StorageError::io("cannot list", &base)(e)),
        };
        for shard in shards {
            let shard = shard.map_err(StorageError::io("cannot list", &base))?;
            let sname = shard.file_name().to_string_lossy().into_owned();
            let common = prefix.len().min(2);
            if sname.len() != 2 || sname[..common] != prefix[..common] {
                continue;
            }
            let sdir = shard.path();
            for item in fs::read_dir(&sdir).map_err(StorageError::io("cannot list", &sdir))? {
                let item = item.map_err(StorageError::io("cannot list", &sdir))?;
                let full = format!("{sname}{}", item.file_name().to_string_lossy());
                if full.starts_with(prefix)
                    && let Ok(d) = Digest::parse(&full)
                {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Every encoded object's digest.
    pub fn objects(&self) -> Result<Vec<Digest>> {
        self.list_area("objects", "")
    }

    /// Every payload's digest.
    pub fn payloads(&self) -> Result<Vec<Digest>> {
        self.list_area("payloads", "")
    }

    /// The one object or payload whose digest starts with `partial`.
    pub fn resolve_partial(&self, partial: &PartialDigest) -> Result<Digest> {
        if let Some(full) = partial.to_full() {
            return Ok(full);
        }
        let mut found = self.list_area("objects", partial.as_str())?;
        found.extend(self.list_area("payloads", partial.as_str())?);
        found.sort();
        found.dedup();
        match found.len() {
            0 => Err(StorageError::UnknownReference(partial.to_string())),
            1 => Ok(found[0]),
            count => Err(StorageError::AmbiguousDigest {
                prefix: partial.to_string(),
                count,
            }),
        }
    }
}

/// Make a directory's entries durable (best effort: some filesystems refuse).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_and_blobs_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let d = repo.write_blob(b"hello").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert_eq!(fs::read(repo.payload_path(&d)).unwrap(), b"hello");
        let (d2, n) = repo.write_blob_from(&mut &b"hello"[..]).unwrap();
        assert_eq!((d2, n), (d, 5));
        let obj = Object::Platform(spfs_model::Platform { stack: vec![d] });
        let od = repo.write_object(&obj).unwrap();
        assert_eq!(repo.read_object(&od).unwrap(), obj);
        assert_eq!(
            repo.resolve_partial(&PartialDigest::parse(&od.short(10)).unwrap())
                .unwrap(),
            od
        );
        assert!(
            fs::read_dir(repo.root().join("tmp"))
                .unwrap()
                .next()
                .is_none(),
            "no temp files left"
        );
    }

    #[test]
    fn missing_and_newer_repositories() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            FsRepository::open(dir.path()),
            Err(StorageError::NoRepository(_))
        ));
        fs::write(dir.path().join("VERSION"), "7\n").unwrap();
        let err = FsRepository::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StorageError::NewerFormat { found: 7, .. }),
            "{err}"
        );
    }

    #[test]
    fn corrupt_object_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path()).unwrap();
        let obj = Object::Platform(spfs_model::Platform::default());
        let d = repo.write_object(&obj).unwrap();
        fs::write(repo.object_path(&d), b"SPFS\x01\x00\x03garbage").unwrap();
        assert!(matches!(
            repo.read_object(&d),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
