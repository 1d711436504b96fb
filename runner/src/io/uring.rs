//! io_uring reads: several 4 MiB O_DIRECT requests in flight per file.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;

use io_uring::{opcode, types, IoUring};

use super::{open, AlignedBuf, Span, CHUNK};
use crate::error::{Result, RunnerError};

/// Requests kept in flight.
const DEPTH: u32 = 16;

/// The io_uring backend.
pub struct UringReader {
    ring: Mutex<IoUring>,
    direct: bool,
}

impl UringReader {
    /// Sets up a ring; fails where the kernel forbids io_uring.
    pub fn new(direct: bool) -> std::io::Result<UringReader> {
        let ring = IoUring::new(DEPTH)?;
        Ok(UringReader {
            ring: Mutex::new(ring),
            direct,
        })
    }

    /// Whether O_DIRECT is used.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Reads `span` of `path` into `buf`, with up to 16 requests in flight.
    pub fn read(&self, path: &Path, span: Span, buf: &mut AlignedBuf) -> Result<()> {
        let f = open(path, self.direct).map_err(|e| RunnerError::io(path, e))?;
        let fd = types::Fd(f.as_raw_fd());
        let len = span.len as usize;
        let base = buf.as_mut_full()[..len].as_mut_ptr();
        let mut ring = self
            .ring
            .lock()
            .map_err(|_| RunnerError::Prefetch("io_uring lock poisoned".into()))?;
        // Pending pieces: (start within span, length).
        let mut todo: Vec<(usize, usize)> = (0..len)
            .step_by(CHUNK)
            .map(|s| (s, CHUNK.min(len - s)))
            .rev()
            .collect();
        let mut in_flight = 0u32;
        let io_err = |e: std::io::Error| RunnerError::io(path, e);
        while !todo.is_empty() || in_flight > 0 {
            while in_flight < DEPTH {
                let Some((start, n)) = todo.pop() else { break };
                // SAFETY: start + n <= len <= buf capacity; buf outlives the
                // request because we wait for every completion below.
                let entry = opcode::Read::new(fd, unsafe { base.add(start) }, n as u32)
                    .offset(span.offset + start as u64)
                    .build()
                    .user_data(((start as u64) << 24) | n as u64);
                // SAFETY: the entry's buffer stays valid until completion.
                unsafe { ring.submission().push(&entry) }
                    .map_err(|_| RunnerError::Prefetch("io_uring submission queue full".into()))?;
                in_flight += 1;
            }
            ring.submit_and_wait(1).map_err(io_err)?;
            let done: Vec<(u64, i32)> = ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (data, res) in done {
                in_flight -= 1;
                let start = (data >> 24) as usize;
                let n = (data & 0xff_ffff) as usize;
                if res < 0 {
                    return Err(io_err(std::io::Error::from_raw_os_error(-res)));
                }
                let got = res as usize;
                if got == 0 {
                    return Err(io_err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("file ended at byte {}", span.offset + start as u64),
                    )));
                }
                if got < n {
                    todo.push((start + got, n - got));
                }
            }
        }
        drop(ring);
        buf.set_len(len);
        Ok(())
    }
}
