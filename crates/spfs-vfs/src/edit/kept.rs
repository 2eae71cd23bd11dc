//! The upper files that editable views keep open, all views together.
//!
//! An editable view keeps the upper file of an inode open while it is
//! read and written ([`super::Editable`]), and each such file is a
//! descriptor of the service, which serves every user. So the files kept
//! are counted here, service-wide, against one *budget* (by default a
//! quarter of the process's `RLIMIT_NOFILE`; see [`set_budget`]), and per
//! view against [`PER_VIEW`]. A file that would go past either bound
//! closes another first:
//!
//! * past the view's own bound, the least recently used file of that view;
//! * past the budget, one of the user who keeps the most files (all their
//!   views together), from that user's view that keeps the most.
//!
//! Files that still have a name go first: closing one costs nothing but a
//! reopen by name the next time it is used. A file removed while open
//! cannot be reopened; it is closed only when its view keeps nothing else
//! (then its readers get an error). So a user who opens many files makes
//! their own views reopen files, and other users keep theirs.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

/// Upper files kept open per view, at most.
pub const PER_VIEW: usize = 4096;

/// The budget when the descriptor limit is unlimited.
const UNLIMITED_BUDGET: usize = 1 << 18;

/// The smallest budget (a view must be able to keep the file it uses).
const MIN_BUDGET: usize = 16;

/// The default budget: a quarter of the process's soft descriptor limit.
pub fn default_budget() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match limit {
        Some(n) => usize::try_from(n / 4).unwrap_or(usize::MAX),
        None => UNLIMITED_BUDGET,
    }
    .max(MIN_BUDGET)
}

/// Set the service-wide budget (0: [`default_budget`], computed now, so
/// call it after raising the descriptor limit). Files kept beyond a
/// lowered budget are closed as new ones are kept.
pub fn set_budget(budget: usize) {
    let budget = match budget {
        0 => default_budget(),
        n => n.max(MIN_BUDGET),
    };
    STORE.set_budget(budget);
    tracing::debug!(budget, "upper files kept open by editable views, at most");
}

/// Upper files kept open now, all views together, and the budget.
pub fn usage() -> (usize, usize) {
    STORE.usage()
}

/// The service's store.
static STORE: LazyLock<Store> = LazyLock::new(|| Store::new(default_budget()));

static NEXT_VIEW: AtomicU64 = AtomicU64::new(1);

/// Files kept by a set of views, against one budget.
pub(crate) struct Store {
    inner: Mutex<Inner>,
}

