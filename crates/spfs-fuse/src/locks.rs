//! The locks that allow one service per control address and per mount
//! point.
//!
//! Each lock is an exclusive `flock` on a file that only the service's user
//! can open: created with mode 0600, opened with `O_NOFOLLOW` (a planted
//! symbolic link is refused, never followed) in a directory that belongs to
//! that user and that nobody else may write to. The files go away when the
//! service stops, without a window for two services: a file is unlinked
//! only while it is locked, and a lock taken on a file that was unlinked
//! meanwhile does not count (the path must still name the locked file).
//! The kernel releases the locks if the service dies; the files then stay
//! until the next service takes them over.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("a VFS service is already running (lock {0} is held)")]
    AlreadyRunning(PathBuf),
    #[error("unsafe lock directory {dir}: {why}")]
    UnsafeDirectory { dir: PathBuf, why: String },
    #[error("unsafe lock file {path}: {why}")]
    UnsafeFile { path: PathBuf, why: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io_err(context: String) -> impl FnOnce(Errno) -> LockError {
    move |e| LockError::Io {
        context,
        source: e.into(),
    }
}

/// Where the lock files of mount points live.
pub const MOUNTS_DIR: &str = "/run/spfs/mounts";

/// The lock that allows one service per mount point, whatever its address.
pub fn mountpoint_lock_path(mountpoint: &Path) -> PathBuf {
    let escaped: String = mountpoint
        .to_string_lossy()
        .chars()
        .map(|c| match c {
            '/' => "%2F".to_string(),
            '%' => "%25".to_string(),
            c => c.to_string(),
        })
        .collect();
    Path::new(MOUNTS_DIR).join(format!("{escaped}.lock"))
}

/// The lock that allows one service per control address: beside the
/// socket, or beside the token file for TCP.
pub fn address_lock_path(listen: &spfs_control::Listen, token_file: &Path) -> PathBuf {
    match listen {
        spfs_control::Listen::Unix(p) => p.with_extension("lock"),
        spfs_control::Listen::Tcp(_) => token_file.with_extension("lock"),
    }
}

/// One held lock: its directory, its name there and the locked file.
struct Held {
    path: PathBuf,
    dir: OwnedFd,
    name: OsString,
    file: OwnedFd,
}

/// The service's locks, held while this value lives; dropping it removes
/// the lock files and releases the locks.
pub struct ServiceLocks {
    held: Vec<Held>,
}

impl ServiceLocks {
    /// Take the lock of the control address, then that of the mount point.
    /// A lock held by a running service gives [`LockError::AlreadyRunning`].
    pub fn take(address_lock: &Path, mountpoint_lock: &Path) -> Result<ServiceLocks, LockError> {
        let mut locks = ServiceLocks { held: Vec::new() };
        for path in [address_lock, mountpoint_lock] {
            // On error, the locks taken so far are removed by drop.
            locks.held.push(lock(path)?);
        }
        Ok(locks)
    }

    /// The lock files held.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.held.iter().map(|h| h.path.as_path())
    }
}

impl Drop for ServiceLocks {
    fn drop(&mut self) {
        // Unlink while locked, so that nobody can lock this file and then
        // find its name gone — or lock a new file while this one is held.
        for h in self.held.drain(..).rev() {
            if names(&h.dir, &h.name, &h.file) {
                let _ = rustix::fs::unlinkat(&h.dir, &h.name, AtFlags::empty());
            }
            drop(h.file);
        }
    }
}

/// Whether `name` in `dir` is (still) the file `file`, not following links.
fn names(dir: &OwnedFd, name: &OsString, file: &OwnedFd) -> bool {
    match (
        rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW),
        rustix::fs::fstat(file),
    ) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

/// Open (creating it 0755 if missing) the directory of a lock file, and
/// check it: owned by this user and writable by nobody else.
fn open_dir(dir: &Path) -> Result<OwnedFd, LockError> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| LockError::Io {
                context: format!("cannot create {}", dir.display()),
                source,
            })?;
    }
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err(format!("cannot open {}", dir.display())))?;
    let st = rustix::fs::fstat(&fd).map_err(io_err(format!("cannot stat {}", dir.display())))?;
    let me = rustix::process::geteuid().as_raw();
    let unsafe_dir = |why: String| LockError::UnsafeDirectory {
        dir: dir.to_path_buf(),
        why,
    };
    if st.st_uid != me {
        return Err(unsafe_dir(format!(
            "owned by user {}, not by the service's user {me}",
            st.st_uid
        )));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "writable by group or others (mode {:04o})",
            st.st_mode & 0o7777
        )));
    }
    Ok(fd)
}

/// How often a lock whose file was removed meanwhile is tried again.
const ATTEMPTS: usize = 100;

