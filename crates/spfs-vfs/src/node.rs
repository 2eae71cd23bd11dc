//! Node ids: how a view's entries are named to the platform.
//!
//! The root of the mount is node [`ROOT`], shared by every caller. Every other
//! node id carries the id of the view it belongs to in its upper 32 bits and
//! the entry's index in that view's tree in its lower 32 bits. View ids are
//! never reused within a service's life, so a node id means the same thing
//! for as long as the kernel may remember it: a cached lookup, attribute or
//! page for one view can never be returned for a node of another, and a
//! process of one view that somehow presents another view's node id is
//! refused.

/// The mount's root directory.
pub const ROOT: u64 = 1;

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
    }
}
