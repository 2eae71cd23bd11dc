//! The registry of runtimes: which views are mounted, for whom.
//!
//! A runtime is registered under a unique name, with the process that roots
//! its tree and the view it sees. How a caller is matched to a runtime is the
//! platform host's business (on Linux: the runtime's cgroup); the registry
//! only keeps the runtimes and shares views between runtimes of one owner
//! whose stacks are equal. The few most recently dropped views are kept, so
//! that running the same stack again reuses their node ids and the kernel's
//! warm caches.
//!
//! Views are never shared between owners: the kernel caches what it learnt
//! about a node (symlink targets, and pages when opens are kernel-kept) and
//! answers later requests for that node without asking, so a node one user
//! could read must not be reachable by another who may not read the same
//! payload. Views of one stack for different owners share the merged tree
//! (memory) but have their own node ids. Nor are they shared between a
//! bound runtime and a routed one: the kernel would otherwise meet one
//! directory inode under two parents (the shared root and the view's own).
//!
//! The registry also keeps the subtree views that routed views share
//! ([`crate::shared`]): one per top-level directory of one owner's views
//! with the same content, alive while a view shows it; how many live
//! runtimes hold each routed name, which decides whether a new subtree view
//! is shown through a routed directory ([`crate::routed`]); and which name
//! each routed directory id stands for.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Instant, SystemTime};

use spfs_model::{Digest, Tree};

use crate::shared::{Shares, SubtreeKey};
use crate::view::View;

/// What a platform host registers.
#[derive(Clone, Debug)]
pub struct RuntimeSpec {
    pub name: String,
    pub root_pid: u32,
    pub owner_uid: u32,
    /// Whether the runtime sees a bound view (a mount of the view's own
    /// root) rather than a routed one (the shared root).
    pub bound: bool,
    /// An editable view, whose edits go to this upper area.
    pub edit: Option<EditSpec>,
    /// The id of the view to use: the one a previous service process gave
    /// this runtime (a restarted service takes its runtimes over, and the
    /// kernel still knows their node ids). `None`: a new id.
    pub view_id: Option<u32>,
    /// The top-level directories shown through subtree views (see
    /// [`crate::shared`]) as a previous service process showed them: (entry
    /// index, subtree view id); the others are the view's own. `None`: as
    /// found now.
    pub shared: Option<Vec<(u32, u32)>>,
    /// Of the subtree views in `shared`, those shown through routed
    /// directories (see [`crate::routed`]).
    pub routed: Vec<u32>,
}

/// What makes a view editable.
#[derive(Clone, Debug)]
pub struct EditSpec {
    /// The runtime's upper area (made if missing; kept as it is when it
    /// holds edits already: a durable runtime run again).
    pub upper: std::path::PathBuf,
    /// The group shown as the owner of the layers' entries (the owner's
    /// primary group).
    pub owner_gid: u32,
    /// Whether changes are taken now (`spfs edit --off` stops them).
    pub writable: bool,
}
#[derive(Debug)]
pub struct Runtime {
    pub name: String,
    pub root_pid: u32,
    pub owner_uid: u32,
    pub created: SystemTime,
    pub started: Instant,
    /// Filesystem requests answered from this runtime's view.
    pub requests: AtomicU64,
    pub view: Arc<View>,
}

