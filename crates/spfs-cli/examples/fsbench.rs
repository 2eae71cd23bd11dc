//! A small filesystem measuring tool for bench/vfs.sh (std and libc only).
//!
//! The same binary runs natively, inside `spfs run TAG -- fsbench ...` and
//! on a squashfuse mount, so the three are measured by identical code.
//! Every result is printed as one line `name value unit`.
//!
//! ```text
//! fsbench seqread FILE                          read FILE once, 1 MiB buffer
//! fsbench openread DIR [--warmup N] [--runs N] [--list FILE]
//!                                               open+read+close every file
//! fsbench statwalk DIR [--warmup N] [--runs N] [--abs]
//!                                               readdir + lstat of every entry
//! fsbench stat FILE [--iters N] [--warmup N] [--runs N]
//!                                               stat(2) of FILE (os.stat)
//! fsbench missing PATH [--iters N] [--warmup N] [--runs N]
//!                                               stat(2) of a missing PATH
//!                                               (os.path.exists)
//! fsbench openclose FILE [--iters N] [--warmup N] [--runs N]
//!                                               open(2) O_RDONLY|O_CLOEXEC +
//!                                               close(2) of FILE (os.open)
//! ```
//!
//! `openread` walks DIR once (untimed) to collect the paths, then times
//! open + read-to-end + close of each by its full path. With `--list FILE`
//! it reads the paths (relative to DIR, one per line) from FILE instead of
//! walking, so that a traced run sends only the requests of the opens and
//! reads. With `--warmup N`
//! it first makes N untimed passes; with `--runs N` it reports the best of
//! N timed passes. `statwalk` is like `find DIR -ls` without the printing:
//! it resolves DIR once, then enters each directory by its name relative
//! to the current one (chdir, as find's fts does with openat) and lstats
//! each entry relative to its directory. With `--abs` it opens every
//! directory by its full path instead (as os.walk-style code does), which
//! makes each directory's path resolution start again from `/`.
//!
//! `stat`, `missing` and `openclose` call the same system calls as
//! Python's `os.stat`, `os.path.exists` and `os.open` + `os.close`, by the
//! full path, `--iters N` times in a row (default 100,000) after
//! `--warmup N` untimed calls (default a tenth of that); the result is the
//! mean per call (in µs) of the best of `--runs` such loops.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `println!` that ignores a closed stdout (`fsbench ... | head -1`).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

fn usage() -> ! {
    eprintln!(
        "usage: fsbench seqread FILE
       fsbench openread DIR [--warmup N] [--runs N] [--list FILE]
       fsbench statwalk DIR [--warmup N] [--runs N] [--abs]
       fsbench stat|missing|openclose PATH [--iters N] [--warmup N] [--runs N]"
    );
    std::process::exit(2);
}

fn die(what: &str, path: &Path, e: std::io::Error) -> ! {
    eprintln!("fsbench: {what} {}: {e}", path.display());
    std::process::exit(1);
}

/// The options after the path.
struct Opts {
    /// `--warmup N`: untimed passes (or calls, for the per-call cases).
    warmup: Option<u64>,
    /// `--runs N`: timed passes; the best counts.
    runs: u32,
    /// `--abs`: statwalk opens each directory by its full path.
    abs: bool,
    /// `--iters N`: calls per timed loop of the per-call cases.
    iters: u64,
    /// `--list FILE`: openread takes its paths from FILE.
    list: Option<PathBuf>,
}

