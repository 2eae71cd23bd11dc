//! Configuration of spfs.
//!
//! The effective configuration is built from layers, each overriding the
//! ones before it: built-in defaults, `/etc/spfs.toml`,
//! `~/.config/spfs/spfs.toml`, the file named by `SPFS_CONFIG`, and finally
//! environment variables `SPFS_<SECTION>_<KEY>` (for example
//! `SPFS_STORAGE_ROOT` for `storage.root`). Every layer is checked on its own,
//! so an error names the file (or variable) and the key that is wrong.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("invalid value for {var} (config key {key}): {message}")]
    InvalidEnv {
        var: String,
        key: String,
        message: String,
    },
}

/// Where the repository lives.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The local repository's directory.
    pub root: PathBuf,
}

/// The VFS service.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct VfsConfig {
    /// Where the one filesystem is mounted.
    pub mountpoint: PathBuf,
    /// The control plane address: `unix:/path` or `tcp:127.0.0.1:PORT`.
    pub listen: String,
    /// The token a TCP client must present (created by the service, mode 0600).
    pub token_file: PathBuf,
    /// The cgroup (v2) directory under which each runtime gets its own
    /// cgroup; empty means `<cgroup2 mount>/spfs`.
    pub cgroup_root: PathBuf,
    /// Serve local payloads with FUSE passthrough when the kernel offers it.
    pub passthrough: bool,
    /// Let the kernel open files without asking the service (FUSE
    /// "no open", the default): a warm open costs no request at all (two
    /// less than with passthrough), but file data then always goes through
    /// the service, so `passthrough` is not used (see the README's
    /// performance figures).
    pub cache_opens: bool,
    /// FUSE worker threads.
    pub threads: u32,
    /// Where the service writes its log when started in the background.
    pub log_file: PathBuf,
    /// The size at which the service's log file rotates (one old file is
    /// kept): at least [`LOG_MAX_BYTES_MIN`].
    pub log_max_bytes: u32,
    /// Whether `spfs run` gives its runtime a bound view (a mount namespace
    /// in which the mount point shows only the runtime's view, so the
    /// kernel caches every name) when it may: as root, or through the
    /// `spfs-enter` helper installed with a file capability.
    pub bind_views: BindViews,
    /// The `spfs-enter` helper; empty means the one beside the running
    /// `spfs` executable.
    pub enter_helper: PathBuf,
    /// The remotes read through, in order, when a spec or a payload is not
    /// in the local repository (names of `[remote.NAME]`; an unconfigured
    /// `origin` is skipped).
    pub remotes: Vec<String>,
    /// How long a reader waits for a payload from a remote before EIO, in
    /// seconds (the fetch goes on, and a later read finds it).
    pub remote_timeout: u32,
    /// Answer a read of a payload still being fetched from a remote with a
    /// ranged fetch of just what it asks (with kernel-kept opens), before
    /// the whole payload is checked against its digest: the first bytes
    /// come at once, but they are the remote's word. Off: a first read
    /// waits for the whole, checked payload.
    pub remote_ranged_reads: bool,
    /// A loopback `IP:PORT` on which the service answers `GET /metrics`
    /// with its status in the Prometheus text format; empty (the default):
    /// none (the control socket's `spfs-vfs metrics` gives the same text).
    pub metrics_listen: String,
    /// The most entries (files, directories, symlinks) that the merged
    /// trees of one non-root user's runtimes may hold together, each
    /// distinct tree counted once (an entry costs the service about
    /// 100–150 bytes of memory); a registration past it is refused. Root's
    /// runtimes are not bounded.
    pub max_entries_per_user: u32,
    /// Upper files that editable views (all together) keep open, at most:
    /// each is a descriptor of the service. 0 (the default): a quarter of
    /// the service's descriptor limit. Past it, files of the user who
    /// keeps the most are closed first (and reopened when used).
    pub kept_files: u32,
}

/// The default `vfs.max_entries_per_user`: about 2–3 GiB of the service's
/// memory, a hundred times a large studio environment.
pub const MAX_ENTRIES_PER_USER: u32 = 20_000_000;

/// When `spfs run` binds its runtime's view (see [`VfsConfig::bind_views`]).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BindViews {
    /// Whenever it may (as root, or with the helper's capability).
    #[default]
    Auto,
    /// Never: every runtime is routed through the shared root.
    Never,
}