impl Store {
    fn new(budget: usize) -> Store {
        Store {
            inner: Mutex::new(Inner {
                budget,
                total: 0,
                next_use: 0,
                views: HashMap::new(),
                per_user: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_budget(&self, budget: usize) {
        self.lock().budget = budget;
    }

    fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.total, inner.budget)
    }
}

struct Inner {
    budget: usize,
    /// Files kept, all views.
    total: usize,
    /// Orders uses (least recently used: smallest).
    next_use: u64,
    views: HashMap<u64, ViewFiles>,
    /// Files kept per view owner.
    per_user: HashMap<u32, usize>,
}

struct ViewFiles {
    owner: u32,
    files: HashMap<u32, KeptFile>,
    /// Files that still have a name, by last use.
    named: BTreeMap<u64, u32>,
    /// Files removed while open, by last use.
    removed: BTreeMap<u64, u32>,
}

struct KeptFile {
    file: Arc<File>,
    last_use: u64,
    named: bool,
}

impl ViewFiles {
    fn order(&mut self, named: bool) -> &mut BTreeMap<u64, u32> {
        match named {
            true => &mut self.named,
            false => &mut self.removed,
        }
    }

    /// Close the least recently used file, one with a name first.
    fn close_one(&mut self) -> Option<Arc<File>> {
        let (_, ino) = self
            .named
            .pop_first()
            .or_else(|| self.removed.pop_first())?;
        self.files.remove(&ino).map(|k| k.file)
    }
}

impl Inner {
    fn tick(&mut self) -> u64 {
        self.next_use += 1;
        self.next_use
    }

    fn counted(&mut self, owner: u32, removed: usize) {
        self.total -= removed;
        if let Some(n) = self.per_user.get_mut(&owner) {
            *n -= removed;
            if *n == 0 {
                self.per_user.remove(&owner);
            }
        }
    }

    /// Close one file of `view`; false if it keeps none.
    fn close_in(&mut self, view: u64) -> Option<Arc<File>> {
        let v = self.views.get_mut(&view)?;
        let owner = v.owner;
        let file = v.close_one()?;
        self.counted(owner, 1);
        Some(file)
    }

    /// The view to close a file of when the budget is used up: of the
    /// user who keeps the most, the view that keeps the most (one with a
    /// named file, if any has one).
    fn victim(&self) -> Option<u64> {
        let (&owner, _) = self.per_user.iter().max_by_key(|(_, n)| **n)?;
        self.views
            .iter()
            .filter(|(_, v)| v.owner == owner && !v.files.is_empty())
            .max_by_key(|(_, v)| (!v.named.is_empty(), v.files.len()))
            .map(|(id, _)| *id)
    }
}

/// The files one editable view keeps open. Dropping it closes them.
pub(crate) struct ViewKept {
    id: u64,
    store: &'static Store,
}

impl ViewKept {
    /// A view of `owner` (a user id) keeping no file yet, counted in the
    /// service's store.
    pub(crate) fn new(owner: u32) -> ViewKept {
        ViewKept::new_in(&STORE, owner)
    }

    fn new_in(store: &'static Store, owner: u32) -> ViewKept {
        let id = NEXT_VIEW.fetch_add(1, Ordering::Relaxed);
        store.lock().views.insert(
            id,
            ViewFiles {
                owner,
                files: HashMap::new(),
                named: BTreeMap::new(),
                removed: BTreeMap::new(),
            },
        );
        ViewKept { id, store }
    }

    /// The file kept for `ino`, if any (a use: it is closed later).
    pub(crate) fn get(&self, ino: u32) -> Option<Arc<File>> {
        let mut inner = self.store.lock();
        let now = inner.tick();
        let v = inner.views.get_mut(&self.id)?;
        let k = v.files.get_mut(&ino)?;
        let (before, named, file) = (k.last_use, k.named, k.file.clone());
        k.last_use = now;
        let order = v.order(named);
        order.remove(&before);
        order.insert(now, ino);
        Some(file)
    }

    /// Whether a file is kept for `ino`.
    pub(crate) fn contains(&self, ino: u32) -> bool {
        self.store
            .lock()
            .views
            .get(&self.id)
            .is_some_and(|v| v.files.contains_key(&ino))
    }

    /// Keep `file` open for `ino` (`named`: it can be opened again by
    /// name), closing others first as the bounds say.
    pub(crate) fn keep(&self, ino: u32, file: Arc<File>, named: bool) {
        let mut closed = Vec::new();
        let mut inner = self.store.lock();
        if let Some(old) = self.take(&mut inner, ino) {
            closed.push(old);
        }
        while inner.views.get(&self.id).map_or(0, |v| v.files.len()) >= PER_VIEW {
            match inner.close_in(self.id) {
                Some(f) => closed.push(f),
                None => break,
            }
        }
        while inner.total >= inner.budget {
            match inner.victim().and_then(|v| inner.close_in(v)) {
                Some(f) => closed.push(f),
                None => break,
            }
        }
        let now = inner.tick();
        let Some(v) = inner.views.get_mut(&self.id) else {
            return;
        };
        let owner = v.owner;
        v.order(named).insert(now, ino);
        v.files.insert(
            ino,
            KeptFile {
                file,
                last_use: now,
                named,
            },
        );
        inner.total += 1;
        *inner.per_user.entry(owner).or_default() += 1;
        drop(inner);
        drop(closed);
    }

    /// `ino` lost its last name: its file can no longer be reopened.
    pub(crate) fn mark_removed(&self, ino: u32) {
        let mut inner = self.store.lock();
        let Some(v) = inner.views.get_mut(&self.id) else {
            return;
        };
        let Some(k) = v.files.get_mut(&ino) else {
            return;
        };
        if k.named {
            k.named = false;
            let at = k.last_use;
            v.named.remove(&at);
            v.removed.insert(at, ino);
        }
    }

    /// Close the file kept for `ino`.
    pub(crate) fn remove(&self, ino: u32) {
        let mut inner = self.store.lock();
        let file = self.take(&mut inner, ino);
        drop(inner);
        drop(file);
    }

    /// Close every file except those `keep` says.
    pub(crate) fn retain(&self, keep: impl Fn(u32) -> bool) {
        let mut inner = self.store.lock();
        let gone: Vec<u32> = match inner.views.get(&self.id) {
            Some(v) => v.files.keys().copied().filter(|i| !keep(*i)).collect(),
            None => return,
        };
        let closed: Vec<_> = gone
            .into_iter()
            .filter_map(|ino| self.take(&mut inner, ino))
            .collect();
        drop(inner);
        drop(closed);
    }

    /// Close every file.
    pub(crate) fn clear(&self) {
        self.retain(|_| false);
    }

    /// How many files this view keeps.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.store
            .lock()
            .views
            .get(&self.id)
            .map_or(0, |v| v.files.len())
    }

    fn take(&self, inner: &mut Inner, ino: u32) -> Option<Arc<File>> {
        let v = inner.views.get_mut(&self.id)?;
        let k = v.files.remove(&ino)?;
        v.order(k.named).remove(&k.last_use);
        let owner = v.owner;
        inner.counted(owner, 1);
        Some(k.file)
    }
}

impl Drop for ViewKept {
    fn drop(&mut self) {
        let mut inner = self.store.lock();
        if let Some(v) = inner.views.remove(&self.id) {
            let n = v.files.len();
            inner.counted(v.owner, n);
            drop(inner);
            drop(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<File> {
        Arc::new(tempfile::tempfile().expect("a temporary file"))
    }

    /// A store of its own, with `budget`.
    fn store(budget: usize) -> &'static Store {
        Box::leak(Box::new(Store::new(budget)))
    }

    #[test]
    fn the_view_past_its_bound_closes_its_own_oldest() {
        let v = ViewKept::new_in(store(1 << 20), 1000);
        for ino in 0..PER_VIEW as u32 + 10 {
            v.keep(ino, file(), true);
        }
        assert_eq!(v.len(), PER_VIEW);
        assert!(v.get(0).is_none(), "the oldest went first");
        assert!(v.get(PER_VIEW as u32 + 9).is_some());
    }

    #[test]
    fn past_the_budget_the_user_keeping_most_closes_first() {
        let store = store(40);
        let quiet = ViewKept::new_in(store, 2001);
        for ino in 0..10 {
            quiet.keep(ino, file(), true);
        }
        // A user with many views, each keeping fewer than the quiet one.
        let greedy: Vec<ViewKept> = (0..20).map(|_| ViewKept::new_in(store, 2002)).collect();
        for round in 0..5 {
            for v in &greedy {
                v.keep(round, file(), true);
            }
        }
        assert_eq!(quiet.len(), 10, "the other user keeps every file");
        let greedy_kept: usize = greedy.iter().map(ViewKept::len).sum();
        assert_eq!(greedy_kept, 30, "the greedy user is held to the rest");
        assert_eq!(store.usage(), (40, 40));
        drop(greedy);
        drop(quiet);
        assert_eq!(store.usage().0, 0, "dropping views counts their files off");
    }

    #[test]
    fn removed_files_close_after_named_ones() {
        let v = ViewKept::new_in(store(MIN_BUDGET), 3001);
        v.keep(1, file(), true);
        v.mark_removed(1);
        for ino in 2..MIN_BUDGET as u32 + 5 {
            v.keep(ino, file(), true);
        }
        assert!(v.get(1).is_some(), "the removed file is still open");
        assert!(v.get(2).is_none(), "the oldest named file went first");
        assert_eq!(v.len(), MIN_BUDGET);
        v.retain(|ino| ino == 1);
        assert_eq!(v.len(), 1);
        v.clear();
        assert_eq!(v.len(), 0);
    }
}
