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
//!
//! Every file, directory and symlink keeps its modification time, read with
//! `lstat` (a symlink's own time, never its target's), optionally clamped
//! to a latest time ([`Options::mtime_clamp`]) so that trees touched at
//! different times give the same layer.

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

/// How a directory is committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Record no modification time later than this (nanoseconds since the
    /// epoch): later times become this one, as reproducible builds do
    /// with `SOURCE_DATE_EPOCH`.
    pub mtime_clamp: Option<i64>,
}

impl Options {
    /// The time recorded for an entry whose `lstat` says `meta`.
    fn mtime(&self, meta: &fs::Metadata) -> i64 {
        let t = spfs_model::time::from_unix(meta.mtime(), meta.mtime_nsec());
        match self.mtime_clamp {
            Some(clamp) => t.min(clamp),
            None => t,
        }
    }
}

/// A file or symlink to store: found by the walk, or named by a caller of
/// [`store_files`].
#[derive(Clone, Debug)]
pub struct StoreJob {
    /// Its path in the tree being made.
    pub rel: Vec<u8>,
    /// Where it is read from.
    pub abs: PathBuf,
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    pub mtime: i64,
    /// Whose private copy a file not readable by others becomes (`None`:
    /// this process's user's).
    pub owner: Option<u32>,
}

type Job = StoreJob;

fn walk(
    root: &Path,
    options: &Options,
    builder: &mut TreeBuilder,
    jobs: &mut Vec<Job>,
) -> Result<()> {
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
                builder
                    .add_dir_with_mtime(&child, meta.mode(), options.mtime(&meta))
                    .map_err(tree_err)?;
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
                    mtime: options.mtime(&meta),
                    owner: None,
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
            repo.stage_payload_for(
                &mut f,
                Some(job.size),
                Readers::of_mode(job.mode),
                job.owner,
            )
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

/// Store the bytes of `jobs` (files and symlinks), many at once, in
/// batches that are each made durable once; returns each one's digest and
/// size, in order. Progress is reported but not finished.
pub fn store_files(
    repo: &FsRepository,
    jobs: &[StoreJob],
    progress: &dyn Progress,
) -> Result<Vec<(Digest, u64)>> {
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
    Ok(stored)
}

/// Store the directory `dir` and return its tree (manifest not yet written).
pub fn store_dir(
    repo: &FsRepository,
    dir: &Path,
    options: &Options,
    progress: &dyn Progress,
) -> Result<Tree> {
    // Payloads found present are built on: no clean may remove them until
    // the caller's root (a tag) exists; callers hold their own guard
    // until then, this one covers the writes.
    let _guard = repo.write_guard()?;
    let mut builder = TreeBuilder::new();
    let mut jobs = Vec::new();
    walk(dir, options, &mut builder, &mut jobs)?;
    let stored = store_files(repo, &jobs, progress)?;
    for (job, (digest, size)) in jobs.iter().zip(stored) {
        builder
            .add_with_mtime(&job.rel, job.kind, job.mode, size, digest, job.mtime)
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
    options: &Options,
    progress: &dyn Progress,
) -> Result<Digest> {
    let _guard = repo.write_guard()?;
    let tree = store_dir(repo, dir, options, progress)?;
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
        let layer = commit_dir(&repo, &src, BTreeMap::new(), &Options::default(), &()).unwrap();
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
            commit_dir(&repo, &src, BTreeMap::new(), &Options::default(), &()).unwrap(),
            layer
        );
        assert!(
            fs::read_dir(repo.root().join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
    }

    fn set_mtime(path: &Path, secs: i64, nanos: i64) {
        let ts = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: secs,
                tv_nsec: nanos as _,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: secs,
                tv_nsec: nanos as _,
            },
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            path,
            &ts,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }

    fn mtime_of(tree: &Tree, path: &str) -> i64 {
        let Some(spfs_model::PathTarget::Entry(i)) = tree.lookup_path(path) else {
            panic!("{path} missing")
        };
        tree.entries()[i as usize].mtime
    }

    /// A small tree whose file, directory and symlink have the times
    /// `base`, `base + 1` and `base + 2` seconds (plus 5 ns); the link's
    /// target has another time, which must not be recorded for the link.
    fn timed_tree(src: &Path, base: i64) {
        fs::create_dir_all(src.join("dir")).unwrap();
        fs::write(src.join("dir/file"), b"x").unwrap();
        symlink("dir/file", src.join("link")).unwrap();
        set_mtime(&src.join("dir/file"), base, 5);
        set_mtime(&src.join("link"), base + 2, 5);
        set_mtime(&src.join("dir"), base + 1, 5);
    }

    #[test]
    fn modification_times_are_kept_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        timed_tree(&src, 1_000_000_000);
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let tree = store_dir(&repo, &src, &Options::default(), &()).unwrap();
        let ns = |s: i64| s * 1_000_000_000 + 5;
        assert_eq!(mtime_of(&tree, "dir/file"), ns(1_000_000_000));
        assert_eq!(mtime_of(&tree, "dir"), ns(1_000_000_001));
        assert_eq!(mtime_of(&tree, "link"), ns(1_000_000_002));
        // Clamped: later times become the clamp, earlier ones stay.
        let clamp = ns(1_000_000_001) - 5;
        let options = Options {
            mtime_clamp: Some(clamp),
        };
        let tree = store_dir(&repo, &src, &options, &()).unwrap();
        assert_eq!(mtime_of(&tree, "dir/file"), ns(1_000_000_000));
        assert_eq!(mtime_of(&tree, "dir"), clamp);
        assert_eq!(mtime_of(&tree, "link"), clamp);
    }

    #[test]
    fn clamped_commits_of_a_tree_touched_later_are_identical() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        timed_tree(&a, 1_600_000_000);
        timed_tree(&b, 1_700_000_000);
        let commit = |src: &Path, clamp: Option<i64>| {
            let options = Options { mtime_clamp: clamp };
            commit_dir(&repo, src, BTreeMap::new(), &options, &()).unwrap()
        };
        assert_ne!(commit(&a, None), commit(&b, None));
        let clamp = Some(1_500_000_000 * 1_000_000_000);
        assert_eq!(commit(&a, clamp), commit(&b, clamp));
    }

    #[test]
    fn special_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(&src).unwrap();
        let sock = src.join("sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let repo = FsRepository::create(dir.path().join("repo")).unwrap();
        let err = commit_dir(&repo, &src, BTreeMap::new(), &Options::default(), &()).unwrap_err();
        assert!(err.to_string().contains("sock"), "{err}");
        assert!(repo.objects().unwrap().is_empty(), "nothing half-written");
    }
}
