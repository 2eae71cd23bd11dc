//! `spfs clean`: remove the objects and payloads that nothing reaches.
//!
//! The work is [`spfs_storage::clean`]'s; this module parses the options
//! (one-line errors for bad ages and counts), asks the VFS service for its
//! live views, asks for confirmation on a terminal, shows progress on
//! stderr and reports what was (or, with `--dry-run`, would be) removed.
//! See `docs/clean.md` for the protocol.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use spfs_model::Digest;
use spfs_storage::clean::{CleanReport, Cleaner, PayloadFile, Plan, Progress, PruneOptions};
use spfs_storage::{FsRepository, Sharing};

use crate::output::{print_json, progress_bar};

/// What `spfs clean --help` says: the protocol in a paragraph.
pub const LONG_ABOUT: &str = "\
Remove the objects and payloads (public copies and every user's private \
copies) that no root reaches, and temporary files left by dead processes. \
The roots are every version of every tag (after the pruning asked for), \
every runtime record's layers, and the layers of every view a running VFS \
service serves (asked through vfs.listen; no answering service, no views).

It is safe while others commit, write, pull and run. Every write operation \
holds the repository's lock (locks/gc) shared from before its first write \
or check for an existing copy until the tag, record or view that keeps \
what it wrote exists. Clean first lists what is stored and marks what the \
roots reach without the lock; then it takes the lock exclusively (waiting \
at most --lock-timeout for the writers holding it, behind a turnstile that \
holds new ones off), reads the roots again, marks what they reach that is \
new, and deletes the rest before it lets go: objects naming others before \
the objects they name, payloads last, so one stopped midway leaves no \
object naming a missing one. So anything a writer relies on is either \
reached when the roots are read again or was stored after the listing, \
and is no candidate. See docs/clean.md.";

/// Arguments of `spfs clean`.
#[derive(Args, Debug)]
pub struct CleanArgs {
    /// Say what would be removed and which tag versions pruned; remove
    /// nothing (needs no confirmation).
    #[arg(long)]
    pub dry_run: bool,
    /// Remove without asking. Without it clean asks on a terminal, and
    /// refuses when standard input is not one.
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Before collecting, prune tag versions older than AGE: a whole number
    /// and a unit, s, m, h, d or w (30d, 12h, 90m).
    #[arg(long, value_name = "AGE", allow_hyphen_values = true)]
    pub prune_if_older_than: Option<String>,
    /// Never prune a tag below N versions: its newest N stay whatever
    /// their age (default 1, so a tag never disappears; 0 lets it).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub keep_if_less_than: Option<String>,
    /// Before collecting, prune tag versions that point at the same target
    /// as the version just before them.
    #[arg(long)]
    pub prune_repeated: bool,
    /// Wait at most SECS for the write operations holding the repository's
    /// lock before giving up with nothing removed.
    #[arg(
        long,
        value_name = "SECS",
        default_value = "60",
        allow_hyphen_values = true
    )]
    pub lock_timeout: String,
    /// Print one JSON document: {"dry_run", "objects_removed",
    /// "payloads_removed" (files), "bytes_freed", "tag_versions_pruned",
    /// "temp_files_removed", "kept_late", "failures", "pruned": [{"tag",
    /// "back", "target", "time"}]} (with --dry-run: what would be).
    #[arg(long)]
    pub json: bool,
}

/// A duration such as `30d`, `12h`, `90m`, `45s` or `2w`.
fn parse_age(text: &str) -> anyhow::Result<Duration> {
    let bad = || {
        anyhow::anyhow!(
            "invalid age '{text}' for --prune-if-older-than: expected a whole number and a unit (s, m, h, d or w), e.g. 30d"
        )
    };
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(bad)
}

/// A whole number of at least 0 for `flag`.
fn parse_count(flag: &str, text: &str, what: &str) -> anyhow::Result<u64> {
    text.trim().parse().map_err(|_| {
        anyhow::anyhow!("invalid {flag} '{text}': expected a whole number of {what} (0 or more)")
    })
}

