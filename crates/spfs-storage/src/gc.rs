//! The repository-wide garbage-collection lock: writers share it, `spfs
//! clean` takes it alone while it deletes.
//!
//! ```text
//! ROOT/locks/gc         held shared by every write operation, exclusively by clean
//! ROOT/locks/gc.queue   a turnstile: clean takes it first, so that writers
//!                       arriving meanwhile wait instead of starving it
//! ```
//!
//! A write operation (a commit, a blob written, a pull into this
//! repository, a read-through fetch, the VFS service registering a view)
//! holds a [`GcGuard`] from before its first write or dedup check until the
//! root that makes what it wrote reachable exists (the tag, the runtime
//! record, the registered view) or until it ends. `spfs clean` decides what
//! is garbage without the lock, then takes it exclusively ([`GcLock`]),
//! re-reads the roots and deletes. So no write operation overlaps the
//! deletion, and one that ended before it has its root in place: see
//! `docs/clean.md` for the protocol and why it is safe.
//!
//! The locks are open file description locks (`fcntl(F_OFD_SETLK)`, see
//! [`lock`]), released by the kernel when their holder dies. Like `flock`s
//! they belong to open file descriptions, so two descriptors of one process
//! conflict like two processes do; guards are therefore counted per process
//! and repository and share one descriptor: nested guards, and guards of
//! many threads, never wait for each other. A process that holds the
//! exclusive lock passes its own guards through.
//!
//! In a shared repository `locks/` and its files are root's (0755, 0644):
//! every user can open them to read, which is all a shared (read) lock
//! needs, and only root can replace or remove them. An exclusive (write)
//! lock needs a descriptor open for writing, so only the files' owner can
//! hold writers off: root, in a shared repository (clean opens them
//! read-write). With `flock`, which locks a read-only descriptor
//! exclusively too, any user could stop every commit and every runtime's
//! registration for as long as they liked. (Every spfs process must lock
//! them the same way: `flock`s and these locks do not see each other.)

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use std::os::fd::{AsFd, AsRawFd};

use rustix::fs::{FlockOperation, OFlags};
use rustix::io::Errno;

use crate::beneath::{self, NewDirs};
use crate::error::{Result, StorageError};
use crate::fs::FsRepository;
use crate::shared::Sharing;

/// Where the locks are, below the root.
pub(crate) const LOCKS: &str = "locks";
/// The lock itself.
pub(crate) const GC_LOCK: &str = "locks/gc";
/// The turnstile in front of it.
pub(crate) const GC_QUEUE: &str = "locks/gc.queue";
/// The mode of the lock files: readable by all (a shared lock needs no
/// more), writable by their owner (an exclusive lock over NFS needs it).
pub(crate) const LOCK_MODE: u32 = 0o644;

/// How long a writer waits for `spfs clean` to finish deleting.
pub const WRITER_TIMEOUT: Duration = Duration::from_secs(300);

/// What a process holds of one repository's lock.
#[derive(Default)]
struct Held {
    /// The descriptor holding the shared lock, while `shared > 0`.
    fd: Option<OwnedFd>,
    shared: usize,
    /// This process holds the exclusive lock (it is cleaning).
    exclusive: bool,
}

/// A repository's lock as this process holds it, by the root's device
/// and inode (two paths to one repository are one lock).
type Key = (u64, u64);

fn registry() -> &'static Mutex<HashMap<Key, Arc<Mutex<Held>>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<Key, Arc<Mutex<Held>>>>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

fn entry(key: Key) -> Arc<Mutex<Held>> {
    registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default()
        .clone()
}

/// A write operation's share of the lock; released when the last guard of
/// this process (for this repository) is dropped.
#[must_use = "the lock is held only while the guard lives"]
pub struct GcGuard {
    held: Arc<Mutex<Held>>,
}

impl std::fmt::Debug for GcGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GcGuard")
    }
}

impl Drop for GcGuard {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.shared = held.shared.saturating_sub(1);
        if held.shared == 0 {
            // Closing the descriptor releases the lock.
            held.fd = None;
        }
    }
}

