//! x86-64 helpers shared by the kernels: loads from fixed-size arrays (each
//! load is in bounds by its argument's type), horizontal sums and the f16
//! block-scale conversion.

use std::arch::x86_64::*;

/// 16 bytes as a vector.
#[inline]
#[target_feature(enable = "sse2")]
pub(super) fn ld128<T>(a: &[T; 16]) -> __m128i
where
    T: Byte,
{
    // SAFETY: `a` is 16 readable bytes (T is one byte wide); unaligned load.
    unsafe { _mm_loadu_si128(a.as_ptr().cast()) }
}

/// 32 bytes as a vector.
#[inline]
#[target_feature(enable = "avx")]
pub(super) fn ld256<T>(a: &[T; 32]) -> __m256i
where
    T: Byte,
{
    // SAFETY: `a` is 32 readable bytes (T is one byte wide); unaligned load.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

/// 64 bytes as a vector.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn ld512<T>(a: &[T; 64]) -> __m512i
where
    T: Byte,
{
    // SAFETY: `a` is 64 readable bytes (T is one byte wide); unaligned load.
    unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
}

/// 16 int16 as a vector.
#[inline]
#[target_feature(enable = "avx")]
pub(super) fn ld256_i16(a: &[i16; 16]) -> __m256i {
    // SAFETY: `a` is 32 readable bytes; unaligned load.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

/// 32 int16 as a vector.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn ld512_i16(a: &[i16; 32]) -> __m512i {
    // SAFETY: `a` is 64 readable bytes; unaligned load.
    unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
}

/// 8 floats as a vector.
#[inline]
#[target_feature(enable = "avx")]
pub(super) fn ld256_ps(a: &[f32; 8]) -> __m256 {
    // SAFETY: `a` is 8 readable f32; unaligned load.
    unsafe { _mm256_loadu_ps(a.as_ptr()) }
}

/// 16 floats as a vector.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn ld512_ps(a: &[f32; 16]) -> __m512 {
    // SAFETY: `a` is 16 readable f32; unaligned load.
    unsafe { _mm512_loadu_ps(a.as_ptr()) }
}

/// One-byte element types that may be loaded as raw vector bytes.
pub(super) trait Byte: Copy {}
impl Byte for u8 {}
impl Byte for i8 {}

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx")]
pub(super) fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// An f16 value given by its bits, as f32 (exact).
#[inline]
#[target_feature(enable = "f16c")]
pub(super) fn f16_to_f32(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// How far ahead of the bytes being read the kernels prefetch their weight
/// stream. The hardware prefetchers alone left the kernels waiting on memory
/// about a third of the time; a software prefetch 1 KiB ahead halved that
/// (SmolLM2-135M NF4 with the whole model resident, one thread).
const PREFETCH_AHEAD: usize = 1024;

/// Asks for the cache line `PREFETCH_AHEAD` bytes after the start of `s`.
#[inline]
#[target_feature(enable = "sse")]
pub(super) fn prefetch(s: &[u8]) {
    // A prefetch never faults: past the end of `s` it is a hint about memory
    // that may not exist (`wrapping_add` claims nothing about the address).
    _mm_prefetch::<_MM_HINT_T0>(s.as_ptr().wrapping_add(PREFETCH_AHEAD).cast());
}
