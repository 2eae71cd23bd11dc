//! Checking a repository: is everything reachable present and intact?
//!
//! Starting from a set of digests (by default every tag's versions), every
//! reachable object is decoded and every reachable blob is re-hashed (in
//! parallel) and compared with its name: every copy of it the checking
//! user may read ([`crate::payload`]), so root checks every user's copies.
//! A blob with no copy at all is missing.
//!
//! [`repair`] then fetches what a check found missing or corrupt from
//! remotes (`spfs check --pull`); see its documentation.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use spfs_model::{Digest, Hasher};

use crate::beneath;
use crate::error::{Result, StorageError};
use crate::fs::FsRepository;
use crate::payload::{Found, OpenedPayload, PayloadCopy};
use crate::reach::{Reached, walk};
use crate::repository::{PayloadReader, Repository, check_object};
use crate::transfer::{Progress, Scope, copy_graph_scoped};

/// What a check found.
#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub objects: u64,
    pub blobs: u64,
    /// Digests referred to but not stored.
    pub missing: Vec<Digest>,
    /// Objects that do not decode, or blobs whose bytes do not hash to their name.
    pub corrupt: Vec<CorruptItem>,
    /// What each missing or corrupt digest is, where the check knows (a
    /// root stored nowhere may be either).
    #[serde(skip)]
    pub kinds: HashMap<Digest, Kind>,
}

/// What a digest names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Object,
    Payload,
}

/// What is wrong with a digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Problem {
    Missing,
    Corrupt,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Problem::Missing => "missing",
            Problem::Corrupt => "corrupt",
        })
    }
}

/// One digest a repair works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepairItem {
    pub digest: Digest,
    pub problem: Problem,
    /// `None`: not known (a missing root); the remote is asked.
    pub kind: Option<Kind>,
}

#[derive(Debug, serde::Serialize)]
pub struct CorruptItem {
    pub digest: Digest,
    pub problem: String,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.corrupt.is_empty()
    }

    /// Every missing or corrupt digest, once (a blob with several corrupt
    /// copies is one item), missing ones first.
    pub fn items(&self) -> Vec<RepairItem> {
        let mut seen = HashSet::new();
        let missing = self.missing.iter().map(|d| (*d, Problem::Missing));
        let corrupt = self.corrupt.iter().map(|c| (c.digest, Problem::Corrupt));
        missing
            .chain(corrupt)
            .filter(|(d, _)| seen.insert(*d))
            .map(|(digest, problem)| RepairItem {
                digest,
                problem,
                kind: self.kinds.get(&digest).copied(),
            })
            .collect()
    }
}

