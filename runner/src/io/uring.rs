//! io_uring reads: several 4 MiB O_DIRECT requests in flight per file.
//!
//! The kernel writes into the caller's buffer until a request's completion
//! arrives, and the ring is shared by every read. So a read never returns with
//! a request of its own in flight: after the first error it stops submitting
//! and reaps every outstanding completion, then reports that first error.
//! Should the ring itself fail while requests are outstanding (they can then
//! be neither reaped nor trusted to have ended), the buffer is abandoned
//! (leaked, so whatever the kernel still writes lands in memory nobody uses)
//! and the ring is dropped; the next read sets up a fresh one.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;

use io_uring::{opcode, types, IoUring};

use super::{open, AlignedBuf, Span, CHUNK};
use crate::error::{Result, RunnerError};

/// Requests kept in flight.
const DEPTH: u32 = 16;

/// Consecutive transient failures (EINTR, EAGAIN, EBUSY) of a wait before the
/// ring is given up on.
const MAX_RETRIES: u32 = 1000;

/// The ring and the number of requests submitted on it and not yet reaped.
struct Ring {
    /// `None` after a failure left it unusable (set up again on next use).
    ring: Option<IoUring>,
    /// Requests submitted and not yet reaped; 0 whenever no read is running.
    in_flight: u32,
}

/// The io_uring backend.
pub struct UringReader {
    ring: Mutex<Ring>,
    direct: bool,
}

/// How a read failed.
enum Failure {
    /// Every request it submitted has been reaped.
    Reaped(RunnerError),
    /// The ring cannot be waited on any more: requests may still be running.
    Lost(RunnerError),
}

impl UringReader {
    /// Sets up a ring; fails where the kernel forbids io_uring.
    pub fn new(direct: bool) -> std::io::Result<UringReader> {
        let ring = IoUring::new(DEPTH)?;
        Ok(UringReader {
            ring: Mutex::new(Ring {
                ring: Some(ring),
                in_flight: 0,
            }),
            direct,
        })
    }

    /// Whether O_DIRECT is used.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Requests submitted and not yet reaped (0 between reads).
    #[cfg(test)]
    fn in_flight(&self) -> u32 {
        self.ring.lock().map_or(u32::MAX, |r| r.in_flight)
    }

    /// Reads `span` of `path` into `buf`, with up to 16 requests in flight.
    /// Every request is reaped before this returns, on error paths too; if
    /// that cannot be done, `buf` is abandoned (capacity 0) and the error
    /// says so.
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
        let fd = types::Fd(f.as_raw_fd());
        let mut state = self
            .ring
            .lock()
            .map_err(|_| RunnerError::Prefetch("io_uring lock poisoned".into()))?;
        if state.ring.is_none() {
            let ring = IoUring::new(DEPTH).map_err(|e| {
                RunnerError::Prefetch(format!("cannot set up a new io_uring ring: {e}"))
            })?;
            *state = Ring {
                ring: Some(ring),
                in_flight: 0,
            };
        }
        match read_all(&mut state, fd, path, span.offset, len, buf) {
            Ok(()) => {
                buf.set_len(len);
                Ok(())
            }
            Err(Failure::Reaped(e)) => Err(e),
            Err(Failure::Lost(e)) => {
                // Requests may still be running with no way left to await
                // them: keep the kernel's writes away from live memory.
                buf.abandon();
                state.ring = None;
                state.in_flight = 0;
                Err(e)
            }
        }
        // `f` is closed only here, after every request on it was reaped or
        // the ring dropped (the kernel holds its own reference meanwhile).
    }
}

