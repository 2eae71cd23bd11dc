//! The subcommands of `spfs`, one module each, and what they share: loading
//! the configuration and opening the repository.

pub mod check;
pub mod clean;
pub mod commit;
pub mod config;
pub mod edit;
pub mod init;
pub mod inspect;
pub mod remote;
pub mod run;
pub mod tags;

use anyhow::Context;
use spfs_config::Config;
use spfs_storage::FsRepository;

use crate::Command;

/// Run one subcommand; returns the process exit code.
pub fn dispatch(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Init(a) => init::run(a),
        Command::Commit(a) => commit::commit(a),
        Command::Write(a) => commit::write(a),
        Command::Tag(a) => tags::tag(a),
        Command::Untag(a) => tags::untag(a),
        Command::Tags(a) => tags::tags(a),
        Command::LsTags(a) => tags::ls_tags(a),
        Command::Log(a) => tags::log(a),
        Command::Ls(a) => inspect::ls(a),
        Command::Read(a) => inspect::read(a),
        Command::Info(a) => inspect::info(a),
        Command::Diff(a) => inspect::diff(a),
        Command::Layers(a) => inspect::layers(a),
        Command::Platforms(a) => inspect::platforms(a),
        Command::Search(a) => inspect::search(a),
        Command::Check(a) => check::run(a),
        Command::Clean(a) => clean::run(a),
        Command::Config(a) => config::run(a),
        Command::Run(a) => run::run(a),
        Command::Shell(a) => run::shell(a),
        Command::Runtime(c) => run::runtime_cmd(c),
        Command::Edit(a) => edit::edit(a),
        Command::Reset(a) => edit::reset(a),
        Command::Remote(c) => remote::remote_cmd(c),
        Command::Push(a) => remote::push(a),
        Command::Pull(a) => remote::pull(a),
        Command::Sync(a) => remote::sync(a),
        Command::Server(a) => remote::server(a),
        Command::External(args) => external(args),
    }
}

/// The effective configuration.
pub fn config() -> anyhow::Result<Config> {
    Config::load().context("cannot load the configuration")
}

/// Open the configured repository (it must exist).
pub fn open_repo(config: &Config) -> anyhow::Result<FsRepository> {
    Ok(FsRepository::open(&config.storage.root)?)
}

/// Open the configured repository, creating it if it does not exist yet.
pub fn open_or_create_repo(config: &Config) -> anyhow::Result<FsRepository> {
    match FsRepository::open(&config.storage.root) {
        Err(spfs_storage::StorageError::NoRepository(_)) => {
            Ok(FsRepository::create(&config.storage.root)?)
        }
        other => Ok(other?),
    }
}

/// `spfs NAME ARGS…` runs `spfs-NAME ARGS…`, looked up beside this program
/// first, then on `PATH`.
fn external(args: Vec<std::ffi::OsString>) -> anyhow::Result<i32> {
    use std::os::unix::process::CommandExt;
    let Some((name, rest)) = args.split_first() else {
        anyhow::bail!("no subcommand given; see 'spfs --help'");
    };
    let program = format!("spfs-{}", name.to_string_lossy());
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(&program)))
        .filter(|p| p.exists());
    let target = beside
        .map(std::ffi::OsString::from)
        .unwrap_or_else(|| program.clone().into());
    let err = std::process::Command::new(&target).args(rest).exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        anyhow::bail!(
            "unknown command '{}' (no program {program} found); see 'spfs --help'",
            name.to_string_lossy()
        );
    }
    Err(err).with_context(|| format!("cannot run {program}"))
}
