//! Verifying payloads against their digests before they are first served.
//!
//! A payload is named by the SHA-256 of its bytes, but the bytes on disk
//! can change under that name (a failing disk, a careless tool, someone
//! with write access to the repository). So the first time a service is
//! about to serve a payload (open of a file, readlink of a symlink), it
//! hashes the very file it is about to hand out (positioned reads on the
//! open descriptor: what is checked is what is served) and compares:
//!
//! - a match is remembered in [`Verifier`]'s set of verified files (the
//!   digest with the device and inode of the very file hashed), and every
//!   later open of that file costs one set lookup: passthrough reads stay at
//!   disk speed. Another copy of the same digest (a user's private copy
//!   beside the public one, see [`spfs_storage::payload`]) is another file
//!   and is verified on its own;
//! - a mismatch is [`VfsError::Corrupt`] (EIO for the reader), one error
//!   line in the service's log naming the digest and the repository, and
//!   the copy that was opened is moved to the repository's quarantine
//!   ([`spfs_storage::quarantine`]), so later opens of it fail at once as
//!   a missing payload and `spfs check` reports it missing until it is
//!   fetched again.
//!
//! Concurrent first opens of one file hash it once: the others wait for
//! the first and then find it verified. The set is bounded
//! ([`MAX_VERIFIED`] files); when a shard of it fills up it is emptied,
//! and its payloads are hashed again on their next open.
//!
//! What this does not cover: a payload changed on disk *after* it was
//! verified is served as it is until the service restarts.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, RwLock};

use spfs_model::{Digest, Hasher};
use spfs_storage::{FsRepository, OpenedPayload};

use crate::vfs::VfsError;

/// How many verified files are remembered at most (48 bytes each, about
/// 50 MiB with the sets' overhead when full).
pub const MAX_VERIFIED: usize = SHARDS * PER_SHARD;

/// The verified set is split by a digest's first byte, so that lookups
/// from many threads rarely meet on one lock.
const SHARDS: usize = 64;
const PER_SHARD: usize = 8192;

/// The largest read while hashing.
const READ_CHUNK: usize = 1 << 20;

/// One payload file checked against a digest: the digest, and the device
/// and inode of the very file that was hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VerifiedFile {
    pub digest: Digest,
    pub dev: u64,
    pub ino: u64,
}

impl VerifiedFile {
    /// The file `opened`, checked against `digest`.
    pub fn of(digest: &Digest, opened: &OpenedPayload) -> VerifiedFile {
        VerifiedFile {
            digest: *digest,
            dev: opened.dev,
            ino: opened.ino,
        }
    }
}

/// The copies verified of each digest: (device, inode) of each file.
type VerifiedCopies = HashMap<Digest, Vec<(u64, u64)>>;

/// Which payload files this service has verified, and the ones being
/// verified.
pub struct Verifier {
    /// By digest: the (device, inode) of each copy verified.
    verified: Vec<RwLock<VerifiedCopies>>,
    /// Files some thread is hashing right now.
    in_flight: Mutex<HashSet<VerifiedFile>>,
    /// Signalled whenever a digest leaves `in_flight`.
    finished: Condvar,
    /// How many payloads were hashed (whatever the outcome).
    hashed: AtomicU64,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            verified: (0..SHARDS).map(|_| RwLock::default()).collect(),
            in_flight: Mutex::default(),
            finished: Condvar::new(),
            hashed: AtomicU64::new(0),
        }
    }
}

impl Verifier {
    fn shard(&self, digest: &Digest) -> &RwLock<VerifiedCopies> {
        &self.verified[digest.0[0] as usize % SHARDS]
    }

