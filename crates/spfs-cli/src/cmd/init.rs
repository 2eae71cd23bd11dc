//! `spfs init repo [--shared [--group NAME]] PATH`: create an empty
//! repository (upstream syntax: `init` takes the subcommand `repo`).
//!
//! Creating a repository where one already exists leaves it as it is, so the
//! command is safe to repeat; with `--shared` it (re)applies the shared
//! layout's owners and modes. It prints nothing on success.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use spfs_storage::FsRepository;

/// Arguments of `spfs init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(subcommand)]
    pub what: InitCommand,
}

/// What `spfs init` creates.
#[derive(Subcommand, Debug)]
pub enum InitCommand {
    /// Create an empty repository at PATH (an existing one is left as it is).
    ///
    /// Without --shared the repository is private: one user's, made with
    /// that user's umask.
    ///
    /// With --shared (run as root) it is the host's shared repository, the
    /// one the VFS service reads and that every user commits into without
    /// root. Every directory belongs to root, and every directory users
    /// write into (each payload and object shard, made up front, and tags/,
    /// runtimes/, tmp/) is sticky like /tmp: anyone may add files, only a
    /// file's owner (or root) may remove or replace it. With --group only
    /// members of GROUP may write (root:GROUP, setgid, sticky, 3775).
    /// locks/ and its files (the lock every writer shares and `spfs clean`
    /// takes alone: docs/clean.md) are root's and readable by all; running
    /// this again adds them to a shared repository made before they
    /// existed.
    ///
    /// What users commit stays theirs: nobody else can delete, rename over
    /// or rewrite their payloads, objects, runtime records or tags. A
    /// payload is readable by others straight from the repository only if
    /// the committed file was readable by others (mode 0444, else 0400);
    /// everyone else reads it through views. Objects (names, modes and
    /// digests, no file contents) are readable by all. A tag can be moved
    /// only by its creator (or root); a tag folder made by a user takes
    /// tags of that user only, one made by root takes everyone's. See
    /// docs/multi-user.md for the model and what it does not protect.
    Repo {
        /// The repository's directory; created with its parents if missing.
        path: PathBuf,
        /// Make (or complete) a repository shared by the host's users (root
        /// only; see above).
        #[arg(long)]
        shared: bool,
        /// Let only members of this group (a name or a numeric id) write
        /// into the shared repository.
        #[arg(long, value_name = "NAME", requires = "shared")]
        group: Option<String>,
    },
}

pub fn run(args: InitArgs) -> anyhow::Result<i32> {
    match args.what {
        InitCommand::Repo {
            path,
            shared,
            group,
        } => {
            let repo = if shared {
                let gid = group.as_deref().map(group_id).transpose()?;
                FsRepository::create_shared(&path, gid).with_context(|| {
                    format!("cannot make a shared repository at {}", path.display())
                })?
            } else {
                FsRepository::create(&path)?
            };
            tracing::info!(root = %repo.root().display(), sharing = ?repo.sharing(), "repository ready");
            Ok(0)
        }
    }
}

/// The id of group `name`: a number, or a name in `/etc/group`
/// (name:password:gid:members).
fn group_id(name: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    groups
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next()? == name).then(|| fields.nth(1)?.parse().ok())?
        })
        .with_context(|| {
            format!("unknown group '{name}' (not in /etc/group; give its numeric id instead)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_name_or_number() {
        assert_eq!(group_id("root").unwrap(), 0);
        assert_eq!(group_id("4242").unwrap(), 4242);
        let err = group_id("no-such-group-spfs").unwrap_err().to_string();
        assert!(err.contains("unknown group 'no-such-group-spfs'"), "{err}");
    }
}
