//! pread into aligned buffers, O_DIRECT when the file system supports it (no
//! page-cache pollution when the model is larger than RAM).

use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{open, AlignedBuf, Span, CHUNK};
use crate::error::{Result, RunnerError};

/// Whether `path` can be opened and read with O_DIRECT.
pub fn supports_direct(path: &Path) -> bool {
    let Ok(f) = open(path, true) else {
        return false;
    };
    let Some(mut buf) = AlignedBuf::new(4096) else {
        return false;
    };
    f.read_at(buf.as_mut_full(), 0).is_ok()
}

/// The pread backend.
pub struct PreadReader {
    direct: bool,
}

impl PreadReader {
    /// A reader that uses O_DIRECT when `direct`.
    pub fn new(direct: bool) -> PreadReader {
        PreadReader { direct }
    }

    /// Whether O_DIRECT is used.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Reads `span` of `path` into `buf`.
    pub fn read(&self, path: &Path, span: Span, buf: &mut AlignedBuf) -> Result<()> {
        let len = usize::try_from(span.len)
            .ok()
            .filter(|&l| l <= buf.capacity())
            .ok_or_else(|| {
                RunnerError::Invalid(format!(
                    "{}: a read of {} bytes does not fit its {}-byte buffer",
                    path.display(),
                    span.len,
                    buf.capacity()
                ))
            })?;
        span.offset.checked_add(span.len).ok_or_else(|| {
            RunnerError::Invalid(format!(
                "{}: a read of {} bytes at byte {} ends past 2^64",
                path.display(),
                span.len,
                span.offset
            ))
        })?;
        let f = open(path, self.direct).map_err(|e| RunnerError::io(path, e))?;
        let dst = &mut buf.as_mut_full()[..len];
        let mut done = 0usize;
        while done < len {
            let n = CHUNK.min(len - done);
            // done < len, and offset + len was checked above.
            let at = span.offset + done as u64;
            let got = f
                .read_at(&mut dst[done..done + n], at)
                .map_err(|e| RunnerError::io(path, e))?;
            if got == 0 {
                return Err(RunnerError::io(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("file ended at byte {at} (truncated while in use?)"),
                    ),
                ));
            }
            done += got;
        }
        buf.set_len(len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::fault;
    use std::io::Write;

    #[test]
    fn file_truncated_while_open_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        let len = 3 * CHUNK;
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&vec![7u8; len]))
            .unwrap();
        let r = PreadReader::new(supports_direct(&path));
        fault::on_next_open(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .and_then(|f| f.set_len(CHUNK as u64))
                .unwrap()
        });
        let mut buf = AlignedBuf::new(len).unwrap();
        let span = Span {
            offset: 0,
            len: len as u64,
        };
        match r.read(&path, span, &mut buf).unwrap_err() {
            RunnerError::Io { path: p, source } => {
                assert_eq!(p, path);
                assert_eq!(source.kind(), std::io::ErrorKind::UnexpectedEof);
                assert!(
                    source.to_string().contains(&format!("byte {CHUNK}")),
                    "{source}"
                );
            }
            e => panic!("expected an I/O error naming the file, got {e}"),
        }
        // The reader keeps no state: the next read of the (now short) file
        // returns its bytes.
        let span = Span {
            offset: 0,
            len: CHUNK as u64,
        };
        r.read(&path, span, &mut buf).unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 7));
    }
}