/// `spfs clean`'s exclusive hold of the lock (and of the turnstile).
#[must_use = "the lock is held only while this lives"]
pub struct GcLock {
    held: Arc<Mutex<Held>>,
    _queue: OwnedFd,
    _lock: OwnedFd,
}

impl std::fmt::Debug for GcLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GcLock")
    }
}

impl Drop for GcLock {
    fn drop(&mut self) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .exclusive = false;
    }
}

/// Apply `op` to the lock file open as `fd`: an open file description
/// lock on the whole file (`fcntl` `F_OFD_SETLK`, or `F_OFD_SETLKW` for the
/// blocking operations). A shared lock needs `fd` open for reading, an
/// exclusive one open for writing (`EBADF` otherwise); a conflict is
/// `WOULDBLOCK`. What every spfs process uses on `locks/gc` and
/// `locks/gc.queue` (see the module docs).
pub fn lock(fd: &impl AsFd, op: FlockOperation) -> rustix::io::Result<()> {
    let (cmd, kind) = match op {
        FlockOperation::LockShared => (libc::F_OFD_SETLKW, libc::F_RDLCK),
        FlockOperation::LockExclusive => (libc::F_OFD_SETLKW, libc::F_WRLCK),
        FlockOperation::Unlock => (libc::F_OFD_SETLKW, libc::F_UNLCK),
        FlockOperation::NonBlockingLockShared => (libc::F_OFD_SETLK, libc::F_RDLCK),
        FlockOperation::NonBlockingLockExclusive => (libc::F_OFD_SETLK, libc::F_WRLCK),
        FlockOperation::NonBlockingUnlock => (libc::F_OFD_SETLK, libc::F_UNLCK),
    };
    // SAFETY: an all-zero `flock` is a valid value (a lock of the whole
    // file from its start; `l_pid` must be 0 for OFD locks).
    let mut range: libc::flock = unsafe { std::mem::zeroed() };
    range.l_type = kind as libc::c_short;
    range.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: `fd` is an open descriptor for the call's duration and
    // `range` a valid `flock` the kernel only reads.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), cmd, &range) };
    if r != -1 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    Err(match err.raw_os_error() {
        // POSIX lets a conflict be EACCES as well.
        Some(libc::EACCES) | Some(libc::EAGAIN) => rustix::io::Errno::WOULDBLOCK,
        Some(n) => rustix::io::Errno::from_raw_os_error(n),
        None => rustix::io::Errno::IO,
    })
}

/// How long clean holds the turnstile (new writers waiting) for the lock's
/// holders to finish, at a time; then it lets writers through for
/// [`TURNSTILE_GAP`] and tries again, until its timeout.
pub const TURNSTILE_TURN: Duration = Duration::from_secs(5);
/// See [`TURNSTILE_TURN`].
const TURNSTILE_GAP: Duration = Duration::from_millis(500);

/// How long a wait for the lock goes unmentioned.
const QUIET_WAIT: Duration = Duration::from_secs(1);

