//! Integrity: a payload whose bytes no longer match its digest (one bit
//! flipped on disk) is never served. The reader gets "Input/output error"
//! and a non-zero exit, the service's log names the digest, the payload is
//! moved to the repository's quarantine, `spfs check` reports it missing,
//! and the other files of the same layer still read. Checked with
//! passthrough opens, with kernel-cached opens (`vfs.cache_opens`, reads
//! through the service) and for a symlink's target.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use spfs_model::Digest;

use crate::harness::*;
use crate::require_vfs;

const GOOD: &[u8] = b"this file is intact\n";
const BAD: &[u8] = b"this file will lose one bit\n";
const LINK_TARGET: &[u8] = b"good";

/// Commit `good`, `bad` and `link` (a symlink to `good`) as `tag`.
fn commit_with_link(w: &World, tag: &str) {
    let src = w.dir.path().join("src-integrity");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("good"), GOOD).unwrap();
    std::fs::write(src.join("bad"), BAD).unwrap();
    std::os::unix::fs::symlink(std::str::from_utf8(LINK_TARGET).unwrap(), src.join("link"))
        .unwrap();
    let out = w.spfs(&["commit", "--path", src.to_str().unwrap(), "-t", tag]);
    ok(&out, "commit");
}

/// Where the payload of `digest` is stored in the world's repository.
fn payload_path(w: &World, digest: &Digest) -> PathBuf {
    let text = digest.to_string();
    w.repo.join("payloads").join(&text[..2]).join(&text[2..])
}

/// Flip the lowest bit of the first byte of a stored payload, in place
/// (same inode, as a failing disk or a stray write would).
fn flip_bit(w: &World, digest: &Digest) {
    let path = payload_path(w, digest);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut first = [0u8; 1];
    f.read_exact(&mut first).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&[first[0] ^ 1]).unwrap();
}

/// The names in the world's quarantine directory.
fn quarantined(w: &World) -> Vec<String> {
    std::fs::read_dir(w.repo.join("quarantine"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `spfs run TAG -- sh -c SCRIPT`, with kernel-cached opens when the
/// service this starts should use them.
fn run(w: &World, cache_opens: bool, tag: &str, script: &str) -> std::process::Output {
    let mut cmd = w.command(SPFS);
    cmd.env("SPFS_VFS_CACHE_OPENS", if cache_opens { "1" } else { "0" });
    cmd.args(["run", tag, "--", "sh", "-c", script])
        .output()
        .expect("spfs run")
}

/// Reading `name` fails as it must for a corrupt payload `digest`, which
/// ends up in quarantine and is named in the log.
fn assert_refused(w: &World, cache_opens: bool, digest: &Digest, script: &str) {
    let out = run(w, cache_opens, "int/t", script);
    assert!(
        !out.status.success(),
        "a corrupt payload was served: stdout={:?} stderr={}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("Input/output error"),
        "stderr: {}",
        stderr(&out)
    );
    let d = digest.to_string();
    assert!(
        wait_for(Duration::from_secs(5), || w.log_text().contains(&d)),
        "the log does not name {d}: {}",
        w.log_text()
    );
    let log = w.log_text();
    let line = log.lines().find(|l| l.contains(&d)).unwrap_or_default();
    assert!(
        line.contains("ERROR") && line.contains(&w.repo.display().to_string()),
        "log line: {line}"
    );
    assert!(!payload_path(w, digest).exists(), "payload still in place");
    assert!(
        quarantined(w).iter().any(|n| n.starts_with(&d)),
        "not in quarantine: {:?}",
        quarantined(w)
    );
    // Asked again: still refused (now as a missing payload).
    let again = run(w, cache_opens, "int/t", script);
    assert!(!again.status.success(), "served after quarantine");
    assert!(stderr(&again).contains("Input/output error"));
}

/// `spfs check` names the quarantined payload as missing.
fn assert_check_reports_missing(w: &World, digest: &Digest) {
    let out = w.spfs(&["check"]);
    assert!(!out.status.success(), "check passed: {}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("missing {digest}")),
        "check: {}",
        stdout(&out)
    );
}

fn corrupt_file_is_refused(cache_opens: bool) {
    let w = World::new();
    commit_with_link(&w, "int/t");
    let bad = Digest::of(BAD);
    flip_bit(&w, &bad);
    let mnt = w.mnt.display();
    assert_refused(&w, cache_opens, &bad, &format!("cat {mnt}/bad"));
    let good = run(&w, cache_opens, "int/t", &format!("cat {mnt}/good"));
    ok(&good, "reading the intact file");
    assert_eq!(stdout(&good).as_bytes(), GOOD);
    assert_check_reports_missing(&w, &bad);
}

#[test]
fn a_flipped_bit_is_never_served() {
    require_vfs!();
    corrupt_file_is_refused(false);
}

#[test]
fn a_flipped_bit_is_never_served_with_cached_opens() {
    require_vfs!();
    corrupt_file_is_refused(true);
}

#[test]
fn a_corrupt_symlink_target_is_never_served() {
    require_vfs!();
    let w = World::new();
    commit_with_link(&w, "int/t");
    let target = Digest::of(LINK_TARGET);
    flip_bit(&w, &target);
    let mnt = w.mnt.display();
    assert_refused(&w, false, &target, &format!("cat {mnt}/link"));
    let good = run(&w, false, "int/t", &format!("cat {mnt}/good"));
    ok(&good, "reading the intact file");
    assert_eq!(stdout(&good).as_bytes(), GOOD);
    assert_check_reports_missing(&w, &target);
}