/// The smallest `vfs.log_max_bytes`: a few lines must fit.
pub const LOG_MAX_BYTES_MIN: u32 = 4096;

/// A named remote repository (`[remote.NAME]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// `file:/path` (or a plain absolute path), `grpc://host:port`, or
    /// `s3://bucket/prefix`.
    pub address: String,
    /// Seconds a request, or a pause in a payload stream, may last before
    /// it is an error (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    /// gRPC: a file holding the bearer token the server wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// S3: the endpoint URL (e.g. `http://127.0.0.1:9000` for MinIO or
    /// Ceph RGW); AWS's own when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3: the region (`AWS_REGION` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// S3: the access key id (`AWS_ACCESS_KEY_ID` when unset). Never shown.
    #[serde(default, skip_serializing)]
    pub access_key_id: Option<String>,
    /// S3: the secret access key (`AWS_SECRET_ACCESS_KEY` when unset).
    /// Never shown.
    #[serde(default, skip_serializing)]
    pub secret_access_key: Option<String>,
}

/// The whole configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub storage: StorageConfig,
    pub vfs: VfsConfig,
    /// Remote repositories by name; `origin` is the default one.
    pub remote: std::collections::BTreeMap<String, RemoteConfig>,
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

impl Default for StorageConfig {
    fn default() -> Self {
        let root = home()
            .map(|h| h.join(".local/share/spfs"))
            .unwrap_or_else(|| PathBuf::from("/var/lib/spfs"));
        StorageConfig { root }
    }
}

impl Default for VfsConfig {
    fn default() -> Self {
        VfsConfig {
            mountpoint: PathBuf::from("/spfs"),
            listen: "unix:/run/spfs/vfs.sock".into(),
            token_file: PathBuf::from("/run/spfs/vfs.token"),
            cgroup_root: PathBuf::new(),
            passthrough: true,
            cache_opens: true,
            threads: 4,
            log_file: PathBuf::from("/run/spfs/vfs.log"),
            log_max_bytes: 8 << 20,
            bind_views: BindViews::Auto,
            enter_helper: PathBuf::new(),
            remotes: vec!["origin".into()],
            remote_timeout: 30,
            remote_ranged_reads: false,
            metrics_listen: String::new(),
            max_entries_per_user: MAX_ENTRIES_PER_USER,
            kept_files: 0,
        }
    }
}

/// The kind of value a key holds, to read it from an environment variable.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Bool,
    Int,
    /// One of these words.
    Choice(&'static [&'static str]),
}

/// Every key that an environment variable can override.
const KEYS: &[(&str, &str, Kind)] = &[
    ("storage", "root", Kind::Text),
    ("vfs", "mountpoint", Kind::Text),
    ("vfs", "listen", Kind::Text),
    ("vfs", "token_file", Kind::Text),
    ("vfs", "cgroup_root", Kind::Text),
    ("vfs", "passthrough", Kind::Bool),
    ("vfs", "cache_opens", Kind::Bool),
    ("vfs", "threads", Kind::Int),
    ("vfs", "log_file", Kind::Text),
    ("vfs", "log_max_bytes", Kind::Int),
    ("vfs", "bind_views", Kind::Choice(&["auto", "never"])),
    ("vfs", "enter_helper", Kind::Text),
    ("vfs", "remote_timeout", Kind::Int),
    ("vfs", "remote_ranged_reads", Kind::Bool),
    ("vfs", "metrics_listen", Kind::Text),
    ("vfs", "max_entries_per_user", Kind::Int),
    ("vfs", "kept_files", Kind::Int),
];

/// The environment variable that overrides `section.key`.
pub fn env_var_name(section: &str, key: &str) -> String {
    format!("SPFS_{}_{}", section.to_uppercase(), key.to_uppercase())
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Parse and check one config file.
fn read_layer(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let table: toml::Table = toml::from_str(&text).map_err(|e| invalid(describe(&e, &text)))?;
    // Check this layer alone, so that the error names this file. Checking
    // the parsed table names the key; checking the text gives its line.
    if let Err(e) = Config::deserialize(toml::Value::Table(table.clone())) {
        let mut message = describe(&e, &text);
        if let Err(located) = toml::from_str::<Config>(&text)
            && let Some(at) = located.span().map(|s| line_col(&text, s.start))
        {
            message = format!("{at}: {message}");
        }
        return Err(invalid(message));
    }
    Ok(table)
}

/// `line L, column C` of a byte offset (both from 1).
fn line_col(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}")
}

