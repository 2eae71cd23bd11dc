//! One copy of a file's pages, however many runtimes read it: ten runtimes
//! of overlapping stacks share the kernel's page cache for a public file,
//! with kernel-kept opens (one content node) and with passthrough (one
//! backing file).

use crate::harness::*;
use crate::require_vfs;

const BLOB: usize = 4 << 20;

/// Pages of `path` in the page cache, in bytes (`fincore`), as seen from
/// runtime `spec` when `spec` is given.
fn resident(w: &World, spec: Option<&str>, path: &str) -> u64 {
    let script = format!("fincore --bytes --noheadings --output RES {path}");
    let out = match spec {
        Some(spec) => w.run_sh(spec, &script),
        None => w.command("sh").args(["-c", &script]).output().unwrap(),
    };
    ok(&out, "fincore");
    stdout(&out).trim().parse().unwrap()
}

/// The repository's payload file of `size` bytes.
fn payload_of_size(w: &World, size: u64) -> String {
    for shard in std::fs::read_dir(w.repo.join("payloads")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let f = f.unwrap();
            if f.metadata().unwrap().len() == size {
                return f.path().display().to_string();
            }
        }
    }
    panic!("no payload of {size} bytes");
}

fn ten_runtimes_hold_one_copy(cache_opens: bool) {
    let w = World::new();
    let blob: Vec<u8> = (0..BLOB as u32).map(|i| (i * 7 % 251) as u8).collect();
    w.commit("pc/common", &[("share/blob", &blob)]);
    for k in 0..10 {
        w.commit(&format!("pc/own{k}"), &[("own", format!("{k}").as_bytes())]);
    }
    w.start_service_with(&[(
        "SPFS_VFS_CACHE_OPENS",
        if cache_opens { "true" } else { "false" },
    )]);
    let file = format!("{}/share/blob", w.mnt.display());
    let payload = payload_of_size(&w, BLOB as u64);
    let d = w.dir.path().join("pc");
    std::fs::create_dir_all(&d).unwrap();
    let d = d.display().to_string();
    // The service shares a file's node between views once it has verified
    // the public copy: someone reads it first.
    ok(
        &w.run_sh("pc/common", &format!("cat {file} > /dev/null")),
        "first read",
    );
    // Start cold.
    let out = w
        .command("python3")
        .args(["-c", "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)"])
        .arg(&payload)
        .output()
        .unwrap();
    ok(&out, "evict the payload");
    assert_eq!(resident(&w, None, &payload), 0, "cold");
    // Ten runtimes of ten stacks find the file; then runtime 0 reads it,
    // and the nine others look for its pages through their own views.
    let wait = |f: &str| {
        format!(
            "i=0; until [ -e {d}/{f} ]; do i=$((i+1)); [ $i -lt 400 ] || exit 9; sleep 0.05; done"
        )
    };
    let children: Vec<_> = (0..10)
        .map(|k| {
            let read = if k == 0 {
                format!("cat {file} > /dev/null && touch {d}/read")
            } else {
                "true".into()
            };
            let script = [
                format!("stat -c %i {file} > {d}/ino{k}.tmp && mv {d}/ino{k}.tmp {d}/ino{k}"),
                wait("go"),
                read,
                wait("read"),
                format!("fincore --bytes --noheadings --output RES {file} > {d}/res{k}"),
            ]
            .join("\n");
            w.spawn_sh(&format!("pc/common+pc/own{k}"), &script)
        })
        .collect();
    for k in 0..10 {
        let ino = format!("{d}/ino{k}");
        assert!(wait_for(std::time::Duration::from_secs(20), || {
            std::path::Path::new(&ino).exists()
        }));
    }
    std::fs::write(format!("{d}/go"), "").unwrap();
    for child in children {
        let out = child.wait_with_output().unwrap();
        ok(&out, "runtime");
    }
    let read = |f: String| std::fs::read_to_string(f).unwrap().trim().to_string();
    let ino = read(format!("{d}/ino0"));
    for k in 1..10 {
        assert_eq!(read(format!("{d}/ino{k}")), ino, "runtime {k}: one node");
        let through_mount: u64 = read(format!("{d}/res{k}")).parse().unwrap();
        if cache_opens {
            // The kernel keeps the pages in the one inode.
            assert_eq!(through_mount, BLOB as u64, "runtime {k}: one shared inode");
        } else {
            // A passthrough file's mapping is the backing file's.
            assert_eq!(through_mount, BLOB as u64, "runtime {k}: the backing file");
        }
    }
    if !cache_opens {
        assert_eq!(
            resident(&w, None, &payload),
            BLOB as u64,
            "one backing file"
        );
    }
    assert_eq!(w.status().unwrap()["passthrough"], !cache_opens);
}

#[test]
fn ten_runtimes_share_pages_with_kernel_kept_opens() {
    require_vfs!();
    ten_runtimes_hold_one_copy(true);
}

#[test]
fn ten_runtimes_share_pages_with_passthrough() {
    require_vfs!();
    ten_runtimes_hold_one_copy(false);
}
