//! Garbage collection: removing the objects and payloads that no root
//! reaches, safely while others write.
//!
//! The roots are every version of every tag (after the pruning asked
//! for), every runtime record's layers, and the layers of the views a
//! running VFS service serves (the caller asks it: [`Cleaner::views`]).
//!
//! The protocol (`docs/clean.md` says why it is safe):
//!
//! 1. [`Cleaner::plan`], without any lock: list everything stored (the
//!    candidates), then walk what the roots reach.
//! 2. [`Cleaner::execute`]: prune tag versions as asked, take the
//!    garbage-collection lock exclusively ([`crate::gc`]), read the roots
//!    again and walk only what is new (and what was missing before), drop
//!    what is now reachable from the candidates, and delete the rest while
//!    the lock is held: objects that name others before the objects they
//!    name, each level made durable before the next, payloads last. So a
//!    clean that dies midway leaves no stored object naming a missing one
//!    (what a transfer relies on when it skips an object it finds); an
//!    object that cannot be removed stops the deletion at its level.
//!
//! Every write operation holds the lock shared from before its first
//! write or dedup check until the root making its objects reachable
//! exists, so what a writer relies on is either reachable when the roots
//! are read again, or was written after the listing and is no candidate.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::AtFlags;
use spfs_model::Digest;

use crate::beneath;
use crate::error::{Result, StorageError};
use crate::fs::FsRepository;
use crate::reach::{Reached, children, walk};
use crate::tags::TagVersion;

/// Which tag versions are pruned before collecting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneOptions {
    /// Prune versions older than this.
    pub older_than: Option<Duration>,
    /// Prune versions pointing where the version before them points.
    pub repeated: bool,
    /// Never prune a tag below this many versions: its newest ones stay.
    pub keep_at_least: u64,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            older_than: None,
            repeated: false,
            keep_at_least: 1,
        }
    }
}

impl PruneOptions {
    /// Whether anything may be pruned at all.
    pub fn prunes(&self) -> bool {
        self.older_than.is_some() || self.repeated
    }

    /// Which versions of `history` (oldest first) to keep, at `now`
    /// (seconds since the epoch): one flag per version. A version goes if
    /// it is older than [`PruneOptions::older_than`] or (with
    /// [`PruneOptions::repeated`]) points at the target of the version just
    /// before it, unless it is among the newest
    /// [`PruneOptions::keep_at_least`].
    pub fn keep(&self, history: &[TagVersion], now: u64) -> Vec<bool> {
        let protected_from = history
            .len()
            .saturating_sub(usize::try_from(self.keep_at_least).unwrap_or(usize::MAX));
        history
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if i >= protected_from {
                    return true;
                }
                let old = self
                    .older_than
                    .is_some_and(|age| now.saturating_sub(v.time) > age.as_secs());
                let repeat = self.repeated && i > 0 && history[i - 1].target == v.target;
                !(old || repeat)
            })
            .collect()
    }
}

/// A tag version pruned (or, in a dry run, that would be).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PrunedVersion {
    pub tag: String,
    /// How far back it was (`tag~N`) when it was pruned.
    pub back: u64,
    pub target: Digest,
    pub time: u64,
}

/// One payload file: a digest and whose copy (`None`: the public one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PayloadFile {
    pub digest: Digest,
    pub user: Option<u32>,
}

/// Told how a clean advances (a progress bar, or nothing).
pub trait Progress: Sync {
    /// A phase starts, of `total` steps (0: unknown).
    fn phase(&self, _what: &str, _total: u64) {}
    /// `n` more steps are done.
    fn advance(&self, _n: u64) {}
}

/// No progress shown.
impl Progress for () {}

/// The live views' layers, as a running VFS service tells them; an error
/// when a service answers but cannot say (a clean must then not go on).
pub type Views<'a> = &'a (dyn Fn() -> std::result::Result<Vec<Digest>, String> + Sync);

