//! `spfs commit` and `spfs write`: storing things in the repository.
//!
//! - `spfs commit --path DIR [-t TAG]…` stores a directory as a layer. Files
//!   are hashed in parallel on all cores and each is read once; modes,
//!   symlinks and modification times are kept (`--mtime-clamp EPOCH`, or
//!   `SOURCE_DATE_EPOCH`, caps the times for reproducible layers); a
//!   socket, fifo or device is an error naming its path.
//!   A progress bar shows on a terminal (never in a pipe). The layer's digest
//!   is the last line of stdout.
//! - `spfs commit --ref A+B [-t TAG]…` stores the resolved stack as a
//!   platform and prints the platform's digest.
//! - `spfs write [-f FILE] [-t TAG]…` stores one blob (stdin by default) and
//!   prints its digest.
//!
//! A new payload is readable by other users straight from the repository
//! only if the file it comes from is readable by others (a blob from
//! standard input never is); see `docs/multi-user.md`.
//!
//! Tags are checked before anything is stored, and a failing commit leaves
//! no new object or tag behind (payloads are staged in temporary files and
//! renamed into place only once durable; objects and tags come last).
//! Both hold the repository's garbage-collection lock shared until their
//! tags are written, so a concurrent `spfs clean` never removes what they
//! reuse (docs/clean.md); untagged results are garbage to the next clean.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgGroup, Args};
use indicatif::ProgressBar;
use spfs_model::{Digest, EnvSpec, Object, Platform, TagSpec};
use spfs_storage::{FsRepository, Readers};

use crate::output::progress_bar;

/// Arguments of `spfs commit`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("source").required(true).args(["kind", "path", "reference"])))]
pub struct CommitArgs {
    /// Inside an editable runtime: `layer` stores its edits as a layer put
    /// on top of its stack (the running processes see the same files);
    /// `platform` stores its whole stack.
    #[arg(value_enum, value_name = "KIND")]
    pub kind: Option<super::edit::CommitKind>,
    #[command(flatten)]
    pub runtime: super::edit::RuntimeArg,
    /// Store this directory as a layer.
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
    /// Store this stack (an environment spec such as `a+b`) as a platform.
    #[arg(long = "ref", value_name = "SPEC")]
    pub reference: Option<String>,
    /// Tag the result (repeat for more tags).
    #[arg(short = 't', long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Annotate the layer with KEY=VALUE (repeat for more; `--path` only).
    #[arg(long = "annotation", value_name = "KEY=VALUE", requires = "path")]
    pub annotations: Vec<String>,
    /// Record no modification time later than EPOCH (seconds since
    /// 1970-01-01 UTC): later times are recorded as EPOCH, so commits of
    /// the same content touched at different times give the same layer.
    /// Without this flag, the SOURCE_DATE_EPOCH environment variable is
    /// used when set and not empty. Every file, directory and symlink
    /// otherwise keeps its own modification time (`--path` only; ignored
    /// with `--ref`).
    #[arg(long, value_name = "EPOCH", allow_negative_numbers = true)]
    pub mtime_clamp: Option<i64>,
    /// Also store the result, and its tags, in this remote (as `spfs push`
    /// would; checked before anything is committed).
    #[arg(long, value_name = "NAME")]
    pub remote: Option<String>,
}

