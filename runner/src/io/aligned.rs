//! A heap buffer aligned to 4096 bytes, as `O_DIRECT` reads require.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// Alignment of every I/O buffer (the container's page size).
pub const IO_ALIGN: usize = 4096;

/// A zero-initialised, 4096-aligned byte buffer with a fixed capacity and a
/// current length. A buffer of capacity 0 owns no allocation (see
/// [`AlignedBuf::abandon`]).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
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
        let layout = Layout::from_size_align(cap, IO_ALIGN).ok()?;
        // SAFETY: `cap` is at least 4096 (rounded up from at least 1), so the
        // layout has the non-zero size `alloc_zeroed` requires; a null result
        // (allocation failure) becomes `None` below and is never dereferenced.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(AlignedBuf { ptr, cap, len: 0 })
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
        // SAFETY: `cap != 0`, so `ptr` came from `alloc_zeroed` in `new` with
        // the layout (`cap`, 4096) that `from_size_align` accepted there, and
        // it is freed only here, once.
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