/// Reads `len` bytes at `offset` of `fd` into `buf` on `state`'s ring. On
/// success and on [`Failure::Reaped`] every submitted request has been reaped
/// (`in_flight` is back to 0); on [`Failure::Lost`] some may still be running.
fn read_all(
    state: &mut Ring,
    fd: types::Fd,
    path: &Path,
    offset: u64,
    len: usize,
    buf: &mut AlignedBuf,
) -> std::result::Result<(), Failure> {
    let io_err = |e: std::io::Error| RunnerError::io(path, e);
    let Ring { ring, in_flight } = state;
    let Some(ring) = ring.as_mut() else {
        return Err(Failure::Reaped(RunnerError::Prefetch(
            "io_uring ring missing".into(),
        )));
    };
    let base = buf.as_mut_full()[..len].as_mut_ptr();
    // Pending pieces: (start within the span, length), next piece last.
    let mut todo: Vec<(usize, usize)> = (0..len)
        .step_by(CHUNK)
        .map(|s| (s, CHUNK.min(len - s)))
        .rev()
        .collect();
    // The piece each submitted request reads, by slot (the user_data).
    let mut slots: Vec<Option<(usize, usize)>> = vec![None; DEPTH as usize];
    let mut first_err: Option<RunnerError> = None;
    #[cfg(test)]
    let mut reaped = 0u32;
    let mut retries = 0u32;
    loop {
        while first_err.is_none() && *in_flight < DEPTH {
            // A slot is free: as many are taken as requests are in flight.
            let Some(slot) = slots.iter().position(Option::is_none) else {
                break;
            };
            let Some((start, n)) = todo.pop() else { break };
            // start < len fits in u64 and offset + len was checked by the caller.
            let at = offset + start as u64;
            // SAFETY: start + n <= len <= buf's capacity, so the pointer stays
            // inside the allocation. The buffer outlives the request: this
            // function returns only after reaping every request it submitted,
            // except on Failure::Lost, where the caller abandons (leaks) it.
            let dst = unsafe { base.add(start) };
            // n <= CHUNK = 4 MiB fits in u32.
            let entry = opcode::Read::new(fd, dst, n as u32)
                .offset(at)
                .build()
                .user_data(slot as u64);
            // SAFETY: the entry's buffer (`dst`, n bytes) and file (`fd`, kept
            // open by the caller until this returns) stay valid until its
            // completion is reaped, or forever if the buffer is abandoned.
            if unsafe { ring.submission().push(&entry) }.is_err() {
                first_err = Some(RunnerError::Prefetch(
                    "io_uring submission queue full".into(),
                ));
                break;
            }
            slots[slot] = Some((start, n));
            *in_flight += 1;
        }
        if *in_flight == 0 {
            // Nothing outstanding: done, or failed with everything reaped.
            return match first_err {
                None if todo.is_empty() => Ok(()),
                None => Err(Failure::Reaped(RunnerError::Prefetch(
                    "io_uring read stalled with pieces left".into(),
                ))),
                Some(e) => Err(Failure::Reaped(e)),
            };
        }
        if let Err(e) = wait(ring) {
            let transient = matches!(
                e.raw_os_error(),
                Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
            );
            retries += 1;
            if !transient || retries > MAX_RETRIES {
                let e = io_err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "io_uring wait failed with {} read(s) in flight ({e}); \
                         their buffer is abandoned",
                        *in_flight
                    ),
                ));
                return Err(Failure::Lost(first_err.unwrap_or(e)));
            }
            // Reap what did complete (EBUSY asks for exactly that), then retry.
        } else {
            retries = 0;
        }
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (data, res) in done {
            let piece = usize::try_from(data)
                .ok()
                .and_then(|s| slots.get_mut(s))
                .and_then(Option::take);
            let (Some((start, n)), Some(left)) = (piece, in_flight.checked_sub(1)) else {
                // A completion for no request of this read: the ring's
                // accounting is broken, so nothing outstanding can be trusted.
                return Err(Failure::Lost(RunnerError::Prefetch(format!(
                    "io_uring returned a completion (user data {data}) for no request \
                     of the read of {}",
                    path.display()
                ))));
            };
            *in_flight = left;
            #[cfg(test)]
            let res = {
                let r = super::fault::completion(reaped, res);
                reaped += 1;
                r
            };
            if first_err.is_some() {
                continue;
            }
            let at = offset + start as u64;
            if res < 0 {
                first_err = Some(io_err(std::io::Error::new(
                    std::io::Error::from_raw_os_error(-res).kind(),
                    format!(
                        "reading {n} bytes at byte {at}: {}",
                        std::io::Error::from_raw_os_error(-res)
                    ),
                )));
                continue;
            }
            let got = (res as usize).min(n);
            if got == 0 {
                first_err = Some(io_err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("file ended at byte {at} (truncated while in use?)"),
                )));
            } else if got < n {
                todo.push((start + got, n - got));
            }
        }
    }
}

