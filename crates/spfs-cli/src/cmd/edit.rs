//! Changing a live editable runtime: `spfs edit [--off]`, `spfs reset
//! [PATH…]` and `spfs commit layer|platform`.
//!
//! Each acts on the runtime it runs in (`SPFS_RUNTIME`, set by `spfs run`)
//! or the one `--runtime NAME` names, through the VFS service, which holds
//! the runtime's edits: only the runtime's owner (or root) may. The
//! running processes keep running and see the change at once.

use anyhow::Context;
use clap::{Args, ValueEnum};
use spfs_control::proto;
use spfs_model::{Digest, Object, Platform};

/// Which runtime a command acts on.
#[derive(Args, Debug, Clone)]
pub struct RuntimeArg {
    /// The runtime (default: the one this command runs in, from
    /// `SPFS_RUNTIME`).
    #[arg(long, value_name = "NAME")]
    pub runtime: Option<String>,
}

impl RuntimeArg {
    fn name(&self) -> anyhow::Result<String> {
        match &self.runtime {
            Some(n) => Ok(n.clone()),
            None => std::env::var("SPFS_RUNTIME")
                .ok()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "not in a runtime: run this inside `spfs run`/`spfs shell`, \
                         or name one with --runtime"
                    )
                }),
        }
    }
}

/// Arguments of `spfs edit`.
#[derive(Args, Debug)]
pub struct EditArgs {
    /// Stop taking changes (writes fail with EROFS); the edits stay.
    #[arg(long)]
    pub off: bool,
    #[command(flatten)]
    pub runtime: RuntimeArg,
}

/// Arguments of `spfs reset`.
#[derive(Args, Debug)]
pub struct ResetArgs {
    /// Paths whose edits are dropped (under the mount point, absolute or
    /// relative to it); none: every edit.
    #[arg(value_name = "PATH")]
    pub paths: Vec<String>,
    #[command(flatten)]
    pub runtime: RuntimeArg,
}

/// What `spfs commit` stores from a runtime.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitKind {
    /// The runtime's edits, as a new layer put on top of its stack.
    Layer,
    /// The runtime's whole stack (its edits first committed as a layer).
    Platform,
}

fn rt() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Run `f` with a client of the running service.
fn with_service<T>(
    config: &spfs_config::Config,
    f: impl AsyncFnOnce(spfs_control::Client) -> Result<T, tonic::Status>,
) -> anyhow::Result<T> {
    rt()?.block_on(async {
        let client = spfs_fuse::launch::connect(config)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the VFS service is not running"))?;
        f(client)
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))
    })
}

pub fn edit(args: EditArgs) -> anyhow::Result<i32> {
    let config = super::config()?;
    let name = args.runtime.name()?;
    with_service(&config, async |c| {
        c.edit(proto::EditRequest {
            runtime: name.clone(),
            on: !args.off,
        })
        .await
    })?;
    println!(
        "runtime {name} is {}",
        if args.off { "read-only" } else { "editable" }
    );
    Ok(0)
}

/// `PATH` relative to the mount point.
fn relative(mountpoint: &std::path::Path, path: &str) -> anyhow::Result<String> {
    let p = std::path::Path::new(path);
    let rel = match p.strip_prefix(mountpoint) {
        Ok(rel) => rel,
        Err(_) if p.is_absolute() => {
            anyhow::bail!(
                "{path} is not under the mount point {}",
                mountpoint.display()
            )
        }
        Err(_) => p,
    };
    let text = rel.to_string_lossy().into_owned();
    if rel
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        anyhow::bail!("{path}: '..' is not allowed");
    }
    Ok(text)
}

pub fn reset(args: ResetArgs) -> anyhow::Result<i32> {
    let config = super::config()?;
    let name = args.runtime.name()?;
    let paths = args
        .paths
        .iter()
        .map(|p| relative(&config.vfs.mountpoint, p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    with_service(&config, async |c| {
        c.reset(proto::ResetRequest {
            runtime: name.clone(),
            paths: paths.clone(),
        })
        .await
    })?;
    Ok(0)
}

/// `spfs commit layer|platform`: store what runtime `runtime` shows.
pub fn commit(kind: CommitKind, runtime: &RuntimeArg, tags: &[String]) -> anyhow::Result<Digest> {
    super::commit::check_tag_names(tags)?;
    let config = super::config()?;
    let repo = super::open_repo(&config)?;
    let name = runtime.name()?;
    let done = with_service(&config, async |c| {
        c.commit(proto::CommitRequest {
            runtime: name.clone(),
        })
        .await
    })
    .with_context(|| format!("cannot commit runtime {name}"))?;
    let stack = done
        .stack
        .iter()
        .map(|d| d.parse::<Digest>())
        .collect::<Result<Vec<_>, _>>()
        .context("the service answered a bad digest")?;
    if !done.layer.is_empty() {
        tracing::info!(layer = %done.layer, files = done.files, "edits committed");
    }
    let digest = match kind {
        CommitKind::Layer => {
            if done.layer.is_empty() {
                anyhow::bail!("nothing to commit: runtime {name} has no edits");
            }
            done.layer.parse()?
        }
        CommitKind::Platform => {
            if stack.is_empty() {
                anyhow::bail!("nothing to commit: runtime {name} has an empty stack and no edits");
            }
            repo.write_object(&Object::Platform(Platform { stack }))?
        }
    };
    super::commit::push_tags(&repo, tags, &digest)?;
    Ok(digest)
}
