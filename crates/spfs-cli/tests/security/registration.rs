//! Registering a process tree's view: whose processes a user may bind, where
//! the service moves them (never out of their cgroup), PID reuse during a
//! registration, runtime names and records, and routing that follows a move.

use std::path::PathBuf;
use std::time::Duration;

use crate::harness::*;
use crate::require_vfs;
use crate::users::TestUser;

/// A cgroup for one test, beside the world's, removed when dropped (its
/// processes killed first).
struct TestCgroup {
    dir: PathBuf,
    rel: String,
}

impl TestCgroup {
    fn new(tag: &str) -> TestCgroup {
        let mount = spfs_fuse::cgroup::cgroup2_mount().expect("cgroup2");
        let name = format!("spfs-sec-{tag}-{}", std::process::id());
        let dir = mount.join(&name);
        let _ = std::fs::create_dir(&dir);
        TestCgroup {
            dir,
            rel: format!("/{name}"),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.file("cgroup.freeze"), "0");
        let _ = std::fs::write(self.file("cgroup.kill"), "1");
        let _ = wait_for(Duration::from_secs(5), || {
            let mut dirs = vec![self.dir.clone()];
            let mut all = Vec::new();
            while let Some(d) = dirs.pop() {
                if let Ok(rd) = std::fs::read_dir(&d) {
                    for e in rd.flatten() {
                        if e.path().is_dir() {
                            dirs.push(e.path());
                        }
                    }
                }
                all.push(d);
            }
            // Deepest first.
            all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            all.iter().all(|d| std::fs::remove_dir(d).is_ok())
        });
    }
}

fn cgroup_of(pid: u32) -> String {
    spfs_fuse::route::cgroup_of(pid).unwrap_or_default()
}

