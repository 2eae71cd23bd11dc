//! Shared repositories: one repository on a host that many users commit
//! into without root (`spfs init repo --shared`), read by the VFS service.
//!
//! ```text
//! ROOT, objects/, payloads/       root:GROUP 0755   nobody else writes here
//! objects/XX/, payloads/XX/       root, sticky      every shard made up front
//! tags/, runtimes/, tmp/          root, sticky
//! locks/                          root:GROUP 0755; its lock files root's, 0644
//! ```
//!
//! A sticky directory is writable by all (mode 1777, or with a group
//! root:GROUP 3775, setgid so that new files get the group) but an entry
//! in it can be removed or renamed over only by its owner (or root). Every
//! directory that holds files of several users is root's and exists before
//! any user writes: a user who owned one could delete anything in it. A
//! repository is shared exactly when its `tmp/` is sticky.
//!
//! What a user creates belongs to that user: payloads, objects and runtime
//! records (nobody else can remove or replace them), and tags and the tag
//! folders they make (others may read them, not change them). Tag folders
//! made by root are sticky like `tags/`, so that every user can put tags in
//! them. `docs/multi-user.md` describes the model and its limits.

use std::fs;
use std::os::fd::AsFd;
use std::path::Path;

use crate::beneath::{self, NewDirs};
use crate::error::{Result, StorageError};
use crate::fs::FsRepository;

/// Who writes into a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// One user's repository (the default): directories as the umask makes
    /// them, all owned by that user.
    Private,
    /// Many users write without root: root-owned sticky directories, group
    /// `group` (when given) instead of every user.
    Shared { group: Option<u32> },
}

/// The 32 characters a digest's text is made of: shards are every pair.
const DIGEST_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// The areas every user creates files in (besides the shards).
const SHARED_AREAS: [&str; 3] = ["tags", "runtimes", "tmp"];

/// The areas holding shards.
const SHARDED_AREAS: [&str; 2] = ["objects", "payloads"];

impl Sharing {
    /// From the status of a repository's `tmp/` (`None` when it is missing).
    pub(crate) fn of_tmp(tmp: Option<&rustix::fs::Stat>) -> Sharing {
        match tmp {
            Some(st) if st.st_mode & libc::S_ISVTX != 0 => Sharing::Shared {
                group: (st.st_mode & libc::S_ISGID != 0).then_some(st.st_gid),
            },
            _ => Sharing::Private,
        }
    }

    /// The mode of a directory every user writes into.
    fn shared_dir_mode(group: Option<u32>) -> u32 {
        match group {
            Some(_) => 0o3775,
            None => 0o1777,
        }
    }

    /// How a missing tag folder is made: in a shared repository, a folder
    /// made by a user is that user's alone (0755); one made by root is
    /// shared like `tags/`.
    pub(crate) fn new_tag_folders(self) -> NewDirs {
        match self {
            Sharing::Private => NewDirs::Inherit,
            Sharing::Shared { group } if rustix::process::geteuid().is_root() => NewDirs::Exact {
                mode: Self::shared_dir_mode(group),
                group,
            },
            Sharing::Shared { .. } => NewDirs::Exact {
                mode: 0o755,
                group: None,
            },
        }
    }

    /// How a missing shard or area is made: never by anyone in a shared
    /// repository (the user would own a directory of other users' files).
    pub(crate) fn new_shards(self) -> Option<NewDirs> {
        match self {
            Sharing::Private => Some(NewDirs::Inherit),
            Sharing::Shared { .. } => None,
        }
    }
}

