//! Copying object graphs between repositories (`spfs push`, `pull`, `sync`).
//!
//! A graph is copied children first: a manifest's payloads before the
//! manifest, a layer's manifest before the layer, a platform's stack before
//! the platform. So an object present at the destination implies that
//! everything it reaches is there too, which makes two things cheap:
//!
//! - skipping: an object the destination has is not descended into;
//! - resuming: a transfer killed midway left only complete subgraphs
//!   behind, and running it again moves only the rest.
//!
//! Everything received is checked against its digest by the destination
//! ([`Repository::write_object_bytes`], [`Repository::write_payload`]); a
//! corrupt object or payload at the source stops the transfer with an error
//! naming its digest and is never stored. Payloads move on `jobs` threads.
//!
//! A transfer into a local directory holds its garbage-collection lock
//! shared throughout ([`crate::gc`]), so `spfs clean` never removes what
//! the transfer found present and skipped.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use spfs_model::{Digest, EntryKind, Object};

use crate::Result;
use crate::repository::{IncomingPayload, Repository, check_object};

/// Told how a transfer advances (a progress bar, or nothing).
pub trait Progress: Sync {
    /// `n` more objects or payloads are known to be needed.
    fn need(&self, _items: u64) {}
    /// One object or payload was copied (`bytes` of it) or found present.
    fn done(&self, _bytes: u64) {}
}

/// No progress shown.
impl Progress for () {}

/// What a transfer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TransferStats {
    pub objects_copied: u64,
    pub objects_present: u64,
    pub payloads_copied: u64,
    pub payloads_present: u64,
    pub bytes_copied: u64,
}

/// What a transfer copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Objects and payloads; an object the destination has is taken as
    /// complete (with everything it reaches) and skipped.
    Whole,
    /// The same, but objects the destination has are read there and
    /// descended into, so that payloads it lacks are fetched: for a
    /// destination that may hold objects without their payloads (the
    /// local repository, where the VFS reads through remotes).
    Repair,
    /// Objects only (the VFS's read-through: payloads come when read).
    ObjectsOnly,
}

/// Copy everything reachable from `roots` from `src` to `dst`.
pub fn copy_graph(
    src: &dyn Repository,
    dst: &dyn Repository,
    roots: &[Digest],
    jobs: usize,
    progress: &dyn Progress,
) -> Result<TransferStats> {
    copy_graph_scoped(src, dst, roots, Scope::Whole, jobs, progress)
}

/// Copy what `scope` says of everything reachable from `roots`.
pub fn copy_graph_scoped(
    src: &dyn Repository,
    dst: &dyn Repository,
    roots: &[Digest],
    scope: Scope,
    jobs: usize,
    progress: &dyn Progress,
) -> Result<TransferStats> {
    // From the first presence check to the last write: a clean of the
    // destination must not remove what this transfer finds there and
    // builds on (callers that tag the result hold it until the tag is
    // written).
    let _guard = dst.gc_guard()?;
    let mut t = Transfer {
        src,
        dst,
        scope,
        jobs: jobs.max(1),
        progress,
        seen: HashSet::new(),
        stats: TransferStats::default(),
    };
    for root in roots {
        t.object(root)?;
    }
    Ok(t.stats)
}

struct Transfer<'a> {
    src: &'a dyn Repository,
    dst: &'a dyn Repository,
    scope: Scope,
    jobs: usize,
    progress: &'a dyn Progress,
    seen: HashSet<Digest>,
    stats: TransferStats,
}

