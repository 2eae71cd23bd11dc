//! Tags: human names for digests, with history.
//!
//! A tag `org/name` is stored as `tags/org/name.tag`, one version per line,
//! oldest first: `DIGEST UNIX_SECONDS USER`. `name~N` is the version N steps
//! back from the newest. Writers serialize on an advisory `flock` of a lock
//! file beside the tag, which the kernel releases when a process dies, so a
//! killed writer never blocks anyone; the new history is written to a
//! temporary file and renamed into place.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};
use spfs_model::{Digest, TagSpec};

use crate::error::{Result, StorageError};
use crate::fs::{FsRepository, sync_dir};

/// One version of a tag.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TagVersion {
    pub target: Digest,
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub user: String,
}

/// What `untag` removes.
#[derive(Clone, Copy, Debug)]
pub enum Untag {
    /// The version N steps back.
    Version(u64),
    Latest,
    All,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The name of the current user, for tag history.
pub fn current_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| rustix::process::getuid().as_raw().to_string())
}

fn parse_history(path: &Path, text: &str) -> Result<Vec<TagVersion>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, ' ');
            let bad = || StorageError::BadRecord {
                path: path.to_path_buf(),
                message: format!("bad tag line {line:?}"),
            };
            let target = Digest::parse(parts.next().ok_or_else(bad)?).map_err(|_| bad())?;
            let time = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
            let user = parts.next().unwrap_or("").to_string();
            Ok(TagVersion { target, time, user })
        })
        .collect()
}

impl FsRepository {
    fn tag_path(&self, name: &str) -> PathBuf {
        self.root().join("tags").join(format!("{name}.tag"))
    }

    /// Hold the lock of tag `name` while `f` runs.
    fn with_tag_lock<T>(&self, name: &str, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
        let path = self.tag_path(name);
        let dir = path.parent().unwrap_or(self.root());
        fs::create_dir_all(dir).map_err(StorageError::io("cannot create", dir))?;
        let lock_path = path.with_extension("tag.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(StorageError::io("cannot open lock", &lock_path))?;
        flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| StorageError::io("cannot lock", &lock_path)(e.into()))?;
        let out = f(&path);
        drop(lock);
        out
    }

    /// The history of tag `name`, oldest first.
    pub fn tag_history(&self, name: &str) -> Result<Vec<TagVersion>> {
        TagSpec::parse(name)?;
        let path = self.tag_path(name);
        match fs::read_to_string(&path) {
            Ok(text) => parse_history(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StorageError::UnknownTag(name.to_string()))
            }
            Err(e) => Err(StorageError::io("cannot read", &path)(e)),
        }
    }

    /// Point tag `name` at `target`, keeping the previous versions.
    pub fn push_tag(&self, name: &str, target: &Digest) -> Result<()> {
        let spec = TagSpec::parse(name)?;
        if spec.version != 0 {
            return Err(StorageError::Spec(spfs_model::SpecError::InvalidTag(
                name.to_string(),
            )));
        }
        self.with_tag_lock(name, |path| {
            let mut text = match fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(StorageError::io("cannot read", path)(e)),
            };
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!("{target} {} {}\n", now(), current_user()));
            self.write_atomic(path, text.as_bytes())
        })
    }

    /// Remove versions of tag `name`.
    pub fn untag(&self, name: &str, what: Untag) -> Result<()> {
        self.tag_history(name)?;
        self.with_tag_lock(name, |path| {
            let text = fs::read_to_string(path).map_err(StorageError::io("cannot read", path))?;
            let mut history = parse_history(path, &text)?;
            let index = match what {
                Untag::All => None,
                Untag::Latest => Some(0),
                Untag::Version(n) => Some(n),
            };
            match index {
                None => history.clear(),
                Some(n) => {
                    let available = history.len();
                    let pos = available.checked_sub(1 + n as usize).ok_or_else(|| {
                        StorageError::UnknownTagVersion {
                            name: name.to_string(),
                            available,
                            requested: n,
                        }
                    })?;
                    history.remove(pos);
                }
            }
            if history.is_empty() {
                fs::remove_file(path).map_err(StorageError::io("cannot remove", path))?;
                let _ = fs::remove_file(path.with_extension("tag.lock"));
                sync_dir(path.parent().unwrap_or(self.root()));
                return Ok(());
            }
            let text: String = history
                .iter()
                .map(|v| format!("{} {} {}\n", v.target, v.time, v.user))
                .collect();
            self.write_atomic(path, text.as_bytes())
        })
    }

    /// The digest a tag spec points to.
    pub fn resolve_tag(&self, spec: &TagSpec) -> Result<Digest> {
        let history = self.tag_history(&spec.name)?;
        let available = history.len();
        available
            .checked_sub(1 + spec.version as usize)
            .map(|i| history[i].target)
            .ok_or(StorageError::UnknownTagVersion {
                name: spec.name.clone(),
                available,
                requested: spec.version,
            })
    }

    /// Every tag name, sorted.
    pub fn tags(&self) -> Result<Vec<String>> {
        let base = self.root().join("tags");
        let mut out = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io("cannot list", &dir)(e)),
            };
            for item in rd {
                let item = item.map_err(StorageError::io("cannot list", &dir))?;
                let path = item.path();
                if item.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(path);
                } else if let Some(rel) = path.strip_prefix(&base).ok().and_then(|r| r.to_str())
                    && let Some(name) = rel.strip_suffix(".tag")
                {
                    out.push(name.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The entries directly under a tag folder: sub-folders end with `/`.
    pub fn ls_tags(&self, folder: &str) -> Result<Vec<String>> {
        let folder = folder.trim_matches('/');
        let prefix = if folder.is_empty() {
            String::new()
        } else {
            format!("{folder}/")
        };
        let mut out: Vec<String> = self
            .tags()?
            .into_iter()
            .filter_map(|t| t.strip_prefix(&prefix).map(str::to_string))
            .map(|rest| match rest.split_once('/') {
                Some((dir, _)) => format!("{dir}/"),
                None => rest,
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_and_versions() {
        let dir = tempfile::tempdir().unwrap();
        let repo = FsRepository::create(dir.path()).unwrap();
        let a = repo.write_blob(b"a").unwrap();
        let b = repo.write_blob(b"b").unwrap();
        repo.push_tag("org/name", &a).unwrap();
        repo.push_tag("org/name", &b).unwrap();
        let spec = |v| TagSpec {
            name: "org/name".into(),
            version: v,
        };
        assert_eq!(repo.resolve_tag(&spec(0)).unwrap(), b);
        assert_eq!(repo.resolve_tag(&spec(1)).unwrap(), a);
        assert!(matches!(
            repo.resolve_tag(&spec(2)),
            Err(StorageError::UnknownTagVersion { .. })
        ));
        assert_eq!(repo.tags().unwrap(), ["org/name"]);
        assert_eq!(repo.ls_tags("").unwrap(), ["org/"]);
        assert_eq!(repo.ls_tags("org").unwrap(), ["name"]);
        repo.untag("org/name", Untag::Latest).unwrap();
        assert_eq!(repo.resolve_tag(&spec(0)).unwrap(), a);
        repo.untag("org/name", Untag::All).unwrap();
        assert!(matches!(
            repo.tag_history("org/name"),
            Err(StorageError::UnknownTag(_))
        ));
    }
}
