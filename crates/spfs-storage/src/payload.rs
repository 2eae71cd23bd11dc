//! Payload copies: who may read a payload's bytes.
//!
//! ```text
//! ROOT/payloads/AB/CDEF…         the public copy: mode 0444, readable by all
//! ROOT/payloads/AB/CDEF….u1001   user 1001's private copy: mode 0400, 1001's
//! ```
//!
//! A payload committed from a file readable by others is stored once, under
//! its digest's own name, readable by everyone. A payload committed from a
//! file that is not is stored per user, under the digest's name with
//! `.u<UID>` added, owned by that user and readable by that user alone: a
//! private file is never deduplicated across users, so nobody can block,
//! hijack or make unreadable another user's copy by committing the same
//! bytes first. A file under the digest's own name that is not readable by
//! others (written by spfs before copies were per user) is its owner's
//! private copy; a file under a `.u<UID>` name that UID does not own is no
//! copy at all.
//!
//! Digests are public (objects are readable by all, and anyone may write
//! an object naming any digest), so knowing a digest gives no right to its
//! bytes. Whoever reads a payload on a user's behalf — the VFS service, as
//! root, for a runtime's owner — serves only a copy that user could read
//! straight from the repository: [`PayloadCopy::readable_by`] is the one
//! rule, and [`FsRepository::open_payload_as`] opens by it.

use std::fs::File;
use std::path::{Path, PathBuf};

use rustix::fs::Stat;
use spfs_model::Digest;

use crate::beneath;
use crate::error::{Result, StorageError};
use crate::fs::{FsRepository, Readers};

/// What a private copy's name adds to the digest's: `.u<UID>`.
const PRIVATE_SUFFIX: &str = ".u";

/// Whose copy of a payload a stored file is, which decides who may read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadCopy {
    /// Everyone's: readable by others, under the digest's own name.
    Public,
    /// This user's (and root's) alone.
    Private(u32),
}

impl PayloadCopy {
    /// Whether `uid` may be served this copy: the one rule of who reads
    /// what. Everyone may read a public copy; a private copy only its
    /// owner and root.
    pub fn readable_by(self, uid: u32) -> bool {
        match self {
            PayloadCopy::Public => true,
            PayloadCopy::Private(owner) => uid == 0 || uid == owner,
        }
    }

    /// What the file with status `st`, under the name of `named`'s copy
    /// (`None`: the digest's own name), is; `None` when it is no copy (not
    /// a regular file, or a private name its user does not own).
    pub(crate) fn of(named: Option<u32>, st: &Stat) -> Option<PayloadCopy> {
        if !beneath::is_regular_stat(st) {
            return None;
        }
        match named {
            None if st.st_mode & 0o004 != 0 => Some(PayloadCopy::Public),
            None => Some(PayloadCopy::Private(st.st_uid)),
            Some(uid) if st.st_uid == uid => Some(PayloadCopy::Private(uid)),
            Some(_) => None,
        }
    }

    /// The copy user `uid` writes for a file readable by `readers`.
    pub(crate) fn written_by(readers: Readers, uid: u32) -> PayloadCopy {
        match readers {
            Readers::Everyone => PayloadCopy::Public,
            Readers::Owner => PayloadCopy::Private(uid),
        }
    }

    /// The mode of a new file of this copy.
    pub(crate) fn mode(self) -> u32 {
        match self {
            PayloadCopy::Public => 0o444,
            PayloadCopy::Private(_) => 0o400,
        }
    }

    /// Whose name a new file of this copy takes (`None`: the digest's own).
    pub(crate) fn named(self) -> Option<u32> {
        match self {
            PayloadCopy::Public => None,
            PayloadCopy::Private(uid) => Some(uid),
        }
    }
}

/// A payload's file, opened for a reader.
#[derive(Debug)]
pub struct OpenedPayload {
    pub file: File,
    /// Which copy it is (decided on the open file's own status).
    pub copy: PayloadCopy,
    /// Its device and inode: which file exactly was opened.
    pub dev: u64,
    pub ino: u64,
    /// Where it is, below the repository's root.
    rel: PathBuf,
}

