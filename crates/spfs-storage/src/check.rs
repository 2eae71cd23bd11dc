//! Checking a repository: is everything reachable present and intact?
//!
//! Starting from a set of digests (by default every tag's versions), every
//! reachable object is decoded and every reachable blob is re-hashed (in
//! parallel) and compared with its name.

use std::collections::{BTreeSet, HashSet};
use std::io::Read;

use rayon::prelude::*;
use spfs_model::{Digest, Hasher, Object};

use crate::error::{Result, StorageError};
use crate::fs::FsRepository;

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

fn hash_file(repo: &FsRepository, digest: &Digest) -> std::result::Result<Digest, String> {
    let mut f = repo.open_payload(digest).map_err(|e| e.to_string())?;
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

/// Check everything reachable from `roots`.
pub fn check(repo: &FsRepository, roots: &[Digest]) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let mut seen: HashSet<Digest> = HashSet::new();
    let mut blobs: BTreeSet<Digest> = BTreeSet::new();
    let mut queue: Vec<Digest> = roots.to_vec();
    while let Some(d) = queue.pop() {
        if !seen.insert(d) {
            continue;
        }
        if !repo.has_object(&d) {
            // A root may be a blob (a tag made by `spfs write -t`).
            if repo.has_payload(&d) {
                blobs.insert(d);
            } else {
                report.missing.push(d);
            }
            continue;
        }
        report.objects += 1;
        match repo.read_object(&d) {
            Ok(Object::Platform(p)) => queue.extend(p.stack),
            Ok(Object::Layer(l)) => queue.push(l.manifest),
            Ok(Object::Manifest(t)) => blobs.extend(t.blobs().map(|e| e.object)),
            Err(StorageError::Corrupt { source, .. }) => report.corrupt.push(CorruptItem {
                digest: d,
                problem: source.to_string(),
            }),
            Err(e) => return Err(e),
        }
    }
    report.blobs = blobs.len() as u64;
    let results: Vec<(Digest, std::result::Result<Digest, String>)> = blobs
        .par_iter()
        .map(|d| {
            if !repo.has_payload(d) {
                return (*d, Err(String::new()));
            }
            (*d, hash_file(repo, d))
        })
        .collect();
    for (d, r) in results {
        match r {
            Ok(actual) if actual == d => {}
            Ok(actual) => report.corrupt.push(CorruptItem {
                digest: d,
                problem: format!("content hashes to {actual}"),
            }),
            Err(e) if e.is_empty() => report.missing.push(d),
            Err(e) => report.corrupt.push(CorruptItem {
                digest: d,
                problem: e,
            }),
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
