//! Handing the FUSE connection from one service process to the next.
//!
//! The mount's `/dev/fuse` descriptor is opened and mounted by the keeper
//! ([`crate::keeper`]), which outlives the service processes (workers) it
//! starts: a worker that stops, for a restart or an upgrade, or dies, is
//! replaced by a new one serving the same connection, and the processes
//! using the mount see at most a pause. What a new worker needs:
//!
//! - **The connection as it was negotiated.** The kernel sends `FUSE_INIT`
//!   once per mount; `fuser` only serves a session it has initialised. The
//!   first worker records what the kernel offered ([`InitRecord`]); a
//!   later one replays that `INIT` to `fuser` through a socket pair, then
//!   puts the real device under the session's descriptor number
//!   ([`adopt_session`]). Its own `init` then agrees with the first one's.
//! - **The requests the last one took and never answered.** Every worker
//!   reads from the keeper's descriptor itself (never a clone of it: a
//!   cloned device's unanswered requests fail when its process dies), so
//!   they stay queued in the kernel, and a new worker asks for them again
//!   (`FUSE_NOTIFY_RESEND`, [`resend_pending`]). A worker that stops on
//!   purpose closes its [`Gate`] first: requests it has started are
//!   answered, those it reads after are left for the next one. So a
//!   request is carried out once on a restart; only after a crash is one
//!   that was under way carried out again (harmless for reads; a change to
//!   an editable view may then answer `EEXIST` or `ENOENT`).
//! - **The meaning of every node id the kernel holds.** View ids come from
//!   the ledger ([`crate::ledger`]), content nodes and passthrough backing
//!   files from journals ([`spfs_vfs::journal`]), and the inode tables of
//!   editable views from a snapshot the stopping worker writes
//!   ([`write_edit_tables`]; after a crash there is none, and names the
//!   kernel had of an editable view answer `ESTALE` once).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use spfs_vfs::journal::write_private;

/// What the kernel offered at `FUSE_INIT`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InitRecord {
    pub major: u32,
    pub minor: u32,
    /// The capability flags offered (`flags | flags2 << 32`).
    pub capabilities: u64,
}

const INIT_FILE: &str = "init.json";

impl InitRecord {
    /// Keep the record for the next worker.
    pub fn save(&self, state_dir: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        write_private(&state_dir.join(INIT_FILE), &bytes)
    }

    /// The record the first worker of the mount kept.
    pub fn load(state_dir: &Path) -> io::Result<InitRecord> {
        let bytes = std::fs::read(state_dir.join(INIT_FILE))?;
        serde_json::from_slice(&bytes).map_err(io::Error::other)
    }

    /// The `FUSE_INIT` request the kernel sent, as bytes.
    fn request(&self) -> Vec<u8> {
        const FUSE_INIT: u32 = 26;
        const FUSE_INIT_EXT: u64 = 1 << 30;
        const LEN: u32 = 40 + 64;
        let caps = self.capabilities | FUSE_INIT_EXT;
        let mut b = Vec::with_capacity(LEN as usize);
        // fuse_in_header
        b.extend_from_slice(&LEN.to_le_bytes());
        b.extend_from_slice(&FUSE_INIT.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // unique
        b.extend_from_slice(&0u64.to_le_bytes()); // nodeid
        b.extend_from_slice(&[0u8; 16]); // uid, gid, pid, padding
        // fuse_init_in
        b.extend_from_slice(&self.major.to_le_bytes());
        b.extend_from_slice(&self.minor.to_le_bytes());
        b.extend_from_slice(&(128u32 * 1024).to_le_bytes()); // max_readahead
        b.extend_from_slice(&(caps as u32).to_le_bytes());
        b.extend_from_slice(&((caps >> 32) as u32).to_le_bytes());
        b.extend_from_slice(&[0u8; 44]);
        b
    }
}

/// Make a `fuser` session for a connection another worker initialised:
/// `start` gets a descriptor to build the session on and must return the
/// session (which replays `record`'s `INIT` to its filesystem); the real
/// device `fuse` is then put under the session's descriptor.
pub fn adopt_session<S: AsFd>(
    fuse: &OwnedFd,
    record: &InitRecord,
    start: impl FnOnce(OwnedFd) -> io::Result<S>,
) -> io::Result<S> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::io::write(&ours, &record.request())?;
    let session = start(theirs)?;
    // The session's descriptor now names the device (atomically: no
    // moment where the number is free).
    {
        use std::os::fd::FromRawFd;
        // SAFETY: the descriptor is open (the session owns it); the
        // `OwnedFd` made for `dup2` is never dropped, so never closed here.
        let mut target = std::mem::ManuallyDrop::new(unsafe {
            OwnedFd::from_raw_fd(session.as_fd().as_raw_fd())
        });
        rustix::io::dup2(fuse, &mut target)?;
    }
    drop(ours);
    Ok(session)
}