impl Transfer<'_> {
    /// Copy object `digest` after everything it reaches.
    fn object(&mut self, digest: &Digest) -> Result<()> {
        if !self.seen.insert(*digest) {
            return Ok(());
        }
        self.progress.need(1);
        let present = self.dst.has_object(digest)?;
        if present && self.scope != Scope::Repair {
            self.stats.objects_present += 1;
            self.progress.done(0);
            return Ok(());
        }
        // Repairing reads what the destination has (cheap: it is local).
        let bytes = match present {
            true => self.dst.read_object_bytes(digest)?,
            false => self.src.read_object_bytes(digest)?,
        };
        match check_object(digest, &bytes)? {
            Object::Platform(p) => {
                for d in &p.stack {
                    self.object(d)?;
                }
            }
            Object::Layer(l) => self.object(&l.manifest)?,
            Object::Manifest(tree) => {
                let mut blobs: Vec<Digest> = tree
                    .entries()
                    .iter()
                    .filter(|e| matches!(e.kind, EntryKind::File | EntryKind::Symlink))
                    .map(|e| e.object)
                    .filter(|d| self.seen.insert(*d))
                    .collect();
                blobs.sort_unstable();
                blobs.dedup();
                if self.scope != Scope::ObjectsOnly {
                    self.payloads(&blobs)?;
                }
            }
        }
        if present {
            self.stats.objects_present += 1;
            self.progress.done(0);
            return Ok(());
        }
        self.dst.write_object_bytes(digest, &bytes)?;
        self.stats.objects_copied += 1;
        self.progress.done(bytes.len() as u64);
        Ok(())
    }

    /// Copy the payloads the destination lacks, on `jobs` threads, in
    /// batches that the destination makes durable at once; the first error
    /// stops the others.
    fn payloads(&mut self, blobs: &[Digest]) -> Result<()> {
        self.progress.need(blobs.len() as u64);
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let first_error = Mutex::new(None);
        let totals = Mutex::new(TransferStats::default());
        let (src, dst, progress) = (self.src, self.dst, self.progress);
        // Every worker gets work even for a few payloads (latency to a
        // remote is paid in parallel), and batches stay bounded.
        let batch_len = blobs.len().div_ceil(self.jobs).clamp(1, BATCH);
        std::thread::scope(|scope| {
            for _ in 0..self.jobs.min(blobs.len()) {
                scope.spawn(|| {
                    let mut mine = TransferStats::default();
                    while !failed.load(Ordering::Relaxed) {
                        let start = next.fetch_add(batch_len, Ordering::Relaxed);
                        let Some(batch) = blobs.get(start..(start + batch_len).min(blobs.len()))
                        else {
                            break;
                        };
                        let mut todo = batch.iter();
                        let mut present = 0;
                        let mut incoming = || {
                            for d in todo.by_ref() {
                                match dst.has_payload(d) {
                                    Ok(true) => {
                                        present += 1;
                                        progress.done(0);
                                    }
                                    Ok(false) => {
                                        return Some(
                                            src.open_payload(d)
                                                .map(|from| IncomingPayload { digest: *d, from }),
                                        );
                                    }
                                    Err(e) => return Some(Err(e)),
                                }
                            }
                            None
                        };
                        match dst.write_payload_batch(&mut incoming) {
                            Ok(stored) => {
                                mine.payloads_present += present;
                                for (_, n) in stored {
                                    mine.payloads_copied += 1;
                                    mine.bytes_copied += n;
                                    progress.done(n);
                                }
                            }
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                first_error
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .get_or_insert(e);
                            }
                        }
                    }
                    let mut t = totals.lock().unwrap_or_else(|p| p.into_inner());
                    t.payloads_present += mine.payloads_present;
                    t.payloads_copied += mine.payloads_copied;
                    t.bytes_copied += mine.bytes_copied;
                });
            }
        });
        if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        let t = totals.into_inner().unwrap_or_else(|p| p.into_inner());
        self.stats.payloads_present += t.payloads_present;
        self.stats.payloads_copied += t.payloads_copied;
        self.stats.bytes_copied += t.bytes_copied;
        Ok(())
    }
}

