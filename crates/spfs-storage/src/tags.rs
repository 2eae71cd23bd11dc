//! Tags: human names for digests, with history.
//!
//! A tag `org/name` is stored as `tags/org/name.tag`, one version per line,
//! oldest first: `DIGEST UNIX_SECONDS USER`. `name~N` is the version N steps
//! back from the newest. Writers serialize on an advisory `flock` of a lock
//! file beside the tag, which the kernel releases when a process dies, so a
//! killed writer never blocks anyone; the new history is written to a
//! temporary file and renamed into place.
//!
//! In a shared repository a tag belongs to its creator: only that user (or
//! root) can open its 0600 lock file or rename over its history in the
//! sticky folder, and a tag is never written below another user's folder.
//! See [`crate::shared`].

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags, flock};
use rustix::io::Errno;
use spfs_model::{Digest, TagSpec};

use crate::beneath;
use crate::error::{Result, StorageError};
use crate::fs::{FsRepository, Written};
use crate::shared::Sharing;

/// One version of a tag.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TagVersion {
    pub target: Digest,
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub user: String,
}

/// What `untag` removes.
#[derive(Clone, Copy, Debug)]
pub enum Untag {
    /// The version N steps back.
    Version(u64),
    Latest,
    All,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The name of the current user, for tag history.
pub fn current_user() -> String {
    let uid = rustix::process::getuid().as_raw();
    let name = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| user_name(uid))
        .unwrap_or_else(|| uid.to_string());
    // One field of a one-line record: no spaces or control characters.
    name.chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The name of user `uid` in `/etc/passwd` (name:password:uid:...).
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

fn parse_history(path: &Path, text: &str) -> Result<Vec<TagVersion>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, ' ');
            let bad = || StorageError::BadRecord {
                path: path.to_path_buf(),
                message: format!("bad tag line {line:?}"),
            };
            let target = Digest::parse(parts.next().ok_or_else(bad)?).map_err(|_| bad())?;
            let time = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
            let user = parts.next().unwrap_or("").to_string();
            Ok(TagVersion { target, time, user })
        })
        .collect()
}

/// How long a tag writer waits for a lock that a live process holds.
pub const TAG_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// Check that `name` is a plain tag name (no `~N`).
fn plain_tag(name: &str) -> Result<()> {
    let spec = TagSpec::parse(name)?;
    if spec.name != name {
        return Err(StorageError::Spec(spfs_model::SpecError::InvalidTag(
            name.to_string(),
        )));
    }
    Ok(())
}

/// The files of one tag while its lock is held.
struct TagFile {
    /// `tags/NAME.tag`, below the root.
    rel: PathBuf,
    /// The tag's folder.
    folder: OwnedFd,
    /// `NAME.tag` in the folder.
    name: OsString,
    /// Who must own the new history: the tag's owner when root rewrites
    /// another user's tag, so that it stays theirs.
    keep_owner: Option<u32>,
}

impl TagFile {
    fn lock_name(&self) -> OsString {
        let mut name = self.name.clone();
        name.push(".lock");
        name
    }
}

/// The owner of `name` in `dir`, if it is there.
fn owner_in(dir: &OwnedFd, name: &OsStr) -> Option<u32> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| st.st_uid)
}

impl FsRepository {
    /// Where tag `name` is kept, below the root.
    fn tag_path(name: &str) -> PathBuf {
        Path::new("tags").join(format!("{name}.tag"))
    }