#[test]
fn a_pid_reused_during_registration_is_never_moved() {
    require_vfs!();
    let w = World::new();
    w.commit("race/a", &[("data", b"view-a")]);
    let user = TestUser::new();
    let d = w.dir.path().join("race");
    std::fs::create_dir_all(&d).unwrap();
    let d = d.display().to_string();
    // In a private PID namespace this test decides which PID the next
    // process gets (ns_last_pid). The service waits 1.5 s between its
    // checks and the move; meanwhile the user's process dies and a root
    // process takes its PID.
    let script = format!(
        r#"
set -u
SPFS_VFS_TEST_REGISTER_DELAY_MS=1500 "$SPFS_VFS" service >/dev/null 2>&1 &
i=0; until "$SPFS_VFS" status >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 500 ] || exit 90; sleep 0.02; done
setpriv --reuid={uid} --regid={gid} --clear-groups sleep 60 &
victim=$!
echo $victim > {d}/victim_pid
setpriv --reuid={uid} --regid={gid} --clear-groups "$SPFS_VFS" mount --root-process $victim race/a > {d}/mount_out 2>&1 &
mounter=$!
sleep 0.5
kill -KILL $victim; wait $victim
cat /proc/self/cgroup | sed -n 's/^0:://p' > {d}/before
try=0
while [ $try -lt 20 ]; do
  echo $((victim-1)) > /proc/sys/kernel/ns_last_pid
  sleep 60 &
  stranger=$!
  [ $stranger = $victim ] && break
  kill $stranger; wait $stranger 2>/dev/null
  try=$((try+1))
done
echo $stranger > {d}/stranger_pid
wait $mounter; echo $? > {d}/mount_rc
sed -n 's/^0:://p' /proc/$stranger/cgroup > {d}/after
"$SPFS_VFS" list > {d}/list
kill $stranger
"$SPFS_VFS" service --stop >/dev/null
"#,
        uid = user.uid,
        gid = user.gid,
    );
    let out = w
        .command("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c", &script])
        .env("SPFS", SPFS)
        .env("SPFS_VFS", SPFS_VFS)
        .output()
        .unwrap();
    ok(&out, "pid namespace script");
    let read = |f: &str| {
        std::fs::read_to_string(format!("{d}/{f}"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    assert_eq!(
        read("stranger_pid"),
        read("victim_pid"),
        "the root process did not get the recycled PID"
    );
    assert_ne!(
        read("mount_rc"),
        "0",
        "registration succeeded: {}",
        read("mount_out")
    );
    assert!(
        read("mount_out").contains("exited"),
        "{}",
        read("mount_out")
    );
    assert_eq!(
        read("after"),
        read("before"),
        "the root process that reused the PID was moved"
    );
    assert!(!read("list").contains("rt-"), "{}", read("list"));
}

#[test]
fn a_runtime_cgroup_nests_in_the_callers_and_its_limits_apply() {
    require_vfs!();
    let w = World::new();
    w.commit("nest/a", &[("data", b"nested")]);
    let job = TestCgroup::new("job");
    let mnt = w.mnt.display().to_string();
    // A job in its own cgroup (as under Slurm or systemd) runs `spfs run`.
    let mut child = w
        .command("sh")
        .args([
            "-c",
            &format!(
                "echo $$ > {}/cgroup.procs && exec {SPFS} run nest/a -- sh -c 'cat {mnt}/data; echo; sed -n s/^0:://p /proc/self/cgroup; exec sleep 30'",
                job.dir.display()
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let data = lines.next().unwrap().unwrap();
    let cgroup = lines.next().unwrap().unwrap();
    assert_eq!(data, "nested");
    assert!(
        cgroup.starts_with(&format!("{}/spfs-rt-", job.rel)),
        "the runtime's cgroup {cgroup} is not inside the job's {}",
        job.rel
    );
    let runtime_events = spfs_fuse::cgroup::cgroup_dir(&cgroup)
        .unwrap()
        .join("cgroup.events");
    // Freezing the job freezes the runtime.
    std::fs::write(job.file("cgroup.freeze"), "1").unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::read_to_string(
            &runtime_events
        )
        .unwrap_or_default()
        .contains("frozen 1")),
        "the runtime was not frozen with its job"
    );
    std::fs::write(job.file("cgroup.freeze"), "0").unwrap();
    // Killing the job kills the runtime, and the service cleans up.
    std::fs::write(job.file("cgroup.kill"), "1").unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(
        wait_for(Duration::from_secs(5), || w.list().is_empty()
            && !runtime_events.exists()),
        "runtime not dropped: {:?}",
        w.list()
    );
}

#[test]
fn a_job_that_may_not_have_child_cgroups_cannot_run_rather_than_escape() {
    require_vfs!();
    let w = World::new();
    w.commit("nest/b", &[("data", b"x")]);
    let job = TestCgroup::new("nochild");
    std::fs::write(job.file("cgroup.max.descendants"), "0").unwrap();
    let out = w
        .command("sh")
        .args([
            "-c",
            &format!(
                "echo $$ > {}/cgroup.procs && exec {SPFS} run nest/b -- true",
                job.dir.display()
            ),
        ])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("cannot create the runtime's cgroup") && err.lines().count() == 1,
        "{err}"
    );
    assert!(w.list().is_empty());
    assert_eq!(
        std::fs::read_dir(w.repo.join("runtimes")).unwrap().count(),
        0,
        "no record left"
    );
}

#[test]
fn users_may_not_register_processes_that_are_not_wholly_theirs() {
    require_vfs!();
    let w = World::new();
    w.commit("who/a", &[("data", b"x")]);
    w.start_service();
    let (a, b) = (TestUser::new(), TestUser::new());
    let mut roots = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let mut bs = b.command(&w, "sleep").arg("30").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let service = w.service_pid().unwrap();
    let keeper = w.keeper_pid().unwrap();
    let mount_as_a = |pid: u32| {
        a.command(&w, SPFS_VFS)
            .args(["mount", "--root-process", &pid.to_string(), "who/a"])
            .output()
            .unwrap()
    };
    for (pid, what) in [
        (roots.id(), "root's process"),
        (bs.id(), "another user's process"),
        (1, "PID 1"),
        (service, "the service"),
        (keeper, "the service's keeper"),
    ] {
        let before = cgroup_of(pid);
        let out = mount_as_a(pid);
        assert_ne!(out.status.code(), Some(0), "A registered {what}");
        assert!(stderr(&out).contains("may not"), "{what}: {}", stderr(&out));
        assert_eq!(cgroup_of(pid), before, "{what} was moved");
    }
    // Not even root may make the service a runtime's root.
    let out = w.vfs(&["mount", "--root-process", &service.to_string(), "who/a"]);
    assert!(
        stderr(&out).contains("the VFS service itself"),
        "{}",
        stderr(&out)
    );
    assert!(w.list().is_empty());
    for c in [&mut roots, &mut bs] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn one_user_is_limited_to_512_runtimes_and_the_service_stays_healthy() {
    require_vfs!();
    let w = World::new();
    w.commit("many/a", &[("data", b"x")]);
    w.start_service();
    let a = TestUser::new();
    // One shell of A's starts 600 sleepers and registers each of them.
    let script = format!(
        r#"i=0; ok=0; refused=0
while [ $i -lt 600 ]; do
  sleep 120 >/dev/null 2>&1 &
  if "{SPFS_VFS}" mount --root-process $! many/a >/dev/null 2>{d}/err; then ok=$((ok+1)); else refused=$((refused+1)); fi
  i=$((i+1))
done
echo "$ok $refused"; tail -n 1 {d}/err"#,
        d = w.dir.path().display()
    );
    std::fs::set_permissions(
        w.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = a.command(&w, "sh").args(["-c", &script]).output().unwrap();
    ok(&out, "600 registrations");
    let text = stdout(&out);
    assert!(text.starts_with("512 88"), "{text}");
    assert!(text.contains("already has 512 runtimes"), "{text}");
    assert!(w.status().is_some(), "the service stopped answering");
    // Everything goes when A's processes do.
    let _ = std::process::Command::new("pkill")
        .args(["-KILL", "-u", &a.uid.to_string()])
        .status();
    assert!(
        wait_for(Duration::from_secs(20), || w.list().is_empty()),
        "{} runtimes left",
        w.list().len()
    );
}

#[test]
fn routing_follows_a_process_moved_to_another_cgroup() {
    require_vfs!();
    let w = World::new();
    w.commit("move/a", &[("data", b"inside")]);
    let elsewhere = TestCgroup::new("elsewhere");
    let mnt = w.mnt.display().to_string();
    // The shell reads with builtins, so the same thread asks before and
    // after root inside the runtime moves it out of the runtime's cgroup.
    let out = w.run_sh(
        "move/a",
        &format!(
            "read a < {mnt}/data; echo $a; echo $$ > {}/cgroup.procs; if read b < {mnt}/data; then echo $b; else echo gone; fi",
            elsewhere.dir.display()
        ),
    );
    ok(&out, "run");
    assert_eq!(stdout(&out), "inside\ngone\n");
}

#[test]
fn runtime_names_and_records_of_others_are_left_alone() {
    require_vfs!();
    let w = World::new();
    w.commit("names/a", &[("data", b"x")]);
    w.start_service();
    let a = TestUser::new();
    // A record of root's (of a runtime this service does not know).
    let victim = w.repo.join("runtimes/victim.json");
    std::fs::create_dir_all(victim.parent().unwrap()).unwrap();
    let record = serde_json::json!({
        "name": "victim", "spec": "names/a", "layers": [], "root_pid": 1,
        "owner_uid": 0, "created": 0, "mountpoint": w.mnt, "command": ["secret-arg"],
    });
    std::fs::write(&victim, record.to_string()).unwrap();
    let mut own = a.command(&w, "sleep").arg("30").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let out = a
        .command(&w, SPFS_VFS)
        .args(["mount", "--runtime", "victim", "--root-process"])
        .arg(own.id().to_string())
        .arg("names/a")
        .output()
        .unwrap();
    assert!(stderr(&out).contains("is taken"), "{}", stderr(&out));
    let _ = own.kill();
    let _ = own.wait();
    assert!(victim.exists(), "another user's record was removed");
    // A user lists only their own runtimes; root's are not shown.
    let out = a
        .command(&w, SPFS)
        .args(["runtime", "ls", "--json"])
        .output()
        .unwrap();
    ok(&out, "runtime ls");
    assert!(!stdout(&out).contains("secret-arg"), "{}", stdout(&out));
    let out = a
        .command(&w, SPFS)
        .args(["runtime", "info", "victim"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(!stdout(&out).contains("secret-arg"));
}

#[test]
fn killing_spfs_run_during_registration_leaves_no_record() {
    require_vfs!();
    let w = World::new();
    w.commit("kill/a", &[("data", b"x")]);
    // Start a service that takes 1 s over each registration.
    w.start_service_with(&[("SPFS_VFS_TEST_REGISTER_DELAY_MS", "1000")]);
    let mut run = w
        .command(SPFS)
        .args(["run", "kill/a", "--", "sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _ = run.kill();
    let _ = run.wait();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(w.list().is_empty(), "{:?}", w.list());
    let records: Vec<_> = std::fs::read_dir(w.repo.join("runtimes"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(records.is_empty(), "records left: {records:?}");
}

#[test]
fn a_user_runs_from_a_repository_they_may_only_read() {
    require_vfs!();
    let w = World::new();
    w.commit("ro/a", &[("data", b"readable")]);
    w.start_service();
    let a = TestUser::new();
    let mnt = w.mnt.display().to_string();
    let out = a
        .command(&w, SPFS)
        .args(["run", "ro/a", "--", "cat", &format!("{mnt}/data")])
        .output()
        .unwrap();
    ok(&out, "spfs run as a user of root's private repository");
    assert_eq!(stdout(&out), "readable");
    assert!(
        stderr(&out).contains("without a record"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_process_that_never_stops_cannot_hang_the_service() {
    require_vfs!();
    let w = World::new();
    w.commit("stuck/a", &[("data", b"x")]);
    w.start_service();
    let a = TestUser::new();
    // A parent in vfork's wait (its child never execs) does not stop for a
    // tracer: letting go of it after the move must not wait for it.
    let src = w.dir.path().join("vf.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\n#include <unistd.h>\nint main(void){printf(\"%d\\n\",(int)getpid());fflush(stdout);if(vfork()==0){for(;;)pause();}return 0;}\n",
    )
    .unwrap();
    let bin = w.dir.path().join("vf");
    let out = std::process::Command::new("cc")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("cc");
    ok(&out, "cc");
    let mut holders = Vec::new();
    for _ in 0..3 {
        let mut h = a
            .command(&w, bin.to_str().unwrap())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(h.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        holders.push((h, line.trim().to_string()));
    }
    let started = std::time::Instant::now();
    let clients: Vec<_> = holders
        .iter()
        .map(|(_, pid)| {
            a.command(&w, SPFS_VFS)
                .args(["mount", "--root-process", pid, "stuck/a"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in clients {
        let ok = wait_for(Duration::from_secs(20), || {
            matches!(c.try_wait(), Ok(Some(_)))
        });
        assert!(ok, "a registration hung");
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(w.status().is_some(), "the service stopped answering");
    for (_, pid) in &holders {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(
            status.contains("TracerPid:\t0"),
            "process {pid} is still traced"
        );
    }
    let out = w.vfs(&["service", "--stop"]);
    ok(&out, "stop with the holders alive");
    for (mut h, _) in holders {
        let _ = h.kill();
        let _ = h.wait();
    }
}

#[test]
fn a_runtime_record_belongs_to_whoever_wrote_it() {
    require_vfs!();
    let w = World::new();
    let out = w.spfs(&["init", "repo", "--shared", w.repo.to_str().unwrap()]);
    ok(&out, "init --shared");
    let (a, b) = (TestUser::new(), TestUser::new());
    // B writes a record that claims to be A's.
    let forged = serde_json::json!({
        "name": "rt-forged", "spec": "-", "layers": [], "root_pid": 1,
        "owner_uid": a.uid, "created": 0, "mountpoint": w.mnt, "command": ["rm", "-rf", "/"],
    });
    let path = w.repo.join("runtimes/rt-forged.json");
    let out = b
        .command(&w, "sh")
        .args(["-c", &format!("cat > {}", path.display())])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(forged.to_string().as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    ok(&out, "B writes a record");
    let out = a
        .command(&w, SPFS)
        .args(["runtime", "ls", "--json"])
        .output()
        .unwrap();
    ok(&out, "A lists");
    assert!(!stdout(&out).contains("rt-forged"), "{}", stdout(&out));
    let out = w.spfs(&["runtime", "info", "rt-forged", "--json"]);
    ok(&out, "root reads it");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["owner_uid"], b.uid, "the record is B's");
}

/// One user holding the repository's garbage-collection lock as hard as
/// they can, while flooding the service with registrations, holds off
/// neither another user's `spfs run` nor root's `spfs-vfs status`.
#[test]
fn a_user_cannot_hold_off_others_registrations_or_the_control_plane() {
    require_vfs!();
    let w = World::with_mode(Mode::Router);
    ok(
        &w.spfs(&["init", "repo", "--shared", w.repo.to_str().expect("utf8")]),
        "init --shared",
    );
    w.commit("hold/a", &[("data", b"x")]);
    w.start_service();
    std::fs::set_permissions(
        w.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let (alice, bob) = (crate::users::TestUser::new(), crate::users::TestUser::new());
    let d = w.dir.path().display().to_string();
    // Alice takes locks/gc every way a reader of it can: flock, and an
    // exclusive open file description lock (what spfs uses).
    let holder = format!(
        r#"
import fcntl, os, struct, sys, time
fd = os.open("{repo}/locks/gc", os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
try:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0))
    print("exclusive", flush=True)
except OSError as e:
    print("refused", e.errno, flush=True)
open("{d}/held", "w").close()
time.sleep(90)
"#,
        repo = w.repo.display()
    );
    let mut held = alice
        .command(&w, "/usr/bin/python3")
        .args(["-c", &holder])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("holder");
    let held_path = format!("{d}/held");
    if !wait_for(Duration::from_secs(20), || {
        std::path::Path::new(&held_path).exists()
    }) {
        let _ = held.kill();
        let out = held.wait_with_output().expect("holder");
        panic!("the holder never held: {}{}", stdout(&out), stderr(&out));
    }
    // And floods: 40 registrations of her own processes and 200 of PID 1,
    // all at once.
    let flood = format!(
        r#"for i in $(seq 40); do sleep 100 & timeout 60 "{SPFS_VFS}" mount --root-process $! hold/a >/dev/null 2>>{d}/flood.err & done
for i in $(seq 200); do timeout 60 "{SPFS_VFS}" mount --root-process 1 hold/a >/dev/null 2>>{d}/flood.err & done
wait"#
    );
    let mut flooding = alice
        .command(&w, "sh")
        .args(["-c", &flood])
        .spawn()
        .expect("flood");
    std::thread::sleep(Duration::from_secs(3));
    let status = w
        .command("timeout")
        .args(["10", SPFS_VFS, "status"])
        .output()
        .expect("status");
    let bin = std::path::Path::new(SPFS).parent().expect("bin dir");
    let run = bob
        .command(&w, "timeout")
        .args(["30", SPFS, "run", "hold/a", "--", "sh", "-c"])
        .arg(format!("cat {}/data", w.mnt.display()))
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .expect("bob's run");
    let _ = std::process::Command::new("pkill")
        .args(["-KILL", "-u", &alice.uid.to_string()])
        .status();
    let _ = flooding.wait();
    let _ = held.kill();
    let out = held.wait_with_output().expect("holder");
    assert!(
        stdout(&out).starts_with("refused 9"),
        "a reader of the lock file took it exclusively: {}",
        stdout(&out)
    );
    ok(&status, "root's status during the flood");
    ok(&run, "bob's run during the flood");
    assert_eq!(stdout(&run), "x");
}
