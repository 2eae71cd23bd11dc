//! Read-through: runtimes whose stacks live only on a remote (`spfs
//! server` here), their payloads fetched on first read; a remote that goes
//! away gives errors, never hangs, and other views keep working.

use std::io::BufRead;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::require_vfs;

/// `spfs server` over the repository `root`, stopped on drop.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serve `root` and make it the world's `origin` (with `vfs` settings
/// added); the server.
fn serve_as_origin(w: &World, root: &std::path::Path, vfs: &str) -> Served {
    let mut child = w
        .command(SPFS)
        .args(["server", "--listen", "127.0.0.1:0", "--read-only"])
        .env("SPFS_STORAGE_ROOT", root)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .split_whitespace()
        .find(|w| w.starts_with("grpc://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    std::fs::write(
        w.dir.path().join("empty.toml"),
        format!("[remote.origin]\naddress = \"{address}\"\n[vfs]\nremote_timeout = 5\n{vfs}\n"),
    )
    .unwrap();
    Served(child)
}

/// Commit `files` as `tag` into the repository `root`.
fn commit_into(w: &World, root: &std::path::Path, tag: &str, files: &[(&str, &[u8])]) {
    let src = w
        .dir
        .path()
        .join(format!("rt-src-{}", tag.replace('/', "-")));
    for (rel, bytes) in files {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let out = w
        .command(SPFS)
        .args(["commit", "--path", src.to_str().unwrap(), "-t", tag])
        .env("SPFS_STORAGE_ROOT", root)
        .output()
        .unwrap();
    ok(&out, "commit into the studio");
}

#[test]
fn a_stack_only_on_a_remote_runs_and_reads_through() {
    require_vfs!();
    let w = World::new();
    let studio = w.dir.path().join("studio");
    let big: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 253) as u8).collect();
    commit_into(
        &w,
        &studio,
        "rt/a",
        &[("small", b"from the studio"), ("big", &big)],
    );
    commit_into(&w, &studio, "rt/b", &[("later", b"fetched later")]);
    // First reads answered from ranged fetches.
    let server = serve_as_origin(&w, &studio, "remote_ranged_reads = true");
    w.commit("local/only", &[("here", b"local")]);
    let mnt = w.mnt.display().to_string();
    // A random read of an uncached blob, and a small file.
    let offset = 5 * 1024 * 1024 + 17;
    let out = w.run_sh(
        "rt/a",
        &format!(
            "cat {mnt}/small; echo; dd if={mnt}/big bs=1 skip={offset} count=8 2>/dev/null | od -An -tu1"
        ),
    );
    ok(&out, "run a stack found only on the remote");
    let want: Vec<String> = big[offset..offset + 8]
        .iter()
        .map(|b| b.to_string())
        .collect();
    let text = stdout(&out);
    assert!(text.starts_with("from the studio\n"), "{text}");
    assert_eq!(
        text.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        want
    );
    // The read was served from a ranged fetch; the whole payload arrives
    // in the background, checked, and later opens are local.
    let local = spfs_storage::FsRepository::open(&w.repo).unwrap();
    let d = spfs_model::Digest::of(&big);
    assert!(wait_for(Duration::from_secs(20), || local.has_payload(&d)));
    // The status counts what came from the remote: the ranged reads, then
    // the whole payloads (`spfs run` resolved the reference itself).
    let fetched = |s: &serde_json::Value| {
        let r = &s["remote"];
        r["remotes"].as_u64() >= Some(1)
            && r["ranged_reads"].as_u64() >= Some(1)
            && r["ranged_bytes"].as_u64() >= Some(8)
            && r["payloads_fetched"].as_u64() >= Some(1)
            && r["fetched_bytes"].as_u64() >= Some(big.len() as u64)
    };
    assert!(
        wait_for(Duration::from_secs(10), || w
            .status()
            .is_some_and(|s| fetched(&s))),
        "{:?}",
        w.status().map(|s| s["remote"].clone())
    );
    // Found nowhere: every repository searched is named.
    let out = w.run_sh("no/such", "true");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no/such") && err.contains("local") && err.contains("origin"),
        "{err}"
    );
    // The remote goes away while a runtime of it runs: reading what was
    // never fetched fails within the timeout, nothing hangs, and other
    // views keep working.
    let mut child = w.spawn_sh(
        "rt/b",
        &format!("sleep 1; cat {mnt}/later; echo rc=$?; ls {mnt}"),
    );
    assert!(wait_for(Duration::from_secs(10), || w.list().len() == 1));
    drop(server);
    let start = Instant::now();
    let done = wait_for(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !done {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(done, "the reader hung after the remote went away");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    let text = stdout(&out);
    assert!(
        text.contains("rc=1") && text.contains("later"),
        "{text} / {}",
        stderr(&out)
    );
    let out = w.run_sh("local/only", &format!("cat {mnt}/here"));
    ok(&out, "a local view while the remote is gone");
    assert_eq!(stdout(&out), "local");
}

#[test]
fn a_corrupt_payload_on_the_remote_is_never_served() {
    require_vfs!();
    let w = World::new();
    let studio = w.dir.path().join("studio");
    let good = "good bytes ".repeat(50_000);
    commit_into(&w, &studio, "rt/c", &[("f", good.as_bytes())]);
    let path = spfs_storage::FsRepository::open(&studio)
        .unwrap()
        .payload_path(&spfs_model::Digest::of(good.as_bytes()));
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&path, perms).unwrap();
    std::fs::write(&path, "EVIL bytes ".repeat(50_000)).unwrap();
    let _server = serve_as_origin(&w, &studio, "");
    let mnt = w.mnt.display().to_string();
    for _ in 0..2 {
        let out = w.run_sh("rt/c", &format!("cat {mnt}/f > /dev/null; echo rc=$?"));
        assert_eq!(stdout(&out), "rc=1\n", "{}", stderr(&out));
    }
    assert!(
        w.log_text().contains("could not be read through"),
        "{}",
        w.log_text()
    );
}