/// Ask the kernel to send again every request read from the connection and
/// not answered (a previous worker's).
pub fn resend_pending(fuse: &impl AsFd) -> io::Result<()> {
    const FUSE_NOTIFY_RESEND: i32 = 7;
    let mut msg = Vec::with_capacity(16);
    msg.extend_from_slice(&16u32.to_le_bytes());
    msg.extend_from_slice(&FUSE_NOTIFY_RESEND.to_le_bytes());
    msg.extend_from_slice(&0u64.to_le_bytes());
    rustix::io::write(fuse, &msg)?;
    Ok(())
}

/// Counts the requests being carried out; once closed, requests read
/// after wait for the process to end (the next worker gets them again).
#[derive(Debug, Default)]
pub struct Gate {
    in_flight: AtomicU64,
    closed: AtomicBool,
}

/// A request being carried out (see [`Gate::enter`]).
pub struct InFlight<'a>(&'a Gate);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gate {
    /// Enter to carry out a request; blocks for good once closed.
    pub fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            loop {
                std::thread::park();
            }
        }
        InFlight(self)
    }

    /// Whether a request is being carried out.
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }

    /// Close: wait (at most `limit`) until no request is being carried
    /// out. Whether they all finished.
    pub fn close(&self, limit: Duration) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + limit;
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

const EDIT_TABLES_FILE: &str = "edit-tables.bin";

/// Keep the inode tables of editable views (runtime name, table) for the
/// next worker.
pub fn write_edit_tables(state_dir: &Path, tables: &[(String, Vec<u8>)]) -> io::Result<()> {
    let mut out = Vec::new();
    for (name, table) in tables {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(table.len() as u64).to_le_bytes());
        out.extend_from_slice(table);
    }
    write_private(&state_dir.join(EDIT_TABLES_FILE), &out)
}

/// The tables the last worker kept, taken (the file goes: a later crash
/// must not find tables older than the views).
pub fn take_edit_tables(state_dir: &Path) -> Vec<(String, Vec<u8>)> {
    let path = state_dir.join(EDIT_TABLES_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return Vec::new();
    };
    let _ = std::fs::remove_file(&path);
    let mut out = Vec::new();
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = bytes.get(*at..at.checked_add(n)?)?;
        *at += n;
        Some(s)
    };
    while at < bytes.len() {
        let Some(n) = take(&mut at, 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
        else {
            break;
        };
        let Some(name) = take(&mut at, n as usize).map(|b| String::from_utf8_lossy(b).into_owned())
        else {
            break;
        };
        let Some(len) = take(&mut at, 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
        else {
            break;
        };
        let Some(table) = usize::try_from(len).ok().and_then(|l| take(&mut at, l)) else {
            break;
        };
        out.push((name, table.to_vec()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_tables_round_trip_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tables = vec![("a".to_string(), vec![1, 2, 3]), ("bb".into(), vec![])];
        write_edit_tables(dir.path(), &tables).expect("write");
        assert_eq!(take_edit_tables(dir.path()), tables);
        assert!(take_edit_tables(dir.path()).is_empty(), "taken once");
    }

    #[test]
    fn a_closed_gate_waits_for_requests_under_way() {
        let gate = std::sync::Arc::new(Gate::default());
        let held = gate.clone();
        let t = std::thread::spawn(move || {
            let _in = held.enter();
            std::thread::sleep(Duration::from_millis(50));
        });
        std::thread::sleep(Duration::from_millis(10));
        let start = Instant::now();
        assert!(gate.close(Duration::from_secs(5)));
        assert!(start.elapsed() >= Duration::from_millis(20));
        t.join().expect("join");
    }
}
