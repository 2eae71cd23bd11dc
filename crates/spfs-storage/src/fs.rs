//! The local repository: a directory of objects, payloads, tags and runtimes.
//!
//! ```text
//! ROOT/VERSION             format version of the repository ("1")
//! ROOT/objects/AB/CDEF…    encoded manifests, layers, platforms (sharded by digest)
//! ROOT/payloads/AB/CDEF…   blob bytes everyone may read (0444)
//! ROOT/payloads/AB/CDEF….u1001  user 1001's private copy (0400)
//! ROOT/tags/org/name.tag   tag history, one version a line, newest last
//! ROOT/runtimes/NAME.json  records of running environments
//! ROOT/locks/gc            the garbage-collection lock ([`crate::gc`])
//! ROOT/tmp/                temporary files, renamed into place when complete
//! ```
//!
//! Every write goes to a temporary file under `tmp/` (same filesystem), is
//! made durable, then renamed into place, so a crash never leaves a partial
//! object visible and concurrent writers of the same object are harmless:
//! both write identical bytes, and a name already taken by a regular file
//! is as good as a new copy.
//!
//! Every path below the root is opened relative to a descriptor of the root
//! without following a symlink anywhere ([`crate::beneath`]), so that a
//! repository can be shared by users who do not trust each other
//! ([`crate::shared`]). Files get exact modes whatever the umask: objects
//! (names, modes and digests; no file contents) 0444, records (`VERSION`,
//! tags, runtime records) 0644, and a payload 0444 under its digest's name
//! only if the file it was committed from was readable by others, and
//! otherwise 0400 under a name of the committer's own ([`Readers`],
//! [`crate::payload`]).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use spfs_model::{Digest, Hasher, Object, PartialDigest};

use crate::beneath;
use crate::error::{Result, StorageError};
use crate::payload::{PayloadCopy, split_name};
use crate::shared::Sharing;

/// The repository format this build writes.
pub const REPO_FORMAT: u32 = 1;

/// Files at most this large are read whole and hashed before anything is
/// written, so an existing payload costs no write at all.
pub const SMALL_FILE: u64 = 1 << 20;

/// The mode of objects: read-only, readable by all.
const OBJECT_MODE: u32 = 0o444;
/// The mode of records: `VERSION`, tag histories, runtime records.
const RECORD_MODE: u32 = 0o644;
/// The mode of records only their owner may read.
const PRIVATE_RECORD_MODE: u32 = 0o600;
/// The mode of a temporary file until it has its final mode.
const TEMP_MODE: u32 = 0o600;

/// A local repository.
#[derive(Debug, Clone)]
pub struct FsRepository {
    root: PathBuf,
    /// The root directory: every path below it is opened from here.
    dir: Arc<OwnedFd>,
    sharing: Sharing,
}

/// Who may read a payload straight from the repository's files, and so be
/// served it through a view ([`crate::payload`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readers {
    /// Everyone (the public copy, 0444): the file it came from was
    /// readable by others.
    Everyone,
    /// Its writer and root (the writer's private copy, 0400).
    Owner,
}

impl Readers {
    /// From the mode of the file a payload comes from: its other-read bit.
    pub fn of_mode(mode: u32) -> Readers {
        if mode & 0o004 != 0 {
            Readers::Everyone
        } else {
            Readers::Owner
        }
    }
}

/// What [`FsRepository::write_atomic`] writes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Written {
    /// An encoded object, named by its content.
    Object,
    /// A copy of a blob, named by its content and whose it is.
    Payload(PayloadCopy),
    /// A record replacing its previous version (`VERSION`, a tag history, a
    /// runtime record), owned by `keep_owner` when given (root rewriting a
    /// user's tag leaves it the user's).
    Record { keep_owner: Option<u32> },
    /// A record only its owner (and root) may read: a runtime record names
    /// a command line, which may hold secrets. Owned as `Record`'s.
    PrivateRecord { keep_owner: Option<u32> },
}

/// What renaming onto a name that is taken means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Taken {
    /// Replace it: a record.
    Replace,
    /// Keep it: the name is the digest of the content, so a regular file
    /// already there (another user's, which a sticky directory does not let
    /// us replace) holds the same bytes, or is found corrupt by its name.
    Keep,
    /// Keep it if it is this copy of a payload (the same bytes, as above,
    /// for the same readers): a public copy, or the writer's own.
    KeepCopy(PayloadCopy),
}

