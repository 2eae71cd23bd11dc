//! Storage of spfs: where objects, payloads, tags and runtime records live.
//!
//! - [`fs`]: [`FsRepository`], the local repository on a directory, with
//!   crash-safe writes (temporary file, fsync, rename);
//! - [`payload`]: public and per-user private copies of payloads, and
//!   the one rule of who may be served which;
//! - [`tags`]: tag streams with history and cross-process locking;
//! - [`resolve`]: turning spec items, digests and tags into objects, layers
//!   and merged trees;
//! - [`commit`]: storing a directory tree as a layer, hashing in parallel;
//! - [`reach`]: walking what a set of roots reaches (shared by check and
//!   clean);
//! - [`check`]: verifying everything reachable from a set of references;
//! - [`clean`]: removing what no root reaches, safely while others write;
//! - [`gc`]: the repository-wide lock that writers share and clean takes
//!   alone;
//! - [`quarantine`]: moving payloads that do not match their digest out of
//!   the way, so that they read as missing and can be fetched again;
//! - [`runtimes`]: the records of running environments;
//! - [`readthrough`]: using remotes as if their contents were local
//!   (objects when a view is made, payloads when first read);
//! - [`repository`]: the [`Repository`] interface every repository, local
//!   or remote, offers;
//! - [`transfer`]: copying object graphs between repositories, children
//!   first, checked, resumable;
//! - [`shared`]: repositories that many users of a host write into without
//!   root (`spfs init repo --shared`).

mod beneath;
pub mod check;
pub mod clean;
pub mod commit;
mod error;
pub mod fs;
pub mod gc;
pub mod payload;
pub mod quarantine;
pub mod reach;
pub mod readthrough;
pub mod repository;
pub mod resolve;
pub mod runtimes;
pub mod shared;
pub mod tags;
pub mod transfer;

pub use error::{Result, StorageError};
pub use fs::{FsRepository, Readers};
pub use gc::{GcGuard, GcLock};
pub use payload::{OpenedPayload, PayloadCopy};
pub use repository::{PayloadReader, Repository};
pub use shared::Sharing;