/// Payloads a destination stores and makes durable at once, at most.
const BATCH: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FsRepository;
    use spfs_model::Platform;
    use std::collections::BTreeMap;

    /// A repository with a platform of two layers sharing a file.
    fn source(dir: &std::path::Path) -> (FsRepository, Digest, Vec<Digest>) {
        let repo = FsRepository::create(dir.join("src-repo")).unwrap();
        let mut layers = Vec::new();
        for (k, extra) in ["one", "two"].iter().enumerate() {
            let tree = dir.join(format!("tree{k}"));
            std::fs::create_dir_all(tree.join("sub")).unwrap();
            std::fs::write(tree.join("shared"), b"same bytes").unwrap();
            std::fs::write(tree.join("sub/own"), extra.repeat(1000)).unwrap();
            std::os::unix::fs::symlink("shared", tree.join("link")).unwrap();
            let opts = crate::commit::Options::default();
            layers.push(
                crate::commit::commit_dir(&repo, &tree, BTreeMap::new(), &opts, &()).unwrap(),
            );
        }
        let platform = repo
            .write_object(&Object::Platform(Platform {
                stack: layers.clone(),
            }))
            .unwrap();
        (repo, platform, layers)
    }

    #[test]
    fn a_graph_copies_whole_and_then_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (src, platform, _) = source(dir.path());
        let dst = FsRepository::create(dir.path().join("dst")).unwrap();
        let stats = copy_graph(&src, &dst, &[platform], 4, &()).unwrap();
        // platform, 2 layers, 2 manifests; "same bytes", 2 own files, the
        // symlink target.
        assert_eq!(stats.objects_copied, 5);
        assert_eq!(stats.payloads_copied, 4);
        assert!(dst.merged_tree(&dst.flatten(&[platform]).unwrap()).is_ok());
        let report = crate::check::check(&dst, &[platform]).unwrap();
        assert!(report.is_clean(), "{report:?}");
        let again = copy_graph(&src, &dst, &[platform], 4, &()).unwrap();
        assert_eq!(again.objects_copied + again.payloads_copied, 0);
        assert_eq!(again.objects_present, 1, "a present root is not descended");
    }

    #[test]
    fn an_interrupted_copy_moves_only_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (src, platform, layers) = source(dir.path());
        let dst = FsRepository::create(dir.path().join("dst")).unwrap();
        // As if a first run died after the first layer.
        copy_graph(&src, &dst, &layers[..1], 1, &()).unwrap();
        let rest = copy_graph(&src, &dst, &[platform], 1, &()).unwrap();
        assert_eq!(
            rest.objects_copied, 3,
            "platform, second layer and manifest"
        );
        assert_eq!(rest.payloads_copied, 1, "only the second layer's own file");
        assert_eq!(rest.objects_present, 1);
    }

    #[test]
    fn objects_first_then_a_repair_fetches_the_payloads() {
        let dir = tempfile::tempdir().unwrap();
        let (src, platform, _) = source(dir.path());
        let dst = FsRepository::create(dir.path().join("dst")).unwrap();
        let objects =
            copy_graph_scoped(&src, &dst, &[platform], Scope::ObjectsOnly, 2, &()).unwrap();
        assert_eq!((objects.objects_copied, objects.payloads_copied), (5, 0));
        // A plain copy trusts the present root and fetches nothing...
        let plain = copy_graph(&src, &dst, &[platform], 2, &()).unwrap();
        assert_eq!(plain.payloads_copied, 0);
        // ...a repair reads what is there and fetches what is missing.
        let repair = copy_graph_scoped(&src, &dst, &[platform], Scope::Repair, 2, &()).unwrap();
        assert_eq!((repair.objects_copied, repair.payloads_copied), (0, 4));
        assert!(crate::check::check(&dst, &[platform]).unwrap().is_clean());
    }

    #[test]
    fn corrupt_source_data_is_named_and_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (src, platform, _) = source(dir.path());
        let own = Digest::of("two".repeat(1000).as_bytes());
        let path = src.payload_path(&own);
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
        std::fs::set_permissions(&path, perms).unwrap();
        std::fs::write(&path, "TWO".repeat(1000)).unwrap();
        let dst = FsRepository::create(dir.path().join("dst")).unwrap();
        let err = copy_graph(&src, &dst, &[platform], 2, &()).unwrap_err();
        assert!(err.to_string().contains(&own.to_string()), "{err}");
        assert!(!dst.has_payload(&own), "a corrupt payload was stored");
        assert!(!Repository::has_object(&dst, &platform).unwrap());
        // A corrupt object too.
        let (src2, platform2, _) = source(&dir.path().join("again"));
        std::fs::write(src2.object_path(&platform2), b"garbage").unwrap();
        let dst2 = FsRepository::create(dir.path().join("dst2")).unwrap();
        let err = copy_graph(&src2, &dst2, &[platform2], 2, &()).unwrap_err();
        assert!(err.to_string().contains(&platform2.to_string()), "{err}");
        assert!(!Repository::has_object(&dst2, &platform2).unwrap());
    }
}