impl Taken {
    /// Whether the file `name` already in `dir` stands for the one we meant
    /// to put there.
    fn keeps(self, dir: BorrowedFd<'_>, name: &OsStr) -> bool {
        match self {
            Taken::Replace => false,
            Taken::Keep => beneath::is_regular(dir, Path::new(name)),
            Taken::KeepCopy(copy) => beneath::stat(dir, Path::new(name))
                .is_ok_and(|st| PayloadCopy::of(copy.named(), &st) == Some(copy)),
        }
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How old a temporary file of another host or PID namespace must be
/// before it is taken for abandoned.
const FOREIGN_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Who writes temporary files: (boot id, PID namespace, PID). A PID alone
/// means nothing to a process in another namespace or on another host.
fn writer_identity() -> (String, u64, i32) {
    static ID: std::sync::OnceLock<(String, u64)> = std::sync::OnceLock::new();
    let (boot, ns) = ID.get_or_init(|| {
        let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|b| b.trim().replace('-', "").chars().take(12).collect())
            .unwrap_or_else(|_| "noboot".into());
        let ns = fs::metadata("/proc/self/ns/pid")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or(0);
        (boot, ns)
    });
    (boot.clone(), *ns, std::process::id() as i32)
}

/// The owner part of this process's temporary file names.
fn temp_owner() -> String {
    let (boot, ns, pid) = writer_identity();
    format!("{boot}.{ns}.{pid}")
}

/// `BOOT.NS.PID` back into its parts.
fn parse_owner(owner: &str) -> Option<(String, u64, i32)> {
    let mut parts = owner.split('.');
    let boot = parts.next()?.to_string();
    let ns = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((boot, ns, pid))
}

/// A payload written to a temporary file, not yet renamed into place.
#[derive(Debug)]
pub struct PendingPayload {
    pub digest: Digest,
    pub size: u64,
    /// The copy it becomes (public, or its writer's).
    copy: PayloadCopy,
    /// The temporary file's name in `tmp/`.
    tmp: Option<OsString>,
    /// Whether the temporary copy is already durable.
    synced: bool,
}

/// Where `VERSION` is, below the root.
const VERSION: &str = "VERSION";
/// Where temporary files are, below the root.
const TMP: &str = "tmp";

impl FsRepository {
    /// Create a repository at `root` (or open it if one is there).
    pub fn create(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        for sub in ["objects", "payloads", "tags", "runtimes", TMP] {
            fs::create_dir_all(root.join(sub))
                .map_err(StorageError::io("cannot create", root.join(sub)))?;
        }
        let repo = Self::at(root)?;
        // The garbage-collection lock's files ([`crate::gc`]): made here
        // in a private repository; in a shared one only root may (users
        // of one laid out before them are told to ask root for them).
        if repo.sharing == Sharing::Private || rustix::process::geteuid().is_root() {
            repo.make_lock_files()?;
        }
        if !beneath::is_regular(repo.fd(), Path::new(VERSION)) {
            repo.write_atomic(
                Path::new(VERSION),
                format!("{REPO_FORMAT}\n").as_bytes(),
                Written::Record { keep_owner: None },
            )?;
        }
        Self::open(root)
    }