fn opts(args: &[String]) -> Opts {
    let mut o = Opts {
        warmup: None,
        runs: 1,
        abs: false,
        iters: 100_000,
        list: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--abs" {
            o.abs = true;
            continue;
        }
        let Some(v) = it.next() else { usage() };
        if a == "--list" {
            o.list = Some(PathBuf::from(v));
            continue;
        }
        let v: u64 = v.parse().unwrap_or_else(|_| usage());
        match a.as_str() {
            "--warmup" => o.warmup = Some(v),
            "--runs" => o.runs = u32::try_from(v).unwrap_or(u32::MAX).max(1),
            "--iters" => o.iters = v.max(1),
            _ => usage(),
        }
    }
    o
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(cmd), Some(path)) = (args.first(), args.get(1)) else {
        usage()
    };
    let path =
        std::path::absolute(path).unwrap_or_else(|e| die("cannot resolve", Path::new(path), e));
    let o = opts(&args[2..]);
    let warmup = o.warmup.unwrap_or(0).try_into().unwrap_or(u32::MAX);
    match cmd.as_str() {
        "seqread" => seqread(&path),
        "openread" => openread(&path, o.list.as_deref(), warmup, o.runs),
        "statwalk" => statwalk(&path, warmup, o.runs, o.abs),
        "stat" | "missing" | "openclose" => {
            let warmup = o.warmup.unwrap_or(o.iters / 10);
            per_call(cmd, &path, o.iters, warmup, o.runs)
        }
        _ => usage(),
    }
}

fn seqread(path: &Path) {
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut f = File::open(path).unwrap_or_else(|e| die("cannot open", path, e));
    let mut total = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => die("cannot read", path, e),
        }
    }
    drop(f);
    let secs = start.elapsed().as_secs_f64();
    out!("seqread_mbps {:.1} MB/s", total as f64 / 1e6 / secs);
    out!("seqread_seconds {secs:.4} s");
    out!("seqread_bytes {total} B");
}

