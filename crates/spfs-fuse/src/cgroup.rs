//! The runtimes' cgroups (v2): one per runtime, named after it.
//!
//! A runtime's root process is moved into its cgroup before it runs the
//! user's command, so its whole process tree is in it for good. The kernel
//! reports through `cgroup.events` when the last process of a cgroup has
//! exited; the [`Watcher`] turns those notifications (inotify, no polling of
//! processes) into a callback that drops the runtime.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustix::fs::inotify;

/// Where runtime cgroups are created.
#[derive(Clone, Debug)]
pub struct Cgroups {
    /// The directory holding one sub-directory per runtime.
    dir: PathBuf,
    /// The same directory as `/proc/PID/cgroup` names it (e.g. `/spfs`).
    prefix: String,
}

/// The mount point of the cgroup v2 hierarchy, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> io::Result<PathBuf> {
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
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no cgroup v2 hierarchy is mounted (the VFS service needs one to bind runtimes to process trees)",
    ))
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
        let prefix = format!("/{}", rel.display());
        Ok(Cgroups { dir, prefix })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Create the cgroup of runtime `name`.
    pub fn create(&self, name: &str) -> io::Result<PathBuf> {
        let p = self.path(name);
        std::fs::create_dir(&p)?;
        Ok(p)
    }

    /// Move process `pid` (all its threads) into the cgroup of `name`.
    pub fn add_process(&self, name: &str, pid: u32) -> io::Result<()> {
        std::fs::write(self.path(name).join("cgroup.procs"), pid.to_string())
    }

    /// Whether any process is still in the cgroup of `name`.
    pub fn is_populated(&self, name: &str) -> io::Result<bool> {
        let text = std::fs::read_to_string(self.path(name).join("cgroup.events"))?;
        Ok(text.lines().any(|l| l.trim() == "populated 1"))
    }

    /// The processes in the cgroup of `name`.
    pub fn processes(&self, name: &str) -> Vec<u32> {
        std::fs::read_to_string(self.path(name).join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Remove the (empty) cgroup of `name`; a missing one is fine.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match std::fs::remove_dir(self.path(name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Move this process into the leaf cgroup `service`, so that a service
    /// started from inside a runtime does not keep that runtime alive.
    pub fn adopt_self(&self) -> io::Result<()> {
        let p = self.path("service");
        match std::fs::create_dir(&p) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        std::fs::write(p.join("cgroup.procs"), std::process::id().to_string())
    }

    /// Names of the runtime cgroups that exist now.
    pub fn existing(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "service")
                    .collect()
            })
            .unwrap_or_default()
    }
}

type Callback = dyn Fn(&str) + Send + Sync;

/// Calls back once when a watched cgroup becomes empty.
pub struct Watcher {
    fd: Arc<std::os::fd::OwnedFd>,
    watches: Arc<Mutex<HashMap<i32, String>>>,
    cgroups: Cgroups,
}

impl Watcher {
    /// Start the watching thread. `on_empty` gets each cgroup that became
    /// empty; `on_failure` is called once if watching becomes impossible
    /// (runtimes would never be cleaned up any more).
    pub fn start(
        cgroups: Cgroups,
        on_empty: Arc<Callback>,
        on_failure: Arc<Callback>,
    ) -> io::Result<Watcher> {
        let fd = Arc::new(inotify::init(inotify::CreateFlags::CLOEXEC)?);
        let watches: Arc<Mutex<HashMap<i32, String>>> = Arc::default();
        let (fd2, watches2, cg2) = (fd.clone(), watches.clone(), cgroups.clone());
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
                    let candidates: Vec<(i32, String)> = {
                        let w = watches2.lock().unwrap_or_else(|p| p.into_inner());
                        if wd == -1 {
                            w.iter().map(|(k, v)| (*k, v.clone())).collect()
                        } else {
                            w.get(&wd)
                                .map(|n| vec![(wd, n.clone())])
                                .unwrap_or_default()
                        }
                    };
                    for (wd, name) in candidates {
                        if cg2.is_populated(&name).unwrap_or(false) {
                            continue;
                        }
                        let removed = watches2
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&wd);
                        if removed.is_some() {
                            let _ = inotify::remove_watch(&*fd2, wd);
                            on_empty(&name);
                        }
                    }
                }
            })?;
        Ok(Watcher {
            fd,
            watches,
            cgroups,
        })
    }

    /// Watch the cgroup of `name` (before any process joins it): the
    /// callback comes when it has been populated and is empty again.
    pub fn watch(&self, name: &str) -> io::Result<()> {
        let events = self.cgroups.path(name).join("cgroup.events");
        let wd = inotify::add_watch(&*self.fd, &events, inotify::WatchFlags::MODIFY)?;
        self.watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(wd, name.to_string());
        Ok(())
    }

    /// Stop watching `name` (it was dropped by request).
    pub fn unwatch(&self, name: &str) {
        let mut w = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let wds: Vec<i32> = w
            .iter()
            .filter(|(_, n)| *n == name)
            .map(|(wd, _)| *wd)
            .collect();
        for wd in wds {
            w.remove(&wd);
            let _ = inotify::remove_watch(&*self.fd, wd);
        }
    }
}
