//! Read-through: using remotes as if their contents were local.
//!
//! [`ReadThrough`] holds the remotes a host reads through (config
//! `vfs.remotes`), in order. Resolving a spec looks in the local
//! repository first and, for a reference found only on a remote, copies
//! that reference's objects (platforms, layers, manifests; no payloads)
//! into the local repository, so a view can be built at once; a reference
//! found nowhere is an error naming every repository searched. A payload
//! is fetched when it is first needed ([`ReadThrough::fetch_payload`]):
//! once however many readers ask at the same time, checked against its
//! digest as it is stored, and never waited for longer than the timeout
//! (the fetch goes on in the background, and a later read finds it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use spfs_model::{Digest, EnvSpec, SpecItem};

use crate::repository::Repository;
use crate::transfer::{Scope, copy_graph_scoped};
use crate::{FsRepository, Result, StorageError};

/// How a remote is opened (or why it cannot be).
pub type Opener = Box<dyn Fn() -> std::result::Result<Box<dyn Repository>, String> + Send + Sync>;

/// A remote to read through, opened the first time it is needed (a host
/// whose specs are all local never contacts it).
pub struct Remote {
    pub name: String,
    open: Opener,
    repo: std::sync::OnceLock<std::result::Result<Box<dyn Repository>, String>>,
}

impl Remote {
    pub fn new(name: impl Into<String>, open: Opener) -> Remote {
        Remote {
            name: name.into(),
            open,
            repo: std::sync::OnceLock::new(),
        }
    }

    fn repo(&self) -> &std::result::Result<Box<dyn Repository>, String> {
        self.repo.get_or_init(|| (self.open)())
    }
}

/// How a fetch ended, shared by every reader waiting for it.
pub type Outcome = Arc<(Mutex<Option<std::result::Result<(), String>>>, Condvar)>;

/// The remotes a host reads through.
pub struct ReadThrough {
    remotes: Vec<Remote>,
    timeout: Duration,
    in_flight: Mutex<HashMap<Digest, Outcome>>,
    /// Payloads whose bytes on the remotes failed their digest, and why:
    /// ranged reads of them are refused.
    failed: Mutex<HashMap<Digest, String>>,
    counts: Counters,
}

/// What the read-through has fetched (see [`ReadThrough::counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchCounts {
    /// Payloads fetched whole and stored, and their bytes.
    pub payloads_fetched: u64,
    pub fetched_bytes: u64,
    /// Payload fetches that failed.
    pub fetch_failures: u64,
    /// Ranged reads answered from a remote, and their bytes.
    pub ranged_reads: u64,
    pub ranged_bytes: u64,
    /// References resolved on a remote (their objects copied in).
    pub references_resolved: u64,
}

#[derive(Default)]
struct Counters {
    payloads_fetched: AtomicU64,
    fetched_bytes: AtomicU64,
    fetch_failures: AtomicU64,
    ranged_reads: AtomicU64,
    ranged_bytes: AtomicU64,
    references_resolved: AtomicU64,
}

