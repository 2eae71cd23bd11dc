//! `spfs run`, `spfs shell` and `spfs runtime`: running commands inside an
//! environment served by the VFS service.
//!
//! A runtime is read-only unless it is *editable* (`--edit`, or an empty
//! spec `-` without `--no-edit`): then its writes go to its own upper area
//! (see `spfs_vfs::edit`), and `spfs commit layer` turns them into a layer.
//! A *durable* runtime (`--keep-runtime`, editable) keeps its upper area
//! and record after its processes exit; `spfs run --rerun NAME` runs it
//! again, also after the service restarted.
//!
//! `spfs run SPEC -- CMD` resolves the spec (so bad input fails before
//! anything starts), connects to the VFS service (starting it if needed),
//! registers the view for *this* process, saves a runtime record, and then
//! replaces itself with CMD. CMD and everything it starts see the view; the
//! exit code is CMD's own. When the last process of the tree exits, however
//! the tree was ended, the service drops the view and removes the record.
//!
//! With `vfs.bind_views = "auto"` (the default) the view is *bound* when
//! this process may create a mount namespace: as root it does so itself
//! ([`spfs_fuse::bind`]), otherwise it executes CMD through the
//! `spfs-enter` helper if that is installed with its file capability. A
//! bound runtime's mount point shows only its view, and the kernel caches
//! every name in it; a routed runtime sees its view through the shared
//! mount (see `docs/platform-hosts.md`).

use std::os::unix::process::CommandExt;

use anyhow::Context;
use clap::{Args, Subcommand};
use spfs_control::proto;
use spfs_model::EnvSpec;
use spfs_storage::runtimes::{RuntimeRecord, new_runtime_name};

use crate::output::print_json;

/// How a runtime is started (shared by `spfs run` and `spfs shell`).
#[derive(Args, Debug)]
pub struct StartArgs {
    /// The environment: `a+b+c` of tags, digests or digest prefixes, a
    /// `*.spfs.yaml` path, or `-` for an empty one (editable by default).
    #[arg(required_unless_present = "rerun", conflicts_with = "rerun")]
    pub spec: Option<String>,
    /// Editable: writes under the mount point go to this runtime's own
    /// upper area (other runtimes never see them); `spfs commit layer`
    /// makes a layer of them.
    #[arg(short = 'e', long, conflicts_with = "no_edit")]
    pub edit: bool,
    /// Read-only, even for an empty spec.
    #[arg(long)]
    pub no_edit: bool,
    /// Durable (and editable): keep the runtime's edits and record after
    /// its processes exit, to run it again with `--rerun NAME`.
    #[arg(long, conflicts_with = "no_edit")]
    pub keep_runtime: bool,
    /// The runtime's name (letters, digits, `-`, `_`, `.`); default: a
    /// new unique one.
    #[arg(long, value_name = "NAME")]
    pub runtime_name: Option<String>,
    /// Run the kept (durable) runtime NAME again, with its stack and edits.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["runtime_name", "no_edit"])]
    pub rerun: Option<String>,
}

/// Arguments of `spfs run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub start: StartArgs,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Arguments of `spfs shell`.
#[derive(Args, Debug)]
pub struct ShellArgs {
    #[command(flatten)]
    pub start: StartArgs,
}

