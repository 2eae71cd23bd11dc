//! The ledger: the service's own account of the runtimes it serves, kept
//! where the next service process finds it.
//!
//! Runtime records in the repository are written by users (`spfs run`
//! writes its own), so nothing in them decides what a process is shown.
//! The ledger is the service's: a file only root may read or write, in the
//! mount point's state directory under `/run/spfs/mounts` (made 0700,
//! never through a symbolic link). It holds, for each registered runtime,
//! what registering it again takes (its view's stack and id, owner, mode,
//! upper area, cgroup), and a bound below which view ids may have been
//! handed out. It is rewritten (write and rename) at every registration
//! and every change of a view; view ids are reserved ahead in blocks, so a
//! service that dies between handing out an id and writing the ledger
//! never lets its successor hand out that id again for another view (the
//! kernel may still hold node ids of it).
//!
//! A service that starts on a mount point with a ledger takes over every
//! runtime whose cgroup still has processes ([`crate::service`]); the
//! others are dropped.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// View ids reserved ahead of those handed out.
const VIEW_ID_BLOCK: u32 = 1024;

/// One runtime as the service registered it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub name: String,
    pub view_id: u32,
    /// The view's stack now (an editable view's grows with its commits).
    pub layers: Vec<String>,
    pub owner_uid: u32,
    pub bound: bool,
    #[serde(default)]
    pub edit: Option<EditEntry>,
    pub cgroup: String,
    /// The cgroup's id (its directory's inode number): a cgroup made again
    /// at the same path (by a user it is delegated to, say) is not this
    /// runtime's.
    #[serde(default)]
    pub cgroup_id: u64,
    pub root_pid: u32,
    #[serde(default)]
    pub durable: bool,
    /// The top-level directories shown through subtree views: (entry
    /// index, subtree view id) (see `spfs_vfs::shared`). `None`: written
    /// before subtree views were (the view's own ids only).
    #[serde(default)]
    pub shared: Option<Vec<(u32, u32)>>,
}

/// An editable runtime's upper area.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EditEntry {
    pub upper: PathBuf,
    pub owner_gid: u32,
    pub writable: bool,
    /// No inode number at or above this was handed out in the view.
    #[serde(default)]
    pub inodes_below: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Contents {
    /// No view id at or above this was handed out.
    view_ids_below: u32,
    runtimes: Vec<Entry>,
}

/// The ledger of one mount point.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    contents: Mutex<Contents>,
}

/// The state directory of a mount point: beside its lock file, made if
/// missing, root's (the service's user's) alone.
pub fn state_dir(mountpoint: &Path) -> io::Result<PathBuf> {
    let dir = crate::locks::mountpoint_lock_path(mountpoint).with_extension("d");
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not a directory of the service's user", dir.display()),
        ));
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

impl Ledger {
    /// Open the ledger in `dir` (empty if there is none, or if it cannot
    /// be read: a service must start whatever a previous one left).
    pub fn open(dir: &Path) -> Ledger {
        let path = dir.join("runtimes.json");
        let contents = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("ignoring the unreadable ledger {}: {e}", path.display());
                Contents::default()
            }),
            Err(_) => Contents::default(),
        };
        Ledger {
            path,
            contents: Mutex::new(contents),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Contents> {
        self.contents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The runtimes recorded.
    pub fn runtimes(&self) -> Vec<Entry> {
        self.lock().runtimes.clone()
    }

    /// No view id at or above this may have been handed out.
    pub fn view_ids_below(&self) -> u32 {
        self.lock().view_ids_below
    }

    /// Make sure view ids up to well above `last` are reserved (called
    /// before a registration may hand out `last + 1`).
    pub fn reserve_view_ids(&self, last: u32) -> io::Result<()> {
        let mut c = self.lock();
        if c.view_ids_below > last.saturating_add(VIEW_ID_BLOCK / 2) {
            return Ok(());
        }
        c.view_ids_below = last.saturating_add(VIEW_ID_BLOCK);
        self.save(&c)
    }

    /// Record `entry` (replacing the runtime's entry, if any).
    pub fn record(&self, entry: Entry) -> io::Result<()> {
        let mut c = self.lock();
        let top = entry
            .shared
            .iter()
            .flatten()
            .map(|(_, id)| *id)
            .chain([entry.view_id])
            .max()
            .unwrap_or(0);
        c.view_ids_below = c.view_ids_below.max(top.saturating_add(1));
        match c.runtimes.iter_mut().find(|e| e.name == entry.name) {
            Some(e) if *e == entry => return Ok(()),
            Some(e) => *e = entry,
            None => c.runtimes.push(entry),
        }
        self.save(&c)
    }

    /// Record that editable runtime `name` may hand out inode numbers
    /// below `until` (an unrecorded runtime: its entry will say so).
    pub fn reserve_inodes(&self, name: &str, until: u32) -> io::Result<()> {
        let mut c = self.lock();
        let Some(edit) = c
            .runtimes
            .iter_mut()
            .find(|e| e.name == name)
            .and_then(|e| e.edit.as_mut())
        else {
            return Ok(());
        };
        if edit.inodes_below >= until {
            return Ok(());
        }
        edit.inodes_below = until;
        self.save(&c)
    }

    /// Forget runtime `name`.
    pub fn forget(&self, name: &str) -> io::Result<()> {
        let mut c = self.lock();
        let before = c.runtimes.len();
        c.runtimes.retain(|e| e.name != name);
        if c.runtimes.len() == before {
            return Ok(());
        }
        self.save(&c)
    }

    fn save(&self, c: &Contents) -> io::Result<()> {
        let bytes = serde_json::to_vec(c).map_err(io::Error::other)?;
        spfs_vfs::journal::write_private(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, view_id: u32) -> Entry {
        Entry {
            name: name.into(),
            view_id,
            layers: vec![],
            owner_uid: 1000,
            bound: false,
            edit: None,
            cgroup: format!("/spfs/spfs-{name}"),
            cgroup_id: 7,
            root_pid: 42,
            durable: false,
            shared: None,
        }
    }

    #[test]
    fn kept_across_opens_with_view_ids_reserved_ahead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(dir.path());
        ledger.reserve_view_ids(0).expect("reserve");
        let below = ledger.view_ids_below();
        assert!(below > 1);
        ledger.record(entry("a", 1)).expect("record");
        ledger.record(entry("b", 2)).expect("record");
        ledger.forget("a").expect("forget");
        // Reserving again within the block writes nothing new.
        ledger.reserve_view_ids(2).expect("reserve");
        assert_eq!(ledger.view_ids_below(), below);
        ledger.reserve_view_ids(below - 1).expect("reserve");
        assert!(ledger.view_ids_below() > below);
        let again = Ledger::open(dir.path());
        assert_eq!(again.runtimes(), vec![entry("b", 2)]);
        assert_eq!(again.view_ids_below(), ledger.view_ids_below());
        // A ledger that cannot be read is an empty one.
        std::fs::write(dir.path().join("runtimes.json"), b"{").expect("write");
        assert!(Ledger::open(dir.path()).runtimes().is_empty());
    }
}
