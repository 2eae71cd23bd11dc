//! Paths inside a repository, resolved below the repository's root
//! directory without ever following a symlink.
//!
//! In a shared repository other users create entries in the sticky
//! directories (payload and object shards, `tags/`, `runtimes/`, `tmp/`),
//! and the VFS service reads the repository as root. A symlink planted in
//! place of a payload, a tag folder or a record must neither redirect
//! another user's write nor make root read a file outside the repository.
//! So every open here is `openat2` relative to a descriptor of the root
//! with `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH` (no symlink in any
//! component, no `..` above the root) and `O_NOFOLLOW`; the root's own
//! path, given by the user or the configuration, may be a symlink.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};

use rustix::fs::{FileType, Gid, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

/// How often an open that raced a rename (`EAGAIN`) is retried.
const RACE_RETRIES: usize = 16;

/// How missing directories are made by [`make_dirs`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum NewDirs {
    /// Mode 0777 less the umask, owned by the caller: a private repository.
    Inherit,
    /// Exactly this mode (the umask cannot weaken it) and, if given, group.
    Exact { mode: u32, group: Option<u32> },
}

/// The error of a path that would go through a symlink or leave the root.
fn refused(errno: Errno) -> io::Error {
    match errno {
        Errno::LOOP => io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing a symlink inside the repository",
        ),
        Errno::XDEV => io::Error::new(io::ErrorKind::InvalidInput, "path leaves the repository"),
        e => e.into(),
    }
}

/// Open `rel` below `root` with `flags` (plus `O_NOFOLLOW | O_CLOEXEC`).
pub(crate) fn open(
    root: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlags,
    mode: u32,
) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(
            root,
            rel,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH,
        ) {
            Err(Errno::AGAIN | Errno::INTR) if tries < RACE_RETRIES => tries += 1,
            other => return other.map_err(refused),
        }
    }
}

/// Open the regular file `rel` below `root` for reading: never a symlink,
/// and never a fifo or device that something put in its place (the open
/// does not block on a fifo; the type is checked on the open descriptor).
pub(crate) fn open_regular(root: BorrowedFd<'_>, rel: &Path) -> io::Result<File> {
    open_regular_stat(root, rel).map(|(file, _)| file)
}

/// [`open_regular`], with the status of the file that was opened.
pub(crate) fn open_regular_stat(root: BorrowedFd<'_>, rel: &Path) -> io::Result<(File, Stat)> {
    let fd = open(root, rel, OFlags::RDONLY | OFlags::NONBLOCK, 0)?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok((File::from(fd), st))
}

/// The status of `rel` below `root` (reached without symlinks; a final
/// symlink is described, not followed), without opening it for reading.
pub(crate) fn stat(root: BorrowedFd<'_>, rel: &Path) -> io::Result<Stat> {
    let fd = open(root, rel, OFlags::PATH, 0)?;
    Ok(rustix::fs::fstat(&fd)?)
}

/// Whether `st` describes a regular file.
pub(crate) fn is_regular_stat(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
}

/// Whether `rel` below `root` is a regular file (reached without symlinks).
pub(crate) fn is_regular(root: BorrowedFd<'_>, rel: &Path) -> bool {
    stat(root, rel).is_ok_and(|st| is_regular_stat(&st))
}

/// The names in the directory `rel` below `root` (not `.` and `..`).
pub(crate) fn list_dir(root: BorrowedFd<'_>, rel: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let dir = open_dir(root, rel)?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(std::ffi::OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// Open the directory `rel` below `root` (readable, so it can be synced).
pub(crate) fn open_dir(root: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    open(root, rel, OFlags::RDONLY | OFlags::DIRECTORY, 0).map_err(|e| {
        // O_DIRECTORY | O_NOFOLLOW on a final symlink says ENOTDIR: name it.
        let symlink = e.raw_os_error() == Some(libc::ENOTDIR)
            && open(root, rel, OFlags::PATH, 0)
                .and_then(|fd| Ok(rustix::fs::fstat(&fd)?))
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
        if symlink { refused(Errno::LOOP) } else { e }
    })
}

/// Open the directory `rel` below `root`, making the missing ones as `new`
/// says, one component at a time; returns it and whether any was made.
pub(crate) fn make_dirs(
    root: BorrowedFd<'_>,
    rel: &Path,
    new: NewDirs,
) -> io::Result<(OwnedFd, bool)> {
    let mut dir = open_dir(root, Path::new("."))?;
    let mut made = false;
    for part in rel.components() {
        let Component::Normal(name) = part else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path leaves the repository",
            ));
        };
        let next = match open_dir(dir.as_fd(), Path::new(name)) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mode = match new {
                    NewDirs::Inherit => 0o777,
                    // Nobody else may use it before its mode is final.
                    NewDirs::Exact { .. } => 0o700,
                };
                let created = match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode)) {
                    Ok(()) => true,
                    Err(Errno::EXIST) => false,
                    Err(e) => return Err(e.into()),
                };
                let d = open_dir(dir.as_fd(), Path::new(name))?;
                if created {
                    made = true;
                    if let NewDirs::Exact { mode, group } = new {
                        set_owner_mode(&d, None, group, mode)?;
                    }
                }
                d
            }
            Err(e) => return Err(e),
        };
        dir = next;
    }
    Ok((dir, made))
}

/// Set the owner and group (where given) of `fd`, then its exact mode
/// (after the owner: `chown` clears the set-id bits).
pub(crate) fn set_owner_mode(
    fd: impl AsFd,
    owner: Option<u32>,
    group: Option<u32>,
    mode: u32,
) -> io::Result<()> {
    if owner.is_some() || group.is_some() {
        rustix::fs::fchown(
            &fd,
            owner.map(rustix::fs::Uid::from_raw),
            group.map(Gid::from_raw),
        )?;
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    Ok(())
}

/// `rel` split into its directory and final name.
pub(crate) fn split(rel: &Path) -> io::Result<(&Path, &std::ffi::OsStr)> {
    match (rel.parent(), rel.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file path",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn symlinks_anywhere_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("f"), b"secret").unwrap();
        std::fs::write(root.join("a/f"), b"inside").unwrap();
        symlink(&outside, root.join("link")).unwrap();
        symlink(outside.join("f"), root.join("a/g")).unwrap();
        let fd = File::open(&root).unwrap();
        let fd = fd.as_fd();
        assert!(open_regular(fd, Path::new("a/f")).is_ok());
        for bad in ["link/f", "a/g", "../outside/f", "a/../../outside/f"] {
            let err = open_regular(fd, Path::new(bad)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}: {err}");
            assert!(!is_regular(fd, Path::new(bad)), "{bad}");
        }
        let err = make_dirs(fd, Path::new("link/x"), NewDirs::Inherit).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        let err = open_dir(fd, Path::new("link")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(!outside.join("x").exists());
    }

    #[test]
    fn made_directories_get_their_exact_mode() {
        let dir = tempfile::tempdir().unwrap();
        let root = File::open(dir.path()).unwrap();
        let new = NewDirs::Exact {
            mode: 0o1777,
            group: None,
        };
        let (_, made) = make_dirs(root.as_fd(), Path::new("x/y"), new).unwrap();
        assert!(made);
        for d in ["x", "x/y"] {
            let mode = std::fs::metadata(dir.path().join(d))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o1777, "{d}");
        }
        let (_, made) = make_dirs(root.as_fd(), Path::new("x/y"), new).unwrap();
        assert!(!made);
    }
}
