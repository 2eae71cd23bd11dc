//! The upper area of an editable view: the directory on local disk that
//! holds one runtime's edits, and the markers that say how it overlays the
//! layers below.
//!
//! The layout follows overlayfs, so that the rules are well known:
//!
//! - a file, symlink or directory in the upper area replaces the entry of
//!   the same path below (a directory merges with the one below);
//! - a *whiteout*, a character device 0:0, hides the name below;
//! - a directory with the xattr [`OPAQUE`] shows nothing from below (made
//!   by `mkdir`, so that a directory made where one was removed starts
//!   empty);
//! - a directory with the xattr [`REDIRECT`] (an absolute path of the
//!   layers below) merges with that directory instead of the one at its
//!   own path: a renamed lower directory keeps its contents without any of
//!   them being copied.
//!
//! The area belongs to root (mode 0700): only the service writes it, on
//! behalf of the runtime's processes, and every path below its root is
//! opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a
//! symlink a user made in the view never leads the service elsewhere.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat, XattrFlags};
use rustix::io::Errno;

/// The xattr of a directory that shows nothing of the layers below.
pub const OPAQUE: &str = "trusted.spfs.opaque";
/// The xattr of a directory that merges with another path of the layers
/// below (its value: that path, absolute, `/` for the root).
pub const REDIRECT: &str = "trusted.spfs.redirect";

/// The xattr of the area's own directory naming the user whose edits it
/// holds (set by the service when it makes the area; kept by
/// [`Upper::renew`]).
pub const OWNER: &str = "trusted.spfs.owner";

/// What a directory of the upper area merges with below.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The directory of the same path below (if there is one).
    Inherit,
    /// Nothing.
    Opaque,
    /// The directory at this path below.
    Redirect(Vec<u8>),
}

/// The upper area of one runtime.
#[derive(Debug)]
pub struct Upper {
    /// The area's directory (replaced by [`Upper::renew`]).
    root: std::sync::RwLock<OwnedFd>,
    path: PathBuf,
}

