//! The runtimes' cgroups (v2): where each runtime's cgroup is made, moving a
//! process into it, and noticing when it is empty.
//!
//! A runtime's cgroup is always a new child of the cgroup its root process
//! is in (`<that cgroup>/spfs-<runtime>`): moving a process one level down
//! keeps every limit, freeze, kill and accounting of every ancestor in
//! force, so a job under Slurm, systemd or Kubernetes stays inside its job.
//! The service never moves a process anywhere else. Only a process in the
//! hierarchy's root cgroup (which has no limits) gets its runtime cgroup
//! under the configured `vfs.cgroup_root` instead, beside the service's own.
//!
//! The kernel reports through `cgroup.events` when the last process of a
//! cgroup has exited; the [`Watcher`] turns those notifications (inotify,
//! no polling of processes) into a callback that drops the runtime.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rustix::fs::inotify;

use crate::process::{PinError, Process};

/// The mount point of the cgroup v2 hierarchy, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    static MOUNT: OnceLock<Option<PathBuf>> = OnceLock::new();
    MOUNT
        .get_or_init(|| find_cgroup2_mount().ok())
        .clone()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup v2 hierarchy is mounted (the VFS service needs one to bind runtimes to process trees)",
            )
        })
}

fn find_cgroup2_mount() -> io::Result<PathBuf> {
    let text = String::from_utf8_lossy(&std::fs::read("/proc/self/mountinfo")?).into_owned();
    for line in text.lines() {
        // ... mountpoint ... - fstype source options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2")
            && let Some(mp) = left.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(mp));
        }
    }
    Err(io::Error::from(io::ErrorKind::NotFound))
}

/// The directory of the cgroup `path` (as `/proc/PID/cgroup` names it).
pub fn cgroup_dir(path: &str) -> io::Result<PathBuf> {
    let rel = path.trim_start_matches('/');
    if rel.split('/').any(|c| c == ".." || c == ".") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("odd cgroup path {path}"),
        ));
    }
    Ok(cgroup2_mount()?.join(rel))
}

/// The id of cgroup `path`: the inode number of its directory, as the
/// kernel reports it for a pidfd.
pub fn cgroup_id(path: &str) -> io::Result<u64> {
    Ok(std::fs::metadata(cgroup_dir(path)?)?.ino())
}

/// Why a process could not be moved into a runtime's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("process {0} changed cgroup or user while it was being bound")]
    Changed(u32),
    #[error("cannot move process {pid} into {cgroup}: {source}")]
    Write {
        pid: u32,
        cgroup: String,
        source: io::Error,
    },
}

/// Where runtime cgroups are created.
#[derive(Clone, Debug)]
pub struct Cgroups {
    /// `vfs.cgroup_root` as a cgroup path (e.g. `/spfs`): the service's own
    /// cgroup and the runtimes of processes in the root cgroup live here.
    root: String,
}

impl Cgroups {
    /// Use `configured` (empty: `<cgroup2 mount>/spfs`), creating it.
    pub fn open(configured: &Path) -> io::Result<Self> {
        let mount = cgroup2_mount()?;
        let dir = if configured.as_os_str().is_empty() {
            mount.join("spfs")
        } else {
            configured.to_path_buf()
        };
        let rel = dir.strip_prefix(&mount).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "vfs.cgroup_root {} is not inside the cgroup v2 hierarchy at {}",
                    dir.display(),
                    mount.display()
                ),
            )
        })?;
        std::fs::create_dir_all(&dir)?;
        Ok(Cgroups {
            root: format!("/{}", rel.display()),
        })
    }

    /// The cgroup path a runtime named `name` gets when its root process is
    /// in cgroup `current`: a child of it (see the module documentation).
    pub fn runtime_path(&self, current: &str, name: &str) -> String {
        let parent = if current == "/" {
            self.root.as_str()
        } else {
            current
        };
        format!("{}/spfs-{name}", parent.trim_end_matches('/'))
    }

    /// Create cgroup `path`; an existing one is an error (it is not ours).
    pub fn create(&self, path: &str) -> io::Result<u64> {
        let dir = cgroup_dir(path)?;
        std::fs::create_dir(&dir)?;
        Ok(std::fs::metadata(&dir)?.ino())
    }

    /// Move `process` into cgroup `path` (whose id is `id`), if it is still
    /// in cgroup `from` with the user ids it had when it was authorised.
    /// The process is pinned for the move, so the PID written to
    /// `cgroup.procs` can only be its own.
    pub fn move_process(
        &self,
        process: &mut Process,
        from: u64,
        path: &str,
        id: u64,
    ) -> Result<(), MoveError> {
        let pid = process.pid;
        let uids = process.info.uids;
        let dir = cgroup_dir(path).map_err(|source| MoveError::Write {
            pid,
            cgroup: path.to_string(),
            source,
        })?;
        process.pinned(|process| {
            let still = process
                .refresh()
                .is_some_and(|i| i.cgroup_id == from && i.uids == uids);
            if !still {
                return Err(MoveError::Changed(pid));
            }
            std::fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(|source| {
                MoveError::Write {
                    pid,
                    cgroup: path.to_string(),
                    source,
                }
            })?;
            match process.refresh() {
                Some(i) if i.cgroup_id == id => Ok(()),
                Some(_) => Err(MoveError::Changed(pid)),
                None => Err(MoveError::Pin(PinError::Exited(pid))),
            }
        })?
    }

    /// Whether any process is still in cgroup `path`.
    pub fn is_populated(&self, path: &str) -> io::Result<bool> {
        let text = std::fs::read_to_string(cgroup_dir(path)?.join("cgroup.events"))?;
        Ok(text.lines().any(|l| l.trim() == "populated 1"))
    }

    /// Remove the (empty) cgroup `path`; a missing one is fine.
    pub fn remove(&self, path: &str) -> io::Result<()> {
        match std::fs::remove_dir(cgroup_dir(path)?) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Move this process into the leaf cgroup `<cgroup_root>/service`, so
    /// that a service started from inside a runtime does not keep that
    /// runtime alive.
    pub fn adopt_self(&self) -> io::Result<()> {
        let p = cgroup_dir(&format!("{}/service", self.root))?;
        match std::fs::create_dir(&p) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        std::fs::write(p.join("cgroup.procs"), std::process::id().to_string())
    }

    /// The runtime cgroups under `vfs.cgroup_root` that exist now.
    pub fn under_root(&self) -> Vec<String> {
        let Ok(dir) = cgroup_dir(&self.root) else {
            return Vec::new();
        };
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("spfs-"))
                    .map(|n| format!("{}/{n}", self.root.trim_end_matches('/')))
                    .collect()
            })
            .unwrap_or_default()
    }
}