impl Runtime {
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a runtime could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError<E: std::error::Error + 'static> {
    #[error("a runtime named '{0}' is already registered")]
    Exists(String),
    #[error("too many views were created in this service's life")]
    OutOfViewIds,
    #[error("view id {0} is another view's")]
    ViewIdTaken(u32),
    #[error("cannot open the upper area {path}: {source}")]
    Upper {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(E),
}

/// Views kept after their last runtime went, so that the next run of the
/// same stack finds the kernel's caches for its node ids still warm.
const RECENT_VIEWS: usize = 8;
/// ... as long as they hold at most this many entries together.
const RECENT_ENTRIES: usize = 4_000_000;

/// What makes two runtimes share a view: the stack, the owner, the mode
/// (an editable view is its runtime's alone: keyed by its name).
#[derive(Clone, PartialEq, Eq, Hash)]
struct ViewKey {
    layers: Vec<Digest>,
    owner_uid: u32,
    bound: bool,
    editable_for: Option<String>,
}

#[derive(Default)]
struct Inner {
    runtimes: HashMap<String, Arc<Runtime>>,
    views: HashMap<ViewKey, Weak<View>>,
    /// Every live view by id (a view taken over with its old id may not be
    /// the one `views` shares for its key), subtree views (no key)
    /// included.
    by_id: HashMap<u32, (Option<ViewKey>, Weak<View>)>,
    /// The subtree views that views share (see [`crate::shared`]).
    subtrees: HashMap<SubtreeKey, Weak<View>>,
    recent: VecDeque<Arc<View>>,
    last_view: u32,
    /// How many live runtimes hold each routed name (owner, routed
    /// directory id): whether a new subtree view is routed
    /// ([`crate::routed`]). Runtimes, not views: a view kept warm after
    /// its runtime went makes no later view routed.
    held: HashMap<crate::routed::OwnedName, u32>,
    /// Which name each routed directory id of an owner stands for, while
    /// routed subtree views of that name live: another name whose id
    /// collides (a crafted one) is never routed, so one routed node is
    /// never two names.
    claims: HashMap<crate::routed::OwnedName, (Vec<u8>, Vec<Weak<View>>)>,
}

/// Whether `id` may name a view (0 and the content nodes' are not).
fn is_view_id(id: u32) -> bool {
    id != 0 && id < crate::routed::FIRST_ROUTED_VIEW
}

impl Inner {
    /// `routes` of a new view of `tree` for `owner_uid`, but those whose id
    /// routed subtree views alive claim for another name.
    fn unclaimed(
        &self,
        mut routes: crate::routed::Routes,
        tree: &Tree,
        owner_uid: u32,
    ) -> crate::routed::Routes {
        routes.retain(|routed, index| {
            let name = tree.entries().get(index as usize).map(|e| &*e.name);
            match self.claims.get(&(owner_uid, routed)) {
                Some((claimed, views)) if views.iter().any(|w| w.strong_count() > 0) => {
                    name == Some(claimed.as_slice())
                }
                _ => true,
            }
        });
        routes
    }

    /// A runtime of `view` came (`add`) or went: count the routed names
    /// it holds.
    fn hold(&mut self, view: &View, add: bool) {
        for (routed, _) in view.routes.iter() {
            let name = (view.owner_uid, routed);
            match add {
                true => *self.held.entry(name).or_default() += 1,
                false => {
                    if let Some(c) = self.held.get_mut(&name) {
                        *c = c.saturating_sub(1);
                        if *c == 0 {
                            self.held.remove(&name);
                        }
                    }
                }
            }
        }
    }

    /// The next view id to hand out, if any is left.
    fn next_view_id(&self) -> Option<u32> {
        self.last_view.checked_add(1).filter(|id| is_view_id(*id))
    }

    /// Whether a live view (a subtree view included) has id `id`.
    fn is_live(&self, id: u32) -> bool {
        self.by_id
            .get(&id)
            .is_some_and(|(_, w)| w.strong_count() > 0)
    }

