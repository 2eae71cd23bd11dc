//! Modification times through a real mount: every file, directory and
//! symlink shows the time it had when it was committed, so Python uses the
//! `.pyc` files shipped in a layer instead of finding them stale (a `.pyc`
//! records its source's mtime) and recompiling on every start.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;
use crate::require_vfs;

/// The Python to test with (the system's, else the first on `PATH`).
fn python() -> String {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3".into()
    } else {
        "python3".into()
    }
}

/// `(seconds, nanoseconds)` of `path`'s own modification time.
fn mtime(path: &Path) -> (i64, i64) {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.mtime(), m.mtime_nsec())
}

/// A source tree with Python's `json` package, its `__pycache__` included
/// (made with `compileall` if the system ships none), copied keeping
/// times; plus a symlink with a time of its own.
fn source_tree(w: &World, py: &str) -> PathBuf {
    let src = w.dir.path().join("src-py");
    let lib = src.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    let out = Command::new(py)
        .args([
            "-c",
            "import json, os; print(os.path.dirname(json.__file__))",
        ])
        .output()
        .expect("python3 runs (scripts/setup.sh installs it)");
    ok(&out, "python3: where is json");
    let json_dir = stdout(&out).trim().to_string();
    let out = Command::new("cp")
        .args(["-a", &json_dir, lib.to_str().unwrap()])
        .output()
        .unwrap();
    ok(&out, "cp -a json");
    // Pycs for this interpreter, written only where missing or stale (the
    // check compares the sources' times, which cp -a kept).
    let out = Command::new(py)
        .args(["-m", "compileall", "-q", lib.join("json").to_str().unwrap()])
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    ok(&out, "compileall");
    let out = Command::new(py)
        .args([
            "-c",
            "import importlib.util, sys; print(importlib.util.cache_from_source(sys.argv[1]))",
            lib.join("json/__init__.py").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let pyc = PathBuf::from(stdout(&out).trim());
    assert!(pyc.is_file(), "no pyc at {}", pyc.display());
    std::os::unix::fs::symlink("json/__init__.py", lib.join("link")).unwrap();
    let t = rustix::fs::Timespec {
        tv_sec: 1_234_567_890,
        tv_nsec: 123,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        lib.join("link"),
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
    src
}

/// `spfs run SPEC -- python3 -v -c 'import json'` with the layer's `lib`
/// first on the path; returns Python's verbose import log.
fn import_json(w: &World, py: &str, spec: &str) -> String {
    let out = w
        .command(SPFS)
        .args([
            "run",
            spec,
            "--",
            py,
            "-v",
            "-c",
            "import json; print('FROM', json.__file__)",
        ])
        .env("PYTHONPATH", w.mnt.join("lib"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    ok(&out, "python3 -v in the runtime");
    let from = format!("FROM {}", w.mnt.join("lib/json/__init__.py").display());
    assert!(
        stdout(&out).contains(&from),
        "json not from the layer: {}",
        stdout(&out)
    );
    stderr(&out)
}

#[test]
fn python_uses_the_layers_pycs() {
    require_vfs!();
    let w = World::new();
    let py = python();
    let src = source_tree(&w, &py);
    let commit = |extra: &[&str]| {
        let mut args = vec!["commit", "--path", src.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = w
            .command(SPFS)
            .args(&args)
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .unwrap();
        ok(&out, "commit");
    };
    commit(&["-t", "py/json"]);

    // The view shows each entry's own time, to the nanosecond.
    let probe = "import os, sys\nfor p in sys.argv[1:]:\n    print(os.lstat(p).st_mtime_ns)";
    let rels = [
        "lib/json/__init__.py",
        "lib/json/__pycache__",
        "lib/json",
        "lib/link",
    ];
    let mut args = vec!["run", "py/json", "--", py.as_str(), "-c", probe];
    let mounted: Vec<String> = rels
        .iter()
        .map(|r| w.path(r).display().to_string())
        .collect();
    args.extend(mounted.iter().map(String::as_str));
    let out = w.spfs(&args);
    ok(&out, "lstat in the runtime");
    let shown: Vec<i64> = stdout(&out).lines().map(|l| l.parse().unwrap()).collect();
    let wanted: Vec<i64> = rels
        .iter()
        .map(|r| {
            let (s, n) = mtime(&src.join(r));
            s * 1_000_000_000 + n
        })
        .collect();
    assert_eq!(shown, wanted, "times of {rels:?}");
    assert_eq!(wanted[3], 1_234_567_890_000_000_123, "a symlink's own time");

    // Python finds the pycs current and uses them.
    let log = import_json(&w, &py, "py/json");
    let matches = log.lines().filter(|l| l.contains(".pyc matches ")).count();
    assert!(
        matches >= 3,
        "json's pycs were not used ({matches} matched):\n{log}"
    );
    assert!(
        !log.contains("bytecode is stale"),
        "a pyc was found stale:\n{log}"
    );

    // The control: a clamp that moves the sources' times makes the very
    // same pycs stale, which this test would see.
    commit(&["--mtime-clamp", "1000000000", "-t", "py/clamped"]);
    let log = import_json(&w, &py, "py/clamped");
    assert!(
        log.contains("bytecode is stale"),
        "clamped times should make the pycs stale:\n{log}"
    );
}
