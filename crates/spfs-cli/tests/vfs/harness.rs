//! A private world for each test: repository, mount point, control socket,
//! log and cgroup root in a temporary directory; cleaned up on drop even
//! when the test fails (service stopped, mount detached, cgroups emptied).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const SPFS: &str = env!("CARGO_BIN_EXE_spfs");
pub const SPFS_VFS: &str = env!("CARGO_BIN_EXE_spfs-vfs");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether this machine can run the tests; `Err` says why not.
pub fn available() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not running as root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing".into());
    }
    spfs_fuse::cgroup::cgroup2_mount().map_err(|e| e.to_string())?;
    Ok(())
}

/// Skip (or fail, in CI) when the machine cannot run VFS tests.
#[macro_export]
macro_rules! require_vfs {
    () => {
        if let Err(why) = $crate::harness::available() {
            if std::env::var("SPFS_REQUIRE_VFS_TESTS").as_deref() == Ok("1") {
                panic!("VFS tests required but unavailable: {why}");
            }
            eprintln!("skipping VFS test: {why}");
            return;
        }
    };
}

/// Run test body `$name(mode: Mode)` in both modes, as the tests
/// `$name::router` and `$name::bound`.
#[macro_export]
macro_rules! in_both_modes {
    ($name:ident) => {
        mod $name {
            use $crate::harness::Mode;

            #[test]
            fn router() {
                $crate::require_vfs!();
                super::$name(Mode::Router);
            }

            #[test]
            fn bound() {
                $crate::require_vfs!();
                super::$name(Mode::Bound);
            }
        }
    };
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub mnt: PathBuf,
    pub sock: PathBuf,
    pub log: PathBuf,
    pub cgroups: PathBuf,
    /// `vfs.bind_views` for every command: `auto` (bound, as tests run as
    /// root) or `never` (routed).
    pub bind_views: &'static str,
}

/// How `spfs run` shows a runtime its view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Through the shared mount, answered by the router.
    Router,
    /// Through a bind of the view's own root, in a mount namespace.
    Bound,
}

impl World {
    /// A world whose runtimes are bound (the default, as root).
    pub fn new() -> World {
        World::with_mode(Mode::Bound)
    }

    /// A world whose runtimes see their views as `mode` says.
    pub fn with_mode(mode: Mode) -> World {
        let dir = tempfile::Builder::new()
            .prefix("spfs-vfs-test")
            .tempdir()
            .expect("tempdir");
        // Other users (setpriv tests) must reach the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let cg_mount = spfs_fuse::cgroup::cgroup2_mount().expect("cgroup2");
        let w = World {
            repo: dir.path().join("repo"),
            mnt: dir.path().join("mnt"),
            sock: dir.path().join("vfs.sock"),
            log: dir.path().join("vfs.log"),
            cgroups: cg_mount.join(format!("spfs-test-{}-{n}", std::process::id())),
            dir,
            bind_views: match mode {
                Mode::Router => "never",
                Mode::Bound => "auto",
            },
        };
        std::fs::write(w.dir.path().join("empty.toml"), "").expect("config");
        let out = w.spfs(&["init", "repo", w.repo.to_str().expect("utf8")]);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        w
    }

