//! Open files: payload files kept open between `open` and `release`.
//!
//! Each is a descriptor of the service, held for as long as a process of
//! a runtime keeps the file open (when the kernel neither keeps opens nor
//! passes reads through): so the table is bounded, in total (a quarter of
//! the service's descriptor limit, like the files editable views keep) and
//! per user (a quarter of that, root not counted), and an open past a
//! bound is refused (`EMFILE`, `ENFILE`) rather than leaving the service
//! without descriptors for everyone else.

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
    open: RwLock<Table>,
    /// Files kept at most, in total and per user (root not counted).
    total: usize,
    per_user: usize,
}

#[derive(Default)]
struct Table {
    /// Handle → (node, user, file).
    files: HashMap<u64, (u64, u32, Arc<File>)>,
    by_user: HashMap<u32, usize>,
}

/// Why a file was not kept open.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("user {0} has as many files open through the service as a user may")]
    User(u32),
    #[error("the service has as many files open as it may")]
    Total,
}

impl Default for Handles {
    /// Bounds from the descriptor limit now (make them after raising it).
    fn default() -> Self {
        Handles::with_bounds(crate::edit::kept::default_budget())
    }
}

impl Handles {
    /// A table keeping at most `total` files, a quarter of them per user.
    pub fn with_bounds(total: usize) -> Handles {
        Handles {
            next: AtomicU64::new(first_number()),
            open: RwLock::default(),
            total,
            per_user: (total / 4).max(64),
        }
    }

    /// Keep `file` open for `node`, opened by `user`; its handle (never
    /// 0), unless a bound is reached.
    pub fn insert(&self, node: u64, user: u32, file: File) -> Result<u64, Full> {
        let mut t = self.open.write().unwrap_or_else(|p| p.into_inner());
        if t.files.len() >= self.total {
            return Err(Full::Total);
        }
        let mine = t.by_user.get(&user).copied().unwrap_or(0);
        if user != 0 && mine >= self.per_user {
            return Err(Full::User(user));
        }
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        t.files.insert(fh, (node, user, Arc::new(file)));
        *t.by_user.entry(user).or_default() += 1;
        Ok(fh)
    }

    /// The file of handle `fh`, if it is one of `node` (a handle of a
    /// previous service process may have the number of another node's).
    pub fn get(&self, fh: u64, node: u64) -> Option<Arc<File>> {
        self.open
            .read()
            .ok()?
            .files
            .get(&fh)
            .filter(|(n, _, _)| *n == node)
            .map(|(_, _, f)| f.clone())
    }

    /// Close handle `fh` of `node`.
    pub fn remove(&self, fh: u64, node: u64) {
        let mut t = self.open.write().unwrap_or_else(|p| p.into_inner());
        if t.files.get(&fh).is_some_and(|(n, _, _)| *n == node)
            && let Some((_, user, _)) = t.files.remove(&fh)
            && let Some(n) = t.by_user.get_mut(&user)
        {
            *n -= 1;
            if *n == 0 {
                t.by_user.remove(&user);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.open.read().map(|t| t.files.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_are_bounded_per_user_and_in_total() {
        let h = Handles::with_bounds(256);
        let file = || File::open("/dev/null").unwrap();
        let mut mine = Vec::new();
        for _ in 0..64 {
            mine.push(h.insert(7, 1000, file()).unwrap());
        }
        assert_eq!(h.insert(7, 1000, file()), Err(Full::User(1000)));
        // Another user, and root, are not held back by that.
        let theirs = h.insert(7, 1001, file()).unwrap();
        for _ in 0..191 {
            h.insert(7, 0, file()).unwrap();
        }
        assert_eq!(h.insert(7, 1002, file()), Err(Full::Total));
        // A file closed makes room again, for its user too.
        h.remove(mine[0], 7);
        h.remove(theirs, 7);
        h.insert(7, 1000, file()).unwrap();
        assert_eq!(h.insert(7, 1000, file()), Err(Full::User(1000)));
        // A handle is removed only by its own node.
        h.remove(mine[1], 8);
        assert!(h.get(mine[1], 7).is_some());
    }
}