    /// The repository at `root`, not yet checked.
    fn at(root: &Path) -> Result<Self> {
        let dir = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT => StorageError::NoRepository(root.to_path_buf()),
            e => StorageError::io("cannot open", root)(e.into()),
        })?;
        let tmp = rustix::fs::statat(&dir, TMP, AtFlags::SYMLINK_NOFOLLOW).ok();
        Ok(FsRepository {
            root: root.to_path_buf(),
            sharing: Sharing::of_tmp(tmp.as_ref()),
            dir: Arc::new(dir),
        })
    }

    /// Open an existing repository.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let repo = Self::at(root.as_ref())?;
        let version = repo.root.join(VERSION);
        let mut text = String::new();
        repo.open_regular(Path::new(VERSION), || {
            StorageError::NoRepository(repo.root.clone())
        })?
        .read_to_string(&mut text)
        .map_err(StorageError::io("cannot read", &version))?;
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
                path: repo.root.clone(),
                found,
                supported: REPO_FORMAT,
            });
        }
        Ok(repo)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether many users write into this repository.
    pub fn sharing(&self) -> Sharing {
        self.sharing
    }

    /// The root directory, which paths below it are opened from.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// An I/O error about `rel`, below the root.
    pub(crate) fn io_err(
        &self,
        context: &'static str,
        rel: &Path,
    ) -> impl FnOnce(std::io::Error) -> StorageError + use<> {
        StorageError::io(context, self.root.join(rel))
    }

    /// Open the regular file `rel` below the root for reading (no symlink
    /// anywhere, no fifo or device); a missing one is `missing()`.
    pub(crate) fn open_regular(
        &self,
        rel: &Path,
        missing: impl FnOnce() -> StorageError,
    ) -> Result<File> {
        beneath::open_regular(self.fd(), rel).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => missing(),
            _ => self.io_err("cannot open", rel)(e),
        })
    }

    /// Open the directory `rel` below the root; a missing one is made as
    /// `new` says (with its parents), or is an error when `new` is `None`.
    /// Returns the directory and whether it was made.
    pub(crate) fn open_dir(
        &self,
        rel: &Path,
        new: Option<beneath::NewDirs>,
    ) -> Result<(OwnedFd, bool)> {
        match beneath::open_dir(self.fd(), rel) {
            Ok(dir) => Ok((dir, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match new {
                Some(new) => beneath::make_dirs(self.fd(), rel, new)
                    .map_err(self.io_err("cannot create", rel)),
                None => Err(StorageError::MissingDirectory(self.root.join(rel))),
            },
            Err(e) => Err(self.io_err("cannot open", rel)(e)),
        }
    }

    /// Make the entries of directory `rel` (below the root) durable.
    pub(crate) fn sync_rel(&self, rel: &Path) -> Result<()> {
        let res = beneath::open_dir(self.fd(), rel).and_then(|d| File::from(d).sync_all());
        sync_result(res, &self.root.join(rel))
    }

    fn sharded(area: &str, digest: &Digest) -> PathBuf {
        let text = digest.to_string();
        Path::new(area).join(&text[..2]).join(&text[2..])
    }

    /// When the object `digest` was stored: its file's modification time
    /// (reached without following symlinks).
    pub fn object_mtime(&self, digest: &Digest) -> Result<std::time::SystemTime> {
        let rel = Self::sharded("objects", digest);
        beneath::open_regular(self.fd(), &rel)
            .and_then(|f| f.metadata()?.modified())
            .map_err(self.io_err("cannot read", &rel))
    }

    /// Where the encoded object `digest` is stored.
    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(Self::sharded("objects", digest))
    }

    /// Where the public copy of blob `digest` is stored (private copies:
    /// [`FsRepository::private_payload_path`]).
    pub fn payload_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(Self::payload_rel(digest, None))
    }

    /// Whether object `digest` is stored (a regular file, reached without
    /// symlinks).
    pub fn has_object(&self, digest: &Digest) -> bool {
        beneath::is_regular(self.fd(), &Self::sharded("objects", digest))
    }

    /// A fresh temporary file in `tmp/`, created exclusively, with exactly
    /// `mode` (whatever the umask); returns it and its name.
    pub(crate) fn temp_file(&self, mode: u32) -> Result<(File, OsString)> {
        let (dir, _) = self.open_dir(Path::new(TMP), self.sharing.new_shards())?;
        loop {
            let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("{}-{n}", temp_owner());
            match rustix::fs::openat(
                &dir,
                &name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(TEMP_MODE),
            ) {
                Ok(fd) => {
                    let file = File::from(fd);
                    let name = OsString::from(name);
                    if let Err(e) = rustix::fs::fchmod(&file, Mode::from_raw_mode(mode)) {
                        self.remove_temp(&name);
                        return Err(self
                            .io_err("cannot set the mode of", &Path::new(TMP).join(&name))(
                            e.into(),
                        ));
                    }
                    return Ok((file, name));
                }
                Err(Errno::EXIST) => continue,
                Err(e) => {
                    return Err(self
                        .io_err("cannot create temporary file in", Path::new(TMP))(
                        e.into(),
                    ));
                }
            }
        }
    }

    /// Remove temporary file `name` (best effort).
    fn remove_temp(&self, name: &OsStr) {
        if let Ok(dir) = beneath::open_dir(self.fd(), Path::new(TMP)) {
            let _ = rustix::fs::unlinkat(&dir, name, AtFlags::empty());
        }
    }

    /// Remove the temporary files left in `tmp/` by processes that died
    /// (a killed commit, a crash); returns how many were removed. A file is
    /// named after its writer: boot, PID namespace and PID. Files of this
    /// boot and namespace are removed once that PID is gone; files of other
    /// hosts or namespaces (containers sharing the repository), whose PIDs
    /// mean nothing here, only when they are a day old. In a shared
    /// repository only root and each file's owner can remove it.
    pub fn remove_stale_temp_files(&self) -> Result<usize> {
        let dir = match beneath::open_dir(self.fd(), Path::new(TMP)) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(self.io_err("cannot open", Path::new(TMP))(e)),
        };
        let path = self.root.join(TMP);
        let rd = match fs::read_dir(&path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StorageError::io("cannot list", &path)(e)),
        };
        let (boot, ns, _) = writer_identity();
        let mut removed = 0;
        for item in rd {
            let item = item.map_err(StorageError::io("cannot list", &path))?;
            let name = item.file_name();
            let Some((w_boot, w_ns, pid)) = name
                .to_str()
                .and_then(|n| n.rsplit_once('-'))
                .and_then(|(owner, _)| parse_owner(owner))
            else {
                continue;
            };
            let stale = if w_boot == boot && w_ns == ns {
                rustix::process::Pid::from_raw(pid).is_some_and(|p| {
                    matches!(
                        rustix::process::test_kill_process(p),
                        Err(rustix::io::Errno::SRCH)
                    )
                })
            } else {
                item.metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > FOREIGN_TEMP_AGE)
            };
            if stale && rustix::fs::unlinkat(&dir, &name, AtFlags::empty()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Rename the complete temporary file `tmp` to `dest` (below the root);
    /// returns whether a directory was made for it (only in a private
    /// repository: a shared one has every shard). The caller has made the
    /// contents durable, and removes `tmp` on error.
    fn place(&self, tmp: &OsStr, dest: &Path, taken: Taken) -> Result<bool> {
        let (tmp_dir, _) = self.open_dir(Path::new(TMP), None)?;
        let (parent, name) = beneath::split(dest).map_err(self.io_err("cannot store", dest))?;
        let (dir, made) = self.open_dir(parent, self.sharing.new_shards())?;
        match rustix::fs::renameat(&tmp_dir, tmp, &dir, name) {
            Ok(()) => Ok(made),
            Err(Errno::PERM | Errno::ACCESS) if taken.keeps(dir.as_fd(), name) => {
                self.remove_temp(tmp);
                Ok(made)
            }
            Err(e) => Err(self.io_err("cannot store", dest)(e.into())),
        }
    }

    /// Write `bytes` to `dest` (below the root) atomically and durably.
    pub(crate) fn write_atomic(&self, dest: &Path, bytes: &[u8], what: Written) -> Result<()> {
        let (mode, taken, owner) = match what {
            Written::Object => (OBJECT_MODE, Taken::Keep, None),
            Written::Payload(copy) => (copy.mode(), Taken::KeepCopy(copy), None),
            Written::Record { keep_owner } => (RECORD_MODE, Taken::Replace, keep_owner),
            Written::PrivateRecord { keep_owner } => {
                (PRIVATE_RECORD_MODE, Taken::Replace, keep_owner)
            }
        };
        let (mut f, tmp) = self.temp_file(mode)?;
        let res = f
            .write_all(bytes)
            .and_then(|_| match owner {
                Some(uid) => {
                    rustix::fs::fchown(&f, Some(rustix::fs::Uid::from_raw(uid)), None)?;
                    Ok(())
                }
                None => Ok(()),
            })
            .and_then(|_| f.sync_all())
            .map_err(self.io_err("cannot write", &Path::new(TMP).join(&tmp)))
            .and_then(|_| self.place(&tmp, dest, taken));
        let made = match res {
            Ok(made) => made,
            Err(e) => {
                self.remove_temp(&tmp);
                return Err(e);
            }
        };
        let parent = dest.parent().unwrap_or(Path::new(""));
        self.sync_rel(parent)?;
        if made {
            self.sync_rel(parent.parent().unwrap_or(Path::new("")))?;
        }
        Ok(())
    }

    /// Store an object; returns its digest. Storing an object that is already
    /// present writes nothing.
    pub fn write_object(&self, obj: &Object) -> Result<Digest> {
        let bytes = obj.encode();
        let digest = Digest::of(&bytes);
        if !self.has_object(&digest) {
            self.write_atomic(&Self::sharded("objects", &digest), &bytes, Written::Object)?;
        }
        Ok(digest)
    }

    /// Open the stored object `digest` (a regular file, no symlink).
    fn open_object(&self, digest: &Digest) -> Result<File> {
        self.open_regular(&Self::sharded("objects", digest), || {
            StorageError::UnknownObject(*digest)
        })
    }

    /// Read and decode an object.
    pub fn read_object(&self, digest: &Digest) -> Result<Object> {
        let bytes = self.read_object_raw(digest)?;
        Object::decode(&bytes).map_err(|source| decode_error(*digest, source))
    }

    /// The encoded bytes of an object, checked against its digest.
    pub fn read_object_raw(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.open_object(digest)?
            .read_to_end(&mut bytes)
            .map_err(StorageError::io("cannot read", self.object_path(digest)))?;
        // The name is the hash of the content: anything else is corrupt,
        // even if it still decodes.
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(StorageError::Corrupt {
                digest: *digest,
                source: spfs_model::DecodeError::Invalid(format!("content hashes to {actual}")),
            });
        }
        Ok(bytes)
    }

    /// The kind of a stored object from its header alone (not decoding
    /// the body).
    pub fn peek_kind(&self, digest: &Digest) -> Result<spfs_model::ObjectKind> {
        let f = self.open_object(digest)?;
        let mut head = Vec::with_capacity(spfs_model::encoding::HEADER_LEN);
        f.take(spfs_model::encoding::HEADER_LEN as u64)
            .read_to_end(&mut head)
            .map_err(StorageError::io("cannot read", self.object_path(digest)))?;
        spfs_model::ObjectKind::peek(&head).map_err(|source| decode_error(*digest, source))
    }

    /// Store a blob from memory, durably, readable by its writer only
    /// (nothing says where the bytes came from).
    pub fn write_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        let copy = PayloadCopy::written_by(Readers::Owner, euid());
        if !self.payload_stored_for(&digest, copy) {
            self.write_atomic(
                &Self::payload_rel(&digest, copy.named()),
                bytes,
                Written::Payload(copy),
            )?;
        }
        Ok(digest)
    }

    /// Store a blob from a reader, durably, reading it once; a new payload
    /// file is readable by `readers`.
    pub fn write_blob_from(
        &self,
        reader: &mut dyn Read,
        readers: Readers,
    ) -> Result<(Digest, u64)> {
        let pending = self.stage_payload(reader, None, readers)?;
        let out = (pending.digest, pending.size);
        self.commit_staged(vec![pending])?;
        Ok(out)
    }

    /// Hash `reader` while copying it to a temporary file readable by
    /// `readers`: the public copy, or this user's private one (nothing is
    /// written where a public copy, or for a private file this user's own
    /// copy, is stored already).
    ///
    /// With a size hint at most [`SMALL_FILE`], the bytes are read whole and
    /// nothing is written when the payload already exists; the copy is not
    /// yet durable ([`FsRepository::commit_staged`] makes a batch durable
    /// at once). Anything larger is streamed: hashing and writing run in
    /// two threads, the kernel is asked to start writing back as the copy
    /// grows, and the copy is made durable here, so that the disk works
    /// while the CPU hashes.
    pub fn stage_payload(
        &self,
        reader: &mut dyn Read,
        size_hint: Option<u64>,
        readers: Readers,
    ) -> Result<PendingPayload> {
        self.stage_payload_for(reader, size_hint, readers, None)
    }

    /// [`FsRepository::stage_payload`] of a payload whose private copy (if
    /// `readers` makes one) is `owner`'s rather than this process's user's
    /// (root storing files of a user's runtime).
    pub fn stage_payload_for(
        &self,
        reader: &mut dyn Read,
        size_hint: Option<u64>,
        readers: Readers,
        owner: Option<u32>,
    ) -> Result<PendingPayload> {
        let tmp_err = |name: &OsStr| self.io_err("cannot write", &Path::new(TMP).join(name));
        let copy = PayloadCopy::written_by(readers, owner.unwrap_or_else(euid));
        // A private copy of another user's is that user's file.
        let give = |f: &File, tmp: &OsStr| -> Result<()> {
            match copy {
                PayloadCopy::Private(uid) if uid != euid() => {
                    rustix::fs::fchown(f, Some(rustix::fs::Uid::from_raw(uid)), None)
                        .map_err(|e| tmp_err(tmp)(e.into()))
                }
                _ => Ok(()),
            }
        };
        if let Some(hint) = size_hint.filter(|h| *h <= SMALL_FILE) {
            let mut buf = Vec::with_capacity(hint as usize + 1);
            reader
                .read_to_end(&mut buf)
                .map_err(|e| StorageError::io("cannot read", "(input)")(e))?;
            let digest = Digest::of(&buf);
            if self.payload_stored_for(&digest, copy) {
                return Ok(PendingPayload {
                    digest,
                    size: buf.len() as u64,
                    copy,
                    tmp: None,
                    synced: false,
                });
            }
            let (mut f, tmp) = self.temp_file(copy.mode())?;
            if let Err(e) = give(&f, &tmp) {
                drop(f);
                self.remove_temp(&tmp);
                return Err(e);
            }
            if let Err(e) = f.write_all(&buf) {
                drop(f);
                self.remove_temp(&tmp);
                return Err(tmp_err(&tmp)(e));
            }
            return Ok(PendingPayload {
                digest,
                size: buf.len() as u64,
                copy,
                tmp: Some(tmp),
                synced: false,
            });
        }
        let (f, tmp) = self.temp_file(copy.mode())?;
        if let Err(e) = give(&f, &tmp) {
            drop(f);
            self.remove_temp(&tmp);
            return Err(e);
        }
        let (digest, size) = match copy_hashing(reader, f) {
            Ok(done) => done,
            Err(e) => {
                self.remove_temp(&tmp);
                return Err(match e {
                    CopyError::Read(e) => StorageError::io("cannot read", "(input)")(e),
                    CopyError::Write(e) => tmp_err(&tmp)(e),
                });
            }
        };
        if self.payload_stored_for(&digest, copy) {
            self.remove_temp(&tmp);
            return Ok(PendingPayload {
                digest,
                size,
                copy,
                tmp: None,
                synced: false,
            });
        }
        Ok(PendingPayload {
            digest,
            size,
            copy,
            tmp: Some(tmp),
            synced: true,
        })
    }

    /// Make staged payloads durable and rename them into place, then make
    /// the new names durable. Unsynced copies share one `syncfs`; when only
    /// a few files are placed, their directories are synced rather than the
    /// whole filesystem (which would also flush other programs' writes).
    pub fn commit_staged(&self, staged: Vec<PendingPayload>) -> Result<()> {
        let pending: Vec<(OsString, Digest, bool, PayloadCopy)> = staged
            .into_iter()
            .filter_map(|p| p.tmp.map(|t| (t, p.digest, p.synced, p.copy)))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if pending.iter().any(|(_, _, synced, _)| !synced) {
            self.sync_filesystem()?;
        }
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        let many = pending.len() > FEW_FILES;
        let mut result = Ok(());
        for (tmp, digest, _, copy) in &pending {
            if result.is_err() {
                self.remove_temp(tmp);
                continue;
            }
            let dest = Self::payload_rel(digest, copy.named());
            match self.place(tmp, &dest, Taken::KeepCopy(*copy)) {
                Ok(made_shard) if !many => {
                    let shard = dest.parent().unwrap_or(Path::new("")).to_path_buf();
                    if made_shard {
                        dirs.insert(shard.parent().unwrap_or(Path::new("")).to_path_buf());
                    }
                    dirs.insert(shard);
                }
                Ok(_) => {}
                Err(e) => {
                    self.remove_temp(tmp);
                    result = Err(e);
                }
            }
        }
        result?;
        // Make the renames themselves durable before anything refers to them.
        if many {
            self.sync_filesystem()
        } else {
            dirs.iter().try_for_each(|dir| self.sync_rel(dir))
        }
    }

    /// Remove the temporary files of staged payloads that will not be used.
    pub fn discard_staged(&self, staged: Vec<PendingPayload>) {
        for p in staged {
            if let Some(tmp) = p.tmp {
                self.remove_temp(&tmp);
            }
        }
    }

    /// Flush everything written to the repository's filesystem.
    pub fn sync_filesystem(&self) -> Result<()> {
        rustix::fs::syncfs(self.fd())
            .map_err(|e| StorageError::io("cannot sync", &self.root)(e.into()))
    }

    /// Every digest stored in `area` ("objects" or "payloads"; each payload
    /// once, whatever its copies).
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
            // Compare bytes: a stray non-ASCII name must not split a char.
            let common = prefix.len().min(2);
            if sname.len() != 2 || sname.as_bytes()[..common] != prefix.as_bytes()[..common] {
                continue;
            }
            let sdir = shard.path();
            for item in fs::read_dir(&sdir).map_err(StorageError::io("cannot list", &sdir))? {
                let item = item.map_err(StorageError::io("cannot list", &sdir))?;
                let name = item.file_name();
                let name = name.to_string_lossy();
                // A private copy's name is its digest's with a suffix.
                let digest_part = match area {
                    "payloads" => split_name(&name).0,
                    _ => &name,
                };
                let full = format!("{sname}{digest_part}");
                if full.starts_with(prefix)
                    && let Ok(d) = Digest::parse(&full)
                {
                    out.push(d);
                }
            }
        }
        out.sort();
        out.dedup();
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
            if self.has_object(&full) || self.has_payload(&full) {
                return Ok(full);
            }
            return Err(StorageError::UnknownReference(partial.to_string()));
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

