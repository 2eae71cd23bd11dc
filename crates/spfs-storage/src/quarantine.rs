//! Quarantine: moving a payload whose bytes do not match its digest out of
//! the way.
//!
//! ```text
//! ROOT/quarantine/DIGEST.UNIXTIME      a payload found corrupt at UNIXTIME
//! ROOT/quarantine/DIGEST.UNIXTIME.N    the N-th one found in the same second
//! ```
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

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::AtFlags;

use spfs_model::Digest;

use crate::beneath::{self, NewDirs};
use crate::error::{Result, StorageError};
use crate::fs::FsRepository;

/// The name of the quarantine directory under a repository's root.
pub const QUARANTINE_DIR: &str = "quarantine";

/// How many names one digest may take in quarantine within one second.
const MAX_SAME_SECOND: u32 = 1000;

impl FsRepository {
    /// Where quarantined payloads are kept.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.root().join(QUARANTINE_DIR)
    }

    /// Move the payload of `digest` into quarantine, whatever its content;
    /// returns where it went. A payload that is not there is
    /// [`StorageError::UnknownObject`].
    pub fn quarantine_payload(&self, digest: &Digest) -> Result<PathBuf> {
        self.move_to_quarantine(digest, None)?
            .ok_or(StorageError::UnknownObject(*digest))
    }

    /// Move the payload of `digest` into quarantine only if its path still
    /// names `opened`, the file found corrupt (same device and inode);
    /// returns where it went, or `None` when the path now names another
    /// file (a repair replaced it) or nothing (someone else quarantined it).
    pub fn quarantine_opened_payload(
        &self,
        digest: &Digest,
        opened: &File,
    ) -> Result<Option<PathBuf>> {
        match self.move_to_quarantine(digest, Some(opened)) {
            Err(StorageError::UnknownObject(_)) => Ok(None),
            other => other,
        }
    }

    fn move_to_quarantine(
        &self,
        digest: &Digest,
        opened: Option<&File>,
    ) -> Result<Option<PathBuf>> {
        let source = self.payload_path(digest);
        let text = digest.to_string();
        let (shard, name) = (Path::new("payloads").join(&text[..2]), &text[2..]);
        // Both directories are reached from the root's descriptor, never
        // through a symlink (see `beneath`).
        let shard_dir = beneath::open_dir(self.fd(), &shard)
            .map_err(StorageError::io("cannot open", &self.root().join(&shard)))?;
        let current = match rustix::fs::statat(&shard_dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Err(StorageError::UnknownObject(*digest)),
            Err(e) => return Err(StorageError::io("cannot read", &source)(e.into())),
        };
        if let Some(file) = opened {
            let seen = file
                .metadata()
                .map_err(StorageError::io("cannot read", &source))?;
            if (seen.dev(), seen.ino()) != (current.st_dev as u64, current.st_ino as u64) {
                return Ok(None);
            }
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
                0 => format!("{digest}.{seconds}"),
                n => format!("{digest}.{seconds}.{n}"),
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
                    self.sync_rel(&shard)?;
                    return Ok(Some(self.quarantine_dir().join(new_name)));
                }
                Err(rustix::io::Errno::EXIST) => continue,
                Err(rustix::io::Errno::NOENT) => {
                    // Moved or removed meanwhile by someone else.
                    return Err(StorageError::UnknownObject(*digest));
                }
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

    #[test]
    fn a_quarantined_payload_is_missing_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path()).unwrap();
        let d = repo.write_blob(b"precious").unwrap();
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
        let d = repo.write_blob(b"good").unwrap();
        std::fs::write(repo.payload_path(&d), b"bad!").unwrap();
        let corrupt = repo.open_payload(&d).unwrap();
        // A repair puts a new file in place before the corrupt one is moved.
        std::fs::remove_file(repo.payload_path(&d)).unwrap();
        repo.write_blob(b"good").unwrap();
        assert_eq!(repo.quarantine_opened_payload(&d, &corrupt).unwrap(), None);
        assert!(repo.has_payload(&d));
        // The file that was opened is still there: it goes.
        let again = repo.open_payload(&d).unwrap();
        assert!(
            repo.quarantine_opened_payload(&d, &again)
                .unwrap()
                .is_some()
        );
        assert_eq!(repo.quarantine_opened_payload(&d, &again).unwrap(), None);
    }
}