impl OpenedPayload {
    /// Where the opened file is, below the repository's root.
    pub fn rel(&self) -> &Path {
        &self.rel
    }
}

/// What one name of a payload held for a reader.
pub(crate) enum Found {
    /// Nothing, or no copy.
    Missing,
    /// A copy the reader may not read.
    Denied,
    Opened(OpenedPayload),
}

/// The digest text and user of a payload file's name in its shard:
/// `REST` is `(REST, None)`, `REST.u1001` is `(REST, Some(1001))`.
pub(crate) fn split_name(name: &str) -> (&str, Option<u32>) {
    match name.rsplit_once(PRIVATE_SUFFIX) {
        Some((rest, uid))
            if !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()) && uid.len() <= 10 =>
        {
            match uid.parse() {
                Ok(uid) => (rest, Some(uid)),
                Err(_) => (name, None),
            }
        }
        _ => (name, None),
    }
}

impl FsRepository {
    /// Where `named`'s private copy of `digest` is below the root (`None`:
    /// the digest's own name).
    pub(crate) fn payload_rel(digest: &Digest, named: Option<u32>) -> PathBuf {
        let text = digest.to_string();
        let name = match named {
            None => text[2..].to_string(),
            Some(uid) => format!("{}{PRIVATE_SUFFIX}{uid}", &text[2..]),
        };
        Path::new("payloads").join(&text[..2]).join(name)
    }

    /// Where user `uid`'s private copy of blob `digest` is stored.
    pub fn private_payload_path(&self, digest: &Digest, uid: u32) -> PathBuf {
        self.root().join(Self::payload_rel(digest, Some(uid)))
    }