    /// Whether this file was verified by this service.
    pub fn is_verified(&self, file: &VerifiedFile) -> bool {
        self.shard(&file.digest)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&file.digest)
            .is_some_and(|copies| copies.contains(&(file.dev, file.ino)))
    }

    /// Whether any file of `digest` was verified by this service.
    pub fn any_verified(&self, digest: &Digest) -> bool {
        self.shard(digest)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(digest)
    }

    fn remember(&self, file: VerifiedFile) {
        let mut set = self
            .shard(&file.digest)
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if set.len() >= PER_SHARD {
            set.clear();
        }
        let copies = set.entry(file.digest).or_default();
        if !copies.contains(&(file.dev, file.ino)) {
            copies.push((file.dev, file.ino));
        }
    }

    /// How many payloads this service has hashed so far.
    pub fn hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    /// Make sure `opened`, just opened as the payload of `digest` in
    /// `repo`, holds exactly the bytes the digest names, hashing it unless
    /// that very file is known to. On a mismatch that copy is quarantined
    /// and logged.
    pub fn check(
        &self,
        repo: &FsRepository,
        digest: &Digest,
        size: u64,
        opened: &OpenedPayload,
    ) -> Result<(), VfsError> {
        let key = VerifiedFile::of(digest, opened);
        if self.is_verified(&key) {
            return Ok(());
        }
        // A file that cannot be this entry's blob is refused without being
        // read, and left where it is: the entry (anyone's manifest) may be
        // what is wrong, not the file.
        if let Some(why) = misfit(&opened.file, size)? {
            tracing::error!(
                "payload {digest} in repository {} refused: {why}",
                repo.root().display()
            );
            return Err(VfsError::Corrupt(*digest));
        }
        let _claim = self.claim(key);
        // Another thread may have verified it while this one waited.
        if self.is_verified(&key) {
            return Ok(());
        }
        let hashed = hash_open_file(&opened.file, size)?;
        self.hashed.fetch_add(1, Ordering::Relaxed);
        let actual = match hashed {
            Some(d) if d == *digest => {
                self.remember(key);
                return Ok(());
            }
            Some(d) => d,
            None => {
                tracing::error!(
                    "payload {digest} in repository {} refused: its size changed while it was verified",
                    repo.root().display()
                );
                return Err(VfsError::Corrupt(*digest));
            }
        };
        let repo_path = repo.root().display();
        match repo.quarantine_opened_payload(opened) {
            Ok(Some(moved)) => tracing::error!(
                "payload {digest} in repository {repo_path} is corrupt (its bytes hash to \
                 {actual}); refused to readers and quarantined as {}",
                moved.display()
            ),
            Ok(None) => tracing::error!(
                "payload {digest} in repository {repo_path} is corrupt (its bytes hash to \
                 {actual}); refused to readers (already moved or replaced)"
            ),
            Err(e) => tracing::error!(
                "payload {digest} in repository {repo_path} is corrupt (its bytes hash to \
                 {actual}); refused to readers, but it could not be quarantined: {e}"
            ),
        }
        Err(VfsError::Corrupt(*digest))
    }

    /// Wait until no other thread is hashing `file`, then mark it as
    /// hashed by this one until the returned claim is dropped.
    fn claim(&self, file: VerifiedFile) -> Claim<'_> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        while in_flight.contains(&file) {
            in_flight = self
                .finished
                .wait(in_flight)
                .unwrap_or_else(|p| p.into_inner());
        }
        in_flight.insert(file);
        Claim {
            verifier: self,
            file,
        }
    }
}

/// One thread's right to hash one file; released on drop (also when the
/// hashing fails or panics).
struct Claim<'a> {
    verifier: &'a Verifier,
    file: VerifiedFile,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.verifier
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.file);
        self.verifier.finished.notify_all();
    }
}

/// Why a payload file cannot be the blob its entry names, before a byte of
/// it is hashed.
fn misfit(file: &File, size: u64) -> std::io::Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    if meta.len() != size {
        return Ok(Some(format!(
            "it is {} bytes where its entry says {size}",
            meta.len()
        )));
    }
    // Payloads are written whole by commit and pull. A file that holds far
    // less on disk than its size was put there some other way (a sparse
    // file planted in a shared repository): hashing terabytes of holes on
    // a filesystem thread would stall every user's requests. A ratio of 8
    // leaves room for filesystems that compress.
    if size > SPARSE_CHECK_ABOVE && meta.blocks().saturating_mul(512).saturating_mul(8) < size {
        return Ok(Some(format!(
            "it holds only {} bytes on disk for {size} (a sparse file)",
            meta.blocks() * 512
        )));
    }
    Ok(None)
}

/// Files at most this large are hashed whatever they hold on disk.
const SPARSE_CHECK_ABOVE: u64 = 16 << 20;

