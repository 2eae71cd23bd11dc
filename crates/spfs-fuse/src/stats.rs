//! What the service counts while it serves, and the status it reports.
//!
//! This module owns the request-path figures of the FUSE host: per
//! operation ([`Op`]) a count, an error count, the summed time and a latency
//! histogram; the bytes answered by READ and taken by WRITE; opens answered
//! with passthrough (and the sizes of the files opened: what the kernel
//! then reads from the backing file is never seen here); requests from
//! callers in no runtime. Everything is a relaxed atomic in a table made
//! once: recording a request ([`Stats::start`], then the [`Timer`] dropped
//! at the end of the host's method) costs two `Instant` reads and two or
//! three atomic additions, no lock and no allocation.
//!
//! **Histogram.** Latencies are counted in nanoseconds in log-linear
//! buckets: one bucket below 2^10 ns (1.024 µs), then 8 buckets of equal
//! width per power of two up to 2^34 ns (17.18 s), then one bucket for
//! everything longer: 194 buckets. A bucket's width is at most 1/8 of its
//! lower edge, so a quantile reported as the upper edge of the bucket that
//! holds it (p50, p90, p99, p99.9) is never below the true value and at
//! most 12.5% above it; below 1.024 µs it reads 1.024 µs, at or above
//! 17.18 s it reads 17.18 s. The count of an operation is the sum of its
//! buckets, read when reported (a request recorded meanwhile may show in
//! one figure and not yet in another).
//!
//! [`report`] gathers the status: these figures, the router's, the core's
//! (views, entries, content nodes, open handles), the memory (resident set
//! from `/proc/self/statm`, an estimate of the views' trees) and the
//! read-through's fetches.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use fuser::Errno;
use spfs_control::proto;
use spfs_vfs::Vfs;

use crate::route::Router;

macro_rules! ops {
    ($($op:ident => $name:literal),* $(,)?) => {
        /// The FUSE operations the host answers.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Op { $($op),* }

        impl Op {
            /// Every operation, in the order they are reported.
            pub const ALL: &'static [Op] = &[$(Op::$op),*];

            /// The FUSE name, lowercase.
            pub fn name(self) -> &'static str {
                match self { $(Op::$op => $name),* }
            }
        }
    };
}

ops! {
    Lookup => "lookup", Forget => "forget", Getattr => "getattr", Setattr => "setattr",
    Readlink => "readlink", Mknod => "mknod", Mkdir => "mkdir", Unlink => "unlink",
    Rmdir => "rmdir", Symlink => "symlink", Rename => "rename", Link => "link",
    Open => "open", Read => "read", Write => "write", Flush => "flush",
    Release => "release", Fsync => "fsync", Opendir => "opendir", Readdir => "readdir",
    Readdirplus => "readdirplus", Releasedir => "releasedir", Fsyncdir => "fsyncdir",
    Statfs => "statfs", Setxattr => "setxattr", Getxattr => "getxattr",
    Listxattr => "listxattr", Removexattr => "removexattr", Access => "access",
    Create => "create", Getlk => "getlk", Setlk => "setlk", Bmap => "bmap",
    Ioctl => "ioctl", Poll => "poll", Fallocate => "fallocate", Lseek => "lseek",
    CopyFileRange => "copy_file_range",
}

/// Sub-buckets per power of two (2^3).
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// The first bucket edge, 2^10 ns.
const MIN_SHIFT: u32 = 10;
/// The last bucket edge, 2^34 ns.
const MAX_SHIFT: u32 = 34;
/// Buckets: below 2^MIN_SHIFT ns, 8 per power of two, at or above
/// 2^MAX_SHIFT ns.
pub const BUCKETS: usize = 2 + (MAX_SHIFT - MIN_SHIFT) as usize * SUB;

/// The bucket of a latency of `ns` nanoseconds.
fn bucket(ns: u64) -> usize {
    if ns < 1 << MIN_SHIFT {
        return 0;
    }
    let e = 63 - ns.leading_zeros();
    if e >= MAX_SHIFT {
        return BUCKETS - 1;
    }
    let sub = (ns >> (e - SUB_BITS)) as usize & (SUB - 1);
    1 + (e - MIN_SHIFT) as usize * SUB + sub
}

