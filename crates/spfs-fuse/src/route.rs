//! Routing a request to its caller's runtime, on Linux.
//!
//! A FUSE request carries the id of the calling *thread*. A runtime is bound
//! to a cgroup (v2) that the service created for it and moved its root
//! process into: every descendant is born in it and stays in it however it
//! is reparented, and cgroup membership cannot be inherited by an unrelated
//! process that happens to reuse a dead process's PID. A thread belongs to
//! the runtime of the nearest cgroup, from its own up, that is bound to a
//! runtime (runtimes may nest: `spfs run` inside a runtime).
//!
//! The first request from a thread costs a `pidfd_open`, a `PIDFD_GET_INFO`
//! and, unless its cgroup is itself a runtime's, a read of
//! `/proc/TID/cgroup`. The answer is cached with the pidfd and the cgroup
//! id; a later request from the same thread id is answered from the cache
//! after one `PIDFD_GET_INFO` proves the thread is still the one we looked
//! at (a pidfd never names another thread) and still in the same cgroup (a
//! process moved to another cgroup is routed by its new one at once).
//! Kernels before 6.13 lack that call: there a zero-timeout `poll` proves
//! the thread alive, and a move is noticed when the cache is next cleared.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

use spfs_vfs::{Registry, Runtime};

use crate::process::pidfd_info;
pub use crate::process::{cgroup_path_of as cgroup_of, has_exited, pidfd_open};

/// The largest number of threads remembered (each holds a pidfd) before
/// dead ones are swept; if that is not enough, the cache starts afresh.
const CACHE_SWEEP_AT: usize = 4096;

struct Cached {
    pidfd: OwnedFd,
    /// The thread's cgroup id when routed (0: the kernel cannot tell).
    cgroup_id: u64,
    runtime: Option<Weak<Runtime>>,
}

/// Which runtime each runtime cgroup belongs to.
#[derive(Default)]
struct Bindings {
    by_id: HashMap<u64, String>,
    by_path: HashMap<String, String>,
}

/// Maps caller thread ids to runtimes through cgroup membership.
pub struct Router {
    registry: Arc<Registry>,
    bindings: RwLock<Bindings>,
    cache: RwLock<HashMap<u32, Cached>>,
    /// Bumped by [`Router::forget_all`]: an answer computed before a
    /// registration or removal must not be cached after it.
    generation: AtomicU64,
    /// Requests answered from the cache, looked up, and looked up without
    /// a pidfd (not cached).
    hits: AtomicU64,
    misses: AtomicU64,
    uncached: AtomicU64,
}

/// What the router has done (see [`Router::counts`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteCounts {
    pub hits: u64,
    pub misses: u64,
    pub uncached: u64,
    /// Threads remembered now.
    pub cached_threads: u64,
}

/// The cgroup id of the thread a pidfd names: `Ok(None)` when the kernel
/// cannot say (before 6.13), an error when the thread is gone.
fn cgroup_id_of(pidfd: &OwnedFd) -> std::io::Result<Option<u64>> {
    Ok(pidfd_info(pidfd)?.map(|i| i.cgroup_id))
}

impl Router {
    pub fn new(registry: Arc<Registry>) -> Self {
        Router {
            registry,
            bindings: RwLock::default(),
            cache: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            uncached: AtomicU64::new(0),
        }
    }

    /// Requests routed from the cache, looked up, and looked up without
    /// caching; threads remembered.
    pub fn counts(&self) -> RouteCounts {
        RouteCounts {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            uncached: self.uncached.load(Ordering::Relaxed),
            cached_threads: self.cache.read().unwrap_or_else(|p| p.into_inner()).len() as u64,
        }
    }

    /// Route the threads of cgroup `path` (id `id`) and of every cgroup
    /// below it to runtime `name`.
    pub fn bind(&self, name: &str, path: &str, id: u64) {
        let mut b = self.bindings.write().unwrap_or_else(|p| p.into_inner());
        b.by_id.insert(id, name.to_string());
        b.by_path.insert(path.to_string(), name.to_string());
        drop(b);
        self.forget_all();
    }

    /// Stop routing to runtime `name`.
    pub fn unbind(&self, name: &str) {
        let mut b = self.bindings.write().unwrap_or_else(|p| p.into_inner());
        b.by_id.retain(|_, n| n != name);
        b.by_path.retain(|_, n| n != name);
        drop(b);
        self.forget_all();
    }

    /// The runtime the thread `tid` belongs to, if any.
    pub fn route(&self, tid: u32) -> Option<Arc<Runtime>> {
        if tid == 0 {
            return None;
        }
        {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(&tid) {
                let same = match cgroup_id_of(&c.pidfd) {
                    Ok(Some(id)) => id == c.cgroup_id,
                    Ok(None) => !has_exited(&c.pidfd),
                    Err(_) => false,
                };
                if same {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return c.runtime.as_ref().and_then(Weak::upgrade);
                }
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.route_slow(tid)
    }

    fn route_slow(&self, tid: u32) -> Option<Arc<Runtime>> {
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
                self.uncached.fetch_add(1, Ordering::Relaxed);
                return cgroup_of(tid).and_then(|c| self.runtime_for(0, Some(&c)));
            }
            // The thread is gone.
            Err(_) => return None,
        };
        let before = cgroup_id_of(&pidfd).ok()?.unwrap_or(0);
        let runtime = self.runtime_for(before, None).or_else(|| {
            let path = cgroup_of(tid)?;
            self.runtime_for(0, Some(&path))
        });
        // The pidfd was opened before anything was read: if the thread is
        // still alive, in the same cgroup, what we read belongs to it.
        match cgroup_id_of(&pidfd) {
            Ok(Some(after)) if after == before => {}
            Ok(None) if !has_exited(&pidfd) => {}
            Ok(Some(_)) => return runtime, // Moving right now: do not cache.
            _ => return None,
        }
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
                cgroup_id: before,
                runtime: runtime.as_ref().map(Arc::downgrade),
            },
        );
        runtime
    }

    /// The runtime of cgroup id `id`, or else of the nearest bound cgroup
    /// at or above `path`.
    fn runtime_for(&self, id: u64, path: Option<&str>) -> Option<Arc<Runtime>> {
        let b = self.bindings.read().unwrap_or_else(|p| p.into_inner());
        if let Some(name) = b.by_id.get(&id) {
            return self.registry.get(name);
        }
        let mut path = path?;
        loop {
            if let Some(name) = b.by_path.get(path) {
                return self.registry.get(name);
            }
            match path.rsplit_once('/') {
                Some((parent, _)) if !parent.is_empty() => path = parent,
                _ => return None,
            }
        }
    }

    /// The runtime whose cgroup (id `id`, path `path`) is, or is the
    /// nearest runtime cgroup above, a cgroup.
    pub fn runtime_of_cgroup(&self, id: u64, path: &str) -> Option<Arc<Runtime>> {
        self.runtime_for(id, Some(path))
    }

    /// Forget what is known about `tid`.
    pub fn forget(&self, tid: u32) {
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&tid);
    }

    /// Forget everything (after a runtime was registered or removed). An
    /// answer being computed meanwhile is not cached.
    pub fn forget_all(&self) {
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        cache.clear();
    }
}