type Callback = dyn Fn(&str) + Send + Sync;

/// A watched cgroup: the runtime it belongs to and its path.
#[derive(Clone)]
struct Watched {
    name: String,
    path: String,
}

/// Calls back once when a watched cgroup becomes empty.
pub struct Watcher {
    fd: Arc<std::os::fd::OwnedFd>,
    watches: Arc<Mutex<HashMap<i32, Watched>>>,
}

impl Watcher {
    /// Start the watching thread. `on_empty` gets the runtime name of each
    /// cgroup that became empty; `on_failure` is called once if watching
    /// becomes impossible (runtimes would never be cleaned up any more).
    pub fn start(
        cgroups: Cgroups,
        on_empty: Arc<Callback>,
        on_failure: Arc<Callback>,
    ) -> io::Result<Watcher> {
        let fd = Arc::new(inotify::init(inotify::CreateFlags::CLOEXEC)?);
        let watches: Arc<Mutex<HashMap<i32, Watched>>> = Arc::default();
        let (fd2, watches2) = (fd.clone(), watches.clone());
        std::thread::Builder::new()
            .name("cgroup-watch".into())
            .spawn(move || {
                let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
                let mut reader = inotify::Reader::new(&*fd2, &mut buf);
                loop {
                    let wd = match reader.next() {
                        Ok(ev) => ev.wd(),
                        Err(rustix::io::Errno::INTR) => continue,
                        Err(e) => {
                            on_failure(&e.to_string());
                            return;
                        }
                    };
                    // An overflowed queue (wd -1) may have lost events:
                    // look at every watched cgroup.
                    let candidates: Vec<(i32, Watched)> = {
                        let w = watches2.lock().unwrap_or_else(|p| p.into_inner());
                        if wd == -1 {
                            w.iter().map(|(k, v)| (*k, v.clone())).collect()
                        } else {
                            w.get(&wd)
                                .map(|n| vec![(wd, n.clone())])
                                .unwrap_or_default()
                        }
                    };
                    for (wd, watched) in candidates {
                        if cgroups.is_populated(&watched.path).unwrap_or(false) {
                            continue;
                        }
                        let removed = watches2
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&wd);
                        if removed.is_some() {
                            let _ = inotify::remove_watch(&*fd2, wd);
                            on_empty(&watched.name);
                        }
                    }
                }
            })?;
        Ok(Watcher { fd, watches })
    }

    /// Watch cgroup `path` of runtime `name` (before any process joins
    /// it): the callback comes when it has been populated and is empty
    /// again.
    pub fn watch(&self, name: &str, path: &str) -> io::Result<()> {
        let events = cgroup_dir(path)?.join("cgroup.events");
        let wd = inotify::add_watch(&*self.fd, &events, inotify::WatchFlags::MODIFY)?;
        self.watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                wd,
                Watched {
                    name: name.to_string(),
                    path: path.to_string(),
                },
            );
        Ok(())
    }

    /// Stop watching cgroup `path` of runtime `name` (it was dropped).
    /// Only that cgroup's watch: a runtime registered meanwhile under the
    /// same name, in another cgroup, keeps its own.
    pub fn unwatch(&self, name: &str, path: &str) {
        let mut w = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let wds: Vec<i32> = w
            .iter()
            .filter(|(_, n)| n.name == name && n.path == path)
            .map(|(wd, _)| *wd)
            .collect();
        for wd in wds {
            w.remove(&wd);
            let _ = inotify::remove_watch(&*self.fd, wd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_cgroups_nest_under_the_process_cgroup() {
        let c = Cgroups {
            root: "/spfs".into(),
        };
        assert_eq!(
            c.runtime_path("/user.slice/job-7", "rt-1"),
            "/user.slice/job-7/spfs-rt-1"
        );
        assert_eq!(c.runtime_path("/", "rt-1"), "/spfs/spfs-rt-1");
        assert!(cgroup_dir("/a/../b").is_err());
    }
}
