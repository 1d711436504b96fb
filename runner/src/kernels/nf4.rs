//! NF4 weights (SPEC.md §4.4) × int16-quantized activations: the kernels of
//! [`super::ActQuant::Int16`] (`STRATA_ACTS=int16`, NEON, and block sizes
//! the int8 kernels of `ggml::own` do not take).
//!
//! Codes become int16 weights through [`NF4_I16`] (code value × 1024,
//! rounded) — a 16-bit table lookup (`vpermw`; on AVX2 and NEON two byte
//! shuffles for the low and high bytes, interleaved) — and are multiplied
//! with the activations in exact integer sums (`vpdpwssd`, `vpmaddwd`,
//! `smlal`) of at most [`SEGMENT`] elements, each scaled by
//! `scale_w / 1024 × scale_x` in f32. Activations come in [`Order::Nf4`], so
//! the low and high nibbles of 32 code bytes meet 64 consecutive activations
//! (16 code bytes and 32 activations in a block's last half-group when `B/2`
//! is an odd multiple of 16, e.g. `B = 32`).
//!
//! [`Order::Nf4`]: super::quant_act::Order::Nf4

use super::quant_act::QuantActs;
use super::{scale_bits, scale_is_bad, tiled_rows, Isa, SEGMENT};

/// NF4 code values (`strata_format::codec::nf4::CODES`) × 1024, rounded to
/// nearest: the integer weights the kernels multiply (1/1024 is folded into
/// the block scale). The rounding moves a value by at most 0.6% of itself;
/// an int8 table (× 127, as `vpmaddubsw` would need) moved the small codes by
/// up to 4%, always the same way, and cost 1% of SmolLM2's perplexity.
pub(crate) const NF4_I16: [i16; 16] = [
    -1024, -713, -538, -404, -291, -189, -93, 0, 81, 165, 252, 346, 451, 576, 740, 1024,
];

/// `1/1024` folded into each weight block scale.
const INV_SCALE: f32 = 1.0 / 1024.0;

/// Low bytes of [`NF4_I16`].
const TABLE_LO: [u8; 16] = split(0);
/// High bytes of [`NF4_I16`].
const TABLE_HI: [u8; 16] = split(8);

const fn split(shift: u32) -> [u8; 16] {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = (NF4_I16[i] >> shift) as u8;
        i += 1;
    }
    t
}

/// Code bytes of one [`SEGMENT`].
const SEGMENT_BYTES: usize = SEGMENT / 2;

