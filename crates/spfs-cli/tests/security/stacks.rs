//! Large stacks: one user's registrations must not cost the service (and so
//! every other user) memory, time or ledger space out of all proportion.
//! A spec repeating a platform of many layers is refused at once, and the
//! trees a user's runtimes hold are bounded (`vfs.max_entries_per_user`).

use std::collections::BTreeMap;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use spfs_model::{Layer, Object, Platform, Tree};
use spfs_storage::FsRepository;

use crate::harness::{SPFS, SPFS_VFS, World, ok, stderr, stdout};
use crate::require_vfs;
use crate::users::TestUser;

/// A process of a test user that roots a runtime, killed when dropped.
struct Sleeper(Child);

impl Sleeper {
    fn new(w: &World, user: &TestUser) -> Sleeper {
        Sleeper(
            user.command(w, "sleep")
                .arg("120")
                .spawn()
                .expect("spawn sleep"),
        )
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `spfs-vfs mount --root-process PID SPEC` as `user`.
fn mount_as(w: &World, user: &TestUser, root: &Sleeper, spec: &str) -> Output {
    user.command(w, SPFS_VFS)
        .args(["mount", "--root-process", &root.pid(), spec])
        .output()
        .expect("spfs-vfs mount")
}

/// `spfs run SPEC -- cat MOUNT/FILE` as `user`.
fn cat_as(w: &World, user: &TestUser, spec: &str, file: &str) -> Output {
    user.command(w, SPFS)
        .args(["run", spec, "--", "cat"])
        .arg(w.path(file))
        .output()
        .expect("spfs run")
}

/// A platform of `n` distinct layers (as a user may write into a shared
/// repository), by its digest.
fn wide_platform(w: &World, n: usize) -> String {
    let repo = FsRepository::open(&w.repo).expect("open the repository");
    let manifest = repo
        .write_object(&Object::Manifest(Tree::empty()))
        .expect("manifest");
    let stack = (0..n)
        .map(|i| {
            let layer = Layer {
                manifest,
                annotations: BTreeMap::from([("n".to_string(), i.to_string())]),
            };
            repo.write_object(&Object::Layer(layer)).expect("layer")
        })
        .collect();
    repo.write_object(&Object::Platform(Platform { stack }))
        .expect("platform")
        .to_string()
}

#[test]
fn a_spec_repeating_a_wide_platform_is_refused_at_once() {
    require_vfs!();
    let w = World::new();
    w.commit("base/a", &[("data", b"healthy")]);
    // Twice the layers a stack may hold, named 1000 times by a short
    // prefix: 2 million layers to copy before the bound was checked.
    let platform = wide_platform(&w, 2 * spfs_storage::resolve::MAX_STACK_LAYERS);
    let spec = vec![&platform[..8]; 1000].join("+");
    w.start_service();
    let worker = w.service_pid();
    let (mallory, bob) = (TestUser::new(), TestUser::new());
    let root = Sleeper::new(&w, &mallory);
    let started = Instant::now();
    let out = mount_as(&w, &mallory, &root, &spec);
    let took = started.elapsed();
    assert!(!out.status.success(), "the amplified spec was registered");
    assert!(
        stderr(&out).contains("limit of 1000 layers"),
        "{}",
        stderr(&out)
    );
    assert!(took < Duration::from_secs(1), "refused only after {took:?}");
    assert!(w.list().is_empty(), "{:?}", w.list());
    // The same worker still serves, and another user's run works.
    assert_eq!(w.service_pid(), worker, "the worker was replaced");
    let out = cat_as(&w, &bob, "base/a", "data");
    ok(&out, "another user's run");
    assert_eq!(stdout(&out), "healthy");
}

#[test]
fn the_entries_of_a_users_runtimes_are_bounded() {
    require_vfs!();
    let w = World::new();
    let files = |tag: &str| -> Vec<(String, Vec<u8>)> {
        (0..30)
            .map(|i| (format!("{tag}{i}"), tag.as_bytes().to_vec()))
            .collect()
    };
    for tag in ["a", "b"] {
        let f = files(tag);
        let refs: Vec<(&str, &[u8])> = f.iter().map(|(p, c)| (p.as_str(), c.as_slice())).collect();
        w.commit(&format!("wide/{tag}"), &refs);
    }
    // Each stack's tree holds about 30 entries: one fits, two do not.
    w.start_service_with(&[("SPFS_VFS_MAX_ENTRIES_PER_USER", "45")]);
    let (mallory, bob) = (TestUser::new(), TestUser::new());
    let roots: Vec<Sleeper> = (0..3).map(|_| Sleeper::new(&w, &mallory)).collect();
    ok(
        &mount_as(&w, &mallory, &roots[0], "wide/a"),
        "a first stack",
    );
    let out = mount_as(&w, &mallory, &roots[1], "wide/b");
    assert!(!out.status.success(), "a second tree past the bound");
    let err = stderr(&out);
    assert!(
        err.contains("vfs.max_entries_per_user") && err.contains("at most 45"),
        "{err}"
    );
    assert_eq!(w.list().len(), 1, "{:?}", w.list());
    // A view shared with the user's own runtime adds nothing.
    ok(
        &mount_as(&w, &mallory, &roots[2], "wide/a"),
        "the same stack again",
    );
    // The bound is per user: another user's runtime is not refused.
    let out = cat_as(&w, &bob, "wide/b", "b0");
    ok(&out, "another user's run");
    assert_eq!(stdout(&out), "b");
}
