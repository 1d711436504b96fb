//! Reading container files: io_uring (O_DIRECT, queued), pread (O_DIRECT when
//! the file system allows it, else buffered) and mmap, with run-time detection
//! and fallback (`--io auto|uring|pread|mmap`).

pub mod aligned;
mod mmap;
mod pread;
mod uring;

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

pub use aligned::{AlignedBuf, IO_ALIGN};

use crate::error::{Result, RunnerError};

/// Bytes per read request.
pub const CHUNK: usize = 4 << 20;

/// Which I/O path to use, as chosen on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IoChoice {
    /// io_uring if the kernel allows it, else pread.
    Auto,
    /// io_uring with O_DIRECT.
    Uring,
    /// pread, O_DIRECT where the file system supports it.
    Pread,
    /// Memory-mapped files. The container's files must not be modified in
    /// place while the runner runs: a file truncated under a mapping kills
    /// the process (SIGBUS); a size change between reads is reported.
    Mmap,
}

/// Bytes of one read unit: an owned aligned buffer or a mapping.
pub enum UnitBytes {
    /// Read into a buffer of the pool.
    Owned(AlignedBuf),
    /// Mapped straight from the file.
    Mapped(memmap2::Mmap),
}

impl UnitBytes {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            UnitBytes::Owned(b) => b.as_slice(),
            UnitBytes::Mapped(m) => m,
        }
    }
}

/// A read of `len` bytes at `offset` of a file (both multiples of 4096, or
/// `len` reaching the file's end, which is itself 4096-aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Byte offset.
    pub offset: u64,
    /// Byte count.
    pub len: u64,
}

/// A chosen I/O backend.
pub enum Backend {
    /// io_uring reader.
    Uring(Box<uring::UringReader>),
    /// pread reader.
    Pread(pread::PreadReader),
    /// mmap reader.
    Mmap(mmap::MmapReader),
    /// A remote container: files the cache keeps are read from it with the
    /// local backend, the others by ranged GETs into the buffers.
    Remote {
        /// The container.
        remote: Arc<crate::remote::Remote>,
        /// The backend for cached files (never mmap: evicted files go away).
        local: Box<Backend>,
    },
}

impl Backend {
    /// Picks the backend for `choice`, falling back (and saying why at debug
    /// level) when the kernel refuses io_uring. `probe` is a container file used
    /// to test O_DIRECT support.
    pub fn select(choice: IoChoice, probe: &Path) -> Result<Backend> {
        let direct = pread::supports_direct(probe);
        if !direct {
            log::debug!(
                "io: O_DIRECT is not supported for {} (file system?); using buffered reads",
                probe.display()
            );
        }
        match choice {
            IoChoice::Mmap => Ok(Backend::Mmap(mmap::MmapReader::new())),
            IoChoice::Pread => Ok(Backend::Pread(pread::PreadReader::new(direct))),
            IoChoice::Uring => uring::UringReader::new(direct)
                .map(|r| Backend::Uring(Box::new(r)))
                .map_err(|e| {
                    RunnerError::Unsupported(format!(
                        "--io uring: the kernel refused io_uring: {e}"
                    ))
                }),
            IoChoice::Auto => match uring::UringReader::new(direct) {
                Ok(r) => {
                    log::debug!("io: auto chose io_uring (O_DIRECT: {direct})");
                    Ok(Backend::Uring(Box::new(r)))
                }
                Err(e) => {
                    log::debug!(
                        "io: io_uring unavailable ({e}); auto chose pread (O_DIRECT: {direct})"
                    );
                    Ok(Backend::Pread(pread::PreadReader::new(direct)))
                }
            },
        }
    }

    /// The backend for a remote container (`choice` applies to its cached
    /// files; mmap is read as pread there, since cached files may be evicted).
    pub fn remote(choice: IoChoice, remote: Arc<crate::remote::Remote>) -> Result<Backend> {
        let choice = match choice {
            IoChoice::Mmap => IoChoice::Pread,
            c => c,
        };
        let probe = remote.dir().join(strata_format::manifest::MANIFEST_NAME);
        let local = Box::new(Backend::select(choice, &probe)?);
        Ok(Backend::Remote { remote, local })
    }

    /// The backend's name as reported by `bench` (`uring`, `pread`, `mmap`,
    /// with `+direct` when O_DIRECT is in use).
    pub fn name(&self) -> String {
        match self {
            Backend::Uring(r) => format!("uring{}", if r.direct() { "+direct" } else { "" }),
            Backend::Pread(r) => format!("pread{}", if r.direct() { "+direct" } else { "" }),
            Backend::Mmap(_) => "mmap".into(),
            Backend::Remote { remote, local } => {
                if remote.streams_any() {
                    format!("remote+{}", local.name())
                } else {
                    format!("cache+{}", local.name())
                }
            }
        }
    }

    /// Whether this backend maps files instead of filling buffers.
    pub fn maps(&self) -> bool {
        matches!(self, Backend::Mmap(_))
    }