/// The upper edge of bucket `i` in nanoseconds (the last bucket has none:
/// its lower edge).
fn upper_ns(i: usize) -> u64 {
    if i == 0 {
        return 1 << MIN_SHIFT;
    }
    if i >= BUCKETS - 1 {
        return 1 << MAX_SHIFT;
    }
    let j = i - 1;
    let e = MIN_SHIFT + (j / SUB) as u32;
    let sub = (j % SUB) as u64;
    (SUB as u64 + sub + 1) << (e - SUB_BITS)
}

/// The figures of one operation.
struct OpCounters {
    errors: AtomicU64,
    sum_ns: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl OpCounters {
    fn new() -> Self {
        OpCounters {
            errors: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn report(&self, op: Op) -> proto::OpStats {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let count: u64 = counts.iter().sum();
        let q = |q| quantile(&counts, count, q);
        proto::OpStats {
            op: op.name().to_string(),
            count,
            errors: self.errors.load(Relaxed),
            sum_seconds: self.sum_ns.load(Relaxed) as f64 / 1e9,
            p50_seconds: q(0.5),
            p90_seconds: q(0.9),
            p99_seconds: q(0.99),
            p999_seconds: q(0.999),
        }
    }
}

/// Quantile `q` of a histogram of `count` values, in seconds (0 when empty):
/// the upper edge of the bucket holding the value of rank ⌈q·count⌉.
fn quantile(counts: &[u64], count: u64, q: f64) -> f64 {
    if count == 0 {
        return 0.0;
    }
    let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return upper_ns(i) as f64 / 1e9;
        }
    }
    upper_ns(BUCKETS - 1) as f64 / 1e9
}

/// The request-path figures of one service.
pub struct Stats {
    ops: Box<[OpCounters]>,
    /// File data answered by READ.
    pub read_bytes: AtomicU64,
    /// File data taken by WRITE.
    pub write_bytes: AtomicU64,
    /// Requests from callers in no runtime.
    pub unrouted: AtomicU64,
    /// Opens answered with passthrough, and their files' sizes.
    pub passthrough_opens: AtomicU64,
    pub passthrough_opened_bytes: AtomicU64,
    /// Passthrough opens released.
    pub passthrough_releases: AtomicU64,
    /// Backing files registered.
    pub backing_registered: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            ops: Op::ALL.iter().map(|_| OpCounters::new()).collect(),
            read_bytes: AtomicU64::new(0),
            write_bytes: AtomicU64::new(0),
            unrouted: AtomicU64::new(0),
            passthrough_opens: AtomicU64::new(0),
            passthrough_opened_bytes: AtomicU64::new(0),
            passthrough_releases: AtomicU64::new(0),
            backing_registered: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// Start timing a request of `op`; it is recorded when the timer drops.
    #[inline]
    pub fn start(&self, op: Op) -> Timer<'_> {
        Timer {
            op: &self.ops[op as usize],
            start: Instant::now(),
            failed: Cell::new(false),
        }
    }

    /// Add `n` to a counter.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Every operation's figures, in [`Op::ALL`]'s order.
    pub fn ops(&self) -> Vec<proto::OpStats> {
        Op::ALL
            .iter()
            .map(|&op| self.ops[op as usize].report(op))
            .collect()
    }

    fn passthrough(&self) -> proto::PassthroughStats {
        let opens = self.passthrough_opens.load(Relaxed);
        proto::PassthroughStats {
            opens,
            opened_bytes: self.passthrough_opened_bytes.load(Relaxed),
            open_files: opens.saturating_sub(self.passthrough_releases.load(Relaxed)),
            backing_registered: self.backing_registered.load(Relaxed),
        }
    }
}

/// Times one request; records it (and whether it failed) when dropped.
pub struct Timer<'a> {
    op: &'a OpCounters,
    start: Instant,
    failed: Cell<bool>,
}

impl Timer<'_> {
    /// Answer with an error, counting it.
    #[inline]
    pub fn fail<R: ErrorReply>(&self, reply: R, e: Errno) {
        self.failed.set(true);
        reply.error(e);
    }
}

impl Drop for Timer<'_> {
    #[inline]
    fn drop(&mut self) {
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.op.buckets[bucket(ns)].fetch_add(1, Relaxed);
        self.op.sum_ns.fetch_add(ns, Relaxed);
        if self.failed.get() {
            self.op.errors.fetch_add(1, Relaxed);
        }
    }
}

