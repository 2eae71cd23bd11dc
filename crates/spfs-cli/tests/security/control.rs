//! The control plane under hostile input: TCP without or with a wrong
//! token, another user reading the token, oversized messages and specs.

use crate::harness::*;
use crate::require_vfs;
use crate::users::TestUser;

#[test]
fn tcp_needs_the_right_token_which_other_users_cannot_read() {
    require_vfs!();
    let w = World::new();
    w.commit("tcp/sec", &[("data", b"x")]);
    let listen = format!("tcp:127.0.0.1:{}", free_port());
    let token = w.dir.path().join("token");
    let vfs = |args: &[&str], token: &std::path::Path| {
        w.command(SPFS_VFS)
            .args(args)
            .env("SPFS_VFS_LISTEN", &listen)
            .env("SPFS_VFS_TOKEN_FILE", token)
            .output()
            .expect("spfs-vfs")
    };
    let mut service = w
        .command(SPFS_VFS)
        .arg("service")
        .env("SPFS_VFS_LISTEN", &listen)
        .env("SPFS_VFS_TOKEN_FILE", &token)
        .stderr(std::fs::File::create(&w.log).expect("log"))
        .spawn()
        .expect("service");
    assert!(wait_for(std::time::Duration::from_secs(15), || vfs(
        &["status"],
        &token
    )
    .status
    .success()));
    // Without a token file, with an empty one, with a wrong one.
    let missing = w.dir.path().join("no-such-token");
    let wrong = w.dir.path().join("wrong-token");
    std::fs::write(&wrong, "0123456789abcdef0123456789abcdef\n").expect("write");
    let empty = w.dir.path().join("empty-token");
    std::fs::write(&empty, "\n").expect("write");
    for (t, what) in [
        (&missing, "no token"),
        (&empty, "an empty token"),
        (&wrong, "a wrong token"),
    ] {
        let out = vfs(&["list"], t);
        assert!(!out.status.success(), "{what} was accepted");
        let err = stderr(&out).to_lowercase();
        assert!(
            err.contains("token") || err.contains("unauthenticated"),
            "{what}: {err}"
        );
        let out = vfs(&["mount", "--root-process", "1", "tcp/sec"], t);
        assert!(!out.status.success(), "{what} registered a view");
    }
    // Another user cannot read the token.
    let other = TestUser::new();
    let out = other.command(&w, "cat").arg(&token).output().expect("cat");
    assert!(!out.status.success(), "another user read the token");
    assert!(w.list().is_empty());
    let out = vfs(&["service", "--stop"], &token);
    ok(&out, "stop");
    let _ = service.wait();
}

#[test]
fn oversized_messages_and_specs_are_refused_and_the_service_lives_on() {
    require_vfs!();
    let w = World::new();
    w.commit("big/a", &[("data", b"x")]);
    w.start_service();
    let me = std::process::id().to_string();
    // A message over the control plane's bound is refused before decoding
    // (a spec file of 40,000 references: the client sends them expanded).
    let file = w.dir.path().join("huge.spfs.yaml");
    let yaml = format!("layers:\n{}", "  - big/a\n".repeat(40_000));
    std::fs::write(&file, yaml).expect("spec file");
    let out = w.vfs(&["mount", "--root-process", &me, file.to_str().expect("utf8")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("message length too large")
            || stderr(&out).to_lowercase().contains("too large"),
        "{}",
        stderr(&out)
    );
    // A spec over 64 KiB, and one naming over 1000 references.
    let long = vec!["big/a"; 12_000].join("+");
    let out = w.vfs(&["mount", "--root-process", &me, &long]);
    assert!(stderr(&out).contains("at most 65536"), "{}", stderr(&out));
    let many = vec!["big/a"; 1001].join("+");
    let out = w.vfs(&["mount", "--root-process", &me, &many]);
    assert!(
        stderr(&out).contains("at most 1000 are accepted"),
        "{}",
        stderr(&out)
    );
    assert!(w.list().is_empty());
    // The service still answers and still registers.
    let out = w.run_sh("big/a", &format!("cat {}/data", w.mnt.display()));
    ok(&out, "run after the oversized requests");
    assert_eq!(stdout(&out), "x");
}

/// Only root restarts or stops the service; a user's attempts change
/// nothing, and a user cannot pose as the keeper's worker.
#[test]
fn users_cannot_restart_or_stop_the_service_or_pose_as_its_worker() {
    require_vfs!();
    let w = World::new();
    w.start_service();
    let (worker, keeper) = (
        w.service_pid().expect("worker"),
        w.keeper_pid().expect("keeper"),
    );
    let user = TestUser::new();
    let out = user
        .command(&w, SPFS_VFS)
        .args(["service", "--restart"])
        .output()
        .expect("restart");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("only root may restart"),
        "{}",
        stderr(&out)
    );
    let out = user
        .command(&w, SPFS_VFS)
        .args(["service", "--stop"])
        .output()
        .expect("stop");
    assert!(!out.status.success(), "{}", stdout(&out));
    // A worker's environment from a process that is not its keeper.
    let out = user
        .command(&w, SPFS_VFS)
        .args(["service", "--worker"])
        .env(
            "SPFS_VFS_WORKER",
            format!("takeover=1,keeper={keeper},listen=unix:/tmp/x.sock"),
        )
        .output()
        .expect("worker");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("started by its keeper"),
        "{}",
        stderr(&out)
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(w.service_pid(), Some(worker), "the worker changed");
    assert_eq!(w.keeper_pid(), Some(keeper));
}
