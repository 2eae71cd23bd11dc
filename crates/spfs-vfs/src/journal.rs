//! Journals: small tables that outlive the service process.
//!
//! Some of what the service hands the kernel is named by numbers it chose
//! at run time: a content node's slot ([`crate::content`]), the backing
//! file registered for a node's passthrough opens. The kernel keeps those
//! numbers across a restart of the service (the FUSE connection is handed
//! over, see `docs/service.md`), so the next service process must know what
//! they meant. A journal keeps such a table as an append-only file of
//! fixed-size records, `put` (key, value) or `remove` (key), written before
//! the number is handed out; the last record of a key wins. Opening a
//! journal reads the table back and rewrites the file compactly, and it is
//! rewritten again whenever it holds four times more records than live
//! entries. A record cut short by a crash at the end of the file is
//! ignored (its number was never handed out).
//!
//! The file lives on `/run` (memory): a record costs one `write` of a few
//! dozen bytes, made only when a new number is handed out.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const PUT: u8 = 1;
const REMOVE: u8 = 0;

/// A table of `u64` keys to fixed-size values, kept in a file.
pub struct Journal {
    path: PathBuf,
    value_len: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    file: File,
    live: HashMap<u64, Vec<u8>>,
    records: usize,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Journal {
    /// Open (or make) the journal at `path`, whose values are `value_len`
    /// bytes, with the table it holds.
    pub fn open(path: &Path, value_len: usize) -> io::Result<Journal> {
        let mut live = HashMap::new();
        match File::open(path) {
            Ok(mut f) => {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes)?;
                for rec in bytes.chunks_exact(9 + value_len) {
                    let key = u64::from_le_bytes(rec[..8].try_into().unwrap_or_default());
                    match rec[8] {
                        PUT => {
                            live.insert(key, rec[9..].to_vec());
                        }
                        _ => {
                            live.remove(&key);
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = Self::rewrite(path, value_len, &live)?;
        let records = live.len();
        Ok(Journal {
            path: path.to_owned(),
            value_len,
            inner: Mutex::new(Inner {
                file,
                live,
                records,
            }),
        })
    }

    /// Write `live` as the whole journal; the file to append to next.
    fn rewrite(path: &Path, value_len: usize, live: &HashMap<u64, Vec<u8>>) -> io::Result<File> {
        let mut out = Vec::with_capacity(live.len() * (9 + value_len));
        for (k, v) in live {
            out.extend_from_slice(&k.to_le_bytes());
            out.push(PUT);
            out.extend_from_slice(v);
        }
        write_private(path, &out)?;
        std::fs::OpenOptions::new()
            .append(true)
            .custom_flags(nofollow())
            .open(path)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The table as it is now.
    pub fn entries(&self) -> HashMap<u64, Vec<u8>> {
        self.lock().live.clone()
    }

    /// Record `key` → `value` (`value` must be `value_len` bytes).
    pub fn put(&self, key: u64, value: &[u8]) -> io::Result<()> {
        debug_assert_eq!(value.len(), self.value_len);
        let mut rec = Vec::with_capacity(9 + self.value_len);
        rec.extend_from_slice(&key.to_le_bytes());
        rec.push(PUT);
        rec.extend_from_slice(value);
        rec.resize(9 + self.value_len, 0);
        let mut inner = self.lock();
        inner.live.insert(key, rec[9..].to_vec());
        self.append(&mut inner, &rec)
    }

    /// Record that `key` means nothing any more.
    pub fn remove(&self, key: u64) -> io::Result<()> {
        let mut inner = self.lock();
        if inner.live.remove(&key).is_none() {
            return Ok(());
        }
        let mut rec = vec![0u8; 9 + self.value_len];
        rec[..8].copy_from_slice(&key.to_le_bytes());
        rec[8] = REMOVE;
        self.append(&mut inner, &rec)
    }

    fn append(&self, inner: &mut Inner, rec: &[u8]) -> io::Result<()> {
        inner.file.write_all(rec)?;
        inner.records += 1;
        if inner.records > 4 * inner.live.len() + 1024 {
            inner.file = Self::rewrite(&self.path, self.value_len, &inner.live)?;
            inner.records = inner.live.len();
        }
        Ok(())
    }
}

fn nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Write `bytes` as the file at `path` (mode 0600, never through a
/// symbolic link), whole or not at all: a temporary file beside it, then a
/// rename. The service's other small files (its ledger, what it hands to
/// the next process) are written so too.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nofollow())
        .open(&tmp)?;
    f.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopening_and_compacts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        {
            let j = Journal::open(&path, 4).expect("open");
            j.put(1, b"abcd").expect("put");
            j.put(2, b"efgh").expect("put");
            j.put(1, b"ijkl").expect("put");
            j.remove(2).expect("remove");
            for i in 10..3000u64 {
                j.put(i, b"xxxx").expect("put");
                j.remove(i).expect("remove");
            }
        }
        // A record cut short at the end is ignored.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("append");
        f.write_all(&[9, 0, 0]).expect("write");
        let j = Journal::open(&path, 4).expect("reopen");
        let e = j.entries();
        assert_eq!(e.len(), 1);
        assert_eq!(e.get(&1).map(|v| &v[..]), Some(&b"ijkl"[..]));
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 13);
    }
}
