//! Bound views: a mount namespace in which the mount point shows one view.
//!
//! In the shared mount every runtime's names hang off one root, so the
//! kernel may cache none of the names directly in it (see `spfs_vfs::vfs`).
//! A runtime whose view is *bound* gets a mount namespace of its own in
//! which the mount point is a bind of its view's own root directory, found
//! in the same FUSE mount by the name [`VIEW_DOOR`]: the service answers
//! that name with the caller's own bound view and nobody else's. From then
//! on, every name the runtime walks belongs to its view alone and is cached
//! by the kernel; the one service and the one mount serve it as before.
//!
//! [`enter_bound_view`] is all it takes, run by the runtime's root process
//! after its view was registered as bound and before it executes the
//! command. It needs `CAP_SYS_ADMIN`: `spfs run` calls it itself as root;
//! other users get it through the `spfs-enter` helper, installed with that
//! file capability, which does nothing but this and then executes the
//! command with no capability left. Because the helper acts for users, it
//! binds only the door of a root-mounted spfs filesystem over that
//! filesystem's own mount point, named by an absolute path without
//! symlinks, read-only, `nosuid` and `nodev` (set on the detached copy by
//! descriptor), in a namespace that receives the host's mount events but
//! sends none back.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Mode, OFlags, StatxFlags};
use rustix::mount::{MountPropagationFlags, MoveMountFlags, OpenTreeFlags};

pub use spfs_vfs::vfs::VIEW_DOOR;

/// `statfs` type of a FUSE filesystem.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
/// The source our service mounts its filesystem from (its FUSE fsname).
const SPFS_SOURCE: &str = "spfs";

/// Why a view could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{0} is not the mount point of an spfs VFS service started by root")]
    NotSpfsMount(PathBuf),
    #[error("this process has no bound view at {0} (its runtime was not registered as bound)")]
    NoView(PathBuf),
    #[error(
        "creating a mount namespace needs CAP_SYS_ADMIN: run as root, or install spfs-enter \
         with that file capability (scripts/install.sh), or set vfs.bind_views = \"never\""
    )]
    NotPermitted,
    #[error("cannot {what}: {source}")]
    Sys {
        what: String,
        source: std::io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> BindError {
    let what = what.into();
    move |e| BindError::Sys {
        what,
        source: e.into(),
    }
}

/// Give this process a mount namespace of its own in which `mountpoint`
/// shows only this process's bound view (see the module docs). Other
/// threads of the process keep the old namespace: call it while the
/// process is single-threaded, or before starting threads that walk paths.
pub fn enter_bound_view(mountpoint: &Path, writable: bool) -> Result<(), BindError> {
    // A namespace of our own, which receives the host's later mounts and
    // unmounts but never sends ours back.
    // SAFETY: NEWNS shares no file descriptors; the namespace change is
    // the point, and is documented for callers.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }.map_err(
        |e| match e {
            rustix::io::Errno::PERM => BindError::NotPermitted,
            e => sys("create a mount namespace")(e),
        },
    )?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )
    .map_err(sys("make the new mount namespace receive-only"))?;
    // No symlink anywhere in the path: what is checked below is what the
    // mount lands on, and nothing the caller controls redirects it.
    if !mountpoint.is_absolute() {
        return Err(BindError::NotSpfsMount(mountpoint.into()));
    }
    let target = rustix::fs::openat2(
        CWD,
        mountpoint,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        rustix::fs::ResolveFlags::NO_SYMLINKS,
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => BindError::NotSpfsMount(mountpoint.into()),
        e => sys(format!("open {}", mountpoint.display()))(e),
    })?;
    let mnt_id =
        spfs_mount_root(&target).ok_or_else(|| BindError::NotSpfsMount(mountpoint.into()))?;
    // The door's dentry is shared by every caller and answered per caller:
    // another runtime looking through it between our lookup and our mount
    // makes the kernel drop our dentry, and the mount fails with ENOENT.
    // Look again (the window is a few microseconds).
    let mut tries = 0;
    while let Err(e) = bind_door(&target, mnt_id, mountpoint, writable) {
        tries += 1;
        match e {
            BindError::Sys { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound && tries < BIND_TRIES => {}
            e => return Err(e),
        }
    }
    // A working directory under the mount point still names the shared
    // root's node: walk to the same path in the view (best effort).
    if let Ok(cwd) = std::env::current_dir()
        && cwd.starts_with(mountpoint)
    {
        let _ = std::env::set_current_dir(&cwd);
    }
    Ok(())
}

