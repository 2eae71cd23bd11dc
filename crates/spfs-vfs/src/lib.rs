//! The platform-neutral core of the spfs VFS service.
//!
//! One filesystem mount serves many environments at once. Each filesystem
//! request is answered from the *view* of the runtime its caller belongs to;
//! a caller in no runtime sees an empty root. This crate owns everything
//! that does not depend on the platform's filesystem API:
//!
//! - [`node`]: node ids, which encode the view they belong to, so that a
//!   kernel cache keyed by node id can never serve one view's answer to
//!   another;
//! - [`view`]: a merged, immutable tree built from a stack of layers, shared
//!   by every runtime with the same stack;
//! - [`registry`]: the registered runtimes and the views they use;
//! - [`shared`]: subtree views, one node for a top-level directory that
//!   routed views hold alike, so the kernel's cache of it survives lookups
//!   from many views;
//! - [`routed`]: routed directories, one node for a top-level name that
//!   routed views hold differently, answered per caller, so the kernel's
//!   entry for the name survives lookups from many views;
//! - [`vfs`]: the filesystem operations (lookup, getattr, readdir, readlink,
//!   open, read, statfs) with their cache lifetimes;
//! - [`edit`]: editable views, a runtime's own writable layer over its
//!   stack, and turning it into a layer;
//! - [`write`]: the editable views' operations in node ids;
//! - [`content`]: one node per distinct public file across views, so the
//!   kernel keeps one copy of its pages;
//! - [`handles`]: open files;
//! - [`journal`]: small tables kept in files, that outlive the service
//!   process (what the kernel may still know of it after a restart);
//! - [`verify`]: payloads checked against their digests before they are
//!   first served, corrupt ones refused and quarantined.
//!
//! A platform host (FUSE on Linux, WinFSP on Windows) identifies the caller's
//! runtime with the platform's own means and calls into [`vfs::Vfs`]; see
//! `docs/platform-hosts.md`.

pub mod content;
pub mod edit;
pub mod handles;
pub mod journal;
pub mod node;
pub mod registry;
pub mod routed;
pub mod shared;
pub mod verify;
pub mod vfs;
pub mod view;
pub mod write;

pub use registry::{EditSpec, Registry, Runtime, RuntimeSpec};
pub use spfs_storage::{OpenedPayload, PayloadCopy};
pub use vfs::{Attr, DirItem, NodeKind, Vfs, VfsError};
pub use view::View;
