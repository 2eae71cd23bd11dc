//! `spfs run`, `spfs runtime`, and the control commands of `spfs-vfs`.

use std::time::Duration;

use crate::harness::*;
use crate::require_vfs;

#[test]
fn run_returns_exit_code_sets_runtime_and_cleans_up() {
    require_vfs!();
    let w = World::new();
    w.commit("run/a", &[("data", b"x")]);
    let out = w.run_sh("run/a", "echo \"rt=$SPFS_RUNTIME\"; exit 7");
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let name = stdout(&out).trim().trim_start_matches("rt=").to_string();
    assert!(name.starts_with("rt-"), "{name}");
    assert!(
        wait_for(Duration::from_secs(5), || w.list().is_empty()),
        "view dropped"
    );
    assert!(
        wait_for(Duration::from_secs(5), || w
            .spfs(&["runtime", "info", &name])
            .status
            .code()
            != Some(0)),
        "record removed"
    );
    // The empty environment works too.
    let out = w.run_sh("-", &format!("ls -A {}", w.mnt.display()));
    ok(&out, "empty env");
    assert_eq!(stdout(&out), "");
}

#[test]
fn runtime_records_and_control_commands() {
    require_vfs!();
    let w = World::new();
    w.commit("ctl/a", &[("data", b"x")]);
    let mut child = w.spawn_sh("ctl/a", "sleep 30");
    assert!(wait_for(Duration::from_secs(10), || w.list().len() == 1));
    let info = &w.list()[0];
    let name = info["runtime"].as_str().unwrap().to_string();
    assert_eq!(
        info["root_pid"].as_u64(),
        Some(child.id() as u64),
        "spfs run's process roots the tree"
    );
    // `spfs run` writes the record just after the view is registered.
    assert!(wait_for(Duration::from_secs(10), || {
        w.spfs(&["runtime", "info", &name]).status.success()
    }));
    let ls = w.spfs(&["runtime", "ls", "--json"]);
    ok(&ls, "runtime ls");
    let records: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(records[0]["name"], name.as_str());
    assert_eq!(records[0]["spec"], "ctl/a");
    ok(&w.spfs(&["runtime", "info", &name]), "runtime info");
    let status = w.status().unwrap();
    assert_eq!(status["runtimes"], 1);
    assert_eq!(status["mountpoint"], w.mnt.display().to_string());
    // Unmount by root pid: the process keeps running but sees an empty root,
    // and the record goes with the view.
    ok(
        &w.vfs(&["unmount", "--root-process", &child.id().to_string()]),
        "unmount",
    );
    assert!(w.list().is_empty());
    assert_ne!(w.spfs(&["runtime", "info", &name]).status.code(), Some(0));
    let out = w.spfs(&["runtime", "rm", &name]);
    assert!(
        stderr(&out).contains(&name) && !out.status.success(),
        "{}",
        stderr(&out)
    );
    let _ = child.kill();
    let _ = child.wait();
    // `spfs runtime rm` drops a live runtime's view and its record.
    let mut child = w.spawn_sh("ctl/a", "sleep 30");
    assert!(wait_for(Duration::from_secs(10), || w.list().len() == 1));
    let name = w.list()[0]["runtime"].as_str().unwrap().to_string();
    // `spfs run` writes the record just after the view is registered.
    assert!(wait_for(Duration::from_secs(10), || {
        w.spfs(&["runtime", "info", &name]).status.success()
    }));
    ok(&w.spfs(&["runtime", "rm", &name]), "runtime rm");
    assert!(w.list().is_empty());
    assert_ne!(w.spfs(&["runtime", "info", &name]).status.code(), Some(0));
    let _ = child.kill();
    let _ = child.wait();
    // Stopping the service unmounts.
    ok(&w.vfs(&["service", "--stop"]), "stop");
    assert!(
        spfs_fuse::mounts::mounted_type(&w.mnt).unwrap().is_none(),
        "unmounted"
    );
}

