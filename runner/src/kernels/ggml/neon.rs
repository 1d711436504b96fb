//! The [`Simd`] vocabulary on aarch64: 32 bytes are two 128-bit NEON
//! registers, and the byte dot products are `sdot` (the Armv8.2 dot product
//! extension, `DOT`) or, on cores without it (Cortex-A53/A72: Raspberry Pi
//! 3 and 4), widening multiplies and pairwise adds (`smull`, `addp`,
//! `sadalp`), which leave the same exact sums in the same lanes. Both take
//! signed bytes, so weights are never biased here ([`Simd::WIDE_U8`] and
//! [`Simd::DOT_U8`] are false, and the unsigned weights the kernels pass
//! are at most 63).

use std::arch::aarch64::*;
use std::arch::asm;

use super::simd::{self, Simd};
use crate::kernels::Isa;

/// How far ahead of the weight stream [`Simd::prefetch`] asks for memory
/// (as the x86-64 kernels).
const PREFETCH_AHEAD: usize = 1024;

/// Proof that this CPU runs the vocabulary: NEON, and with `DOT` also the
/// dot product extension. Only [`Neon::new`] makes one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Neon<const DOT: bool>(());

/// NEON alone.
pub(super) type NeonPlain = Neon<false>;
/// NEON with `sdot`.
pub(super) type NeonDot = Neon<true>;

impl<const DOT: bool> Neon<DOT> {
    /// The vocabulary, when this CPU runs it.
    pub(super) fn new() -> Option<Self> {
        let ok = Isa::Neon.is_available()
            && (!DOT || std::arch::is_aarch64_feature_detected!("dotprod"));
        ok.then_some(Neon(()))
    }
}

simd::entry_points!(NeonPlain, "neon", rows_plain, own_rows_plain);
simd::entry_points!(NeonDot, "neon,dotprod", rows_dot, own_rows_dot);

/// `acc` plus, in lane `j`, the products of the signed bytes `4j .. 4j + 4`
/// of `a` and `b`, with `sdot` (no pair of products may reach ±2¹⁵).
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn sdot_ext(mut acc: int32x4_t, a: uint8x16_t, b: uint8x16_t) -> int32x4_t {
    // SAFETY: the function's target features include the dot product
    // extension; the instruction touches only these registers.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// [`sdot_ext`] with NEON alone: the 16 products widened to int16, pairs
/// added (`|a·b| ≤ 128 · 127`, so a pair fits), then pairs of pairs added
/// into the lanes of `acc`.
#[inline(always)]
fn sdot_plain(acc: int32x4_t, a: uint8x16_t, b: uint8x16_t) -> int32x4_t {
    // SAFETY: NEON is part of the aarch64 target.
    unsafe {
        let (a, b) = (vreinterpretq_s8_u8(a), vreinterpretq_s8_u8(b));
        let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let hi = vmull_high_s8(a, b);
        vpadalq_s16(acc, vpaddq_s16(lo, hi))
    }
}

impl<const DOT: bool> Neon<DOT> {
    /// `acc` plus, in lane `j`, the products of the signed bytes `4j .. 4j
    /// + 4` of `a` and `b` (no pair of products may reach ±2¹⁵).
    #[inline(always)]
    fn sdot(self, acc: int32x4_t, a: uint8x16_t, b: uint8x16_t) -> int32x4_t {
        if DOT {
            // SAFETY: a `Neon<true>` exists only on a CPU with the dot
            // product extension (`Neon::new`).
            unsafe { sdot_ext(acc, a, b) }
        } else {
            sdot_plain(acc, a, b)
        }
    }
}

/// The 4 × 4 transpose of the four-byte lanes of `r`: lane `p` of output
/// `q` is lane `q` of `r[p]`.
#[inline(always)]
fn transpose4x4(r: [uint8x16_t; 4]) -> [uint8x16_t; 4] {
    // SAFETY: NEON is part of the aarch64 target.
    unsafe {
        let [a, b, c, d] = [
            vreinterpretq_u32_u8(r[0]),
            vreinterpretq_u32_u8(r[1]),
            vreinterpretq_u32_u8(r[2]),
            vreinterpretq_u32_u8(r[3]),
        ];
        let (t0, t1) = (vtrn1q_u32(a, b), vtrn2q_u32(a, b));
        let (t2, t3) = (vtrn1q_u32(c, d), vtrn2q_u32(c, d));
        let (t0, t1) = (vreinterpretq_u64_u32(t0), vreinterpretq_u64_u32(t1));
        let (t2, t3) = (vreinterpretq_u64_u32(t2), vreinterpretq_u64_u32(t3));
        [
            vreinterpretq_u8_u64(vtrn1q_u64(t0, t2)),
            vreinterpretq_u8_u64(vtrn1q_u64(t1, t3)),
            vreinterpretq_u8_u64(vtrn2q_u64(t0, t2)),
            vreinterpretq_u8_u64(vtrn2q_u64(t1, t3)),
        ]
    }
}

/// Four f16 values, as f32 (exact): the bits of each, moved to the places
/// of an f32's with the exponent unbiased by 112, times 2¹¹² (which also
/// scales subnormal values right); NaN and infinite values come out finite
/// (callers look at [`f16_bad`] first).
#[inline(always)]
fn f16x4(h: uint16x4_t) -> float32x4_t {
    // SAFETY: NEON is part of the aarch64 target.
    unsafe {
        let w = vmovl_u16(h);
        let em = vandq_u32(w, vdupq_n_u32(0x7fff));
        let sign = vshlq_n_u32::<16>(vandq_u32(w, vdupq_n_u32(0x8000)));
        let mag = vmulq_n_f32(
            vreinterpretq_f32_u32(vshlq_n_u32::<13>(em)),
            f32::from_bits(0x7780_0000),
        );
        vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(mag), sign))
    }
}

