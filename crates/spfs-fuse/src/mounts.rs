//! The mount point: finding and clearing a mount left by a dead service.

use std::io;
use std::path::Path;

/// The filesystem type mounted at `path`, if something is mounted there.
pub fn mounted_type(path: &Path) -> io::Result<Option<String>> {
    // Other users' mount points may hold any bytes: read them lossily.
    let text = String::from_utf8_lossy(&std::fs::read("/proc/self/mountinfo")?).into_owned();
    let want = path.to_string_lossy();
    let mut found = None;
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if left.split_whitespace().nth(4).map(unescape).as_deref() == Some(&*want) {
            // The last matching line is the topmost mount.
            found = right.split_whitespace().next().map(str::to_string);
        }
    }
    Ok(found)
}

/// Make the filesystem mounted at `path` read-only or writable (the
/// superblock: every mount of it; `nosuid,nodev` are kept).
pub fn set_read_only(path: &Path, read_only: bool) -> io::Result<()> {
    use rustix::mount::MountFlags;
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
    if read_only {
        flags |= MountFlags::RDONLY;
    }
    Ok(rustix::mount::mount_remount(path, flags, "")?)
}

/// Set the kernel's readahead for the filesystem mounted at `path` (its
/// backing device info, `/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`).
pub fn set_readahead_kb(path: &Path, kb: u32) -> io::Result<()> {
    let dev = rustix::fs::stat(path)?.st_dev;
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    std::fs::write(
        format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"),
        kb.to_string(),
    )
}

/// A mount as `/proc/self/mountinfo` describes it.
pub struct MountEntry {
    pub fstype: String,
    pub source: String,
    /// The superblock's options, comma-separated.
    pub options: String,
}

/// Mount `id` (the first field of `/proc/self/mountinfo`, as `statx`
/// reports it) of this process's mount namespace.
pub fn mount_by_id(id: u64) -> io::Result<Option<MountEntry>> {
    let text = String::from_utf8_lossy(&std::fs::read("/proc/self/mountinfo")?).into_owned();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if left.split_whitespace().next().and_then(|f| f.parse().ok()) != Some(id) {
            continue;
        }
        // After the separator: type, source, superblock options.
        let mut fields = right.split_whitespace().map(unescape);
        return Ok(Some(MountEntry {
            fstype: fields.next().unwrap_or_default(),
            source: fields.next().unwrap_or_default(),
            options: fields.next().unwrap_or_default(),
        }));
    }
    Ok(None)
}

/// mountinfo escapes spaces and a few other bytes as octal `\NNN`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Prepare `path` for a new mount: create it, and detach a FUSE mount left
/// there by a service that died (its filesystem answers ENOTCONN). Returns
/// whether a stale mount was removed. A live filesystem there is an error:
/// this service must not take over a mount that something still serves.
pub fn prepare_mountpoint(path: &Path) -> io::Result<bool> {
    let mut removed = false;
    while let Some(kind) = mounted_type(path)? {
        let dead = kind.starts_with("fuse")
            && matches!(std::fs::metadata(path), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN));
        if !dead {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} already has a live {kind} filesystem mounted on it",
                    path.display()
                ),
            ));
        }
        tracing::warn!("detaching a stale {kind} mount at {}", path.display());
        rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH).map_err(|e| {
            io::Error::other(format!(
                "cannot detach the stale mount at {}: {e}",
                path.display()
            ))
        })?;
        removed = true;
    }
    std::fs::create_dir_all(path)?;
    Ok(removed)
}

/// Detach every FUSE mount at `path` (lazily: a busy mount goes too, and
/// nothing is left answering ENOTCONN).
pub fn detach_fuse(path: &Path) -> io::Result<()> {
    while mounted_type(path)?.is_some_and(|t| t.starts_with("fuse")) {
        rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| io::Error::other(format!("cannot detach {}: {e}", path.display())))?;
    }
    Ok(())
}
