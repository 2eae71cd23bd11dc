//! `spfs remote ls`, `spfs push`, `spfs pull` and `spfs sync`: moving
//! object graphs and tags between the local repository and the remotes
//! named in the configuration (`[remote.NAME] address = "..."`).
//!
//! The graph is copied by [`spfs_storage::transfer`] (children first,
//! checked on receipt, resumable); a reference given as a tag name (not a
//! digest, not `tag~N`) also gets its current target pushed as a new
//! version of that tag at the destination, unless it already points there.

use anyhow::Context;
use clap::{Args, Subcommand};
use spfs_model::{Digest, SpecItem};
use spfs_remote::Address;
use spfs_storage::Repository;
use spfs_storage::transfer::{Progress, Scope, TransferStats, copy_graph_scoped};

use crate::output::{print_json, progress_bar};

/// `spfs remote …`
#[derive(Subcommand, Debug)]
pub enum RemoteCommand {
    /// List the configured remotes (name, kind, address; never a secret).
    Ls {
        /// One JSON document: a list of {"name", "kind", "address"}.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `spfs push`.
#[derive(Args, Debug)]
pub struct PushArgs {
    /// References to push: tags (pushed as tags too), digests, prefixes.
    #[arg(required = true)]
    pub refs: Vec<String>,
    /// The remote to push to.
    #[arg(long, default_value = "origin")]
    pub to: String,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

/// Arguments of `spfs pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// References to pull, as the remote resolves them.
    #[arg(required = true)]
    pub refs: Vec<String>,
    /// The remote to pull from.
    #[arg(long, default_value = "origin")]
    pub from: String,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

/// Arguments of `spfs sync`.
#[derive(Args, Debug)]
pub struct SyncArgs {
    /// References to copy, as the source resolves them.
    #[arg(required = true)]
    pub refs: Vec<String>,
    /// The source remote (`local`: this host's repository).
    #[arg(long)]
    pub from: String,
    /// The destination remote (`local`: this host's repository).
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

/// Options of every transfer.
#[derive(Args, Debug)]
pub struct TransferArgs {
    /// Payloads copied at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Print what was copied as one JSON document.
    #[arg(long)]
    pub json: bool,
}

pub fn remote_cmd(cmd: RemoteCommand) -> anyhow::Result<i32> {
    let config = super::config()?;
    match cmd {
        RemoteCommand::Ls { json } => {
            let rows: Vec<_> = config
                .remote
                .iter()
                .map(|(name, r)| {
                    let kind = Address::parse(&r.address)
                        .map(|a| a.kind())
                        .unwrap_or("invalid");
                    (name.clone(), kind, r.address.clone())
                })
                .collect();
            if json {
                let list: Vec<_> = rows
                    .iter()
                    .map(|(n, k, a)| serde_json::json!({"name": n, "kind": k, "address": a}))
                    .collect();
                print_json(&list)?;
            } else {
                for (name, kind, address) in rows {
                    println!("{name:<16} {kind:<10} {address}");
                }
            }
        }
    }
    Ok(0)
}

pub fn push(args: PushArgs) -> anyhow::Result<i32> {
    transfer("local", &args.to, &args.refs, &args.transfer)
}

pub fn pull(args: PullArgs) -> anyhow::Result<i32> {
    transfer(&args.from, "local", &args.refs, &args.transfer)
}

pub fn sync(args: SyncArgs) -> anyhow::Result<i32> {
    transfer(&args.from, &args.to, &args.refs, &args.transfer)
}

/// The repository called `name`: `local`, or a configured remote.
pub fn open(config: &spfs_config::Config, name: &str) -> anyhow::Result<Box<dyn Repository>> {
    if name == "local" {
        return Ok(Box::new(super::open_or_create_repo(config)?));
    }
    Ok(spfs_remote::open_remote(config, name)?)
}

/// Copy `refs` (resolved at the source) and their tags from `from` to `to`.
fn transfer(from: &str, to: &str, refs: &[String], opts: &TransferArgs) -> anyhow::Result<i32> {
    let config = super::config()?;
    let src = open(&config, from)?;
    let dst = open(&config, to)?;
    // Resolve everything before moving anything: a bad reference fails
    // the whole command with nothing copied.
    let mut roots = Vec::new();
    let mut tags = Vec::new();
    for text in refs {
        let digest = src
            .resolve_ref(text)
            .with_context(|| format!("cannot resolve '{text}' in {from} ({})", src.address()))?;
        if let Ok(SpecItem::Tag(t)) = SpecItem::parse(text)
            && t.version == 0
        {
            tags.push((t.name, digest));
        }
        roots.push(digest);
    }
    // Into the local repository, objects present may lack payloads (read
    // through by the VFS): look inside them.
    let scope = if to == "local" {
        Scope::Repair
    } else {
        Scope::Whole
    };
    let (stats, tagged) = send(
        &*src,
        &*dst,
        (from, to),
        &roots,
        tags,
        scope,
        opts.jobs as usize,
    )?;
    report(from, to, &stats, &tagged, opts.json)?;
    Ok(0)
}

/// Copy the graphs of `roots` from `src` to `dst` (named `names`), then
/// point each of `tags` at its target there unless it already does.
/// Returns what was copied and the tags that got a new version.
pub fn send(
    src: &dyn Repository,
    dst: &dyn Repository,
    (from, to): (&str, &str),
    roots: &[Digest],
    tags: Vec<(String, Digest)>,
    scope: Scope,
    jobs: usize,
) -> anyhow::Result<(TransferStats, Vec<(String, Digest)>)> {
    // What a transfer killed earlier left half-written goes (best effort).
    if let Ok(n @ 1..) = dst.clean_stale() {
        tracing::info!("removed {n} temporary file(s) left in {to} by dead transfers");
    }
    // A local destination's garbage-collection lock, shared from the
    // transfer's first check until its tags are written (docs/clean.md).
    let _guard = dst.gc_guard()?;
    let bar = Bar(progress_bar(
        0,
        "{spinner} {pos}/{len} objects and payloads {wide_bar} {msg}",
    ));
    let result = copy_graph_scoped(src, dst, roots, scope, jobs, &bar);
    bar.0.finish_and_clear();
    let stats =
        result.with_context(|| format!("cannot copy from {from} to {to}; run again to resume"))?;
    let mut tagged = Vec::new();
    for (name, digest) in tags {
        let current = match dst.tag_history(&name) {
            Ok(h) => h.last().map(|v| v.target),
            Err(spfs_storage::StorageError::UnknownTag(_)) => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read tag {name} in {to}")),
        };
        if current != Some(digest) {
            dst.push_tag(&name, &digest)
                .with_context(|| format!("cannot tag {name} in {to}"))?;
            tagged.push((name, digest));
        }
    }
    Ok((stats, tagged))
}

fn report(
    from: &str,
    to: &str,
    stats: &TransferStats,
    tagged: &[(String, Digest)],
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let tags: Vec<_> = tagged
            .iter()
            .map(|(n, d)| serde_json::json!({"tag": n, "target": d.to_string()}))
            .collect();
        return print_json(&serde_json::json!({
            "from": from, "to": to, "stats": stats, "tagged": tags,
        }));
    }
    println!(
        "{from} -> {to}: {} objects and {} payloads copied ({} bytes); {} objects and {} payloads already there",
        stats.objects_copied,
        stats.payloads_copied,
        stats.bytes_copied,
        stats.objects_present,
        stats.payloads_present
    );
    for (name, digest) in tagged {
        println!("tagged {name} -> {digest}");
    }
    Ok(())
}

/// A transfer's progress as an indicatif bar (hidden off a terminal).
struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn need(&self, items: u64) {
        self.0.inc_length(items);
    }
    fn done(&self, bytes: u64) {
        self.0.inc(1);
        if bytes > 0 {
            // The bar counts items; bytes go in its message.
            self.0
                .set_message(format!("{}", indicatif::HumanBytes(bytes)));
        }
    }
}

/// Arguments of `spfs server`.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// The address to listen on (port 0: any free port; the one chosen is
    /// printed).
    #[arg(long, default_value = "127.0.0.1:7737")]
    pub listen: std::net::SocketAddr,
    /// Refuse every write (objects, payloads, tags). Without it, a token
    /// is required.
    #[arg(long)]
    pub read_only: bool,
    /// Require this bearer token (read from the file) on every request.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
}

/// `spfs server`: serve the local repository over gRPC until SIGINT or
/// SIGTERM.
pub fn server(args: ServerArgs) -> anyhow::Result<i32> {
    if !args.read_only && args.token_file.is_none() {
        anyhow::bail!(
            "a writable server needs --token-file (anyone who reaches the port could write \
             objects and move tags as this server's user); or serve with --read-only"
        );
    }
    let config = super::config()?;
    let repo = super::open_repo(&config)?;
    let token = match &args.token_file {
        Some(path) => Some(
            spfs_remote::read_token(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?,
        ),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = spfs_remote::grpc::server::local_addr(&listener)
            .map(|a| a.to_string())
            .unwrap_or_default();
        println!(
            "serving {} on grpc://{addr}{}",
            Repository::address(&repo),
            if args.read_only { " (read-only)" } else { "" }
        );
        use std::io::Write;
        std::io::stdout().flush()?;
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        let options = spfs_remote::grpc::server::ServerOptions {
            read_only: args.read_only,
            token,
        };
        spfs_remote::grpc::server::serve(repo, listener, options, shutdown)
            .await
            .context("the server failed")?;
        anyhow::Ok(0)
    })
}