/// This process's effective user (this thread's, on Linux).
fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// When at most this many payloads are placed at once, their directories
/// are synced one by one instead of the whole filesystem.
const FEW_FILES: usize = 64;

/// The size of the buffers a streamed copy moves between its threads.
const COPY_CHUNK: usize = 4 << 20;

/// The alignment of memory, offsets and lengths that direct I/O needs.
const DIRECT_ALIGN: usize = 4096;

/// How much a buffered copy writes before it asks the kernel to start
/// writing that part back to the disk.
const WRITEBACK_STEP: u64 = 16 << 20;

enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// A buffer of [`COPY_CHUNK`] bytes whose data starts at an address aligned
/// for direct I/O.
struct Chunk {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl Chunk {
    fn new() -> Chunk {
        let mem = vec![0u8; COPY_CHUNK + DIRECT_ALIGN];
        // Never more than DIRECT_ALIGN - 1 for bytes; 0 (unaligned, then
        // the writer uses buffered I/O) if the platform cannot say.
        let start = Some(mem.as_ptr().align_offset(DIRECT_ALIGN))
            .filter(|o| *o < DIRECT_ALIGN)
            .unwrap_or(0);
        Chunk { mem, start, len: 0 }
    }
    fn space(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + COPY_CHUNK]
    }
    fn data(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
}

/// Writes the chunks of a streamed copy to its temporary file.
///
/// Whole, aligned chunks are written with direct I/O where the filesystem
/// allows it: the copy then skips the page cache (which it would only fill
/// with pages nobody reads soon) and the disk works while the other thread
/// hashes. Otherwise, and for the tail, writes are buffered and write-back
/// is started as the file grows. Either way the file is made durable at the
/// end.
struct ChunkWriter {
    file: File,
    offset: u64,
    direct: bool,
    kicked: u64,
}

impl ChunkWriter {
    fn new(file: File) -> ChunkWriter {
        let direct = rustix::fs::fcntl_getfl(&file)
            .and_then(|fl| rustix::fs::fcntl_setfl(&file, fl | rustix::fs::OFlags::DIRECT))
            .is_ok();
        ChunkWriter {
            file,
            offset: 0,
            direct,
            kicked: 0,
        }
    }