/// Take the lock at `path`: a private regular file, exclusively locked,
/// still named by `path` once locked.
fn lock(path: &Path) -> Result<Held, LockError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(LockError::UnsafeFile {
            path: path.to_path_buf(),
            why: "not a file path".into(),
        });
    };
    let dir_fd = open_dir(dir)?;
    let unsafe_file = |why: &str| LockError::UnsafeFile {
        path: path.to_path_buf(),
        why: why.into(),
    };
    for _ in 0..ATTEMPTS {
        // NONBLOCK: a planted fifo must not hang the open.
        let file = match rustix::fs::openat(
            &dir_fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(f) => f,
            Err(Errno::LOOP) => return Err(unsafe_file("a symbolic link (not followed)")),
            Err(e) => return Err(io_err(format!("cannot open lock {}", path.display()))(e)),
        };
        let st = rustix::fs::fstat(&file)
            .map_err(io_err(format!("cannot stat lock {}", path.display())))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(unsafe_file("not a regular file"));
        }
        if st.st_uid != rustix::process::geteuid().as_raw() {
            return Err(unsafe_file(&format!("owned by user {}", st.st_uid)));
        }
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => return Err(LockError::AlreadyRunning(path.to_path_buf())),
            Err(e) => return Err(io_err(format!("cannot lock {}", path.display()))(e)),
        }
        let name = name.to_os_string();
        if !names(&dir_fd, &name, &file) {
            // A stopping service removed it between our open and lock.
            continue;
        }
        if st.st_mode & 0o077 != 0 {
            // Left by an older version: nobody else may open it from now on.
            rustix::fs::fchmod(&file, Mode::from_raw_mode(0o600))
                .map_err(io_err(format!("cannot chmod lock {}", path.display())))?;
        }
        return Ok(Held {
            path: path.to_path_buf(),
            dir: dir_fd,
            name,
            file,
        });
    }
    Err(LockError::Io {
        context: format!("cannot lock {}", path.display()),
        source: std::io::Error::other("its file kept being replaced"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn private_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn private_files_removed_on_drop() {
        let dir = private_dir();
        let (a, m) = (dir.path().join("vfs.lock"), dir.path().join("m/x.lock"));
        let locks = ServiceLocks::take(&a, &m).unwrap();
        assert_eq!(locks.paths().count(), 2);
        for p in [&a, &m] {
            assert_eq!(std::fs::metadata(p).unwrap().mode() & 0o777, 0o600, "{p:?}");
        }
        assert_eq!(
            std::fs::metadata(dir.path().join("m")).unwrap().mode() & 0o777,
            0o755
        );
        drop(locks);
        assert!(!a.exists() && !m.exists());
        // And they can be taken again.
        drop(ServiceLocks::take(&a, &m).unwrap());
    }

    #[test]
    fn second_holder_refused_while_the_first_lives() {
        let dir = private_dir();
        let (a, m) = (dir.path().join("vfs.lock"), dir.path().join("m.lock"));
        let first = ServiceLocks::take(&a, &m).unwrap();
        let err = ServiceLocks::take(&a, &dir.path().join("other.lock"))
            .err()
            .unwrap();
        assert!(
            matches!(&err, LockError::AlreadyRunning(p) if p == &a),
            "{err}"
        );
        // Same mount point, other address: refused too, and the address
        // lock it took meanwhile is gone again.
        let b = dir.path().join("b.lock");
        let err = ServiceLocks::take(&b, &m).err().unwrap();
        assert!(
            matches!(&err, LockError::AlreadyRunning(p) if p == &m),
            "{err}"
        );
        assert!(!b.exists());
        // The first holder's files are untouched.
        assert!(a.exists() && m.exists());
        drop(first);
    }

    #[test]
    fn planted_symlink_refused_not_followed() {
        let dir = private_dir();
        let target = dir.path().join("target");
        let a = dir.path().join("vfs.lock");
        std::os::unix::fs::symlink(&target, &a).unwrap();
        let err = ServiceLocks::take(&a, &dir.path().join("m.lock"))
            .err()
            .unwrap();
        assert!(matches!(err, LockError::UnsafeFile { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!target.exists());
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn unsafe_directories_refused() {
        let dir = private_dir();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ServiceLocks::take(&open.join("a.lock"), &dir.path().join("m.lock"))
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(matches!(err, LockError::UnsafeDirectory { .. }), "{text}");
        assert!(text.contains(&*open.to_string_lossy()) && !text.contains('\n'));
        assert!(!open.join("a.lock").exists());
        if rustix::process::geteuid().is_root() {
            let theirs = dir.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let err = ServiceLocks::take(&theirs.join("a.lock"), &dir.path().join("m.lock"))
                .err()
                .unwrap();
            assert!(err.to_string().contains("owned by user 65534"), "{err}");
        }
    }

    #[test]
    fn old_world_readable_file_made_private() {
        let dir = private_dir();
        let a = dir.path().join("vfs.lock");
        std::fs::write(&a, "").unwrap();
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o644)).unwrap();
        let locks = ServiceLocks::take(&a, &dir.path().join("m.lock")).unwrap();
        assert_eq!(std::fs::metadata(&a).unwrap().mode() & 0o777, 0o600);
        drop(locks);
    }

    #[test]
    fn a_lock_on_a_removed_file_does_not_count() {
        let dir = private_dir();
        let a = dir.path().join("vfs.lock");
        let dir_fd = open_dir(dir.path()).unwrap();
        let name = OsString::from("vfs.lock");
        let file = rustix::fs::openat(
            &dir_fd,
            &name,
            OFlags::WRONLY | OFlags::CREATE,
            Mode::from_raw_mode(0o600),
        )
        .unwrap();
        assert!(names(&dir_fd, &name, &file));
        std::fs::remove_file(&a).unwrap();
        assert!(!names(&dir_fd, &name, &file));
        std::fs::write(&a, "").unwrap();
        assert!(!names(&dir_fd, &name, &file));
    }

    #[test]
    fn mountpoint_lock_names_are_escaped() {
        assert_eq!(
            mountpoint_lock_path(Path::new("/a%b/spfs")),
            Path::new("/run/spfs/mounts/%2Fa%25b%2Fspfs.lock")
        );
    }
}
