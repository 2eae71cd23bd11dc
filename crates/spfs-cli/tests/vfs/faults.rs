//! Faults: killed clients, a killed service, stale mounts.

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::require_vfs;

fn kill9(pid: u32) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    );
}

#[test]
fn sigkill_of_spfs_run_cleans_up_when_the_tree_exits() {
    require_vfs!();
    let w = World::new();
    w.commit("kill/a", &[("data", b"x")]);
    let d = w.dir.path().display().to_string();
    let mut child = w.spawn_sh("kill/a", &format!("sleep 30 & echo $! > {d}/bg; wait"));
    assert!(wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("{d}/bg")).is_ok_and(|s| s.ends_with('\n'))
    }));
    assert_eq!(w.list().len(), 1);
    kill9(child.id());
    let _ = child.wait();
    // Its background child lives on in the runtime.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        w.list().len(),
        1,
        "view kept while a process of the tree lives"
    );
    let bg: u32 = std::fs::read_to_string(format!("{d}/bg"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    kill9(bg);
    let start = Instant::now();
    assert!(
        wait_for(Duration::from_secs(5), || w.list().is_empty()),
        "view dropped"
    );
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::read_dir(
            w.repo.join("runtimes")
        )
        .unwrap()
        .count()
            == 0),
        "record removed"
    );
    eprintln!("cleanup took {:?}", start.elapsed());
}

/// The whole service gone (its keeper killed: the worker stops with it,
/// and nothing holds the mount's connection): readers get errors at once,
/// never hang, and the next run starts a new service.
#[test]
fn killed_service_gives_errors_not_hangs_and_is_replaced() {
    require_vfs!();
    let w = World::new();
    w.commit("svc/a", &[("data", &vec![b'q'; 1 << 20])]);
    let mnt = w.mnt.display().to_string();
    // A reader that loops on open/read until it fails.
    let mut reader = w.spawn_sh(
        "svc/a",
        &format!("i=0; while cat {mnt}/data > /dev/null && ls {mnt} > /dev/null; do i=$((i+1)); [ $i -lt 200000 ] || exit 3; done; echo failed-after-$i; exit 0"),
    );
    assert!(wait_for(Duration::from_secs(10), || w.list().len() == 1));
    std::thread::sleep(Duration::from_millis(200));
    let (keeper, worker) = (
        w.keeper_pid().expect("keeper"),
        w.service_pid().expect("worker"),
    );
    kill9(keeper);
    let start = Instant::now();
    // The reader must see an error promptly, never hang.
    let done = wait_for(Duration::from_secs(10), || {
        matches!(reader.try_wait(), Ok(Some(_)))
    });
    if !done {
        let _ = reader.kill();
    }
    assert!(done, "reader hung after the service died");
    let out = reader.wait_with_output().unwrap();
    assert!(
        stdout(&out).contains("failed-after-"),
        "{} {}",
        stdout(&out),
        stderr(&out)
    );
    eprintln!("reader failed {:?} after the kill", start.elapsed());
    assert!(
        wait_for(Duration::from_secs(10), || !std::path::Path::new(&format!(
            "/proc/{worker}"
        ))
        .exists()),
        "the worker outlived its keeper"
    );
    // The mount is stale now; the next run starts a fresh service.
    let out = w.run_sh("svc/a", &format!("wc -c < {mnt}/data"));
    ok(&out, "run after service death");
    assert_eq!(stdout(&out).trim(), (1 << 20).to_string());
    assert_ne!(w.keeper_pid(), Some(keeper));
}

#[test]
fn sigterm_stops_the_service_and_unmounts() {
    require_vfs!();
    let w = World::new();
    w.start_service();
    let pid = w.keeper_pid().expect("service");
    assert!(
        spfs_fuse::mounts::mounted_type(&w.mnt).unwrap().is_some(),
        "mounted"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(wait_for(Duration::from_secs(10), || !std::path::Path::new(
        &format!("/proc/{pid}")
    )
    .exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.contains(") Z "))));
    assert!(
        spfs_fuse::mounts::mounted_type(&w.mnt).unwrap().is_none(),
        "unmounted after SIGTERM"
    );
    let log = w.log_text();
    assert!(log.contains("SIGTERM"), "log {}: {log:?}", w.log.display());
}

#[test]
fn reads_work_without_passthrough() {
    require_vfs!();
    let w = World::new();
    let big: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
    w.commit("nopt/a", &[("big", &big), ("small", b"small")]);
    let out = w
        .command(SPFS)
        .env("SPFS_VFS_PASSTHROUGH", "false")
        .env("SPFS_VFS_CACHE_OPENS", "false")
        .args(["run", "nopt/a", "--", "sh", "-c"])
        .arg(format!(
            "cat {0}/small; cmp {0}/big {1}",
            w.mnt.display(),
            w.dir.path().join("src-nopt-a/big").display()
        ))
        .output()
        .unwrap();
    ok(&out, "read without passthrough");
    assert_eq!(stdout(&out), "small");
    assert_eq!(w.status().unwrap()["passthrough"], false);
}