/// What phase 1 found: the candidates, what the roots reach, and so what
/// would go.
#[derive(Debug, Default)]
pub struct Plan {
    /// Tag versions to prune (by the options, as the tags were read).
    pub prune: Vec<PrunedVersion>,
    /// Every object stored when listed.
    objects: Vec<Digest>,
    /// Every payload file stored when listed.
    payloads: Vec<PayloadFile>,
    /// Digests looked up by the walk (objects, root blobs, missing).
    seen: HashSet<Digest>,
    /// Digests named but stored as nothing: looked up again in phase 2
    /// (written meanwhile, they reach what they name).
    missing: HashSet<Digest>,
    /// Every digest reached (objects and blobs).
    reached: HashSet<Digest>,
    /// The objects each unreached object names (to delete parents first).
    garbage_children: HashMap<Digest, Vec<Digest>>,
}

impl Plan {
    /// The objects that would go (as of phase 1).
    pub fn garbage_objects(&self) -> Vec<Digest> {
        self.objects
            .iter()
            .filter(|d| !self.reached.contains(d))
            .copied()
            .collect()
    }

    /// The payload files that would go (as of phase 1).
    pub fn garbage_payloads(&self) -> Vec<PayloadFile> {
        self.payloads
            .iter()
            .filter(|p| !self.reached.contains(&p.digest))
            .copied()
            .collect()
    }
}

/// What a clean did (or, in a dry run, would do).
#[derive(Debug, Default, serde::Serialize)]
pub struct CleanReport {
    pub dry_run: bool,
    pub tag_versions_pruned: u64,
    pub objects_removed: u64,
    /// Payload files: public copies and private ones.
    pub payloads_removed: u64,
    pub bytes_freed: u64,
    pub temp_files_removed: u64,
    /// Candidates reachable only from roots that appeared while the clean
    /// ran (kept).
    pub kept_late: u64,
    #[serde(skip)]
    pub pruned: Vec<PrunedVersion>,
    #[serde(skip)]
    pub removed_objects: Vec<Digest>,
    #[serde(skip)]
    pub removed_payloads: Vec<PayloadFile>,
    /// What could not be removed, and why.
    pub failures: Vec<String>,
}

