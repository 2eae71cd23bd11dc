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
//! The file holds each distinct stack once (runtimes of one view, and
//! views of one stack, name it by its index), so its size grows with the
//! distinct stacks, each of at most `spfs_storage::resolve::MAX_STACK_LAYERS`
//! layers, not with the runtimes that share them.
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
    /// Of those subtree views, the ones shown through routed directories
    /// (see `spfs_vfs::routed`): a new worker shows them so again.
    #[serde(default)]
    pub routed: Vec<u32>,
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

#[derive(Debug, Default)]
struct Contents {
    /// No view id at or above this was handed out.
    view_ids_below: u32,
    runtimes: Vec<Entry>,
}

/// The ledger as written: each distinct stack once, entries naming it by
/// index (their own `layers` left empty).
#[derive(Serialize)]
struct Written<'a> {
    view_ids_below: u32,
    stacks: Vec<&'a [String]>,
    runtimes: Vec<WrittenEntry>,
}

#[derive(Serialize, Deserialize)]
struct WrittenEntry {
    #[serde(flatten)]
    entry: Entry,
    /// The index of the entry's stack in `stacks` (`None`: in `layers`, as
    /// ledgers written before stacks were shared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stack: Option<usize>,
}

/// The ledger as read (see [`Written`]).
#[derive(Deserialize)]
struct Read {
    view_ids_below: u32,
    #[serde(default)]
    stacks: Vec<Vec<String>>,
    runtimes: Vec<WrittenEntry>,
}

impl Contents {
    fn encode(&self) -> serde_json::Result<Vec<u8>> {
        let mut index: std::collections::HashMap<&[String], usize> = Default::default();
        let mut stacks = Vec::new();
        let runtimes = self
            .runtimes
            .iter()
            .map(|e| {
                let stack = *index.entry(e.layers.as_slice()).or_insert_with(|| {
                    stacks.push(e.layers.as_slice());
                    stacks.len() - 1
                });
                WrittenEntry {
                    entry: e.clone_without_layers(),
                    stack: Some(stack),
                }
            })
            .collect();
        serde_json::to_vec(&Written {
            view_ids_below: self.view_ids_below,
            stacks,
            runtimes,
        })
    }

    fn decode(bytes: &[u8]) -> Result<Contents, String> {
        let read: Read = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let runtimes = read
            .runtimes
            .into_iter()
            .map(|w| match w.stack {
                None => Ok(w.entry),
                Some(i) => match read.stacks.get(i) {
                    Some(layers) => Ok(Entry {
                        layers: layers.clone(),
                        ..w.entry
                    }),
                    None => Err(format!("runtime {} names no stack ({i})", w.entry.name)),
                },
            })
            .collect::<Result<_, String>>()?;
        Ok(Contents {
            view_ids_below: read.view_ids_below,
            runtimes,
        })
    }
}

impl Entry {
    /// A copy of the entry but for its stack (which is left empty).
    fn clone_without_layers(&self) -> Entry {
        Entry {
            name: self.name.clone(),
            view_id: self.view_id,
            layers: Vec::new(),
            owner_uid: self.owner_uid,
            bound: self.bound,
            edit: self.edit.clone(),
            cgroup: self.cgroup.clone(),
            cgroup_id: self.cgroup_id,
            root_pid: self.root_pid,
            durable: self.durable,
            shared: self.shared.clone(),
            routed: self.routed.clone(),
        }
    }
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
            Ok(bytes) => Contents::decode(&bytes).unwrap_or_else(|e| {
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
        let bytes = c.encode().map_err(io::Error::other)?;
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
            routed: Vec::new(),
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

    /// `n` distinct digests as the ledger writes them, `tag` apart.
    fn stack(tag: usize, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| spfs_model::Digest::of(format!("{tag}/{i}").as_bytes()).to_string())
            .collect()
    }

    #[test]
    fn each_stack_is_written_once_and_old_ledgers_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::open(dir.path());
        let (one, two) = (stack(1, 3), stack(2, 2));
        for (k, layers) in [&one, &two, &one].into_iter().enumerate() {
            let e = Entry {
                layers: layers.clone(),
                ..entry(&format!("r{k}"), k as u32 + 1)
            };
            ledger.record(e).expect("record");
        }
        let text = std::fs::read_to_string(dir.path().join("runtimes.json")).expect("read");
        assert_eq!(text.matches(&one[0]).count(), 1, "{text}");
        let again = Ledger::open(dir.path()).runtimes();
        let stacks: Vec<_> = again.iter().map(|e| e.layers.clone()).collect();
        assert_eq!(stacks, vec![one.clone(), two, one.clone()]);
        // A ledger of an older service: each entry's stack in it.
        let old = serde_json::json!({
            "view_ids_below": 9,
            "runtimes": [Entry { layers: one.clone(), ..entry("old", 3) }],
        });
        std::fs::write(dir.path().join("runtimes.json"), old.to_string()).expect("write");
        let read = Ledger::open(dir.path());
        assert_eq!(read.runtimes()[0].layers, one);
        assert_eq!(read.view_ids_below(), 9);
    }

    /// The ledger of one user's 512 runtimes (the most a user may have)
    /// with stacks of 1,000 layers (the most a stack may hold): its size,
    /// and the time of one rewrite, when they share a stack and when each
    /// has its own (`--nocapture` prints them).
    #[test]
    fn a_ledger_at_the_bounds() {
        const RUNTIMES: usize = 512;
        const LAYERS: usize = 1000;
        for distinct in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let ledger = Ledger::open(dir.path());
            // Filled at once (recording one by one rewrites it each time).
            ledger.lock().runtimes = (0..RUNTIMES)
                .map(|k| Entry {
                    layers: stack(if distinct { k } else { 0 }, LAYERS),
                    ..entry(&format!("rt-{k}"), k as u32 + 1)
                })
                .collect();
            let started = std::time::Instant::now();
            ledger.forget("rt-0").expect("forget");
            let took = started.elapsed();
            let bytes = std::fs::metadata(dir.path().join("runtimes.json"))
                .expect("ledger")
                .len();
            eprintln!(
                "{RUNTIMES} runtimes, distinct stacks {distinct}: {bytes} bytes, rewrite {took:?}"
            );
            let most = match distinct {
                false => 200_000,
                true => 40_000_000,
            };
            assert!(bytes < most, "{bytes} bytes");
        }
    }
}
