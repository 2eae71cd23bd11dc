//! Throwaway Unix users for permission tests: each [`TestUser`] is a real
//! account (`useradd`), removed again when dropped, even when a test fails.
//! Names start with `spfs-t` so that `scripts/test.sh` can remove any that a
//! killed test run left behind.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A real user account that exists while this value lives.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    /// Create a fresh user with its own group and no home directory.
    pub fn new() -> TestUser {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // useradd limits names to 32 characters.
        let name = format!("spfs-t{}-{n}", std::process::id());
        let out = Command::new("useradd")
            .args([
                "--no-create-home",
                "--user-group",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(&name)
            .output()
            .expect("run useradd");
        assert!(
            out.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .arg(flag)
                .arg(&name)
                .output()
                .expect("id");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("numeric id")
        };
        let (uid, gid) = (id("-u"), id("-g"));
        TestUser { name, uid, gid }
    }

    /// A command that runs `program` as this user (all uids and gids, no
    /// supplementary groups), with the given world's environment.
    pub fn command(&self, world: &crate::harness::World, program: &str) -> Command {
        let mut c = world.command("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg(program);
        c
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // Processes of the user would make userdel fail: end them first.
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.uid.to_string()])
            .status();
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}
