//! File-system facts: free space, devices, page-cache eviction, and the disk
//! space a conversion needs at its peak.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{PrepError, Result};

/// Bytes available to this user on the file system holding `dir`.
pub fn available_bytes(dir: &Path) -> Result<u64> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
        PrepError::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte"),
        )
    })?;
    // SAFETY: `statvfs` is a C struct of integers (and padding), for which
    // all-zero bytes are a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path that outlives the call and `st` a
    // writable statvfs the call may fill; on failure `st` is not read.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(PrepError::io(dir, std::io::Error::last_os_error()));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// The device id of the file system holding `path`.
pub fn device_of(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .map_err(|e| PrepError::io(path, e))?
        .dev())
}

/// Asks the kernel to drop `path`'s clean pages from the page cache, so the
/// next read really comes from the disk.
pub fn drop_page_cache(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| PrepError::io(path, e))?;
    // SAFETY: `f` stays open across the call, so its descriptor is valid;
    // offset 0 and length 0 mean the whole file; the call touches no memory of
    // ours, and a failure only returns an error code.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        log::debug!(
            "{}: posix_fadvise(DONTNEED) failed: {}",
            path.display(),
            std::io::Error::from_raw_os_error(rc)
        );
    }
    Ok(())
}

/// Peak disk usage of a conversion that writes `writes[i]` bytes for stage
/// `i`, frees `frees[i]` bytes of source right after stage `i` is complete,
/// and finally writes `tail` bytes (tokenizer files, manifest). Each stage
/// must fit before the sources it completes are freed.
pub fn peak_need(writes: &[u64], frees: &[u64], tail: u64) -> u64 {
    let mut used: i128 = 0;
    let mut peak: i128 = 0;
    for (i, &w) in writes.iter().enumerate() {
        used += i128::from(w);
        peak = peak.max(used);
        used -= i128::from(frees.get(i).copied().unwrap_or(0));
    }
    used += i128::from(tail);
    peak = peak.max(used);
    peak.max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_without_frees_is_the_total() {
        assert_eq!(peak_need(&[10, 20, 30], &[0, 0, 0], 5), 65);
        assert_eq!(peak_need(&[], &[], 0), 0);
    }

    #[test]
    fn frees_lower_the_peak_but_each_stage_must_fit_first() {
        // Stage 0 (10) completes shard A (100): freed after it is written.
        // Stage 1 writes 30 → usage -60+30; peak stays the first stage's 10.
        assert_eq!(peak_need(&[10, 30], &[100, 0], 0), 10);
        // Single shard freed only at the end: the whole output must fit first.
        assert_eq!(peak_need(&[10, 20, 30], &[0, 0, 1000], 5), 60);
        // Usage climbs again after a free.
        assert_eq!(peak_need(&[50, 10, 60, 60], &[40, 0, 0, 0], 0), 140);
    }

    #[test]
    fn space_and_devices() {
        let d = tempfile::tempdir().unwrap();
        assert!(available_bytes(d.path()).unwrap() > 0);
        let f = d.path().join("f");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(device_of(&f).unwrap(), device_of(d.path()).unwrap());
        drop_page_cache(&f).unwrap();
        let missing = d.path().join("missing");
        let e = available_bytes(&missing).unwrap_err();
        assert!(
            matches!(&e, PrepError::Io { path, source } if path == &missing
                && source.kind() == std::io::ErrorKind::NotFound),
            "{e}"
        );
    }
}
