//! Tags: `spfs tag`, `spfs untag`, `spfs tags`, `spfs ls-tags`, `spfs log`.
//!
//! A tag is a name like `org/name` with a history; `name~N` is the version N
//! steps back from the newest. Writers serialize on a per-tag `flock` that
//! the kernel releases when its holder dies, so concurrent taggers lose no
//! version and a killed one blocks nobody.
//!
//! - `spfs tag REF TAG…` points each TAG at what REF names (digest, unique
//!   prefix or tag); prints nothing.
//! - `spfs untag TAG~N | TAG --latest | TAG --all` removes versions.
//! - `spfs tags` prints every tag name, one a line.
//! - `spfs ls-tags [PATH]` prints the tags and folders (ending in `/`) under
//!   a folder.
//! - `spfs log TAG` prints one line per version, newest first:
//!   `SHORT_DIGEST name~N user time`.

use clap::Args;
use serde::Serialize;
use spfs_model::{Digest, TagSpec};
use spfs_storage::tags::Untag;

use super::inspect::{emit, json};

/// Arguments of `spfs tag`.
#[derive(Args, Debug)]
pub struct TagArgs {
    /// What to tag: a digest, a unique digest prefix or a tag (`name~N`).
    #[arg(value_name = "REF")]
    pub target: String,
    /// The tags to point at it (`org/name`).
    #[arg(value_name = "TAG", required = true)]
    pub tags: Vec<String>,
}

/// Arguments of `spfs untag`.
#[derive(Args, Debug)]
pub struct UntagArgs {
    /// The tag; `name~N` removes the version N steps back, a plain name the
    /// newest one.
    #[arg(value_name = "TAG")]
    pub tag: String,
    /// Remove the newest version.
    #[arg(long, conflicts_with = "all")]
    pub latest: bool,
    /// Remove every version (the tag disappears).
    #[arg(long)]
    pub all: bool,
}

/// Arguments of `spfs tags`.
#[derive(Args, Debug)]
pub struct TagsArgs {
    /// Print one JSON array of {"name", "target", "versions"} (target: the
    /// newest version's digest; versions: how many there are).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `spfs ls-tags`.
#[derive(Args, Debug)]
pub struct LsTagsArgs {
    /// The tag folder to list (default: the top).
    #[arg(value_name = "PATH", default_value = "")]
    pub path: String,
    /// Print one JSON array of {"name", "folder"} (folder: true for a
    /// folder of tags, false for a tag).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `spfs log`.
#[derive(Args, Debug)]
pub struct LogArgs {
    /// The tag (`org/name`).
    #[arg(value_name = "TAG")]
    pub tag: String,
    /// Print one JSON array, newest first, of {"spec", "version", "target",
    /// "user", "time", "time_utc"} (time: Unix seconds).
    #[arg(long)]
    pub json: bool,
}

pub fn tag(args: TagArgs) -> anyhow::Result<i32> {
    super::commit::check_tag_names(&args.tags)?;
    let config = super::config()?;
    let repo = super::open_repo(&config)?;
    // The target may be reachable from nothing yet: a concurrent clean
    // must not remove it between resolving it and tagging it.
    let _guard = repo.write_guard()?;
    let target = repo.resolve_ref(&args.target)?;
    for tag in &args.tags {
        repo.push_tag(tag, &target)?;
        tracing::info!(%tag, %target, "tagged");
    }
    Ok(0)
}

pub fn untag(args: UntagArgs) -> anyhow::Result<i32> {
    let spec = TagSpec::parse(&args.tag)?;
    let has_version = spec.name != args.tag;
    let what = match (args.all, args.latest, has_version) {
        (true, _, true) | (_, true, true) => anyhow::bail!(
            "'{}' names one version; give either '~N' or --latest/--all, not both",
            args.tag
        ),
        (true, _, false) => Untag::All,
        (false, true, false) => Untag::Latest,
        (false, false, _) => Untag::Version(spec.version),
    };
    let config = super::config()?;
    let repo = super::open_repo(&config)?;
    repo.untag(&spec.name, what)?;
    Ok(0)
}

#[derive(Serialize)]
struct TagJson {
    name: String,
    target: Digest,
    versions: usize,
}

pub fn tags(args: TagsArgs) -> anyhow::Result<i32> {
    let config = super::config()?;
    let repo = super::open_repo(&config)?;
    let names = repo.tags()?;
    if args.json {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let history = repo.tag_history(&name)?;
            let Some(newest) = history.last() else {
                continue;
            };
            out.push(TagJson {
                target: newest.target,
                versions: history.len(),
                name,
            });
        }
        json(&out)?;
    } else {
        emit(|out| {
            for name in &names {
                writeln!(out, "{name}")?;
            }
            Ok(())
        })?;
    }
    Ok(0)
}

#[derive(Serialize)]
struct LsTagJson {
    name: String,
    folder: bool,
}

pub fn ls_tags(args: LsTagsArgs) -> anyhow::Result<i32> {
    let folder = args.path.trim_matches('/');
    if !folder.is_empty() {
        // The same rules as tag names, so a path cannot leave tags/.
        TagSpec::parse(folder)
            .ok()
            .filter(|s| s.name == folder)
            .ok_or_else(|| anyhow::anyhow!("invalid tag folder '{}'", args.path))?;
    }
    let config = super::config()?;
    let repo = super::open_repo(&config)?;
    let entries = repo.ls_tags(folder)?;
    if entries.is_empty() && !folder.is_empty() && repo.tag_history(folder).is_err() {
        anyhow::bail!("no tags under '{folder}'");
    }
    if args.json {
        let out: Vec<LsTagJson> = entries
            .iter()
            .map(|e| match e.strip_suffix('/') {
                Some(dir) => LsTagJson {
                    name: dir.to_string(),
                    folder: true,
                },
                None => LsTagJson {
                    name: e.clone(),
                    folder: false,
                },
            })
            .collect();
        json(&out)?;
    } else {
        emit(|out| {
            for e in &entries {
                writeln!(out, "{e}")?;
            }
            Ok(())
        })?;
    }
    Ok(0)
}

#[derive(Serialize)]
struct LogJson {
    spec: String,
    version: usize,
    target: Digest,
    user: String,
    time: u64,
    time_utc: String,
}

pub fn log(args: LogArgs) -> anyhow::Result<i32> {
    let spec = TagSpec::parse(&args.tag)?;
    if spec.name != args.tag {
        anyhow::bail!(
            "'{}' names one version; 'spfs log' takes the tag name '{}'",
            args.tag,
            spec.name
        );
    }
    let config = super::config()?;
    let repo = super::open_repo(&config)?;
    let history = repo.tag_history(&spec.name)?;
    let rows: Vec<LogJson> = history
        .iter()
        .rev()
        .enumerate()
        .map(|(n, v)| LogJson {
            spec: TagSpec {
                name: spec.name.clone(),
                version: n as u64,
            }
            .to_string(),
            version: n,
            target: v.target,
            user: v.user.clone(),
            time: v.time,
            time_utc: format_time(v.time),
        })
        .collect();
    if args.json {
        json(&rows)?;
    } else {
        emit(|out| {
            for r in &rows {
                // Always show `~N`, also `~0`, so columns line up.
                writeln!(
                    out,
                    "{}  {}~{}  {}  {}",
                    r.target.short(10),
                    spec.name,
                    r.version,
                    r.user,
                    r.time_utc
                )?;
            }
            Ok(())
        })?;
    }
    Ok(0)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub(crate) fn format_time(secs: u64) -> String {
    spfs_model::time::rfc3339_seconds(i64::try_from(secs).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::format_time;

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