#[test]
fn the_service_reads_no_files_for_callers() {
    require_vfs!();
    let w = World::new();
    w.start_service();
    // A root-only secret, offered as a spec file through a symlink.
    let secret = w.dir.path().join("secret");
    std::fs::write(&secret, "TOP-SECRET").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let link = w.dir.path().join("t.spfs.yaml");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        let listen: spfs_control::Listen = format!("unix:{}", w.sock.display()).parse().unwrap();
        let client = spfs_control::Client::connect(&listen, None).await.unwrap();
        client
            .mount(spfs_control::proto::MountRequest {
                root_pid: std::process::id(),
                spec: link.display().to_string(),
                runtime: String::new(),
                bind: false,
                ..Default::default()
            })
            .await
            .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        !status.message().contains("TOP-SECRET"),
        "{}",
        status.message()
    );
    assert!(w.list().is_empty());
}

#[test]
fn a_second_service_changes_nothing() {
    require_vfs!();
    let w = World::new();
    w.commit("two/a", &[("data", b"first")]);
    let mut child = w.spawn_sh("two/a", "sleep 30");
    assert!(wait_for(Duration::from_secs(10), || w.list().len() == 1));
    // Same mount point, another control socket: refused before touching the mount.
    let other = w.dir.path().join("other.sock");
    let out = w
        .command(SPFS_VFS)
        .args(["service"])
        .env("SPFS_VFS_LISTEN", format!("unix:{}", other.display()))
        .output()
        .unwrap();
    assert!(!out.status.success(), "second service started");
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
    assert_eq!(w.list().len(), 1, "the first service keeps its runtime");
    let out = w.run_sh("two/a", &format!("cat {}/data", w.mnt.display()));
    ok(&out, "first service still serves");
    assert_eq!(stdout(&out), "first");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn idle_clients_and_busy_mounts_do_not_block_stopping() {
    require_vfs!();
    let w = World::new();
    w.commit("busy/a", &[("dir/data", b"x")]);
    // A process whose working directory is inside the mount.
    let mut busy = w.spawn_sh("busy/a", &format!("cd {}/dir && sleep 30", w.mnt.display()));
    assert!(wait_for(Duration::from_secs(10), || w.list().len() == 1));
    // A client that connects and never says anything.
    let _idle = std::os::unix::net::UnixStream::connect(&w.sock).unwrap();
    let start = Instant::now();
    ok(&w.vfs(&["service", "--stop"]), "stop");
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "stopping took {:?}",
        start.elapsed()
    );
    assert!(
        spfs_fuse::mounts::mounted_type(&w.mnt).unwrap().is_none(),
        "busy mount detached, not left stale"
    );
    let _ = busy.kill();
    let _ = busy.wait();
}

/// A service started on demand by `spfs run` is not in the runtime's
/// process tree, session or process group: killing the runtime's whole
/// process group leaves the service, and another runtime, running.
#[test]
fn killing_a_runtimes_process_group_leaves_the_service_running() {
    require_vfs!();
    let w = World::new();
    w.commit("grp/a", &[("data", b"x")]);
    let d = w.dir.path().display().to_string();
    // No service yet: this runtime starts it.
    // In a process group of its own, as a job runner starts a job.
    let mut first = {
        use std::os::unix::process::CommandExt;
        w.command(SPFS)
            .args(["run", "grp/a", "--", "sh", "-c"])
            .arg(format!("echo $$ > {d}/first; exec sleep 30"))
            .process_group(0)
            .spawn()
            .expect("spawn")
    };
    assert!(wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("{d}/first")).is_ok_and(|s| s.ends_with('\n'))
    }));
    let service = w.service_pid().expect("service");
    let first_pid: i32 = std::fs::read_to_string(format!("{d}/first"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stat = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command: state, ppid, pgrp, session.
    let fields = |pid: u32| -> Vec<i64> {
        let s = stat(pid);
        let rest = s
            .rsplit_once(')')
            .map(|(_, r)| r.to_string())
            .unwrap_or_default();
        rest.split_whitespace()
            .skip(1)
            .take(3)
            .filter_map(|f| f.parse().ok())
            .collect()
    };
    let (svc, run) = (fields(service), fields(first_pid as u32));
    assert_ne!(
        svc[0], first_pid as i64,
        "the service is the runtime's child"
    );
    assert_ne!(
        svc[1], run[1],
        "the service is in the runtime's process group"
    );
    assert_ne!(svc[2], run[2], "the service is in the runtime's session");
    let mut second = w.spawn_sh("grp/a", &format!("echo go > {d}/second; exec sleep 30"));
    assert!(wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("{d}/second")).is_ok()
    }));
    // Kill the first runtime's whole process group (never ours).
    assert_ne!(
        run[1],
        rustix::process::getpgrp().as_raw_nonzero().get() as i64
    );
    let _ = rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(run[1] as i32).unwrap(),
        rustix::process::Signal::KILL,
    );
    let _ = first.wait();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(w.service_pid(), Some(service), "the service survived");
    let out = w.run_sh("grp/a", "cat \"$SPFS_VFS_MOUNTPOINT/data\"");
    ok(&out, "a new runtime after the kill");
    assert_eq!(stdout(&out), "x");
    let _ = second.kill();
    let _ = second.wait();
}
