//! `spfs init repo PATH`: create an empty repository (upstream syntax:
//! `init` takes the subcommand `repo`).
//!
//! Creating a repository where one already exists leaves it as it is, so the
//! command is safe to repeat. It prints nothing on success.

use std::path::PathBuf;

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
    Repo {
        /// The repository's directory; created with its parents if missing.
        path: PathBuf,
    },
}

pub fn run(args: InitArgs) -> anyhow::Result<i32> {
    match args.what {
        InitCommand::Repo { path } => {
            let repo = FsRepository::create(&path)?;
            tracing::info!(root = %repo.root().display(), "repository ready");
            Ok(0)
        }
    }
}
