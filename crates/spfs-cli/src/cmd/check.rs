//! `spfs check [REF…] [--pull [REMOTE]]`: verify that everything reachable
//! is present and intact, and repair what is not from remotes.
//!
//! Every object reachable from the references (default: every version of
//! every tag; `--all`: every stored object and payload) is decoded, and every
//! reachable blob is re-hashed in parallel and compared with its name. Text
//! output is one line per problem (`missing DIGEST`, `corrupt DIGEST:
//! problem`) and a summary line; the exit code is 1 when anything is missing
//! or corrupt.
//!
//! With `--pull`, what the check finds is fetched from a remote
//! ([`spfs_storage::check::repair`]: verified before it replaces anything,
//! corrupt copies moved to quarantine), the references are checked again,
//! and the output is one line per digest repaired or not, and a summary;
//! the exit code is 0 when the repository is clean after the repair. A
//! remote that cannot be used (unknown, bad address, unreachable) is a
//! one-line error with exit code 2, before anything changes.

use clap::Args;
use serde::Serialize;
use spfs_model::{Digest, EnvSpec, SpecItem};
use spfs_storage::Repository;
use spfs_storage::check::{
    CheckReport, RepairReport, Repaired, Source, Unrepaired, check, repair, tag_roots,
};
use spfs_storage::transfer::Progress;

use super::inspect::json;

/// Exit code of a repair that could not start (a remote that cannot be used).
const CANNOT_REPAIR: i32 = 2;

/// Arguments of `spfs check`.
#[derive(Args, Debug)]
#[command(after_long_help = "\
Repairing (--pull): every object or payload found missing or corrupt is \
fetched from the remote (a directory, `spfs server` or S3 remote) and \
verified against its digest before it replaces anything; a corrupt local \
copy is moved to ROOT/quarantine/ (never overwritten), and what a fetched \
object reaches that is missing here is fetched too. A remote that serves \
bytes that do not match repairs nothing and is named. A payload is stored \
as the remote's copy is: public only if the remote's copy is public, else \
as your private copy (root restores a user's corrupt private copy as that \
user's). In a shared repository only root can move corrupt copies to \
quarantine. The references are then checked again; the output is \
`repaired DIGEST (missing|corrupt) from REMOTE`, `unrepaired DIGEST: why` \
and a summary, with progress on stderr on a terminal.

Without a name, --pull tries the remotes of `vfs.remotes` in order (default: \
origin), each digest from the first with a good copy. Give references \
before --pull, or name the remote: `spfs check --pull origin my/tag`.

Exit codes: 0 clean (after the repair), 1 something missing or corrupt, \
2 the repair could not start (a remote not configured, or that cannot be \
reached; nothing was changed).")]
pub struct CheckArgs {
    /// What to check: digests, prefixes, tags or specs (`a+b`); default:
    /// every version of every tag.
    #[arg(value_name = "REF", conflicts_with = "all")]
    pub refs: Vec<String>,
    /// Check every object and payload stored, reachable or not.
    #[arg(long)]
    pub all: bool,
    /// Repair what is missing or corrupt from REMOTE (default: the remotes
    /// of `vfs.remotes`, origin unless configured otherwise), then check
    /// again.
    #[arg(long, value_name = "REMOTE", num_args = 0..=1)]
    pub pull: Option<Option<String>>,
    /// With --pull: payloads fetched at once.
    #[arg(long, default_value_t = 8, requires = "pull",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Print one JSON object {"clean", "objects", "blobs", "missing",
    /// "corrupt"} (objects, blobs: how many were checked; missing: digests;
    /// corrupt: [{"digest", "problem"}]). With --pull, the check after the
    /// repair, plus "repaired": [{"digest", "problem", "kind", "from"}] and
    /// "unrepaired": [{"digest", "problem", "reason"}].
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct CheckJson<'a> {
    clean: bool,
    #[serde(flatten)]
    report: &'a CheckReport,
}

#[derive(Serialize)]
struct RepairJson<'a> {
    repaired: &'a [Repaired],
    unrepaired: &'a [Unrepaired],
    clean: bool,
    #[serde(flatten)]
    report: &'a CheckReport,
}

