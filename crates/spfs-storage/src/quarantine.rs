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
//! anything), made durable in both directories: after a crash the payload
//! is either still in place, to be found corrupt again, or in quarantine.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use spfs_model::Digest;

use crate::error::{Result, StorageError};
use crate::fs::{FsRepository, sync_dir};

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
        let current = match std::fs::symlink_metadata(&source) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::UnknownObject(*digest));
            }
            Err(e) => return Err(StorageError::io("cannot read", &source)(e)),
        };
        if let Some(file) = opened {
            let seen = file
                .metadata()
                .map_err(StorageError::io("cannot read", &source))?;
            if (seen.dev(), seen.ino()) != (current.dev(), current.ino()) {
                return Ok(None);
            }
        }
        let dir = self.quarantine_dir();
        std::fs::create_dir_all(&dir).map_err(StorageError::io("cannot create", &dir))?;
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for n in 0..MAX_SAME_SECOND {
            let name = match n {
                0 => format!("{digest}.{seconds}"),
                n => format!("{digest}.{seconds}.{n}"),
            };
            let dest = dir.join(name);
            match rustix::fs::renameat_with(
                rustix::fs::CWD,
                &source,
                rustix::fs::CWD,
                &dest,
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                Ok(()) => {
                    sync_dir(&dir)?;
                    if let Some(shard) = source.parent() {
                        sync_dir(shard)?;
                    }
                    return Ok(Some(dest));
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
