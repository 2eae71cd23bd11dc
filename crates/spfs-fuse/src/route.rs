//! Routing a request to its caller's runtime, on Linux.
//!
//! A FUSE request carries the id of the calling *thread*. A runtime is bound
//! to a cgroup (v2) that the service created for it and moved its root
//! process into: every descendant is born in it and stays in it however it
//! is reparented, and cgroup membership cannot be inherited by an unrelated
//! process that happens to reuse a dead process's PID.
//!
//! The first request from a thread costs a `pidfd_open` and a read of
//! `/proc/TID/cgroup`. The answer is cached with the pidfd, which names that
//! one thread for its whole life; a later request from the same thread id is
//! answered from the cache after a zero-timeout `poll` of the pidfd proves
//! the thread is still the one we looked at (a pidfd becomes readable when
//! its thread exits, before its id can be reused).

use std::collections::HashMap;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::{Arc, RwLock, Weak};

use spfs_vfs::{Registry, Runtime};

/// `PIDFD_THREAD` (Linux 6.9): a pidfd for a thread rather than a process.
const PIDFD_THREAD: libc::c_int = libc::O_EXCL;

/// The largest number of threads remembered (each holds a pidfd) before
/// dead ones are swept; if that is not enough, the cache starts afresh.
const CACHE_SWEEP_AT: usize = 4096;

struct Cached {
    pidfd: OwnedFd,
    runtime: Option<Weak<Runtime>>,
}

/// Maps caller thread ids to runtimes through cgroup membership.
pub struct Router {
    /// The cgroup path (as `/proc/PID/cgroup` shows it) under which runtime
    /// cgroups are named after their runtime: e.g. `/spfs`.
    prefix: String,
    registry: Arc<Registry>,
    cache: RwLock<HashMap<u32, Cached>>,
    /// Bumped by [`Router::forget_all`]: an answer computed before a
    /// registration must not be cached after it.
    generation: std::sync::atomic::AtomicU64,
}

/// Open a pidfd for a thread (or process) id.
pub fn pidfd_open(tid: u32, thread: bool) -> std::io::Result<OwnedFd> {
    let flags = if thread { PIDFD_THREAD } else { 0 };
    // SAFETY: plain syscall with integer arguments; a non-negative result is
    // a new file descriptor that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid as libc::pid_t, flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the thread or process a pidfd names has exited.
pub fn has_exited(pidfd: &impl AsFd) -> bool {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(0) => false,
        Ok(_) => true,
        Err(_) => true,
    }
}

/// The cgroup v2 path of a thread, from `/proc/TID/cgroup`.
pub fn cgroup_of(tid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

impl Router {
    /// `prefix` is the cgroup path of the runtimes' parent as seen in
    /// `/proc/PID/cgroup` (for example `/spfs`).
    pub fn new(prefix: String, registry: Arc<Registry>) -> Self {
        Router {
            prefix: prefix.trim_end_matches('/').to_string(),
            registry,
            cache: RwLock::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The runtime the thread `tid` belongs to, if any.
    pub fn route(&self, tid: u32) -> Option<Arc<Runtime>> {
        if tid == 0 {
            return None;
        }
        {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(&tid)
                && !has_exited(&c.pidfd)
            {
                return c.runtime.as_ref().and_then(Weak::upgrade);
            }
        }
        self.route_slow(tid)
    }

    fn route_slow(&self, tid: u32) -> Option<Arc<Runtime>> {
        use std::sync::atomic::Ordering;
        let generation = self.generation.load(Ordering::Acquire);
        // Kernels before 6.9 have no thread pidfds: fall back to a process
        // pidfd, which works for every single-threaded caller and for the
        // main thread of the others.
        let pidfd = match pidfd_open(tid, true).or_else(|_| pidfd_open(tid, false)) {
            Ok(fd) => fd,
            // Out of descriptors, or a kernel before 6.9 that has no pidfds
            // for threads other than the main one: answer without caching.
            // That is still correct: the caller is blocked in this request,
            // so its id cannot be reused while we look.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::EINVAL)
                ) =>
            {
                tracing::debug!("no pidfd for thread {tid} ({e}); routing it uncached");
                return cgroup_of(tid).and_then(|c| self.runtime_for_cgroup(&c));
            }
            // The thread is gone.
            Err(_) => return None,
        };
        let cgroup = cgroup_of(tid)?;
        // The pidfd was opened before /proc was read: if the thread is still
        // alive now, what we read belongs to it.
        if has_exited(&pidfd) {
            return None;
        }
        let runtime = self.runtime_for_cgroup(&cgroup);
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return runtime;
        }
        if cache.len() >= CACHE_SWEEP_AT {
            cache.retain(|_, c| !has_exited(&c.pidfd));
            if cache.len() >= CACHE_SWEEP_AT {
                cache.clear();
            }
        }
        cache.insert(
            tid,
            Cached {
                pidfd,
                runtime: runtime.as_ref().map(Arc::downgrade),
            },
        );
        runtime
    }

    /// The runtime whose cgroup is `cgroup` or an ancestor of it.
    fn runtime_for_cgroup(&self, cgroup: &str) -> Option<Arc<Runtime>> {
        let rest = cgroup.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let name = rest.split('/').next()?;
        self.registry.get(name)
    }

    /// Forget what is known about `tid` (after moving it to another cgroup).
    pub fn forget(&self, tid: u32) {
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tid);
    }

    /// Forget everything (after a runtime was registered or removed).
    pub fn forget_all(&self) {
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}
