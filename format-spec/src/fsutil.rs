//! Crash-safe file system helpers: write to a temporary name, fsync, rename,
//! fsync the directory.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{FormatError, Result};

/// Suffix of files being written; a crash leaves at most such a file behind.
pub const TMP_SUFFIX: &str = ".tmp";

/// The temporary name used while `path` is being written.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(TMP_SUFFIX);
    path.with_file_name(name)
}

/// fsyncs a directory so that renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| FormatError::io(dir, e))?;
    d.sync_all().map_err(|e| FormatError::io(dir, e))
}

/// Renames a fully written and synced temporary file over `path`, then syncs the directory.
pub fn commit_tmp(tmp: &Path, path: &Path) -> Result<()> {
    fs::rename(tmp, path).map_err(|e| FormatError::io(path, e))?;
    sync_dir(parent_dir(path))
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, dir fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp).map_err(|e| FormatError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| FormatError::io(&tmp, e))?;
    f.sync_all().map_err(|e| FormatError::io(&tmp, e))?;
    drop(f);
    commit_tmp(&tmp, path)
}