    /// Reads `span` of `path`. Buffered backends fill `buf` (which must hold
    /// `span.len` bytes); mmap returns a mapping and leaves `buf` untouched.
    pub fn read(
        &self,
        path: &Path,
        span: Span,
        buf: Option<AlignedBuf>,
    ) -> Result<(UnitBytes, Option<AlignedBuf>)> {
        match self {
            Backend::Mmap(r) => Ok((UnitBytes::Mapped(r.read(path, span)?), buf)),
            Backend::Pread(r) => {
                let mut buf = take_buf(buf, span, path)?;
                r.read(path, span, &mut buf)?;
                Ok((UnitBytes::Owned(buf), None))
            }
            Backend::Uring(r) => {
                let mut buf = take_buf(buf, span, path)?;
                r.read(path, span, &mut buf)?;
                Ok((UnitBytes::Owned(buf), None))
            }
            Backend::Remote { remote, local } => {
                // A cached file can be evicted by another reader between its
                // lookup and its read: then it is fetched again, once.
                let mut buf = buf;
                for _ in 0..2 {
                    match remote.local(path)? {
                        Some(p) => {
                            let keep = buf.as_ref().map(AlignedBuf::capacity);
                            match local.read(&p, span, buf.take()) {
                                Err(RunnerError::Io { source, .. })
                                    if source.kind() == std::io::ErrorKind::NotFound =>
                                {
                                    buf = keep.and_then(AlignedBuf::new);
                                }
                                r => return r,
                            }
                        }
                        None => {
                            let mut buf = take_buf(buf, span, path)?;
                            let n = span.len as usize;
                            remote.read_direct(path, span.offset, &mut buf.as_mut_full()[..n])?;
                            buf.set_len(n);
                            return Ok((UnitBytes::Owned(buf), None));
                        }
                    }
                }
                Err(RunnerError::Remote {
                    object: remote.object_url(path),
                    reason: "evicted from the cache while being read twice: is --cache-max \
                             smaller than the files being prefetched?"
                        .into(),
                })
            }
        }
    }
}

fn take_buf(buf: Option<AlignedBuf>, span: Span, path: &Path) -> Result<AlignedBuf> {
    let need = usize::try_from(span.len)
        .map_err(|_| RunnerError::Invalid(format!("{}: read too large", path.display())))?;
    match buf {
        Some(b) if b.capacity() >= need => Ok(b),
        _ => AlignedBuf::new(need).ok_or_else(|| RunnerError::Memory {
            budget: crate::units::human(span.len),
            reason: format!("cannot allocate a read buffer for {}", path.display()),
        }),
    }
}

/// Reads `len` bytes at `offset` with a plain buffered pread (small reads such
/// as embedding rows).
pub fn read_small(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let f = File::open(path).map_err(|e| RunnerError::io(path, e))?;
    let mut v = vec![0u8; len];
    f.read_exact_at(&mut v, offset)
        .map_err(|e| RunnerError::io(path, e))?;
    Ok(v)
}

/// Opens a file for reading, with O_DIRECT when `direct`.
fn open(path: &Path, direct: bool) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    let f = o.open(path)?;
    #[cfg(test)]
    fault::after_open(path);
    Ok(f)
}

/// Test-only fault injection for the readers, per thread (each test runs on
/// its own thread, so tests cannot disturb one another).
#[cfg(test)]
pub(crate) mod fault {
    use std::cell::{Cell, RefCell};
    use std::path::Path;

    /// Something to do to a file between its opening and its reads.
    type Hook = Box<dyn FnOnce(&Path)>;

    thread_local! {
        static AFTER_OPEN: RefCell<Option<Hook>> = const { RefCell::new(None) };
        static FAIL_COMPLETION: Cell<Option<(u32, i32)>> = const { Cell::new(None) };
        static FAIL_WAIT: Cell<Option<i32>> = const { Cell::new(None) };
    }

    /// Runs `hook` on the path of the next file a reader opens (e.g. to
    /// truncate it while it is open).
    pub fn on_next_open(hook: impl FnOnce(&Path) + 'static) {
        AFTER_OPEN.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
    }

    /// Called by `open`.
    pub(super) fn after_open(path: &Path) {
        if let Some(hook) = AFTER_OPEN.with(|h| h.borrow_mut().take()) {
            hook(path);
        }
    }

    /// Makes the io_uring completion number `index` (from 0) of the next
    /// read report `-errno` instead of its real result.
    pub fn fail_completion(index: u32, errno: i32) {
        FAIL_COMPLETION.with(|c| c.set(Some((index, errno))));
    }

    /// The result to report for completion `index` of a read whose real
    /// result is `res`; disarms itself once used.
    pub(super) fn completion(index: u32, res: i32) -> i32 {
        match FAIL_COMPLETION.with(Cell::get) {
            Some((i, errno)) if i == index => {
                FAIL_COMPLETION.with(|c| c.set(None));
                -errno
            }
            _ => res,
        }
    }

    /// Makes the next io_uring wait submit its requests and then fail with
    /// `errno`, as if the ring itself had broken with reads in flight.
    pub fn fail_wait(errno: i32) {
        FAIL_WAIT.with(|c| c.set(Some(errno)));
    }

    /// The armed wait failure, disarming it.
    pub(super) fn take_wait_failure() -> Option<i32> {
        FAIL_WAIT.with(Cell::take)
    }
}
