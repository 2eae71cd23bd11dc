//! `spfs config`: print the effective configuration.
//!
//! The configuration is built from the built-in defaults, `/etc/spfs.toml`,
//! `~/.config/spfs/spfs.toml`, the file named by `SPFS_CONFIG` and the
//! `SPFS_<SECTION>_<KEY>` environment variables (see `spfs-config`). A bad
//! value is an error naming the file (or variable) and the key.

use clap::Args;

use super::inspect::json;

/// Arguments of `spfs config`.
#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// Print one JSON object instead of TOML: {"storage": {"root"}, "vfs":
    /// {"mountpoint", "listen", "token_file", "cgroup_root", "passthrough",
    /// "threads", "log_file"}}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ConfigArgs) -> anyhow::Result<i32> {
    let config = super::config()?;
    if args.json {
        json(&config)?;
    } else {
        let mut text = config.to_toml();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        super::inspect::emit(|out| out.write_all(text.as_bytes()))?;
    }
    Ok(0)
}
