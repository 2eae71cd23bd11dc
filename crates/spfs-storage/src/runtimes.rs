//! Runtime records: what is running, with which layers, for which process.
//!
//! `spfs run` writes one JSON record per runtime under `runtimes/`; the VFS
//! service removes it when the runtime's process tree has exited. A record
//! belongs to the user who wrote it: in a shared repository `runtimes/` is
//! sticky, so only that user and root can replace or remove it. What a
//! record says of its owner and its name is not believed: a record read
//! back is its file owner's, named by its file.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::AtFlags;

use spfs_model::Digest;

use crate::error::{Result, StorageError};
use crate::fs::{FsRepository, Written};

/// One running environment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuntimeRecord {
    pub name: String,
    /// The spec as the user gave it.
    pub spec: String,
    /// The resolved stack, bottom first.
    pub layers: Vec<Digest>,
    pub root_pid: u32,
    pub owner_uid: u32,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub mountpoint: PathBuf,
    /// The command being run.
    pub command: Vec<String>,
    /// The runtime's cgroup (v2) path, as the VFS service made it.
    #[serde(default)]
    pub cgroup: String,
    /// Whether the runtime sees a bound view (a mount namespace whose mount
    /// point shows only its view) or a routed one (the shared mount).
    #[serde(default)]
    pub bound: bool,
    /// Whether the runtime is editable: its writes go to its own upper
    /// area (kept by the service under `edits/NAME`).
    #[serde(default)]
    pub editable: bool,
    /// Whether the runtime is durable: its record and upper area stay when
    /// its processes have exited, to be run again (`spfs run --rerun`).
    #[serde(default)]
    pub keep: bool,
}

/// A new, unique runtime name.
pub fn new_runtime_name() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut rnd = [0u8; 4];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut rnd);
    }
    format!(
        "rt-{:x}{:05x}-{:08x}",
        now.as_secs(),
        now.subsec_micros(),
        u32::from_le_bytes(rnd)
    )
}

/// Where runtime records are, below the root.
const RUNTIMES: &str = "runtimes";

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

impl FsRepository {
    /// The file name of runtime record `name` in `runtimes/`.
    fn runtime_file(name: &str) -> Result<String> {
        if !valid_name(name) {
            return Err(StorageError::UnknownRuntime(name.to_string()));
        }
        Ok(format!("{name}.json"))
    }

    /// Where runtime record `name` is, below the root.
    fn runtime_path(name: &str) -> Result<PathBuf> {
        Ok(Path::new(RUNTIMES).join(Self::runtime_file(name)?))
    }

    /// Save (create or replace) a runtime record.
    pub fn save_runtime(&self, record: &RuntimeRecord) -> Result<()> {
        self.save_runtime_as(record, None)
    }

    /// [`FsRepository::save_runtime`], the file owned by `owner` when given
    /// (root rewriting a user's record leaves it the user's).
    pub fn save_runtime_as(&self, record: &RuntimeRecord, owner: Option<u32>) -> Result<()> {
        let rel = Self::runtime_path(&record.name)?;
        let json = serde_json::to_vec_pretty(record).map_err(|e| StorageError::BadRecord {
            path: self.root().join(&rel),
            message: e.to_string(),
        })?;
        self.write_atomic(&rel, &json, Written::PrivateRecord { keep_owner: owner })
    }

    pub fn read_runtime(&self, name: &str) -> Result<RuntimeRecord> {
        let rel = Self::runtime_path(name)?;
        let mut bytes = Vec::new();
        let mut file =
            self.open_regular(&rel, || StorageError::UnknownRuntime(name.to_string()))?;
        let owner = file
            .metadata()
            .map_err(self.io_err("cannot read", &rel))?
            .uid();
        file.read_to_end(&mut bytes)
            .map_err(self.io_err("cannot read", &rel))?;
        let mut record: RuntimeRecord =
            serde_json::from_slice(&bytes).map_err(|e| StorageError::BadRecord {
                path: self.root().join(&rel),
                message: e.to_string(),
            })?;
        // Whoever wrote the file owns the runtime, and the file's name is
        // the runtime's, whatever it says: in a shared repository anyone
        // may write a record claiming anyone, or naming another runtime
        // (which whoever acts on the record by its name would then touch).
        record.owner_uid = owner;
        record.name = name.to_string();
        Ok(record)
    }

    /// Remove a runtime record; removing one that is gone is not an error.
    pub fn remove_runtime(&self, name: &str) -> Result<bool> {
        let file = Self::runtime_file(name)?;
        let dir = match self.open_dir(Path::new(RUNTIMES), None) {
            Ok((dir, _)) => dir,
            Err(StorageError::MissingDirectory(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        match rustix::fs::unlinkat(&dir, &file, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(StorageError::io(
                "cannot remove",
                self.root().join(RUNTIMES).join(file),
            )(e.into())),
        }
    }

    /// Every runtime record, sorted by name. Unreadable records are skipped.
    pub fn runtimes(&self) -> Result<Vec<RuntimeRecord>> {
        let dir = self.root().join(RUNTIMES);
        let rd = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StorageError::io("cannot list", &dir)(e)),
        };
        let mut out = Vec::new();
        for item in rd.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            if let Some(name) = name.strip_suffix(".json")
                && let Ok(r) = self.read_runtime(name)
            {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
