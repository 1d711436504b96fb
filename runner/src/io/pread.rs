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
        let f = open(path, self.direct).map_err(|e| RunnerError::io(path, e))?;
        let len = span.len as usize;
        let dst = &mut buf.as_mut_full()[..len];
        let mut done = 0usize;
        while done < len {
            let n = CHUNK.min(len - done);
            let got = f
                .read_at(&mut dst[done..done + n], span.offset + done as u64)
                .map_err(|e| RunnerError::io(path, e))?;
            if got == 0 {
                return Err(RunnerError::io(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("file ended at byte {}", span.offset + done as u64),
                    ),
                ));
            }
            done += got;
        }
        buf.set_len(len);
        Ok(())
    }
}
