//! A heap buffer aligned to 4096 bytes, as `O_DIRECT` reads require.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// Alignment of every I/O buffer (the container's page size).
pub const IO_ALIGN: usize = 4096;

/// A zero-initialised, 4096-aligned byte buffer with a fixed capacity and a
/// current length.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `cap` bytes rounded up to a multiple of 4096 (at least 4096).
    /// Returns `None` when the allocation fails or the size overflows.
    pub fn new(cap: usize) -> Option<AlignedBuf> {
        let cap = cap.max(1).checked_next_multiple_of(IO_ALIGN)?;
        let layout = Layout::from_size_align(cap, IO_ALIGN).ok()?;
        // SAFETY: layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(AlignedBuf { ptr, cap, len: 0 })
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The filled part.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The whole capacity, for filling.
    pub fn as_mut_full(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for cap initialised (zeroed) bytes, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// Sets the filled length (clamped to the capacity).
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.cap);
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout.
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
}