/// A TOML error as one line: where it is, the key, and what is wrong.
fn describe(e: &toml::de::Error, text: &str) -> String {
    let shown = e.to_string();
    let key = shown
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("in `"))
        .and_then(|l| l.strip_suffix('`'));
    let mut out = String::new();
    if let Some(span) = e.span() {
        out.push_str(&line_col(text, span.start));
        out.push_str(": ");
    }
    if let Some(key) = key {
        out.push_str(&format!("key `{key}`: "));
    }
    out.push_str(&e.message().replace('\n', " "));
    out
}

/// The files read, in order, given the environment.
pub fn config_files(env: &dyn Fn(&str) -> Option<String>) -> Vec<(PathBuf, bool)> {
    let mut files = vec![(PathBuf::from("/etc/spfs.toml"), false)];
    if let Some(h) = env("HOME").filter(|h| !h.is_empty()) {
        files.push((Path::new(&h).join(".config/spfs/spfs.toml"), false));
    }
    if let Some(p) = env("SPFS_CONFIG").filter(|p| !p.is_empty()) {
        // A file named explicitly must exist.
        files.push((PathBuf::from(p), true));
    }
    files
}

impl Config {
    /// Load from the standard files and the process environment.
    pub fn load() -> Result<Config, ConfigError> {
        Self::load_with(&|k| std::env::var(k).ok())
    }

