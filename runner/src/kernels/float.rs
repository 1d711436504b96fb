//! f32, f16 and bf16 weights (SPEC.md §4.1–4.3) × f32 activations: weights
//! are widened to f32 in registers (F16C `vcvtph2ps`; bf16 by a 16-bit shift)
//! and multiplied with f32 FMA. No activation quantization: these paths keep
//! f32 accuracy.

use strata_format::DType;

use super::{tiled_rows, Isa};

/// A float encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
}

impl Kind {
    /// The encoding of a float dtype (quantized dtypes are not floats; they
    /// never reach these kernels and map to `F32`).
    pub(crate) fn of(dtype: DType) -> Kind {
        match dtype {
            DType::F16 => Kind::F16,
            DType::Bf16 => Kind::Bf16,
            _ => Kind::F32,
        }
    }

    /// Bytes per element.
    fn size(self) -> usize {
        match self {
            Kind::F32 => 4,
            Kind::F16 | Kind::Bf16 => 2,
        }
    }

    /// Element `i` of an encoded row.
    #[inline]
    fn get(self, row: &[u8], i: usize) -> f32 {
        match self {
            Kind::F32 => {
                f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]])
            }
            Kind::F16 => half::f16::from_le_bytes([row[2 * i], row[2 * i + 1]]).to_f32(),
            Kind::Bf16 => {
                f32::from_bits(u32::from(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])) << 16)
            }
        }
    }
}

