//! Isolation under kernel caching: one mount, different views at the same
//! paths, read interleaved from different process trees.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::*;
use crate::require_vfs;

const READER: &str = r#"
import os, sys
mnt, content, mode, names, deep = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3], 8), sys.argv[4].split(","), sys.argv[5].encode()
out = sys.stdout
for line in sys.stdin:
    with open(os.path.join(mnt, "data"), "rb") as f:
        got = f.read()
    st = os.stat(os.path.join(mnt, "data"))
    listing = sorted(os.listdir(mnt))
    with open(os.path.join(mnt, "dir/sub/file"), "rb") as f:
        got_deep = f.read()
    problems = []
    if got != content: problems.append("content %r" % got)
    if st.st_size != len(content): problems.append("size %d" % st.st_size)
    if (st.st_mode & 0o7777) != mode: problems.append("mode %o" % st.st_mode)
    if listing != names: problems.append("names %r" % listing)
    if got_deep != deep: problems.append("deep %r" % got_deep)
    if problems:
        out.write("BAD " + "; ".join(problems) + "\n")
    else:
        out.write("ok\n")
    out.flush()
"#;

fn commit_with_mode(w: &World, tag: &str, data: &[u8], mode: u32, extra_dir: &str, deep: &[u8]) {
    let src = w.dir.path().join(format!("iso-{}", tag.replace('/', "-")));
    std::fs::create_dir_all(src.join(extra_dir)).unwrap();
    std::fs::create_dir_all(src.join("dir/sub")).unwrap();
    std::fs::write(src.join("data"), data).unwrap();
    std::fs::set_permissions(src.join("data"), std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::write(src.join("dir/sub/file"), deep).unwrap();
    ok(
        &w.spfs(&["commit", "--path", src.to_str().unwrap(), "-t", tag]),
        "commit",
    );
}

crate::in_both_modes!(interleaved_reads_never_cross_views);

fn interleaved_reads_never_cross_views(mode: Mode) {
    let w = World::with_mode(mode);
    commit_with_mode(&w, "iso/a", b"alpha-content\n", 0o644, "only_a", b"deep-a");
    commit_with_mode(&w, "iso/b", b"B\n", 0o755, "only_b", b"deeper-b!");
    let script = w.dir.path().join("reader.py");
    std::fs::write(&script, READER).unwrap();
    let mnt = w.mnt.to_str().unwrap().to_string();
    let spawn = |tag: &str, content: &str, mode: &str, names: &str, deep: &str| {
        w.command(SPFS)
            .args([
                "run",
                tag,
                "--",
                "python3",
                script.to_str().unwrap(),
                &mnt,
                content,
                mode,
                names,
                deep,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let mut a = spawn(
        "iso/a",
        "alpha-content\n",
        "644",
        "data,dir,only_a",
        "deep-a",
    );
    let mut b = spawn("iso/b", "B\n", "755", "data,dir,only_b", "deeper-b!");
    assert!(wait_for(Duration::from_secs(10), || w.list().len() == 2));
    w.assert_modes(mode);
    let (mut a_in, mut b_in) = (a.stdin.take().unwrap(), b.stdin.take().unwrap());
    let mut a_out = BufReader::new(a.stdout.take().unwrap());
    let mut b_out = BufReader::new(b.stdout.take().unwrap());
    let mut line = String::new();
    for i in 0..10_000 {
        for (input, output, who) in [(&mut a_in, &mut a_out, "a"), (&mut b_in, &mut b_out, "b")] {
            input.write_all(b"go\n").unwrap();
            input.flush().unwrap();
            line.clear();
            output.read_line(&mut line).unwrap();
            assert_eq!(line, "ok\n", "view {who} at iteration {i}: {line}");
            // Between every read of a runtime, the outsider (this test) looks too.
            if i % 10 == 0 {
                let listing: Vec<_> = std::fs::read_dir(&w.mnt).unwrap().collect();
                assert!(listing.is_empty(), "outsider sees {listing:?}");
                assert!(
                    std::fs::metadata(w.path("data")).is_err(),
                    "outsider sees data"
                );
            }
        }
    }
    drop((a_in, b_in));
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
}

#[test]
fn ls_differs_per_view_and_outsider_sees_empty_root() {
    require_vfs!();
    let w = World::new();
    w.commit("ls/a", &[("bin/tool-a", b"a"), ("shared", b"1")]);
    w.commit("ls/b", &[("lib/lib-b.so", b"bb"), ("shared", b"22")]);
    let mnt = w.mnt.display().to_string();
    let a = w.run_sh("ls/a", &format!("ls {mnt}; ls -l {mnt}/shared"));
    ok(&a, "run a");
    let b = w.run_sh("ls/b", &format!("ls {mnt}; ls -l {mnt}/shared"));
    ok(&b, "run b");
    let (sa, sb) = (stdout(&a), stdout(&b));
    assert!(sa.starts_with("bin\nshared\n"), "{sa}");
    assert!(sb.starts_with("lib\nshared\n"), "{sb}");
    assert!(
        sa.contains(" 1 ") && sb.contains(" 2 "),
        "sizes: {sa} / {sb}"
    );
    assert_eq!(
        std::fs::read_dir(&w.mnt).unwrap().count(),
        0,
        "outsider sees an empty root"
    );
}

#[test]
fn eight_runtimes_read_in_parallel() {
    require_vfs!();
    let w = World::new();
    let mnt = w.mnt.display().to_string();
    let mut children = Vec::new();
    for i in 0..8 {
        let content = format!("runtime-{i}-").repeat(i + 1);
        w.commit(
            &format!("par/r{i}"),
            &[("data", content.as_bytes()), (&format!("only{i}"), b"x")],
        );
        let script = format!(
            "i=0; while [ $i -lt 300 ]; do c=$(cat {mnt}/data); [ \"$c\" = \"{content}\" ] || {{ echo \"bad: $c\"; exit 1; }}; \
             [ -e {mnt}/only{i} ] || {{ echo missing; exit 1; }}; i=$((i+1)); done; echo done"
        );
        children.push(w.spawn_sh(&format!("par/r{i}"), &script));
    }
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "runtime {i}: {} {}",
            stdout(&out),
            stderr(&out)
        );
        assert_eq!(stdout(&out).trim(), "done");
    }
}

#[test]
fn files_show_real_sizes_modes_symlinks_statfs_and_are_read_only() {
    require_vfs!();
    let w = World::new();
    let src = w.dir.path().join("attrs");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("bin/tool"), b"#!/bin/sh\necho tool-ran\n").unwrap();
    std::fs::set_permissions(src.join("bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(src.join("big"), vec![b'z'; 3 << 20]).unwrap();
    std::os::unix::fs::symlink("bin/tool", src.join("link")).unwrap();
    ok(
        &w.spfs(&["commit", "--path", src.to_str().unwrap(), "-t", "attrs/x"]),
        "commit",
    );
    let mnt = w.mnt.display().to_string();
    let out = w.run_sh(
        "attrs/x",
        &format!(
            "stat -c '%n %s %a %F' {mnt}/bin/tool {mnt}/big; readlink {mnt}/link; {mnt}/link; \
             stat -f -c 'fs %T' {mnt}; md5sum < {mnt}/big; \
             echo x > {mnt}/new 2>/dev/null && echo WROTE; echo y >> {mnt}/big 2>/dev/null && echo APPENDED; \
             mkdir {mnt}/d 2>&1 | grep -c 'Read-only'"
        ),
    );
    ok(&out, "attrs");
    let s = stdout(&out);
    assert!(
        s.contains(&format!("{mnt}/bin/tool 24 755 regular file")),
        "{s}"
    );
    assert!(
        s.contains(&format!("{mnt}/big {} 644 regular file", 3 << 20)),
        "{s}"
    );
    assert!(
        s.contains("bin/tool\ntool-ran\n"),
        "symlink read and followed: {s}"
    );
    assert!(
        s.contains("fs fuseblk") || s.contains("fs fuse"),
        "statfs answers: {s}"
    );
    let expected = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("md5sum < {}", src.join("big").display()))
        .output()
        .unwrap();
    assert!(s.contains(&stdout(&expected)), "content of big: {s}");
    assert!(
        !s.contains("WROTE") && !s.contains("APPENDED"),
        "writes must fail: {s}"
    );
    assert!(s.trim_end().ends_with('1'), "mkdir fails with EROFS: {s}");
}

#[test]
fn kernel_cached_opens_keep_views_apart() {
    require_vfs!();
    let w = World::new();
    let big_a: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 241) as u8).collect();
    w.commit("ko/a", &[("data", b"view-a"), ("big", &big_a)]);
    w.commit("ko/b", &[("data", b"view-b!!")]);
    let mnt = w.mnt.display().to_string();
    let run = |tag: &str, script: &str| {
        w.command(SPFS)
            .env("SPFS_VFS_CACHE_OPENS", "true")
            .args(["run", tag, "--", "sh", "-c", script])
            .output()
            .unwrap()
    };
    let src_big = w.dir.path().join("src-ko-a/big").display().to_string();
    for _ in 0..20 {
        let a = run(
            "ko/a",
            &format!("cat {mnt}/data; cmp {mnt}/big {src_big} && echo same"),
        );
        ok(&a, "view a");
        assert_eq!(stdout(&a), "view-asame\n");
        let b = run("ko/b", &format!("cat {mnt}/data; ls {mnt}"));
        ok(&b, "view b");
        assert_eq!(stdout(&b), "view-b!!data\n");
    }
    assert_eq!(w.status().unwrap()["passthrough"], false);
}