    /// Load using `env` to read environment variables (for tests).
    pub fn load_with(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut table = toml::Table::new();
        for (path, required) in config_files(env) {
            if !required && !path.exists() {
                continue;
            }
            merge(&mut table, read_layer(&path)?);
        }
        for (section, key, kind) in KEYS {
            let var = env_var_name(section, key);
            let Some(raw) = env(&var) else { continue };
            let bad = |message: &str| ConfigError::InvalidEnv {
                var: var.clone(),
                key: format!("{section}.{key}"),
                message: message.to_string(),
            };
            let value = match kind {
                Kind::Text => toml::Value::String(raw),
                Kind::Choice(words) => match words.contains(&raw.as_str()) {
                    true => toml::Value::String(raw),
                    false => {
                        return Err(bad(&format!("'{raw}' is not one of: {}", words.join(", "))));
                    }
                },
                Kind::Bool => match raw.to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => toml::Value::Boolean(true),
                    "0" | "false" | "no" | "off" => toml::Value::Boolean(false),
                    _ => return Err(bad("expected true or false")),
                },
                Kind::Int => toml::Value::Integer(
                    raw.trim()
                        .parse::<u32>()
                        .map(i64::from)
                        .map_err(|_| bad("expected a whole number from 0 to 4294967295"))?,
                ),
            };
            let mut layer = toml::Table::new();
            let mut sect = toml::Table::new();
            sect.insert(key.to_string(), value);
            layer.insert(section.to_string(), toml::Value::Table(sect));
            merge(&mut table, layer);
        }
        let config =
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Invalid {
                path: PathBuf::from("(merged configuration)"),
                message: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| ConfigError::InvalidEnv {
            var: "(configuration)".into(),
            key: key.into(),
            message: message.into(),
        };
        if self.storage.root.as_os_str().is_empty() {
            return Err(bad("storage.root", "must not be empty"));
        }
        if !self.vfs.mountpoint.is_absolute() {
            return Err(bad("vfs.mountpoint", "must be an absolute path"));
        }
        if self.vfs.threads == 0 || self.vfs.threads > 256 {
            return Err(bad("vfs.threads", "must be between 1 and 256"));
        }
        if self.vfs.log_max_bytes < LOG_MAX_BYTES_MIN {
            return Err(bad(
                "vfs.log_max_bytes",
                &format!("must be at least {LOG_MAX_BYTES_MIN}"),
            ));
        }
        let metrics = self.vfs.metrics_listen.trim();
        if !metrics.is_empty() {
            match metrics.parse::<std::net::SocketAddr>() {
                Err(_) => {
                    return Err(bad(
                        "vfs.metrics_listen",
                        &format!("'{metrics}' is not IP:PORT (e.g. 127.0.0.1:9464)"),
                    ));
                }
                Ok(a) if !a.ip().is_loopback() => {
                    return Err(bad(
                        "vfs.metrics_listen",
                        &format!(
                            "{a} is not a loopback address: the metrics port listens on loopback only (127.0.0.1:PORT or [::1]:PORT)"
                        ),
                    ));
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_from(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn layers_and_env_override() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spfs.toml");
        std::fs::write(
            &file,
            "[storage]\nroot = \"/from/file\"\n[vfs]\nthreads = 2\n",
        )
        .unwrap();
        let f = file.to_str().unwrap().to_string();
        let c =
            Config::load_with(&env_from(&[("SPFS_CONFIG", &f), ("HOME", "/nonexistent")])).unwrap();
        assert_eq!(c.storage.root, PathBuf::from("/from/file"));
        assert_eq!(c.vfs.threads, 2);
        let c = Config::load_with(&env_from(&[
            ("SPFS_CONFIG", &f),
            ("SPFS_STORAGE_ROOT", "/from/env"),
            ("SPFS_VFS_PASSTHROUGH", "off"),
        ]))
        .unwrap();
        assert_eq!(c.storage.root, PathBuf::from("/from/env"));
        assert!(!c.vfs.passthrough);
    }

    #[test]
    fn bind_views_is_auto_or_never() {
        let c = Config::load_with(&env_from(&[("HOME", "/nonexistent")])).unwrap();
        assert_eq!(c.vfs.bind_views, BindViews::Auto);
        let c = Config::load_with(&env_from(&[("SPFS_VFS_BIND_VIEWS", "never")])).unwrap();
        assert_eq!(c.vfs.bind_views, BindViews::Never);
        let err = Config::load_with(&env_from(&[("SPFS_VFS_BIND_VIEWS", "sometimes")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SPFS_VFS_BIND_VIEWS") && err.contains("sometimes"),
            "{err}"
        );
    }

    #[test]
    fn metrics_listen_is_off_or_a_loopback_address() {
        let c = Config::load_with(&env_from(&[("HOME", "/nonexistent")])).unwrap();
        assert_eq!(c.vfs.metrics_listen, "");
        let c =
            Config::load_with(&env_from(&[("SPFS_VFS_METRICS_LISTEN", "127.0.0.1:9464")])).unwrap();
        assert_eq!(c.vfs.metrics_listen, "127.0.0.1:9464");
        assert!(Config::load_with(&env_from(&[("SPFS_VFS_METRICS_LISTEN", "[::1]:1")])).is_ok());
        for (value, says) in [
            ("0.0.0.0:9464", "not a loopback address"),
            ("192.168.1.2:9464", "not a loopback address"),
            ("localhost:9464", "not IP:PORT"),
            ("9464", "not IP:PORT"),
        ] {
            let err = Config::load_with(&env_from(&[("SPFS_VFS_METRICS_LISTEN", value)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("vfs.metrics_listen") && err.contains(says) && !err.contains('\n'),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn errors_name_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spfs.toml");
        std::fs::write(&file, "[storage]\nrot = \"/x\"\n").unwrap();
        let f = file.to_str().unwrap().to_string();
        let err = Config::load_with(&env_from(&[("SPFS_CONFIG", &f)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("spfs.toml") && err.contains("rot"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        std::fs::write(&file, "[vfs]\nthreads = \"many\"\n").unwrap();
        let err = Config::load_with(&env_from(&[("SPFS_CONFIG", &f)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spfs.toml") && err.contains("vfs.threads") && err.contains("line 2"),
            "{err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
        std::fs::write(&file, "[vfs\n").unwrap();
        let err = Config::load_with(&env_from(&[("SPFS_CONFIG", &f)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("spfs.toml") && err.contains("line 1"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        let err = Config::load_with(&env_from(&[("SPFS_VFS_THREADS", "x")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SPFS_VFS_THREADS") && err.contains("vfs.threads"),
            "{err}"
        );
        let err = Config::load_with(&env_from(&[("SPFS_VFS_LOG_MAX_BYTES", "100")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("vfs.log_max_bytes"), "{err}");
        let c = Config::load_with(&env_from(&[("SPFS_VFS_LOG_MAX_BYTES", "65536")])).unwrap();
        assert_eq!(c.vfs.log_max_bytes, 65536);
        let err = Config::load_with(&env_from(&[("SPFS_CONFIG", "/no/such/file.toml")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no/such/file.toml"), "{err}");
    }
}
