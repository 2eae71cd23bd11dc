//! Node ids: how a view's entries are named to the platform.
//!
//! The root of the mount is node [`ROOT`], shared by every caller. Every other
//! node id carries the id of the view it belongs to in its upper 32 bits and
//! the entry's index in that view's tree in its lower 32 bits. View ids are
//! never reused within a service's life, so a node id means the same thing
//! for as long as the kernel may remember it: a cached lookup, attribute or
//! page for one view can never be returned for a node of another, and a
//! process of one view that somehow presents another view's node id is
//! refused. (A subtree view, [`crate::shared`], is a view too: its nodes are
//! reached by every view that shares it, and refused to the others.)
//!
//! A bound view (see [`crate::vfs`]) also has a root of its own, entry
//! index [`VIEW_ROOT_INDEX`] of its view, which no tree entry uses (a tree
//! holds fewer than 2^32 - 1 entries).

/// The mount's root directory.
pub const ROOT: u64 = 1;

/// The entry index that names a bound view's own root directory.
pub const VIEW_ROOT_INDEX: u32 = u32::MAX;

/// The node id of the root directory of bound view `view`.
pub fn view_root(view: u32) -> u64 {
    node_id(view, VIEW_ROOT_INDEX)
}

/// Whether `node` is the root of a bound view.
pub fn is_view_root(node: u64) -> bool {
    matches!(split(node), Some((_, VIEW_ROOT_INDEX)))
}

/// The node id of entry `index` of view `view` (`view` is at least 1).
pub fn node_id(view: u32, index: u32) -> u64 {
    ((view as u64) << 32) | index as u64
}

/// The view and entry index of a node id; `None` for the root (or any id
/// below 2^32, which no view uses).
pub fn split(node: u64) -> Option<(u32, u32)> {
    let view = (node >> 32) as u32;
    (view != 0).then_some((view, node as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_root() {
        assert_eq!(split(ROOT), None);
        let n = node_id(7, 42);
        assert_eq!(split(n), Some((7, 42)));
        assert_ne!(node_id(1, 0), ROOT);
        assert_ne!(node_id(1, 5), node_id(2, 5));
        assert!(is_view_root(view_root(3)));
        assert!(!is_view_root(ROOT) && !is_view_root(node_id(3, 0)));
    }
}
