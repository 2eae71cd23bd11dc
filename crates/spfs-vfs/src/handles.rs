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

/// A table of open payload files, indexed by handle number.
#[derive(Default)]
pub struct Handles {
    next: AtomicU64,
    open: RwLock<HashMap<u64, Arc<File>>>,
}

impl Handles {
    /// Keep `file` open; returns its handle (never 0).
    pub fn insert(&self, file: File) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut map) = self.open.write() {
            map.insert(fh, Arc::new(file));
        }
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<File>> {
        self.open.read().ok()?.get(&fh).cloned()
    }

    /// Read up to `size` bytes at `offset` of handle `fh`.
    pub fn read(&self, fh: u64, offset: u64, size: usize) -> std::io::Result<Vec<u8>> {
        let file = self
            .get(fh)
            .ok_or_else(|| std::io::Error::from_raw_os_error(9))?;
        read_at(&file, offset, size)
    }

    pub fn remove(&self, fh: u64) {
        if let Ok(mut map) = self.open.write() {
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
