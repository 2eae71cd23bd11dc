//! Open files: payload files kept open between `open` and `release`.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Read up to `size` bytes at `offset`; short only at end of file.
pub fn read_at(file: &File, offset: u64, size: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; size];
    let mut done = 0;
    while done < size {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// The first handle number of a table: random in bits 40 to 62, so that
/// the numbers of one service process are not those of the one before it
/// (the kernel keeps handles across a handover, see `docs/service.md`; bit
/// 63 is the host's).
pub fn first_number() -> u64 {
    let mut b = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    (u64::from_le_bytes(b) & ((1 << 23) - 1)) << 40
}

/// A table of open payload files, indexed by handle number; each handle
/// is of one node, and serves that node only.
pub struct Handles {
    next: AtomicU64,
    open: RwLock<HashMap<u64, (u64, Arc<File>)>>,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            next: AtomicU64::new(first_number()),
            open: RwLock::default(),
        }
    }
}

impl Handles {
    /// Keep `file` open for `node`; returns its handle (never 0).
    pub fn insert(&self, node: u64, file: File) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut map) = self.open.write() {
            map.insert(fh, (node, Arc::new(file)));
        }
        fh
    }

    /// The file of handle `fh`, if it is one of `node` (a handle of a
    /// previous service process may have the number of another node's).
    pub fn get(&self, fh: u64, node: u64) -> Option<Arc<File>> {
        self.open
            .read()
            .ok()?
            .get(&fh)
            .filter(|(n, _)| *n == node)
            .map(|(_, f)| f.clone())
    }

    /// Close handle `fh` of `node`.
    pub fn remove(&self, fh: u64, node: u64) {
        if let Ok(mut map) = self.open.write()
            && map.get(&fh).is_some_and(|(n, _)| *n == node)
        {
            map.remove(&fh);
        }
    }

    pub fn len(&self) -> usize {
        self.open.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
