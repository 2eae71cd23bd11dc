//! Views: the merged tree a runtime sees.
//!
//! A read-only view is built once from a stack of layers and never
//! changes. Runtimes with the same stack share one view (and so one set of
//! node ids, and the kernel's caches for them); a view is dropped when its
//! last runtime goes. An editable view ([`crate::edit`]) belongs to one
//! runtime and lays that runtime's edits over its stack.

use std::time::SystemTime;

use std::sync::Arc;

use spfs_model::{Digest, Tree};

/// A merged tree with the id that prefixes its node ids.
#[derive(Debug)]
pub struct View {
    pub id: u32,
    /// The user whose runtimes see it (views are per owner, see
    /// [`crate::registry`]).
    pub owner_uid: u32,
    /// The stack, bottom first (layers or manifests).
    pub layers: Vec<Digest>,
    /// The merged tree, shared by the views of one stack (they differ only
    /// in their owner and node ids).
    pub tree: Arc<Tree>,
    /// The time shown for every entry: when the newest layer was stored.
    pub mtime: SystemTime,
    /// Whether the view is bound: its runtime sees it through a mount of
    /// its own root (see [`crate::vfs`]), not through the shared root.
    pub bound: bool,
    /// The editing state of an editable view (its stack is then
    /// [`crate::edit::Editable::lower`], which a commit changes).
    pub edit: Option<crate::edit::Editable>,
    /// The top-level directories shown through subtree views
    /// ([`crate::shared`]); none for a bound, editable or subtree view.
    pub shares: crate::shared::Shares,
    /// The top-level directories by routed directory node id
    /// ([`crate::routed`]); none for a bound, editable or subtree view.
    pub routes: crate::routed::Routes,
    /// For a subtree view: whether the views that share it show it through
    /// a routed directory ([`crate::routed`]).
    pub routed: bool,
}

impl View {
    /// The view whose tree holds node ids of view id `id`, for a caller of
    /// this view: this view, or a subtree view it shares.
    pub fn holding(&self, id: u32) -> Option<&View> {
        match id == self.id {
            true => Some(self),
            false => self.shares.by_id(id),
        }
    }

    /// For tests: the node id of top-level directory `index` (its subtree
    /// view's, if it shares one, else its own), routed or not.
    #[cfg(test)]
    pub fn dir_node(&self, index: u32) -> u64 {
        match self.shares.of_entry(index) {
            Some(sub) => crate::node::node_id(sub.id, crate::shared::SUBTREE_TOP),
            None => crate::node::node_id(self.id, index),
        }
    }

    /// The routed directory node that top-level directory `index` is
    /// handed out as, if it is routed.
    pub fn routed_node_of(&self, index: u32) -> Option<u64> {
        match self.shares.of_entry(index)?.routed {
            true => self.routes.node_of(index),
            false => None,
        }
    }

    /// The subtree view that routed directory `node` shows to this view,
    /// if it does.
    pub fn routed_subtree(&self, node: u64) -> Option<&View> {
        let sub = self.shares.of_entry(self.routes.index_of(node)?)?;
        sub.routed.then_some(sub)
    }

    /// The stack the view shows now, bottom first (an editable view's
    /// grows with each commit).
    pub fn stack(&self) -> Vec<Digest> {
        match &self.edit {
            Some(e) => e.stack(),
            None => self.layers.clone(),
        }
    }
}
