//! Measures the memory a view costs per entry, as the service pays it: a
//! manifest of N entries (default 1,000,000: 1,000 directories of 1,000
//! files) is built and encoded by a first process; a fresh process then
//! decodes it and registers it as a view, and prints the growth of its
//! resident set divided by the number of entries, beside the estimate the
//! service's status reports for the same tree.
//!
//! `cargo run --release -p spfs-fuse --example view_memory [ENTRIES]`

use std::time::SystemTime;

use spfs_model::{Digest, EntryKind, TreeBuilder};
use spfs_vfs::{Registry, RuntimeSpec};

fn rss_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--load") {
        return load(&args[2]);
    }
    let n: usize = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let per_dir = 1000usize;
    let tree = {
        let mut b = TreeBuilder::new();
        for i in 0..n {
            let path = format!("dir{:04}/file-{:06}.py", i / per_dir, i);
            let d = Digest::of(path.as_bytes());
            if let Err(e) = b.add(path.as_bytes(), EntryKind::File, 0o100644, 4096, d) {
                eprintln!("cannot build: {e}");
                std::process::exit(1);
            }
        }
        match b.build() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cannot build: {e}");
                std::process::exit(1);
            }
        }
    };
    let path = std::env::temp_dir().join(format!("spfs-view-memory-{}", std::process::id()));
    let bytes = spfs_model::Object::Manifest(tree).encode();
    if let Err(e) = std::fs::write(&path, &bytes) {
        eprintln!("cannot write {}: {e}", path.display());
        std::process::exit(1);
    }
    let status = std::process::Command::new(&args[0])
        .arg("--load")
        .arg(&path)
        .status();
    let _ = std::fs::remove_file(&path);
    if !status.map(|s| s.success()).unwrap_or(false) {
        std::process::exit(1);
    }
}

fn load(path: &str) {
    let bytes = std::fs::read(path).unwrap_or_default();
    let before = rss_bytes();
    let tree = match spfs_model::Object::decode(&bytes) {
        Ok(spfs_model::Object::Manifest(t)) => t,
        _ => {
            eprintln!("not a manifest: {path}");
            std::process::exit(1);
        }
    };
    let entries = tree.len();
    let registry = Registry::default();
    let rt = registry.register(
        RuntimeSpec {
            name: "mem".into(),
            root_pid: 1,
            owner_uid: 0,
            bound: false,
            edit: None,
            view_id: None,
            shared: None,
            routed: Vec::new(),
        },
        vec![],
        move || Ok::<_, std::io::Error>((tree, SystemTime::now())),
    );
    let after = rss_bytes();
    let per_entry = (after.saturating_sub(before)) as f64 / entries as f64;
    println!("view_entries {entries}");
    println!("view_bytes_per_entry {per_entry:.0}");
    // What the status reports for the same tree (memory.bytes_per_entry).
    if let Ok(rt) = &rt {
        let estimate = spfs_fuse::stats::tree_bytes(&rt.view.tree) as f64 / entries as f64;
        println!("view_bytes_per_entry_estimated {estimate:.0}");
    }
    drop(rt);
}