#[test]
fn misses_are_cached_below_the_root_and_never_cross_views() {
    require_vfs!();
    let w = World::new();
    w.commit("miss/a", &[("dir/x", b"in-a")]);
    w.commit("miss/b", &[("dir/y", b"in-b")]);
    w.start_service();
    let mnt = w.mnt.display().to_string();
    let requests = || w.status().and_then(|s| s["requests"].as_u64()).unwrap_or(0);
    // B asks 2,000 times for a name its directory does not have.
    let before = requests();
    let out = w.run_sh(
        "miss/b",
        &format!(
            "cd {mnt}/dir && python3 -c 'import os; print(sum(os.path.exists(\"x\") for _ in range(2000)))'"
        ),
    );
    ok(&out, "misses in b");
    assert_eq!(stdout(&out).trim(), "0");
    let asked = requests() - before;
    assert!(asked < 100, "{asked} requests for 2,000 repeated misses");
    // The name B misses is there for A at once, and the other way round.
    let out = w.run_sh(
        "miss/a",
        &format!("cat {mnt}/dir/x; ls {mnt}/dir/y 2>&1 || true"),
    );
    ok(&out, "a reads its name");
    assert!(stdout(&out).starts_with("in-a"), "{}", stdout(&out));
    assert!(stdout(&out).contains("No such file"), "{}", stdout(&out));
    let out = w.run_sh("miss/b", &format!("cat {mnt}/dir/y"));
    assert_eq!(stdout(&out), "in-b");
}