/// Computes `out[r * n + t] = Σ_c W[r, c] · x[t * cols + c]` for the rows of
/// `w` (encoded in `kind`, `cols` elements each).
pub(crate) fn rows(
    isa: Isa,
    kind: Kind,
    w: &[u8],
    x: &[f32],
    cols: usize,
    n: usize,
    out: &mut [f32],
) {
    let rb = cols * kind.size();
    match (isa, kind) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C (checked).
        (Isa::Avx512, _) if isa.is_available() => unsafe {
            avx512::rows(kind, w, rb, x, cols, n, out)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2, FMA and F16C (checked).
        (Isa::Avx2, _) if isa.is_available() => unsafe { avx2::rows(kind, w, rb, x, cols, n, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: the CPU has NEON (checked).
        (Isa::Neon, Kind::F32 | Kind::Bf16) if isa.is_available() => unsafe {
            neon::rows(kind, w, rb, x, cols, n, out)
        },
        _ => scalar::rows(kind, w, rb, x, cols, n, out),
    }
}

/// Portable reference (also NEON's f16 path).
mod scalar {
    use super::*;

    fn tile<const T: usize>(
        kind: Kind,
        row: &[u8],
        x: &[f32],
        cols: usize,
        t0: usize,
        o: &mut [f32],
    ) -> bool {
        let mut acc = [0f32; T];
        for c in 0..cols {
            let w = kind.get(row, c);
            for (t, a) in acc.iter_mut().enumerate() {
                *a += w * x[(t0 + t) * cols + c];
            }
        }
        o[t0..t0 + T].copy_from_slice(&acc);
        false
    }

    pub(super) fn rows(
        kind: Kind,
        w: &[u8],
        rb: usize,
        x: &[f32],
        cols: usize,
        n: usize,
        out: &mut [f32],
    ) {
        tiled_rows!(w, rb, n, out, |row, t0, o| tile(kind, row, x, cols, t0, o));
    }
}

/// Scalar sums of the elements `from..cols` (the tail after the vectors).
#[inline]
fn tail<const T: usize>(
    kind: Kind,
    row: &[u8],
    x: &[f32],
    cols: usize,
    t0: usize,
    from: usize,
) -> [f32; T] {
    let mut acc = [0f32; T];
    for c in from..cols {
        let w = kind.get(row, c);
        for (t, a) in acc.iter_mut().enumerate() {
            *a += w * x[(t0 + t) * cols + c];
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use crate::kernels::x86::*;
    use std::arch::x86_64::*;

    /// Stamps out a tile function for one encoding: `$bytes` encoded bytes
    /// hold 8 elements, `$load` widens them to 8 f32 lanes.
    macro_rules! tile_fn {
        ($name:ident, $bytes:literal, |$c:ident| $load:expr) => {
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            fn $name<const T: usize>(
                kind: Kind,
                row: &[u8],
                x: &[f32],
                cols: usize,
                t0: usize,
                o: &mut [f32],
            ) -> bool {
                let mut xs: [&[[f32; 8]]; T] = [&[]; T];
                for t in 0..T {
                    xs[t] = x[(t0 + t) * cols..(t0 + t + 1) * cols].as_chunks::<8>().0;
                }
                let wc = row.as_chunks::<$bytes>().0;
                let mut acc = [[_mm256_setzero_ps(); 2]; T];
                // Two independent sums per token hide the FMA latency.
                for (i, pair) in wc.chunks_exact(2).enumerate() {
                    prefetch(&pair[0]);
                    for (j, $c) in pair.iter().enumerate() {
                        let w = $load;
                        for t in 0..T {
                            acc[t][j] = _mm256_fmadd_ps(w, ld256_ps(&xs[t][2 * i + j]), acc[t][j]);
                        }
                    }
                }
                if wc.len() % 2 == 1 {
                    let i = wc.len() - 1;
                    let $c = &wc[i];
                    let w = $load;
                    for t in 0..T {
                        acc[t][0] = _mm256_fmadd_ps(w, ld256_ps(&xs[t][i]), acc[t][0]);
                    }
                }
                let rest = tail::<T>(kind, row, x, cols, t0, 8 * wc.len());
                for t in 0..T {
                    o[t0 + t] = hsum256(_mm256_add_ps(acc[t][0], acc[t][1])) + rest[t];
                }
                false
            }
        };
    }

    tile_fn!(tile_f32, 32, |c| _mm256_castsi256_ps(ld256(c)));
    tile_fn!(tile_f16, 16, |c| _mm256_cvtph_ps(ld128(c)));
    tile_fn!(tile_bf16, 16, |c| _mm256_castsi256_ps(_mm256_slli_epi32::<
        16,
    >(
        _mm256_cvtepu16_epi32(ld128(c))
    )));

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn rows(
        kind: Kind,
        w: &[u8],
        rb: usize,
        x: &[f32],
        cols: usize,
        n: usize,
        out: &mut [f32],
    ) {
        match kind {
            Kind::F32 => tiled_rows!(w, rb, n, out, |row, t0, o| tile_f32(
                kind, row, x, cols, t0, o
            )),
            Kind::F16 => tiled_rows!(w, rb, n, out, |row, t0, o| tile_f16(
                kind, row, x, cols, t0, o
            )),
            Kind::Bf16 => tiled_rows!(w, rb, n, out, |row, t0, o| tile_bf16(
                kind, row, x, cols, t0, o
            )),
        };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use crate::kernels::x86::*;
    use std::arch::x86_64::*;

    /// Stamps out a tile function for one encoding: `$bytes` encoded bytes
    /// hold 16 elements, `$load` widens them to 16 f32 lanes.
    macro_rules! tile_fn {
        ($name:ident, $bytes:literal, |$c:ident| $load:expr) => {
            #[inline]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            fn $name<const T: usize>(
                kind: Kind,
                row: &[u8],
                x: &[f32],
                cols: usize,
                t0: usize,
                o: &mut [f32],
            ) -> bool {
                let mut xs: [&[[f32; 16]]; T] = [&[]; T];
                for t in 0..T {
                    xs[t] = x[(t0 + t) * cols..(t0 + t + 1) * cols].as_chunks::<16>().0;
                }
                let wc = row.as_chunks::<$bytes>().0;
                let mut acc = [[_mm512_setzero_ps(); 2]; T];
                // Two independent sums per token hide the FMA latency.
                for (i, pair) in wc.chunks_exact(2).enumerate() {
                    prefetch(&pair[0]);
                    for (j, $c) in pair.iter().enumerate() {
                        let w = $load;
                        for t in 0..T {
                            acc[t][j] = _mm512_fmadd_ps(w, ld512_ps(&xs[t][2 * i + j]), acc[t][j]);
                        }
                    }
                }
                if wc.len() % 2 == 1 {
                    let i = wc.len() - 1;
                    let $c = &wc[i];
                    let w = $load;
                    for t in 0..T {
                        acc[t][0] = _mm512_fmadd_ps(w, ld512_ps(&xs[t][i]), acc[t][0]);
                    }
                }
                let rest = tail::<T>(kind, row, x, cols, t0, 16 * wc.len());
                for t in 0..T {
                    o[t0 + t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1])) + rest[t];
                }
                false
            }
        };
    }

    tile_fn!(tile_f32, 64, |c| _mm512_castsi512_ps(ld512(c)));
    tile_fn!(tile_f16, 32, |c| _mm512_cvtph_ps(ld256(c)));
    tile_fn!(tile_bf16, 32, |c| _mm512_castsi512_ps(_mm512_slli_epi32::<
        16,
    >(
        _mm512_cvtepu16_epi32(ld256(c))
    )));

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) fn rows(
        kind: Kind,
        w: &[u8],
        rb: usize,
        x: &[f32],
        cols: usize,
        n: usize,
        out: &mut [f32],
    ) {
        match kind {
            Kind::F32 => tiled_rows!(w, rb, n, out, |row, t0, o| tile_f32(
                kind, row, x, cols, t0, o
            )),
            Kind::F16 => tiled_rows!(w, rb, n, out, |row, t0, o| tile_f16(
                kind, row, x, cols, t0, o
            )),
            Kind::Bf16 => tiled_rows!(w, rb, n, out, |row, t0, o| tile_bf16(
                kind, row, x, cols, t0, o
            )),
        };
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::*;
    use std::arch::aarch64::*;

    #[inline]
    #[target_feature(enable = "neon")]
    fn tile<const T: usize>(
        kind: Kind,
        row: &[u8],
        x: &[f32],
        cols: usize,
        t0: usize,
        o: &mut [f32],
    ) -> bool {
        let mut acc = [vdupq_n_f32(0.0); T];
        let mut done = 0;
        while done + 4 <= cols {
            let w = match kind {
                // SAFETY: bytes 4·done .. 4·done + 16 of the row exist (done + 4 ≤ cols).
                Kind::F32 => unsafe {
                    vreinterpretq_f32_u8(vld1q_u8(row[4 * done..4 * done + 16].as_ptr()))
                },
                // SAFETY: bytes 2·done .. 2·done + 8 of the row exist (done + 4 ≤ cols).
                _ => unsafe {
                    let h = vreinterpret_u16_u8(vld1_u8(row[2 * done..2 * done + 8].as_ptr()));
                    vreinterpretq_f32_u32(vshll_n_u16::<16>(h))
                },
            };
            for (t, a) in acc.iter_mut().enumerate() {
                let xs = &x[(t0 + t) * cols + done..(t0 + t) * cols + done + 4];
                // SAFETY: `xs` is 4 readable f32.
                *a = vfmaq_f32(*a, w, unsafe { vld1q_f32(xs.as_ptr()) });
            }
            done += 4;
        }
        let rest = tail::<T>(kind, row, x, cols, t0, done);
        for t in 0..T {
            o[t0 + t] = vaddvq_f32(acc[t]) + rest[t];
        }
        false
    }

    #[target_feature(enable = "neon")]
    pub(super) fn rows(
        kind: Kind,
        w: &[u8],
        rb: usize,
        x: &[f32],
        cols: usize,
        n: usize,
        out: &mut [f32],
    ) {
        tiled_rows!(w, rb, n, out, |row, t0, o| tile(kind, row, x, cols, t0, o));
    }
}
