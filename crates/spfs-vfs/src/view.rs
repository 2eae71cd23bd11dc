//! Views: the merged, immutable tree a runtime sees.
//!
//! A view is built once from a stack of layers and never changes. Runtimes
//! with the same stack share one view (and so one set of node ids, and the
//! kernel's caches for them); a view is dropped when its last runtime goes.

use std::time::SystemTime;

use spfs_model::{Digest, Tree};

/// A merged tree with the id that prefixes its node ids.
#[derive(Debug)]
pub struct View {
    pub id: u32,
    /// The stack, bottom first (layers or manifests).
    pub layers: Vec<Digest>,
    pub tree: Tree,
    /// The time shown for every entry: when the newest layer was stored.
    pub mtime: SystemTime,
}