    /// The environment every command of this world runs with.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("SPFS_CONFIG", self.dir.path().join("empty.toml"))
            .env("HOME", self.dir.path())
            .env("SPFS_STORAGE_ROOT", &self.repo)
            .env("SPFS_VFS_MOUNTPOINT", &self.mnt)
            .env("SPFS_VFS_LISTEN", format!("unix:{}", self.sock.display()))
            .env("SPFS_VFS_LOG_FILE", &self.log)
            .env("SPFS_VFS_CGROUP_ROOT", &self.cgroups)
            .env("SPFS_VFS_TOKEN_FILE", self.dir.path().join("token"))
            .env("SPFS_VFS_BIND_VIEWS", self.bind_views)
            .env_remove("SPFS_RUNTIME");
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        self.env(&mut c);
        c.stdin(Stdio::null());
        c
    }

    pub fn spfs(&self, args: &[&str]) -> Output {
        self.command(SPFS).args(args).output().expect("run spfs")
    }

    pub fn vfs(&self, args: &[&str]) -> Output {
        self.command(SPFS_VFS)
            .args(args)
            .output()
            .expect("run spfs-vfs")
    }

    /// Commit a tree of `(path, content)` files and tag it.
    pub fn commit(&self, tag: &str, files: &[(&str, &[u8])]) -> String {
        self.commit_with_dirs(tag, files, &[])
    }

    /// [`World::commit`], with directories of these modes (made if no
    /// file is in them).
    pub fn commit_with_dirs(
        &self,
        tag: &str,
        files: &[(&str, &[u8])],
        dirs: &[(&str, u32)],
    ) -> String {
        let src = self
            .dir
            .path()
            .join(format!("src-{}", tag.replace('/', "-")));
        let _ = std::fs::remove_dir_all(&src);
        for (path, content) in files {
            let p = src.join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, content).expect("write");
        }
        std::fs::create_dir_all(&src).expect("mkdir");
        for (dir, mode) in dirs {
            let p = src.join(dir);
            std::fs::create_dir_all(&p).expect("mkdir");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).expect("chmod");
        }
        let out = self.spfs(&["commit", "--path", src.to_str().expect("utf8"), "-t", tag]);
        assert!(
            out.status.success(),
            "commit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .trim()
            .to_string()
    }

    /// Check that every registered runtime has `mode`, as `spfs-vfs list`
    /// and `spfs runtime info` say.
    pub fn assert_modes(&self, mode: Mode) {
        let want = match mode {
            Mode::Router => "router",
            Mode::Bound => "bound",
        };
        let list = self.list();
        assert!(!list.is_empty(), "no runtime to check");
        for rt in list {
            assert_eq!(rt["mode"], want, "{rt}");
            let name = rt["runtime"].as_str().expect("name");
            let out = self.spfs(&["runtime", "info", name, "--json"]);
            if out.status.success() {
                let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
                assert_eq!(record["bound"], mode == Mode::Bound, "{record}");
            }
        }
    }

    /// `spfs run SPEC -- sh -c SCRIPT`, waiting for it.
    pub fn run_sh(&self, spec: &str, script: &str) -> Output {
        self.command(SPFS)
            .args(["run", spec, "--", "sh", "-c", script])
            .output()
            .expect("run spfs run")
    }

    /// Start `spfs run SPEC -- sh -c SCRIPT` without waiting.
    pub fn spawn_sh(&self, spec: &str, script: &str) -> Child {
        self.command(SPFS)
            .args(["run", spec, "--", "sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn spfs run")
    }

    /// `spfs-vfs list --json` as (runtime, root_pid, requests).
    pub fn list(&self) -> Vec<serde_json::Value> {
        let out = self.vfs(&["list", "--json"]);
        if !out.status.success() {
            return Vec::new();
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list json");
        v["runtimes"].as_array().cloned().unwrap_or_default()
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.vfs(&["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("status json"))
    }

    /// A directory through which a test steps runtimes' scripts: its path,
    /// the mount point and it as text, and a shell line that waits (at
    /// most 30 s, then fails) until the test makes a file in it.
    pub fn steps(&self) -> (PathBuf, String, String, impl Fn(&str) -> String) {
        let d = self.dir.path().join("ctl");
        std::fs::create_dir_all(&d).expect("mkdir");
        let (mnt, ds) = (self.mnt.display().to_string(), d.display().to_string());
        let at = ds.clone();
        let wait = move |f: &str| {
            format!(
                "i=0; until [ -e {at}/{f} ]; do i=$((i+1)); [ $i -lt 3000 ] || exit 9; sleep 0.01; done"
            )
        };
        (d, mnt, ds, wait)
    }

    /// How many LOOKUPs the service has answered since it started.
    pub fn lookups(&self) -> u64 {
        self.op_count("lookup")
    }

    /// How many requests of operation `op` (as `spfs-vfs status` names
    /// it) the service has answered since it started.
    pub fn op_count(&self, op: &str) -> u64 {
        let s = self.status().expect("status");
        s["ops"][op]["count"].as_u64().unwrap_or(0)
    }

    /// The service's pid, if one is running.
    pub fn service_pid(&self) -> Option<u32> {
        self.status()
            .and_then(|s| s["pid"].as_u64())
            .map(|p| p as u32)
    }

    /// The keeper's pid (the service's long-lived process), if one runs.
    pub fn keeper_pid(&self) -> Option<u32> {
        self.status()
            .and_then(|s| s["keeper_pid"].as_u64())
            .filter(|p| *p != 0)
            .map(|p| p as u32)
    }

    /// Start the service in the background, logging to the world's log.
    pub fn start_service(&self) {
        self.start_service_with(&[]);
    }

    /// Start the service with extra environment (`SPFS_…` settings or test
    /// hooks), in the background, logging to the world's log.
    pub fn start_service_with(&self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut child = self
            .command(SPFS_VFS)
            .arg("service")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("service");
        let ok = wait_for(Duration::from_secs(15), || self.status().is_some());
        if !ok {
            let _ = child.kill();
            panic!("service did not start: {}", self.log_text());
        }
        // Reap it in the background when it exits.
        std::thread::spawn(move || child.wait());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- service log of the failed test ---\n{}",
                self.log_text()
            );
        }
        // The keeper (it unmounts after its worker stopped).
        if let Some(pid) = self.keeper_pid() {
            let _ = self.vfs(&["service", "--stop"]);
            let gone = wait_for(Duration::from_secs(5), || {
                !Path::new(&format!("/proc/{pid}")).exists()
            });
            if !gone {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(pid as i32).expect("pid"),
                    rustix::process::Signal::KILL,
                );
            }
        }
        // Whatever is still running in our runtimes goes.
        if let Ok(rd) = std::fs::read_dir(&self.cgroups) {
            for e in rd.flatten() {
                let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
            }
        }
        let _ = wait_for(Duration::from_secs(5), || {
            std::fs::read_dir(&self.cgroups)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.path().is_dir())
                        .all(|e| std::fs::remove_dir(e.path()).is_ok())
                })
                .unwrap_or(true)
        });
        let _ = std::fs::remove_dir(&self.cgroups);
        let lock = spfs_fuse::service::mountpoint_lock_path(&self.mnt);
        let _ = std::fs::remove_dir_all(lock.with_extension("d"));
        let _ = std::fs::remove_file(lock);
        let _ = spfs_fuse::mounts::detach_fuse(&self.mnt);
    }
}

/// A loopback TCP port free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait (at most 30 s) for a file a runtime's script makes.
pub fn wait_file(path: &Path) {
    assert!(
        wait_for(Duration::from_secs(30), || path.exists()),
        "{} never came",
        path.display()
    );
}

/// A file's text, empty if it cannot be read.
pub fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert a command succeeded, showing its output if not.
pub fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({}): stdout={} stderr={}",
        o.status,
        stdout(o),
        stderr(o)
    );
}