/// A clean's progress as a spinner with a count (hidden off a terminal).
struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn phase(&self, what: &str, total: u64) {
        self.0.set_message(what.to_string());
        self.0.set_length(total);
        self.0.set_position(0);
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}

/// The layers of every view the configured VFS service serves; none when
/// no service answers.
fn live_views(config: &spfs_config::Config) -> Result<Vec<Digest>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let listed = tokio::time::timeout(Duration::from_secs(30), async {
            let Some(client) = spfs_fuse::launch::connect(config)
                .await
                .map_err(|e| e.to_string())?
            else {
                return Ok(None);
            };
            client
                .list()
                .await
                .map(Some)
                .map_err(|s| s.message().to_string())
        })
        .await
        .map_err(|_| "no answer within 30 s".to_string())??;
        let Some(listed) = listed else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for rt in listed.runtimes {
            for layer in rt.layers {
                out.push(
                    Digest::parse(&layer)
                        .map_err(|e| format!("runtime {}: layer '{layer}': {e}", rt.runtime))?,
                );
            }
        }
        Ok(out)
    })
}

/// The size of a stored file, for what a dry run reports (0 if gone).
fn size_of(path: std::path::PathBuf) -> u64 {
    std::fs::symlink_metadata(path).map_or(0, |m| m.len())
}

fn payload_path(repo: &FsRepository, p: &PayloadFile) -> std::path::PathBuf {
    match p.user {
        None => repo.payload_path(&p.digest),
        Some(uid) => repo.private_payload_path(&p.digest, uid),
    }
}

fn payload_name(p: &PayloadFile) -> String {
    match p.user {
        None => p.digest.to_string(),
        Some(uid) => format!("{} (private copy of user {uid})", p.digest),
    }
}

/// What a plan would do, as a report.
fn would(repo: &FsRepository, plan: &Plan) -> CleanReport {
    let objects = plan.garbage_objects();
    let payloads = plan.garbage_payloads();
    CleanReport {
        dry_run: true,
        tag_versions_pruned: plan.prune.len() as u64,
        objects_removed: objects.len() as u64,
        payloads_removed: payloads.len() as u64,
        bytes_freed: objects
            .iter()
            .map(|d| size_of(repo.object_path(d)))
            .chain(payloads.iter().map(|p| size_of(payload_path(repo, p))))
            .sum(),
        pruned: plan.prune.clone(),
        removed_objects: objects,
        removed_payloads: payloads,
        ..CleanReport::default()
    }
}

fn print_report(report: &CleanReport, json: bool) -> anyhow::Result<()> {
    if json {
        let mut value = serde_json::to_value(report)?;
        value["pruned"] = serde_json::to_value(&report.pruned)?;
        return print_json(&value);
    }
    super::inspect::emit(|out| {
        let verb = if report.dry_run { "would " } else { "" };
        if report.dry_run {
            for p in &report.pruned {
                writeln!(out, "would prune {}~{} -> {}", p.tag, p.back, p.target)?;
            }
            for d in &report.removed_objects {
                writeln!(out, "would remove object {d}")?;
            }
            for p in &report.removed_payloads {
                writeln!(out, "would remove payload {}", payload_name(p))?;
            }
        }
        writeln!(
            out,
            "{}{} {} object(s) and {} payload file(s) ({} bytes){}; {verb}{} {} tag version(s){}",
            if report.dry_run { "would " } else { "" },
            if report.dry_run { "remove" } else { "removed" },
            report.objects_removed,
            report.payloads_removed,
            report.bytes_freed,
            if report.dry_run {
                String::new()
            } else {
                format!(", {} stale temporary file(s)", report.temp_files_removed)
            },
            if report.dry_run { "prune" } else { "pruned" },
            report.tag_versions_pruned,
            if report.kept_late > 0 {
                format!(
                    "; kept {} reached by roots that appeared meanwhile",
                    report.kept_late
                )
            } else {
                String::new()
            },
        )
    })
}

