//! End-to-end tests of the VFS service on a real FUSE mount.
//!
//! They need root, `/dev/fuse` and a cgroup v2 hierarchy. Where those are
//! missing the tests print why and pass, unless `SPFS_REQUIRE_VFS_TESTS=1`
//! (as CI sets), in which case they fail.

mod harness;

mod bound;
mod edit;
mod faults;
mod handover;
mod isolation;
mod load;
mod mtimes;
mod observability;
mod pagecache;
mod readthrough;
mod routed;
mod routing;
mod runtimes;
mod shared;
mod systemd;