/// The digest of the first `size` bytes of `file`, read with positioned
/// reads (the file's own offset is left alone, so the caller can still read
/// it from the start); `None` if the file is shorter, or longer once read.
pub fn hash_open_file(file: &File, size: u64) -> std::io::Result<Option<Digest>> {
    // The kernel's read-ahead keeps a cold file streaming while this
    // thread hashes; the file's advice is left alone, as it is the one
    // readers are served from.
    let mut buf = vec![0u8; (size as usize).clamp(4096, READ_CHUNK)];
    let mut hasher = Hasher::new();
    let mut offset = 0u64;
    while offset < size {
        let want = (size - offset).min(buf.len() as u64) as usize;
        match file.read_at(&mut buf[..want], offset) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // Grown meanwhile: not the blob either.
    if file.metadata()?.len() != size {
        return Ok(None);
    }
    Ok(Some(hasher.finish()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use spfs_model::{EntryKind, TreeBuilder};

    use super::*;
    use crate::node::ROOT;
    use crate::{Runtime, Vfs};

    /// A service on a fresh repository whose one view holds `files`
    /// (`(name, kind, bytes)`) at the top.
    fn world(files: &[(&str, EntryKind, &[u8])]) -> (tempfile::TempDir, Vfs, Arc<Runtime>) {
        let dir = tempfile::tempdir().unwrap();
        let vfs = Vfs::new(FsRepository::create(dir.path()).unwrap());
        let mut b = TreeBuilder::new();
        for (name, kind, bytes) in files {
            let (d, _) = vfs
                .repo()
                .write_blob_from(&mut &bytes[..], spfs_storage::Readers::Everyone)
                .unwrap();
            let mode = match kind {
                EntryKind::Symlink => 0o120777,
                _ => 0o100644,
            };
            b.add(name.as_bytes(), *kind, mode, bytes.len() as u64, d)
                .unwrap();
        }
        let tree = b.build().unwrap();
        let rt = crate::registry::register_tree(
            &vfs.registry,
            "test",
            0,
            vec![Digest::of(b"test stack")],
            tree,
        );
        (dir, vfs, rt)
    }

    /// The node of `name` and its payload's digest.
    fn node(vfs: &Vfs, rt: &Runtime, name: &str) -> (u64, Digest) {
        let (attr, _, _) = vfs.lookup(Some(&rt.view), ROOT, name.as_bytes()).unwrap();
        let index = crate::node::split(attr.node).unwrap().1;
        (attr.node, rt.view.tree.entries()[index as usize].object)
    }

    /// Flip one bit of a stored payload, in place.
    fn flip_bit(vfs: &Vfs, digest: &Digest) {
        let path = vfs.repo().payload_path(digest);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&path, bytes).unwrap();
    }

    fn quarantined(vfs: &Vfs) -> Vec<String> {
        std::fs::read_dir(vfs.repo().quarantine_dir())
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn read_all(mut f: File) -> Vec<u8> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut out).unwrap();
        out
    }

    #[test]
    fn a_corrupt_payload_is_refused_and_quarantined() {
        let (_dir, vfs, rt) = world(&[
            ("bad", EntryKind::File, b"one flipped bit"),
            ("good", EntryKind::File, b"intact"),
        ]);
        let (bad, bad_digest) = node(&vfs, &rt, "bad");
        let (good, _) = node(&vfs, &rt, "good");
        flip_bit(&vfs, &bad_digest);
        let err = vfs.open(Some(&rt.view), 0, bad, false).unwrap_err();
        assert!(
            matches!(err, VfsError::Corrupt(d) if d == bad_digest),
            "{err}"
        );
        assert_eq!(err.errno(), 5, "EIO");
        assert!(!vfs.repo().has_payload(&bad_digest));
        let moved = quarantined(&vfs);
        assert_eq!(moved.len(), 1);
        assert!(moved[0].starts_with(&bad_digest.to_string()), "{moved:?}");
        // Later opens fail at once, as a missing payload, hashing nothing.
        let hashed = vfs.verifier.hashed();
        assert!(matches!(
            vfs.open(Some(&rt.view), 0, bad, false),
            Err(VfsError::MissingPayload(_))
        ));
        assert_eq!(vfs.verifier.hashed(), hashed);
        // The intact payload next to it is served.
        let f = vfs.open(Some(&rt.view), 0, good, false).unwrap();
        assert_eq!(read_all(f.file), b"intact");
        assert!(!vfs.verifier.any_verified(&bad_digest));
    }

    #[test]
    fn a_verified_payload_is_not_hashed_again() {
        let (_dir, vfs, rt) = world(&[("file", EntryKind::File, b"hello")]);
        let (file, digest) = node(&vfs, &rt, "file");
        assert!(!vfs.verifier.any_verified(&digest));
        let first = vfs.open(Some(&rt.view), 0, file, false).unwrap();
        assert_eq!(vfs.verifier.hashed(), 1);
        assert!(vfs.verifier.any_verified(&digest));
        // Hashing left the file's offset at the start.
        assert_eq!(read_all(first.file), b"hello");
        for _ in 0..3 {
            let again = vfs.open(Some(&rt.view), 0, file, false).unwrap();
            assert_eq!(read_all(again.file), b"hello");
        }
        assert_eq!(vfs.verifier.hashed(), 1);
        // Changed after it was verified: served as it is (documented).
        flip_bit(&vfs, &digest);
        assert!(vfs.open(Some(&rt.view), 0, file, false).is_ok());
    }

    #[test]
    fn a_corrupt_symlink_target_is_refused() {
        let (_dir, vfs, rt) = world(&[
            ("link", EntryKind::Symlink, b"target/of/link"),
            ("fine", EntryKind::Symlink, b"elsewhere"),
        ]);
        let (link, digest) = node(&vfs, &rt, "link");
        let (fine, _) = node(&vfs, &rt, "fine");
        flip_bit(&vfs, &digest);
        assert!(matches!(
            vfs.readlink(Some(&rt.view), link),
            Err(VfsError::Corrupt(d)) if d == digest
        ));
        assert!(!vfs.repo().has_payload(&digest));
        assert_eq!(vfs.readlink(Some(&rt.view), fine).unwrap(), b"elsewhere");
    }

    #[test]
    fn concurrent_first_opens_hash_once() {
        let big = vec![7u8; 8 << 20];
        let (_dir, vfs, rt) = world(&[("big", EntryKind::File, &big)]);
        let (file, _) = node(&vfs, &rt, "big");
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    start.wait();
                    vfs.open(Some(&rt.view), 0, file, false).unwrap();
                });
            }
        });
        assert_eq!(vfs.verifier.hashed(), 1);
    }

    #[test]
    fn the_verified_set_is_bounded() {
        let v = Verifier::default();
        // Files whose digests all fall in one shard.
        let file = |i: usize| {
            let mut d = Digest::NULL;
            d.0[0] = 3;
            d.0[1..9].copy_from_slice(&(i as u64).to_le_bytes());
            VerifiedFile {
                digest: d,
                dev: 1,
                ino: i as u64,
            }
        };
        for i in 0..PER_SHARD {
            v.remember(file(i));
        }
        assert!(v.is_verified(&file(0)));
        v.remember(file(PER_SHARD));
        assert!(v.is_verified(&file(PER_SHARD)));
        assert!(!v.is_verified(&file(0)), "a full shard is emptied");
        let held: usize = v.verified.iter().map(|s| s.read().unwrap().len()).sum();
        assert!(held <= MAX_VERIFIED);
    }

    #[test]
    fn hashing_an_open_file_matches_the_digest_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        for size in [
            0,
            1,
            4095,
            4096,
            READ_CHUNK - 1,
            READ_CHUNK,
            3 * READ_CHUNK + 5,
        ] {
            let bytes: Vec<u8> = (0..size).map(|i| (i * 13) as u8).collect();
            let path = dir.path().join(format!("f{size}"));
            std::fs::write(&path, &bytes).unwrap();
            let f = File::open(&path).unwrap();
            assert_eq!(
                hash_open_file(&f, size as u64).unwrap(),
                Some(Digest::of(&bytes)),
                "size {size}"
            );
            // Shorter than the entry says: not the blob.
            assert_eq!(hash_open_file(&f, size as u64 + 1).unwrap(), None);
        }
    }

    #[test]
    fn files_that_cannot_be_the_blob_are_refused_unread() {
        let (dir, vfs, rt) = world(&[("big", EntryKind::File, b"0123456789")]);
        let view = Some(&*rt.view);
        let (node, _, _) = vfs.lookup(view, ROOT, b"big").unwrap();
        let d = Digest::of(b"0123456789");
        let path = vfs.repo().payload_path(&d);
        // A sparse file of a terabyte planted under the blob's name.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(1 << 40).unwrap();
        let err = vfs.open(view, 0, node.node, false).unwrap_err();
        assert!(matches!(err, VfsError::Corrupt(_)), "{err}");
        assert_eq!(vfs.verifier.hashed(), 0, "nothing was hashed");
        assert!(path.exists(), "a file the entry may be wrong about stays");
        drop(dir);
    }
}
