//! The output directory while a conversion runs: an exclusive lock
//! (`.prep.lock`), and `prep-job.json`, the record of the job's source and
//! options, of the stage files completed and of the sources deleted, which
//! lets a rerun resume safely and refuses a rerun with other inputs.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strata_format::dtype::DType;
use strata_format::fsutil::write_atomic;
use strata_format::manifest::FileEntry;

use crate::error::{PrepError, Result};

/// Name of the lock file in the output directory.
pub const LOCK_NAME: &str = ".prep.lock";
/// Name of the job record in the output directory.
pub const JOB_NAME: &str = "prep-job.json";

/// A locked output directory. The lock file is removed when dropped, and so
/// is the directory itself if this run created it and left it empty.
#[derive(Debug)]
pub struct OutDir {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    created: bool,
}

impl OutDir {
    /// Creates `path` if needed and takes the lock, refusing a directory that
    /// another prep is writing into.
    pub fn lock(path: &Path) -> Result<OutDir> {
        let out_err = |reason: String| PrepError::Output {
            dir: path.to_path_buf(),
            reason,
        };
        let created = !path.exists();
        if !created && !path.is_dir() {
            return Err(out_err("exists and is not a directory".into()));
        }
        std::fs::create_dir_all(path)
            .map_err(|e| out_err(format!("cannot create the directory: {e}")))?;
        let lock_path = path.join(LOCK_NAME);
        let lock = File::create(&lock_path)
            .map_err(|e| out_err(format!("cannot write into the directory: {e}")))?;
        // SAFETY: `lock` stays open across the call, so its descriptor is
        // valid; flock touches no memory of ours and reports failure by its
        // return value (handled below).
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(out_err(if e.kind() == std::io::ErrorKind::WouldBlock {
                format!(
                    "another prep is writing into this directory (it holds {})",
                    lock_path.display()
                )
            } else {
                format!("cannot lock {}: {e}", lock_path.display())
            }));
        }
        // A prep that just finished unlinks the lock file before its lock is
        // released: if we locked that orphaned file, the path now names
        // another file (or none), and a third prep could lock that one too.
        // Only a lock on the file the path still names counts.
        if !same_file(&lock, &lock_path) {
            return Err(out_err(format!(
                "another prep was finishing in this directory while this one started ({} changed); run the command again",
                lock_path.display()
            )));
        }
        Ok(OutDir {
            path: path.to_path_buf(),
            lock_path,
            _lock: lock,
            created,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether the open `file` is the file `path` names now (same device and inode).
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.lock_path);
        if self.created {
            // Fails (as it should) unless the directory is empty.
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// What makes two runs the same job: same program, source and options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobIdentity {
    /// `strata-prep VERSION`.
    pub tool: String,
    /// `local` or `hub`.
    pub source_kind: String,
    /// Folder path or repository id.
    pub location: String,
    /// Hub commit.
    pub revision: Option<String>,
    /// `--quant`.
    pub quant: DType,
    /// `--block-size`, when some encoding is quantized.
    pub block_size: Option<u32>,
    /// Weight file names.
    pub weights: Vec<String>,
    /// `--compress` (normalized), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<String>,
}

impl JobIdentity {
    /// One line describing the job for messages.
    pub fn describe(&self) -> String {
        let rev = self
            .revision
            .as_ref()
            .map(|r| format!("@{r}"))
            .unwrap_or_default();
        let block = self
            .block_size
            .map(|b| format!(" --block-size {b}"))
            .unwrap_or_default();
        format!(
            "{}{rev} with --quant {}{block} ({})",
            self.location, self.quant, self.tool
        )
    }
}

/// Size and sha256 of a stage file as computed while it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Size in bytes.
    pub bytes: u64,
    /// sha256, lowercase hex.
    pub sha256: String,
}

/// The content of `prep-job.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFile {
    /// Which job this is.
    pub identity: JobIdentity,
    /// Sizes of the weight files when the job started.
    pub weight_sizes: BTreeMap<String, u64>,
    /// Stage files completed, with the sha256 computed while writing them.
    #[serde(default)]
    pub stages: BTreeMap<String, StageRecord>,
    /// Source files deleted by `--delete-originals`, with the size and
    /// sha256 they had (the manifest still lists them).
    #[serde(default)]
    pub deleted: Vec<FileEntry>,
}

impl JobFile {
    /// Reads `DIR/prep-job.json` if it exists.
    pub fn load(dir: &Path) -> Result<Option<JobFile>> {
        let path = dir.join(JOB_NAME);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| PrepError::Output {
                dir: dir.to_path_buf(),
                reason: format!(
                    "{JOB_NAME} is not a prep job record ({e}); delete the directory's contents to start over"
                ),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PrepError::io(path, e)),
        }
    }

    /// Writes `DIR/prep-job.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("job record serializes");
        bytes.push(b'\n');
        write_atomic(&dir.join(JOB_NAME), &bytes)?;
        Ok(())
    }

    /// Removes `DIR/prep-job.json` (the job is complete).
    pub fn remove(dir: &Path) -> Result<()> {
        let path = dir.join(JOB_NAME);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PrepError::io(path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> JobIdentity {
        JobIdentity {
            tool: "strata-prep 0.1.0".into(),
            source_kind: "local".into(),
            location: "/m".into(),
            revision: None,
            quant: DType::Nf4,
            block_size: Some(64),
            weights: vec!["model.safetensors".into()],
            compress: None,
        }
    }

    #[test]
    fn job_round_trip() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(JobFile::load(d.path()).unwrap(), None);
        let mut j = JobFile {
            identity: identity(),
            weight_sizes: BTreeMap::from([("model.safetensors".into(), 10)]),
            stages: BTreeMap::new(),
            deleted: vec![],
        };
        j.stages.insert(
            "embed.strata".into(),
            StageRecord {
                bytes: 4096,
                sha256: "ab".into(),
            },
        );
        j.save(d.path()).unwrap();
        assert_eq!(JobFile::load(d.path()).unwrap(), Some(j));
        JobFile::remove(d.path()).unwrap();
        JobFile::remove(d.path()).unwrap();
        std::fs::write(d.path().join(JOB_NAME), b"{").unwrap();
        assert!(JobFile::load(d.path())
            .unwrap_err()
            .to_string()
            .contains(JOB_NAME));
        assert!(identity().describe().contains("--quant nf4"));
    }

    #[test]
    fn a_lock_on_an_unlinked_lock_file_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_NAME);
        let orphan = File::create(&path).unwrap();
        assert!(same_file(&orphan, &path));
        // The finishing prep unlinks the file; a newcomer creates a new one.
        std::fs::remove_file(&path).unwrap();
        assert!(!same_file(&orphan, &path));
        let _new = File::create(&path).unwrap();
        assert!(!same_file(&orphan, &path));
    }

    #[test]
    fn lock_is_exclusive_and_cleaned_up() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let a = OutDir::lock(&out).unwrap();
        let e = OutDir::lock(&out).unwrap_err().to_string();
        assert!(e.contains("another prep"), "{e}");
        drop(a);
        assert!(
            !out.exists(),
            "an empty directory this run created is removed"
        );
        std::fs::create_dir(&out).unwrap();
        drop(OutDir::lock(&out).unwrap());
        assert!(out.exists() && !out.join(LOCK_NAME).exists());
        let file = d.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(OutDir::lock(&file)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
        assert!(OutDir::lock(&file.join("sub"))
            .unwrap_err()
            .to_string()
            .contains("cannot create"));
    }
}
