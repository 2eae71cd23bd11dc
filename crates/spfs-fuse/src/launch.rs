//! Connecting to the VFS service, starting it first when none is running.
//!
//! The service is started as `spfs-vfs service` in its own session with the
//! client's effective configuration passed through the environment, its
//! output appended to `vfs.log_file` (created private; the service rotates
//! it past `vfs.log_max_bytes`). The client then waits until the
//! service answers a status call: it answers only once its mount is up, so
//! there is no window in which a client could use a missing mount. Two
//! clients starting a service at once are fine: the second service finds
//! the control socket taken and exits, and both clients reach the first.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spfs_config::{Config, env_var_name};
use spfs_control::{Client, ControlError, Listen};

/// How long a client waits for a service it started.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("invalid vfs.listen '{0}': {1}")]
    BadListen(String, String),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("cannot start the VFS service ({program}): {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("cannot open the VFS service's log {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
    #[error("the VFS service did not become ready within {secs} s{log}")]
    Timeout { secs: u64, log: String },
    #[error("the VFS service exited during start-up ({status}){log}")]
    Died { status: String, log: String },
}

/// The control address of the configured service.
pub fn listen_of(config: &Config) -> Result<Listen, LaunchError> {
    config
        .vfs
        .listen
        .parse()
        .map_err(|e: ControlError| LaunchError::BadListen(config.vfs.listen.clone(), e.to_string()))
}

fn token_of(config: &Config, listen: &Listen) -> Option<String> {
    match listen {
        Listen::Tcp(_) => spfs_control::read_token_file(&config.vfs.token_file).ok(),
        Listen::Unix(_) => None,
    }
}

/// Connect to the running service, if any.
pub async fn connect(config: &Config) -> Result<Option<Client>, LaunchError> {
    let listen = listen_of(config)?;
    Ok(Client::try_connect(&listen, token_of(config, &listen)).await?)
}

/// The `spfs-vfs` program: beside the current executable, else on PATH.
pub fn service_program() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("spfs-vfs")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("spfs-vfs"))
}

/// The last lines of the service's log, to explain a failed start.
pub fn log_tail(config: &Config) -> String {
    let lines = crate::logfile::tail(&config.vfs.log_file, 5);
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "; last lines of {}:\n{}",
        config.vfs.log_file.display(),
        lines.join("\n")
    )
}

/// Start `spfs-vfs service` in the background with `config`.
pub fn spawn_service(config: &Config) -> Result<std::process::Child, LaunchError> {
    let program = service_program();
    let spawn_err = |source| LaunchError::Spawn {
        program: program.display().to_string(),
        source,
    };
    if let Some(dir) = config.vfs.log_file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // Private (it names users' runtimes); the service rotates it.
    let log =
        crate::logfile::open_append(&config.vfs.log_file).map_err(|source| LaunchError::Log {
            path: config.vfs.log_file.display().to_string(),
            source,
        })?;
    let log2 = log.try_clone().map_err(spawn_err)?;
    let mut cmd = Command::new(&program);
    cmd.arg("service")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let vars = [
        ("storage", "root", config.storage.root.display().to_string()),
        (
            "vfs",
            "mountpoint",
            config.vfs.mountpoint.display().to_string(),
        ),
        ("vfs", "listen", config.vfs.listen.clone()),
        (
            "vfs",
            "token_file",
            config.vfs.token_file.display().to_string(),
        ),
        (
            "vfs",
            "cgroup_root",
            config.vfs.cgroup_root.display().to_string(),
        ),
        ("vfs", "passthrough", config.vfs.passthrough.to_string()),
        ("vfs", "cache_opens", config.vfs.cache_opens.to_string()),
        ("vfs", "threads", config.vfs.threads.to_string()),
        ("vfs", "log_file", config.vfs.log_file.display().to_string()),
        ("vfs", "log_max_bytes", config.vfs.log_max_bytes.to_string()),
        (
            "vfs",
            "max_entries_per_user",
            config.vfs.max_entries_per_user.to_string(),
        ),
    ];
    for (section, key, value) in vars {
        cmd.env(env_var_name(section, key), value);
    }
    // SAFETY: setsid, fork and _exit are async-signal-safe. The service
    // is detached from the client's session and terminal, and is not the
    // client's child: the process forked here exits at once, so the
    // service is adopted by init (or the nearest subreaper). A runtime's
    // command (which `spfs run` becomes) then neither has the service in
    // its process tree nor its process group, and killing either leaves
    // the service, and every other runtime, running. (The service also
    // leaves any runtime cgroup as it starts.)
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid().map_err(std::io::Error::from)?;
            match libc::fork() {
                -1 => Err(std::io::Error::last_os_error()),
                0 => Ok(()),
                _ => libc::_exit(0),
            }
        });
    }
    cmd.spawn().map_err(spawn_err)
}

/// Connect to the service, starting it if none is running.
pub async fn connect_or_start(config: &Config) -> Result<Client, LaunchError> {
    if let Some(c) = connect(config).await? {
        return Ok(c);
    }
    let mut child = spawn_service(config)?;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut exited: Option<(String, Instant)> = None;
    loop {
        if let Some(c) = connect(config).await?
            && c.status().await.is_ok()
        {
            // Reap the service if it ever exits while we live.
            std::thread::spawn(move || child.wait());
            return Ok(c);
        }
        if exited.is_none()
            && let Ok(Some(status)) = child.try_wait()
        {
            // It may have lost a start-up race to another service: keep
            // trying to connect a little while before giving up.
            exited = Some((status.to_string(), Instant::now()));
        }
        let gave_up = match &exited {
            // Exited over 2 s ago and still nobody answers.
            Some((_, at)) => at.elapsed() > Duration::from_secs(2),
            None => Instant::now() > deadline,
        };
        if gave_up {
            return Err(match exited {
                Some((status, _)) => LaunchError::Died {
                    status,
                    log: log_tail(config),
                },
                None => LaunchError::Timeout {
                    secs: START_TIMEOUT.as_secs(),
                    log: log_tail(config),
                },
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
