//! The security suite: every defect an adversarial probe found in the VFS
//! service and the shared repository, replayed as a hostile local user
//! would try it, with real throwaway users that the suite creates and
//! removes ([`users`]).
//!
//! Like the VFS tests they need root, `/dev/fuse` and cgroup v2; where those
//! are missing the tests print why and pass, unless
//! `SPFS_REQUIRE_VFS_TESTS=1` (as CI sets).

#[path = "../vfs/harness.rs"]
#[allow(dead_code)]
mod harness;
mod users;

mod bound;
mod control;
mod edit;
mod integrity;
mod limits;
mod logs_locks;
mod registration;
mod repo;
mod routed;
mod stacks;