impl ReadThrough {
    pub fn new(remotes: Vec<Remote>, timeout: Duration) -> Arc<Self> {
        Arc::new(ReadThrough {
            remotes,
            timeout,
            in_flight: Mutex::default(),
            failed: Mutex::default(),
            counts: Counters::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.remotes.is_empty()
    }

    /// The remotes read through.
    pub fn len(&self) -> usize {
        self.remotes.len()
    }

    /// What has been fetched so far.
    pub fn counts(&self) -> FetchCounts {
        let c = &self.counts;
        FetchCounts {
            payloads_fetched: c.payloads_fetched.load(Relaxed),
            fetched_bytes: c.fetched_bytes.load(Relaxed),
            fetch_failures: c.fetch_failures.load(Relaxed),
            ranged_reads: c.ranged_reads.load(Relaxed),
            ranged_bytes: c.ranged_bytes.load(Relaxed),
            references_resolved: c.references_resolved.load(Relaxed),
        }
    }

    /// The digests `spec` names, bottom first, from `local` or else from
    /// the first remote that has each (its objects copied into `local`).
    pub fn resolve_spec(
        self: &Arc<Self>,
        local: &FsRepository,
        spec: &EnvSpec,
    ) -> Result<Vec<Digest>> {
        spec.items
            .iter()
            .map(|item| self.resolve_item(local, item))
            .collect()
    }

    fn resolve_item(self: &Arc<Self>, local: &FsRepository, item: &SpecItem) -> Result<Digest> {
        let local_err = match local.resolve_item(item) {
            // Found here (objects read through earlier included: their
            // payloads come when first read).
            Ok(d) => return Ok(d),
            Err(e) if is_not_found(&e) => e,
            Err(e) => return Err(e),
        };
        if self.remotes.is_empty() {
            return Err(local_err);
        }
        let text = item.to_string();
        let mut searched = vec![format!("local ({})", local.root().display())];
        for (index, remote) in self.remotes.iter().enumerate() {
            let repo = match remote.repo() {
                Ok(r) => r,
                Err(why) => {
                    searched.push(format!("{} (unreachable: {why})", remote.name));
                    continue;
                }
            };
            match self.resolve_within(index, &text) {
                Ok(d) => {
                    // The transfer holds the local repository's
                    // garbage-collection lock while it copies; the caller
                    // (a view being registered) holds it until its view
                    // keeps what was copied.
                    copy_graph_scoped(&**repo, local, &[d], Scope::ObjectsOnly, 4, &())?;
                    self.counts.references_resolved.fetch_add(1, Relaxed);
                    return Ok(d);
                }
                Err(e) if is_not_found(&e) => searched.push(remote.name.clone()),
                Err(e) => searched.push(format!("{} ({e})", remote.name)),
            }
        }
        Err(StorageError::NotFoundAnywhere {
            reference: text,
            searched: searched.join(", "),
        })
    }

    /// Resolve `text` on remote `index`, waiting at most the timeout (a
    /// remote that stalls must not hold a registration for long).
    fn resolve_within(self: &Arc<Self>, index: usize, text: &str) -> Result<Digest> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (this, text) = (self.clone(), text.to_string());
        std::thread::spawn(move || {
            let result = match this.remotes[index].repo() {
                Ok(repo) => repo.resolve_ref(&text),
                Err(why) => Err(StorageError::Remote {
                    address: this.remotes[index].name.clone(),
                    message: why.clone(),
                }),
            };
            let _ = tx.send(result);
        });
        rx.recv_timeout(self.timeout).unwrap_or_else(|_| {
            Err(StorageError::Remote {
                address: self.remotes[index].name.clone(),
                message: format!("no answer within {} s", self.timeout.as_secs()),
            })
        })
    }

    /// Fetch payload `digest` into `local` from the first remote that has
    /// it. Readers asking at the same time share one fetch; none waits
    /// longer than the timeout.
    pub fn fetch_payload(self: &Arc<Self>, local: &FsRepository, digest: &Digest) -> Result<()> {
        let outcome = self.start_fetch(local, digest);
        self.wait(&outcome, digest)
    }

    /// Start fetching payload `digest` into `local` (unless a fetch of it
    /// is under way) without waiting for it.
    pub fn start_fetch(self: &Arc<Self>, local: &FsRepository, digest: &Digest) -> Outcome {
        let (outcome, start) = {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(digest) {
                Some(o) => (o.clone(), false),
                None => {
                    let o: Outcome = Arc::default();
                    map.insert(*digest, o.clone());
                    (o, true)
                }
            }
        };
        if start {
            let (this, local, d, o) = (self.clone(), local.clone(), *digest, outcome.clone());
            std::thread::spawn(move || {
                let result = this.fetch_now(&local, &d);
                match &result {
                    Ok(size) => {
                        this.counts.payloads_fetched.fetch_add(1, Relaxed);
                        this.counts.fetched_bytes.fetch_add(*size, Relaxed);
                    }
                    Err(_) => {
                        this.counts.fetch_failures.fetch_add(1, Relaxed);
                    }
                }
                if let Err(e @ StorageError::Corrupt { .. }) = &result {
                    this.failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(d, e.to_string());
                }
                let result = result.map(|_| ()).map_err(|e| e.to_string());
                this.in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&d);
                let (lock, done) = &*o;
                *lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                done.notify_all();
            });
        }
        outcome
    }

