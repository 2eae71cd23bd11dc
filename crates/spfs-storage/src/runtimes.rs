//! Runtime records: what is running, with which layers, for which process.
//!
//! `spfs run` writes one JSON record per runtime under `runtimes/`; the VFS
//! service removes it when the runtime's process tree has exited.

use std::fs;
use std::path::PathBuf;

use spfs_model::Digest;

use crate::error::{Result, StorageError};
use crate::fs::FsRepository;

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

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

impl FsRepository {
    fn runtime_path(&self, name: &str) -> Result<PathBuf> {
        if !valid_name(name) {
            return Err(StorageError::UnknownRuntime(name.to_string()));
        }
        Ok(self.root().join("runtimes").join(format!("{name}.json")))
    }

    /// Save (create or replace) a runtime record.
    pub fn save_runtime(&self, record: &RuntimeRecord) -> Result<()> {
        let path = self.runtime_path(&record.name)?;
        let json = serde_json::to_vec_pretty(record).map_err(|e| StorageError::BadRecord {
            path: path.clone(),
            message: e.to_string(),
        })?;
        self.write_atomic(&path, &json)
    }

    pub fn read_runtime(&self, name: &str) -> Result<RuntimeRecord> {
        let path = self.runtime_path(name)?;
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StorageError::UnknownRuntime(name.to_string()),
            _ => StorageError::io("cannot read", &path)(e),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| StorageError::BadRecord {
            path,
            message: e.to_string(),
        })
    }

    /// Remove a runtime record; removing one that is gone is not an error.
    pub fn remove_runtime(&self, name: &str) -> Result<bool> {
        let path = self.runtime_path(name)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::io("cannot remove", &path)(e)),
        }
    }

    /// Every runtime record, sorted by name. Unreadable records are skipped.
    pub fn runtimes(&self) -> Result<Vec<RuntimeRecord>> {
        let dir = self.root().join("runtimes");
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