    /// Hold the lock of tag `name` while `f` runs.
    ///
    /// The lock is an advisory `flock` on `NAME.tag.lock`, released by the
    /// kernel when its holder dies, so a killed writer blocks nobody. Because
    /// `untag --all` removes the lock file, a writer that waited on a lock
    /// file which has since been removed or replaced retries on the new one.
    /// A lock that a live process holds for longer than [`TAG_LOCK_TIMEOUT`]
    /// is an error rather than an endless wait.
    ///
    /// The lock file has mode 0600: only those who may change the tag (its
    /// owner, root) can open it, so nobody else can hold it to block them.
    /// In a shared repository, a tag or folder of another user is
    /// [`StorageError::TagNotYours`].
    fn with_tag_lock<T>(&self, name: &str, f: impl FnOnce(&TagFile) -> Result<T>) -> Result<T> {
        let rel = Self::tag_path(name);
        let (folder_rel, file) = beneath::split(&rel).map_err(self.io_err("cannot open", &rel))?;
        let (folder, _) = self.open_dir(folder_rel, Some(self.sharing().new_tag_folders()))?;
        self.check_folders(name, folder_rel)?;
        let mut tag = TagFile {
            rel: rel.clone(),
            name: file.to_os_string(),
            keep_owner: None,
            folder,
        };
        let out = self.locked(&mut tag, f);
        match out {
            Err(StorageError::Io { source, .. })
                if self.sharing() != Sharing::Private
                    && source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                let owner = owner_in(&tag.folder, &tag.name)
                    .or_else(|| owner_in(&tag.folder, &tag.lock_name()))
                    .or_else(|| owner_in(&tag.folder, OsStr::new(".")))
                    .map(|uid| user_name(uid).unwrap_or_else(|| format!("uid {uid}")))
                    .unwrap_or_else(|| "another user".to_string());
                Err(StorageError::TagNotYours {
                    name: name.to_string(),
                    owner,
                })
            }
            other => other,
        }
    }

    /// In a shared repository, refuse to write a tag below a folder of
    /// another user (one who made it writable to others could still remove
    /// what others put in it): every folder must be root's or ours.
    fn check_folders(&self, name: &str, folder_rel: &Path) -> Result<()> {
        let me = rustix::process::geteuid();
        if self.sharing() == Sharing::Private || me.is_root() {
            return Ok(());
        }
        let mut rel = PathBuf::new();
        for part in folder_rel.components() {
            rel.push(part);
            let (dir, _) = self.open_dir(&rel, None)?;
            let uid = rustix::fs::fstat(&dir)
                .map_err(|e| self.io_err("cannot read", &rel)(e.into()))?
                .st_uid;
            if uid != 0 && uid != me.as_raw() {
                return Err(StorageError::TagNotYours {
                    name: name.to_string(),
                    owner: user_name(uid).unwrap_or_else(|| format!("uid {uid}")),
                });
            }
        }
        Ok(())
    }

    /// [`FsRepository::with_tag_lock`] once the folder is open.
    fn locked<T>(&self, tag: &mut TagFile, f: impl FnOnce(&TagFile) -> Result<T>) -> Result<T> {
        let lock_name = tag.lock_name();
        let lock_rel = tag.rel.with_extension("tag.lock");
        let lock_err = |context| self.io_err(context, &lock_rel);
        let deadline = Instant::now() + TAG_LOCK_TIMEOUT;
        let mut pause = Duration::from_millis(1);
        let root = rustix::process::geteuid().is_root();
        loop {
            // Open an existing lock without O_CREAT: the kernel's
            // protected_regular refuses O_CREAT on another user's file in a
            // sticky directory, even to root.
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let lock = match rustix::fs::openat(&tag.folder, &lock_name, flags, Mode::empty()) {
                Ok(lock) => lock,
                Err(Errno::NOENT) => {
                    match rustix::fs::openat(
                        &tag.folder,
                        &lock_name,
                        flags | OFlags::CREATE | OFlags::EXCL,
                        Mode::from_raw_mode(0o600),
                    ) {
                        Ok(lock) => {
                            // Root locking a user's tag for the first time
                            // leaves the lock the user's.
                            if root && let Some(uid) = owner_in(&tag.folder, &tag.name) {
                                rustix::fs::fchown(
                                    &lock,
                                    Some(rustix::fs::Uid::from_raw(uid)),
                                    None,
                                )
                                .map_err(|e| lock_err("cannot lock")(e.into()))?;
                            }
                            lock
                        }
                        Err(Errno::EXIST) => continue,
                        Err(e) => return Err(lock_err("cannot open lock")(e.into())),
                    }
                }
                Err(e) => return Err(lock_err("cannot open lock")(e.into())),
            };
            match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) | Err(rustix::io::Errno::INTR) => {
                    drop(lock);
                    if Instant::now() >= deadline {
                        return Err(lock_err("timed out waiting for the lock")(
                            std::io::Error::from(std::io::ErrorKind::TimedOut),
                        ));
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                    continue;
                }
                Err(e) => return Err(lock_err("cannot lock")(e.into())),
            }
            // Still the file at the lock's name? (An untag may have removed it.)
            let held = rustix::fs::fstat(&lock).map_err(|e| lock_err("cannot lock")(e.into()))?;
            match rustix::fs::statat(&tag.folder, &lock_name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(now) if now.st_dev == held.st_dev && now.st_ino == held.st_ino => {}
                _ => continue,
            }
            tag.keep_owner = owner_in(&tag.folder, &tag.name).filter(|uid| root && *uid != 0);
            let out = f(tag);
            drop(lock);
            return out;
        }
    }

    /// The text of tag history `rel` (a regular file, no symlink).
    fn read_tag_text(&self, name: &str, rel: &Path) -> Result<String> {
        let mut text = String::new();
        self.open_regular(rel, || StorageError::UnknownTag(name.to_string()))?
            .read_to_string(&mut text)
            .map_err(self.io_err("cannot read", rel))?;
        Ok(text)
    }

    /// The history of tag `name`, oldest first.
    pub fn tag_history(&self, name: &str) -> Result<Vec<TagVersion>> {
        plain_tag(name)?;
        let rel = Self::tag_path(name);
        let text = self.read_tag_text(name, &rel)?;
        parse_history(&self.root().join(&rel), &text)
    }

    /// Point tag `name` at `target`, keeping the previous versions.
    pub fn push_tag(&self, name: &str, target: &Digest) -> Result<()> {
        plain_tag(name)?;
        self.with_tag_lock(name, |tag| {
            let mut text = match self.read_tag_text(name, &tag.rel) {
                Ok(t) => t,
                Err(StorageError::UnknownTag(_)) => String::new(),
                Err(e) => return Err(e),
            };
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!("{target} {} {}\n", now(), current_user()));
            self.write_atomic(
                &tag.rel,
                text.as_bytes(),
                Written::Record {
                    keep_owner: tag.keep_owner,
                },
            )
        })
    }

    /// Remove versions of tag `name`.
    pub fn untag(&self, name: &str, what: Untag) -> Result<()> {
        self.tag_history(name)?;
        self.with_tag_lock(name, |tag| {
            let text = self.read_tag_text(name, &tag.rel)?;
            let path = self.root().join(&tag.rel);
            let mut history = parse_history(&path, &text)?;
            let index = match what {
                Untag::All => None,
                Untag::Latest => Some(0),
                Untag::Version(n) => Some(n),
            };
            match index {
                None => history.clear(),
                Some(n) => {
                    let available = history.len();
                    let pos = usize::try_from(n)
                        .ok()
                        .and_then(|n| available.checked_sub(n.checked_add(1)?))
                        .ok_or_else(|| StorageError::UnknownTagVersion {
                            name: name.to_string(),
                            available,
                            requested: n,
                        })?;
                    history.remove(pos);
                }
            }
            self.store_history(tag, &history)
        })
    }

    /// Replace the history of the locked tag `tag` with `history`; an
    /// empty one removes the tag (and its lock file).
    fn store_history(&self, tag: &TagFile, history: &[TagVersion]) -> Result<()> {
        if history.is_empty() {
            let path = self.root().join(&tag.rel);
            rustix::fs::unlinkat(&tag.folder, &tag.name, AtFlags::empty())
                .map_err(|e| StorageError::io("cannot remove", &path)(e.into()))?;
            let _ = rustix::fs::unlinkat(&tag.folder, tag.lock_name(), AtFlags::empty());
            return self.sync_rel(tag.rel.parent().unwrap_or(Path::new("")));
        }
        let text: String = history
            .iter()
            .map(|v| format!("{} {} {}\n", v.target, v.time, v.user))
            .collect();
        self.write_atomic(
            &tag.rel,
            text.as_bytes(),
            Written::Record {
                keep_owner: tag.keep_owner,
            },
        )
    }

    /// Keep the versions of tag `name` that `keep` says to keep (it is
    /// given the history, oldest first, read while the tag's lock is held,
    /// and returns one flag per version); a tag left with no version is
    /// removed. Returns the versions removed, oldest first, each with how
    /// far back it was (`name~N`).
    pub fn retain_versions(
        &self,
        name: &str,
        keep: impl FnOnce(&[TagVersion]) -> Vec<bool>,
    ) -> Result<Vec<(u64, TagVersion)>> {
        self.tag_history(name)?;
        self.with_tag_lock(name, |tag| {
            let text = self.read_tag_text(name, &tag.rel)?;
            let history = parse_history(&self.root().join(&tag.rel), &text)?;
            let flags = keep(&history);
            let newest = history.len().saturating_sub(1);
            let mut kept = Vec::new();
            let mut removed = Vec::new();
            for (i, (v, keep)) in history
                .into_iter()
                .zip(flags.into_iter().chain(std::iter::repeat(true)))
                .enumerate()
            {
                match keep {
                    true => kept.push(v),
                    false => removed.push(((newest - i) as u64, v)),
                }
            }
            if !removed.is_empty() {
                self.store_history(tag, &kept)?;
            }
            Ok(removed)
        })
    }

    /// The digest a tag spec points to.
    pub fn resolve_tag(&self, spec: &TagSpec) -> Result<Digest> {
        let history = self.tag_history(&spec.name)?;
        let available = history.len();
        usize::try_from(spec.version)
            .ok()
            .and_then(|v| available.checked_sub(v.checked_add(1)?))
            .map(|i| history[i].target)
            .ok_or(StorageError::UnknownTagVersion {
                name: spec.name.clone(),
                available,
                requested: spec.version,
            })
    }

    /// Every tag name, sorted.
    pub fn tags(&self) -> Result<Vec<String>> {
        let base = self.root().join("tags");
        let mut out = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io("cannot list", &dir)(e)),
            };
            for item in rd {
                let item = item.map_err(StorageError::io("cannot list", &dir))?;
                let path = item.path();
                if item.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(path);
                } else if let Some(rel) = path.strip_prefix(&base).ok().and_then(|r| r.to_str())
                    && let Some(name) = rel.strip_suffix(".tag")
                {
                    out.push(name.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The entries directly under a tag folder: sub-folders end with `/`.
    pub fn ls_tags(&self, folder: &str) -> Result<Vec<String>> {
        let folder = folder.trim_matches('/');
        let prefix = if folder.is_empty() {
            String::new()
        } else {
            format!("{folder}/")
        };
        let mut out: Vec<String> = self
            .tags()?
            .into_iter()
            .filter_map(|t| t.strip_prefix(&prefix).map(str::to_string))
            .map(|rest| match rest.split_once('/') {
                Some((dir, _)) => format!("{dir}/"),
                None => rest,
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    #[test]
    fn user_names_come_from_passwd() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(user_name(u32::MAX - 7), None);
    }

    #[test]
    fn history_and_versions() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path()).unwrap();
        let a = repo.write_blob(b"a").unwrap();
        let b = repo.write_blob(b"b").unwrap();
        repo.push_tag("org/name", &a).unwrap();
        repo.push_tag("org/name", &b).unwrap();
        let spec = |v| TagSpec {
            name: "org/name".into(),
            version: v,
        };
        assert_eq!(repo.resolve_tag(&spec(0)).unwrap(), b);
        assert_eq!(repo.resolve_tag(&spec(1)).unwrap(), a);
        assert!(matches!(
            repo.resolve_tag(&spec(2)),
            Err(StorageError::UnknownTagVersion { .. })
        ));
        assert_eq!(repo.tags().unwrap(), ["org/name"]);
        assert_eq!(repo.ls_tags("").unwrap(), ["org/"]);
        assert_eq!(repo.ls_tags("org").unwrap(), ["name"]);
        repo.untag("org/name", Untag::Latest).unwrap();
        assert_eq!(repo.resolve_tag(&spec(0)).unwrap(), a);
        repo.untag("org/name", Untag::All).unwrap();
        assert!(matches!(
            repo.tag_history("org/name"),
            Err(StorageError::UnknownTag(_))
        ));
        // Versions are not names.
        assert!(repo.push_tag("org/name~0", &a).is_err());
        assert!(repo.push_tag("org/name~1", &a).is_err());
        assert!(repo.tag_history("org/name~1").is_err());
        assert!(repo.untag("org/name~1", Untag::All).is_err());
        assert!(repo.tags().unwrap().is_empty());
    }

    /// A writer that waited on a lock file which `untag --all` removed must
    /// not enter beside a writer holding the new lock file.
    #[test]
    fn waiting_on_a_removed_lock_file_retries() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path()).unwrap();
        let a = repo.write_blob(b"a").unwrap();
        repo.push_tag("org/x", &a).unwrap();
        let lock_path = repo.root().join("tags/org/x.tag.lock");
        let old = fs::File::open(&lock_path).unwrap();
        flock(&old, FlockOperation::LockExclusive).unwrap();
        let waiter = {
            let repo = repo.clone();
            std::thread::spawn(move || repo.push_tag("org/x", &a))
        };
        std::thread::sleep(Duration::from_millis(200));
        // What `untag --all` does while it holds the lock: remove the file;
        // then another writer creates a new one and holds it.
        fs::remove_file(&lock_path).unwrap();
        let new = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .unwrap();
        flock(&new, FlockOperation::LockExclusive).unwrap();
        drop(old);
        std::thread::sleep(Duration::from_millis(150));
        assert!(!waiter.is_finished(), "entered while the new lock is held");
        drop(new);
        waiter.join().unwrap().unwrap();
        assert_eq!(repo.tag_history("org/x").unwrap().len(), 2);
    }
}