/// A garbage collection of one repository.
pub struct Cleaner<'a> {
    pub repo: &'a FsRepository,
    pub prune: PruneOptions,
    /// The live views' layers.
    pub views: Views<'a>,
    /// How long to wait for writers before deleting.
    pub lock_timeout: Duration,
    pub progress: &'a dyn Progress,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Cleaner<'_> {
    /// The roots: every version of every tag except those in `pruned`,
    /// every runtime record's layers, every live view's layers. `pruned`
    /// names versions by tag and position (oldest first).
    fn roots(&self, pruned: &HashSet<(String, usize)>) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for tag in self.repo.tags()? {
            match self.repo.tag_history(&tag) {
                Ok(history) => out.extend(
                    history
                        .into_iter()
                        .enumerate()
                        .filter(|(i, _)| !pruned.contains(&(tag.clone(), *i)))
                        .map(|(_, v)| v.target),
                ),
                // Removed meanwhile.
                Err(StorageError::UnknownTag(_)) => {}
                Err(e) => return Err(e),
            }
        }
        out.extend(runtime_roots(self.repo)?);
        let views = (self.views)().map_err(|message| StorageError::Remote {
            address: "the VFS service".into(),
            message: format!("cannot list its views (a clean must know them): {message}"),
        })?;
        out.extend(views);
        Ok(out)
    }

    /// Walk from `roots`, recording what is reached; what cannot be known
    /// to reach nothing stops the clean.
    fn mark(&self, plan: &mut Plan, roots: Vec<Digest>) -> Result<()> {
        let Plan {
            seen,
            missing,
            reached,
            ..
        } = plan;
        let mut corrupt = None;
        walk(self.repo, roots, seen, |found| {
            self.progress.advance(1);
            match found {
                Reached::Object(d, _) | Reached::Blob(d) => {
                    reached.insert(d);
                }
                Reached::Missing(d) => {
                    reached.insert(d);
                    missing.insert(d);
                }
                Reached::Corrupt(d, why) => {
                    corrupt.get_or_insert((d, why));
                }
            }
        })?;
        match corrupt {
            // What a corrupt object names is unknown: deleting anything
            // might delete what it needs.
            Some((d, why)) => Err(StorageError::Corrupt {
                digest: d,
                source: spfs_model::DecodeError::Invalid(format!(
                    "{why}; it is reachable, so what it names is unknown and no object or payload was removed (see 'spfs check')"
                )),
            }),
            None => Ok(()),
        }
    }

    /// Phase 1, without any lock: which tag versions would be pruned, what
    /// is stored, what the roots (less those versions) reach.
    pub fn plan(&self) -> Result<Plan> {
        let mut plan = Plan::default();
        let mut pruned = HashSet::new();
        if self.prune.prunes() {
            let now = now();
            for tag in self.repo.tags()? {
                let history = match self.repo.tag_history(&tag) {
                    Ok(h) => h,
                    Err(StorageError::UnknownTag(_)) => continue,
                    Err(e) => return Err(e),
                };
                let n = history.len() as u64;
                for (i, (v, keep)) in history
                    .iter()
                    .zip(self.prune.keep(&history, now))
                    .enumerate()
                {
                    if !keep {
                        pruned.insert((tag.clone(), i));
                        plan.prune.push(PrunedVersion {
                            tag: tag.clone(),
                            back: n - 1 - i as u64,
                            target: v.target,
                            time: v.time,
                        });
                    }
                }
            }
        }
        self.progress.phase("listing", 0);
        plan.objects = self.repo.objects()?;
        plan.payloads = self
            .repo
            .payload_files()?
            .into_iter()
            .map(|(digest, user)| PayloadFile { digest, user })
            .collect();
        self.progress
            .advance((plan.objects.len() + plan.payloads.len()) as u64);
        let roots = self.roots(&pruned)?;
        self.progress.phase("marking", 0);
        self.mark(&mut plan, roots)?;
        // What each unreached object names, read now (not while others
        // wait for the lock).
        let garbage = plan.garbage_objects();
        self.progress.phase("reading garbage", garbage.len() as u64);
        for d in garbage {
            self.progress.advance(1);
            // One that cannot be read names nothing we know of.
            let named = match self.repo.read_object(&d) {
                Ok(obj) => children(&obj).0,
                Err(_) => Vec::new(),
            };
            plan.garbage_children.insert(d, named);
        }
        Ok(plan)
    }

    /// Phase 2: prune, lock, read the roots again, delete what is still
    /// unreachable. `waiting` is called once if writers hold the lock for
    /// a while.
    pub fn execute(&self, mut plan: Plan, waiting: impl FnOnce()) -> Result<CleanReport> {
        let mut report = CleanReport::default();
        if self.prune.prunes() {
            self.progress.phase("pruning tags", 0);
            let now = now();
            let tags: BTreeSet<&str> = plan.prune.iter().map(|p| p.tag.as_str()).collect();
            for tag in tags {
                // Decided again under the tag's lock: versions may have
                // been added since.
                let removed = match self
                    .repo
                    .retain_versions(tag, |history| self.prune.keep(history, now))
                {
                    Ok(removed) => removed,
                    Err(StorageError::UnknownTag(_)) => continue,
                    Err(e) => return Err(e),
                };
                report
                    .pruned
                    .extend(removed.into_iter().map(|(back, v)| PrunedVersion {
                        tag: tag.to_string(),
                        back,
                        target: v.target,
                        time: v.time,
                    }));
            }
            report.tag_versions_pruned = report.pruned.len() as u64;
        }
        self.progress.phase("waiting for writers", 0);
        let lock = self.repo.gc_lock(self.lock_timeout, waiting)?;
        // Roots as they are now (tags written, records saved, views
        // registered since phase 1 included), walked where new; digests
        // missing before are looked up again.
        let again: Vec<Digest> = plan.missing.drain().collect();
        for d in &again {
            plan.seen.remove(d);
        }
        let mut roots = self.roots(&HashSet::new())?;
        roots.extend(again);
        self.progress.phase("marking new roots", 0);
        let before: HashSet<Digest> = plan
            .objects
            .iter()
            .chain(plan.payloads.iter().map(|p| &p.digest))
            .filter(|d| !plan.reached.contains(d))
            .copied()
            .collect();
        self.mark(&mut plan, roots)?;
        report.kept_late = before.iter().filter(|d| plan.reached.contains(d)).count() as u64;
        let objects = plan.garbage_objects();
        let payloads = plan.garbage_payloads();
        self.progress
            .phase("removing", (objects.len() + payloads.len()) as u64);
        for level in parents_first(&objects, &plan.garbage_children) {
            let mut dirs = BTreeSet::new();
            for d in level {
                let rel = object_rel(&d);
                match self.repo.remove_stored(&rel) {
                    Ok(Some(size)) => {
                        report.objects_removed += 1;
                        report.bytes_freed += size;
                        report.removed_objects.push(d);
                        dirs.insert(parent_of(&rel));
                    }
                    Ok(None) => {}
                    Err(e) => report.failures.push(e.to_string()),
                }
                self.progress.advance(1);
            }
            // Durable before what this level named goes.
            self.sync_dirs(dirs, &mut report);
            if !report.failures.is_empty() {
                // What a remaining object names must stay.
                break;
            }
        }
        let payloads = if report.failures.is_empty() {
            payloads
        } else {
            Vec::new()
        };
        let mut dirs = BTreeSet::new();
        for p in payloads {
            let rel = FsRepository::payload_rel(&p.digest, p.user);
            match self.repo.remove_stored(&rel) {
                Ok(Some(size)) => {
                    report.payloads_removed += 1;
                    report.bytes_freed += size;
                    report.removed_payloads.push(p);
                    dirs.insert(parent_of(&rel));
                }
                Ok(None) => {}
                Err(e) => report.failures.push(e.to_string()),
            }
            self.progress.advance(1);
        }
        self.sync_dirs(dirs, &mut report);
        drop(lock);
        match self.repo.remove_stale_temp_files() {
            Ok(n) => report.temp_files_removed = n as u64,
            Err(e) => report.failures.push(e.to_string()),
        }
        Ok(report)
    }

    fn sync_dirs(&self, dirs: BTreeSet<PathBuf>, report: &mut CleanReport) {
        for dir in dirs {
            if let Err(e) = self.repo.sync_rel(&dir) {
                report.failures.push(e.to_string());
            }
        }
    }
}

