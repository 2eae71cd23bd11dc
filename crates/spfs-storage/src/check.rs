//! Checking a repository: is everything reachable present and intact?
//!
//! Starting from a set of digests (by default every tag's versions), every
//! reachable object is decoded and every reachable blob is re-hashed (in
//! parallel) and compared with its name: every copy of it the checking
//! user may read ([`crate::payload`]), so root checks every user's copies.
//! A blob with no copy at all is missing.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::Read;

use rayon::prelude::*;
use spfs_model::{Digest, Hasher};

use crate::error::{Result, StorageError};
use crate::fs::FsRepository;
use crate::payload::Found;
use crate::reach::{Reached, walk};

/// What a check found.
#[derive(Debug, Default, serde::Serialize)]
pub struct CheckReport {
    pub objects: u64,
    pub blobs: u64,
    /// Digests referred to but not stored.
    pub missing: Vec<Digest>,
    /// Objects that do not decode, or blobs whose bytes do not hash to their name.
    pub corrupt: Vec<CorruptItem>,
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
    walk(
        repo,
        roots.iter().copied(),
        &mut HashSet::new(),
        |found| match found {
            Reached::Object(..) => report.objects += 1,
            Reached::Blob(d) => {
                blobs.insert(d);
            }
            Reached::Missing(d) => report.missing.push(d),
            Reached::Corrupt(digest, problem) => {
                report.objects += 1;
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
            BlobCheck::Intact => {}
            BlobCheck::Missing => report.missing.push(digest),
            BlobCheck::Corrupt(problems) => report.corrupt.extend(
                problems
                    .into_iter()
                    .map(|problem| CorruptItem { digest, problem }),
            ),
        }
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
