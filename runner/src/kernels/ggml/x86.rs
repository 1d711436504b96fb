//! The [`Simd`] vocabulary on x86-64: 256-bit AVX2 (`vpmaddubsw` /
//! `vpmaddwd`, as llama.cpp's AVX2 kernels), and with AVX-512 VNNI the
//! unscaled byte dot products become `vpdpbusd` (256-bit, AVX-512 VL).

use std::arch::x86_64::*;

use super::simd::{self, Simd};
use crate::kernels::x86::{hsum256, prefetch};
use crate::kernels::Isa;

/// Proof that this CPU runs the vocabulary: AVX2, FMA and F16C, and with
/// `VNNI` also AVX-512 F/BW/VL/VNNI. Only [`X86::new`] makes one.
#[derive(Debug, Clone, Copy)]
pub(super) struct X86<const VNNI: bool>(());

/// AVX2 with FMA and F16C.
pub(super) type Avx2 = X86<false>;
/// AVX-512 F/BW/VL/VNNI (with AVX2, FMA and F16C).
pub(super) type Avx512 = X86<true>;

impl<const VNNI: bool> X86<VNNI> {
    /// The vocabulary, when this CPU runs it.
    pub(super) fn new() -> Option<Self> {
        let isa = if VNNI { Isa::Avx512 } else { Isa::Avx2 };
        isa.is_available().then_some(X86(()))
    }
}

/// The 8 f16 values of `h` as f32, and whether any of them is NaN,
/// infinite or negative (−0 allowed).
///
/// # Safety
/// The CPU must have F16C (and SSE2).
#[inline]
#[target_feature(enable = "f16c")]
unsafe fn f16x8_checked(h: __m128i) -> (__m256, bool) {
    let exp = _mm_set1_epi16(0x7c00);
    // All exponent bits set: infinite or NaN.
    let inf_nan = _mm_cmpeq_epi16(_mm_and_si128(h, exp), exp);
    // Above 0x8000 unsigned: negative and not −0 (`h ^ 0x8000` is then
    // 1 ..= 0x7fff, positive as a signed word).
    let neg = _mm_cmpgt_epi16(
        _mm_xor_si128(h, _mm_set1_epi16(i16::MIN)),
        _mm_setzero_si128(),
    );
    let bad = _mm_movemask_epi8(_mm_or_si128(inf_nan, neg)) != 0;
    (_mm256_cvtph_ps(h), bad)
}

simd::entry_points!(Avx2, "avx2,fma,f16c", rows_avx2, own_rows_avx2);
simd::entry_points!(
    Avx512,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    rows_avx512,
    own_rows_avx512
);

// Every method below is one unsafe block for the same reason: the
// intrinsics need AVX2 (and with VNNI, AVX-512 VL/VNNI), which a value of
// `X86` proves this CPU has (`X86::new` is the only constructor and checks
// them); the loads read exactly the array given by reference.
impl<const VNNI: bool> Simd for X86<VNNI> {
    type B = __m256i;
    type H = __m128i;
    type I = __m256i;
    type F = __m256;
    type S = __m256i;
    type M = __m256i;
    const WIDE_U8: bool = VNNI;
    const DOT_U8: bool = true;

    #[inline(always)]
    fn load(self, a: &[u8; 32]) -> __m256i {
        // SAFETY: see above (32 readable bytes, unaligned load).
        unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
    }

    #[inline(always)]
    fn load_i8(self, a: &[i8; 32]) -> __m256i {
        // SAFETY: see above (32 readable bytes, unaligned load).
        unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
    }

    #[inline(always)]
    fn nibbles(self, a: &[u8; 16]) -> __m256i {
        // SAFETY: see above (16 readable bytes, unaligned load).
        unsafe {
            let v = _mm_loadu_si128(a.as_ptr().cast());
            let both = _mm256_set_m128i(_mm_srli_epi16::<4>(v), v);
            _mm256_and_si256(both, _mm256_set1_epi8(15))
        }
    }