fn object_rel(d: &Digest) -> PathBuf {
    let text = d.to_string();
    Path::new("objects").join(&text[..2]).join(&text[2..])
}

fn parent_of(rel: &Path) -> PathBuf {
    rel.parent().unwrap_or(Path::new("")).to_path_buf()
}

/// `objects` in levels: each object comes after every object of `objects`
/// that names it (by `named`), so deleting level by level never leaves an
/// object naming one already deleted.
fn parents_first(objects: &[Digest], named: &HashMap<Digest, Vec<Digest>>) -> Vec<Vec<Digest>> {
    let set: HashSet<Digest> = objects.iter().copied().collect();
    // Each object's children within the set, once each.
    let kids = |d: &Digest| -> BTreeSet<Digest> {
        named
            .get(d)
            .into_iter()
            .flatten()
            .filter(|c| *c != d && set.contains(c))
            .copied()
            .collect()
    };
    let mut parents: BTreeMap<Digest, usize> = objects.iter().map(|d| (*d, 0)).collect();
    for d in objects {
        for c in kids(d) {
            *parents.entry(c).or_default() += 1;
        }
    }
    let mut levels: Vec<Vec<Digest>> = Vec::new();
    let mut next: Vec<Digest> = parents
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(d, _)| *d)
        .collect();
    while !next.is_empty() {
        let mut after = Vec::new();
        for d in &next {
            for c in kids(d) {
                let n = parents.entry(c).or_default();
                *n -= 1;
                if *n == 0 {
                    after.push(c);
                }
            }
        }
        levels.push(std::mem::replace(&mut next, after));
    }
    // Content addresses admit no cycle; should one appear, its objects
    // still go, last.
    let done: HashSet<Digest> = levels.iter().flatten().copied().collect();
    if done.len() < set.len() {
        levels.push(set.difference(&done).copied().collect());
    }
    levels
}