/// How many times a bind raced by other runtimes' lookups is tried.
const BIND_TRIES: u32 = 1000;

/// Mount the view behind the door of `target` (mount `mnt_id`) over it.
fn bind_door(
    target: &OwnedFd,
    mnt_id: u64,
    mountpoint: &Path,
    writable: bool,
) -> Result<(), BindError> {
    let door = match open_dir(target, door_name(), OFlags::NOFOLLOW) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Err(BindError::NoView(mountpoint.into())),
        Err(e) => {
            return Err(sys(format!(
                "open the view's door in {}",
                mountpoint.display()
            ))(e));
        }
    };
    // The door must lead into the same mount (a FUSE filesystem may serve
    // anything under any name; ours serves the view's root there).
    if mount_id(&door) != Some(mnt_id) {
        return Err(BindError::NotSpfsMount(mountpoint.into()));
    }
    let tree = rustix::mount::open_tree(
        &door,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .map_err(sys("copy the view's mount"))?;
    // Read-only (unless the view is editable: the service refuses changes
    // to a read-only view anyway), nosuid, nodev, set on the detached copy
    // itself: no path is looked up again while this process holds the
    // capability.
    let rdonly = if writable { 0 } else { MOUNT_ATTR_RDONLY };
    set_mount_attrs(&tree, rdonly | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV).map_err(|e| {
        BindError::Sys {
            what: "make the view's mount read-only".into(),
            source: e,
        }
    })?;
    rustix::mount::move_mount(
        &tree,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| sys(format!("mount the view over {}", mountpoint.display()))(e))
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Set `attrs` on the mount `fd` (from `open_tree`) by descriptor.
fn set_mount_attrs(fd: &OwnedFd, attrs: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid descriptor, an empty C string, and a pointer to a
    // live `mount_attr` of the size passed; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn door_name() -> &'static std::ffi::OsStr {
    std::os::unix::ffi::OsStrExt::from_bytes(VIEW_DOOR)
}

fn open_dir(
    dir: impl AsFd,
    path: impl rustix::path::Arg,
    extra: OFlags,
) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | extra,
        Mode::empty(),
    )
}

fn mount_id(fd: &OwnedFd) -> Option<u64> {
    let st = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID).ok()?;
    (st.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(st.stx_mnt_id)
}

/// The mount id of `fd` if it is the root of a mount of an spfs VFS
/// service mounted by root (a FUSE mount records its mounter's uid as
/// `user_id`; a user's own FUSE mount could serve anything as the door).
fn spfs_mount_root(fd: &OwnedFd) -> Option<u64> {
    let fs = rustix::fs::fstatfs(fd).ok()?;
    if fs.f_type as i64 != FUSE_SUPER_MAGIC {
        return None;
    }
    // Attributes as cached: the mount point may be a view's root that
    // the service answers only to that view's runtime (a runtime nested in
    // a bound one is not it), and what is checked here is the mount's.
    let st = rustix::fs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
        StatxFlags::MNT_ID | StatxFlags::BASIC_STATS,
    )
    .ok()?;
    let root = rustix::fs::StatxAttributes::MOUNT_ROOT;
    if !st.stx_attributes_mask.contains(root) || !st.stx_attributes.contains(root) {
        return None;
    }
    let id = mount_id(fd)?;
    let m = crate::mounts::mount_by_id(id).ok()??;
    let ours = matches!(m.fstype.as_str(), "fuse" | "fuse.spfs") && m.source == SPFS_SOURCE;
    (ours && m.options.split(',').any(|o| o == "user_id=0")).then_some(id)
}