/// Arguments of `spfs write`.
#[derive(Args, Debug)]
pub struct WriteArgs {
    /// Read the blob from this file instead of stdin. A new payload is
    /// readable by other users from the repository's files only if FILE is
    /// readable by others; one read from stdin only by you (and root).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Tag the blob (repeat for more tags).
    #[arg(short = 't', long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

/// Check tag names before anything is written: plain `org/name`, no `~N`.
pub(crate) fn check_tag_names(tags: &[String]) -> anyhow::Result<()> {
    for tag in tags {
        let spec = TagSpec::parse(tag)?;
        if spec.name != *tag {
            anyhow::bail!("invalid tag '{tag}': a new version cannot name '~N'");
        }
    }
    Ok(())
}

pub(crate) fn push_tags(
    repo: &FsRepository,
    tags: &[String],
    target: &Digest,
) -> anyhow::Result<()> {
    for tag in tags {
        repo.push_tag(tag, target)
            .with_context(|| format!("cannot tag {target} as '{tag}'"))?;
        tracing::info!(%tag, %target, "tagged");
    }
    Ok(())
}

/// A commit's progress as an indicatif bar (hidden when stderr is not a
/// terminal).
struct Bar(ProgressBar);

impl spfs_storage::commit::Progress for Bar {
    fn start(&self, files: u64, bytes: u64) {
        self.0.set_length(bytes);
        self.0.set_message(format!("{files} files"));
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// Remove what killed writers left in `tmp/` (best effort).
fn clean_temp(repo: &FsRepository) {
    match repo.remove_stale_temp_files() {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} temporary file(s) left by dead processes"),
        Err(e) => tracing::warn!("cannot clean temporary files: {e}"),
    }
}

/// The latest modification time to record, in nanoseconds since the epoch:
/// `--mtime-clamp`, else `SOURCE_DATE_EPOCH` (unset or empty: none).
fn mtime_clamp(flag: Option<i64>) -> anyhow::Result<Option<i64>> {
    let secs = match flag {
        Some(secs) => Some(secs),
        None => match std::env::var_os("SOURCE_DATE_EPOCH") {
            Some(v) if !v.is_empty() => {
                let text = v.to_string_lossy();
                Some(text.trim().parse::<i64>().map_err(|_| {
                    anyhow::anyhow!(
                        "invalid SOURCE_DATE_EPOCH '{text}': expected whole seconds since 1970-01-01 UTC"
                    )
                })?)
            }
            _ => None,
        },
    };
    Ok(secs.map(|s| spfs_model::time::from_unix(s, 0)))
}

fn parse_annotations(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            anyhow::bail!("invalid annotation '{item}': expected KEY=VALUE");
        };
        if k.is_empty() {
            anyhow::bail!("invalid annotation '{item}': the key is empty");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

pub fn commit(args: CommitArgs) -> anyhow::Result<i32> {
    check_tag_names(&args.tags)?;
    let annotations = parse_annotations(&args.annotations)?;
    let config = super::config()?;
    let remote = match &args.remote {
        Some(name) => Some((name.as_str(), super::remote::open(&config, name)?)),
        None => None,
    };
    let digest = if let Some(kind) = args.kind {
        super::edit::commit(kind, &args.runtime, &args.tags)?
    } else if let Some(dir) = &args.path {
        let options = spfs_storage::commit::Options {
            mtime_clamp: mtime_clamp(args.mtime_clamp)?,
        };
        if !dir.is_dir() {
            // Say what is wrong before a repository is created for nothing.
            match std::fs::metadata(dir) {
                Ok(_) => anyhow::bail!("cannot commit {}: not a directory", dir.display()),
                Err(e) => anyhow::bail!("cannot commit {}: {e}", dir.display()),
            }
        }
        let repo = super::open_or_create_repo(&config)?;
        clean_temp(&repo);
        // Until the tags are written (see docs/clean.md): a concurrent
        // clean must not remove what this commit finds stored and reuses.
        let _guard = repo.write_guard()?;
        let bar = Bar(progress_bar(
            0,
            "{spinner} {msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec}",
        ));
        let result = spfs_storage::commit::commit_dir(&repo, dir, annotations, &options, &bar);
        bar.0.finish_and_clear();
        let digest = result?;
        push_tags(&repo, &args.tags, &digest)?;
        digest
    } else {
        let text = args.reference.as_deref().unwrap_or_default();
        let spec = EnvSpec::parse(text)?;
        if spec.is_empty() {
            anyhow::bail!("nothing to commit: the spec '{text}' names no layers");
        }
        let repo = super::open_or_create_repo(&config)?;
        // From resolving the stack until the tags name the platform.
        let _guard = repo.write_guard()?;
        let stack = repo.resolve_spec(&spec)?;
        // Every item must be a layer, a platform or a manifest.
        repo.flatten(&stack)?;
        let digest = repo.write_object(&Object::Platform(Platform { stack }))?;
        push_tags(&repo, &args.tags, &digest)?;
        digest
    };
    if let Some((name, dst)) = remote {
        let local = super::open_repo(&config)?;
        let tags = args.tags.iter().map(|t| (t.clone(), digest)).collect();
        let whole = spfs_storage::transfer::Scope::Whole;
        super::remote::send(&local, &*dst, ("local", name), &[digest], tags, whole, 8)?;
    }
    super::inspect::emit(|out| writeln!(out, "{digest}"))?;
    Ok(0)
}

pub fn write(args: WriteArgs) -> anyhow::Result<i32> {
    check_tag_names(&args.tags)?;
    let config = super::config()?;
    // A blob from a file is readable by others straight from the
    // repository only if the file is; one from standard input only by us.
    let (mut input, readers): (Box<dyn std::io::Read>, Readers) = match &args.file {
        Some(path) => {
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            let mode = file
                .metadata()
                .with_context(|| format!("cannot read {}", path.display()))?
                .mode();
            (Box::new(file), Readers::of_mode(mode))
        }
        None => (Box::new(std::io::stdin().lock()), Readers::Owner),
    };
    let repo = super::open_or_create_repo(&config)?;
    clean_temp(&repo);
    // Until the tags name the blob.
    let _guard = repo.write_guard()?;
    let source = match &args.file {
        Some(path) => path.display().to_string(),
        None => "standard input".to_string(),
    };
    let (digest, _size) = repo
        .write_blob_from(&mut input, readers)
        .map_err(|e| match e {
            spfs_storage::StorageError::Io {
                context,
                path,
                source: err,
            } if context == "cannot read" && path.as_os_str() == "(input)" => {
                anyhow::anyhow!("cannot read {source}: {err}")
            }
            e => e.into(),
        })?;
    push_tags(&repo, &args.tags, &digest)?;
    super::inspect::emit(|out| writeln!(out, "{digest}"))?;
    Ok(0)
}