/// Submits the queued requests and waits for at least one completion.
fn wait(ring: &mut IoUring) -> std::io::Result<usize> {
    #[cfg(test)]
    if let Some(errno) = super::fault::take_wait_failure() {
        // Submit for real, so the failure leaves reads in flight.
        ring.submit()?;
        return Err(std::io::Error::from_raw_os_error(errno));
    }
    ring.submit_and_wait(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{fault, pread};
    use std::io::Write;
    use std::path::PathBuf;

    /// Eight chunks, so that several requests are in flight at once.
    const FILE_LEN: usize = 8 * CHUNK;

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed)
            .collect()
    }

    fn file(dir: &Path, name: &str, seed: u8) -> (PathBuf, Vec<u8>) {
        let path = dir.join(name);
        let bytes = pattern(seed, FILE_LEN);
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&bytes))
            .unwrap();
        (path, bytes)
    }

    fn whole() -> Span {
        Span {
            offset: 0,
            len: FILE_LEN as u64,
        }
    }

    /// A reader (O_DIRECT where the file system allows it), or `None` where
    /// the kernel forbids io_uring.
    fn reader(probe: &Path) -> Option<UringReader> {
        match UringReader::new(pread::supports_direct(probe)) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("skipped: io_uring unavailable ({e})");
                None
            }
        }
    }

    /// After a failed read: nothing in flight, and the next read (of another
    /// file, on the same ring) returns exactly that file's bytes.
    fn check_recovers(r: &UringReader, dir: &Path) {
        assert_eq!(r.in_flight(), 0, "a request was left in flight");
        let (other, want) = file(dir, "other.bin", 0x5a);
        let mut buf = AlignedBuf::new(FILE_LEN).unwrap();
        r.read(&other, whole(), &mut buf).unwrap();
        assert!(
            buf.as_slice() == want.as_slice(),
            "wrong bytes after a failed read"
        );
        assert_eq!(r.in_flight(), 0);
    }

    fn io_error(e: RunnerError) -> (PathBuf, std::io::Error) {
        match e {
            RunnerError::Io { path, source } => (path, source),
            e => panic!("expected an I/O error naming the file, got {e}"),
        }
    }

    #[test]
    fn reads_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, want) = file(dir.path(), "a.bin", 1);
        let Some(r) = reader(&path) else { return };
        let mut buf = AlignedBuf::new(FILE_LEN).unwrap();
        r.read(&path, whole(), &mut buf).unwrap();
        assert!(buf.as_slice() == want.as_slice());
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn file_truncated_while_open_drains_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = file(dir.path(), "a.bin", 2);
        let Some(r) = reader(&path) else { return };
        fault::on_next_open(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .and_then(|f| f.set_len(CHUNK as u64))
                .unwrap()
        });
        let mut buf = AlignedBuf::new(FILE_LEN).unwrap();
        let (p, e) = io_error(r.read(&path, whole(), &mut buf).unwrap_err());
        assert_eq!(p, path);
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
        assert!(e.to_string().contains("file ended at byte"), "{e}");
        assert_eq!(
            buf.capacity(),
            FILE_LEN,
            "the buffer was abandoned needlessly"
        );
        check_recovers(&r, dir.path());
    }

    #[test]
    fn error_completion_drains_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = file(dir.path(), "a.bin", 3);
        let Some(r) = reader(&path) else { return };
        // The first completion fails while (up to) seven others are in flight.
        fault::fail_completion(0, libc::EIO);
        let mut buf = AlignedBuf::new(FILE_LEN).unwrap();
        let (p, e) = io_error(r.read(&path, whole(), &mut buf).unwrap_err());
        assert_eq!(p, path);
        assert_eq!(e.raw_os_error(), None);
        assert!(e.to_string().contains("Input/output error"), "{e}");
        assert_eq!(
            buf.capacity(),
            FILE_LEN,
            "the buffer was abandoned needlessly"
        );
        check_recovers(&r, dir.path());
    }

    #[test]
    fn broken_ring_abandons_the_buffer_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = file(dir.path(), "a.bin", 4);
        let Some(r) = reader(&path) else { return };
        fault::fail_wait(libc::EFAULT);
        let mut buf = AlignedBuf::new(FILE_LEN).unwrap();
        let (p, e) = io_error(r.read(&path, whole(), &mut buf).unwrap_err());
        assert_eq!(p, path);
        assert!(e.to_string().contains("abandoned"), "{e}");
        // The kernel may still write into the old allocation: it is leaked.
        assert_eq!(buf.capacity(), 0);
        check_recovers(&r, dir.path());
    }

    #[test]
    fn transient_wait_failure_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (path, want) = file(dir.path(), "a.bin", 5);
        let Some(r) = reader(&path) else { return };
        fault::fail_wait(libc::EINTR);
        let mut buf = AlignedBuf::new(FILE_LEN).unwrap();
        r.read(&path, whole(), &mut buf).unwrap();
        assert!(buf.as_slice() == want.as_slice());
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn buffer_too_small_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = file(dir.path(), "a.bin", 6);
        let Some(r) = reader(&path) else { return };
        let mut buf = AlignedBuf::new(4096).unwrap();
        let e = r.read(&path, whole(), &mut buf).unwrap_err();
        assert!(e.to_string().contains("a.bin"), "{e}");
        assert_eq!(r.in_flight(), 0);
    }
}
