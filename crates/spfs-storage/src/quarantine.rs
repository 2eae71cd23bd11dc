//! Quarantine: moving a payload whose bytes do not match its digest out of
//! the way.
//!
//! ```text
//! ROOT/quarantine/DIGEST.UNIXTIME      a payload found corrupt at UNIXTIME
//! ROOT/quarantine/DIGEST.UNIXTIME.N    the N-th one found in the same second
//! ROOT/quarantine/DIGEST.uUID.UNIXTIME user UID's private copy
//! ROOT/quarantine/DIGEST.object.UNIXTIME an object found corrupt
//! ```
//!
//! Only the copy found corrupt moves ([`crate::payload`]): another copy of
//! the same digest is verified on its own. An object found corrupt moves
//! the same way when a repair (`spfs check --pull`) has a verified copy
//! to put in its place.
//!
//! A quarantined payload is no longer under `payloads/`: opening it fails
//! at once as a missing payload, `spfs check` reports its digest missing,
//! and a repair that fetches the blob again writes a fresh copy in its
//! place. The corrupt bytes are kept, not deleted, so that someone can see
//! what went wrong (a disk, a careless tool, an attacker).
//!
//! The move is one `rename` on the repository's filesystem (never replacing
//! anything), between directories opened from the repository's root without
//! following symlinks, made durable in both: after a crash the payload is
//! either still in place, to be found corrupt again, or in quarantine. The
//! quarantine directory is private (0700): it holds other users' bytes.

use std::path::{Path, PathBuf};

use rustix::fs::AtFlags;

use spfs_model::Digest;

use crate::beneath::{self, NewDirs};
use crate::error::{Result, StorageError};
use crate::fs::FsRepository;
use crate::payload::OpenedPayload;

/// The name of the quarantine directory under a repository's root.
pub const QUARANTINE_DIR: &str = "quarantine";

/// How many names one digest may take in quarantine within one second.
const MAX_SAME_SECOND: u32 = 1000;

