//! Committing a directory tree as a layer.
//!
//! The tree is walked once to learn its shape, then every file is hashed and
//! copied into the repository in parallel, each file read exactly once. The
//! staging pool has more threads than cores (see [`store_dir`]) because it
//! waits on the disk as much as it computes. Small payloads are staged in
//! temporary files and made durable in batches (one `syncfs` per batch
//! instead of one `fsync` per file); large ones are hashed on one thread
//! while another writes them (with direct I/O where possible) and are made
//! durable one by one (see [`FsRepository::stage_payload`]). Only durable
//! payloads are renamed into place, and the manifest and layer objects are
//! written only after every payload they name is durable under its name.
//!
//! A payload is readable by others straight from the repository only if
//! the file it comes from is readable by others ([`Readers::of_mode`]); a
//! symlink's target is (a view shows it to anyone who can see the link).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use spfs_model::{Digest, EntryKind, Layer, Object, Tree, TreeBuilder};

use crate::error::{Result, StorageError};
use crate::fs::{FsRepository, PendingPayload, Readers};

/// Files staged before one durability barrier.
const BATCH_FILES: usize = 4096;
/// Bytes staged before one durability barrier.
const BATCH_BYTES: u64 = 512 << 20;

/// The fewest and most threads that stage files (see [`store_dir`]).
const STAGE_THREADS_MIN: usize = 16;
const STAGE_THREADS_MAX: usize = 64;

/// Receives progress while a commit runs.
pub trait Progress: Sync {
    /// The walk found `files` files holding `bytes` bytes.
    fn start(&self, _files: u64, _bytes: u64) {}
    /// One more file of `bytes` bytes is stored.
    fn advance(&self, _bytes: u64) {}
    /// Everything is stored.
    fn finish(&self) {}
}

/// No progress reporting.
impl Progress for () {}

/// A file or symlink found by the walk.
struct Job {
    rel: Vec<u8>,
    abs: PathBuf,
    kind: EntryKind,
    mode: u32,
    size: u64,
}

fn walk(root: &Path, builder: &mut TreeBuilder, jobs: &mut Vec<Job>) -> Result<()> {
    let meta = fs::metadata(root).map_err(StorageError::io("cannot read", root))?;
    if !meta.is_dir() {
        return Err(StorageError::io("not a directory:", root)(
            std::io::Error::from(std::io::ErrorKind::NotADirectory),
        ));
    }
    builder.set_root_mode(meta.mode());
    let mut stack = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let rd = fs::read_dir(&dir).map_err(StorageError::io("cannot read directory", &dir))?;
        for item in rd {
            let item = item.map_err(StorageError::io("cannot read directory", &dir))?;
            let abs = item.path();
            let meta = fs::symlink_metadata(&abs).map_err(StorageError::io("cannot read", &abs))?;
            let mut child = rel.clone();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(item.file_name().as_bytes());
            let ft = meta.file_type();
            let tree_err = |source| StorageError::Tree {
                path: abs.clone(),
                source,
            };
            if ft.is_dir() {
                builder.add_dir(&child, meta.mode()).map_err(tree_err)?;
                stack.push((abs, child));
            } else if ft.is_file() || ft.is_symlink() {
                let kind = if ft.is_file() {
                    EntryKind::File
                } else {
                    EntryKind::Symlink
                };
                jobs.push(Job {
                    rel: child,
                    abs,
                    kind,
                    mode: meta.mode(),
                    size: meta.len(),
                });
            } else if ft.is_socket() || ft.is_fifo() || ft.is_block_device() || ft.is_char_device()
            {
                return Err(StorageError::SpecialFile(abs));
            }
        }
    }
    Ok(())
}

fn stage(repo: &FsRepository, job: &Job) -> Result<PendingPayload> {
    match job.kind {
        EntryKind::Symlink => {
            let target =
                fs::read_link(&job.abs).map_err(StorageError::io("cannot read link", &job.abs))?;
            let bytes = target.as_os_str().as_bytes();
            repo.stage_payload(&mut &bytes[..], Some(bytes.len() as u64), Readers::Everyone)
        }
        _ => {
            let mut f = File::open(&job.abs).map_err(StorageError::io("cannot open", &job.abs))?;
            repo.stage_payload(&mut f, Some(job.size), Readers::of_mode(job.mode))
                .map_err(|e| match e {
                    StorageError::Io {
                        context,
                        path,
                        source,
                    } if path == Path::new("(input)") => StorageError::Io {
                        context,
                        path: job.abs.clone(),
                        source,
                    },
                    e => e,
                })
        }
    }
}

