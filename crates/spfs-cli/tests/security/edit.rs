//! Editable runtimes of unprivileged users on a shared repository: what a
//! user edits and commits keeps the multi-user rules (a file only its
//! owner may read stays theirs), and nobody else can touch their runtime.

use std::process::Output;

use crate::harness::{SPFS, World, ok, stderr, stdout};
use crate::require_vfs;
use crate::users::TestUser;

fn shared_world() -> World {
    // Routed: users here have no capable spfs-enter.
    let w = World::with_mode(crate::harness::Mode::Router);
    let out = w.spfs(&["init", "repo", "--shared", w.repo.to_str().expect("utf8")]);
    ok(&out, "init --shared");
    w.start_service();
    w
}

/// `spfs ARGS… -- sh -c SCRIPT` as `user`, in the mount point, with `spfs`
/// on the PATH.
fn run_as(w: &World, user: &TestUser, args: &[&str], script: &str) -> Output {
    let bin = std::path::Path::new(SPFS).parent().expect("bin dir");
    user.command(w, SPFS)
        .arg("run")
        .args(args)
        .args(["--", "sh", "-c"])
        .arg(format!("cd \"$SPFS_VFS_MOUNTPOINT\" && {script}"))
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .expect("spfs run")
}

#[test]
fn a_users_private_file_stays_theirs_through_a_commit() {
    require_vfs!();
    let w = shared_world();
    let (alice, bob) = (TestUser::new(), TestUser::new());
    let out = run_as(
        &w,
        &alice,
        &["--edit", "-"],
        "umask 077; echo secret > mine; umask 022; echo shared > ours
         spfs commit layer -t alice/tool > /dev/null && cat mine ours && stat -c '%U %a' mine",
    );
    ok(&out, "alice edits and commits");
    assert_eq!(
        stdout(&out),
        format!("secret\nshared\n{} 600\n", alice.name)
    );
    // Stored as alice's private copy and a public one.
    let private = std::fs::read_dir(w.repo.join("payloads"))
        .expect("payloads")
        .flatten()
        .flat_map(|shard| {
            std::fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|p| {
            p.file_name()
                .to_string_lossy()
                .ends_with(&format!(".u{}", alice.uid))
        })
        .count();
    assert_eq!(private, 1, "one private copy of alice's");
    // A new editable runtime of the layer shows its entries as its owner's:
    // alice reads both; bob only the shared one (the payload is alice's).
    let again = run_as(&w, &alice, &["--edit", "alice/tool"], "cat mine ours");
    ok(&again, "alice reads her layer");
    assert_eq!(stdout(&again), "secret\nshared\n");
    for args in [&["--edit", "alice/tool"][..], &["alice/tool"]] {
        let theirs = run_as(
            &w,
            &bob,
            args,
            "cat ours; cat mine 2>/dev/null || echo refused",
        );
        ok(&theirs, "bob reads alice's layer");
        assert_eq!(stdout(&theirs), "shared\nrefused\n");
    }
    ok(&w.spfs(&["check"]), "check");
}

#[test]
fn another_user_cannot_change_or_resume_a_users_runtime() {
    require_vfs!();
    let w = shared_world();
    let (alice, bob) = (TestUser::new(), TestUser::new());
    let mut live = alice
        .command(&w, SPFS)
        .args([
            "run",
            "--edit",
            "--runtime-name",
            "alices",
            "-",
            "--",
            "sleep",
            "30",
        ])
        .spawn()
        .expect("spawn");
    assert!(crate::harness::wait_for(
        std::time::Duration::from_secs(10),
        || w.spfs(&["runtime", "info", "alices"]).status.success()
    ));
    let mut refused = Vec::new();
    for args in [
        &["commit", "layer", "--runtime", "alices"][..],
        &["edit", "--off", "--runtime", "alices"],
        &["reset", "--runtime", "alices"],
        &["runtime", "rm", "alices"],
    ] {
        let out = bob.command(&w, SPFS).args(args).output().expect("spfs");
        if !out.status.success() {
            refused.push(stderr(&out));
        }
    }
    let _ = live.kill();
    let _ = live.wait();
    assert_eq!(refused.len(), 4, "{refused:?}");
    // A durable runtime of alice's is hers to run again, not bob's.
    let kept = run_as(
        &w,
        &alice,
        &["--keep-runtime", "--runtime-name", "akept", "-"],
        "echo x > f",
    );
    ok(&kept, "durable");
    let out = run_as(&w, &bob, &["--rerun", "akept"], "cat f");
    assert!(!out.status.success(), "{}", stdout(&out));
    let out = run_as(&w, &alice, &["--rerun", "akept"], "cat f");
    ok(&out, "alice resumes");
    assert_eq!(stdout(&out), "x\n");
    // A record bob writes for alice's kept edits gets him nothing: not
    // her edits, not their removal (once her runtime is gone).
    assert!(crate::harness::wait_for(
        std::time::Duration::from_secs(10),
        || w.list().iter().all(|r| r["runtime"] != "akept")
    ));
    let _ = std::fs::remove_file(w.repo.join("runtimes/akept.json"));
    let forged = serde_json::json!({
        "name": "akept", "spec": "-", "layers": [], "root_pid": 1, "owner_uid": bob.uid,
        "created": 0, "mountpoint": w.mnt, "command": ["x"], "editable": true, "keep": true,
    });
    let forged_path = w.repo.join("runtimes/akept.json");
    std::fs::write(&forged_path, forged.to_string()).expect("forged record");
    std::os::unix::fs::chown(&forged_path, Some(bob.uid), Some(bob.gid)).expect("chown");
    let out = run_as(&w, &bob, &["--rerun", "akept"], "cat f");
    assert!(
        !out.status.success(),
        "bob resumed alice's edits: {}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("not user"), "{}", stderr(&out));
    let out = bob
        .command(&w, SPFS)
        .args(["runtime", "rm", "akept"])
        .output()
        .expect("rm");
    assert!(
        w.repo.join("edits/akept").exists(),
        "bob removed alice's edits: {}",
        stderr(&out)
    );
    std::fs::remove_file(&forged_path).expect("unforge");
    let out = w.spfs(&["runtime", "rm", "akept"]);
    ok(&out, "root removes the kept edits");
    assert!(!w.repo.join("edits/akept").exists());
    // Users never reach the upper areas directly.
    let edits = w.repo.join("edits");
    let meta = std::fs::metadata(&edits).expect("edits");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o700
    );
}

/// A record names its runtime by its file: one a user writes naming
/// another user's runtime makes neither the service (at start, after a
/// commit) nor root's `spfs runtime prune` touch that runtime's record or
/// kept edits.
#[test]
fn a_record_naming_another_runtime_touches_nothing_of_it() {
    require_vfs!();
    let w = shared_world();
    let (alice, bob) = (TestUser::new(), TestUser::new());
    let kept = run_as(
        &w,
        &bob,
        &["--keep-runtime", "--runtime-name", "bkeep", "-"],
        "echo bob-work > notes",
    );
    ok(&kept, "bob's durable runtime");
    let mp = w.mnt.display();
    let forged = format!(
        r#"{{"name":"bkeep","spec":"-","layers":[],"root_pid":1,"owner_uid":0,"created":0,"mountpoint":"{mp}","command":["x"],"cgroup":"","bound":false,"editable":false,"keep":false}}"#
    );
    let rec = w.repo.join("runtimes/a-forge.json");
    let out = alice
        .command(&w, "sh")
        .args(["-c", &format!("cat > {}", rec.display())])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .expect("stdin")
                .write_all(forged.as_bytes())?;
            c.wait_with_output()
        })
        .expect("forge");
    ok(&out, "alice writes a record");
    // Alice's own editable runtime renames its record to bob's and commits
    // (the service then rewrites the record it knows by name).
    let out = run_as(
        &w,
        &alice,
        &["--edit", "--runtime-name", "a1", "-"],
        &format!(
            "R={}/runtimes; sed -i 's/\"name\": \"a1\"/\"name\": \"bkeep\"/' $R/a1.json && \
             echo y > f && spfs commit layer > /dev/null",
            w.repo.display()
        ),
    );
    ok(&out, "alice commits");
    ok(&w.vfs(&["service", "--restart"]), "restart");
    ok(&w.spfs(&["runtime", "prune"]), "root prunes");
    let record = w.repo.join("runtimes/bkeep.json");
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(&record).expect("bob's record stays"),
    );
    assert_eq!(owner, bob.uid, "bob's record is still bob's");
    let text = std::fs::read_to_string(&record).expect("record");
    assert!(text.contains("\"keep\": true"), "{text}");
    let out = run_as(&w, &bob, &["--rerun", "bkeep"], "cat notes");
    ok(&out, "bob runs his runtime again");
    assert_eq!(stdout(&out), "bob-work\n");
}