/// `spfs runtime …`
#[derive(Subcommand, Debug)]
pub enum RuntimeCommand {
    /// List runtime records.
    Ls {
        /// One JSON document: a list of records {"name", "spec", "layers", "root_pid", "owner_uid", "created", "mountpoint", "command", "cgroup", "bound"}.
        #[arg(long)]
        json: bool,
    },
    /// Show one runtime record.
    Info {
        name: String,
        /// The record as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Drop a runtime's view (if the service still has it) and remove its
    /// record; a durable runtime's kept edits go too.
    Rm { name: String },
    /// Remove the records of runtimes whose processes are gone (not those
    /// of durable runtimes, which are meant to stay; remove those with
    /// `spfs runtime rm`). Users prune their own records, root every one.
    Prune {
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    enter(&args.start, args.command)
}

pub fn shell(args: ShellArgs) -> anyhow::Result<i32> {
    let shell = std::env::var("SHELL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/bin/sh".into());
    enter(&args.start, vec![shell])
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// How this process binds its view, if it does.
enum Binding {
    /// Routed: the view is seen through the shared mount.
    None,
    /// This process may create a mount namespace itself (root).
    Here,
    /// Through the `spfs-enter` helper at this path.
    Helper(std::path::PathBuf),
}

/// Decide how to bind, as `vfs.bind_views` says and privilege allows.
fn binding(config: &spfs_config::Config) -> Binding {
    if config.vfs.bind_views == spfs_config::BindViews::Never {
        return Binding::None;
    }
    if rustix::process::geteuid().is_root() {
        return Binding::Here;
    }
    let helper = if config.vfs.enter_helper.as_os_str().is_empty() {
        match std::env::current_exe() {
            Ok(exe) => exe.with_file_name("spfs-enter"),
            Err(_) => return Binding::None,
        }
    } else {
        config.vfs.enter_helper.clone()
    };
    // The helper binds only if it was given its file capability.
    let mut buf = [0u8; 64];
    match rustix::fs::getxattr(&helper, "security.capability", &mut buf) {
        Ok(_) => Binding::Helper(helper),
        Err(_) => Binding::None,
    }
}

/// Register the view for this process, then exec `command`.
fn enter(start: &StartArgs, command: Vec<String>) -> anyhow::Result<i32> {
    let config = super::config()?;
    let repo = super::open_repo(&config)?;
    let Some(program) = command.first() else {
        anyhow::bail!("no command given");
    };
    // A kept runtime runs again with its own stack and name.
    let kept = match &start.rerun {
        Some(name) => {
            let r = repo
                .read_runtime(name)
                .with_context(|| format!("cannot run runtime '{name}' again"))?;
            let uid = rustix::process::getuid().as_raw();
            if r.owner_uid != uid {
                anyhow::bail!("runtime '{name}' belongs to user {}", r.owner_uid);
            }
            if !r.keep {
                anyhow::bail!(
                    "runtime '{name}' is not durable (start one with `spfs run --keep-runtime`)"
                );
            }
            Some(r)
        }
        None => None,
    };
    let spec_text = match (&kept, &start.spec) {
        (Some(r), _) => r.spec.clone(),
        (None, Some(s)) => s.clone(),
        (None, None) => anyhow::bail!("no environment given"),
    };
    let (digests, layers) = match &kept {
        Some(r) => (r.layers.clone(), r.layers.clone()),
        None => {
            let spec = EnvSpec::parse(&spec_text)?;
            // References only on a remote read through (`vfs.remotes`):
            // their objects are fetched now, their payloads when first read.
            let digests = spfs_remote::read_through(&config).resolve_spec(&repo, &spec)?;
            let layers = repo.flatten(&digests)?;
            (digests, layers)
        }
    };
    let keep = start.keep_runtime || kept.is_some();
    let editable = keep || start.edit || (spec_text.trim() == "-" && !start.no_edit);
    let name = match (&kept, &start.runtime_name) {
        (Some(r), _) => r.name.clone(),
        (None, Some(n)) => n.clone(),
        (None, None) => new_runtime_name(),
    };
    let pid = std::process::id();
    let mut record = RuntimeRecord {
        name: name.clone(),
        spec: spec_text.to_string(),
        layers: layers.clone(),
        root_pid: pid,
        owner_uid: rustix::process::getuid().as_raw(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        mountpoint: config.vfs.mountpoint.clone(),
        command: command.clone(),
        cgroup: String::new(),
        bound: false,
        editable,
        keep,
    };
    let binding = binding(&config);
    record.bound = !matches!(binding, Binding::None);
    let resolved: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
    let rt = runtime()?;
    rt.block_on(async {
        let client = spfs_fuse::launch::connect_or_start(&config).await?;
        let mounted = client
            .mount(proto::MountRequest {
                root_pid: pid,
                spec: if resolved.is_empty() {
                    "-".into()
                } else {
                    resolved.join("+")
                },
                runtime: name.clone(),
                bind: record.bound,
                edit: editable,
                keep,
                resume: kept.is_some(),
            })
            .await
            .map_err(|status| {
                anyhow::anyhow!("cannot mount the environment: {}", status.message())
            })?;
        // The record is written once the view exists, by the runtime's
        // owner; the service removes it when the runtime's tree has exited
        // (this process is in the tree, so that cannot have happened yet).
        // A user who may read but not write the repository (a private
        // one of root's) still runs; only `spfs runtime ls` misses it.
        record.cgroup = mounted.cgroup;
        if let Err(e) = repo.save_runtime(&record) {
            tracing::warn!("runtime {name} runs without a record: {e}");
        }
        anyhow::Ok(())
    })?;
    drop(rt);
    if let Binding::Here = binding {
        spfs_fuse::bind::enter_bound_view(&config.vfs.mountpoint, editable)
            .context("cannot bind the runtime's view")?;
    }
    let (shown, mut cmd) = match &binding {
        Binding::Helper(helper) => {
            let mut c = std::process::Command::new(helper);
            if editable {
                c.arg("--writable");
            }
            c.arg(&config.vfs.mountpoint).arg("--").args(&command);
            (helper.display().to_string(), c)
        }
        Binding::Here | Binding::None => {
            let mut c = std::process::Command::new(program);
            c.args(&command[1..]);
            (program.clone(), c)
        }
    };
    let err = cmd.env("SPFS_RUNTIME", &name).exec();
    // Only reached when exec failed; the view goes when this process exits.
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    crate::output::report_error(&anyhow::anyhow!("cannot run {shown}: {err}"));
    Ok(code)
}

pub fn runtime_cmd(cmd: RuntimeCommand) -> anyhow::Result<i32> {
    let config = super::config()?;
    let repo = super::open_repo(&config)?;
    match cmd {
        RuntimeCommand::Ls { json } => {
            // Users see their own runtimes (specs and command lines may
            // hold secrets); root sees every runtime.
            let uid = rustix::process::getuid().as_raw();
            let records: Vec<_> = repo
                .runtimes()?
                .into_iter()
                .filter(|r| uid == 0 || r.owner_uid == uid)
                .collect();
            if json {
                print_json(&records)?;
            } else {
                println!("{:<32} {:>8}  SPEC", "NAME", "PID");
                for r in records {
                    println!("{:<32} {:>8}  {}", r.name, r.root_pid, r.spec);
                }
            }
        }
        RuntimeCommand::Info { name, json } => {
            let r = repo.read_runtime(&name)?;
            let uid = rustix::process::getuid().as_raw();
            if uid != 0 && r.owner_uid != uid {
                anyhow::bail!("runtime {name} belongs to user {}", r.owner_uid);
            }
            if json {
                print_json(&r)?;
            } else {
                println!("name:       {}", r.name);
                println!("spec:       {}", r.spec);
                println!("root pid:   {}", r.root_pid);
                println!("owner uid:  {}", r.owner_uid);
                println!("created:    {}", r.created);
                println!("mountpoint: {}", r.mountpoint.display());
                println!("command:    {}", r.command.join(" "));
                println!("cgroup:     {}", r.cgroup);
                println!("mode:       {}", if r.bound { "bound" } else { "router" });
                println!(
                    "editable:   {}",
                    match (r.editable, r.keep) {
                        (true, true) => "yes, durable",
                        (true, false) => "yes",
                        _ => "no",
                    }
                );
                println!("layers:");
                for l in &r.layers {
                    println!("  {l}");
                }
            }
        }
        RuntimeCommand::Prune { dry_run } => prune(&config, &repo, dry_run)?,
        RuntimeCommand::Rm { name } => {
            // A runtime whose view is registered but whose record `spfs
            // run` has not written yet is still removable: the service
            // knows it, and dropping the view is what matters.
            let record = repo.read_runtime(&name);
            let rt = runtime()?;
            let dropped = rt.block_on(async {
                let Some(client) = spfs_fuse::launch::connect(&config).await? else {
                    return anyhow::Ok(false);
                };
                match client
                    .unmount(proto::UnmountRequest {
                        root_pid: 0,
                        runtime: name.clone(),
                    })
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
                    Err(s) => anyhow::bail!("cannot drop the view of {name}: {}", s.message()),
                }
            })?;
            match record {
                Ok(_) => {
                    repo.remove_runtime(&name)
                        .with_context(|| format!("cannot remove runtime {name}"))?;
                }
                Err(e) if !dropped => return Err(e.into()),
                Err(_) => {}
            }
            println!("removed {name}");
        }
    }
    Ok(0)
}

/// `spfs runtime prune`: remove the records of runtimes that are gone.
fn prune(
    config: &spfs_config::Config,
    repo: &spfs_storage::FsRepository,
    dry_run: bool,
) -> anyhow::Result<()> {
    // Records first: `spfs run` writes one only once its view is
    // registered, so a record read now belongs to a runtime the service
    // lists next, unless it is gone.
    let records = repo.runtimes()?;
    // The service knows which runtimes live; without a service, none does.
    let live: std::collections::HashSet<String> = runtime()?.block_on(async {
        match spfs_fuse::launch::connect(config).await? {
            Some(client) => anyhow::Ok(
                client
                    .list()
                    .await
                    .map_err(|s| anyhow::anyhow!("cannot list runtimes: {}", s.message()))?
                    .runtimes
                    .into_iter()
                    .map(|r| r.runtime)
                    .collect(),
            ),
            None => Ok(Default::default()),
        }
    })?;
    let uid = rustix::process::getuid().as_raw();
    let mut removed = 0;
    // A runtime whose cgroup still has processes lives too, served or not:
    // the next service takes it over (docs/service.md).
    let populated = |cgroup: &str| {
        !cgroup.is_empty()
            && spfs_fuse::cgroup::cgroup_dir(cgroup)
                .and_then(|d| std::fs::read_to_string(d.join("cgroup.events")))
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "populated 1"))
    };
    for r in records {
        if (uid != 0 && r.owner_uid != uid)
            || r.keep
            || live.contains(&r.name)
            || populated(&r.cgroup)
        {
            continue;
        }
        if dry_run {
            println!("would remove {}", r.name);
        } else {
            match repo.remove_runtime(&r.name) {
                Ok(_) => println!("removed {}", r.name),
                Err(e) => eprintln!("cannot remove {}: {e}", r.name),
            }
        }
        removed += 1;
    }
    if removed == 0 {
        println!("nothing to prune");
    }
    Ok(())
}