pub fn run(args: CheckArgs) -> anyhow::Result<i32> {
    let config = super::config()?;
    // The remotes are known before anything is read or changed.
    let remotes = match &args.pull {
        None => None,
        Some(named) => match pull_names(&config, named.as_deref()) {
            Ok(names) => Some(names),
            Err(e) => return cannot_repair(e),
        },
    };
    let repo = super::open_repo(&config)?;
    let roots: Vec<Digest> = if args.all {
        let mut all = repo.objects()?;
        all.extend(repo.payloads()?);
        all
    } else if args.refs.is_empty() {
        tag_roots(&repo)?
    } else {
        let mut roots = Vec::new();
        for text in &args.refs {
            for item in EnvSpec::parse(text)?.items {
                // A full digest is checked even when nothing is stored under
                // it: then it is reported missing.
                match item {
                    SpecItem::Digest(d) => roots.push(d),
                    other => roots.push(repo.resolve_item(&other)?),
                }
            }
        }
        roots
    };
    let report = check(&repo, &roots)?;
    let Some(names) = remotes else {
        return print_check(&report, args.json);
    };
    let outcome = if report.is_clean() {
        RepairReport {
            repaired: Vec::new(),
            unrepaired: Vec::new(),
            after: report,
        }
    } else {
        // Opened only when there is something to fetch.
        let mut opened: Vec<(String, Box<dyn Repository>)> = Vec::new();
        for name in names {
            match spfs_remote::open_remote(&config, &name) {
                Ok(remote) => opened.push((name, remote)),
                Err(e) => return cannot_repair(e.into()),
            }
        }
        let sources: Vec<Source<'_>> = opened
            .iter()
            .map(|(name, repo)| Source {
                name,
                repo: &**repo,
            })
            .collect();
        let items = report.items().len();
        let list = opened
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        tracing::info!("repairing {items} missing or corrupt item(s) from {list}");
        let bar = Bar(crate::output::progress_bar(
            0,
            "{spinner} repairing: {pos}/{len} objects and payloads {wide_bar} {msg}",
        ));
        let result = repair(&repo, &roots, report, &sources, args.jobs as usize, &bar);
        bar.0.finish_and_clear();
        result?
    };
    print_repair(&outcome, args.json)
}

/// The remotes `--pull` names: `named`, or those of `vfs.remotes` (an
/// unconfigured `origin`, the default, left out); each must be configured.
fn pull_names(config: &spfs_config::Config, named: Option<&str>) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = match named {
        Some(name) => vec![name.to_string()],
        None => config
            .vfs
            .remotes
            .iter()
            .filter(|n| *n != "origin" || config.remote.contains_key("origin"))
            .cloned()
            .collect(),
    };
    if names.is_empty() {
        anyhow::bail!(
            "no remote to repair from: name one (--pull NAME), or add [remote.origin] \
             address = \"...\" to the config"
        );
    }
    for name in &names {
        let Some(remote) = config.remote.get(name) else {
            let configured = if config.remote.is_empty() {
                "none; add [remote.NAME] address = \"...\" to the config".to_string()
            } else {
                config.remote.keys().cloned().collect::<Vec<_>>().join(", ")
            };
            return Err(spfs_remote::RemoteError::Unknown {
                name: name.clone(),
                configured,
            }
            .into());
        };
        if let Err(source) = spfs_remote::Address::parse(&remote.address) {
            return Err(spfs_remote::RemoteError::BadAddress {
                name: name.clone(),
                source,
            }
            .into());
        }
    }
    Ok(names)
}

/// A repair that cannot start: one line on stderr, exit code 2.
fn cannot_repair(e: anyhow::Error) -> anyhow::Result<i32> {
    crate::output::report_error(&e.context("cannot repair"));
    Ok(CANNOT_REPAIR)
}

fn print_check(report: &CheckReport, as_json: bool) -> anyhow::Result<i32> {
    let clean = report.is_clean();
    if as_json {
        json(&CheckJson { clean, report })?;
    } else {
        super::inspect::emit(|out| {
            for d in &report.missing {
                writeln!(out, "missing {d}")?;
            }
            for c in &report.corrupt {
                writeln!(out, "corrupt {}: {}", c.digest, c.problem)?;
            }
            writeln!(out, "{}", summary(report))
        })?;
    }
    Ok(if clean { 0 } else { 1 })
}

fn print_repair(outcome: &RepairReport, as_json: bool) -> anyhow::Result<i32> {
    let report = &outcome.after;
    let clean = report.is_clean();
    if as_json {
        json(&RepairJson {
            repaired: &outcome.repaired,
            unrepaired: &outcome.unrepaired,
            clean,
            report,
        })?;
    } else {
        super::inspect::emit(|out| {
            for r in &outcome.repaired {
                writeln!(out, "repaired {} ({}) from {}", r.digest, r.problem, r.from)?;
            }
            for u in &outcome.unrepaired {
                writeln!(out, "unrepaired {}: {}", u.digest, u.reason)?;
            }
            writeln!(
                out,
                "repaired {}, unrepaired {}; after the repair, {}",
                outcome.repaired.len(),
                outcome.unrepaired.len(),
                summary(report)
            )
        })?;
    }
    Ok(if clean { 0 } else { 1 })
}

/// `checked N object(s) and M blob(s): OK` (or what is wrong).
fn summary(report: &CheckReport) -> String {
    format!(
        "checked {} object(s) and {} blob(s): {}",
        report.objects,
        report.blobs,
        if report.is_clean() {
            "OK".to_string()
        } else {
            format!(
                "{} missing, {} corrupt",
                report.missing.len(),
                report.corrupt.len()
            )
        }
    )
}

/// A repair's progress as an indicatif bar (hidden off a terminal).
struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn need(&self, items: u64) {
        self.0.inc_length(items);
    }
    fn done(&self, bytes: u64) {
        self.0.inc(1);
        if bytes > 0 {
            self.0
                .set_message(format!("{}", indicatif::HumanBytes(bytes)));
        }
    }
}
