//! Inspecting the repository: `spfs ls`, `read`, `info`, `diff`, `layers`,
//! `platforms` and `search`.
//!
//! References are environment specs wherever a tree is shown (`a+b` shows
//! the merged tree: later layers win, masks delete), and single references
//! (a digest, a unique prefix of at least two characters, or a tag with an
//! optional `~N`) where one object is described. Every command takes
//! `--json` and then prints exactly one JSON document on stdout; its fields
//! are listed in each command's `--help`. Modification times are shown as
//! RFC 3339 text in UTC with nanoseconds (`2024-05-01T12:00:00.000000000Z`)
//! in text and JSON alike; entries of layers committed before times were
//! kept show the epoch (`1970-01-01T00:00:00.000000000Z`).

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use spfs_model::diff::ChangeKind;
use spfs_model::time::rfc3339;
use spfs_model::{Digest, Entry, EntryKind, EnvSpec, Object, ObjectKind, PathTarget, Tree};
use spfs_storage::FsRepository;

use crate::output::print_json;

/// Write to stdout through a buffer. A reader that went away (`| head`)
/// ends the output quietly rather than failing.
pub(crate) fn emit(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
    match f(&mut out).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e).context("cannot write to standard output"),
    }
}

/// Print one JSON document (see [`print_json`]); a reader that went away
/// ends the output quietly.
pub(crate) fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    match print_json(value) {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|e| e.io_error_kind() == Some(io::ErrorKind::BrokenPipe))
    })
}

/// The digests an environment spec names, bottom first.
pub(crate) fn resolve_stack(repo: &FsRepository, text: &str) -> anyhow::Result<Vec<Digest>> {
    let spec = EnvSpec::parse(text)?;
    Ok(repo.resolve_spec(&spec)?)
}

/// The merged tree an environment spec describes.
pub(crate) fn spec_tree(repo: &FsRepository, text: &str) -> anyhow::Result<Tree> {
    let stack = resolve_stack(repo, text)?;
    Ok(repo.merged_tree(&stack)?)
}

/// Every tag spec (`name` or `name~N`) whose version points at a digest.
pub(crate) fn tags_by_target(repo: &FsRepository) -> anyhow::Result<BTreeMap<Digest, Vec<String>>> {
    let mut out: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
    for name in repo.tags()? {
        // A tag removed meanwhile, or unreadable, only leaves out its name.
        let history = match repo.tag_history(&name) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("skipping tag {name}: {e}");
                continue;
            }
        };
        for (n, v) in history.iter().rev().enumerate() {
            let spec = if n == 0 {
                name.clone()
            } else {
                format!("{name}~{n}")
            };
            out.entry(v.target).or_default().push(spec);
        }
    }
    Ok(out)
}

/// `ls -l` style mode text, e.g. `drwxr-xr-x`.
pub(crate) fn mode_text(kind: EntryKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::Mask => 'm',
        EntryKind::File => '-',
    });
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (i, (bit, c)) in bits.iter().enumerate() {
        let set = mode & bit != 0;
        let special = match i {
            2 => mode & 0o4000 != 0,
            5 => mode & 0o2000 != 0,
            8 => mode & 0o1000 != 0,
            _ => false,
        };
        s.push(match (set, special, i) {
            (true, true, 8) => 't',
            (false, true, 8) => 'T',
            (true, true, _) => 's',
            (false, true, _) => 'S',
            (true, false, _) => *c,
            (false, false, _) => '-',
        });
    }
    s
}

/// Arguments of `spfs ls`.
#[derive(Args, Debug)]
pub struct LsArgs {
    /// A layer, platform, manifest or environment spec (`a+b`: the merged
    /// tree).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// The directory (or file) to list; default: the top.
    #[arg(value_name = "PATH", default_value = "/")]
    pub path: String,
    /// Show mode, size, modification time (RFC 3339, UTC, nanoseconds) and
    /// digest.
    #[arg(short = 'l', long)]
    pub long: bool,
    /// List subdirectories too, as paths relative to PATH.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Print one JSON array of {"path", "name", "kind", "mode", "size",
    /// "mtime", "digest"} (path: from the top of the tree; kind: file, dir
    /// or symlink; mode: the numeric unix mode; mtime: the modification
    /// time as RFC 3339 text in UTC with nanoseconds, the epoch for layers
    /// committed before times were kept; digest: null for directories).
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct EntryJson {
    path: String,
    name: String,
    kind: EntryKind,
    mode: u32,
    size: u64,
    mtime: String,
    digest: Option<Digest>,
}

fn join(prefix: &str, rel: &str) -> String {
    match (prefix.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}/{rel}"),
    }
}

