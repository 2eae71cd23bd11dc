//! The service's log file: private and bounded.
//!
//! The log names users' runtimes, so it is created with mode 0600 and never
//! through a symbolic link ([`open_append`]). Any user can make the service
//! log (by what their processes do), so it is bounded: a [`LogFile`] rotates
//! past a size — the file becomes `<name>.1`, replacing the previous one,
//! and a new file takes its place — so at most twice the bound is kept.
//! [`tail`] reads the last lines across both files.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where the previous log goes when `path` rotates: `<path>.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Open `path` for appending, creating it with mode 0600; a symbolic link
/// at `path` is refused, not followed. An existing file of this user that
/// others may read is made private.
pub fn open_append(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    make_private(&file)?;
    Ok(file)
}

/// Refuse anything but a regular file; take group and other permissions
/// away from a file this user owns.
fn make_private(file: &File) -> io::Result<()> {
    let st = rustix::fs::fstat(file)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::other("not a regular file"));
    }
    if st.st_mode & 0o077 != 0 && st.st_uid == rustix::process::geteuid().as_raw() {
        rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(0o600))?;
    }
    Ok(())
}

/// A log file that rotates once `max_bytes` have been written to it.
///
/// Writes go through `&LogFile` (one `write` per line from a logger), so it
/// can be shared by threads. When the file rotates, the standard output and
/// error descriptors that pointed at it are moved to the new file too, so
/// that a panic message lands in the current log.
pub struct LogFile {
    max_bytes: u64,
    state: Mutex<State>,
}

struct State {
    file: File,
    /// Where the file is named, if known: it rotates there; otherwise it is
    /// truncated in place.
    path: Option<PathBuf>,
    written: u64,
}

/// Whether `path` names the same file as `file` (not following a link).
fn names(path: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.file_type().is_file() && a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl LogFile {
    /// The file standard error appends to, when it is a regular file (a
    /// service started by a client, or with `2>>FILE`); `None` for a
    /// terminal, pipe or journal, which bound themselves. The file is made
    /// private, and rotates where `/proc/self/fd/2` says it is named.
    pub fn from_stderr(max_bytes: u64) -> io::Result<Option<LogFile>> {
        let stderr = io::stderr();
        let st = rustix::fs::fstat(stderr.as_fd())?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Ok(None);
        }
        let file = File::from(rustix::io::fcntl_dupfd_cloexec(stderr.as_fd(), 3)?);
        make_private(&file)?;
        let path = std::fs::read_link("/proc/self/fd/2")
            .ok()
            .filter(|p| names(p, &file));
        Ok(Some(LogFile::new(file, path, max_bytes)))
    }

    /// A log writing to `file`, rotating at `path` (if given) past
    /// `max_bytes` (at least `spfs_config::LOG_MAX_BYTES_MIN`).
    pub fn new(file: File, path: Option<PathBuf>, max_bytes: u64) -> LogFile {
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        LogFile {
            max_bytes: max_bytes.max(spfs_config::LOG_MAX_BYTES_MIN.into()),
            state: Mutex::new(State {
                file,
                path,
                written,
            }),
        }
    }
}

impl State {
    /// Start a new file: rename the current one to `<path>.1` and create
    /// `path` afresh; when that cannot be done, empty the current file.
    fn rotate(&mut self) {
        self.written = 0;
        if let Some(path) = self.path.clone() {
            if names(&path, &self.file) && std::fs::rename(&path, rotated_path(&path)).is_ok() {
                let new = OpenOptions::new()
                    .append(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&path);
                if let Ok(new) = new {
                    self.redirect_stdio(&new);
                    self.file = new;
                    return;
                }
            }
            // Someone else renamed or replaced it: keep this file, bounded.
            self.path = None;
        }
        let _ = self.file.set_len(0);
    }

    /// Point standard output and error at `new` where they pointed at the
    /// current file.
    fn redirect_stdio(&self, new: &File) {
        let Ok(current) = rustix::fs::fstat(&self.file) else {
            return;
        };
        for fd in [1, 2] {
            // SAFETY: fds 1 and 2 belong to the process for its whole life;
            // fstat only reads them.
            let same = rustix::fs::fstat(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
                .is_ok_and(|st| st.st_dev == current.st_dev && st.st_ino == current.st_ino);
            if same {
                // SAFETY: dup2 atomically replaces the descriptor; nothing
                // else owns fds 1 and 2 as Rust values.
                unsafe { libc::dup2(new.as_raw_fd(), fd) };
            }
        }
    }
}

impl Write for &LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let n = state.file.write(buf)?;
        state.written += n as u64;
        if state.written >= self.max_bytes {
            state.rotate();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How much of the end of a file [`tail`] reads.
const TAIL_BYTES: u64 = 64 * 1024;

/// The last `n` lines of a file (within its last 64 KiB).
fn last_lines(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut file) = File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_BYTES);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // Probably cut in the middle.
    }
    let skip = lines.len().saturating_sub(n);
    lines[skip..].iter().map(|l| l.to_string()).collect()
}

/// The last `n` lines of the log at `path`, continuing into the rotated
/// file when the current one holds fewer.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let mut lines = last_lines(path, n);
    if lines.len() < n {
        let mut older = last_lines(&rotated_path(path), n - lines.len());
        older.append(&mut lines);
        lines = older;
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_private_and_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("vfs.log");
        open_append(&log).unwrap();
        let mode = std::fs::metadata(&log).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // An existing world-readable log is made private.
        let old = dir.path().join("old.log");
        std::fs::write(&old, "x").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        open_append(&old).unwrap();
        let mode = std::fs::metadata(&old).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A planted link is refused and its target never created.
        let link = dir.path().join("link.log");
        let target = dir.path().join("target");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_append(&link).is_err());
        assert!(!target.exists());
    }

    #[test]
    fn rotates_at_its_bound_keeping_one_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vfs.log");
        let log = LogFile::new(open_append(&path).unwrap(), Some(path.clone()), 4096);
        let line = [b'x'; 99];
        for i in 0..200 {
            (&log).write_all(&line).unwrap();
            (&log).write_all(format!("{i}\n").as_bytes()).unwrap();
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) < 4096 + 200, "current: {}", size(&path));
        let old = rotated_path(&path);
        assert!(size(&old) >= 4096 && size(&old) < 4096 + 200);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        // The tail spans both files, newest last.
        let lines = tail(&path, 3);
        assert_eq!(lines.len(), 3);
        assert!(lines[2].ends_with("199"), "{lines:?}");
        let many = tail(&path, 60);
        assert_eq!(many.len(), 60);
        assert!(many[59].ends_with("199"), "{many:?}");
    }

    #[test]
    fn truncates_when_the_name_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vfs.log");
        let log = LogFile::new(open_append(&path).unwrap(), None, 4096);
        for _ in 0..100 {
            (&log).write_all(&[b'y'; 100]).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() < 4096);
        assert!(!rotated_path(&path).exists());
    }
}
