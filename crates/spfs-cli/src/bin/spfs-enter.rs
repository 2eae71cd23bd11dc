//! `spfs-enter`: bind a runtime's view, then run its command.
//!
//! `spfs run` executes this helper instead of the command when the user may
//! not create a mount namespace but the helper was installed with the
//! `cap_sys_admin` file capability (`scripts/install.sh` does that). It
//! takes no configuration and trusts no environment variable: it binds the
//! caller's own view, which the service shows to the caller alone, over the
//! mount point of a root-mounted spfs service ([`spfs_fuse::bind`] checks
//! both), gives up every capability, and executes the command.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

const USAGE: &str = "\
usage: spfs-enter [--writable] MOUNTPOINT -- COMMAND [ARG...]

Gives this process a mount namespace in which MOUNTPOINT (the mount point
of the spfs VFS service) shows only its own runtime's view, then runs
COMMAND. `spfs run` calls it for users who may not create mount namespaces
themselves; it needs the cap_sys_admin file capability, and the calling
process must be the root of a runtime registered with a bound view.
--writable: the view is editable (its mount is not made read-only; the
service refuses changes to views that are not).";

fn fail(message: impl std::fmt::Display, code: i32) -> ! {
    eprintln!("spfs-enter: {message}");
    std::process::exit(code)
}

fn main() {
    let mut args = std::env::args_os().skip(1).peekable();
    let writable = args.next_if(|a| a == "--writable").is_some();
    let mountpoint = match args.next() {
        Some(a) if a == "-h" || a == "--help" => {
            println!("{USAGE}");
            return;
        }
        Some(a) => PathBuf::from(a),
        None => fail(format!("no mount point given\n{USAGE}"), 2),
    };
    if args.next().is_none_or(|a| a != "--") {
        fail(format!("expected `--` after the mount point\n{USAGE}"), 2);
    }
    let command: Vec<_> = args.collect();
    let Some(program) = command.first() else {
        fail(format!("no command given\n{USAGE}"), 2)
    };
    if let Err(e) = spfs_fuse::bind::enter_bound_view(&mountpoint, writable) {
        fail(format!("cannot bind the runtime's view: {e}"), 1);
    }
    // Nothing of the capability survives into the command (an exec of a
    // program without file capabilities would clear them too).
    let none = rustix::thread::CapabilitySet::empty();
    if let Err(e) = rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    ) {
        fail(format!("cannot drop capabilities: {e}"), 1);
    }
    let err = std::process::Command::new(program)
        .args(&command[1..])
        .exec();
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    fail(
        format!("cannot run {}: {err}", program.to_string_lossy()),
        code,
    );
}
