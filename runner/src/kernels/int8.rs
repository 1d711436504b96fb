//! int8 weights (SPEC.md §4.5) × int16-quantized activations (with
//! [`super::ActQuant::Int16`], as for `nf4`): weights are
//! widened to int16 and multiplied in exact integer sums (`vpdpwssd`,
//! `vpmaddwd`, `smlal`) of at most [`SEGMENT`] elements, each scaled by
//! `scale_w × scale_x` in f32.

use super::quant_act::QuantActs;
use super::{scale_bits, scale_is_bad, tiled_rows, Isa, SEGMENT};

/// Computes `out[r * n + t]` for the int8 rows in `w` (`rb` bytes each) and
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

    fn tile<const T: usize>(row: &[u8], acts: &QuantActs, t0: usize, o: &mut [f32]) -> bool {
        let b = acts.block;
        let x = acts.rows::<T>(t0);
        let mut acc = [0f32; T];
        let mut bad = false;
        for (k, blk) in row.chunks_exact(2 + b).enumerate() {
            let bits = scale_bits(blk);
            bad |= scale_is_bad(bits);
            let dw = half::f16::from_bits(bits).to_f32();
            for t in 0..T {
                let q = &x[t].qs[k * b..(k + 1) * b];
                for (seg, sq) in blk[2..].chunks(SEGMENT).zip(q.chunks(SEGMENT)) {
                    let isum: i32 = seg
                        .iter()
                        .zip(sq)
                        .map(|(&w, &q)| i32::from(w as i8) * i32::from(q))
                        .sum();
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
        let mut acc = [_mm256_setzero_ps(); T];
        let mut bad = false;
        for (k, blk) in row.chunks_exact(2 + b).enumerate() {
            prefetch(blk);
            let bits = scale_bits(blk);
            bad |= scale_is_bad(bits);
            let dw = f16_to_f32(bits);
            for (si, seg) in blk[2..].chunks(SEGMENT).enumerate() {
                let mut isum = [_mm256_setzero_si256(); T];
                for (i, c) in seg.as_chunks::<16>().0.iter().enumerate() {
                    let w = _mm256_cvtepi8_epi16(ld128(c));
                    let at = (k * b + si * SEGMENT) / 16 + i;
                    for t in 0..T {
                        let p = _mm256_madd_epi16(w, ld256_i16(&q[t][at]));
                        isum[t] = _mm256_add_epi32(isum[t], p);
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
        // Activations in runs of 32.
        let mut q: [&[[i16; 32]]; T] = [&[]; T];
        for t in 0..T {
            q[t] = x[t].qs.as_chunks::<32>().0;
        }
        let mut acc = [_mm512_setzero_ps(); T];
        let mut bad = false;
        for (k, blk) in row.chunks_exact(2 + b).enumerate() {
            prefetch(blk);
            let bits = scale_bits(blk);
            bad |= scale_is_bad(bits);
            let dw = f16_to_f32(bits);
            for (si, seg) in blk[2..].chunks(SEGMENT).enumerate() {
                let mut isum = [_mm512_setzero_si512(); T];
                for (i, c) in seg.as_chunks::<32>().0.iter().enumerate() {
                    let w = _mm512_cvtepi8_epi16(ld256(c));
                    let at = (k * b + si * SEGMENT) / 32 + i;
                    for t in 0..T {
                        isum[t] = _mm512_dpwssd_epi32(isum[t], w, ld512_i16(&q[t][at]));
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

    #[inline]
    #[target_feature(enable = "neon")]
    fn tile<const T: usize>(row: &[u8], acts: &QuantActs, t0: usize, o: &mut [f32]) -> bool {
        let b = acts.block;
        let x = acts.rows::<T>(t0);
        let mut acc = [0f32; T];
        let mut bad = false;
        for (k, blk) in row.chunks_exact(2 + b).enumerate() {
            let bits = scale_bits(blk);
            bad |= scale_is_bad(bits);
            let dw = half::f16::from_bits(bits).to_f32();
            for t in 0..T {
                let q = &x[t].qs[k * b..(k + 1) * b];
                for (seg, sq) in blk[2..].chunks(SEGMENT).zip(q.chunks(SEGMENT)) {
                    let mut s = vdupq_n_s32(0);
                    for (c, a) in seg.as_chunks::<16>().0.iter().zip(sq.chunks_exact(16)) {
                        // SAFETY: `c` is 16 readable bytes.
                        let w = unsafe { vld1q_s8(c.as_ptr().cast()) };
                        s = mla8(s, vmovl_s8(vget_low_s8(w)), &a[..8]);
                        s = mla8(s, vmovl_high_s8(w), &a[8..]);
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
