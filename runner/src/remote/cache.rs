//! The local cache of remote containers: whole stage files stored by their
//! sha256 (so containers sharing a file share it), bounded by `--cache-max`
//! with the least recently used files evicted; downloads in progress beside
//! them, resumable; stage headers and each container's small files (manifest,
//! tokenizer) kept apart and not counted in the bound.
//!
//! ```text
//! CACHE/objects/<sha256>          verified stage files (LRU-bounded)
//! CACHE/partial/<sha256>.part     a download in progress (+ .etag: the object's tag)
//! CACHE/headers/<sha256>          the prefix and header of a stage file
//! CACHE/containers/<url-digest>/  manifest.json and the small files of one URL
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Result, RunnerError};

/// The cache directory and its bound.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    max: Option<u64>,
}

/// The default cache directory: `STRATA_CACHE`, else `$XDG_CACHE_HOME/strata`,
/// else `~/.cache/strata`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STRATA_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("strata");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache").join("strata"))
        .unwrap_or_else(|| std::env::temp_dir().join("strata-cache"))
}

impl Cache {
    /// The cache at `root` (created if absent), holding at most `max` bytes of
    /// stage files (`None`: no bound; `Some(0)`: none at all).
    pub fn open(root: &Path, max: Option<u64>) -> Result<Cache> {
        for sub in ["objects", "partial", "headers", "containers"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(|e| RunnerError::io(&d, e))?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
            max,
        })
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The bound on stage files (`None`: none).
    pub fn max(&self) -> Option<u64> {
        self.max
    }

    /// Whether a stage file of `size` bytes is kept in the cache at all
    /// (larger than the bound, it is streamed from the remote).
    pub fn holds(&self, size: u64) -> bool {
        self.max.is_none_or(|m| size <= m)
    }

    /// Where the verified file of digest `sha` lies.
    pub fn object(&self, sha: &str) -> PathBuf {
        self.root.join("objects").join(sha)
    }

    /// Where a download of digest `sha` in progress lies, and its tag file.
    pub fn partial(&self, sha: &str) -> (PathBuf, PathBuf) {
        let d = self.root.join("partial");
        (d.join(format!("{sha}.part")), d.join(format!("{sha}.etag")))
    }

    /// Where the header of the stage file of digest `sha` is kept.
    pub fn header(&self, sha: &str) -> PathBuf {
        self.root.join("headers").join(sha)
    }

    /// The directory of the container at `url`.
    pub fn container_dir(&self, url: &str) -> PathBuf {
        let digest = strata_format::checksum::sha256_hex(url.as_bytes());
        self.root.join("containers").join(&digest[..24])
    }

    /// The cached file of digest `sha` and `size` bytes, marked as just used,
    /// if present (a file of another size is removed).
    pub fn lookup(&self, sha: &str, size: u64) -> Option<PathBuf> {
        let p = self.object(sha);
        let len = fs::metadata(&p).ok()?.len();
        if len != size {
            let _ = fs::remove_file(&p);
            return None;
        }
        if let Ok(f) = fs::File::options().write(true).open(&p) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(p)
    }

    /// Evicts the least recently used stage files until `incoming` more bytes
    /// fit under the bound; `keep` is never evicted.
    pub fn make_room(&self, incoming: u64, keep: &str) -> Result<()> {
        let Some(max) = self.max else {
            return Ok(());
        };
        let dir = self.root.join("objects");
        let rd = fs::read_dir(&dir).map_err(|e| RunnerError::io(&dir, e))?;
        let mut files: Vec<(SystemTime, u64, PathBuf)> = rd
            .filter_map(|e| {
                let e = e.ok()?;
                let m = e.metadata().ok()?;
                (m.is_file() && e.file_name() != keep).then(|| {
                    (
                        m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        m.len(),
                        e.path(),
                    )
                })
            })
            .collect();
        // Partial downloads count too: they become objects.
        let partial = self.root.join("partial");
        let in_progress: u64 = fs::read_dir(&partial)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        files.sort();
        let mut total: u64 = files
            .iter()
            .map(|f| f.1)
            .sum::<u64>()
            .saturating_add(in_progress);
        for (_, len, path) in files {
            if total.saturating_add(incoming) <= max {
                break;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    log::debug!("cache: evicted {} ({len} bytes)", path.display());
                    total -= len;
                }
                Err(e) => log::warn!("cache: cannot evict {}: {e}", path.display()),
            }
        }
        Ok(())
    }

    /// Bytes free on the cache's file system.
    pub fn free_bytes(&self) -> Option<u64> {
        let c = std::ffi::CString::new(self.root.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: statvfs is a plain C struct of integers, for which all
        // zero bytes are a valid value.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a NUL-terminated path that outlives the call and `s`
        // is a valid, writable statvfs; on failure (-1) `s` is not read.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
        (rc == 0).then(|| (s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_keeps_the_bound_and_the_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Cache::open(dir.path(), Some(10)).expect("open");
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            fs::write(c.object(name), [0u8; 4]).expect("write");
            let f = fs::File::options()
                .write(true)
                .open(c.object(name))
                .expect("open");
            f.set_modified(t0 + std::time::Duration::from_secs(i as u64))
                .expect("mtime");
        }
        // 12 bytes held, 4 incoming: a and b go (oldest first), c stays.
        c.make_room(4, "d").expect("room");
        assert!(!c.object("a").exists() && !c.object("b").exists());
        assert!(c.object("c").exists());
        assert_eq!(c.lookup("c", 4), Some(c.object("c")));
        assert_eq!(c.lookup("c", 5), None, "a wrong size is dropped");
        assert!(!c.object("c").exists());
        assert!(c.holds(10) && !c.holds(11));
        assert!(Cache::open(dir.path(), None).expect("open").holds(u64::MAX));
    }
}