    fn buffered(&mut self) {
        if self.direct {
            self.direct = false;
            let _ = rustix::fs::fcntl_getfl(&self.file).and_then(|fl| {
                rustix::fs::fcntl_setfl(&self.file, fl - rustix::fs::OFlags::DIRECT)
            });
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let aligned = data.len().is_multiple_of(DIRECT_ALIGN)
            && (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
            && self.offset.is_multiple_of(DIRECT_ALIGN as u64);
        if self.direct && !aligned {
            self.buffered();
        }
        match self.file.write_all_at(data, self.offset) {
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                // The filesystem refuses direct I/O after all.
                self.buffered();
                self.file.write_all_at(data, self.offset)?;
            }
            other => other?,
        }
        self.offset += data.len() as u64;
        if !self.direct && self.offset - self.kicked >= WRITEBACK_STEP {
            start_writeback(&self.file, self.kicked, self.offset - self.kicked);
            self.kicked = self.offset;
        }
        Ok(())
    }

    fn finish(self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// Read `reader` to its end once, hashing on this thread while another
/// thread writes the same buffers to `file` (see [`ChunkWriter`]) and
/// finally makes it durable. Returns the digest and size.
fn copy_hashing(
    reader: &mut dyn Read,
    file: File,
) -> std::result::Result<(Digest, u64), CopyError> {
    use std::sync::mpsc;
    let (full_tx, full_rx) = mpsc::sync_channel::<Chunk>(2);
    let (empty_tx, empty_rx) = mpsc::channel::<Chunk>();
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> std::io::Result<()> {
            let mut out = ChunkWriter::new(file);
            for chunk in full_rx {
                out.write(chunk.data())?;
                // The reader may be gone after an error; then drop the buffer.
                let _ = empty_tx.send(chunk);
            }
            out.finish()
        });
        let mut hasher = Hasher::new();
        let mut size = 0u64;
        let read_result: std::io::Result<()> = (|| {
            loop {
                let mut chunk = empty_rx.try_recv().unwrap_or_else(|_| Chunk::new());
                let space = chunk.space();
                let mut filled = 0;
                while filled < space.len() {
                    match reader.read(&mut space[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                if filled == 0 {
                    return Ok(());
                }
                chunk.len = filled;
                hasher.update(chunk.data());
                size += filled as u64;
                if full_tx.send(chunk).is_err() {
                    // The writer stopped: its error is reported below.
                    return Ok(());
                }
            }
        })();
        drop(full_tx);
        let write_result = writer
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the writer thread panicked")));
        read_result.map_err(CopyError::Read)?;
        write_result.map_err(CopyError::Write)?;
        Ok((hasher.finish(), size))
    })
}

/// Ask the kernel to start writing a range of `file` back (not waiting).
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call; the
    // call only schedules write-back and touches no memory of ours.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as _,
            len as _,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Why object `digest` did not decode: a format newer than this build
/// reads is not corruption.
pub(crate) fn decode_error(digest: Digest, source: spfs_model::DecodeError) -> StorageError {
    match source {
        spfs_model::DecodeError::UnsupportedVersion(v)
            if v > spfs_model::encoding::FORMAT_VERSION =>
        {
            StorageError::NewerObject { digest, source }
        }
        source => StorageError::Corrupt { digest, source },
    }
}

/// The outcome of syncing directory `dir`: filesystems that cannot sync a
/// directory (EINVAL, EROFS) are accepted; a real I/O error is not.
fn sync_result(res: std::io::Result<()>, dir: &Path) -> Result<()> {
    match res {
        Err(e)
            if !matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::EROFS | libc::EBADF)
            ) =>
        {
            Err(StorageError::io("cannot sync", dir)(e))
        }
        _ => Ok(()),
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
        assert_eq!(stored(&repo, &d), b"hello");
        let (d2, n) = repo
            .write_blob_from(&mut &b"hello"[..], Readers::Everyone)
            .unwrap();
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

    /// A reader that fails after `left` bytes.
    struct Failing {
        left: usize,
    }

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.left == 0 {
                return Err(std::io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.left).min(1000);
            buf[..n].fill(b'x');
            self.left -= n;
            Ok(n)
        }
    }

    /// The bytes of blob `d`, as this user reads them.
    fn stored(repo: &FsRepository, d: &Digest) -> Vec<u8> {
        let mut out = Vec::new();
        repo.open_payload(d).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    fn tmp_is_empty(repo: &FsRepository) -> bool {
        fs::read_dir(repo.root().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    }

    #[test]
    fn streamed_copies_of_every_shape() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let sizes = [
            0,
            1,
            DIRECT_ALIGN - 1,
            DIRECT_ALIGN,
            DIRECT_ALIGN + 1,
            COPY_CHUNK - 1,
            COPY_CHUNK,
            COPY_CHUNK + 1,
            3 * COPY_CHUNK + 4097,
        ];
        for (i, size) in sizes.into_iter().enumerate() {
            let data: Vec<u8> = (0..size).map(|j| (j * 31 + i) as u8).collect();
            // A reader that returns short reads, as pipes do.
            let mut reader = std::io::BufReader::with_capacity(777, &data[..]);
            let (d, n) = repo.write_blob_from(&mut reader, Readers::Owner).unwrap();
            assert_eq!((d, n), (Digest::of(&data), size as u64), "size {size}");
            assert!(stored(&repo, &d) == data, "size {size}");
            // Again: already stored, nothing left behind.
            assert_eq!(
                repo.write_blob_from(&mut &data[..], Readers::Owner)
                    .unwrap()
                    .0,
                d
            );
        }
        assert!(tmp_is_empty(&repo));
    }

    #[test]
    fn failed_reads_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        for left in [0, 10, COPY_CHUNK + 5] {
            let err = repo
                .write_blob_from(&mut Failing { left }, Readers::Owner)
                .unwrap_err()
                .to_string();
            assert!(err.contains("disk on fire"), "{err}");
            let err = repo
                .stage_payload(&mut Failing { left }, Some(10), Readers::Owner)
                .unwrap_err()
                .to_string();
            assert!(err.contains("disk on fire"), "{err}");
        }
        assert!(tmp_is_empty(&repo));
        assert!(repo.payloads().unwrap().is_empty());
    }

    #[test]
    fn stale_temp_files_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let tmp = repo.root().join("tmp");
        let (boot, ns, _) = writer_identity();
        // No process has this id (above the kernel's maximum).
        let dead = tmp.join(format!("{boot}.{ns}.2000000000-1"));
        fs::write(&dead, b"dead").unwrap();
        let mine = tmp.join(format!("{}-999999", temp_owner()));
        fs::write(&mine, b"alive").unwrap();
        // Another namespace's file: its PID means nothing here.
        let foreign = tmp.join(format!("{boot}.{}.2000000000-1", ns + 1));
        fs::write(&foreign, b"elsewhere").unwrap();
        let old_foreign = tmp.join("otherhost.4026531836.7-1");
        let f = fs::File::create(&old_foreign).unwrap();
        f.set_modified(std::time::SystemTime::now() - FOREIGN_TEMP_AGE * 2)
            .unwrap();
        fs::write(tmp.join("not-a-temp-file"), b"other").unwrap();
        assert_eq!(repo.remove_stale_temp_files().unwrap(), 2);
        assert!(mine.exists());
        assert!(
            foreign.exists(),
            "a live writer in another namespace keeps its file"
        );
        assert!(tmp.join("not-a-temp-file").exists());
        assert!(!dead.exists());
        assert!(!old_foreign.exists());
    }