/// Computes `out[r * n + t]` for the nf4 rows in `w` (`rb` bytes each) and
/// the `n` rows of `acts`; returns whether a block scale was invalid.
pub(crate) fn rows(
    isa: Isa,
    w: &[u8],
    rb: usize,
    acts: &QuantActs,
    n: usize,
    out: &mut [f32],
) -> bool {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C (checked).
        Isa::Avx512 if isa.is_available() => unsafe { avx512::rows(w, rb, acts, n, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2, FMA and F16C (checked).
        Isa::Avx2 if isa.is_available() => unsafe { avx2::rows(w, rb, acts, n, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: the CPU has NEON (checked).
        Isa::Neon if isa.is_available() => unsafe { neon::rows(w, rb, acts, n, out) },
        _ => scalar::rows(w, rb, acts, n, out),
    }
}

/// Portable reference.
mod scalar {
    use super::*;

    /// `Σ w · q` of one run of code bytes (low nibbles against `q[..len]`,
    /// high nibbles against `q[len..2 len]`).
    fn dot(codes: &[u8], q: &[i16]) -> i32 {
        let (lo, hi) = q.split_at(codes.len());
        codes
            .iter()
            .zip(lo.iter().zip(hi))
            .map(|(&c, (&l, &h))| {
                i32::from(NF4_I16[usize::from(c & 15)]) * i32::from(l)
                    + i32::from(NF4_I16[usize::from(c >> 4)]) * i32::from(h)
            })
            .sum()
    }

    fn tile<const T: usize>(row: &[u8], acts: &QuantActs, t0: usize, o: &mut [f32]) -> bool {
        let b = acts.block;
        let x = acts.rows::<T>(t0);
        let mut acc = [0f32; T];
        let mut bad = false;
        for (k, blk) in row.chunks_exact(2 + b / 2).enumerate() {
            let bits = scale_bits(blk);
            bad |= scale_is_bad(bits);
            let dw = half::f16::from_bits(bits).to_f32() * INV_SCALE;
            for t in 0..T {
                let q = &x[t].qs[k * b..(k + 1) * b];
                for (seg, sq) in blk[2..].chunks(SEGMENT_BYTES).zip(q.chunks(SEGMENT)) {
                    let (groups, rest) = seg.as_chunks::<32>();
                    let mut isum = 0;
                    for (g, c) in groups.iter().enumerate() {
                        isum += dot(c, &sq[64 * g..64 * g + 64]);
                    }
                    if !rest.is_empty() {
                        isum += dot(rest, &sq[64 * groups.len()..]);
                    }
                    acc[t] += isum as f32 * (dw * x[t].scales[k]);
                }
            }
        }
        o[t0..t0 + T].copy_from_slice(&acc);
        bad
    }

    pub(super) fn rows(w: &[u8], rb: usize, acts: &QuantActs, n: usize, out: &mut [f32]) -> bool {
        tiled_rows!(w, rb, n, out, |row, t0, o| tile(row, acts, t0, o))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use crate::kernels::x86::*;
    use std::arch::x86_64::*;

    /// The int16 weights of 32 codes (one per byte, in order, after the
    /// 64-bit quarters were put in order 0, 2, 1, 3): elements 0..16 and
    /// 16..32. The byte unpacks interleave within 128-bit lanes, which the
    /// quarter order undoes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn expand(tlo: __m256i, thi: __m256i, codes: __m256i) -> [__m256i; 2] {
        let (lo, hi) = (
            _mm256_shuffle_epi8(tlo, codes),
            _mm256_shuffle_epi8(thi, codes),
        );
        [_mm256_unpacklo_epi8(lo, hi), _mm256_unpackhi_epi8(lo, hi)]
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn tile<const T: usize>(row: &[u8], acts: &QuantActs, t0: usize, o: &mut [f32]) -> bool {
        let b = acts.block;
        let x = acts.rows::<T>(t0);
        // Activations in runs of 16.
        let mut q: [&[[i16; 16]]; T] = [&[]; T];
        for t in 0..T {
            q[t] = x[t].qs.as_chunks::<16>().0;
        }
        let tlo = _mm256_broadcastsi128_si256(ld128(&TABLE_LO));
        let thi = _mm256_broadcastsi128_si256(ld128(&TABLE_HI));
        let m4 = _mm256_set1_epi8(0x0f);
        let m4h = _mm_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); T];
        let mut bad = false;
        for (k, blk) in row.chunks_exact(2 + b / 2).enumerate() {
            prefetch(blk);
            let bits = scale_bits(blk);
            bad |= scale_is_bad(bits);
            let dw = f16_to_f32(bits) * INV_SCALE;
            for (si, seg) in blk[2..].chunks(SEGMENT_BYTES).enumerate() {
                let (groups, rest) = seg.as_chunks::<32>();
                let mut isum = [_mm256_setzero_si256(); T];
                for (g, c) in groups.iter().enumerate() {
                    let v = _mm256_permute4x64_epi64::<0b11_01_10_00>(ld256(c));
                    let [w0, w1] = expand(tlo, thi, _mm256_and_si256(v, m4));
                    let [w2, w3] =
                        expand(tlo, thi, _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4));
                    let at = (k * b + si * SEGMENT + 64 * g) / 16;
                    for t in 0..T {
                        let p0 = _mm256_madd_epi16(w0, ld256_i16(&q[t][at]));
                        let p1 = _mm256_madd_epi16(w1, ld256_i16(&q[t][at + 1]));
                        let p2 = _mm256_madd_epi16(w2, ld256_i16(&q[t][at + 2]));
                        let p3 = _mm256_madd_epi16(w3, ld256_i16(&q[t][at + 3]));
                        let s =
                            _mm256_add_epi32(_mm256_add_epi32(p0, p1), _mm256_add_epi32(p2, p3));
                        isum[t] = _mm256_add_epi32(isum[t], s);
                    }
                }
                if let Some(c) = rest.as_chunks::<16>().0.first() {
                    let v = ld128(c);
                    let codes = _mm256_set_m128i(
                        _mm_and_si128(_mm_srli_epi16::<4>(v), m4h),
                        _mm_and_si128(v, m4h),
                    );
                    let [wl, wh] =
                        expand(tlo, thi, _mm256_permute4x64_epi64::<0b11_01_10_00>(codes));
                    let at = (k * b + si * SEGMENT + 64 * groups.len()) / 16;
                    for t in 0..T {
                        let p0 = _mm256_madd_epi16(wl, ld256_i16(&q[t][at]));
                        let p1 = _mm256_madd_epi16(wh, ld256_i16(&q[t][at + 1]));
                        isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(p0, p1));
                    }
                }
                for t in 0..T {
                    let s = _mm256_set1_ps(dw * x[t].scales[k]);
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), s, acc[t]);
                }
            }
        }
        for t in 0..T {
            o[t0 + t] = hsum256(acc[t]);
        }
        bad
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn rows(w: &[u8], rb: usize, acts: &QuantActs, n: usize, out: &mut [f32]) -> bool {
        tiled_rows!(w, rb, n, out, |row, t0, o| tile(row, acts, t0, o))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use crate::kernels::x86::*;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    fn tile<const T: usize>(row: &[u8], acts: &QuantActs, t0: usize, o: &mut [f32]) -> bool {
        let b = acts.block;
        let x = acts.rows::<T>(t0);
        // vpermw reads the low 5 bits of each index; codes are below 16.
        let tab = _mm512_castsi256_si512(ld256_i16(&NF4_I16));
        let m4 = _mm256_set1_epi8(0x0f);
        let m4h = _mm_set1_epi8(0x0f);
        let mut acc = [_mm512_setzero_ps(); T];
        let mut bad = false;
        for (k, blk) in row.chunks_exact(2 + b / 2).enumerate() {
            prefetch(blk);
            let bits = scale_bits(blk);
            bad |= scale_is_bad(bits);
            let dw = f16_to_f32(bits) * INV_SCALE;
            for (si, seg) in blk[2..].chunks(SEGMENT_BYTES).enumerate() {
                let (groups, rest) = seg.as_chunks::<32>();
                // Each token's activations for this segment: 64 per code group.
                let start = k * b + si * SEGMENT;
                let end = start + 64 * groups.len();
                let mut xg: [&[[i16; 64]]; T] = [&[]; T];
                for t in 0..T {
                    xg[t] = x[t].qs[start..end].as_chunks::<64>().0;
                }
                let mut isum = [_mm512_setzero_si512(); T];
                for (g, c) in groups.iter().enumerate() {
                    let v = ld256(c);
                    let lo = _mm512_cvtepu8_epi16(_mm256_and_si256(v, m4));
                    let hi = _mm512_cvtepu8_epi16(_mm256_and_si256(_mm256_srli_epi16::<4>(v), m4));
                    let (wl, wh) = (
                        _mm512_permutexvar_epi16(lo, tab),
                        _mm512_permutexvar_epi16(hi, tab),
                    );
                    for t in 0..T {
                        let [ql, qh] = halves(&xg[t][g]);
                        isum[t] = _mm512_dpwssd_epi32(isum[t], wl, ld512_i16(ql));
                        isum[t] = _mm512_dpwssd_epi32(isum[t], wh, ld512_i16(qh));
                    }
                }
                if let Some(c) = rest.as_chunks::<16>().0.first() {
                    let v = ld128(c);
                    let codes = _mm256_set_m128i(
                        _mm_and_si128(_mm_srli_epi16::<4>(v), m4h),
                        _mm_and_si128(v, m4h),
                    );
                    let w = _mm512_permutexvar_epi16(_mm512_cvtepu8_epi16(codes), tab);
                    for t in 0..T {
                        if let Some(q) = x[t].qs[end..].first_chunk::<32>() {
                            isum[t] = _mm512_dpwssd_epi32(isum[t], w, ld512_i16(q));
                        }
                    }
                }
                for t in 0..T {
                    let s = _mm512_set1_ps(dw * x[t].scales[k]);
                    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), s, acc[t]);
                }
            }
        }
        for t in 0..T {
            o[t0 + t] = _mm512_reduce_add_ps(acc[t]);
        }
        bad
    }

    /// The two halves of 64 activations (the indices are constant and in
    /// bounds, so no check survives).
    #[inline]
    fn halves(q: &[i16; 64]) -> [&[i16; 32]; 2] {
        let h = q.as_chunks::<32>().0;
        [&h[0], &h[1]]
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) fn rows(w: &[u8], rb: usize, acts: &QuantActs, n: usize, out: &mut [f32]) -> bool {
        tiled_rows!(w, rb, n, out, |row, t0, o| tile(row, acts, t0, o))
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::*;
    use std::arch::aarch64::*;

    /// Adds `Σ w · q` of 8 int16 weights and 8 activations into `s`.
    #[inline]
    #[target_feature(enable = "neon")]
    fn mla8(s: int32x4_t, w: int16x8_t, q: &[i16]) -> int32x4_t {
        let q = &q[..8];
        // SAFETY: `q` is 8 readable int16.
        let q = unsafe { vld1q_s16(q.as_ptr()) };
        vmlal_high_s16(vmlal_s16(s, vget_low_s16(w), vget_low_s16(q)), w, q)
    }

    /// The int16 weights of 16 codes (one per byte): elements 0..8 and 8..16.
    #[inline]
    #[target_feature(enable = "neon")]
    fn expand(tlo: uint8x16_t, thi: uint8x16_t, codes: uint8x16_t) -> [int16x8_t; 2] {
        let (lo, hi) = (vqtbl1q_u8(tlo, codes), vqtbl1q_u8(thi, codes));
        [
            vreinterpretq_s16_u8(vzip1q_u8(lo, hi)),
            vreinterpretq_s16_u8(vzip2q_u8(lo, hi)),
        ]
    }

    /// Adds `Σ w · q` of 16 code bytes into `s`: low nibbles against
    /// `ql[..16]`, high nibbles against `qh[..16]`.
    #[inline]
    #[target_feature(enable = "neon")]
    fn dot16(
        s: int32x4_t,
        tab: [uint8x16_t; 2],
        c: &[u8; 16],
        ql: &[i16],
        qh: &[i16],
    ) -> int32x4_t {
        // SAFETY: `c` is 16 readable bytes.
        let v = unsafe { vld1q_u8(c.as_ptr()) };
        let [w0, w1] = expand(tab[0], tab[1], vandq_u8(v, vdupq_n_u8(15)));
        let [w2, w3] = expand(tab[0], tab[1], vshrq_n_u8::<4>(v));
        let s = mla8(s, w0, &ql[..8]);
        let s = mla8(s, w1, &ql[8..16]);
        let s = mla8(s, w2, &qh[..8]);
        mla8(s, w3, &qh[8..16])
    }

    #[inline]
    #[target_feature(enable = "neon")]
    fn tile<const T: usize>(row: &[u8], acts: &QuantActs, t0: usize, o: &mut [f32]) -> bool {
        let b = acts.block;
        let x = acts.rows::<T>(t0);
        // SAFETY: both tables are 16 readable bytes.
        let tab = unsafe { [vld1q_u8(TABLE_LO.as_ptr()), vld1q_u8(TABLE_HI.as_ptr())] };
        let mut acc = [0f32; T];
        let mut bad = false;
        for (k, blk) in row.chunks_exact(2 + b / 2).enumerate() {
            let bits = scale_bits(blk);
            bad |= scale_is_bad(bits);
            let dw = half::f16::from_bits(bits).to_f32() * INV_SCALE;
            for t in 0..T {
                let q = &x[t].qs[k * b..(k + 1) * b];
                for (seg, sq) in blk[2..].chunks(SEGMENT_BYTES).zip(q.chunks(SEGMENT)) {
                    let (groups, rest) = seg.as_chunks::<32>();
                    let mut s = vdupq_n_s32(0);
                    for (g, c) in groups.iter().enumerate() {
                        // Low nibbles meet activations 64g .. 64g + 32, high ones the next 32.
                        let a = &sq[64 * g..64 * g + 64];
                        let cs = c.as_chunks::<16>().0;
                        s = dot16(s, tab, &cs[0], &a[..16], &a[32..48]);
                        s = dot16(s, tab, &cs[1], &a[16..32], &a[48..64]);
                    }
                    if let Some(c) = rest.as_chunks::<16>().0.first() {
                        let a = &sq[64 * groups.len()..];
                        s = dot16(s, tab, c, &a[..16], &a[16..32]);
                    }
                    acc[t] += vaddvq_s32(s) as f32 * (dw * x[t].scales[k]);
                }
            }
        }
        o[t0..t0 + T].copy_from_slice(&acc);
        bad
    }

    #[target_feature(enable = "neon")]
    pub(super) fn rows(w: &[u8], rb: usize, acts: &QuantActs, n: usize, out: &mut [f32]) -> bool {
        tiled_rows!(w, rb, n, out, |row, t0, o| tile(row, acts, t0, o))
    }
}
