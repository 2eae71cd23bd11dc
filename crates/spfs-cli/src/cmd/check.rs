//! `spfs check [REF…]`: verify that everything reachable is present and
//! intact.
//!
//! Every object reachable from the references (default: every version of
//! every tag; `--all`: every stored object and payload) is decoded, and every
//! reachable blob is re-hashed in parallel and compared with its name. Text
//! output is one line per problem (`missing DIGEST`, `corrupt DIGEST:
//! problem`) and a summary line; the exit code is 1 when anything is missing
//! or corrupt.

use clap::Args;
use serde::Serialize;
use spfs_model::{Digest, EnvSpec, SpecItem};
use spfs_storage::check::{CheckReport, check, tag_roots};

use super::inspect::json;

/// Arguments of `spfs check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// What to check: digests, prefixes, tags or specs (`a+b`); default:
    /// every version of every tag.
    #[arg(value_name = "REF", conflicts_with = "all")]
    pub refs: Vec<String>,
    /// Check every object and payload stored, reachable or not.
    #[arg(long)]
    pub all: bool,
    /// Print one JSON object {"clean", "objects", "blobs", "missing",
    /// "corrupt"} (objects, blobs: how many were checked; missing: digests;
    /// corrupt: [{"digest", "problem"}]).
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct CheckJson<'a> {
    clean: bool,
    #[serde(flatten)]
    report: &'a CheckReport,
}

pub fn run(args: CheckArgs) -> anyhow::Result<i32> {
    let config = super::config()?;
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
    let clean = report.is_clean();
    if args.json {
        json(&CheckJson {
            clean,
            report: &report,
        })?;
    } else {
        super::inspect::emit(|out| {
            for d in &report.missing {
                writeln!(out, "missing {d}")?;
            }
            for c in &report.corrupt {
                writeln!(out, "corrupt {}: {}", c.digest, c.problem)?;
            }
            writeln!(
                out,
                "checked {} object(s) and {} blob(s): {}",
                report.objects,
                report.blobs,
                if clean {
                    "OK".to_string()
                } else {
                    format!(
                        "{} missing, {} corrupt",
                        report.missing.len(),
                        report.corrupt.len()
                    )
                }
            )
        })?;
    }
    Ok(if clean { 0 } else { 1 })
}