/// Try `op` on `fd` until it succeeds or `deadline` passes; `Ok(false)`
/// on timeout. Calls `waiting` once, when it has waited [`QUIET_WAIT`].
fn lock_until(
    fd: &OwnedFd,
    op: FlockOperation,
    deadline: Instant,
    mut waiting: impl FnMut(),
) -> std::io::Result<bool> {
    let mut pause = Duration::from_millis(1);
    let start = Instant::now();
    let mut told = false;
    loop {
        match lock(fd, op) {
            Ok(()) => return Ok(true),
            Err(Errno::WOULDBLOCK | Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        if !told && start.elapsed() >= QUIET_WAIT {
            told = true;
            waiting();
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

impl FsRepository {
    /// The key of this repository's lock in this process.
    fn lock_key(&self) -> Result<Key> {
        let st = rustix::fs::fstat(self.fd())
            .map_err(|e| StorageError::io("cannot read", self.root())(e.into()))?;
        Ok((st.st_dev, st.st_ino))
    }

    /// Open lock file `rel` (for writing too when `write`), making it and
    /// `locks/` where this user may: anyone in a private repository, root
    /// in a shared one (with the shared layout's owners and modes).
    pub(crate) fn open_lock_file(&self, rel: &str, write: bool) -> Result<OwnedFd> {
        let rel = Path::new(rel);
        let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
        let checked = |fd: OwnedFd| -> Result<OwnedFd> {
            let st =
                rustix::fs::fstat(&fd).map_err(|e| self.io_err("cannot open", rel)(e.into()))?;
            if !beneath::is_regular_stat(&st) {
                return Err(self.io_err("cannot open", rel)(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not a regular file",
                )));
            }
            Ok(fd)
        };
        // Without O_CREAT first: the kernel's protected_regular refuses
        // O_CREAT on another user's file in a sticky directory.
        match beneath::open(self.fd(), rel, access | OFlags::NONBLOCK, 0) {
            Ok(fd) => return checked(fd),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io_err("cannot open", rel)(e)),
        }
        let root = rustix::process::geteuid().is_root();
        let (dirs, owner) = match self.sharing() {
            Sharing::Private => (NewDirs::Inherit, None),
            Sharing::Shared { group } if root => (
                NewDirs::Exact { mode: 0o755, group },
                Some(group.unwrap_or(0)),
            ),
            // Laid out before the lock existed: root adds it.
            Sharing::Shared { .. } => {
                return Err(StorageError::MissingDirectory(self.root().join(LOCKS)));
            }
        };
        let (parent, _) = beneath::split(rel).map_err(self.io_err("cannot create", rel))?;
        self.open_dir(parent, Some(dirs))?;
        let fd = match beneath::open(
            self.fd(),
            rel,
            access | OFlags::NONBLOCK | OFlags::CREATE | OFlags::EXCL,
            0o600,
        ) {
            Ok(fd) => {
                // The exact mode (and in a shared repository, root's
                // group) whatever the umask.
                beneath::set_owner_mode(&fd, owner.map(|_| 0), owner, LOCK_MODE)
                    .map_err(self.io_err("cannot set the mode of", rel))?;
                fd
            }
            // Made meanwhile by another process.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                beneath::open(self.fd(), rel, access | OFlags::NONBLOCK, 0)
                    .map_err(self.io_err("cannot open", rel))?
            }
            Err(e) => return Err(self.io_err("cannot create", rel)(e)),
        };
        checked(fd)
    }

    /// Make `locks/` and its files (what `init` lays out).
    pub(crate) fn make_lock_files(&self) -> Result<()> {
        for rel in [GC_LOCK, GC_QUEUE] {
            self.open_lock_file(rel, false)?;
        }
        Ok(())
    }

    /// Where the garbage-collection lock is.
    pub fn gc_lock_path(&self) -> PathBuf {
        self.root().join(GC_LOCK)
    }

    /// Hold the garbage-collection lock shared for one write operation:
    /// from before its first write or dedup check until the root that
    /// makes what it wrote reachable exists, or it ends. Waits (at most
    /// [`WRITER_TIMEOUT`]) while `spfs clean` deletes. Re-entrant: guards
    /// taken while this process holds one cost nothing and never wait.
    pub fn write_guard(&self) -> Result<GcGuard> {
        let held = entry(self.lock_key()?);
        let mut state = held.lock().unwrap_or_else(|p| p.into_inner());
        if state.shared > 0 || state.exclusive {
            state.shared += 1;
            drop(state);
            return Ok(GcGuard { held });
        }
        let deadline = Instant::now() + WRITER_TIMEOUT;
        let queue = self.open_lock_file(GC_QUEUE, false)?;
        let lock = self.open_lock_file(GC_LOCK, false)?;
        let waiting = || {
            tracing::info!(
                "waiting for 'spfs clean' to finish with {} (it holds {})",
                self.root().display(),
                GC_LOCK
            )
        };
        let timed_out = || {
            StorageError::io(
                "timed out waiting for the garbage-collection lock",
                self.gc_lock_path(),
            )(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "'spfs clean' (or another process holding it exclusively) did not release it within {} s",
                    WRITER_TIMEOUT.as_secs()
                ),
            ))
        };
        let io = |rel: &str| self.io_err("cannot lock", Path::new(rel));
        // Through the turnstile (held by clean while it waits for writers
        // and while it deletes), then the lock itself; the turnstile is
        // released at once.
        let mut told = false;
        let mut tell = || {
            if !std::mem::replace(&mut told, true) {
                waiting();
            }
        };
        if !lock_until(
            &queue,
            FlockOperation::NonBlockingLockShared,
            deadline,
            &mut tell,
        )
        .map_err(io(GC_QUEUE))?
        {
            return Err(timed_out());
        }
        let got = lock_until(
            &lock,
            FlockOperation::NonBlockingLockShared,
            deadline,
            &mut tell,
        )
        .map_err(io(GC_LOCK))?;
        drop(queue);
        if !got {
            return Err(timed_out());
        }
        state.fd = Some(lock);
        state.shared = 1;
        drop(state);
        Ok(GcGuard { held })
    }

    /// Take the garbage-collection lock exclusively (what `spfs clean`
    /// does before it deletes), waiting at most `timeout` for the write
    /// operations holding it to end; `waiting` is called once if it must
    /// wait a while. Write guards this process takes meanwhile pass through.
    pub fn gc_lock(&self, timeout: Duration, waiting: impl FnOnce()) -> Result<GcLock> {
        let held = entry(self.lock_key()?);
        let mut state = held.lock().unwrap_or_else(|p| p.into_inner());
        if state.shared > 0 || state.exclusive {
            return Err(self.io_err("cannot lock", Path::new(GC_LOCK))(
                std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "this process already holds it (a write operation or another clean is under way)",
                ),
            ));
        }
        let deadline = Instant::now() + timeout;
        // For writing: an exclusive lock needs it, which only the files'
        // owner (root, in a shared repository) can have.
        let open = |rel: &str| match self.open_lock_file(rel, true) {
            Err(StorageError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Err(StorageError::io("cannot lock", self.root().join(rel))(
                    std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        "cleaning needs to open it for writing, which only its owner may \
                         (root, in a shared repository)",
                    ),
                ))
            }
            other => other,
        };
        let queue = open(GC_QUEUE)?;
        let lock = open(GC_LOCK)?;
        let mut waiting = Some(waiting);
        let mut tell = || {
            if let Some(w) = waiting.take() {
                w()
            }
        };
        let io = |rel: &str| self.io_err("cannot lock", Path::new(rel));
        // Through the turnstile, which holds new writers back while the
        // lock's holders finish; but for a turn at most: anyone who may
        // read the lock file may hold it shared as long as they like, and
        // new writers must not wait on them for the whole timeout.
        let mut got = false;
        while lock_until(
            &queue,
            FlockOperation::NonBlockingLockExclusive,
            deadline,
            &mut tell,
        )
        .map_err(io(GC_QUEUE))?
        {
            let turn = (Instant::now() + TURNSTILE_TURN).min(deadline);
            got = lock_until(
                &lock,
                FlockOperation::NonBlockingLockExclusive,
                turn,
                &mut tell,
            )
            .map_err(io(GC_LOCK))?;
            if got {
                break;
            }
            // The writers that queued meanwhile go through.
            let _ = self::lock(&queue, FlockOperation::Unlock);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(TURNSTILE_GAP.min(left));
        }
        if !got {
            return Err(StorageError::io(
                "timed out waiting for the garbage-collection lock",
                self.gc_lock_path(),
            )(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "write operations (commits, pulls, writes, views being registered) held it for more than {} s; no object or payload was removed",
                    timeout.as_secs()
                ),
            )));
        }
        state.exclusive = true;
        drop(state);
        Ok(GcLock {
            held,
            _queue: queue,
            _lock: lock,
        })
    }
}