    #[test]
    fn many_staged_payloads_use_one_barrier() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let staged: Vec<PendingPayload> = (0..FEW_FILES * 2)
            .map(|i| {
                let data = format!("small {i}");
                repo.stage_payload(
                    &mut data.as_bytes(),
                    Some(data.len() as u64),
                    Readers::Owner,
                )
                .unwrap()
            })
            .collect();
        let digests: Vec<Digest> = staged.iter().map(|p| p.digest).collect();
        repo.commit_staged(staged).unwrap();
        for (i, d) in digests.iter().enumerate() {
            assert_eq!(stored(&repo, d), format!("small {i}").as_bytes());
        }
        assert!(tmp_is_empty(&repo));
    }

    #[test]
    fn peek_kind_reads_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path()).unwrap();
        let d = repo
            .write_object(&Object::Platform(spfs_model::Platform::default()))
            .unwrap();
        assert_eq!(
            repo.peek_kind(&d).unwrap(),
            spfs_model::ObjectKind::Platform
        );
        assert!(matches!(
            repo.peek_kind(&Digest::of(b"nothing")),
            Err(StorageError::UnknownObject(_))
        ));
        fs::write(repo.object_path(&d), b"SP").unwrap();
        assert!(matches!(
            repo.peek_kind(&d),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn odd_shard_names_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path()).unwrap();
        let d = repo.write_blob(b"x").unwrap();
        // A two-byte, non-ASCII directory name must not split a char.
        fs::create_dir_all(repo.root().join("payloads").join("é")).unwrap();
        let p = PartialDigest::parse(&d.short(1)).unwrap();
        assert_eq!(repo.resolve_partial(&p).unwrap(), d);
    }

    /// The probe's case: a shard directory replaced by a symlink to a
    /// directory holding a file of the same name.
    #[test]
    fn opens_refuse_a_symlinked_shard() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let d = repo.write_blob(b"moved").unwrap();
        let o = repo
            .write_object(&Object::Platform(spfs_model::Platform::default()))
            .unwrap();
        for (area, digest) in [("payloads", d), ("objects", o)] {
            let shard = repo.payload_path(&digest).parent().unwrap().to_path_buf();
            let shard = repo.root().join(area).join(shard.file_name().unwrap());
            let elsewhere = dir.path().join(format!("elsewhere-{area}"));
            fs::rename(&shard, &elsewhere).unwrap();
            std::os::unix::fs::symlink(&elsewhere, &shard).unwrap();
        }
        let err = repo.open_payload(&d).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        assert!(!repo.has_payload(&d));
        let err = repo.read_object(&o).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        assert!(repo.peek_kind(&o).is_err());
        assert!(!repo.has_object(&o));
    }

    #[test]
    fn payload_modes_follow_their_readers() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let me = euid();
        let mode = |path: PathBuf| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        let (open, _) = repo
            .write_blob_from(&mut &b"open"[..], Readers::of_mode(0o644))
            .unwrap();
        let (closed, _) = repo
            .write_blob_from(&mut &b"closed"[..], Readers::of_mode(0o640))
            .unwrap();
        let o = repo
            .write_object(&Object::Platform(spfs_model::Platform::default()))
            .unwrap();
        assert_eq!(mode(repo.payload_path(&open)), 0o444);
        assert_eq!(mode(repo.private_payload_path(&closed, me)), 0o400);
        assert!(!repo.payload_path(&closed).exists());
        assert_eq!(
            fs::metadata(repo.object_path(&o))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o444
        );
        // Stored again for everyone: a public copy beside the private one.
        repo.write_blob_from(&mut &b"closed"[..], Readers::Everyone)
            .unwrap();
        assert_eq!(mode(repo.private_payload_path(&closed, me)), 0o400);
        assert_eq!(mode(repo.payload_path(&closed)), 0o444);
        // A private file whose bytes are public writes nothing.
        let before = fs::read_dir(repo.payload_path(&open).parent().unwrap())
            .unwrap()
            .count();
        repo.write_blob_from(&mut &b"open"[..], Readers::Owner)
            .unwrap();
        let after = fs::read_dir(repo.payload_path(&open).parent().unwrap())
            .unwrap()
            .count();
        assert_eq!(before, after);
        assert!(!repo.private_payload_path(&open, me).exists());
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

    #[test]
    fn an_object_of_a_newer_format_is_not_called_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path()).unwrap();
        let mut bytes = Object::Platform(spfs_model::Platform::default()).encode();
        // The version follows the four magic bytes, little-endian.
        bytes[4..6].copy_from_slice(&99u16.to_le_bytes());
        let d = Digest::of(&bytes);
        let path = repo.object_path(&d);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &bytes).unwrap();
        let err = repo.read_object(&d).unwrap_err();
        assert!(matches!(err, StorageError::NewerObject { .. }), "{err}");
        assert!(err.to_string().contains("newer spfs"), "{err}");
    }
}