fn hash_file(mut f: &File) -> std::result::Result<Digest, String> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(h.finish()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// What checking the copies of one blob found.
enum BlobCheck {
    /// No copy is stored.
    Missing,
    /// Every copy the checking user may read is intact.
    Intact,
    /// Problems, one per bad copy.
    Corrupt(Vec<String>),
}

/// Check every copy of blob `digest` that user `uid` may read.
fn check_blob(repo: &FsRepository, digest: &Digest, uid: u32) -> BlobCheck {
    let names = match repo.payload_names(digest) {
        Ok(names) if names.is_empty() => return BlobCheck::Missing,
        Ok(names) => names,
        Err(e) => return BlobCheck::Corrupt(vec![e.to_string()]),
    };
    let mut problems = Vec::new();
    for named in names {
        let which = match named {
            None => String::new(),
            Some(user) => format!("private copy of user {user}: "),
        };
        let result = match repo.find_copy(digest, named, uid) {
            Ok(Found::Opened(p)) => hash_file(&p.file),
            // Another user's copy, or no copy at all under the name.
            Ok(Found::Denied | Found::Missing) => continue,
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(actual) if actual == *digest => {}
            Ok(actual) => problems.push(format!("{which}content hashes to {actual}")),
            Err(e) => problems.push(format!("{which}{e}")),
        }
    }
    if problems.is_empty() {
        BlobCheck::Intact
    } else {
        BlobCheck::Corrupt(problems)
    }
}

/// Check everything reachable from `roots`.
pub fn check(repo: &FsRepository, roots: &[Digest]) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let mut blobs: BTreeSet<Digest> = BTreeSet::new();
    let root_set: HashSet<&Digest> = roots.iter().collect();
    walk(
        repo,
        roots.iter().copied(),
        &mut HashSet::new(),
        |found| match found {
            Reached::Object(..) => report.objects += 1,
            Reached::Blob(d) => {
                blobs.insert(d);
            }
            Reached::Missing(d) => {
                report.missing.push(d);
                // What an object names is an object; a root may be either.
                if !root_set.contains(&d) {
                    report.kinds.insert(d, Kind::Object);
                }
            }
            Reached::Corrupt(digest, problem) => {
                report.objects += 1;
                report.kinds.insert(digest, Kind::Object);
                report.corrupt.push(CorruptItem { digest, problem });
            }
        },
    )?;
    report.blobs = blobs.len() as u64;
    let uid = rustix::process::geteuid().as_raw();
    let results: Vec<(Digest, BlobCheck)> = blobs
        .par_iter()
        .map(|d| (*d, check_blob(repo, d, uid)))
        .collect();
    for (digest, result) in results {
        match result {
            BlobCheck::Intact => continue,
            BlobCheck::Missing => report.missing.push(digest),
            BlobCheck::Corrupt(problems) => report.corrupt.extend(
                problems
                    .into_iter()
                    .map(|problem| CorruptItem { digest, problem }),
            ),
        }
        report.kinds.insert(digest, Kind::Payload);
    }
    report.missing.sort();
    Ok(report)
}

