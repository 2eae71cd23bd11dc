//! `spfs`: the command line of the spfs repository and runtimes.
//!
//! Each subcommand lives in a module of [`cmd`]; this file only parses the
//! arguments, loads the configuration and reports errors as one line on
//! stderr with a non-zero exit code. An unknown subcommand `spfs NAME …`
//! runs the program `spfs-NAME` (as upstream SpFS does), so `spfs vfs …`
//! reaches `spfs-vfs`.

mod cmd;
mod output;

use std::ffi::OsString;

use clap::{Parser, Subcommand};

/// A content-addressed filesystem for software environments.
#[derive(Parser, Debug)]
#[command(name = "spfs", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Print more detail about what happens (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create an empty repository.
    Init(cmd::init::InitArgs),
    /// Store a directory as a layer, or a stack of references as a platform.
    Commit(cmd::commit::CommitArgs),
    /// Store one blob (stdin by default) and print its digest.
    Write(cmd::commit::WriteArgs),
    /// Point one or more tags at a reference.
    Tag(cmd::tags::TagArgs),
    /// Remove versions of a tag.
    Untag(cmd::tags::UntagArgs),
    /// List every tag.
    Tags(cmd::tags::TagsArgs),
    /// List the tags and tag folders under a folder.
    LsTags(cmd::tags::LsTagsArgs),
    /// Show the history of a tag.
    Log(cmd::tags::LogArgs),
    /// List the files of a reference.
    Ls(cmd::inspect::LsArgs),
    /// Print the bytes of a file of a reference.
    Read(cmd::inspect::ReadArgs),
    /// Describe a reference: kind, digest, size, layers, tags.
    Info(cmd::inspect::InfoArgs),
    /// Show the paths added, changed and removed between two references.
    Diff(cmd::inspect::DiffArgs),
    /// List every layer in the repository.
    Layers(cmd::inspect::ListArgs),
    /// List every platform in the repository.
    Platforms(cmd::inspect::ListArgs),
    /// Find tags whose name contains a term.
    Search(cmd::inspect::SearchArgs),
    /// Verify that everything reachable from references is present and intact.
    Check(cmd::check::CheckArgs),
    /// Remove objects and payloads that nothing reaches (garbage collection).
    #[command(long_about = cmd::clean::LONG_ABOUT)]
    Clean(cmd::clean::CleanArgs),
    /// Print the effective configuration.
    Config(cmd::config::ConfigArgs),
    /// Run a command inside an environment.
    Run(cmd::run::RunArgs),
    /// Start an interactive shell inside an environment.
    Shell(cmd::run::ShellArgs),
    /// Turn editing of the current runtime on (or off with --off).
    Edit(cmd::edit::EditArgs),
    /// Drop the edits of the current runtime under some paths (all by default).
    Reset(cmd::edit::ResetArgs),
    /// Inspect and remove runtime records.
    #[command(subcommand)]
    Runtime(cmd::run::RuntimeCommand),
    /// List the configured remote repositories.
    #[command(subcommand)]
    Remote(cmd::remote::RemoteCommand),
    /// Copy references (and their tags) to a remote, children first.
    Push(cmd::remote::PushArgs),
    /// Copy references (and their tags) from a remote, children first.
    Pull(cmd::remote::PullArgs),
    /// Copy references (and their tags) from one repository to another.
    Sync(cmd::remote::SyncArgs),
    /// Serve the local repository to other hosts over gRPC.
    Server(cmd::remote::ServerArgs),
    /// Any other name runs the program `spfs-NAME` with the remaining arguments.
    #[command(external_subcommand)]
    External(Vec<OsString>),
}

fn main() {
    let cli = Cli::parse();
    output::init_logging(cli.verbose);
    let code = match cmd::dispatch(cli.command) {
        Ok(code) => code,
        Err(err) => {
            output::report_error(&err);
            1
        }
    };
    std::process::exit(code);
}