/// Store the directory `dir` and return its tree (manifest not yet written).
pub fn store_dir(repo: &FsRepository, dir: &Path, progress: &dyn Progress) -> Result<Tree> {
    let mut builder = TreeBuilder::new();
    let mut jobs = Vec::new();
    walk(dir, &mut builder, &mut jobs)?;
    progress.start(jobs.len() as u64, jobs.iter().map(|j| j.size).sum());
    // Staging waits on the disk as much as it computes (opening, reading
    // cold files, creating temporary files), so it runs on more threads
    // than there are cores: reads of a cold tree then overlap.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads((cores * 4).clamp(STAGE_THREADS_MIN, STAGE_THREADS_MAX))
        .thread_name(|i| format!("spfs-stage-{i}"))
        .build()
        .ok();
    // Batches bounded by count and bytes, each with one durability barrier.
    let mut stored: Vec<(Digest, u64)> = Vec::with_capacity(jobs.len());
    let mut start = 0;
    while start < jobs.len() {
        let mut end = start;
        let mut bytes = 0u64;
        while end < jobs.len() && end - start < BATCH_FILES && (bytes < BATCH_BYTES || end == start)
        {
            bytes += jobs[end].size;
            end += 1;
        }
        let run = || -> Vec<Result<PendingPayload>> {
            jobs[start..end]
                .par_iter()
                .map(|job| {
                    let r = stage(repo, job);
                    progress.advance(job.size);
                    r
                })
                .collect()
        };
        let staged = match &pool {
            Some(pool) => pool.install(run),
            None => run(),
        };
        let mut ok = Vec::with_capacity(staged.len());
        let mut first_err = None;
        for r in staged {
            match r {
                Ok(p) => ok.push(p),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            repo.discard_staged(ok);
            return Err(e);
        }
        stored.extend(ok.iter().map(|p| (p.digest, p.size)));
        repo.commit_staged(ok)?;
        start = end;
    }
    for (job, (digest, size)) in jobs.iter().zip(stored) {
        builder
            .add(&job.rel, job.kind, job.mode, size, digest)
            .map_err(|source| StorageError::Tree {
                path: PathBuf::from(String::from_utf8_lossy(&job.rel).into_owned()),
                source,
            })?;
    }
    progress.finish();
    builder.build().map_err(|source| StorageError::Tree {
        path: dir.to_path_buf(),
        source,
    })
}

/// Store `dir` as a layer and return the layer's digest.
pub fn commit_dir(
    repo: &FsRepository,
    dir: &Path,
    annotations: BTreeMap<String, String>,
    progress: &dyn Progress,
) -> Result<Digest> {
    let tree = store_dir(repo, dir, progress)?;
    let manifest = repo.write_object(&Object::Manifest(tree))?;
    repo.write_object(&Object::Layer(Layer {
        manifest,
        annotations,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn commits_files_modes_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("bin")).unwrap();
        fs::write(src.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(src.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(src.join("data"), vec![7u8; 3 << 20]).unwrap();
        symlink("bin/tool", src.join("link")).unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let layer = commit_dir(&repo, &src, BTreeMap::new(), &()).unwrap();
        let tree = repo.layer_tree(&layer).unwrap();
        let Some(spfs_model::PathTarget::Entry(i)) = tree.lookup_path("bin/tool") else {
            panic!()
        };
        let e = &tree.entries()[i as usize];
        assert_eq!(e.mode & 0o777, 0o755);
        assert_eq!(
            fs::read(repo.payload_path(&e.object)).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        let Some(spfs_model::PathTarget::Entry(i)) = tree.lookup_path("link") else {
            panic!()
        };
        assert_eq!(tree.entries()[i as usize].kind, EntryKind::Symlink);
        let Some(spfs_model::PathTarget::Entry(i)) = tree.lookup_path("data") else {
            panic!()
        };
        assert_eq!(
            tree.entries()[i as usize].object,
            Digest::of(&vec![7u8; 3 << 20])
        );
        // Committing again writes nothing new and gives the same layer.
        assert_eq!(
            commit_dir(&repo, &src, BTreeMap::new(), &()).unwrap(),
            layer
        );
        assert!(
            fs::read_dir(repo.root().join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
    }

    #[test]
    fn special_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(&src).unwrap();
        let sock = src.join("sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let err = commit_dir(&repo, &src, BTreeMap::new(), &()).unwrap_err();
        assert!(err.to_string().contains("sock"), "{err}");
        assert!(repo.objects().unwrap().is_empty(), "nothing half-written");
    }
}