/// Every version of every tag: the default roots of a check.
pub fn tag_roots(repo: &FsRepository) -> Result<Vec<Digest>> {
    let mut out = Vec::new();
    for tag in repo.tags()? {
        match repo.tag_history(&tag) {
            Ok(history) => out.extend(history.into_iter().map(|v| v.target)),
            // Removed meanwhile by another process.
            Err(StorageError::UnknownTag(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------
// Repair
// ---------------------------------------------------------------------

/// A remote a repair fetches from, and its name for reports.
pub struct Source<'a> {
    pub name: &'a str,
    pub repo: &'a dyn Repository,
}

/// A digest a repair put right.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Repaired {
    pub digest: Digest,
    pub problem: Problem,
    pub kind: Kind,
    /// The name of the remote it came from.
    pub from: String,
}

/// A digest still missing or corrupt after a repair, and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Unrepaired {
    pub digest: Digest,
    pub problem: Problem,
    pub reason: String,
}

/// What a repair did, and the check that followed it.
#[derive(Debug)]
pub struct RepairReport {
    pub repaired: Vec<Repaired>,
    /// Every digest the final check still finds missing or corrupt.
    pub unrepaired: Vec<Unrepaired>,
    /// The check of the same roots after the repair.
    pub after: CheckReport,
}

/// Checks (and repairs between them) at most, when each repair makes
/// more of the graph visible: a repaired object reaches children the
/// check before it could not see.
const MAX_PASSES: usize = 4;

/// Repair what `found` (a check of `roots`) reports from `sources`, each
/// digest from the first that has a good copy; then check `roots` again.
///
/// - Everything fetched is verified against its digest before it replaces
///   anything: a source serving bad bytes repairs nothing and is named.
/// - A corrupt copy is never overwritten: it moves to the quarantine
///   ([`crate::quarantine`]) once a verified copy is at hand, and the new
///   copy takes its name.
/// - A payload is stored the way the source says: public only if the
///   source's copy is public, else as this user's private copy (root
///   repairing a user's corrupt private copy restores it as that user's).
/// - An object is fetched with everything it reaches that is missing
///   here ([`Scope::Repair`]).
///
/// When the next check finds problems a repair uncovered (the children of
/// an object that was missing), they are repaired too, up to a few passes.
/// The repository's garbage-collection lock is held shared throughout.
pub fn repair(
    repo: &FsRepository,
    roots: &[Digest],
    found: CheckReport,
    sources: &[Source<'_>],
    jobs: usize,
    progress: &dyn Progress,
) -> Result<RepairReport> {
    // A write operation: `spfs clean` does not delete while it runs
    // ([`crate::gc`]); the transfers it makes share this guard.
    let _guard = repo.write_guard()?;
    let mut report = found;
    let mut repaired: Vec<Repaired> = Vec::new();
    let mut done: HashSet<Digest> = HashSet::new();
    // Why the last attempt at a digest failed, one reason per source.
    let mut reasons: HashMap<Digest, Vec<String>> = HashMap::new();
    let mut failed: HashSet<Digest> = HashSet::new();
    for _ in 0..MAX_PASSES {
        let items: Vec<RepairItem> = report
            .items()
            .into_iter()
            .filter(|i| !done.contains(&i.digest) && !failed.contains(&i.digest))
            .collect();
        if items.is_empty() {
            break;
        }
        progress.need(items.len() as u64);
        for item in &items {
            reasons.remove(&item.digest);
        }
        let mut todo = items;
        let mut fixed = 0;
        for source in sources {
            if todo.is_empty() {
                break;
            }
            let (ok, left) = repair_from(repo, source, todo, jobs, progress);
            fixed += ok.len();
            done.extend(ok.iter().map(|r| r.digest));
            repaired.extend(ok);
            todo = left
                .into_iter()
                .map(|(item, why)| {
                    reasons.entry(item.digest).or_default().push(why);
                    item
                })
                .collect();
        }
        failed = todo.iter().map(|i| i.digest).collect();
        report = check(repo, roots)?;
        if fixed == 0 {
            break;
        }
        // Something was repaired: what failed may have failed for want of
        // it (a child), so the next pass tries everything left again.
        failed.clear();
    }
    let mut unrepaired = Vec::new();
    for item in report.items() {
        let reason = if let Some(pos) = repaired.iter().position(|r| r.digest == item.digest) {
            let r = repaired.remove(pos);
            format!(
                "still {} after it was repaired from {}: {}",
                item.problem,
                r.from,
                problem_text(&report, &item.digest)
            )
        } else if let Some(why) = reasons.get(&item.digest) {
            why.join("; ")
        } else if sources.is_empty() {
            "no remote to repair it from".to_string()
        } else {
            "found only after the last repair pass; run the repair again".to_string()
        };
        unrepaired.push(Unrepaired {
            digest: item.digest,
            problem: item.problem,
            reason,
        });
    }
    Ok(RepairReport {
        repaired,
        unrepaired,
        after: report,
    })
}

/// What the check says is wrong with a corrupt digest (its first problem).
fn problem_text(report: &CheckReport, digest: &Digest) -> String {
    report
        .corrupt
        .iter()
        .find(|c| c.digest == *digest)
        .map(|c| c.problem.clone())
        .unwrap_or_else(|| "not stored".to_string())
}

/// Repair `items` from `source`: what it repaired, and what it did not
/// with why. Payloads first, on `jobs` threads; then objects, whose
/// transfers find the payloads they share already in place.
fn repair_from(
    repo: &FsRepository,
    source: &Source<'_>,
    items: Vec<RepairItem>,
    jobs: usize,
    progress: &dyn Progress,
) -> (Vec<Repaired>, Vec<(RepairItem, String)>) {
    let mut failed = Vec::new();
    let (mut objects, mut payloads) = (Vec::new(), Vec::new());
    for item in items {
        // A root stored nowhere: the source says what it is.
        let kind = match item.kind {
            Some(kind) => Ok(kind),
            None => match source.repo.has_object(&item.digest) {
                Ok(true) => Ok(Kind::Object),
                Ok(false) => match source.repo.has_payload(&item.digest) {
                    Ok(true) => Ok(Kind::Payload),
                    Ok(false) => Err(StorageError::UnknownObject(item.digest)),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
        };
        match kind {
            Ok(Kind::Object) => objects.push(item),
            Ok(Kind::Payload) => payloads.push(item),
            Err(e) => {
                progress.done(0);
                failed.push((item, why(repo, source.name, &item.digest, &e)));
            }
        }
    }
    let repaired = |item: &RepairItem, kind| Repaired {
        digest: item.digest,
        problem: item.problem,
        kind,
        from: source.name.to_string(),
    };
    let mut ok = Vec::new();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, payloads.len().max(1)) {
            scope.spawn(|| {
                while let Some(item) = payloads.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let result = repair_payload(repo, source.repo, item);
                    progress.done(0);
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((*item, result));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(item, _)| item.digest);
    for (item, result) in results {
        match result {
            Ok(()) => ok.push(repaired(&item, Kind::Payload)),
            Err(e) => failed.push((item, e.explain(repo, source.name, &item.digest))),
        }
    }
    objects.sort_by_key(|item| item.digest);
    for item in objects {
        let result = repair_object(repo, source.repo, &item, jobs, progress);
        progress.done(0);
        match result {
            Ok(()) => ok.push(repaired(&item, Kind::Object)),
            Err(e) => failed.push((item, why(repo, source.name, &item.digest, &e))),
        }
    }
    (ok, failed)
}

/// Why fetching `digest` from the source called `name` failed, in words.
fn why(repo: &FsRepository, name: &str, digest: &Digest, e: &StorageError) -> String {
    match e {
        StorageError::UnknownObject(d) if d == digest => format!("not on {name}"),
        StorageError::UnknownObject(d) => format!("{d}, which it reaches, is not on {name}"),
        StorageError::PayloadNotReadable(_) => {
            format!("{name} holds only another user's private copy")
        }
        // A child read here (a repair descends into what is present) may
        // be the corrupt one; anything else came from the source.
        StorageError::Corrupt { digest: d, .. }
            if d != digest && repo.has_object(d) && repo.read_object_raw(d).is_err() =>
        {
            format!("{d}, which it reaches, is corrupt here: {e}")
        }
        StorageError::Corrupt { digest: d, source } => {
            format!("{name} served corrupt bytes for {d}: {source}")
        }
        e => format!("{name}: {e}"),
    }
}

/// Why a payload was not repaired.
enum PayloadFailure {
    /// The source failed or lacks it (explained like any transfer error).
    Source(StorageError),
    /// The source's bytes hash to this instead.
    BadBytes(Digest),
    /// Something here: writing, quarantining, placing.
    Here(String),
}

impl PayloadFailure {
    fn explain(self, repo: &FsRepository, name: &str, digest: &Digest) -> String {
        match self {
            PayloadFailure::Source(e) => why(repo, name, digest, &e),
            PayloadFailure::BadBytes(actual) => {
                format!("{name} served corrupt bytes for {digest}: content hashes to {actual}")
            }
            PayloadFailure::Here(text) => text,
        }
    }
}

impl From<StorageError> for PayloadFailure {
    fn from(e: StorageError) -> Self {
        PayloadFailure::Here(e.to_string())
    }
}

/// Fetch object `item` from `remote` with everything it reaches that is
/// missing here. A corrupt local copy moves to quarantine only once the
/// remote's bytes are verified.
fn repair_object(
    repo: &FsRepository,
    remote: &dyn Repository,
    item: &RepairItem,
    jobs: usize,
    progress: &dyn Progress,
) -> Result<()> {
    let d = &item.digest;
    if item.problem == Problem::Corrupt {
        let bytes = remote.read_object_bytes(d)?;
        check_object(d, &bytes)?;
        repo.quarantine_corrupt_object(d)?;
        Repository::write_object_bytes(repo, d, &bytes)?;
    }
    copy_graph_scoped(remote, repo, &[*d], Scope::Repair, jobs, progress)?;
    Ok(())
}

/// Fetch payload `item` from `remote`, stored the way the remote says
/// (public or private).
fn repair_payload(
    repo: &FsRepository,
    remote: &dyn Repository,
    item: &RepairItem,
) -> std::result::Result<(), PayloadFailure> {
    let d = &item.digest;
    let from = remote.open_payload(d).map_err(PayloadFailure::Source)?;
    if item.problem == Problem::Missing && !repo.has_payload(d) {
        // Nothing to move aside: stored like any transfer (checked while
        // written; a copy that hashes to anything else leaves nothing).
        let public = from.public;
        let mut reader = bounded(from);
        return match Repository::write_payload(repo, d, &mut reader, public) {
            Ok(_) => Ok(()),
            // Bytes that hash to anything else, or reading them failed:
            // the remote's doing.
            Err(e @ StorageError::Corrupt { .. }) => Err(PayloadFailure::Source(e)),
            Err(e @ StorageError::Io { .. }) if is_input(&e) => Err(PayloadFailure::Source(e)),
            Err(e) => Err(PayloadFailure::from(e)),
        };
    }
    replace_payload(repo, d, from)
}

/// Whether `e` is a failure to read the incoming bytes (not to write them).
fn is_input(e: &StorageError) -> bool {
    matches!(e, StorageError::Io { path, .. } if path.as_os_str() == "(input)")
}

/// A source's payload reader, never read more than a byte past the size
/// it claims (a longer payload then fails its digest).
fn bounded(from: PayloadReader) -> impl Read {
    let limit = from.size.map_or(u64::MAX, |s| s.saturating_add(1));
    from.reader.take(limit)
}

/// Where temporary files are, below a repository's root.
const TMP: &str = "tmp";

/// A temporary file of a repair in `tmp/`, removed when dropped unless it
/// was renamed into place.
struct Temp<'a> {
    repo: &'a FsRepository,
    name: Option<OsString>,
}

impl Temp<'_> {
    fn rel(&self) -> std::path::PathBuf {
        Path::new(TMP).join(self.name.as_deref().unwrap_or_default())
    }
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.name.take()
            && let Ok(dir) = beneath::open_dir(self.repo.fd(), Path::new(TMP))
        {
            let _ = rustix::fs::unlinkat(&dir, name.as_os_str(), rustix::fs::AtFlags::empty());
        }
    }
}

/// Replace the corrupt copies of payload `d` with `from`'s bytes: fetched
/// into a temporary file and verified first, then every copy this user
/// may read that is still corrupt moves to quarantine, then the verified
/// bytes take their place (public if the source's copy is public; else
/// the private copies of the users whose copies were corrupt, a corrupt
/// public copy becoming this user's private one).
fn replace_payload(
    repo: &FsRepository,
    d: &Digest,
    from: PayloadReader,
) -> std::result::Result<(), PayloadFailure> {
    let uid = rustix::process::geteuid().as_raw();
    let public = from.public;
    let (file, name) = repo.temp_file(0o600)?;
    let mut temp = Temp {
        repo,
        name: Some(name),
    };
    let actual = copy_hashing(&mut bounded(from), &file).map_err(|e| match e {
        CopyFailure::Read(e) => {
            PayloadFailure::Source(StorageError::io("cannot read", "(remote)")(e))
        }
        CopyFailure::Write(e) => {
            PayloadFailure::Here(repo.io_err("cannot write", &temp.rel())(e).to_string())
        }
    })?;
    if actual != *d {
        return Err(PayloadFailure::BadBytes(actual));
    }
    file.sync_all()
        .map_err(|e| PayloadFailure::from(repo.io_err("cannot write", &temp.rel())(e)))?;
    let bad = bad_copies(repo, d, uid)?;
    let mut targets: Vec<PayloadCopy> = Vec::new();
    if public {
        targets.push(PayloadCopy::Public);
    }
    for copy in &bad {
        if let Err(e) = repo.quarantine_opened_payload(copy) {
            return Err(PayloadFailure::Here(format!(
                "cannot move its corrupt copy to quarantine: {e}"
            )));
        }
        let target = match copy.copy {
            PayloadCopy::Public => PayloadCopy::Private(uid),
            private => private,
        };
        if !public && !targets.contains(&target) {
            targets.push(target);
        }
    }
    if bad.is_empty() && !public {
        // Put right meanwhile, or only ever a private copy: ours.
        targets.push(PayloadCopy::Private(uid));
    }
    targets.retain(|t| !repo.payload_stored_for(d, *t));
    let Some((last, others)) = targets.split_last() else {
        return Ok(());
    };
    for target in others {
        // Each further copy from the verified file.
        let mut source = beneath::open_regular(repo.fd(), &temp.rel())
            .map_err(|e| PayloadFailure::from(repo.io_err("cannot read", &temp.rel())(e)))?;
        let (mut file, name) = repo.temp_file(0o600)?;
        let mut copy = Temp {
            repo,
            name: Some(name),
        };
        std::io::copy(&mut source, &mut file)
            .map_err(|e| PayloadFailure::from(repo.io_err("cannot write", &copy.rel())(e)))?;
        place(repo, &mut copy, &file, d, *target, uid)?;
    }
    place(repo, &mut temp, &file, d, *last, uid)?;
    Ok(())
}

/// Give the temporary file `file` (`temp`) the mode and owner of `target`,
/// make it durable and rename it to `target`'s name for `d`, never over
/// anything already there.
fn place(
    repo: &FsRepository,
    temp: &mut Temp<'_>,
    file: &File,
    d: &Digest,
    target: PayloadCopy,
    uid: u32,
) -> std::result::Result<(), PayloadFailure> {
    let here = |context, rel: &Path| {
        let err = repo.io_err(context, rel);
        move |e: std::io::Error| PayloadFailure::from(err(e))
    };
    let tmp_rel = temp.rel();
    rustix::fs::fchmod(file, rustix::fs::Mode::from_raw_mode(target.mode()))
        .map_err(|e| here("cannot set the mode of", &tmp_rel)(e.into()))?;
    if let PayloadCopy::Private(owner) = target
        && owner != uid
    {
        // Root restoring a user's private copy: it stays the user's.
        rustix::fs::fchown(file, Some(rustix::fs::Uid::from_raw(owner)), None)
            .map_err(|e| here("cannot set the owner of", &tmp_rel)(e.into()))?;
    }
    file.sync_all().map_err(here("cannot write", &tmp_rel))?;
    let rel = FsRepository::payload_rel(d, target.named());
    let (shard, name) = beneath::split(&rel).map_err(here("cannot store", &rel))?;
    let (dir, made) = repo.open_dir(shard, repo.sharing().new_shards())?;
    let tmp_dir = beneath::open_dir(repo.fd(), Path::new(TMP))
        .map_err(here("cannot open", Path::new(TMP)))?;
    let tmp_name = temp.name.clone().unwrap_or_default();
    match rustix::fs::renameat_with(
        &tmp_dir,
        tmp_name.as_os_str(),
        &dir,
        name,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => {
            temp.name = None;
            repo.sync_rel(shard)?;
            if made {
                repo.sync_rel(shard.parent().unwrap_or(Path::new("")))?;
            }
            Ok(())
        }
        // Stored meanwhile by someone else: as good, if it is that copy
        // (the next check verifies its bytes).
        Err(rustix::io::Errno::EXIST)
            if beneath::stat(repo.fd(), &rel)
                .is_ok_and(|st| PayloadCopy::of(target.named(), &st) == Some(target)) =>
        {
            Ok(())
        }
        Err(rustix::io::Errno::EXIST) => Err(PayloadFailure::Here(format!(
            "{} is taken by something that is not a copy of {d}",
            repo.root().join(&rel).display()
        ))),
        Err(e) => Err(here("cannot store", &rel)(e.into())),
    }
}

/// Why copying a payload failed.
enum CopyFailure {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copy `reader` to `file`, hashing; the digest of what was copied.
fn copy_hashing(
    reader: &mut dyn Read,
    mut file: &File,
) -> std::result::Result<Digest, CopyFailure> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(h.finish()),
            Ok(n) => {
                h.update(&buf[..n]);
                file.write_all(&buf[..n]).map_err(CopyFailure::Write)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CopyFailure::Read(e)),
        }
    }
}

/// The copies of `d` user `uid` may read whose bytes are not `d`'s (or
/// cannot be read), opened: the very files to move to quarantine.
fn bad_copies(
    repo: &FsRepository,
    d: &Digest,
    uid: u32,
) -> std::result::Result<Vec<OpenedPayload>, PayloadFailure> {
    let mut bad = Vec::new();
    for named in repo.payload_names(d)? {
        if let Found::Opened(p) = repo.find_copy(d, named, uid)?
            && hash_file(&p.file).ok() != Some(*d)
        {
            bad.push(p);
        }
    }
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spfs_model::Object;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn uid() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    /// A repository with a layer of (name, content, mode) files; the
    /// layer's digest.
    fn layer(repo: &FsRepository, dir: &Path, files: &[(&str, &str, u32)]) -> Digest {
        std::fs::create_dir_all(dir).unwrap();
        for (name, content, mode) in files {
            let p = dir.join(name);
            std::fs::write(&p, content).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        let opts = crate::commit::Options::default();
        crate::commit::commit_dir(repo, dir, BTreeMap::new(), &opts, &()).unwrap()
    }

    fn manifest_of(repo: &FsRepository, layer: &Digest) -> Digest {
        match repo.read_object(layer).unwrap() {
            Object::Layer(l) => l.manifest,
            other => panic!("{other:?}"),
        }
    }

    fn damage(path: &Path, bytes: &[u8]) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn quarantined(repo: &FsRepository) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(repo.quarantine_dir())
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn named<'a>(name: &'a str, repo: &'a FsRepository) -> Source<'a> {
        Source { name, repo }
    }

    fn digests(repaired: &[Repaired]) -> BTreeSet<Digest> {
        repaired.iter().map(|r| r.digest).collect()
    }

    #[test]
    fn a_repair_fetches_what_is_missing_and_moves_what_is_corrupt_aside() {
        let dir = tempfile::tempdir().unwrap();
        let src = FsRepository::create(dir.path().join("src")).unwrap();
        let one = layer(
            &src,
            &dir.path().join("one"),
            &[
                ("a", "aaa", 0o644),
                ("b", "bbb", 0o644),
                ("c", "ccc", 0o600),
            ],
        );
        let two = layer(&src, &dir.path().join("two"), &[("d", "ddd", 0o644)]);
        let dst = FsRepository::create(dir.path().join("dst")).unwrap();
        let roots = [one, two];
        crate::transfer::copy_graph(&src, &dst, &roots, 2, &()).unwrap();
        let (a, b, c, d) = (
            Digest::of(b"aaa"),
            Digest::of(b"bbb"),
            Digest::of(b"ccc"),
            Digest::of(b"ddd"),
        );
        let manifest = manifest_of(&dst, &two);
        std::fs::remove_file(dst.payload_path(&a)).unwrap();
        damage(&dst.payload_path(&b), b"BBB");
        damage(&dst.private_payload_path(&c, uid()), b"CCC");
        damage(&dst.object_path(&manifest), b"not an object");
        std::fs::remove_file(dst.payload_path(&d)).unwrap();
        let found = check(&dst, &roots).unwrap();
        assert_eq!(found.missing, vec![a]);
        assert_eq!(found.items().len(), 4, "{found:?}");
        assert_eq!(found.kinds[&manifest], Kind::Object);
        assert_eq!(found.kinds[&b], Kind::Payload);
        let source = Source {
            name: "src",
            repo: &src,
        };
        let done = repair(&dst, &roots, found, &[source], 2, &()).unwrap();
        assert!(done.after.is_clean(), "{:?}", done.after);
        assert!(done.unrepaired.is_empty(), "{:?}", done.unrepaired);
        assert_eq!(digests(&done.repaired), BTreeSet::from([a, b, c, manifest]));
        assert!(done.repaired.iter().all(|r| r.from == "src"));
        // The corrupt manifest's missing payload came with the manifest.
        assert!(dst.has_payload(&d));
        // Public stays public, private private.
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&dst.payload_path(&b)), 0o444);
        assert_eq!(mode(&dst.private_payload_path(&c, uid())), 0o400);
        assert!(!dst.payload_path(&c).exists());
        let q = quarantined(&dst);
        assert_eq!(q.len(), 3, "{q:?}");
        assert!(q.iter().any(|n| n.starts_with(&format!("{b}."))), "{q:?}");
        assert!(q.iter().any(|n| n.starts_with(&format!("{c}.u{}.", uid()))));
        assert!(
            q.iter()
                .any(|n| n.starts_with(&format!("{manifest}.object.")))
        );
        assert_eq!(std::fs::read_dir(dst.root().join(TMP)).unwrap().count(), 0);
    }

    #[test]
    fn each_item_comes_from_the_first_source_with_good_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let good = FsRepository::create(dir.path().join("good")).unwrap();
        let l = layer(&good, &dir.path().join("t"), &[("x", "xxx", 0o644)]);
        let x = Digest::of(b"xxx");
        let empty = FsRepository::create(dir.path().join("empty")).unwrap();
        let bad = FsRepository::create(dir.path().join("bad")).unwrap();
        crate::transfer::copy_graph(&good, &bad, &[l], 1, &()).unwrap();
        damage(&bad.payload_path(&x), b"XXX");
        let dst = FsRepository::create(dir.path().join("dst")).unwrap();
        crate::transfer::copy_graph(&good, &dst, &[l], 1, &()).unwrap();
        damage(&dst.payload_path(&x), b"xx!");
        // Neither has it: nothing changes, both are named.
        let found = check(&dst, &[l]).unwrap();
        let done = repair(
            &dst,
            &[l],
            found,
            &[named("empty", &empty), named("bad", &bad)],
            1,
            &(),
        )
        .unwrap();
        assert!(done.repaired.is_empty());
        assert_eq!(done.unrepaired.len(), 1);
        let why = &done.unrepaired[0].reason;
        assert!(
            why.contains("not on empty") && why.contains("bad served corrupt bytes"),
            "{why}"
        );
        assert_eq!(std::fs::read(dst.payload_path(&x)).unwrap(), b"xx!");
        assert!(quarantined(&dst).is_empty());
        // The third has it.
        let found = check(&dst, &[l]).unwrap();
        let done = repair(
            &dst,
            &[l],
            found,
            &[
                named("empty", &empty),
                named("bad", &bad),
                named("good", &good),
            ],
            1,
            &(),
        )
        .unwrap();
        assert!(done.after.is_clean());
        assert_eq!(done.repaired.len(), 1);
        assert_eq!(done.repaired[0].from, "good");
        assert_eq!(done.repaired[0].problem, Problem::Corrupt);
    }

    /// Root repairing a user's corrupt private copy restores it as that
    /// user's, when the source's copy is private too.
    #[test]
    fn root_restores_a_users_private_copy_as_theirs() {
        if uid() != 0 {
            eprintln!("skipping: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let user = 64_201;
        let put = |repo: &FsRepository, bytes: &[u8]| {
            let d = Digest::of(b"users bytes");
            let p = repo.private_payload_path(&d, user);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
            std::os::unix::fs::chown(&p, Some(user), Some(user)).unwrap();
            (d, p)
        };
        let src = FsRepository::create(dir.path().join("src")).unwrap();
        put(&src, b"users bytes");
        let dst = FsRepository::create(dir.path().join("dst")).unwrap();
        let (d, p) = put(&dst, b"USERS BYTES");
        let found = check(&dst, &[d]).unwrap();
        assert_eq!(found.corrupt.len(), 1, "{found:?}");
        let source = Source {
            name: "src",
            repo: &src,
        };
        let done = repair(&dst, &[d], found, &[source], 1, &()).unwrap();
        assert!(done.after.is_clean(), "{:?}", done.unrepaired);
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (user, 0o400));
        assert_eq!(std::fs::read(&p).unwrap(), b"users bytes");
        assert!(!dst.payload_path(&d).exists(), "made public");
        assert!(!dst.private_payload_path(&d, 0).exists(), "made root's");
    }
}