    /// The live view `id`, which must be of `key`.
    fn view_by_id<E: std::error::Error + 'static>(
        &self,
        id: u32,
        key: &ViewKey,
    ) -> Result<Option<Arc<View>>, RegistryError<E>> {
        match self.by_id.get(&id) {
            Some((k, v)) => match v.upgrade() {
                Some(v) if k.as_ref() == Some(key) => Ok(Some(v)),
                Some(_) => Err(RegistryError::ViewIdTaken(id)),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// The subtree views a new view of `tree` shows its top-level
    /// directories `top` through: live ones of the same key, else new ones
    /// (from `prepared`, copies made outside the lock). `wanted`: a view
    /// taken over, whose directories keep the subtree view ids a previous
    /// service process gave them (and the others their own node ids), and
    /// are routed if their ids are in `routed` (see [`crate::routed`]);
    /// otherwise a new subtree view is routed if a live runtime of its
    /// owner holds the same routed name (in `routes`).
    fn shares(
        &mut self,
        tree: &Tree,
        top: &[(u32, SubtreeKey)],
        mut prepared: HashMap<SubtreeKey, Tree>,
        wanted: Option<&[(u32, u32)]>,
        routes: &crate::routed::Routes,
        routed: &[u32],
    ) -> Shares {
        let mut list = Vec::new();
        for (index, key) in top {
            let want = match wanted {
                Some(w) => match w.iter().find(|(i, _)| i == index) {
                    Some((_, id)) => Some(*id),
                    None => continue,
                },
                None => None,
            };
            let live = self.subtrees.get(key).and_then(Weak::upgrade);
            let view = match (live, want) {
                // A routed one only with the route to it (a view whose
                // route was dropped shows the directory as its own).
                (Some(v), _) if v.routed && routes.node_of(*index).is_none() => continue,
                (Some(v), None) => v,
                (Some(v), Some(id)) if v.id == id => v,
                (live, want) => {
                    let id = match want {
                        // Its old id, unless something else has it now.
                        Some(id) if is_view_id(id) && !self.is_live(id) => id,
                        Some(_) => continue,
                        None => match self.next_view_id() {
                            Some(id) => id,
                            None => continue,
                        },
                    };
                    let sub = match prepared.remove(key) {
                        Some(t) => Arc::new(t),
                        None => match tree.subtree(*index) {
                            Some(t) => Arc::new(t),
                            None => continue,
                        },
                    };
                    let name = routes.node_of(*index).map(|r| (key.owner_uid, r));
                    let is_routed = name.is_some()
                        && match want {
                            Some(id) => routed.contains(&id),
                            None => name.is_some_and(|n| self.held.get(&n).is_some_and(|c| *c > 0)),
                        };
                    let v = Arc::new(crate::shared::subtree_view(
                        id,
                        sub,
                        key.owner_uid,
                        is_routed,
                    ));
                    if let (true, Some(n), Some(e)) =
                        (is_routed, name, tree.entries().get(*index as usize))
                    {
                        let claim = self.claims.entry(n).or_default();
                        claim.1.retain(|w| w.strong_count() > 0);
                        if claim.1.is_empty() {
                            claim.0 = e.name.to_vec();
                        }
                        claim.1.push(Arc::downgrade(&v));
                    }
                    self.last_view = self.last_view.max(id);
                    self.by_id.insert(id, (None, Arc::downgrade(&v)));
                    // The one new views of the key share (a view taken
                    // over may keep another of the key, whose id the
                    // kernel knows too).
                    if live.is_none() {
                        self.subtrees.insert(*key, Arc::downgrade(&v));
                    }
                    v
                }
            };
            list.push((*index, view));
        }
        Shares::new(list)
    }
}

/// The runtimes of one service.
#[derive(Default)]
pub struct Registry {
    inner: RwLock<Inner>,
}

impl Registry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a runtime whose view is the stack `layers`. An existing view
    /// of the same stack and owner is shared; otherwise `build` makes the
    /// merged tree (outside the registry's lock) unless a view of the stack
    /// for another owner has it already.
    pub fn register<E: std::error::Error + 'static>(
        &self,
        spec: RuntimeSpec,
        layers: Vec<Digest>,
        build: impl FnOnce() -> Result<(Tree, SystemTime), E>,
    ) -> Result<Arc<Runtime>, RegistryError<E>> {
        if self.read().runtimes.contains_key(&spec.name) {
            return Err(RegistryError::Exists(spec.name));
        }
        // A view of this stack and owner that is alive is shared; otherwise
        // one is made (its tree shared with a live view of the stack for
        // another owner, or built outside the lock), and used unless another
        // registration made one meanwhile.
        let key = ViewKey {
            layers,
            owner_uid: spec.owner_uid,
            bound: spec.bound,
            editable_for: spec.edit.as_ref().map(|_| spec.name.clone()),
        };
        let (shared, tree) = {
            let inner = self.read();
            let shared = match spec.view_id {
                // Taken over: that view, if another runtime took it over
                // already (it must be of this key).
                Some(id) => inner.view_by_id(id, &key)?,
                None => inner.views.get(&key).and_then(Weak::upgrade),
            };
            let tree = inner
                .views
                .iter()
                .filter(|(k, _)| k.layers == key.layers)
                .find_map(|(_, v)| v.upgrade())
                .map(|v| (v.tree.clone(), v.mtime));
            (shared, tree)
        };
        let view = match shared {
            Some(v) => v,
            None => {
                let (tree, mtime) = match tree {
                    Some(t) => t,
                    None => {
                        let (tree, mtime) = build().map_err(RegistryError::Build)?;
                        (Arc::new(tree), mtime)
                    }
                };
                // The top-level directories it may show through subtree
                // views, and copies of those no live view shares yet
                // (made outside the lock).
                let top = match key.bound || spec.edit.is_some() {
                    true => Vec::new(),
                    false => crate::shared::top_dirs(&tree, spec.owner_uid),
                };
                let prepared = self.prepare_subtrees(&tree, &top);
                let routes = crate::routed::Routes::of(&tree, &top, spec.owner_uid);
                let edit = match &spec.edit {
                    Some(e) => {
                        let upper =
                            crate::edit::upper::Upper::open(&e.upper).map_err(|source| {
                                RegistryError::Upper {
                                    path: e.upper.clone(),
                                    source,
                                }
                            })?;
                        let ed = crate::edit::Editable::new(
                            upper,
                            key.layers.clone(),
                            tree.clone(),
                            (spec.owner_uid, e.owner_gid),
                        );
                        ed.set_writable(e.writable);
                        Some(ed)
                    }
                    None => None,
                };
                let mut inner = self.write();
                let again = match spec.view_id {
                    Some(id) => inner.view_by_id(id, &key)?,
                    None => inner.views.get(&key).and_then(Weak::upgrade),
                };
                match again {
                    Some(v) => v,
                    None => {
                        let id = match spec.view_id {
                            Some(id) if is_view_id(id) => id,
                            Some(id) => return Err(RegistryError::ViewIdTaken(id)),
                            None => inner.next_view_id().ok_or(RegistryError::OutOfViewIds)?,
                        };
                        inner.last_view = inner.last_view.max(id);
                        let routes = inner.unclaimed(routes, &tree, key.owner_uid);
                        let shares = inner.shares(
                            &tree,
                            &top,
                            prepared,
                            spec.shared.as_deref(),
                            &routes,
                            &spec.routed,
                        );
                        let v = Arc::new(View {
                            id,
                            owner_uid: key.owner_uid,
                            layers: key.layers.clone(),
                            tree,
                            mtime,
                            bound: key.bound,
                            edit,
                            shares,
                            routes,
                            routed: false,
                        });
                        inner
                            .by_id
                            .insert(id, (Some(key.clone()), Arc::downgrade(&v)));
                        // A view taken over is shared only if its key has
                        // no live view yet.
                        if inner.views.get(&key).is_none_or(|w| w.strong_count() == 0) {
                            inner.views.insert(key, Arc::downgrade(&v));
                        }
                        v
                    }
                }
            }
        };
        let mut inner = self.write();
        if inner.runtimes.contains_key(&spec.name) {
            return Err(RegistryError::Exists(spec.name));
        }
        let rt = Arc::new(Runtime {
            name: spec.name.clone(),
            root_pid: spec.root_pid,
            owner_uid: spec.owner_uid,
            created: SystemTime::now(),
            started: Instant::now(),
            requests: AtomicU64::new(0),
            view,
        });
        inner.hold(&rt.view, true);
        inner.runtimes.insert(spec.name, rt.clone());
        Ok(rt)
    }

    /// How many subtree views alive are shown through routed directories
    /// (see [`crate::routed`]).
    pub fn routed_count(&self) -> usize {
        self.read()
            .subtrees
            .values()
            .filter_map(Weak::upgrade)
            .filter(|v| v.routed)
            .count()
    }

    /// Copies of the top-level directories `top` of `tree` that no live
    /// subtree view holds yet, by key.
    fn prepare_subtrees(
        &self,
        tree: &Tree,
        top: &[(u32, SubtreeKey)],
    ) -> HashMap<SubtreeKey, Tree> {
        let missing: Vec<(u32, SubtreeKey)> = {
            let inner = self.read();
            top.iter()
                .filter(|(_, k)| inner.subtrees.get(k).is_none_or(|w| w.strong_count() == 0))
                .copied()
                .collect()
        };
        missing
            .into_iter()
            .filter_map(|(index, key)| Some((key, tree.subtree(index)?)))
            .collect()
    }

    /// The live view with id `id` (a subtree view's included).
    pub fn view(&self, id: u32) -> Option<Arc<View>> {
        self.read().by_id.get(&id).and_then(|(_, v)| v.upgrade())
    }

    /// The highest view id handed out (a restarted service goes on above
    /// it, see [`Registry::skip_view_ids_to`]).
    pub fn last_view_id(&self) -> u32 {
        self.read().last_view
    }

    /// Hand out view ids above `id` only: a previous service process may
    /// have handed out every id up to it, which the kernel may still know.
    pub fn skip_view_ids_to(&self, id: u32) {
        let mut inner = self.write();
        inner.last_view = inner.last_view.max(id);
    }

    pub fn get(&self, name: &str) -> Option<Arc<Runtime>> {
        self.read().runtimes.get(name).cloned()
    }

    /// Drop a runtime; its view goes when no other runtime uses it.
    pub fn remove(&self, name: &str) -> Option<Arc<Runtime>> {
        let mut inner = self.write();
        let rt = inner.runtimes.remove(name)?;
        inner.hold(&rt.view, false);
        // Keep the view among the recent ones; forget views nobody uses.
        inner.recent.retain(|v| !Arc::ptr_eq(v, &rt.view));
        if rt.view.edit.is_none() {
            // An editable view is its runtime's alone: never reused.
            inner.recent.push_back(rt.view.clone());
        }
        while inner.recent.len() > RECENT_VIEWS
            || inner.recent.iter().map(|v| v.tree.len()).sum::<usize>() > RECENT_ENTRIES
        {
            inner.recent.pop_front();
        }
        inner.views.retain(|_, v| v.strong_count() > 0);
        inner.by_id.retain(|_, (_, v)| v.strong_count() > 0);
        inner.subtrees.retain(|_, v| v.strong_count() > 0);
        inner.claims.retain(|_, (_, views)| {
            views.retain(|w| w.strong_count() > 0);
            !views.is_empty()
        });
        Some(rt)
    }

    /// Every runtime, sorted by name.
    pub fn list(&self) -> Vec<Arc<Runtime>> {
        let mut v: Vec<_> = self.read().runtimes.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn len(&self) -> usize {
        self.read().runtimes.len()
    }

    /// The entries of the trees that `owner_uid`'s runtimes hold: each
    /// distinct tree once (views of one stack share theirs), the copies of
    /// the subtree views they show included. One pass over the owner's
    /// runtimes, none over a tree.
    pub fn entries_held_by(&self, owner_uid: u32) -> usize {
        let inner = self.read();
        let mut seen = std::collections::HashSet::new();
        let mut entries = 0;
        for rt in inner.runtimes.values().filter(|r| r.owner_uid == owner_uid) {
            let views = std::iter::once(rt.view.as_ref()).chain(rt.view.shares.views());
            for view in views {
                if seen.insert(Arc::as_ptr(&view.tree)) {
                    entries += view.tree.len();
                }
            }
        }
        entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The views alive now: those of runtimes and the recent ones kept.
    pub fn views(&self) -> Vec<Arc<View>> {
        self.read()
            .views
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Subtree views alive now (see [`crate::shared`]).
    pub fn subtree_count(&self) -> usize {
        self.read()
            .subtrees
            .values()
            .filter(|v| v.strong_count() > 0)
            .count()
    }

    /// Views alive now (for tests and status).
    pub fn view_count(&self) -> usize {
        self.read()
            .views
            .values()
            .filter(|v| v.strong_count() > 0)
            .count()
    }
}

/// For the crate's tests: register a runtime `name` of `owner` whose view
/// is `tree`, as the stack `layers`.
#[cfg(test)]
pub(crate) fn register_tree(
    registry: &Registry,
    name: &str,
    owner_uid: u32,
    layers: Vec<Digest>,
    tree: Tree,
) -> Arc<Runtime> {
    register_tree_as(registry, test_spec(name, owner_uid), layers, tree)
}

/// For the crate's tests: a routed, read-only runtime `name` of `owner_uid`
/// with a new view id.
#[cfg(test)]
pub(crate) fn test_spec(name: &str, owner_uid: u32) -> RuntimeSpec {
    RuntimeSpec {
        name: name.into(),
        root_pid: 1,
        owner_uid,
        bound: false,
        edit: None,
        view_id: None,
        shared: None,
        routed: Vec::new(),
    }
}

/// For the crate's tests: register runtime `spec` whose view is `tree`.
#[cfg(test)]
pub(crate) fn register_tree_as(
    registry: &Registry,
    spec: RuntimeSpec,
    layers: Vec<Digest>,
    tree: Tree,
) -> Arc<Runtime> {
    registry
        .register(spec, layers, || {
            Ok::<_, std::io::Error>((tree, SystemTime::UNIX_EPOCH))
        })
        .expect("register a test runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> RuntimeSpec {
        test_spec(name, 0)
    }

    fn ok() -> Result<(Tree, SystemTime), std::io::Error> {
        Ok((Tree::empty(), SystemTime::UNIX_EPOCH))
    }

    #[test]
    fn views_are_shared_kept_recent_and_ids_never_reused() {
        let reg = Registry::default();
        let a = Digest::of(b"a");
        let r1 = reg.register(spec("one"), vec![a], ok).unwrap();
        let r2 = reg
            .register(spec("two"), vec![a], || -> Result<_, std::io::Error> {
                panic!("must reuse the view")
            })
            .unwrap();
        assert!(Arc::ptr_eq(&r1.view, &r2.view));
        assert!(matches!(
            reg.register(spec("one"), vec![], ok),
            Err(RegistryError::Exists(_))
        ));
        let first_id = r1.view.id;
        drop((r1, r2));
        reg.remove("one");
        reg.remove("two");
        // A recent view is reused by the next runtime of the same stack.
        let r3 = reg.register(spec("three"), vec![a], ok).unwrap();
        assert_eq!(r3.view.id, first_id);
        drop(r3);
        reg.remove("three");
        // Once enough other views came and went, it is gone for good, and a
        // new view of the same stack gets a new id.
        for i in 0..RECENT_VIEWS {
            let name = format!("other{i}");
            drop(
                reg.register(spec(&name), vec![Digest::of(name.as_bytes())], ok)
                    .unwrap(),
            );
            reg.remove(&name);
        }
        assert_eq!(reg.view_count(), RECENT_VIEWS);
        let r4 = reg.register(spec("four"), vec![a], ok).unwrap();
        assert_ne!(r4.view.id, first_id, "a new view gets a new id");
    }

    #[test]
    fn views_taken_over_keep_their_ids() {
        let reg = Registry::default();
        let ok = || -> Result<_, std::io::Error> { Ok((Tree::default(), SystemTime::UNIX_EPOCH)) };
        let a = Digest::of(b"a");
        reg.skip_view_ids_to(40);
        let old = reg
            .register(
                RuntimeSpec {
                    view_id: Some(7),
                    shared: None,
                    ..spec("old")
                },
                vec![a],
                ok,
            )
            .unwrap();
        assert_eq!(old.view.id, 7);
        assert!(reg.view(7).is_some());
        // Another runtime of that view takes it over too.
        let again = reg
            .register(
                RuntimeSpec {
                    view_id: Some(7),
                    shared: None,
                    ..spec("again")
                },
                vec![a],
                ok,
            )
            .unwrap();
        assert!(Arc::ptr_eq(&old.view, &again.view));
        // Nobody else's stack gets that id.
        let b = Digest::of(b"b");
        let taken = reg.register(
            RuntimeSpec {
                view_id: Some(7),
                shared: None,
                ..spec("b")
            },
            vec![b],
            ok,
        );
        assert!(matches!(taken, Err(RegistryError::ViewIdTaken(7))));
        // New views go on above what was handed out.
        let new = reg.register(spec("new"), vec![b], ok).unwrap();
        assert_eq!(new.view.id, 41);
    }

    #[test]
    fn entries_held_count_each_tree_of_an_owner_once() {
        let reg = Registry::default();
        let tree = |dirs: usize| {
            let mut b = spfs_model::TreeBuilder::new();
            for i in 0..dirs {
                b.add_dir(format!("d{i}").as_bytes(), 0o755).unwrap();
            }
            b.build().unwrap()
        };
        let built = |t: Tree| move || Ok::<_, std::io::Error>((t, SystemTime::UNIX_EPOCH));
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let mine = |name: &str| RuntimeSpec {
            owner_uid: 1000,
            bound: true,
            ..spec(name)
        };
        let one = reg.register(mine("one"), vec![a], built(tree(3))).unwrap();
        let per_tree = one.view.tree.len();
        assert!(per_tree >= 3);
        assert_eq!(reg.entries_held_by(1000), per_tree);
        // A second runtime of the stack shares the view: nothing more.
        reg.register(mine("two"), vec![a], built(tree(3))).unwrap();
        assert_eq!(reg.entries_held_by(1000), per_tree);
        // Another stack's tree counts; another owner's runtimes do not.
        reg.register(mine("three"), vec![b], built(tree(5)))
            .unwrap();
        let both = reg.entries_held_by(1000);
        assert!(both >= per_tree + 5, "{both}");
        reg.register(spec("root's"), vec![b], built(tree(5)))
            .unwrap();
        assert_eq!(reg.entries_held_by(1000), both);
        reg.remove("three");
        assert_eq!(reg.entries_held_by(1000), per_tree);
    }

    #[test]
    fn owners_never_share_a_view_but_share_its_tree() {
        let reg = Registry::default();
        let a = Digest::of(b"a");
        let mine = reg.register(spec("mine"), vec![a], ok).unwrap();
        let theirs = reg
            .register(
                RuntimeSpec {
                    owner_uid: 1000,
                    ..spec("theirs")
                },
                vec![a],
                || -> Result<_, std::io::Error> { panic!("must reuse the tree") },
            )
            .unwrap();
        assert_ne!(
            mine.view.id, theirs.view.id,
            "node ids of one owner reach another"
        );
        assert!(Arc::ptr_eq(&mine.view.tree, &theirs.view.tree));
        let bound = reg
            .register(
                RuntimeSpec {
                    bound: true,
                    edit: None,
                    ..spec("bound")
                },
                vec![a],
                || -> Result<_, std::io::Error> { panic!("must reuse the tree") },
            )
            .unwrap();
        assert_ne!(mine.view.id, bound.view.id, "bound and routed share nodes");
        assert!(bound.view.bound && !mine.view.bound);
    }
}
