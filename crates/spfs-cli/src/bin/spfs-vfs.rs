//! `spfs-vfs`: the VFS service and its control commands.
//!
//! One service per host mounts one filesystem (default `/spfs`) and serves
//! every runtime's view from it. `spfs-vfs service` runs it in the
//! foreground; `mount`, `unmount`, `list`, `status` and `metrics` talk to it
//! over the control socket, and `mount` starts it first if it is not
//! running.

#[path = "../output.rs"]
#[allow(dead_code)]
mod output;
#[path = "../vfs_status.rs"]
mod vfs_status;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use spfs_config::Config;
use spfs_control::proto;
use spfs_fuse::launch;

/// The spfs VFS service: one mount, many environments.
#[derive(Parser, Debug)]
#[command(name = "spfs-vfs", version, about, long_about = None)]
struct Cli {
    /// Print more detail (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Control address: `unix:/path` or `tcp:127.0.0.1:PORT` (config vfs.listen).
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the service in the foreground (or stop or restart the running one).
    ///
    /// The service is two processes: the keeper, which holds the mount and
    /// the control socket and lives until the service stops, and a worker
    /// it runs, which serves every request. `--restart` (root only) makes
    /// the keeper hand the mount and every runtime to a new worker started
    /// from the program's path, so an upgrade takes effect without a
    /// running program noticing; a worker that crashes is replaced the same
    /// way. Under systemd, see `scripts/install.sh` and `docs/service.md`.
    Service {
        /// Where to mount (config vfs.mountpoint, default /spfs).
        #[arg(long, value_name = "DIR")]
        mountpoint: Option<PathBuf>,
        /// Stop the running service and unmount (runtimes still running
        /// are taken over by the next service).
        #[arg(long, conflicts_with = "restart")]
        stop: bool,
        /// Hand the running service over to a new worker (root only).
        #[arg(long)]
        restart: bool,
        /// Internal: run as the keeper's worker.
        #[arg(long, hide = true)]
        worker: bool,
    },
    /// Register a view for a process tree, starting the service if needed.
    Mount {
        /// The process whose tree (itself and all descendants) sees the view.
        #[arg(long, value_name = "PID")]
        root_process: u32,
        /// Name of the runtime (made up when omitted).
        #[arg(long)]
        runtime: Option<String>,
        /// The environment spec: `a+b+c`, digests, tags, `-` for empty.
        spec: String,
    },
    /// Drop a view.
    Unmount {
        #[arg(long, value_name = "PID", required_unless_present = "runtime")]
        root_process: Option<u32>,
        #[arg(long)]
        runtime: Option<String>,
    },
    /// List the registered views: runtime, root pid, spec, age, requests served.
    List {
        /// One JSON document: {"runtimes": [{"runtime", "root_pid", "spec", "layers", "age_seconds", "requests", "owner_uid"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Describe the running service: requests by operation with latencies,
    /// file data served, routing, views, memory, remote fetches.
    Status {
        /// One JSON document (figures explained in docs/observability.md):
        /// {"pid" (the worker), "keeper_pid", "mountpoint", "listen",
        /// "uptime_seconds", "runtimes",
        /// "requests", "passthrough", "version", "views", "shared_dirs", "routed_dirs",
        /// "entries",
        /// "content_nodes", "open_handles", "read_bytes", "write_bytes",
        /// "ops": {OP: {"count", "errors", "sum_seconds", "p50_seconds",
        /// "p90_seconds", "p99_seconds", "p999_seconds"}},
        /// "passthrough_files": {"opens", "opened_bytes", "open_files",
        /// "backing_registered"}, "routing": {"cache_hits", "cache_misses",
        /// "uncached", "unrouted", "cached_threads"}, "memory": {"rss_bytes",
        /// "trees_bytes", "bytes_per_entry"}, "remote": {"remotes",
        /// "payloads_fetched", "fetched_bytes", "fetch_failures",
        /// "ranged_reads", "ranged_bytes", "references_resolved"},
        /// "view_stats": [{"id", "runtimes", "layers", "entries",
        /// "tree_bytes", "shared_tree", "bound", "editable"}]}.
        /// OP is a FUSE operation in lowercase (lookup, getattr, read, ...).
        #[arg(long, verbatim_doc_comment)]
        json: bool,
    },
    /// Print the status in the Prometheus text format (0.0.4), read through
    /// the control socket: `spfs_vfs_requests_total{op="lookup"}`,
    /// `spfs_vfs_request_duration_seconds{op,quantile}`, ... A loopback
    /// port serving the same at GET /metrics: config vfs.metrics_listen.
    Metrics,
}

fn main() {
    let cli = Cli::parse();
    // The service sets up its logging once its configuration is loaded.
    if !matches!(
        cli.command,
        Cmd::Service {
            stop: false,
            restart: false,
            ..
        }
    ) {
        output::init_logging(cli.verbose);
    }
    let code = match run(cli) {
        Ok(code) => code,
        Err(err) => {
            output::report_error(&err);
            1
        }
    };
    std::process::exit(code);
}

/// `spfs-vfs service --restart`: signal the keeper, then wait until a new
/// worker answers.
async fn restart_service(config: &Config) -> anyhow::Result<i32> {
    let client = connected(config).await?;
    let status = client.status().await.map_err(status_error)?;
    if status.keeper_pid == 0 {
        anyhow::bail!("the running VFS service cannot be restarted in place (it has no keeper)");
    }
    let keeper = rustix::process::Pid::from_raw(status.keeper_pid as i32)
        .context("the service reported no keeper")?;
    rustix::process::kill_process(keeper, rustix::process::Signal::HUP).map_err(|e| match e {
        rustix::io::Errno::PERM => anyhow::anyhow!("only root may restart the VFS service"),
        e => anyhow::anyhow!("cannot signal the VFS service's keeper: {e}"),
    })?;
    let old = status.pid;
    for _ in 0..1500 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        if let Ok(Some(c)) = launch::connect(config).await
            && let Ok(s) = c.status().await
            && s.pid != old
        {
            println!("VFS service restarted (worker {old} → {})", s.pid);
            return Ok(0);
        }
    }
    anyhow::bail!("the VFS service did not restart within 30 s (see its log)")
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn connected(config: &Config) -> anyhow::Result<spfs_control::Client> {
    launch::connect(config).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "no VFS service is running (control socket {})",
            config.vfs.listen
        )
    })
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let mut config = Config::load().context("cannot load the configuration")?;
    if let Some(l) = cli.listen {
        config.vfs.listen = l;
    }
    match cli.command {
        Cmd::Service {
            mountpoint,
            stop,
            restart,
            worker: _,
        } => {
            if let Some(m) = mountpoint {
                config.vfs.mountpoint = m;
            }
            if restart {
                return runtime()?.block_on(restart_service(&config));
            }
            if stop {
                let rt = runtime()?;
                return rt.block_on(async {
                    let Some(client) = launch::connect(&config).await? else {
                        println!("no VFS service is running");
                        return Ok(0);
                    };
                    let status = client.status().await.map_err(status_error)?;
                    // The keeper unmounts after its worker stopped.
                    let pid = match status.keeper_pid {
                        0 => status.pid,
                        keeper => keeper,
                    };
                    // A pidfd names the service process even if its PID is reused.
                    let pidfd = spfs_fuse::route::pidfd_open(pid, false).ok();
                    client.shutdown().await.map_err(status_error)?;
                    // The process exits only after it has unmounted.
                    for _ in 0..500 {
                        let gone = match &pidfd {
                            Some(fd) => spfs_fuse::route::has_exited(fd),
                            None => launch::connect(&config).await?.is_none(),
                        };
                        if gone {
                            println!("VFS service stopped");
                            return Ok(0);
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    anyhow::bail!("the VFS service did not stop within 10 s")
                });
            }
            output::init_service_logging(cli.verbose.max(1), config.vfs.log_max_bytes);
            // A worker is started with this configuration.
            let mut args = vec!["--listen".to_string(), config.vfs.listen.clone()];
            args.extend((0..cli.verbose).map(|_| "-v".to_string()));
            args.extend([
                "service".to_string(),
                "--worker".to_string(),
                "--mountpoint".to_string(),
                config.vfs.mountpoint.display().to_string(),
            ]);
            spfs_fuse::service::run(&config, args)?;
            Ok(0)
        }
        Cmd::Mount {
            root_process,
            runtime: name,
            spec,
        } => {
            // Spec files are read here, with this user's permissions; the
            // service takes references only.
            let spec = spfs_model::EnvSpec::parse(&spec)?.to_string();
            let rt = runtime()?;
            rt.block_on(async {
                let client = launch::connect_or_start(&config).await?;
                let resp = client
                    .mount(proto::MountRequest {
                        root_pid: root_process,
                        spec,
                        runtime: name.unwrap_or_default(),
                        bind: false,
                        ..Default::default()
                    })
                    .await
                    .map_err(status_error)?;
                println!("{}", resp.runtime);
                Ok(0)
            })
        }
        Cmd::Unmount {
            root_process,
            runtime: name,
        } => {
            let rt = runtime()?;
            rt.block_on(async {
                let client = connected(&config).await?;
                let resp = client
                    .unmount(proto::UnmountRequest {
                        root_pid: root_process.unwrap_or(0),
                        runtime: name.unwrap_or_default(),
                    })
                    .await
                    .map_err(status_error)?;
                println!("{}", resp.runtime);
                Ok(0)
            })
        }
        Cmd::List { json } => {
            let rt = runtime()?;
            rt.block_on(async {
                let list = connected(&config)
                    .await?
                    .list()
                    .await
                    .map_err(status_error)?;
                if json {
                    let runtimes: Vec<_> = list
                        .runtimes
                        .iter()
                        .map(|r| {
                            serde_json::json!({
                                "runtime": r.runtime, "root_pid": r.root_pid, "spec": r.spec,
                                "layers": r.layers, "age_seconds": r.age_seconds,
                                "requests": r.requests, "owner_uid": r.owner_uid,
                                "mode": mode(r.bound),
                            })
                        })
                        .collect();
                    output::print_json(&serde_json::json!({ "runtimes": runtimes }))?;
                } else {
                    println!(
                        "{:<32} {:>8} {:>8} {:>10} {:<6}  SPEC",
                        "RUNTIME", "PID", "AGE", "REQUESTS", "MODE"
                    );
                    for r in list.runtimes {
                        println!(
                            "{:<32} {:>8} {:>7}s {:>10} {:<6}  {}",
                            r.runtime,
                            r.root_pid,
                            r.age_seconds,
                            r.requests,
                            mode(r.bound),
                            r.spec
                        );
                    }
                }
                Ok(0)
            })
        }
        Cmd::Status { json } => {
            let rt = runtime()?;
            rt.block_on(async {
                let s = connected(&config)
                    .await?
                    .status()
                    .await
                    .map_err(status_error)?;
                if json {
                    output::print_json(&vfs_status::to_json(&s))?;
                } else {
                    vfs_status::print_human(&s);
                }
                Ok(0)
            })
        }
        Cmd::Metrics => {
            let rt = runtime()?;
            rt.block_on(async {
                let client = connected(&config).await?;
                let text = match client.metrics().await {
                    Ok(text) => text,
                    // A service from before the call: the same text from
                    // what its status says.
                    Err(s) if s.code() == tonic::Code::Unimplemented => {
                        let status = client.status().await.map_err(status_error)?;
                        spfs_control::metrics::render(&status)
                    }
                    Err(s) => return Err(status_error(s)),
                };
                print!("{text}");
                Ok(0)
            })
        }
    }
}

/// How a runtime sees its view, as `list` shows it.
fn mode(bound: bool) -> &'static str {
    if bound { "bound" } else { "router" }
}
