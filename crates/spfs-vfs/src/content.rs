//! Content nodes: one node for each distinct public file, in every view.
//!
//! The kernel keeps a file's pages per inode. With view-scoped node ids,
//! ten runtimes whose stacks share a file would read it into ten inodes,
//! ten copies in memory, whenever the kernel (not a passthrough backing
//! file) keeps the pages. So a regular file whose payload has a public copy
//! — readable by every user, so no view may be kept from it — is named by a
//! *content node* instead: one node id per distinct (digest, size, mode,
//! mtime), whichever views hold such a file. Its attributes are those four
//! (and root's ownership), so every dentry that leads to it agrees on them,
//! as hard links do. Files without a public copy keep view-scoped ids.
//!
//! Content node ids carry [`CONTENT_VIEW`] as their view part and a slot
//! number below it. A slot lives while the kernel holds a reference: the
//! host counts every entry it hands the kernel ([`ContentNodes::intern`]
//! with `counted`) and reports the kernel's `FORGET`s
//! ([`ContentNodes::forget`]); a slot the kernel has forgotten may be
//! reused, since the kernel no longer knows its id.

use std::collections::HashMap;
use std::sync::Mutex;

use spfs_model::Digest;

use crate::node;

/// The view part of every content node id (no view gets this id).
pub const CONTENT_VIEW: u32 = u32::MAX;

/// What makes two files the same node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContentKey {
    pub digest: Digest,
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
    /// Nanoseconds since the epoch.
    pub mtime: i64,
}

struct Slot {
    key: ContentKey,
    /// References the kernel holds (entries handed to it, less forgets).
    lookups: u64,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<ContentKey, u32>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
}

/// Slots kept, at most, for nodes the kernel holds no reference to (ids
/// only listed by `readdir`): past this, they are reused.
const UNREFERENCED_MAX: usize = 65_536;

/// The content nodes of one service.
#[derive(Default)]
pub struct ContentNodes {
    inner: Mutex<Inner>,
}

impl ContentNodes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node of `key`, made if needed. `counted`: the id is handed to the
    /// kernel as an entry (a lookup reference it will forget); otherwise it
    /// is only shown (a `readdir` inode number).
    pub fn intern(&self, key: ContentKey, counted: bool) -> u64 {
        let mut inner = self.lock();
        let slot = match inner.by_key.get(&key) {
            Some(&slot) => slot,
            None => {
                if inner.free.is_empty() && inner.slots.len() >= UNREFERENCED_MAX {
                    Self::sweep(&mut inner);
                }
                let slot = match inner.free.pop() {
                    Some(slot) => slot,
                    None => {
                        let slot = inner.slots.len() as u32;
                        inner.slots.push(None);
                        slot
                    }
                };
                inner.slots[slot as usize] = Some(Slot { key, lookups: 0 });
                inner.by_key.insert(key, slot);
                slot
            }
        };
        if counted && let Some(s) = inner.slots[slot as usize].as_mut() {
            s.lookups += 1;
        }
        node::node_id(CONTENT_VIEW, slot)
    }

    /// Free the slots the kernel holds no reference to.
    fn sweep(inner: &mut Inner) {
        let Inner {
            by_key,
            slots,
            free,
        } = inner;
        for (i, s) in slots.iter_mut().enumerate() {
            if s.as_ref().is_some_and(|s| s.lookups == 0) {
                if let Some(s) = s.take() {
                    by_key.remove(&s.key);
                }
                free.push(i as u32);
            }
        }
    }

    /// The key of content node `node`, if it is one that lives.
    pub fn get(&self, node: u64) -> Option<ContentKey> {
        let (view, slot) = node::split(node)?;
        if view != CONTENT_VIEW {
            return None;
        }
        self.lock()
            .slots
            .get(slot as usize)?
            .as_ref()
            .map(|s| s.key)
    }

    /// The kernel dropped `n` references to `node`; a node with none left
    /// is forgotten (and true returned).
    pub fn forget(&self, node: u64, n: u64) -> bool {
        let Some((CONTENT_VIEW, slot)) = node::split(node) else {
            return false;
        };
        let mut inner = self.lock();
        let Some(Some(s)) = inner.slots.get_mut(slot as usize) else {
            return false;
        };
        s.lookups = s.lookups.saturating_sub(n);
        if s.lookups > 0 {
            return false;
        }
        let key = s.key;
        inner.slots[slot as usize] = None;
        inner.by_key.remove(&key);
        inner.free.push(slot);
        true
    }

    /// Content nodes alive.
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether `node` is a content node.
pub fn is_content(node: u64) -> bool {
    matches!(node::split(node), Some((CONTENT_VIEW, _)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> ContentKey {
        ContentKey {
            digest: Digest::of(&[n]),
            size: 1,
            perm: 0o644,
            mtime: 0,
        }
    }

    #[test]
    fn one_node_per_content_until_forgotten() {
        let nodes = ContentNodes::default();
        let a = nodes.intern(key(1), true);
        assert!(is_content(a));
        assert_eq!(nodes.intern(key(1), true), a, "same content, same node");
        let b = nodes.intern(
            ContentKey {
                perm: 0o755,
                ..key(1)
            },
            true,
        );
        assert_ne!(a, b, "another mode is another node");
        assert_eq!(nodes.get(a), Some(key(1)));
        nodes.forget(a, 1);
        assert_eq!(nodes.get(a), Some(key(1)), "one reference left");
        nodes.forget(a, 1);
        assert_eq!(nodes.get(a), None, "forgotten");
        // Its slot is reused for other content.
        let c = nodes.intern(key(2), true);
        assert_eq!(c, a);
        assert_eq!(nodes.get(c), Some(key(2)));
        // Forgetting what is no content node, or unknown, changes nothing.
        nodes.forget(node::node_id(3, 4), 9);
        nodes.forget(node::node_id(CONTENT_VIEW, 999), 9);
        assert_eq!(nodes.len(), 2);
    }

    #[test]
    fn unreferenced_slots_are_reused_past_the_bound() {
        let nodes = ContentNodes::default();
        let held = nodes.intern(key(0), true);
        for i in 1..=UNREFERENCED_MAX as u32 + 10 {
            let k = ContentKey {
                size: i as u64,
                ..key(1)
            };
            nodes.intern(k, false);
        }
        assert!(nodes.len() <= UNREFERENCED_MAX);
        assert_eq!(nodes.get(held), Some(key(0)), "a held node is never swept");
    }
}