/// Whether any of the 8 f16 values `h` is NaN, infinite or negative (−0
/// allowed).
#[inline(always)]
fn f16_bad(h: uint16x8_t) -> bool {
    // SAFETY: NEON is part of the aarch64 target.
    unsafe {
        let inf_nan = vcgeq_u16(vandq_u16(h, vdupq_n_u16(0x7fff)), vdupq_n_u16(0x7c00));
        let neg = vcgtq_u16(h, vdupq_n_u16(0x8000));
        vmaxvq_u16(vorrq_u16(inf_nan, neg)) != 0
    }
}

/// Pairs `(s[a[v]], s[b[v]])`, `v < 8`, of the signed bytes of `h`, each
/// in every lane of its half.
#[inline(always)]
fn scale_pairs(h: uint8x16_t, a: [usize; 8], b: [usize; 8]) -> [(int32x4_t, int32x4_t); 8] {
    let mut s = [0u8; 16];
    // SAFETY: `s` is 16 writable bytes.
    unsafe { vst1q_u8(s.as_mut_ptr(), h) };
    // SAFETY: NEON is part of the aarch64 target.
    unsafe {
        let mut out = [(vdupq_n_s32(0), vdupq_n_s32(0)); 8];
        for v in 0..8 {
            out[v] = (
                vdupq_n_s32(i32::from(s[a[v]] as i8)),
                vdupq_n_s32(i32::from(s[b[v]] as i8)),
            );
        }
        out
    }
}

/// `$f` on each half of the pairs `$a` and `$b`: `($f($a.0, $b.0),
/// $f($a.1, $b.1))`.
macro_rules! halves {
    ($f:ident($a:expr, $b:expr)) => {{
        let (a, b) = ($a, $b);
        ($f(a.0, b.0), $f(a.1, b.1))
    }};
}

// Every method below is one unsafe block for the same reason: the
// intrinsics need NEON, part of the aarch64 target (which a value of `Neon`
// proves this CPU runs); the loads and stores touch exactly the array given
// by reference, and `prfm` reads and writes no memory or register (a
// prefetch never faults: past the end of a slice it is a hint about memory
// that may not exist, and `wrapping_add` claims nothing about the address).
impl<const DOT: bool> Simd for Neon<DOT> {
    type B = (uint8x16_t, uint8x16_t);
    type H = uint8x16_t;
    type I = (int32x4_t, int32x4_t);
    type F = (float32x4_t, float32x4_t);
    type S = (int32x4_t, int32x4_t);
    type M = (int16x8_t, int16x8_t);
    const WIDE_U8: bool = false;
    const DOT_U8: bool = false;