#[test]
fn mount_registers_an_existing_process_tree() {
    require_vfs!();
    let w = World::new();
    w.commit("mnt/a", &[("data", b"mounted")]);
    let d = w.dir.path().display().to_string();
    let mnt = w.mnt.display().to_string();
    // A process that waits for a go file, then reads the mount.
    let child = w
        .command("sh")
        .args([
            "-c",
            &format!("while [ ! -e {d}/go ]; do sleep 0.02; done; cat {mnt}/data"),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = w.vfs(&["mount", "--root-process", &child.id().to_string(), "mnt/a"]);
    ok(&out, "spfs-vfs mount");
    std::fs::write(format!("{d}/go"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "mounted");
}

#[test]
fn bad_specs_fail_cleanly() {
    require_vfs!();
    let w = World::new();
    for (spec, word) in [
        ("no/such-tag", "no/such-tag"),
        ("a++b", "a++b"),
        ("ZZZZZZZZ", "ZZZZZZZZ"),
    ] {
        let out = w.run_sh(spec, "true");
        assert_ne!(out.status.code(), Some(0), "{spec}");
        let err = stderr(&out);
        assert!(
            err.contains(word) && err.lines().count() == 1,
            "{spec}: {err}"
        );
    }
    assert!(
        std::fs::read_dir(w.repo.join("runtimes"))
            .unwrap()
            .next()
            .is_none(),
        "no record left"
    );
    let out = w.vfs(&["mount", "--root-process", "999999999", "-"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("999999999"), "{}", stderr(&out));
}

#[test]
fn concurrent_clients_start_one_service() {
    require_vfs!();
    let w = World::new();
    w.commit("race/a", &[("data", b"race")]);
    let mnt = w.mnt.display().to_string();
    let kids: Vec<_> = (0..4)
        .map(|_| w.spawn_sh("race/a", &format!("cat {mnt}/data")))
        .collect();
    for k in kids {
        let out = k.wait_with_output().unwrap();
        ok(&out, "racing run");
        assert_eq!(stdout(&out), "race");
    }
    let services = std::process::Command::new("pgrep")
        .args(["-f", &format!("{SPFS_VFS} service")])
        .output()
        .unwrap();
    let pids: Vec<_> = stdout(&services).lines().map(str::to_string).collect();
    // Only one service may be alive for this world (others exited at bind).
    let ours: Vec<_> = pids
        .iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ"))
                .map(|e| String::from_utf8_lossy(&e).contains(&w.sock.display().to_string()))
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(ours.len(), 1, "services: {ours:?}");
}

#[test]
fn non_root_caller_cannot_register_a_root_process() {
    require_vfs!();
    let w = World::new();
    w.commit("auth/a", &[("data", b"x")]);
    w.start_service();
    let mut root_proc = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    // `nobody` asks the service to register a view for process `pid`.
    let mount_as_nobody = |pid: u32| {
        w.command("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                SPFS_VFS,
                "mount",
                "--root-process",
            ])
            .arg(pid.to_string())
            .arg("auth/a")
            .output()
            .unwrap()
    };
    let out = mount_as_nobody(root_proc.id());
    assert_ne!(
        out.status.code(),
        Some(0),
        "nobody registered a view for root's process"
    );
    assert!(stderr(&out).contains("may not"), "{}", stderr(&out));
    assert!(w.list().is_empty());
    // The same user may register its own process.
    // `sleep 30` with the user ids that setpriv ARGS give it.
    let sleeper = |ids: &[&str]| {
        let child = w
            .command("setpriv")
            .args(ids)
            .args(["--clear-groups", "sleep", "30"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        child
    };
    let mut own = sleeper(&["--reuid=65534", "--regid=65534"]);
    let out = mount_as_nobody(own.id());
    ok(&out, "own process");
    // A process that is only partly nobody's (a setuid program it started:
    // real uid nobody, effective uid root) is not nobody's to manage.
    let mut setuid_like = sleeper(&["--ruid=65534", "--rgid=65534"]);
    let out = mount_as_nobody(setuid_like.id());
    assert!(
        !out.status.success() && stderr(&out).contains("may not"),
        "{}",
        stderr(&out)
    );
    let _ = setuid_like.kill();
    let _ = setuid_like.wait();
    let out = mount_as_nobody(own.id());
    assert!(stderr(&out).contains("already roots"), "{}", stderr(&out));
    for c in [&mut root_proc, &mut own] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn loopback_tcp_control_needs_the_token() {
    require_vfs!();
    let w = World::new();
    w.commit("tcp/a", &[("data", b"over-tcp")]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("tcp:127.0.0.1:{port}");
    let run = |args: &[&str], token: &std::path::Path| {
        w.command(SPFS)
            .args(args)
            .env("SPFS_VFS_LISTEN", &listen)
            .env("SPFS_VFS_TOKEN_FILE", token)
            .output()
            .unwrap()
    };
    let token = w.dir.path().join("token");
    let out = run(
        &[
            "run",
            "tcp/a",
            "--",
            "cat",
            &w.path("data").display().to_string(),
        ],
        &token,
    );
    ok(&out, "run over tcp");
    assert_eq!(stdout(&out), "over-tcp");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token).unwrap().permissions().mode() & 0o777,
        0o600,
        "token readable only by the service's user"
    );
    let wrong = w.dir.path().join("wrong-token");
    std::fs::write(&wrong, "0123456789abcdef0123456789abcdef").unwrap();
    let out = run(&["vfs", "list"], &wrong);
    assert!(!out.status.success(), "a wrong token is refused");
    assert!(
        stderr(&out).to_lowercase().contains("token") || stderr(&out).contains("nauthenticated"),
        "{}",
        stderr(&out)
    );
    // A second service fails on the lock and leaves the token alone.
    let out = w
        .command(SPFS_VFS)
        .arg("service")
        .env("SPFS_VFS_LISTEN", &listen)
        .env("SPFS_VFS_TOKEN_FILE", &token)
        .output()
        .unwrap();
    assert!(!out.status.success());
    ok(&run(&["vfs", "list"], &token), "token still valid");
    ok(&run(&["vfs", "service", "--stop"], &token), "stop over tcp");
}

#[test]
fn spfs_shell_and_spfs_vfs_passthrough_command() {
    require_vfs!();
    let w = World::new();
    w.commit("sh/a", &[("data", b"in-shell")]);
    let mut child = w
        .command(SPFS)
        .args(["shell", "sh/a"])
        .env("SHELL", "/bin/sh")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            format!(
                "cat {}; echo; echo $SPFS_RUNTIME\n",
                w.path("data").display()
            )
            .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    ok(&out, "shell");
    assert!(
        stdout(&out).starts_with("in-shell\nrt-"),
        "{}",
        stdout(&out)
    );
    // `spfs vfs …` runs `spfs-vfs …`.
    let out = w.spfs(&["vfs", "status", "--json"]);
    ok(&out, "spfs vfs status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mountpoint"], w.mnt.display().to_string());
    let out = w.spfs(&["no-such-command"]);
    assert!(
        !out.status.success() && stderr(&out).contains("no-such-command"),
        "{}",
        stderr(&out)
    );
}