/// A symlink's target, read from its blob (for `ls -l`).
fn link_target(repo: &FsRepository, e: &Entry) -> Option<String> {
    use std::io::Read;
    let mut f = repo.open_payload(&e.object).ok()?;
    let mut buf = Vec::new();
    Read::by_ref(&mut f).take(4096).read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

pub fn ls(args: LsArgs) -> anyhow::Result<i32> {
    let config = super::config()?;
    let repo = super::open_repo(&config)?;
    let tree = spec_tree(&repo, &args.reference)?;
    let base: String = args
        .path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/");
    let target = tree
        .lookup_path(&base)
        .ok_or_else(|| anyhow::anyhow!("no such path '{}' in {}", args.path, args.reference))?;
    // (path relative to the listing, entry)
    let mut items: Vec<(String, &Entry)> = Vec::new();
    match target {
        PathTarget::Root => {
            if args.recursive {
                tree.walk_dir(0, String::new(), &mut items);
            } else {
                items.extend(
                    tree.children(0)
                        .iter()
                        .map(|e| (e.name_lossy().into_owned(), e)),
                );
            }
        }
        PathTarget::Entry(i) => {
            let e = &tree.entries()[i as usize];
            if e.kind != EntryKind::Dir {
                items.push((e.name_lossy().into_owned(), e));
            } else if args.recursive {
                tree.walk_dir(e.dir, String::new(), &mut items);
            } else {
                items.extend(
                    tree.children(e.dir)
                        .iter()
                        .map(|c| (c.name_lossy().into_owned(), c)),
                );
            }
        }
    }
    let file_target = matches!(target, PathTarget::Entry(i)
        if tree.entries()[i as usize].kind != EntryKind::Dir);
    if args.json {
        let out: Vec<EntryJson> = items
            .iter()
            .map(|(rel, e)| EntryJson {
                path: if file_target {
                    base.clone()
                } else {
                    join(&base, rel)
                },
                name: e.name_lossy().into_owned(),
                kind: e.kind,
                mode: e.mode,
                size: e.size,
                mtime: rfc3339(e.mtime),
                digest: (e.kind != EntryKind::Dir).then_some(e.object),
            })
            .collect();
        json(&out)?;
        return Ok(0);
    }
    emit(|out| {
        for (rel, e) in &items {
            let slash = if e.is_dir() { "/" } else { "" };
            if args.long {
                let digest = if e.is_dir() {
                    "-".to_string()
                } else {
                    e.object.to_string()
                };
                let link = if e.kind == EntryKind::Symlink {
                    link_target(&repo, e)
                        .map(|t| format!(" -> {t}"))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                writeln!(
                    out,
                    "{} {:>12} {} {:<56} {rel}{slash}{link}",
                    mode_text(e.kind, e.mode),
                    e.size,
                    rfc3339(e.mtime),
                    digest
                )?;
            } else {
                writeln!(out, "{rel}{slash}")?;
            }
        }
        Ok(())
    })?;
    Ok(0)
}

/// Arguments of `spfs read`.
#[derive(Args, Debug)]
pub struct ReadArgs {
    /// A layer, platform, manifest, environment spec, or a blob (then PATH
    /// is not given).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// The file to print; a symlink prints its target.
    #[arg(value_name = "PATH")]
    pub path: Option<String>,
}

/// Copy blob `digest` to standard output, checking its bytes on the way: a
/// copy that does not hash to its name ends the command with an error.
fn copy_blob(repo: &FsRepository, digest: &Digest) -> anyhow::Result<()> {
    let mut f = repo.open_payload(digest)?;
    let mut hasher = spfs_model::Hasher::new();
    emit(|out| {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match io::Read::read(&mut f, &mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
        }
    })?;
    let actual = hasher.finish();
    if actual != *digest {
        anyhow::bail!("payload {digest} is corrupt: its bytes hash to {actual} (run 'spfs check')");
    }
    Ok(())
}

pub fn read(args: ReadArgs) -> anyhow::Result<i32> {
    let config = super::config()?;
    let repo = super::open_repo(&config)?;
    let stack = resolve_stack(&repo, &args.reference)?;
    let Some(path) = &args.path else {
        if let [one] = stack.as_slice()
            && !repo.has_object(one)
            && repo.has_payload(one)
        {
            copy_blob(&repo, one)?;
            return Ok(0);
        }
        anyhow::bail!(
            "{} is not a blob: give the PATH of a file to read",
            args.reference
        );
    };
    let tree = repo.merged_tree(&stack)?;
    match tree.lookup_path(path) {
        None => anyhow::bail!("no such file '{path}' in {}", args.reference),
        Some(PathTarget::Root) => anyhow::bail!("'{path}' is a directory in {}", args.reference),
        Some(PathTarget::Entry(i)) => {
            let e = &tree.entries()[i as usize];
            match e.kind {
                EntryKind::File | EntryKind::Symlink => copy_blob(&repo, &e.object)?,
                EntryKind::Dir => {
                    anyhow::bail!("'{path}' is a directory in {}", args.reference)
                }
                EntryKind::Mask => anyhow::bail!("no such file '{path}' in {}", args.reference),
            }
        }
    }
    Ok(0)
}

/// Arguments of `spfs info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// One reference: a digest, a unique prefix or a tag (`name~N`).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Print one JSON object {"digest", "kind", "size", "tags"}, plus for a
    /// manifest "entries", "mtime"; a layer "manifest", "annotations",
    /// "entries", "mtime", "layers"; a platform "stack", "layers",
    /// "entries", "mtime" (size: bytes of the blob, or of all files in the
    /// (merged) tree; mtime: the newest modification time of any entry of
    /// the (merged) tree as RFC 3339 text in UTC with nanoseconds, absent
    /// when the tree is empty; tags: `name` or `name~N` pointing at it;
    /// layers: the flattened stack, bottom first).
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct InfoJson {
    digest: Digest,
    kind: ObjectKind,
    size: u64,
    tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stack: Option<Vec<Digest>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<Vec<Digest>>,
}

pub fn info(args: InfoArgs) -> anyhow::Result<i32> {
    let config = super::config()?;
    let repo = super::open_repo(&config)?;
    let stack = resolve_stack(&repo, &args.reference)?;
    let digest = match stack.as_slice() {
        [one] => *one,
        [] => anyhow::bail!("'{}' names nothing; give one reference", args.reference),
        many => anyhow::bail!(
            "'{}' names {} objects; 'spfs info' describes one",
            args.reference,
            many.len()
        ),
    };
    let tags = tags_by_target(&repo)?.remove(&digest).unwrap_or_default();
    let mut info = InfoJson {
        digest,
        kind: ObjectKind::Blob,
        size: 0,
        tags,
        entries: None,
        mtime: None,
        manifest: None,
        annotations: None,
        stack: None,
        layers: None,
    };
    if repo.has_object(&digest) {
        let obj = repo.read_object(&digest)?;
        info.kind = obj.kind();
        let tree = match obj {
            Object::Manifest(t) => t,
            Object::Layer(l) => {
                info.manifest = Some(l.manifest);
                info.annotations = Some(l.annotations);
                info.layers = Some(vec![digest]);
                repo.layer_tree(&digest)?
            }
            Object::Platform(p) => {
                let layers = repo.flatten(&p.stack)?;
                let t = repo.merged_tree(&layers)?;
                info.stack = Some(p.stack);
                info.layers = Some(layers);
                t
            }
        };
        info.entries = Some(tree.len());
        info.size = tree.total_size();
        info.mtime = tree.newest_mtime().map(rfc3339);
    } else {
        // Any copy: a private one too (sizes are no secret).
        info.size = repo.payload_size(&digest)?;
    }
    if args.json {
        json(&info)?;
        return Ok(0);
    }
    let tag_map = if info.layers.is_some() {
        tags_by_target(&repo)?
    } else {
        BTreeMap::new()
    };
    emit(|out| {
        writeln!(out, "digest:      {}", info.digest)?;
        writeln!(out, "kind:        {}", info.kind)?;
        writeln!(out, "size:        {} bytes", info.size)?;
        if let Some(n) = info.entries {
            writeln!(out, "entries:     {n}")?;
        }
        if let Some(t) = &info.mtime {
            writeln!(out, "mtime:       {t} (newest entry)")?;
        }
        if let Some(m) = &info.manifest {
            writeln!(out, "manifest:    {m}")?;
        }
        if let Some(a) = &info.annotations {
            for (k, v) in a {
                writeln!(out, "annotation:  {k}={v}")?;
            }
        }
        if let Some(stack) = &info.stack {
            writeln!(out, "stack:       {} item(s), bottom first", stack.len())?;
            for d in stack {
                writeln!(out, "  - {d}")?;
            }
        }
        if let Some(layers) = &info.layers
            && info.kind == ObjectKind::Platform
        {
            writeln!(out, "layers:      {} layer(s), bottom first", layers.len())?;
            for d in layers {
                let names = tag_map.get(d).map(|t| t.join(", ")).unwrap_or_default();
                writeln!(out, "  - {d} {names}")?;
            }
        }
        let tags = if info.tags.is_empty() {
            "-".to_string()
        } else {
            info.tags.join(", ")
        };
        writeln!(out, "tags:        {tags}")
    })?;
    Ok(0)
}

/// Arguments of `spfs diff`.
#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The old side: a layer, platform, manifest or environment spec.
    #[arg(value_name = "A")]
    pub a: String,
    /// The new side.
    #[arg(value_name = "B")]
    pub b: String,
    /// Print one JSON array of {"path", "kind"} (kind: added, changed or
    /// removed), sorted by path.
    #[arg(long)]
    pub json: bool,
    /// Also report entries whose modification time alone changed (by
    /// default a change is one of kind, mode, size or content).
    #[arg(long)]
    pub mtime: bool,
}

pub fn diff(args: DiffArgs) -> anyhow::Result<i32> {
    let config = super::config()?;
    let repo = super::open_repo(&config)?;
    let a = spec_tree(&repo, &args.a)?;
    let b = spec_tree(&repo, &args.b)?;
    let options = spfs_model::diff::DiffOptions { mtime: args.mtime };
    let changes = spfs_model::diff::diff_with(&a, &b, options);
    if args.json {
        json(&changes)?;
        return Ok(0);
    }
    emit(|out| {
        for c in &changes {
            let sign = match c.kind {
                ChangeKind::Added => '+',
                ChangeKind::Changed => '~',
                ChangeKind::Removed => '-',
            };
            writeln!(out, "{sign} {}", c.path)?;
        }
        Ok(())
    })?;
    Ok(0)
}

/// Arguments of `spfs layers` and `spfs platforms`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print one JSON array of {"digest", "tags"} (tags: `name` or `name~N`
    /// pointing at it), sorted by digest.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct ListJson {
    digest: Digest,
    tags: Vec<String>,
}