/// Every regular file under `dir`, by full path (readdir only, no stat
/// unless the entry type is unknown).
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let rd = std::fs::read_dir(dir).unwrap_or_else(|e| die("cannot list", dir, e));
    for e in rd {
        let e = e.unwrap_or_else(|e| die("cannot list", dir, e));
        let ft = e
            .file_type()
            .unwrap_or_else(|err| die("cannot stat", &e.path(), err));
        if ft.is_dir() {
            collect_files(&e.path(), out);
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
}

fn openread_pass(files: &[PathBuf], buf: &mut [u8]) -> (Duration, u64) {
    let start = Instant::now();
    let mut bytes = 0u64;
    for p in files {
        let mut f = File::open(p).unwrap_or_else(|e| die("cannot open", p, e));
        loop {
            match f.read(buf) {
                Ok(0) => break,
                Ok(n) => bytes += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => die("cannot read", p, e),
            }
        }
    }
    (start.elapsed(), bytes)
}

fn openread(dir: &Path, list: Option<&Path>, warmup: u32, runs: u32) {
    let mut files = Vec::new();
    if let Some(list) = list {
        let text = std::fs::read_to_string(list).unwrap_or_else(|e| die("cannot read", list, e));
        files.extend(text.lines().filter(|l| !l.is_empty()).map(|l| dir.join(l)));
    } else {
        collect_files(dir, &mut files);
        files.sort();
    }
    if files.is_empty() {
        eprintln!("fsbench: no files under {}", dir.display());
        std::process::exit(1);
    }
    let mut buf = vec![0u8; 64 << 10];
    for _ in 0..warmup {
        openread_pass(&files, &mut buf);
    }
    let mut best = Duration::MAX;
    let mut bytes = 0;
    for _ in 0..runs {
        let (t, b) = openread_pass(&files, &mut buf);
        best = best.min(t);
        bytes = b;
    }
    let secs = best.as_secs_f64();
    let n = files.len() as f64;
    out!("openread_seconds {secs:.4} s");
    out!("openread_us_per_file {:.2} us", secs * 1e6 / n);
    out!("openread_files_per_s {:.0} files/s", n / secs);
    out!("openread_files {} files", files.len());
    out!("openread_bytes {bytes} B");
}

/// readdir + lstat (relative to the directory, as `find -ls` does) of
/// every entry below `dir`, opening each directory by its full path; the
/// number of entries.
fn walk_abs(dir: &Path) -> u64 {
    let rd = std::fs::read_dir(dir).unwrap_or_else(|e| die("cannot list", dir, e));
    let mut n = 0;
    for e in rd {
        let e = e.unwrap_or_else(|e| die("cannot list", dir, e));
        // DirEntry::metadata is fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW).
        let m = e
            .metadata()
            .unwrap_or_else(|err| die("cannot stat", &e.path(), err));
        std::hint::black_box(&m);
        n += 1;
        if m.is_dir() {
            n += walk_abs(&e.path());
        }
    }
    n
}

/// The same below the current directory, entering each subdirectory by its
/// name (and leaving by `..`), so no path is resolved from `/` again.
fn walk_rel() -> u64 {
    let here = Path::new(".");
    let rd = std::fs::read_dir(here).unwrap_or_else(|e| die("cannot list", here, e));
    let mut n = 0;
    for e in rd {
        let e = e.unwrap_or_else(|e| die("cannot list", here, e));
        let m = e
            .metadata()
            .unwrap_or_else(|err| die("cannot stat", &e.path(), err));
        std::hint::black_box(&m);
        n += 1;
        if m.is_dir() {
            let name = PathBuf::from(e.file_name());
            std::env::set_current_dir(&name).unwrap_or_else(|err| die("cannot enter", &name, err));
            n += walk_rel();
            std::env::set_current_dir("..").unwrap_or_else(|err| die("cannot leave", &name, err));
        }
    }
    n
}

fn walk(dir: &Path, abs: bool) -> u64 {
    // The top directory itself is stat'ed too, as find does.
    let m = std::fs::symlink_metadata(dir).unwrap_or_else(|e| die("cannot stat", dir, e));
    std::hint::black_box(&m);
    if abs {
        return 1 + walk_abs(dir);
    }
    std::env::set_current_dir(dir).unwrap_or_else(|e| die("cannot enter", dir, e));
    1 + walk_rel()
}

fn statwalk(dir: &Path, warmup: u32, runs: u32, abs: bool) {
    for _ in 0..warmup {
        walk(dir, abs);
    }
    let mut best = Duration::MAX;
    let mut entries = 0;
    for _ in 0..runs {
        let start = Instant::now();
        entries = walk(dir, abs);
        best = best.min(start.elapsed());
    }
    let secs = best.as_secs_f64();
    out!("statwalk_seconds {secs:.4} s");
    out!("statwalk_ms {:.3} ms", secs * 1e3);
    out!(
        "statwalk_entries_per_s {:.0} entries/s",
        entries as f64 / secs
    );
    out!("statwalk_entries {entries} entries");
}

/// One call of a per-call case: `stat` and `missing` are stat(2) (what
/// `os.stat` and `os.path.exists` call), `openclose` is open(2) with
/// `O_RDONLY | O_CLOEXEC` and close(2) (what `os.open` and `os.close` call).
/// Whether the call succeeded.
fn call(cmd: &str, path: &std::ffi::CStr) -> bool {
    // SAFETY: `path` is a NUL-terminated string; `st` is written by stat(2)
    // only; the descriptor is ours to close.
    unsafe {
        match cmd {
            "openclose" => {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return false;
                }
                libc::close(fd);
                true
            }
            _ => {
                let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
                libc::stat(path.as_ptr(), st.as_mut_ptr()) == 0
            }
        }
    }
}

fn per_call(cmd: &str, path: &Path, iters: u64, warmup: u64, runs: u32) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .unwrap_or_else(|_| die("NUL in", path, std::io::ErrorKind::InvalidInput.into()));
    // The first call checks the case: the path exists, or (missing) does
    // not, with ENOENT.
    let ok = call(cmd, &c);
    let err = std::io::Error::last_os_error();
    if cmd == "missing" {
        if ok {
            die("exists:", path, std::io::ErrorKind::AlreadyExists.into());
        }
        if err.kind() != std::io::ErrorKind::NotFound {
            die("cannot stat", path, err);
        }
    } else if !ok {
        die("cannot stat or open", path, err);
    }
    for _ in 0..warmup {
        std::hint::black_box(call(cmd, &c));
    }
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let start = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(call(cmd, std::hint::black_box(&c)));
        }
        best = best.min(start.elapsed());
    }
    out!("{cmd}_us {:.3} us", best.as_secs_f64() * 1e6 / iters as f64);
    out!("{cmd}_calls {iters} calls");
}
