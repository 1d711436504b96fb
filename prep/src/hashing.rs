//! sha256 of the source shards, computed on a background thread while the
//! conversion runs (the manifest lists them, and `--delete-originals` needs a
//! shard's hash before the shard is gone).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use memmap2::{Mmap, UncheckedAdvice};
use sha2::{Digest, Sha256};

use crate::error::{PrepError, Result};

/// Bytes hashed between two releases of the mapped pages.
const WINDOW: usize = 32 << 20;

/// Hashes one file through a memory map, releasing each window of pages
/// after use so the resident size stays bounded. Returns `(bytes, sha256)`.
pub fn hash_file(path: &Path, stop: &AtomicBool) -> Result<(u64, String)> {
    let file = File::open(path).map_err(|e| PrepError::io(path, e))?;
    let len = file.metadata().map_err(|e| PrepError::io(path, e))?.len();
    let mut hasher = Sha256::new();
    if len > 0 {
        // SAFETY: memmap2 requires that the file not change while mapped.
        // prep never writes its source files; another process changing one
        // during a conversion is outside what prep can defend against (as in
        // safetensors.rs). On the error path nothing is mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| PrepError::io(path, e))?;
        let _ = map.advise(memmap2::Advice::Sequential);
        for (i, window) in map.chunks(WINDOW).enumerate() {
            if stop.load(Ordering::Relaxed) {
                return Err(PrepError::io(
                    path,
                    std::io::Error::new(std::io::ErrorKind::Interrupted, "hashing cancelled"),
                ));
            }
            hasher.update(window);
            // SAFETY: the range is the i-th chunk of the mapping, so it lies
            // inside it (madvise rounds it out to whole pages of this same
            // mapping). The mapping is read-only and shared: released pages
            // are re-read from the file if touched again, and `window` is not
            // used after. A failure only returns an error, ignored here.
            let _ = unsafe {
                map.unchecked_advise_range(UncheckedAdvice::DontNeed, i * WINDOW, window.len())
            };
        }
    }
    Ok((len, hex::encode(hasher.finalize())))
}

/// The background hasher of the source shards.
pub struct ShardHasher {
    rx: Receiver<(usize, Result<(u64, String)>)>,
    done: HashMap<usize, (u64, String)>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl ShardHasher {
    /// Starts hashing `jobs` (shard index, path) in the given order.
    pub fn spawn(jobs: Vec<(usize, PathBuf)>) -> ShardHasher {
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("prep-hash".into())
            .spawn(move || {
                for (i, path) in jobs {
                    let r = hash_file(&path, &flag);
                    let failed = r.is_err();
                    if tx.send((i, r)).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("spawning the hashing thread");
        ShardHasher {
            rx,
            done: HashMap::new(),
            stop,
            handle: Some(handle),
        }
    }

    /// Waits for shard `i`'s `(bytes, sha256)`.
    pub fn wait(&mut self, i: usize) -> Result<(u64, String)> {
        loop {
            if let Some(r) = self.done.get(&i) {
                return Ok(r.clone());
            }
            match self.rx.recv() {
                Ok((j, r)) => {
                    self.done.insert(j, r?);
                }
                Err(_) => {
                    return Err(PrepError::io(
                        format!("source shard #{i}"),
                        std::io::Error::other("the hashing thread stopped before hashing it"),
                    ))
                }
            }
        }
    }
}

impl Drop for ShardHasher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_in_background() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        std::fs::write(&a, b"abc").unwrap();
        std::fs::write(&b, b"").unwrap();
        let mut h = ShardHasher::spawn(vec![(3, a.clone()), (5, b.clone())]);
        let (n, sha) = h.wait(5).unwrap();
        assert_eq!(n, 0);
        assert_eq!(
            sha,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let (n, sha) = h.wait(3).unwrap();
        assert_eq!(n, 3);
        assert_eq!(sha, strata_format::checksum::sha256_hex(b"abc"));
        // Shard 9 is in no job: the thread ends without it.
        let e = h.wait(9).unwrap_err();
        assert!(
            matches!(&e, PrepError::Io { path, .. } if path.as_path() == Path::new("source shard #9"))
                && e.to_string().contains("stopped before hashing it"),
            "{e}"
        );
        let mut h = ShardHasher::spawn(vec![(0, d.path().join("missing"))]);
        assert!(h.wait(0).unwrap_err().to_string().contains("missing"));
    }
}