impl FsRepository {
    /// Make (or complete) a shared repository at `root`, as root: every
    /// directory owned by root and group `group` (root's when `None`), with
    /// exact modes whatever the umask, and every shard made up front. On an
    /// existing repository the directories are made root's and their modes
    /// set; files keep their owners and modes.
    pub fn create_shared(root: impl AsRef<Path>, group: Option<u32>) -> Result<Self> {
        let root = root.as_ref();
        if !rustix::process::geteuid().is_root() {
            return Err(StorageError::SharedNeedsRoot(root.to_path_buf()));
        }
        fs::create_dir_all(root).map_err(StorageError::io("cannot create", root))?;
        let top = fs::File::open(root).map_err(StorageError::io("cannot open", root))?;
        let shared = Sharing::shared_dir_mode(group);
        let own = |rel: &Path, mode: u32| -> Result<()> {
            let (dir, _) = beneath::make_dirs(top.as_fd(), rel, NewDirs::Exact { mode, group })
                .map_err(StorageError::io("cannot create", root.join(rel)))?;
            beneath::set_owner_mode(&dir, Some(0), Some(group.unwrap_or(0)), mode).map_err(
                StorageError::io("cannot set the owner and mode of", root.join(rel)),
            )
        };
        own(Path::new(""), 0o755)?;
        for area in SHARDED_AREAS {
            own(Path::new(area), 0o755)?;
            for a in DIGEST_ALPHABET {
                for b in DIGEST_ALPHABET {
                    let shard: String = [char::from(*a), char::from(*b)].into_iter().collect();
                    own(&Path::new(area).join(shard), shared)?;
                }
            }
        }
        for area in SHARED_AREAS {
            own(Path::new(area), shared)?;
        }
        // Every user opens the lock files to share the lock; nobody but
        // root may replace them (made by `FsRepository::create`, below).
        own(Path::new(crate::gc::LOCKS), 0o755)?;
        let repo = FsRepository::create(root)?;
        debug_assert_eq!(repo.sharing(), Sharing::Shared { group });
        Ok(repo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Readers;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn every_digest_has_its_shard() {
        for content in [&b""[..], b"a", b"shards"] {
            let text = spfs_model::Digest::of(content).to_string();
            assert!(
                text[..2].bytes().all(|c| DIGEST_ALPHABET.contains(&c)),
                "{text}"
            );
        }
    }

    /// Another user's copy of a payload, which a sticky shard does not let
    /// us rename over, counts as stored; another user's symlink does not.
    #[test]
    fn another_users_copy_counts_as_stored() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: switching users needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let repo = FsRepository::create_shared(dir.path().join("repo"), None).unwrap();
        let (plant_tx, plant_rx) = std::sync::mpsc::channel::<Vec<spfs_model::Digest>>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let writer = {
            let repo = repo.clone();
            std::thread::spawn(move || {
                // This thread only: another unprivileged user.
                let (uid, gid) = (
                    rustix::fs::Uid::from_raw(64_001),
                    rustix::fs::Gid::from_raw(64_001),
                );
                rustix::thread::set_thread_res_gid(gid, gid, gid).unwrap();
                rustix::thread::set_thread_res_uid(uid, uid, uid).unwrap();
                let stage = |bytes: &[u8]| {
                    repo.stage_payload(&mut &bytes[..], Some(bytes.len() as u64), Readers::Everyone)
                        .unwrap()
                };
                let (same, link) = (stage(b"same bytes"), stage(b"squatted"));
                let private = stage(b"someone's private copy");
                plant_tx
                    .send(vec![same.digest, link.digest, private.digest])
                    .unwrap();
                done_rx.recv().unwrap();
                let stored = repo.commit_staged(vec![same]);
                let refused = repo.commit_staged(vec![link]);
                let not_public = repo.commit_staged(vec![private]);
                (stored, refused, not_public)
            })
        };
        let digests = plant_rx.recv().unwrap();
        let same = repo.payload_path(&digests[0]);
        fs::write(&same, b"same bytes").unwrap();
        // Public: readable by all (whatever the umask another test set).
        fs::set_permissions(&same, fs::Permissions::from_mode(0o444)).unwrap();
        std::os::unix::fs::chown(&same, Some(64_002), Some(64_002)).unwrap();
        let link = repo.payload_path(&digests[1]);
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(64_002), Some(64_002)).unwrap();
        // Another user's private copy under the public name (as an older
        // spfs wrote them) is no public copy: it is not taken for one.
        let private = repo.payload_path(&digests[2]);
        fs::write(&private, b"someone's private copy").unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o400)).unwrap();
        std::os::unix::fs::chown(&private, Some(64_002), Some(64_002)).unwrap();
        done_tx.send(()).unwrap();
        let (stored, refused, not_public) = writer.join().unwrap();
        stored.unwrap();
        for err in [refused, not_public] {
            let err = err.unwrap_err().to_string();
            assert!(err.contains("cannot store"), "{err}");
        }
        assert_eq!(fs::metadata(&same).unwrap().uid(), 64_002);
        assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(fs::read_dir(repo.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn shared_layout_whatever_the_umask() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: making a shared repository needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        let made = FsRepository::create_shared(dir.path().join("repo"), None);
        rustix::process::umask(old);
        let repo = made.unwrap();
        assert_eq!(repo.sharing(), Sharing::Shared { group: None });
        let mode = |rel: &str| {
            let m = fs::symlink_metadata(repo.root().join(rel)).unwrap();
            assert_eq!((m.uid(), m.gid()), (0, 0), "{rel}");
            m.permissions().mode() & 0o7777
        };
        assert_eq!(mode(""), 0o755);
        assert_eq!(mode("payloads"), 0o755);
        assert_eq!(mode("payloads/AB"), 0o1777);
        assert_eq!(mode("objects/77"), 0o1777);
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("tags"), 0o1777);
        assert_eq!(mode("locks"), 0o755);
        assert_eq!(mode("locks/gc"), 0o644);
        assert_eq!(mode("locks/gc.queue"), 0o644);
        assert_eq!(
            fs::read_dir(repo.root().join("payloads")).unwrap().count(),
            1024
        );
        // Again: nothing changes, nothing fails.
        FsRepository::create_shared(repo.root(), None).unwrap();
        // With a group: setgid, sticky, group-writable.
        let grouped = FsRepository::create_shared(dir.path().join("g"), Some(4242)).unwrap();
        assert_eq!(grouped.sharing(), Sharing::Shared { group: Some(4242) });
        let m = fs::metadata(grouped.root().join("objects/QQ")).unwrap();
        assert_eq!((m.gid(), m.permissions().mode() & 0o7777), (4242, 0o3775));
    }
}