    /// The users whose names for a private copy of `digest` are taken.
    fn private_names(&self, digest: &Digest) -> Result<Vec<u32>> {
        let text = digest.to_string();
        let shard = Path::new("payloads").join(&text[..2]);
        let names = match beneath::list_dir(self.fd(), &shard) {
            Ok(names) => names,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io_err("cannot list", &shard)(e)),
        };
        let mut users: Vec<u32> = names
            .iter()
            .filter_map(|n| n.to_str())
            .filter_map(|n| match split_name(n) {
                (rest, Some(uid)) if rest == &text[2..] => Some(uid),
                _ => None,
            })
            .collect();
        users.sort_unstable();
        Ok(users)
    }

    /// Every name `digest` is stored under (`None`: the digest's own),
    /// the public one first.
    pub(crate) fn payload_names(&self, digest: &Digest) -> Result<Vec<Option<u32>>> {
        let public = beneath::is_regular(self.fd(), &Self::payload_rel(digest, None));
        let mut names: Vec<Option<u32>> = public.then_some(None).into_iter().collect();
        names.extend(self.private_names(digest)?.into_iter().map(Some));
        Ok(names)
    }

    /// Open the file under `named`'s name for `digest` on behalf of `uid`.
    pub(crate) fn find_copy(&self, digest: &Digest, named: Option<u32>, uid: u32) -> Result<Found> {
        let rel = Self::payload_rel(digest, named);
        match beneath::open_regular_stat(self.fd(), &rel) {
            Ok((file, st)) => Ok(match PayloadCopy::of(named, &st) {
                None => Found::Missing,
                Some(copy) if !copy.readable_by(uid) => Found::Denied,
                Some(copy) => Found::Opened(OpenedPayload {
                    file,
                    copy,
                    dev: st.st_dev,
                    ino: st.st_ino,
                    rel,
                }),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Found::Missing),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(Found::Denied),
            Err(e) => Err(self.io_err("cannot open", &rel)(e)),
        }
    }

    /// Open the bytes of blob `digest` as user `uid` may be served them
    /// ([`PayloadCopy::readable_by`]): `uid`'s own copy, else the public
    /// one; root may read any copy. Only a regular file is opened, never
    /// through a symlink (see [`crate::beneath`]). None stored is
    /// [`StorageError::UnknownObject`]; only others' private copies,
    /// [`StorageError::PayloadNotReadable`].
    pub fn open_payload_as(&self, digest: &Digest, uid: u32) -> Result<OpenedPayload> {
        let mut denied = false;
        // The user's own copy first: whatever someone else puts under the
        // public name (free while the bytes were only ever private) never
        // stands in for it. Something that is not a copy at all (a
        // directory, fifo or symlink someone planted) is passed over.
        for named in [Some(uid), None] {
            let found = match self.find_copy(digest, named, uid) {
                Err(StorageError::Io { source, .. })
                    if matches!(
                        source.kind(),
                        std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
                    ) || source.raw_os_error() == Some(libc::ELOOP) =>
                {
                    Found::Missing
                }
                other => other?,
            };
            match found {
                Found::Opened(p) => return Ok(p),
                Found::Denied => denied = true,
                Found::Missing => {}
            }
        }
        // Others' private copies: root's to read, a sign of denial to others.
        for named in self.private_names(digest)? {
            if named == uid {
                continue;
            }
            if uid != 0 {
                denied = true;
                break;
            }
            match self.find_copy(digest, Some(named), uid)? {
                Found::Opened(p) => return Ok(p),
                Found::Denied => denied = true,
                Found::Missing => {}
            }
        }
        Err(if denied {
            StorageError::PayloadNotReadable(*digest)
        } else {
            StorageError::UnknownObject(*digest)
        })
    }

    /// Open the bytes of blob `digest` as this process's user may read them
    /// (see [`FsRepository::open_payload_as`]).
    pub fn open_payload(&self, digest: &Digest) -> Result<File> {
        self.open_payload_as(digest, rustix::process::geteuid().as_raw())
            .map(|p| p.file)
    }

    /// Whether any copy of blob `digest` is stored (a regular file, reached
    /// without symlinks), whoever may read it.
    pub fn has_payload(&self, digest: &Digest) -> bool {
        beneath::is_regular(self.fd(), &Self::payload_rel(digest, None))
            || self.private_names(digest).is_ok_and(|users| {
                users
                    .into_iter()
                    .any(|u| beneath::is_regular(self.fd(), &Self::payload_rel(digest, Some(u))))
            })
    }

    /// Whether blob `digest` has a public copy (readable by every user).
    pub fn has_public_payload(&self, digest: &Digest) -> bool {
        self.public_payload_id(digest).is_some()
    }

    /// The device and inode of blob `digest`'s public copy, if it has one.
    pub fn public_payload_id(&self, digest: &Digest) -> Option<(u64, u64)> {
        let st = beneath::stat(self.fd(), &Self::payload_rel(digest, None)).ok()?;
        (PayloadCopy::of(None, &st) == Some(PayloadCopy::Public)).then_some((st.st_dev, st.st_ino))
    }

    /// Whether a writer of `copy` of `digest` has nothing to write: a
    /// public copy serves every file; a private copy is the writer's own
    /// (under its private name, or under the digest's own name from before
    /// copies were per user).
    pub(crate) fn payload_stored_for(&self, digest: &Digest, copy: PayloadCopy) -> bool {
        let at = |named: Option<u32>| {
            beneath::stat(self.fd(), &Self::payload_rel(digest, named))
                .ok()
                .and_then(|st| PayloadCopy::of(named, &st))
        };
        match at(None) {
            Some(PayloadCopy::Public) => true,
            found if found == Some(copy) => true,
            _ => copy.named().is_some() && at(copy.named()) == Some(copy),
        }
    }

    /// Every payload file: its digest and whose copy its name says it is
    /// (`None`: the digest's own name), shard by shard (reached without
    /// symlinks; names that are no payload's are passed over).
    pub fn payload_files(&self) -> Result<Vec<(Digest, Option<u32>)>> {
        let area = Path::new("payloads");
        let shards = match beneath::list_dir(self.fd(), area) {
            Ok(names) => names,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io_err("cannot list", area)(e)),
        };
        let mut out = Vec::new();
        for shard in shards {
            let Some(shard) = shard.to_str().filter(|s| s.len() == 2) else {
                continue;
            };
            let rel = area.join(shard);
            let names = match beneath::list_dir(self.fd(), &rel) {
                Ok(names) => names,
                // Not a directory (or removed meanwhile): no payloads.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound
                            | std::io::ErrorKind::NotADirectory
                            | std::io::ErrorKind::InvalidInput
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(self.io_err("cannot list", &rel)(e)),
            };
            for name in names {
                let Some(name) = name.to_str() else { continue };
                let (rest, named) = split_name(name);
                if let Ok(d) = Digest::parse(&format!("{shard}{rest}")) {
                    out.push((d, named));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The size of blob `digest`, from any copy (sizes are no secret:
    /// manifests record them).
    pub fn payload_size(&self, digest: &Digest) -> Result<u64> {
        for named in self.payload_names(digest)? {
            let rel = Self::payload_rel(digest, named);
            if let Ok(st) = beneath::stat(self.fd(), &rel)
                && beneath::is_regular_stat(&st)
            {
                return Ok(st.st_size as u64);
            }
        }
        Err(StorageError::UnknownObject(*digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn uid() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    #[test]
    fn names_of_copies() {
        assert_eq!(split_name("ABC"), ("ABC", None));
        assert_eq!(split_name("ABC.u1001"), ("ABC", Some(1001)));
        assert_eq!(split_name("ABC.u0"), ("ABC", Some(0)));
        assert_eq!(split_name("ABC.u"), ("ABC.u", None));
        assert_eq!(split_name("ABC.ux1"), ("ABC.ux1", None));
        assert_eq!(split_name("ABC.u99999999999"), ("ABC.u99999999999", None));
    }

    #[test]
    fn the_rule() {
        assert!(PayloadCopy::Public.readable_by(1234));
        assert!(PayloadCopy::Private(7).readable_by(7));
        assert!(PayloadCopy::Private(7).readable_by(0));
        assert!(!PayloadCopy::Private(7).readable_by(8));
        assert!(!PayloadCopy::Private(7).readable_by(u32::MAX));
    }

    /// Public files under the digest's name, private ones under the
    /// writer's; each stored once for what it serves.
    #[test]
    fn public_and_private_copies_are_stored_apart() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let me = uid();
        let (d, _) = repo
            .write_blob_from(&mut &b"both"[..], Readers::Owner)
            .unwrap();
        let private = repo.private_payload_path(&d, me);
        let meta = fs::metadata(&private).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o400, me));
        assert!(
            !repo.payload_path(&d).exists(),
            "never under the public name"
        );
        assert!(repo.has_payload(&d));
        assert_eq!(
            repo.payloads().unwrap(),
            vec![d],
            "one digest, whatever its copies"
        );
        // The same bytes from a public file: a public copy as well.
        repo.write_blob_from(&mut &b"both"[..], Readers::Everyone)
            .unwrap();
        assert_eq!(
            fs::metadata(repo.payload_path(&d)).unwrap().mode() & 0o7777,
            0o444
        );
        assert_eq!(repo.payloads().unwrap(), vec![d]);
        // A user's own copy is opened first; others get the public one.
        let opened = repo.open_payload_as(&d, me).unwrap();
        assert_eq!(opened.copy, PayloadCopy::Private(me));
        let opened = repo.open_payload_as(&d, u32::MAX).unwrap();
        assert_eq!(opened.copy, PayloadCopy::Public);
        assert!(repo.payload_stored_for(&d, PayloadCopy::Private(me)));
        assert_eq!(repo.payload_size(&d).unwrap(), 4);
    }

    /// Another user's private copy is not served to anyone else but root,
    /// and does not count as stored for them; a public-name file that is
    /// not world-readable is its owner's.
    #[test]
    fn who_is_served_which_copy() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let d = Digest::of(b"secret");
        let (a, b) = (64_101, 64_102);
        let shard = repo.payload_path(&d).parent().unwrap().to_path_buf();
        fs::create_dir_all(&shard).unwrap();
        let put = |path: &Path, owner: u32, mode: u32| {
            fs::write(path, b"secret").unwrap();
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
            if uid() == 0 {
                std::os::unix::fs::chown(path, Some(owner), Some(owner)).unwrap();
            }
        };
        let owner_a = if uid() == 0 { a } else { uid() };
        put(&repo.private_payload_path(&d, owner_a), owner_a, 0o400);
        let denied = repo.open_payload_as(&d, b).unwrap_err();
        assert!(
            matches!(denied, StorageError::PayloadNotReadable(_)),
            "{denied}"
        );
        assert!(denied.to_string().contains("another user"), "{denied}");
        let mine = repo.open_payload_as(&d, owner_a).unwrap();
        assert_eq!(mine.copy, PayloadCopy::Private(owner_a));
        assert_eq!(mine.rel(), FsRepository::payload_rel(&d, Some(owner_a)));
        if uid() == 0 {
            assert_eq!(
                repo.open_payload_as(&d, 0).unwrap().copy,
                PayloadCopy::Private(a),
                "root reads any copy"
            );
        }
        assert!(!repo.payload_stored_for(&d, PayloadCopy::Public));
        assert!(!repo.payload_stored_for(&d, PayloadCopy::Private(b)));
        assert!(repo.payload_stored_for(&d, PayloadCopy::Private(owner_a)));
        // A name of B's copy that B does not own is no copy of B's.
        if uid() == 0 {
            put(&repo.private_payload_path(&d, b), a, 0o444);
            assert!(matches!(
                repo.open_payload_as(&d, b),
                Err(StorageError::PayloadNotReadable(_))
            ));
            assert!(!repo.payload_stored_for(&d, PayloadCopy::Private(b)));
        }
        // Written by an older spfs: 0400 under the digest's own name.
        let old = Digest::of(b"old");
        let old_path = repo.payload_path(&old);
        fs::create_dir_all(old_path.parent().unwrap()).unwrap();
        fs::write(&old_path, b"old").unwrap();
        fs::set_permissions(&old_path, fs::Permissions::from_mode(0o400)).unwrap();
        if uid() == 0 {
            std::os::unix::fs::chown(&old_path, Some(a), Some(a)).unwrap();
        }
        assert_eq!(
            repo.open_payload_as(&old, owner_a).unwrap().copy,
            PayloadCopy::Private(owner_a)
        );
        assert!(matches!(
            repo.open_payload_as(&old, b),
            Err(StorageError::PayloadNotReadable(_))
        ));
        assert!(repo.payload_stored_for(&old, PayloadCopy::Private(owner_a)));
        assert!(!repo.payload_stored_for(&old, PayloadCopy::Public));
        assert!(matches!(
            repo.open_payload_as(&Digest::of(b"none"), b),
            Err(StorageError::UnknownObject(_))
        ));
    }

    /// Whatever someone puts under the public name of bytes that were only
    /// ever private never stands in for the owner's own copy.
    #[test]
    fn the_owner_reads_its_own_copy_whatever_takes_the_public_name() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let me = uid();
        let (d, _) = repo
            .write_blob_from(&mut &b"mine"[..], Readers::Owner)
            .unwrap();
        let public = repo.payload_path(&d);
        let read = |repo: &FsRepository| {
            let mut text = String::new();
            repo.open_payload_as(&d, me)
                .unwrap()
                .file
                .read_to_string(&mut text)
                .unwrap();
            text
        };
        fs::write(&public, b"planted").unwrap();
        fs::set_permissions(&public, fs::Permissions::from_mode(0o444)).unwrap();
        assert_eq!(read(&repo), "mine");
        fs::remove_file(&public).unwrap();
        fs::create_dir(&public).unwrap();
        assert_eq!(read(&repo), "mine", "a directory at the public name");
    }
}