/// Whether `st` is a whiteout.
pub fn is_whiteout(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

fn io_of(e: Errno) -> io::Error {
    e.into()
}

impl Upper {
    /// Open (making it if needed) the upper area at `path`: a directory of
    /// root's, mode 0700.
    pub fn open(path: &Path) -> io::Result<Upper> {
        match std::fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let root = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&root)?;
        if st.st_uid != rustix::process::geteuid().as_raw() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} belongs to another user", path.display()),
            ));
        }
        rustix::fs::fchmod(&root, Mode::from_raw_mode(0o700))?;
        Ok(Upper {
            root: std::sync::RwLock::new(root),
            path: path.to_path_buf(),
        })
    }

    fn root(&self) -> std::sync::RwLockReadGuard<'_, OwnedFd> {
        self.root.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Start afresh with an empty area: the old one is renamed aside (a
    /// name no runtime can have, beside it) and removed in the background,
    /// so that a commit does not wait for thousands of files to go.
    pub fn renew(&self) -> io::Result<()> {
        static RENEWED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = RENEWED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let aside = self
            .path
            .with_file_name(format!(".old-{name}-{}-{n}", std::process::id()));
        let mut root = self.root.write().unwrap_or_else(|p| p.into_inner());
        let mut owner = [0u8; 16];
        let owner = rustix::fs::fgetxattr(&*root, OWNER, &mut owner)
            .ok()
            .map(|n| owner[..n].to_vec());
        std::fs::rename(&self.path, &aside)?;
        std::fs::create_dir(&self.path)?;
        let fresh = rustix::fs::open(
            &self.path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::fs::fchmod(&fresh, Mode::from_raw_mode(0o700))?;
        if let Some(owner) = owner {
            rustix::fs::fsetxattr(&fresh, OWNER, &owner, XattrFlags::empty())?;
        }
        *root = fresh;
        drop(root);
        std::thread::spawn(move || {
            if let Err(e) = std::fs::remove_dir_all(&aside) {
                tracing::warn!("cannot remove {}: {e}", aside.display());
            }
        });
        Ok(())
    }

    /// Where the area is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open directory `rel` of the area (`""`: its root).
    pub fn dir(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        let rel: &[u8] = if rel.is_empty() { b"." } else { rel };
        loop {
            match rustix::fs::openat2(
                &*self.root(),
                OsStr::from_bytes(rel),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            ) {
                Err(Errno::AGAIN | Errno::INTR) => continue,
                r => return r.map_err(io_of),
            }
        }
    }

    /// The state of the filesystem holding the area.
    pub fn statvfs(&self) -> io::Result<rustix::fs::StatVfs> {
        Ok(rustix::fs::fstatvfs(&*self.root())?)
    }

    /// Remove everything in the area (the area itself stays).
    pub fn clear(&self) -> io::Result<()> {
        remove_children(self.root().as_fd())
    }

    /// Remove everything in the area and the area itself (the open
    /// descriptor stays usable, on an empty, unnamed directory).
    pub fn destroy_contents(&self) -> io::Result<()> {
        self.clear()?;
        match std::fs::remove_dir(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// `lstat` of `name` in `dir`; `None` when there is nothing.
pub fn stat(dir: &OwnedFd, name: &[u8]) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Open directory `name` in `dir` (never through a symlink).
pub fn subdir(dir: &OwnedFd, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        OsStr::from_bytes(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Open regular file `name` in `dir` for reading and writing (never
/// through a symlink, never a device or fifo).
pub fn open_file(dir: &OwnedFd, name: &[u8]) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        OsStr::from_bytes(name),
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(Errno::INVAL.into());
    }
    // Back to blocking I/O for the file's life.
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK)?;
    Ok(File::from(fd))
}

/// What directory `dir` merges with below.
pub fn origin(dir: &OwnedFd) -> io::Result<Origin> {
    let mut buf = vec![0u8; 4096];
    match rustix::fs::fgetxattr(dir, OPAQUE, &mut buf) {
        Ok(_) => return Ok(Origin::Opaque),
        Err(Errno::NODATA) => {}
        Err(e) => return Err(e.into()),
    }
    match rustix::fs::fgetxattr(dir, REDIRECT, &mut buf) {
        Ok(n) => Ok(Origin::Redirect(buf[..n].to_vec())),
        Err(Errno::NODATA) => Ok(Origin::Inherit),
        Err(e) => Err(e.into()),
    }
}

/// Record what directory `dir` merges with below.
pub fn set_origin(dir: &OwnedFd, origin: &Origin) -> io::Result<()> {
    for name in [OPAQUE, REDIRECT] {
        match rustix::fs::fremovexattr(dir, name) {
            Ok(()) | Err(Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match origin {
        Origin::Inherit => Ok(()),
        Origin::Opaque => Ok(rustix::fs::fsetxattr(
            dir,
            OPAQUE,
            b"y",
            XattrFlags::empty(),
        )?),
        Origin::Redirect(path) => Ok(rustix::fs::fsetxattr(
            dir,
            REDIRECT,
            path,
            XattrFlags::empty(),
        )?),
    }
}

/// Put a whiteout named `name` in `dir` (replacing nothing).
pub fn whiteout(dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::mknodat(
        dir,
        OsStr::from_bytes(name),
        FileType::CharacterDevice,
        Mode::empty(),
        0,
    )?)
}

/// Remove `name` from `dir` (a directory with everything in it).
pub fn remove(dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
    let name = OsStr::from_bytes(name);
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) => {
            let sub = subdir(dir, name.as_bytes())?;
            remove_children(sub.as_fd())?;
            match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The names in `dir` (without `.` and `..`).
pub fn names(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let fd = rustix::fs::openat(
        dir,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    let mut d = rustix::fs::Dir::read_from(&fd)?;
    while let Some(item) = d.read() {
        let item = item?;
        let name = item.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(name.to_vec());
        }
    }
    Ok(out)
}

fn remove_children(dir: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    let owned = rustix::io::fcntl_dupfd_cloexec(dir, 0)?;
    for name in names(&owned)? {
        remove(&owned, &name)?;
    }
    Ok(())
}