/// A reply that can carry an error.
pub trait ErrorReply {
    fn error(self, e: Errno);
}

macro_rules! error_reply {
    ($($t:ty),* $(,)?) => {
        $(impl ErrorReply for $t {
            #[inline]
            fn error(self, e: Errno) {
                <$t>::error(self, e)
            }
        })*
    };
}

error_reply!(
    fuser::ReplyEmpty,
    fuser::ReplyData,
    fuser::ReplyEntry,
    fuser::ReplyAttr,
    fuser::ReplyOpen,
    fuser::ReplyWrite,
    fuser::ReplyStatfs,
    fuser::ReplyCreate,
    fuser::ReplyLock,
    fuser::ReplyBmap,
    fuser::ReplyIoctl,
    fuser::ReplyPoll,
    fuser::ReplyDirectory,
    fuser::ReplyDirectoryPlus,
    fuser::ReplyXattr,
    fuser::ReplyLseek,
);

/// The service's resident set in bytes (0 if unknown).
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf reads a constant of the system; no memory is shared.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// glibc's malloc chunk for a request of `n` bytes (none for 0: an empty
/// box allocates nothing).
fn malloc_chunk(n: usize) -> usize {
    match n {
        0 => 0,
        n => ((n + 8 + 15) & !15).max(32),
    }
}

/// The estimated heap of a tree: its entries and directories at their
/// in-memory size, each name in its own allocation.
pub fn tree_bytes(tree: &spfs_model::Tree) -> u64 {
    let names: usize = tree
        .entries()
        .iter()
        .map(|e| malloc_chunk(e.name.len()))
        .sum();
    (std::mem::size_of_val(tree.entries()) + std::mem::size_of_val(tree.dirs()) + names) as u64
}

