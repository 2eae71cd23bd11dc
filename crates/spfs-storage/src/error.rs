//! The errors of the storage layer.

use std::path::PathBuf;

use spfs_model::{DecodeError, Digest, SpecError, TreeError};

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything that can go wrong in a repository.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("no spfs repository at {0} (create one with 'spfs init repo {0}')")]
    NoRepository(PathBuf),
    #[error(
        "repository {path} has format version {found}, newer than this build supports ({supported}); upgrade spfs"
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("object {0} not found")]
    UnknownObject(Digest),
    #[error("payload {0} is private to another user")]
    PayloadNotReadable(Digest),
    #[error("no object matches '{0}'")]
    UnknownReference(String),
    #[error("unknown tag '{0}'")]
    UnknownTag(String),
    #[error("tag '{name}' has only {available} version(s); ~{requested} does not exist")]
    UnknownTagVersion {
        name: String,
        available: usize,
        requested: u64,
    },
    #[error("ambiguous digest prefix '{prefix}': it matches {count} objects; type more characters")]
    AmbiguousDigest { prefix: String, count: usize },
    #[error("'{0}' is both a tag and a digest prefix; use the full digest or another tag name")]
    AmbiguousReference(String),
    #[error("object {digest} is corrupt: {source}")]
    Corrupt { digest: Digest, source: DecodeError },
    #[error("object {digest} was written by a newer spfs: {source}")]
    NewerObject { digest: Digest, source: DecodeError },
    #[error("object {digest} is a {found}, expected {expected}")]
    WrongKind {
        digest: Digest,
        found: &'static str,
        expected: &'static str,
    },
    #[error("cannot store {0}: sockets, devices and fifos cannot be committed")]
    SpecialFile(PathBuf),
    #[error("path {path} is not valid in a layer: {source}")]
    Tree { path: PathBuf, source: TreeError },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("invalid runtime record {path}: {message}")]
    BadRecord { path: PathBuf, message: String },
    #[error("unknown runtime '{0}'")]
    UnknownRuntime(String),
    #[error("platform {0} nests platforms more than {max} levels deep", max = crate::resolve::MAX_DEPTH)]
    TooDeep(Digest),
    /// A stack passed a bound of [`crate::resolve`] while it was flattened.
    #[error("the stack is too large: it passes the limit of {limit} {what}")]
    StackTooLarge { what: &'static str, limit: usize },
    #[error(
        "directory {0} is missing from this shared repository; run 'spfs init repo --shared' on it again as root"
    )]
    MissingDirectory(PathBuf),
    #[error("making a shared repository at {0} needs root (its directories must belong to root)")]
    SharedNeedsRoot(PathBuf),
    #[error(
        "tag '{name}' belongs to {owner}: in a shared repository only a tag's creator (or root) may change it, and only the creator of a tag folder may add tags to it"
    )]
    TagNotYours { name: String, owner: String },
    #[error("'{reference}' was found in no repository searched: {searched}")]
    NotFoundAnywhere { reference: String, searched: String },
    /// A remote repository refused or failed a request.
    #[error("{address}: {message}")]
    Remote { address: String, message: String },
}

impl StorageError {
    /// An I/O error with what was being done and to which path.
    pub fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StorageError {
        let path = path.into();
        move |source| StorageError::Io {
            context,
            path,
            source,
        }
    }
}