/// Ask on the terminal; true to go on.
fn confirm(plan: &Plan) -> anyhow::Result<bool> {
    let mut err = std::io::stderr().lock();
    write!(
        err,
        "remove {} object(s) and {} payload file(s) nothing reaches{}? [y/N] ",
        plan.garbage_objects().len(),
        plan.garbage_payloads().len(),
        if plan.prune.is_empty() {
            String::new()
        } else {
            format!(", after pruning {} tag version(s)", plan.prune.len())
        }
    )?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

pub fn run(args: CleanArgs) -> anyhow::Result<i32> {
    let older_than = args
        .prune_if_older_than
        .as_deref()
        .map(parse_age)
        .transpose()?;
    let keep_at_least = match args.keep_if_less_than.as_deref() {
        Some(text) => parse_count("--keep-if-less-than", text, "versions")?,
        None => 1,
    };
    let lock_timeout = parse_count("--lock-timeout", &args.lock_timeout, "seconds")?;
    if !args.dry_run && !args.yes && !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "refusing to remove anything without confirmation: standard input is not a terminal; pass -y/--yes (or --dry-run to see what would go)"
        );
    }
    let config = super::config()?;
    let repo = super::open_repo(&config)?;
    if repo.sharing() != Sharing::Private && !rustix::process::geteuid().is_root() {
        anyhow::bail!(
            "only root may clean the shared repository {}: other users' runtime records and views are hidden from you, so what they use cannot be known",
            repo.root().display()
        );
    }
    let bar = Bar(progress_bar(0, "{spinner} {msg} {pos}"));
    bar.0.enable_steady_tick(Duration::from_millis(200));
    let views = || live_views(&config);
    let cleaner = Cleaner {
        repo: &repo,
        prune: PruneOptions {
            older_than,
            repeated: args.prune_repeated,
            keep_at_least,
        },
        views: &views,
        lock_timeout: Duration::from_secs(lock_timeout),
        progress: &bar,
    };
    let plan = cleaner.plan();
    bar.0.finish_and_clear();
    let plan = plan.context("cannot clean")?;
    if args.dry_run {
        print_report(&would(&repo, &plan), args.json)?;
        return Ok(0);
    }
    let nothing = plan.prune.is_empty()
        && plan.garbage_objects().is_empty()
        && plan.garbage_payloads().is_empty();
    if !nothing && !args.yes && !confirm(&plan)? {
        eprintln!("spfs: nothing removed");
        return Ok(1);
    }
    let report = if nothing {
        // Garbage only shrinks once listed: no lock is needed to remove
        // none.
        CleanReport {
            temp_files_removed: repo.remove_stale_temp_files().unwrap_or(0) as u64,
            ..CleanReport::default()
        }
    } else {
        let timeout = lock_timeout;
        let root = repo.root().display().to_string();
        bar.0.reset();
        bar.0.enable_steady_tick(Duration::from_millis(200));
        let result = cleaner.execute(plan, || {
            bar.0.suspend(|| {
                eprintln!(
                    "spfs: waiting up to {timeout} s for write operations (commits, pulls, views being registered) holding {root}/locks/gc"
                )
            })
        });
        bar.0.finish_and_clear();
        result.context("cannot clean")?
    };
    for failure in &report.failures {
        eprintln!("spfs: warning: {failure}");
    }
    print_report(&report, args.json)?;
    Ok(if report.failures.is_empty() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_counts() {
        assert_eq!(parse_age("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse_age("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert_eq!(parse_age("90m").unwrap(), Duration::from_secs(90 * 60));
        assert_eq!(parse_age("2w").unwrap(), Duration::from_secs(14 * 86_400));
        assert_eq!(parse_age("0s").unwrap(), Duration::ZERO);
        for bad in [
            "",
            "30",
            "d",
            "-1d",
            "3x",
            "1.5h",
            "30 d",
            "99999999999999999999d",
        ] {
            let err = parse_age(bad).unwrap_err().to_string();
            assert!(err.contains("invalid age"), "{bad}: {err}");
        }
        assert_eq!(parse_count("--n", "3", "versions").unwrap(), 3);
        let err = parse_count("--n", "-1", "versions")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid --n '-1'"), "{err}");
    }
}