    fn wait(&self, outcome: &Outcome, digest: &Digest) -> Result<()> {
        let (lock, done) = &**outcome;
        let deadline = Instant::now() + self.timeout;
        let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(result) = &*state {
                return result.clone().map_err(|message| StorageError::Remote {
                    address: "read-through".into(),
                    message,
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(StorageError::Remote {
                    address: "read-through".into(),
                    message: format!(
                        "payload {digest} did not arrive within {} s",
                        self.timeout.as_secs()
                    ),
                });
            }
            state = done
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Why payload `digest` is known to be corrupt on the remotes, if it is.
    pub fn failed(&self, digest: &Digest) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    /// Bytes `offset..offset + length` of payload `digest` from the first
    /// remote that has it, and whether that copy is public; within the
    /// timeout.
    pub fn read_range(
        self: &Arc<Self>,
        digest: &Digest,
        offset: u64,
        length: u64,
    ) -> Result<(Vec<u8>, bool)> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (this, d) = (self.clone(), *digest);
        std::thread::spawn(move || {
            let mut last = StorageError::UnknownObject(d);
            for remote in &this.remotes {
                let Ok(repo) = remote.repo() else { continue };
                match repo.read_payload_range(&d, offset, length) {
                    Ok(found) => {
                        let _ = tx.send(Ok(found));
                        return;
                    }
                    Err(e) => last = e,
                }
            }
            let _ = tx.send(Err(last));
        });
        let found = rx.recv_timeout(self.timeout).unwrap_or_else(|_| {
            Err(StorageError::Remote {
                address: "read-through".into(),
                message: format!(
                    "bytes of payload {digest} did not arrive within {} s",
                    self.timeout.as_secs()
                ),
            })
        });
        if let Ok((bytes, _)) = &found {
            self.counts.ranged_reads.fetch_add(1, Relaxed);
            self.counts
                .ranged_bytes
                .fetch_add(bytes.len() as u64, Relaxed);
        }
        found
    }

    /// Fetch from the remotes that have the payload, asking all of them
    /// at once: one that is slow to answer (or stalls) delays nothing while
    /// another has it. The first to say it has it is fetched from first.
    fn fetch_now(self: &Arc<Self>, local: &FsRepository, digest: &Digest) -> Result<u64> {
        let (tx, rx) = std::sync::mpsc::channel();
        for index in 0..self.remotes.len() {
            let (this, tx, d) = (self.clone(), tx.clone(), *digest);
            std::thread::spawn(move || {
                let answer = match this.remotes[index].repo() {
                    Ok(repo) => repo.has_payload(&d).map(|has| (index, has)),
                    Err(why) => Err(StorageError::Remote {
                        address: this.remotes[index].name.clone(),
                        message: why.clone(),
                    }),
                };
                let _ = tx.send(answer);
            });
        }
        drop(tx);
        let mut last = None;
        for answer in rx {
            let index = match answer {
                Ok((index, true)) => index,
                Ok((_, false)) => continue,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let Ok(repo) = self.remotes[index].repo() else {
                continue;
            };
            // Shared with clean like every write (the payload belongs to
            // a view, which keeps it once registered).
            let fetched = local.write_guard().and_then(|_guard| {
                repo.open_payload(digest).and_then(|mut from| {
                    Repository::write_payload(local, digest, &mut from.reader, from.public)
                })
            });
            match fetched {
                Ok(size) => return Ok(size),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(StorageError::UnknownObject(*digest)))
    }
}

fn is_not_found(e: &StorageError) -> bool {
    matches!(
        e,
        StorageError::UnknownObject(_)
            | StorageError::UnknownTag(_)
            | StorageError::UnknownReference(_)
            | StorageError::UnknownTagVersion { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote_with_file(dir: &std::path::Path, bytes: &[u8]) -> (FsRepository, Digest) {
        let repo = FsRepository::create(dir.join("remote")).unwrap();
        let tree = dir.join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("f"), bytes).unwrap();
        let layer =
            crate::commit::commit_dir(&repo, &tree, Default::default(), &Default::default(), &())
                .unwrap();
        repo.push_tag("r/t", &layer).unwrap();
        (repo, layer)
    }

    /// A remote that answers nothing for a long time.
    struct Stalled;

    impl Repository for Stalled {
        fn address(&self) -> String {
            "stalled".into()
        }
        fn has_object(&self, _: &Digest) -> Result<bool> {
            std::thread::sleep(Duration::from_secs(5));
            Ok(false)
        }
        fn read_object_bytes(&self, d: &Digest) -> Result<Vec<u8>> {
            Err(StorageError::UnknownObject(*d))
        }
        fn write_object_bytes(&self, _: &Digest, _: &[u8]) -> Result<()> {
            Ok(())
        }
        fn has_payload(&self, _: &Digest) -> Result<bool> {
            std::thread::sleep(Duration::from_secs(5));
            Ok(false)
        }
        fn open_payload(&self, d: &Digest) -> Result<crate::PayloadReader> {
            Err(StorageError::UnknownObject(*d))
        }
        fn write_payload(&self, d: &Digest, _: &mut dyn std::io::Read, _: bool) -> Result<u64> {
            Err(StorageError::UnknownObject(*d))
        }
        fn tag_history(&self, name: &str) -> Result<Vec<crate::tags::TagVersion>> {
            Err(StorageError::UnknownTag(name.into()))
        }
        fn push_tag(&self, _: &str, _: &Digest) -> Result<()> {
            Ok(())
        }
        fn resolve_ref(&self, text: &str) -> Result<Digest> {
            std::thread::sleep(Duration::from_secs(5));
            Err(StorageError::UnknownReference(text.into()))
        }
    }

    #[test]
    fn a_stalled_remote_delays_neither_resolving_nor_fetching() {
        let dir = tempfile::tempdir().unwrap();
        let (remote, layer) = remote_with_file(dir.path(), b"healthy bytes");
        let local = FsRepository::create(dir.path().join("local")).unwrap();
        let root = remote.root().to_path_buf();
        let rt = ReadThrough::new(
            vec![
                Remote::new(
                    "stalled",
                    Box::new(|| Ok(Box::new(Stalled) as Box<dyn Repository>)),
                ),
                Remote::new(
                    "origin",
                    Box::new(move || {
                        let r = FsRepository::open(&root).map_err(|e| e.to_string())?;
                        Ok(Box::new(r) as Box<dyn Repository>)
                    }),
                ),
            ],
            Duration::from_secs(1),
        );
        let start = Instant::now();
        // Resolving waits at most the timeout for the stalled one.
        let spec = EnvSpec::parse("r/t").unwrap();
        assert_eq!(rt.resolve_spec(&local, &spec).unwrap(), [layer]);
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        // Fetching does not wait for it at all.
        let start = Instant::now();
        rt.fetch_payload(&local, &Digest::of(b"healthy bytes"))
            .unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_reference_only_on_a_remote_resolves_and_its_payloads_come_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let (remote, layer) = remote_with_file(dir.path(), b"remote bytes");
        let local = FsRepository::create(dir.path().join("local")).unwrap();
        let rt = ReadThrough::new(
            vec![
                Remote::new("down", Box::new(|| Err("connection refused".into()))),
                Remote::new(
                    "origin",
                    Box::new(move || {
                        let r = FsRepository::open(remote.root()).map_err(|e| e.to_string())?;
                        Ok(Box::new(r) as Box<dyn Repository>)
                    }),
                ),
            ],
            Duration::from_secs(5),
        );
        let spec = EnvSpec::parse("r/t").unwrap();
        assert_eq!(rt.resolve_spec(&local, &spec).unwrap(), [layer]);
        let d = Digest::of(b"remote bytes");
        assert!(local.has_object(&layer) && !local.has_payload(&d));
        // Many readers at once: one fetch.
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| rt.fetch_payload(&local, &d).unwrap());
            }
        });
        assert!(local.has_payload(&d));
        // Counted: one reference resolved, payloads of 12 bytes (a reader
        // that came after the first fetch ended may have fetched again).
        let c = rt.counts();
        assert_eq!(c.references_resolved, 1);
        assert!(c.payloads_fetched >= 1 && c.fetched_bytes == 12 * c.payloads_fetched);
        let (bytes, _) = rt.read_range(&d, 7, 100).unwrap();
        assert_eq!(bytes, b"bytes");
        let c = rt.counts();
        assert_eq!(
            (c.ranged_reads, c.ranged_bytes, c.fetch_failures),
            (1, 5, 0)
        );
        // Found nowhere: every repository is named.
        let err = rt
            .resolve_spec(&local, &EnvSpec::parse("no/such").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no/such") && err.contains("local") && err.contains("origin"),
            "{err}"
        );
        assert!(
            err.contains("down (unreachable: connection refused)"),
            "{err}"
        );
        let missing = Digest::of(b"nowhere");
        assert!(rt.fetch_payload(&local, &missing).is_err());
    }
}
