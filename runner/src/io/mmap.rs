//! Memory-mapped reads: the mapping's pages are touched in the prefetch thread
//! so the disk reads happen there, not in compute.
//!
//! A mapping shows the file as it is now, not as it was verified: container
//! files must not change while the runner maps them. A file truncated under a
//! mapping makes the next touch of a page past its new end kill the process
//! with SIGBUS, which no check can prevent. What can be checked is checked:
//! each read compares the file's size with the size it had when first mapped
//! (and with the span it needs) before mapping, and again after faulting the
//! pages in, and reports a change as an error naming the file.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Span;
use crate::error::{Result, RunnerError};

/// The mmap backend.
pub struct MmapReader {
    /// Each file's size when it was first mapped.
    sizes: Mutex<HashMap<PathBuf, u64>>,
}

impl MmapReader {
    /// A reader that has mapped nothing yet.
    pub fn new() -> MmapReader {
        MmapReader {
            sizes: Mutex::new(HashMap::new()),
        }
    }

    /// Maps `span` of `path` and faults every page in. Fails, naming the
    /// file, when the file's size differs from its size at its first mapping
    /// or is too small for `span`.
    pub fn read(&self, path: &Path, span: Span) -> Result<memmap2::Mmap> {
        let f = File::open(path).map_err(|e| RunnerError::io(path, e))?;
        let size = self.check_size(path, &f)?;
        let end = span.offset.checked_add(span.len);
        if end.is_none_or(|end| end > size) {
            return Err(changed(
                path,
                format!(
                    "is {size} bytes, too short for {} bytes at byte {} (truncated while in use?)",
                    span.len, span.offset
                ),
            ));
        }
        let len = usize::try_from(span.len).map_err(|_| {
            RunnerError::Invalid(format!("{}: read too large to map", path.display()))
        })?;
        // SAFETY: memmap2 requires that the file not change while mapped (the
        // slices handed out would change under a `&[u8]`, or fault with SIGBUS
        // past a truncation). The runner cannot enforce that; it is a stated
        // requirement of `--io mmap` (see its help), checked as far as can be:
        // the span lies within the file's current size (checked just above),
        // which equals its size at its first mapping, and the size is checked
        // again after the pages are faulted in. On the error path of `map`
        // nothing is mapped.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(span.offset)
                .len(len)
                .map(&f)
        }
        .map_err(|e| RunnerError::io(path, e))?;
        let mut sum = 0u8;
        for page in map.chunks(4096) {
            sum = sum.wrapping_add(page[0]);
        }
        std::hint::black_box(sum);
        self.check_size(path, &f)?;
        Ok(map)
    }

    /// The size of `f` (opened from `path`), or an error when it differs from
    /// the size `path` had when first seen.
    fn check_size(&self, path: &Path, f: &File) -> Result<u64> {
        let size = f.metadata().map_err(|e| RunnerError::io(path, e))?.len();
        let first = *self
            .sizes
            .lock()
            .map_err(|_| RunnerError::Prefetch("mmap size table lock poisoned".into()))?
            .entry(path.to_path_buf())
            .or_insert(size);
        if size != first {
            return Err(changed(
                path,
                format!("changed size while in use (was {first} bytes, now {size})"),
            ));
        }
        Ok(size)
    }
}

impl Default for MmapReader {
    fn default() -> Self {
        MmapReader::new()
    }
}

/// The error for a file that changed under `--io mmap`.
fn changed(path: &Path, what: String) -> RunnerError {
    RunnerError::io(
        path,
        std::io::Error::other(format!(
            "{what}: --io mmap needs container files left unchanged while the runner runs"
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(offset: u64, len: u64) -> Span {
        Span { offset, len }
    }

    #[test]
    fn size_change_is_detected_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stage.bin");
        std::fs::write(&path, vec![3u8; 3 * 4096]).unwrap();
        let r = MmapReader::new();
        let m = r.read(&path, span(4096, 8192)).unwrap();
        assert!(m.iter().all(|&b| b == 3));
        drop(m);

        // Shrunk: the span would lie past the end (SIGBUS if touched).
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(4096))
            .unwrap();
        let e = r.read(&path, span(0, 4096)).unwrap_err().to_string();
        assert!(e.contains("stage.bin"), "{e}");
        assert!(
            e.contains("changed size while in use (was 12288 bytes, now 4096)"),
            "{e}"
        );
        assert!(e.contains("--io mmap"), "{e}");

        // Grown back to a different size: still a change.
        std::fs::write(&path, vec![3u8; 4 * 4096]).unwrap();
        let e = r.read(&path, span(0, 4096)).unwrap_err().to_string();
        assert!(e.contains("now 16384"), "{e}");
    }

    #[test]
    fn span_past_the_end_is_an_error_not_sigbus() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stage.bin");
        std::fs::write(&path, vec![1u8; 4096]).unwrap();
        let r = MmapReader::new();
        let e = r.read(&path, span(0, 8192)).unwrap_err().to_string();
        assert!(e.contains("stage.bin") && e.contains("too short"), "{e}");
        let e = r.read(&path, span(u64::MAX, 2)).unwrap_err().to_string();
        assert!(e.contains("too short"), "{e}");
    }
}