/// The service's status beyond what `State` itself knows: fills `s`'s
/// observability fields.
pub(crate) fn report(s: &mut proto::StatusResponse, stats: &Stats, vfs: &Vfs, router: &Router) {
    s.ops = stats.ops();
    s.read_bytes = stats.read_bytes.load(Relaxed);
    s.write_bytes = stats.write_bytes.load(Relaxed);
    s.passthrough_stats = Some(stats.passthrough());
    let r = router.counts();
    s.routing = Some(proto::RoutingStats {
        cache_hits: r.hits,
        cache_misses: r.misses,
        uncached: r.uncached,
        unrouted: stats.unrouted.load(Relaxed),
        cached_threads: r.cached_threads,
    });
    // Views: each tree's estimate computed once, however many views share it.
    let runtimes = vfs.registry.list();
    let mut views = vfs.registry.views();
    views.sort_by_key(|v| v.id);
    let mut trees: std::collections::HashMap<*const spfs_model::Tree, (u64, u32)> =
        Default::default();
    for v in &views {
        let t = trees
            .entry(std::sync::Arc::as_ptr(&v.tree))
            .or_insert_with(|| (tree_bytes(&v.tree), 0));
        t.1 += 1;
    }
    s.view_stats = views
        .iter()
        .map(|v| {
            let (bytes, users) = trees
                .get(&std::sync::Arc::as_ptr(&v.tree))
                .copied()
                .unwrap_or_default();
            proto::ViewStats {
                id: v.id,
                runtimes: runtimes.iter().filter(|r| r.view.id == v.id).count() as u32,
                layers: v.stack().len() as u32,
                entries: v.tree.len() as u64,
                tree_bytes: bytes,
                shared_tree: users > 1,
                bound: v.bound,
                editable: v.edit.is_some(),
            }
        })
        .collect();
    s.views = views.len() as u32;
    s.entries = views.iter().map(|v| v.tree.len() as u64).sum();
    s.content_nodes = vfs.content.len() as u64;
    s.shared_dirs = vfs.registry.subtree_count() as u32;
    s.routed_dirs = vfs.registry.routed_count() as u32;
    s.open_handles = vfs.handles.len() as u64;
    let trees_bytes: u64 = trees.values().map(|t| t.0).sum();
    let tree_entries: u64 = views
        .iter()
        .filter(|v| {
            // Each distinct tree once.
            views
                .iter()
                .find(|w| std::sync::Arc::ptr_eq(&w.tree, &v.tree))
                .is_some_and(|w| w.id == v.id)
        })
        .map(|v| v.tree.len() as u64)
        .sum();
    s.memory = Some(proto::MemoryStats {
        rss_bytes: rss_bytes(),
        trees_bytes,
        bytes_per_entry: match tree_entries {
            0 => 0.0,
            n => trees_bytes as f64 / n as f64,
        },
    });
    s.remote = Some(match vfs.read_through() {
        Some(rt) => {
            let c = rt.counts();
            proto::RemoteStats {
                remotes: rt.len() as u32,
                payloads_fetched: c.payloads_fetched,
                fetched_bytes: c.fetched_bytes,
                fetch_failures: c.fetch_failures,
                ranged_reads: c.ranged_reads,
                ranged_bytes: c.ranged_bytes,
                references_resolved: c.references_resolved,
            }
        }
        None => proto::RemoteStats::default(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_at_most_an_eighth_wide() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1023), 0);
        assert_eq!(bucket(1024), 1);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket(1 << MAX_SHIFT), BUCKETS - 1);
        assert_eq!(bucket((1 << MAX_SHIFT) - 1), BUCKETS - 2);
        // Every value lies below its bucket's upper edge and at or above
        // the previous one's, and the edges are at most 12.5% apart.
        let mut ns = 1u64;
        while ns < 1 << 36 {
            let b = bucket(ns);
            if b < BUCKETS - 1 {
                assert!(ns < upper_ns(b), "{ns} in {b}");
            }
            if b > 0 {
                assert!(ns >= upper_ns(b - 1), "{ns} in {b}");
            }
            ns = ns * 17 / 16 + 1;
        }
        for i in 2..BUCKETS - 1 {
            let (lo, hi) = (upper_ns(i - 1), upper_ns(i));
            assert!(hi > lo && (hi - lo) * 8 <= lo, "bucket {i}: {lo}..{hi}");
        }
    }

    #[test]
    fn quantiles_are_ordered_and_within_a_bucket() {
        let stats = Stats::default();
        let op = &stats.ops[Op::Lookup as usize];
        // 1000 values: 1..=1000 µs.
        for us in 1..=1000u64 {
            op.buckets[bucket(us * 1000)].fetch_add(1, Relaxed);
        }
        let r = op.report(Op::Lookup);
        assert_eq!(r.count, 1000);
        for (got, want) in [
            (r.p50_seconds, 500e-6),
            (r.p90_seconds, 900e-6),
            (r.p99_seconds, 990e-6),
            (r.p999_seconds, 999e-6),
        ] {
            assert!(got >= want && got <= want * 1.125, "{got} for {want}");
        }
        assert!(r.p50_seconds <= r.p90_seconds && r.p90_seconds <= r.p99_seconds);
        assert!(r.p99_seconds <= r.p999_seconds);
        let empty = stats.ops[Op::Read as usize].report(Op::Read);
        assert_eq!((empty.count, empty.p50_seconds), (0, 0.0));
    }

    #[test]
    fn a_timer_records_its_request_and_its_failure() {
        let stats = Stats::default();
        drop(stats.start(Op::Getattr));
        let t = stats.start(Op::Getattr);
        t.failed.set(true);
        drop(t);
        let r = &stats.ops()[Op::Getattr as usize];
        assert_eq!((r.op.as_str(), r.count, r.errors), ("getattr", 2, 1));
        assert!(r.p50_seconds > 0.0 && r.sum_seconds > 0.0);
        assert_eq!(Op::ALL.len(), stats.ops().len());
    }

    #[test]
    fn tree_estimate_counts_entries_and_names() {
        let mut b = spfs_model::TreeBuilder::new();
        for name in ["a", "b/c"] {
            b.add(
                name.as_bytes(),
                spfs_model::EntryKind::File,
                0o100644,
                1,
                spfs_model::Digest::of(name.as_bytes()),
            )
            .expect("add");
        }
        let tree = b.build().expect("build");
        assert_eq!(tree.len(), 3);
        let entry = std::mem::size_of::<spfs_model::Entry>() as u64;
        let bytes = tree_bytes(&tree);
        // Three entries, two directories (root, b), three names of 32 bytes.
        let dir = std::mem::size_of::<spfs_model::tree::DirSpan>() as u64;
        assert_eq!(bytes, 3 * entry + 2 * dir + 3 * 32);
    }
}