/// Whether `fd` could be locked as `op` right now (for tests).
#[cfg(test)]
fn free_for(fd: &impl std::os::fd::AsFd, op: FlockOperation) -> bool {
    let ok = lock(fd, op).is_ok();
    if ok {
        let _ = lock(fd, FlockOperation::Unlock);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::PermissionsExt;

    fn other_fd(repo: &FsRepository) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(repo.gc_lock_path())
            .unwrap()
    }

    #[test]
    fn a_lock_held_shared_for_good_holds_new_writers_back_a_turn_at_most() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        repo.make_lock_files().unwrap();
        // Someone holds the lock shared and never lets go.
        let holder = File::open(repo.gc_lock_path()).unwrap();
        lock(&holder, FlockOperation::NonBlockingLockShared).unwrap();
        let cleaning = {
            let repo = repo.clone();
            std::thread::spawn(move || repo.gc_lock(Duration::from_secs(8), || {}).map(drop))
        };
        std::thread::sleep(Duration::from_millis(300));
        // A writer of another process: through the turnstile (shared) on
        // its own description, as write_guard does.
        let queue = File::open(repo.root().join(GC_QUEUE)).unwrap();
        assert!(
            !free_for(&queue, FlockOperation::NonBlockingLockShared),
            "clean holds the turnstile while it waits"
        );
        let start = Instant::now();
        let through = lock_until(
            &std::os::fd::OwnedFd::from(queue),
            FlockOperation::NonBlockingLockShared,
            start + Duration::from_secs(7),
            || {},
        )
        .unwrap();
        assert!(through, "new writers waited for the whole timeout");
        assert!(start.elapsed() <= TURNSTILE_TURN + Duration::from_secs(1));
        assert!(
            cleaning.join().unwrap().is_err(),
            "clean gives up, nothing removed"
        );
    }

    #[test]
    fn a_reader_of_the_lock_file_can_share_it_never_hold_writers_off() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        repo.make_lock_files().unwrap();
        // What a user who may only read root's lock file can open.
        let reader = File::open(repo.gc_lock_path()).unwrap();
        assert_eq!(
            lock(&reader, FlockOperation::NonBlockingLockExclusive),
            Err(rustix::io::Errno::BADF)
        );
        lock(&reader, FlockOperation::NonBlockingLockShared).unwrap();
        // Writers share it with the reader.
        drop(repo.write_guard().unwrap());
        // Clean waits for it like for any writer.
        assert!(repo.gc_lock(Duration::from_millis(100), || {}).is_err());
        drop(reader);
        drop(repo.gc_lock(Duration::from_millis(100), || {}).unwrap());
    }

    #[test]
    fn guards_are_reentrant_and_share_one_lock() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let outer = repo.write_guard().unwrap();
        // Nested, through another handle of the same repository (another
        // path to it too), and from another thread: none waits.
        let again = FsRepository::open(dir.path().join("repo/../repo")).unwrap();
        let inner = again.write_guard().unwrap();
        let threaded = {
            let repo = repo.clone();
            std::thread::spawn(move || repo.write_guard().map(drop))
        };
        threaded.join().unwrap().unwrap();
        // Another open file description sees the lock held shared: it may
        // share it, not take it alone.
        let probe = other_fd(&repo);
        assert!(!free_for(&probe, FlockOperation::NonBlockingLockExclusive));
        assert!(free_for(&probe, FlockOperation::NonBlockingLockShared));
        drop(outer);
        assert!(
            !free_for(&probe, FlockOperation::NonBlockingLockExclusive),
            "released while a guard lives"
        );
        drop(inner);
        assert!(free_for(&probe, FlockOperation::NonBlockingLockExclusive));
        // The clean of this process: write guards pass through.
        let lock = repo.gc_lock(Duration::from_secs(1), || {}).unwrap();
        let through = repo.write_guard().unwrap();
        assert!(!free_for(&probe, FlockOperation::NonBlockingLockShared));
        drop(through);
        drop(lock);
        assert!(free_for(&probe, FlockOperation::NonBlockingLockExclusive));
        let mode = std::fs::metadata(repo.gc_lock_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, LOCK_MODE);
    }

    #[test]
    fn the_exclusive_lock_waits_for_writers() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        // A writer of another process: a shared lock on its own open file
        // description.
        let writer = other_fd(&repo);
        lock(&writer, FlockOperation::LockShared).unwrap();
        let start = Instant::now();
        let mut waited = false;
        let err = repo
            .gc_lock(Duration::from_millis(1300), || waited = true)
            .unwrap_err()
            .to_string();
        assert!(waited, "a wait of a second is mentioned");
        assert!(start.elapsed() >= Duration::from_millis(1300));
        assert!(
            err.contains("timed out waiting for the garbage-collection lock")
                && err.contains("locks/gc")
                && err.contains("no object or payload was removed"),
            "{err}"
        );
        // Released within the timeout: the clean gets it.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(writer);
        });
        let start = Instant::now();
        let lock = repo.gc_lock(Duration::from_secs(10), || {}).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(150));
        releaser.join().unwrap();
        // While it is held, another process's writer cannot get in...
        let probe = other_fd(&repo);
        assert!(!free_for(&probe, FlockOperation::NonBlockingLockShared));
        drop(lock);
        assert!(free_for(&probe, FlockOperation::NonBlockingLockShared));
    }

    /// In a shared repository every user shares the lock through root's
    /// files; one laid out before them names what root must add.
    #[test]
    fn users_of_a_shared_repository_share_roots_lock() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: switching users needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let repo = FsRepository::create_shared(dir.path().join("repo"), None).unwrap();
        let as_user = |repo: FsRepository| {
            std::thread::spawn(move || {
                // This thread only: another unprivileged user.
                let (uid, gid) = (
                    rustix::fs::Uid::from_raw(64_011),
                    rustix::fs::Gid::from_raw(64_011),
                );
                rustix::thread::set_thread_res_gid(gid, gid, gid).unwrap();
                rustix::thread::set_thread_res_uid(uid, uid, uid).unwrap();
                repo.write_guard().map(drop).map_err(|e| e.to_string())
            })
            .join()
            .unwrap()
        };
        as_user(repo.clone()).unwrap();
        // Made before locks/ existed: the user is told to ask root.
        std::fs::remove_dir_all(repo.root().join(LOCKS)).unwrap();
        let err = as_user(repo.clone()).unwrap_err();
        assert!(
            err.contains("locks is missing") && err.contains("--shared"),
            "{err}"
        );
        // Root's next write lays it out as init does.
        repo.write_guard().map(drop).unwrap();
        let m = std::fs::metadata(repo.root().join(LOCKS)).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
        as_user(repo).unwrap();
    }

    #[test]
    fn writers_wait_for_the_exclusive_lock_and_for_the_turnstile() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        repo.write_guard().map(drop).unwrap();
        for rel in [GC_LOCK, GC_QUEUE] {
            // Another process's clean: an exclusive lock on its own
            // descriptor.
            let clean = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(repo.root().join(rel))
                .unwrap();
            lock(&clean, FlockOperation::LockExclusive).unwrap();
            let writer = {
                let repo = repo.clone();
                std::thread::spawn(move || {
                    let start = Instant::now();
                    let guard = repo.write_guard();
                    (start.elapsed(), guard.map(drop))
                })
            };
            std::thread::sleep(Duration::from_millis(250));
            assert!(!writer.is_finished(), "{rel}: a writer got in");
            drop(clean);
            let (waited, guard) = writer.join().unwrap();
            guard.unwrap();
            assert!(waited >= Duration::from_millis(200), "{rel}: {waited:?}");
        }
        // The turnstile is not kept by writers: a clean that arrives while
        // a writer works takes it and waits only for the lock.
        let guard = repo.write_guard().unwrap();
        let queue = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(repo.root().join(GC_QUEUE))
            .unwrap();
        assert!(free_for(&queue, FlockOperation::NonBlockingLockExclusive));
        drop(guard);
    }
}