    #[inline(always)]
    fn bits(self, bits: u32) -> __m256i {
        // SAFETY: see above.
        unsafe {
            // Byte i gets byte i / 8 of `bits`, then all its bits but bit
            // i % 8 are set: all ones exactly where that bit was set.
            let spread = _mm256_shuffle_epi8(
                _mm256_set1_epi32(bits as i32),
                _mm256_set_epi64x(
                    0x0303_0303_0303_0303,
                    0x0202_0202_0202_0202,
                    0x0101_0101_0101_0101,
                    0,
                ),
            );
            let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
            _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1))
        }
    }

    #[inline(always)]
    fn test_bit(self, a: __m256i, bit: u32) -> __m256i {
        // SAFETY: see above.
        unsafe {
            let m = _mm256_set1_epi8((1u8 << (bit & 7)) as i8);
            _mm256_cmpeq_epi8(_mm256_and_si256(a, m), m)
        }
    }

    #[inline(always)]
    fn splat(self, v: u8) -> __m256i {
        // SAFETY: see above.
        unsafe { _mm256_set1_epi8(v as i8) }
    }

    #[inline(always)]
    fn table(self, t: &[i8; 16]) -> __m256i {
        // SAFETY: see above (16 readable bytes, unaligned load).
        unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(t.as_ptr().cast())) }
    }

    #[inline(always)]
    fn lookup(self, table: __m256i, idx: __m256i) -> __m256i {
        // SAFETY: see above. `vpshufb` looks up within each 128-bit lane,
        // and `table` holds the same 16 bytes in both.
        unsafe { _mm256_shuffle_epi8(table, idx) }
    }

    #[inline(always)]
    fn xor(self, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: see above.
        unsafe { _mm256_xor_si256(a, b) }
    }

    #[inline(always)]
    fn and(self, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: see above.
        unsafe { _mm256_and_si256(a, b) }
    }

    #[inline(always)]
    fn or(self, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: see above.
        unsafe { _mm256_or_si256(a, b) }
    }

    #[inline(always)]
    fn andnot(self, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: see above.
        unsafe { _mm256_andnot_si256(a, b) }
    }

    #[inline(always)]
    fn sub8(self, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: see above.
        unsafe { _mm256_sub_epi8(a, b) }
    }

    #[inline(always)]
    fn srl<const S: i32>(self, a: __m256i) -> __m256i {
        // SAFETY: see above.
        unsafe { _mm256_srli_epi16::<S>(a) }
    }

    #[inline(always)]
    fn sll<const S: i32>(self, a: __m256i) -> __m256i {
        // SAFETY: see above.
        unsafe { _mm256_slli_epi16::<S>(a) }
    }

    #[inline(always)]
    fn izero(self) -> __m256i {
        // SAFETY: see above.
        unsafe { _mm256_setzero_si256() }
    }

    #[inline(always)]
    fn dot_u8(self, acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: see above; `VNNI` proves AVX-512 VL and VNNI.
        unsafe {
            if VNNI {
                _mm256_dpbusd_epi32(acc, w, x)
            } else {
                // Pairs of products fit int16 (|w·x| ≤ 128 · 127).
                let pairs = _mm256_maddubs_epi16(w, x);
                _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
            }
        }
    }

    #[inline(always)]
    fn dot_i8(self, acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: see above.
        let (aw, sx) = unsafe { (_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)) };
        // |w| as unsigned (−128 gives 128) times x with w's sign.
        self.dot_u8(acc, aw, sx)
    }

    #[inline(always)]
    fn dot_scaled(self, acc: __m256i, w: __m256i, x: __m256i, s: __m256i) -> __m256i {
        // SAFETY: see above.
        unsafe {
            // Pairs of products fit int16 (|w·x| ≤ 63 · 127); int16 pair k
            // holds elements 2k, 2k + 1, so pairs 0..8 take the low scale.
            let pairs = _mm256_maddubs_epi16(w, x);
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, s))
        }
    }

    #[inline(always)]
    fn h_load(self, a: &[u8; 16]) -> __m128i {
        // SAFETY: see above (16 readable bytes, unaligned load).
        unsafe { _mm_loadu_si128(a.as_ptr().cast()) }
    }

    #[inline(always)]
    fn h_words(self, w: [u32; 4]) -> __m128i {
        // SAFETY: see above.
        unsafe { _mm_setr_epi32(w[0] as i32, w[1] as i32, w[2] as i32, w[3] as i32) }
    }

    #[inline(always)]
    fn h_splat(self, v: u8) -> __m128i {
        // SAFETY: see above.
        unsafe { _mm_set1_epi8(v as i8) }
    }

    #[inline(always)]
    fn h_and(self, a: __m128i, b: __m128i) -> __m128i {
        // SAFETY: see above.
        unsafe { _mm_and_si128(a, b) }
    }

    #[inline(always)]
    fn h_hi4(self, a: __m128i) -> __m128i {
        // SAFETY: see above.
        unsafe { _mm_and_si128(_mm_srli_epi16::<4>(a), _mm_set1_epi8(15)) }
    }

    #[inline(always)]
    fn h_sub8(self, a: __m128i, b: __m128i) -> __m128i {
        // SAFETY: see above.
        unsafe { _mm_sub_epi8(a, b) }
    }

    #[inline(always)]
    fn scales8(self, h: __m128i) -> [__m256i; 8] {
        // SAFETY: see above.
        unsafe {
            // Scales 0..8 as int16 in both 128-bit lanes; pair v is word v.
            let s = _mm256_cvtepi8_epi16(_mm_unpacklo_epi64(h, h));
            word_pairs(s)
        }
    }

    #[inline(always)]
    fn scales16(self, h: __m128i) -> [__m256i; 8] {
        // SAFETY: see above.
        unsafe {
            // The even scales as int16 in the low lane, the odd ones in the
            // high lane; pair v is word v of each.
            let evens_odds = _mm_shuffle_epi8(
                h,
                _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15),
            );
            word_pairs(_mm256_cvtepi8_epi16(evens_odds))
        }
    }

    #[inline(always)]
    fn mins8(self, h: __m128i) -> __m256i {
        // SAFETY: see above.
        unsafe {
            let m = _mm_cvtepi8_epi16(_mm_unpackhi_epi64(h, h));
            _mm256_set_m128i(_mm_unpackhi_epi16(m, m), _mm_unpacklo_epi16(m, m))
        }
    }

    #[inline(always)]
    fn mins16(self, h: __m128i) -> __m256i {
        // SAFETY: see above.
        unsafe { _mm256_cvtepi8_epi16(h) }
    }

    #[inline(always)]
    fn dot_mins(self, m: __m256i, sums: &[i16; 16]) -> __m256i {
        // SAFETY: see above (32 readable bytes, unaligned load).
        unsafe { _mm256_madd_epi16(m, _mm256_loadu_si256(sums.as_ptr().cast())) }
    }

    #[inline(always)]
    fn imsub(self, a: __m256i, b: __m256i, k: i32) -> __m256i {
        // SAFETY: see above.
        unsafe { _mm256_sub_epi32(a, _mm256_mullo_epi32(b, _mm256_set1_epi32(k))) }
    }

    #[inline(always)]
    fn fzero(self) -> __m256 {
        // SAFETY: see above.
        unsafe { _mm256_setzero_ps() }
    }

    #[inline(always)]
    fn fmadd(self, acc: __m256, i: __m256i, s: f32) -> __m256 {
        // SAFETY: see above (FMA).
        unsafe { _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(s), acc) }
    }

    #[inline(always)]
    fn totals8(self, i: [__m256i; 8]) -> __m256i {
        // SAFETY: see above.
        unsafe {
            // Within each 128-bit lane: [i0 i1 i2 i3] then [i4 i5 i6 i7]
            // (four-element partial sums), low lane then high lane.
            let h01 = _mm256_hadd_epi32(i[0], i[1]);
            let h23 = _mm256_hadd_epi32(i[2], i[3]);
            let h45 = _mm256_hadd_epi32(i[4], i[5]);
            let h67 = _mm256_hadd_epi32(i[6], i[7]);
            let a = _mm256_hadd_epi32(h01, h23);
            let b = _mm256_hadd_epi32(h45, h67);
            _mm256_add_epi32(
                _mm256_permute2x128_si256::<0x20>(a, b),
                _mm256_permute2x128_si256::<0x31>(a, b),
            )
        }
    }

    #[inline(always)]
    fn load_i32x8(self, a: &[i32; 8]) -> __m256i {
        // SAFETY: see above (32 readable bytes, unaligned load).
        unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
    }

    #[inline(always)]
    fn load_f32x8(self, a: &[f32; 8]) -> __m256 {
        // SAFETY: see above (32 readable bytes, unaligned load).
        unsafe { _mm256_loadu_ps(a.as_ptr()) }
    }

    #[inline(always)]
    fn f16x8(self, b: [u16; 8]) -> (__m256, bool) {
        // SAFETY: see above (SSE2).
        let h = unsafe {
            _mm_set_epi16(
                b[7] as i16,
                b[6] as i16,
                b[5] as i16,
                b[4] as i16,
                b[3] as i16,
                b[2] as i16,
                b[1] as i16,
                b[0] as i16,
            )
        };
        // SAFETY: see above (F16C).
        unsafe { f16x8_checked(h) }
    }

    #[inline(always)]
    fn f16x8_at(self, a: &[u8; 16]) -> (__m256, bool) {
        // SAFETY: see above (F16C); `a` is 16 readable bytes, read unaligned.
        unsafe { f16x8_checked(_mm_loadu_si128(a.as_ptr().cast())) }
    }

    #[inline(always)]
    fn fmadd_v(self, acc: __m256, i: __m256i, s: __m256) -> __m256 {
        // SAFETY: see above (FMA).
        unsafe { _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), s, acc) }
    }

    #[inline(always)]
    fn fadd(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see above.
        unsafe { _mm256_add_ps(a, b) }
    }

    #[inline(always)]
    fn hsum(self, a: __m256) -> f32 {
        // SAFETY: see above.
        unsafe { hsum256(a) }
    }

    #[inline(always)]
    fn f16(self, bits: u16) -> f32 {
        // Not F16C's `vcvtph2ps`: LLVM feeds it a 16-bit insert into
        // whatever register is free, often the loop's f32 accumulator, which
        // chained every block of a row on the previous one (15 rather than 5
        // cycles a Q4_0 block).
        super::f16_to_f32(bits)
    }

    #[inline(always)]
    fn f16x2(self, bits: u32) -> (f32, f32) {
        // SAFETY: see above (F16C). Both halves are used, so the word is
        // moved in whole (`vmovd`, which clears the rest of the register).
        unsafe {
            let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
            (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
        }
    }

    #[inline(always)]
    fn prefetch(self, s: &[u8]) {
        // SAFETY: see above (a prefetch needs only SSE).
        unsafe { prefetch(s) }
    }

    #[inline(always)]
    fn fetch(self, s: &[u8]) {
        // SAFETY: see above (a prefetch needs only SSE); a prefetch never
        // faults, and `s` is readable memory anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(s.as_ptr().cast()) }
    }

    #[inline(always)]
    fn bcast4(self, a: &[i8; 4]) -> __m256i {
        // SAFETY: see above; `a` is 4 readable bytes, read unaligned.
        unsafe { _mm256_set1_epi32(a.as_ptr().cast::<i32>().read_unaligned()) }
    }

    #[inline(always)]
    fn transpose8(self, r: [__m256i; 8]) -> [__m256i; 8] {
        // SAFETY: see above.
        unsafe {
            // Pairs of rows: [a0 b0 a1 b1 | a4 b4 a5 b5], [a2 b2 a3 b3 | a6 b6 a7 b7].
            let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
            let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
            let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
            let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
            let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
            let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
            let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
            let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
            // Quads: lane j of rows 0–3 | lane j + 4 of rows 0–3 (u0–u3),
            // the same of rows 4–7 (u4–u7).
            let u0 = _mm256_unpacklo_epi64(t0, t2);
            let u1 = _mm256_unpackhi_epi64(t0, t2);
            let u2 = _mm256_unpacklo_epi64(t1, t3);
            let u3 = _mm256_unpackhi_epi64(t1, t3);
            let u4 = _mm256_unpacklo_epi64(t4, t6);
            let u5 = _mm256_unpackhi_epi64(t4, t6);
            let u6 = _mm256_unpacklo_epi64(t5, t7);
            let u7 = _mm256_unpackhi_epi64(t5, t7);
            [
                _mm256_permute2x128_si256::<0x20>(u0, u4),
                _mm256_permute2x128_si256::<0x20>(u1, u5),
                _mm256_permute2x128_si256::<0x20>(u2, u6),
                _mm256_permute2x128_si256::<0x20>(u3, u7),
                _mm256_permute2x128_si256::<0x31>(u0, u4),
                _mm256_permute2x128_si256::<0x31>(u1, u5),
                _mm256_permute2x128_si256::<0x31>(u2, u6),
                _mm256_permute2x128_si256::<0x31>(u3, u7),
            ]
        }
    }

    #[inline(always)]
    fn transpose4(self, r: [__m256i; 4]) -> [__m256i; 4] {
        // SAFETY: see above.
        unsafe {
            // Within each half: [a0 b0 a1 b1], [a2 b2 a3 b3], the same of c, d.
            let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
            let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
            let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
            let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
            [
                _mm256_unpacklo_epi64(t0, t2),
                _mm256_unpackhi_epi64(t0, t2),
                _mm256_unpacklo_epi64(t1, t3),
                _mm256_unpackhi_epi64(t1, t3),
            ]
        }
    }

    #[inline(always)]
    fn fold2(self, lo: __m256i, hi: __m256i) -> __m256i {
        // SAFETY: see above.
        unsafe {
            _mm256_add_epi32(
                _mm256_permute2x128_si256::<0x20>(lo, hi),
                _mm256_permute2x128_si256::<0x31>(lo, hi),
            )
        }
    }

    #[inline(always)]
    fn f16x4x2(self, bits: u64) -> __m256 {
        // SAFETY: see above (F16C).
        unsafe { _mm256_cvtph_ps(_mm_set1_epi64x(bits as i64)) }
    }

    #[inline(always)]
    fn isplat(self, v: i32) -> __m256i {
        // SAFETY: see above.
        unsafe { _mm256_set1_epi32(v) }
    }

    #[inline(always)]
    fn isub(self, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: see above.
        unsafe { _mm256_sub_epi32(a, b) }
    }

    #[inline(always)]
    fn iadd(self, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: see above.
        unsafe { _mm256_add_epi32(a, b) }
    }

    #[inline(always)]
    fn fmul(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see above.
        unsafe { _mm256_mul_ps(a, b) }
    }

    #[inline(always)]
    fn fscale(self, a: __m256, s: f32) -> __m256 {
        // SAFETY: see above.
        unsafe { _mm256_mul_ps(a, _mm256_set1_ps(s)) }
    }

    #[inline(always)]
    fn store_f32x8(self, a: __m256) -> [f32; 8] {
        let mut o = [0f32; 8];
        // SAFETY: see above; `o` is 32 writable bytes, written unaligned.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), a) };
        o
    }

    #[inline(always)]
    fn store_i32x8(self, a: __m256i) -> [i32; 8] {
        let mut o = [0i32; 8];
        // SAFETY: see above; `o` is 32 writable bytes, written unaligned.
        unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), a) };
        o
    }
}

/// `[w_v in every word of each 128-bit lane; v < 8]` for the int16 words
/// `w` of `s`, lane by lane.
#[inline]
#[target_feature(enable = "avx2")]
fn word_pairs(s: __m256i) -> [__m256i; 8] {
    // Byte indices 2v, 2v + 1 in every word.
    const PICK: [i16; 8] = [
        0x0100, 0x0302, 0x0504, 0x0706, 0x0908, 0x0b0a, 0x0d0c, 0x0f0e,
    ];
    [
        _mm256_shuffle_epi8(s, _mm256_set1_epi16(PICK[0])),
        _mm256_shuffle_epi8(s, _mm256_set1_epi16(PICK[1])),
        _mm256_shuffle_epi8(s, _mm256_set1_epi16(PICK[2])),
        _mm256_shuffle_epi8(s, _mm256_set1_epi16(PICK[3])),
        _mm256_shuffle_epi8(s, _mm256_set1_epi16(PICK[4])),
        _mm256_shuffle_epi8(s, _mm256_set1_epi16(PICK[5])),
        _mm256_shuffle_epi8(s, _mm256_set1_epi16(PICK[6])),
        _mm256_shuffle_epi8(s, _mm256_set1_epi16(PICK[7])),
    ]
}