    #[inline(always)]
    fn load(self, a: &[u8; 32]) -> Self::B {
        // SAFETY: see above.
        unsafe { (vld1q_u8(a.as_ptr()), vld1q_u8(a.as_ptr().add(16))) }
    }

    #[inline(always)]
    fn load_i8(self, a: &[i8; 32]) -> Self::B {
        // SAFETY: see above.
        unsafe {
            let p = a.as_ptr().cast::<u8>();
            (vld1q_u8(p), vld1q_u8(p.add(16)))
        }
    }

    #[inline(always)]
    fn nibbles(self, a: &[u8; 16]) -> Self::B {
        // SAFETY: see above.
        unsafe {
            let v = self.h_load(a);
            (vandq_u8(v, vdupq_n_u8(15)), vshrq_n_u8::<4>(v))
        }
    }

    #[inline(always)]
    fn bits(self, bits: u32) -> Self::B {
        // SAFETY: see above.
        unsafe {
            // Byte i gets byte i / 8 of `bits`, then is tested against bit i % 8.
            const SPREAD: [[u8; 16]; 2] = [
                [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
                [2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3],
            ];
            const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
            let w = vreinterpretq_u8_u32(vdupq_n_u32(bits));
            let m = self.h_load(&BIT);
            (
                vtstq_u8(vqtbl1q_u8(w, self.h_load(&SPREAD[0])), m),
                vtstq_u8(vqtbl1q_u8(w, self.h_load(&SPREAD[1])), m),
            )
        }
    }

    #[inline(always)]
    fn test_bit(self, a: Self::B, bit: u32) -> Self::B {
        // SAFETY: see above.
        unsafe {
            let m = vdupq_n_u8(1 << (bit & 7));
            (vtstq_u8(a.0, m), vtstq_u8(a.1, m))
        }
    }

    #[inline(always)]
    fn splat(self, v: u8) -> Self::B {
        // SAFETY: see above.
        unsafe { (vdupq_n_u8(v), vdupq_n_u8(v)) }
    }

    #[inline(always)]
    fn table(self, t: &[i8; 16]) -> Self::B {
        // SAFETY: see above.
        unsafe {
            let t = vld1q_u8(t.as_ptr().cast());
            (t, t)
        }
    }

    #[inline(always)]
    fn lookup(self, table: Self::B, idx: Self::B) -> Self::B {
        // SAFETY: see above.
        unsafe { (vqtbl1q_u8(table.0, idx.0), vqtbl1q_u8(table.0, idx.1)) }
    }

    #[inline(always)]
    fn and(self, a: Self::B, b: Self::B) -> Self::B {
        // SAFETY: see above.
        unsafe { halves!(vandq_u8(a, b)) }
    }

    #[inline(always)]
    fn xor(self, a: Self::B, b: Self::B) -> Self::B {
        // SAFETY: see above.
        unsafe { halves!(veorq_u8(a, b)) }
    }

    #[inline(always)]
    fn or(self, a: Self::B, b: Self::B) -> Self::B {
        // SAFETY: see above.
        unsafe { halves!(vorrq_u8(a, b)) }
    }

    #[inline(always)]
    fn andnot(self, a: Self::B, b: Self::B) -> Self::B {
        // SAFETY: see above.
        // `bic b, a` is `b & !a`.
        unsafe { halves!(vbicq_u8(b, a)) }
    }

    #[inline(always)]
    fn sub8(self, a: Self::B, b: Self::B) -> Self::B {
        // SAFETY: see above.
        unsafe { halves!(vsubq_u8(a, b)) }
    }

    #[inline(always)]
    fn srl<const S: i32>(self, a: Self::B) -> Self::B {
        // SAFETY: see above.
        unsafe {
            // Byte shifts: exact (stronger than the vocabulary asks).
            (vshrq_n_u8::<S>(a.0), vshrq_n_u8::<S>(a.1))
        }
    }

    #[inline(always)]
    fn sll<const S: i32>(self, a: Self::B) -> Self::B {
        // SAFETY: see above.
        unsafe { (vshlq_n_u8::<S>(a.0), vshlq_n_u8::<S>(a.1)) }
    }

    #[inline(always)]
    fn izero(self) -> Self::I {
        // SAFETY: see above.
        unsafe { (vdupq_n_s32(0), vdupq_n_s32(0)) }
    }

    #[inline(always)]
    fn dot_u8(self, acc: Self::I, w: Self::B, x: Self::B) -> Self::I {
        // Signed products: right for the unsigned `w ≤ 127` the kernels
        // pass where `WIDE_U8` is false (at most 63).
        (self.sdot(acc.0, w.0, x.0), self.sdot(acc.1, w.1, x.1))
    }

    #[inline(always)]
    fn dot_i8(self, acc: Self::I, w: Self::B, x: Self::B) -> Self::I {
        (self.sdot(acc.0, w.0, x.0), self.sdot(acc.1, w.1, x.1))
    }

    #[inline(always)]
    fn dot_scaled(self, acc: Self::I, w: Self::B, x: Self::B, s: Self::S) -> Self::I {
        // SAFETY: see above.
        unsafe {
            let z = vdupq_n_s32(0);
            (
                vmlaq_s32(acc.0, self.sdot(z, w.0, x.0), s.0),
                vmlaq_s32(acc.1, self.sdot(z, w.1, x.1), s.1),
            )
        }
    }

    #[inline(always)]
    fn h_load(self, a: &[u8; 16]) -> uint8x16_t {
        // SAFETY: see above.
        unsafe { vld1q_u8(a.as_ptr()) }
    }

    #[inline(always)]
    fn h_words(self, w: [u32; 4]) -> uint8x16_t {
        // SAFETY: see above.
        unsafe { vreinterpretq_u8_u32(vld1q_u32(w.as_ptr())) }
    }

    #[inline(always)]
    fn h_splat(self, v: u8) -> uint8x16_t {
        // SAFETY: see above.
        unsafe { vdupq_n_u8(v) }
    }

    #[inline(always)]
    fn h_and(self, a: uint8x16_t, b: uint8x16_t) -> uint8x16_t {
        // SAFETY: see above.
        unsafe { vandq_u8(a, b) }
    }

    #[inline(always)]
    fn h_hi4(self, a: uint8x16_t) -> uint8x16_t {
        // SAFETY: see above.
        unsafe { vshrq_n_u8::<4>(a) }
    }

    #[inline(always)]
    fn h_sub8(self, a: uint8x16_t, b: uint8x16_t) -> uint8x16_t {
        // SAFETY: see above.
        unsafe { vsubq_u8(a, b) }
    }

    #[inline(always)]
    fn scales8(self, h: uint8x16_t) -> [Self::S; 8] {
        let v = [0, 1, 2, 3, 4, 5, 6, 7];
        scale_pairs(h, v, v)
    }

    #[inline(always)]
    fn scales16(self, h: uint8x16_t) -> [Self::S; 8] {
        scale_pairs(h, [0, 2, 4, 6, 8, 10, 12, 14], [1, 3, 5, 7, 9, 11, 13, 15])
    }

    #[inline(always)]
    fn mins8(self, h: uint8x16_t) -> Self::M {
        // SAFETY: see above.
        unsafe {
            // Bytes 8..16 as int16, each twice.
            let m = vmovl_high_s8(vreinterpretq_s8_u8(h));
            (vzip1q_s16(m, m), vzip2q_s16(m, m))
        }
    }

    #[inline(always)]
    fn mins16(self, h: uint8x16_t) -> Self::M {
        // SAFETY: see above.
        unsafe {
            let h = vreinterpretq_s8_u8(h);
            (vmovl_s8(vget_low_s8(h)), vmovl_high_s8(h))
        }
    }

    #[inline(always)]
    fn dot_mins(self, m: Self::M, sums: &[i16; 16]) -> Self::I {
        // SAFETY: see above.
        unsafe {
            let (s0, s1) = (vld1q_s16(sums.as_ptr()), vld1q_s16(sums.as_ptr().add(8)));
            // Lane j: words 2j and 2j + 1 (as `vpmaddwd`).
            let half = |m: int16x8_t, s: int16x8_t| {
                vpaddq_s32(
                    vmull_s16(vget_low_s16(m), vget_low_s16(s)),
                    vmull_high_s16(m, s),
                )
            };
            (half(m.0, s0), half(m.1, s1))
        }
    }

    #[inline(always)]
    fn imsub(self, a: Self::I, b: Self::I, k: i32) -> Self::I {
        // SAFETY: see above.
        unsafe { (vmlsq_n_s32(a.0, b.0, k), vmlsq_n_s32(a.1, b.1, k)) }
    }

    #[inline(always)]
    fn fzero(self) -> Self::F {
        // SAFETY: see above.
        unsafe { (vdupq_n_f32(0.0), vdupq_n_f32(0.0)) }
    }

    #[inline(always)]
    fn fmadd(self, acc: Self::F, i: Self::I, s: f32) -> Self::F {
        // SAFETY: see above.
        unsafe {
            (
                vfmaq_n_f32(acc.0, vcvtq_f32_s32(i.0), s),
                vfmaq_n_f32(acc.1, vcvtq_f32_s32(i.1), s),
            )
        }
    }

    #[inline(always)]
    fn fadd(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see above.
        unsafe { halves!(vaddq_f32(a, b)) }
    }

    #[inline(always)]
    fn totals8(self, i: [Self::I; 8]) -> Self::I {
        // SAFETY: see above.
        unsafe {
            let s = i.map(|(a, b)| vaddq_s32(a, b));
            let quad = |a: int32x4_t, b: int32x4_t, c: int32x4_t, d: int32x4_t| {
                vpaddq_s32(vpaddq_s32(a, b), vpaddq_s32(c, d))
            };
            (quad(s[0], s[1], s[2], s[3]), quad(s[4], s[5], s[6], s[7]))
        }
    }

    #[inline(always)]
    fn load_i32x8(self, a: &[i32; 8]) -> Self::I {
        // SAFETY: see above.
        unsafe { (vld1q_s32(a.as_ptr()), vld1q_s32(a.as_ptr().add(4))) }
    }

    #[inline(always)]
    fn load_f32x8(self, a: &[f32; 8]) -> Self::F {
        // SAFETY: see above.
        unsafe { (vld1q_f32(a.as_ptr()), vld1q_f32(a.as_ptr().add(4))) }
    }

    #[inline(always)]
    fn f16x8(self, bits: [u16; 8]) -> (Self::F, bool) {
        // SAFETY: see above.
        unsafe {
            let h = vld1q_u16(bits.as_ptr());
            (
                (f16x4(vget_low_u16(h)), f16x4(vget_high_u16(h))),
                f16_bad(h),
            )
        }
    }

    #[inline(always)]
    fn f16x8_at(self, a: &[u8; 16]) -> (Self::F, bool) {
        // SAFETY: see above.
        unsafe {
            let h = vreinterpretq_u16_u8(self.h_load(a));
            (
                (f16x4(vget_low_u16(h)), f16x4(vget_high_u16(h))),
                f16_bad(h),
            )
        }
    }

    #[inline(always)]
    fn fmadd_v(self, acc: Self::F, i: Self::I, s: Self::F) -> Self::F {
        // SAFETY: see above.
        unsafe {
            (
                vfmaq_f32(acc.0, vcvtq_f32_s32(i.0), s.0),
                vfmaq_f32(acc.1, vcvtq_f32_s32(i.1), s.1),
            )
        }
    }

    #[inline(always)]
    fn hsum(self, a: Self::F) -> f32 {
        // SAFETY: see above.
        unsafe { vaddvq_f32(vaddq_f32(a.0, a.1)) }
    }

    #[inline(always)]
    fn f16(self, bits: u16) -> f32 {
        super::f16_to_f32(bits)
    }

    #[inline(always)]
    fn f16x2(self, bits: u32) -> (f32, f32) {
        (
            super::f16_to_f32(bits as u16),
            super::f16_to_f32((bits >> 16) as u16),
        )
    }

    #[inline(always)]
    fn prefetch(self, s: &[u8]) {
        // SAFETY: see above.
        unsafe {
            // A prefetch never faults: past the end of `s` it is a hint about
            // memory that may not exist (`wrapping_add` claims nothing about
            // the address).
            let p = s.as_ptr().wrapping_add(PREFETCH_AHEAD);
            asm!("prfm pldl1keep, [{p}]", p = in(reg) p, options(nostack, preserves_flags))
        }
    }

    #[inline(always)]
    fn fetch(self, s: &[u8]) {
        // SAFETY: see above.
        unsafe {
            asm!("prfm pldl2keep, [{p}]", p = in(reg) s.as_ptr(), options(nostack, preserves_flags))
        }
    }

    #[inline(always)]
    fn bcast4(self, a: &[i8; 4]) -> Self::B {
        // SAFETY: see above.
        unsafe {
            let w = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_le_bytes(a.map(|b| b as u8))));
            (w, w)
        }
    }

    #[inline(always)]
    fn transpose8(self, r: [Self::B; 8]) -> [Self::B; 8] {
        // Lanes 0..4 of every output from rows 0..4, lanes 4..8 from rows
        // 4..8; outputs 0..4 from the rows' lanes 0..4 (`.0`), 4..8 from
        // their lanes 4..8 (`.1`).
        let q0 = transpose4x4([r[0].0, r[1].0, r[2].0, r[3].0]);
        let q1 = transpose4x4([r[0].1, r[1].1, r[2].1, r[3].1]);
        let q2 = transpose4x4([r[4].0, r[5].0, r[6].0, r[7].0]);
        let q3 = transpose4x4([r[4].1, r[5].1, r[6].1, r[7].1]);
        [
            (q0[0], q2[0]),
            (q0[1], q2[1]),
            (q0[2], q2[2]),
            (q0[3], q2[3]),
            (q1[0], q3[0]),
            (q1[1], q3[1]),
            (q1[2], q3[2]),
            (q1[3], q3[3]),
        ]
    }

    #[inline(always)]
    fn transpose4(self, r: [Self::B; 4]) -> [Self::B; 4] {
        let lo = transpose4x4([r[0].0, r[1].0, r[2].0, r[3].0]);
        let hi = transpose4x4([r[0].1, r[1].1, r[2].1, r[3].1]);
        [
            (lo[0], hi[0]),
            (lo[1], hi[1]),
            (lo[2], hi[2]),
            (lo[3], hi[3]),
        ]
    }

    #[inline(always)]
    fn fold2(self, lo: Self::I, hi: Self::I) -> Self::I {
        // SAFETY: see above.
        unsafe { (vaddq_s32(lo.0, lo.1), vaddq_s32(hi.0, hi.1)) }
    }

    #[inline(always)]
    fn f16x4x2(self, bits: u64) -> Self::F {
        // SAFETY: see above.
        unsafe {
            let v = f16x4(vcreate_u16(bits));
            (v, v)
        }
    }

    #[inline(always)]
    fn isplat(self, v: i32) -> Self::I {
        // SAFETY: see above.
        unsafe { (vdupq_n_s32(v), vdupq_n_s32(v)) }
    }

    #[inline(always)]
    fn isub(self, a: Self::I, b: Self::I) -> Self::I {
        // SAFETY: see above.
        unsafe { halves!(vsubq_s32(a, b)) }
    }

    #[inline(always)]
    fn iadd(self, a: Self::I, b: Self::I) -> Self::I {
        // SAFETY: see above.
        unsafe { halves!(vaddq_s32(a, b)) }
    }

    #[inline(always)]
    fn fmul(self, a: Self::F, b: Self::F) -> Self::F {
        // SAFETY: see above.
        unsafe { halves!(vmulq_f32(a, b)) }
    }

    #[inline(always)]
    fn fscale(self, a: Self::F, s: f32) -> Self::F {
        // SAFETY: see above.
        unsafe { (vmulq_n_f32(a.0, s), vmulq_n_f32(a.1, s)) }
    }

    #[inline(always)]
    fn store_f32x8(self, a: Self::F) -> [f32; 8] {
        // SAFETY: see above.
        unsafe {
            let mut o = [0f32; 8];
            vst1q_f32(o.as_mut_ptr(), a.0);
            vst1q_f32(o.as_mut_ptr().add(4), a.1);
            o
        }
    }

    #[inline(always)]
    fn store_i32x8(self, a: Self::I) -> [i32; 8] {
        // SAFETY: see above.
        unsafe {
            let mut o = [0i32; 8];
            vst1q_s32(o.as_mut_ptr(), a.0);
            vst1q_s32(o.as_mut_ptr().add(4), a.1);
            o
        }
    }
}
