//! A buffer aligned to 4096 bytes, as `O_DIRECT` reads require. On Linux,
//! one of 2 MiB or more is a mapping of its own that starts on a 2 MiB
//! boundary and asks for transparent huge pages (`MADV_HUGEPAGE`): the
//! kernels read weights from it as one long stream, and with 4 KiB pages
//! that stream was 15–20% slower from memory (a TLB miss and a stop of the
//! hardware prefetchers every 4 KiB; `own_speed` in kernels/tests.rs, one
//! 1536×8960 product read from memory: nf4 0.425 → 0.362 ms, int8 0.768 →
//! 0.618 ms). Where the kernel gives no huge pages, it is an ordinary
//! mapping.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// Alignment of every I/O buffer (the container's page size).
pub const IO_ALIGN: usize = 4096;

/// Size (and alignment) of a transparent huge page on x86-64 and most
/// aarch64 kernels; buffers at least this large are mapped on their own.
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

/// A zero-initialised, 4096-aligned byte buffer with a fixed capacity and a
/// current length. A buffer of capacity 0 owns no allocation (see
/// [`AlignedBuf::abandon`]).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
    /// The memory is a mapping of its own (`munmap` frees it), not the heap.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    mapped: bool,
}

// SAFETY: AlignedBuf owns its allocation exclusively (no other handle to it
// exists), like Vec<u8>, so moving it to another thread is sound.
unsafe impl Send for AlignedBuf {}
// SAFETY: `&AlignedBuf` only hands out `&[u8]`; every write needs `&mut`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `cap` bytes rounded up to a multiple of 4096 (at least 4096).
    /// Returns `None` when the allocation fails or the size overflows.
    pub fn new(cap: usize) -> Option<AlignedBuf> {
        let cap = cap.max(1).checked_next_multiple_of(IO_ALIGN)?;
        #[cfg(target_os = "linux")]
        if cap >= HUGE_PAGE {
            return AlignedBuf::mapped(cap);
        }
        let layout = Layout::from_size_align(cap, IO_ALIGN).ok()?;
        // SAFETY: `cap` is at least 4096 (rounded up from at least 1), so the
        // layout has the non-zero size `alloc_zeroed` requires; a null result
        // (allocation failure) becomes `None` below and is never dereferenced.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(AlignedBuf {
            ptr,
            cap,
            len: 0,
            mapped: false,
        })
    }

    /// `cap` bytes (a multiple of 4096) in an anonymous mapping of their own
    /// starting on a [`HUGE_PAGE`] boundary, asked to be backed by huge
    /// pages. Anonymous memory reads as zeros until written.
    #[cfg(target_os = "linux")]
    fn mapped(cap: usize) -> Option<AlignedBuf> {
        // Room to start on a huge-page boundary; the rest is given back.
        let total = cap.checked_add(HUGE_PAGE)?;
        // SAFETY: a new private anonymous mapping at an address the kernel
        // picks: no existing memory is touched; failure is `MAP_FAILED`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        let addr = p as usize;
        // `addr` is page-aligned, so `head` and `tail` are whole pages, and
        // `head + cap + tail = total` (`head < HUGE_PAGE`).
        let start = addr.next_multiple_of(HUGE_PAGE);
        let head = start - addr;
        let tail = total - head - cap;
        // SAFETY: both ranges are whole pages of the mapping just made, outside
        // `start .. start + cap`, and nothing refers to them. `madvise` is only
        // a hint about the kept range (without huge pages it stays ordinary
        // memory), so its result is not needed.
        unsafe {
            if head > 0 {
                libc::munmap(p, head);
            }
            if tail > 0 {
                libc::munmap((start + cap) as *mut libc::c_void, tail);
            }
            libc::madvise(start as *mut libc::c_void, cap, libc::MADV_HUGEPAGE);
        }
        Some(AlignedBuf {
            ptr: NonNull::new(start as *mut u8)?,
            cap,
            len: 0,
            mapped: true,
        })
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The filled part.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len <= cap` (set_len clamps) and `ptr` is valid for `cap`
        // initialised bytes (zeroed by `new`), or `cap == len == 0` with a
        // dangling, well-aligned `ptr` after `abandon`, which an empty slice
        // allows. `&self` keeps the memory from being written meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The whole capacity, for filling.
    pub fn as_mut_full(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is valid for `cap` initialised (zeroed by `new`) bytes,
        // or `cap == 0` with a dangling, well-aligned `ptr` after `abandon`;
        // `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// Sets the filled length (clamped to the capacity).
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.cap);
    }

    /// Gives up the allocation without freeing it, leaving an empty buffer of
    /// capacity 0. For a buffer the kernel may still write into (a read whose
    /// completion could not be awaited): leaking it is the only way to keep
    /// those writes from landing in memory that is freed or reused.
    pub fn abandon(&mut self) {
        self.ptr = NonNull::dangling();
        self.cap = 0;
        self.len = 0;
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.cap == 0 {
            // Abandoned: nothing is owned (see `abandon`).
            return;
        }
        #[cfg(target_os = "linux")]
        if self.mapped {
            // SAFETY: `cap != 0` and `mapped`, so `ptr .. ptr + cap` is the
            // mapping `mapped` kept, unmapped only here, once; no slice of it
            // outlives `self`.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap) };
            return;
        }
        // SAFETY: `cap != 0` and not `mapped`, so `ptr` came from
        // `alloc_zeroed` in `new` with the layout (`cap`, 4096) that
        // `from_size_align` accepted there, and it is freed only here, once.
        unsafe {
            dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(self.cap, IO_ALIGN),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_sized() {
        let mut b = AlignedBuf::new(5000).unwrap();
        assert_eq!(b.capacity(), 8192);
        assert_eq!(b.as_mut_full().as_ptr() as usize % IO_ALIGN, 0);
        assert!(b.as_slice().is_empty());
        b.set_len(100_000);
        assert_eq!(b.as_slice().len(), 8192);
        assert!(AlignedBuf::new(usize::MAX).is_none());
    }

    #[test]
    fn large_buffers_are_zeroed_and_start_on_a_huge_page() {
        let mut b = AlignedBuf::new(5 << 20).unwrap();
        assert_eq!(b.capacity(), 5 << 20);
        #[cfg(target_os = "linux")]
        assert_eq!(b.as_mut_full().as_ptr() as usize % HUGE_PAGE, 0);
        assert!(b.as_mut_full().iter().all(|&x| x == 0));
        b.as_mut_full().fill(7);
        b.set_len(3 << 20);
        assert!(b.as_slice().iter().all(|&x| x == 7));
        let mut a = AlignedBuf::new(4 << 20).unwrap();
        a.abandon();
        assert!(a.as_slice().is_empty());
    }

    #[test]
    fn abandoned_is_empty() {
        let mut b = AlignedBuf::new(4096).unwrap();
        b.set_len(10);
        b.abandon();
        assert_eq!(b.capacity(), 0);
        assert!(b.as_slice().is_empty());
        assert!(b.as_mut_full().is_empty());
        b.set_len(10);
        assert!(b.as_slice().is_empty());
    }
}