/// Every runtime record's layers. A record that cannot be read (another
/// user's, or damaged) stops the clean: its layers are unknown.
pub fn runtime_roots(repo: &FsRepository) -> Result<Vec<Digest>> {
    let dir = Path::new("runtimes");
    let names = match beneath::list_dir(repo.fd(), dir) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(repo.io_err("cannot list", dir)(e)),
    };
    let mut out = Vec::new();
    for name in names {
        let Some(name) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        match repo.read_runtime(name) {
            Ok(record) => out.extend(record.layers),
            // Ended meanwhile, or a name no runtime has.
            Err(StorageError::UnknownRuntime(_)) => {}
            Err(e) => {
                return Err(StorageError::BadRecord {
                    path: repo.root().join(dir).join(format!("{name}.json")),
                    message: format!(
                        "a clean must know every runtime's layers and cannot read this record ({e}); no object or payload was removed"
                    ),
                });
            }
        }
    }
    Ok(out)
}

impl FsRepository {
    /// Remove the regular file `rel` (an object or payload) below the
    /// root; its size, or `None` if it is gone or is no regular file.
    fn remove_stored(&self, rel: &Path) -> Result<Option<u64>> {
        let (parent, name) = beneath::split(rel).map_err(self.io_err("cannot remove", rel))?;
        let dir = match beneath::open_dir(self.fd(), parent) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_err("cannot remove", rel)(e)),
        };
        let st = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(self.io_err("cannot remove", rel)(e.into())),
        };
        if !beneath::is_regular_stat(&st) {
            return Ok(None);
        }
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) => Ok(Some(st.st_size as u64)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(self.io_err("cannot remove", rel)(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::{Options, commit_dir};
    use spfs_model::{Object, Platform};

    fn no_views() -> std::result::Result<Vec<Digest>, String> {
        Ok(Vec::new())
    }

    fn cleaner<'a>(repo: &'a FsRepository, prune: PruneOptions) -> Cleaner<'a> {
        Cleaner {
            repo,
            prune,
            views: &no_views,
            lock_timeout: Duration::from_secs(5),
            progress: &(),
        }
    }

    fn layer(repo: &FsRepository, dir: &Path, files: &[(&str, &str)]) -> Digest {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        commit_dir(repo, dir, Default::default(), &Options::default(), &()).unwrap()
    }

    fn v(target: &[u8], time: u64) -> TagVersion {
        TagVersion {
            target: Digest::of(target),
            time,
            user: "u".into(),
        }
    }

    #[test]
    fn which_versions_are_pruned() {
        let day = 86_400;
        let now = 100 * day;
        // Oldest first: a, a (repeat), b, b (repeat), c.
        let history = [
            v(b"a", now - 50 * day),
            v(b"a", now - 40 * day),
            v(b"b", now - 20 * day),
            v(b"b", now - 2 * day),
            v(b"c", now - day),
        ];
        let keep = |o: PruneOptions| o.keep(&history, now);
        assert_eq!(keep(PruneOptions::default()), [true; 5]);
        let older = |days, n| PruneOptions {
            older_than: Some(Duration::from_secs(days * day)),
            repeated: false,
            keep_at_least: n,
        };
        assert_eq!(keep(older(30, 1)), [false, false, true, true, true]);
        assert_eq!(keep(older(10, 1)), [false, false, false, true, true]);
        // Never below N versions: the newest N stay.
        assert_eq!(keep(older(10, 4)), [false, true, true, true, true]);
        assert_eq!(keep(older(0, 0)), [false; 5]);
        assert_eq!(keep(older(0, 1)), [false, false, false, false, true]);
        let repeated = |n| PruneOptions {
            older_than: None,
            repeated: true,
            keep_at_least: n,
        };
        assert_eq!(keep(repeated(1)), [true, false, true, false, true]);
        assert_eq!(keep(repeated(2)), [true, false, true, true, true]);
        // Both: either reason prunes.
        let both = PruneOptions {
            older_than: Some(Duration::from_secs(30 * day)),
            repeated: true,
            keep_at_least: 1,
        };
        assert_eq!(keep(both), [false, false, true, false, true]);
    }

    #[test]
    fn parents_go_before_what_they_name() {
        let (p, q, l, m, x) = (
            Digest::of(b"p"),
            Digest::of(b"q"),
            Digest::of(b"l"),
            Digest::of(b"m"),
            Digest::of(b"x"),
        );
        // p names q and l; q names l; l names m; x stands alone; m is
        // also named by something outside the set.
        let named: HashMap<Digest, Vec<Digest>> = [
            (p, vec![q, l]),
            (q, vec![l, l]),
            (l, vec![m]),
            (m, vec![]),
            (x, vec![Digest::of(b"elsewhere")]),
        ]
        .into_iter()
        .collect();
        let levels = parents_first(&[m, l, q, p, x], &named);
        let at = |d: Digest| levels.iter().position(|lv| lv.contains(&d)).unwrap();
        assert!(
            at(p) < at(q) && at(q) < at(l) && at(l) < at(m),
            "{levels:?}"
        );
        assert_eq!(at(x), 0);
        assert_eq!(levels.iter().map(Vec::len).sum::<usize>(), 5);
    }

    #[test]
    fn unreachable_goes_and_reachable_stays() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let src = dir.path().join("src");
        let kept = layer(&repo, &src, &[("shared", "shared bytes"), ("k", "kept")]);
        let gone = layer(&repo, &src, &[("shared", "shared bytes"), ("g", "gone")]);
        let in_record = layer(&repo, &src, &[("r", "runtime's")]);
        let platform = repo
            .write_object(&Object::Platform(Platform { stack: vec![kept] }))
            .unwrap();
        repo.push_tag("t/kept", &platform).unwrap();
        let blob = repo.write_blob(b"a tagged blob").unwrap();
        repo.push_tag("t/blob", &blob).unwrap();
        repo.write_blob(b"a loose blob").unwrap();
        repo.save_runtime(&crate::runtimes::RuntimeRecord {
            name: "rt-test".into(),
            spec: "x".into(),
            layers: vec![in_record],
            root_pid: 1,
            owner_uid: 0,
            created: 0,
            mountpoint: "/spfs".into(),
            command: vec!["true".into()],
            cgroup: String::new(),
            bound: false,
            editable: false,
            keep: false,
        })
        .unwrap();
        let view_layer = layer(&repo, &src, &[("v", "a live view's")]);
        let views = move || Ok(vec![view_layer]);
        let c = Cleaner {
            views: &views,
            ..cleaner(&repo, PruneOptions::default())
        };
        let plan = c.plan().unwrap();
        let gone_manifest = match repo.read_object(&gone).unwrap() {
            Object::Layer(l) => l.manifest,
            _ => unreachable!(),
        };
        let mut expected = vec![gone, gone_manifest];
        expected.sort();
        assert_eq!(plan.garbage_objects(), expected);
        let payloads: Vec<Digest> = plan.garbage_payloads().iter().map(|p| p.digest).collect();
        assert_eq!(payloads, {
            let mut v = vec![Digest::of(b"gone"), Digest::of(b"a loose blob")];
            v.sort();
            v
        });
        let report = c.execute(plan, || {}).unwrap();
        assert_eq!((report.objects_removed, report.payloads_removed), (2, 2));
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert!(!repo.has_object(&gone) && !repo.has_object(&gone_manifest));
        assert!(!repo.has_payload(&Digest::of(b"gone")));
        for root in [platform, blob, in_record, view_layer] {
            let report = crate::check::check(&repo, &[root]).unwrap();
            assert!(report.is_clean(), "{report:?}");
        }
        assert!(repo.has_payload(&Digest::of(b"shared bytes")));
        // Again: nothing left to remove.
        let again = c.execute(c.plan().unwrap(), || {}).unwrap();
        assert_eq!(again.objects_removed + again.payloads_removed, 0);
    }

    /// What is written and made reachable between the two phases stays,
    /// and an object missing in phase 1 that arrives meanwhile keeps what
    /// it names.
    #[test]
    fn roots_that_appear_before_the_lock_keep_their_objects() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let src = dir.path().join("src");
        let late = layer(&repo, &src, &[("late", "tagged after the plan")]);
        let child = layer(&repo, &src, &[("child", "named by a missing platform")]);
        let platform = Object::Platform(Platform { stack: vec![child] });
        let platform_digest = Digest::of(&platform.encode());
        // A tag naming a platform not stored yet.
        repo.push_tag("t/dangling", &platform_digest).unwrap();
        let c = cleaner(&repo, PruneOptions::default());
        let plan = c.plan().unwrap();
        assert_eq!(
            plan.garbage_objects().len(),
            4,
            "both layers, both manifests"
        );
        repo.push_tag("t/late", &late).unwrap();
        repo.write_object(&platform).unwrap();
        let report = c.execute(plan, || {}).unwrap();
        assert_eq!(report.objects_removed + report.payloads_removed, 0);
        assert_eq!(report.kept_late, 6);
        for root in [late, platform_digest] {
            assert!(crate::check::check(&repo, &[root]).unwrap().is_clean());
        }
    }

    #[test]
    fn pruned_versions_no_longer_keep_their_targets() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let src = dir.path().join("src");
        let a = layer(&repo, &src, &[("f", "version a")]);
        let b = layer(&repo, &src, &[("f", "version b")]);
        for target in [a, b, b, b] {
            repo.push_tag("t/x", &target).unwrap();
        }
        // b, b, b: the newest is kept (one version at least), the middle
        // one, a repeat, goes.
        let repeated = PruneOptions {
            repeated: true,
            ..PruneOptions::default()
        };
        let report = cleaner(&repo, repeated.clone())
            .execute(cleaner(&repo, repeated).plan().unwrap(), || {})
            .unwrap();
        assert_eq!(report.tag_versions_pruned, 1);
        assert_eq!(report.objects_removed, 0, "a is still tagged");
        assert_eq!(repo.tag_history("t/x").unwrap().len(), 3);
        // Everything older than 0 s, keeping one version: a goes.
        std::thread::sleep(Duration::from_millis(1100));
        let old = PruneOptions {
            older_than: Some(Duration::ZERO),
            ..PruneOptions::default()
        };
        let c = cleaner(&repo, old);
        let plan = c.plan().unwrap();
        assert_eq!(plan.prune.len(), 2);
        assert_eq!((plan.prune[0].back, plan.prune[0].target), (2, a));
        assert_eq!(plan.garbage_objects().len(), 2, "a and its manifest");
        let report = c.execute(plan, || {}).unwrap();
        assert_eq!(report.tag_versions_pruned, 2);
        assert_eq!((report.objects_removed, report.payloads_removed), (2, 1));
        assert!(!repo.has_object(&a) && repo.has_object(&b));
        assert_eq!(repo.tag_history("t/x").unwrap().len(), 1);
    }

    #[test]
    fn writers_hold_off_the_deletion_and_unknowns_stop_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let src = dir.path().join("src");
        layer(&repo, &src, &[("g", "garbage")]);
        // A writer of another process holds the lock shared.
        let writer = std::fs::File::open(repo.gc_lock_path()).unwrap();
        crate::gc::lock(&writer, rustix::fs::FlockOperation::LockShared).unwrap();
        let c = Cleaner {
            lock_timeout: Duration::from_millis(200),
            ..cleaner(&repo, PruneOptions::default())
        };
        let err = c.execute(c.plan().unwrap(), || {}).unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
        assert_eq!(repo.objects().unwrap().len(), 2, "nothing removed");
        drop(writer);
        // A view list that fails, a record that cannot be read, a
        // reachable corrupt object: nothing is removed.
        let failing = || Err("connection reset".to_string());
        let err = Cleaner {
            views: &failing,
            ..cleaner(&repo, PruneOptions::default())
        }
        .plan()
        .unwrap_err()
        .to_string();
        assert!(err.contains("connection reset"), "{err}");
        std::fs::write(repo.root().join("runtimes/rt-bad.json"), b"{").unwrap();
        let err = c.plan().unwrap_err().to_string();
        assert!(err.contains("rt-bad.json"), "{err}");
        std::fs::remove_file(repo.root().join("runtimes/rt-bad.json")).unwrap();
        let tagged = layer(&repo, &src, &[("t", "tagged")]);
        repo.push_tag("t/t", &tagged).unwrap();
        let path = repo.object_path(&tagged);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"SPFS garbage").unwrap();
        let err = c.plan().unwrap_err().to_string();
        assert!(err.contains("no object or payload was removed"), "{err}");
        assert_eq!(repo.objects().unwrap().len(), 4);
    }
}