fn list_kind(args: ListArgs, kind: ObjectKind) -> anyhow::Result<i32> {
    let config = super::config()?;
    let repo = super::open_repo(&config)?;
    let mut found = Vec::new();
    for d in repo.objects()? {
        if repo.peek_kind(&d)? == kind {
            found.push(d);
        }
    }
    found.sort();
    if args.json {
        let mut tags = tags_by_target(&repo)?;
        let out: Vec<ListJson> = found
            .into_iter()
            .map(|digest| ListJson {
                tags: tags.remove(&digest).unwrap_or_default(),
                digest,
            })
            .collect();
        json(&out)?;
        return Ok(0);
    }
    emit(|out| {
        for d in &found {
            writeln!(out, "{d}")?;
        }
        Ok(())
    })?;
    Ok(0)
}

pub fn layers(args: ListArgs) -> anyhow::Result<i32> {
    list_kind(args, ObjectKind::Layer)
}

pub fn platforms(args: ListArgs) -> anyhow::Result<i32> {
    list_kind(args, ObjectKind::Platform)
}

/// Arguments of `spfs search`.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Text that the tag names must contain.
    #[arg(value_name = "TERM")]
    pub term: String,
    /// Print one JSON array of {"name", "target"} (target: the newest
    /// version's digest).
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct SearchJson {
    name: String,
    target: Digest,
}

pub fn search(args: SearchArgs) -> anyhow::Result<i32> {
    let config = super::config()?;
    let repo = super::open_repo(&config)?;
    let names: Vec<String> = repo
        .tags()?
        .into_iter()
        .filter(|t| t.contains(&args.term))
        .collect();
    if args.json {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(v) = repo.tag_history(&name)?.last() {
                out.push(SearchJson {
                    target: v.target,
                    name,
                });
            }
        }
        json(&out)?;
        return Ok(0);
    }
    emit(|out| {
        for n in &names {
            writeln!(out, "{n}")?;
        }
        Ok(())
    })?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_texts() {
        assert_eq!(mode_text(EntryKind::File, 0o100644), "-rw-r--r--");
        assert_eq!(mode_text(EntryKind::Dir, 0o040755), "drwxr-xr-x");
        assert_eq!(mode_text(EntryKind::File, 0o104755), "-rwsr-xr-x");
        assert_eq!(mode_text(EntryKind::Dir, 0o041777), "drwxrwxrwt");
        assert_eq!(mode_text(EntryKind::Symlink, 0o120777), "lrwxrwxrwx");
    }
}
