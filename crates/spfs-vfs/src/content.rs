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
//!
//! Slots outlive the service process when a [`Journal`] keeps them
//! ([`ContentNodes::keep_in`]): the next service process finds every slot
//! the kernel may still hold. How many references the kernel holds to
//! those is not known, so they are never reused in that process's life.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use spfs_model::Digest;

use crate::journal::Journal;
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
    /// Slots found in a journal (never freed).
    recovered: usize,
}

/// References counted for a slot found in a journal: never all forgotten.
const RECOVERED: u64 = u64::MAX / 2;

/// The bytes of a key in a journal.
pub const KEY_BYTES: usize = 32 + 8 + 2 + 8;

impl ContentKey {
    fn to_bytes(self) -> [u8; KEY_BYTES] {
        let mut b = [0u8; KEY_BYTES];
        b[..32].copy_from_slice(self.digest.as_bytes());
        b[32..40].copy_from_slice(&self.size.to_le_bytes());
        b[40..42].copy_from_slice(&self.perm.to_le_bytes());
        b[42..].copy_from_slice(&self.mtime.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Option<ContentKey> {
        if b.len() != KEY_BYTES {
            return None;
        }
        Some(ContentKey {
            digest: Digest(b[..32].try_into().ok()?),
            size: u64::from_le_bytes(b[32..40].try_into().ok()?),
            perm: u16::from_le_bytes(b[40..42].try_into().ok()?),
            mtime: i64::from_le_bytes(b[42..].try_into().ok()?),
        })
    }
}

/// Slots kept, at most, for nodes the kernel holds no reference to (ids
/// only listed by `readdir`): past this, they are reused.
const UNREFERENCED_MAX: usize = 65_536;

/// The content nodes of one service.
#[derive(Default)]
pub struct ContentNodes {
    inner: Mutex<Inner>,
    journal: OnceLock<Journal>,
}

impl ContentNodes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep the slots in `journal` from now on, taking over those it holds
    /// (a previous service process's, which the kernel may still know).
    pub fn keep_in(&self, journal: Journal) {
        let mut inner = self.lock();
        let mut found: Vec<(u32, ContentKey)> = journal
            .entries()
            .into_iter()
            .filter_map(|(slot, key)| {
                Some((u32::try_from(slot).ok()?, ContentKey::from_bytes(&key)?))
            })
            .filter(|(slot, _)| *slot < u32::MAX)
            .collect();
        found.sort_by_key(|(slot, _)| *slot);
        for (slot, key) in found {
            let i = slot as usize;
            if inner.slots.len() <= i {
                inner.slots.resize_with(i + 1, || None);
            }
            if let Some(old) = inner.slots[i].take() {
                inner.by_key.remove(&old.key);
            }
            inner.slots[i] = Some(Slot {
                key,
                lookups: RECOVERED,
            });
            inner.by_key.insert(key, slot);
        }
        inner.recovered = inner.slots.iter().filter(|s| s.is_some()).count();
        inner.free = (0..inner.slots.len() as u32)
            .filter(|i| inner.slots[*i as usize].is_none())
            .collect();
        let _ = self.journal.set(journal);
    }

    /// Record that `slot` holds `key` (before its id is handed out).
    fn journal_put(&self, slot: u32, key: ContentKey) {
        if let Some(j) = self.journal.get()
            && let Err(e) = j.put(slot as u64, &key.to_bytes())
        {
            tracing::warn!("cannot journal content node {slot}: {e}");
        }
    }

    /// Record that `slot` is free.
    fn journal_remove(&self, slot: u32) {
        if let Some(j) = self.journal.get()
            && let Err(e) = j.remove(slot as u64)
        {
            tracing::warn!("cannot journal content node {slot}: {e}");
        }
    }

    /// The node of `key`, made if needed. `counted`: the id is handed to the
    /// kernel as an entry (a lookup reference it will forget); otherwise it
    /// is only shown (a `readdir` inode number).
    pub fn intern(&self, key: ContentKey, counted: bool) -> u64 {
        let mut inner = self.lock();
        let slot = match inner.by_key.get(&key) {
            Some(&slot) => slot,
            None => {
                // (Slots found in a journal are never swept: not counted.)
                if inner.free.is_empty() && inner.slots.len() >= UNREFERENCED_MAX + inner.recovered
                {
                    for slot in Self::sweep(&mut inner) {
                        self.journal_remove(slot);
                    }
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
                self.journal_put(slot, key);
                slot
            }
        };
        if counted && let Some(s) = inner.slots[slot as usize].as_mut() {
            s.lookups += 1;
        }
        node::node_id(CONTENT_VIEW, slot)
    }

    /// Free the slots the kernel holds no reference to; the slots freed.
    fn sweep(inner: &mut Inner) -> Vec<u32> {
        let Inner {
            by_key,
            slots,
            free,
            ..
        } = inner;
        let mut freed = Vec::new();
        for (i, s) in slots.iter_mut().enumerate() {
            if s.as_ref().is_some_and(|s| s.lookups == 0) {
                if let Some(s) = s.take() {
                    by_key.remove(&s.key);
                }
                free.push(i as u32);
                freed.push(i as u32);
            }
        }
        freed
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
        self.journal_remove(slot);
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
    fn a_journal_keeps_slots_for_the_next_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("content");
        let (a, b);
        {
            let nodes = ContentNodes::default();
            nodes.keep_in(Journal::open(&path, KEY_BYTES).expect("journal"));
            a = nodes.intern(key(1), true);
            b = nodes.intern(key(2), true);
            let gone = nodes.intern(key(3), true);
            nodes.forget(gone, 1);
        }
        let nodes = ContentNodes::default();
        nodes.keep_in(Journal::open(&path, KEY_BYTES).expect("journal"));
        assert_eq!(nodes.get(a), Some(key(1)));
        assert_eq!(nodes.get(b), Some(key(2)));
        assert_eq!(nodes.intern(key(2), true), b, "the same node again");
        // Recovered slots are never freed: the kernel's count is unknown.
        nodes.forget(a, 1000);
        assert_eq!(nodes.get(a), Some(key(1)));
        let c = nodes.intern(key(4), true);
        assert!(c != a && c != b);
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