impl FsRepository {
    /// Where quarantined payloads are kept.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.root().join(QUARANTINE_DIR)
    }

    /// Move the copy of `digest` this process's user would be served
    /// into quarantine, whatever its content; returns where it went. A
    /// payload that is not there is [`StorageError::UnknownObject`].
    pub fn quarantine_payload(&self, digest: &Digest) -> Result<PathBuf> {
        let opened = self.open_payload_as(digest, rustix::process::geteuid().as_raw())?;
        self.quarantine_opened_payload(&opened)?
            .ok_or(StorageError::UnknownObject(*digest))
    }

    /// Move `opened`, a payload file found corrupt, into quarantine, only
    /// if its name still names that very file (same device and inode);
    /// returns where it went, or `None` when the name now names another
    /// file (a repair replaced it) or nothing (someone else quarantined it).
    /// Only the copy that was opened goes: other copies of the same digest
    /// stay, to be verified on their own.
    pub fn quarantine_opened_payload(&self, opened: &OpenedPayload) -> Result<Option<PathBuf>> {
        let rel = opened.rel();
        let (shard, name) = beneath::split(rel)
            .map_err(StorageError::io("cannot quarantine", self.root().join(rel)))?;
        let shard_name = shard.file_name().unwrap_or_default().to_string_lossy();
        let stored_name = format!("{shard_name}{}", name.to_string_lossy());
        self.quarantine_file(rel, (opened.dev, opened.ino), &stored_name)
    }

    /// Move the file of object `digest` into quarantine if it is still
    /// corrupt (its bytes do not hash to `digest`, or do not decode);
    /// returns where it went, or `None` when it is intact or gone
    /// (repaired or moved meanwhile).
    pub fn quarantine_corrupt_object(&self, digest: &Digest) -> Result<Option<PathBuf>> {
        let text = digest.to_string();
        let rel = Path::new("objects").join(&text[..2]).join(&text[2..]);
        let (mut file, st) = match beneath::open_regular_stat(self.fd(), &rel) {
            Ok(opened) => opened,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_err("cannot open", &rel)(e)),
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes)
            .map_err(self.io_err("cannot read", &rel))?;
        if crate::repository::check_object(digest, &bytes).is_ok() {
            return Ok(None);
        }
        let id = (st.st_dev, st.st_ino);
        self.quarantine_file(&rel, id, &format!("{text}.object"))
    }

    /// Move the file `rel` (below the root) into quarantine as
    /// `STORED_NAME.UNIXTIME`, only if its name still names the file `id`
    /// (device, inode); `None` when it names another file or nothing.
    fn quarantine_file(
        &self,
        rel: &Path,
        (dev, ino): (u64, u64),
        stored_name: &str,
    ) -> Result<Option<PathBuf>> {
        let source = self.root().join(rel);
        let (shard, name) =
            beneath::split(rel).map_err(StorageError::io("cannot quarantine", &source))?;
        // Both directories are reached from the root's descriptor, never
        // through a symlink (see `beneath`).
        let shard_dir = beneath::open_dir(self.fd(), shard)
            .map_err(StorageError::io("cannot open", self.root().join(shard)))?;
        let current = match rustix::fs::statat(&shard_dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(StorageError::io("cannot read", &source)(e.into())),
        };
        if (dev, ino) != (current.st_dev as u64, current.st_ino as u64) {
            return Ok(None);
        }
        // Root's and private: the corrupt bytes of other users' payloads.
        let (dir, _) = beneath::make_dirs(
            self.fd(),
            Path::new(QUARANTINE_DIR),
            NewDirs::Exact {
                mode: 0o700,
                group: None,
            },
        )
        .map_err(StorageError::io("cannot create", &self.quarantine_dir()))?;
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for n in 0..MAX_SAME_SECOND {
            let new_name = match n {
                0 => format!("{stored_name}.{seconds}"),
                n => format!("{stored_name}.{seconds}.{n}"),
            };
            match rustix::fs::renameat_with(
                &shard_dir,
                name,
                &dir,
                new_name.as_str(),
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                Ok(()) => {
                    self.sync_rel(Path::new(QUARANTINE_DIR))?;
                    self.sync_rel(shard)?;
                    return Ok(Some(self.quarantine_dir().join(new_name)));
                }
                Err(rustix::io::Errno::EXIST) => continue,
                // Moved or removed meanwhile by someone else.
                Err(rustix::io::Errno::NOENT) => return Ok(None),
                Err(e) => return Err(StorageError::io("cannot quarantine", &source)(e.into())),
            }
        }
        Err(StorageError::io("cannot quarantine", &source)(
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::check;
    use crate::fs::Readers;

    /// Store `bytes` as a public payload.
    fn public(repo: &FsRepository, bytes: &[u8]) -> Digest {
        repo.write_blob_from(&mut &bytes[..], Readers::Everyone)
            .unwrap()
            .0
    }

    #[test]
    fn a_quarantined_payload_is_missing_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path()).unwrap();
        let d = public(&repo, b"precious");
        std::fs::write(repo.payload_path(&d), b"pre\xffious").unwrap();
        let first = repo.quarantine_payload(&d).unwrap();
        assert!(first.starts_with(repo.quarantine_dir()));
        assert!(
            first
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&d.to_string()))
        );
        assert_eq!(std::fs::read(&first).unwrap(), b"pre\xffious");
        assert!(!repo.has_payload(&d));
        let report = check(&repo, &[d]).unwrap();
        assert_eq!(report.missing, vec![d]);
        assert!(matches!(
            repo.quarantine_payload(&d),
            Err(StorageError::UnknownObject(_))
        ));
        // Found corrupt again in the same second: kept under another name.
        std::fs::write(repo.payload_path(&d), b"again").unwrap();
        let second = repo.quarantine_payload(&d).unwrap();
        assert_ne!(first, second);
        assert!(first.exists() && second.exists());
    }

    #[test]
    fn a_repaired_payload_is_not_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path()).unwrap();
        let d = public(&repo, b"good");
        std::fs::write(repo.payload_path(&d), b"bad!").unwrap();
        let corrupt = repo.open_payload_as(&d, 0).unwrap();
        // A repair puts a new file in place before the corrupt one is moved.
        std::fs::remove_file(repo.payload_path(&d)).unwrap();
        public(&repo, b"good");
        assert_eq!(repo.quarantine_opened_payload(&corrupt).unwrap(), None);
        assert!(repo.has_payload(&d));
        // The file that was opened is still there: it goes.
        let again = repo.open_payload_as(&d, 0).unwrap();
        assert!(repo.quarantine_opened_payload(&again).unwrap().is_some());
        assert_eq!(repo.quarantine_opened_payload(&again).unwrap(), None);
    }

    /// A corrupt private copy goes alone; the public copy stays.
    #[test]
    fn only_the_opened_copy_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path()).unwrap();
        let me = rustix::process::geteuid().as_raw();
        let d = repo.write_blob(b"twice").unwrap();
        let private = repo.private_payload_path(&d, me);
        std::fs::write(&private, b"twic3").unwrap();
        public(&repo, b"twice");
        let opened = repo.open_payload_as(&d, u32::MAX).unwrap();
        assert_eq!(opened.copy, crate::PayloadCopy::Public);
        let private_copy = match repo.find_copy(&d, Some(me), me).unwrap() {
            crate::payload::Found::Opened(p) => p,
            _ => panic!("the private copy is there"),
        };
        let moved = repo
            .quarantine_opened_payload(&private_copy)
            .unwrap()
            .unwrap();
        let name = moved.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(&format!("{d}.u{me}.")), "{name}");
        assert!(!private.exists());
        assert!(repo.payload_path(&d).exists());
        assert!(check(&repo, &[d]).unwrap().is_clean());
    }
}
